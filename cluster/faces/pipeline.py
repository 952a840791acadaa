"""Image → detected faces → aligned crops → embeddings, batched across faces and images."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, fields

import numpy as np

from .align import align_face
from .detect import DetectedFace, FaceDetector
from .embed import Embedder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Face(DetectedFace):
    """A `DetectedFace` with its embedding (float32, unit L2 norm, `Embedder.dimension` long)."""

    embedding: np.ndarray


@contextlib.contextmanager
def timed(stage: str, count: int = 0):
    """Log how long a stage took (debug level), and its throughput when `count` is given."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        rate = f", {count / seconds:.1f} faces/s" if count and seconds > 0 else ""
        logger.debug("%s: %.3f s%s", stage, seconds, rate)


class FacePipeline:
    """Detect, align and embed faces; the one code path for search and enrollment.

    Args:
        detector: finds faces and landmarks.
        embedder: the face model; crops are aligned to its `input_size` and `template`.

    Example:
        >>> pipe = FacePipeline(FaceDetector(), FaceNetEmbedder())
        >>> faces = pipe.analyze(decode_image(data), max_faces=10)
        >>> faces[0].embedding.shape, faces[0].quality
        ((512,), 0.93)
    """

    def __init__(self, detector: FaceDetector, embedder: Embedder):
        self.detector = detector
        self.embedder = embedder

    def detect(self, image: np.ndarray, max_faces: int = 100) -> list[DetectedFace]:
        """Detect faces only (DetectFaces); largest first."""
        with timed("detect"):
            return self.detector.detect(image, max_faces)

    def align(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """Aligned crops for `faces`, N×S×S×3 uint8, S = the embedder's input size."""
        s = self.embedder.input_size
        out = np.empty((len(faces), s, s, 3), np.uint8)
        with timed("align", len(faces)):
            for i, face in enumerate(faces):
                out[i] = align_face(image, face.landmarks, s, self.embedder.template)
        return out

    def embed_faces(self, image: np.ndarray, faces: list[DetectedFace]) -> list[Face]:
        """Embed faces already detected in `image` (e.g. those a quality filter kept)."""
        return self.embed_batch([image], [faces])[0]

    def embed_batch(self, images: list[np.ndarray],
                    faces: list[list[DetectedFace]]) -> list[list[Face]]:
        """Embed detected faces of several images in one batched pass through the model."""
        if len(images) != len(faces):
            raise ValueError(f"images and faces must have the same length, got {len(images)} and {len(faces)}")
        s = self.embedder.input_size
        crops = [self.align(img, fs) for img, fs in zip(images, faces)]
        flat = np.concatenate(crops) if crops else np.empty((0, s, s, 3), np.uint8)
        with timed("embed", len(flat)):
            vectors = self.embedder.embed(flat)
        out, start = [], 0
        for fs in faces:
            out.append([Face(**{f.name: getattr(face, f.name) for f in fields(DetectedFace)},
                             embedding=vectors[start + j]) for j, face in enumerate(fs)])
            start += len(fs)
        return out

    def analyze(self, image: np.ndarray, max_faces: int = 100) -> list[Face]:
        """Detect and embed up to `max_faces` faces of one image, largest first.

        Args:
            image: H×W×3 uint8 RGB (from `decode_image`).
            max_faces: in [1, 4096].

        Returns:
            Faces with embeddings, sorted by box area, largest first.

        Raises:
            ValueError: a bad image array or `max_faces` out of range.
        """
        return self.analyze_batch([image], max_faces)[0]

    def analyze_batch(self, images: list[np.ndarray], max_faces: int = 100) -> list[list[Face]]:
        """Like `analyze` for many images, with every face of every image in shared model batches.

        Args:
            images: H×W×3 uint8 RGB arrays (sizes may differ).
            max_faces: per image, in [1, 4096].

        Returns:
            One list of faces per image, in input order.
        """
        detected = [self.detect(img, max_faces) for img in images]
        return self.embed_batch(images, detected)

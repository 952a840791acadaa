"""FaceWorker: image bytes in, faces with embeddings out. One code path for the gateway and enrollment jobs.

A plain class. The gateway runs a few of them as Ray actors (on GPUs where
there are some); enrollment jobs run the same class in a Ray Data actor pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cluster.index.calibration import Calibration, EmbeddingModel

logger = logging.getLogger(__name__)


@dataclass
class ImageFaces:
    """What was found in one image: its size (width, height) and faces, largest first."""

    width: int
    height: int
    faces: list  # list[cluster.faces.Face]


class FaceWorker:
    """Decodes, detects, aligns and embeds with the default face model (FaceNet).

    Args:
        batch_size: crops per forward pass of the embedder.
        device: torch device ("cuda", "cpu"); default CUDA when present.
    """

    def __init__(self, *, batch_size: int = 32, device: str | None = None):
        from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline

        self.pipeline = FacePipeline(FaceDetector(), FaceNetEmbedder(batch_size=batch_size, device=device))

    @property
    def model(self) -> EmbeddingModel:
        return embedding_model(self.pipeline.embedder)

    def ready(self) -> EmbeddingModel:
        """The model, once loaded: what a pool waits on at start-up (actors cannot read properties)."""
        return self.model

    def detect(self, data: bytes, *, max_faces: int = 100, max_bytes: int | None = None) -> ImageFaces:
        """Faces without embeddings. Raises cluster.faces.InvalidImageError for a bad image."""
        image = self._decode(data, max_bytes)
        return ImageFaces(image.shape[1], image.shape[0], self.pipeline.detect(image, max_faces))

    def analyze(self, data: bytes, *, max_faces: int = 100, max_bytes: int | None = None) -> ImageFaces:
        """Faces with embeddings. Raises cluster.faces.InvalidImageError for a bad image."""
        return self.analyze_many([data], max_faces=max_faces, max_bytes=max_bytes)[0]

    def analyze_selected(self, data: bytes, *, max_faces: int = 100, min_quality: float = 0.0,
                         embed_max_faces: int | None = None, max_bytes: int | None = None) -> ImageFaces:
        """Detects up to `max_faces` faces and embeds only the ones an image request uses.

        Those embedded are the `embed_max_faces` largest (all when None) of the faces whose
        quality is at least `min_quality`; they come back as `Face`, the rest as
        `DetectedFace` without an embedding, all largest first. Embedding is the costly
        stage, so faces a request drops are never embedded.

        Raises:
            cluster.faces.InvalidImageError: a bad image.
            ValueError: `embed_max_faces` below 1.
        """
        if embed_max_faces is not None and embed_max_faces < 1:
            raise ValueError(f"embed_max_faces must be >= 1 or None, got {embed_max_faces}")
        image = self._decode(data, max_bytes)
        faces = self.pipeline.detect(image, max_faces)
        chosen = [i for i, f in enumerate(faces) if f.quality >= min_quality][:embed_max_faces]
        return ImageFaces(image.shape[1], image.shape[0], self._embed_chosen([image], [faces], [chosen])[0])

    def analyze_many(self, images: list[bytes], *, max_faces: int = 100, max_bytes: int | None = None,
                     min_quality: float = 0.0) -> list[ImageFaces | Exception]:
        """Like `analyze` for many images in shared model batches; a bad image yields its error, in place.

        Faces under `min_quality` are not embedded: they come back as `DetectedFace`.
        """
        from cluster.faces import InvalidImageError

        decoded: list = []
        for data in images:
            try:
                decoded.append(self._decode(data, max_bytes))
            except InvalidImageError as e:
                decoded.append(e)
        good = [decoded[i] for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        detected = [self.pipeline.detect(image, max_faces) for image in good]
        chosen = [[j for j, f in enumerate(faces) if f.quality >= min_quality] for faces in detected]
        found = iter(self._embed_chosen(good, detected, chosen))
        return [d if isinstance(d, Exception) else ImageFaces(d.shape[1], d.shape[0], next(found)) for d in decoded]

    def _embed_chosen(self, images: list, detected: list[list], chosen: list[list[int]]) -> list[list]:
        """Each image's detected faces with the chosen ones (by index) embedded, all images in shared batches."""
        out = [list(faces) for faces in detected]
        if not any(chosen):
            return out
        embedded = self.pipeline.embed_batch(images, [[faces[j] for j in idx] for faces, idx in zip(detected, chosen)])
        for row, idx, faces in zip(out, chosen, embedded):
            for j, face in zip(idx, faces):
                row[j] = face
        return out

    @staticmethod
    def _decode(data: bytes, max_bytes: int | None):
        from cluster.faces import MAX_IMAGE_BYTES, decode_image

        return decode_image(data, max_bytes=max_bytes or MAX_IMAGE_BYTES)


def embedding_model(embedder) -> EmbeddingModel:
    """The gallery's view of a face model: its name, dimension and impostor-score calibration.

    The calibration is the model's shipped score table (`calibration_table`, made by
    benchmarks/calibrate_faces.py), when it has one; face collections set their thresholds from it
    as a target FPIR.
    """
    table = getattr(embedder, "calibration_table", None)
    calibration = None
    if table is not None and Path(table).is_file():
        calibration = Calibration.from_table(table, source="model")
    return EmbeddingModel(embedder.name, embedder.dimension, calibration)

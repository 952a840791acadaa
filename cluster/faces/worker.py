"""FaceWorker: image bytes in, faces with embeddings out. One code path for the gateway and enrollment jobs.

A plain class. The gateway runs a few of them as Ray actors (on GPUs where
there are some); enrollment jobs run the same class in a Ray Data actor pool.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from cluster.index.calibration import EmbeddingModel

logger = logging.getLogger(__name__)


@dataclass
class ImageFaces:
    """What was found in one image: its size (width, height) and faces, largest first."""

    width: int
    height: int
    faces: list  # list[cluster.faces.Face]


class FaceWorker:
    """Decodes, detects, aligns and embeds, with any registered face model (`cluster/faces/models.py`).

    One detector serves every model; each model's embedder is loaded on its first use
    (`models` are loaded at once), so a worker serves collections of several models while
    holding in memory only the ones asked for. The `model` keyword of each method names the
    model ("" for the default, SFace).

    Args:
        batch_size: crops per forward pass of the embedder.
        device: torch device ("cuda", "cpu"); default CUDA when present.
        models: models to load now; default the default model.
    """

    def __init__(self, *, batch_size: int = 32, device: str | None = None, models: tuple[str, ...] = ("",)):
        from cluster.faces import FaceDetector

        self.batch_size, self.device = batch_size, device
        self.detector = FaceDetector()
        self._pipelines: dict = {}
        self._lock = threading.Lock()  # Ray runs one call at a time, a thread pool may not
        for name in models:
            self.pipeline(name)

    def pipeline(self, model: str = ""):
        """The `FacePipeline` of a model, loading it on first use. Raises UnknownModelError."""
        from cluster.faces import FacePipeline
        from cluster.faces.models import DEFAULT_MODEL, embedder_for

        name = model or DEFAULT_MODEL
        with self._lock:
            if name not in self._pipelines:
                embedder = embedder_for(name, batch_size=self.batch_size, device=self.device)
                self._pipelines[name] = FacePipeline(self.detector, embedder)
                logger.info("face model %s loaded (%d-d)", name, embedder.dimension)
            return self._pipelines[name]

    @property
    def model(self) -> EmbeddingModel:
        """The default model."""
        return self.ready()

    def ready(self, model: str = "") -> EmbeddingModel:
        """A model, once loaded: what a pool waits on at start-up (actors cannot read properties)."""
        return embedding_model(self.pipeline(model).embedder)

    def detect(self, data: bytes, *, max_faces: int = 100, max_bytes: int | None = None) -> ImageFaces:
        """Faces without embeddings. Raises cluster.faces.InvalidImageError for a bad image."""
        image = self._decode(data, max_bytes)
        return ImageFaces(image.shape[1], image.shape[0], self.detector.detect(image, max_faces))

    def analyze(self, data: bytes, *, max_faces: int = 100, max_bytes: int | None = None,
                model: str = "") -> ImageFaces:
        """Faces with embeddings. Raises cluster.faces.InvalidImageError for a bad image."""
        return self.analyze_many([data], max_faces=max_faces, max_bytes=max_bytes, model=model)[0]

    def analyze_selected(self, data: bytes, *, max_faces: int = 100, min_quality: float = 0.0,
                         embed_max_faces: int | None = None, max_bytes: int | None = None,
                         model: str = "") -> ImageFaces:
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
        pipeline = self.pipeline(model)  # an unknown model fails before any work
        image = self._decode(data, max_bytes)
        faces = self.detector.detect(image, max_faces)
        chosen = [i for i, f in enumerate(faces) if f.quality >= min_quality][:embed_max_faces]
        return ImageFaces(image.shape[1], image.shape[0], self._embed_chosen(pipeline, [image], [faces], [chosen])[0])

    def embed_landmarks(self, data: bytes, landmarks: list, *, max_bytes: int | None = None,
                        model: str = "") -> tuple[int, int, object]:
        """Embeddings of faces already located in an image, aligned on their recorded landmarks.

        What re-embedding a collection with another model needs (`jobs/reembed.py`): the faces
        stay the ones enrolled, whatever the detector would find today.

        Args:
            data: the image's bytes.
            landmarks: one 5×2 array per face, as ratios of the decoded image's width and height (as
                FaceDetail stores them, so that they hold whatever size the image is decoded at).
            model: the model to embed with.

        Returns:
            (width, height, N×dimension float32 embeddings).

        Raises:
            cluster.faces.InvalidImageError: a bad image. UnknownModelError: no such model.
        """
        from cluster.faces import align_face

        pipeline = self.pipeline(model)
        image = self._decode(data, max_bytes)
        s, size = pipeline.embedder.input_size, np.array([image.shape[1], image.shape[0]], np.float32)
        crops = np.stack([align_face(image, np.asarray(lm, np.float32) * size, s, pipeline.embedder.template)
                          for lm in landmarks]) if len(landmarks) else np.empty((0, s, s, 3), np.uint8)
        return image.shape[1], image.shape[0], pipeline.embedder.embed(crops)

    def analyze_many(self, images: list[bytes], *, max_faces: int = 100, max_bytes: int | None = None,
                     min_quality: float = 0.0, model: str = "") -> list[ImageFaces | Exception]:
        """Like `analyze` for many images in shared model batches; a bad image yields its error, in place.

        Faces under `min_quality` are not embedded: they come back as `DetectedFace`.
        """
        from cluster.faces import InvalidImageError

        pipeline = self.pipeline(model)
        decoded: list = []
        for data in images:
            try:
                decoded.append(self._decode(data, max_bytes))
            except InvalidImageError as e:
                decoded.append(e)
        good = [decoded[i] for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        detected = [self.detector.detect(image, max_faces) for image in good]
        chosen = [[j for j, f in enumerate(faces) if f.quality >= min_quality] for faces in detected]
        found = iter(self._embed_chosen(pipeline, good, detected, chosen))
        return [d if isinstance(d, Exception) else ImageFaces(d.shape[1], d.shape[0], next(found)) for d in decoded]

    @staticmethod
    def _embed_chosen(pipeline, images: list, detected: list[list], chosen: list[list[int]]) -> list[list]:
        """Each image's detected faces with the chosen ones (by index) embedded, all images in shared batches."""
        out = [list(faces) for faces in detected]
        if not any(chosen):
            return out
        embedded = pipeline.embed_batch(images, [[faces[j] for j in idx] for faces, idx in zip(detected, chosen)])
        for row, idx, faces in zip(out, chosen, embedded):
            for j, face in zip(idx, faces):
                row[j] = face
        return out

    @staticmethod
    def _decode(data: bytes, max_bytes: int | None):
        from cluster.faces import MAX_IMAGE_BYTES, decode_image

        return decode_image(data, max_bytes=max_bytes or MAX_IMAGE_BYTES)


def embedding_model(embedder) -> EmbeddingModel:
    """The gallery's view of a face model (see `cluster.faces.models.embedding_model`)."""
    from cluster.faces.models import embedding_model as describe

    return describe(embedder)

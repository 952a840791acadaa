"""The registry of face models: a name → its embedder class, and what the gallery needs to know of each.

A collection records its model's name at creation (`CollectionManifest.embedding_model`), and the
model fixes the alignment template, the crop size and the dimension, so a collection keeps its
model for life; `jobs/reembed.py` moves one to another model. New face collections use
`DEFAULT_MODEL`.

Example:
    >>> embedder_for("sface").dimension
    128
    >>> describe_model("facenet-inception-resnet-v1-casia-20180408").dimension  # no weights loaded
    512
"""
from __future__ import annotations

from cluster.index.calibration import Calibration, EmbeddingModel

from .embed import Embedder
from .facenet import FaceNetEmbedder
from .sface import SFaceEmbedder

DEFAULT_MODEL = "sface"
_EMBEDDERS = {cls.name: cls for cls in (SFaceEmbedder, FaceNetEmbedder)}


class UnknownModelError(ValueError):
    """A model name the registry does not have; the message lists those it has."""


def model_names() -> list[str]:
    """Every registered model, the default first."""
    return [DEFAULT_MODEL] + sorted(n for n in _EMBEDDERS if n != DEFAULT_MODEL)


def _embedder_class(name: str) -> type:
    cls = _EMBEDDERS.get(name or DEFAULT_MODEL)
    if cls is None:
        raise UnknownModelError(f"unknown face model {name!r}; known models: {', '.join(model_names())}")
    return cls


def embedder_for(name: str = DEFAULT_MODEL, **kwargs) -> Embedder:
    """The embedder of a registered model, its weights loaded ("" for the default).

    Args:
        name: a name of `model_names()`.
        **kwargs: for the embedder's constructor (`batch_size`, `device`, `cache`).

    Raises:
        UnknownModelError: no such model.
    """
    return _embedder_class(name)(**kwargs)


def describe_model(name: str = DEFAULT_MODEL) -> EmbeddingModel:
    """The gallery's view of a registered model (name, dimension, calibration), without loading its weights.

    Raises:
        UnknownModelError: no such model.
    """
    return embedding_model(_embedder_class(name))


def embedding_model(embedder) -> EmbeddingModel:
    """The gallery's view of an embedder (instance or class): its name, dimension and impostor-score
    calibration; no calibration when the model has no impostor scores yet (uncalibrated)."""
    scores = embedder.impostor_scores() if hasattr(embedder, "impostor_scores") else None
    calibration = None
    if scores is not None:
        threshold = embedder.default_threshold if embedder.default_threshold is not None else -1.0
        calibration = Calibration.from_scores(scores, source="model", default_min_similarity=threshold)
    return EmbeddingModel(embedder.name, embedder.dimension, calibration)


def describe_models() -> dict[str, EmbeddingModel]:
    """Every registered model's `describe_model`, the default first."""
    return {name: describe_model(name) for name in model_names()}

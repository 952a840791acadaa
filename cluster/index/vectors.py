"""Embeddings as the index keeps them: validated, normalised, rounded to fp16.

Their wire format (packed little-endian float32) is `cluster.api.convert`'s.
"""

import numpy as np

# Re-exported for tests/test_cli.py until it builds its messages with convert.embedding; then delete.
from cluster.api.convert import decode, encode  # noqa: F401
from cluster.errors import InvalidArgument


def normalize(x: np.ndarray, *, what: str = "embeddings") -> np.ndarray:
    """Returns float32 rows scaled to unit L2 norm.

    Raises:
        InvalidArgument: a row holds NaN or infinity, or is all zeros.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"{what}: expected a 2-d array, got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise InvalidArgument(f"{what}: row {int(np.argmin(finite))} holds NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgument(f"{what}: row {int(np.argmin(norms[:, 0]))} is all zeros and has no direction")
    return x / norms


def to_stored(x: np.ndarray) -> np.ndarray:
    """Rounds normalised vectors to the fp16 the shards keep; all scoring uses these values."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)

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
    # In float64: the float32 sum of squares overflows for finite values near 3e38 (the norm came out inf
    # and the row zero) and underflows for values near 1e-23 (a vector with a direction came out "all zeros").
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgument(f"{what}: row {int(np.argmin(norms[:, 0]))} is all zeros and has no direction")
    return (x / norms).astype(np.float32)


def to_stored(x: np.ndarray) -> np.ndarray:
    """Rounds normalised vectors to the fp16 the shards keep; all scoring uses these values."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)

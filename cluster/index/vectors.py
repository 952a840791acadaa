"""Embeddings on the wire (packed little-endian float32) and their validation."""

import numpy as np

from cluster.errors import InvalidArgument

_WIRE_DTYPE = np.dtype("<f4")


def encode(x: np.ndarray) -> bytes:
    """Packs one vector as little-endian float32 bytes."""
    return np.ascontiguousarray(x, dtype=_WIRE_DTYPE).tobytes()


def decode(values: bytes, dimension: int, *, expected_dimension: int, what: str = "embedding") -> np.ndarray:
    """Unpacks one vector and checks it against the collection's dimension.

    Raises:
        InvalidArgument: wrong dimension, byte length not 4 * dimension.
    """
    if dimension != expected_dimension:
        raise InvalidArgument(f"{what}: dimension is {dimension}, the collection's is {expected_dimension}")
    if len(values) != 4 * dimension:
        raise InvalidArgument(f"{what}: {len(values)} bytes given, 4 * dimension = {4 * dimension} expected")
    return np.frombuffer(values, dtype=_WIRE_DTYPE).astype(np.float32)


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

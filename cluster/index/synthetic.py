"""Synthetic face-like embeddings for tests and benchmarks.

Real face embeddings are clustered: photos of one identity lie close together,
identities spread over the sphere. Probes are noisy copies of gallery vectors,
as a new photo of an enrolled person is. Uniform random vectors would make
PQ look far better than it is on such data.
"""

import numpy as np


def clustered_embeddings(n: int, d: int, *, n_clusters: int | None = None, spread: float = 0.7,
                         seed: int = 0) -> np.ndarray:
    """n L2-normalised float32 vectors around n_clusters random centres (default n // 20)."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(n // 20, 1)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries for millions of vectors
        stop = min(start + 100_000, n)
        assignment = rng.integers(0, n_clusters, size=stop - start)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32) * (spread / np.sqrt(d))
        x[start:stop] = centres[assignment] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def noisy_probes(xb: np.ndarray, nq: int, *, noise: float = 0.3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """nq normalised noisy copies of random gallery vectors, and the rows they copy."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(xb.shape[0], size=nq, replace=False)
    xq = xb[rows] + rng.standard_normal((nq, xb.shape[1]), dtype=np.float32) * (noise / np.sqrt(xb.shape[1]))
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xq.astype(np.float32), rows

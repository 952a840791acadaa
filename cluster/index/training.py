"""Training the IVF-PQ index a collection's partitions share."""

import logging
import math
import os
import time

import faiss
import numpy as np

from cluster.index.tuning import COARSE_KMEANS_ITERATIONS

logger = logging.getLogger(__name__)


def ivfpq_factory(nlist: int, pq_m: int, pq_bits: int = 8) -> str:
    """The faiss factory string of an IVF-PQ index with `pq_bits` per sub-quantizer code (4: SIMD fast-scan).

    Example:
        >>> ivfpq_factory(4096, 64, 4), ivfpq_factory(4096, 64, 8)
        ('IVF4096,PQ64x4fs', 'IVF4096,PQ64')
    """
    if pq_bits not in (4, 8):
        raise ValueError(f"pq_bits must be 4 (fast-scan) or 8, got {pq_bits}")
    return f"IVF{nlist},PQ{pq_m}" + ("x4fs" if pq_bits == 4 else "")


def train_ivfpq(xt: np.ndarray, nlist: int, pq_m: int, pq_bits: int = 8) -> bytes:
    """Trains an empty IVF-PQ inner-product index (`ivfpq_factory`) on normalised vectors.

    Returns:
        The serialized trained index (coarse quantizer + PQ codebooks, no vectors).
    """
    n, d = xt.shape
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
    if n < nlist:
        raise ValueError(f"{n} training vectors for nlist={nlist}: need at least nlist")
    start = time.perf_counter()
    factory = ivfpq_factory(nlist, pq_m, pq_bits)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = COARSE_KMEANS_ITERATIONS
    if pq_bits == 8:
        index.do_polysemous_training = False  # minutes of training for a filter that re-ranking makes moot
    index.train(np.ascontiguousarray(xt, dtype=np.float32))
    logger.info("trained %s on %d vectors in %.1f s", factory, n, time.perf_counter() - start)
    return faiss.serialize_index(index).tobytes()


def usable_cpus() -> int:
    """CPUs this process may run on, within its cgroup's CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def load_index(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))

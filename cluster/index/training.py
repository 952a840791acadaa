"""Training the IVF-PQ index a collection's partitions share."""

import logging
import math
import os
import time

import faiss
import numpy as np

from cluster.index.tuning import COARSE_KMEANS_ITERATIONS

logger = logging.getLogger(__name__)


def train_ivfpq(xt: np.ndarray, nlist: int, pq_m: int) -> bytes:
    """Trains an empty IVF{nlist},PQ{pq_m}x8 inner-product index on normalised vectors.

    Returns:
        The serialized trained index (coarse quantizer + PQ codebooks, no vectors).
    """
    n, d = xt.shape
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
    if n < nlist:
        raise ValueError(f"{n} training vectors for nlist={nlist}: need at least nlist")
    start = time.perf_counter()
    index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_m}", faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = COARSE_KMEANS_ITERATIONS
    index.do_polysemous_training = False  # minutes of training for a filter that re-ranking makes moot
    index.train(np.ascontiguousarray(xt, dtype=np.float32))
    logger.info("trained IVF%d,PQ%d on %d vectors in %.1f s", nlist, pq_m, n, time.perf_counter() - start)
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

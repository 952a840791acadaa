"""Training the IVF-PQ index a collection's partitions share."""

import logging
import math
import os
import time

import faiss
import numpy as np

from cluster.index.tuning import COARSE_KMEANS_ITERATIONS, TWO_LEVEL_KMEANS_FROM, TWO_LEVEL_REFINE_ITERATIONS

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
    if nlist >= TWO_LEVEL_KMEANS_FROM:  # index.train then trains the PQ codebooks only
        faiss.extract_index_ivf(index).quantizer.add(two_level_centroids(xt, nlist))
    if pq_bits == 8:
        index.do_polysemous_training = False  # minutes of training for a filter that re-ranking makes moot
    index.train(np.ascontiguousarray(xt, dtype=np.float32))
    logger.info("trained %s on %d vectors in %.1f s", factory, n, time.perf_counter() - start)
    return faiss.serialize_index(index).tobytes()


def two_level_centroids(xt: np.ndarray, nlist: int, niter: int = COARSE_KMEANS_ITERATIONS,
                        refine: int = TWO_LEVEL_REFINE_ITERATIONS) -> np.ndarray:
    """nlist centroids of normalised vectors by k-means in two levels, as faiss's
    `contrib.clustering.two_level_clustering`: about sqrt(nlist) coarse clusters, then each split into a share of
    the nlist proportional to its points; then `refine` iterations of k-means over all of them, from there.

    Spherical (centroids normalised), as faiss trains inner-product IVF lists: with unnormalised centroids the
    longest drew most queries (2M faces into 4,096 lists: a query's nearest list held 2.7% of them). The second
    level never moves a point across its coarse cluster's border, which cost neighbours at the lists' edges; two
    full iterations mend most of it (`tuning.TWO_LEVEL_REFINE_ITERATIONS`).

    Returns:
        (nlist, d) float32 centroids.
    """
    n, d = xt.shape
    xt = np.ascontiguousarray(xt, dtype=np.float32)
    coarse = faiss.Kmeans(d, max(1, round(math.sqrt(nlist))), niter=niter, spherical=True)
    coarse.train(xt)
    assignment = coarse.index.search(xt, 1)[1].ravel()
    sizes = np.bincount(assignment, minlength=coarse.k)
    shares = np.cumsum(sizes) * nlist // n  # cumulative, so that the shares sum to nlist exactly
    shares[1:] -= shares[:-1].copy()
    centroids = []
    for cluster in np.flatnonzero(shares):
        points = xt[assignment == cluster]
        # a share is ~1/40 of its points (`tuning.training_sample_size`), so faiss's "fewer than 39 points per
        # centroid" warning would only be rounding
        fine = faiss.Kmeans(d, int(shares[cluster]), niter=niter, spherical=True, min_points_per_centroid=1)
        fine.train(points)
        centroids.append(fine.centroids)
    centroids = np.vstack(centroids)
    if refine:
        params = faiss.ClusteringParameters()
        params.niter, params.spherical, params.max_points_per_centroid = refine, True, n
        clustering = faiss.Clustering(d, nlist, params)
        faiss.copy_array_to_vector(centroids.ravel(), clustering.centroids)  # k-means starts from these
        clustering.train(xt, faiss.IndexFlatIP(d))
        centroids = faiss.vector_to_array(clustering.centroids).reshape(nlist, d)
    return centroids


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

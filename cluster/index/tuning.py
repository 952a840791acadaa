"""Tuning rules for IVF-PQ: small pure functions, each with where its rule comes from."""

import math

# Below this many faces a collection is searched exhaustively, which stays within a
# batch-1 query's latency budget on one core (benchmarks/README.md), and it is the
# smallest size at which the rules below get enough training points (k-means wants
# >= 39 per centroid; 8-bit PQ codebooks want >= 256 * 39 ~ 10k).
DEFAULT_TRAIN_THRESHOLD = 20_000

# Retrain when a collection has grown this much past what its quantizer was
# trained on: lists grow ~8x longer and nlist falls ~3x below the 4*sqrt(n) rule.
RETRAIN_GROWTH_FACTOR = 8.0


def nlist_for(num_vectors: int) -> int:
    """Number of IVF lists: the power of two nearest 4*sqrt(n) (faiss wiki, "Guidelines to choose an index"),
    capped so that every centroid gets >= 39 training points."""
    target = 4 * math.sqrt(max(num_vectors, 1))
    nlist = 2 ** round(math.log2(max(target, 1)))
    while nlist > 1 and num_vectors < 39 * nlist:
        nlist //= 2
    return max(nlist, 1)


def pq_m_for(dimension: int) -> int:
    """PQ sub-quantizers: 8 dimensions per 8-bit code (512-d -> 64 bytes), as faiss's OPQ/PQ guidance
    uses for 1-2% of the raw size; must divide the dimension."""
    m = max(dimension // 8, 1)
    while dimension % m:
        m -= 1
    return m


def training_sample_size(num_vectors: int, nlist: int) -> int:
    """Training points: 40 per list (faiss warns under 39) and at least 10k for the PQ codebooks.
    More points barely move recall here, since candidates are re-ranked, but k-means time grows with them."""
    return min(num_vectors, max(40 * nlist, 10_000))


# k-means iterations of the coarse quantizer: faiss's default 25 costs more than twice
# the time for under 1% of recall@10 once candidates are re-ranked (benchmarks/README.md).
COARSE_KMEANS_ITERATIONS = 10


def default_nprobe(nlist: int) -> int:
    """Lists probed: 1/16 of them, at least 16. Re-ranking recovers the PQ error, so the probe count
    is what bounds recall; 1/16 reached recall@10 >= 0.95 on clustered data in benchmarks/serving.py."""
    return min(nlist, max(16, nlist // 16))


def nprobe_for(requested: int, rerank_k: int, nlist: int, num_vectors: int) -> int:
    """Lists to probe: the requested number (0: `default_nprobe`), raised until the probed lists hold
    about twice the re-rank depth, so a large k still gets k candidates; at most nlist."""
    needed = math.ceil(2 * rerank_k * nlist / max(num_vectors, 1))
    return min(nlist, max(requested or default_nprobe(nlist), needed))


def rerank_depth(k: int) -> int:
    """PQ candidates re-ranked against full-precision vectors: PQ64 ranks the true top-10 inside its
    top-100 for ~all queries on 512-d face data, so 10x k (at least 100) suffices."""
    return max(10 * k, 100)


def partition_rerank_depth(rerank_k: int, k: int, num_partitions: int) -> int:
    """PQ candidates each partition re-ranks, so that together they cover the collection's top `rerank_k`.

    Faces are spread over partitions by a hash of their id, so one partition holds a
    Binomial(rerank_k, 1/P) share of a query's top candidates; four standard deviations above
    the mean covers that share for all but 2e-5 to 7e-5 of queries and partitions (2 to 8
    partitions; 100 over 2: 70 each, 140 re-ranked in all instead of 200). At least k, so that
    a partition holding all of a query's top k returns them all.
    """
    p = 1 / num_partitions
    share = rerank_k * p + 4 * math.sqrt(rerank_k * p * (1 - p))
    return max(k, min(rerank_k, math.ceil(share)))


def should_train(face_count: int, trained_on: int, train_threshold: int) -> bool:
    """A collection trains when it first reaches the threshold, then when it outgrows its quantizer."""
    if face_count < train_threshold:
        return False
    return trained_on == 0 or face_count >= RETRAIN_GROWTH_FACTOR * trained_on

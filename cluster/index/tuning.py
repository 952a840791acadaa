"""Tuning rules for IVF-PQ: small pure functions, each with where its rule comes from."""

import math
from dataclasses import dataclass

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
    capped so that every centroid gets >= 39 training points.

    Sized instead for the middle of the sizes a collection serves on its lists (2.8x n, as it retrains at 8x),
    a 10M collection trained at 1.3M faces got 8,192 lists in place of 4,096: it probed 768 where it had probed
    512 (9% of the codes instead of 12.5%), but assigning every query and every added face to twice the lists
    cost more than that saved: 543 QPS at batch 256 against 705, recall@10 0.946 against 0.951, and 24 min of
    ingest against 18 (benchmarks/README.md, `scale.py`)."""
    target = 4 * math.sqrt(max(num_vectors, 1))
    nlist = 2 ** round(math.log2(max(target, 1)))
    while nlist > 1 and num_vectors < 39 * nlist:
        nlist //= 2
    return max(nlist, 1)


def pq_m_for(dimension: int, pq_bits: int = 8) -> int:
    """PQ sub-quantizers, which must divide the dimension. 8-bit codes: one per 8 dimensions (512-d -> 64 bytes),
    as faiss's OPQ/PQ guidance uses for 1-2% of the raw size. 4-bit fast-scan codes: one per 16 dimensions, but
    no fewer than 16 (or than the 8-bit count, if that is less), so only 256-d and wider get coarser codes.

    Candidates are re-ranked against the stored vectors, so the codes need only put a query's true neighbours
    within the re-rank depth: on 1M 512-d faces, PQ32x4fs reached the recall@10 of PQ64x4fs from a depth of 50
    (within 0.001 at 30) and scanned 1.3-1.9x faster, the more lists probed the more (benchmarks/fast_scan.py).
    Narrow vectors need the floor: 64-d faces with 4 codes stayed at recall@10 0.988 at every depth, where 8
    reach 0.99 (tests/test_search_tuning.py).
    """
    m = max(dimension // 8, 1)
    if pq_bits == 4:
        m = max(dimension // 16, min(16, m))
    while dimension % m:
        m -= 1
    return m


def pq_bits_for(searches_on_gpu: bool) -> int:
    """Bits per sub-quantizer code: 4 where partitions are searched on CPUs, 8 where on GPUs.

    A 4-bit code's 16-entry lookup table fits a SIMD register, so faiss's fast-scan kernels look up 32 codes
    per instruction: on 1M 512-d faces, PQ64x4fs scanned 22-32x faster than PQ64x8 at the same lists probed,
    and after re-ranking its top 50 or more candidates reached the same recall@10 (benchmarks/fast_scan.py). It also
    halves the codes' memory. faiss's GPU IVF-PQ has no fast-scan form, and 8-bit lookups are cheap there.
    """
    return 8 if searches_on_gpu else 4


def training_sample_size(num_vectors: int, nlist: int) -> int:
    """Training points: 40 per list (faiss warns under 39) and at least 10k for the PQ codebooks.
    More points barely move recall here, since candidates are re-ranked, but k-means time grows with them."""
    return min(num_vectors, max(40 * nlist, 10_000))


# k-means iterations of the coarse quantizer: faiss's default 25 costs more than twice
# the time for under 1% of recall@10 once candidates are re-ranked (benchmarks/README.md).
COARSE_KMEANS_ITERATIONS = 10

# From this many lists the coarse quantizer trains in two levels (`training.two_level_centroids`): k-means
# compares every training point with every centroid, 40 * nlist^2 * d work per iteration, which at 4,096
# lists of 512-d took 72-101 s on two cores (benchmarks/README.md), at 8,192 four times that and at 16,384
# (a collection retrained at 10M faces) sixteen, while the collection keeps growing in its exact index; two
# levels compare each point with ~2 * sqrt(nlist) centroids.
TWO_LEVEL_KMEANS_FROM = 8192

# Full k-means iterations after the two levels, each a tenth of flat training's work. On 164k clustered 64-d
# vectors into 4,096 lists, the share of true top-10 neighbours within the 16 nearest lists was 0.89 from the two
# levels, 0.93 / 0.95 / 0.97 after 1 / 2 / 4 iterations, 0.99 from 10 flat ones (14.7 s against 3.7 s for 2).
TWO_LEVEL_REFINE_ITERATIONS = 2


def default_nprobe(nlist: int) -> int:
    """Lists probed: 1/16 of them, at least 16. Re-ranking recovers the PQ error, so the probe count
    is what bounds recall; 1/16 reached recall@10 >= 0.95 on clustered data in benchmarks/serving.py."""
    return min(nlist, max(16, nlist // 16))


def nprobe_for(requested: int, rerank_k: int, nlist: int, num_vectors: int) -> int:
    """Lists to probe: the requested number (0: `default_nprobe`), raised until the probed lists hold
    about twice the re-rank depth, so a large k still gets k candidates; at most nlist."""
    needed = math.ceil(2 * rerank_k * nlist / max(num_vectors, 1))
    return min(nlist, max(requested or default_nprobe(nlist), needed))


def rerank_depth(k: int, tuned: int = 0) -> int:
    """PQ candidates the collection re-ranks against full-precision vectors for a top-k search.

    `tuned` is the depth measured for top-10 (`choose_search_params`): used as is up to k = 10 (a top-k
    inside a top-10 that reached its recall), in proportion to k above. Without one (0): PQ64 ranks the
    true top-10 inside its top-100 for ~all queries on 512-d face data, so 10x k (at least 100) suffices.
    """
    if tuned:
        return max(tuned, math.ceil(tuned * k / MEASURED_K))
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


# ---- parameters tuned by measurement (cluster/gateway/maintenance.py measures, these rules choose) ----

# Recall is measured for top-10 searches, the size a person reviews, and the figure peers publish.
MEASURED_K = 10

# Re-rank depths measured, as the collection's top-`depth` PQ candidates for a top-10 search: one search at
# the deepest gives every shallower depth too (a PQ top-d is the first d of its top-200).
RERANK_DEPTHS = (10, 15, 20, 30, 50, 100, 200)

# The ascending nprobe sweep stops once recall@10 reaches this at some re-rank depth: past it, more lists
# buy nothing that 1,000 queries can tell apart (one miss in 10,000 neighbours). Otherwise it stops one step
# past the collection's target (cluster/gateway/maintenance.py).
SATURATED_RECALL = 0.9995


# A setting reaches a target when its measured recall@10, less this many standard errors of the mean over the
# sampled queries, does: one-sided 95% confidence. On the point estimate alone, the 1M and 10M collections of
# benchmarks/scale.py chose settings measured at 0.954-0.963 for a 0.95 target that served 0.948-0.9496.
CONFIDENCE_Z = 1.645

# A new photo of an enrolled person misses this many times the true neighbours that the collection's own faces,
# held out of their answers, miss at the same setting: the held-out faces are the photos the collection has, a new
# one lies a little off them, and its neighbours may be spread over more lists. Measured with noisy copies of
# enrolled faces as the new photos, on clustered 512-d faces: through the cluster 1.5x at 250k faces (the setting
# chosen for a 0.99 target, measured at 0.9932, served 0.9898), 1.1-1.4x at 1M, 1.1-1.2x at 10M on 505 held-out
# faces (1.45x on 201), 1.3-1.5x measured at 5.1M and served at 10M; in-process (`recall_gap.py`) 1.1-1.3x on 1M
# faces in 4,096 lists, but 0.6-1.0x on 3M in 8,192 (benchmarks/README.md). It varies with the data and the lists,
# so it is set near the top of what the cluster measured: a setting chosen for new photos then served them at
# least its target in every run since.
# At a 0.95 target a setting must reach 0.964 on the held-out faces, less its confidence margin; at 0.99, 0.9929.
NEW_PHOTO_MISS_FACTOR = 1.4


@dataclass(frozen=True)
class SearchPoint:
    """One measured setting: lists probed, collection re-rank depth for top-10, the recall@10 it reached, and
    that mean's standard error over the sampled queries (0: not recorded, in tables measured before it was)."""

    nprobe: int
    rerank_depth: int
    recall: float
    stderr: float = 0.0

    def new_photo_recall(self) -> float:
        """The recall@10 that new photos of enrolled people reach here with 95% confidence: the held-out faces'
        lower confidence bound (`CONFIDENCE_Z`), its misses scaled by `NEW_PHOTO_MISS_FACTOR`."""
        held_out = self.recall - CONFIDENCE_Z * self.stderr
        return 1 - NEW_PHOTO_MISS_FACTOR * (1 - held_out)

    def reaches(self, target_recall: float) -> bool:
        """Whether new photos reach the target here, with 95% confidence (`new_photo_recall`)."""
        return self.new_photo_recall() >= target_recall


# Inner products of the sampled queries with every face that measuring recall may take, for their exact top-10:
# 1e10, 1,000 queries over 10M faces, take ~85 s of each of two cores (`ShardIndex.exact_topk`: 16.8 s per 1M faces
# on one core, benchmarks/README.md, `exact_topk.py`); 505 queries over 10M, and the nprobe sweep, took 76 s.
RECALL_INNER_PRODUCTS = 10_000_000_000


def recall_queries(num_vectors: int) -> int:
    """Faces sampled as queries to measure recall: 1,000 (recall@10 to about +-0.003 at 0.99, +-0.005 at 0.96) up
    to 10M faces, fewer past that so that their exact top-10, a flat search over every face, stays within
    `RECALL_INNER_PRODUCTS`; at least 200 (+-0.007 at 0.99). A 10M collection measured on 201 of its faces read
    0.962 at nprobe 160 where 505 later read 0.956: the band its settings fall in is no wider than that."""
    return max(200, min(1000, RECALL_INNER_PRODUCTS // max(num_vectors, 1)))


def probe_sweep(nlist: int) -> list[int]:
    """nprobe values measured: the powers of two and the quarter steps between them (1, 2, 3, 4, 5, 6, 7, 8,
    10, 12, 14, 16, 20, ... nlist). Recall grows about with log(nprobe), so the chosen setting costs at most
    ~1.25x the cheapest that reaches the target. Doubling steps left up to 2x (a 10M collection needed more
    than 256 lists of 4,096 and measured 512), half steps up to 1.5x (with each face in two lists, 128 did
    not reach 0.95 and the next step, 192, served 0.958; benchmarks/README.md, `scale.py`). The sweep,
    ascending, stops one step past the target or at saturation (`SATURATED_RECALL`): each step scans the
    lists of one nprobe for a few hundred queries, which beside the exact search of the same queries over
    every face is little, however many steps."""
    out, p = [], 1
    while p < nlist:
        steps = min(p, 4)  # 1; 2, 3; then quarter steps
        out += [p + i * p // steps for i in range(steps)]
        p *= 2
    return [q for q in out if q < nlist] + [nlist]


def lists_per_face(pq_bits: int) -> float:
    """Lists a face is stored in, on average: where partitions are searched on CPUs (4-bit fast-scan codes),
    faces near the border of their list are stored in the next nearest lists too (cluster/index/spill.py), where
    the scan is a search's cost at scale and the extra lists find neighbours in fewer codes scanned
    (benchmarks/README.md, `spill.py`): 2.8 lists a face at a 10M partition's list size (2.5M clustered faces in
    2,048 lists), fewer where a list holds fewer identities (1.5 with two lists at most on 1M in 4,096); 2 lies
    between. One on GPUs."""
    return 2.0 if pq_bits == 4 else 1


# Fast-scan (4-bit) codes cost this many times less per code scanned than 8-bit ones: 22-32x measured at
# PQ64 on 1M 512-d faces (benchmarks/fast_scan.py); the lower figure, rounded down, so as not to undercount.
FAST_SCAN_SPEEDUP = 16


def search_cost(nprobe: int, rerank_depth: int, *, nlist: int, num_vectors: int, dimension: int, pq_m: int,
                pq_bits: int = 8) -> float:
    """Work per top-10 query, in 8-bit table lookups or multiply-adds: the PQ codes scanned in the probed lists
    (each face's codes in `lists_per_face` lists on average; pq_m lookups each, `FAST_SCAN_SPEEDUP` times fewer
    for 4-bit codes), plus the re-ranked candidates (fp16 decode and inner product, ~2 per dimension). Deterministic,
    unlike timing a 2-core machine that others share, and close to how time grows."""
    scanned = nprobe * num_vectors * lists_per_face(pq_bits) / max(nlist, 1)
    per_code = pq_m / FAST_SCAN_SPEEDUP if pq_bits == 4 else pq_m
    return scanned * per_code + rerank_depth * 2 * dimension


def choose_search_params(points: list[SearchPoint], target_recall: float, cost) -> SearchPoint:
    """The cheapest measured setting (by `cost(point)`) that reaches `target_recall` (`SearchPoint.reaches`);
    where none does, the one of highest recall (the cheapest of those). Ties in cost go to the higher recall.

    Raises:
        ValueError: no points.
    """
    if not points:
        raise ValueError("choose_search_params needs at least one measured point")
    reaching = [p for p in points if p.reaches(target_recall)]
    if reaching:
        return min(reaching, key=lambda p: (cost(p), -p.recall))
    best = max(p.recall for p in points)
    return min((p for p in points if p.recall == best), key=cost)

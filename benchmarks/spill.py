"""Spilled assignment measured by coverage: does storing each face in two or three lists find its neighbours in
fewer codes? Why fast-scan partitions do (`cluster/index/spill.py`).

At 10M faces the shards' time is the scan of the probed lists (benchmarks/README.md, issue 16: 512 of 4,096
lists, ~1.25M codes a query, ~1.7 ns a code on these cores), so batch-256 throughput follows the codes a query
scans for its recall. An IVF index stores each face in its nearest list; a true neighbour is missed when its
list is not among the probed ones. Spilling stores a face in a second list too: the next nearest ("naive"), or
the one SOAR (Sun et al., NeurIPS 2023, as ScaNN) chooses, whose residual is least parallel to the first's:
argmin ||x - c'||^2 + lambda <r, x - c'>^2 / ||r||^2, r = x - c; or a second and a third, the next nearest, as
the cluster does for faces near their borders (`spill.SPILL_RATIOS`). Lists grow, so each probed list costs
more; the question is whether fewer lists then reach the same recall.

Coverage@10 here is the share of each query's exact top-10 stored in at least one probed list: the recall an
exact scan of those lists would reach, and the ceiling of IVF-PQ with re-ranking (which, with PQ32x4fs at depth
50, reached within 0.001 of it in the fast-scan runs). It needs no index, so every variant is measured on the
same lists and queries: the coarse quantizer trained as the cluster trains it. Data as `benchmarks/scale.py`.

Prints, per variant and nprobe: codes scanned per query and coverage@10; then, per coverage target, the fewest
codes each variant needs among the nprobes measured; and one JSON line.

    python benchmarks/spill.py                          # 1M x 512-d, 4,096 lists: ~5 min on 2 cores
    python benchmarks/spill.py --num-vectors 200000     # a minute
    python benchmarks/spill.py --num-vectors 2500000 --nlist 2048 --lambdas 1   # a 10M partition's list size
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import faiss
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host import describe  # noqa: E402  (benchmarks/host.py)
from scale import CHUNK, Chunks, probes  # noqa: E402  (benchmarks/scale.py)

from cluster.index import spill, tuning, vectors  # noqa: E402

K = 10
CANDIDATE_LISTS = 16  # second lists are chosen among each face's nearest lists
TARGETS = (0.95, 0.975, 0.99)
SPILL_SHARES = (0.25, 0.5, 0.75)  # shares of faces given a second list by the distance-ratio rule


def distance_ratio(x: np.ndarray, centroids: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """||x - c2||^2 / ||x - c1||^2 of each face and its two nearest lists' centroids: 1 on the border between
    them, larger the deeper inside its nearest list a face is."""
    d1 = np.einsum("bd,bd->b", x - centroids[nearest[:, 0]], x - centroids[nearest[:, 0]])
    d2 = np.einsum("bd,bd->b", x - centroids[nearest[:, 1]], x - centroids[nearest[:, 1]])
    return d2 / np.maximum(d1, 1e-12)


def second_lists(x: np.ndarray, centroids: np.ndarray, nearest: np.ndarray, lam: float) -> np.ndarray:
    """SOAR's second list of each face among its `nearest` lists after the first (lam 0: the next nearest)."""
    residual = x - centroids[nearest[:, 0]]
    others = x[:, None, :] - centroids[nearest[:, 1:]]
    loss = np.einsum("bkd,bkd->bk", others, others)
    if lam:
        parallel = np.einsum("bd,bkd->bk", residual, others)
        loss += lam * parallel**2 / np.maximum(np.einsum("bd,bd->b", residual, residual), 1e-12)[:, None]
    return nearest[np.arange(len(x)), 1 + loss.argmin(1)]


def run(num_vectors: int, dimension: int, nlist: int, num_queries: int, probes_swept: list[int],
        lambdas: list[float]) -> dict:
    data = Chunks(num_vectors, dimension)
    xq = probes(data, num_queries)
    coarse = faiss.index_factory(dimension, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(coarse).cp.niter = tuning.COARSE_KMEANS_ITERATIONS
    rng = np.random.default_rng(0)
    sample_rows = np.sort(rng.choice(num_vectors, tuning.training_sample_size(num_vectors, nlist), replace=False))
    xb = np.empty((num_vectors, dimension), np.float32)
    for i in range(len(data)):
        chunk = vectors.to_stored(data.chunk(i))  # as the cluster stores them
        xb[i * CHUNK:i * CHUNK + len(chunk)] = chunk
    coarse.train(xb[sample_rows])
    quantizer = faiss.extract_index_ivf(coarse).quantizer
    centroids = quantizer.reconstruct_n(0, nlist)
    truth = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    print(f"{num_vectors} x {dimension}-d, nlist {nlist}, {num_queries} queries", flush=True)

    first, ratio = np.empty(num_vectors, np.int64), np.empty(num_vectors, np.float32)
    seconds = {"naive": np.empty(num_vectors, np.int64), **{f"SOAR {lam:g}": np.empty(num_vectors, np.int64)
                                                            for lam in lambdas}}
    third = np.empty(num_vectors, np.int64)  # the third nearest list
    rule = np.empty((num_vectors, spill.COPIES - 1), bool)  # the cluster's: which further lists a face is in
    for start in range(0, num_vectors, 20_000):
        x = xb[start:start + 20_000]
        scores, nearest = quantizer.search(x, CANDIDATE_LISTS)
        first[start:start + len(x)] = nearest[:, 0]
        seconds["naive"][start:start + len(x)] = nearest[:, 1]
        third[start:start + len(x)] = nearest[:, 2]
        ratio[start:start + len(x)] = distance_ratio(x, centroids, nearest)
        rule[start:start + len(x)] = spill.near_border(x, scores[:, :spill.COPIES], nearest[:, :spill.COPIES])
        for lam in lambdas:
            seconds[f"SOAR {lam:g}"][start:start + len(x)] = second_lists(x, centroids, nearest, lam)
    del xb
    # Extra lists per variant: (n,) arrays, -1 where a face has none
    extra = {name: [second] for name, second in seconds.items()}
    # Border faces only: a second list for the faces whose next nearest list is nearly as near (the distance
    # ratio under a bound, here the quantile that spills each share), none for those deep inside their list.
    for share in SPILL_SHARES:
        bound = float(np.quantile(ratio, share))
        extra[f"ratio<{bound:.3f} ({share:.0%})"] = [np.where(ratio <= bound, seconds["naive"], -1)]
    extra["three lists, naive"] = [seconds["naive"], third]
    extra["cluster's rule"] = [np.where(rule[:, 0], seconds["naive"], -1), np.where(rule[:, 1], third, -1)]
    print("cluster's rule: " + ", ".join(f"{share:.0%} of faces in their {n + 2}{'nd' if n == 0 else 'rd'} list"
                                         for n, share in enumerate(rule.mean(axis=0))), flush=True)

    # rank[q, l]: where list l comes in query q's probe order; a list is probed at nprobe when its rank is lower
    order = quantizer.search(xq, nlist)[1]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(nlist)[None, :].repeat(num_queries, 0), axis=1)
    first_size = np.bincount(first, minlength=nlist)
    variants = {"one list": [], **extra}
    figures: dict[str, list[dict]] = {}
    for name, further in variants.items():
        sizes = first_size + sum((np.bincount(lists[lists >= 0], minlength=nlist) for lists in further), 0)
        ranks = [np.take_along_axis(rank, first[truth], 1)]
        for lists in further:  # no such list (-1): never probed
            ranks.append(np.where(lists[truth] >= 0, np.take_along_axis(rank, np.maximum(lists[truth], 0), 1),
                                  nlist))
        best_rank = np.minimum.reduce(ranks)  # (nq, K): the earliest probed list holding each neighbour
        figures[name] = []
        for nprobe in probes_swept:
            codes = float(sizes[order[:, :nprobe]].sum(1).mean())
            coverage = float((best_rank < nprobe).mean())
            figures[name].append({"nprobe": nprobe, "codes": codes, "coverage_at_10": coverage})
            print(f"{name:22} nprobe {nprobe:5}: {codes / 1e3:8.1f}k codes a query, coverage@10 {coverage:.4f}",
                  flush=True)
    fewest: dict[str, dict[str, float | None]] = {}
    for target in TARGETS:
        fewest[str(target)] = {name: min((p["codes"] for p in points if p["coverage_at_10"] >= target), default=None)
                               for name, points in figures.items()}
        line = ", ".join(f"{name} {codes / 1e3:.0f}k" if codes else f"{name} not reached"
                         for name, codes in fewest[str(target)].items())
        print(f"coverage@10 >= {target}: fewest codes a query among the nprobes measured: {line}", flush=True)
    return {"num_vectors": num_vectors, "dimension": dimension, "nlist": nlist, "num_queries": num_queries,
            "variants": figures, "fewest_codes": fewest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=512)
    parser.add_argument("--nlist", type=int, default=0, help="lists; 0: tuning.nlist_for(num_vectors)")
    parser.add_argument("--num-queries", type=int, default=500)
    parser.add_argument("--lambdas", default="1,4", help="SOAR weights measured beside the naive second list")
    args = parser.parse_args()
    nlist = args.nlist or tuning.nlist_for(args.num_vectors)
    machine = describe(faiss=faiss.__version__)
    print(machine, flush=True)
    figures = run(args.num_vectors, args.dimension, nlist, args.num_queries, tuning.probe_sweep(nlist),
                  [float(v) for v in args.lambdas.split(",")])
    print(json.dumps({"benchmark": "spill", "machine": machine, **figures}))


if __name__ == "__main__":
    main()

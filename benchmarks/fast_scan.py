"""PQ codecs compared in-process: time to scan the probed lists, and recall after re-ranking.

Why the cluster trains CPU collections with 4-bit codes (`cluster.index.tuning.pq_bits_for`), one per 16
dimensions (`tuning.pq_m_for`): 8-bit codes, one per 8 dimensions (PQ64 at 512-d); 4-bit fast-scan codes as
many (PQ64x4fs); and 4-bit codes half as many (PQ32x4fs). The indexes share one coarse quantizer, so they
probe the same lists and differ only in their PQ codes. Each scans the lists with `search_preassigned` (as
shard workers do), keeps its top `depth` candidates, and those are re-ranked exactly against the stored fp16
vectors (as `ShardIndex` does). Data as
`benchmarks/scale.py`: clustered, 20 faces per identity, noisy copies as probes, exact top-10 as truth.

Prints, per codec, nprobe and re-rank depth: scan milliseconds per query (a batch of queries, every thread)
and recall@10; then each codec's scan speed-up over 8-bit codes at each nprobe, and one JSON line.

    python benchmarks/fast_scan.py                       # 1M x 512-d: ~5 min on 2 cores
    python benchmarks/fast_scan.py --num-vectors 200000  # a minute
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import faiss
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host import describe  # noqa: E402  (benchmarks/host.py)
from scale import Chunks, probes  # noqa: E402  (benchmarks/scale.py)

from cluster.index import tuning, vectors  # noqa: E402
from cluster.index.recall import recall_at_k  # noqa: E402
from cluster.index.training import ivfpq_factory  # noqa: E402

K = 10


def rerank(xq: np.ndarray, xb: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The top-k of each query's candidates by exact inner product with the stored vectors."""
    scores = np.einsum("qd,qcd->qc", xq, xb[np.maximum(candidates, 0)])
    scores[candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def run(num_vectors: int, dimension: int, num_queries: int, probes_swept: list[int], depths: list[int]) -> dict:
    data = Chunks(num_vectors, dimension)
    xb = np.concatenate([vectors.to_stored(data.chunk(i)) for i in range(len(data))]).astype(np.float32)
    xq = probes(data, num_queries)
    truth = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    nlist = tuning.nlist_for(num_vectors)
    sample = xb[np.random.default_rng(0).choice(num_vectors, tuning.training_sample_size(num_vectors, nlist),
                                                replace=False)]
    print(f"{num_vectors} x {dimension}-d, nlist {nlist}, {faiss.omp_get_max_threads()} threads", flush=True)
    coarse = faiss.IndexFlatIP(dimension)
    pq_m_8, pq_m_4 = tuning.pq_m_for(dimension, 8), tuning.pq_m_for(dimension, 4)
    codecs = [(pq_m_8, 8), (pq_m_8, 4), (pq_m_4, 4)]  # the first is the baseline of the speed-ups
    figures: dict[str, dict] = {}
    for pq_m, pq_bits in codecs:
        factory = ivfpq_factory(nlist, pq_m, pq_bits)
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = tuning.COARSE_KMEANS_ITERATIONS
        if pq_bits == 8:
            index.do_polysemous_training = False
        if coarse.ntotal:  # the lists the first index trained (as the cluster trains them), so all probe the same
            ivf.quantizer.add(coarse.reconstruct_n(0, nlist))  # train() then skips k-means
        started = time.perf_counter()
        index.train(sample)
        train_s = time.perf_counter() - started
        if not coarse.ntotal:
            coarse.add(ivf.quantizer.reconstruct_n(0, nlist))
        started = time.perf_counter()
        index.add(xb)
        add_s = time.perf_counter() - started
        print(f"{factory}: training {train_s:.1f} s (the first: coarse k-means and PQ; then PQ alone), adding "
              f"{add_s:.1f} s ({num_vectors / add_s:.0f} faces/s), {ivf.code_size} bytes a code", flush=True)
        rows = figures[factory] = {"pq_m": pq_m, "pq_bits": pq_bits, "train_s": train_s, "add_s": add_s,
                                   "code_bytes": ivf.code_size, "points": []}
        for nprobe in probes_swept:
            index.nprobe = nprobe
            Dq, Iq = coarse.search(xq, nprobe)
            for depth in depths:
                started = time.perf_counter()
                candidates = index.search_preassigned(xq, depth, Iq, Dq)[1]
                scan_ms = 1000 * (time.perf_counter() - started) / num_queries
                recall = recall_at_k(rerank(xq, xb, candidates, K), truth)
                rows["points"].append({"nprobe": nprobe, "depth": depth, "scan_ms": scan_ms, "recall_at_10": recall})
                print(f"  nprobe {nprobe:4} re-rank {depth:4}: scan {scan_ms:7.3f} ms/query  recall@10 {recall:.4f}",
                      flush=True)
        del index
    baseline, *others = figures
    speedups: dict[str, dict[int, float]] = {}
    for factory in others:
        speedups[factory] = {}
        for nprobe in probes_swept:
            slow = np.median([p["scan_ms"] for p in figures[baseline]["points"] if p["nprobe"] == nprobe])
            fast = np.median([p["scan_ms"] for p in figures[factory]["points"] if p["nprobe"] == nprobe])
            speedups[factory][nprobe] = float(slow / fast)
            print(f"nprobe {nprobe:4}: {factory} scans {speedups[factory][nprobe]:.1f}x faster than {baseline} "
                  "(median over re-rank depths)")
    return {"num_vectors": num_vectors, "dimension": dimension, "nlist": nlist, "num_queries": num_queries,
            "codecs": figures, "scan_speedup": speedups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=512)
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--nprobe", default="64,128,256,512")
    parser.add_argument("--depths", default="30,50,100,300")
    args = parser.parse_args()
    machine = describe(faiss=faiss.__version__)
    print(machine, flush=True)
    figures = run(args.num_vectors, args.dimension, args.num_queries, [int(p) for p in args.nprobe.split(",")],
                  [int(d) for d in args.depths.split(",")])
    print(json.dumps({"benchmark": "fast_scan", "machine": machine, **figures}))


if __name__ == "__main__":
    main()

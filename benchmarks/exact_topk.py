"""The exact top-10 a collection measures its recall against: faiss's `knn` against a matrix product, and what
`ShardIndex.exact_topk` does (the faster of the two for the number of queries), per number of queries, on one core.

A collection samples 200 to 1,000 of its faces as queries (`tuning.recall_queries`) and finds their exact
top-k over every face, scanning its fp16 vectors in steps. faiss scores with BLAS only from
`distance_compute_blas_threshold` query floats per call (250 queries at 512-d) and with its SIMD kernel
below, so the time per query depends on how many there are; this prints both ways, and each step size of the
matrix product, per 1M faces.

    python benchmarks/exact_topk.py                      # 1M x 512-d: ~4 min on one core
    python benchmarks/exact_topk.py --num-vectors 200000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as a shard worker of one CPU: BLAS and faiss on one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host import describe  # noqa: E402  (benchmarks/host.py)

from cluster.index import shard_index  # noqa: E402
from cluster.index.synthetic import clustered_embeddings  # noqa: E402

K = 11  # a held-out face's top-10 and itself


def scan(xq: np.ndarray, codes: np.ndarray, fp16: faiss.ScalarQuantizer, d: int, rows: int, top) -> float:
    """Seconds to decode every stored vector in steps of `rows` and take each query's top-K with `top`."""
    started = time.perf_counter()
    for start in range(0, len(codes), rows):
        top(xq, fp16.decode(codes[start:start + rows]).reshape(-1, d), K)
    return time.perf_counter() - started


def faiss_knn(xq, xb, k):
    return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=512)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    machine = describe(faiss=faiss.__version__)
    print(machine, flush=True)
    n, d = args.num_vectors, args.dimension
    codes = np.ascontiguousarray(clustered_embeddings(n, d, seed=0).astype(np.float16)).view(np.uint8)
    fp16 = faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16)
    per_million = 1_000_000 / n
    print(f"{n} x {d}-d fp16 vectors, one core; seconds per 1M vectors "
          f"(faiss BLAS threshold {faiss.cvar.distance_compute_blas_threshold} query floats)", flush=True)
    figures = []
    for nq in (201, 500, 1000):
        xq = clustered_embeddings(nq, d, seed=1)
        row = {"queries": nq,
               "faiss_knn_s": scan(xq, codes, fp16, d, 65_536, faiss_knn) * per_million,
               "matrix_product_s_by_rows": {rows: scan(xq, codes, fp16, d, rows, shard_index._top_by_matrix_product)
                                            * per_million for rows in (8192, 65_536)},
               "exact_topk_s": scan(xq, codes, fp16, d, shard_index._EXACT_ROWS, shard_index._top_inner_products)
               * per_million}
        figures.append(row)
        print(f"  {nq:>5} queries: faiss.knn {row['faiss_knn_s']:.1f} s; matrix product "
              + ", ".join(f"{s:.1f} s in steps of {rows}" for rows, s in row["matrix_product_s_by_rows"].items())
              + f"; as exact_topk scores (steps of {shard_index._EXACT_ROWS}) {row['exact_topk_s']:.1f} s", flush=True)
    print(json.dumps({"benchmark": "exact_topk", "machine": machine, "num_vectors": n, "dimension": d,
                      "seconds_per_million": figures}))


if __name__ == "__main__":
    main()

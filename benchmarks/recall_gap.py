"""The collection's own recall measurement against the recall its probes get, as it grows.

A collection tunes nprobe and re-rank depth on faces of its own used as queries, held out of their own
answers (cluster/index/recall.py), when its index goes live and again each time it has doubled. The
benchmarks probe it with noisy copies of enrolled faces instead, after it has grown further. On 10M 512-d
faces the two differed by 0.011 to 0.024 at the nprobe chosen (benchmarks/README.md, `scale.py`): this
splits that gap into what growth does (the same queries' kind, measured at half and at the full size) and
what the kind of query does (held-out faces against noisy copies, both at the full size).

In-process, as the cluster's partitions hold it (two by default, faces spread over them): IVF-PQ fast-scan
indexes trained as the cluster trains them, faces near a list's border in more lists (`cluster.index.spill`),
each partition's share of the re-rank depth re-ranked exactly and the shares merged. Data and probes as
`scale.py`. Prints recall@10 per nprobe and collection re-rank depth for each kind of query and size, how many
times the held-out faces' misses the probes miss (what `tuning.NEW_PHOTO_MISS_FACTOR` is set from), and one
JSON line.

    python benchmarks/recall_gap.py                          # 1M x 512-d: ~5 min on 2 cores
    python benchmarks/recall_gap.py --num-vectors 200000     # a minute
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

from cluster.index import recall, spill, tuning, vectors  # noqa: E402
from cluster.index.training import load_index, train_ivfpq  # noqa: E402

K = 10
DEPTHS = (15, 20, 50)  # collection-wide re-rank depths for a top-10, each partition re-ranking its share


def recall_by_setting(partitions: list[faiss.Index], xb: np.ndarray, xq: np.ndarray, truth: np.ndarray,
                      own: np.ndarray | None, nprobes: list[int]) -> dict[str, float]:
    """recall@10 of xq against `truth` ((nq, 10) rows of xb) per "nprobe/depth", each partition re-ranking its
    share of the depth (`tuning.partition_rerank_depth`) and the shares merged, as the cluster searches; `own`:
    each query's own row, left out of its answers (held-out faces), or None (probes)."""
    Dq, Iq = faiss.extract_index_ivf(partitions[0]).quantizer.search(xq, max(nprobes))
    deepest = tuning.partition_rerank_depth(max(DEPTHS), K, len(partitions))
    out = {}
    for nprobe in nprobes:
        parts = []
        for index in partitions:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = nprobe
            labels = ivf.search_preassigned(xq, spill.COPIES * deepest, np.ascontiguousarray(Iq[:, :nprobe]),
                                            np.ascontiguousarray(Dq[:, :nprobe]))[1]
            candidates = spill.first_unique(labels, deepest)
            scores = np.einsum("qd,qkd->qk", xq, xb[np.maximum(candidates, 0)])
            scores[candidates < 0] = -np.inf
            parts.append((candidates, scores))
        for depth in DEPTHS:
            found = recall.emulate_rerank(parts, tuning.partition_rerank_depth(depth, K, len(partitions)), K,
                                          own if own is not None else np.full(len(xq), -1))
            out[f"{nprobe}/{depth}"] = recall.recall_at_k(found, truth)
    return out


def held_out(xb: np.ndarray, size: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nq faces among the first `size` as queries, their rows, and their exact top-10 there without themselves."""
    rows = np.random.default_rng(seed).choice(size, nq, replace=False)
    xq = np.ascontiguousarray(xb[rows])
    I = faiss.knn(xq, xb[:size], K + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]
    truth = np.array([[j for j in row if j != r][:K] for row, r in zip(I, rows)])
    return xq, rows, truth


def run(num_vectors: int, dimension: int, num_queries: int, num_partitions: int) -> dict:
    data = Chunks(num_vectors, dimension)
    xb = np.empty((num_vectors, dimension), np.float32)
    for i in range(len(data)):
        chunk = vectors.to_stored(data.chunk(i)).astype(np.float32)  # as the cluster stores them
        xb[i * CHUNK:i * CHUNK + len(chunk)] = chunk
    nlist, half = tuning.nlist_for(num_vectors), num_vectors // 2
    sample = np.sort(np.random.default_rng(0).choice(half, tuning.training_sample_size(half, nlist), replace=False))
    trained = train_ivfpq(xb[sample], nlist, tuning.pq_m_for(dimension, 4), 4)
    partitions = [load_index(trained) for _ in range(num_partitions)]
    partition_of = np.arange(num_vectors) % num_partitions  # the cluster spreads faces by a hash of their id
    nprobes = [p for p in tuning.probe_sweep(nlist) if nlist // 128 <= p <= nlist // 8]
    print(f"{num_vectors} x {dimension}-d, IVF{nlist},PQ{tuning.pq_m_for(dimension, 4)}x4fs in {num_partitions} "
          f"partitions, {num_queries} queries of each kind; recall@10 at nprobe/re-rank depth", flush=True)

    def add(rows: range) -> None:
        for p, index in enumerate(partitions):
            mine = np.asarray(rows)[partition_of[rows.start:rows.stop] == p]
            for start in range(0, len(mine), 200_000):
                spill.add(index, xb[mine[start:start + 200_000]], mine[start:start + 200_000])

    add(range(0, half))
    xq, rows, truth = held_out(xb, half, num_queries, seed=1)
    kinds = {"held-out faces, half the faces": recall_by_setting(partitions, xb, xq, truth, rows, nprobes)}
    add(range(half, num_vectors))
    xq, rows, truth = held_out(xb, num_vectors, num_queries, seed=2)
    kinds["held-out faces, all"] = recall_by_setting(partitions, xb, xq, truth, rows, nprobes)
    xq = probes(data, num_queries)
    truth = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    kinds["noisy probes, all"] = recall_by_setting(partitions, xb, xq, truth, None, nprobes)
    held, noisy = kinds["held-out faces, all"], kinds["noisy probes, all"]
    miss_ratio = {s: (1 - noisy[s]) / max(1 - held[s], 1e-9) for s in held}

    names = list(kinds)
    print(f"{'nprobe/depth':>14}" + "".join(f"{name:>34}" for name in names) + f"{'misses, probes / held-out':>30}")
    for setting in kinds[names[0]]:
        print(f"{setting:>14}" + "".join(f"{kinds[name][setting]:>34.4f}" for name in names)
              + f"{miss_ratio[setting]:>30.2f}")
    return {"num_vectors": num_vectors, "dimension": dimension, "nlist": nlist, "num_partitions": num_partitions,
            "num_queries": num_queries, "recall_at_10": kinds, "probe_to_held_out_miss_ratio": miss_ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=512)
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--num-partitions", type=int, default=2, help="as the cluster's shards")
    args = parser.parse_args()
    machine = describe(faiss=faiss.__version__)
    print(machine, flush=True)
    figures = run(args.num_vectors, args.dimension, args.num_queries, args.num_partitions)
    print(json.dumps({"benchmark": "recall_gap", "machine": machine, **figures}))


if __name__ == "__main__":
    main()

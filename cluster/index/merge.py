"""Merging per-shard top-k results into one, exactly as one index holding every vector would rank them."""

import numpy as np


def merge_topk(results: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """Merges (D, I, *aligned) tuples of similarities (higher is better), labels and arrays aligned with them
    (each (nq, k_i); a search's face records or ids), into the best k.

    Missing results are I = -1 with D = -inf, as faiss pads them; they sort last and are kept as padding
    (None in an aligned array). Ties keep the order of `results`, then of rank. The aligned arrays travel
    with their candidates: a gather by the merge's order, where a dict of labels cost the gateway 2.5 times the
    time of a lean search's merge at batch 256 (benchmarks/README.md).

    Returns:
        D (nq, k) float32, I (nq, k) int64, and each aligned array (nq, k).
    """
    if not results:
        raise ValueError("merge_topk needs at least one result")
    D, I, *aligned = (np.concatenate(parts, axis=1) for parts in zip(*results))
    D = np.where(I < 0, -np.inf, D).astype(np.float32)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    merged = [np.take_along_axis(a, order, axis=1) for a in (D, I, *aligned)]
    if order.shape[1] < k:  # fewer candidates than k in all shards together
        widths = ((0, 0), (0, k - order.shape[1]))
        merged = [np.pad(a, widths, constant_values=fill)
                  for a, fill in zip(merged, (-np.inf, -1, *[None] * len(aligned)))]
    merged[1] = merged[1].astype(np.int64)
    return tuple(merged)

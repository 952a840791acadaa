"""Merging per-shard top-k results into one, exactly as one index holding every vector would rank them."""

import numpy as np


def merge_topk(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges (D, I) pairs of similarities (higher is better), each (nq, k_i), into the best k.

    Missing results are I = -1 with D = -inf, as faiss pads them; they sort last
    and are kept as padding. Ties keep the order of `results`, then of rank.

    Returns:
        D (nq, k) float32 and I (nq, k) int64.
    """
    if not results:
        raise ValueError("merge_topk needs at least one result")
    D = np.concatenate([d for d, _ in results], axis=1)
    I = np.concatenate([i for _, i in results], axis=1)
    D = np.where(I < 0, -np.inf, D).astype(np.float32)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    D_top = np.take_along_axis(D, order, axis=1)
    I_top = np.take_along_axis(I, order, axis=1)
    if D_top.shape[1] < k:  # fewer candidates than k in all shards together
        pad = k - D_top.shape[1]
        D_top = np.pad(D_top, ((0, 0), (0, pad)), constant_values=-np.inf)
        I_top = np.pad(I_top, ((0, 0), (0, pad)), constant_values=-1)
    return D_top, I_top.astype(np.int64)

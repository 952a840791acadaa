"""Measuring recall@k of IVF-PQ + re-ranking against exact search, for every re-rank depth from one search.

A collection measures itself on a sample of its own faces used as queries, held out of their own
answers: the exact top-(k+1) of a face holds the face itself first, which is dropped, and so is it from
the approximate answers (`held_out_truth`, `emulate_rerank`). Each partition returns its PQ candidates
in PQ order with their re-ranked (exact) scores, so the answer of any shallower re-rank is the merge of
the first d candidates of each partition, with no further search (`emulate_rerank`).
"""

from __future__ import annotations

import numpy as np


def held_out_truth(I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the exact top-(k+1) labels of queries that are faces of the collection: (each query's own label,
    its exact top-k without it).

    The query's own face scores highest (inner product of a unit vector with itself); where a duplicate
    ties with it, either one stands for the query, and the other stays in the truth.
    """
    return I[:, 0].copy(), I[:, 1:]


def emulate_rerank(parts: list[tuple[np.ndarray, np.ndarray]], depth: int, k: int, exclude: np.ndarray) -> np.ndarray:
    """The top-k labels a search re-ranking the first `depth` PQ candidates of each partition returns.

    Args:
        parts: per partition, (labels, scores) of shape (nq, depth_i): PQ candidates in PQ order (-1 for
            none) and their exact scores (-inf for none or a deleted face).
        depth: candidates each partition re-ranks (`tuning.partition_rerank_depth`).
        k: results per query.
        exclude: (nq,) a label per query left out of its answer (the query's own face).

    Returns:
        (nq, k) labels, best first, -1 where fewer than k.
    """
    labels = np.concatenate([lab[:, :depth] for lab, _ in parts], axis=1)
    scores = np.concatenate([s[:, :depth] for _, s in parts], axis=1).astype(np.float32, copy=True)
    scores[(labels < 0) | (labels == exclude[:, None])] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(labels, order, axis=1)
    top[~np.isfinite(np.take_along_axis(scores, order, axis=1))] = -1
    if top.shape[1] < k:
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
    return top


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k (truth, (nq, k)) found among its answers (found, (nq, k'))."""
    return float(np.mean(_shares(found, truth)))


def recall_with_error(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """`recall_at_k` and its standard error: the spread of the per-query shares over sqrt(queries). A query's
    neighbours are found or missed together (one list holds several), so the shares are the independent
    samples, not the neighbours."""
    shares = _shares(found, truth)
    stderr = float(np.std(shares, ddof=1) / np.sqrt(shares.size)) if shares.size > 1 else 0.0
    return float(np.mean(shares)), stderr


def _shares(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    k = truth.shape[1]
    hits = ((found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    return hits / k

"""Genuine and impostor similarity scores, and the candidate threshold they support."""
from __future__ import annotations

import numpy as np


def pair_scores(xb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of all pairs of unit vectors, split by whether the labels match.

    Args:
        xb: n×d float32 unit vectors.
        labels: n identity labels.

    Returns:
        (genuine, impostor) float32 score arrays: same-label pairs, different-label pairs.
    """
    n = len(xb)
    if xb.ndim != 2 or len(labels) != n:
        raise ValueError(f"xb must be n×d with n labels, got {xb.shape} and {len(labels)} labels")
    labels = np.asarray(labels)
    i, j = np.triu_indices(n, 1)
    scores = np.einsum("nd,nd->n", xb[i], xb[j]).astype(np.float32)
    same = labels[i] == labels[j]
    return scores[same], scores[~same]


def threshold_at_fmr(impostor: np.ndarray, max_fmr: float = 0.01, step: float = 0.05) -> float:
    """Lowest threshold on a `step` grid whose empirical false-match rate is ≤ `max_fmr`.

    A grid, not the exact quantile: with a few hundred impostor pairs the quantile
    itself is noise, and a round number says so.

    Args:
        impostor: impostor similarity scores.
        max_fmr: largest accepted fraction of impostor scores ≥ the threshold, in (0, 1).
        step: grid spacing, in (0, 1].

    Returns:
        The threshold, a multiple of `step`.
    """
    if not 0.0 < max_fmr < 1.0:
        raise ValueError(f"max_fmr must be in (0, 1), got {max_fmr}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if len(impostor) == 0:
        raise ValueError("impostor must hold at least one score")
    impostor = np.asarray(impostor, np.float64)
    for k in range(int(np.floor(-1.0 / step)), int(np.ceil(1.0 / step)) + 1):
        t = round(k * step, 6)
        if np.mean(impostor >= t) <= max_fmr:
            return t
    return 1.0

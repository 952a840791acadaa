"""False-match estimates from impostor scores, per comparison and per gallery.

A 1:N search compares the probe with N enrolled faces, so even a rare per-pair
false match becomes likely in a large gallery. `Calibration` turns the
distribution of impostor (different-person) similarities into:

- ``false_match_rate(s)``: P(one impostor scores >= s), estimated as
  (count + 1) / (n + 1), which never claims 0 for a tail it has not seen;
- ``gallery_false_match_probability(s, N)``: 1 - (1 - FMR(s))^N, the chance
  that at least one of N non-mated faces scores >= s.

The tail (the highest scores) is kept exactly, the bulk as quantiles, so a
calibration over millions of pairs stays a few tens of kilobytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

_TAIL = 10_000
_QUANTILES = 1001
_PROBABILITIES = np.linspace(0, 1, _QUANTILES)
UNCALIBRATED = -1.0


@dataclass(frozen=True)
class Calibration:
    """Impostor-score summary. Build with `from_scores`; see the module docstring."""

    source: str  # "model" or "gallery"
    n_pairs: int
    tail: np.ndarray  # highest scores, descending
    quantiles: np.ndarray  # scores at probabilities linspace(0, 1, _QUANTILES)
    default_min_similarity: float = UNCALIBRATED

    @classmethod
    def from_scores(cls, scores: np.ndarray, *, source: str, default_min_similarity: float = UNCALIBRATED) -> Calibration:
        """Summarises impostor similarities.

        Raises:
            ValueError: fewer than 10 scores, or non-finite ones.
        """
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size < 10 or not np.isfinite(scores).all():
            raise ValueError(f"calibration needs >= 10 finite impostor scores, got {scores.size}")
        tail = -np.sort(-scores)[:_TAIL]
        quantiles = np.quantile(scores, _PROBABILITIES)
        return cls(source, int(scores.size), tail.astype(np.float32), quantiles.astype(np.float32), default_min_similarity)

    def false_match_rate(self, similarity: np.ndarray | float) -> np.ndarray:
        """P(one impostor scores >= similarity), vectorised."""
        s = np.asarray(similarity, dtype=np.float32)
        ascending_tail = self.tail[::-1]
        in_tail = ascending_tail.size - np.searchsorted(ascending_tail, s, side="left")
        tail_rate = (in_tail + 1.0) / (self.n_pairs + 1.0)
        bulk_rate = 1.0 - np.interp(s, self.quantiles, _PROBABILITIES)
        return np.where(s >= self.tail[-1], tail_rate, np.maximum(bulk_rate, tail_rate))

    def gallery_false_match_probability(self, similarity: np.ndarray | float, gallery_size: int) -> np.ndarray:
        """P(at least one of gallery_size impostors scores >= similarity)."""
        return gallery_probability(self.false_match_rate(similarity), gallery_size)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, source=self.source, n_pairs=self.n_pairs, tail=self.tail, quantiles=self.quantiles,
                 default_min_similarity=self.default_min_similarity)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Calibration:
        with np.load(io.BytesIO(data)) as f:
            return cls(str(f["source"]), int(f["n_pairs"]), f["tail"], f["quantiles"], float(f["default_min_similarity"]))


def gallery_probability(false_match_rate: np.ndarray, gallery_size: int) -> np.ndarray:
    """P(at least one of gallery_size impostors scores at or above the score of per-pair false_match_rate)."""
    fmr = np.minimum(false_match_rate, 1.0)
    with np.errstate(divide="ignore"):
        return -np.expm1(gallery_size * np.log1p(-fmr))


def impostor_scores(xb: np.ndarray, person_ids: list[str] | None = None, *, max_pairs: int = 2_000_000,
                    seed: int = 0) -> np.ndarray:
    """Similarities between pairs of distinct faces of a sample, skipping pairs known to share a person.

    Faces of one person enrolled twice without a person id count as impostors,
    which errs towards higher (more cautious) false-match estimates.
    """
    n = xb.shape[0]
    if n < 2:
        return np.empty(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 > max_pairs:
        keep = rng.choice(n, size=int(np.sqrt(2 * max_pairs)) + 1, replace=False)
        xb = xb[keep]
        person_ids = [person_ids[i] for i in keep] if person_ids is not None else None
        n = xb.shape[0]
    similarities = xb.astype(np.float32) @ xb.astype(np.float32).T
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    if person_ids is not None:
        labels = np.asarray(person_ids, dtype=object)
        known = labels != ""
        same_person = (labels[:, None] == labels[None, :]) & known[:, None] & known[None, :]
        upper &= ~same_person
    return similarities[upper]


@dataclass(frozen=True)
class EmbeddingModel:
    """The face model whose embeddings image requests produce."""

    name: str
    dimension: int
    calibration: Calibration | None = None  # the model's impostor scores, when known

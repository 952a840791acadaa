"""False-match estimates from impostor scores, per comparison and per gallery, and thresholds set as an error rate.

A 1:N search compares the probe with N enrolled faces, so even a rare per-pair
false match becomes likely in a large gallery. `Calibration` turns the
distribution of impostor (different-person) similarities into:

- ``false_match_rate(s)``: P(one impostor scores >= s). Where impostors were seen
  at or above s, the measured fraction count / n. Beyond the data (s above the
  highest impostor score seen) nothing was measured: the rate reported there is
  the one-sided 95 % Clopper-Pearson upper bound 1 - 0.05^(1/n) (about 3/n, the
  "rule of three"), and ``false_match_rate_is_bound(s)`` says so. The same bound
  stands where only 1 or 2 impostors scored >= s: their count / n is below what n
  pairs can resolve (and would make the rate rise past the highest score). A point
  estimate the data cannot support is never given;
- ``gallery_false_match_probability(s, N)``: 1 - (1 - FMR(s))^N, the chance
  that at least one of N non-mated faces scores >= s;
- ``threshold_for_fpir(fpir, N)``: the lowest similarity whose false-positive
  identification rate (FPIR, NIST FRTE's term) over N faces is at most `fpir`
  with 95 % confidence, from the Clopper-Pearson upper bound on the FMR. It rises
  with N. When the calibration has too few pairs to certify the target (the
  bound at zero impostors, about 3/n, is still too high), the threshold is set
  just above the highest impostor score and `met` is False.

The tail (the highest scores) is kept exactly, the bulk as quantiles, so a
calibration over millions of pairs stays a few tens of kilobytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_TAIL = CALIBRATION_TAIL = 10_000  # highest impostor scores kept exactly
_QUANTILES = CALIBRATION_QUANTILES = 1001  # the bulk, at probabilities 0, 0.001, ..., 1
_PROBABILITIES = np.linspace(0, 1, _QUANTILES)
UNCALIBRATED = -1.0
CONFIDENCE = 0.95  # of every false-match bound reported
SOURCES = ("model", "gallery", "job")
# A face collection's default target FPIR when its manifest names none: at most one search in a
# hundred of a person who is not enrolled returns a candidate above the threshold. Candidates are
# for human review, so a reviewer sees about one chance candidate per hundred such searches, while
# genuine pairs stay above the threshold: with SFace, 0.54 % of the degraded same-person pairs fall
# under even the strictest threshold it gives, 0.499 (benchmarks/README.md, calibrate_faces.py).
# A stricter default (1e-3) would reach that strictest threshold from ~70 faces on, where 210,273
# impostor pairs can no longer certify it, and so buy nothing the data can vouch for.
DEFAULT_FPIR = 0.01
_TABLES = Path(__file__).resolve().parents[1] / "faces" / "data"


def calibration_table_path(model: str) -> Path:
    """The shipped score table of a face model (`benchmarks/calibrate_faces.py` writes it)."""
    return _TABLES / f"{model}_calibration.npz"


def fmr_upper_bound(count: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen `count` times in `n` trials.

    The p at which P(Binomial(n, p) <= count) = 1 - confidence, by bisection on the
    exact binomial CDF (no SciPy). count = 0 gives 1 - (1 - confidence)^(1/n) ≈ 3/n.
    """
    if not 0 <= count <= n or n < 1:
        raise ValueError(f"need 0 <= count <= n and n >= 1, got count={count}, n={n}")
    alpha = 1.0 - confidence
    if count == n:
        return 1.0
    if count == 0:
        return -math.expm1(math.log(alpha) / n)
    lo, hi = count / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _binomial_cdf(count, n, mid) > alpha else (lo, mid)
    return hi


def _binomial_cdfs(max_count: int, n: int, p: float) -> np.ndarray:
    """P(Binomial(n, p) <= c) for c = 0..max_count; pmf terms built in log space, so n·p in the thousands is fine."""
    k = np.arange(max_count, dtype=np.float64)
    log_ratio = np.log((n - k) / (k + 1)) + math.log(p) - math.log1p(-p)
    log_pmf = n * math.log1p(-p) + np.concatenate([[0.0], np.cumsum(log_ratio)])
    return np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)


def _binomial_cdf(count: int, n: int, p: float) -> float:
    return float(_binomial_cdfs(count, n, p)[-1])


def _kept(cache: dict, key, compute):
    """cache[key], computed once by `compute()`: concurrent callers at worst compute it twice; emptied past 4,096
    entries, so that callers asking ever new keys cannot grow it without end."""
    found = cache.get(key)
    if found is None:
        if len(cache) > 4096:
            cache.clear()
        found = cache[key] = compute()
    return found


@dataclass(frozen=True)
class FpirThreshold:
    """A similarity threshold derived from a target FPIR and a gallery size.

    similarity: candidates at or above it are returned.
    fpir_bound: 95 % upper bound on the FPIR at `similarity` for the gallery size.
    met: whether fpir_bound <= the target; False when the calibration has too few
        impostor pairs to certify the target, and the threshold is then just above the
        highest impostor score seen.
    """

    similarity: float
    fpir_bound: float
    met: bool


@dataclass(frozen=True)
class Calibration:
    """Impostor-score summary. Build with `from_scores` or `from_table`; see the module docstring."""

    source: str  # "model", "gallery" or "job"
    n_pairs: int
    tail: np.ndarray  # highest scores, descending
    quantiles: np.ndarray  # scores at probabilities linspace(0, 1, _QUANTILES)
    default_min_similarity: float = UNCALIBRATED
    _thresholds: dict = field(default_factory=dict, compare=False, repr=False)  # (fpir, N) → FpirThreshold
    # similarity → fmr_bound: every search at the default or a given threshold states its FPIR bound, and the
    # bound's bisection over the binomial CDF costs milliseconds once impostors score above it (benchmarks/README.md)
    _bounds: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_scores(cls, scores: np.ndarray, *, source: str, default_min_similarity: float = UNCALIBRATED) -> Calibration:
        """Summarises impostor similarities.

        Raises:
            ValueError: fewer than 10 scores, or non-finite ones, or an unknown source.
        """
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size < 10 or not np.isfinite(scores).all():
            raise ValueError(f"calibration needs >= 10 finite impostor scores, got {scores.size}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        tail = -np.sort(-scores)[:_TAIL]
        quantiles = np.quantile(scores, _PROBABILITIES)
        return cls(source, int(scores.size), tail.astype(np.float32), quantiles.astype(np.float32), default_min_similarity)

    @classmethod
    def from_table(cls, path: Path | str, *, source: str = "model") -> Calibration:
        """The impostor side of a score table written by `benchmarks/calibrate_faces.py` or `jobs/calibrate.py`."""
        with np.load(path) as f:
            return cls(source, int(f["n_pairs"]), f["tail"].astype(np.float32), f["quantiles"].astype(np.float32))

    def impostor_count(self, similarity: np.ndarray | float) -> np.ndarray:
        """Impostor pairs scoring >= similarity: exact in the tail, from the quantiles below it."""
        s = np.asarray(similarity, dtype=np.float32)
        ascending_tail = self.tail[::-1]
        in_tail = (ascending_tail.size - np.searchsorted(ascending_tail, s, side="left")).astype(np.float64)
        bulk = self.n_pairs * (1.0 - np.interp(s, self.quantiles, _PROBABILITIES))
        return np.where(s >= self.tail[-1], in_tail, np.maximum(bulk, in_tail))

    def false_match_rate_is_bound(self, similarity: np.ndarray | float) -> np.ndarray:
        """True where fewer impostors scored >= similarity than n pairs can resolve (none, or 1-2 of them): the
        FMR reported there is the 95 % upper bound for none seen."""
        return self.impostor_count(similarity) / self.n_pairs < fmr_upper_bound(0, self.n_pairs)

    def false_match_rate(self, similarity: np.ndarray | float) -> np.ndarray:
        """P(one impostor scores >= similarity), vectorised: measured, or the 95 % bound beyond the data.

        Non-increasing in similarity: the bound for none seen (≈ 3/n) is the floor of the measured rates.
        """
        return np.maximum(self.impostor_count(similarity) / self.n_pairs, fmr_upper_bound(0, self.n_pairs))

    def fmr_bound(self, similarity: float) -> float:
        """95 % Clopper-Pearson upper bound on FMR(similarity); the measured rate where over 10,000 pairs score
        at or above it (the bound is then within ~2 % of it)."""
        def bound() -> float:
            count = int(round(float(self.impostor_count(similarity))))
            return count / self.n_pairs if count > self.tail.size else fmr_upper_bound(count, self.n_pairs)

        return _kept(self._bounds, float(similarity), bound)

    def fpir_bound(self, similarity: float, gallery_size: int) -> float:
        """95 % upper bound on the FPIR of a search of gallery_size faces at this threshold."""
        return float(gallery_probability(np.array(self.fmr_bound(similarity)), max(int(gallery_size), 1)))

    def gallery_false_match_probability(self, similarity: np.ndarray | float, gallery_size: int) -> np.ndarray:
        """P(at least one of gallery_size impostors scores >= similarity)."""
        return gallery_probability(self.false_match_rate(similarity), gallery_size)

    def threshold_for_fpir(self, fpir: float, gallery_size: int) -> FpirThreshold:
        """The lowest similarity at which a search of `gallery_size` faces has FPIR <= `fpir` (95 % confidence).

        FPIR = 1 - (1 - FMR(s))^N is solved for the per-pair rate the target allows,
        f = 1 - (1 - fpir)^(1/N), and s is the lowest score whose Clopper-Pearson upper
        bound on FMR is at most f. See the module docstring for targets the data cannot certify.

        Raises:
            ValueError: fpir outside (0, 1) or gallery_size < 0.
        """
        if not 0.0 < fpir < 1.0:
            raise ValueError(f"fpir must be in (0, 1), got {fpir}")
        if gallery_size < 0:
            raise ValueError(f"gallery_size must be >= 0, got {gallery_size}")
        n_gallery = max(int(gallery_size), 1)  # an empty gallery answers nothing; its threshold is that of one face
        fpir = float(fpir)
        return _kept(self._thresholds, (fpir, n_gallery), lambda: self._threshold_for_fpir(fpir, n_gallery))

    def _threshold_for_fpir(self, fpir: float, n_gallery: int) -> FpirThreshold:
        alpha = 1.0 - CONFIDENCE
        per_pair = -math.expm1(math.log1p(-fpir) / n_gallery)
        # U(c) <= per_pair ⟺ P(Binomial(n, per_pair) <= c) <= alpha; the CDF grows with c, so the counts allowed
        # are a prefix 0..c_max.
        cdfs = _binomial_cdfs(self.tail.size, self.n_pairs, per_pair)
        allowed = np.flatnonzero(cdfs <= alpha)
        if allowed.size == 0:  # even zero impostors in n pairs cannot certify per_pair
            similarity = float(np.nextafter(self.tail[0], np.float32(np.inf)))
            bound = float(gallery_probability(np.array(fmr_upper_bound(0, self.n_pairs)), n_gallery))
            return FpirThreshold(similarity, bound, False)
        c_max = int(allowed[-1])
        if c_max < self.tail.size:  # just above the (c_max + 1)-th highest score: at most c_max impostors at or above
            similarity = float(np.nextafter(self.tail[c_max], np.float32(np.inf)))
            count = int(self.impostor_count(similarity))
            bound = float(gallery_probability(np.array(fmr_upper_bound(count, self.n_pairs)), n_gallery))
            return FpirThreshold(similarity, bound, True)
        if self.n_pairs <= self.tail.size:  # every pair is in the tail and all of them are allowed
            return FpirThreshold(-1.0, float(gallery_probability(np.array(1.0), n_gallery)), True)
        # Beyond the tail the count exceeds 10,000: the bound is within ~2 % of the measured rate, which stands for it.
        similarity = float(np.interp(1.0 - per_pair, _PROBABILITIES, self.quantiles))
        return FpirThreshold(similarity, float(gallery_probability(self.false_match_rate(similarity), n_gallery)), True)

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

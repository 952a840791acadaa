"""False-match rates, their bounds beyond the data, and thresholds derived from a target FPIR
(cluster/index/calibration.py).

Pure maths on synthetic scores and on the score tables shipped in cluster/faces/data/ (measured on real
faces by benchmarks/calibrate_faces.py); no server.
"""

import math

import numpy as np
import pytest

from cluster.errors import FailedPrecondition, InvalidArgument
from cluster.gateway.search import choose_threshold
from cluster.index.calibration import (
    DEFAULT_FPIR,
    Calibration,
    calibration_table_path,
    fmr_upper_bound,
    gallery_probability,
)

MODELS = ("sface", "facenet")
GALLERY_SIZES = (1, 10, 100, 1_000, 10_000, 100_000, 10_000_000)


@pytest.fixture(scope="module")
def synthetic():
    scores = np.random.default_rng(0).normal(0.0, 0.1, size=200_000)
    return scores, Calibration.from_scores(scores, source="gallery")


def tables():
    return {m: np.load(calibration_table_path(m)) for m in MODELS}


def test_clopper_pearson_bound_solves_its_equation():
    assert fmr_upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert fmr_upper_bound(0, 200_000) == pytest.approx(3 / 200_000, rel=0.01)  # the rule of three
    for count, n in ((1, 100), (5, 1000), (40, 200_000)):
        u = fmr_upper_bound(count, n)
        cdf = sum(math.comb(n, k) * u ** k * (1 - u) ** (n - k) for k in range(count + 1))  # exact, independently
        assert cdf == pytest.approx(0.05, abs=1e-6) and u > count / n
    assert fmr_upper_bound(7, 7) == 1.0
    with pytest.raises(ValueError):
        fmr_upper_bound(3, 2)


@pytest.mark.parametrize("model", MODELS + ("synthetic",))
def test_false_match_rate_is_monotonic_and_bounded(model, synthetic):
    calibration = synthetic[1] if model == "synthetic" else Calibration.from_table(calibration_table_path(model))
    s = np.linspace(-1.0, 1.0, 4001)
    fmr = calibration.false_match_rate(s)
    assert np.all((0 <= fmr) & (fmr <= 1)) and np.all(np.diff(fmr) <= 0)
    assert fmr[0] == pytest.approx(1.0, abs=1e-3)
    gfmp = calibration.gallery_false_match_probability(s, 10_000)
    assert np.all((0 <= gfmp) & (gfmp <= 1)) and np.all(np.diff(gfmp) <= 0) and np.all(gfmp >= fmr - 1e-12)


def test_measured_rates_and_the_bound_beyond_the_data(synthetic):
    scores, calibration = synthetic
    top = float(calibration.tail[0])
    fmr = calibration.false_match_rate(np.array([0.0, 0.2, 0.3, top]))
    assert fmr[0] == pytest.approx(0.5, abs=0.01)
    assert fmr[1] == pytest.approx((scores >= 0.2).mean(), rel=0.05)
    assert fmr[2] == pytest.approx((scores >= np.float32(0.3)).sum() / scores.size, rel=1e-6)  # measured, exact
    assert not calibration.false_match_rate_is_bound(np.array([0.0, 0.2, 0.3])).any()
    third = float(calibration.tail[2])  # three impostors at or above it: 3/n, just over the bound for none
    assert calibration.false_match_rate(third) == pytest.approx(3 / scores.size)
    assert not calibration.false_match_rate_is_bound(third)
    beyond = np.array([float(calibration.tail[1]), top, np.nextafter(np.float32(top), np.float32(1)), 0.9, 1.0])
    assert calibration.false_match_rate_is_bound(beyond).all()
    # Never a point estimate the data cannot support: where 2, 1 or no impostors scored as high, not 2/n, 1/n or 0
    # but the 95 % bound for none seen (≈ 3/n), flagged.
    assert np.all(calibration.false_match_rate(beyond) == fmr_upper_bound(0, scores.size))


def test_the_fmr_bound_of_each_threshold_is_its_own_when_asked_again(synthetic):
    scores, calibration = synthetic
    thresholds = [0.2, 0.3, float(calibration.tail[5]), float(calibration.tail[0]), 0.9]
    first = [calibration.fmr_bound(s) for s in thresholds]
    assert first == sorted(first, reverse=True) and len(set(first)) == len(first)
    counts = [int((scores >= np.float32(s)).sum()) for s in thresholds[2:]]
    assert first[2:] == [fmr_upper_bound(c, scores.size) for c in counts] and counts == [6, 1, 0]
    anew = Calibration.from_scores(scores, source="gallery")  # nothing kept yet
    for _ in range(2):  # the bounds kept by the first round answer the second
        bounds = [calibration.fmr_bound(s) for s in thresholds]
        assert bounds == first == [anew.fmr_bound(s) for s in thresholds]
        assert calibration.fpir_bound(thresholds[2], 1000) == pytest.approx(
            float(gallery_probability(np.array(bounds[2]), 1000)))


def test_fpir_threshold_rises_with_the_gallery_and_keeps_its_promise(synthetic):
    scores, calibration = synthetic
    thresholds = [calibration.threshold_for_fpir(0.01, n) for n in GALLERY_SIZES]
    similarities = [t.similarity for t in thresholds]
    assert similarities == sorted(similarities) and similarities[0] < similarities[-1]
    for n, t in zip(GALLERY_SIZES, thresholds):
        if t.met:  # certified: the bound is within target, and the data agree
            assert t.fpir_bound <= 0.01
            per_pair = np.mean(scores >= t.similarity)
            assert gallery_probability(np.array(per_pair), n) <= 0.01
        else:  # too few pairs to certify: just above every impostor seen, and the bound says what it is
            assert t.similarity > scores.max() and t.fpir_bound > 0.01
            bound_at_zero = fmr_upper_bound(0, scores.size)
            assert t.fpir_bound == pytest.approx(float(gallery_probability(np.array(bound_at_zero), n)))
    assert thresholds[0].met and not thresholds[-1].met
    with pytest.raises(ValueError):
        calibration.threshold_for_fpir(0.0, 10)
    with pytest.raises(ValueError):
        calibration.threshold_for_fpir(1.0, 10)


def test_choose_threshold_checks_its_arguments(synthetic):
    calibration = synthetic[1]
    for bad in (0.0 - 1e-9, 1.0, 2.0, math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="target_fpir"):
            choose_threshold(calibration, 10, target_fpir=bad)
    with pytest.raises(InvalidArgument, match="not both"):
        choose_threshold(calibration, 10, min_similarity=0.3, target_fpir=0.01)
    with pytest.raises(FailedPrecondition):
        choose_threshold(None, 10, target_fpir=0.01)
    assert choose_threshold(None, 10).similarity == -1.0 and choose_threshold(None, 10).fpir_bound == -1.0
    explicit = choose_threshold(calibration, 1000, min_similarity=0.3)
    assert explicit.similarity == 0.3 and 0 < explicit.fpir_bound <= 1
    default = choose_threshold(calibration, 1000, default_fpir=DEFAULT_FPIR)
    assert default.similarity == calibration.threshold_for_fpir(DEFAULT_FPIR, 1000).similarity


@pytest.mark.parametrize("model", MODELS)
def test_shipped_tables_rest_on_enough_real_pairs(model):
    table = tables()[model]
    assert int(table["n_pairs"]) >= 150_000
    kinds = set(table["genuine_kind"].tolist())
    assert {"real", "jpeg15", "blur", "face40px", "flip", "rot+15", "rot-15"} <= kinds
    assert table["genuine"].size >= 3_000


@pytest.mark.parametrize("model", MODELS)
def test_default_threshold_against_the_shipped_impostors(model):
    """At the default FPIR the threshold never lets through more impostor pairs of the shipped table than the
    target allows, and where the table cannot certify the target (large galleries) it lies above every impostor
    score measured: no impostor pair of the offline sets matches there."""
    table = tables()[model]
    calibration = Calibration.from_table(calibration_table_path(model))
    n = int(table["n_pairs"])
    top = float(table["tail"][0])
    for size in GALLERY_SIZES:
        t = calibration.threshold_for_fpir(DEFAULT_FPIR, size)
        allowed = -math.expm1(math.log1p(-DEFAULT_FPIR) / size)  # per-pair rate the target allows
        assert calibration.impostor_count(t.similarity) / n <= allowed
        if not t.met:
            assert t.similarity > top and calibration.impostor_count(t.similarity) == 0
    # a gallery of 10 million, far beyond what ~200,000 pairs can certify: no impostor matches, and the bound says so
    assert not calibration.threshold_for_fpir(DEFAULT_FPIR, 10_000_000).met

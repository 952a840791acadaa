"""Same-person pairs made from the real test photos by realistic degradations match at the default threshold, and no
impostor pair of those photos does, with the shipped calibration of each model (cluster/faces/data/).

The default threshold of a face collection follows its size (a target FPIR, cluster/index/calibration.py); the
strictest it gets is just above the highest impostor score of the shipped table, where a gallery is too large for
~210,000 impostor pairs to certify the target. That is the threshold held to here. The models run as the gallery runs
them (cluster/faces/models.py); the tables were measured with SFace through `cv2.FaceRecognizerSF`, which the
PyTorch conversion matches to 1e-4.
"""

from pathlib import Path

import numpy as np
import pytest

from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline, decode_image, embedder_for
from cluster.faces.degrade import DEGRADATIONS, degrade
from cluster.index.calibration import DEFAULT_FPIR, Calibration, calibration_table_path

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"
PORTRAITS = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
             "gauss.webp": "gauss", "newton.png": "newton"}


class _Model:
    """The gallery's own pipeline for a registered model: alignment on its template, PyTorch."""

    def __init__(self, name: str):
        self._pipe = FacePipeline(FaceDetector(), embedder_for(name, device="cpu"))

    def __call__(self, image, face) -> np.ndarray:
        return self._pipe.embed_faces(image, [face])[0].embedding


@pytest.fixture(scope="module")
def photos():
    """(image, its largest face, person) of each single-portrait photo."""
    detector = FaceDetector()
    out = []
    for name, person in PORTRAITS.items():
        image = decode_image((DATA / name).read_bytes(), max_bytes=20 * 2**20)
        out.append((image, detector.detect(image, 1)[0], person))
    return out


def _strictest_default(model: str) -> float:
    return Calibration.from_table(calibration_table_path(model)).threshold_for_fpir(DEFAULT_FPIR, 10**9).similarity


def test_sface_degraded_same_person_pairs_match_and_impostors_do_not(photos):
    embed, detector = _Model("sface"), FaceDetector()
    threshold = _strictest_default("sface")
    xb = np.stack([embed(image, face) for image, face, _ in photos])
    persons = np.array([p for _, _, p in photos])
    scores = xb @ xb.T
    i, j = np.triu_indices(len(xb), 1)
    same = persons[i] == persons[j]
    assert scores[i[same], j[same]].min() >= threshold  # the three real photos of one person
    assert scores[i[~same], j[~same]].max() < threshold  # every impostor pair of the photos
    genuine = {}
    for k, (image, face, _) in enumerate(photos):
        for kind in DEGRADATIONS:
            copy = degrade(image, face, kind)
            (found,) = detector.detect(copy, 1)  # found again, as a search would find it
            genuine[(k, kind)] = float(embed(copy, found) @ xb[k])
    low = {key: s for key, s in genuine.items() if s < threshold}
    assert not low, f"degraded pairs under {threshold:.3f}: {low}"
    print(f"sface: threshold {threshold:.3f}; degraded genuine min {min(genuine.values()):.3f}, "
          f"real genuine min {scores[i[same], j[same]].min():.3f}, impostor max {scores[i[~same], j[~same]].max():.3f}")


def test_facenet_degraded_pairs_against_its_default(photos):
    """FaceNet, the model of collections created before SFace: its shipped impostors reach far higher, so at its
    strictest default threshold degraded copies of a photo still match while the real second photos of one person
    may not (the issue's 0.748 pair); this pins both facts down."""
    embed, detector = _Model(FaceNetEmbedder.name), FaceDetector()
    threshold = _strictest_default("facenet")
    xb = np.stack([embed(image, face) for image, face, _ in photos])
    persons = np.array([p for _, _, p in photos])
    scores = xb @ xb.T
    i, j = np.triu_indices(len(xb), 1)
    assert scores[i[persons[i] != persons[j]], j[persons[i] != persons[j]]].max() < threshold
    flips = []
    for k, (image, face, _) in enumerate(photos):
        copy = degrade(image, face, "flip")
        (found,) = detector.detect(copy, 1)
        flips.append(float(embed(copy, found) @ xb[k]))
    assert min(flips) >= threshold

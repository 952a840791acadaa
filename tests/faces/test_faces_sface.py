"""SFace: the PyTorch module converted from the ONNX against OpenCV's own runtime (cv2.FaceRecognizerSF) on
real aligned crops, our alignment against its alignCrop, the weight cache and hash check, and the registry."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cluster.faces import (
    ARCFACE_TEMPLATE_112,
    DEFAULT_MODEL,
    FaceNetEmbedder,
    SFaceEmbedder,
    UnknownModelError,
    align_face,
    describe_model,
    embedder_for,
    model_names,
)
from cluster.faces import sface as sface_module
from cluster.faces.onnx_graph import read_onnx
from cluster.faces.sface import ONNX_SHA256, SFaceNet, load_onnx_weights, sface_onnx_path

SAME_PERSON = ("obama.jpg", "obama2.jpg", "obama3.jpg")  # as in conftest.py
OTHERS = ("biden.jpg", "gauss.webp", "newton.png", "t1.jpg")
SOLVAY = "solvay_conference_1927.jpg"


@pytest.fixture(scope="module")
def recognizer():
    return cv2.FaceRecognizerSF.create(str(sface_onnx_path()), "")


@pytest.fixture(scope="module")
def sface() -> SFaceEmbedder:
    return SFaceEmbedder(device="cpu")


@pytest.fixture(scope="module")
def located(detector, photos):
    """(RGB image, face) for every face of the portraits and the group photo, and 8 of the 1927 photo's."""
    out = []
    for name in SAME_PERSON + OTHERS + (SOLVAY,):
        faces = detector.detect(photos[name], 100)
        out += [(photos[name], f) for f in faces[:8]]
    return out


def _cv_row(face) -> np.ndarray:
    """A face as the 1×15 row YuNet gives OpenCV: box, 5 landmarks, score."""
    return np.array([*face.box, *np.asarray(face.landmarks).ravel(), face.confidence], np.float32)[None]


def test_alignment_matches_align_crop(recognizer, located):
    assert len(located) >= 20
    worst, differing = 0, 0.0
    for rgb, face in located:
        theirs = recognizer.alignCrop(np.ascontiguousarray(rgb[..., ::-1]), _cv_row(face))[..., ::-1]
        ours = align_face(rgb, face.landmarks, 112, ARCFACE_TEMPLATE_112)
        diff = np.abs(theirs.astype(np.int16) - ours.astype(np.int16))
        worst, differing = max(worst, int(diff.max())), max(differing, float((diff > 0).mean()))
    # The same similarity transform, which OpenCV estimates in float32 and we in float64: the warps differ by far
    # less than a pixel, so only interpolated values at sharp edges move, by 2 levels at most in <1 % of pixels.
    assert worst <= 2 and differing < 0.01, (worst, differing)


def test_conversion_matches_opencv_on_real_crops(recognizer, sface, located):
    crops = np.stack([align_face(rgb, f.landmarks, 112, ARCFACE_TEMPLATE_112) for rgb, f in located])
    theirs = np.concatenate([recognizer.feature(np.ascontiguousarray(c[..., ::-1])) for c in crops])
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.inference_mode():
        raw = sface.module(x).numpy()
    assert np.abs(raw - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())
    ours = sface.embed(crops)  # batched, normalised
    unit = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert ours.shape == (len(crops), 128) and np.abs(ours - unit).max() <= 1e-4
    # cv2's own match score (cosine) agrees with ours on every pair.
    i, j = 0, 1
    assert recognizer.match(theirs[i:i + 1], theirs[j:j + 1], cv2.FaceRecognizerSF_FR_COSINE) == \
        pytest.approx(float(ours[i] @ ours[j]), abs=1e-4)


def test_same_person_scores_above_strangers(sface, detector, photos):
    faces = {n: detector.detect(photos[n], 1)[0] for n in SAME_PERSON + ("biden.jpg", "gauss.webp", "newton.png")}
    xb = sface.embed(np.stack([align_face(photos[n], f.landmarks, 112, ARCFACE_TEMPLATE_112) for n, f in faces.items()]))
    scores = xb @ xb.T
    genuine = [scores[a, b] for a in range(3) for b in range(a + 1, 3)]
    impostor = [scores[a, b] for a in range(3) for b in range(3, len(faces))]
    assert min(genuine) > max(impostor) + 0.2, (genuine, impostor)


def test_every_onnx_weight_is_used_and_shapes_are_checked():
    weights = read_onnx(sface_onnx_path().read_bytes()).initializers
    load_onnx_weights(SFaceNet(), weights)  # raises on a leftover or a misfit
    with pytest.raises(ValueError, match="not mapped"):
        load_onnx_weights(SFaceNet(), {**weights, "extra_weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="does not fit"):
        load_onnx_weights(SFaceNet(), {**weights, "pre_fc1_bias": np.zeros(64, np.float32)})


def test_hash_is_checked_and_conversion_cached(tmp_path, monkeypatch):
    tampered = tmp_path / "face_recognition_sface_2021dec.onnx"
    data = bytearray(sface_onnx_path().read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(sface_module, "sface_onnx_path", lambda: tampered)
    with pytest.raises(ValueError, match=f"expected {ONNX_SHA256[:16]}"):
        sface_module.load_sface(tmp_path / "cache")
    monkeypatch.undo()
    net = sface_module.load_sface(tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("sface-*.pt")
    assert ONNX_SHA256[:16] in cached.name
    again = sface_module.load_sface(tmp_path / "cache")  # from the cache
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_registry():
    assert DEFAULT_MODEL == "sface" and model_names()[0] == "sface"
    assert FaceNetEmbedder.name in model_names()
    described = describe_model("")
    assert (described.name, described.dimension) == ("sface", 128)
    facenet = describe_model(FaceNetEmbedder.name)
    assert facenet.dimension == 512 and facenet.calibration.default_min_similarity == pytest.approx(0.75)
    # SFace is uncalibrated until its impostor scores ship; then its calibration comes with them.
    assert (described.calibration is None) == (SFaceEmbedder.impostor_scores() is None)
    with pytest.raises(UnknownModelError, match="unknown face model 'arcface'.*sface"):
        embedder_for("arcface")
    with pytest.raises(UnknownModelError, match="known models"):
        describe_model("arcface")
    emb = embedder_for("sface", device="cpu", batch_size=4)
    assert isinstance(emb, SFaceEmbedder) and (emb.dimension, emb.input_size, emb.batch_size) == (128, 112, 4)
    assert np.array_equal(emb.template, ARCFACE_TEMPLATE_112)

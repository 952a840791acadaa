"""Similarity alignment onto the embedder's landmark template."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cluster.faces import ARCFACE_TEMPLATE_112, FACENET_TEMPLATE_160, align_face, similarity_transform


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ matrix[:, :2].T + matrix[:, 2]


def test_recovers_a_known_similarity():
    angle, scale, shift = np.deg2rad(17.0), 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    matrix = similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(matrix[:, :2], rot) and np.allclose(matrix[:, 2], shift)


def test_never_mirrors():
    src = FACENET_TEMPLATE_160.astype(np.float64)
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_agrees_with_opencv_partial_affine():
    src = ARCFACE_TEMPLATE_112 * 2.3 + np.random.default_rng(1).normal(0, 2, (5, 2)) + 40
    ours = similarity_transform(src, ARCFACE_TEMPLATE_112)
    cv, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), ARCFACE_TEMPLATE_112, method=cv2.LMEDS)
    assert np.abs(_apply(ours, src) - _apply(cv, src)).max() < 1.0


def test_landmarks_land_on_the_template(detector, photos):
    image = photos["obama2.jpg"]
    (face,) = detector.detect(image)
    crop = align_face(image, face.landmarks, 160)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8
    (again,) = detector.detect(cv2.copyMakeBorder(crop, 40, 40, 40, 40, cv2.BORDER_CONSTANT))
    # Re-detected landmarks in the aligned crop sit near the template (detector noise aside).
    assert np.abs(again.landmarks - 40 - FACENET_TEMPLATE_160).mean() < 6


def test_other_sizes_and_templates(photos, detector):
    image = photos["obama.jpg"]
    (face,) = detector.detect(image)
    assert align_face(image, face.landmarks, 112, ARCFACE_TEMPLATE_112).shape == (112, 112, 3)
    assert align_face(image, face.landmarks, 80).shape == (80, 80, 3)


def test_rejects_bad_input(photos):
    image = photos["obama.jpg"]
    with pytest.raises(ValueError, match="landmarks must be 5×2"):
        align_face(image, np.zeros((4, 2)), 160)
    with pytest.raises(ValueError, match="size must be in"):
        align_face(image, FACENET_TEMPLATE_160, 8)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        align_face(image[..., 0], FACENET_TEMPLATE_160, 160)

"""FaceDetector on real photos: counts, landmark order, crowds, a ≥100-face grid, quality."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cluster.faces import QUALITY_FILTER_THRESHOLDS, DetectedFace, FaceDetector, quality_filter_threshold
from cluster.faces.detect import usable_rows
from cluster.faces.quality import frontal_score, size_score


@pytest.fixture(scope="module")
def t1_faces(detector, photos) -> list[DetectedFace]:
    return detector.detect(photos["t1.jpg"])


def test_group_photo_six_faces(t1_faces):
    assert len(t1_faces) == 6
    areas = [f.area for f in t1_faces]
    assert areas == sorted(areas, reverse=True)
    for f in t1_faces:
        assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
        assert 0.0 <= f.quality <= 1.0 and 0.7 <= f.confidence <= 1.0
        assert f.box == (f.x, f.y, f.width, f.height)


def test_landmarks_inside_box_in_documented_order(detector, photos):
    (face,) = detector.detect(photos["obama.jpg"])
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    # The subject's right eye and mouth corner appear on the image's left.
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    x, y, w, h = face.box
    assert np.all((face.landmarks >= [x, y]) & (face.landmarks <= [x + w, y + h]))


def test_max_faces_keeps_the_largest(detector, photos, t1_faces):
    top2 = detector.detect(photos["t1.jpg"], max_faces=2)
    assert [f.area for f in top2] == pytest.approx([f.area for f in t1_faces[:2]])


def test_solvay_group_photo(detector, photos):
    faces = detector.detect(photos["solvay_conference_1927.jpg"])
    assert len(faces) == 29


def test_crowd_of_116_small_faces(detector, crowd):
    faces = detector.detect(crowd, max_faces=1000)
    assert len(faces) == 116
    assert np.median([f.width for f in faces]) < 45  # small faces, ≈40 px and under
    assert len(detector.detect(crowd)) == 100  # max_faces defaults to 100


def test_grid_of_100_face_crops(detector, photos):
    """10×10 grid of 96 px crops of 41 different real faces (with mirrored and rescaled copies)."""
    crops = []
    for image in photos.values():
        for f in detector.detect(image):
            cx, cy, side = f.x + f.width / 2, f.y + f.height / 2, 1.5 * max(f.width, f.height)
            x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
            crops.append(cv2.resize(image[y0:int(cy + side / 2), x0:int(cx + side / 2)], (96, 96)))
    assert len(crops) >= 40
    variants = crops + [c[:, ::-1] for c in crops]
    variants += [cv2.resize(cv2.resize(c, (72, 72)), (96, 96)) for c in crops]
    cells = [np.ascontiguousarray(c) for c in variants[:100]]
    grid = np.vstack([np.hstack(cells[r * 10:(r + 1) * 10]) for r in range(10)])
    assert grid.shape == (960, 960, 3)
    faces = detector.detect(grid, max_faces=200)
    assert len(faces) == 100
    cells_hit = {(int((f.y + f.height / 2) // 96), int((f.x + f.width / 2) // 96)) for f in faces}
    assert len(cells_hit) == 100  # one face per cell


def test_no_faces_in_a_blank_image(detector):
    assert detector.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_large_image_is_downscaled_and_mapped_back(photos):
    small_net = FaceDetector(max_side_px=640)
    image = photos["t1.jpg"]
    full = FaceDetector().detect(image)
    down = small_net.detect(image)
    assert len(down) == len(full)
    assert np.abs(down[0].landmarks - full[0].landmarks).max() < 6  # pixels of the original image


def test_quality_drops_for_blur_profile_and_size(detector, photos, t1_faces):
    sharp = detector.detect(photos["obama.jpg"])[0]
    blurred = detector.detect(cv2.GaussianBlur(photos["obama.jpg"], (0, 0), 6))[0]
    assert sharp.quality > 0.9
    assert blurred.quality < 0.5
    profile = min(t1_faces, key=lambda f: frontal_score(f.landmarks))
    assert profile.quality < quality_filter_threshold("LOW") < sharp.quality
    assert size_score(20, 20) == 0.0 and size_score(100, 120) == 1.0


def test_quality_filter_levels():
    assert QUALITY_FILTER_THRESHOLDS == {"NONE": 0.0, "LOW": 0.25, "AUTO": 0.35, "MEDIUM": 0.5, "HIGH": 0.7}
    assert quality_filter_threshold("medium") == 0.5
    with pytest.raises(ValueError, match="quality filter must be one of"):
        quality_filter_threshold("BEST")


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8)])
def test_rejects_bad_arrays(detector, bad):
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        detector.detect(bad)


def test_rejects_bad_arguments(detector, photos):
    with pytest.raises(ValueError, match="max_faces"):
        detector.detect(photos["obama.jpg"], max_faces=0)
    with pytest.raises(ValueError, match="score_threshold"):
        FaceDetector(score_threshold=1.5)
    with pytest.raises(FileNotFoundError):
        FaceDetector("/nonexistent/yunet.onnx")


def test_rows_of_inf_nan_or_no_area_are_not_faces():
    """YuNet answered a box of inf for a 1x1 PNG in a face worker (found by tests/test_fuzz.py): CompareFaces
    answered INTERNAL when the quality score took int(inf). Such rows are dropped before any face is made."""
    face = np.array([10, 20, 30, 40, *range(10), 0.9], np.float32)
    rows = np.stack([face, face, face, face, face, face])
    rows[1, 0] = np.inf
    rows[2, 7] = np.nan
    rows[3, 14] = -np.inf
    rows[4, 2] = 0
    rows[5, 3] = -5
    np.testing.assert_array_equal(usable_rows(rows), rows[:1])
    assert usable_rows(rows[1:]).shape == (0, 15)

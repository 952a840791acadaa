"""Score how usable a detected face is for recognition, in [0, 1]."""
from __future__ import annotations

import cv2
import numpy as np

# Rekognition-style quality filter → lowest accepted `DetectedFace.quality`.
# NONE keeps everything; AUTO is the bar this service picks, between LOW and
# MEDIUM: it drops near-profiles and faces near 20 px that FaceNet embeds poorly,
# and keeps most ≈35–40 px faces of a crowd photo (see `face_quality`).
QUALITY_FILTER_THRESHOLDS = {"NONE": 0.0, "LOW": 0.25, "AUTO": 0.35, "MEDIUM": 0.5, "HIGH": 0.7}

# Why these anchors: below ~20 px a face has too few pixels to identify; FaceNet
# was trained on ~100 px faces, above which size no longer helps.
_MIN_SIDE_PX, _FULL_SIDE_PX = 20.0, 100.0
# Variance of the Laplacian of a 64-px-wide grey face crop: the in-focus test
# photos give 170–1140; a Gaussian blur of sigma 2 px at that scale, under 20.
_SHARP_VAR = 150.0
_SHARP_SIDE_PX = 64


def quality_filter_threshold(level: str) -> float:
    """Return the lowest face quality that a quality-filter level accepts.

    Args:
        level: one of NONE, AUTO, LOW, MEDIUM, HIGH (case-insensitive).

    Returns:
        NONE 0.0, LOW 0.25, AUTO 0.35, MEDIUM 0.5, HIGH 0.7.

    Raises:
        ValueError: an unknown level.
    """
    try:
        return QUALITY_FILTER_THRESHOLDS[level.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"quality filter must be one of {sorted(QUALITY_FILTER_THRESHOLDS)}, "
                         f"got {level!r}") from None


def size_score(width: float, height: float) -> float:
    """0 at a 20 px face side, 1 from 100 px up, linear between."""
    side = min(width, height)
    return float(np.clip((side - _MIN_SIDE_PX) / (_FULL_SIDE_PX - _MIN_SIDE_PX), 0.0, 1.0))


def frontal_score(landmarks: np.ndarray) -> float:
    """1 for a frontal face, falling to 0 near a profile (yaw from the nose offset)."""
    right_eye, left_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    axis = left_eye - right_eye
    iod = float(np.hypot(*axis))
    if iod < 1e-6:
        return 0.0
    # Nose offset along the eye axis, in half inter-ocular distances: ≈0 frontal,
    # ≈0.7 at 30° yaw, ≥1.5 towards a profile (nose tip ~0.6 IOD ahead of the eyes).
    offset = float(np.dot(nose - (right_eye + left_eye) / 2, axis / iod)) / (iod / 2)
    return float(np.clip(1.0 - abs(offset) / 1.5, 0.0, 1.0))


def sharpness_score(gray: np.ndarray, x: float, y: float, width: float, height: float) -> float:
    """Variance of the Laplacian of the face box at a fixed scale, mapped to [0, 1]."""
    h, w = gray.shape
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(np.ceil(x + width)), w), min(int(np.ceil(y + height)), h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    scale = _SHARP_SIDE_PX / (x1 - x0)  # fixed scale so the score does not depend on face size
    crop = cv2.resize(gray[y0:y1, x0:x1], (_SHARP_SIDE_PX, max(int((y1 - y0) * scale), 4)),
                      interpolation=cv2.INTER_AREA)
    var = float(cv2.Laplacian(crop, cv2.CV_32F).var())
    return float(np.clip(var / _SHARP_VAR, 0.0, 1.0))


def face_quality(gray: np.ndarray, box: tuple[float, float, float, float],
                 landmarks: np.ndarray, confidence: float) -> float:
    """Combine size, sharpness, frontalness and detector confidence into one score.

    The score is the square root of the product of four terms in [0, 1], so one
    bad term (a profile, a blur, a face near 20 px) sinks it: size (0 at 20 px,
    1 from 100 px), sharpness (Laplacian variance at 64 px), frontalness (yaw
    from the landmarks) and confidence (detector score mapped 0.5 → 0, 1 → 1).
    Seen on the test photos: 0.9–0.97 for portraits, 0.44–0.63 for the ≈50 px
    faces of an old group photo, 0.31–0.46 (median 0.38) for 35 px crowd faces,
    0.48 for a portrait blurred with sigma 6 px, 0.23 for a near-profile.

    Args:
        gray: the whole image, H×W uint8 grey.
        box: face box (x, y, width, height) in pixels.
        landmarks: 5×2 landmarks in `DetectedFace` order.
        confidence: detector score in [0, 1].

    Returns:
        Quality in [0, 1].
    """
    x, y, w, h = box
    terms = (size_score(w, h), sharpness_score(gray, x, y, w, h), frontal_score(landmarks),
             float(np.clip((confidence - 0.5) / 0.5, 0.0, 1.0)))
    return float(np.sqrt(np.prod(terms)))

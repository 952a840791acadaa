"""Realistic degradations of a face photo: the poor probe photos a real search gets, made from a good one.

Calibration (benchmarks/calibrate_faces.py) and tests make same-person pairs from one real photo with
these when no second photo of the person is at hand: JPEG quality 15, Gaussian blur, downscaling to a
40-px face, a horizontal flip, and rotations by ±15°.
"""
from __future__ import annotations

import cv2
import numpy as np

from .detect import DetectedFace

DEGRADATIONS = ("jpeg15", "blur", "face40px", "flip", "rot+15", "rot-15")


def crop_around(image: np.ndarray, face: DetectedFace) -> np.ndarray:
    """The face with one face-size margin on each side, so that rotations keep it whole."""
    x, y, w, h = face.box
    x0, y0 = max(int(x - w), 0), max(int(y - h), 0)
    x1, y1 = min(int(x + 2 * w), image.shape[1]), min(int(y + 2 * h), image.shape[0])
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def degrade(image: np.ndarray, face: DetectedFace, kind: str) -> np.ndarray:
    """A degraded copy of the region around `face` (RGB uint8), as a poor probe photo of the same person.

    Blur: sigma = face width / 40, about the detail a 40-px face keeps. The face is found again in the
    copy by the caller, as a search would find it.

    Raises:
        ValueError: an unknown `kind` (see DEGRADATIONS).
    """
    crop = crop_around(image, face)
    width = face.width
    if kind == "jpeg15":
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 15])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if kind == "blur":
        return cv2.GaussianBlur(crop, (0, 0), sigmaX=max(width / 40, 0.5))
    if kind == "face40px":
        scale = 40.0 / width
        small = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
        return cv2.resize(crop, small, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    if kind == "flip":
        return np.ascontiguousarray(crop[:, ::-1])
    if kind in ("rot+15", "rot-15"):
        h, w = crop.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 15.0 if kind == "rot+15" else -15.0, 1.0)
        return cv2.warpAffine(crop, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    raise ValueError(f"unknown degradation {kind!r}; known: {DEGRADATIONS}")

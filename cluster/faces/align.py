"""Warp a face onto an embedder's landmark template with a similarity transform."""
from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# Landmarks in a 112×112 ArcFace/InsightFace crop (insightface `arcface_dst`); the
# de-facto template for ArcFace-family models an operator may plug in.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# Landmarks in a 160×160 FaceNet crop. davidsandberg/facenet trained and evaluated
# on MTCNN boxes widened by a 30 % margin (LFW: 32 px on ~110 px faces) and resized
# to 160×160; these are the mean MTCNN landmarks of 41 frontal faces cropped that
# way, mirrored to be symmetric, so a similarity warp reproduces those crops.
FACENET_TEMPLATE_160 = np.array(
    [[52.6, 66.4], [107.4, 66.4], [80.0, 91.9], [56.8, 114.0], [103.2, 114.0]],
    dtype=np.float32)


def template_for(size: int, template: np.ndarray = FACENET_TEMPLATE_160,
                 template_size: int = 160) -> np.ndarray:
    """Scale a landmark template made for `template_size` pixels to `size` pixels."""
    return (np.asarray(template, np.float32) * (size / template_size)).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping `src` onto `dst`.

    Umeyama (1991), "Least-squares estimation of transformation parameters between
    two point patterns", without reflection; the same estimate as skimage's
    `SimilarityTransform` that ArcFace pipelines use.

    Args:
        src: N×2 points (landmarks in the image).
        dst: N×2 points (the template).

    Returns:
        The 2×3 float64 matrix for `cv2.warpAffine`.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"src and dst must both be N×2 with N ≥ 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # keep a rotation, never a mirror
        flip[1, 1] = -1
    rot = u @ flip @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(flip)).sum() / var_s if var_s > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 160,
               template: np.ndarray | None = None) -> np.ndarray:
    """Crop one face so its 5 landmarks land on the embedder's template.

    Args:
        image: H×W×3 uint8 image (any channel order; it is kept).
        landmarks: 5×2 points in `image` pixels, in `DetectedFace.landmarks` order
            (subject's right eye, left eye, nose tip, right and left mouth corners).
        size: side of the square output in pixels.
        template: 5×2 target points for a `size`×`size` crop; defaults to the
            FaceNet template scaled to `size`.

    Returns:
        A size×size×3 uint8 crop; pixels outside the image are black.

    Raises:
        ValueError: bad `image`, `landmarks` or `size`.

    Example:
        >>> crop = align_face(rgb, faces[0].landmarks, 160)
        >>> crop.shape
        (160, 160, 3)
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    landmarks = np.asarray(landmarks, np.float32)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be 5×2, got {landmarks.shape}")
    if not 16 <= size <= 1024:
        raise ValueError(f"size must be in [16, 1024] pixels, got {size}")
    dst = template_for(size) if template is None else np.asarray(template, np.float32)
    matrix = similarity_transform(landmarks, dst)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)

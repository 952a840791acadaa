"""Detect faces with 5 landmarks using YuNet in OpenCV's FaceDetectorYN."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .quality import face_quality

logger = logging.getLogger(__name__)

YUNET_PATH = Path(__file__).parent / "data" / "face_detection_yunet_2023mar.onnx"


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face found in an image, in that image's pixel coordinates.

    Attributes:
        x, y, width, height: the face box in pixels (top-left corner and size).
        landmarks: 5×2 float32 (x, y) points, in this order: the subject's right
            eye (left in the image for a frontal face), the subject's left eye,
            the nose tip, the subject's right mouth corner, the left mouth corner.
            The same order as ArcFace/InsightFace and YuNet.
        confidence: detector score in [0, 1].
        quality: usability for recognition in [0, 1]; see `quality.face_quality`.
    """

    x: float
    y: float
    width: float
    height: float
    landmarks: np.ndarray
    confidence: float
    quality: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x, y, width, height) in pixels."""
        return self.x, self.y, self.width, self.height

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.width * self.height


def usable_rows(raw: np.ndarray) -> np.ndarray:
    """YuNet's output rows whose box, landmarks and score are finite and whose box has an area.

    On images of a few pixels YuNet can answer rows of inf or NaN (seen on a 1x1 PNG in a face worker, found
    by tests/test_fuzz.py); no face has such a box, and its quality score failed on int(inf) (INTERNAL).
    """
    return raw[np.isfinite(raw[:, :15]).all(axis=1) & (raw[:, 2] > 0) & (raw[:, 3] > 0)]


class FaceDetector:
    """YuNet face detector (OpenCV zoo, MIT): boxes, 5 landmarks and a quality per face.

    Images larger than `max_side_px` are downscaled for detection (results are in
    the original image's pixels): YuNet still finds ~30 px faces there, and the cost
    grows with the pixel count. One instance serialises its calls with a lock.

    Args:
        model_path: YuNet ONNX file; defaults to the copy shipped in `data/`.
        score_threshold: lowest detector score kept, in (0, 1).
        nms_threshold: IoU above which overlapping boxes are merged, in (0, 1).
        max_side_px: longest image side fed to the network, in [64, 8192].

    Example:
        >>> faces = FaceDetector().detect(decode_image(data), max_faces=100)
        >>> faces[0].box, faces[0].landmarks.shape
        ((412.0, 120.5, 231.0, 301.2), (5, 2))
    """

    def __init__(self, model_path: str | Path = YUNET_PATH, *, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, max_side_px: int = 2560):
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not 0.0 < nms_threshold < 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1), got {nms_threshold}")
        if not 64 <= max_side_px <= 8192:
            raise ValueError(f"max_side_px must be in [64, 8192], got {max_side_px}")
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"YuNet model not found at {model_path}")
        self.max_side_px = max_side_px
        # top_k: candidates kept before NMS; a crowd of hundreds needs a deep list.
        self._net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320),
                                              score_threshold, nms_threshold, 5000)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, max_faces: int = 100) -> list[DetectedFace]:
        """Find faces in an RGB image.

        Args:
            image: H×W×3 uint8 RGB array (as `decode_image` returns).
            max_faces: how many faces to return at most, the largest first, in [1, 4096].

        Returns:
            Faces sorted by box area, largest first.

        Raises:
            ValueError: `image` is not H×W×3 uint8, or `max_faces` is out of range.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8 RGB, got {image.shape} {image.dtype}")
        if not 1 <= max_faces <= 4096:
            raise ValueError(f"max_faces must be in [1, 4096], got {max_faces}")
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side_px / max(h, w))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # YuNet was trained on OpenCV's BGR
        if scale < 1.0:
            bgr = cv2.resize(bgr, (max(round(w * scale), 1), max(round(h * scale), 1)),
                             interpolation=cv2.INTER_AREA)
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, raw = self._net.detect(bgr)
        if raw is None or len(raw) == 0:
            return []
        raw = usable_rows(raw)
        raw = raw[np.argsort(-(raw[:, 2] * raw[:, 3]), kind="stable")][:max_faces]
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        faces = []
        for row in raw:
            box = tuple(float(v) / scale for v in row[:4])
            landmarks = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            confidence = float(np.clip(row[14], 0.0, 1.0))
            faces.append(DetectedFace(*box, landmarks=landmarks, confidence=confidence,
                                      quality=face_quality(gray, box, landmarks, confidence)))
        logger.debug("detected %d faces in %dx%d image", len(faces), w, h)
        return faces

"""Shared fixtures for the face pipeline tests: photos, and one model load per session."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline, decode_image

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"
# The same person in three photos, and photos of other people (see tests/data/faces/README.md).
SAME_PERSON = ("obama.jpg", "obama2.jpg", "obama3.jpg")
OTHERS = ("biden.jpg", "gauss.webp", "newton.png", "t1.jpg")
SOLVAY = "solvay_conference_1927.jpg"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Two cores are shared with other work: do not oversubscribe them."""
    torch.set_num_threads(2)


def load(name: str) -> np.ndarray:
    """Decode a test photo to RGB."""
    return decode_image((DATA / name).read_bytes())


@pytest.fixture(scope="session")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="session")
def embedder() -> FaceNetEmbedder:
    return FaceNetEmbedder(device="cpu")


@pytest.fixture(scope="session")
def pipeline(detector, embedder) -> FacePipeline:
    return FacePipeline(detector, embedder)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: load(name) for name in SAME_PERSON + OTHERS + (SOLVAY,)}


@pytest.fixture(scope="session")
def analyzed(pipeline, photos):
    """Every face of every photo, embedded once for the whole session."""
    names = list(photos)
    return dict(zip(names, pipeline.analyze_batch([photos[n] for n in names])))


@pytest.fixture(scope="session")
def crowd(photos) -> np.ndarray:
    """2×2 tiles of the 1927 Solvay photo at 1280 px: 116 faces of ≈30–40 px."""
    small = cv2.resize(photos[SOLVAY], (1280, 926), interpolation=cv2.INTER_AREA)
    return np.vstack([np.hstack([small, small]), np.hstack([small, small])])

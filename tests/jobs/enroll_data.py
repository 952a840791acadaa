"""Images for the enrollment tests: the real test photos, and broken or faceless ones made from them."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"
PORTRAITS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "gauss.webp", "newton.png")  # one face each
GROUP = "t1.jpg"  # six people; one near-profile is under the AUTO quality filter


def photo(name: str) -> bytes:
    return (DATA / name).read_bytes()


def small_face() -> bytes:
    """obama.jpg at 1/8 size: a 28 px face, detected with quality ~0.28, under AUTO's 0.35."""
    image = Image.open(DATA / "obama.jpg")
    out = io.BytesIO()
    image.resize((image.width // 8, image.height // 8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def no_face() -> bytes:
    """A sky-blue PNG: a valid image without a face."""
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 160, 200)).save(out, "PNG")
    return out.getvalue()


def truncated() -> bytes:
    """The first half of a JPEG."""
    data = photo("obama2.jpg")
    return data[: len(data) // 2]


NOT_AN_IMAGE = b"id,name\n1,not an image\n" * 20

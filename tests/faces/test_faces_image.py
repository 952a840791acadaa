"""decode_image: formats, EXIF orientation, and every kind of bad input."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluster.faces import MAX_IMAGE_BYTES, MAX_S3_IMAGE_BYTES, ImageTooLargeError, InvalidImageError, decode_image

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return decode_image((DATA / "obama.jpg").read_bytes())


@pytest.mark.parametrize("name", ["obama.jpg", "newton.png", "gauss.webp", "solvay_conference_1927.jpg"])
def test_decodes_real_photos_to_rgb(name):
    out = decode_image((DATA / name).read_bytes())
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous


def test_channel_order_is_rgb():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert decode_image(encode(red, "PNG"))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("orientation,transpose", [
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(rgb, orientation, transpose):
    stored = Image.fromarray(rgb).transpose(transpose)  # pixels as a camera would store them
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    out = decode_image(buf.getvalue())
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4  # upright again, up to JPEG loss


def test_png_with_alpha_and_grey_become_rgb():
    rgba = np.full((4, 4, 4), 200, np.uint8)
    assert decode_image(encode(rgba, "PNG")).shape == (4, 4, 3)
    assert decode_image(encode(np.zeros((4, 4), np.uint8), "WEBP")).shape == (4, 4, 3)


def test_empty():
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")


def test_over_the_inline_limit():
    data = (DATA / "obama.jpg").read_bytes()
    padded = data + bytes(MAX_IMAGE_BYTES + 1 - len(data))  # JPEG readers ignore trailing bytes
    with pytest.raises(ImageTooLargeError, match=f"over the limit of {MAX_IMAGE_BYTES} bytes"):
        decode_image(padded)
    assert decode_image(padded, max_bytes=MAX_S3_IMAGE_BYTES).ndim == 3  # S3's limit is 15 MiB


def test_limit_is_configurable():
    data = (DATA / "obama.jpg").read_bytes()
    with pytest.raises(ImageTooLargeError, match="over the limit of 1000 bytes"):
        decode_image(data, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes"):
        decode_image(data, max_bytes=0)


@pytest.mark.parametrize("data", [
    b"hello, this is not an image", b"%PDF-1.4\n" + bytes(100), bytes(1000),
    encode(np.zeros((8, 8, 3), np.uint8), "GIF"), encode(np.zeros((8, 8, 3), np.uint8), "BMP"),
], ids=["text", "pdf", "zeros", "gif", "bmp"])
def test_not_an_image(data):
    with pytest.raises(InvalidImageError, match="not a JPEG, PNG or WebP"):
        decode_image(data)


def test_not_bytes():
    with pytest.raises(InvalidImageError, match="must be bytes"):
        decode_image("obama.jpg")


def test_corrupt_jpeg_header():
    data = bytearray((DATA / "obama.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")  # zero the frame size: a JPEG with an empty canvas
    data[sof + 5:sof + 9] = bytes(4)
    with pytest.raises(InvalidImageError):
        decode_image(bytes(data))


def test_corrupt_png_data(rgb):
    data = bytearray(encode(rgb[:200, :200], "PNG"))
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    with pytest.raises(InvalidImageError, match="corrupt|broken|truncated"):
        decode_image(bytes(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated(rgb, fmt):
    data = encode(rgb, fmt)
    with pytest.raises(InvalidImageError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_png():
    bomb = encode(np.zeros((10_000, 10_000), np.uint8), "PNG")  # 100 MP in ~100 KB
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLargeError, match="pixels, over the limit"):
        decode_image(bomb)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_huge_canvas_stops_before_decoding():
    # A 4-gigapixel header with a token of data: refused from the header alone.
    ihdr = struct.pack(">IIBBBBB", 64_000, 64_000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(bytes(64_001))) + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(bomb)


def test_pixel_limit_is_configurable(rgb):
    data = encode(rgb, "PNG")
    with pytest.raises(ImageTooLargeError, match="over the limit of 1000 pixels"):
        decode_image(data, max_pixels=1000)

"""Decode untrusted image bytes into an RGB array, refusing anything unsafe or broken."""
from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from cluster.api.limits import MAX_IMAGE_BYTES, MAX_S3_IMAGE_BYTES  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

# 50 MP admits 48-MP phone photos; a bigger canvas from a few MB of input is a
# decompression bomb, and would cost 150 MB of RGB per image in a worker.
MAX_IMAGE_PIXELS = 50_000_000
FORMATS = ("JPEG", "PNG", "WEBP")


class InvalidImageError(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


class ImageTooLargeError(InvalidImageError):
    """An image over a size limit: its bytes, or its pixels (the gRPC API answers RESOURCE_EXHAUSTED)."""


def _open(data: bytes) -> Image.Image:
    """Open the header only, accepting JPEG, PNG and WebP."""
    try:
        with warnings.catch_warnings():
            # We check the pixel count ourselves, against our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is a decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImageError(
            "bytes are not a JPEG, PNG or WebP image (unrecognised header)") from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise InvalidImageError(f"corrupt or truncated image: {exc}") from exc


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG, PNG or WebP bytes into an RGB array with EXIF orientation applied.

    Args:
        data: the encoded image, as received from a client or read from S3.
        max_bytes: largest accepted input in bytes (5 MiB inline, 15 MiB from S3).
        max_pixels: largest accepted width × height, checked from the header
            before any pixel is decoded (guards against decompression bombs).

    Returns:
        An H×W×3 uint8 array in **RGB** order, rotated/flipped as its EXIF
        Orientation tag says (so faces are upright as a viewer shows them).

    Raises:
        ImageTooLargeError: input over `max_bytes` or a canvas over `max_pixels`.
        InvalidImageError: empty input, bytes that are not a JPEG/PNG/WebP
            image, or a corrupt or truncated file.
        ValueError: `max_bytes` or `max_pixels` is not positive.

    Example:
        >>> rgb = decode_image(open("group.jpg", "rb").read())
        >>> rgb.shape, rgb.dtype
        ((886, 1280, 3), dtype('uint8'))
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(f"image must be bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise InvalidImageError("image is empty (0 bytes)")
    if size > max_bytes:
        raise ImageTooLargeError(
            f"image is {size} bytes, over the limit of {max_bytes} bytes")
    im = _open(bytes(data))
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image has an empty canvas ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels, over the limit "
                f"of {max_pixels} pixels (decompression bomb guard)")
        try:
            im.load()  # raises on truncated data: ImageFile.LOAD_TRUNCATED_IMAGES stays False
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, struct.error, EOFError,
                Image.DecompressionBombError) as exc:
            kind = "truncated" if "truncated" in str(exc) else "corrupt"
            raise InvalidImageError(f"{kind} {im.format} image: {exc}") from exc
    finally:
        im.close()
    logger.debug("decoded %s %dx%d", im.format, width, height)
    return np.ascontiguousarray(rgb)

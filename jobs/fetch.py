"""Fetching the images manifest rows name, in threads; a row that cannot be read gets its reason, not an exception.

S3 objects are read by the gateway's own reader (`cluster.storage.s3_images.S3ImageReader`), local
files through pyarrow; both refuse an image over the limit without reading it all, and retry I/O
errors other than a missing object with exponential backoff.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pyarrow as pa

from cluster.api.limits import MAX_EXTERNAL_IMAGE_ID_LENGTH, MAX_S3_IMAGE_BYTES
from cluster.errors import InvalidArgument, Unavailable
from cluster.storage.s3_images import ImageNotFound, ImageTooLarge, S3ImageReader, S3Object
from jobs.storage import filesystem

logger = logging.getLogger(__name__)

# Why a manifest row enrolled nothing; the errors Parquet has one per failed row.
BAD_ROW = "bad_row"  # empty image_uri or external_image_id, or an external_image_id over 255 characters
MISSING_OBJECT = "missing_object"  # no object or file at image_uri
UNREADABLE = "unreadable"  # it exists but could not be read (permissions, I/O errors after retries)
TOO_LARGE = "too_large"  # over max_image_bytes
INVALID_IMAGE = "invalid_image"  # not a JPEG, PNG or WebP; corrupt, truncated or too many pixels
NO_FACE = "no_face"  # no face detected
LOW_QUALITY = "low_quality"  # faces detected, none at or above the quality filter


def _check_row(uri: str, external_image_id: str) -> str:
    if not uri:
        return "image_uri is empty"
    if not external_image_id:
        return "external_image_id is empty"
    if len(external_image_id) > MAX_EXTERNAL_IMAGE_ID_LENGTH:
        return f"external_image_id has {len(external_image_id)} characters, over {MAX_EXTERNAL_IMAGE_ID_LENGTH}"
    return ""


def read_image(uri: str, *, s3_endpoint: str = "", max_bytes: int = MAX_S3_IMAGE_BYTES, retries: int = 3,
               backoff_s: float = 0.5, s3_connections: int = 10) -> tuple[bytes, str, str]:
    """(bytes, reason, message) for one image; reason is "" when it was read.

    Reads at most max_bytes + 1 bytes, so an oversized object is refused without reading it all.
    I/O errors other than a missing object are retried `retries` times with exponential backoff.
    `s3_connections`: threads of this process reading from S3 at once.
    """
    if urlparse(uri).scheme != "s3":
        return _read_file(uri, max_bytes, retries, backoff_s)
    try:
        reader = _s3_reader(s3_endpoint, max_bytes, retries, backoff_s, s3_connections)
        return reader.read(S3Object.from_uri(uri)), "", ""
    except ImageNotFound as e:
        return b"", MISSING_OBJECT, str(e)
    except ImageTooLarge as e:
        return b"", TOO_LARGE, str(e)
    except (InvalidArgument, Unavailable) as e:
        return b"", UNREADABLE, str(e)


@functools.lru_cache(maxsize=8)
def _s3_reader(s3_endpoint: str, max_bytes: int, retries: int, backoff_s: float, connections: int) -> S3ImageReader:
    """One reader (a boto3 client and its connections) per process and settings, reused across batches."""
    return S3ImageReader(s3_endpoint or None, max_bytes=max_bytes, retries=retries, backoff_s=backoff_s,
                         max_connections=connections)


def _read_file(uri: str, max_bytes: int, retries: int, backoff_s: float) -> tuple[bytes, str, str]:
    for attempt in range(retries + 1):
        try:
            fs, path = filesystem(uri)
            with fs.open_input_stream(path) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                return b"", TOO_LARGE, f"{uri} is over the limit of {max_bytes} bytes"
            return data, "", ""
        except FileNotFoundError:
            return b"", MISSING_OBJECT, f"{uri} does not exist"
        except (ValueError, IsADirectoryError) as e:
            return b"", UNREADABLE, f"{uri}: {e}"
        except OSError as e:
            if isinstance(e, PermissionError) or attempt == retries:
                return b"", UNREADABLE, f"{uri}: {e}"
            logger.warning("reading %s failed (%s), retrying", uri, e)
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def fetch_images(batch: pa.Table, *, s3_endpoint: str = "", max_image_bytes: int = MAX_S3_IMAGE_BYTES,
                 threads: int = 16) -> pa.Table:
    """Ray Data UDF: manifest rows in; the same rows with `image`, `image_sha256`, `reason`, `message` out."""
    uris = batch.column("image_uri").to_pylist()
    ids = batch.column("external_image_id").to_pylist()

    def one(i: int) -> tuple[bytes, str, str]:
        problem = _check_row(uris[i], ids[i])
        if problem:
            return b"", BAD_ROW, problem
        return read_image(uris[i], s3_endpoint=s3_endpoint, max_bytes=max_image_bytes, s3_connections=threads)

    with ThreadPoolExecutor(max(1, min(threads, batch.num_rows))) as pool:
        fetched = list(pool.map(one, range(batch.num_rows)))
    return (batch
            .append_column("image", pa.array([data for data, _, _ in fetched], pa.binary()))
            .append_column("image_sha256", pa.array([hashlib.sha256(data).hexdigest() if data else ""
                                                     for data, _, _ in fetched], pa.string()))
            .append_column("reason", pa.array([reason for _, reason, _ in fetched], pa.string()))
            .append_column("message", pa.array([message for _, _, message in fetched], pa.string())))

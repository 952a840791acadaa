"""Reading images from S3 for the face RPCs and the enrollment jobs, with the size cap checked first.

One boto3 client per reader, thread-safe, so that a request's S3 object, or the images a fetch task
reads in threads, go through one connection pool. Objects are refused from their size before their
body is read. Errors say what the caller can do: `ImageNotFound` (a kind of InvalidArgument),
`ImageTooLarge` (a kind of ResourceExhausted, as every request over a size limit), InvalidArgument
for an object that cannot be read (access denied, a bad bucket name), Unavailable when S3 could not
be reached, after `retries` retries with exponential backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cluster.api.limits import MAX_S3_IMAGE_BYTES
from cluster.errors import InvalidArgument, ResourceExhausted, Unavailable
from cluster.storage.object_store import S3Client

logger = logging.getLogger(__name__)

# S3 error codes that mean the object named is not there, and others that mean it cannot be read by this
# caller: the request's problem, not S3 being down.
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"}
_CALLER_ERRORS = {"InvalidBucketName", "AccessDenied", "InvalidArgument", "403", "400"}


class ImageNotFound(InvalidArgument):
    """No object at the bucket, key and version given."""


class ImageTooLarge(ResourceExhausted):
    """An object over the reader's `max_bytes`."""


@dataclass(frozen=True)
class S3Object:
    """An object a request names: bucket, key and, optionally, a version."""

    bucket: str
    name: str
    version: str = ""

    @property
    def uri(self) -> str:
        """s3://bucket/name, with ?versionId= when a version is given."""
        return f"s3://{self.bucket}/{self.name}" + (f"?versionId={self.version}" if self.version else "")

    @classmethod
    def from_uri(cls, uri: str) -> S3Object:
        """The latest version of `s3://bucket/key`.

        Raises:
            InvalidArgument: another scheme, or no bucket or key.
        """
        bucket, _, key = uri.removeprefix("s3://").partition("/")  # a key may hold "?" or "#": no URL parsing
        if not uri.startswith("s3://") or not bucket or not key:
            raise InvalidArgument(f"{uri!r}: an S3 image URI is s3://bucket/key")
        return cls(bucket, key)


class S3ImageReader:
    """Reads whole S3 objects up to a size limit, through one thread-safe boto3 client.

    Args:
        endpoint: S3 endpoint URL for S3-compatible stores; default AWS_ENDPOINT_URL, else AWS.
        max_bytes: largest object read, in bytes (15 MiB by default, as Rekognition).
        retries: times a read that failed with Unavailable is tried again, >= 0.
        backoff_s: wait before the first retry, doubled before each next one.
        max_connections: connections kept to S3: as many as the threads reading at once.

    Example:
        >>> reader = S3ImageReader("http://127.0.0.1:9000")
        >>> data = reader.read(S3Object("photos", "2024/visit.jpg"))
    """

    def __init__(self, endpoint: str | None = None, *, max_bytes: int = MAX_S3_IMAGE_BYTES, retries: int = 0,
                 backoff_s: float = 0.5, max_connections: int = 10):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._s3 = S3Client(endpoint, max_pool_connections=max_connections)
        self.endpoint = self._s3.endpoint
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_connections = max_connections

    def read(self, obj: S3Object) -> bytes:
        """The object's bytes.

        Raises:
            ImageNotFound: no such object, bucket or version.
            ImageTooLarge: an object over `max_bytes`, refused from its size before its body is read.
            InvalidArgument: no bucket or key, a bucket name S3 does not allow, or an object that cannot be read
                (access denied, …).
            Unavailable: S3 could not be reached, `retries` + 1 times.
        """
        if not obj.bucket or not obj.name:
            raise InvalidArgument(f"s3_object: bucket and name are required, got {obj.uri!r}")
        for attempt in range(self.retries + 1):
            try:
                return self._read_once(obj)
            except Unavailable as e:
                if attempt == self.retries:
                    raise
                logger.warning("%s; retrying", e)
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _read_once(self, obj: S3Object) -> bytes:
        import botocore.exceptions

        kwargs = {"Bucket": obj.bucket, "Key": obj.name}
        if obj.version:
            kwargs["VersionId"] = obj.version
        try:
            response = self._s3().get_object(**kwargs)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength", 0))
                if size > self.max_bytes:
                    raise ImageTooLarge(f"image {obj.uri} is {size} bytes, over the limit of "
                                        f"{self.max_bytes} bytes for S3 objects")
                # Read one byte past the cap so that a wrong Content-Length cannot smuggle in more.
                data = body.read(self.max_bytes + 1)
            finally:
                body.close()
        except botocore.exceptions.ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NOT_FOUND or code in _CALLER_ERRORS:
                kind = ImageNotFound if code in _NOT_FOUND else InvalidArgument
                raise kind(f"image {obj.uri} cannot be read: {code} ({error.get('Message', '')})") from e
            raise Unavailable(f"reading image {obj.uri} failed: {e}") from e
        except botocore.exceptions.ParamValidationError as e:  # the request's bucket or key, refused before sending
            raise InvalidArgument(f"image {obj.uri} cannot be read: {e}") from e
        except botocore.exceptions.BotoCoreError as e:
            raise Unavailable(f"reading image {obj.uri} failed: {e}") from e
        if len(data) > self.max_bytes:
            raise ImageTooLarge(f"image {obj.uri} is over the limit of {self.max_bytes} bytes for S3 objects")
        logger.debug("read %s (%d bytes)", obj.uri, len(data))
        return data

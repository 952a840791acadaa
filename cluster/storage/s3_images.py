"""Reading the images that image requests name as S3 objects, with the size cap checked first."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from cluster.api.limits import MAX_S3_IMAGE_BYTES
from cluster.errors import InvalidArgument, Unavailable

logger = logging.getLogger(__name__)

# S3 error codes that mean the caller named something unreadable, not that S3 is down.
_CALLER_ERRORS = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "InvalidBucketName", "AccessDenied",
                  "InvalidArgument", "404", "403", "400"}


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


class S3ImageReader:
    """Reads whole S3 objects up to a size limit, through one thread-safe boto3 client.

    Args:
        endpoint: S3 endpoint URL for S3-compatible stores; default AWS_ENDPOINT_URL, else AWS.
        max_bytes: largest object read, in bytes (15 MiB by default, as Rekognition).

    Example:
        >>> reader = S3ImageReader("http://127.0.0.1:9000")
        >>> data = reader.read(S3Object("photos", "2024/visit.jpg"))
    """

    def __init__(self, endpoint: str | None = None, *, max_bytes: int = MAX_S3_IMAGE_BYTES):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self.max_bytes = max_bytes
        self._client = None
        self._lock = threading.Lock()

    def _s3(self):
        with self._lock:  # boto3 clients are thread-safe, creating them is not
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint)
            return self._client

    def read(self, obj: S3Object) -> bytes:
        """The object's bytes.

        Raises:
            InvalidArgument: no bucket or key, an object that does not exist or cannot be read,
                or one over `max_bytes` (refused from its size, before its body is read).
            Unavailable: S3 could not be reached.
        """
        import botocore.exceptions

        if not obj.bucket or not obj.name:
            raise InvalidArgument(f"s3_object: bucket and name are required, got {obj.uri!r}")
        kwargs = {"Bucket": obj.bucket, "Key": obj.name}
        if obj.version:
            kwargs["VersionId"] = obj.version
        try:
            response = self._s3().get_object(**kwargs)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength", 0))
                if size > self.max_bytes:
                    raise InvalidArgument(f"image {obj.uri} is {size} bytes, over the limit of "
                                          f"{self.max_bytes} bytes for S3 objects")
                # Read one byte past the cap so that a wrong Content-Length cannot smuggle in more.
                data = body.read(self.max_bytes + 1)
            finally:
                body.close()
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _CALLER_ERRORS:
                raise InvalidArgument(f"image {obj.uri} cannot be read: {code} "
                                      f"({e.response.get('Error', {}).get('Message', '')})") from e
            raise Unavailable(f"reading image {obj.uri} failed: {e}") from e
        except botocore.exceptions.BotoCoreError as e:
            raise Unavailable(f"reading image {obj.uri} failed: {e}") from e
        if len(data) > self.max_bytes:
            raise InvalidArgument(f"image {obj.uri} is over the limit of {self.max_bytes} bytes for S3 objects")
        logger.debug("read %s (%d bytes)", obj.uri, len(data))
        return data

"""Where job inputs live: `s3://bucket/key` or local paths, opened through pyarrow filesystems.

One `S3FileSystem` per endpoint and process (they are thread-safe and keep their
connections), so the fetch tasks of a Ray Data pipeline reuse them across batches.
"""

from __future__ import annotations

import functools
import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cluster.storage.object_store import s3_filesystem

# AWS settings a driver hands to its Ray workers, which may not share its environment
# (a local Ray started before the variables were set, or a job without them in runtime_env).
AWS_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


_s3 = functools.lru_cache(maxsize=8)(s3_filesystem)  # by endpoint: one filesystem per endpoint and process


def filesystem(uri: str, s3_endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) for an `s3://bucket/key` URI or a local path.

    Args:
        uri: s3://bucket/key, file:///path or a path.
        s3_endpoint: S3 endpoint URL ("http://127.0.0.1:9000"); "" for AWS_ENDPOINT_URL, else AWS.

    Raises:
        ValueError: another scheme, or an S3 URI without a bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{uri!r}: an S3 URI needs a bucket (s3://bucket/key)")
        return _s3(s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", "")), f"{parsed.netloc}{parsed.path}"
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    raise ValueError(f"{uri!r}: scheme {parsed.scheme!r} unsupported, use s3://bucket/key or a path")


def resolve(uri: str, base: str) -> str:
    """`uri` as given when it is absolute (s3://… or /…), else relative to the folder of `base` (a manifest)."""
    if not uri or urlparse(uri).scheme in ("s3", "file") or os.path.isabs(uri):
        return uri
    parsed = urlparse(base)
    if parsed.scheme == "s3":
        return f"s3://{parsed.netloc}{posixpath.normpath(posixpath.join(posixpath.dirname(parsed.path), uri))}"
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), uri))


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI of a path of `fs`, as manifests and records name it."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def aws_env() -> dict[str, str]:
    """The AWS variables set in this process, for the runtime_env of Ray workers."""
    return {name: os.environ[name] for name in AWS_ENV_VARS if os.environ.get(name)}

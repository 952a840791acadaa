"""The object store: a local folder or an S3 prefix, through pyarrow filesystems.

Every object is written whole or not at all: on a local disk through a
temporary file and a rename, on S3 because a PUT is atomic. Readers therefore
never see half an object, which is what makes manifests safe to commit last.
A put that returned survives a power cut on a local disk too, as audit records
and commits need: the file is synced before the rename, and after it the folder
holding the new name (and the folder above each folder the put made), since the
file's own sync does not cover its name.
A process killed between the write and the rename leaves its temporary file
behind; it is hidden (".name.tmp-…", as Parquet dataset readers skip dot-files),
never listed, and removed with its prefix.

Keys come from callers' ids (a collection id is a folder of the store), so every
key passes `check_key` before it reaches the filesystem: a key is a path of
names below the root and can never name the root itself, a parent of it, or
anything outside it, on a local folder and on S3 alike.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import posixpath
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from cluster.errors import InvalidArgument

logger = logging.getLogger(__name__)

_TEMPORARY_MARK = ".tmp-"
# also matches the unhidden names ("name.tmp-…") that earlier versions left
_TEMPORARY_NAME = re.compile(re.escape(_TEMPORARY_MARK) + r"[0-9a-f]{32}$")
# The names an id may give an object: what is safe as a file name on every OS and as an S3 key.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,255}")
# A key's own parts are freer (job and audit keys carry "=" or "+") but never a separator, a control
# character or a traversal.
_KEY_PART = re.compile(r"[^\x00-\x1f\x7f/\\]{1,255}")


class UnsafeKey(InvalidArgument):
    """A key or id that would reach outside its place in the store."""


class PreconditionFailed(Exception):
    """A conditional write found the object changed since it was read: another writer got there first."""


class UnusableStore(ValueError):
    """A store URI that cannot be a store: an unknown scheme, or a local path that is (or is below) a file."""


def check_name(name: str, what: str) -> str:
    """Returns `name` if it is one safe object name (1-255 of [A-Za-z0-9_.-], not "." or ".."); else UnsafeKey."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or set(name) == {"."}:
        raise UnsafeKey(f"{what} {name!r}: use 1-255 characters of [A-Za-z0-9_.-], not only dots")
    return name


def check_key(key: str, *, prefix: bool = False) -> str:
    """Returns `key` if it names an object below the root (or, with prefix, a folder of it, "" for all).

    Raises:
        UnsafeKey: an empty part ("a//b", "/a"), ".", "..", a backslash or a control character.
    """
    if prefix and key == "":
        return key  # the root
    parts = key.split("/")
    if prefix and len(parts) > 1 and parts[-1] == "":
        parts.pop()  # "collections/" is the folder "collections"
    if any(not _KEY_PART.fullmatch(p) or set(p) == {"."} for p in parts):
        raise UnsafeKey(f"object key {key!r} is not a path of names below the store's root")
    return key


def s3_region() -> str:
    """AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1."""
    return os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


class S3Client:
    """One boto3 S3 client, created on first use (importing boto3 only then) and shared by threads: boto3
    clients are thread-safe, creating them is not.

    Args:
        endpoint: endpoint URL; None for AWS_ENDPOINT_URL, else AWS. The region is `s3_region()`.
        **config: botocore.config.Config options (timeouts, retries, connection pool size).
    """

    def __init__(self, endpoint: str | None = None, **config):
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self._config = config
        self._client = None
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            if self._client is None:
                import boto3
                import botocore.config

                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint, region_name=s3_region(),
                    config=botocore.config.Config(**self._config))
            return self._client


def _make_folders(folder: str) -> list[str]:
    """Makes `folder` and its missing parents; the ones this call found missing, outermost first."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if missing:
        os.makedirs(missing[0], exist_ok=True)  # a concurrent put may make them too
    return missing[::-1]


def _sync_folder(folder: str) -> None:
    """Makes the names in a folder durable: a renamed or created entry is the folder's data, not the file's."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_new_name(folder: str, made: list[str]) -> None:
    """Makes a new object's name durable: its folder, then the folder above each folder made for it
    (`_make_folders`), deepest first."""
    for synced in (folder, *(os.path.dirname(m) for m in reversed(made))):
        _sync_folder(synced)


def _sync_folders(folders) -> None:
    """`_sync_folder` of each folder that still exists (a removal is the folder's data too)."""
    for folder in folders:
        try:
            _sync_folder(folder)
        except FileNotFoundError:
            pass


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """The pyarrow filesystem of an S3 endpoint, for stores and job files alike.

    Args:
        endpoint: endpoint URL of an S3-compatible store ("http://127.0.0.1:8333", or a host, taken as
            https); None or "" for AWS_ENDPOINT_URL, else AWS. The region is AWS_REGION, else
            AWS_DEFAULT_REGION, else us-east-1.
    """
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    options = {"region": s3_region()}
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=url.netloc, scheme=url.scheme)
    return pafs.S3FileSystem(**options)


def object_key(*names: str) -> str:
    """Joins safe names into a key ("collections", "staff", "manifest.json"); UnsafeKey for any other name."""
    return "/".join(check_name(n, "object name") for n in names)


class ObjectStore:
    """Keys ("collections/x/manifest.json") under a root URI.

    Args:
        uri: a local folder ("./data", "file:///srv/gallery") or "s3://bucket/prefix".
        s3_endpoint: S3 endpoint ("http://127.0.0.1:8333"); default: AWS_ENDPOINT_URL or AWS. Conditional
            writes (`put_if`) need one that honours If-Match and If-None-Match on PUT, as AWS S3 and moto do.

    Raises:
        UnusableStore: another scheme, or a local path that is a file or cannot be made a folder.

    Example:
        >>> store = ObjectStore("/tmp/gallery")
        >>> store.put("a/b.txt", b"hello"); store.get("a/b.txt")
        b'hello'
    """

    def __init__(self, uri: str, *, s3_endpoint: str | None = None):
        self.uri = uri
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            self.fs: pafs.FileSystem = s3_filesystem(s3_endpoint)
            self.root = f"{parsed.netloc}{parsed.path}".rstrip("/")
            self.is_local = False
            # for conditional writes, which pyarrow's filesystem does not offer
            self._s3 = S3Client(s3_endpoint, connect_timeout=5, read_timeout=10, retries={"max_attempts": 3})
        elif parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else uri
            self.root = os.path.abspath(os.path.expanduser(path))
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise UnusableStore(f"store {uri!r}: {self.root} is a file; give a folder (created when missing) "
                                    "or s3://bucket/prefix")
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:  # a file on the way (NotADirectoryError), no permission, a read-only disk
                raise UnusableStore(f"store {uri!r}: cannot create the folder {self.root}: {e.strerror}") from e
            self.fs = pafs.LocalFileSystem()
            self.is_local = True
        else:
            raise UnusableStore(f"store {uri!r}: scheme {parsed.scheme!r} unsupported, "
                                "use a path or s3://bucket/prefix")

    def _path(self, key: str, *, prefix: bool = False) -> str:
        """The filesystem path of a key, which `check_key` has confined to the root."""
        return posixpath.join(self.root, check_key(key, prefix=prefix))

    def put(self, key: str, data: bytes) -> None:
        """Writes one object atomically."""
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, local_path: str) -> None:
        """Writes one object atomically from a local file, streamed (S3: a multipart upload)."""
        with open(local_path, "rb") as source:
            self._write(key, lambda f: shutil.copyfileobj(source, f, 8 << 20))

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Calls `write` with a stream that becomes the object whole once it returns, or not at all."""
        path = self._path(key)
        if self.is_local:
            folder, name = os.path.split(path)
            made = _make_folders(folder)
            temporary = os.path.join(folder, f".{name}{_TEMPORARY_MARK}{uuid.uuid4().hex}")
            try:
                with open(temporary, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
            _sync_new_name(folder, made)
        else:
            with self.fs.open_output_stream(path) as f:
                write(f)

    def append(self, key: str, data: bytes) -> None:
        """Adds `data` at the end of an object (made when absent), durably, all of it or none; local folders only,
        as S3 objects cannot grow. One sync of the data, where a put takes two (the bytes, then the new name) and
        makes a file: the audit log's writes, one per answered call, append (benchmarks/README.md). A reader may
        see part of an append in progress, never bytes out of order.

        Raises:
            NotImplementedError: the store is on S3.
        """
        if not self.is_local:
            raise NotImplementedError(f"{self.uri}: S3 objects cannot grow; put a new object instead")
        path = self._path(key)
        folder = os.path.dirname(path)
        made = _make_folders(folder)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, memoryview(data)[written:])
                os.fdatasync(fd)  # the bytes and the size that reaches them
            except BaseException:
                os.ftruncate(fd, size)  # none of it: the next append must follow whole records
                raise
        finally:
            os.close(fd)
        if size == 0:  # a new object
            _sync_new_name(folder, made)

    def open_input(self, key: str) -> pa.NativeFile:
        """A random-access reader of one object (S3: ranged GETs), for Parquet files too large to hold whole.
        Raises FileNotFoundError when it does not exist."""
        return self.fs.open_input_file(self._path(key))

    def get(self, key: str) -> bytes:
        """Reads one object. Raises FileNotFoundError when it does not exist."""
        with self.fs.open_input_stream(self._path(key)) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under prefix, sorted."""
        return [key for key in self._files(prefix) if not _is_temporary(key)]

    def _files(self, prefix: str) -> list[str]:
        selector = pafs.FileSelector(self._path(prefix, prefix=True), recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        start = len(self.root) + 1
        return sorted(info.path[start:] for info in infos if info.type == pafs.FileType.File)

    def delete(self, key: str) -> None:
        """Deletes one object, if there. On a local disk the removal survives a power cut once this returns, as
        a put does: deleting a collection's manifest is what deletes the collection."""
        self._unlink(key)
        if self.is_local:
            _sync_folders([os.path.dirname(self._path(key))])

    def delete_prefix(self, prefix: str) -> None:
        """Deletes every object under prefix, with the temporary files of interrupted writes; durably, as `delete`."""
        if not prefix.endswith("/") or prefix == "/":
            raise UnsafeKey(f"delete_prefix {prefix!r}: a folder below the root ending in '/' (never the whole store)")
        keys = self._files(prefix)
        for key in keys:
            self._unlink(key)
        if self.is_local:
            _sync_folders({os.path.dirname(self._path(key)) for key in keys})

    def _unlink(self, key: str) -> None:
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass


    # ---- compare-and-swap: for the few objects several processes write (the writer lease) -----------------
    # pyarrow's S3 filesystem offers no conditional write, so these go through boto3 on S3; on a local folder
    # an flock held across the read and the rename makes the check and the write one step.

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """Reads one object with its tag, for `put_if`. Raises FileNotFoundError when it does not exist."""
        if self.is_local:
            data = self.get(key)
            return data, hashlib.md5(data, usedforsecurity=False).hexdigest()
        try:
            answer = self._s3().get_object(**self._s3_location(key))
            return answer["Body"].read(), answer["ETag"]
        except Exception as e:
            raise _s3_error(e, key) from e

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> str:
        """Writes one object only if it is as last read: tag None: only if absent; else only if its tag is `tag`.

        Returns:
            the new object's tag.

        Raises:
            PreconditionFailed: it changed (or appeared) since, and is left as it is.
        """
        if not self.is_local:
            condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
            try:
                return self._s3().put_object(**self._s3_location(key), Body=data, **condition)["ETag"]
            except Exception as e:
                raise _s3_error(e, key) from e
        fd = os.open(os.path.join(self.root, _CAS_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # every local put_if of this store, in any process, one at a time
            try:
                current: str | None = self.get_tagged(key)[1]
            except FileNotFoundError:
                current = None
            if current != tag:
                raise PreconditionFailed(f"{self.uri}: {key} changed since it was read")
            self.put(key, data)
        finally:
            os.close(fd)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _s3_location(self, key: str) -> dict:
        bucket, _, prefix = self._path(key).partition("/")
        return {"Bucket": bucket, "Key": prefix}


_CAS_LOCK_FILE = ".put_if.lock"


def _s3_error(error: Exception, key: str) -> Exception:
    """A boto3 error as this module's: PreconditionFailed, FileNotFoundError, or OSError for the rest."""
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 409 ConditionalRequestConflict: another conditional write of the object was in flight
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return PreconditionFailed(f"{key} changed since it was read ({code})")
        if code in ("NoSuchKey", "404") or status == 404:
            return FileNotFoundError(key)
    if isinstance(error, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
        return OSError(f"S3 {key}: {error}")
    return error


def _is_temporary(key: str) -> bool:
    return _TEMPORARY_NAME.search(key) is not None

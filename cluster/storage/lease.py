"""One gateway writes a store: an exclusive writer lease, taken before anything is loaded.

Two gateways committing manifests to one store would lose each other's writes, and
each would garbage-collect the segments the other had just committed. A gateway
therefore holds the store's writer lease while it runs, and a second one refuses
to start:

- on a local folder, an flock on `{root}/.gateway.lock`: the kernel releases it
  when the holder exits, however it exits;
- on S3, the object `gateway.lease` naming the holder, renewed every `ttl_s / 3`.
  A lease not renewed for `ttl_s` is free, and one left by a dead process on this
  host is free at once. Taking and renewing are conditional writes (If-None-Match
  to create, If-Match the tag last read to replace): of two gateways taking a free
  lease at once exactly one succeeds, and a renewal fails once another gateway
  has taken the lease over. Before each manifest commit a gateway checks that its
  lease is still fresh (`check`), so one that was paused past its lease stops
  writing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from cluster.errors import Unavailable
from cluster.storage.object_store import ObjectStore, PreconditionFailed

logger = logging.getLogger(__name__)

LOCK_FILE = ".gateway.lock"
LEASE_KEY = "gateway.lease"
LOCAL_POLL_S = 0.1  # how often a gateway waiting for a folder's lease tries again


class StoreInUse(RuntimeError):
    """Another live gateway holds the store's writer lease."""


class WriterLease:
    """The exclusive right to commit manifests to one store. Use `acquire`; `release` (or exit) gives it up.

    Example:
        >>> lease = WriterLease.acquire(ObjectStore("s3://bucket/gallery"))  # StoreInUse when held elsewhere
        >>> lease.check()  # before each commit: raises Unavailable once the lease is lost
        >>> lease.release()
    """

    def __init__(self, store: ObjectStore, ttl_s: float):
        self.store = store
        self.ttl_s = ttl_s
        self.holder = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._lock_fd: int | None = None
        self._renewed_at = 0.0  # time.monotonic() at the start of the last renewal that landed
        self._tag: str | None = None  # the lease object's tag as this gateway last wrote it (S3)
        self._lost = ""
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @classmethod
    def acquire(cls, store: ObjectStore, *, ttl_s: float = 30.0, wait_s: float | None = None) -> WriterLease:
        """Takes the store's writer lease.

        Args:
            store: the store the gateway will write.
            ttl_s: S3 only: how long a lease lives without renewal.
            wait_s: how long to wait for a lease held elsewhere: on S3 for it to expire (default ttl_s + a
                renewal, so that a gateway restarted on another host takes over from one that died), on a
                folder for its holder to exit (default 0); math.inf for a standby gateway.

        Raises:
            StoreInUse: another live gateway holds it (after `wait_s` on S3).
        """
        lease = cls(store, ttl_s)
        if store.is_local:
            lease._lock_local(0.0 if wait_s is None else wait_s)
        else:
            lease._take_s3(ttl_s + ttl_s / 3 if wait_s is None else wait_s)
        return lease

    def check(self) -> None:
        """Raises Unavailable when this gateway may no longer hold the lease (S3: not renewed within ttl_s)."""
        if self._lock_fd is not None:
            return
        if self._lost or time.monotonic() - self._renewed_at > self.ttl_s:
            raise Unavailable(f"this gateway lost the writer lease of {self.store.uri} "
                              f"({self._lost or 'not renewed in time'}); restart it")

    def release(self) -> None:
        held, self._lost = not self._lost, self._lost or "released"
        if self.store.is_local:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor drops the flock
                self._lock_fd = None
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            if held and self._holds(self._read()[0]):
                self.store.delete(LEASE_KEY)
        except OSError:  # the lease then expires after ttl_s
            logger.warning("%s: releasing the writer lease failed", self.store.uri, exc_info=True)

    # ---- local folder ------------------------------------------------------

    def _lock_local(self, wait_s: float) -> None:
        fd = os.open(os.path.join(self.store.root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(LOCAL_POLL_S)  # not a blocking flock: SIGTERM must still stop a waiting standby
                    continue
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                os.close(fd)
                raise StoreInUse(f"{self.store.uri} is served by another gateway ({holder or 'unknown'}); "
                                 "stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._lock_fd = fd

    # ---- S3 ----------------------------------------------------------------

    def _read(self) -> tuple[dict | None, str | None]:
        """The lease and its tag; (None, None) when there is none, (None, tag) when it is unreadable."""
        try:
            data, tag = self.store.get_tagged(LEASE_KEY)
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), tag
        except ValueError:  # unreadable: free, replaced through its tag
            return None, tag

    def _record(self) -> bytes:
        return json.dumps({**self.holder, "renewed_at": time.time(), "ttl_s": self.ttl_s}).encode()

    def _holds(self, lease: dict | None) -> bool:
        return lease is not None and lease.get("owner") == self.holder["owner"]

    def _free(self, lease: dict | None) -> bool:
        if lease is None or self._holds(lease):
            return True
        if time.time() - float(lease.get("renewed_at", 0)) > float(lease.get("ttl_s", self.ttl_s)):
            return True
        return lease.get("host") == self.holder["host"] and not _alive(int(lease.get("pid", 0)))

    def _take_s3(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        waiting_logged = False
        while True:
            lease, tag = self._read()
            if self._free(lease):
                started = time.monotonic()
                try:
                    self._tag = self.store.put_if(LEASE_KEY, self._record(), tag=tag)
                    self._renewed_at = started
                    break
                except PreconditionFailed:  # another gateway wrote it since it was read: who holds it now
                    lease, _ = self._read()
            if time.monotonic() >= deadline:
                holder = {k: lease.get(k) for k in ("host", "pid")} if lease else "unknown"
                raise StoreInUse(f"{self.store.uri} is served by another gateway ({holder}); stop it first, "
                                 f"or wait {self.ttl_s:.0f} s after it died")
            if not waiting_logged:
                logger.warning("%s: writer lease held by %s; waiting up to %.0f s for it to expire",
                               self.store.uri, lease, wait_s)
                waiting_logged = True
            time.sleep(min(self.ttl_s / 6, max(deadline - time.monotonic(), 0.05)))
        self._heartbeat = threading.Thread(target=self._renew, name="writer-lease", daemon=True)
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                started = time.monotonic()
                try:
                    self._tag = self.store.put_if(LEASE_KEY, self._record(), tag=self._tag)
                    self._renewed_at = started
                    continue
                except PreconditionFailed:
                    lease, tag = self._read()
                if self._holds(lease):  # a renewal that landed after its answer was lost: still ours
                    self._tag = tag
                    continue
                self._lost = f"taken by {lease.get('host')} pid {lease.get('pid')}" if lease else "deleted"
                logger.error("%s: writer lease %s; this gateway stops writing", self.store.uri, self._lost)
                return
            except OSError:
                logger.warning("%s: renewing the writer lease failed; retrying", self.store.uri, exc_info=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True

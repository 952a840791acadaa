"""The audit log: one hash-chained JSON record per RPC — who asked, why, what they were shown — in the object store.

It fails closed, as HashiCorp Vault's audit devices do: `record` returns only once the record is durably
written, and raises `AuditUnavailable` when it cannot be, so the caller refuses to answer. Concurrent
RPCs share one write (group commit): a writer thread takes every record queued while it was writing and
writes them to the object `audit/YYYY/MM/DD/HH/<sequence>-<gateway>.jsonl`. On S3 each write is a new
object. In a local folder writes append to the object until it holds `MAX_OBJECT_BYTES` or its hour ends:
an append is one sync where a new object is two, and the sync was most of each call's wait for its record
and a quarter of the gateway's CPU at batch 1 (benchmarks/README.md).

Every record carries the hash of the record before it (`prev`) and its own (`hash`, SHA-256 over its
canonical JSON with `prev`); every object starts with a header naming the hash of the object before it.
`verify` therefore finds any record edited, removed, reordered or truncated, and any object removed or
replaced, up to the newest head it is given or finds (`audit/HEAD`). What it cannot prove is in SECURITY.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone

from cluster.errors import Unavailable
from cluster.storage.object_store import ObjectStore

logger = logging.getLogger(__name__)

PREFIX = "audit/"
HEAD_KEY = "audit/HEAD"
GENESIS = "0" * 64

# Called after each durable write of the log with its duration (seconds) and the records it held (for metrics).
WriteObserver = Callable[[float, int], None]

# The head moves at most this often while calls keep coming (and at close): moved after every object, its writes
# were as many as the objects' and took a tenth to a sixth of the gateway's CPU at batch 1 with 8 clients
# (benchmarks/README.md); the head only bounds what `verify` can see cut from the end.
HEAD_INTERVAL_S = 0.05

# A local object takes appends until it holds this much (or its hour ends); then the next write starts another.
MAX_OBJECT_BYTES = 4 << 20


class AuditUnavailable(Unavailable):
    """A record could not be durably written: the RPC it describes must not be answered."""


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def record_hash(record: dict) -> str:
    """SHA-256 of a record's canonical JSON without its own `hash` (its `prev` included)."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _hashed_line(record: dict) -> tuple[bytes, str]:
    """(`_canonical` of the record with its `hash` added, that hash), encoding each value once: a search's
    candidates are most of a record, and encoding them twice (to hash, then to write) was most of the gateway's
    CPU at batch 256 (benchmarks/README.md). Canonical JSON of a dict is its sorted "key":value pairs, so the
    line is the hashed text with the hash's pair put in its place."""
    # No check for cycles: a record is built from the call's plain values, and the check is a good part of the
    # cost of encoding a batch's candidates (benchmarks/README.md).
    parts = {k: json.dumps(k) + ":" + json.dumps(v, sort_keys=True, separators=(",", ":"), default=str,
                                                  check_circular=False)
             for k, v in record.items() if k != "hash"}
    digest = hashlib.sha256(("{" + ",".join(parts[k] for k in sorted(parts)) + "}").encode()).hexdigest()
    parts["hash"] = json.dumps("hash") + ":" + json.dumps(digest)
    return ("{" + ",".join(parts[k] for k in sorted(parts)) + "}").encode(), digest


def fingerprint(data: bytes) -> str:
    """What the log keeps of a probe (image or embedding bytes): its SHA-256, never the bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Head:
    """The newest point of the chain: the sequence of the last object, its hash (of its bytes up to the last
    record), and the last record's hash."""

    sequence: int
    object_hash: str
    record_hash: str

    def to_json(self) -> bytes:
        return _canonical({"sequence": self.sequence, "object_hash": self.object_hash,
                           "record_hash": self.record_hash})

    @classmethod
    def from_json(cls, data: bytes) -> Head:
        raw = json.loads(data)
        return cls(int(raw["sequence"]), str(raw["object_hash"]), str(raw["record_hash"]))


class AuditLog:
    """Durable, hash-chained audit records; `record` blocks until its record is in the store.

    Args:
        store: where the records go (under "audit/"); one gateway writes it (the writer lease).
        gateway_id: names this gateway in object keys; default a random id.
        max_batch: records at most in one object.
        write_observer: told the duration of each durable write and how many records it held: every call waits
            for one, so it is part of every call's latency.
        head_interval_s: least time between two moves of `audit/HEAD`.
        max_object_bytes: a local object takes appends until it holds this much (1: a new object every write).

    Example:
        >>> log = AuditLog(ObjectStore("/tmp/g"))
        >>> log.record({"method": "SearchByEmbedding", "identity": "alice", "purpose": "case 7"})
        >>> log.close()
        >>> verify(ObjectStore("/tmp/g")).records
        1
    """

    def __init__(self, store: ObjectStore, *, gateway_id: str = "", max_batch: int = 1000,
                 write_observer: WriteObserver | None = None, head_interval_s: float = HEAD_INTERVAL_S,
                 max_object_bytes: int = MAX_OBJECT_BYTES):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.store = store
        self.gateway_id = gateway_id or hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:12]
        self.max_batch = max_batch
        self._write_observer = write_observer
        self.head_interval_s = head_interval_s
        self.max_object_bytes = max_object_bytes
        self._head = _last_head(store)
        self._open: _OpenObject | None = None  # the object of the last write; a local one takes the next append
        self._queue: list[tuple[dict, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._head_to_write: Head | None = None  # the newest head not yet in the store (`_run_head`)
        self._head_cond = threading.Condition()
        self._writer_done = False  # set by `close` once the writer thread has stopped: the last head is then final
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._head_thread = threading.Thread(target=self._run_head, name="audit-head", daemon=True)
        self._thread.start()
        self._head_thread.start()

    def record(self, entry: dict, *, timeout_s: float = 30.0) -> None:
        """Writes one record durably before returning.

        Raises:
            AuditUnavailable: the store did not take it (or the log is closed): do not answer the RPC.
        """
        self.record_many([entry], timeout_s=timeout_s)

    def record_many(self, entries: list[dict], *, timeout_s: float = 30.0) -> None:
        """Writes records durably, in order and in one object (up to max_batch), before returning."""
        futures = [Future() for _ in entries]
        now = datetime.now(timezone.utc).isoformat()
        with self._cond:
            if self._closed:
                raise AuditUnavailable("the audit log is closed")
            self._queue.extend(({**entry, "time": now}, future) for entry, future in zip(entries, futures))
            self._cond.notify()
        try:
            for future in futures:
                future.result(timeout=timeout_s)
        except AuditUnavailable:
            raise
        except Exception as e:
            raise AuditUnavailable(f"audit record not written: {e}") from e

    def close(self) -> None:
        """Writes what is queued, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        with self._head_cond:
            self._writer_done = True
            self._head_cond.notify()
        self._head_thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            started = time.perf_counter()
            try:
                self._write([entry for entry, _ in batch])
            except Exception as e:
                logger.exception("audit write failed; %d RPCs are refused", len(batch))
                for _, future in batch:
                    future.set_exception(AuditUnavailable(f"audit store write failed: {e}"))
            else:
                if self._write_observer is not None:
                    self._write_observer(time.perf_counter() - started, len(batch))
                for _, future in batch:
                    future.set_result(None)
                with self._head_cond:
                    self._head_to_write = self._head
                    self._head_cond.notify()

    def _run_head(self) -> None:
        """Moves `audit/HEAD` to the newest object written, in a thread of its own, skipping heads that a newer
        one overtook. The objects are the calls' durable records; the head only lets `verify` see records cut
        from the end, so no call waits for it: a call waits for one durable write instead of two, and object
        writes do not queue behind head writes (benchmarks/README.md). It moves at most every
        `head_interval_s`, so it lags the chain by the objects written in that time, which `verify` accepts (a
        head behind the chain); `close` leaves it at the last object."""
        while True:
            with self._head_cond:
                while self._head_to_write is None and not self._writer_done:
                    self._head_cond.wait()
                head, self._head_to_write = self._head_to_write, None
            if head is None:
                return  # the writer has stopped and its last head is written
            moved = time.monotonic()
            try:
                self.store.put(HEAD_KEY, head.to_json())
            except Exception:
                logger.exception("audit head not moved to object %d; the next write moves it", head.sequence)
            with self._head_cond:  # the heads of the interval wait, the newest overtaking the others; close does not
                while not self._writer_done and (left := moved + self.head_interval_s - time.monotonic()) > 0:
                    self._head_cond.wait(left)

    def _write(self, entries: list[dict]) -> None:
        hour = f"{datetime.now(timezone.utc):%Y/%m/%d/%H}"
        appending = (self.store.is_local and self._open is not None and self._open.hour == hour
                     and self._open.size < self.max_object_bytes)
        if appending:
            sequence, lines = self._head.sequence, []
        else:
            sequence = self._head.sequence + 1
            header = {"object": sequence, "gateway": self.gateway_id, "prev_object": self._head.object_hash}
            lines = [_canonical(header)]
            self._open = _OpenObject(f"{PREFIX}{hour}/{sequence:012d}-{self.gateway_id}.jsonl", hour, hashlib.sha256())
        prev = self._head.record_hash
        for entry in entries:
            line, prev = _hashed_line({**entry, "prev": prev})
            lines.append(line)
        data = b"\n".join(lines) + b"\n"
        try:
            if self.store.is_local:
                self.store.append(self._open.key, data)
            else:
                self.store.put(self._open.key, data)
        except BaseException:
            self._open = None  # nothing of it was written (`ObjectStore.append`): the next write starts an object
            raise
        self._open.digest.update(data)
        self._open.size += len(data)
        self._head = Head(sequence, self._open.digest.hexdigest(), prev)


@dataclass
class _OpenObject:
    """The object of the last write, which the next may append to in a local store (on S3 each write's own):
    its key, the hour it holds, and the hash and size of its bytes so far."""

    key: str
    hour: str
    digest: hashlib._Hash
    size: int = 0


def _object_keys(store: ObjectStore) -> list[str]:
    """The audit objects in chain order: by sequence, whatever hour folder they are in."""
    keys = [k for k in store.list(PREFIX) if k.endswith(".jsonl")]
    return sorted(keys, key=lambda k: k.rsplit("/", 1)[1])


def _last_head(store: ObjectStore) -> Head:
    """Where a new gateway continues the chain: after the last object in the store, whose partial last record, if
    a crash cut an append short (`_complete`), is removed first: no call it describes was answered."""
    keys = _object_keys(store)
    if not keys:
        return Head(0, GENESIS, GENESIS)
    data = store.get(keys[-1])
    whole = _complete(data)
    if whole != data:
        logger.warning("%s ends in %d bytes of a write a crash cut short (its calls were not answered): removed",
                       keys[-1], len(data) - len(whole))
        if whole.count(b"\n") > 1:
            store.put(keys[-1], whole)
        else:  # not one record whole: the object was never written
            store.delete(keys[-1])
            return _last_head(store)
    lines = whole.splitlines()
    header = json.loads(lines[0])
    last = json.loads(lines[-1]) if len(lines) > 1 else {"hash": GENESIS}
    return Head(int(header["object"]), hashlib.sha256(whole).hexdigest(), last["hash"])


def _complete(data: bytes) -> bytes:
    """An object's whole lines: every write ends in a newline, so bytes after the last one are an append in
    progress, or one a crash cut short."""
    return data[:data.rfind(b"\n") + 1]


@dataclass
class Verification:
    """What `verify` found: records and objects checked, and every break in the chain (empty: intact)."""

    objects: int
    records: int
    head: Head
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(store: ObjectStore, *, expected_head: Head | None = None) -> Verification:
    """Checks the whole chain: every record's hash and link, every object's link, and that the object the head
    names held, up to the head's record, exactly the bytes the head names: a head kept elsewhere earlier proves
    the records up to it however far the log has grown since.

    Args:
        expected_head: a head recorded elsewhere earlier (e.g. printed by a previous verify); default the
            store's own `audit/HEAD`, which an attacker with write access could roll back too.
    """
    problems: list[str] = []
    keys = _object_keys(store)
    try:
        head = expected_head or Head.from_json(store.get(HEAD_KEY))
    except FileNotFoundError:
        head = Head(0, GENESIS, GENESIS)
        if keys:
            problems.append(f"{HEAD_KEY} is missing")
    # (object hash, record hash) after each record of the object the head names: the head moved at most every
    # HEAD_INTERVAL_S, and local objects take appends after it, so it may name any record of its object.
    heads_named: set[tuple[str, str]] = set()
    prev_object, prev_record, sequence, count = GENESIS, GENESIS, 0, 0
    for key in keys:
        data = store.get(key)
        if key == keys[-1]:  # the newest object may be taking an append (or a crash cut its last one short)
            data = _complete(data)
        lines = data.splitlines()
        try:
            header = json.loads(lines[0])
        except (IndexError, ValueError):
            problems.append(f"{key}: no header")
            continue
        if header.get("object") != sequence + 1:
            problems.append(f"{key}: object {header.get('object')} follows object {sequence} "
                            "(one removed or reordered)")
        if header.get("prev_object") != prev_object:
            problems.append(f"{key}: does not follow the object before it (removed, replaced or reordered)")
        sequence = header.get("object") if isinstance(header.get("object"), int) else sequence + 1
        digest = hashlib.sha256(lines[0] + b"\n") if sequence == head.sequence else None
        for n, line in enumerate(lines[1:], start=1):
            if digest is not None:
                digest.update(line + b"\n")
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(f"{key} line {n + 1}: not a JSON record (truncated or edited)")
                continue
            if record.get("prev") != prev_record:
                problems.append(f"{key} line {n + 1}: does not follow the record before it (removed or reordered)")
            if record.get("hash") != record_hash(record):
                problems.append(f"{key} line {n + 1}: edited (its hash does not match its content)")
            prev_record = record.get("hash", "")
            count += 1
            if digest is not None:
                heads_named.add((digest.hexdigest(), prev_record))
        prev_object = hashlib.sha256(data).hexdigest()
    found = Head(sequence, prev_object, prev_record)
    if head.sequence > found.sequence:
        problems.append(f"the head names object {head.sequence}; the log ends at object {found.sequence} (truncated)")
    elif head.sequence and (head.object_hash, head.record_hash) not in heads_named:
        problems.append(f"object {head.sequence} is not as the head names it (replaced, edited or cut short)")
    return Verification(len(keys), count, found, problems)


def query(store: ObjectStore, *, since: str = "", until: str = "", identity: str = "", collection_id: str = "",
          case_id: str = "", limit: int = 1000) -> Iterator[dict]:
    """Records in chain order matching every given filter; times are ISO 8601 (UTC), `until` exclusive."""
    found = 0
    for key in _object_keys(store):
        for line in _complete(store.get(key)).splitlines()[1:]:  # not an append in progress
            record = json.loads(line)
            if ((since and record.get("time", "") < since) or (until and record.get("time", "") >= until)
                    or (identity and record.get("identity") != identity)
                    or (collection_id and record.get("collection_id") != collection_id)
                    or (case_id and record.get("case_id") != case_id)):
                continue
            yield record
            found += 1
            if found >= limit:
                return


def read_audit(store: ObjectStore) -> list[dict]:
    """Every record in the store, in chain order."""
    return list(query(store, limit=2**62))


def elapsed_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1e3, 3)

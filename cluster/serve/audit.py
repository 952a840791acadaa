"""The audit log: one JSON line per RPC — who asked, why, what they were shown — in the object store.

Records are buffered and written as immutable objects
``audit/YYYY/MM/DD/HH/<gateway>-<seq>.jsonl`` every `flush_interval_s` or
`max_buffered` records, and on close. A gateway that crashes loses at most the
records of the last interval; the objects themselves are never rewritten.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone

from cluster.storage.object_store import ObjectStore

logger = logging.getLogger(__name__)


class AuditLog:
    """Buffered, append-only audit records.

    Args:
        store: where the records go (under "audit/").
        flush_interval_s: longest a record waits in memory.
        max_buffered: records that trigger a write before the interval.

    Example:
        >>> log = AuditLog(ObjectStore("/tmp/g"))
        >>> log.record({"method": "/gallery.v1.Gallery/SearchByEmbedding", "identity": "alice"})
        >>> log.close()  # written to audit/…/<gateway>-00000001.jsonl
    """

    def __init__(self, store: ObjectStore, *, flush_interval_s: float = 1.0, max_buffered: int = 1000):
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.store = store
        self.gateway_id = uuid.uuid4().hex[:12]
        self.max_buffered = max_buffered
        self._buffer: list[str] = []
        self._sequence = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(flush_interval_s,), name="audit-flush", daemon=True)
        self._thread.start()

    def record(self, entry: dict) -> None:
        """Queues one record; it is serialised at flush time, off the request path."""
        entry["time"] = time.time()
        with self._lock:
            self._buffer.append(entry)
            full = len(self._buffer) >= self.max_buffered
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            entries, self._buffer = self._buffer, []
            if not entries:
                return
            self._sequence += 1
            key = f"audit/{datetime.now(timezone.utc):%Y/%m/%d/%H}/{self.gateway_id}-{self._sequence:08d}.jsonl"
        try:
            lines = [json.dumps({**e, "time": datetime.fromtimestamp(e["time"], timezone.utc).isoformat()},
                                default=str) for e in entries]
            self.store.put(key, ("\n".join(lines) + "\n").encode())
        except Exception:  # keep the records for the next try rather than lose them
            logger.exception("audit write to %s failed; %d records kept for the next flush", key, len(entries))
            with self._lock:
                self._buffer[:0] = entries

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()


def read_audit(store: ObjectStore) -> list[dict]:
    """Every record in the store, oldest object first."""
    return [json.loads(line) for key in store.list("audit/") for line in store.get(key).decode().splitlines()]


def elapsed_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1e3, 3)

"""Admission control: the gateway holds at most so many queries (queued or in flight); beyond, it refuses at once.

Without a bound, a burst larger than the shards can serve queues in the batcher for minutes and each caller
waits until its deadline (issue 14: 200 requests of 1,024 queries, median 253 s, 85 deadlines). Refusing with
RESOURCE_EXHAUSTED at once tells the client to back off while the admitted queries keep their latency.
Queries, not requests, are counted: one request of 1,024 queries costs the shards as much as 1,024 of one.
"""

from __future__ import annotations

import threading

from cluster.errors import ResourceExhausted


class QueryAdmission:
    """A counting bound on the queries held; `admit(n)` takes n or raises, `release(n)` gives them back.

    Args:
        max_queries: queries held at once, >= 1.

    Example:
        >>> admission = QueryAdmission(4096)
        >>> admission.admit(1024)
        >>> admission.held
        1024
        >>> admission.release(1024)
    """

    def __init__(self, max_queries: int):
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.max_queries = max_queries
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Queries admitted and not yet answered (queued or in flight)."""
        return self._held

    def admit(self, n: int) -> None:
        """Takes n queries of the bound, or raises ResourceExhausted without waiting."""
        with self._lock:
            if self._held + n > self.max_queries:
                held = self._held
            else:
                self._held += n
                return
        raise ResourceExhausted(f"the gateway is at capacity ({held} queries held, at most {self.max_queries}); "
                                f"{n} more cannot be admitted: retry with exponential backoff")

    def release(self, n: int) -> None:
        with self._lock:
            if n > self._held:
                raise ValueError(f"releasing {n} queries, only {self._held} held")
            self._held -= n

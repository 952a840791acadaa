"""Micro-batching of concurrent searches: one fan-out to the shards serves many callers.

No timer and no dispatcher thread: a caller that finds a free dispatch slot
takes every query waiting (its own included) and runs the batch in its own
thread; callers that arrive while all slots are busy wait in the queue for the
next batch. A lone query therefore goes out at once, with no thread hand-off,
and a busy gateway sends batches. Queries with the same key (collection, k,
nprobe) are concatenated; when a batch fails, every caller in it gets the error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future

import numpy as np

logger = logging.getLogger(__name__)

SearchFn = Callable[[Hashable, np.ndarray], tuple[np.ndarray, np.ndarray, dict]]


class QueryBatcher:
    """Groups concurrent `submit` calls into batched calls of `search_fn(key, xq)`.

    Args:
        search_fn: returns (D, I, records) for a (nq, d) batch.
        max_batch_size: queries per dispatch, >= 1.
        max_in_flight: dispatches running at once, >= 1. One is best here: every dispatch already
            runs on all shards in parallel, and each Ray call costs the gateway ~1 ms of native CPU, so
            fewer, larger batches serve more queries (8 clients at batch 1: 500 vs 450 QPS with two).
    """

    def __init__(self, search_fn: SearchFn, *, max_batch_size: int = 256, max_in_flight: int = 1):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._search_fn = search_fn
        self._max_batch_size = max_batch_size
        self._slots = threading.Semaphore(max_in_flight)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, key: Hashable, xq: np.ndarray) -> Future:
        """Queues (nq, d) queries and serves batches while a slot is free; the future gives (D, I, records)."""
        future: Future = Future()
        self._queue.put((key, xq, future))
        self._serve()
        return future

    def close(self) -> None:
        """Nothing runs in the background; kept for symmetry with other resources."""

    def _serve(self) -> None:
        while self._slots.acquire(blocking=False):
            try:
                batch = self._take()
                if batch:
                    self._dispatch(batch)
            finally:
                self._slots.release()
            if not batch and self._queue.empty():
                return  # a query queued after _take() found a slot free, or this loop takes it next

    def _take(self) -> list:
        batch, rows = [], 0
        while rows < self._max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[2].set_running_or_notify_cancel():
                batch.append(item)
                rows += item[1].shape[0]
        return batch

    def _dispatch(self, batch: list) -> None:
        groups: dict[Hashable, list] = {}
        for key, xq, future in batch:
            groups.setdefault(key, []).append((xq, future))
        for key, items in groups.items():
            try:
                D, I, records = self._search_fn(key, np.concatenate([xq for xq, _ in items]))
            except BaseException as e:  # every waiting caller gets the error
                for _, future in items:
                    future.set_exception(e)
                continue
            start = 0
            for xq, future in items:
                end = start + xq.shape[0]
                future.set_result((D[start:end], I[start:end], records))
                start = end

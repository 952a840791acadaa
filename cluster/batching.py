"""Micro-batching of concurrent searches: one fan-out to the shards serves many callers.

No timer: the dispatcher takes whatever queries are waiting when a dispatch
slot frees up, so a lone query goes out at once and a busy gateway sends
batches. Queries with the same key (collection, k, nprobe) are concatenated;
when a batch fails, every caller in it gets the error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

SearchFn = Callable[[Hashable, np.ndarray], tuple[np.ndarray, np.ndarray, dict]]


class QueryBatcher:
    """Groups concurrent `submit` calls into batched calls of `search_fn(key, xq)`.

    Args:
        search_fn: returns (D, I, records) for a (nq, d) batch.
        max_batch_size: queries per dispatch, >= 1.
        max_in_flight: dispatches running at once, >= 1.
    """

    def __init__(self, search_fn: SearchFn, *, max_batch_size: int = 256, max_in_flight: int = 2):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._search_fn = search_fn
        self._max_batch_size = max_batch_size
        self._slots = threading.Semaphore(max_in_flight)
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="search-dispatch")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, xq: np.ndarray) -> Future:
        """Queues (nq, d) queries; the future gives their (D, I, records)."""
        future: Future = Future()
        self._queue.put((key, xq, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._slots.acquire()
            batch, rows = [item], item[1].shape[0]
            while rows < self._max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
                rows += item[1].shape[0]
            groups: dict[Hashable, list] = {}
            for key, xq, future in batch:
                if future.set_running_or_notify_cancel():
                    groups.setdefault(key, []).append((xq, future))
            self._pool.submit(self._dispatch, groups)

    def _dispatch(self, groups: dict[Hashable, list]) -> None:
        try:
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
        finally:
            self._slots.release()

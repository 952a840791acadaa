"""Micro-batching of concurrent searches: one fan-out to the shards serves many callers.

No timer: a caller that finds a free dispatch slot takes every query waiting
(its own included) and runs the batch in its own thread, so a lone query goes
out at once, with no thread hand-off. Queries that arrive while every slot is
busy wait in the queue; when a dispatch ends with queries waiting, the next
batch goes out from a background thread rather than from the caller whose batch
just ended: that caller returns to answer its own client meanwhile, instead of
holding its reply back for the length of other callers' batches, and its client
sends its next query sooner, so batches grow (benchmarks/README.md). Queries
with the same key are concatenated, with the arrays that go with them row by row
(their IVF lists); when a batch fails, every caller in it gets the error.

A dispatch is split in two (`search_fn`, then `finish_fn`): the slot is held while
the shards search, and given back before the replies are decoded and merged, so
the shards start on the next batch while the gateway merges the last one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

# search_fn(key, xq, *row_aligned) -> searched, under the dispatch slot; then, once the slot is free,
# finish_fn(key, searched) -> (D, I, *more rows, shared): every caller of the batch gets its own rows of D, I
# and each array after them (the records aligned with I, ...), and shared (the partitions missing, ...) as it
# is. Without a finish_fn, search_fn returns (D, I, *more rows, shared) itself.
SearchFn = Callable[..., object]
FinishFn = Callable[[Hashable, object], tuple]


class QueryBatcher:
    """Groups concurrent `submit` calls into batched calls of `search_fn(key, xq, *row_aligned)`.

    Args:
        search_fn: searches a (nq, d) batch and the arrays submitted with it, concatenated alike, while
            holding a dispatch slot; returns (D, I, *more rows, shared), or what `finish_fn` makes them of.
            Every caller gets its rows of D, I and of the arrays after them, and shared.
        finish_fn: turns what `search_fn` returned into (D, I, *more rows, shared) after the slot is given
            back, in the thread that dispatched the batch; None when search_fn returns them itself.
        max_batch_size: a dispatch takes no further requests once it holds this many queries, >= 1.
        max_in_flight: dispatches running at once, >= 1. One is best here: every dispatch already
            runs on all shards in parallel, so fewer, larger batches serve more queries
            (benchmarks/README.md).
    """

    def __init__(self, search_fn: SearchFn, *, finish_fn: FinishFn | None = None, max_batch_size: int = 256,
                 max_in_flight: int = 1):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._search_fn = search_fn
        self._finish_fn = finish_fn
        self._max_batch_size = max_batch_size
        self._slots = threading.Semaphore(max_in_flight)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # One thread more than the slots: a follow-on thread finishing its batch must not hold back the next.
        self._follow_on = ThreadPoolExecutor(max_workers=max_in_flight + 1, thread_name_prefix="search-batch")

    def submit(self, key: Hashable, xq: np.ndarray, *row_aligned: np.ndarray) -> Future:
        """Queues (nq, d) queries, with arrays of nq rows that go with them, and dispatches a batch if a slot
        is free; the future gives (D, I, shared)."""
        future: Future = Future()
        self._queue.put((key, (xq, *row_aligned), future))
        self._serve()
        return future

    def close(self) -> None:
        """Stops serving follow-on batches; call after the last submit."""
        self._follow_on.shutdown(wait=True)

    def _serve(self) -> None:
        if not self._slots.acquire(blocking=False):
            return  # the holder of a slot finds this query queued when it releases the slot
        try:
            searched = self._search(self._take())
        finally:
            self._slots.release()
        # A query queued while the slot was held either took it after the release above or is seen here.
        stranded = False
        if not self._queue.empty():
            try:
                self._follow_on.submit(self._serve)
            except RuntimeError:  # closed: serve here, once this batch is answered, rather than strand them
                stranded = True
        self._finish(searched)
        if stranded:
            self._serve()

    def _take(self) -> list:
        batch, rows = [], 0
        while rows < self._max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[2].set_running_or_notify_cancel():
                batch.append(item)
                rows += item[1][0].shape[0]
        return batch

    def _search(self, batch: list) -> list[tuple[Hashable, list, object, BaseException | None]]:
        """(key, [(arrays, future)], what search_fn returned, or the error it raised) of each key's group."""
        groups: dict[Hashable, list] = {}
        for key, arrays, future in batch:
            groups.setdefault(key, []).append((arrays, future))
        searched = []
        for key, items in groups.items():
            try:
                searched.append((key, items, self._search_fn(key, *(
                    parts[0] if len(parts) == 1 else np.concatenate(parts)
                    for parts in zip(*(arrays for arrays, _ in items)))), None))
            except BaseException as e:  # every waiting caller gets the error
                searched.append((key, items, None, e))
        return searched

    def _finish(self, searched: list[tuple[Hashable, list, object, BaseException | None]]) -> None:
        for key, items, result, error in searched:
            if error is None and self._finish_fn is not None:
                try:
                    result = self._finish_fn(key, result)
                except BaseException as e:
                    error = e
            if error is not None:
                for _, future in items:
                    future.set_exception(error)
                continue
            *rows, shared = result
            start = 0
            for arrays, future in items:
                end = start + arrays[0].shape[0]
                future.set_result((*(row[start:end] for row in rows), shared))
                start = end

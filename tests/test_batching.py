"""QueryBatcher on its own: concurrent callers share dispatches and each gets exactly its own rows."""

import threading
import time

import faiss
import numpy as np
import pytest

from cluster.gateway.batching import QueryBatcher

D = 16


@pytest.fixture(scope="module")
def index():
    xb = np.random.default_rng(0).standard_normal((2_000, D)).astype(np.float32)
    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    return flat


class SlowSearch:
    """A flat index search that takes a while, recording the size of every dispatch."""

    def __init__(self, index, delay_s: float = 0.02, fail_on: int | None = None):
        self.index, self.delay_s, self.fail_on = index, delay_s, fail_on
        self.batches: list[int] = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def __call__(self, key, xq):
        with self._lock:
            self.batches.append(xq.shape[0])
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay_s)
            if self.fail_on is not None and self.fail_on in xq[:, 0]:
                raise ValueError("a query of this batch is poisoned")
            scores, labels = self.index.search(xq, key[1])
            return scores, labels, labels.astype(str).astype(object), {"key": key}  # ids aligned with the labels
        finally:
            with self._lock:
                self.running -= 1


def submit_concurrently(batcher, queries, key_of, timeout_s=30):
    results, errors = [None] * len(queries), [None] * len(queries)
    start = threading.Barrier(len(queries))

    def caller(i):
        start.wait()
        try:
            results[i] = batcher.submit(key_of(i), queries[i]).result(timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[i] = e

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_concurrent_callers_share_dispatches_and_get_their_own_rows(index):
    search = SlowSearch(index)
    batcher = QueryBatcher(search, max_batch_size=64)
    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((int(rng.integers(1, 4)), D)).astype(np.float32) for _ in range(40)]
    results, errors = submit_concurrently(batcher, queries, lambda i: ("c", 5))
    batcher.close()
    assert errors == [None] * 40
    for xq, (scores, labels, ids, shared) in zip(queries, results):
        expected_scores, expected_labels = index.search(xq, 5)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
        assert ids.tolist() == expected_labels.astype(str).tolist()  # the caller's rows of every aligned array
        assert shared == {"key": ("c", 5)}
    assert sum(search.batches) == sum(q.shape[0] for q in queries)
    assert len(search.batches) < 40  # callers that arrived during a dispatch went out together
    assert max(search.batches) < 64 + 3  # stops taking requests at 64 queries; a request has up to 3
    assert search.most_running == 1


def test_different_keys_are_searched_apart(index):
    search = SlowSearch(index)
    batcher = QueryBatcher(search)
    queries = [np.eye(D, dtype=np.float32)[i % D][None] for i in range(12)]
    results, errors = submit_concurrently(batcher, queries, lambda i: ("c", 1 + i % 3))
    batcher.close()
    assert errors == [None] * 12
    for i, (scores, labels, ids, shared) in enumerate(results):
        assert labels.shape == (1, 1 + i % 3) and shared == {"key": ("c", 1 + i % 3)}


def test_a_failed_batch_fails_its_callers_only(index):
    search = SlowSearch(index, fail_on=99.0)
    batcher = QueryBatcher(search, max_batch_size=1)  # one query per dispatch: only the poisoned one fails
    queries = [np.full((1, D), 99.0 if i == 3 else 0.1 * i, dtype=np.float32) for i in range(8)]
    results, errors = submit_concurrently(batcher, queries, lambda i: ("c", 2))
    batcher.close()
    assert isinstance(errors[3], ValueError) and results[3] is None
    assert all(errors[i] is None and results[i][1].shape == (1, 2) for i in range(8) if i != 3)


def test_no_caller_is_stranded_under_contention(index):
    """Many short searches from many threads: every future completes (no lost wake-up between slot and queue)."""
    search = SlowSearch(index, delay_s=0.0005)
    batcher = QueryBatcher(search, max_batch_size=8, max_in_flight=2)
    rng = np.random.default_rng(2)
    queries = [rng.standard_normal((1, D)).astype(np.float32) for _ in range(400)]
    results, errors = submit_concurrently(batcher, queries, lambda i: ("c", 3), timeout_s=20)
    batcher.close()
    assert errors == [None] * 400
    assert all(r[1][0].tolist() == index.search(q, 3)[1][0].tolist() for q, r in zip(queries, results))
    assert search.most_running <= 2


def test_arrays_submitted_with_the_queries_are_batched_row_by_row(index):
    """The gateway sends each query's IVF lists with it: a dispatch gets them concatenated in the queries'
    order, so row i of every array belongs to query i."""
    seen = []

    def search(key, xq, tags):
        seen.append(xq.shape[0])
        assert tags.shape == (xq.shape[0],)
        np.testing.assert_array_equal(tags, xq[:, 0].astype(np.int64))  # each tag rode with its own query
        time.sleep(0.01)
        return xq[:, :1], tags[:, None], None

    batcher = QueryBatcher(search, max_batch_size=64)
    rng = np.random.default_rng(3)
    queries = []
    for i in range(30):
        xq = rng.standard_normal((int(rng.integers(1, 4)), D)).astype(np.float32)
        xq[:, 0] = 1000 * i + np.arange(xq.shape[0])
        queries.append(xq)
    results = [None] * 30
    start = threading.Barrier(30)

    def caller(i):
        start.wait()
        results[i] = batcher.submit(("c", 1), queries[i], queries[i][:, 0].astype(np.int64)).result(timeout=30)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert len(seen) < 30 and sum(seen) == sum(q.shape[0] for q in queries)
    for i, (xq, (_, labels, _)) in enumerate(zip(queries, results)):
        assert labels[:, 0].tolist() == (1000 * i + np.arange(xq.shape[0])).tolist()


def test_the_next_batch_is_searched_while_the_last_is_finished():
    """finish_fn runs after the dispatch slot is given back: a batch queued behind goes to the shards while
    the one before it is decoded and merged, and each caller still gets its own batch's answer."""
    events, lock = [], threading.Lock()

    def search(key, xq):
        with lock:
            events.append(("search", int(xq[0, 0])))
        if xq[0, 0] == 0:
            time.sleep(0.1)  # the second caller queues meanwhile
        return xq

    def finish(key, xq):
        if xq[0, 0] == 0:
            time.sleep(0.3)
        with lock:
            events.append(("finished", int(xq[0, 0])))
        return xq[:, :1], xq[:, :1].astype(np.int64), None

    batcher = QueryBatcher(search, finish_fn=finish)
    results = [None, None]

    def caller(i):
        results[i] = batcher.submit("c", np.full((1, D), i, dtype=np.float32)).result(timeout=30)

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    time.sleep(0.03)
    caller(1)
    first.join()
    batcher.close()
    assert events.index(("search", 1)) < events.index(("finished", 0))
    assert [int(r[1][0, 0]) for r in results] == [0, 1]

"""Where a gateway's shard workers run: the interface the gateway calls, and the in-process backend.

The gateway never calls Ray itself. It asks a `ShardBackend` to call a method on some workers, to fan
one search out to all of them, or to train an index. `RayShards` (ray_shards.py) runs the workers as Ray
actors, restarted on crash and reached over direct channels; `LocalShards` runs the same `ShardWorker`
class in this process, as qdrant-client's local mode implements its server's interface. Both give the
same answers (tests/test_congruence.py), so the gateway's own logic is tested without a cluster.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable

import numpy as np

from cluster.errors import Unavailable
from cluster.index.training import train_ivfpq
from cluster.shards.worker import ShardWorker


class ShardBackend(abc.ABC):
    """The shard workers of one gateway, numbered 0..num_workers-1; partition p lives on worker p % num_workers.

    A backend may run several copies (replicas) of each worker (cluster/shards/replicas.py); the gateway still
    speaks of worker w, and the backend routes each call to the right copies.
    """

    num_workers: int
    num_replicas: int = 1  # most copies of each worker a collection can keep

    @abc.abstractmethod
    def call(self, method: str, calls: Iterable[tuple[int, tuple]], *, maintenance: bool = False,
             timeout_s: float | None = None) -> list:
        """Calls `ShardWorker.<method>(*args)` for each (worker, args) and returns the results in that order.

        Args:
            maintenance: a long call (build, compact, sample) that must not hold up a worker's writes.
            timeout_s: bound on all the calls together; None for the backend's default
                (`MAINTENANCE_CALL_TIMEOUT_S` for a maintenance call).

        Raises:
            Unavailable: a worker is down or restarting. DeadlineExceeded: past timeout_s.
            Whatever the worker's method raised, otherwise.
        """

    def call_all(self, method: str, *args, maintenance: bool = False, timeout_s: float | None = None) -> list:
        """`call` with the same arguments on every worker."""
        return self.call(method, [(w, args) for w in range(self.num_workers)], maintenance=maintenance,
                         timeout_s=timeout_s)

    @abc.abstractmethod
    def search(self, request: bytes, timeout_s: float, *, skip_unavailable: bool = False,
               collection_id: str | None = None) -> list[bytes | None]:
        """Every worker's `search(request)`, in worker order (pickled `SearchRequest` in, `SearchReply` out).

        Args:
            skip_unavailable: leave out the workers `unavailable_workers` names, with None in their place.
            collection_id: the collection searched, so that a replicated backend asks the copies holding it
                (and, when one fails, another within timeout_s).

        Raises:
            Unavailable: a worker searched is down or fails on the way (never answered with fewer replies);
                with skip_unavailable, also when every worker is unavailable. DeadlineExceeded: past timeout_s.
        """

    @abc.abstractmethod
    def train(self, xt: np.ndarray, nlist: int, pq_m: int, pq_bits: int) -> bytes:
        """A trained, empty IVF-PQ index (`cluster.index.training.train_ivfpq`), trained where the backend runs."""

    def unavailable_workers(self, collection_id: str | None = None) -> list[int]:
        """Workers that cannot answer now (down, restarting, being created anew) in any copy holding the
        collection (or, without one, some collection); [] when all can."""
        return []

    def live_replicas(self, collection_id: str) -> int:
        """The fewest copies of any one worker that hold the collection and can answer now."""
        return 0 if self.unavailable_workers(collection_id) else 1

    def close(self) -> None:
        """Lets go of the workers' channels; the workers themselves keep running (see `stop`)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ends the workers for good; their data stays in the store."""


class LocalShards(ShardBackend):
    """`ShardWorker`s in this process: the embedded backend for tests and tools. No restart on crash.

    Ray runs an actor's calls of one concurrency group one at a time, beside the other group's; a lock per
    worker and group keeps that order here. Searches take no such lock, as they come in on the workers'
    channels under Ray.

    Args:
        num_workers: workers, each holding partitions p with p % num_workers == its id.
        store_uri: object store root (a folder or s3://bucket/prefix).
        s3_endpoint: S3 endpoint override.
        omp_threads: FAISS threads per search or build; 0 keeps OpenMP's default.

    Example:
        >>> shards = LocalShards(2, "/tmp/gallery")
        >>> gallery = Gallery(ObjectStore("/tmp/gallery"), shards)
    """

    def __init__(self, num_workers: int, store_uri: str, *, s3_endpoint: str | None = None, omp_threads: int = 0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.workers = [ShardWorker(i, num_workers, store_uri, s3_endpoint=s3_endpoint, omp_threads=omp_threads)
                        for i in range(num_workers)]
        self._locks = [{False: threading.Lock(), True: threading.Lock()} for _ in range(num_workers)]
        self._down: set[int] = set()

    def call(self, method: str, calls: Iterable[tuple[int, tuple]], *, maintenance: bool = False,
             timeout_s: float | None = None) -> list:
        calls = list(calls)
        self._refuse_down(w for w, _ in calls)
        results = []
        for w, args in calls:
            with self._locks[w][maintenance]:
                results.append(getattr(self.workers[w], method)(*args))
        return results

    def search(self, request: bytes, timeout_s: float, *, skip_unavailable: bool = False,
               collection_id: str | None = None) -> list[bytes | None]:
        skipped = set(self._down) if skip_unavailable else set()
        if skipped and len(skipped) == self.num_workers:
            raise Unavailable(f"every shard worker is unavailable: {sorted(skipped)}")
        self._refuse_down(w for w in range(self.num_workers) if w not in skipped)
        return [None if w in skipped else worker.search(request) for w, worker in enumerate(self.workers)]

    def unavailable_workers(self, collection_id: str | None = None) -> list[int]:
        """Workers taken down with `take_down`."""
        return sorted(self._down)

    def take_down(self, worker_id: int, down: bool = True) -> None:
        """Makes a worker unavailable, as a lost Ray worker is (or available again); its data stays in memory.

        Calls that need it fail with Unavailable meanwhile: the embedded stand-in for a lost worker.
        """
        if not 0 <= worker_id < self.num_workers:
            raise ValueError(f"worker_id must be in [0, {self.num_workers}), got {worker_id}")
        (self._down.add if down else self._down.discard)(worker_id)

    def _refuse_down(self, workers: Iterable[int]) -> None:
        down = sorted(self._down.intersection(workers)) if self._down else []
        if down:
            raise Unavailable(f"shard worker(s) {down} are down")

    def train(self, xt: np.ndarray, nlist: int, pq_m: int, pq_bits: int) -> bytes:
        return train_ivfpq(xt, nlist, pq_m, pq_bits)

    def stop(self) -> None:
        for worker in self.workers:
            for collection_id in list(worker.ready()):
                worker.drop_collection(collection_id)

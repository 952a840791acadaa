"""Shard workers as Ray actors: started (or found) by name, restarted on crash, searched over direct channels.

This module and `cluster/serve/runtime.py` are the only places that decide where things run. A worker
that crashes is restarted by Ray and reloads its partitions from the committed manifests. Ray gives up
on an actor whose restarts keep failing (its node is gone, its memory was taken): a supervisor thread
then creates the worker anew, with backoff and without end, and it too reloads from the store. While a
worker is down, calls that need it fail at once with Unavailable, and `unavailable_workers` names it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import faiss
import numpy as np
import ray

from cluster.api.limits import CALL_TIMEOUT_S
from cluster.errors import DeadlineExceeded, Unavailable
from cluster.index.training import train_ivfpq, usable_cpus
from cluster.shards.backend import ShardBackend
from cluster.shards.fanout import SearchFanOut
from cluster.shards.protocol import MAINTENANCE
from cluster.shards.worker import ShardWorker

logger = logging.getLogger(__name__)

NAMESPACE = "gallery"
PROBE_INTERVAL_S = 1.0  # how often the supervisor asks each worker whether it is alive
PROBE_TIMEOUT_S = 5.0  # a worker silent for this long counts as unavailable (restarting, or stuck)
MAX_BACKOFF_S = 30.0  # longest wait between two attempts to create a dead worker anew
# What Ray raises once it has given up on an actor: it will not come back by itself.
_GONE = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnschedulableError)


class RayShards(ShardBackend):
    """The gateway's `ShardBackend` over ShardWorker actors.

    Args:
        workers: ShardWorker actor handles, in worker-id order (see `start`).
        call_timeout_s: default bound on one round of calls.
        make_worker: creates worker i anew (the same name, options and arguments); with it, a supervisor
            thread replaces workers Ray gave up on. `start` passes it.

    Example:
        >>> shards = RayShards.start(2, "s3://bucket/gallery")
        >>> gallery = Gallery(ObjectStore("s3://bucket/gallery"), shards)
    """

    def __init__(self, workers: Sequence, *, call_timeout_s: float = CALL_TIMEOUT_S,
                 make_worker: Callable[[int], object] | None = None):
        if not workers:
            raise ValueError("RayShards needs at least one worker")
        self.workers = list(workers)
        self.num_workers = len(self.workers)
        self.call_timeout_s = call_timeout_s
        self.fan_out = SearchFanOut(self.workers, timeout_s=call_timeout_s)
        self.replacements = 0  # workers created anew after Ray gave up on them
        self._make_worker = make_worker
        self._down: set[int] = set()
        self._gone: set[int] = set()
        self._stop = threading.Event()
        self._supervisor = None
        if make_worker is not None:
            self._supervisor = threading.Thread(target=self._supervise, name="shard-supervisor", daemon=True)
            self._supervisor.start()

    @classmethod
    def start(cls, num_workers: int, store_uri: str, *, s3_endpoint: str | None = None, num_cpus: float = 1,
              num_gpus: float = 0, omp_threads: int = 1, cluster_name: str = "gallery",
              env_vars: dict[str, str] | None = None, call_timeout_s: float = CALL_TIMEOUT_S) -> RayShards:
        """Starts (or, in a long-lived cluster, finds) the named shard actors and waits until they are ready.

        Actors are named "{cluster_name}-shard-{i}-of-{num_workers}", so a restarted gateway finds the
        workers it left. `env_vars` reach the workers on every node (e.g. AWS credentials for an S3
        store). Workers given GPUs (`num_gpus` > 0) search trained partitions on them.
        """
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        actor = ray.remote(concurrency_groups={MAINTENANCE: 1})(ShardWorker)

        def make_worker(i: int):
            return (actor.options(name=f"{cluster_name}-shard-{i}-of-{num_workers}", namespace=NAMESPACE,
                                  get_if_exists=True, max_restarts=-1, max_task_retries=0,
                                  num_cpus=num_cpus, num_gpus=num_gpus,
                                  runtime_env={"env_vars": env_vars} if env_vars else None)
                    .remote(i, num_workers, store_uri, s3_endpoint=s3_endpoint, omp_threads=omp_threads,
                            use_gpu=num_gpus > 0))

        workers = [make_worker(i) for i in range(num_workers)]
        ray.get([w.ready.remote() for w in workers])
        return cls(workers, call_timeout_s=call_timeout_s, make_worker=make_worker)

    def unavailable_workers(self) -> list[int]:
        """Workers that did not answer the supervisor's last probe, or that Ray gave up on."""
        return sorted(self._down | self._gone)

    def _refuse_gone(self, workers: Iterable[int]) -> None:
        """Calls on a worker Ray gave up on would fail anyway: say so at once, and why."""
        gone = sorted(self._gone.intersection(workers))
        if gone:
            raise Unavailable(f"shard worker(s) {gone} are being created anew after Ray gave up on them; retry "
                              "shortly")

    def call(self, method: str, calls: Iterable[tuple[int, tuple]], *, maintenance: bool = False,
             timeout_s: float | None = None) -> list:
        calls = list(calls)
        self._refuse_gone(w for w, _ in calls)
        refs = []
        for w, args in calls:
            bound = getattr(self.workers[w], method)
            refs.append((bound.options(concurrency_group=MAINTENANCE) if maintenance else bound).remote(*args))
        with _ray_errors():
            return ray.get(refs, timeout=timeout_s or self.call_timeout_s)

    def search(self, request: bytes, timeout_s: float, *, skip_unavailable: bool = False) -> list[bytes | None]:
        if skip_unavailable:
            skipped = self.unavailable_workers()
            if skipped:
                return self._search_some(request, timeout_s, skipped)
        self._refuse_gone(range(self.num_workers))
        with _ray_errors():
            return self.fan_out(request, timeout_s)

    def _search_some(self, request: bytes, timeout_s: float, skipped: list[int]) -> list[bytes | None]:
        """The workers not skipped, as actor calls: the channels reopen only once every worker answers again.

        A worker searched that fails meanwhile fails the whole search: the caller is told which partitions
        are missing only of the workers skipped here.
        """
        searched = [w for w in range(self.num_workers) if w not in skipped]
        if not searched:
            raise Unavailable(f"every shard worker is unavailable: {skipped}")
        self._refuse_gone(searched)
        with _ray_errors():
            replies = iter(ray.get([self.workers[w].search.remote(request) for w in searched], timeout=timeout_s))
        return [None if w in skipped else next(replies) for w in range(self.num_workers)]

    def train(self, xt: np.ndarray, nlist: int, pq_m: int) -> bytes:
        with _ray_errors():
            return ray.get(_train.remote(xt, nlist, pq_m))

    def close(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join()
        self.fan_out.close()

    def stop(self) -> None:
        self.close()
        for worker in self.workers:
            ray.kill(worker, no_restart=True)

    def _supervise(self) -> None:
        """Probes every worker; creates anew those Ray gave up on, with exponential backoff, until closed."""
        next_attempt: dict[int, float] = {}
        backoff: dict[int, float] = {}
        while not self._stop.wait(PROBE_INTERVAL_S):
            probes = [(w, worker.ready.remote()) for w, worker in enumerate(self.workers) if w not in self._gone]
            for w, ref in probes:
                try:
                    ray.get(ref, timeout=PROBE_TIMEOUT_S)
                    self._down.discard(w)
                except _GONE:
                    logger.warning("Ray gave up on shard worker %d; creating it anew", w)
                    self._gone.add(w)
                except Exception:  # restarting (Ray queues the call) or too slow to answer
                    self._down.add(w)
            for w in sorted(self._gone):
                if time.monotonic() >= next_attempt.get(w, 0.0):
                    if self._replace(w):
                        backoff.pop(w, None)
                    else:
                        backoff[w] = min(MAX_BACKOFF_S, 2 * backoff.get(w, PROBE_INTERVAL_S / 2))
                        next_attempt[w] = time.monotonic() + backoff[w]

    def _replace(self, w: int) -> bool:
        """Creates worker w anew; it loads its partitions from the store. False when that failed (retried later)."""
        try:
            worker = self._make_worker(w)
            ray.get(worker.ready.remote(), timeout=self.call_timeout_s)
        except Exception:
            logger.warning("shard worker %d could not be created anew; retrying with backoff", w, exc_info=True)
            return False
        self.workers[w] = worker
        self.fan_out.replace_worker(w, worker)
        self.replacements += 1  # before the worker counts as available: whoever sees it back sees it counted
        self._gone.discard(w)
        self._down.discard(w)
        logger.info("shard worker %d is back (created anew)", w)
        return True


@ray.remote(num_cpus=1, max_calls=1)
def _train(xt: np.ndarray, nlist: int, pq_m: int) -> bytes:
    """Trains on every CPU of its node at low priority: the node's searches still come first.

    Ray reserves one CPU for the task, so that it is placed, and would hold FAISS to one thread;
    the worker process exits after the task (max_calls=1), and its niceness and threads with it.
    """
    os.nice(10)
    faiss.omp_set_num_threads(usable_cpus())
    return train_ivfpq(xt, nlist, pq_m)


@contextlib.contextmanager
def _ray_errors():
    """Ray's failures as errors a caller can act on."""
    try:
        yield
    except ray.exceptions.GetTimeoutError as e:
        raise DeadlineExceeded("shards did not answer in time") from e
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        raise Unavailable(f"a shard is unavailable (restarting?): {e}") from e

"""Shard workers as Ray actors: started (or found) by name, restarted on crash, searched over direct channels.

This module and `cluster/serve/runtime.py` are the only places that decide where things run. A worker
that crashes is restarted by Ray and reloads its partitions from the committed manifests.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence

import faiss
import numpy as np
import ray

from cluster.errors import DeadlineExceeded, Unavailable
from cluster.index.training import train_ivfpq, usable_cpus
from cluster.shards.backend import ShardBackend
from cluster.shards.fanout import SearchFanOut
from cluster.shards.protocol import MAINTENANCE
from cluster.shards.worker import ShardWorker

logger = logging.getLogger(__name__)

NAMESPACE = "gallery"
CALL_TIMEOUT_S = 120.0


class RayShards(ShardBackend):
    """The gateway's `ShardBackend` over ShardWorker actors.

    Args:
        workers: ShardWorker actor handles, in worker-id order (see `start`).
        call_timeout_s: default bound on one round of calls.

    Example:
        >>> shards = RayShards.start(2, "s3://bucket/gallery")
        >>> gallery = Gallery(ObjectStore("s3://bucket/gallery"), shards)
    """

    def __init__(self, workers: Sequence, *, call_timeout_s: float = CALL_TIMEOUT_S):
        if not workers:
            raise ValueError("RayShards needs at least one worker")
        self.workers = list(workers)
        self.num_workers = len(self.workers)
        self.call_timeout_s = call_timeout_s
        self.fan_out = SearchFanOut(self.workers, timeout_s=call_timeout_s)

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
        workers = [actor.options(name=f"{cluster_name}-shard-{i}-of-{num_workers}", namespace=NAMESPACE,
                                 get_if_exists=True, max_restarts=-1, max_task_retries=0,
                                 num_cpus=num_cpus, num_gpus=num_gpus,
                                 runtime_env={"env_vars": env_vars} if env_vars else None)
                   .remote(i, num_workers, store_uri, s3_endpoint=s3_endpoint, omp_threads=omp_threads,
                           use_gpu=num_gpus > 0)
                   for i in range(num_workers)]
        ray.get([w.ready.remote() for w in workers])
        return cls(workers, call_timeout_s=call_timeout_s)

    def call(self, method: str, calls: Iterable[tuple[int, tuple]], *, maintenance: bool = False,
             timeout_s: float | None = None) -> list:
        refs = []
        for w, args in calls:
            bound = getattr(self.workers[w], method)
            refs.append((bound.options(concurrency_group=MAINTENANCE) if maintenance else bound).remote(*args))
        with _ray_errors():
            return ray.get(refs, timeout=timeout_s or self.call_timeout_s)

    def search(self, request: bytes, timeout_s: float) -> list[bytes]:
        with _ray_errors():
            return self.fan_out(request, timeout_s)

    def train(self, xt: np.ndarray, nlist: int, pq_m: int) -> bytes:
        with _ray_errors():
            return ray.get(_train.remote(xt, nlist, pq_m))

    def close(self) -> None:
        self.fan_out.close()

    def stop(self) -> None:
        self.close()
        for worker in self.workers:
            ray.kill(worker, no_restart=True)


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

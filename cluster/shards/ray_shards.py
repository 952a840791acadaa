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
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.api.limits import CALL_TIMEOUT_S, MAINTENANCE_CALL_TIMEOUT_S
from cluster.errors import DeadlineExceeded, Unavailable
from cluster.index.training import train_ivfpq, usable_cpus
from cluster.shards.backend import ShardBackend
from cluster.shards.fanout import SearchFanOut
from cluster.shards.protocol import HEALTH, MAINTENANCE
from cluster.shards.replicas import READS, ReplicaSet, Route, collection_of, route_of
from cluster.shards.worker import ShardWorker
from cluster.storage.manifest import CollectionManifest

logger = logging.getLogger(__name__)

NAMESPACE = "gallery"
PROBE_INTERVAL_S = 1.0  # how often the supervisor asks each worker whether it is alive
PROBE_TIMEOUT_S = 5.0  # a worker silent for this long counts as unavailable (restarting, or stuck)
MAX_BACKOFF_S = 30.0  # longest wait between two attempts to create a dead worker anew
# What Ray raises once it has given up on an actor: it will not come back by itself.
_GONE = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnschedulableError)


class RayShards(ShardBackend):
    """The gateway's `ShardBackend` over ShardWorker actors, in one or more replicas.

    Args:
        replicas: ShardWorker actor handles, replicas[r][w] for replica r of worker w (see `start`); every
            replica has the same number of workers.
        call_timeout_s: default bound on one round of calls.
        make_worker: creates worker w of replica r anew (the same name, options and arguments); with it, a
            supervisor thread replaces workers Ray gave up on and catches up replicas that missed commits.

    Example:
        >>> shards = RayShards.start(2, "s3://bucket/gallery", replicas=2)
        >>> gallery = Gallery(ObjectStore("s3://bucket/gallery"), shards)
    """

    def __init__(self, replicas: Sequence[Sequence], *, call_timeout_s: float = CALL_TIMEOUT_S,
                 make_worker: Callable[[int, int], object] | None = None, placement_groups: Sequence = ()):
        if not replicas or not replicas[0] or len({len(workers) for workers in replicas}) != 1:
            raise ValueError("RayShards needs at least one worker, and as many in every replica")
        self.replicas = [list(workers) for workers in replicas]
        self.num_workers = len(self.replicas[0])
        self.num_replicas = len(self.replicas)
        self.call_timeout_s = call_timeout_s
        self.placement = ReplicaSet(self.num_workers, self.num_replicas)
        self.fan_outs = [SearchFanOut(workers, timeout_s=call_timeout_s, fail_fast=self.num_replicas > 1)
                         for workers in self.replicas]
        self.replacements = 0  # workers created anew after Ray gave up on them
        self._make_worker = make_worker
        self._placement_groups = list(placement_groups)  # the copies' bundles (replicas > 1), released by `stop`
        self._gone: set[tuple[int, int]] = set()
        self._catching_up: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._supervisor = None
        if make_worker is not None:
            self._supervisor = threading.Thread(target=self._supervise, name="shard-supervisor", daemon=True)
            self._supervisor.start()

    @property
    def workers(self) -> list:
        """The workers of replica 0."""
        return self.replicas[0]

    @property
    def fan_out(self) -> SearchFanOut:
        """The channels to replica 0."""
        return self.fan_outs[0]

    @classmethod
    def start(cls, num_workers: int, store_uri: str, *, replicas: int = 1, s3_endpoint: str | None = None,
              num_cpus: float = 1, num_gpus: float = 0, omp_threads: int = 1, cluster_name: str = "gallery",
              env_vars: dict[str, str] | None = None, call_timeout_s: float = CALL_TIMEOUT_S,
              placement_strategy: str = "SPREAD", local_dir: str | None = None) -> RayShards:
        """Starts (or, in a long-lived cluster, finds) the named shard actors and waits until they are ready.

        Actors are named "{cluster_name}-shard-{w}-of-{num_workers}" (replica 0) and "...-replica-{r}",
        so a restarted gateway finds the workers it left. With replicas > 1, the copies of each worker are
        the bundles of one placement group, spread over Ray's nodes by `placement_strategy` ("SPREAD":
        on different nodes where there are enough; "STRICT_SPREAD": only so). `env_vars` reach the
        workers on every node (e.g. AWS credentials for an S3 store). Workers given GPUs (`num_gpus` > 0)
        search trained partitions on them. `local_dir`: a folder on each node's local disk that workers
        memory-map their fp16 vectors from (`ShardWorker`); None keeps them in memory.
        """
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        actor = ray.remote(concurrency_groups={MAINTENANCE: 1, HEALTH: 1})(ShardWorker)
        groups = [_placement_group(f"{cluster_name}-shard-{w}-of-{num_workers}", replicas, num_cpus, num_gpus,
                                   placement_strategy) for w in range(num_workers)] if replicas > 1 else None

        def make_worker(r: int, w: int):
            name = f"{cluster_name}-shard-{w}-of-{num_workers}" + (f"-replica-{r}" if r else "")
            placement = {}
            if groups is not None:
                placement["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    groups[w], placement_group_bundle_index=r)
            return (actor.options(name=name, namespace=NAMESPACE, get_if_exists=True, max_restarts=-1,
                                  max_task_retries=0, num_cpus=num_cpus, num_gpus=num_gpus,
                                  runtime_env={"env_vars": env_vars} if env_vars else None, **placement)
                    .remote(w, num_workers, store_uri, s3_endpoint=s3_endpoint, omp_threads=omp_threads,
                            use_gpu=num_gpus > 0, replica=r,
                            local_dir=os.path.join(local_dir, name) if local_dir else None))

        workers = [[make_worker(r, w) for w in range(num_workers)] for r in range(replicas)]
        ray.get([w.ready.remote() for replica in workers for w in replica])
        return cls(workers, call_timeout_s=call_timeout_s, make_worker=make_worker, placement_groups=groups or ())

    def unavailable_workers(self, collection_id: str | None = None) -> list[int]:
        """Workers none of whose copies can answer (for the collection, or for some collection)."""
        return self.placement.unavailable_workers(collection_id)

    def live_replicas(self, collection_id: str) -> int:
        return min(len(self.placement.candidates(w, collection_id)) for w in range(self.num_workers))

    def call(self, method: str, calls: Iterable[tuple[int, tuple]], *, maintenance: bool = False,
             timeout_s: float | None = None) -> list:
        calls = list(calls)
        timeout_s = timeout_s or (MAINTENANCE_CALL_TIMEOUT_S if maintenance else self.call_timeout_s)
        if method == "open_collection":
            for _, (manifest_json,) in calls:
                m = CollectionManifest.from_json(manifest_json)
                self.placement.keep(m.collection_id, m.replicas)
        route = route_of(method)
        primaries = [(self.placement.primary(w, collection_of(method, args)), w, args) for w, args in calls]
        refs = [self._remote(r, w, method, args, maintenance) for r, w, args in primaries]
        followers = []
        if route is not Route.PRIMARY and self.num_replicas > 1:
            follow_method = method if route is Route.EVERY else "catch_up"
            for r0, w, args in primaries:
                for r in range(self.num_replicas):
                    if r == r0:
                        continue
                    if not self.placement.available(r, w):
                        self.placement.mark_stale(r, w)  # it missed this call: level it when it is back
                        continue
                    follow_args = args if route is Route.EVERY else (args[0],)
                    followers.append(((r, w), self._remote(r, w, follow_method, follow_args, False)))
        deadline = time.monotonic() + timeout_s
        try:
            results, lost = self._results(primaries, refs, deadline)
            # A read another copy can answer is asked of it, within the same time: a lost copy fails no read.
            while lost and method in READS and time.monotonic() < deadline:
                retry = [(self.placement.primary(w, collection_of(method, args)), w, args)
                         for i, (_, w, args) in enumerate(primaries) if i in lost]
                again, lost_again = self._results(
                    retry, [self._remote(r, w, method, args, maintenance) for r, w, args in retry], deadline)
                for i, result in zip(sorted(lost), again):
                    results[i] = result
                lost = {sorted(lost)[j] for j in lost_again}
            if lost:
                raise Unavailable(f"shard worker(s) {sorted(primaries[i][1] for i in lost)} are unavailable "
                                  "(restarting, or their node is lost); retry shortly")
        finally:
            self._wait_followers(followers, timeout_s)
        return results

    def _results(self, copies: list[tuple[int, int, tuple]], refs: list, deadline: float) -> tuple[list, set[int]]:
        """The calls' results in order (None where lost), and the indexes of the calls whose copy was lost: marked
        down and stale (a lost call may have carried a commit), for the supervisor to level before it serves."""
        if not refs:
            return [], set()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
        if len(ready) < len(refs):
            raise DeadlineExceeded("shards did not answer in time")
        results, lost = [], set()
        for i, ((r, w, _), ref) in enumerate(zip(copies, refs)):
            try:
                with _ray_errors():
                    results.append(ray.get(ref))
            except Unavailable:
                results.append(None)
                lost.add(i)
                self.placement.down.add((r, w))
                self.placement.mark_stale(r, w)
        return results, lost

    def _remote(self, r: int, w: int, method: str, args: tuple, maintenance: bool):
        self._refuse_gone([(r, w)])
        bound = getattr(self.replicas[r][w], method)
        return (bound.options(concurrency_group=MAINTENANCE) if maintenance else bound).remote(*args)

    def _wait_followers(self, followers: list, timeout_s: float) -> None:
        """Waits for the other copies; one that fails or is late is stale until it catches up."""
        if not followers:
            return
        ready, _ = ray.wait([ref for _, ref in followers], num_returns=len(followers), timeout=timeout_s)
        ready = set(ready)
        for copy, ref in followers:
            try:
                if ref not in ready:
                    raise TimeoutError("late")
                ray.get(ref)
            except Exception as e:
                logger.warning("shard worker %d of replica %d missed a commit (%s); it catches up when it answers",
                               copy[1], copy[0], e)
                self.placement.mark_stale(*copy)

    def _refuse_gone(self, copies: Iterable[tuple[int, int]]) -> None:
        """Calls on a worker Ray gave up on would fail anyway: say so at once, and why."""
        gone = sorted(w for r, w in self._gone.intersection(copies))
        if gone:
            raise Unavailable(f"shard worker(s) {gone} are being created anew after Ray gave up on them; retry "
                              "shortly")

    def search(self, request: bytes, timeout_s: float, *, skip_unavailable: bool = False,
               collection_id: str | None = None) -> list[bytes | None]:
        held = self.placement.kept_in(collection_id)
        deadline = time.monotonic() + timeout_s
        if self.num_replicas == 1:
            if skip_unavailable:
                skipped = self.unavailable_workers()
                if skipped:
                    return self._search_copies(request, timeout_s, collection_id, skip_unavailable=True)
            self._refuse_gone((0, w) for w in range(self.num_workers))
            try:
                with _ray_errors():
                    return self.fan_outs[0](request, timeout_s)
            except Unavailable:
                if not skip_unavailable:
                    raise
                # A worker died, or is restarting, before the supervisor's next probe: what is left is searched.
                return self._search_copies(request, max(deadline - time.monotonic(), 0.001), collection_id,
                                           skip_unavailable=True)
        complete = self.placement.complete_replicas(collection_id)
        for attempt, r in enumerate(complete):
            left = deadline - time.monotonic()
            try:
                with _ray_errors():
                    # leave time for the other replicas, should this one not answer
                    return self.fan_outs[r](request, left / (len(complete) - attempt))
            except (Unavailable, DeadlineExceeded) as e:
                logger.info("replica %d of %d could not answer a search (%s); trying another", r, held, e)
        return self._search_copies(request, max(deadline - time.monotonic(), 0.001), collection_id,
                                   skip_unavailable=skip_unavailable)

    def _search_copies(self, request: bytes, timeout_s: float, collection_id: str | None, *,
                       skip_unavailable: bool) -> list[bytes | None]:
        """Each worker's available copies searched at once as actor calls; the first answer of each counts.

        Used while no replica has all its workers available (or its channels are reopening): one copy
        that fails is covered by another, and a worker with no copy left is skipped (None) or fails it.
        """
        pending: dict = {}
        missing = []
        for w in range(self.num_workers):
            copies = [r for r in self.placement.candidates(w, collection_id) if (r, w) not in self._gone]
            if not copies:
                missing.append(w)
            for r in copies:
                pending[self.replicas[r][w].search.remote(request)] = w
        if missing and not skip_unavailable:
            raise Unavailable(f"shard worker(s) {missing} are unavailable in every replica; retry shortly")
        if len(missing) == self.num_workers:
            raise Unavailable(f"every shard worker is unavailable: {missing}")
        replies: dict[int, bytes | None] = {w: None for w in missing}
        deadline = time.monotonic() + timeout_s
        error: Exception | None = None
        while len(replies) < self.num_workers:
            waiting = [ref for ref, w in pending.items() if w not in replies]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            done, _ = ray.wait(waiting, num_returns=1, timeout=left)
            for ref in done:
                w = pending.pop(ref)
                try:
                    replies.setdefault(w, ray.get(ref))
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    error = e  # another copy may still answer
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None  # the worker's own error (e.g. StaleIndexVersion)
        unanswered = [w for w in range(self.num_workers) if w not in replies]
        if unanswered:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"shard worker(s) {unanswered} did not answer within {timeout_s:.3f} s")
            if not skip_unavailable or all(replies[w] is None for w in replies):
                raise Unavailable(f"no replica of shard worker(s) {unanswered} could answer: {error}")
            # Every copy of these failed: died, or restarting, before the supervisor's next probe says so.
            # The search allowed partial results: they are skipped, as the workers known down are.
            replies.update((w, None) for w in unanswered)
        return [replies[w] for w in range(self.num_workers)]

    def train(self, xt: np.ndarray, nlist: int, pq_m: int, pq_bits: int) -> bytes:
        with _ray_errors():
            return ray.get(_train.remote(xt, nlist, pq_m, pq_bits))

    def close(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for fan_out in self.fan_outs:
            fan_out.close()

    def stop(self) -> None:
        self.close()
        for workers in self.replicas:
            for worker in workers:
                ray.kill(worker, no_restart=True)
        # Kept, their bundles would hold the workers' CPUs for as long as the Ray job lives: a process that
        # stopped replicated shards and started others (tests do) ran out of CPUs, and its new workers never
        # came up.
        for group in self._placement_groups:
            remove_placement_group(group)

    def _supervise(self) -> None:
        """Probes every copy; creates anew those Ray gave up on (exponential backoff, until closed), and brings
        copies that were away level with the store before they serve again."""
        next_attempt: dict[tuple[int, int], float] = {}
        backoff: dict[tuple[int, int], float] = {}
        copies = [(r, w) for r in range(self.num_replicas) for w in range(self.num_workers)]
        while not self._stop.wait(PROBE_INTERVAL_S):
            probes = [(copy, self.replicas[copy[0]][copy[1]].ready.options(concurrency_group=HEALTH).remote())
                      for copy in copies if copy not in self._gone]
            for copy, ref in probes:
                try:
                    ray.get(ref, timeout=PROBE_TIMEOUT_S)
                except _GONE:
                    logger.warning("Ray gave up on shard worker %d of replica %d; creating it anew", copy[1], copy[0])
                    self._gone.add(copy)
                    self.placement.down.add(copy)
                except Exception:  # restarting (Ray queues the call) or too slow to answer
                    self.placement.down.add(copy)
                    self.placement.mark_stale(*copy)
                else:
                    if copy in self.placement.stale:
                        self._catch_up_in_background(copy)
                    else:
                        self.placement.down.discard(copy)
            for copy in sorted(self._gone):
                if time.monotonic() >= next_attempt.get(copy, 0.0):
                    if self._replace(*copy):
                        backoff.pop(copy, None)
                    else:
                        backoff[copy] = min(MAX_BACKOFF_S, 2 * backoff.get(copy, PROBE_INTERVAL_S / 2))
                        next_attempt[copy] = time.monotonic() + backoff[copy]

    def _catch_up_in_background(self, copy: tuple[int, int]) -> None:
        if copy in self._catching_up:
            return
        self._catching_up.add(copy)
        threading.Thread(target=self._catch_up, args=(copy,), name=f"catch-up-{copy}", daemon=True).start()

    def _catch_up(self, copy: tuple[int, int]) -> None:
        r, w = copy
        try:
            # Marked stale again by a commit it misses meanwhile: then it catches up once more.
            self.placement.stale.discard(copy)
            ray.get(self.replicas[r][w].catch_up.remote(), timeout=self.call_timeout_s)
        except Exception:
            self.placement.mark_stale(r, w)
            logger.warning("shard worker %d of replica %d could not catch up; retrying", w, r, exc_info=True)
        else:
            if copy not in self.placement.stale:
                self.placement.down.discard(copy)
                logger.info("shard worker %d of replica %d is level with the store and serves again", w, r)
        finally:
            self._catching_up.discard(copy)

    def _replace(self, r: int, w: int) -> bool:
        """Creates worker w of replica r anew; it loads its partitions from the store. False when that failed."""
        try:
            worker = self._make_worker(r, w)
            ray.get(worker.ready.remote(), timeout=self.call_timeout_s)
        except Exception:
            logger.warning("shard worker %d of replica %d could not be created anew; retrying with backoff", w, r,
                           exc_info=True)
            return False
        self.replicas[r][w] = worker
        self.fan_outs[r].replace_worker(w, worker)
        self.replacements += 1  # before the worker counts as available: whoever sees it back sees it counted
        self.placement.mark_stale(r, w)  # commits made while it was created: the next probe catches it up
        self._gone.discard((r, w))
        logger.info("shard worker %d of replica %d is back (created anew)", w, r)
        return True


def _placement_group(name: str, replicas: int, num_cpus: float, num_gpus: float, strategy: str):
    """One bundle per copy of a worker, spread over nodes; found again by name after a gateway restart."""
    try:
        return ray.util.get_placement_group(name)
    except ValueError:
        pass
    bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
    group = placement_group([bundle] * replicas, strategy=strategy, name=name)
    ray.get(group.ready(), timeout=CALL_TIMEOUT_S)
    return group


@ray.remote(num_cpus=1, max_calls=1)
def _train(xt: np.ndarray, nlist: int, pq_m: int, pq_bits: int) -> bytes:
    """Trains on every CPU of its node at low priority: the node's searches still come first.

    Ray reserves one CPU for the task, so that it is placed, and would hold FAISS to one thread;
    the worker process exits after the task (max_calls=1), and its niceness and threads with it.
    """
    os.nice(10)
    faiss.omp_set_num_threads(usable_cpus())
    return train_ivfpq(xt, nlist, pq_m, pq_bits)


@contextlib.contextmanager
def _ray_errors():
    """Ray's failures as errors a caller can act on."""
    try:
        yield
    except ray.exceptions.GetTimeoutError as e:
        raise DeadlineExceeded("shards did not answer in time") from e
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        raise Unavailable(f"a shard is unavailable (restarting?): {e}") from e

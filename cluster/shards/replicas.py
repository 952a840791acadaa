"""Replicas of the shard workers: which copy of a worker a call goes to, and which copies can answer.

A backend runs `num_replicas` copies of each of its `num_workers` workers; replica r of worker w holds
the partitions p % num_workers == w of the collections kept in more than r replicas. One table, `ROUTES`,
says how each worker method reaches the copies:

- PRIMARY: one copy does it and answers (staging a write, building, reading). The primary of a worker is
  its lowest-numbered copy that is available and holds the collection, so writes keep going to one copy
  while it lives and move to the next when it does not.
- FOLLOW: after a commit, the primary does it and every other copy catches up from the store
  (`ShardWorker.catch_up`): the store, not the gateway, is what replicas copy.
- EVERY: every copy does it (opening and dropping collections, aborting a transaction).

A copy that missed one of these calls (down, slow, or failed) is stale: it serves nothing until it has
caught up from the store (the supervisor of `RayShards` does that when it answers again).
"""

from __future__ import annotations

import enum
import itertools

from cluster.errors import Unavailable


class Route(enum.Enum):
    PRIMARY = "primary"
    FOLLOW = "follow"
    EVERY = "every"


ROUTES = {
    "apply": Route.FOLLOW, "activate": Route.FOLLOW, "compacted": Route.FOLLOW,
    "open_collection": Route.EVERY, "drop_collection": Route.EVERY, "abort": Route.EVERY,
    "retire_previous": Route.EVERY, "catch_up": Route.EVERY,
}  # every other method: Route.PRIMARY


# Calls that change nothing: when the copy asked is lost, another copy answers in its place.
READS = frozenset({"existing", "get_faces", "scan", "sample", "sizes", "memory_bytes", "exact_topk",
                   "ranked_candidates", "ready", "device"})


def route_of(method: str) -> Route:
    return ROUTES.get(method, Route.PRIMARY)


def collection_of(method: str, args: tuple) -> str | None:
    """The collection a worker call is about: its first argument, except for the calls that name none."""
    if method in ("open_collection", "abort", "ready", "pid", "device") or not args:
        return None
    return args[0] if isinstance(args[0], str) else None


class ReplicaSet:
    """Availability of every copy (replica r, worker w), and how many copies each collection keeps.

    Args:
        num_workers: workers per replica.
        num_replicas: copies of each worker; a collection keeps at most this many.
    """

    def __init__(self, num_workers: int, num_replicas: int):
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        self.num_workers = num_workers
        self.num_replicas = num_replicas
        self._kept: dict[str, int] = {}
        self.down: set[tuple[int, int]] = set()  # not answering (crashed, restarting, node lost)
        self.stale: set[tuple[int, int]] = set()  # may have missed commits: catch up before serving
        self._turn = itertools.count()

    def keep(self, collection_id: str, replicas: int) -> None:
        self._kept[collection_id] = replicas

    def kept_in(self, collection_id: str | None) -> int:
        """Copies of the collection's partitions the backend keeps (1 for a collection it does not know)."""
        return min(self._kept.get(collection_id, 1), self.num_replicas) if collection_id else 1

    def available(self, r: int, w: int) -> bool:
        copy = (r, w)
        return copy not in self.down and copy not in self.stale

    def mark_stale(self, r: int, w: int) -> None:
        self.stale.add((r, w))

    def primary(self, w: int, collection_id: str | None) -> int:
        """The copy of worker w that takes calls about the collection.

        Raises:
            Unavailable: no copy holding the collection can answer.
        """
        held = self.kept_in(collection_id)
        for r in range(held):
            if self.available(r, w):
                return r
        raise Unavailable(f"shard worker {w} is unavailable in all {held} of its replicas; retry shortly")

    def complete_replicas(self, collection_id: str | None) -> list[int]:
        """Replicas holding the collection whose every worker is available, taken in turn to share the load."""
        held = self.kept_in(collection_id)
        complete = [r for r in range(held) if all(self.available(r, w) for w in range(self.num_workers))]
        if len(complete) > 1:
            turn = next(self._turn) % len(complete)
            complete = complete[turn:] + complete[:turn]
        return complete

    def candidates(self, w: int, collection_id: str | None) -> list[int]:
        """The available copies of worker w holding the collection."""
        return [r for r in range(self.kept_in(collection_id)) if self.available(r, w)]

    def unavailable_workers(self, collection_id: str | None = None) -> list[int]:
        """Workers none of whose copies holding the collection can answer; without a collection, the workers
        some known collection cannot be searched on."""
        if collection_id is not None:
            return [w for w in range(self.num_workers) if not self.candidates(w, collection_id)]
        kept = set(self._kept.values()) or {1}
        return sorted({w for held in kept for w in range(self.num_workers)
                       if not any(self.available(r, w) for r in range(min(held, self.num_replicas)))})

"""A read gateway follows the store's writer: it polls the committed manifests and brings its shard workers,
then its own view of each collection, level with them.

Any number of read gateways can serve one store beside its writer, each with its own shard workers: this
is how search throughput grows past one gateway process. A reader never writes the store; what it serves
is what the writer committed, `interval_s` (plus the workers' catch-up) late at most. Workers catch up
before the gateway switches a collection to a new index version, and keep the old version until the
gateway has switched (`ShardIndex.keep_serving`), so no search races the switch.
"""

from __future__ import annotations

import logging
import threading

from cluster.gateway.collections import Collections
from cluster.shards.backend import ShardBackend
from cluster.storage import manifest as manifests

logger = logging.getLogger(__name__)


class Follower:
    """Polls the store every `interval_s` and adopts what the writer committed; `close` stops it.

    Args:
        collections: the read gateway's registry (it holds no lease).
        shards: the read gateway's own shard workers.
        interval_s: seconds between two looks at the store.
    """

    def __init__(self, collections: Collections, shards: ShardBackend, *, interval_s: float = 1.0):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.collections = collections
        self.shards = shards
        self.interval_s = interval_s
        self.rounds = 0  # looks at the store that completed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follow-writer", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.follow_once()
            except Exception:  # the store or a worker failed this round: the next round tries again
                logger.warning("following the writer's commits failed; retrying", exc_info=True)

    def follow_once(self) -> int:
        """One look at the store; returns how many collections changed."""
        committed = {m.collection_id: m for m in manifests.load_all(self.collections.store)}
        held = {s.manifest.collection_id: s for s in self.collections.states() if not s.deleted}
        changed = 0
        for collection_id in held.keys() - committed.keys():
            self.collections.forget(collection_id)
            self.shards.call_all("drop_collection", collection_id)
            changed += 1
        for collection_id, m in committed.items():
            state = held.get(collection_id)
            if state is None:
                self.shards.call_all("open_collection", m.to_json())
                self.collections.adopt(m)
            elif state.manifest != m:
                switching = m.index_version != state.manifest.index_version
                self.shards.call_all("catch_up", collection_id)
                self.collections.refresh(state, m)
                if switching:
                    self.shards.call_all("retire_previous", collection_id)
            else:
                continue
            changed += 1
        self.rounds += 1
        return changed

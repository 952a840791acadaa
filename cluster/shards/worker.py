"""ShardWorker: the process that holds partitions and persists them. A plain class; Ray makes it an actor.

Partition p of a collection lives on worker p % num_workers. A worker loads
its partitions from the committed manifests when it starts, so a worker that
Ray restarts after a crash comes back with every committed face.

Writes run one at a time in Ray's default concurrency group; index builds,
compactions and sampling run in the "maintenance" group, so a long build does
not stop searches. Searches come in on the worker's direct channel
(cluster/shards/channel.py) or, while the gateway has none open, as actor calls; each
partition's lock orders them with writes.

Writes are two-phase, driven by the gateway under the collection's write lock:
`stage` checks and writes a segment object, the gateway commits the manifest,
then `apply` makes the segment live (reading it back from the store if the
worker restarted in between). `abort` drops a staged segment.

A collection kept in R replicas lives on the workers of replicas 0..R-1, one per
worker id. The replica that takes a write (the gateway's choice) stages, builds
and compacts as above; the others follow the store: `catch_up` reads the
committed manifests and loads what changed, which is also how a replica that
missed writes while it was away comes back level before it serves.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import tempfile
import time

import faiss
import numpy as np
import ray

from cluster.index import gpu
from cluster.index.merge import merge_topk
from cluster.index.shard_index import ShardIndex
from cluster.index.training import load_index
from cluster.shards.channel import ChannelAddress, ChannelServer
from cluster.shards.protocol import SearchReply, SearchRequest
from cluster.storage import manifest as manifests
from cluster.storage.manifest import CollectionManifest, PartitionManifest, Segment
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import (
    FaceBatch,
    FaceRecord,
    batch_from_parquet,
    batch_to_parquet,
    ids_from_parquet,
    ids_to_parquet,
    read_batches,
    write_tables,
)

logger = logging.getLogger(__name__)

VANISHED_RETRIES = 5  # loads retried from a newer manifest when the writer collected what the older one named


class ShardWorker:
    """Holds the partitions p with p % num_workers == worker_id of every collection.

    Args:
        worker_id: 0 <= worker_id < num_workers.
        num_workers: workers in the cluster.
        store_uri: object store root (a folder or s3://bucket/prefix).
        s3_endpoint: S3 endpoint override.
        omp_threads: FAISS threads per search or build; 0 keeps OpenMP's default (Ray sets
            OMP_NUM_THREADS to the actor's CPUs).
        use_gpu: search trained partitions on this process's first GPU (Ray's CUDA_VISIBLE_DEVICES
            names the one it gave the actor); without a GPU or a GPU build of FAISS, on CPU.
        replica: which copy of its partitions this worker holds: it holds the collections kept in more
            than `replica` replicas (replica 0 holds every collection).
        local_dir: a folder on local disk to memory-map partitions' fp16 vectors from (and to write
            snapshots through); None keeps the vectors in memory (see cluster/index/slot_vectors.py).
    """

    def __init__(self, worker_id: int, num_workers: int, store_uri: str, *, s3_endpoint: str | None = None,
                 omp_threads: int = 0, use_gpu: bool = False, replica: int = 0, local_dir: str | None = None):
        self._omp_threads = omp_threads
        self._use_omp_threads()
        self.gpu_device = 0 if use_gpu and gpu.available() else None
        if use_gpu and self.gpu_device is None:
            logger.warning("worker %d searches on CPU: %s", worker_id,
                           "no GPU visible" if gpu.built_for_gpus() else "FAISS has no GPU support (faiss-cpu)")
        self.worker_id = worker_id
        self.num_workers = num_workers
        self.replica = replica
        self.local_dir = local_dir
        self.store = ObjectStore(store_uri, s3_endpoint=s3_endpoint)
        self._partitions: dict[str, dict[int, ShardIndex]] = {}
        self._applied: dict[tuple[str, int], set[str]] = {}  # segment keys applied since the snapshot
        # What each partition was loaded from (snapshot, index, index version): a follower reloads on a change.
        self._loaded_from: dict[tuple[str, int], tuple] = {}
        self._staged: dict[str, list[tuple[str, int, Segment, object]]] = {}
        self._channel: ChannelServer | None = None
        for manifest in manifests.load_all(self.store):
            self._follow_latest(manifest, reload_changed=False)

    def _use_omp_threads(self) -> None:
        # OpenMP's thread count is per calling thread, and searches and builds run on the search channel's
        # and Ray's threads, which start from the process default, not from the constructor's setting.
        if self._omp_threads:
            faiss.omp_set_num_threads(self._omp_threads)

    def pid(self) -> int:
        """Process id (tests kill it to simulate a crash)."""
        return os.getpid()

    def ready(self) -> dict:
        """Sizes of the partitions held, for health checks."""
        # Copies of the dicts: a probe runs in its own concurrency group, beside calls that change them.
        return {cid: {p: s.size for p, s in list(parts.items())} for cid, parts in list(self._partitions.items())}

    def device(self) -> str:
        """Where this worker searches trained partitions: "cuda:N" or "cpu"."""
        return "cpu" if self.gpu_device is None else f"cuda:{self.gpu_device}"

    def search_channel(self, gateway_node_id: str) -> ChannelAddress:
        """Where this process serves `search` to a gateway on the given Ray node (opened on first call)."""
        if self._channel is None:
            self._channel = ChannelServer(self.search, node_id=ray.get_runtime_context().get_node_id(),
                                          host=ray.util.get_node_ip_address())
        return self._channel.address_for(gateway_node_id)

    def owns(self, partition: int) -> bool:
        return partition % self.num_workers == self.worker_id

    # ---- collections -------------------------------------------------------

    def holds(self, manifest: CollectionManifest) -> bool:
        """Whether this worker keeps a replica of the collection."""
        return manifest.replicas > self.replica

    def open_collection(self, manifest_json: bytes) -> None:
        """Loads the collection's partitions this worker owns, or catches up on committed segments."""
        self._follow_latest(CollectionManifest.from_json(manifest_json), reload_changed=False)

    def catch_up(self, collection_id: str | None = None) -> int:
        """Brings this worker level with the store's committed manifests: of one collection, or of all.

        Partitions whose snapshot or index changed (a build or compaction elsewhere) are loaded anew,
        then every committed segment is applied; collections gone from the store, or kept in fewer
        replicas than this worker's, are dropped. Returns the collections held afterwards.
        """
        if collection_id is None:
            committed = {m.collection_id: m for m in manifests.load_all(self.store)}
            stale = set(self._partitions)
        else:
            try:
                committed = {collection_id: manifests.load(self.store, collection_id)}
            except FileNotFoundError:
                committed = {}
            stale = {collection_id}
        for cid in stale - {cid for cid, m in committed.items() if self.holds(m)}:
            self.drop_collection(cid)
        for m in committed.values():
            self._follow_latest(m, reload_changed=True)
        return len(self._partitions)

    def _follow_latest(self, manifest: CollectionManifest, *, reload_changed: bool) -> None:
        """`_follow`, again from the newest manifest when an object it names vanished meanwhile.

        The writer deletes the objects a commit no longer names (a compaction folds segments into a new
        snapshot) right after committing: a worker loading the manifest before finds them gone, and the
        manifest after names what replaced them.
        """
        for attempt in range(VANISHED_RETRIES + 1):
            try:
                self._follow(manifest, reload_changed=reload_changed or attempt > 0)
                return
            except FileNotFoundError as e:
                if attempt == VANISHED_RETRIES:
                    raise
                logger.info("worker %d: %s changed while loading (%s); loading its newest manifest",
                            self.worker_id, manifest.collection_id, e)
            try:
                manifest = manifests.load(self.store, manifest.collection_id)
            except FileNotFoundError:  # the collection was deleted meanwhile
                self.drop_collection(manifest.collection_id)
                return

    def _follow(self, manifest: CollectionManifest, *, reload_changed: bool) -> None:
        if not self.holds(manifest):
            return
        cid = manifest.collection_id
        trained = None
        for p, part in enumerate(manifest.partitions):
            if not self.owns(p):
                continue
            shard = self._partitions.get(cid, {}).get(p)
            source = (part.snapshot, part.index, manifest.index_version)
            if shard is None or (reload_changed and self._loaded_from.get((cid, p)) != source):
                if manifest.index_version and trained is None and not part.index:
                    trained = load_index(self.store.get(manifest.trained_index))
                fresh = self._load_partition(manifest, p, part, trained)  # the old one serves meanwhile
                if shard is not None:
                    fresh.keep_serving(shard)  # queries assigned with the old version, until retire_previous
                    shard.release_gpu_copies()
                self._partitions.setdefault(cid, {})[p] = fresh
            for segment in part.segments:
                self._apply_segment(cid, p, segment, None)

    def _load_partition(self, manifest: CollectionManifest, p: int, part: PartitionManifest,
                        trained: faiss.Index | None) -> ShardIndex:
        shard = ShardIndex(manifest.dimension, p, manifest.num_partitions, gpu_device=self.gpu_device,
                           vectors_dir=self.local_dir)
        self._applied[(manifest.collection_id, p)] = set()
        self._loaded_from[(manifest.collection_id, p)] = (part.snapshot, part.index, manifest.index_version)
        if part.snapshot:
            with self.store.open_input(part.snapshot) as snapshot:
                for batch in read_batches(snapshot, manifest.dimension):
                    shard.add(batch, index=False)  # indexed below, at once
        if manifest.index_version:
            if part.index:
                index = load_index(self.store.get(part.index))
            else:
                index = shard.build(manifest.index_version, trained)
            shard.set_index(manifest.index_version, index)
        elif part.snapshot:
            shard.rebuild_exact()
        logger.info("worker %d loaded %s/%d: %d faces", self.worker_id, manifest.collection_id, p, shard.size)
        return shard

    def drop_collection(self, collection_id: str) -> None:
        for shard in self._partitions.pop(collection_id, {}).values():
            shard.release_gpu_copies()
        for key in [k for k in self._applied if k[0] == collection_id]:
            del self._applied[key]
            self._loaded_from.pop(key, None)

    def _shard(self, collection_id: str, partition: int) -> ShardIndex:
        return self._partitions[collection_id][partition]

    # ---- two-phase writes --------------------------------------------------

    def existing(self, collection_id: str, face_ids: dict[int, list[str]]) -> list[str]:
        """Which of the given ids (by partition) are enrolled already."""
        return [f for p, ids in face_ids.items() for f in self._shard(collection_id, p).contains(ids)]

    def stage_add(self, collection_id: str, txn: str, batches: dict[int, FaceBatch], keys: dict[int, str]) -> None:
        """Places each batch in its partition's next free slots and writes it as a segment object."""
        for p, batch in batches.items():
            shard = self._shard(collection_id, p)
            batch.positions = np.arange(shard.next_position, shard.next_position + len(batch), dtype=np.int64)
            self.store.put(keys[p], batch_to_parquet(batch))
            self._staged.setdefault(txn, []).append((collection_id, p, Segment(keys[p], "add"), batch))

    def stage_delete(self, collection_id: str, txn: str, face_ids: dict[int, list[str]],
                     keys: dict[int, str]) -> dict[int, list[str]]:
        """Writes a delete segment for the ids present; returns them by partition."""
        found: dict[int, list[str]] = {}
        for p, ids in face_ids.items():
            present = list(dict.fromkeys(self._shard(collection_id, p).contains(ids)))
            if present:
                self.store.put(keys[p], ids_to_parquet(present))
                self._staged.setdefault(txn, []).append((collection_id, p, Segment(keys[p], "delete"), present))
                found[p] = present
        return found

    def apply(self, collection_id: str, txn: str, segments: dict[int, Segment]) -> None:
        """Makes committed segments live; idempotent, and works after a restart lost the staged data."""
        staged = {seg.key: payload for _, _, seg, payload in self._staged.pop(txn, [])}
        for p, segment in segments.items():
            self._apply_segment(collection_id, p, segment, staged.get(segment.key))

    def _apply_segment(self, collection_id: str, p: int, segment: Segment, payload: object) -> None:
        applied = self._applied.setdefault((collection_id, p), set())
        if segment.key in applied:
            return
        shard = self._shard(collection_id, p)
        if segment.op == "add":
            batch = payload if payload is not None else batch_from_parquet(self.store.get(segment.key), shard.d)
            shard.add(batch)
        else:
            shard.delete(payload if payload is not None else ids_from_parquet(self.store.get(segment.key)))
        applied.add(segment.key)

    def abort(self, txn: str) -> None:
        for _, _, segment, _ in self._staged.pop(txn, []):
            self.store.delete(segment.key)

    # ---- search and reads --------------------------------------------------

    def search(self, request: bytes) -> bytes:
        """Searches this worker's partitions of a collection and merges them.

        Request and reply are pickled `SearchRequest` / `SearchReply`: Ray's own
        handling of numpy arguments costs ~1 ms more per call (measured with
        2 workers), which is a third of the budget of a batch-1 query.
        """
        started = time.perf_counter()
        self._use_omp_threads()
        r: SearchRequest = pickle.loads(request)
        partitions = sorted(self._partitions.get(r.collection_id, {}))
        if r.collection_id not in self._partitions:
            raise KeyError(f"worker {self.worker_id} does not hold collection {r.collection_id!r}")
        results = [self._shard(r.collection_id, p).search(r.xq, r.k, version=r.version, Iq=r.Iq, Dq=r.Dq,
                                                          rerank_k=r.rerank_k)
                   for p in partitions]
        nq = r.xq.shape[0]
        if not results:
            D, I = np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        elif len(results) == 1:  # one partition per worker, as collections are created: its top-k as it is
            D, I = results[0]
        else:
            D, I = merge_topk(results, r.k)
        records = np.full(I.shape, None, dtype=object)
        for p in partitions:
            shard = self._shard(r.collection_id, p)
            of_partition = (I >= 0) & (I % shard.num_partitions == p)
            labels, at = np.unique(I[of_partition], return_inverse=True)
            records[of_partition] = _objects(shard.face_ids(labels) if r.ids_only else shard.records(labels))[at]
        gone = (I >= 0) & np.equal(records, None)
        if gone.any():  # deleted between the search and the read of its record (a concurrent delete): not a candidate
            # the gateway's merge sorts these (-1, -inf) behind the live candidates
            D, I = np.where(gone, np.float32(-np.inf), D), np.where(gone, -1, I)
        return pickle.dumps(SearchReply(D, I, records, time.perf_counter() - started),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def exact_topk(self, collection_id: str, xq: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """Exact top-k over every alive face of this worker's partitions (for measuring recall), and the slot
        each partition had filled up to: the faces added later, which `ranked_candidates` leaves out."""
        self._use_omp_threads()
        shards = self._partitions[collection_id]
        below = {p: s.next_position for p, s in shards.items()}
        D, I = merge_topk([s.exact_topk(xq, k, below=below[p]) for p, s in shards.items()], k)
        return D, I, below

    def ranked_candidates(self, collection_id: str, xq: np.ndarray, depth: int, version: int, Iq: np.ndarray,
                          Dq: np.ndarray, below: dict[int, int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per partition, its PQ top-`depth` in PQ order with their re-ranked scores (for measuring recall);
        with `below` (from `exact_topk`), faces added since count as no candidate: writes go on during a
        measurement, and a face added after the truth was taken would otherwise count against recall."""
        self._use_omp_threads()
        return [s.ranked_candidates(xq, depth, version=version, Iq=Iq, Dq=Dq, below=(below or {}).get(p))
                for p, s in sorted(self._partitions[collection_id].items())]

    def get_faces(self, collection_id: str, face_ids: dict[int, list[str]], include_embeddings: bool
                  ) -> list[FaceRecord]:
        return [r for p, ids in face_ids.items()
                for r in self._shard(collection_id, p).get(ids, include_embeddings=include_embeddings)]

    def scan(self, collection_id: str, partition: int, start: int, limit: int, include_embeddings: bool
             ) -> tuple[list[FaceRecord], int]:
        return self._shard(collection_id, partition).scan(start, limit, include_embeddings=include_embeddings)

    def sample(self, collection_id: str, sizes: dict[int, int], seed: int) -> tuple[np.ndarray, list[str]]:
        """Random alive vectors from each partition, with their person ids."""
        rng = np.random.default_rng(seed + self.worker_id)
        parts = [self._shard(collection_id, p).sample(n, rng) for p, n in sizes.items()]
        return np.concatenate([x for x, _ in parts]), [pid for _, pids in parts for pid in pids]

    def sizes(self, collection_id: str) -> dict[int, int]:
        return {p: s.size for p, s in self._partitions.get(collection_id, {}).items()}

    def memory_bytes(self, collection_id: str) -> int:
        return sum(s.memory_bytes() for s in self._partitions.get(collection_id, {}).values())

    # ---- index versions and snapshots --------------------------------------

    def build(self, collection_id: str, version: int, trained_key: str, keys: dict[int, tuple[str, str]]
              ) -> dict[int, PartitionManifest]:
        """Builds each partition's index for `version` and writes snapshot + index objects."""
        self._use_omp_threads()
        trained = load_index(self.store.get(trained_key))
        out = {}
        for p, (snapshot_key, index_key) in keys.items():
            shard = self._shard(collection_id, p)
            index = shard.build(version, trained)
            self._put_snapshot(snapshot_key, shard)
            self.store.put(index_key, faiss.serialize_index(index).tobytes())
            out[p] = PartitionManifest(snapshot_key, index_key, [])
        return out

    def _put_snapshot(self, key: str, shard: ShardIndex) -> None:
        """Writes a partition's faces to the store, streamed through a local file: a partition of
        millions of faces is never held in memory as one object."""
        with tempfile.NamedTemporaryFile(dir=self.local_dir, prefix="snapshot-", suffix=".parquet") as f:
            write_tables(f.name, shard.snapshot(), shard.d)
            self.store.put_file(key, f.name)

    def activate(self, collection_id: str, version: int, partitions: list[int]) -> None:
        for p in partitions:
            shard = self._shard(collection_id, p)
            shard.activate(version)
            self._applied[(collection_id, p)] = set()

    def retire_previous(self, collection_id: str) -> None:
        for shard in self._partitions.get(collection_id, {}).values():
            shard.retire_previous()
        _return_freed_memory()

    def compact(self, collection_id: str, keys: dict[int, tuple[str, str | None]]) -> dict[int, PartitionManifest]:
        """Writes a snapshot (and the populated index, when trained) of each partition."""
        out = {}
        for p, (snapshot_key, index_key) in keys.items():
            shard = self._shard(collection_id, p)
            self._put_snapshot(snapshot_key, shard)
            if index_key and shard.version:
                self.store.put(index_key, shard.index_bytes())
            else:
                index_key = None
            out[p] = PartitionManifest(snapshot_key, index_key, [])
        return out

    def compacted(self, collection_id: str, partitions: list[int]) -> None:
        """After the gateway committed a compaction: the snapshot now covers every applied segment."""
        for p in partitions:
            self._applied[(collection_id, p)] = set()
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Hands the heap's free pages back to the system after a build, switch or compaction freed an index.

    An untrained partition's flat index and id maps are millions of small and large allocations; freed,
    they stay in glibc's per-thread arenas and count as the worker's memory until it exits, unless trimmed.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of `values` as they are (np.array would make an array of a sequence)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array

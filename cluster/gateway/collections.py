"""The gateway's collections: their state in memory, their manifests in the store, and the commit point.

The gateway owns each collection's manifest. Every change to a collection becomes durable in one place,
`Collections.commit`, and only while this gateway holds the store's writer lease. A read gateway holds
no lease: it commits nothing, and adopts the manifests the writer commits (cluster/gateway/follower.py).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss

from cluster.api.limits import DEFAULT_COLLECTIONS_PER_PAGE, DEFAULT_TARGET_RECALL, MAX_COLLECTIONS_PER_PAGE
from cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cluster.index.calibration import DEFAULT_FPIR, Calibration, EmbeddingModel
from cluster.index.training import load_index
from cluster.shards.backend import ShardBackend
from cluster.storage import manifest as manifests
from cluster.storage.lease import WriterLease
from cluster.storage.manifest import CollectionManifest, PartitionManifest
from cluster.storage.object_store import ObjectStore

logger = logging.getLogger(__name__)


@dataclass
class LiveIndex:
    """What a search needs, swapped in one assignment when a new index goes live."""

    version: int = 0  # 0: exact search
    quantizer: object = None  # faiss coarse quantizer of the live version
    trained: object = None  # keeps the index that owns `quantizer` alive
    nlist: int = 0

    @classmethod
    def from_trained(cls, version: int, trained: faiss.Index, nlist: int) -> LiveIndex:
        return cls(version, faiss.extract_index_ivf(trained).quantizer, trained, nlist)


@dataclass
class CollectionState:
    """One collection as the gateway holds it. `manifest` and `live` are replaced whole, never edited."""

    manifest: CollectionManifest
    live: LiveIndex
    calibration: Calibration | None
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # writes, training and compaction
    maintenance: threading.Thread | None = None
    deleted: bool = False


def default_fpir(m: CollectionManifest) -> float:
    """The collection's default target FPIR; 0: none. Face collections whose manifest predates the field get
    DEFAULT_FPIR, as new ones do."""
    return m.default_fpir or (DEFAULT_FPIR if m.embedding_model else 0.0)


def partition_of(face_id: str, num_partitions: int) -> int:
    """Partition of a face: stable across processes and restarts (unlike hash())."""
    return zlib.crc32(face_id.encode()) % num_partitions


def by_worker(partitions: Sequence[int], num_workers: int) -> dict[int, list[int]]:
    """The given partitions grouped by the worker that holds them (partition p: worker p % num_workers)."""
    out: dict[int, list[int]] = {}
    for p in partitions:
        out.setdefault(p % num_workers, []).append(p)
    return out


def partitions_of_workers(workers: Sequence[int], num_partitions: int, num_workers: int) -> list[int]:
    """The partitions the given workers hold (partition p: worker p % num_workers), ascending."""
    held = set(workers)
    return [p for p in range(num_partitions) if p % num_workers in held] if held else []


def ids_by_worker(face_ids: Sequence[str], num_partitions: int, num_workers: int) -> dict[int, dict[int, list[str]]]:
    """Face ids grouped worker -> partition -> ids."""
    out: dict[int, dict[int, list[str]]] = {}
    for f in face_ids:
        p = partition_of(f, num_partitions)
        out.setdefault(p % num_workers, {}).setdefault(p, []).append(f)
    return out


class Collections:
    """The registry of collections: open, create, look up, delete, and commit their manifests.

    Args:
        store: the object store holding manifests and data.
        shards: the shard workers (told to open and drop collections).
        lease: the store's writer lease, checked before every commit; None for a read gateway, which commits
            nothing.
        model: the default face model, for collections created without a dimension or model name.
        default_train_threshold: faces before a new collection trains IVF-PQ.
        models: every face model a collection may be created with, by name (`model` among them).
    """

    def __init__(self, store: ObjectStore, shards: ShardBackend, lease: WriterLease | None, *,
                 model: EmbeddingModel | None, default_train_threshold: int,
                 models: dict[str, EmbeddingModel] | None = None):
        self.store = store
        self.shards = shards
        self.lease = lease
        self.model = model
        self.models = dict(models or {})
        if model is not None:
            self.models.setdefault(model.name, model)
        self.default_train_threshold = default_train_threshold
        self._states: dict[str, CollectionState] = {}
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()  # a commit and the lease's release never interleave

    def load(self) -> int:
        """Opens every collection of the store, on the gateway and on the workers; returns how many."""
        loaded = manifests.load_all(self.store)
        self.shards.call("open_collection", [(w, (m.to_json(),)) for m in loaded for w in range(self.shards.num_workers)])
        for m in loaded:
            self._states[m.collection_id] = self._open(m)
        return len(loaded)

    def _open(self, m: CollectionManifest) -> CollectionState:
        live = LiveIndex()
        if m.index_version:
            live = LiveIndex.from_trained(m.index_version, load_index(self.store.get(m.trained_index)), m.nlist)
        calibration = None
        if m.calibration and (m.calibration_source == "job" or not m.embedding_model):
            calibration = Calibration.from_bytes(self.store.get(m.calibration))
        elif m.embedding_model in self.models:
            calibration = self.models[m.embedding_model].calibration
        return CollectionState(m, live, calibration)

    def commit(self, m: CollectionManifest) -> None:
        """The commit point of every change to a collection, while this gateway holds the writer lease."""
        with self._commit_lock:
            self.check_writable()
            manifests.save(self.store, m)

    def release_lease(self) -> None:
        """Gives the writer lease back; a commit after this (a maintenance thread still running) fails."""
        with self._commit_lock:
            if self.lease is not None:
                self.lease.release()

    def check_writable(self) -> None:
        """Raises FailedPrecondition on a read gateway, Unavailable once the writer lease is lost."""
        if self.lease is None:
            raise FailedPrecondition("this gateway serves searches and reads only (gallery serve --role reader); "
                                     "send writes to the store's writer")
        self.lease.check()

    def adopt(self, m: CollectionManifest) -> None:
        """A read gateway: a collection the writer created (and the workers have opened)."""
        with self._lock:
            self._states[m.collection_id] = self._open(m)

    def refresh(self, state: CollectionState, m: CollectionManifest) -> None:
        """A read gateway: the writer committed `m`, which the workers hold now; searches use it from here."""
        old = state.manifest
        if m.index_version != old.index_version:
            state.live = (LiveIndex.from_trained(m.index_version, load_index(self.store.get(m.trained_index)),
                                                 m.nlist) if m.index_version else LiveIndex())
        if m.calibration != old.calibration and m.calibration:
            state.calibration = Calibration.from_bytes(self.store.get(m.calibration))
        state.manifest = m

    def forget(self, collection_id: str) -> None:
        """A read gateway: the writer deleted the collection."""
        with self._lock:
            state = self._states.pop(collection_id, None)
        if state is not None:
            state.deleted = True

    def get(self, collection_id: str) -> CollectionState:
        state = self._states.get(manifests.check_collection_id(collection_id))
        if state is None or state.deleted:
            raise NotFound(f"collection {collection_id!r} does not exist")
        return state

    def states(self) -> list[CollectionState]:
        return list(self._states.values())

    def create(self, collection_id: str, *, dimension: int = 0, train_threshold: int = 0,
               embedding_model: str = "", replicas: int = 0, default_fpir: float = 0.0,
               target_recall: float = 0.0) -> CollectionManifest:
        """Creates an empty collection; a face collection's model is recorded and fixed for its life.

        Args:
            dimension: 0 for a face collection, else the dimension of raw embeddings.
            embedding_model: a face collection's model; "" for the default model.
            replicas: copies of each partition to keep, 1 to the backend's `num_replicas`; 0: all of them.
            default_fpir: target FPIR of searches that set no threshold, in (0, 1); 0: DEFAULT_FPIR for a face
                collection, none for raw embeddings.
            target_recall: recall@10 the collection's searches aim for, in (0, 1]; 0: DEFAULT_TARGET_RECALL.

        Raises:
            InvalidArgument: bad id, no dimension and no face model, an unknown model, or a model
                named for a raw-embedding collection; replicas out of range; default_fpir outside [0, 1);
                target_recall outside [0, 1].
            AlreadyExists: the id is taken.
        """
        manifests.check_collection_id(collection_id)
        if not (default_fpir == 0.0 or 0.0 < default_fpir < 1.0):
            raise InvalidArgument(f"default_fpir must be in (0, 1), or 0 for the default, got {default_fpir}")
        model_name = ""
        if dimension == 0:
            if self.model is None:
                raise InvalidArgument("dimension is 0 and this server has no face model: give a dimension")
            model = self.models.get(embedding_model) if embedding_model else self.model
            if model is None:
                raise InvalidArgument(f"embedding_model: unknown face model {embedding_model!r}; this server has "
                                      f"{', '.join(sorted(self.models))} ('' for {self.model.name})")
            dimension, model_name = model.dimension, model.name
            default_fpir = default_fpir or DEFAULT_FPIR
        elif embedding_model:
            raise InvalidArgument(f"embedding_model {embedding_model!r} is for face collections (dimension 0); "
                                  f"a collection of raw embeddings (dimension {dimension}) has no model")
        if not 1 <= dimension <= 4096:
            raise InvalidArgument(f"dimension must be in [1, 4096], got {dimension}")
        if not 0 <= replicas <= self.shards.num_replicas:
            raise InvalidArgument(f"replicas must be in [1, {self.shards.num_replicas}] (this server's copies of each "
                                  f"shard worker; 0 for all), got {replicas}")
        if not 0.0 <= target_recall <= 1.0:  # NaN fails both
            raise InvalidArgument(f"target_recall must be in (0, 1], or 0 for {DEFAULT_TARGET_RECALL}, "
                                  f"got {target_recall}")
        num_partitions = self.shards.num_workers  # one partition per worker at creation
        with self._lock:
            if collection_id in self._states:
                raise AlreadyExists(f"collection {collection_id!r} already exists")
            m = CollectionManifest(collection_id, dimension, num_partitions,
                                   train_threshold or self.default_train_threshold, time.time(), model_name,
                                   replicas=replicas or self.shards.num_replicas, default_fpir=default_fpir,
                                   partitions=[PartitionManifest() for _ in range(num_partitions)],
                                   target_recall=target_recall or DEFAULT_TARGET_RECALL)
            self.commit(m)
            self._states[collection_id] = self._open(m)
        self.shards.call_all("open_collection", m.to_json())
        return m

    def list_ids(self, max_results: int = DEFAULT_COLLECTIONS_PER_PAGE, next_token: str = "") -> tuple[list[str], str]:
        """A page of collection ids in order, and the token of the next page ("" at the end)."""
        if not 0 <= max_results <= MAX_COLLECTIONS_PER_PAGE:
            raise InvalidArgument(f"max_results must be in [0, {MAX_COLLECTIONS_PER_PAGE}], got {max_results}")
        names = sorted(n for n, s in self._states.items() if not s.deleted and n > next_token)
        page = names[:max_results or DEFAULT_COLLECTIONS_PER_PAGE]
        return page, page[-1] if len(names) > len(page) else ""

    def delete(self, collection_id: str) -> int:
        """Deletes a collection and every object of it; returns how many faces it held."""
        state = self.get(collection_id)
        with state.write_lock:
            if state.deleted:
                raise NotFound(f"collection {collection_id!r} does not exist")
            self.check_writable()
            self.store.delete(manifests.manifest_key(collection_id))  # the commit point
            state.deleted = True
            with self._lock:
                del self._states[collection_id]
            self.shards.call_all("drop_collection", collection_id)
            self.store.delete_prefix(manifests.prefix(collection_id))
            return state.manifest.face_count

"""Collection manifests: the one object per collection that says which data objects are live.

A mutation writes its data objects first and the manifest last, so a crash at
any point leaves the previous manifest pointing at complete objects; objects no
manifest names are garbage, collected by `gc_collection`. Object keys carry a
sequence number and are never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from cluster.api.limits import DEFAULT_TARGET_RECALL
from cluster.storage.object_store import ObjectStore, UnsafeKey, check_name, object_key

FORMAT_VERSION = 1
_COLLECTIONS = "collections"
_MANIFEST = "manifest.json"


class UnsafeStore(RuntimeError):
    """The store holds a collection whose name is not a safe id (written by a version that accepted it)."""


@dataclass
class Segment:
    """An immutable batch of adds or deletes for one partition."""

    key: str
    op: str  # "add" or "delete"
    faces: int = 0  # faces it adds or deletes (0 in manifests written before it was recorded)


@dataclass
class PartitionManifest:
    snapshot: str | None = None  # Parquet of the partition's faces at some point
    index: str | None = None  # populated IVF-PQ index matching the snapshot, if trained
    segments: list[Segment] = field(default_factory=list)  # replayed in order after the snapshot


@dataclass
class SearchTuning:
    """Recall@10 measured on a collection's own faces after a (re)training (cluster/gateway/maintenance.py)."""

    index_version: int  # the index version measured; a later version is searched by default until measured
    queries: int  # faces sampled as queries
    # [nprobe, re-rank depth for top-10, recall@10, its standard error (absent from older tables)]
    points: list[list[float]] = field(default_factory=list)
    faces: int = 0  # the collection's size when measured (0: before it was recorded)


@dataclass
class CollectionManifest:
    collection_id: str
    dimension: int
    num_partitions: int
    train_threshold: int
    created_at: float
    embedding_model: str = ""
    replicas: int = 1  # copies of each partition the gateway keeps live, on different Ray nodes where it can
    face_count: int = 0
    sequence: int = 0  # last sequence number used in an object key
    index_version: int = 0  # 0: exact search
    trained_index: str | None = None  # the empty trained IVF-PQ index (quantizer + codebooks)
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8  # bits per PQ code: 4 (fast-scan) or 8; manifests from before fast-scan have 8
    trained_on: int = 0
    calibration: str | None = None  # key of a Calibration, for raw-embedding collections
    calibrated_on: int = 0
    calibration_source: str = ""  # of `calibration`: "gallery" (estimated in the background) or "job" (SetCalibration)
    default_fpir: float = 0.0  # target FPIR of searches that set no threshold; 0: the server's default for its kind
    partitions: list[PartitionManifest] = field(default_factory=list)
    target_recall: float = DEFAULT_TARGET_RECALL  # recall@10 its searches aim for
    search_tuning: SearchTuning | None = None

    def next_key(self, name: str) -> str:
        """A fresh object key under this collection, e.g. "collections/c/p0/add-000012.parquet"."""
        self.sequence += 1
        stem, _, ext = name.rpartition(".")
        return f"{prefix(self.collection_id)}{stem}-{self.sequence:08d}.{ext}"

    def keys(self) -> set[str]:
        """Every data object this manifest refers to."""
        keys = {k for k in (self.trained_index, self.calibration) if k}
        for part in self.partitions:
            keys.update(k for k in (part.snapshot, part.index) if k)
            keys.update(s.key for s in part.segments)
        return keys

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CollectionManifest:
        raw = json.loads(data)
        if raw.pop("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {raw.get('format')} unsupported")
        partitions = [PartitionManifest(p["snapshot"], p["index"], [Segment(**s) for s in p["segments"]])
                      for p in raw.pop("partitions")]
        tuning = raw.pop("search_tuning", None)  # absent from manifests written before tuning by measurement
        return cls(**raw, partitions=partitions, search_tuning=SearchTuning(**tuning) if tuning else None)


def check_collection_id(collection_id: str) -> str:
    """Returns the id if it is safe as a folder of the store: 1-255 of [A-Za-z0-9_.-], not only dots.

    Raises:
        UnsafeKey (an InvalidArgument) otherwise: "..", "a/b", "nl\\n", "" and the like.
    """
    return check_name(collection_id, "collection_id")


def prefix(collection_id: str) -> str:
    return object_key(_COLLECTIONS, check_collection_id(collection_id)) + "/"


def manifest_key(collection_id: str) -> str:
    return prefix(collection_id) + _MANIFEST


def save(store: ObjectStore, manifest: CollectionManifest) -> None:
    """Commits a manifest: the single atomic write that makes a mutation durable."""
    store.put(manifest_key(manifest.collection_id), manifest.to_json())


def load(store: ObjectStore, collection_id: str) -> CollectionManifest:
    return CollectionManifest.from_json(store.get(manifest_key(collection_id)))


def load_all(store: ObjectStore) -> list[CollectionManifest]:
    """Every collection's manifest, after `check_store`."""
    manifests = []
    for key in check_store(store):
        m = CollectionManifest.from_json(store.get(key))
        if m.collection_id != key.split("/")[1]:
            raise UnsafeStore(f"store {store.uri}: {key} names collection {m.collection_id!r}")
        manifests.append(m)
    return manifests


def check_store(store: ObjectStore) -> list[str]:
    """The keys of the store's collection manifests, once every collection name in it is known to be safe.

    Raises:
        UnsafeStore: a collection folder whose name is not a safe id, or a manifest at the root (left by a
            collection named ".." in versions that accepted it).
    """
    if store.exists(_MANIFEST):
        raise UnsafeStore(f"store {store.uri} holds {_MANIFEST} at its root, where a collection named '..' put it "
                          "in an earlier version; move the store's objects aside and restore them from a backup")
    keys = []
    for key in store.list(_COLLECTIONS + "/"):
        folder = key.split("/")[1]
        try:
            check_collection_id(folder)
        except UnsafeKey as e:
            raise UnsafeStore(f"store {store.uri} holds a collection folder {folder!r}, which is not a safe "
                              f"collection id ({e}); rename or remove it before serving this store") from e
        if key == manifest_key(folder):
            keys.append(key)
    return keys


def gc_collection(store: ObjectStore, manifest: CollectionManifest) -> int:
    """Deletes the collection's objects that its manifest does not name; returns how many."""
    live = manifest.keys() | {manifest_key(manifest.collection_id)}
    garbage = [k for k in store.list(prefix(manifest.collection_id)) if k not in live]
    for key in garbage:
        store.delete(key)
    return len(garbage)

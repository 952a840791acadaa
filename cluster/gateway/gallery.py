"""Gallery: the collections API over shard workers. The gRPC servicers translate to and from it.

One object per gateway, composed of one collaborator per concern: `Collections` (the registry and the
commit point), `Writes` (two-phase adds and deletes, compaction), `SearchPath` (batching, coarse
assignment, fan-out, merge, calibration), `Reads` and `Maintenance` (training and calibration in the
background). Where the shard workers run is the `ShardBackend`'s business: Ray actors in a cluster,
this process in tests and tools.
"""

from __future__ import annotations

import logging

import numpy as np

from cluster.api.limits import CALL_TIMEOUT_S
from cluster.gateway.collections import Collections, CollectionState, partitions_of_workers
from cluster.gateway.follower import Follower
from cluster.gateway.maintenance import Maintenance
from cluster.gateway.reads import Reads
from cluster.gateway.search import (
    DEFAULT_MAX_QUEUED_QUERIES,
    Candidate,
    FanOutObserver,
    SearchPath,
    SearchResults,
    search_cost,
    tuned_points,
)
from cluster.gateway.writes import Writes
from cluster.index import tuning
from cluster.index.calibration import Calibration, EmbeddingModel
from cluster.index.tuning import SearchPoint
from cluster.shards.backend import ShardBackend
from cluster.storage.lease import WriterLease
from cluster.storage.manifest import CollectionManifest, SearchTuning
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceRecord

logger = logging.getLogger(__name__)

# How long a stopping gateway waits for maintenance in progress to finish (see `close`).
MAINTENANCE_STOP_S = 10.0

__all__ = ["Candidate", "Gallery", "SearchResults"]


class Gallery:
    """Collections of faces sharded over shard workers.

    Args:
        store: the object store holding manifests and data.
        shards: the shard workers (`RayShards` in a cluster, `LocalShards` in this process).
        model: the default face model, for face collections created without a model name.
        models: every face model collections may use, by name (`model` among them); collections of a
            model not listed here keep working as raw-embedding collections of their dimension.
        default_train_threshold: faces before a collection trains IVF-PQ.
        max_segments: segments a partition accumulates before it is compacted.
        call_timeout_s: bound on one search fan-out.
        background_maintenance: train and calibrate collections in the background as they grow.
        lease: the store's writer lease (see cluster/storage/lease.py), which the gallery then owns and
            releases on close; None takes it here. StoreInUse when another gateway holds it.
        max_queued_queries: queries the search path holds at once (queued or in flight), >= MAX_QUERIES;
            beyond, searches are refused at once with ResourceExhausted.
        fan_out_observer: told each search fan-out's duration and each worker's search time (metrics).
        read_only: a read gateway: no lease, no writes (FailedPrecondition), no maintenance; it follows the
            writer's commits every `follow_interval_s` (cluster/gateway/follower.py).
        follow_interval_s: a read gateway's seconds between two looks at the store.

    Example:
        >>> gallery = Gallery(ObjectStore("/tmp/g"), LocalShards(2, "/tmp/g"))
        >>> gallery.create_collection("staff", dimension=512)
        >>> gallery.add("staff", [FaceRecord("alice")], xb[:1])
        >>> gallery.search("staff", xq, k=5).candidates[0][0].record.face_id
        'alice'
    """

    def __init__(self, store: ObjectStore, shards: ShardBackend, *, model: EmbeddingModel | None = None,
                 default_train_threshold: int = tuning.DEFAULT_TRAIN_THRESHOLD, max_segments: int = 64,
                 call_timeout_s: float = CALL_TIMEOUT_S, background_maintenance: bool = True,
                 lease: WriterLease | None = None, max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES,
                 fan_out_observer: FanOutObserver | None = None, models: dict[str, EmbeddingModel] | None = None,
                 read_only: bool = False, follow_interval_s: float = 1.0):
        self.lease = None if read_only else lease or WriterLease.acquire(store)
        self.store = store
        self.shards = shards
        self.model = model
        self.collections = Collections(store, shards, self.lease, model=model, models=models,
                                       default_train_threshold=default_train_threshold)
        self.models = self.collections.models
        self.writes = Writes(self.collections, shards, max_segments=max_segments)
        self.searches = SearchPath(self.collections, shards, call_timeout_s=call_timeout_s,
                                   max_queued_queries=max_queued_queries, fan_out_observer=fan_out_observer)
        self.reads = Reads(shards)
        self.maintenance = Maintenance(self.collections, shards, background=background_maintenance and not read_only)
        self.follower = Follower(self.collections, shards, interval_s=follow_interval_s) if read_only else None
        try:
            loaded = self.collections.load()
        except BaseException:
            self.close()
            raise
        logger.info("gallery opened %d collections from %s%s", loaded, store.uri, " to read" if read_only else "")
        for state in self.collections.states():  # training or calibration a stop interrupted resumes now
            self.maintenance.start_if_due(state)
        if self.follower is not None:
            self.follower.start()

    @property
    def read_only(self) -> bool:
        return self.lease is None

    def close(self) -> None:
        """Stops searching and maintenance and gives the writer lease back; the shard workers keep running."""
        if self.follower is not None:
            self.follower.close()
        self.searches.close()
        self.shards.close()
        # A training of millions of faces can run for many minutes; a stop does not wait for it. Its commit then
        # fails (the lease is gone), and the next gateway trains again (`Maintenance.start_if_due` at start).
        self.maintenance.join(timeout_s=MAINTENANCE_STOP_S)
        self.collections.release_lease()

    # ---- collections -------------------------------------------------------

    def create_collection(self, collection_id: str, *, dimension: int = 0, train_threshold: int = 0,
                          embedding_model: str = "", replicas: int = 0, default_fpir: float = 0.0,
                          target_recall: float = 0.0) -> CollectionManifest:
        """Creates an empty collection (dimension 0: a face collection of `embedding_model`, "" for the
        default model; replicas 0: every copy the shard backend keeps; default_fpir 0: the default for its kind,
        see `Collections.create`; target_recall 0: DEFAULT_TARGET_RECALL). InvalidArgument, AlreadyExists."""
        self.collections.check_writable()
        return self.collections.create(collection_id, dimension=dimension, train_threshold=train_threshold,
                                       embedding_model=embedding_model, replicas=replicas, default_fpir=default_fpir,
                                       target_recall=target_recall)

    def describe(self, collection_id: str) -> tuple[CollectionManifest, CollectionState]:
        state = self.collections.get(collection_id)
        return state.manifest, state

    def list_collections(self, max_results: int = 100, next_token: str = "") -> tuple[list[str], str]:
        return self.collections.list_ids(max_results, next_token)

    def delete_collection(self, collection_id: str) -> int:
        """Deletes a collection and its objects; returns how many faces it held."""
        self.collections.check_writable()
        return self.collections.delete(collection_id)

    # ---- writes ------------------------------------------------------------

    def add(self, collection_id: str, records: list[FaceRecord], embeddings: np.ndarray, *,
            skip_existing: bool = False) -> tuple[list[str], list[str]]:
        """Enrolls faces; all or nothing.

        Args:
            records: one per face; an empty face_id gets a UUID.
            embeddings: (n, d) float32, normalised here.
            skip_existing: skip ids already enrolled (or repeated) instead of failing.

        Returns:
            (added face ids, skipped face ids).

        Raises:
            InvalidArgument, ResourceExhausted, AlreadyExists, NotFound, Unavailable.
        """
        state = self.collections.get(collection_id)
        self.collections.check_writable()  # before any worker stages anything
        added = self.writes.add(state, records, embeddings, skip_existing=skip_existing)
        self.maintenance.start_if_due(state)
        return added

    def delete_faces(self, collection_id: str, face_ids: list[str]) -> tuple[list[str], list[str]]:
        """Deletes faces; returns (deleted, unknown) ids."""
        state = self.collections.get(collection_id)
        self.collections.check_writable()
        return self.writes.delete(state, face_ids)

    # ---- search ------------------------------------------------------------

    def search(self, collection_id: str, xq: np.ndarray, k: int, *, nprobe: int = 0,
               min_similarity: float | None = None, target_fpir: float | None = None,
               timeout_s: float | None = None, allow_partial: bool = False, target_recall: float = 0.0,
               ids_only: bool = False) -> SearchResults:
        """Top-k candidates for each query: candidates for human review, never identifications.

        Args:
            xq: (nq, d) float32 queries, normalised here.
            k: candidates per query, 1..MAX_K.
            nprobe: IVF lists probed, 0 for the measured (or default) one; at most nlist.
            min_similarity: drop candidates below; None for the collection's calibrated default.
            target_fpir: instead of min_similarity, the largest acceptable false-positive identification rate in
                (0, 1): the threshold is derived from the calibration at the collection's current size.
            timeout_s: the caller's remaining deadline.
            allow_partial: when shard workers are unavailable, answer from the others, naming the partitions
                left out in `missing_partitions`; False fails with Unavailable instead.
            target_recall: recall@10 to reach, in (0, 1]; 0 for the collection's. Once the live index is
                measured (`Maintenance.measure`), the cheapest measured nprobe and re-rank depth that reach it.
            ids_only: answer `packed` (face ids, similarities, gallery false-match probabilities as arrays)
                instead of candidates with face records: no object per candidate.

        Raises:
            InvalidArgument, NotFound, FailedPrecondition (empty collection), DeadlineExceeded, Unavailable
            (a worker is down; with allow_partial, every worker is, or one failed during the search),
            ResourceExhausted (over MAX_QUERIES, or the gateway already holds max_queued_queries queries).
        """
        return self.searches.search(self.collections.get(collection_id), xq, k, nprobe=nprobe,
                                    min_similarity=min_similarity, target_fpir=target_fpir, timeout_s=timeout_s,
                                    allow_partial=allow_partial, target_recall=target_recall, ids_only=ids_only)

    def search_tuning(self, collection_id: str) -> tuple[SearchPoint | None, list[SearchPoint], int]:
        """(the setting searches use for the collection's target, every setting measured, queries measured with);
        (None, [], 0) until the live index has been measured."""
        state = self.collections.get(collection_id)
        m = state.manifest
        points = tuned_points(m, state.live.version)
        if not points:
            return None, [], 0
        return tuning.choose_search_params(points, m.target_recall, search_cost(m)), points, m.search_tuning.queries

    # ---- reads -------------------------------------------------------------

    def get_faces(self, collection_id: str, face_ids: list[str], *, include_embeddings: bool = False
                  ) -> tuple[list[FaceRecord], list[str]]:
        """Returns (faces found in request order, unknown ids)."""
        return self.reads.get_faces(self.collections.get(collection_id), face_ids,
                                    include_embeddings=include_embeddings)

    def list_faces(self, collection_id: str, max_results: int = 1000, next_token: str = "", *,
                   include_embeddings: bool = False) -> tuple[list[FaceRecord], str]:
        """A page of faces in (partition, slot) order and the token of the next page ("" at the end)."""
        return self.reads.list_faces(self.collections.get(collection_id), max_results, next_token,
                                     include_embeddings=include_embeddings)

    def memory_bytes(self, collection_id: str) -> int:
        return self.reads.memory_bytes(self.collections.get(collection_id))

    def live_replicas(self, collection_id: str) -> int:
        """The fewest copies of any of the collection's partitions that can be searched now."""
        self.collections.get(collection_id)
        return self.shards.live_replicas(collection_id)

    def unavailable_partitions(self, collection_id: str) -> list[int]:
        """Partitions of the collection that no replica can search now."""
        m = self.collections.get(collection_id).manifest
        return partitions_of_workers(self.shards.unavailable_workers(collection_id), m.num_partitions,
                                     self.shards.num_workers)

    # ---- maintenance -------------------------------------------------------

    def set_calibration(self, collection_id: str, calibration: Calibration) -> None:
        """Stores a calibration a job measured on labelled faces (source "job"); the collection uses it from now on."""
        self.collections.check_writable()
        self.maintenance.set_calibration(collection_id, calibration)

    def train(self, collection_id: str) -> int:
        """Trains IVF-PQ now and switches every partition to it; returns the new index version."""
        self.collections.check_writable()
        return self.maintenance.train(collection_id)

    def measure(self, collection_id: str) -> SearchTuning:
        """Measures recall@10 of the live IVF-PQ index against exact search (done after each training too)."""
        return self.maintenance.measure(collection_id)

    def calibrate(self, collection_id: str) -> Calibration:
        """Re-estimates a raw collection's impostor distribution from pairs of its own faces."""
        self.collections.check_writable()
        return self.maintenance.calibrate(collection_id)

    def wait_for_maintenance(self, collection_id: str, timeout_s: float | None = None) -> bool:
        """Waits until background training or calibration of the collection is done; False on timeout."""
        return self.maintenance.wait(collection_id, timeout_s)

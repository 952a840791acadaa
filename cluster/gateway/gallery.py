"""Gallery: the collections API over shard workers. The gRPC servicer is a thin layer on top of it.

The gateway process owns each collection's manifest and serialises its writes
(a per-collection lock); searches never take that lock. A query is assigned to
IVF lists here, once, then fanned out to every worker holding a partition, and
the workers' top-k are merged exactly.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import pickle
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
import ray

from cluster.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from cluster.gateway.batching import QueryBatcher
from cluster.gateway.maintenance import IndexMaintenance, LiveIndex, quantizer_of
from cluster.index import tuning, vectors
from cluster.index.calibration import Calibration, EmbeddingModel, gallery_probability
from cluster.index.merge import merge_topk
from cluster.index.shard_index import StaleIndexVersion
from cluster.index.training import load_index
from cluster.shards.fanout import SearchFanOut
from cluster.shards.protocol import MAINTENANCE, SearchRequest
from cluster.storage import manifest as manifests
from cluster.storage.lease import WriterLease
from cluster.storage.manifest import CollectionManifest, PartitionManifest, Segment
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceBatch, FaceRecord

logger = logging.getLogger(__name__)

MAX_K = 1000
MAX_QUERIES = 1024
MAX_FACES_PER_ADD = 10_000
MAX_IDS_PER_CALL = 4096
MAX_FACE_ID_LENGTH = 255


@dataclass
class Candidate:
    record: FaceRecord
    similarity: float
    false_match_rate: float  # -1 when uncalibrated
    gallery_false_match_probability: float


@dataclass
class SearchResults:
    candidates: list[list[Candidate]]
    gallery_size: int
    calibration: Calibration | None
    index_version: int


@dataclass
class _Collection:
    manifest: CollectionManifest
    live: LiveIndex
    calibration: Calibration | None
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    maintenance: threading.Thread | None = None
    deleted: bool = False


def partition_of(face_id: str, num_partitions: int) -> int:
    """Partition of a face: stable across processes and restarts (unlike hash())."""
    return zlib.crc32(face_id.encode()) % num_partitions


class Gallery(IndexMaintenance):
    """Collections of faces sharded over `ShardWorker` actors.

    Args:
        store: the object store holding manifests and data.
        workers: handles of the ShardWorker actors, in worker-id order.
        model: the face model, for collections created without a dimension.
        default_train_threshold: faces before a collection trains IVF-PQ.
        max_segments: segments a partition accumulates before it is compacted.
        call_timeout_s: bound on one call to the workers.
        background_maintenance: train and calibrate collections in the background as they grow.
        lease: the store's writer lease (see cluster/storage/lease.py), which the gallery then owns and releases on
            close; None takes it here. StoreInUse when another gateway holds it.

    Example:
        >>> gallery = Gallery(ObjectStore("/tmp/g"), workers)
        >>> gallery.create_collection("staff", dimension=512)
        >>> gallery.add("staff", [FaceRecord("alice")], xb[:1])
        >>> gallery.search("staff", xq, k=5).candidates[0][0].record.face_id
        'alice'
    """

    def __init__(self, store: ObjectStore, workers: Sequence, *, model: EmbeddingModel | None = None,
                 default_train_threshold: int = tuning.DEFAULT_TRAIN_THRESHOLD, max_segments: int = 64,
                 call_timeout_s: float = 120.0, background_maintenance: bool = True,
                 lease: WriterLease | None = None):
        if not workers:
            raise ValueError("Gallery needs at least one worker")
        self.lease = lease or WriterLease.acquire(store)
        self.store = store
        self.workers = list(workers)
        self.model = model
        self.default_train_threshold = default_train_threshold
        self.max_segments = max_segments
        self.call_timeout_s = call_timeout_s
        self.background_maintenance = background_maintenance
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        self._batcher = QueryBatcher(self._search_batch)
        self._fan_out_to_workers = SearchFanOut(self.workers, timeout_s=call_timeout_s)
        try:
            loaded = manifests.load_all(store)
            self._call([w.open_collection.remote(m.to_json()) for m in loaded for w in self.workers])
            for m in loaded:
                self._collections[m.collection_id] = self._open(m)
        except BaseException:
            self.close()
            raise
        logger.info("gallery opened %d collections from %s", len(loaded), store.uri)

    def close(self) -> None:
        self._batcher.close()
        self._fan_out_to_workers.close()
        for state in list(self._collections.values()):
            if state.maintenance is not None:
                state.maintenance.join()
        self.lease.release()

    # ---- plumbing ----------------------------------------------------------

    def _call(self, refs: list, timeout_s: float | None = None) -> list:
        """ray.get with errors the caller can act on."""
        with _ray_errors():
            return ray.get(refs, timeout=timeout_s or self.call_timeout_s)

    def _commit_manifest(self, m: CollectionManifest) -> None:
        """The commit point of every change to a collection, while this gateway holds the writer lease."""
        self.lease.check()
        manifests.save(self.store, m)

    def _open(self, m: CollectionManifest) -> _Collection:
        live = LiveIndex()
        if m.index_version:
            trained = load_index(self.store.get(m.trained_index))
            live = LiveIndex(m.index_version, quantizer_of(trained), trained, m.nlist)
        calibration = None
        if m.embedding_model and self.model and self.model.name == m.embedding_model:
            calibration = self.model.calibration
        elif m.calibration:
            calibration = Calibration.from_bytes(self.store.get(m.calibration))
        return _Collection(m, live, calibration)

    def _get(self, collection_id: str) -> _Collection:
        state = self._collections.get(manifests.check_collection_id(collection_id))
        if state is None or state.deleted:
            raise NotFound(f"collection {collection_id!r} does not exist")
        return state

    def _owners(self, partitions) -> dict[int, list[int]]:
        """The given partitions grouped by the id of the worker that holds them (partition p: worker p % W)."""
        out: dict[int, list[int]] = {}
        for p in partitions:
            out.setdefault(p % len(self.workers), []).append(p)
        return out

    def _worker_partitions(self, num_partitions: int) -> list[tuple[object, list[int]]]:
        """(worker handle, its partitions) for every worker holding part of a collection."""
        return [(self.workers[w], parts) for w, parts in self._owners(range(num_partitions)).items()]

    def _by_worker(self, num_partitions: int, face_ids: Sequence[str]) -> dict[int, dict[int, list[str]]]:
        """face ids grouped worker -> partition -> ids."""
        out: dict[int, dict[int, list[str]]] = {}
        for f in face_ids:
            p = partition_of(f, num_partitions)
            out.setdefault(p % len(self.workers), {}).setdefault(p, []).append(f)
        return out

    # ---- collections -------------------------------------------------------

    def create_collection(self, collection_id: str, *, dimension: int = 0, train_threshold: int = 0) -> CollectionManifest:
        """Creates an empty collection.

        Raises:
            InvalidArgument: bad id, no dimension and no face model.
            AlreadyExists: the id is taken.
        """
        manifests.check_collection_id(collection_id)
        model_name = ""
        if dimension == 0:
            if self.model is None:
                raise InvalidArgument("dimension is 0 and this server has no face model: give a dimension")
            dimension, model_name = self.model.dimension, self.model.name
        if not 1 <= dimension <= 4096:
            raise InvalidArgument(f"dimension must be in [1, 4096], got {dimension}")
        with self._lock:
            if collection_id in self._collections:
                raise AlreadyExists(f"collection {collection_id!r} already exists")
            m = CollectionManifest(collection_id, dimension, len(self.workers),
                                   train_threshold or self.default_train_threshold, time.time(), model_name,
                                   partitions=[PartitionManifest() for _ in self.workers])
            self._commit_manifest(m)
            state = self._open(m)
            self._collections[collection_id] = state
        self._call([w.open_collection.remote(m.to_json()) for w in self.workers])
        return m

    def describe(self, collection_id: str) -> tuple[CollectionManifest, _Collection]:
        state = self._get(collection_id)
        return state.manifest, state

    def list_collections(self, max_results: int = 100, next_token: str = "") -> tuple[list[str], str]:
        if not 0 <= max_results <= 1000:
            raise InvalidArgument(f"max_results must be in [0, 1000], got {max_results}")
        names = sorted(n for n, s in self._collections.items() if not s.deleted and n > next_token)
        page = names[:max_results or 100]
        return page, page[-1] if len(names) > len(page) else ""

    def delete_collection(self, collection_id: str) -> int:
        state = self._get(collection_id)
        with state.write_lock:
            if state.deleted:
                raise NotFound(f"collection {collection_id!r} does not exist")
            self.lease.check()
            self.store.delete(manifests.manifest_key(collection_id))  # the commit point
            state.deleted = True
            with self._lock:
                del self._collections[collection_id]
            self._call([w.drop_collection.remote(collection_id) for w in self.workers])
            self.store.delete_prefix(manifests.prefix(collection_id))
            return state.manifest.face_count

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
        state = self._get(collection_id)
        n = len(records)
        if not 1 <= n <= MAX_FACES_PER_ADD:
            raise (ResourceExhausted if n else InvalidArgument)(
                f"faces: {n} given, 1 to {MAX_FACES_PER_ADD} per request")
        if embeddings.shape != (n, state.manifest.dimension):
            raise InvalidArgument(f"embeddings: shape {embeddings.shape}, expected ({n}, {state.manifest.dimension})")
        stored = vectors.to_stored(vectors.normalize(embeddings, what="embeddings"))
        for r in records:
            r.face_id = r.face_id or str(uuid.uuid4())
            if len(r.face_id) > MAX_FACE_ID_LENGTH:
                raise InvalidArgument(f"face_id {r.face_id[:40]!r}...: at most {MAX_FACE_ID_LENGTH} characters")
        first = {}
        for i, r in enumerate(records):
            first.setdefault(r.face_id, i)
        skipped = [r.face_id for i, r in enumerate(records) if first[r.face_id] != i]
        if skipped and not skip_existing:
            raise AlreadyExists(f"face ids repeated in the request: {sorted(set(skipped))[:5]}")
        keep = sorted(first.values())

        with state.write_lock:
            m = state.manifest
            P = m.num_partitions
            by_worker = self._by_worker(P, [records[i].face_id for i in keep])
            existing = set(f for found in self._call(
                [self.workers[w].existing.remote(collection_id, ids) for w, ids in by_worker.items()]) for f in found)
            if existing and not skip_existing:
                raise AlreadyExists(f"face ids already in {collection_id!r}: {sorted(existing)[:5]}")
            skipped += [records[i].face_id for i in keep if records[i].face_id in existing]
            keep = [i for i in keep if records[i].face_id not in existing]
            if not keep:
                return [], skipped
            new = copy.deepcopy(m)
            rows_by_partition: dict[int, list[int]] = {}
            for i in keep:
                rows_by_partition.setdefault(partition_of(records[i].face_id, P), []).append(i)
            batch = FaceBatch(records, stored)
            keys = {p: new.next_key(f"p{p}/add.parquet") for p in rows_by_partition}
            segments = {p: Segment(keys[p], "add") for p in rows_by_partition}
            txn = uuid.uuid4().hex
            self._stage(txn, [self.workers[w].stage_add.remote(
                collection_id, txn, {p: batch.take(rows_by_partition[p]) for p in parts}, {p: keys[p] for p in parts})
                for w, parts in self._owners(rows_by_partition).items()])
            self._finish_commit(collection_id, state, new, segments, txn, len(keep))
        self._maintain(collection_id, state)
        return [records[i].face_id for i in keep], skipped

    def delete_faces(self, collection_id: str, face_ids: list[str]) -> tuple[list[str], list[str]]:
        """Deletes faces; returns (deleted, unknown) ids."""
        state = self._get(collection_id)
        if not 1 <= len(face_ids) <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"face_ids: {len(face_ids)} given, 1 to {MAX_IDS_PER_CALL} per request")
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            P = new.num_partitions
            by_worker = self._by_worker(P, list(dict.fromkeys(face_ids)))
            keys = {p: new.next_key(f"p{p}/delete.parquet") for parts in by_worker.values() for p in parts}
            txn = uuid.uuid4().hex
            found_by_worker = self._stage(txn, [self.workers[w].stage_delete.remote(
                collection_id, txn, ids, {p: keys[p] for p in ids}) for w, ids in by_worker.items()])
            found = {p: ids for f in found_by_worker for p, ids in f.items()}
            deleted = [i for ids in found.values() for i in ids]
            if deleted:
                segments = {p: Segment(keys[p], "delete") for p in found}
                self._finish_commit(collection_id, state, new, segments, txn, -len(deleted))
            else:
                self._abort(txn)
        return deleted, [f for f in dict.fromkeys(face_ids) if f not in set(deleted)]

    def _stage(self, txn: str, refs: list) -> list:
        """Waits for the workers' stage calls; any failure aborts the transaction on every worker."""
        try:
            return self._call(refs)
        except BaseException:
            self._abort(txn)
            raise

    def _abort(self, txn: str) -> None:
        try:
            ray.get([w.abort.remote(txn) for w in self.workers], timeout=self.call_timeout_s)
        except Exception:  # staged objects no manifest names are garbage anyway
            logger.warning("abort of %s did not reach every worker", txn, exc_info=True)

    def _finish_commit(self, collection_id: str, state: _Collection, new: CollectionManifest,
                       segments: dict[int, Segment], txn: str, face_delta: int) -> None:
        """Commits staged segments: manifest first, then the workers make them live."""
        for p, segment in segments.items():
            new.partitions[p].segments.append(segment)
        new.face_count += face_delta
        try:
            self._commit_manifest(new)
        except Exception as e:
            self._abort(txn)
            raise Unavailable(f"object store write failed: {e}") from e
        state.manifest = new
        try:
            self._call([self.workers[w].apply.remote(collection_id, txn, {p: segments[p] for p in parts})
                        for w, parts in self._owners(segments).items()])
        except (Unavailable, DeadlineExceeded):  # committed: a restarted worker loads it from the manifest
            logger.warning("apply of %s deferred to worker recovery", txn, exc_info=True)
        self._compact_if_needed(collection_id, state)

    def _compact_if_needed(self, collection_id: str, state: _Collection) -> None:
        m = state.manifest
        due = [p for p, part in enumerate(m.partitions) if len(part.segments) >= self.max_segments]
        if not due:
            return
        new = copy.deepcopy(m)
        keys = {p: (new.next_key(f"p{p}/snapshot.parquet"), new.next_key(f"p{p}/index.faiss")) for p in due}
        by_worker = self._owners(keys)
        compact = [self.workers[w].compact.options(concurrency_group=MAINTENANCE).remote(
            collection_id, {p: keys[p] for p in parts}) for w, parts in by_worker.items()]
        for parts in self._call(compact):
            for p, part in parts.items():
                new.partitions[p] = part
        self._commit_manifest(new)
        state.manifest = new
        self._call([self.workers[w].compacted.remote(collection_id, parts) for w, parts in by_worker.items()])
        manifests.gc_collection(self.store, new)

    # ---- search ------------------------------------------------------------

    def search(self, collection_id: str, xq: np.ndarray, k: int, *, nprobe: int = 0,
               min_similarity: float | None = None, timeout_s: float | None = None) -> SearchResults:
        """Top-k candidates for each query.

        Args:
            xq: (nq, d) float32 queries, normalised here.
            k: candidates per query, 1..MAX_K.
            nprobe: IVF lists probed, 0 for the default; at most nlist.
            min_similarity: drop candidates below; None for the collection's calibrated default.
            timeout_s: the caller's remaining deadline.

        Raises:
            InvalidArgument, ResourceExhausted, NotFound, FailedPrecondition (empty collection),
            DeadlineExceeded, Unavailable.
        """
        state = self._get(collection_id)
        m = state.manifest
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be in [1, {MAX_K}], got {k}")
        if xq.ndim != 2 or xq.shape[1] != m.dimension:
            raise InvalidArgument(f"queries: shape {xq.shape}, expected (nq, {m.dimension})")
        if not 1 <= xq.shape[0] <= MAX_QUERIES:
            raise (ResourceExhausted if xq.shape[0] else InvalidArgument)(
                f"queries: {xq.shape[0]} given, 1 to {MAX_QUERIES} per request")
        if nprobe < 0:
            raise InvalidArgument(f"nprobe must be >= 0, got {nprobe}")
        xq = vectors.normalize(xq, what="queries")
        if m.face_count == 0:
            raise FailedPrecondition(f"collection {collection_id!r} is empty: enroll faces before searching")
        started = time.monotonic()
        future = self._batcher.submit((collection_id, k, nprobe), xq)
        try:
            D, I, records = future.result(timeout=timeout_s)
        except FutureTimeout as e:
            future.cancel()
            raise DeadlineExceeded(f"search did not finish within {timeout_s:.3f} s") from e
        if timeout_s is not None and time.monotonic() - started > timeout_s:  # it ran in this thread
            raise DeadlineExceeded(f"search did not finish within {timeout_s:.3f} s")
        calibration = state.calibration
        if min_similarity is None:
            min_similarity = calibration.default_min_similarity if calibration else -1.0
        gallery_size = m.face_count
        fmr = calibration.false_match_rate(D) if calibration else np.full(D.shape, -1.0)
        gfmp = gallery_probability(fmr, gallery_size) if calibration else fmr
        candidates = [[Candidate(records[int(label)], float(D[q, j]), float(fmr[q, j]), float(gfmp[q, j]))
                       for j, label in enumerate(I[q]) if label >= 0 and D[q, j] >= min_similarity]
                      for q in range(I.shape[0])]
        return SearchResults(candidates, gallery_size, calibration, state.live.version)

    def _search_batch(self, key: tuple[str, int, int], xq: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        collection_id, k, nprobe = key
        state = self._get(collection_id)
        try:
            return self._fan_out(state, xq, k, nprobe)
        except StaleIndexVersion:  # an index switch completed between reading `live` and the shards' answer
            return self._fan_out(state, xq, k, nprobe)

    def _fan_out(self, state: _Collection, xq: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray, dict]:
        live = state.live
        Iq = Dq = None
        rerank_k = k
        if live.version:
            collection_depth = tuning.rerank_depth(k)
            nprobe = tuning.nprobe_for(nprobe, collection_depth, live.nlist, state.manifest.face_count)
            Dq, Iq = live.quantizer.search(xq, nprobe)
            rerank_k = tuning.partition_rerank_depth(collection_depth, k, state.manifest.num_partitions)
        request = SearchRequest(state.manifest.collection_id, xq, k, live.version, Iq, Dq, rerank_k)
        with _ray_errors():
            replies = [pickle.loads(reply) for reply in self._fan_out_to_workers(
                pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL), self.call_timeout_s)]
        D, I = merge_topk([(r.D, r.I) for r in replies], k)
        records = {label: record for r in replies for label, record in r.records.items()}
        return D, I, records

    # ---- reads -------------------------------------------------------------

    def get_faces(self, collection_id: str, face_ids: list[str], *, include_embeddings: bool = False
                  ) -> tuple[list[FaceRecord], list[str]]:
        """Returns (faces found in request order, unknown ids)."""
        state = self._get(collection_id)
        if not 1 <= len(face_ids) <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"face_ids: {len(face_ids)} given, 1 to {MAX_IDS_PER_CALL} per request")
        by_worker = self._by_worker(state.manifest.num_partitions, list(dict.fromkeys(face_ids)))
        found = {r.face_id: r for records in self._call(
            [self.workers[w].get_faces.remote(collection_id, ids, include_embeddings) for w, ids in by_worker.items()])
            for r in records}
        return [found[f] for f in dict.fromkeys(face_ids) if f in found], [f for f in face_ids if f not in found]

    def list_faces(self, collection_id: str, max_results: int = 1000, next_token: str = "", *,
                   include_embeddings: bool = False) -> tuple[list[FaceRecord], str]:
        """A page of faces in (partition, slot) order and the token of the next page ("" at the end)."""
        state = self._get(collection_id)
        if not 0 <= max_results <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"max_results must be in [0, {MAX_IDS_PER_CALL}], got {max_results}")
        limit = max_results or 1000
        partition, start = _decode_token(next_token) if next_token else (0, 0)
        P = state.manifest.num_partitions
        faces: list[FaceRecord] = []
        while partition < P and len(faces) < limit:
            worker = self.workers[partition % len(self.workers)]
            page, start = self._call([worker.scan.remote(collection_id, partition, start, limit - len(faces),
                                                         include_embeddings)])[0]
            faces.extend(page)
            if start < 0:
                partition, start = partition + 1, 0
        return faces, _encode_token(partition, start) if partition < P else ""

    def memory_bytes(self, collection_id: str) -> int:
        self._get(collection_id)
        return sum(self._call([w.memory_bytes.remote(collection_id) for w in self.workers]))


@contextlib.contextmanager
def _ray_errors():
    """Ray's failures as errors a caller can act on."""
    try:
        yield
    except ray.exceptions.GetTimeoutError as e:
        raise DeadlineExceeded("shards did not answer in time") from e
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        raise Unavailable(f"a shard is unavailable (restarting?): {e}") from e


def _encode_token(partition: int, start: int) -> str:
    return base64.urlsafe_b64encode(f"{partition}:{start}".encode()).decode()


def _decode_token(token: str) -> tuple[int, int]:
    try:
        partition, start = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return int(partition), int(start)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"next_token {token!r} is not a token this server issued") from e

"""Writes to a collection: all-or-nothing adds and deletes in two phases, and compaction.

Under the collection's write lock: the workers stage a segment object each, the gateway commits the
manifest that names them (the commit point), then the workers make the segments live. A crash at any
point leaves a manifest that names only complete objects; a staged segment no manifest names is garbage.
"""

from __future__ import annotations

import copy
import logging
import uuid

import numpy as np

from cluster.api.limits import MAX_FACE_ID_LENGTH, MAX_FACES_PER_ADD, MAX_IDS_PER_CALL
from cluster.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from cluster.gateway.collections import Collections, CollectionState, by_worker, ids_by_worker, partition_of
from cluster.index import vectors
from cluster.shards.backend import ShardBackend
from cluster.storage import manifest as manifests
from cluster.storage.manifest import CollectionManifest, Segment
from cluster.storage.records import FaceBatch, FaceRecord

logger = logging.getLogger(__name__)



class Writes:
    """Adds, deletes and compactions of collections.

    Args:
        collections: the registry, whose `commit` is the commit point.
        shards: the workers that stage and apply segments.
        max_segments: segments a partition accumulates before it is compacted.
    """

    def __init__(self, collections: Collections, shards: ShardBackend, *, max_segments: int = 64):
        self.collections = collections
        self.shards = shards
        self.max_segments = max_segments

    def add(self, state: CollectionState, records: list[FaceRecord], embeddings: np.ndarray, *,
            skip_existing: bool = False) -> tuple[list[str], list[str]]:
        """Enrolls faces; all or nothing. Returns (added face ids, skipped face ids); see `Gallery.add`."""
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
            collection_id, P, W = m.collection_id, m.num_partitions, self.shards.num_workers
            existing = {f for found in self.shards.call("existing", [
                (w, (collection_id, ids)) for w, ids in ids_by_worker([records[i].face_id for i in keep], P, W).items()])
                for f in found}
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
            segments = {p: Segment(keys[p], "add", len(rows)) for p, rows in rows_by_partition.items()}
            txn = uuid.uuid4().hex
            self._stage(txn, "stage_add", [
                (w, (collection_id, txn, {p: batch.take(rows_by_partition[p]) for p in parts},
                     {p: keys[p] for p in parts}))
                for w, parts in by_worker(rows_by_partition, W).items()])
            self._finish_commit(state, new, segments, txn, len(keep))
        return [records[i].face_id for i in keep], skipped

    def delete(self, state: CollectionState, face_ids: list[str]) -> tuple[list[str], list[str]]:
        """Deletes faces; returns (deleted, unknown) ids."""
        if not 1 <= len(face_ids) <= MAX_IDS_PER_CALL:
            raise (ResourceExhausted if face_ids else InvalidArgument)(
                f"face_ids: {len(face_ids)} given, 1 to {MAX_IDS_PER_CALL} per request")
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            grouped = ids_by_worker(list(dict.fromkeys(face_ids)), new.num_partitions, self.shards.num_workers)
            keys = {p: new.next_key(f"p{p}/delete.parquet") for parts in grouped.values() for p in parts}
            txn = uuid.uuid4().hex
            found_by_worker = self._stage(txn, "stage_delete", [
                (w, (new.collection_id, txn, ids, {p: keys[p] for p in ids})) for w, ids in grouped.items()])
            found = {p: ids for f in found_by_worker for p, ids in f.items()}
            deleted = [i for ids in found.values() for i in ids]
            if deleted:
                segments = {p: Segment(keys[p], "delete", len(ids)) for p, ids in found.items()}
                self._finish_commit(state, new, segments, txn, -len(deleted))
            else:
                self._abort(txn)
        return deleted, [f for f in dict.fromkeys(face_ids) if f not in set(deleted)]

    def _stage(self, txn: str, method: str, calls: list) -> list:
        """The workers' stage calls; any failure aborts the transaction on every worker."""
        try:
            return self.shards.call(method, calls)
        except BaseException:
            self._abort(txn)
            raise

    def _abort(self, txn: str) -> None:
        try:
            self.shards.call_all("abort", txn)
        except Exception:  # staged objects no manifest names are garbage anyway
            logger.warning("abort of %s did not reach every worker", txn, exc_info=True)

    def _finish_commit(self, state: CollectionState, new: CollectionManifest, segments: dict[int, Segment],
                       txn: str, face_delta: int) -> None:
        """Commits staged segments: manifest first, then the workers make them live."""
        for p, segment in segments.items():
            new.partitions[p].segments.append(segment)
        new.face_count += face_delta
        try:
            self.collections.commit(new)
        except Exception as e:
            self._abort(txn)
            raise Unavailable(f"object store write failed: {e}") from e
        state.manifest = new
        try:
            self.shards.call("apply", [(w, (new.collection_id, txn, {p: segments[p] for p in parts}))
                                       for w, parts in by_worker(segments, self.shards.num_workers).items()])
        except (Unavailable, DeadlineExceeded):  # committed: a restarted worker loads it from the manifest
            logger.warning("apply of %s deferred to worker recovery", txn, exc_info=True)
        self._compact_if_needed(state)

    def _compact_if_needed(self, state: CollectionState) -> None:
        """Folds a partition's segments into a snapshot (and its populated index) once it has max_segments
        and they hold at least as many faces as the rest of it, or once it has 16 * max_segments.

        A compaction rewrites the whole partition: by count alone, a collection growing by equal adds
        would rewrite itself every max_segments adds, O(n^2) bytes in all (at 10M faces, tens of times
        its size). Tied to the segments' share, the rewrites of a growing partition form a geometric
        series, as in an LSM tree: each face is rewritten about twice. With a share of a third, 4-6 times,
        which took most of a shard worker's time while a 10M collection was ingested. A restarted worker
        replays at most half of a partition from segments, and the cap bounds the number it reads.
        """
        m = state.manifest
        per_partition = m.face_count / max(m.num_partitions, 1)

        def due(segments: list[Segment]) -> bool:
            if any(s.faces == 0 for s in segments):  # from a manifest that did not record it: by count
                return len(segments) >= self.max_segments
            faces = sum(s.faces for s in segments)
            return (len(segments) >= 16 * self.max_segments
                    or len(segments) >= self.max_segments and faces >= per_partition - faces)

        due = [p for p, part in enumerate(m.partitions) if due(part.segments)]
        if not due:
            return
        new = copy.deepcopy(m)
        keys = {p: (new.next_key(f"p{p}/snapshot.parquet"), new.next_key(f"p{p}/index.faiss")) for p in due}
        groups = by_worker(keys, self.shards.num_workers)
        compacted = self.shards.call("compact", [(w, (m.collection_id, {p: keys[p] for p in parts}))
                                                 for w, parts in groups.items()], maintenance=True)
        for parts in compacted:
            for p, part in parts.items():
                new.partitions[p] = part
        self.collections.commit(new)
        state.manifest = new
        self.shards.call("compacted", [(w, (m.collection_id, parts)) for w, parts in groups.items()])
        manifests.gc_collection(self.collections.store, new)

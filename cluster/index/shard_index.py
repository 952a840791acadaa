"""One partition of a collection: its faces, their vectors and the FAISS index over them.

Faces live in slots ("positions"); a face's FAISS label is
``position * num_partitions + partition``, unique across the collection, so
shards' results merge without translation. Vectors are kept normalised in
fp16; every score, exact or re-ranked, is computed from those values.

Before training a partition searches exactly, over fp16 copies of its vectors
(`IndexScalarQuantizer`, QT_fp16: the same values as a float32 flat index in
half the memory, and no slower at small batches). Afterwards it
holds an IVF-PQ index populated from the collection's shared trained index;
the gateway assigns queries to lists once (`Iq`, `Dq`) and each partition
scans them with `search_preassigned`, then re-ranks its PQ candidates against
the fp16 vectors. Fast-scan (CPU) indexes store faces near a list's border in up
to three lists (cluster/index/spill.py). A deleted face is removed from the index and its slot
marked dead, and re-ranking drops dead slots, so it cannot come back. With a
GPU, each IVF-PQ version also has a copy there that searches run on
(cluster/index/gpu.py).

Records are packed outside Python objects (`FaceTable`), and the fp16 vectors
may be memory-mapped from local disk (`SlotVectors`), so that a partition of
millions of faces costs little more than its PQ codes in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import faiss
import numpy as np
import pyarrow as pa

from cluster.index import gpu, spill
from cluster.index.face_table import FaceTable, resized
from cluster.index.merge import merge_topk
from cluster.index.slot_vectors import SlotVectors
from cluster.storage.records import FaceBatch, FaceRecord, rows_table

logger = logging.getLogger(__name__)

# Bounds the (queries, depth, d) float32 temporary of one re-rank step to 4 MB, which stays in cache,
# where larger steps did not and ran slower (benchmarks/README.md).
_RERANK_FLOATS = 1_000_000


# Stored vectors an exact top-k scores per step: with 201-1,000 queries, steps of 8,192 were as fast as steps of
# 65,536 or faster, in a quarter of the memory (benchmarks/README.md, `exact_topk.py`).
_EXACT_ROWS = 8192


def _top_inner_products(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top-min(k, len(xb)) inner products with the rows of xb, best first, and their row numbers.

    By BLAS either way: faiss's `knn` where it takes BLAS itself (from `distance_compute_blas_threshold` query
    floats, 250 queries at 512-d), and selects the top faster than numpy; a matrix product below that, where faiss
    would take its SIMD kernel instead, 7x slower for 201 queries (benchmarks/README.md, `exact_topk.py`)."""
    k = min(k, xb.shape[0])
    if xq.size >= faiss.cvar.distance_compute_blas_threshold:
        return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return _top_by_matrix_product(xq, xb, k)


def _top_by_matrix_product(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_top_inner_products` by numpy's matrix product (BLAS) and a partial sort, for k <= len(xb)."""
    scores = xq @ xb.T
    top = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    D = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-D, axis=1, kind="stable")
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(top, order, axis=1)


def exact_search(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Searches an exact index with faiss's SIMD kernel only, so that a pair's score never depends on the batch.

    A float32 flat index scores with BLAS instead from `faiss.cvar.distance_compute_blas_threshold`
    query floats per call, and over slices of the database when a call has fewer queries
    than OpenMP threads against a large database. BLAS rounds differently: a face's score
    would depend on the queries batched with it and on how the collection is split across
    shards. Calls of at most 16 queries, each with no more threads than queries, keep to
    the SIMD kernel (tests/test_primitives.py fails otherwise; the thresholds of the faiss
    version it was found with are in benchmarks/README.md). Partitions' exact index holds fp16 codes, which
    faiss scores with that kernel only; the steps keep any exact index to it. Elsewhere (training, coarse
    assignment) BLAS stays on.
    """
    nq, d = xq.shape
    step = max(1, min(16, (faiss.cvar.distance_compute_blas_threshold - 1) // d))
    threads = faiss.omp_get_max_threads()
    parts = []
    try:
        for start in range(0, nq, step):
            chunk = xq[start:start + step]
            faiss.omp_set_num_threads(min(threads, chunk.shape[0]))
            parts.append(index.search(chunk, k))
    finally:
        faiss.omp_set_num_threads(threads)
    if len(parts) == 1:
        return parts[0]
    return np.vstack([D for D, _ in parts]), np.vstack([I for _, I in parts])


def exact_index(dimension: int) -> faiss.Index:
    """The index partitions search exactly before training: inner products over fp16 codes, which hold the stored
    vectors exactly in 2 bytes a dimension, not float32's 4. A collection grows in it until training switches it to
    IVF-PQ: in a 10M-face ingest, to 5.1M faces, ~10 GB as float32 (benchmarks/README.md, `scale.py`)."""
    return faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


class StaleIndexVersion(RuntimeError):
    """A query was assigned with an index version this partition no longer serves (a switch raced it)."""


class ShardIndex:
    """Faces of one partition. Thread-safe: a lock serialises searches and mutations.

    Args:
        dimension: vector dimension.
        partition: this partition's number, 0 <= partition < num_partitions.
        num_partitions: partitions of the collection.
        gpu_device: CUDA device to search IVF-PQ versions on; None: CPU only.
        vectors_dir: a local folder to memory-map the fp16 vectors from; None keeps them in memory.

    Example:
        >>> shard = ShardIndex(4, 0, 1)
        >>> shard.add(FaceBatch([FaceRecord("a")], np.eye(4, dtype=np.float16)[:1]))
        >>> shard.search(np.eye(4, dtype=np.float32)[:1], 1)[1]
        array([[0]])
    """

    def __init__(self, dimension: int, partition: int, num_partitions: int, *, gpu_device: int | None = None,
                 vectors_dir: str | None = None):
        if not 0 <= partition < num_partitions:
            raise ValueError(f"partition {partition} not in [0, {num_partitions})")
        self.d = dimension
        self.partition = partition
        self.num_partitions = num_partitions
        self.version = 0  # 0: exact; otherwise the collection's index version
        self._slot_vectors = SlotVectors(dimension, vectors_dir)
        self._alive = np.empty(0, dtype=bool)
        self._table = FaceTable()
        self._end = 0  # one past the highest slot ever used
        self._index: faiss.Index = self._new_exact()
        self._fp16 = faiss.ScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_fp16)
        self._built: dict[int, faiss.Index] = {}  # built for a version, awaiting activate()
        self._previous: tuple[int, faiss.Index] | None = None  # kept until the gateway has switched too
        self._gpu_device = gpu_device
        self._gpu_copies: dict[int, gpu.GpuCopy] = {}  # by version: the active one, the previous, a built one
        self._lock = threading.RLock()

    def _on_gpu(self, index: faiss.Index) -> bool:
        """Whether searches of this IVF-PQ index run on a GPU copy of it."""
        if self._gpu_device is None:
            return False
        if not gpu.can_copy(index):
            logger.warning("partition %d: a %s index has no GPU form; searched on the CPU until retrained",
                           self.partition, type(index).__name__)
            return False
        return True

    def _new_exact(self) -> faiss.Index:
        return faiss.IndexIDMap(exact_index(self.d))

    # ---- reads -------------------------------------------------------------

    @property
    def _vectors(self) -> np.ndarray:
        return self._slot_vectors.array

    @property
    def size(self) -> int:
        """Faces alive."""
        return self._table.size

    @property
    def next_position(self) -> int:
        return self._end

    def labels(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(positions, dtype=np.int64) * self.num_partitions + self.partition

    def _positions(self, labels: np.ndarray) -> np.ndarray:
        return labels // self.num_partitions

    def contains(self, face_ids: list[str]) -> list[str]:
        """The given ids that are alive here."""
        with self._lock:
            return [f for f in face_ids if self._table.slot_of(f) is not None]

    def records(self, labels: np.ndarray, *, include_embeddings: bool = False) -> list[FaceRecord | None]:
        """Records of the given labels (None for -1 or a dead slot)."""
        with self._lock:
            out: list[FaceRecord | None] = []
            for label in np.asarray(labels).ravel().tolist():
                pos = label // self.num_partitions
                record = self._table.record(pos) if label >= 0 else None
                if record is not None and include_embeddings:
                    record.embedding = self._vectors[pos].astype(np.float32)
                out.append(record)
            return out

    def face_ids(self, labels: np.ndarray) -> list[str | None]:
        """Face ids of the given labels, all >= 0 (None for a dead slot): what a lean search answers with."""
        with self._lock:
            return self._table.face_ids(self._positions(np.asarray(labels).ravel()))

    def get(self, face_ids: list[str], *, include_embeddings: bool = False) -> list[FaceRecord]:
        with self._lock:
            positions = [p for p in map(self._table.slot_of, face_ids) if p is not None]
            return [r for r in self.records(self.labels(positions), include_embeddings=include_embeddings) if r]

    def scan(self, start: int, limit: int, *, include_embeddings: bool = False) -> tuple[list[FaceRecord], int]:
        """Up to `limit` alive records from slot `start` on, and the slot to continue from (-1 at the end)."""
        with self._lock:
            positions = np.flatnonzero(self._alive[start:])[:limit] + start
            records = self.records(self.labels(positions), include_embeddings=include_embeddings)
            more = positions.size == limit and bool(self._alive[positions[-1] + 1:].any()) if positions.size else False
            return [r for r in records if r], int(positions[-1]) + 1 if more else -1

    def vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """fp16 vectors of alive slots (or of the given ones)."""
        with self._lock:
            return self._vectors[np.flatnonzero(self._alive) if positions is None else positions]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """Up to n random alive vectors (float32) and their person_id metadata ("" when absent)."""
        with self._lock:
            alive = np.flatnonzero(self._alive)
            chosen = np.sort(rng.choice(alive, size=min(n, alive.size), replace=False))
            persons = [self._table.record(p).metadata.get("person_id", "") for p in chosen.tolist()]
            return self._vectors[chosen].astype(np.float32), persons

    # ---- search ------------------------------------------------------------

    def search(self, xq: np.ndarray, k: int, *, version: int = 0, Iq: np.ndarray | None = None,
               Dq: np.ndarray | None = None, rerank_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product with normalised queries.

        Args:
            xq: (nq, d) float32, L2-normalised.
            k: results per query.
            version: the index version the gateway assigned `Iq` with; 0 for exact search.
            Iq, Dq: (nq, nprobe) coarse assignment and its scores, for IVF-PQ versions.
            rerank_k: PQ candidates re-ranked per query (IVF-PQ only).

        Returns:
            D (nq, k) similarities and I (nq, k) labels, -1 where there are fewer than k faces.

        Raises:
            ValueError: xq is not (nq, d) with this partition's d.
            StaleIndexVersion: `version` is neither the active version nor the one before it.
        """
        if xq.ndim != 2 or xq.shape[1] != self.d:
            raise ValueError(f"xq must be (nq, {self.d}) for this partition's dimension {self.d}, got shape {xq.shape}")
        with self._lock:
            if version == 0:
                return exact_search(self._versioned(version), xq, k)
            return self._rerank(xq, self._pq_candidates(xq, version, Iq, Dq, rerank_k or k), k)

    def _versioned(self, version: int) -> faiss.Index:
        if version == self.version:
            return self._index
        if self._previous is not None and self._previous[0] == version:
            return self._previous[1]
        raise StaleIndexVersion(f"partition {self.partition} serves index version {self.version}, asked {version}")

    def _pq_candidates(self, xq: np.ndarray, version: int, Iq: np.ndarray, Dq: np.ndarray, depth: int) -> np.ndarray:
        """(nq, depth) labels of the PQ top-`depth` in the lists Iq, best first (-1 for none); under the lock."""
        index = self._versioned(version)
        nprobe = Iq.shape[1]
        copy = self._gpu_copies.get(version)
        if copy is not None and copy.can_search(depth, nprobe):
            labels = copy.search(xq, depth, nprobe)
            return gpu.first_live(labels, self._slots_and_liveness(labels)[1], depth)
        index.nprobe = nprobe  # search_preassigned scans Iq's columns; the lock makes this safe
        if spill.spills(index):  # a face may come from each of its lists: COPIES times the candidates, one of each
            return spill.first_unique(index.search_preassigned(xq, spill.COPIES * depth, Iq, Dq)[1], depth)
        return index.search_preassigned(xq, depth, Iq, Dq)[1]

    def ranked_candidates(self, xq: np.ndarray, depth: int, *, version: int, Iq: np.ndarray, Dq: np.ndarray,
                          below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The PQ top-`depth` of each query in PQ order, and their re-ranked scores (-inf for none or deleted):
        what `search` re-ranks, for measuring recall at every depth up to `depth` at once (cluster/index/recall.py).

        Args:
            below: count only the faces in slots below this (those `exact_topk` saw), -inf for the others.
        """
        with self._lock:
            candidates = self._pq_candidates(xq, version, Iq, Dq, depth)
            scores = self._scores(xq, candidates)
        if below is not None:
            scores[self._positions(candidates) >= below] = -np.inf
        return candidates, scores

    def exact_topk(self, xq: np.ndarray, k: int, *, below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the alive faces (in slots below `below`) by their stored fp16 vectors, with BLAS over
        all the queries at once: the truth recall is measured against, not a serving path (see `exact_search`
        for why that differs).

        With BLAS for any number of queries (`_top_inner_products`): faiss alone scored the 201 queries of a 10M
        collection's measurement with its SIMD kernel, 40 s per 1M faces on one core where this took 5.6 s."""
        with self._lock:
            positions = np.flatnonzero(self._alive[:below])
            stored = self._vectors  # replaced, never edited in place, when it grows
        codes = stored.view(np.uint8)
        results = [(np.full((xq.shape[0], k), -np.inf, np.float32), np.full((xq.shape[0], k), -1, np.int64))]
        for start in range(0, positions.size, _EXACT_ROWS):
            chunk = positions[start:start + _EXACT_ROWS]
            xb = self._fp16.decode(codes[chunk]).reshape(chunk.size, self.d)
            D, I = _top_inner_products(xq, xb, k)
            results.append((D, self.labels(chunk)[I]))
        return merge_topk(results, k)

    def _slots_and_liveness(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slot of each label (0 for -1), and whether it holds a live face."""
        positions = np.where(labels >= 0, self._positions(labels), 0)
        return positions, (labels >= 0) & self._alive[positions]

    def _scores(self, xq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(nq, depth) inner products of each query with its candidates' stored vectors, -inf for none or dead."""
        nq, depth = candidates.shape
        scores = np.empty((nq, depth), dtype=np.float32)
        codes = self._vectors.view(np.uint8)
        chunk = max(1, _RERANK_FLOATS // max(depth * self.d, 1))
        for start in range(0, nq, chunk):
            labels = candidates[start:start + chunk]
            positions, valid = self._slots_and_liveness(labels)
            # faiss decodes fp16 with SIMD, faster than numpy's astype (benchmarks/README.md)
            stored = self._fp16.decode(np.take(codes, positions.ravel(), axis=0)).reshape(len(labels), depth, self.d)
            part = np.matmul(stored, xq[start:start + chunk, :, None])[:, :, 0]
            part[~valid] = -np.inf
            scores[start:start + len(labels)] = part
        return scores

    def _rerank(self, xq: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq = candidates.shape[0]
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        scores = self._scores(xq, candidates)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        D[:, :top.shape[1]] = top
        I[:, :top.shape[1]] = np.where(np.isfinite(top), np.take_along_axis(candidates, order, axis=1), -1)
        return D, I

    # ---- mutations ---------------------------------------------------------

    def add(self, batch: FaceBatch, *, index: bool = True) -> None:
        """Adds faces at batch.positions (or the next free slots). Ids must be new here.

        Args:
            index: also add them to the live index; False when loading a partition whose index is
                installed or rebuilt afterwards (`set_index`, `rebuild_exact`), so as not to index it twice.
        """
        with self._lock:
            n = len(batch)
            if batch.positions is None:
                batch.positions = np.arange(self.next_position, self.next_position + n, dtype=np.int64)
            if not n:
                return
            end = int(batch.positions.max()) + 1
            if end > self._slot_vectors.capacity:
                self._slot_vectors.grow(end)
                self._alive = resized(self._alive, self._slot_vectors.capacity)
            self._end = max(self._end, end)
            self._table.put(batch.records, batch.positions)
            self._vectors[batch.positions] = batch.vectors
            self._alive[batch.positions] = True
            if index:
                x, labels = batch.vectors.astype(np.float32), self.labels(batch.positions)
                spill.add(self._index, x, labels)
                if self.version in self._gpu_copies:
                    self._gpu_copies[self.version].add(x, labels)

    def delete(self, face_ids: list[str]) -> list[str]:
        """Deletes the given ids; returns those that were here."""
        with self._lock:
            found, positions = [], []
            for face_id in dict.fromkeys(face_ids):
                slot = self._table.remove(face_id)
                if slot is not None:
                    found.append(face_id)
                    positions.append(slot)
            positions = np.array(positions, dtype=np.int64)
            if positions.size:
                self._alive[positions] = False
                self._index.remove_ids(faiss.IDSelectorBatch(self.labels(positions)))
                if self.version in self._gpu_copies:
                    self._gpu_copies[self.version].removed(positions.size, self._index)
            return found

    # ---- index versions ----------------------------------------------------

    def build(self, version: int, trained_index: faiss.Index) -> faiss.Index:
        """Populates a copy of the collection's trained index with this partition's faces.

        Runs without blocking searches; the gateway holds writes to the collection
        until `activate`, so the faces do not change meanwhile.
        """
        index = faiss.clone_index(trained_index)
        with self._lock:
            positions = np.flatnonzero(self._alive)
        for start in range(0, positions.size, 65_536):
            chunk = positions[start:start + 65_536]
            spill.add(index, self._vectors[chunk].astype(np.float32), self.labels(chunk))
        copy = gpu.GpuCopy(index, self._gpu_device) if self._on_gpu(index) else None
        with self._lock:
            if copy is not None:
                self._drop_gpu_copies([version])
                self._gpu_copies[version] = copy
            self._built[version] = index
        return index

    def activate(self, version: int) -> None:
        """Switches searches to a built version."""
        with self._lock:
            if version == self.version:
                return
            self._previous = (self.version, self._index)
            self._index = self._built.pop(version)
            self.version = version
            self._drop_gpu_copies(list(self._built))
            self._built.clear()

    def keep_serving(self, previous: ShardIndex) -> None:
        """Also serves the version `previous` (the same partition, loaded before) had active, until
        `retire_previous`: a worker that reloads a partition for a new index version still answers queries
        the gateway assigned with the old one. Slots are the same in both (snapshots keep them)."""
        with previous._lock:
            version, index = previous.version, previous._index
        with self._lock:
            if version != self.version:
                self._previous = (version, index)

    def retire_previous(self) -> None:
        """Frees the index of the version before the active one, once no query can ask for it."""
        with self._lock:
            if self._previous is not None:
                self._drop_gpu_copies([self._previous[0]])
            self._previous = None

    def set_index(self, version: int, index: faiss.Index) -> None:
        """Installs a populated index (loaded from a snapshot) as the live one."""
        copy = self._gpu_copies.get(version) if self._built.get(version) is index else None
        if copy is None and self._on_gpu(index):
            copy = gpu.GpuCopy(index, self._gpu_device)
        with self._lock:
            self._index, self.version = index, version
            self._built.pop(version, None)
            self._drop_gpu_copies([v for v, c in self._gpu_copies.items() if c is not copy])
            if copy is not None:
                self._gpu_copies[version] = copy

    def rebuild_exact(self) -> None:
        """Rebuilds the exact index from the alive slots (after loading a snapshot)."""
        with self._lock:
            self._index = self._new_exact()
            self.release_gpu_copies()
            positions = np.flatnonzero(self._alive)
            if positions.size:
                self._index.add_with_ids(self._vectors[positions].astype(np.float32), self.labels(positions))
            self.version = 0

    def release_gpu_copies(self) -> None:
        """Frees this partition's GPU memory (its collection is being dropped, or searched exactly)."""
        with self._lock:
            self._drop_gpu_copies(list(self._gpu_copies))

    def _drop_gpu_copies(self, versions: list[int]) -> None:
        for version in versions:
            copy = self._gpu_copies.pop(version, None)
            if copy is not None:
                copy.release()

    def snapshot(self, rows: int = 65_536) -> Iterator[pa.Table]:
        """Every alive face with its slot, as the rows of a snapshot object (`rows_table`), up to `rows` at a time.

        The faces are those alive when it is called; the gateway holds writes to the collection
        while a snapshot is written, so none changes meanwhile.
        """
        with self._lock:
            positions = np.flatnonzero(self._alive)
        for start in range(0, positions.size, rows):
            chunk = positions[start:start + rows]
            with self._lock:
                part = rows_table(chunk, self._table.columns(chunk), self._vectors[chunk])
            yield part

    def index_bytes(self) -> bytes:
        with self._lock:
            return faiss.serialize_index(self._index).tobytes()

    def memory_bytes(self) -> int:
        """Bytes held in memory by vectors, codes, ids and records (memory-mapped vectors excluded)."""
        with self._lock:
            vectors = 0 if self._slot_vectors.mapped else self.size * self.d * 2
            records = self._table.memory_bytes()
            if self.version == 0:
                exact = faiss.downcast_index(self._index.index)
                return vectors + records + exact.ntotal * (exact.code_size + 8)
            ivf = faiss.extract_index_ivf(self._index)
            return vectors + records + ivf.ntotal * (ivf.code_size + 8)

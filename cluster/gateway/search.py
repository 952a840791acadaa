"""The search path: concurrent queries batched, assigned to IVF lists once, fanned out, merged, calibrated.

Searches never take a collection's write lock. A query is assigned to IVF lists here, once, with the
collection's live quantizer, in the caller's thread before it joins a batch: a batch's assignment then runs
while the shards search the batch before it, instead of holding the one dispatch slot (benchmarks/README.md).
Every worker searches its partitions with that assignment, and the workers' top-k are merged exactly. An
index switch that lands between the assignment and the workers' answer is detected by version and the batch
is assigned and searched again.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from cluster.api.limits import MAX_K, MAX_QUERIES
from cluster.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted
from cluster.gateway.admission import QueryAdmission
from cluster.gateway.batching import QueryBatcher
from cluster.gateway.collections import Collections, CollectionState, default_fpir, partitions_of_workers
from cluster.index import tuning, vectors
from cluster.index.calibration import Calibration, gallery_probability
from cluster.index.merge import merge_topk
from cluster.index.shard_index import StaleIndexVersion
from cluster.shards.backend import ShardBackend
from cluster.shards.protocol import SearchRequest
from cluster.storage.manifest import CollectionManifest
from cluster.storage.records import FaceRecord

# Four full requests: enough to keep the one dispatch slot busy with the next batch ready behind it, few enough
# that an admitted query waits for a handful of batches, not for minutes (benchmarks/README.md, overload).
DEFAULT_MAX_QUEUED_QUERIES = 4 * MAX_QUERIES

# Called after each fan-out with its duration and each worker's own search time, in worker order (seconds).
FanOutObserver = Callable[[float, list[float]], None]

# A no-op until the process installs an OpenTelemetry SDK tracer provider (and, with it, an exporter).
_tracer = trace.get_tracer(__name__)


@dataclass
class Candidate:
    """A face that scored high enough to be shown for human review: never an identification."""

    record: FaceRecord
    similarity: float
    false_match_rate: float  # -1 when uncalibrated
    gallery_false_match_probability: float
    false_match_rate_is_bound: bool = False  # above every impostor measured: both rates are 95 % upper bounds


@dataclass(frozen=True)
class Threshold:
    """The similarity threshold a search or compare applied, and the 95 % upper bound on its FPIR (-1: uncalibrated)."""

    similarity: float
    fpir_bound: float = -1.0


def choose_threshold(calibration: Calibration | None, gallery_size: int, *, min_similarity: float | None = None,
                     target_fpir: float | None = None, default_fpir: float = 0.0) -> Threshold:
    """The threshold of a search: `min_similarity` as given, else the one `target_fpir` gives at `gallery_size`
    faces, else the one `default_fpir` gives (when > 0), else the calibration's fixed default (-1: none).

    A target FPIR becomes a threshold through the calibration's upper bound on the false-match rate
    (`Calibration.threshold_for_fpir`), so the threshold rises as the gallery grows.

    Raises:
        InvalidArgument: both min_similarity and target_fpir, target_fpir outside (0, 1), min_similarity outside
            [-1, 1].
        FailedPrecondition: a target_fpir without a calibration.
    """
    check_threshold_args(calibration, min_similarity=min_similarity, target_fpir=target_fpir)
    if min_similarity is not None:
        return Threshold(min_similarity, calibration.fpir_bound(min_similarity, gallery_size) if calibration else -1.0)
    if calibration is None:
        return Threshold(-1.0)
    fpir = target_fpir or default_fpir
    if fpir:
        chosen = calibration.threshold_for_fpir(fpir, gallery_size)
        return Threshold(chosen.similarity, chosen.fpir_bound)
    similarity = calibration.default_min_similarity
    return Threshold(similarity, calibration.fpir_bound(similarity, gallery_size))


def check_threshold_args(calibration: Calibration | None, *, min_similarity: float | None,
                         target_fpir: float | None) -> None:
    """The checks of `choose_threshold`, for a request to fail before any work is done."""
    if target_fpir is not None and min_similarity is not None:
        raise InvalidArgument("give min_similarity or target_fpir, not both")
    if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
        raise InvalidArgument(f"min_similarity must be a cosine similarity in [-1, 1], got {min_similarity}")
    if target_fpir is not None and not 0.0 < target_fpir < 1.0:
        raise InvalidArgument(f"target_fpir must be in (0, 1), got {target_fpir}")
    if target_fpir is not None and calibration is None:
        raise FailedPrecondition("target_fpir needs a calibrated collection (raw-embedding collections calibrate "
                                 "once they hold 200 faces, or by SetCalibration): give min_similarity instead")


@dataclass(frozen=True)
class BatchKey:
    """What searches must have in common to share one fan-out."""

    collection_id: str
    k: int
    version: int  # the index version the queries were assigned to lists with; 0: searched exactly
    lists: int  # IVF lists each query was assigned to (its effective nprobe); 0 when exact
    rerank_k: int  # PQ candidates each partition re-ranks
    allow_partial: bool  # a complete search must fail when a worker is away, so the two never share
    ids_only: bool
    nprobe: int  # as asked (0: the measured or default one) and the measured re-rank depth: what a
    depth: int  # search assigned again after an index switch is assigned with


@dataclass
class Replies:
    """What the shard workers answered a batch, still pickled: decoded and merged once the dispatch slot is
    free, so that the shards search the next batch meanwhile."""

    state: CollectionState
    raw: list  # each worker's pickled SearchReply, in worker order; None for a worker skipped (allow_partial)
    elapsed_s: float  # the fan-out, for the observer


@dataclass
class PackedCandidates:
    """A lean search's candidates: flat arrays, query after query, best first; no object per candidate."""

    counts: np.ndarray  # (nq,) int: candidates of each query
    face_ids: list[str]  # counts.sum() face ids
    similarities: np.ndarray  # (counts.sum(),) float32
    gallery_false_match_probabilities: np.ndarray  # (counts.sum(),) float64; -1 when uncalibrated


@dataclass
class SearchResults:
    candidates: list[list[Candidate]]  # per query, best first; empty for a lean (ids_only) search
    gallery_size: int
    calibration: Calibration | None
    index_version: int
    # Partitions whose workers could not answer, ascending: only ever non-empty when the search allowed
    # partial results; their faces are missing from the candidates.
    missing_partitions: list[int] = field(default_factory=list)
    threshold: Threshold = Threshold(-1.0)  # what candidates were held to
    default_fpir: float = 0.0  # the collection's default target FPIR (0: none), for its Calibration message
    packed: PackedCandidates | None = None  # the candidates of a lean (ids_only) search

    @property
    def partial(self) -> bool:
        return bool(self.missing_partitions)


class SearchPath:
    """Top-k search of collections over the shard workers.

    Args:
        collections: the registry the collections' live state is read from.
        shards: the workers searched.
        call_timeout_s: bound on one fan-out.
        max_queued_queries: queries held at once, queued or in flight; a search that would exceed it is
            refused at once with ResourceExhausted. At least MAX_QUERIES, so that any valid request can be admitted.
        fan_out_observer: told the duration of each fan-out and of each worker's search (for metrics).
    """

    def __init__(self, collections: Collections, shards: ShardBackend, *, call_timeout_s: float,
                 max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES, fan_out_observer: FanOutObserver | None = None):
        if max_queued_queries < MAX_QUERIES:
            raise ValueError(f"max_queued_queries must be >= {MAX_QUERIES} (the queries of one request), "
                             f"got {max_queued_queries}")
        self.collections = collections
        self.shards = shards
        self.call_timeout_s = call_timeout_s
        self.admission = QueryAdmission(max_queued_queries)
        self._fan_out_observer = fan_out_observer
        self._batcher = QueryBatcher(self._search_batch, finish_fn=self._merge_batch)
        # collection -> (the SearchTuning chosen from, the setting chosen for the collection's own target)
        self._chosen: dict[str, tuple[object, tuning.SearchPoint]] = {}

    def close(self) -> None:
        self._batcher.close()

    def search(self, state: CollectionState, xq: np.ndarray, k: int, *, nprobe: int = 0,
               min_similarity: float | None = None, target_fpir: float | None = None, timeout_s: float | None = None,
               allow_partial: bool = False, target_recall: float = 0.0, ids_only: bool = False) -> SearchResults:
        """Top-k candidates for each query; see `Gallery.search`."""
        m = state.manifest
        # Checked before the fan-out; the threshold itself is chosen at the size the search answers from.
        check_threshold_args(state.calibration, min_similarity=min_similarity, target_fpir=target_fpir)
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be in [1, {MAX_K}], got {k}")
        if xq.ndim != 2 or xq.shape[1] != m.dimension:
            raise InvalidArgument(f"queries: shape {xq.shape}, expected (nq, {m.dimension})")
        if not 1 <= xq.shape[0] <= MAX_QUERIES:
            raise (ResourceExhausted if xq.shape[0] else InvalidArgument)(
                f"queries: {xq.shape[0]} given, 1 to {MAX_QUERIES} per request")
        if nprobe < 0:
            raise InvalidArgument(f"nprobe must be >= 0, got {nprobe}")
        if not 0.0 <= target_recall <= 1.0:  # NaN fails both
            raise InvalidArgument(f"target_recall must be in (0, 1], or 0 for the collection's, got {target_recall}")
        xq = vectors.normalize(xq, what="queries")
        if m.face_count == 0:
            raise FailedPrecondition(f"collection {m.collection_id!r} is empty: enroll faces before searching")
        nq = xq.shape[0]
        self.admission.admit(nq)  # ResourceExhausted at once when the gateway holds too many queries
        started = time.monotonic()
        try:
            nprobe, depth = self.search_params(state, nprobe, target_recall)
            key, Iq, Dq = self._assign(state, xq, k, nprobe, depth, allow_partial, ids_only)
            future = self._batcher.submit(key, xq, Iq, Dq)
        except BaseException:
            self.admission.release(nq)
            raise
        # Released when the queries leave the gateway: answered, failed, or cancelled while queued. A caller
        # that stops waiting does not release queries that are still being searched: they still cost the shards.
        future.add_done_callback(lambda _: self.admission.release(nq))
        try:
            D, I, records, missing = future.result(timeout=timeout_s)
        except FutureTimeout as e:
            future.cancel()
            raise DeadlineExceeded(f"search did not finish within {timeout_s:.3f} s") from e
        if timeout_s is not None and time.monotonic() - started > timeout_s:  # it ran in this thread
            raise DeadlineExceeded(f"search did not finish within {timeout_s:.3f} s")
        calibration = state.calibration
        gallery_size = m.face_count
        threshold = choose_threshold(calibration, gallery_size, min_similarity=min_similarity,
                                     target_fpir=target_fpir, default_fpir=default_fpir(m))
        if ids_only:  # array work only: the shown candidates' ids gathered at once, no object per candidate
            shown = (I >= 0) & (D >= threshold.similarity)  # merged best first: a row's shown candidates lead it
            D_shown = D[shown]
            gfmp = (gallery_probability(calibration.false_match_rate(D_shown), gallery_size) if calibration
                    else np.full(D_shown.shape, -1.0))
            packed = PackedCandidates(shown.sum(axis=1), records[shown].tolist(),
                                      D_shown.astype(np.float32), np.asarray(gfmp, dtype=np.float64))
            return SearchResults([], gallery_size, calibration, state.live.version, missing, threshold, default_fpir(m),
                                 packed)
        fmr = calibration.false_match_rate(D) if calibration else np.full(D.shape, -1.0)
        gfmp = gallery_probability(fmr, gallery_size) if calibration else fmr
        bound = calibration.false_match_rate_is_bound(D) if calibration else np.zeros(D.shape, bool)
        candidates = [[Candidate(records[q, j], float(D[q, j]), float(fmr[q, j]), float(gfmp[q, j]),
                                 bool(bound[q, j]))
                       for j, label in enumerate(I[q]) if label >= 0 and D[q, j] >= threshold.similarity]
                      for q in range(I.shape[0])]
        return SearchResults(candidates, gallery_size, calibration, state.live.version, missing, threshold,
                             default_fpir(m))

    def search_params(self, state: CollectionState, nprobe: int, target_recall: float) -> tuple[int, int]:
        """(nprobe, re-rank depth for top-10) of a search: the cheapest measured to reach the target recall
        (0: the collection's); a requested nprobe overrides the measured one. (nprobe, 0), the defaults of
        `tuning`, where the live index has not been measured (yet) or the collection is searched exactly."""
        m = state.manifest
        measured = m.search_tuning
        if measured is None or not state.live.version or measured.index_version != state.live.version:
            return nprobe, 0
        if target_recall:  # not cached: a request may ask any number
            chosen = tuning.choose_search_params(tuned_points(m, state.live.version), target_recall, search_cost(m))
            return nprobe or chosen.nprobe, chosen.rerank_depth
        cached = self._chosen.get(m.collection_id)
        if cached is None or cached[0] is not measured:  # chosen again once the table changes
            cached = (measured, tuning.choose_search_params(tuned_points(m, state.live.version), m.target_recall,
                                                            search_cost(m)))
            self._chosen[m.collection_id] = cached
        return nprobe or cached[1].nprobe, cached[1].rerank_depth

    def _assign(self, state: CollectionState, xq: np.ndarray, k: int, nprobe: int, depth: int, allow_partial: bool,
                ids_only: bool) -> tuple[BatchKey, np.ndarray, np.ndarray]:
        """(the key of the fan-outs the queries may share, their (nq, lists) IVF lists and coarse scores) under
        the live index; lists 0 (empty arrays) when the collection is searched exactly."""
        live, m = state.live, state.manifest
        if not live.version:
            nq = xq.shape[0]
            return (BatchKey(m.collection_id, k, 0, 0, k, allow_partial, ids_only, nprobe, depth),
                    np.empty((nq, 0), np.int64), np.empty((nq, 0), np.float32))
        collection_depth = tuning.rerank_depth(k, depth)
        lists = tuning.nprobe_for(nprobe, collection_depth, live.nlist, m.face_count)
        Dq, Iq = live.quantizer.search(xq, lists)
        rerank_k = tuning.partition_rerank_depth(collection_depth, k, m.num_partitions)
        key = BatchKey(m.collection_id, k, live.version, lists, rerank_k, allow_partial, ids_only, nprobe, depth)
        return key, Iq, Dq

    def _search_batch(self, key: BatchKey, xq: np.ndarray, Iq: np.ndarray, Dq: np.ndarray) -> Replies:
        """The workers' replies to a batch, still pickled: searched while the batcher's dispatch slot is held."""
        state = self.collections.get(key.collection_id)
        try:
            return self._fan_out(state, key, xq, Iq, Dq)
        except StaleIndexVersion:  # an index switch completed between the assignment and the shards' answer
            key, Iq, Dq = self._assign(state, xq, key.k, key.nprobe, key.depth, key.allow_partial, key.ids_only)
            return self._fan_out(state, key, xq, Iq, Dq)

    def _fan_out(self, state: CollectionState, key: BatchKey, xq: np.ndarray, Iq: np.ndarray, Dq: np.ndarray
                 ) -> Replies:
        assigned = key.version != 0
        request = SearchRequest(key.collection_id, xq, key.k, key.version, Iq if assigned else None,
                                Dq if assigned else None, key.rerank_k, key.ids_only)
        with _tracer.start_as_current_span("gallery.search.fan_out", attributes={
                "gallery.collection_id": request.collection_id, "gallery.queries": xq.shape[0], "gallery.k": key.k,
                "gallery.index_version": key.version, "gallery.shard_workers": self.shards.num_workers}):
            started = time.perf_counter()
            raw = self.shards.search(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL), self.call_timeout_s,
                                     skip_unavailable=key.allow_partial, collection_id=request.collection_id)
        return Replies(state, raw, time.perf_counter() - started)

    def _merge_batch(self, key: BatchKey, replies: Replies) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(D, I, the records aligned with I (face ids when ids_only), partitions missing) of the batch."""
        skipped = [w for w, reply in enumerate(replies.raw) if reply is None]
        answers = [pickle.loads(reply) for reply in replies.raw if reply is not None]
        if self._fan_out_observer is not None and not skipped:  # it reports every worker, in worker order
            self._fan_out_observer(replies.elapsed_s, [a.search_s for a in answers])
        D, I, records = merge_topk([(a.D, a.I, a.records) for a in answers], key.k)
        num_partitions = replies.state.manifest.num_partitions
        return D, I, records, partitions_of_workers(skipped, num_partitions, self.shards.num_workers)


def search_cost(m: CollectionManifest):
    """The cost function `tuning.choose_search_params` compares a collection's measured settings by."""
    return lambda p: tuning.search_cost(p.nprobe, p.rerank_depth, nlist=m.nlist, num_vectors=m.face_count,
                                        dimension=m.dimension, pq_m=m.pq_m, pq_bits=m.pq_bits)


def tuned_points(m: CollectionManifest, live_version: int) -> list[tuning.SearchPoint]:
    """The settings measured for the live index version; [] when it has not been measured (yet)."""
    t = m.search_tuning
    if t is None or not live_version or t.index_version != live_version:
        return []
    return [tuning.SearchPoint(int(p[0]), int(p[1]), *map(float, p[2:4])) for p in t.points]


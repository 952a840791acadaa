"""Index maintenance of a collection, off the request path: training IVF-PQ and calibrating scores.

`Maintenance` runs in the background after writes: a collection trains when it
first reaches its threshold and retrains when it outgrows its quantizer
(`tuning.should_train`); a collection of raw embeddings re-estimates its
impostor distribution as it grows. Training samples the shards, trains where
the shard backend runs training (on Ray, a low-priority task), then has every
partition build its index while searches continue on the old one; writes wait
for the switch.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np

from cluster.api.limits import MIN_FACES_TO_TRAIN
from cluster.errors import FailedPrecondition, InvalidArgument, NotFound
from cluster.gateway.collections import Collections, CollectionState, LiveIndex, by_worker
from cluster.gateway.search import search_cost
from cluster.index import recall, tuning
from cluster.index.calibration import Calibration, impostor_scores
from cluster.index.merge import merge_topk
from cluster.index.training import ivfpq_factory, load_index
from cluster.shards.backend import ShardBackend
from cluster.storage import manifest as manifests
from cluster.storage.manifest import CollectionManifest, SearchTuning

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLE = 2000  # faces sampled for gallery calibration: ~2M impostor pairs
CALIBRATE_FROM = 200  # faces before a raw collection is first calibrated
MEASURE_AGAIN_GROWTH = 2.0  # a trained collection measures its recall again once it has grown this much


class Maintenance:
    """Training and calibration of collections, in a background thread per collection.

    Args:
        collections: the registry (collection states, the commit point, the store).
        shards: the workers that sample, build and switch indexes, and train them (`ShardBackend.train`).
        background: start maintenance after writes; off, it runs only when `train` or `calibrate` is called.
    """

    def __init__(self, collections: Collections, shards: ShardBackend, *, background: bool = True):
        self.collections = collections
        self.shards = shards
        self.background = background

    def join(self, timeout_s: float | None = None) -> bool:
        """Waits for every collection's background maintenance to end, at most timeout_s in all; False if
        some is still running."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for state in self.collections.states():
            if state.maintenance is not None:
                state.maintenance.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if state.maintenance.is_alive():
                    return False
        return True

    def start_if_due(self, state: CollectionState) -> None:
        """Starts training or calibration in the background when the collection has grown enough (after a
        write, or at start when a stop interrupted it)."""
        if not self.background or (state.maintenance and state.maintenance.is_alive()):
            return
        m = state.manifest
        if self._needs_training(m) or self._needs_calibration(m) or self._needs_measuring(m):
            state.maintenance = threading.Thread(target=self._maintain_now, args=(m.collection_id,),
                                                 name=f"maintain-{m.collection_id}", daemon=True)
            state.maintenance.start()

    def wait(self, collection_id: str, timeout_s: float | None = None) -> bool:
        """Waits until background training or calibration of the collection is done; False on timeout."""
        thread = self.collections.get(collection_id).maintenance
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def _needs_training(self, m: CollectionManifest) -> bool:
        return tuning.should_train(m.face_count, m.trained_on, m.train_threshold)

    def _needs_measuring(self, m: CollectionManifest) -> bool:
        """A measured index whose collection has doubled since: its lists are longer and its faces have more
        neighbours than when it was measured (a collection measured at 2.4M faces of a 10M ingest chose to
        probe every list, as its faces had few true neighbours yet; benchmarks/README.md, `scale.py`)."""
        t = m.search_tuning
        return bool(m.index_version and t and t.index_version == m.index_version and t.faces
                    and m.face_count >= MEASURE_AGAIN_GROWTH * t.faces)

    def _needs_calibration(self, m: CollectionManifest) -> bool:
        # A calibration a job measured on labelled faces (SetCalibration) is kept: pairs of the gallery's own faces,
        # whose persons are mostly unknown, are the weaker estimate.
        return (not m.embedding_model and m.calibration_source != "job" and m.face_count >= CALIBRATE_FROM
                and m.face_count >= 4 * m.calibrated_on)

    def _maintain_now(self, collection_id: str) -> None:
        try:
            while True:  # writes during a step may make another one due
                m = self.collections.get(collection_id).manifest
                if self._needs_training(m):
                    self.train(collection_id)
                elif self._needs_calibration(m):
                    self.calibrate(collection_id)
                elif self._needs_measuring(m):
                    self.measure(collection_id)
                else:
                    return
        except NotFound:
            return
        except Exception:
            logger.exception("maintenance of %s failed; it is retried after the next write", collection_id)

    def _sample(self, collection_id: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        state = self.collections.get(collection_id)
        sizes = {p: s for per_worker in self.shards.call_all("sizes", collection_id) for p, s in per_worker.items()}
        total = sum(sizes.values())
        want = {p: int(np.ceil(n * s / total)) for p, s in sizes.items() if s}
        calls = []
        for w, parts in by_worker(range(state.manifest.num_partitions), self.shards.num_workers).items():
            mine = {p: want[p] for p in parts if p in want}
            if mine:
                calls.append((w, (collection_id, mine, seed)))
        samples = self.shards.call("sample", calls, maintenance=True)
        return np.concatenate([x for x, _ in samples]), [pid for _, pids in samples for pid in pids]

    def calibrate(self, collection_id: str) -> Calibration:
        """Re-estimates a raw collection's impostor distribution from pairs of its own faces."""
        state = self.collections.get(collection_id)
        xs, persons = self._sample(collection_id, CALIBRATION_SAMPLE, seed=int(time.time()))
        calibration = Calibration.from_scores(impostor_scores(xs, persons), source="gallery")
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            new.calibration = new.next_key("calibration.npz")
            new.calibrated_on, new.calibration_source = new.face_count, "gallery"
            self.collections.store.put(new.calibration, calibration.to_bytes())
            self.collections.commit(new)
            state.manifest, state.calibration = new, calibration
            manifests.gc_collection(self.collections.store, new)
        return calibration

    def set_calibration(self, collection_id: str, calibration: Calibration) -> None:
        """Stores a calibration measured by a job on labelled faces; the collection uses it from now on."""
        if calibration.source != "job":
            raise InvalidArgument(f"a stored calibration must come from a job, got source {calibration.source!r}")
        state = self.collections.get(collection_id)
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            new.calibration = new.next_key("calibration.npz")
            new.calibrated_on, new.calibration_source = new.face_count, "job"
            self.collections.store.put(new.calibration, calibration.to_bytes())
            self.collections.commit(new)
            state.manifest, state.calibration = new, calibration
            manifests.gc_collection(self.collections.store, new)
        logger.info("%s: calibration from a job, %d impostor pairs", collection_id, calibration.n_pairs)

    def train(self, collection_id: str) -> int:
        """Trains IVF-PQ on a sample and switches every partition to it; searches go on meanwhile.

        Writes to the collection wait while partitions build their indexes.

        Returns:
            The new index version.
        """
        state = self.collections.get(collection_id)
        m = state.manifest
        if m.face_count < MIN_FACES_TO_TRAIN:
            raise FailedPrecondition(f"collection {collection_id!r} has {m.face_count} faces: IVF-PQ needs at least "
                                     f"{MIN_FACES_TO_TRAIN} to train on; smaller collections are searched exactly")
        nlist = tuning.nlist_for(m.face_count)
        pq_bits = tuning.pq_bits_for(any(d != "cpu" for d in self.shards.call_all("device")))
        pq_m = tuning.pq_m_for(m.dimension, pq_bits)
        xt, persons = self._sample(collection_id, tuning.training_sample_size(m.face_count, nlist), seed=m.sequence)
        trained_bytes = self.shards.train(xt, nlist, pq_m, pq_bits)
        calibration = None
        if not m.embedding_model and m.calibration_source != "job":
            keep = slice(0, CALIBRATION_SAMPLE)
            calibration = Calibration.from_scores(impostor_scores(xt[keep], persons[keep]), source="gallery")
        store = self.collections.store
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            version = new.index_version + 1
            new.trained_index = new.next_key(f"ivfpq-v{version}.faiss")
            store.put(new.trained_index, trained_bytes)
            keys = {p: (new.next_key(f"p{p}/snapshot.parquet"), new.next_key(f"p{p}/index.faiss"))
                    for p in range(new.num_partitions)}
            groups = by_worker(range(new.num_partitions), self.shards.num_workers)
            built = self.shards.call("build", [(w, (collection_id, version, new.trained_index,
                                                    {p: keys[p] for p in parts})) for w, parts in groups.items()],
                                     maintenance=True)
            for parts in built:
                for p, part in parts.items():
                    new.partitions[p] = part
            new.index_version, new.nlist, new.pq_m, new.pq_bits = version, nlist, pq_m, pq_bits
            new.trained_on = new.face_count
            if calibration is not None:
                new.calibration = new.next_key("calibration.npz")
                new.calibrated_on, new.calibration_source = new.face_count, "gallery"
                store.put(new.calibration, calibration.to_bytes())
            self.collections.commit(new)
            self.shards.call("activate", [(w, (collection_id, version, parts)) for w, parts in groups.items()])
            state.manifest = new
            state.live = LiveIndex.from_trained(version, load_index(trained_bytes), nlist)
            if calibration is not None:
                state.calibration = calibration
            self.shards.call("retire_previous", [(w, (collection_id,)) for w in groups])
            manifests.gc_collection(store, new)
        logger.info("%s: %s live as version %d (%d faces)", collection_id, ivfpq_factory(nlist, pq_m, pq_bits),
                    version, new.face_count)
        try:
            self.measure(collection_id)
        except Exception:  # the new index serves either way, with the default nprobe and re-rank depth
            logger.exception("%s: measuring recall of index version %d failed; searches use the defaults",
                             collection_id, version)
        return version

    def measure(self, collection_id: str) -> SearchTuning:
        """Measures recall@10 of the live index against exact search on a sample of the collection's own faces,
        at a geometric sweep of nprobe and every re-rank depth of `tuning.RERANK_DEPTHS`, and records the
        table in the manifest; searches then choose from it (`tuning.choose_search_params`).

        Each sampled face is a query held out of its own answers (cluster/index/recall.py). Writes go on
        meanwhile: the table describes the index version measured, whose lists they join, and the faces
        they add count neither in the truth nor among the candidates (at 10M faces, counted among the
        candidates only, they displaced true neighbours and recall read 0.62 at every list probed).

        Raises:
            FailedPrecondition: the collection is searched exactly (nothing to tune).
        """
        started = time.perf_counter()
        state = self.collections.get(collection_id)
        m, live = state.manifest, state.live
        if not live.version:
            raise FailedPrecondition(f"collection {collection_id!r} is searched exactly: nothing to tune")
        k, workers = tuning.MEASURED_K, range(self.shards.num_workers)
        xq, _ = self._sample(collection_id, tuning.recall_queries(m.face_count), seed=m.sequence + 1)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        exact = self.shards.call("exact_topk", [(w, (collection_id, xq, k + 1)) for w in workers], maintenance=True)
        _, I = merge_topk([(D, I) for D, I, _ in exact], k + 1)
        below = {p: slot for _, _, per_worker in exact for p, slot in per_worker.items()}
        own, truth = recall.held_out_truth(I)
        P, n = m.num_partitions, m.face_count
        probes = tuning.probe_sweep(live.nlist)
        Dq_all, Iq_all = live.quantizer.search(xq, probes[-1])  # best first: nprobe p scans the first p columns
        points: list[tuning.SearchPoint] = []
        reached = False
        for nprobe in probes:
            # Only the depths a search would probe exactly nprobe lists for (`tuning.nprobe_for` raises it where
            # the lists hold too few candidates): every point is then a setting that serving reproduces.
            depths = [d for d in tuning.RERANK_DEPTHS if tuning.nprobe_for(nprobe, d, live.nlist, n) == nprobe]
            if not depths:
                continue
            depth = tuning.partition_rerank_depth(max(depths), k, P)
            Iq, Dq = np.ascontiguousarray(Iq_all[:, :nprobe]), np.ascontiguousarray(Dq_all[:, :nprobe])
            parts = [part for per_worker in self.shards.call(
                "ranked_candidates", [(w, (collection_id, xq, depth, live.version, Iq, Dq, below)) for w in workers],
                maintenance=True) for part in per_worker]
            for d in depths:
                found = recall.emulate_rerank(parts, tuning.partition_rerank_depth(d, k, P), k, own)
                points.append(tuning.SearchPoint(nprobe, d, *recall.recall_with_error(found, truth)))
            # Each step costs about as much as all before it: stop one step past the target (which leaves
            # requests for a little more some room), or where recall is saturated.
            best = max(p.recall for p in points if p.nprobe == nprobe)
            if reached or best >= tuning.SATURATED_RECALL:
                break
            reached = any(p.reaches(m.target_recall) for p in points if p.nprobe == nprobe)
        measured = SearchTuning(live.version, len(xq),
                                [[p.nprobe, p.rerank_depth, p.recall, p.stderr] for p in points], n)
        with state.write_lock:
            if state.manifest.index_version != live.version:  # retrained meanwhile: that version measures itself
                return measured
            new = copy.deepcopy(state.manifest)
            new.search_tuning = measured
            self.collections.commit(new)
            state.manifest = new
        chosen = tuning.choose_search_params(points, m.target_recall, search_cost(new))
        logger.info("%s: recall@10 %.4f at nprobe %d, re-rank %d, new photos %.4f (target %.3f; %d points, "
                    "%d queries, %.1f s)", collection_id, chosen.recall, chosen.nprobe, chosen.rerank_depth,
                    chosen.new_photo_recall(), m.target_recall, len(points), len(xq), time.perf_counter() - started)
        return measured


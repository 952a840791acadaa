"""Index maintenance of a collection, off the request path: training IVF-PQ and calibrating scores.

`IndexMaintenance` is the part of `Gallery` that runs in the background after
writes: a collection trains when it first reaches its threshold and retrains
when it outgrows its quantizer (`tuning.should_train`); a collection of raw
embeddings re-estimates its impostor distribution as it grows. Training samples
the shards, trains on a Ray task, then has every partition build its index
while searches continue on the old one; writes wait for the switch.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass

import faiss
import numpy as np
import ray

from cluster.errors import FailedPrecondition, NotFound
from cluster.index import tuning
from cluster.index.calibration import Calibration, impostor_scores
from cluster.index.training import load_index, train_ivfpq, usable_cpus
from cluster.shards.protocol import MAINTENANCE
from cluster.storage import manifest as manifests
from cluster.storage.manifest import CollectionManifest

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLE = 2000  # faces sampled for gallery calibration: ~2M impostor pairs
CALIBRATE_FROM = 200  # faces before a raw collection is first calibrated
MIN_FACES_TO_TRAIN = 256  # IVF-PQ's 8-bit codebooks need at least 256 training vectors


@ray.remote(num_cpus=1, max_calls=1)
def _train_remote(xt: np.ndarray, nlist: int, pq_m: int) -> bytes:
    """Trains on every CPU of its node at low priority: the node's searches still come first.

    Ray reserves one CPU for the task, so that it is placed, and would hold FAISS to one thread;
    the worker process exits after the task (max_calls=1), and its niceness and threads with it.
    """
    os.nice(10)
    faiss.omp_set_num_threads(usable_cpus())
    return train_ivfpq(xt, nlist, pq_m)


def quantizer_of(trained: faiss.Index) -> faiss.Index:
    return faiss.extract_index_ivf(trained).quantizer


@dataclass
class LiveIndex:
    """What a search needs, swapped in one assignment when a new index goes live."""

    version: int = 0
    quantizer: object = None  # faiss coarse quantizer of the live version
    trained: object = None  # keeps the index that owns `quantizer` alive
    nlist: int = 0


class IndexMaintenance:
    """Training and calibration for `Gallery` (which provides store, workers, the collection states and
    `_commit_manifest`)."""

    def _maintain(self, collection_id: str, state) -> None:
        """Starts training or calibration in the background when the collection has grown enough."""
        if not self.background_maintenance or (state.maintenance and state.maintenance.is_alive()):
            return
        m = state.manifest
        if self._needs_training(m) or self._needs_calibration(m):
            state.maintenance = threading.Thread(target=self._maintain_now, args=(collection_id,),
                                                 name=f"maintain-{collection_id}", daemon=True)
            state.maintenance.start()

    def wait_for_maintenance(self, collection_id: str, timeout_s: float | None = None) -> bool:
        """Waits until background training or calibration of the collection is done; False on timeout."""
        thread = self._get(collection_id).maintenance
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def _needs_training(self, m: CollectionManifest) -> bool:
        return tuning.should_train(m.face_count, m.trained_on, m.train_threshold)

    def _needs_calibration(self, m: CollectionManifest) -> bool:
        return not m.embedding_model and m.face_count >= CALIBRATE_FROM and m.face_count >= 4 * m.calibrated_on

    def _maintain_now(self, collection_id: str) -> None:
        try:
            while True:  # writes during a step may make another one due
                m = self._get(collection_id).manifest
                if self._needs_training(m):
                    self.train(collection_id)
                elif self._needs_calibration(m):
                    self.calibrate(collection_id)
                else:
                    return
        except NotFound:
            return
        except Exception:
            logger.exception("maintenance of %s failed; it is retried after the next write", collection_id)

    def _sample(self, collection_id: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        state = self._get(collection_id)
        sizes = {p: s for per_worker in self._call([w.sizes.remote(collection_id) for w in self.workers])
                 for p, s in per_worker.items()}
        total = sum(sizes.values())
        want = {p: int(np.ceil(n * s / total)) for p, s in sizes.items() if s}
        calls = []
        for w, parts in self._worker_partitions(state.manifest.num_partitions):
            mine = {p: want[p] for p in parts if p in want}
            if mine:
                calls.append(w.sample.options(concurrency_group=MAINTENANCE).remote(collection_id, mine, seed))
        samples = self._call(calls)
        return np.concatenate([x for x, _ in samples]), [pid for _, pids in samples for pid in pids]

    def calibrate(self, collection_id: str) -> Calibration:
        """Re-estimates a raw collection's impostor distribution from pairs of its own faces."""
        state = self._get(collection_id)
        xs, persons = self._sample(collection_id, CALIBRATION_SAMPLE, seed=int(time.time()))
        calibration = Calibration.from_scores(impostor_scores(xs, persons), source="gallery")
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            new.calibration = new.next_key("calibration.npz")
            new.calibrated_on = new.face_count
            self.store.put(new.calibration, calibration.to_bytes())
            self._commit_manifest(new)
            state.manifest, state.calibration = new, calibration
            manifests.gc_collection(self.store, new)
        return calibration

    def train(self, collection_id: str) -> int:
        """Trains IVF-PQ on a sample and switches every partition to it; searches go on meanwhile.

        Writes to the collection wait while partitions build their indexes.

        Returns:
            The new index version.
        """
        state = self._get(collection_id)
        m = state.manifest
        if m.face_count < MIN_FACES_TO_TRAIN:
            raise FailedPrecondition(f"collection {collection_id!r} has {m.face_count} faces: IVF-PQ needs at least "
                                     f"{MIN_FACES_TO_TRAIN} to train on; smaller collections are searched exactly")
        nlist = tuning.nlist_for(m.face_count)
        pq_m = tuning.pq_m_for(m.dimension)
        xt, persons = self._sample(collection_id, tuning.training_sample_size(m.face_count, nlist), seed=m.sequence)
        trained_bytes = ray.get(_train_remote.remote(xt, nlist, pq_m))
        calibration = None
        if not m.embedding_model:
            keep = slice(0, CALIBRATION_SAMPLE)
            calibration = Calibration.from_scores(impostor_scores(xt[keep], persons[keep]), source="gallery")
        with state.write_lock:
            new = copy.deepcopy(state.manifest)
            version = new.index_version + 1
            new.trained_index = new.next_key(f"ivfpq-v{version}.faiss")
            self.store.put(new.trained_index, trained_bytes)
            keys = {p: (new.next_key(f"p{p}/snapshot.parquet"), new.next_key(f"p{p}/index.faiss"))
                    for p in range(new.num_partitions)}
            groups = self._worker_partitions(new.num_partitions)
            built = self._call([w.build.options(concurrency_group=MAINTENANCE).remote(
                collection_id, version, new.trained_index, {p: keys[p] for p in parts}) for w, parts in groups])
            for parts in built:
                for p, part in parts.items():
                    new.partitions[p] = part
            new.index_version, new.nlist, new.pq_m, new.trained_on = version, nlist, pq_m, new.face_count
            if calibration is not None:
                new.calibration = new.next_key("calibration.npz")
                new.calibrated_on = new.face_count
                self.store.put(new.calibration, calibration.to_bytes())
            self._commit_manifest(new)
            self._call([w.activate.remote(collection_id, version, parts) for w, parts in groups])
            trained = load_index(trained_bytes)
            state.manifest = new
            state.live = LiveIndex(version, quantizer_of(trained), trained, nlist)
            if calibration is not None:
                state.calibration = calibration
            self._call([w.retire_previous.remote(collection_id) for w, _ in groups])
            manifests.gc_collection(self.store, new)
        logger.info("%s: IVF%d,PQ%d live as version %d (%d faces)", collection_id, nlist, pq_m, version,
                    new.face_count)
        return version

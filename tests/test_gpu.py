"""Shards on a GPU: the same faces as on CPU, deletes never resurface, adds follow. GPU tests skip without one.

The CPU-only parts (how GPUs are shared out, which candidates a GPU copy keeps) run everywhere.
"""

import faiss
import numpy as np
import pytest
import ray

from cluster.index import gpu, tuning
from cluster.index.shard_index import ShardIndex
from cluster.index.synthetic import clustered_embeddings, noisy_probes
from cluster.index.training import load_index, train_ivfpq
from cluster.serve.cli import gpus_per_actor
from cluster.shards.worker import ShardWorker
from cluster.storage.records import FaceBatch, FaceRecord

needs_gpu = pytest.mark.skipif(not gpu.available(), reason="needs a GPU and faiss-gpu")


def _batch(xb, start=0):
    return FaceBatch([FaceRecord(f"face-{start + i}") for i in range(len(xb))], xb.astype(np.float16))


def test_auto_gpus_are_shared_so_that_every_actor_fits():
    # 2 shards + 1 face worker on one GPU: a third each
    assert gpus_per_actor(2, -1, 1, -1, cluster_gpus=1, faiss_gpu=True) == (1 / 3, 1 / 3)
    # faiss-cpu: shards stay on CPU, the face worker gets the GPU
    assert gpus_per_actor(2, -1, 1, -1, cluster_gpus=1, faiss_gpu=False) == (0.0, 1.0)
    # explicit requests are kept; the auto ones share what they leave
    assert gpus_per_actor(4, 0.25, 2, -1, cluster_gpus=2, faiss_gpu=True) == (0.25, 0.5)
    assert gpus_per_actor(2, 0.25, 2, -1, cluster_gpus=1, faiss_gpu=True) == (0.25, 0.25)
    assert gpus_per_actor(2, 1, 1, -1, cluster_gpus=2, faiss_gpu=True) == (1, 0.0)
    assert gpus_per_actor(2, -1, 1, -1, cluster_gpus=0, faiss_gpu=True) == (0.0, 0.0)
    # 12 actors on 8 GPUs: halves, so that they pack two per GPU
    assert gpu.gpu_share(12, 8) == 0.5


def test_a_gpu_copy_keeps_the_first_live_candidates_in_order():
    labels = np.array([[4, 9, 2, 7, -1], [3, 5, 6, 8, 1]])
    live = np.array([[False, True, True, False, False], [True, True, True, True, True]])
    np.testing.assert_array_equal(gpu.first_live(labels, live, 3), [[9, 2, -1], [3, 5, 6]])


@pytest.mark.skipif(gpu.available(), reason="this machine has a GPU")
def test_a_worker_asked_for_a_gpu_searches_on_cpu_where_there_is_none(tmp_path):
    assert ShardWorker(0, 1, str(tmp_path), use_gpu=True).device() == "cpu"


@pytest.fixture(scope="module")
def trained_pair():
    """A CPU shard and a GPU shard over the same 20k 512-d faces, trained IVF-PQ version 1."""
    n, d = 20_000, 512
    xb = clustered_embeddings(n, d, seed=21)
    nlist = tuning.nlist_for(n)
    trained = load_index(train_ivfpq(xb[:tuning.training_sample_size(n, nlist)], nlist, tuning.pq_m_for(d)))
    shards = {"cpu": ShardIndex(d, 0, 1), "gpu": ShardIndex(d, 0, 1, gpu_device=0)}
    for shard in shards.values():
        shard.add(_batch(xb))
        shard.build(1, trained)
        shard.activate(1)
    xq, rows = noisy_probes(xb, 300, seed=22)
    Dq, Iq = faiss.extract_index_ivf(trained).quantizer.search(xq, tuning.default_nprobe(nlist))
    return shards, xb, xq, rows, Iq, Dq, trained


def _search(shard, xq, Iq, Dq, k=10):
    return shard.search(xq, k, version=1, Iq=Iq, Dq=Dq, rerank_k=tuning.rerank_depth(k))


def _assert_same_results(cpu, gpu_result):
    (D_cpu, I_cpu), (D_gpu, I_gpu) = cpu, gpu_result
    # float16 lookup tables on the GPU may reorder near-ties among PQ candidates, nothing more
    assert (I_gpu == I_cpu).all(axis=1).mean() >= 0.95
    same = I_gpu == I_cpu
    np.testing.assert_allclose(D_gpu[same], D_cpu[same], rtol=1e-6)  # re-ranked from the same fp16 vectors


@needs_gpu
def test_gpu_shard_gives_the_cpu_shards_faces_and_scores(trained_pair):
    shards, _, xq, rows, Iq, Dq, _ = trained_pair
    cpu, on_gpu = _search(shards["cpu"], xq, Iq, Dq), _search(shards["gpu"], xq, Iq, Dq)
    _assert_same_results(cpu, on_gpu)
    assert (on_gpu[1][:, 0] == rows).mean() >= 0.99


@needs_gpu
def test_gpu_shard_never_returns_deleted_faces_and_follows_adds(trained_pair):
    shards, xb, xq, rows, Iq, Dq, trained = trained_pair
    # a few deletions stay in the GPU copy; more than MAX_DEAD make it copy the CPU index again
    for deleted in (np.unique(rows[:100]), np.arange(gpu.MAX_DEAD + 100)):
        for shard in shards.values():
            shard.delete([f"face-{r}" for r in deleted])
        cpu, on_gpu = _search(shards["cpu"], xq, Iq, Dq), _search(shards["gpu"], xq, Iq, Dq)
        assert not set(deleted.tolist()) & set(on_gpu[1].ravel().tolist())
        _assert_same_results(cpu, on_gpu)

    new = clustered_embeddings(50, xb.shape[1], seed=23)
    for shard in shards.values():
        shard.add(_batch(new, start=len(xb)))
    Dq_new, Iq_new = faiss.extract_index_ivf(trained).quantizer.search(new, Iq.shape[1])
    _, I = _search(shards["gpu"], new, Iq_new, Dq_new)
    np.testing.assert_array_equal(I[:, 0], np.arange(len(xb), len(xb) + 50))


@needs_gpu
def test_cluster_with_gpu_shards_serves_and_restarts(galleries, tmp_path):
    store = str(tmp_path / "store")
    gallery = galleries.start(store, num_gpus=0.25, default_train_threshold=10_000, background_maintenance=False)
    assert ray.get([w.device.remote() for w in gallery.shards.workers]) == ["cuda:0", "cuda:0"]
    xb = clustered_embeddings(12_000, 512, seed=24)
    gallery.create_collection("c", dimension=512)
    for start in range(0, len(xb), 6000):
        gallery.add("c", [FaceRecord(f"face-{i}") for i in range(start, start + 6000)], xb[start:start + 6000])
    gallery.train("c")
    xq, rows = noisy_probes(xb, 200, seed=25)
    found = gallery.search("c", xq, 10)
    assert found.index_version == 1
    top = [q[0].record.face_id for q in found.candidates]
    assert np.mean([t == f"face-{r}" for t, r in zip(top, rows)]) >= 0.99
    gallery.delete_faces("c", [f"face-{r}" for r in rows[:20]])
    again = gallery.search("c", xq[:20], 10)
    assert not {f"face-{r}" for r in rows[:20]} & {c.record.face_id for q in again.candidates for c in q}
    before = [[c.record.face_id for c in q] for q in gallery.search("c", xq, 10).candidates]
    galleries.stop(gallery)
    restarted = galleries.start(store, num_gpus=0.25)
    after = [[c.record.face_id for c in q] for q in restarted.search("c", xq, 10).candidates]
    assert np.mean([a == b for a, b in zip(after, before)]) >= 0.98

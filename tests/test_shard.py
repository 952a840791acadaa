"""ShardIndex as a plain class: exact search, deletes, IVF-PQ with re-ranking, slots."""

import faiss
import numpy as np
import pytest

from cluster import tuning
from cluster.records import FaceBatch, FaceRecord
from cluster.shard import ShardIndex, StaleIndexVersion, exact_search
from cluster.synthetic import clustered_embeddings, noisy_probes
from cluster.training import load_index, train_ivfpq


def _batch(xb, start=0):
    return FaceBatch([FaceRecord(f"face-{start + i}", f"img-{start + i}") for i in range(len(xb))],
                     xb.astype(np.float16))


def _recall(I, I_ref, k):
    return np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, I_ref)])


def test_exact_search_equals_flat_index_on_stored_vectors():
    xb = clustered_embeddings(2000, 64, seed=1)
    shard = ShardIndex(64, 0, 1)
    shard.add(_batch(xb))
    reference = faiss.IndexFlatIP(64)
    reference.add(xb.astype(np.float16).astype(np.float32))
    xq, _ = noisy_probes(xb, 30)
    D, I = shard.search(xq, 10)
    D_ref, I_ref = exact_search(reference, xq, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref)


def test_labels_encode_partition_and_slot():
    shard = ShardIndex(8, 2, 3)
    shard.add(_batch(clustered_embeddings(5, 8)))
    _, I = shard.search(clustered_embeddings(1, 8, seed=9), 5)
    assert sorted(I[0].tolist()) == [2, 5, 8, 11, 14]
    assert [r.face_id for r in shard.records(np.array([8, -1, 14]))[::2]] == ["face-2", "face-4"]


def test_deleted_faces_never_come_back():
    xb = clustered_embeddings(500, 32, seed=2)
    shard = ShardIndex(32, 0, 1)
    shard.add(_batch(xb))
    assert shard.delete(["face-0", "face-1", "missing"]) == ["face-0", "face-1"]
    _, I = shard.search(xb[:2], 500)
    assert 0 not in I and 1 not in I
    assert shard.size == 498 and shard.contains(["face-0", "face-2"]) == ["face-2"]


def test_ivfpq_with_rerank_reaches_recall_and_honours_deletes():
    n, d = 12_000, 128
    xb = clustered_embeddings(n, d, seed=3)
    nlist = tuning.nlist_for(n)
    trained = load_index(train_ivfpq(xb[:tuning.training_sample_size(n, nlist)], nlist, tuning.pq_m_for(d)))
    shard = ShardIndex(d, 0, 1)
    shard.add(_batch(xb))
    xq, rows = noisy_probes(xb, 200)
    D_exact, I_exact = shard.search(xq, 10)
    shard.build(1, trained)
    shard.activate(1)
    quantizer = faiss.extract_index_ivf(trained).quantizer
    Dq, Iq = quantizer.search(xq, tuning.default_nprobe(nlist))
    D, I = shard.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=tuning.rerank_depth(10))
    assert _recall(I, I_exact, 10) >= 0.95
    assert (I[:, 0] == I_exact[:, 0]).mean() >= 0.99
    # re-ranked scores are the exact scores of the stored vectors
    found = I_exact[:, :1] == I[:, :1]
    np.testing.assert_allclose(D[:, :1][found], D_exact[:, :1][found], rtol=1e-5)
    shard.delete([f"face-{r}" for r in rows[:50]])
    _, I = shard.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=100)
    assert not set(rows[:50].tolist()) & set(I.ravel().tolist())
    with pytest.raises(StaleIndexVersion, match="serves index version 1"):
        shard.search(xq, 10, version=7, Iq=Iq, Dq=Dq)


def test_scan_pages_through_alive_slots():
    shard = ShardIndex(8, 0, 1)
    shard.add(_batch(clustered_embeddings(10, 8)))
    shard.delete(["face-3"])
    seen, start = [], 0
    while start >= 0:
        page, start = shard.scan(start, 4)
        seen += [r.face_id for r in page]
    assert seen == [f"face-{i}" for i in range(10) if i != 3]

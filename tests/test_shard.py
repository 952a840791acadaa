"""ShardIndex as a plain class: exact search, deletes, IVF-PQ with re-ranking, slots; a worker's FAISS threads."""

import pickle
import threading

import faiss
import numpy as np
import pyarrow as pa
import pytest

from cluster.index import gpu, spill, training, tuning
from cluster.index.shard_index import ShardIndex, StaleIndexVersion, exact_search
from cluster.index.synthetic import clustered_embeddings, noisy_probes
from cluster.index.training import load_index, train_ivfpq, two_level_centroids
from cluster.shards.protocol import SearchRequest
from cluster.shards.worker import ShardWorker
from cluster.storage.records import FaceBatch, FaceRecord, read_batches, write_tables


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
    np.testing.assert_allclose(D, D_ref, rtol=0, atol=3e-7)  # fp16 codes, summed in another order than float32's


def test_labels_encode_partition_and_slot():
    shard = ShardIndex(8, 2, 3)
    shard.add(_batch(clustered_embeddings(5, 8)))
    _, I = shard.search(clustered_embeddings(1, 8, seed=9), 5)
    assert sorted(I[0].tolist()) == [2, 5, 8, 11, 14]
    assert [r.face_id for r in shard.records(np.array([8, -1, 14]))[::2]] == ["face-2", "face-4"]


@pytest.mark.parametrize("xq", [np.ones((2, 4), np.float32), np.ones(8, np.float32)], ids=["other d", "1-d"])
def test_queries_of_another_shape_are_refused_with_the_expected_one(xq):
    shard = ShardIndex(8, 0, 1)
    shard.add(_batch(clustered_embeddings(5, 8)))
    with pytest.raises(ValueError, match=r"xq must be \(nq, 8\) for this partition's dimension 8, got shape"):
        shard.search(xq, 1)


def test_deleted_faces_never_come_back():
    xb = clustered_embeddings(500, 32, seed=2)
    shard = ShardIndex(32, 0, 1)
    shard.add(_batch(xb))
    assert shard.delete(["face-0", "face-1", "missing"]) == ["face-0", "face-1"]
    _, I = shard.search(xb[:2], 500)
    assert 0 not in I and 1 not in I
    assert shard.size == 498 and shard.contains(["face-0", "face-2"]) == ["face-2"]


@pytest.mark.parametrize("pq_bits", [4, 8])
def test_ivfpq_with_rerank_reaches_recall_and_honours_deletes(pq_bits, tmp_path):
    n, d = 12_000, 128
    xb = clustered_embeddings(n, d, seed=3)
    nlist = tuning.nlist_for(n)
    sample = xb[:tuning.training_sample_size(n, nlist)]
    trained = load_index(train_ivfpq(sample, nlist, tuning.pq_m_for(d, pq_bits), pq_bits))
    assert isinstance(trained, faiss.IndexIVFPQFastScan if pq_bits == 4 else faiss.IndexIVFPQ)
    assert gpu.can_copy(trained) == (pq_bits == 8)  # faiss's GPU IVF-PQ has no fast-scan form
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
    # a snapshot of the populated index serves the same answers once loaded
    loaded = ShardIndex(d, 0, 1)
    write_tables(str(tmp_path / "snapshot.parquet"), shard.snapshot(rows=5_000), d)
    for batch in read_batches(pa.OSFile(str(tmp_path / "snapshot.parquet")), d):
        loaded.add(batch, index=False)
    loaded.set_index(1, load_index(shard.index_bytes()))
    np.testing.assert_array_equal(loaded.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=100)[1], I)


def test_fast_scan_partitions_keep_border_faces_in_their_nearest_lists():
    n, d, nlist = 12_000, 64, 64
    xb = clustered_embeddings(n, d, seed=4)
    trained = load_index(train_ivfpq(xb[:5_000], nlist, tuning.pq_m_for(d, 4), 4))
    spilled, one_list = ShardIndex(d, 0, 1), faiss.clone_index(trained)
    spilled.add(_batch(xb[:7_000]))
    spilled.build(1, trained)  # the faces so far, then one more add into the live index
    spilled.activate(1)
    spilled.add(_batch(xb[7_000:], start=7_000))
    one_list.add_with_ids(xb.astype(np.float16).astype(np.float32), np.arange(n))
    lists_of = {}
    ivf = faiss.extract_index_ivf(spilled._index)
    for list_no in range(nlist):
        for label in faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), ivf.invlists.list_size(list_no)).tolist():
            lists_of.setdefault(label, []).append(list_no)
    stored = xb.astype(np.float16).astype(np.float32)
    scores, nearest = faiss.extract_index_ivf(trained).quantizer.search(stored, spill.COPIES)
    centroids = faiss.extract_index_ivf(trained).quantizer.reconstruct_n(0, nlist)
    squared = ((stored[:, None, :] - centroids[nearest]) ** 2).sum(axis=2)  # to the nearest centroids
    border = squared[:, 1:] <= np.array(spill.SPILL_RATIOS) * squared[:, :1]  # (n, COPIES - 1)
    second, third = border.mean(axis=0)  # 0.33 and 0.07 of the faces here
    assert spill.COPIES == 3 and 0.2 < second < 0.8 and 0.02 < third < second
    assert ivf.ntotal == n + border.sum()
    assert all(sorted(lists_of[label]) == sorted(nearest[label, np.flatnonzero(np.r_[True, border[label]])].tolist())
               for label in range(n))
    extra = border.sum(axis=1)  # copies beyond the first, per face

    xq, rows = noisy_probes(xb, 300)
    quantizer = faiss.extract_index_ivf(trained).quantizer
    Dq, Iq = quantizer.search(xq, 4)
    _, I = spilled.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=50)
    assert all(len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in I)  # one copy of each face
    _, I_exact = exact_search(_flat(xb), xq, 10)
    one_list.nprobe = 4
    _, I_one = one_list.search_preassigned(xq, 50, Iq, Dq)
    I_one = np.take_along_axis(I_one, np.argsort(-np.einsum("qd,qkd->qk", xq, xb[I_one]), axis=1)[:, :10], 1)
    # the same lists probed find more true neighbours when border faces are in more of them (0.930 against 0.876)
    assert _recall(I, I_exact, 10) > _recall(I_one, I_exact, 10) + 0.03

    spilled.delete([f"face-{r}" for r in rows[:50]])  # every copy goes
    assert ivf.ntotal == n - 50 + extra.sum() - extra[rows[:50]].sum()
    _, I = spilled.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=50)
    assert not set(rows[:50].tolist()) & set(I.ravel().tolist())


def test_first_unique_keeps_the_first_copy_of_each_label_in_order():
    labels = np.array([[5, 5, 3, 9, 3, -1], [2, 7, 2, 7, 4, 4], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(spill.first_unique(labels, 4), [[5, 3, 9, -1], [2, 7, 4, -1], [1, 2, 3, 4]])


def _flat(xb):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb.astype(np.float16).astype(np.float32))
    return index


def test_scan_pages_through_alive_slots():
    shard = ShardIndex(8, 0, 1)
    shard.add(_batch(clustered_embeddings(10, 8)))
    shard.delete(["face-3"])
    seen, start = [], 0
    while start >= 0:
        page, start = shard.scan(start, 4)
        seen += [r.face_id for r in page]
    assert seen == [f"face-{i}" for i in range(10) if i != 3]


def test_worker_searches_with_its_faiss_threads_on_any_thread(tmp_path):
    """OpenMP's thread count is per thread: searches arrive on channel and Ray threads, not the constructor's."""
    main_threads = faiss.omp_get_max_threads()
    threads = {}

    def new_thread_default():
        threads["default"] = faiss.omp_get_max_threads()

    probe = threading.Thread(target=new_thread_default)
    probe.start()
    probe.join()
    wanted = threads["default"] + 1
    try:
        worker = ShardWorker(0, 1, str(tmp_path), omp_threads=wanted)
        request = pickle.dumps(SearchRequest("absent", np.zeros((1, 4), np.float32), 1, 0, None, None, 1))

        def search_from_another_thread():
            with pytest.raises(KeyError, match="does not hold collection 'absent'"):
                worker.search(request)
            threads["search"] = faiss.omp_get_max_threads()

        thread = threading.Thread(target=search_from_another_thread)
        thread.start()
        thread.join()
    finally:
        faiss.omp_set_num_threads(main_threads)  # the constructor set this thread's count too
    assert threads["search"] == wanted


def test_two_level_training_gives_balanced_normalised_lists_that_find_neighbours(monkeypatch):
    n, d, nlist = 40 * 4096, 128, 4096
    monkeypatch.setattr(training, "TWO_LEVEL_KMEANS_FROM", nlist)  # as a collection of 16k+ lists trains, smaller
    xb = clustered_embeddings(n, d, seed=8)
    centroids = two_level_centroids(xb, nlist)
    assert centroids.shape == (nlist, d)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, rtol=1e-4)
    lists = faiss.IndexFlatIP(d)
    lists.add(centroids)
    sizes = np.bincount(lists.search(xb, 1)[1].ravel(), minlength=nlist)
    assert sizes.max() < 20 * n / nlist  # no list draws a crowd (with unnormalised centroids, some did)
    trained = load_index(train_ivfpq(xb, nlist, tuning.pq_m_for(d, 4), 4))
    np.testing.assert_allclose(faiss.extract_index_ivf(trained).quantizer.reconstruct_n(0, nlist), centroids)
    shard = ShardIndex(d, 0, 1)
    shard.add(_batch(xb))
    xq, _ = noisy_probes(xb, 100)
    _, I_exact = shard.search(xq, 10)
    shard.build(1, trained)
    shard.activate(1)
    Dq, Iq = faiss.extract_index_ivf(trained).quantizer.search(xq, 256)
    _, I = shard.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=100)
    assert _recall(I, I_exact, 10) >= 0.95


@pytest.mark.parametrize("ids_only", [False, True])
def test_a_face_deleted_while_a_search_reads_its_candidates_is_not_one(galleries, tmp_path, monkeypatch, ids_only):
    """The search and the read of its candidates' records are two steps: a delete may land between them (seen as
    INTERNAL in test_replicas under writes). The face is then no candidate, and the others still are."""
    gallery = galleries.start(str(tmp_path), backend="local", num_workers=1, background_maintenance=False)
    gallery.create_collection("c", dimension=16)
    xb = clustered_embeddings(50, 16, seed=74)
    gallery.add("c", [FaceRecord(f"f{i}") for i in range(50)], xb)
    expected = [c.record.face_id for c in gallery.search("c", xb[:1], 5, min_similarity=-1.0).candidates[0]]
    assert expected[0] == "f0"

    search = ShardIndex.search

    def search_then_delete_the_best(self, xq, k, **kwargs):
        D, I = search(self, xq, k, **kwargs)
        self.delete(["f0"])  # what a concurrent DeleteFaces does in the window
        return D, I

    monkeypatch.setattr(ShardIndex, "search", search_then_delete_the_best)
    results = gallery.search("c", xb[:1], 5, min_similarity=-1.0, ids_only=ids_only)
    shown = results.packed.face_ids if ids_only else [c.record.face_id for c in results.candidates[0]]
    assert shown == expected[1:]  # f0 gone, the rest best first

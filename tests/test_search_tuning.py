"""Search parameters tuned by measurement: the choice rules, the recall arithmetic, the shard's measuring
calls against plain FAISS, and a collection that measures itself after training (in-process shards, real
FAISS, real gRPC on 127.0.0.1)."""

import json
import math

import faiss
import grpc
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.api import convert
from cluster.errors import InvalidArgument
from cluster.gateway.gallery import Gallery
from cluster.gateway.search import tuned_points
from cluster.index import recall, shard_index, tuning, vectors
from cluster.index.shard_index import ShardIndex
from cluster.index.synthetic import clustered_embeddings, noisy_probes
from cluster.index.training import load_index, train_ivfpq
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.storage.manifest import CollectionManifest, SearchTuning
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceBatch, FaceRecord

P = tuning.SearchPoint


def _cost(p):
    return tuning.search_cost(p.nprobe, p.rerank_depth, nlist=1024, num_vectors=100_000, dimension=512, pq_m=64)


# ---- the rules -------------------------------------------------------------

def test_the_cheapest_setting_that_reaches_the_target_is_chosen():
    points = [P(1, 10, 0.90), P(2, 20, 0.985), P(4, 20, 0.994), P(4, 100, 0.996), P(16, 20, 0.999), P(64, 200, 1.0)]
    assert tuning.choose_search_params(points, 0.99, _cost) == P(4, 20, 0.994)
    # 16 lists of ~98 codes (100k lookups) and 20 re-ranked (20k) cost less than 4 lists (25k) and 100 (102k)
    assert tuning.choose_search_params(points, 0.995, _cost) == P(16, 20, 0.999)
    assert tuning.choose_search_params(points, 0.5, _cost) == P(1, 10, 0.90)
    assert tuning.choose_search_params(points, 1.0, _cost) == P(64, 200, 1.0)


def test_new_photos_are_expected_to_miss_more_than_held_out_faces():
    # 0.992 on held-out faces misses 0.008 of their neighbours; new photos miss 1.4x that: 0.9888
    assert tuning.NEW_PHOTO_MISS_FACTOR == 1.4
    assert P(4, 20, 0.992).new_photo_recall() == pytest.approx(0.9888)
    assert not P(4, 20, 0.992).reaches(0.99) and P(4, 20, 0.992).reaches(0.988)
    assert P(64, 200, 1.0).reaches(1.0)


def test_an_unreachable_target_gets_the_cheapest_of_the_highest_recall():
    points = [P(8, 50, 0.97), P(16, 50, 0.98), P(32, 100, 0.98)]
    assert tuning.choose_search_params(points, 0.99, _cost) == P(16, 50, 0.98)
    with pytest.raises(ValueError, match="at least one"):
        tuning.choose_search_params([], 0.99, _cost)


def test_a_target_is_reached_with_95_percent_confidence():
    # 0.996 measured with a standard error of 0.002 may well be 0.9927, which new photos get as 0.9898
    points = [P(4, 20, 0.996, 0.002), P(8, 20, 0.998, 0.001), P(64, 200, 1.0, 0.0)]
    assert points[0].new_photo_recall() == pytest.approx(1 - 1.4 * (0.004 + 1.645 * 0.002))
    assert not points[0].reaches(0.99) and P(4, 20, 0.996).reaches(0.99)
    assert tuning.choose_search_params(points, 0.99, _cost) == P(8, 20, 0.998, 0.001)
    assert tuning.choose_search_params(points, 0.98, _cost) == P(4, 20, 0.996, 0.002)


def test_cost_grows_with_lists_scanned_and_candidates_re_ranked():
    assert _cost(P(2, 20, 0)) > _cost(P(1, 20, 0)) and _cost(P(1, 30, 0)) > _cost(P(1, 20, 0))
    # 100k faces in 1024 lists: one list is ~98 codes of 64 bytes, one re-ranked candidate 1024 operations
    assert _cost(P(1, 10, 0)) == pytest.approx(100_000 / 1024 * 64 + 10 * 1024)
    # 4-bit fast-scan codes cost FAST_SCAN_SPEEDUP times less to scan, and border faces' codes are in more lists
    fast = tuning.search_cost(1, 10, nlist=1024, num_vectors=100_000, dimension=512, pq_m=64, pq_bits=4)
    assert tuning.lists_per_face(4) == 2 and tuning.lists_per_face(8) == 1
    assert fast == pytest.approx(2 * 100_000 / 1024 * 64 / tuning.FAST_SCAN_SPEEDUP + 10 * 1024)
    assert tuning.pq_bits_for(searches_on_gpu=False) == 4 and tuning.pq_bits_for(searches_on_gpu=True) == 8


def test_sweeps_and_sample_sizes():
    assert tuning.probe_sweep(1) == [1]
    assert tuning.probe_sweep(48) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48]
    assert tuning.probe_sweep(2048)[-5:] == [1024, 1280, 1536, 1792, 2048] and tuning.probe_sweep(3) == [1, 2, 3]
    assert tuning.recall_queries(20_000) == 1000 and tuning.recall_queries(10_000_000) == 1000
    assert tuning.recall_queries(20_000_000) == 500 and tuning.recall_queries(100_000_000) == 200


def test_a_measured_depth_serves_k_up_to_10_and_scales_above():
    assert tuning.rerank_depth(10, 30) == 30 and tuning.rerank_depth(1, 30) == 30
    assert tuning.rerank_depth(20, 30) == 60 and tuning.rerank_depth(15, 15) == 23
    assert tuning.rerank_depth(10) == 100 and tuning.rerank_depth(50) == 500  # unmeasured: the default rule


# ---- the recall arithmetic ---------------------------------------------------

def test_re_ranking_is_emulated_from_the_first_candidates_of_each_partition():
    inf = -np.inf
    # query 0: partition A's PQ order 10, 12, 14 (exact 0.5, 0.9, 0.7); partition B's 11, 13 (0.8, 0.95)
    a = (np.array([[10, 12, 14]]), np.array([[0.5, 0.9, 0.7]], np.float32))
    b = (np.array([[11, 13, -1]]), np.array([[0.8, 0.95, inf]], np.float32))
    own = np.array([99])
    np.testing.assert_array_equal(recall.emulate_rerank([a, b], 1, 2, own), [[11, 10]])
    np.testing.assert_array_equal(recall.emulate_rerank([a, b], 2, 2, own), [[13, 12]])
    np.testing.assert_array_equal(recall.emulate_rerank([a, b], 3, 4, own), [[13, 12, 11, 14]])
    np.testing.assert_array_equal(recall.emulate_rerank([a, b], 3, 6, np.array([13])), [[12, 11, 14, 10, -1, -1]])


def test_recall_counts_true_neighbours_found_and_holds_the_query_out():
    exact = np.array([[7, 1, 2, 3], [8, 4, 5, 6]])
    own, truth = recall.held_out_truth(exact)
    np.testing.assert_array_equal(own, [7, 8])
    assert recall.recall_at_k(np.array([[1, 2, 9], [6, 5, 4]]), truth) == pytest.approx((2 / 3 + 1) / 2)
    mean, stderr = recall.recall_with_error(np.array([[1, 2, 9], [6, 5, 4]]), truth)
    assert mean == pytest.approx((2 / 3 + 1) / 2) and stderr == pytest.approx(np.std([2 / 3, 1], ddof=1) / np.sqrt(2))
    assert recall.recall_at_k(np.array([[-1, -1, -1], [-1, 4, -1]]), np.array([[-1, 1, 2], [4, 5, 6]])) \
        == pytest.approx((0 + 1 / 3) / 2)


def test_a_table_serves_only_the_index_version_it_measured_and_old_manifests_load():
    m = CollectionManifest("c", 8, 2, 20_000, 0.0, index_version=2, nlist=64, pq_m=2, face_count=30_000,
                           search_tuning=SearchTuning(2, 1000, [[4, 20, 0.993], [2, 20, 0.97]]))
    again = CollectionManifest.from_json(m.to_json())
    assert again == m and tuned_points(again, 2) == [P(4, 20, 0.993), P(2, 20, 0.97)]
    assert tuned_points(again, 3) == [] and tuned_points(again, 0) == []  # retrained, or searched exactly
    legacy = json.loads(m.to_json())
    del legacy["search_tuning"], legacy["target_recall"]  # written before tuning by measurement
    del legacy["pq_bits"]  # written before fast-scan: its trained index has 8-bit codes
    old = CollectionManifest.from_json(json.dumps(legacy).encode())
    assert old.search_tuning is None and old.target_recall == 0.99 and tuned_points(old, 2) == []
    assert old.pq_bits == 8


# ---- the shard's measuring calls against plain FAISS -------------------------

@pytest.fixture(scope="module")
def trained_shard():
    d, n = 32, 6000
    xb = vectors.normalize(clustered_embeddings(n, d, seed=3))
    shard = ShardIndex(d, 0, 1)
    shard.add(FaceBatch([FaceRecord(f"f{i}") for i in range(n)], vectors.to_stored(xb)))
    trained = load_index(train_ivfpq(xb, 64, 8))
    shard.build(1, trained)
    shard.activate(1)
    xq, _ = noisy_probes(xb, 50, seed=4)
    return shard, trained, xb, xq


def test_exact_top_k_is_a_flat_search_of_the_stored_vectors(trained_shard):
    shard, _, _, xq = trained_shard
    shard.delete(["f3", "f5"])
    try:
        flat = faiss.IndexFlatIP(shard.d)
        alive = np.flatnonzero(shard._alive)
        flat.add(shard.vectors().astype(np.float32))
        D_ref, I_ref = flat.search(xq, 10)
        D, I = shard.exact_topk(xq, 10)
        np.testing.assert_array_equal(I, alive[I_ref])
        np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-6)
    finally:
        xb = trained_shard[2]
        shard.add(FaceBatch([FaceRecord("f3"), FaceRecord("f5")], vectors.to_stored(xb[[3, 5]])))


@pytest.mark.parametrize("num_queries", [20, 2500])
def test_the_exact_top_k_is_the_same_below_and_above_faiss_blas_threshold(num_queries):
    # 20 x 64 query floats are scored by a matrix product, 2,500 x 64 (from 128,000) by faiss's own BLAS path
    xb = clustered_embeddings(3000, 64, seed=11)
    xq = noisy_probes(xb, num_queries, seed=12)[0]
    D, I = shard_index._top_inner_products(xq, xb, 10)
    scores = xq @ xb.T
    expected = np.sort(scores, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(D, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(scores, I, axis=1), expected, rtol=1e-5, atol=1e-5)
    assert shard_index._top_inner_products(xq, xb[:4], 10)[1].shape == (num_queries, 4)  # fewer rows than k


@pytest.mark.parametrize("depth", [10, 25, 60])
def test_ranked_candidates_give_what_a_search_at_each_depth_answers(trained_shard, depth):
    shard, trained, _, xq = trained_shard
    Dq, Iq = faiss.extract_index_ivf(trained).quantizer.search(xq, 4)
    labels, scores = shard.ranked_candidates(xq, 60, version=1, Iq=Iq, Dq=Dq)
    D, I = shard.search(xq, 10, version=1, Iq=Iq, Dq=Dq, rerank_k=depth)
    emulated = recall.emulate_rerank([(labels, scores)], depth, 10, np.full(len(xq), -1))
    np.testing.assert_array_equal(emulated, I)
    assert np.all(np.isfinite(scores[labels >= 0])) and np.all(np.isneginf(scores[labels < 0]))


def test_faces_added_during_a_measurement_count_neither_in_the_truth_nor_among_candidates(trained_shard):
    shard, trained, _, xq = trained_shard
    below = shard.next_position
    D_before, I_before = shard.exact_topk(xq, 10)
    # A face added now is closer to each query than any: counted, it would displace every true neighbour.
    twins = [FaceRecord(f"twin-{i}") for i in range(len(xq))]
    shard.add(FaceBatch(twins, vectors.to_stored(xq)))
    try:
        D, I = shard.exact_topk(xq, 10, below=below)
        np.testing.assert_array_equal(I, I_before)
        Dq, Iq = faiss.extract_index_ivf(trained).quantizer.search(xq, 64)
        labels, scores = shard.ranked_candidates(xq, 60, version=1, Iq=Iq, Dq=Dq, below=below)
        assert (labels >= below).any()  # the twins are among the PQ candidates ...
        assert np.isneginf(scores[labels >= below]).all()  # ... and count as none
        found = recall.emulate_rerank([(labels, scores)], 60, 10, np.full(len(xq), -1))
        assert recall.recall_at_k(found, I) >= 0.9
    finally:
        shard.delete([r.face_id for r in twins])


# ---- a collection measures itself ----------------------------------------------

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """20,000 clustered 64-d faces over two in-process shard workers, trained (and so measured)."""
    store = str(tmp_path_factory.mktemp("tuned"))
    gallery = Gallery(ObjectStore(store), LocalShards(2, store, omp_threads=1), background_maintenance=False)
    xb = clustered_embeddings(20_000, 64, seed=5)
    gallery.create_collection("c", dimension=64)
    for start in range(0, len(xb), 5000):
        gallery.add("c", [FaceRecord(f"f{i}") for i in range(start, start + 5000)], xb[start:start + 5000])
    gallery.train("c")
    opened = [gallery, xb, store]  # the restart test replaces the gallery with the one it reopens
    yield opened
    opened[0].close()


def test_training_measures_recall_and_searches_use_the_cheapest_setting_that_reaches_the_target(tuned):
    gallery, xb, _ = tuned
    m, state = gallery.describe("c")
    chosen, points, queries = gallery.search_tuning("c")
    assert m.target_recall == 0.99 and m.search_tuning.index_version == 1 and queries >= 1000
    assert chosen.reaches(0.99) and chosen.stderr > 0 and chosen in points
    assert {p.nprobe for p in points} <= set(tuning.probe_sweep(m.nlist))
    assert {p.rerank_depth for p in points} <= set(tuning.RERANK_DEPTHS)
    assert gallery.searches.search_params(state, 0, 0) == (chosen.nprobe, chosen.rerank_depth)
    assert gallery.searches.search_params(state, 7, 0) == (7, chosen.rerank_depth)  # an asked nprobe wins
    loose = gallery.searches.search_params(state, 0, 0.5)
    strict = gallery.searches.search_params(state, 0, 0.9999)
    cost = lambda s: tuning.search_cost(*s, nlist=m.nlist, num_vectors=m.face_count, dimension=64,  # noqa
                                        pq_m=m.pq_m, pq_bits=m.pq_bits)
    assert cost(loose) <= cost((chosen.nprobe, chosen.rerank_depth)) <= cost(strict)

    # The target holds for queries it never saw: new noisy photos of enrolled faces.
    xq, _ = noisy_probes(xb, 500, seed=6)
    stored = vectors.to_stored(vectors.normalize(xb)).astype(np.float32)
    flat = faiss.IndexFlatIP(64)
    flat.add(stored)
    truth = np.array([[f"f{i}" for i in row] for row in flat.search(vectors.normalize(xq), 10)[1]])
    found = gallery.search("c", xq, 10, min_similarity=-1, ids_only=True).packed.face_ids
    found = np.array(found).reshape(500, 10)
    served = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert served >= m.target_recall, (served, chosen)


def test_lean_answers_are_the_full_answers_as_arrays(tuned):
    gallery, xb, _ = tuned
    xq, _ = noisy_probes(xb, 20, seed=7)
    full = gallery.search("c", xq, 5, min_similarity=0.5)
    lean = gallery.search("c", xq, 5, min_similarity=0.5, ids_only=True)
    assert lean.candidates == [] and full.packed is None
    np.testing.assert_array_equal(lean.packed.counts, [len(q) for q in full.candidates])
    assert lean.packed.face_ids == [c.record.face_id for q in full.candidates for c in q]
    np.testing.assert_array_equal(lean.packed.similarities, [c.similarity for q in full.candidates for c in q])
    assert lean.packed.similarities.dtype == np.float32


@pytest.mark.parametrize("target", [-0.1, 1.5, math.nan])
def test_targets_outside_0_1_are_invalid(tuned, target):
    gallery, xb, _ = tuned
    with pytest.raises(InvalidArgument, match="target_recall"):
        gallery.search("c", xb[:1], 5, target_recall=target)
    with pytest.raises(InvalidArgument, match="target_recall"):
        gallery.create_collection("d", dimension=8, target_recall=target)


def test_the_measurement_survives_a_restart_and_is_described_over_grpc(tuned):
    gallery, xb, store = tuned
    before = gallery.search_tuning("c")
    gallery.close()
    again = tuned[0] = Gallery(ObjectStore(store), LocalShards(2, store, omp_threads=1), background_maintenance=False)
    assert again.search_tuning("c") == before
    again.create_collection("strict", dimension=8, target_recall=0.999)
    with running_server(again, "127.0.0.1:0") as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        description = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"))
        assert (description.index_state, description.pq_bits) == (pb.INDEX_STATE_IVF_PQ, 4)  # CPU shards: fast-scan
        t = description.search_tuning
        chosen, points, queries = before
        assert (t.measured, t.target_recall, t.nprobe, t.rerank_depth, t.sample_queries) == (
            True, 0.99, chosen.nprobe, chosen.rerank_depth, queries)
        assert t.recall_at_10 == pytest.approx(chosen.recall) and len(t.points) == len(points)
        assert t.new_photo_recall_at_10 == pytest.approx(chosen.new_photo_recall())
        assert t.new_photo_recall_at_10 >= t.target_recall
        assert [p.recall_at_10_stderr for p in t.points] == pytest.approx([p.stderr for p in points])
        strict = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="strict")).search_tuning
        assert (strict.measured, strict.target_recall, strict.nprobe) == (False, 0.999, 0)
        assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="strict")).pq_bits == 0  # exact

        request = pb.SearchByEmbeddingRequest(collection_id="c", k=3, purpose="p", case_id="c",
                                              queries=[convert.embedding(x) for x in xb[:4]], ids_only=True)
        response = stub.SearchByEmbedding(request)
        unpacked = convert.unpack(response.packed)
        assert not response.results and [ids[0] for ids, _, _ in unpacked] == ["f0", "f1", "f2", "f3"]
        assert all(s[0] == pytest.approx(1.0, abs=1e-3) for _, s, _ in unpacked)
        request.target_recall = 2.0
        with pytest.raises(grpc.RpcError) as raised:
            stub.SearchByEmbedding(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateCollection(pb.CreateCollectionRequest(collection_id="x", dimension=8, target_recall=-1))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_collection_measures_itself_again_once_it_has_doubled(tmp_path):
    store = str(tmp_path)
    gallery = Gallery(ObjectStore(store), LocalShards(2, store, omp_threads=1), default_train_threshold=4000)
    try:
        xb = clustered_embeddings(9000, 32, seed=8)
        gallery.create_collection("g", dimension=32)
        gallery.add("g", [FaceRecord(f"f{i}") for i in range(4000)], xb[:4000])  # trains, then measures
        assert gallery.maintenance.wait("g", 120)
        first = gallery.describe("g")[0].search_tuning
        assert first.index_version == 1 and first.faces == 4000
        gallery.add("g", [FaceRecord(f"f{i}") for i in range(4000, 7000)], xb[4000:7000])  # 1.75x: not yet
        assert gallery.maintenance.wait("g", 120)
        assert gallery.describe("g")[0].search_tuning == first
        gallery.add("g", [FaceRecord(f"f{i}") for i in range(7000, 9000)], xb[7000:9000])  # 2.25x
        assert gallery.maintenance.wait("g", 120)
        m = gallery.describe("g")[0]
        assert m.index_version == 1 and m.search_tuning.index_version == 1 and m.search_tuning.faces == 9000
        assert m.search_tuning.points and all(0 <= p[2] <= 1 for p in m.search_tuning.points)
    finally:
        gallery.close()

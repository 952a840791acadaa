"""Pure functions: wire format, validation, merge, tuning rules, calibration."""

import faiss
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb

from cluster.api import convert
from cluster.errors import InvalidArgument
from cluster.index import tuning, vectors
from cluster.index.calibration import Calibration, impostor_scores
from cluster.index.merge import merge_topk
from cluster.index.shard_index import exact_search
from cluster.index.synthetic import clustered_embeddings
from cluster.storage.records import FaceRecord


def test_wire_roundtrip_is_little_endian_float32():
    x = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    message = convert.embedding(x)
    assert message.values == np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes() and message.dimension == 3
    np.testing.assert_array_equal(convert.embeddings_array([message, message], 3, "queries"), np.stack([x, x]))


@pytest.mark.parametrize("values,dimension,message", [
    (b"\x00" * 12, 4, "dimension is 4"),
    (b"\x00" * 10, 3, "10 bytes given"),
])
def test_decode_rejects_malformed(values, dimension, message):
    with pytest.raises(InvalidArgument, match=message):
        convert.decode(values, dimension, expected_dimension=3 if dimension == 4 else dimension)


def test_face_detail_is_in_ratios_of_the_image_and_in_landmark_order():
    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    detail = convert.face_detail((20, 30, 60, 80), landmarks, 0.9, 0.7, 200, 100)
    box = detail.bounding_box
    assert (box.left, box.top, box.width, box.height) == pytest.approx((0.1, 0.3, 0.3, 0.8))
    assert [lm.type for lm in detail.landmarks] == [pb.Landmark.EYE_RIGHT, pb.Landmark.EYE_LEFT, pb.Landmark.NOSE,
                                                    pb.Landmark.MOUTH_RIGHT, pb.Landmark.MOUTH_LEFT]
    assert (detail.landmarks[2].x, detail.landmarks[2].y) == pytest.approx((0.25, 0.6))
    record = FaceRecord("f", "img-1", "s3://b/k", {"person_id": "p"}, detail.SerializeToString(),
                        embedding=np.array([0.6, 0.8], np.float32))
    face = convert.face_message(record)
    assert (face.face_id, face.external_image_id, face.image_uri, dict(face.metadata)) == (
        "f", "img-1", "s3://b/k", {"person_id": "p"})
    assert face.detail == detail and face.embedding == convert.embedding(record.embedding)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalize_rejects_non_finite(bad):
    x = np.ones((3, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(InvalidArgument, match="row 1 holds NaN or infinity"):
        vectors.normalize(x)


def test_normalize_rejects_zero_vector_and_scales_rows():
    with pytest.raises(InvalidArgument, match="row 0 is all zeros"):
        vectors.normalize(np.zeros((1, 4)))
    np.testing.assert_allclose(np.linalg.norm(vectors.normalize(np.full((2, 4), 3.0)), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("value", [3e38, -3e38, 1e-30, 1e-45])
def test_normalize_keeps_the_direction_of_finite_vectors_whose_float32_norm_overflows_or_underflows(value):
    x = np.full((1, 4), value, dtype=np.float32)
    x[0, 1] = 0
    y = vectors.normalize(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(y[0], np.sign(value) * np.array([1, 0, 1, 1]) / np.sqrt(3), rtol=1e-6)


def test_merge_matches_one_flat_index():
    xb = clustered_embeddings(3000, 32, seed=3)
    xq = clustered_embeddings(50, 32, seed=4)
    reference = faiss.IndexFlatIP(32)
    reference.add(xb)
    D_ref, I_ref = exact_search(reference, xq, 20)
    parts = []
    for shard in range(3):
        index = faiss.IndexIDMap(faiss.IndexFlatIP(32))
        ids = np.arange(shard, 3000, 3)
        index.add_with_ids(xb[ids], ids)
        parts.append(exact_search(index, xq, 20))
    D, I = merge_topk(parts, 20)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref)


def test_exact_scores_do_not_depend_on_the_batch():
    """faiss switches to BLAS for a query alone against >= 10k vectors on several threads; exact search must not."""
    xb = clustered_embeddings(12_000, 128, seed=5)
    xq = clustered_embeddings(20, 128, seed=6)
    index = faiss.IndexFlatIP(128)
    index.add(xb)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        D_batch, I_batch = exact_search(index, xq, 10)
        for i in (0, 17):  # in the first chunk of 16 queries, and alone in the last
            D, I = exact_search(index, xq[i:i + 1], 10)
            np.testing.assert_array_equal(I[0], I_batch[i])
            np.testing.assert_array_equal(D[0], D_batch[i])
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(threads)


def test_merge_pads_when_shards_hold_fewer_than_k():
    D, I = merge_topk([(np.array([[0.9, -np.inf]], np.float32), np.array([[7, -1]])),
                       (np.array([[0.5]], np.float32), np.array([[3]]))], 4)
    assert I.tolist() == [[7, 3, -1, -1]]
    assert D[0, :2].tolist() == pytest.approx([0.9, 0.5])


def test_merge_carries_aligned_arrays_with_their_candidates():
    """A search's face ids travel with their labels: by the merge's order, ties in the order of the shards,
    None as padding."""
    ids = [np.array([["a", "b"], ["c", None]], dtype=object), np.array([["d"], ["e"]], dtype=object)]
    D, I, F = merge_topk([(np.array([[0.5, 0.2], [0.7, -np.inf]], np.float32), np.array([[0, 2], [4, -1]]), ids[0]),
                          (np.array([[0.5], [0.9]], np.float32), np.array([[1], [3]]), ids[1])], 4)
    assert I.tolist() == [[0, 1, 2, -1], [3, 4, -1, -1]]
    assert F.tolist() == [["a", "d", "b", None], ["e", "c", None, None]]
    assert D.dtype == np.float32 and I.dtype == np.int64


@pytest.mark.parametrize("n,expected", [(20_000, 512), (1_000_000, 4096), (100, 2)])
def test_nlist_follows_four_sqrt_n_with_enough_training_points(n, expected):
    nlist = tuning.nlist_for(n)
    assert nlist == expected
    assert n >= 39 * nlist


def test_pq_m_divides_dimension():
    assert tuning.pq_m_for(512) == 64 and tuning.pq_m_for(512, 4) == 32
    assert tuning.pq_m_for(128, 4) == 16 and tuning.pq_m_for(64, 4) == 8
    assert 100 % tuning.pq_m_for(100) == 0 and 100 % tuning.pq_m_for(100, 4) == 0


def test_nprobe_covers_the_rerank_depth():
    assert tuning.nprobe_for(0, 100, 4096, 1_000_000) == 256  # the default, already enough
    assert tuning.nprobe_for(8, 100, 4096, 1_000_000) == 8  # a caller's choice when enough
    assert tuning.nprobe_for(16, 10_000, 256, 12_000) == 256  # k=1000 on a small collection: every list


def test_partitions_rerank_their_share_of_the_top_candidates():
    assert tuning.partition_rerank_depth(100, 10, 1) == 100
    assert tuning.partition_rerank_depth(100, 10, 2) == 70
    assert tuning.partition_rerank_depth(100, 10, 64) == 10  # never fewer than k
    # faces land in partitions by hash: a partition's share of a query's top 100 is binomial
    shares = np.random.default_rng(0).binomial(100, 1 / 4, size=100_000)
    assert (shares > tuning.partition_rerank_depth(100, 10, 4)).mean() < 1e-4


def test_training_policy():
    assert not tuning.should_train(19_999, 0, 20_000)
    assert tuning.should_train(20_000, 0, 20_000)
    assert not tuning.should_train(100_000, 20_000, 20_000)
    assert tuning.should_train(160_000, 20_000, 20_000)


def test_calibration_false_match_rates():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 0.1, size=200_000)
    calibration = Calibration.from_scores(scores, source="gallery")
    fmr = calibration.false_match_rate(np.array([-1.0, 0.0, 0.2, 0.3, 0.9]))
    assert fmr[0] == pytest.approx(1.0, abs=1e-3)
    assert fmr[1] == pytest.approx(0.5, abs=0.01)
    assert fmr[2] == pytest.approx((scores >= 0.2).mean(), rel=0.05)
    assert fmr[3] == pytest.approx((scores >= 0.3).sum() / scores.size, rel=1e-3)
    assert fmr[4] == pytest.approx(3 / scores.size, rel=0.01)  # never claims zero: the 95 % bound beyond the data
    assert np.all(np.diff(fmr) <= 0)


def test_gallery_probability_grows_with_gallery_size():
    calibration = Calibration.from_scores(np.random.default_rng(1).normal(0, 0.1, 100_000), source="model")
    small, large = calibration.gallery_false_match_probability(0.35, 100), \
        calibration.gallery_false_match_probability(0.35, 10_000_000)
    fmr = float(calibration.false_match_rate(0.35))
    assert float(small) == pytest.approx(1 - (1 - fmr) ** 100, rel=1e-6)
    assert float(large) > 0.99 > float(small)


def test_calibration_roundtrip_and_person_aware_pairs():
    xb = clustered_embeddings(60, 16, seed=5)
    all_pairs = impostor_scores(xb)
    assert all_pairs.size == 60 * 59 // 2
    persons = [str(i // 2) for i in range(60)]  # pairs of faces share a person
    assert impostor_scores(xb, persons).size == 60 * 59 // 2 - 30
    calibration = Calibration.from_scores(all_pairs, source="gallery", default_min_similarity=0.5)
    again = Calibration.from_bytes(calibration.to_bytes())
    assert again.n_pairs == calibration.n_pairs and again.default_min_similarity == 0.5
    np.testing.assert_array_equal(again.tail, calibration.tail)

"""Thresholds set as an error rate over gRPC: target_fpir, a collection's default FPIR, SetCalibration and the
bound flag, on a real server on 127.0.0.1 with in-process shard workers (no Ray)."""

import math

import grpc
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.api import convert
from cluster.gateway.gallery import Gallery
from cluster.index.calibration import Calibration, fmr_upper_bound
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.storage.object_store import ObjectStore

D = 32
WHY = dict(purpose="test", case_id="case-1")


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    gallery = Gallery(ObjectStore(store), LocalShards(2, store), background_maintenance=False)
    try:
        with running_server(gallery, "127.0.0.1:0") as (_, port), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield gallery_pb2_grpc.GalleryStub(channel)
    finally:
        gallery.close()
        gallery.shards.stop()


@pytest.fixture(scope="module")
def calibration():
    """Impostor scores as a labelled set of random unit vectors in 32-d would give them (std ≈ 1/√32)."""
    return Calibration.from_scores(np.random.default_rng(0).normal(0, 1 / math.sqrt(D), 200_000), source="job")


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add(stub, collection_id: str, start: int, n: int) -> np.ndarray:
    xb = unit(n, seed=start)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id=collection_id, faces=[
        convert.new_face(f"f{start + i}", x) for i, x in enumerate(xb)]))
    return xb


def set_calibration(stub, collection_id: str, calibration: Calibration) -> pb.CollectionDescription:
    return stub.SetCalibration(pb.SetCalibrationRequest(
        collection_id=collection_id, impostor_pairs=calibration.n_pairs, impostor_tail=calibration.tail.tolist(),
        impostor_quantiles=calibration.quantiles.tolist())).collection


def search(stub, collection_id: str, xq: np.ndarray, **kwargs) -> pb.SearchByEmbeddingResponse:
    return stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id=collection_id, queries=[convert.embedding(x) for x in xq], k=5, **WHY, **kwargs))


def code(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value.code()


def test_target_fpir_threshold_rises_with_the_collection(stub, calibration):
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="grows", dimension=D))
    xb = add(stub, "grows", 0, 10)
    # Uncalibrated: a target FPIR cannot be turned into a threshold.
    assert code(stub.SearchByEmbedding, pb.SearchByEmbeddingRequest(
        collection_id="grows", queries=[convert.embedding(xb[0])], k=5, target_fpir=0.01, **WHY)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    described = set_calibration(stub, "grows", calibration)
    assert described.calibration.source == pb.CALIBRATION_SOURCE_JOB
    assert described.calibration.impostor_pairs == 200_000
    used = []
    for size, start in ((10, None), (100, 10), (1000, 100)):
        if start is not None:
            add(stub, "grows", start, size - start)
        response = search(stub, "grows", xb[:1], target_fpir=0.01)
        assert response.gallery_size == size
        assert response.threshold_used == pytest.approx(calibration.threshold_for_fpir(0.01, size).similarity)
        assert 0 < response.fpir_bound
        used.append(response.threshold_used)
        # The enrolled face finds itself, above every impostor measured: its rate is the 95 % bound, flagged.
        best = response.results[0].candidates[0]
        assert best.face.face_id == "f0" and best.similarity == pytest.approx(1.0, abs=1e-3)
        assert best.false_match_rate_is_bound and best.false_match_rate == pytest.approx(fmr_upper_bound(0, 200_000))
        assert all(c.similarity >= response.threshold_used for c in response.results[0].candidates)
    assert used[0] < used[1] < used[2], used
    # An explicit similarity is applied as given; its FPIR bound is returned with it.
    explicit = search(stub, "grows", xb[:1], min_similarity=0.2)
    assert explicit.threshold_used == pytest.approx(0.2) and 0 < explicit.fpir_bound <= 1


def test_invalid_targets_are_invalid_argument(stub, calibration):
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="checks", dimension=D))
    xb = add(stub, "checks", 0, 5)
    set_calibration(stub, "checks", calibration)
    query = [convert.embedding(xb[0])]
    for bad in (-0.1, 1.0, 1.5, math.nan, math.inf):
        assert code(stub.SearchByEmbedding, pb.SearchByEmbeddingRequest(
            collection_id="checks", queries=query, k=5, target_fpir=bad, **WHY)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(stub.SearchByEmbedding, pb.SearchByEmbeddingRequest(
        collection_id="checks", queries=query, k=5, target_fpir=0.01, min_similarity=0.3, **WHY)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    for bad in (-0.5, 1.0, math.nan):
        assert code(stub.CreateCollection, pb.CreateCollectionRequest(
            collection_id="bad-default", dimension=D, default_fpir=bad)) == grpc.StatusCode.INVALID_ARGUMENT
    tail = calibration.tail.tolist()
    for request in (
            pb.SetCalibrationRequest(collection_id="checks", impostor_pairs=5, impostor_tail=tail[:5],
                                     impostor_quantiles=calibration.quantiles.tolist()),  # too few pairs
            pb.SetCalibrationRequest(collection_id="checks", impostor_pairs=200_000, impostor_tail=tail[::-1],
                                     impostor_quantiles=calibration.quantiles.tolist()),  # tail not descending
            pb.SetCalibrationRequest(collection_id="checks", impostor_pairs=200_000, impostor_tail=tail,
                                     impostor_quantiles=calibration.quantiles.tolist()[:10]),  # too few quantiles
            pb.SetCalibrationRequest(collection_id="checks", impostor_pairs=200_000, impostor_tail=[2.0] + tail[1:],
                                     impostor_quantiles=calibration.quantiles.tolist())):  # not a cosine
        assert code(stub.SetCalibration, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(stub.SetCalibration, pb.SetCalibrationRequest(collection_id="nobody")) in (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def test_a_collection_default_fpir_sets_its_threshold(stub, calibration):
    created = stub.CreateCollection(pb.CreateCollectionRequest(collection_id="defaults", dimension=D,
                                                               default_fpir=0.05)).collection
    assert created.calibration.default_fpir == pytest.approx(0.05)
    xb = add(stub, "defaults", 0, 50)
    set_calibration(stub, "defaults", calibration)
    response = search(stub, "defaults", xb[:2])
    expected = calibration.threshold_for_fpir(0.05, 50).similarity
    assert response.threshold_used == pytest.approx(expected)
    assert response.calibration.default_min_similarity == pytest.approx(expected)
    assert response.calibration.default_fpir == pytest.approx(0.05)
    described = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="defaults"))
    assert described.calibration.default_min_similarity == pytest.approx(expected)
    # Every enrolled query finds itself, and only candidates at or above the threshold come back.
    assert [r.candidates[0].face.face_id for r in response.results] == ["f0", "f1"]
    assert all(c.similarity >= expected for r in response.results for c in r.candidates)
    # A raw collection without a default FPIR keeps its old default: no threshold.
    plain = stub.CreateCollection(pb.CreateCollectionRequest(collection_id="plain", dimension=D)).collection
    assert plain.calibration.default_fpir == 0
    add(stub, "plain", 0, 20)
    assert search(stub, "plain", unit(1, 99)).threshold_used == -1.0


def test_a_job_calibration_outlives_growth_training_and_restart(tmp_path, calibration):
    """Background calibration from the gallery's own pairs, due at 200 faces and at IVF-PQ training, leaves a
    calibration measured by a job in place; a gateway started again on the store reads it back."""
    from cluster.storage.records import FaceRecord

    store = str(tmp_path / "store")
    gallery = Gallery(ObjectStore(store), LocalShards(2, store), default_train_threshold=300)
    try:
        gallery.create_collection("job", dimension=D)
        gallery.set_calibration("job", calibration)
        xb = unit(400, seed=7)
        gallery.add("job", [FaceRecord(f"f{i}", "", "", {}, b"") for i in range(400)], xb)
        assert gallery.wait_for_maintenance("job", timeout_s=120)
        m, state = gallery.describe("job")
        assert m.index_version == 1  # trained at 300 faces, where raw collections also re-calibrate
        assert state.calibration.source == "job" and state.calibration.n_pairs == 200_000
        assert m.calibration_source == "job"
    finally:
        gallery.close()
        gallery.shards.stop()
    again = Gallery(ObjectStore(store), LocalShards(2, store), background_maintenance=False)
    try:
        state = again.describe("job")[1]
        assert state.calibration.source == "job" and state.calibration.n_pairs == 200_000
        np.testing.assert_array_equal(state.calibration.tail, calibration.tail)
    finally:
        again.close()
        again.shards.stop()

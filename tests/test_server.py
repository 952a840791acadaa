"""gallery.v1 over a real gRPC server on 127.0.0.1: results, status codes, health, reflection."""

import base64
import time

import grpc
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cluster.api import convert
from cluster.client import GalleryClient
from cluster.index import vectors
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.server import running_server

D = 16


def _embedding(x) -> pb.Embedding:
    return convert.embedding(x)


def _faces(xb, start=0):
    return [pb.NewFace(face_id=f"face-{start + i}", external_image_id=f"img-{start + i}",
                       metadata={"person_id": f"p{start + i}"}, embedding=_embedding(x)) for i, x in enumerate(xb)]


def _code(call, request, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, **kwargs)
    return raised.value.code(), raised.value.details()


@pytest.fixture
def enrolled(stub, gallery):
    xb = clustered_embeddings(300, D, seed=21)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="staff", dimension=D))
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="staff", faces=_faces(xb)))
    assert gallery.wait_for_maintenance("staff", timeout_s=60)  # the gallery calibrates in the background
    return xb


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gallery.v1.Gallery"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"gallery.v1.Gallery", "grpc.health.v1.Health"} <= names


def test_collection_lifecycle(stub):
    created = stub.CreateCollection(pb.CreateCollectionRequest(collection_id="a", dimension=D)).collection
    assert (created.collection_id, created.dimension, created.face_count) == ("a", D, 0)
    assert created.index_state == pb.INDEX_STATE_EXACT and created.num_partitions == 2
    assert created.calibration.source == pb.CALIBRATION_SOURCE_NONE
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="b", dimension=D))
    assert _code(stub.CreateCollection, pb.CreateCollectionRequest(collection_id="a", dimension=D))[0] == \
        grpc.StatusCode.ALREADY_EXISTS
    page = stub.ListCollections(pb.ListCollectionsRequest(max_results=1))
    assert [c.collection_id for c in page.collections] == ["a"] and page.next_token
    page = stub.ListCollections(pb.ListCollectionsRequest(max_results=1, next_token=page.next_token))
    assert [c.collection_id for c in page.collections] == ["b"] and not page.next_token
    stub.DeleteCollection(pb.DeleteCollectionRequest(collection_id="a"))
    assert _code(stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id="a"))[0] == \
        grpc.StatusCode.NOT_FOUND


def test_search_returns_the_enrolled_face_with_scores_and_calibration(stub, enrolled):
    probes = enrolled[[5, 77]] + 0.01
    response = stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id="staff", queries=[_embedding(x) for x in probes], k=3, purpose="test"))
    assert [r.candidates[0].face.face_id for r in response.results] == ["face-5", "face-77"]
    best = response.results[0].candidates[0]
    assert best.face.external_image_id == "img-5" and best.face.metadata["person_id"] == "p5"
    assert best.similarity == pytest.approx(float(vectors.normalize(probes[:1])[0] @ enrolled[5]), abs=2e-3)
    assert [c.similarity for c in response.results[0].candidates] == \
        sorted((c.similarity for c in response.results[0].candidates), reverse=True)
    assert response.gallery_size == 300 and response.index_state == pb.INDEX_STATE_EXACT
    # 300 faces > the calibration threshold: estimates come from the gallery's own impostor pairs
    assert response.calibration.source == pb.CALIBRATION_SOURCE_GALLERY
    assert 0 < best.false_match_rate <= best.gallery_false_match_probability <= 1
    thresholded = stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id="staff", queries=[_embedding(probes[0])], k=10, min_similarity=0.99))
    assert [c.face.face_id for c in thresholded.results[0].candidates] == ["face-5"]


def test_packed_faces_are_stored_as_the_same_faces_sent_one_message_each(stub, enrolled):
    xb = clustered_embeddings(40, D, seed=22)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="bulk", dimension=D))
    ids = [f"bulk-{i}" for i in range(39)] + [""]  # an empty id gets a UUID, as in NewFace
    added = stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="bulk", packed=convert.packed_faces(ids, xb)))
    assert list(added.face_ids[:39]) == ids[:39] and len(added.face_ids[39]) == 36 and added.face_count == 40
    again = stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="bulk", skip_existing=True,
                                                       packed=convert.packed_faces(ids[:2], xb[:2])))
    assert list(again.skipped_face_ids) == ids[:2] and again.face_count == 40
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="one-by-one", dimension=D))
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="one-by-one", faces=[
        pb.NewFace(face_id=f, embedding=_embedding(x)) for f, x in zip(added.face_ids, xb)]))
    answers = [stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id=c, queries=[_embedding(x) for x in xb[:39]], k=3, purpose="test")) for c in ("bulk", "one-by-one")]
    for bulk, single in zip(*(a.results for a in answers)):
        assert [(c.face.face_id, c.similarity) for c in bulk.candidates] == \
            [(c.face.face_id, c.similarity) for c in single.candidates]
    assert [r.candidates[0].face.face_id for r in answers[0].results] == ids[:39]
    face = stub.GetFaces(pb.GetFacesRequest(collection_id="bulk", face_ids=["bulk-3"], include_embeddings=True)).faces[0]
    np.testing.assert_allclose(convert.decode(face.embedding.values, D, expected_dimension=D),
                               vectors.normalize(xb[3:4])[0], atol=1e-3)


def test_faces_list_get_delete(stub, enrolled):
    seen, token = [], ""
    while True:
        page = stub.ListFaces(pb.ListFacesRequest(collection_id="staff", max_results=128, next_token=token))
        seen += [f.face_id for f in page.faces]
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == sorted(f"face-{i}" for i in range(300)) and len(seen) == 300
    got = stub.GetFaces(pb.GetFacesRequest(collection_id="staff", face_ids=["face-3", "nope"],
                                           include_embeddings=True))
    assert [f.face_id for f in got.faces] == ["face-3"] and list(got.unknown_face_ids) == ["nope"]
    stored = np.frombuffer(got.faces[0].embedding.values, "<f4")
    np.testing.assert_allclose(stored, enrolled[3], atol=1e-3)
    deleted = stub.DeleteFaces(pb.DeleteFacesRequest(collection_id="staff", face_ids=["face-3", "nope"]))
    assert list(deleted.deleted_face_ids) == ["face-3"] and list(deleted.unknown_face_ids) == ["nope"]
    assert deleted.face_count == 299
    response = stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id="staff", queries=[_embedding(enrolled[3])], k=299))
    assert "face-3" not in {c.face.face_id for c in response.results[0].candidates}


def _store_state(gallery):
    return {key: gallery.store.get(key) for key in gallery.store.list("")}


def test_bad_input_gets_clear_errors_and_changes_nothing(stub, gallery, enrolled):
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="empty", dimension=D))
    before = _store_state(gallery)
    good = _embedding(enrolled[0])
    nan = enrolled[0].copy()
    nan[3] = np.nan
    inf = enrolled[0].copy()
    inf[0] = np.inf
    search = stub.SearchByEmbedding
    add = stub.AddEmbeddings
    S, I = pb.SearchByEmbeddingRequest, grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (search, S(collection_id="staff", queries=[_embedding(enrolled[0][:8])], k=5), I, "dimension is 8"),
        (search, S(collection_id="staff", queries=[_embedding(nan)], k=5), I, "NaN or infinity"),
        (search, S(collection_id="staff", queries=[_embedding(inf)], k=5), I, "NaN or infinity"),
        (search, S(collection_id="staff", queries=[pb.Embedding(values=b"\x01\x02\x03", dimension=D)], k=5), I,
         "3 bytes given"),
        (search, S(collection_id="staff", queries=[good], k=0), I, "k must be in"),
        (search, S(collection_id="staff", queries=[good], k=1001), I, "k must be in"),
        (search, S(collection_id="staff", queries=[], k=5), I, "queries: 0 given"),
        (search, S(collection_id="staff", queries=[good] * 1025, k=5), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "1 to 1024"),
        (search, S(collection_id="nobody", queries=[good], k=5), grpc.StatusCode.NOT_FOUND, "'nobody'"),
        (search, S(collection_id="empty", queries=[good], k=5), grpc.StatusCode.FAILED_PRECONDITION, "empty"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", faces=_faces(enrolled[:2], 299)),
         grpc.StatusCode.ALREADY_EXISTS, "face-299"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", faces=_faces([nan], 1000)), I, "NaN"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", faces=_faces([np.zeros(D, np.float32)], 1000)), I,
         "all zeros"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", faces=_faces([enrolled[0][:4]], 1000)), I,
         "dimension is 4"),
        (add, pb.AddEmbeddingsRequest(collection_id="nobody", faces=_faces(enrolled[:1])),
         grpc.StatusCode.NOT_FOUND, "'nobody'"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=convert.packed_faces(["p0", "p1"], enrolled[:2]),
                                      faces=_faces(enrolled[:1], 1000)), I, "faces or packed, not both"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=pb.PackedFaces(
            face_ids=["p0", "p1"], dimension=D, embeddings=convert.encode(enrolled[:1]))), I,
         f"{4 * D} bytes given, 4 * 2 faces * {D}"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=convert.packed_faces(["p0"], enrolled[:1, :8])),
         I, f"packed.dimension is 8, the collection's is {D}"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=convert.packed_faces(["p0"], nan[None])), I,
         "NaN"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=convert.packed_faces(["p0", "face-3"],
                                                                                        enrolled[:2])),
         grpc.StatusCode.ALREADY_EXISTS, "face-3"),
        (add, pb.AddEmbeddingsRequest(collection_id="staff", packed=pb.PackedFaces(dimension=D)), I, "0 given"),
        (stub.CreateCollection, pb.CreateCollectionRequest(collection_id="bad name!", dimension=D), I, "collection_id"),
        (stub.CreateCollection, pb.CreateCollectionRequest(collection_id="nodim"), I, "no face model"),
        (stub.ListFaces, pb.ListFacesRequest(collection_id="staff", next_token="garbage"), I, "next_token"),
        (stub.DeleteFaces, pb.DeleteFacesRequest(collection_id="staff"), I, "face_ids: 0 given"),
        (stub.DeleteFaces, pb.DeleteFacesRequest(collection_id="staff", face_ids=["face-1"] * 4097),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "face_ids: 4097 given, 1 to 4096"),
        (stub.GetFaces, pb.GetFacesRequest(collection_id="staff", face_ids=["face-1"] * 4097),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "face_ids: 4097 given, 1 to 4096"),
        (stub.GetFaces, pb.GetFacesRequest(collection_id="staff"), I, "face_ids: 0 given"),
    ]
    for call, request, code, message in cases:
        got, details = _code(call, request)
        assert got == code, (request, details)
        assert message in details, (message, details)
    assert _store_state(gallery) == before
    assert gallery.describe("staff")[0].face_count == 300


def test_oversized_message_is_resource_exhausted(stub, enrolled):
    huge = pb.AddEmbeddingsRequest(collection_id="staff", faces=[
        pb.NewFace(face_id="big", embedding=pb.Embedding(values=b"\0" * (65 * 2**20), dimension=D))])
    assert _code(stub.AddEmbeddings, huge)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_is_honoured(stub, enrolled):
    many = pb.SearchByEmbeddingRequest(collection_id="staff", queries=[_embedding(x) for x in enrolled], k=50)
    assert _code(stub.SearchByEmbedding, many, timeout=0.001)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(stub.SearchByEmbedding(many, timeout=30).results) == 300


def test_finite_embeddings_whose_float32_norm_overflows_are_normalised_on_add_and_search(stub):
    """All 3e38 is finite but its float32 norm is inf: it was stored as a zero vector; now it has its direction."""
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="huge", dimension=D))
    huge = np.full(D, 3e38, np.float32)
    other = np.resize(np.array([1.0, -1.0], np.float32), D)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="huge", faces=[
        pb.NewFace(face_id="huge", embedding=_embedding(huge)), pb.NewFace(face_id="other", embedding=_embedding(other))]))
    stored = stub.GetFaces(pb.GetFacesRequest(collection_id="huge", face_ids=["huge"], include_embeddings=True))
    np.testing.assert_allclose(np.frombuffer(stored.faces[0].embedding.values, "<f4"), 1 / np.sqrt(D), rtol=1e-3)
    response = stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id="huge", queries=[_embedding(-huge), _embedding(huge)], k=2, purpose="test", case_id="t"))
    assert [c.face.face_id for c in response.results[1].candidates] == ["huge", "other"]
    assert response.results[1].candidates[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert response.results[0].candidates[0].similarity == pytest.approx(0.0, abs=1e-3)  # -huge ⟂ other
    zero = _embedding(np.zeros(D, np.float32))
    for call, request in [
        (stub.AddEmbeddings, pb.AddEmbeddingsRequest(collection_id="huge", faces=[pb.NewFace(embedding=zero)])),
        (stub.SearchByEmbedding, pb.SearchByEmbeddingRequest(collection_id="huge", queries=[zero], k=1,
                                                             purpose="test", case_id="t")),
    ]:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "all zeros" in details, details
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="huge")).face_count == 2


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def test_page_tokens_are_tamper_evident_and_tied_to_their_collection(stub):
    """ListFaces tokens were "partition:slot" in base64: "-1:-1" and "0:1e23" answered INTERNAL and "0:-100" was
    accepted. Forged, edited, truncated, other-collection and stale tokens now get INVALID_ARGUMENT."""
    xb = clustered_embeddings(40, D, seed=3)
    for cid in ("pages", "elsewhere"):
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id=cid, dimension=D))
        stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id=cid, faces=_faces(xb)))
    first = stub.ListFaces(pb.ListFacesRequest(collection_id="pages", max_results=7))
    token = first.next_token
    assert token and len(stub.ListFaces(pb.ListFacesRequest(collection_id="pages", max_results=7,
                                                            next_token=token)).faces) == 7
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[9] ^= 1  # the partition's first byte
    edited = base64.urlsafe_b64encode(bytes(raw)).decode()
    forged = [_b64("-1:-1"), _b64("0:1e23"), _b64("0:-100"), _b64("0:7"), "garbage", "\0", "é" * 40, token[:-4],
              token + "AAAA", edited]
    for bad in forged:
        code, details = _code(stub.ListFaces, pb.ListFacesRequest(collection_id="pages", next_token=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a page token this server issued" in details, bad
    code, details = _code(stub.ListFaces, pb.ListFacesRequest(collection_id="elsewhere", next_token=token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "collection 'elsewhere'" in details
    stub.DeleteCollection(pb.DeleteCollectionRequest(collection_id="pages"))
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="pages", dimension=D))
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="pages", faces=_faces(xb)))
    code, details = _code(stub.ListFaces, pb.ListFacesRequest(collection_id="pages", next_token=token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "stale" in details, details


def test_collection_page_tokens_of_any_text_answer_a_page(stub):
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="b", dimension=D))
    for token in ("", "\0", "a", "..", "/", "\uffff" * 1000, "\U0010ffff", "b"):
        page = stub.ListCollections(pb.ListCollectionsRequest(next_token=token))
        assert [c.collection_id for c in page.collections] == (["b"] if token < "b" else []), token


def test_a_client_finds_its_gateway_again_soon_after_it_comes_back(gallery):
    """A gateway restarted, or a standby that took over its address, answers a GalleryClient that tried it while it
    was away within a fraction of a second: gRPC's default backoff would hold the retry back 1 s (a channel with it
    is the baseline), most of what clients saw of a writer's failover (benchmarks/failover.py)."""
    with running_server(gallery, "127.0.0.1:0") as (_, port):
        client = GalleryClient(f"127.0.0.1:{port}", timeout_s=5)
        baseline = grpc.insecure_channel(f"127.0.0.1:{port}")
        describe = gallery_pb2_grpc.GalleryStub(baseline).DescribeCollection
        client.create_collection("c", dimension=D)
        assert describe(pb.DescribeCollectionRequest(collection_id="c"), timeout=5).collection_id == "c"
    try:
        for call in (lambda: client.describe("c"), lambda: describe(pb.DescribeCollectionRequest(collection_id="c"),
                                                                    timeout=5)):
            with pytest.raises(grpc.RpcError) as away:  # tried while no one serves: the channels back off
                call()
            assert away.value.code() == grpc.StatusCode.UNAVAILABLE
        with running_server(gallery, f"127.0.0.1:{port}"):
            back = time.monotonic()
            answered = {}
            while len(answered) < 2 and time.monotonic() - back < 10:
                for name, call in (("client", lambda: client.describe("c")), ("baseline", lambda: describe(
                        pb.DescribeCollectionRequest(collection_id="c"), timeout=5))):
                    if name not in answered:
                        try:
                            assert call().collection_id == "c"
                            answered[name] = time.monotonic() - back
                        except grpc.RpcError:
                            pass
                time.sleep(0.005)
        assert answered["client"] < 0.6 < answered["baseline"], answered
    finally:
        client.close()
        baseline.close()

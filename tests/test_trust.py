"""Bearer-token authentication and the audit log, through a real gRPC server."""

import json

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.api import convert
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.audit import AuditLog, read_audit
from cluster.serve.interceptors import AuditInterceptor, AuthInterceptor, load_tokens
from cluster.serve.server import running_server

TOKENS = {"s3cret-alice": "alice@agency", "s3cret-bob": "bob@agency"}


@pytest.fixture
def secured(gallery, tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    tokens = load_tokens(str(path))
    audit = AuditLog(gallery.store, flush_interval_s=60)
    with running_server(gallery, interceptors=[AuditInterceptor(audit, tokens), AuthInterceptor(tokens)]) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, audit
    audit.close()


def _bearer(token):
    return [("authorization", f"Bearer {token}")]


def test_calls_need_a_known_token_but_health_does_not(secured):
    channel, _ = secured
    stub = gallery_pb2_grpc.GalleryStub(channel)
    request = pb.ListCollectionsRequest()
    for metadata in ((), _bearer("wrong"), [("authorization", "s3cret-alice")]):
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListCollections(request, metadata=metadata)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.ListCollections(request, metadata=_bearer("s3cret-alice")).collections == []
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_every_call_is_audited_with_caller_purpose_and_candidates(secured, gallery):
    channel, audit = secured
    stub = gallery_pb2_grpc.GalleryStub(channel)
    xb = clustered_embeddings(20, 8, seed=51)
    alice = _bearer("s3cret-alice")
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=8), metadata=alice)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
        convert.new_face(f"f{i}", x) for i, x in enumerate(xb)]), metadata=alice)
    query = pb.SearchByEmbeddingRequest(collection_id="c", k=2, purpose="case 2026-114",
                                        queries=[convert.embedding(xb[4])])
    stub.SearchByEmbedding(query, metadata=_bearer("s3cret-bob"))
    with pytest.raises(grpc.RpcError):
        stub.SearchByEmbedding(query, metadata=_bearer("forged"))
    with pytest.raises(grpc.RpcError):
        stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="nope"), metadata=alice)
    audit.flush()
    records = read_audit(gallery.store)
    assert [(r["method"], r["identity"], r["code"]) for r in records] == [
        ("CreateCollection", "alice@agency", "OK"),
        ("AddEmbeddings", "alice@agency", "OK"),
        ("SearchByEmbedding", "bob@agency", "OK"),
        ("SearchByEmbedding", "unauthenticated", "UNAUTHENTICATED"),
        ("DescribeCollection", "alice@agency", "NOT_FOUND"),
    ]
    search = records[2]
    assert search["purpose"] == "case 2026-114" and search["collection_id"] == "c" and search["num_queries"] == 1
    assert search["candidates"][0][0][0] == "f4" and len(search["candidates"][0]) == 2
    assert "peer" in search and search["elapsed_ms"] >= 0
    assert records[1]["num_faces"] == 20

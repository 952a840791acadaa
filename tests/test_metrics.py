"""Prometheus metrics of a real gRPC server, scraped over HTTP on 127.0.0.1; the search fan-out's span.

The shard workers run in this process (`LocalShards`): the metrics are the gateway's, and Ray would add only
start-up time. The worker's own search time still comes back in its reply, as over Ray.
"""

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from support import Served, free_port

from cluster.api import convert
from cluster.gateway.gallery import Gallery
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.audit import AuditLog, read_audit
from cluster.serve.interceptors import TrustInterceptor
from cluster.serve.metrics import GatewayMetrics, serving_metrics
from cluster.serve.server import running_server
from cluster.serve.tokens import TokenRegistry
from cluster.shards.backend import LocalShards
from cluster.storage.object_store import ObjectStore

D = 8
GALLERY = "gallery.v1.Gallery/"


@pytest.fixture
def served(tmp_path):
    """(stub, channel, admin metadata, metrics URL, gallery) of a server with the metrics and trust interceptors."""
    store = str(tmp_path / "store")
    metrics = GatewayMetrics()
    gallery = Gallery(ObjectStore(store), LocalShards(2, store), background_maintenance=False,
                      fan_out_observer=metrics.observe_fan_out)
    metrics.watch(gallery)
    registry = TokenRegistry(gallery.store)
    admin = [("authorization", f"Bearer {registry.create('admin', 'admin', ['*'])}")]
    audit = AuditLog(gallery.store, write_observer=metrics.observe_audit_write)
    try:
        with running_server(gallery, interceptors=[metrics.interceptor(), TrustInterceptor(audit, registry)]) \
                as (_, port), serving_metrics(metrics, "127.0.0.1", 0) as metrics_port, \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield (gallery_pb2_grpc.GalleryStub(channel), channel, admin,
                   f"http://127.0.0.1:{metrics_port}/metrics", gallery)
    finally:
        audit.close()
        gallery.close()
        gallery.shards.stop()


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _sample(samples, name, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def _code(call, request, **kwargs) -> grpc.StatusCode:
    try:
        call(request, **kwargs)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_rpcs_are_counted_by_code_and_timed_and_the_gallery_is_measured(served):
    stub, channel, admin, url, gallery = served
    xb = clustered_embeddings(30, D, seed=3)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="staff", dimension=D), metadata=admin)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="staff", faces=[
        pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x)) for i, x in enumerate(xb)]), metadata=admin)
    search = pb.SearchByEmbeddingRequest(collection_id="staff", queries=[convert.embedding(xb[3])], k=2,
                                         purpose="metrics test", case_id="case-1")
    for _ in range(3):
        assert stub.SearchByEmbedding(search, metadata=admin).results[0].candidates[0].face.face_id == "f3"
    codes = [_code(stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id="nobody"), metadata=admin),
             _code(stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id="nobody"), metadata=admin),
             _code(stub.ListCollections, pb.ListCollectionsRequest()),  # no token
             _code(stub.SearchByEmbedding, pb.SearchByEmbeddingRequest(  # over MAX_QUERIES
                 collection_id="staff", queries=[convert.embedding(xb[0])] * 1025, k=1, purpose="p", case_id="c"),
                 metadata=admin)]
    assert codes == [grpc.StatusCode.NOT_FOUND] * 2 + [grpc.StatusCode.UNAUTHENTICATED,
                                                       grpc.StatusCode.RESOURCE_EXHAUSTED]
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))

    samples = _scrape(url)
    counts = {(dict(labels)["method"], dict(labels)["code"]): value
              for (name, labels), value in samples.items() if name == "gallery_grpc_requests_total"}
    assert counts == {(GALLERY + "CreateCollection", "OK"): 1, (GALLERY + "AddEmbeddings", "OK"): 1,
                      (GALLERY + "SearchByEmbedding", "OK"): 3,
                      (GALLERY + "SearchByEmbedding", "RESOURCE_EXHAUSTED"): 1,
                      (GALLERY + "DescribeCollection", "NOT_FOUND"): 2,
                      (GALLERY + "ListCollections", "UNAUTHENTICATED"): 1,
                      ("grpc.health.v1.Health/Check", "OK"): 1}
    latency = "gallery_grpc_request_duration_seconds"
    assert _sample(samples, f"{latency}_count", method=GALLERY + "SearchByEmbedding") == 4
    assert _sample(samples, f"{latency}_sum", method=GALLERY + "SearchByEmbedding") > 0
    assert _sample(samples, f"{latency}_bucket", method=GALLERY + "SearchByEmbedding", le="+Inf") == 4
    assert _sample(samples, f"{latency}_count", method=GALLERY + "ListCollections") == 1  # refused, still timed
    # One fan-out per search that was admitted (sequential: one batch each), timed on each of the 2 workers.
    assert _sample(samples, "gallery_search_fan_out_duration_seconds_count") == 3
    for worker in ("0", "1"):
        assert _sample(samples, "gallery_shard_search_duration_seconds_count", worker=worker) == 3
        assert _sample(samples, "gallery_shard_search_duration_seconds_sum", worker=worker) > 0
    # Every call but the health check is audited, and each waited for its own write (one call at a time).
    audited = len(read_audit(gallery.store))
    assert audited == sum(counts.values()) - 1 == 9
    assert _sample(samples, "gallery_audit_write_duration_seconds_count") == audited
    assert _sample(samples, "gallery_audit_write_duration_seconds_sum") > 0
    assert _sample(samples, "gallery_audit_records_per_write_count") == audited
    assert _sample(samples, "gallery_audit_records_per_write_sum") == audited
    assert _sample(samples, "gallery_collection_faces", collection="staff") == \
        gallery.describe("staff")[0].face_count == 30
    assert _sample(samples, "gallery_collection_memory_bytes", collection="staff") == gallery.memory_bytes("staff") > 0
    assert _sample(samples, "gallery_collection_index_version", collection="staff") == 0
    assert _sample(samples, "gallery_collection_training", collection="staff") == 0
    assert _sample(samples, "gallery_collection_replicas", collection="staff") == 1
    assert _sample(samples, "gallery_collection_live_replicas", collection="staff") == 1
    assert _sample(samples, "gallery_search_queued_queries") == 0
    assert _sample(samples, "gallery_search_max_queued_queries") == gallery.searches.admission.max_queries

    stub.DeleteCollection(pb.DeleteCollectionRequest(collection_id="staff"), metadata=admin)
    assert not any(name == "gallery_collection_faces" for name, _ in _scrape(url))


def test_the_search_fan_out_is_a_span_when_a_tracer_provider_is_installed(served):
    stub, _, admin, _, _ = served
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; without one, the spans are no-ops
    xb = clustered_embeddings(10, D, seed=4)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=D), metadata=admin)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
        pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x)) for i, x in enumerate(xb)]), metadata=admin)
    stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(collection_id="c", queries=[convert.embedding(xb[0])] * 3,
                                                       k=1, purpose="p", case_id="c"), metadata=admin)
    spans = [s for s in exporter.get_finished_spans() if s.name == "gallery.search.fan_out"]
    assert len(spans) == 1
    assert dict(spans[0].attributes) == {"gallery.collection_id": "c", "gallery.queries": 3, "gallery.k": 1,
                                         "gallery.index_version": 0, "gallery.shard_workers": 2}
    assert spans[0].end_time > spans[0].start_time


@pytest.mark.slow
def test_gallery_serve_serves_metrics_on_loopback(tmp_path):
    metrics_port = free_port()
    served = Served(tmp_path / "store", tmp_path / "serve.log",
                    flags=("--num-shards", "1", "--shard-num-cpus", "0.5", "--face-workers", "0",
                           "--metrics-port", str(metrics_port), "--max-queued-queries", "2048"))
    try:
        stub = gallery_pb2_grpc.GalleryStub(served.channel)
        assert _code(stub.ListCollections, pb.ListCollectionsRequest()) == grpc.StatusCode.UNAUTHENTICATED
        stub.ListCollections(pb.ListCollectionsRequest(), metadata=served.metadata)
        samples = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        requests = "gallery_grpc_requests_total"
        assert _sample(samples, requests, method=GALLERY + "ListCollections", code="UNAUTHENTICATED") == 1
        assert _sample(samples, requests, method=GALLERY + "ListCollections", code="OK") == 1
        assert _sample(samples, "gallery_search_max_queued_queries") == 2048
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in (tmp_path / "serve.log").read_text()
    finally:
        assert served.stop() == 0


def test_the_grafana_dashboard_queries_only_metrics_the_gateway_exports(served):
    stub, _, admin, url, _ = served
    xb = clustered_embeddings(10, D, seed=6)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=D), metadata=admin)
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
        pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x)) for i, x in enumerate(xb)]), metadata=admin)
    stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(collection_id="c", queries=[convert.embedding(xb[0])],
                                                       k=1, purpose="p", case_id="c"), metadata=admin)
    exported = {name for name, _ in _scrape(url)}
    dashboard = json.loads((Path(__file__).resolve().parents[1] / "infra/grafana/gallery-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bgallery_[a-z_]+", target["expr"])}
    assert len(queried) >= 8 and queried <= exported, sorted(queried - exported)

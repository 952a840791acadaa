"""Prometheus metrics of a gateway: an interceptor counts and times every RPC, a collector reads the gallery.

Names follow Prometheus' conventions (`<namespace>_<subsystem>_<name>_<unit>`, `_total` counters, latency
histograms in seconds). What the gallery holds (faces, bytes, training, queries held) is read at scrape time
by a custom collector, so a gauge is never stale and no code path has to remember to update it. The metrics
have their own registry: nothing of the process's default one (Python's GC, platform) is mixed in.

Metrics:
    gallery_grpc_requests_total{method,code}: RPCs answered, by status code (refused ones included).
    gallery_grpc_request_duration_seconds{method}: RPC latency, received to answered.
    gallery_search_fan_out_duration_seconds: one search batch sent to every shard worker and answered.
    gallery_shard_search_duration_seconds{worker}: a shard worker's own time on a search batch.
    gallery_audit_write_duration_seconds: one durable write of the audit log; every call waits for one.
    gallery_audit_records_per_write: the calls' records one write held (concurrent calls share a write).
    gallery_search_queued_queries: queries the gateway holds, queued or in flight (admission control).
    gallery_search_max_queued_queries: the bound beyond which searches are refused.
    gallery_collection_faces{collection}, gallery_collection_memory_bytes{collection}: size of each collection.
    gallery_collection_index_version{collection}: 0 while exact, the IVF-PQ version once trained.
    gallery_collection_training{collection}: 1 while the collection trains or calibrates in the background.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster.gateway.gallery import Gallery

logger = logging.getLogger(__name__)

# From a fraction of a millisecond (a describe, a search of a small collection over the channels) to the
# minutes a large AddEmbeddings or a search held up by a burst can take.
RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0)
SEARCH_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Up to the audit log's largest write (AuditLog's max_batch).
RECORDS_PER_WRITE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class GatewayMetrics:
    """The metrics of one gateway, in their own registry.

    Args:
        registry: where the metrics are registered; None makes a new one.

    Example:
        >>> metrics = GatewayMetrics()
        >>> gallery = Gallery(store, shards, fan_out_observer=metrics.observe_fan_out)
        >>> metrics.watch(gallery)
        >>> trust = TrustInterceptor(AuditLog(store, write_observer=metrics.observe_audit_write), tokens)
        >>> server, port = create_server(gallery, interceptors=[metrics.interceptor(), trust])
        >>> with serving_metrics(metrics, "127.0.0.1", 9464): ...
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("gallery_grpc_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.duration = Histogram("gallery_grpc_request_duration_seconds", "RPC latency, received to answered",
                                  ["method"], buckets=RPC_BUCKETS_S, registry=self.registry)
        self.fan_out = Histogram("gallery_search_fan_out_duration_seconds",
                                 "A search batch sent to every shard worker and answered", buckets=SEARCH_BUCKETS_S,
                                 registry=self.registry)
        self.shard_search = Histogram("gallery_shard_search_duration_seconds",
                                      "A shard worker's own time on a search batch", ["worker"],
                                      buckets=SEARCH_BUCKETS_S, registry=self.registry)
        self.audit_write = Histogram("gallery_audit_write_duration_seconds",
                                     "One durable write of the audit log; every call waits for one",
                                     buckets=SEARCH_BUCKETS_S, registry=self.registry)
        self.audit_records = Histogram("gallery_audit_records_per_write",
                                       "Calls' records held by one audit log write", buckets=RECORDS_PER_WRITE_BUCKETS,
                                       registry=self.registry)

    def observe_fan_out(self, seconds: float, worker_seconds: list[float]) -> None:
        """The gateway's `fan_out_observer`: one fan-out's duration and each worker's, in worker order."""
        self.fan_out.observe(seconds)
        for worker, s in enumerate(worker_seconds):
            self.shard_search.labels(worker=str(worker)).observe(s)

    def observe_audit_write(self, seconds: float, records: int) -> None:
        """The audit log's `write_observer`: one durable write's duration and the records it held."""
        self.audit_write.observe(seconds)
        self.audit_records.observe(records)

    def watch(self, gallery: Gallery) -> None:
        """Reports the gallery's collections and queries held at every scrape."""
        self.registry.register(_GalleryCollector(gallery))

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary RPC by method and status code; put it first, so it sees refused calls too."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        behaviour = handler.unary_unary
        requests, duration = self.metrics.requests, self.metrics.duration.labels(method=method)

        def measured(request, context: grpc.ServicerContext):
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN  # an exception that did not set a code ends the call as UNKNOWN
            try:
                response = behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or code
                raise
            finally:
                duration.observe(time.perf_counter() - start)
                requests.labels(method=method, code=_code_name(code)).inc()

        return handler._replace(unary_unary=measured)


def _code_name(code) -> str:
    # context.code() gives a StatusCode, or whatever int a servicer passed to set_code
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _GalleryCollector(Collector):
    """Gauges read from the gallery at scrape time."""

    def __init__(self, gallery: Gallery):
        self.gallery = gallery

    def collect(self):
        searches = self.gallery.searches
        yield GaugeMetricFamily("gallery_search_queued_queries", "Queries the gateway holds, queued or in flight",
                                value=searches.admission.held)
        yield GaugeMetricFamily("gallery_search_max_queued_queries", "Queries held beyond which searches are "
                                "refused with RESOURCE_EXHAUSTED", value=searches.admission.max_queries)
        labels = ["collection"]
        faces = GaugeMetricFamily("gallery_collection_faces", "Faces enrolled in the collection", labels=labels)
        memory = GaugeMetricFamily("gallery_collection_memory_bytes", "Bytes the collection's partitions take in "
                                   "the shard workers' memory", labels=labels)
        version = GaugeMetricFamily("gallery_collection_index_version", "0 while the collection is searched "
                                    "exactly, else the version of its trained IVF-PQ index", labels=labels)
        training = GaugeMetricFamily("gallery_collection_training", "1 while the collection trains or "
                                     "calibrates in the background", labels=labels)
        replicas = GaugeMetricFamily("gallery_collection_replicas", "Copies of each partition the collection "
                                     "keeps", labels=labels)
        live = GaugeMetricFamily("gallery_collection_live_replicas", "The fewest copies of any of the collection's "
                                 "partitions that can be searched now (0: some partition cannot)", labels=labels)
        for state in self.gallery.collections.states():
            if state.deleted:
                continue
            m = state.manifest
            faces.add_metric([m.collection_id], m.face_count)
            version.add_metric([m.collection_id], m.index_version)
            training.add_metric([m.collection_id], int(bool(state.maintenance and state.maintenance.is_alive())))
            replicas.add_metric([m.collection_id], m.replicas)
            live.add_metric([m.collection_id], self.gallery.shards.live_replicas(m.collection_id))
            try:
                memory.add_metric([m.collection_id], self.gallery.memory_bytes(m.collection_id))
            except Exception as e:  # a worker down or the collection just deleted: the other gauges still count
                logger.debug("no memory_bytes for %s at this scrape: %s", m.collection_id, e)
        yield from (faces, memory, version, training, replicas, live)


@contextlib.contextmanager
def serving_metrics(metrics: GatewayMetrics, host: str = "127.0.0.1", port: int = 9464) -> Iterator[int]:
    """Serves /metrics over HTTP for the duration of a with-block and yields the bound port (port 0: a free one)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = server.server_address[1]
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

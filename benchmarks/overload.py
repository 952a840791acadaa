"""Overload benchmark: latency of admitted searches at twice the gateway's capacity, with and without the bound.

A gateway (real gRPC server on 127.0.0.1) over in-process shard workers (`LocalShards`, one FAISS thread each)
holds N clustered d-dimensional faces. Requests of nq queries each:

1. unloaded: one client, one request at a time: latency p50/p99;
2. capacity: as many concurrent clients as the bound admits: queries per second served;
3. 2x overload: requests arrive open-loop at twice that rate for `duration_s`: p99 latency of the admitted
   requests and the fraction refused with RESOURCE_EXHAUSTED (and how fast), first with the bound
   (`--max-queued-queries`), then with none (a bound no burst reaches), as before admission control.

Prints the figures and the machine, then one JSON line.

    python benchmarks/overload.py                   # 20k faces, 128-d, 1,024 queries a request, ~1 minute
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from host import describe  # benchmarks/host.py, beside this script

from cluster.api import convert, flags
from cluster.gateway.gallery import Gallery
from cluster.gateway.search import DEFAULT_MAX_QUEUED_QUERIES
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceRecord

METHOD = "/gallery.v1.Gallery/SearchByEmbedding"


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def _run(gallery: Gallery, requests: list[bytes], *, clients: int, duration_s: float, rate_per_s: float | None,
         deadline_s: float) -> dict:
    """Closed loop with `clients` clients (rate None), or open-loop arrivals at `rate_per_s` requests a second."""
    ok, refused, failed = [], [], []
    lock = threading.Lock()
    with running_server(gallery, "127.0.0.1:0", max_workers=256) as (_, port), \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        search = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        def one(i: int) -> None:
            began = time.monotonic()
            try:
                search(requests[i % len(requests)], timeout=deadline_s)
                seconds, into = time.monotonic() - began, ok
            except grpc.RpcError as e:
                seconds = time.monotonic() - began
                into = refused if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else failed
            with lock:
                into.append(seconds)

        search(requests[0], timeout=deadline_s)  # warm-up: connection, first batch
        started = time.monotonic()
        if rate_per_s is None:
            def client(c: int) -> None:
                i = c
                while time.monotonic() - started < duration_s:
                    one(i)
                    i += clients
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(client, range(clients)))
        else:
            with ThreadPoolExecutor(200) as pool:  # more than the bound admits: arrivals never wait for a thread
                i = 0
                while time.monotonic() - started < duration_s:
                    pool.submit(one, i)
                    i += 1
                    time.sleep(max(0.0, i / rate_per_s - (time.monotonic() - started)))
        elapsed = time.monotonic() - started
    return {"requests": len(ok) + len(refused) + len(failed), "ok": len(ok), "refused": len(refused),
            "failed": len(failed), "elapsed_s": round(elapsed, 2),
            "p50_s": _p(ok, 50), "p99_s": _p(ok, 99),
            "refused_p99_s": _p(refused, 99)}


def main(faces: int = 20_000, dimension: int = 128, queries_per_request: int = 1024,
         max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES, duration_s: float = 10.0, unloaded_requests: int = 20,
         deadline_s: float = 60.0) -> dict:
    xb = clustered_embeddings(faces, dimension, seed=7)
    rng = np.random.default_rng(8)
    requests = [pb.SearchByEmbeddingRequest(collection_id="bench", k=10, queries=[
        convert.embedding(x) for x in xb[rng.integers(0, faces, queries_per_request)]]).SerializeToString()
        for _ in range(8)]
    results = {}
    for label, bound in (("bounded", max_queued_queries), ("unbounded", 10**9)):
        with tempfile.TemporaryDirectory() as tmp:
            gallery = Gallery(ObjectStore(tmp), LocalShards(2, tmp, omp_threads=1), background_maintenance=False,
                              max_queued_queries=bound)
            try:
                gallery.create_collection("bench", dimension=dimension, train_threshold=10 * faces)
                for start in range(0, faces, 10_000):
                    end = min(start + 10_000, faces)
                    gallery.add("bench", [FaceRecord(f"f{i}") for i in range(start, end)], xb[start:end])
                if label == "bounded":
                    lat = []
                    with running_server(gallery, "127.0.0.1:0") as (_, port), \
                            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        search = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
                        search(requests[0], timeout=deadline_s)
                        for i in range(unloaded_requests):
                            began = time.monotonic()
                            search(requests[i % len(requests)], timeout=deadline_s)
                            lat.append(time.monotonic() - began)
                    unloaded = {"p50_s": _p(lat, 50), "p99_s": _p(lat, 99)}
                    clients = max(1, max_queued_queries // queries_per_request)
                    capacity = _run(gallery, requests, clients=clients, duration_s=duration_s, rate_per_s=None,
                                    deadline_s=deadline_s)
                    capacity_rps = capacity["ok"] / capacity["elapsed_s"]
                    results.update(unloaded=unloaded, capacity_queries_per_s=round(capacity_rps * queries_per_request))
                results[f"overload_2x_{label}"] = _run(gallery, requests, clients=0, duration_s=duration_s,
                                                       rate_per_s=2 * capacity_rps, deadline_s=deadline_s)
            finally:
                gallery.close()
                gallery.shards.stop()
    machine = describe()
    print(f"machine: {machine['cpu']} x {machine['cpu_count']}, {machine['memory_gib']} GiB")
    print(f"{faces} faces, d={dimension}, {queries_per_request} queries a request, bound {max_queued_queries}")
    print(f"unloaded: p50 {results['unloaded']['p50_s']:.3f} s, p99 {results['unloaded']['p99_s']:.3f} s; "
          f"capacity {results['capacity_queries_per_s']} queries/s")
    for label in ("bounded", "unbounded"):
        r = results[f"overload_2x_{label}"]
        print(f"2x overload, {label}: {r['ok']} admitted p50 {r['p50_s']:.3f} s p99 {r['p99_s']:.3f} s; "
              f"{r['refused']} refused (p99 {r['refused_p99_s']} s); {r['failed']} failed")
    summary = {"unloaded_p99_s": results["unloaded"]["p99_s"],
               "overload_2x_admitted_p99_s": results["overload_2x_bounded"]["p99_s"],
               "overload_2x_refused_fraction": round(results["overload_2x_bounded"]["refused"]
                                                     / max(1, results["overload_2x_bounded"]["requests"]), 3),
               "overload_2x_unbounded_p99_s": results["overload_2x_unbounded"]["p99_s"],
               "details": results, "machine": machine}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(**vars(flags.parser_for(main, "benchmarks/overload.py").parse_args()))

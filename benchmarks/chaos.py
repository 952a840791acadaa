"""Chaos benchmark: sustained searches and writes while shard workers and Ray nodes are killed.

Several Ray nodes on this machine (`ray.cluster_utils.Cluster`, a raylet each; the head has no CPUs, so every
worker lands on the others) serve one `gallery serve --replicas 2` as a subprocess. Two collections of
clustered vectors: "r2" keeps 2 replicas of each partition, "r1" one. Client processes search both without
pause: "r2" as a plain search, "r1" allowing partial results. Each probe is an enrolled face, so a whole
answer has the probe first; an answer without it and without `partial` set is an *unflagged partial*. A
writer adds faces and deletes others throughout, remembering what was acknowledged.

The chaos, in order: a shard worker process killed (SIGKILL; Ray restarts it), a whole node removed and a
new one added (Ray reschedules its workers), then a second worker killed. Recovery is the time from an event until
every partition of both collections has all its replicas live again; `recovery_s` is the longest. At the end every face is
listed: an acknowledged add that is missing is *lost*, an acknowledged delete that is present *resurrected*.

Not reproduced here: workers killed by Ray's memory monitor. On this machine the monitor's threshold is the
whole machine's memory, which the benchmark cannot fill without taking the other processes with it; such a
kill ends a worker process as SIGKILL does, which the first event covers.

Prints the figures and the machine, then one JSON line with failed_queries (searches of "r2" that failed),
unflagged_partial, lost_faces, resurrected_faces and recovery_s.

    python benchmarks/chaos.py             # 20k faces a collection, 64-d, ~3 minutes
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from host import describe  # benchmarks/host.py, beside this script
from ray.cluster_utils import Cluster
from servers import serving_address  # benchmarks/servers.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import QUICK_NODE_FAILURE, shard_worker_pids  # noqa: E402

from cluster.api import convert, flags
from cluster.index.synthetic import clustered_embeddings

PROBES = 64


def _search_without_pause(address: str, token: str, xq: np.ndarray, first_id: int, stop, out) -> None:
    """A client process: searches r2 (whole answers required) and r1 (partial allowed) until `stop` is set."""
    md = [("authorization", f"Bearer {token}")]
    counts = {"r2_ok": 0, "r2_failed": 0, "r2_codes": {}, "r1_ok": 0, "r1_partial": 0, "r1_failed": 0,
              "r1_codes": {}, "unflagged_partial": 0}
    expected = [f"f{first_id + i}" for i in range(len(xq))]
    queries = [convert.embedding(x) for x in xq]
    with grpc.insecure_channel(address) as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        while not stop.is_set():
            for collection, allow_partial in (("r2", False), ("r1", True)):
                request = pb.SearchByEmbeddingRequest(collection_id=collection, k=1, queries=queries,
                                                      allow_partial=allow_partial, purpose="chaos benchmark",
                                                      case_id="chaos")
                try:
                    response = stub.SearchByEmbedding(request, metadata=md, timeout=10)
                except grpc.RpcError as e:
                    counts[f"{collection}_failed"] += 1
                    codes = counts[f"{collection}_codes"]
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1
                    continue
                whole = [r.candidates[0].face.face_id if r.candidates else "" for r in response.results] == expected
                if response.partial:
                    counts[f"{collection}_partial"] = counts.get(f"{collection}_partial", 0) + 1
                elif not whole:
                    counts["unflagged_partial"] += 1
                counts[f"{collection}_ok"] += 1
    out.put(counts)


class _Writer(threading.Thread):
    """Adds faces to both collections and deletes some, remembering what the server acknowledged."""

    def __init__(self, stub, md, dimension: int, start_id: int):
        super().__init__(daemon=True)
        self.stub, self.md, self.dimension, self.next_id = stub, md, dimension, start_id
        self.added: dict[str, set[str]] = {"r1": set(), "r2": set()}
        self.deleted: dict[str, set[str]] = {"r1": set(), "r2": set()}
        self.failed = 0
        self.stop = threading.Event()
        self.rng = np.random.default_rng(7)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for collection in ("r1", "r2"):
                ids = [f"w{self.next_id + i}" for i in range(50)]
                xb = self.rng.standard_normal((50, self.dimension)).astype(np.float32)
                try:
                    self.stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id=collection, faces=[
                        pb.NewFace(face_id=f, embedding=convert.embedding(x)) for f, x in zip(ids, xb)]),
                        metadata=self.md, timeout=10)
                    self.added[collection].update(ids)
                except grpc.RpcError:
                    self.failed += 1  # not acknowledged: it may or may not be there; neither counts
                victims = sorted(self.added[collection] - self.deleted[collection])[:10]
                if victims:
                    try:
                        self.stub.DeleteFaces(pb.DeleteFacesRequest(collection_id=collection, face_ids=victims),
                                              metadata=self.md, timeout=10)
                        self.deleted[collection].update(victims)
                    except grpc.RpcError:
                        self.failed += 1
            self.next_id += 50


def _listed(stub, md, collection: str) -> set[str]:
    ids, token = set(), ""
    while True:
        page = stub.ListFaces(pb.ListFacesRequest(collection_id=collection, max_results=1000, next_token=token),
                              metadata=md, timeout=30)
        ids.update(f.face_id for f in page.faces)
        token = page.next_token
        if not token:
            return ids


def _fully_replicated(stub, md) -> bool:
    try:
        for collection, replicas in (("r1", 1), ("r2", 2)):
            d = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id=collection), metadata=md,
                                        timeout=5)
            if d.live_replicas < replicas or d.unavailable_partitions:
                return False
        return True
    except grpc.RpcError:
        return False


def run(num_faces: int = 20_000, dimension: int = 64, clients: int = 2, num_shards: int = 2,
        settle_s: float = 15.0, recovery_limit_s: float = 120.0) -> dict:
    """Runs the chaos described in the module docstring; returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 * 2**20, "_system_config": QUICK_NODE_FAILURE})
    server = None
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        log = open(work / "serve.log", "ab")
        server = subprocess.Popen(
            [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(work / "store"), "--port", "0",
             "--ray-address", cluster.address, "--num-shards", str(num_shards), "--replicas", "2",
             "--shard-num-cpus", "1", "--face-workers", "0", "--metrics-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = serving_address(server, work / "serve.log", 180)
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 180
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gallery serve did not start: {(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        token = (work / "store.admin-token").read_text().strip()
        md = [("authorization", f"Bearer {token}")]
        stub = gallery_pb2_grpc.GalleryStub(channel)
        xb = clustered_embeddings(num_faces, dimension, seed=5)
        for collection, replicas in (("r1", 1), ("r2", 2)):
            stub.CreateCollection(pb.CreateCollectionRequest(collection_id=collection, dimension=dimension,
                                                             replicas=replicas), metadata=md)
            for start in range(0, num_faces, 5000):
                stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id=collection, faces=[
                    pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(xb[i]))
                    for i in range(start, min(num_faces, start + 5000))]), metadata=md, timeout=120)
        enrolled = {f"f{i}" for i in range(num_faces)}

        events: list[tuple[str, float]] = []
        began = time.time()
        context = multiprocessing.get_context("spawn")
        results, stop = context.Queue(), context.Event()
        searchers = [context.Process(target=_search_without_pause, args=(
            address, token, xb[c * PROBES:(c + 1) * PROBES], c * PROBES, stop, results)) for c in range(clients)]
        for p in searchers:
            p.start()
        writer = _Writer(stub, md, dimension, start_id=num_faces)
        writer.start()

        time.sleep(settle_s)
        recoveries = []

        def recover(at: float, limit_s: float) -> None:
            """Waits until fully replicated (or limit_s), then for the rest of the settle time."""
            time.sleep(2)  # let the gateway notice before recovery is timed
            while not _fully_replicated(stub, md) and time.time() - at < limit_s:
                time.sleep(0.25)
            recoveries.append(round(time.time() - at, 1) if _fully_replicated(stub, md) else None)
            time.sleep(max(0.0, settle_s - (time.time() - at)))

        with_workers = [n for n in cluster.worker_nodes if shard_worker_pids(n)]
        os.kill(shard_worker_pids(with_workers[0])[0], signal.SIGKILL)
        events.append(("shard worker killed", time.time() - began))
        recover(time.time(), recovery_limit_s)
        victim = max(cluster.worker_nodes, key=lambda n: len(shard_worker_pids(n)))
        cluster.remove_node(victim, allow_graceful=False)
        events.append(("node removed", time.time() - began))
        removed = time.time()
        cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
        events.append(("node added", time.time() - began))
        recover(removed, recovery_limit_s)
        os.kill(shard_worker_pids(max(cluster.worker_nodes, key=lambda n: len(shard_worker_pids(n))))[0],
                signal.SIGKILL)
        last_event = time.time()
        events.append(("shard worker killed", last_event - began))
        recover(last_event, recovery_limit_s)
        known = [r for r in recoveries if r is not None]
        recovery_s = max(known) if len(known) == len(recoveries) else None
        writer.stop.set()
        writer.join()
        stop.set()
        counts = [results.get(timeout=120) for _ in searchers]
        for p in searchers:
            p.join()

        lost = resurrected = 0
        for collection in ("r1", "r2"):
            present = _listed(stub, md, collection)
            lost += len((enrolled | writer.added[collection]) - writer.deleted[collection] - present)
            resurrected += len(writer.deleted[collection] & present)
        total = {key: sum(c.get(key, 0) for c in counts) for key in
                 ("r2_ok", "r2_failed", "r1_ok", "r1_partial", "r1_failed", "unflagged_partial")}
        codes: dict[str, dict[str, int]] = {"r2": {}, "r1": {}}
        for c in counts:
            for collection, of_collection in codes.items():
                for code, n in c[f"{collection}_codes"].items():
                    of_collection[code] = of_collection.get(code, 0) + n
        return {"faces_per_collection": num_faces, "dimension": dimension, "client_processes": clients,
                "events": [{"event": e, "at_s": round(t, 1)} for e, t in events],
                "r2_searches_ok": total["r2_ok"], "failed_queries": total["r2_failed"], "failed_codes": codes["r2"],
                "r1_searches_ok": total["r1_ok"], "r1_flagged_partial": total["r1_partial"],
                "r1_failed": total["r1_failed"], "r1_failed_codes": codes["r1"], "unflagged_partial": total["unflagged_partial"],
                "writes_acknowledged": sum(len(s) for s in writer.added.values()),
                "deletes_acknowledged": sum(len(s) for s in writer.deleted.values()),
                "writes_failed": writer.failed, "lost_faces": lost, "resurrected_faces": resurrected,
                "recovery_after_each_s": recoveries, "recovery_s": recovery_s}
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.shutdown()


def main(num_faces: int = 20_000, dimension: int = 64, clients: int = 2) -> None:
    """Chaos benchmark: searches and writes while shard workers and Ray nodes are killed."""
    print(describe(), flush=True)
    figures = run(num_faces=num_faces, dimension=dimension, clients=clients)
    for event in figures["events"]:
        print(f"{event['at_s']:7.1f} s  {event['event']}")
    print(f"r2 (2 replicas): {figures['r2_searches_ok']} searches answered, {figures['failed_queries']} failed "
          f"{figures['failed_codes']}")
    print(f"r1 (1 replica, partial allowed): {figures['r1_searches_ok']} answered, {figures['r1_flagged_partial']} "
          f"flagged partial, {figures['r1_failed']} failed {figures['r1_failed_codes']}; unflagged partial answers: "
          f"{figures['unflagged_partial']}")
    print(f"writes: {figures['writes_acknowledged']} adds and {figures['deletes_acknowledged']} deletes acknowledged "
          f"({figures['writes_failed']} refused); lost {figures['lost_faces']}, "
          f"resurrected {figures['resurrected_faces']}")
    print(f"full replication back after each event: {figures['recovery_after_each_s']} s "
          f"(worst {figures['recovery_s']} s; None: not within the limit)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main(**vars(flags.parser_for(main, "benchmarks/chaos.py").parse_args()))

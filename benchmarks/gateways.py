"""Search throughput with more gateways: read gateways (`gallery serve --role reader`) added beside the writer.

A writer enrolls `num_faces` clustered vectors (trained to IVF-PQ); `readers` read gateways follow it, each
with its own private Ray and shard workers. Client processes (`clients_per_gateway` per gateway) send
batch-1 searches without pause for `duration_s`, first all to one reader, then spread over all of them:
queries per second served both ways, the ratio, and the machine's CPU count, which bounds the ratio (every
gateway and its shard workers share the same cores). Issue 16's target: 4 gateways serve >= 3x the
batch-1 throughput of one, "where there are cores for them" (16 or more).

Prints the figures and the machine, then one JSON line.

    python benchmarks/gateways.py                  # 4 readers, 50k 128-d faces, ~4 minutes
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from host import describe  # benchmarks/host.py, beside this script
from servers import serve_process, serving_address, stop_all, wait_until  # benchmarks/servers.py

from cluster.api import convert, flags
from cluster.index.synthetic import clustered_embeddings


def _serve(store: Path, log: Path, *extra: str):
    return serve_process(store, log, "--num-shards", "2", "--shard-num-cpus", "0.5", "--face-workers", "0",
                         "--metrics-port", "0", *extra)


def _holds(address: str, md, faces: int) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            d = gallery_pb2_grpc.GalleryStub(channel).DescribeCollection(
                pb.DescribeCollectionRequest(collection_id="c"), metadata=md, timeout=2)
            return d.face_count == faces and d.index_state == pb.INDEX_STATE_IVF_PQ
    except grpc.RpcError:
        return False


def _client(address: str, token: str, xq: np.ndarray, start_at: float, stop_at: float, out) -> None:
    md = [("authorization", f"Bearer {token}")]
    requests = [pb.SearchByEmbeddingRequest(collection_id="c", k=10, queries=[convert.embedding(x)], ids_only=True,
                                            purpose="gateway benchmark", case_id="gateways") for x in xq]
    done = failed = 0
    with grpc.insecure_channel(address) as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        stub.SearchByEmbedding(requests[0], metadata=md, timeout=30)  # connected and warm
        time.sleep(max(0.0, start_at - time.time()))
        i = 0
        while time.time() < stop_at:
            try:
                stub.SearchByEmbedding(requests[i % len(requests)], metadata=md, timeout=10)
                done += 1
            except grpc.RpcError:
                failed += 1
            i += 1
    out.put((done, failed))


def _throughput(addresses: list[str], token: str, xq: np.ndarray, clients_per_gateway: int,
                duration_s: float) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 10  # every client connected first
    stop_at = start_at + duration_s
    clients = [context.Process(target=_client, args=(address, token, xq[i::7], start_at, stop_at, out))
               for i, address in enumerate(a for a in addresses for _ in range(clients_per_gateway))]
    for c in clients:
        c.start()
    results = [out.get(timeout=duration_s + 120) for _ in clients]
    for c in clients:
        c.join()
    return sum(d for d, _ in results) / duration_s, sum(f for _, f in results)


def main(num_faces: int = 50_000, dimension: int = 128, readers: int = 4, clients_per_gateway: int = 2,
         duration_s: float = 20.0) -> None:
    """Search throughput of one read gateway against several, at batch 1."""
    machine = describe()
    print(machine, flush=True)
    work = Path(tempfile.mkdtemp(prefix="gateways-"))
    store = work / "store"
    processes = []
    try:
        processes.append(_serve(store, work / "writer.log", "--train-threshold", str(num_faces)))
        writer = serving_address(processes[-1], work / "writer.log", 180)
        token = Path(f"{store}.admin-token").read_text().strip()  # written before it serves
        md = [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(writer) as channel:
            stub = gallery_pb2_grpc.GalleryStub(channel)
            wait_until(lambda: _try(lambda: stub.CreateCollection(pb.CreateCollectionRequest(
                collection_id="c", dimension=dimension), metadata=md, timeout=5)), 180, "the writer serving")
            xb = clustered_embeddings(num_faces, dimension, seed=11)
            for start in range(0, num_faces, 5000):
                stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
                    pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(xb[i]))
                    for i in range(start, min(start + 5000, num_faces))]), metadata=md, timeout=120)
        wait_until(lambda: _holds(writer, md, num_faces), 900, "training")
        for r in range(readers):
            processes.append(_serve(store, work / f"reader-{r}.log", "--role", "reader",
                                    "--audit-store", str(work / f"audit-{r}")))
        addresses = [serving_address(p, work / f"reader-{r}.log", 300) for r, p in enumerate(processes[1:])]
        for address in addresses:
            wait_until(lambda: _holds(address, md, num_faces), 300, f"the reader on {address}")
        rng = np.random.default_rng(1)
        xq = (xb[rng.choice(num_faces, 1000, replace=False)] + 0.05 * rng.standard_normal((1000, dimension))
              ).astype(np.float32)
        one, one_failed = _throughput(addresses[:1], token, xq, clients_per_gateway, duration_s)
        print(f"1 gateway, {clients_per_gateway} clients: {one:.0f} QPS ({one_failed} failed)", flush=True)
        many, many_failed = _throughput(addresses, token, xq, clients_per_gateway, duration_s)
        print(f"{readers} gateways, {clients_per_gateway * readers} clients: {many:.0f} QPS ({many_failed} failed); "
              f"{many / one:.2f}x on {machine['cpu_count']} CPUs", flush=True)
        print(json.dumps({"machine": machine, "faces": num_faces, "dimension": dimension, "readers": readers,
                          "qps_one_gateway": round(one, 1), "qps_all_gateways": round(many, 1),
                          "ratio": round(many / one, 2), "failed": one_failed + many_failed}))
    finally:
        stop_all(processes)


def _try(call) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


if __name__ == "__main__":
    main(**vars(flags.parser_for(main, "benchmarks/gateways.py").parse_args()))

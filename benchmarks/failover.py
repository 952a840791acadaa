"""Writer failover: how long after the writer dies a standby `gallery serve` answers as the writer.

A writer and a standby (`--role standby`, its shard workers started and loaded) serve one store, each with its
own private Ray, on one address: the standby binds the writer's port once it takes over, as a standby behind
the same Service would. The writer holds `num_faces` faces; it is killed (SIGKILL). Measured from the kill:
when the standby logs that it serves (the takeover), and when two clients that kept their channels to the
address through the kill answer a DescribeCollection: one with gRPC's default reconnect backoff (1 s at
first), one with `GalleryClient`'s; then a search with every probe found. Repeated `rounds` times, the
standby of one round being the writer of the next. On a folder store the lease is free the moment the writer
dies; on S3 add the lease's expiry (30 s by default, `cluster/storage/lease.py`).

Prints each round, the medians and the machine, then one JSON line.

    python benchmarks/failover.py        # 20k faces, 64-d, 3 rounds, ~3 minutes
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from host import describe  # benchmarks/host.py, beside this script
from servers import serve_process, serving_address, stop_all, wait_until  # benchmarks/servers.py

from cluster.api import flags
from cluster.client import GalleryClient
from cluster.index.synthetic import clustered_embeddings


def _start(store: Path, log: Path, role: str, port: int = 0):
    return serve_process(store, log, "--role", role, "--num-shards", "2", "--shard-num-cpus", "0.5",
                         "--face-workers", "0", "--metrics-port", "0", port=port)


def _answers(call) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def _answered_after(call, since: float, timeout_s: float) -> float:
    """Seconds from `since` until `call()` (a DescribeCollection) answers, polled every 10 ms."""
    wait_until(lambda: _answers(call), timeout_s, "an answer", poll_s=0.01)
    return time.monotonic() - since


def _searched_after(client: GalleryClient, call, probes: np.ndarray, since: float) -> tuple[float, float]:
    """Seconds from `since` until `call()` answers, then until the client's search of `probes` found each probe
    first."""
    answered = _answered_after(call, since, 120)
    _, found = client.search("c", probes, 1, purpose="failover benchmark", case_id="failover")
    if [ids[0] for ids in found] != [f"f{i}" for i in range(len(probes))]:
        raise AssertionError(f"the new writer answered {[ids[0] for ids in found][:4]}…")
    return answered, time.monotonic() - since


def main(num_faces: int = 20_000, dimension: int = 64, rounds: int = 3) -> None:
    """Writer failover: seconds from the writer's death until a standby answers as the writer."""
    print(describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="failover-"))
    store = work / "store"
    processes = []
    try:
        writer = _start(store, work / "serve-0.log", "writer")
        processes.append(writer)
        address = serving_address(writer, work / "serve-0.log", 180)
        token = Path(f"{store}.admin-token").read_text().strip()  # written before it serves
        md = [("authorization", f"Bearer {token}")]
        default_channel = grpc.insecure_channel(address)
        client = GalleryClient(address, token=token, timeout_s=30)
        stub = gallery_pb2_grpc.GalleryStub(default_channel)
        request = pb.DescribeCollectionRequest(collection_id="c")
        by_default, by_client = (lambda: stub.DescribeCollection(request, metadata=md, timeout=2),
                                 lambda: client.describe("c"))
        wait_until(lambda: _answers(by_default) or _created(stub, md, dimension), 180, "the writer serving")
        xb = clustered_embeddings(num_faces, dimension, seed=3)
        for start in range(0, num_faces, 5000):
            client.add("c", [f"f{i}" for i in range(start, min(start + 5000, num_faces))],
                       xb[start:min(start + 5000, num_faces)])
        rows = []
        for r in range(1, rounds + 1):
            log = work / f"serve-{r}.log"
            standby = _start(store, log, "standby", port=int(address.rsplit(":", 1)[1]))
            processes.append(standby)
            wait_until(lambda: "waiting for the writer lease" in log.read_text(), 180, "the standby ready")
            os.kill(writer.pid, signal.SIGKILL)
            killed = time.monotonic()
            with ThreadPoolExecutor(2) as pool:  # both clients poll from the kill on, side by side
                default_answered = pool.submit(_answered_after, by_default, killed, 120)
                client_searched = pool.submit(_searched_after, client, by_client, xb[:32], killed)
                serving_address(standby, log, 120)
                took_over = time.monotonic() - killed  # within the 10 ms the log is polled at
                row = {"takeover_s": took_over, "default_client_s": default_answered.result()}
                row["gallery_client_s"], row["every_probe_found_s"] = client_searched.result()
            rows.append(row)
            print(f"round {r}: the standby served {row['takeover_s']:.2f} s after the writer was killed; a client "
                  f"with gRPC's default backoff had an answer {row['default_client_s']:.2f} s after, GalleryClient "
                  f"{row['gallery_client_s']:.2f} s, and found every probe {row['every_probe_found_s']:.2f} s after",
                  flush=True)
            writer.wait()
            writer = standby
        default_channel.close()
        client.close()
        figures = {"faces": num_faces, "dimension": dimension, "rounds": rounds}
        for name in rows[0]:
            figures[name] = [round(row[name], 2) for row in rows]
            figures[f"{name.removesuffix('_s')}_p50_s"] = round(float(np.median(figures[name])), 2)
        print(f"over {rounds} rounds ({num_faces} faces, folder store), p50: the standby served "
              f"{figures['takeover_p50_s']} s after the kill; clients answered after {figures['default_client_p50_s']} s "
              f"(gRPC's default backoff) and {figures['gallery_client_p50_s']} s (GalleryClient)")
        print(json.dumps(figures))
    finally:
        stop_all(processes)


def _created(stub, md, dimension: int) -> bool:
    try:
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=dimension), metadata=md,
                              timeout=5)
        return True
    except grpc.RpcError:
        return False


if __name__ == "__main__":
    main(**vars(flags.parser_for(main, "benchmarks/failover.py").parse_args()))

"""Writer failover: how long after the writer dies a standby `gallery serve` answers as the writer.

A writer and a standby (`--role standby`, its shard workers started and loaded) serve one store, each with its
own private Ray. The writer holds `num_faces` faces; it is killed (SIGKILL), and the time until the standby
answers a DescribeCollection, then a search with every probe found, is measured. Repeated `rounds` times,
the standby of one round being the writer of the next. On a folder store the lease is free the moment the
writer dies; on S3 add the lease's expiry (30 s by default, `cluster/storage/lease.py`).

Prints each round, the median and the machine, then one JSON line.

    python benchmarks/failover.py        # 20k faces, 64-d, 3 rounds, ~3 minutes
"""

from __future__ import annotations

import json
import os
import signal
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


def _start(store: Path, log: Path, role: str):
    return serve_process(store, log, "--role", role, "--num-shards", "2", "--shard-num-cpus", "0.5",
                         "--face-workers", "0", "--metrics-port", "0")


def _answers(stub, md, request) -> bool:
    try:
        stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"), metadata=md, timeout=2)
        return True
    except grpc.RpcError:
        return False


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
        md = [("authorization", f"Bearer {Path(f'{store}.admin-token').read_text().strip()}")]  # written before it serves
        channel = grpc.insecure_channel(address)
        stub = gallery_pb2_grpc.GalleryStub(channel)
        wait_until(lambda: _answers(stub, md, None) or _created(stub, md, dimension), 180, "the writer serving")
        xb = clustered_embeddings(num_faces, dimension, seed=3)
        for start in range(0, num_faces, 5000):
            stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
                pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(xb[i]))
                for i in range(start, min(start + 5000, num_faces))]), metadata=md, timeout=120)
        probes = pb.SearchByEmbeddingRequest(collection_id="c", k=1, queries=[convert.embedding(x) for x in xb[:32]],
                                             purpose="failover benchmark", case_id="failover")
        answered, searched = [], []
        for r in range(1, rounds + 1):
            standby = _start(store, work / f"serve-{r}.log", "standby")
            processes.append(standby)
            wait_until(lambda: "waiting for the writer lease" in (work / f"serve-{r}.log").read_text(), 180,
                  "the standby ready")
            os.kill(writer.pid, signal.SIGKILL)
            killed = time.monotonic()
            channel.close()
            channel = grpc.insecure_channel(serving_address(standby, work / f"serve-{r}.log", 120))
            stub = gallery_pb2_grpc.GalleryStub(channel)
            wait_until(lambda: _answers(stub, md, None), 120, "the standby serving")
            answered.append(time.monotonic() - killed)
            found = [r.candidates[0].face.face_id for r in stub.SearchByEmbedding(probes, metadata=md,
                                                                                   timeout=30).results]
            searched.append(time.monotonic() - killed)
            if found != [f"f{i}" for i in range(32)]:
                raise AssertionError(f"round {r}: the new writer answered {found[:4]}…")
            print(f"round {r}: the standby answered {answered[-1]:.2f} s after the writer was killed, "
                  f"searched every face {searched[-1]:.2f} s after", flush=True)
            writer.wait()
            writer = standby
        figures = {"faces": num_faces, "dimension": dimension, "rounds": rounds,
                   "takeover_s": [round(t, 2) for t in answered], "takeover_p50_s": round(float(np.median(answered)), 2),
                   "first_search_s": [round(t, 2) for t in searched]}
        print(f"takeover p50 {figures['takeover_p50_s']} s over {rounds} rounds ({num_faces} faces, folder store)")
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

"""`gallery serve` as a user runs it: start, enroll over gRPC, stop with SIGTERM, start again, everything is back."""

import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster import vectors
from cluster.client import GalleryClient
from cluster.synthetic import clustered_embeddings
from support import free_port, wait_until
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc


class Served:
    def __init__(self, store, port, log_path):
        self.port = port
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "serve", "--store", str(store), "--port", str(port),
             "--num-shards", "2", "--shard-num-cpus", "0.5", "--face-workers", "0"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""})
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        wait_until(self._serving, 120, "gallery serve")

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gallery serve exited with {self.process.returncode}")
        try:
            response = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return response.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def stop(self) -> int:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.log.close()
        return code


@pytest.mark.slow
def test_serve_stop_serve_keeps_collections_and_faces(tmp_path):
    store, port = tmp_path / "store", free_port()
    xb = clustered_embeddings(50, 8, seed=41)
    served = Served(store, port, tmp_path / "serve.log")
    try:
        stub = gallery_pb2_grpc.GalleryStub(served.channel)
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="visitors", dimension=8))
        stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="visitors", faces=[
            pb.NewFace(face_id=f"v{i}", embedding=pb.Embedding(values=vectors.encode(x), dimension=8))
            for i, x in enumerate(xb)]))
    finally:
        assert served.stop() == 0

    served = Served(store, port, tmp_path / "serve.log")
    try:
        # A second gateway on the same store would overwrite the first one's manifests: it refuses to start.
        second = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--store", str(store),
                                 "--port", str(free_port()), "--face-workers", "0"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
        assert second.returncode == 1
        assert "is served by another gateway" in second.stderr and f'"pid": {served.process.pid}' in second.stderr
        with GalleryClient(f"127.0.0.1:{port}") as client:
            assert client.describe("visitors").face_count == 50
            D, ids = client.search("visitors", xb[[9, 20]], k=1)
        assert ids == [["v9"], ["v20"]] and D[:, 0] == pytest.approx([1.0, 1.0], abs=1e-3)
    finally:
        assert served.stop() == 0

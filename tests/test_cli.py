"""`gallery serve` as a user runs it: start, enroll over gRPC, stop with SIGTERM, start again, everything is back."""

import ctypes
import os
import platform
import signal
import subprocess
import sys

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import free_port, wait_until

from cluster.client import GalleryClient
from cluster.index import vectors
from cluster.index.synthetic import clustered_embeddings


class Served:
    def __init__(self, store, port, log_path):
        self.port = port
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store), "--port", str(port),
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

    def stop(self, *, to_a_thread: bool = False) -> int:
        """SIGTERM, to the process or to one of its threads other than the main one."""
        self.channel.close()
        if to_a_thread:
            signal_a_thread_other_than_main(self.process.pid, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # rather than leave it, and its Ray, to the tests that follow
            self.process.wait()
            raise
        finally:
            self.log.close()


_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}


def signal_a_thread_other_than_main(pid: int, sig: int) -> None:
    """What Linux may do with a signal sent to a process: deliver it to any thread that does not block it."""
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        status = open(f"/proc/{pid}/task/{tid}/status").read()
        blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        if tid != pid and not blocked & (1 << (sig - 1)):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(_SYS_TGKILL[platform.machine()], pid, tid, sig) != 0:
                raise OSError(ctypes.get_errno(), f"tgkill {pid} {tid}")
            return
    raise RuntimeError(f"no thread of {pid} but the main one takes signal {sig}")


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
        second = subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store),
                                 "--port", str(free_port()), "--face-workers", "0"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
        assert second.returncode == 1
        assert "is served by another gateway" in second.stderr and f'"pid": {served.process.pid}' in second.stderr
        with GalleryClient(f"127.0.0.1:{port}") as client:
            assert client.describe("visitors").face_count == 50
            D, ids = client.search("visitors", xb[[9, 20]], k=1)
        assert ids == [["v9"], ["v20"]] and D[:, 0] == pytest.approx([1.0, 1.0], abs=1e-3)
    finally:
        assert served.stop(to_a_thread=platform.machine() in _SYS_TGKILL) == 0

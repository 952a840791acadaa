"""`gallery serve` as a user runs it: start, enroll over gRPC, stop with SIGTERM, start again, everything is back;
and a server the tests start never outlives them, ready or not."""

import ctypes
import os
import platform
import signal
import subprocess
import sys

import grpc
import psutil
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from support import Served, free_port, stop_process, wait_until

from cluster.api import convert
from cluster.client import GalleryClient
from cluster.index.synthetic import clustered_embeddings

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
    store = tmp_path / "store"
    xb = clustered_embeddings(50, 8, seed=41)
    served = Served(store, tmp_path / "serve.log")
    port = served.port
    try:
        # Authentication is on by default: the admin token is beside the store, readable by its owner only.
        assert os.stat(served.token_path).st_mode & 0o777 == 0o600
        assert str(served.token_path) in (tmp_path / "serve.log").read_text()
        stub = gallery_pb2_grpc.GalleryStub(served.channel)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.ListCollections(pb.ListCollectionsRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="visitors", dimension=8),
                              metadata=served.metadata)
        stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="visitors", faces=[
            convert.new_face(f"v{i}", x) for i, x in enumerate(xb)]), metadata=served.metadata)
        # One server per port: a second serve, of another store, on the same port exits at once.
        second = subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(tmp_path / "b"),
                                 "--port", str(port), "--face-workers", "0", "--metrics-port", "0"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
        assert second.returncode == 1 and f"cannot serve on 127.0.0.1:{port}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert served.stop() == 0

    served = Served(store, tmp_path / "serve.log", port=port)
    try:
        # A second gateway on the same store would overwrite the first one's manifests: it refuses to start.
        second = subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store),
                                 "--port", str(free_port()), "--face-workers", "0", "--metrics-port", "0"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
        assert second.returncode == 1
        assert "is served by another gateway" in second.stderr and f'"pid": {served.process.pid}' in second.stderr
        with GalleryClient(f"127.0.0.1:{port}", token=served.token) as client:
            assert client.describe("visitors").face_count == 50
            D, ids = client.search("visitors", xb[[9, 20]], k=1, purpose="visitor check", case_id="desk-1")
        assert ids == [["v9"], ["v20"]] and D[:, 0] == pytest.approx([1.0, 1.0], abs=1e-3)
    finally:
        assert served.stop(deliver=signal_a_thread_other_than_main if platform.machine() in _SYS_TGKILL
                           else os.kill) == 0


def _processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line contains `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and text.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue  # not a process, or one that just ended
    return pids


def test_a_serve_that_is_not_ready_in_time_is_stopped(tmp_path):
    store = tmp_path / "never-ready"
    with pytest.raises(TimeoutError, match="gallery serve not ready after 0.5 s"):
        Served(store, tmp_path / "serve.log", ready_timeout_s=0.5)
    assert _processes_naming(str(store)) == []


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period():
    ignores = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
                                "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert ignores.stdout.readline().strip() == "ready"
        with pytest.raises(subprocess.TimeoutExpired):
            stop_process(ignores, grace_s=1)
        assert ignores.returncode == -signal.SIGKILL
    finally:
        if ignores.poll() is None:
            ignores.kill()
            ignores.wait()


def test_what_a_stopped_process_leaves_of_its_group_is_killed():
    """As `gallery serve` ended by SIGTERM while it starts Ray leaves Ray's agents running."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                               "print(child.pid, flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert stop_process(parent, grace_s=10, process_group=True) == -signal.SIGTERM
        wait_until(lambda: not _alive(child), 10, "the child's end")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended, only its entry is left
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("flags, message", [
    (["--host", "0.0.0.0"], "refusing plaintext on 0.0.0.0"),
    (["--tls-cert", "server.crt"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert"),
])
def test_serve_refuses_unsafe_transport_before_starting(tmp_path, flags, message):
    refused = subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(tmp_path / "s"),
                              "--port", str(free_port()), *flags], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr



@pytest.mark.slow
def test_a_hard_killed_serve_leaves_no_process_running(tmp_path):
    served = Served(tmp_path / "store", tmp_path / "serve.log")
    try:
        started = [p for p in psutil.Process(served.process.pid).children(recursive=True)
                   if "cluster.serve.reaper" not in " ".join(p.cmdline())]
        names = {" ".join(p.cmdline()) for p in started}
        assert any("raylet" in n for n in names) and any("ShardWorker" in n for n in names), [n[:80] for n in names]
        os.kill(served.process.pid, signal.SIGKILL)  # no handler runs, no atexit, no ray.shutdown
        served.process.wait()
        wait_until(lambda: not [p for p in started if p.is_running()], 30, "every process it started ended")
    finally:
        served.stop()

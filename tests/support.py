"""Helpers shared by test modules (importable: conftest modules are not, with several conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s} s")
        time.sleep(0.2)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def stop_process(process: subprocess.Popen, grace_s: float, deliver: Callable[[int, int], None] = os.kill, *,
                 process_group: bool = False) -> int:
    """SIGTERM (sent with `deliver(pid, signal)`), then SIGKILL after `grace_s`; returns the exit status.

    With `process_group` (a process started with `start_new_session`), what is left of its group once
    it has ended is killed too: children it did not stop, such as the Ray processes of a `gallery serve`
    stopped while it was starting Ray. Raises subprocess.TimeoutExpired, once killed, if it had to be.
    """
    try:
        if process.poll() is None:
            deliver(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    finally:
        if process_group:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # nothing left of it


def serving_address(log_path: str | Path, start: int = 0) -> str | None:
    """The 127.0.0.1:port a `gallery serve` started with `--port 0` bound, from its "serving on" line in its log
    (read from byte `start`, where a restarted server appends to the same log); None before it serves."""
    with open(log_path, "rb") as log:
        log.seek(start)
        bound = re.search(rb"serving on (127\.0\.0\.1:\d+)", log.read())
    return bound.group(1).decode() if bound else None


class Served:
    """`gallery serve` in a process of its own (with its own private Ray) on 127.0.0.1, until `stop`.

    By default (`port` 0) the server binds a port the kernel picks and the address is read from its
    "serving on" line: a port chosen here and freed before the server binds it can be taken in between
    (a Ray process of a multi-node test cluster once did). A server that exits or is not serving within
    `ready_timeout_s` is stopped by its pid (killed if SIGTERM does not end it) before the error is raised:
    no server outlives its test. `token` is the admin token it wrote beside its store (`metadata` sends it).
    """

    def __init__(self, store: str | Path, log_path: str | Path, *, port: int = 0,
                 flags: tuple[str, ...] = ("--num-shards", "2", "--shard-num-cpus", "0.5", "--face-workers", "0",
                                           "--metrics-port", "0"),
                 ready_timeout_s: float = 120):
        self.token_path = Path(f"{Path(store).resolve()}.admin-token")
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "ab")
        self._log_start = self.log.tell()  # a restarted server appends to the same log
        self.address = f"127.0.0.1:{port}" if port else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store), "--port", str(port), *flags],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""},
            start_new_session=True)  # its own process group: `stop` reaches the Ray processes it leaves
        self.channel = None
        try:
            wait_until(self._serving, ready_timeout_s, "gallery serve")
        except BaseException:
            try:
                self.stop(grace_s=30)
            except subprocess.TimeoutExpired:
                pass  # killed; the error raised below says why it was stopped
            raise

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            self.log.flush()
            raise RuntimeError(f"gallery serve exited with {self.process.returncode}:\n"
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")
        if self.channel is None:
            self.address = self.address or serving_address(self.log_path, self._log_start)
            if self.address is None:
                return False
            self.channel = grpc.insecure_channel(self.address)
        try:
            response = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return response.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def stop(self, *, grace_s: float = 60, deliver: Callable[[int, int], None] = os.kill) -> int:
        """SIGTERM (through `deliver`, see `stop_process`); the exit status."""
        if self.channel is not None:
            self.channel.close()
        try:
            return stop_process(self.process, grace_s, deliver, process_group=True)
        finally:
            self.log.close()


# Ray notices a lost node after health_check_period_ms x health_check_failure_threshold (defaults 3 s x 5);
# tests and benchmarks that remove nodes of a `ray.cluster_utils.Cluster` start its head with this.
QUICK_NODE_FAILURE = {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                      "health_check_initial_delay_ms": 0}


def shard_worker_pids(node) -> list[int]:
    """The shard worker processes a `ray.cluster_utils.Cluster` node's raylet started."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [p.pid for p in raylet.children(recursive=True) if "ShardWorker" in " ".join(p.cmdline())]

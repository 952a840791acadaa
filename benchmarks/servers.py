"""Servers for benchmarks: a free port, `gallery serve` in a process of its own, waiting for a condition."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(store: str | Path, port: int, log: str | Path, *flags: str) -> subprocess.Popen:
    """`gallery serve --store store --port port *flags` with its own private Ray unless flags name another,
    in a session of its own (so that killing its group ends what it started), logging to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store), "--port", str(port), *flags],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""},
        start_new_session=True)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, *, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s} s")
        time.sleep(poll_s)


def stop_all(processes: list[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM to each server still running, then SIGKILL to the group of any that outlives `grace_s`."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)

"""Servers for benchmarks: `gallery serve` in a process of its own on a port the kernel picks, the address it
serves on, waiting for a condition.

A port chosen here and freed before the server binds it can be taken in between (a Ray process of a multi-node
test cluster once took one in the tests), so each server binds port 0 and says in its log where it serves."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(store: str | Path, log: str | Path, *flags: str, port: int = 0) -> subprocess.Popen:
    """`gallery serve --store store --port port *flags` with its own private Ray unless flags name another,
    in a session of its own (so that killing its group ends what it started), logging to `log`;
    `serving_address` says where it serves. Port 0, a port the kernel picks, unless it must be one (a
    standby takes over its writer's)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store), "--port", str(port), *flags],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""},
        start_new_session=True)


def serving_address(process: subprocess.Popen, log: str | Path, timeout_s: float) -> str:
    """The 127.0.0.1:port a `gallery serve` serves on, from the "serving on" line it writes to `log` once it
    serves (a standby: once it has taken over). Raises RuntimeError when the process exits first, TimeoutError
    after `timeout_s`."""
    found: list[str] = []

    def serving() -> bool:
        with open(log, "rb") as f:
            line = re.search(rb"serving on (127\.0\.0\.1:\d+)", f.read())
        if line:
            found.append(line.group(1).decode())
        elif process.poll() is not None:
            raise RuntimeError(f"gallery serve exited with {process.returncode} before serving; see {log}")
        return bool(line)

    wait_until(serving, timeout_s, f"gallery serve logging to {log}", poll_s=0.01)
    return found[0]


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

"""Nothing a `gallery serve` started outlives it, however it ends.

A private Ray's processes are children of the process that started it. When that process is killed hard
(SIGKILL, the OOM killer), Ray's GCS, raylet and workers notice and exit, but its dashboard and
runtime-env agents do not: they stay, orphaned, holding memory and ports. So `gallery serve` starts this
watcher as a process of its own. It notes every descendant of the server once a second; when the server
is gone, it ends those still alive (SIGTERM, then SIGKILL) and exits. A process is known by its pid and
start time, so a pid the system has since given to another process is never touched.

Run as `python -m cluster.serve.reaper <pid>`; `watch_in_background(pid)` starts it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import psutil

logger = logging.getLogger(__name__)

POLL_S = 1.0
GRACE_S = 5.0  # between SIGTERM and SIGKILL


def watch_in_background(pid: int | None = None) -> subprocess.Popen:
    """Starts the watcher of process `pid` (default: this one) in a session of its own."""
    pid = pid or os.getpid()
    return subprocess.Popen([sys.executable, "-m", "cluster.serve.reaper", str(pid)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)


def watch(pid: int, *, poll_s: float = POLL_S) -> int:
    """Notes the descendants of `pid` until it ends, then ends them; returns how many it had to end."""
    try:
        server = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {}
    me = os.getpid()
    while True:
        try:
            for child in server.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        if not server.is_running():  # also false once the pid belongs to another process
            break
        time.sleep(poll_s)
    return reap(list(seen.values()))


def reap(processes: list[psutil.Process], *, grace_s: float = GRACE_S) -> int:
    """Ends the given processes that still run (the same processes: pid and start time); returns how many."""
    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still, timeout=grace_s)
    return len(alive)


if __name__ == "__main__":
    watch(int(sys.argv[1]))

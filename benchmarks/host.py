"""What a benchmark ran on, printed and saved beside its figures."""

from __future__ import annotations

import glob
import os
import platform


def describe(**versions: str) -> dict:
    """The CPU model and count, memory, OS, Python, NVIDIA GPUs (where the driver is loaded), and `versions`.

    Example:
        >>> describe(faiss="1.15.1")  # doctest: +SKIP
        {'host': 'vm', 'cpu': 'AMD EPYC', 'cpu_count': 2, 'memory_gib': 24, ..., 'faiss': '1.15.1'}
    """
    info = {"host": platform.node(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "os": platform.platform(), "python": platform.python_version()}
    gpus = _nvidia_gpus()
    if gpus:
        info["gpus"] = gpus
    return {**info, **versions}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _nvidia_gpus() -> list[str]:
    models = []
    for path in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        with open(path) as f:
            models += [line.split(":", 1)[1].strip() for line in f if line.startswith("Model:")]
    return models

"""A partition's IVF-PQ index searched on a GPU, where its shard worker has one and FAISS was built for GPUs.

The CPU index stays the partition's index of record: snapshots, deletes and
memory figures come from it. A `GpuCopy` mirrors it on the GPU for searches and
follows its adds. FAISS's GPU IVF indexes cannot remove ids, so a deleted face
stays in the copy: a search fetches as many more candidates as the copy holds
dead faces and keeps the first `depth` live ones, which are those the CPU index
would have given (up to the float16 lookup tables' rounding of PQ distances).
Past `MAX_DEAD` deletions the copy is made again from the CPU index.

A process shares one set of FAISS GPU resources per device (scratch memory,
streams, cuBLAS handle) among all its copies, whatever the number of
collections. Those resources are not thread-safe, so every call that touches a
copy, its freeing included, holds one process-wide lock.
"""

from __future__ import annotations

import math
import threading

import faiss
import numpy as np

GPU_MAX_K = 2048  # faiss's GPU k-selection limit (GPU_MAX_SELECTION_K); nprobe has the same one
MAX_DEAD = 1024
_TEMP_MEMORY = 256 << 20  # scratch space of a device's searches; faiss allocates beyond it when a batch needs more

_lock = threading.RLock()
_resources: dict[int, faiss.StandardGpuResources] = {}  # by device; they live as long as the process


def built_for_gpus() -> bool:
    """Whether the installed FAISS has GPU support (faiss-gpu), whatever this process's devices."""
    return hasattr(faiss, "StandardGpuResources")


def available() -> bool:
    """Whether this process can put FAISS indexes on a GPU."""
    return built_for_gpus() and faiss.get_num_gpus() > 0


def gpu_share(num_actors: int, free_gpus: float) -> float:
    """GPUs per actor so that `num_actors` actors fit on `free_gpus` GPUs: one each, or an equal fraction of one.

    Ray places an actor asking for a fraction of a GPU on one GPU, so with whole GPUs free the
    fraction is 1/n for a whole n.

    Example:
        >>> gpu_share(3, 1), gpu_share(12, 8), gpu_share(2, 4), gpu_share(2, 0.5), gpu_share(2, 0)
        (0.3333333333333333, 0.5, 1.0, 0.25, 0.0)
    """
    if num_actors < 1 or free_gpus <= 0:
        return 0.0
    if free_gpus < 1:
        return free_gpus / num_actors
    return 1.0 / math.ceil(num_actors / int(free_gpus))


def can_copy(index: faiss.Index) -> bool:
    """Whether a CPU index can have a GPU copy: faiss's GPU IVF-PQ takes 8-bit codes only. A fast-scan
    (4-bit) index, trained where the shards searched on CPUs (`tuning.pq_bits_for`), stays on the CPU
    until the collection trains again."""
    return isinstance(index, faiss.IndexIVFPQ)


def first_live(labels: np.ndarray, live: np.ndarray, depth: int) -> np.ndarray:
    """The first `depth` labels of each row whose `live` is true, in order; -1 pads rows with fewer.

    Example:
        >>> first_live(np.array([[7, 3, 5, -1]]), np.array([[True, False, True, False]]), 2)
        array([[7, 5]])
    """
    order = np.argsort(~live, axis=1, kind="stable")[:, :depth]
    kept = np.take_along_axis(labels, order, axis=1)
    return np.where(np.take_along_axis(live, order, axis=1), kept, -1)


def _resources_for(device: int) -> faiss.StandardGpuResources:
    if device not in _resources:
        resources = faiss.StandardGpuResources()
        resources.setTempMemory(_TEMP_MEMORY)
        _resources[device] = resources
    return _resources[device]


class GpuCopy:
    """A GPU mirror of a CPU IVF-PQ index.

    Args:
        index: the populated CPU index.
        device: CUDA device number (0: the first one Ray gave the worker).
    """

    def __init__(self, index: faiss.Index, device: int = 0):
        self._device = device
        self.dead = 0  # deleted faces the copy still holds
        with _lock:
            self.index = self._copy(index)

    def _copy(self, index: faiss.Index) -> faiss.Index:
        options = faiss.GpuClonerOptions()
        # float16 lookup tables: in float32, 64 sub-quantizers x 256 entries (64 KiB) can exceed a block's shared memory
        options.useFloat16 = True
        return faiss.index_cpu_to_gpu(_resources_for(self._device), self._device, index, options)

    def can_search(self, depth: int, nprobe: int) -> bool:
        return depth + self.dead <= GPU_MAX_K and nprobe <= GPU_MAX_K

    def search(self, xq: np.ndarray, depth: int, nprobe: int) -> np.ndarray:
        """(nq, depth + dead) candidate labels by PQ score, dead faces among them."""
        with _lock:
            self.index.nprobe = nprobe
            return self.index.search(xq, depth + self.dead)[1]

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        with _lock:
            self.index.add_with_ids(x, labels)

    def removed(self, count: int, index: faiss.Index) -> None:
        """`count` faces were removed from the CPU `index`; copies it again once too many linger here."""
        self.dead += count
        if self.dead > MAX_DEAD:
            with _lock:
                self.index, self.dead = self._copy(index), 0  # the old copy is freed here, under the lock

    def release(self) -> None:
        """Frees the GPU memory now (under the lock, not whenever Python collects the copy)."""
        with _lock:
            self.index = None

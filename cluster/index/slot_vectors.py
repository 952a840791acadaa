"""A partition's fp16 vectors by slot: in memory, or memory-mapped from a file on local disk.

The re-rank store is the largest thing a partition holds (1,024 bytes a face at
512-d against the PQ code's 64). Mapped from a file, its pages belong to the
kernel's page cache: the ones searches touch stay cached while memory allows,
and the rest live on disk instead of in the process's anonymous memory, which is
what lets ten million 512-d faces fit a 24 GiB machine (benchmarks/README.md,
`scale.py`). The file is unlinked as soon as it is mapped, so a crashed worker
leaves nothing behind, and its space is freed with the last view of its mapping
(a partition dropped or reloaded); it is scratch space, rebuilt from the object store.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np


class SlotVectors:
    """Rows of fp16 vectors that grow by slot.

    Args:
        dimension: vector dimension.
        directory: a local folder to map the rows from; None keeps them in memory.

    `array` is the current (capacity, d) array; growing replaces it, so a reader that
    took a reference keeps a valid (smaller) view.
    """

    def __init__(self, dimension: int, directory: str | None = None):
        self.d = dimension
        self.directory = directory
        self._file = None
        self.array = np.empty((0, dimension), dtype=np.float16)
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=directory)  # unlinked at once (O_TMPFILE where supported)

    @property
    def capacity(self) -> int:
        return self.array.shape[0]

    @property
    def mapped(self) -> bool:
        return self._file is not None

    def grow(self, rows: int) -> None:
        """Makes room for at least `rows` rows (new rows are zeros)."""
        if rows <= self.capacity:
            return
        rows = max(rows, int(self.capacity * 1.5), 1024)
        if self._file is None:
            grown = np.zeros((rows, self.d), dtype=np.float16)
            grown[:self.capacity] = self.array
        else:
            # A longer file keeps the rows already written; mapping it anew costs no copy.
            os.ftruncate(self._file.fileno(), rows * self.d * 2)
            mapping = mmap.mmap(self._file.fileno(), rows * self.d * 2)
            grown = np.frombuffer(mapping, dtype=np.float16).reshape(rows, self.d)
        self.array = grown

"""Progress of a job: a bar in a terminal, periodic log lines (rows, faces/s, ETA) otherwise; stage timers."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(stage: str):
    """Logs how long a stage of a job took."""
    start = time.perf_counter()
    logger.info("%s ...", stage)
    try:
        yield
    finally:
        logger.info("%s: %.1f s", stage, time.perf_counter() - start)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts rows and faces against a total of rows.

    Args:
        total_rows: rows this run will process.
        bar: a tqdm bar (for terminals); otherwise a log line every `interval_s`.
        interval_s: seconds between log lines, > 0.
    """

    def __init__(self, total_rows: int, *, bar: bool | None = None, interval_s: float = 10.0):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.total_rows = total_rows
        self.rows = self.faces = self.enrolled = 0
        self.interval_s = interval_s
        self.start = self._last = time.monotonic()
        self._bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_rows, unit="row", desc="enroll", dynamic_ncols=True)

    def update(self, *, rows: int = 0, faces: int = 0, enrolled: int = 0) -> None:
        self.rows += rows
        self.faces += faces
        self.enrolled += enrolled
        if self._bar is not None:
            self._bar.set_postfix(faces=self.faces, enrolled=self.enrolled, refresh=False)
            self._bar.update(rows)
        elif time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            logger.info(self.line())

    def line(self) -> str:
        """rows done/total, faces found and enrolled, faces/s and the ETA."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rows_per_s = self.rows / elapsed
        eta = _clock((self.total_rows - self.rows) / rows_per_s) if rows_per_s > 0 else "?"
        percent = 100.0 * self.rows / self.total_rows if self.total_rows else 100.0
        return (f"progress: {self.rows}/{self.total_rows} rows ({percent:.0f}%), {self.faces} faces found, "
                f"{self.enrolled} enrolled, {self.faces / elapsed:.1f} faces/s, ETA {eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        logger.info(self.line())

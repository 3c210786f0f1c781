"""The recorder: appends every sample read to a samples file (ICD §3) that `analyze` reads back."""

from __future__ import annotations

import logging
import math
import os
import time

from hullwatch.core.model import Sample
from hullwatch.samples import HEADER, format_row

log = logging.getLogger("hullwatch.recorder")


class Recorder:
    """Appends samples to a CSV file, flushing about once a second."""

    def __init__(self, path: str, flush_interval_s: float = 1.0) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - held open for the run
        if new:
            self._file.write(",".join(HEADER) + "\n")
        self._last_flush = time.monotonic()
        self.rows = 0

    def write(self, sample: Sample) -> None:
        """Record one sample; unreadable readings (no value) are not samples and are skipped."""
        if not math.isfinite(sample.value):
            return
        self._file.write(format_row(sample))
        self.rows += 1
        now = time.monotonic()
        if now - self._last_flush >= self.flush_interval_s:
            self._file.flush()
            self._last_flush = now

    def close(self) -> None:
        """Flush and close."""
        self._file.flush()
        self._file.close()
        log.info("recorder: %d samples written to %s", self.rows, self.path)

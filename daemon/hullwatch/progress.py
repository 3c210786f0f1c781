"""A one-line progress reporter for long file work (`hullwatch report`, later `analyze`).

    with open_positioned(path) as (stream, position):
        with Progress("reading samples.csv", os.path.getsize(path)) as p:
            for rows, sample in enumerate(read_samples(path, names, stream), 1):
                ...
                if not rows & 0xFFF:  # every 4096 rows: cheap enough for the hot loop
                    p.update(position(), rows)

It writes a single line, rewritten in place with `\\r` (percentage, rows, rows/s), at most
`interval_s` apart, and only when its stream (stderr by default) is a terminal: into a
pipe, a log or a test it writes nothing at all. `position()` is the byte offset in the file
on disk — the compressed offset for a `.gz` — so the percentage is of the file's size.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Progress of a job of `total_bytes` bytes, shown on one line of a terminal."""

    def __init__(
        self, label: str, total_bytes: int | None, stream: TextIO | None = None, interval_s: float = 0.25
    ) -> None:
        self.label = label
        self.total = total_bytes if total_bytes and total_bytes > 0 else None
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval_s
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self.enabled = False
        self.started = time.monotonic()
        self._next = self.started  # the first update shows at once
        self._width = 0
        self.done = 0
        self.rows = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done_bytes: int, rows: int) -> None:
        """Record how far the job is; redraw the line if the interval has passed."""
        self.done, self.rows = done_bytes, rows
        if not self.enabled:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line (terminals only)."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def line(self, now: float) -> str:
        """The text of the line: label, percentage (when the size is known), rows, rows per second."""
        elapsed = max(now - self.started, 1e-9)
        parts = [self.label]
        if self.total:
            parts.append(f"{min(100.0, 100.0 * self.done / self.total):5.1f} %")
        parts.append(f"{self.rows:,} rows")
        parts.append(f"{self.rows / elapsed:,.0f} rows/s")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = " " * max(0, self._width - len(text))  # wipe what a longer previous line left
        self._width = len(text)
        self.stream.write("\r" + text + pad)
        self.stream.flush()


@contextmanager
def open_positioned(path: str) -> Iterator[tuple[TextIO, Callable[[], int]]]:
    """A samples file as text (gunzipped for `.gz`) and a function giving the byte offset reached on disk."""
    raw = open(path, "rb")  # noqa: SIM115 - closed below, after the wrappers
    try:
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        try:
            yield text, raw.tell
        finally:
            text.close()
    finally:
        raw.close()


def file_size(path: str) -> int | None:
    """The size of a file on disk, or None when it cannot be known."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None

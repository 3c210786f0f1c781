"""The recorder: appends every sample read to a samples file (ICD §3) that `analyze` reads back.

Theory of operation
-------------------
The main loop only adds a row's four fields to a list in memory; a writer thread of the
recorder's own formats the rows it takes with one `%` operation for the whole batch
(`format_rows`, byte for byte `samples.format_row`) and writes them to the file about once a
second, so neither formatting nor a slow or full disk holds up sensors → core → annunciator.

Whole rows only. Each write hands the kernel whole rows; if it fails part way (ENOSPC, EIO), the
file is cut back to where that write began, so no half row is ever left for a later write to
continue (a torn `1780000000.000,p_prk,pressure,1013` would read as 1013 Pa). A file that still
ends in a torn row when opened (a power cut) is cut back to its last whole row first.

Faults. A write that fails is logged once per episode, `problem` says why (the service raises a
`recorder_fault` advisory from it), and the rows wait in memory while the write is retried with
backoff; beyond `MAX_HELD_ROWS` the oldest are dropped and counted (`dropped`), never silently.

Time order. `analyze` refuses a file whose times go back, so the rows' times never do. Rows
come with wall-clock times (the daemon converts its steady time when it writes), and the wall
clock can be set back: a row more than `BACK_TOLERANCE_S` older than the one before (the clock
set back, or a file left by a run whose clock was ahead) begins a new file, the full one moved
aside as on rotation; a smaller step back is written at the time of the row before. The daemon
also asks for a new file at every clock step it sees (`new_file`), forward ones included, so that
no file spans a jump of the clock.

Disk use. When the file reaches `rotate_mb` it is renamed `<name>.<UTC time><ext>` (e.g.
`samples.20260101T120000Z.csv`, a samples file of its own with its header) and a new one begun;
the oldest rotated files are deleted while all of them together exceed `max_mb`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time

from hullwatch.core.model import Quantity, Sample
from hullwatch.samples import HEADER, parse_time
from hullwatch.sensors.base import Backoff, Episode

log = logging.getLogger("hullwatch.recorder")

MAX_HELD_ROWS = 100_000  # rows held in memory while the file cannot be written
ROTATE_MB = 64.0
MAX_MB = 1024.0
HEADER_LINE = ",".join(HEADER) + "\n"
BACK_TOLERANCE_S = 1.0  # a row this much older than the one before begins a new file; less, it takes that time
ROW_FORMAT = "%.6f,%s,%s,%r\n"  # time, sensor, quantity, value: the bytes of samples.format_row

Row = tuple[float, str, Quantity, float]


def format_rows(rows: list[Row]) -> str:
    """The CSV lines of rows (time, sensor, quantity, value), formatted by one `%` for the whole batch."""
    fields: list = []
    for row in rows:
        fields += row
    return (ROW_FORMAT * len(rows)) % tuple(fields)


class _NewFile:
    """Among the rows held: the rows after it go to a new file (`why` is logged)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class Recorder:
    """Appends samples to a CSV file from a writer thread: whole rows, rotated by size, capped in total."""

    def __init__(
        self, path: str, rotate_mb: float = ROTATE_MB, max_mb: float = MAX_MB, flush_interval_s: float = 1.0
    ) -> None:
        """Open (or make) the file, cutting back a torn last row; OSError or ValueError if it cannot be used."""
        if path.endswith(".gz"):
            raise ValueError("the recorder writes plain CSV (a .gz file cannot be appended row by row)")
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.configure(rotate_mb, max_mb)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = -1
        self._size = 0  # the file's length: where the next write begins
        self._open()
        self._lock = threading.Lock()  # guards _rows
        self._rows: list[Row | _NewFile] = []
        self._last_time = _last_row_time(self.path, self._size)  # the latest time written or held
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trouble = Episode(log, f"recorder: {path}")
        self.problem: str | None = None  # why rows cannot be written right now
        self.rows = 0  # rows written
        self.dropped = 0  # rows lost because the file could not be written for too long

    def configure(self, rotate_mb: float, max_mb: float) -> None:
        """Rotation size and the cap on all the files (a rotation is at most half the cap)."""
        self.max_bytes = int(min(max_mb, 2.0**30) * 2**20)
        self.rotate_bytes = max(4096, min(int(min(rotate_mb, 2.0**30) * 2**20), self.max_bytes // 2))

    # -- the main loop's side --------------------------------------------------------------------

    def start(self) -> None:
        """Run the writer thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
            self._thread.start()

    def write(self, sample: Sample) -> None:
        """Record one sample (wall-clock time); unreadable readings (no value) are not samples and are skipped."""
        t, sensor, quantity, value = sample[:4]
        if not math.isfinite(value):
            return
        if t < self._last_time:
            if t < self._last_time - BACK_TOLERANCE_S:
                went = f"{self._last_time - t:.1f} s"
                self.new_file(f"a row {went} older than the one before (the clock was set back)")
            else:
                t = self._last_time
        self._last_time = t
        with self._lock:
            self._rows.append((t, sensor, quantity, value))
            if len(self._rows) > MAX_HELD_ROWS:
                self._trim()

    def new_file(self, why: str) -> None:
        """The rows written after this go to a new file (the present one moved aside as on rotation)."""
        self._last_time = -math.inf
        with self._lock:
            if self._rows and isinstance(self._rows[-1], _NewFile):
                return
            self._rows.append(_NewFile(why))

    def _trim(self) -> None:
        """Drop the oldest rows held beyond MAX_HELD_ROWS (counted), keeping a new file asked for among them."""
        gone = len(self._rows) - MAX_HELD_ROWS
        if gone <= 0:
            return
        lost = self._rows[:gone]
        breaks = [r for r in lost if isinstance(r, _NewFile)]
        self._rows[:gone] = breaks[-1:]
        self.dropped += len(lost) - len(breaks)

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is held (waiting up to timeout_s for the writer) and close the file."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("recorder: %s does not answer; %d row(s) not written", self.path, len(self._rows))
                return
        else:
            self._flush()
        with self._lock:
            left = sum(1 for r in self._rows if not isinstance(r, _NewFile))
        if left:
            log.error("recorder: %d row(s) could not be written to %s and are lost (%s)", left, self.path, self.problem)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self._thread is not None:
            log.info("recorder: %d samples written to %s", self.rows, self.path)

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(first=1.0, cap=30.0)
        delay = self.flush_interval_s
        while not self._stop.is_set():
            self._wake.wait(delay)
            if self._stop.is_set():
                break
            delay = self.flush_interval_s if self._flush() else backoff.next()
            if self.problem is None:
                backoff.reset()
        self._flush()

    def _flush(self) -> bool:
        """Write the rows held; False (rows kept) if the file cannot be written now. Never raises."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return True
        while rows:
            cut = next((i for i, r in enumerate(rows) if isinstance(r, _NewFile)), len(rows))
            try:
                if cut:
                    if self._fd < 0:
                        self._open()
                    header = HEADER_LINE if self._size == 0 else ""
                    self._write_whole((header + format_rows(rows[:cut])).encode())  # type: ignore[arg-type]
                    self.rows += cut
                    del rows[:cut]
                if rows:  # a new file asked for (none needed while this one holds no row)
                    if self._fd < 0:
                        self._open()
                    if self._size > len(HEADER_LINE):
                        self._rotate(rows[0].why)  # type: ignore[union-attr]
                    del rows[0]
            except OSError as exc:
                with self._lock:
                    self._rows[:0] = rows
                    self._trim()
                    held = sum(1 for r in self._rows if not isinstance(r, _NewFile))
                self.problem = f"cannot write {self.path}: {exc.strerror or exc}; holding {held} row(s)"
                self._trouble.happened(f"{exc.strerror or exc}; holding rows in memory and retrying")
                return False
        self.problem = None
        self._trouble.over()
        if self._size >= self.rotate_bytes:
            try:
                self._rotate(f"full ({self._size} bytes)")
            except OSError as exc:  # the rows are written; the next write tries again
                log.warning("recorder: cannot rotate %s: %s", self.path, exc.strerror or exc)
        return True

    def _write_whole(self, data: bytes) -> None:
        """Append data; on failure cut the file back to where it was, so no half row stays."""
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:  # cannot even cut back: reopen (and repair) before the next write
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            raise
        self._size = start + len(data)

    # -- the file --------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open for appending; cut a torn last row back to the last whole one."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            whole = _last_whole_row_end(self.path, size)
            if whole < size:
                os.ftruncate(fd, whole)
                log.warning(
                    "recorder: %s ended in a torn row (%d bytes, a power cut or a full disk); cut back to the "
                    "last whole row",
                    self.path,
                    size - whole,
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, whole
        if whole == 0:  # a new file is a samples file from the start; on a full disk, with the first rows
            with contextlib.suppress(OSError):
                self._write_whole(HEADER_LINE.encode())

    def _rotate(self, why: str) -> None:
        """Rename the file aside, begin a new one, and delete the oldest files over the cap.

        OSError if the file cannot be renamed (nothing changed); once it is, a new file that cannot be
        opened yet is opened by the next write.
        """
        stem, ext = os.path.splitext(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{stem}.{stamp}{ext}"
        n = 1
        while os.path.exists(target):
            n += 1
            target = f"{stem}.{stamp}-{n}{ext}"
        os.rename(self.path, target)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._size = -1, 0
        log.info("recorder: %s: %s: moved to %s, a new file begun", self.path, why, target)
        with contextlib.suppress(OSError):
            self._open()
        self._enforce_cap()

    def rotated(self) -> list[str]:
        """The rotated files of this recorder, oldest first."""
        directory = os.path.dirname(self.path) or "."
        stem, ext = os.path.splitext(os.path.basename(self.path))
        pattern = re.compile(re.escape(stem) + r"\.\d{8}T\d{6}Z(?:-\d+)?" + re.escape(ext) + "$")
        found = []
        for name in os.listdir(directory):
            if pattern.match(name):
                path = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    found.append((os.stat(path).st_mtime, name, path))
        return [p for _, _, p in sorted(found)]

    def _enforce_cap(self) -> None:
        """Delete the oldest rotated files while all the files exceed max_bytes."""
        files = self.rotated()
        sizes = {}
        for p in files:
            with contextlib.suppress(OSError):
                sizes[p] = os.path.getsize(p)
        total = self._size + sum(sizes.values())
        for p in files:
            if total <= self.max_bytes:
                break
            try:
                os.unlink(p)
            except OSError as exc:
                log.warning("recorder: cannot delete %s: %s", p, exc.strerror)
                continue
            total -= sizes.get(p, 0)
            log.info("recorder: deleted %s to keep the recordings within %.0f MB", p, self.max_bytes / 2**20)


def _last_whole_row_end(path: str, size: int) -> int:
    """The length of the file up to and including its last newline (0 if it has none)."""
    if size == 0:
        return 0
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
    return 0


def _last_row_time(path: str, end: int) -> float:
    """The time of the last row before byte `end` (-inf for none: a new file, a header alone, or unreadable)."""
    if end == 0:
        return -math.inf
    try:
        with open(path, "rb") as f:
            f.seek(max(0, end - 4096))
            tail = f.read(end - max(0, end - 4096))
        return parse_time(tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].split(b",", 1)[0].decode())
    except (OSError, ValueError):
        return -math.inf

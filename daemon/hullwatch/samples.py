"""The samples file (ICD §3): CSV with a header `time,sensor,quantity,value`.

Read by `hullwatch analyze`, written by the recorder. Every row is checked; the first
bad one stops the reading with a SamplesError that names the file and line. A last row
without its line end is a truncated write (the recorder ends every row), not data.
A name ending in `.gz` is read and written gzip-compressed; damaged compressed data is a
SamplesError too.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import IO, TextIO

from hullwatch.core.model import Quality, Quantity, Sample

HEADER = ("time", "sensor", "quantity", "value")
# Epoch seconds a sample may carry: 1970 up to the end of year 9999 (what ISO 8601 and a date can show).
LATEST_TIME = 253402300799.0
_QUANTITIES = {q.value: q for q in Quantity}


class SamplesError(ValueError):
    """A malformed samples file; the message names the file and line."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


def open_text(path: str, mode: str = "r") -> TextIO | IO[str]:
    """Open a samples file as text, gunzipping a `.gz` name."""
    if path.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 with an offset, to epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is neither epoch seconds nor ISO 8601") from None
    if stamp.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return stamp.timestamp()


class _Lines:
    """The lines of a text stream, remembering whether the last one taken had its line end."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.stream = stream
        self.ended = True

    def __iter__(self) -> Iterator[str]:
        for text in self.stream:
            if text[-1] not in "\r\n":  # only the very last line can lack its end
                self.ended = False
            yield text


def read_samples(path: str, names: Mapping[str, frozenset[Quantity]], stream: TextIO | None = None) -> Iterator[Sample]:
    """Yield the samples of a file, checking every row against the known names and their quantities.

    Plain lines (no quotes, no carriage return or other control character) are split at their
    commas, which is what the csv module makes of them, only faster; from the first other line
    on, the csv module reads the rest. Either way every row passes the same checks.
    """
    kinds = {(name, q.value): q for name, allowed in names.items() for q in allowed}
    f = stream if stream is not None else open_text(path)
    line = 0  # the last line read whole
    lines = _Lines(f)
    try:
        rows = csv.reader(lines)
        header = next(rows, None)
        if header is None:
            raise SamplesError(path, 1, "empty file: expected the header 'time,sensor,quantity,value'")
        if tuple(h.strip().lstrip("\ufeff") for h in header) != HEADER:
            raise SamplesError(path, 1, f"header is {','.join(header)!r}, expected 'time,sensor,quantity,value'")
        read = rows.line_num  # lines read so far
        last = -math.inf
        odd = None  # the first line the csv module must read
        new, good, hatch, isfinite = tuple.__new__, Quality.GOOD, Quantity.HATCH, math.isfinite
        for text in f if lines.ended else ():
            if '"' in text or text[-1] != "\n" or not text[:-1].isprintable():
                odd = text
                break
            read += 1
            line = read
            row = text[:-1].split(",")
            if len(row) == 4:
                t_text, name, q_text, v_text = row
                try:
                    t = float(t_text)
                    value = float(v_text)
                except ValueError:
                    t = value = math.nan
                quantity = kinds.get((name, q_text))
                if (
                    last <= t <= LATEST_TIME
                    and t >= 0.0
                    and quantity is not None
                    and isfinite(value)
                    and "_" not in v_text
                    and (quantity is not hatch or value == 0.0 or value == 1.0)
                ):
                    last = t
                    yield new(Sample, (t, name, quantity, value, good))
                    continue
            elif text == "\n":
                continue
            sample = _checked(path, line, row, last, kinds, names)  # raises the row's error, or reads an ISO time
            last = sample.time
            yield sample
        if odd is not None:
            lines = _Lines(itertools.chain((odd,), f))
            rows = csv.reader(lines)
            for row in rows:
                line = read + rows.line_num
                if not row:
                    continue
                if not lines.ended:
                    raise SamplesError(
                        path,
                        line,
                        f"last row {','.join(row)!r} has no line end: cut off mid-write? (a whole row ends with one)",
                    )
                sample = _checked(path, line, row, last, kinds, names)
                last = sample.time
                yield sample
    except UnicodeDecodeError as exc:
        raise SamplesError(path, _first_undecodable_line(path), f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise SamplesError(path, line + 1, f"bad CSV: {exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SamplesError(path, line + 1, f"damaged gzip data ({exc})") from None
    finally:
        if stream is None:
            f.close()


def _checked(
    path: str, line: int, row: list[str], last: float, kinds: dict, names: Mapping[str, frozenset[Quantity]]
) -> Sample:
    """The sample of one row, after every check; a SamplesError naming the line for the first that fails."""
    try:
        t_text, name, q_text, v_text = row
    except ValueError:
        raise SamplesError(path, line, f"expected 4 fields, found {len(row)}") from None
    try:
        t = float(t_text)
    except ValueError:
        try:
            t = parse_time(t_text)
        except ValueError as exc:
            raise SamplesError(path, line, str(exc)) from None
    if not 0.0 <= t <= LATEST_TIME:
        raise SamplesError(path, line, f"time {t_text!r} is not between 1970 and 9999 (epoch seconds)")
    if t < last:
        raise SamplesError(path, line, f"time {t_text} goes backwards (previous row {last!r})")
    quantity = kinds.get((name, q_text))
    if quantity is None:
        raise SamplesError(path, line, _name_problem(name, q_text, names))
    try:
        value = float(v_text)
        if "_" in v_text:
            raise ValueError(v_text)
    except ValueError:
        raise SamplesError(path, line, f"value {v_text!r} is not a number") from None
    if not math.isfinite(value):
        raise SamplesError(path, line, f"value {v_text!r} is not finite")
    if quantity is Quantity.HATCH and value not in (0.0, 1.0):
        raise SamplesError(path, line, f"hatch value {v_text!r} must be 1 (open) or 0 (closed)")
    return Sample(t, name, quantity, value)


def _first_undecodable_line(path: str) -> int:
    """The line number of the first line that is not UTF-8 (text is decoded in chunks, ahead of the rows)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except (OSError, EOFError, zlib.error):
        pass
    return 1


def _name_problem(name: str, q_text: str, names: Mapping[str, frozenset[Quantity]]) -> str:
    """Why (name, quantity) is not allowed."""
    if q_text not in _QUANTITIES:
        return f"quantity {q_text!r} is not pressure, temperature or hatch"
    if name not in names:
        return f"{name!r} is not a sensor or hatch in the configuration"
    return f"{name!r} cannot report {q_text}"


def format_row(sample: Sample) -> str:
    """One CSV line (with newline) for a sample."""
    return f"{sample.time:.6f},{sample.sensor},{sample.quantity.value},{sample.value!r}\n"

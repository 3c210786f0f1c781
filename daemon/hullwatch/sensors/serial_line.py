"""ASCII transducers on a serial line (`driver = "serial"`): poll or listen, parse, emit.

The port is opened with `serial.serial_for_url()`, so a device path, a pty, `socket://`,
`rfc2217://` and `loop://` all work. Lines end at CR or LF. A line longer than
`max_line` bytes is thrown away as garbage as it arrives, so a device spewing bytes with
no newline costs bounded memory. Each problem — the port missing or vanishing, no
reply to a poll, unparseable lines — is counted and logged once per episode; after
three unreadable lines in a row one BAD sample tells the core the sensor is unreadable.
At most `max_rate_hz` lines a second are read (50 for a streaming device, at least twice
the poll rate for a polled one): a transmitter streaming thousands of lines a second would
flood the core, so the excess is dropped before parsing and counted (`rate_dropped`).
A vanished port is reopened with backoff until it returns.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from hullwatch import timebase
from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.sensors.base import Backoff, Emit, Episode, RateLimit
from hullwatch.sensors.presets import SerialSettings, serial_settings

log = logging.getLogger("hullwatch.sensors.serial")

READ_CHUNK_TIMEOUT_S = 0.25  # how long one read may block: bounds the reaction to stop
UNREADABLE_AFTER = 3  # consecutive bad lines before the sensor is reported unreadable
_EOL = re.compile(rb"[\r\n]")


class SerialDriver:
    """One ASCII transducer on one serial port."""

    def __init__(self, name: str, settings: SerialSettings) -> None:
        self.name = name
        self.settings = settings
        self.lines = 0  # good lines
        self.bad_lines = 0
        self.reconnects = 0
        self._rate = RateLimit(log, f"{name}: lines", settings.max_rate_hz)

    @property
    def quantities(self) -> dict[str, tuple[Quantity, ...]]:
        """What the sensor reports: the quantities its line format carries."""
        return {self.name: tuple(self.settings.parser.quantities)}

    @property
    def rate_dropped(self) -> int:
        """Lines dropped unread because the device delivered more than max_rate_hz."""
        return self._rate.dropped

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> SerialDriver:
        """Build from the [[sensor]] table's driver options (no I/O)."""
        return cls(name, serial_settings(options))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Open, read and reopen the port until stop is set."""
        import serial  # pyserial

        s = self.settings
        port_trouble = Episode(log, f"{self.name}: port {s.port}")
        backoff = Backoff(first=0.2, cap=2.0)  # a returning device is read again within ~2 s
        while not stop.is_set():
            try:
                port = serial.serial_for_url(
                    s.port,
                    baudrate=s.baudrate,
                    bytesize=s.bytesize,
                    parity=s.parity,
                    stopbits=s.stopbits,
                    timeout=READ_CHUNK_TIMEOUT_S,
                    write_timeout=1.0,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                port_trouble.happened(f"cannot open ({exc}); retrying")
                stop.wait(backoff.next())
                continue
            if port_trouble.active:
                self.reconnects += 1
            port_trouble.over()
            backoff.reset()
            log.info("%s: reading %s", self.name, s.port)
            try:
                self._read(port, emit, stop)
            except (serial.SerialException, OSError) as exc:
                port_trouble.happened(f"lost ({exc}); reopening")
                stop.wait(backoff.next())
            except Exception:  # a bug must not kill the thread silently
                log.exception("%s: unexpected error; reopening the port", self.name)
                stop.wait(backoff.next())
            finally:
                with contextlib.suppress(Exception):  # closing a vanished port may fail too
                    port.close()

    def _read(self, port: Any, emit: Emit, stop: threading.Event) -> None:
        """Read lines until stop is set or the port fails (raises)."""
        s = self.settings
        garbage = Episode(log, f"{self.name}: unreadable lines")
        silence = Episode(log, f"{self.name}: no reply to the poll command")
        buffer = bytearray()
        discarding = False  # inside an over-long line: drop bytes until its end
        bad_in_a_row = 0
        next_poll = time.monotonic()
        awaiting_since: float | None = None
        while not stop.is_set():
            if s.poll is not None:
                now = time.monotonic()
                if awaiting_since is not None and now - awaiting_since > s.timeout_s:
                    silence.happened(f"nothing within {s.timeout_s:g} s of {s.poll!r}")
                    awaiting_since = None
                if now >= next_poll:
                    port.write(s.poll)
                    awaiting_since = now if awaiting_since is None else awaiting_since
                    next_poll = max(next_poll + s.interval_s, now)
            chunk = port.read(max(1, min(port.in_waiting, 65536)))
            if not chunk:
                continue
            arrived = timebase.now()
            start = 0
            for eol in _EOL.finditer(chunk):
                i = eol.start()
                piece = chunk[start:i]
                start = i + 1
                if discarding:
                    discarding = False
                    continue
                buffer += piece
                if not buffer:
                    continue
                line = bytes(buffer)
                buffer.clear()
                if not self._rate.allow():  # a device far faster than it should be: not parsed at all
                    continue
                values = s.parser.parse(line)
                if not values:
                    self.bad_lines += 1
                    bad_in_a_row += 1
                    garbage.happened(f"cannot parse {line[:60]!r}")
                    if bad_in_a_row == UNREADABLE_AFTER:
                        for quantity in s.parser.quantities:
                            emit(Sample(arrived, self.name, quantity, float("nan"), Quality.BAD))
                    continue
                self.lines += 1
                quality = Quality.SUSPECT if bad_in_a_row else Quality.GOOD
                bad_in_a_row = 0
                garbage.over()
                silence.over()
                awaiting_since = None
                for quantity, value in values:
                    emit(Sample(arrived, self.name, quantity, value, quality))
            if not discarding:
                buffer += chunk[start:]
                if len(buffer) > s.max_line:
                    self.bad_lines += 1
                    bad_in_a_row += 1
                    garbage.happened(f"a line longer than {s.max_line} bytes")
                    buffer.clear()
                    discarding = True

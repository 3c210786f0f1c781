"""ASCII transducers on a serial line (`driver = "serial"`): poll or listen, parse, emit.

The port is opened with `serial.serial_for_url()`, so a device path, a pty, `socket://`,
`rfc2217://` and `loop://` all work. It is read without blocking by the daemon's one serial
loop (`sensors.ioloop.IoLoop`, shared by every serial sensor): when the loop finds the port
readable it calls `readable`, which reads what is there, stamps it, splits it into lines and
parses them on the spot; `due` opens and reopens the port, writes the poll command and notices
a device that does not answer. A port that cannot be selected on (`loop://`, `rfc2217://`) is
looked at every UNSELECTABLE_EVERY_S instead. `run(emit, stop)` reads the port on a loop of its
own (tools and tests).

Lines end at CR or LF. A line longer than `max_line` bytes is thrown away as garbage as it
arrives, so a device spewing bytes with no newline costs bounded memory. Each problem — the
port missing or vanishing, no reply to a poll, unparseable lines — is counted and logged once
per episode; after three unreadable lines in a row one BAD sample tells the core the sensor is
unreadable. At most `max_rate_hz` lines a second are read (50 for a streaming device, at least
twice the poll rate for a polled one): a transmitter streaming thousands of lines a second would
flood the core, so the excess is dropped before parsing and counted (`rate_dropped`). A vanished
port is reopened with backoff until it returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
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

READ_SIZE = 65536  # the most taken from a port at one wakeup
UNSELECTABLE_EVERY_S = 0.05  # how often a port that cannot be selected on is read
WRITE_TIMEOUT_S = 0.1  # a poll command is a few bytes: a port that cannot take them at once is stuck
UNREADABLE_AFTER = 3  # consecutive bad lines before the sensor is reported unreadable
_EOL = re.compile(rb"[\r\n]")


class PortLost(Exception):
    """The port failed: it is closed and reopened with backoff."""


class SerialDriver:
    """One ASCII transducer on one serial port, read by an IoLoop (a `LoopDevice`)."""

    def __init__(self, name: str, settings: SerialSettings) -> None:
        self.name = name
        self.settings = settings
        self.lines = 0  # good lines
        self.bad_lines = 0
        self.reconnects = 0
        self.wake_at = -math.inf  # when `due` is next wanted (time.monotonic())
        self._rate = RateLimit(log, f"{name}: lines", settings.max_rate_hz)
        self._port_trouble = Episode(log, f"{name}: port {settings.port}")
        self._backoff = Backoff(first=0.2, cap=2.0)  # a returning device is read again within ~2 s
        self._retry_at = -math.inf
        self._port: Any = None
        self._fd: int | None = None  # the port's descriptor when it can be selected on
        self._raw = False  # a POSIX serial port: read and written with os.read / os.write
        self._session = _Session(name)

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
        """Read the port on a loop of its own until stop is set (the daemon reads all its serial sensors on one)."""
        from hullwatch.sensors.ioloop import IoLoop

        def deliver(batch: list[Sample]) -> None:
            for sample in batch:
                emit(sample)

        loop = IoLoop(f"serial-{self.name}")
        loop.attach(self, deliver)
        try:
            stop.wait()
        finally:
            loop.close()

    # -- the loop's side ----------------------------------------------------------------------------

    def fileno(self) -> int | None:
        """The open port's descriptor, if it can be selected on."""
        return self._fd

    def readable(self, out: list[Sample]) -> None:
        """Read what the port holds; parse every complete line."""
        try:
            self._take(self._read_some(), out)
        except Exception as exc:
            self._lost(exc)

    def due(self, now: float, out: list[Sample]) -> None:
        """Open the port when its time comes; read an unselectable one; poll; notice silence."""
        if self._port is None and (now < self._retry_at or not self._open()):
            self.wake_at = self._retry_at
            return
        s = self.settings
        session = self._session
        wake = math.inf
        try:
            if self._fd is None:
                self._take(self._read_some(), out)
                wake = now + UNSELECTABLE_EVERY_S
            if s.poll is not None:
                if session.awaiting_since is not None and now - session.awaiting_since > s.timeout_s:
                    session.silence.happened(f"nothing within {s.timeout_s:g} s of {s.poll!r}")
                    session.awaiting_since = None
                if now >= session.next_poll:
                    self._write(s.poll)
                    session.awaiting_since = now if session.awaiting_since is None else session.awaiting_since
                    session.next_poll = max(session.next_poll + s.interval_s, now)
                wake = min(wake, session.next_poll)
                if session.awaiting_since is not None:
                    wake = min(wake, session.awaiting_since + s.timeout_s + 1e-3)
        except Exception as exc:
            self._lost(exc)
            return
        self.wake_at = wake

    def close(self) -> None:
        """Close the port (it is opened again when the driver is next attached to a loop)."""
        port, self._port, self._fd = self._port, None, None
        self._retry_at = -math.inf
        if port is not None:
            with contextlib.suppress(Exception):  # closing a vanished port may fail too
                port.close()

    # -- the port -------------------------------------------------------------------------------------

    def _open(self) -> bool:
        import serial  # pyserial

        s = self.settings
        try:
            port = serial.serial_for_url(
                s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=0,  # never wait: the loop reads only what is there
                write_timeout=WRITE_TIMEOUT_S,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._port_trouble.happened(f"cannot open ({exc}); retrying")
            self._retry_at = time.monotonic() + self._backoff.next()
            return False
        if self._port_trouble.active:
            self.reconnects += 1
        self._port_trouble.over()
        self._backoff.reset()
        self._port = port
        self._raw = isinstance(port, serial.Serial) and hasattr(port, "pipe_abort_read_r")  # serialposix
        try:
            self._fd = port.fileno()
        except Exception:  # loop://, rfc2217:// (no descriptor: read now and then)
            self._fd = None
        self._session = _Session(self.name)
        self._session.next_poll = time.monotonic()
        log.info("%s: reading %s", self.name, s.port)
        return True

    def _lost(self, exc: Exception) -> None:
        """The port failed: close it and reopen it with backoff."""
        import serial  # pyserial

        if isinstance(exc, OSError | PortLost | serial.SerialException):
            self._port_trouble.happened(f"lost ({exc}); reopening")
        else:  # a bug must not end the reading silently
            log.error("%s: unexpected error; reopening the port", self.name, exc_info=exc)
        self.close()
        self._retry_at = time.monotonic() + self._backoff.next()
        self.wake_at = self._retry_at

    def _read_some(self) -> bytes:
        """What the port holds now (b"" if nothing); PortLost if the device is gone."""
        if self._raw:
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return b""
            if not chunk:
                raise PortLost("the device returned no data (disconnected?)")
            return chunk
        port = self._port
        if self._fd is not None:
            return port.read(READ_SIZE)  # timeout=0: what is there (raises when the peer is gone)
        waiting = port.in_waiting
        return port.read(min(waiting, READ_SIZE)) if waiting else b""

    def _write(self, data: bytes) -> None:
        if not self._raw:
            self._port.write(data)
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            raise PortLost("the port cannot take the poll command")

    # -- lines ----------------------------------------------------------------------------------------

    def _take(self, chunk: bytes, out: list[Sample]) -> None:
        """Split a chunk read just now into lines, parse them, and append their samples to out."""
        if not chunk:
            return
        s = self.settings
        session = self._session
        buffer = session.buffer
        arrived = timebase.now()
        start = 0
        for eol in _EOL.finditer(chunk):
            i = eol.start()
            piece = chunk[start:i]
            start = i + 1
            if session.discarding:
                session.discarding = False
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
                session.bad_in_a_row += 1
                session.garbage.happened(f"cannot parse {line[:60]!r}")
                if session.bad_in_a_row == UNREADABLE_AFTER:
                    for quantity in s.parser.quantities:
                        out.append(Sample(arrived, self.name, quantity, float("nan"), Quality.BAD))
                continue
            self.lines += 1
            quality = Quality.SUSPECT if session.bad_in_a_row else Quality.GOOD
            session.bad_in_a_row = 0
            session.garbage.over()
            session.silence.over()
            session.awaiting_since = None
            for quantity, value in values:
                out.append(Sample(arrived, self.name, quantity, value, quality))
        if not session.discarding:
            buffer += chunk[start:]
            if len(buffer) > s.max_line:
                self.bad_lines += 1
                session.bad_in_a_row += 1
                session.garbage.happened(f"a line longer than {s.max_line} bytes")
                buffer.clear()
                session.discarding = True


class _Session:
    """What one opening of the port has read so far: the partial line, the run of bad lines, the episodes."""

    def __init__(self, name: str) -> None:
        self.buffer = bytearray()
        self.discarding = False  # inside an over-long line: drop bytes until its end
        self.bad_in_a_row = 0
        self.next_poll = 0.0
        self.awaiting_since: float | None = None  # a poll written, no line since
        self.garbage = Episode(log, f"{name}: unreadable lines")
        self.silence = Episode(log, f"{name}: no reply to the poll command")

"""systemd integration: the notify protocol and the journal, each optional.

systemd-python (the `systemd` extra, or Debian's python3-systemd) is used when installed:
`Notifier` speaks sd_notify over $NOTIFY_SOCKET with its `daemon.notify`, else with a
datagram of its own (the protocol is one line per field). Without $NOTIFY_SOCKET it does
nothing; a vanished socket is logged once, never raised. `journal_handler()` gives a
logging handler that sends each message with structured fields (PRIORITY, LOGGER, and
ALARM, SOURCE, SEVERITY, ... from the record) when the process runs under systemd;
without systemd-python, `journal_stream_formatter()` gives plain lines with the
`<priority>` prefix that journald reads from a service's stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import IO

log = logging.getLogger("hullwatch.systemd")


class Notifier:
    """sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

    With `environ` given (tests), its NOTIFY_SOCKET is used through the built-in datagram;
    with the process environment, through systemd-python's `daemon.notify` when installed.
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = _watchdog_interval(env)
        self._failed = False
        self._socket: socket.socket | None = None
        self._sd_notify = _sd_notify() if environ is None else None

    @property
    def backend(self) -> str:
        """What sends the messages: 'systemd-python' or 'socket'."""
        return "systemd-python" if self._sd_notify is not None else "socket"

    @property
    def enabled(self) -> bool:
        """Whether anyone listens."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send fields like 'READY=1'; False if nobody received them."""
        if self.address is None:
            return False
        message = "\n".join(fields)
        try:
            if self._sd_notify is not None:
                if not self._sd_notify(message):
                    raise OSError(f"sd_notify({message.splitlines()[0]!r}) was not sent")
            else:
                self._send_datagram(message.encode())
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def _send_datagram(self, message: bytes) -> None:
        assert self.address is not None
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.sendto(message, target)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()


def _watchdog_interval(env: dict[str, str]) -> float | None:
    """Half of WATCHDOG_USEC (how often to ping), if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def _sd_notify():
    """systemd-python's daemon.notify, or None when it is not installed."""
    try:
        from systemd import daemon  # systemd-python, optional
    except ImportError:
        return None
    return daemon.notify


def under_systemd() -> bool:
    """Whether systemd started this process (it sets INVOCATION_ID, and JOURNAL_STREAM for journal output)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def journal_handler() -> logging.Handler | None:
    """A structured journald handler when running under systemd with systemd-python installed, else None.

    The message is the plain text: the level is PRIORITY, the logger LOGGER, and the record's
    extra fields (ALARM, SOURCE, SEVERITY, ALARM_STATE, VOLUME, ...) become journal fields.
    """
    if not under_systemd():
        return None
    try:
        from systemd.journal import JournalHandler  # systemd-python, optional
    except ImportError:
        return None
    handler = JournalHandler(SYSLOG_IDENTIFIER="hullwatch")
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level, as systemd-python's JournalHandler maps it."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class _PriorityFormatter(logging.Formatter):
    """`<N>message`: journald takes N as the syslog priority of a line on a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def journal_stream_formatter(stream: IO[str]) -> logging.Formatter | None:
    """A `<priority>message` formatter when stream is systemd's journal stream ($JOURNAL_STREAM), else None."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's capture), or closed
        return None
    if f"{st.st_dev}:{st.st_ino}" != f"{device}:{inode}":
        return None
    return _PriorityFormatter("%(message)s")

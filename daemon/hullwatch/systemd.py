"""systemd integration: the notify protocol and the journal, each optional.

`Notifier` speaks sd_notify over $NOTIFY_SOCKET: with systemd-python's `daemon.notify`
when installed, else with a datagram of its own (the protocol is one line per field).
Without $NOTIFY_SOCKET it does nothing; a vanished socket is logged once, never raised.
`journal_handler()` gives a logging handler that sends structured fields (ALARM,
SOURCE, SEVERITY, ...) when the process runs under systemd with journald, else None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

log = logging.getLogger("hullwatch.systemd")


class Notifier:
    """sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = _watchdog_interval(env)
        self._failed = False
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether anyone listens."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send fields like 'READY=1'; False if nobody received them."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, target)
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

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


def journal_handler() -> logging.Handler | None:
    """A structured journald handler when running under systemd with systemd-python installed."""
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        return None
    try:
        from systemd.journal import JournalHandler  # systemd-python, optional
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="hullwatch")

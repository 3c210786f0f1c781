"""What end-to-end tests of `hullwatch run` share: a fake systemd, pty transducers, the daemon in a subprocess.

systemd = FakeSystemd(tmp_path / "notify.sock")      # $NOTIFY_SOCKET; records every field with its time
transducer = Transducer()                            # a pty; writes "101325.0" every 0.1 s
daemon = Daemon(cfg_path, tmp_path / "daemon.log", systemd)
daemon.wait_for_log("monitoring"); daemon.stop()     # SIGTERM; the exit code
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class FakeSystemd:
    """A datagram socket at $NOTIFY_SOCKET that timestamps every field it receives."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.messages += [(now, line) for line in data.decode().splitlines()]

    def times(self, field: str, after: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if m == field and t > after]

    def wait_for(self, field: str, after: float = 0.0, timeout: float = 10.0) -> float | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hits = self.times(field, after)
            if hits:
                return hits[0]
            time.sleep(0.02)
        return None

    def statuses(self, after: float = 0.0) -> list[str]:
        return [m[len("STATUS=") :] for t, m in list(self.messages) if m.startswith("STATUS=") and t > after]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Transducer:
    """A pty pair: the daemon reads one end as a serial port; we write a pressure line every interval_s."""

    def __init__(self, line: bytes = b"101325.0\n", interval_s: float = 0.1) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)  # a daemon that stops reading must not block the writer
        self.port = os.ttyname(slave)
        self._slave = slave
        self.line = line
        self.interval_s = interval_s
        self.streaming = threading.Event()
        self.streaming.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.streaming.is_set():
                with contextlib.suppress(OSError):  # full (nobody reads) or closed
                    os.write(self.master, self.line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)


def serial_sensor(name: str, port: str, segment: str = "lab") -> str:
    """A [[sensor]] table for a plain pressure transducer on `port`."""
    return (
        f'\n[[sensor]]\nname = "{name}"\nsegment = "{segment}"\ndriver = "serial"\nport = "{port}"\n'
        f"line_regex = '^(?P<pressure>[0-9.]+)$'\nunits = {{ pressure = \"Pa\" }}\n"
    )


def station(name: str, port: str, stale_after_s: float = 2.0, extra: str = "") -> str:
    """A one-segment station with one serial pressure sensor, plus `extra` TOML."""
    return (
        f'[station]\nname = "{name}"\n\n[[segment]]\nname = "lab"\nvolume_m3 = 10.0\n'
        + serial_sensor("p", port)
        + f"\n[alarms.sensor]\nstale_after_s = {stale_after_s}\n\n"
        + extra
    )


class Daemon:
    """`hullwatch run -c CONFIG` in a subprocess, logging to a file, optionally under a FakeSystemd."""

    def __init__(
        self, config: Path, log: Path, systemd: FakeSystemd | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.log = log
        environ = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        environ.pop("WATCHDOG_PID", None)
        if systemd is not None:
            environ.update(NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="1000000")
        with open(log, "a") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hullwatch", "run", "-c", str(config)],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=f,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, text: str, timeout: float = 20.0, after: int = 0) -> bool:
        """Wait until `text` appears in the log (past character `after`)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.text()[after:]:
                return True
            if self.proc.poll() is not None:
                return text in self.text()[after:]
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the process took to end."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SmallDisk:
    """A tiny tmpfs at `path` (ENOSPC for real); `resize(kib)` makes room again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self.path)], check=True)


@contextlib.contextmanager
def small_disk(directory: Path, kib: int = 64) -> Iterator[SmallDisk]:
    """Mount a `kib` KiB tmpfs at directory/small for the block; pytest.skip where that is not allowed (not root)."""
    mount = directory / "small"
    mount.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)]
    if subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

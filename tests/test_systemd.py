"""`hullwatch run` under a fake systemd: READY, STATUS, WATCHDOG (only while samples are fresh), STOPPING, SIGHUP."""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

STALE_S = 2.0


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

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Transducer:
    """A pty pair: the daemon reads one end as a serial port; we write a pressure line every 0.1 s."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave
        self.streaming = threading.Event()
        self.streaming.set()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self.streaming.is_set():
                os.write(self.master, b"101325.0\n")

    def close(self) -> None:
        self._stop.set()
        os.close(self.master)
        os.close(self._slave)


def config_text(port: str, station: str = "notify") -> str:
    return f"""[station]
name = "{station}"

[[segment]]
name = "lab"
volume_m3 = 10.0

[[sensor]]
name = "p"
segment = "lab"
driver = "serial"
port = "{port}"
line_regex = '^(?P<pressure>[0-9.]+)$'
units = {{ pressure = "Pa" }}

[alarms.sensor]
stale_after_s = {STALE_S}
"""


@pytest.fixture
def rig(tmp_path):
    systemd = FakeSystemd(tmp_path / "notify.sock")
    transducer = Transducer()
    cfg = tmp_path / "hullwatch.toml"
    cfg.write_text(config_text(transducer.port))
    env = dict(os.environ, NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hullwatch", "run", "-c", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "daemon.log", "w"),  # noqa: SIM115 - the process owns it
    )
    yield systemd, transducer, proc, cfg, started, tmp_path / "daemon.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    transducer.close()
    systemd.close()


def test_ready_status_watchdog_while_fresh_then_silence_then_stopping(rig):
    systemd, transducer, proc, _cfg, started, _log = rig
    ready = systemd.wait_for("READY=1", timeout=10)
    assert ready is not None and ready - started < 5.0, "READY=1 within 5 s of start"
    time.sleep(4.0)
    pings = systemd.times("WATCHDOG=1", after=ready + 1.0)
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 5 and max(gaps) <= 0.75, f"WATCHDOG=1 every WATCHDOG_USEC/2 (0.5 s): gaps {gaps}"
    assert any(m.startswith("STATUS=") and "lab" in m for _, m in systemd.messages), "STATUS says what it sees"
    transducer.streaming.clear()
    silent = time.monotonic()
    time.sleep(STALE_S + 2.0)
    late = systemd.times("WATCHDOG=1", after=silent + STALE_S + 0.6)
    assert late == [], "no WATCHDOG=1 once every sensor is stale: systemd's watchdog may fire"
    assert proc.poll() is None, "the daemon itself keeps running"
    transducer.streaming.set()
    assert systemd.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=3.0), "pings resume with fresh samples"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 5.0
    assert systemd.wait_for("STOPPING=1", after=sent, timeout=1.0)


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one(rig):
    systemd, transducer, proc, cfg, _started, log = rig
    assert systemd.wait_for("READY=1", timeout=10)
    cfg.write_text(config_text(transducer.port, station="renamed"))
    hup = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    assert systemd.wait_for("RELOADING=1", after=hup, timeout=3)
    again = systemd.wait_for("READY=1", after=hup, timeout=5)
    assert again, "READY=1 after the reload"
    assert systemd.wait_for("WATCHDOG=1", after=again, timeout=3), "monitoring goes on with the new configuration"
    assert "monitoring renamed" in log.read_text()

    cfg.write_text(config_text(transducer.port) + "\n[[segment]]\nname = 42\n")
    hup = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    assert systemd.wait_for("RELOADING=1", after=hup, timeout=3)
    assert systemd.wait_for("READY=1", after=hup, timeout=3)
    time.sleep(1.0)
    assert proc.poll() is None, "an invalid configuration does not stop the monitor"
    assert systemd.times("WATCHDOG=1", after=hup + 0.5), "still monitoring, on the old configuration"
    text = log.read_text()
    assert "reload refused" in text and f"{cfg}: segment[1].name" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0

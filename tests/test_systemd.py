"""`hullwatch run` under a fake systemd: READY, STATUS, WATCHDOG (only while samples are fresh), STOPPING, SIGHUP."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import tty

import pytest

from daemon_rig import Daemon, FakeSystemd, Transducer, station
from hullwatch.systemd import Notifier, journal_handler, journal_stream_formatter

STALE_S = 2.0


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
    # every WATCHDOG_USEC/2 (0.5 s); what counts is that no gap reaches WATCHDOG_USEC (1 s), however slow the CPU
    assert len(pings) >= 5 and max(gaps) < 1.0, f"WATCHDOG=1 every WATCHDOG_USEC/2 (0.5 s): gaps {gaps}"
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.5, abs=0.15), f"not much more often either: {gaps}"
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


def test_a_reload_that_cannot_be_built_keeps_the_old_daemon_and_says_why(rig):
    systemd, transducer, proc, cfg, _started, log = rig
    assert systemd.wait_for("READY=1", timeout=10)
    missing = cfg.parent / "mqtt-password"
    cfg.write_text(
        config_text(transducer.port, station="broken") + f'\n[mqtt]\nusername = "u"\npassword_file = "{missing}"\n'
    )
    hup = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    assert systemd.wait_for("RELOADING=1", after=hup, timeout=3)
    assert systemd.wait_for("READY=1", after=hup, timeout=5)
    assert any("reload refused" in s and "mqtt.password_file" in s for s in systemd.statuses(after=hup)), (
        "STATUS says why"
    )
    time.sleep(1.0)
    assert proc.poll() is None, "the old daemon runs on"
    assert systemd.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=3), "still monitoring"
    text = log.read_text()
    assert f"reload refused, keeping the running configuration: {cfg}: mqtt.password_file" in text
    assert re.search(r"ADVISORY +reload_fault config ACTIVE: reload refused", text)
    assert "monitoring broken" not in text
    missing.write_text("pw\n")  # fixed: the next reload goes through
    hup = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    again = systemd.wait_for("READY=1", after=hup, timeout=10)
    assert again and systemd.wait_for("WATCHDOG=1", after=again, timeout=3)
    assert "monitoring broken" in log.read_text() and "configuration reloaded" in log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


class NumberedTransducer:
    """A pty writing a new pressure every 0.05 s (100001, 100002, ...), each line `prefix` + value."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self.prefix = ""
        self.written: list[tuple[str, float]] = []  # (prefix, value) of each whole line the kernel took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(0.05):
            prefix, value = self.prefix, 100001.0 + k
            with contextlib.suppress(OSError):
                if os.write(self.master, f"{prefix}{value}\n".encode()):
                    self.written.append((prefix, value))
                    k += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self._slave)


def recorded(path) -> set[float]:
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    return {float(r.split(",")[3]) for r in rows if r.count(",") == 3}


def test_a_reload_keeps_an_unchanged_sensor_reading_and_rebuilds_a_changed_one(tmp_path):
    """An unchanged [[sensor]] is handed over running: no line lost (reopening a port flushes its input)."""
    systemd, feeder = FakeSystemd(tmp_path / "notify.sock"), NumberedTransducer()
    cfg, csv = tmp_path / "hullwatch.toml", tmp_path / "samples.csv"
    recorder = f'[recorder]\npath = "{csv}"\n'
    cfg.write_text(station("one", feeder.port, extra=recorder))
    daemon = Daemon(cfg, tmp_path / "daemon.log", systemd)
    try:
        assert daemon.wait_for_log("p: reading", 30), daemon.text()
        feeder.start()  # only now: the port's first opening flushes its input
        time.sleep(1.0)
        # another section changed, the sensor's not: its driver reads on, its port stays open
        mark = len(daemon.text())
        cfg.write_text(station("two", feeder.port, extra=recorder))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log("monitoring two", 30, mark), daemon.text()[mark:]
        assert "reload: p unchanged" in daemon.text()[mark:]
        time.sleep(1.0)
        assert "p: reading" not in daemon.text()[mark:], "the port was not opened again"
        before_change = len(feeder.written)
        # the sensor's line format changed: its driver is rebuilt and the new format is read
        mark = len(daemon.text())
        cfg.write_text(station("three", feeder.port, extra=recorder).replace("'^(?P<", "'^P=(?P<"))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log("monitoring three", 30, mark), daemon.text()[mark:]
        assert "reload: p unchanged" not in daemon.text()[mark:]
        assert daemon.wait_for_log("p: reading", 30, mark), "the changed driver opens the port anew"
        feeder.prefix = "P="
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {v for p, v in feeder.written if p} & recorded(csv):
            time.sleep(0.2)
        assert {v for p, v in feeder.written if p} & recorded(csv), "lines in the new format are read"
        code, _ = daemon.stop(timeout=30)
        assert code == 0
    finally:
        daemon.kill()
        feeder.close()
        systemd.close()
    unchanged = {v for _, v in feeder.written[:before_change]}
    missing = sorted(unchanged - recorded(csv))
    assert not missing, f"{len(missing)} of {len(unchanged)} lines written before the second reload never read"


# -- hullwatch.systemd: systemd-python when installed, the built-in fallbacks otherwise ------------

needs_systemd_python = pytest.mark.skipif(
    importlib.util.find_spec("systemd") is None, reason="systemd-python not installed (the [systemd] extra)"
)


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    systemd = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.path)
    try:
        yield systemd
    finally:
        systemd.close()


@pytest.fixture(params=["systemd-python", "socket"])
def backend(request, monkeypatch):
    if request.param == "systemd-python":
        if importlib.util.find_spec("systemd") is None:
            pytest.skip("systemd-python not installed (the [systemd] extra)")
    else:
        monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd -> ImportError
    return request.param


def test_notifier_sends_through_either_backend(notify_socket, backend):
    notifier = Notifier()
    assert notifier.backend == backend
    notifier.ready("lab 101325 Pa")
    assert notify_socket.wait_for("READY=1", timeout=10)
    assert notify_socket.wait_for("STATUS=lab 101325 Pa", timeout=10)


def test_a_vanished_notify_socket_is_logged_once_and_never_raised(notify_socket, backend, caplog):
    notifier = Notifier()
    notify_socket.close()
    os.unlink(notify_socket.path)
    with caplog.at_level(logging.WARNING, logger="hullwatch.systemd"):
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_an_explicit_environment_uses_the_built_in_datagram(notify_socket):
    assert Notifier({"NOTIFY_SOCKET": notify_socket.path}).backend == "socket"
    assert not Notifier({}).enabled and Notifier({}).send("READY=1") is False


@needs_systemd_python
def test_the_journal_handler_sends_the_plain_message(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert journal_handler() is None, "not under systemd"
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    handler = journal_handler()
    record = logging.LogRecord("hullwatch", logging.WARNING, __file__, 1, "leak in %s", ("lab",), None)
    assert handler is not None and handler.format(record) == "leak in lab"


def test_without_systemd_python_lines_on_the_journal_stream_carry_their_priority(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        formatter = journal_stream_formatter(stream)
        assert formatter is not None and journal_stream_formatter(other) is None
    records = [
        logging.LogRecord("hullwatch", level, __file__, 1, "one\ntwo", None, None)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    ]
    assert [formatter.format(r) for r in records] == [f"<{p}>one\n<{p}>two" for p in (7, 6, 4, 3, 2)]

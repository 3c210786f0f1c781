"""`hullwatch run` end to end through faults of the parts around the monitor: none of them stops it.

Real files, a tiny tmpfs (a real ENOSPC), ptys and a private mosquitto: start-up failures are one line
with a sysexits code; an empty client key still starts the monitor; a corrupt spool is moved aside;
a full disk under the recorder neither stops the monitor nor tears a row; SIGTERM ends it well within
systemd's TimeoutStopSec even with a frozen broker and a flooding transducer.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import daemon_rig
from daemon_rig import Daemon, FakeSystemd, Transducer, station
from hullwatch.sinks.spool import Spool
from mosquitto_fixture import HAVE_MOSQUITTO, HAVE_OPENSSL, Broker, Listener, make_certs

needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto (Debian package mosquitto)")


def run_briefly(config_path, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`hullwatch run` that is expected to end by itself; env values of None are removed."""
    environ = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            environ.pop(k, None)
        else:
            environ[k] = v
    return subprocess.run(
        [sys.executable, "-m", "hullwatch", "run", "-c", str(config_path)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("case", "extra", "env", "expect"),
    [
        ("no pin library", "[annunciator]\n", {"GPIOZERO_PIN_FACTORY": None}, "no GPIO library"),
        ("a pin twice", "[annunciator]\nbuzzer_gpio = 18\nled_gpio = 18\n", {"GPIOZERO_PIN_FACTORY": "mock"}, "18"),
        ("a missing password", '[mqtt]\nusername = "u"\npassword_file = "{tmp}/none"\n', {}, "mqtt.password_file"),
        ("an unreadable TLS file", '[mqtt.tls]\nca_file = "{tmp}/none.crt"\n', {}, "mqtt.tls"),
        ("a recorder path under a file", '[recorder]\npath = "{tmp}/hullwatch.toml/x.csv"\n', {}, "recorder.path"),
        ("a spool path under a file", '[mqtt]\n[spool]\npath = "{tmp}/hullwatch.toml/s.sqlite"\n', {}, "spool.path"),
    ],
)
def test_start_up_failures_are_one_line_and_a_sysexits_code(tmp_path, case, extra, env, expect):
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("starts", "/dev/null-not-there", extra=extra.format(tmp=tmp_path)))
    done = run_briefly(path, env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 78, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"{path}: ") and expect in lines[0], lines[0]


def test_a_spool_held_by_another_hullwatch_is_a_one_line_error(tmp_path):
    holder = Spool(str(tmp_path / "s.sqlite"))
    try:
        path = tmp_path / "hullwatch.toml"
        extra = f'[mqtt]\n[spool]\npath = "{tmp_path}/s.sqlite"\n'
        path.write_text(station("starts", "/dev/null-not-there", extra=extra))
        done = run_briefly(path)
        assert (
            done.returncode == 78
            and done.stderr.strip() == f"{path}: spool.path: {tmp_path}/s.sqlite is in use by another hullwatch"
        )
    finally:
        holder.close()


@needs_mosquitto
@pytest.mark.skipif(not HAVE_OPENSSL, reason="needs openssl")
def test_an_empty_client_key_still_starts_the_monitor(tmp_path):
    """The unit's `SetCredential=mqtt-client-key:` fallback: an empty key file, as deploy/README.md says."""
    certs = make_certs(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=certs).start()
    key = tmp_path / "mqtt-client-key"
    key.write_text("\n")
    transducer = Transducer()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    path = tmp_path / "hullwatch.toml"
    extra = (
        f'[mqtt]\nport = {broker.port}\n[mqtt.tls]\nca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\n'
        f'key_file = "{key}"\n'
    )
    path.write_text(station("nokey", transducer.port, extra=extra))
    daemon = Daemon(path, tmp_path / "daemon.log", systemd)
    try:
        assert systemd.wait_for("READY=1", timeout=20), daemon.text()
        assert systemd.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=10), "monitoring"
        assert "mqtt.tls.key_file" in daemon.text() and "without a client certificate" in daemon.text()
        code, took = daemon.stop()
        assert code == 0 and took < 10
    finally:
        daemon.kill()
        systemd.close()
        transducer.close()
        broker.stop()


def sample_bodies(n: int) -> list[dict]:
    return [{"sensor": "p", "time": 1780000000.0 + i, "quantity": "pressure", "value": 1e5 + i, "quality": "good"}
            for i in range(n)]  # fmt: skip


def garbage(path) -> None:
    path.write_bytes(os.urandom(300_000))


def bad_middle_page(path) -> None:
    """A spool with 5,000 unsent samples and garbage in a leaf page half way (found only when read)."""
    spool = Spool(str(path))
    spool._sinks = ["mqtt"]
    for body in sample_bodies(5000):
        spool.append("sample", body["time"], dict(body, pad="y" * 100))
    spool.commit()
    spool.close()
    page = os.path.getsize(path) // 4096 // 2
    with open(path, "r+b") as f:
        f.seek(page * 4096 + 2000)
        f.write(b"\xff" * 1500)


@needs_mosquitto
@pytest.mark.parametrize("damage", [garbage, bad_middle_page])
def test_a_corrupt_spool_is_moved_aside_and_the_monitor_runs_on(tmp_path, damage):
    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "hullwatch/spooled/#")
    spool = tmp_path / "spool.sqlite"
    damage(spool)
    transducer = Transducer()
    path = tmp_path / "hullwatch.toml"
    path.write_text(
        station("spooled", transducer.port, extra=f'[mqtt]\nport = {broker.port}\n[spool]\npath = "{spool}"\n')
    )
    daemon = Daemon(path, tmp_path / "daemon.log")
    try:
        assert daemon.wait_for_log("moved aside", 30), daemon.text()
        assert daemon.wait_for_log("spool_fault spool ACTIVE", 10), daemon.text()
        topic = "hullwatch/spooled/alarm/spool_fault/spool/advisory"
        assert listener.wait_topic(topic, 20), "the advisory reaches MQTT"
        since = listener.count()
        live = listener.wait_for(lambda m: m[1] == "hullwatch/spooled/sensor/p", 20, since)
        assert live is not None, "samples keep flowing after the fresh spool started"
        assert daemon.alive()
        code, _ = daemon.stop()
        assert code == 0
        assert any(".corrupt-" in p for p in os.listdir(tmp_path))
        db = sqlite3.connect(spool)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    finally:
        daemon.kill()
        listener.close()
        transducer.close()
        broker.stop()


def test_a_full_disk_under_the_recorder_neither_stops_the_monitor_nor_tears_a_row(tmp_path):
    with daemon_rig.small_disk(tmp_path) as disk:
        transducer = Transducer(line=b"101325.0\n", interval_s=0.01)
        systemd = FakeSystemd(tmp_path / "notify.sock")
        samples = disk.path / "samples.csv"
        path = tmp_path / "hullwatch.toml"
        path.write_text(station("fulldisk", transducer.port, extra=f'[recorder]\npath = "{samples}"\n'))
        daemon = Daemon(path, tmp_path / "daemon.log", systemd)
        try:
            assert daemon.wait_for_log("recorder_fault recorder ACTIVE", 60), daemon.text()
            assert "No space left" in daemon.text()
            full = time.monotonic()
            assert systemd.wait_for("WATCHDOG=1", after=full + 2, timeout=10), "the monitor goes on"
            assert samples.read_bytes().endswith(b"\n"), "never a half row"
            disk.resize(8192)
            assert daemon.wait_for_log("recorder_fault recorder CLEARED", 60), daemon.text()
            code, took = daemon.stop()
            assert code == 0 and took < 10
        finally:
            daemon.kill()
            systemd.close()
            transducer.close()
        out = tmp_path / "out.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "hullwatch", "analyze", "-c", str(path), str(samples), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "lost" not in daemon.text(), "rows waited in memory and were all written"


@needs_mosquitto
def test_sigterm_ends_it_within_the_stop_timeout_with_a_frozen_broker_and_a_flood(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    flood = Transducer(line=b"101325.0\n" * 20, interval_s=0.01)  # about 2,000 lines a second
    systemd = FakeSystemd(tmp_path / "notify.sock")
    path = tmp_path / "hullwatch.toml"
    path.write_text(
        station("flood", flood.port, extra=f'[mqtt]\nport = {broker.port}\n[spool]\npath = "{tmp_path}/s.sqlite"\n')
    )
    daemon = Daemon(path, tmp_path / "daemon.log", systemd)
    try:
        assert daemon.wait_for_log("MQTT: connected", 20), daemon.text()
        time.sleep(2.0)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # frozen: PUBACKs never come, the socket stays open
        time.sleep(2.0)
        assert systemd.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=5), "the flood does not stall the loop"
        code, took = daemon.stop(timeout=30)
        assert code == 0, daemon.text()
        assert took < 9.0, f"SIGTERM took {took:.1f} s (TimeoutStopSec=10)"
        assert systemd.times("STOPPING=1")
    finally:
        daemon.kill()
        if broker.proc is not None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        broker.stop()
        systemd.close()
        flood.close()
    rows = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT count(*) FROM record WHERE kind = 'sample'")
    assert rows.fetchone()[0] > 0, "what the frozen broker did not take is kept for next time"


def test_metrics_tell_the_spool_and_sensors_honestly(tmp_path):
    """Self-metrics in the spool: the spool's counters and a sensor unplugged from the start."""
    transducer = Transducer()
    path = tmp_path / "hullwatch.toml"
    extra = daemon_rig.serial_sensor("unplugged", str(tmp_path / "no-tty"))
    extra += (
        f'[influxdb]\nurl = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"\n[spool]\npath = "{tmp_path}/s.sqlite"\n'
    )
    path.write_text(station("metrics", transducer.port, 1.0, extra))
    daemon = Daemon(path, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 40

        def latest() -> dict:
            db = sqlite3.connect(tmp_path / "s.sqlite")
            try:
                rows = db.execute("SELECT body FROM record WHERE kind = 'metric' ORDER BY id").fetchall()
            except sqlite3.Error:
                return {}
            finally:
                db.close()
            found = {}
            for (body,) in rows:
                m = json.loads(body)
                found[(m["measurement"], m.get("tags", {}).get("sensor"))] = m["fields"]
            return found

        found = {}
        while time.monotonic() < deadline:
            found = latest()
            if found.get(("sensor_health", "unplugged"), {}).get("quality") == "bad":
                break
            time.sleep(0.5)
        assert found[("sensor_health", "unplugged")]["quality"] == "bad"
        assert found[("sensor_health", "p")]["quality"] == "good"
        assert {"depth", "oldest_unsent_s", "dropped", "size_bytes", "corrupt"} <= set(found[("spool", None)])
    finally:
        daemon.kill()
        transducer.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_transducer_streaming_2000_lines_a_second_is_held_to_its_rate(tmp_path):
    """The excess is dropped before it reaches the queue and counted; the loop keeps up; memory stays put."""
    flood = Transducer(line=b"101325.0\n" * 20, interval_s=0.01)  # about 2,000 lines a second
    systemd = FakeSystemd(tmp_path / "notify.sock")
    path = tmp_path / "hullwatch.toml"
    extra = (
        f'[influxdb]\nurl = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"\n[spool]\npath = "{tmp_path}/s.sqlite"\n'
    )
    path.write_text(station("flood", flood.port, extra=extra))
    daemon = Daemon(path, tmp_path / "daemon.log", systemd)
    try:
        ready = systemd.wait_for("READY=1", timeout=30)
        assert ready, daemon.text()
        assert daemon.wait_for_log("more than 50 a second", 20), daemon.text()
        time.sleep(3.0)
        baseline = rss_kib(daemon.proc.pid)
        start = time.time()
        time.sleep(12.0)
        grown_mib = (rss_kib(daemon.proc.pid) - baseline) / 1024
        end = time.time()
        assert systemd.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=5), "the loop keeps up"
        assert daemon.text().count("more than 50 a second") == 1, "logged once for the episode"
        code, took = daemon.stop(timeout=30)
        assert code == 0 and took < 5.0, (code, took, daemon.text())
    finally:
        daemon.kill()
        systemd.close()
        flood.close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    taken = db.execute(
        "SELECT count(*) FROM record WHERE kind = 'sample' AND time_ns BETWEEN ? AND ?",
        (int(start * 1e9), int(end * 1e9)),
    ).fetchone()[0]
    health = [json.loads(b) for (b,) in db.execute("SELECT body FROM record WHERE kind = 'metric'")]
    health = [m["fields"] for m in health if m["measurement"] == "sensor_health" and m["tags"]["sensor"] == "p"]
    assert 40 * (end - start) < taken <= 50 * (end - start) + 50, taken  # 50 lines a second, a second's burst
    assert health[-1]["rate_dropped"] > 1000 and health[-1]["quality"] == "good", health[-1]
    assert grown_mib < 20, f"RSS grew {grown_mib:.1f} MiB in 12 s"


def test_a_sensor_silent_from_start_up_raises_its_fault_within_stale_after_plus_2_s(tmp_path):
    """A transducer unplugged before the daemon starts (a pty nobody writes to) is reported, not waited for."""
    good, silent = Transducer(), Transducer()
    silent.streaming.clear()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    path = tmp_path / "hullwatch.toml"
    stale_after_s = 2.0
    path.write_text(station("quiet", good.port, stale_after_s, daemon_rig.serial_sensor("silent", silent.port)))
    daemon = Daemon(path, tmp_path / "daemon.log", systemd)
    try:
        ready = systemd.wait_for("READY=1", timeout=30)
        assert ready, daemon.text()
        raised = None
        deadline = ready + stale_after_s + 20  # generous, to measure; the bound is asserted below
        while raised is None and time.monotonic() < deadline and daemon.alive():
            if "sensor_fault silent ACTIVE" in daemon.text():
                raised = time.monotonic()
            time.sleep(0.02)
        assert raised is not None, daemon.text()
        assert raised - ready <= stale_after_s + 2.0, f"raised {raised - ready:.2f} s after READY=1"
        assert "sensor_fault p " not in daemon.text(), "the sensor that talks is not reported"
        code, took = daemon.stop()
        assert code == 0 and took < 10
    finally:
        daemon.kill()
        systemd.close()
        good.close()
        silent.close()

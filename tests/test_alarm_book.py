"""The alarm book across restarts, and commands that must be refused, against `hullwatch run` and a real mosquitto.

A station with two pty transducers reading 90 kPa (low_pressure warning active). One goes quiet
and comes back (a latching sensor_fault, latched); an operator acknowledges the low pressure and
starts maintenance of a sensor. The daemon is then killed (SIGKILL) or stopped (SIGTERM) and
started again: what it publishes must be the book as it was, and the annunciator must show it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

import daemon_rig
from hullwatch import config
from hullwatch.core.lifecycle import AlarmBook
from hullwatch.core.model import AlarmState, AlarmTransition, Severity
from hullwatch.service import Daemon
from hullwatch.sinks.spool import Spool
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener, publish

P = "hullwatch/book"
LOW = f"{P}/alarm/low_pressure/lab/warning"
FAULT = f"{P}/alarm/sensor_fault/p2/warning"
WAIT_S = 60.0  # generous: these tests must hold on a machine many times slower

needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto")


def station_config(tmp_path: Path, port_a: str, port_b: str, broker_port: int) -> Path:
    path = tmp_path / "hullwatch.toml"
    path.write_text(
        '[station]\nname = "book"\n\n[[segment]]\nname = "lab"\nvolume_m3 = 10.0\n'
        + daemon_rig.serial_sensor("p1", port_a)
        + daemon_rig.serial_sensor("p2", port_b)
        + '\n[alarms]\nlatching = ["rapid_depress", "sensor_fault"]\n'
        + "[alarms.sensor]\nstale_after_s = 1.0\n"
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        + f'[spool]\npath = "{tmp_path}/spool.sqlite"\n'
    )
    return path


def records(listener: Listener, topic: str, since: int = 0) -> list[dict]:
    """The alarm records published on a topic (index >= since); {} for an empty (removing) message."""
    out = []
    for _t, top, payload, _r in listener.messages[since:]:
        if top == topic:
            out.append(json.loads(payload) if payload else {})
    return out


def wait_record(listener: Listener, topic: str, pred, since: int = 0, timeout: float = WAIT_S) -> dict | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for r in records(listener, topic, since):
            if pred(r):
                return r
        time.sleep(0.05)
    return None


def saved_book(path: Path) -> dict[str, dict]:
    """The alarm book as the spool file holds it (read as another process would)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {name: json.loads(body) for name, body in db.execute("SELECT name, body FROM alarm_book")}
    finally:
        db.close()


def wait_saved(path: Path, pred, timeout: float = WAIT_S) -> dict | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        book = saved_book(path)
        if pred(book):
            return book
        time.sleep(0.05)
    return None


@pytest.fixture
def rig(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    a, b = daemon_rig.Transducer(b"90000.0\n"), daemon_rig.Transducer(b"90000.0\n")
    listener = Listener(broker.port, f"{P}/#")
    daemons: list[daemon_rig.Daemon] = []
    cfg = station_config(tmp_path, a.port, b.port, broker.port)

    def start() -> daemon_rig.Daemon:
        daemons.append(daemon_rig.Daemon(cfg, tmp_path / "daemon.log"))
        return daemons[-1]

    yield broker, a, b, listener, start, tmp_path / "spool.sqlite"
    for d in daemons:
        d.kill()
    listener.close()
    a.close()
    b.close()
    broker.stop()


@needs_mosquitto
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_acknowledged_latched_and_maintenance_survive_a_restart(rig, how):
    broker, _a, b, listener, start, spool = rig
    daemon = start()
    assert wait_record(listener, LOW, lambda r: r.get("lifecycle") == "unack"), daemon.text()
    b.streaming.clear()  # p2 goes quiet: a sensor fault ...
    assert wait_record(listener, FAULT, lambda r: r.get("lifecycle") == "unack"), daemon.text()
    b.streaming.set()  # ... that latches when it comes back
    assert wait_record(listener, FAULT, lambda r: r.get("lifecycle") == "latched_unack"), daemon.text()
    key = {"alarm": "low_pressure", "source": "lab", "severity": "warning"}
    publish(broker.port, f"{P}/cmd/ack", json.dumps(key), user_properties={"by": "alice"})
    assert wait_record(listener, LOW, lambda r: r.get("lifecycle") == "acked" and r.get("by") == "mqtt:alice")
    publish(broker.port, f"{P}/cmd/maintenance", '{"on": true, "sources": ["p1"], "duration_s": 3600, "by": "dave"}')
    before = wait_saved(
        spool,
        lambda book: (
            book.get("alarm/low_pressure/lab/warning", {}).get("state") == "acked"
            and book.get("alarm/sensor_fault/p2/warning", {}).get("state") == "latched_unack"
            and "maintenance" in book
        ),
    )
    assert before is not None, saved_book(spool)
    window = before["maintenance"]["windows"]["p1"]
    assert window["by"] == "mqtt:dave" and window["until"] > time.time() + 3000
    assert "command ack from mqtt:alice" in daemon.text()  # the audit log says who

    if how == "SIGKILL":
        daemon.kill()
    else:
        assert daemon.stop()[0] == 0
    n = listener.count()
    restarted_at = time.time()
    daemon = start()
    # the restarted daemon publishes the book as it was ...
    acked = wait_record(listener, LOW, lambda r: r.get("lifecycle") == "acked", since=n)
    assert acked is not None and acked["acknowledged"] is True and acked["by"] == "mqtt:alice", daemon.text()
    latched = wait_record(listener, FAULT, lambda r: r.get("lifecycle") == "latched_unack", since=n)
    assert latched is not None and latched["latched"] is True
    # ... and its monitor, finding the low pressure again, leaves the acknowledgement alone
    again = wait_record(listener, LOW, lambda r: r.get("time", 0) > restarted_at, since=n)
    assert again is not None and again["lifecycle"] == "acked" and again["acknowledged"] is True
    assert all(r.get("lifecycle") != "unack" for r in records(listener, LOW, n))
    text = daemon.text()
    assert "alarm book: 2 alarm(s) restored" in text and "maintenance of p1 restored" in text
    assert saved_book(spool)["maintenance"] == before["maintenance"]  # the same expiry

    # latched until reset, by whom the log says
    n = listener.count()
    fault = {"alarm": "sensor_fault", "source": "p2", "severity": "warning", "by": "bob"}
    publish(broker.port, f"{P}/cmd/reset", json.dumps(fault))
    assert wait_record(listener, FAULT, lambda r: r == {}, since=n) is not None, daemon.text()
    assert daemon.wait_for_log("command reset from mqtt:bob")
    assert daemon.stop()[0] == 0


@needs_mosquitto
def test_a_retained_command_is_refused_live_and_after_a_restart(rig):
    broker, _a, _b, listener, start, _spool = rig
    daemon = start()
    assert wait_record(listener, LOW, lambda r: r.get("lifecycle") == "unack"), daemon.text()
    n = listener.count()
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}', retain=True)
    refused = listener.wait_for(lambda m: m[1] == f"{P}/cmd/result", timeout=WAIT_S, since=n)
    assert refused is not None and json.loads(refused[2])["error"] == "retained"

    assert daemon.stop()[0] == 0
    n = listener.count()
    daemon = start()  # the broker hands the retained command to the new subscription: refused again
    refused = listener.wait_for(lambda m: m[1] == f"{P}/cmd/result", timeout=WAIT_S, since=n)
    assert refused is not None and json.loads(refused[2])["error"] == "retained"
    # a plain command afterwards is carried out: the retained one never was
    publish(broker.port, f"{P}/cmd/maintenance", '{"on": true}')
    result = listener.wait_for(lambda m: m[1] == f"{P}/cmd/result" and b"maintenance" in m[2], timeout=WAIT_S, since=n)
    assert result is not None and json.loads(result[2])["ok"] is False  # no sources: refused too
    assert all(r.get("lifecycle") == "unack" for r in records(listener, LOW) if r)
    assert "retained commands are refused" in daemon.text()
    assert daemon.stop()[0] == 0


# -- the annunciator after a restart (in process, mock pins) ---------------------------------------------------------


@pytest.fixture
def mock_pins():
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


def quiet_station(tmp_path: Path) -> Path:
    scenario = tmp_path / "quiet.toml"
    scenario.write_text(
        'name = "quiet"\n[[segment]]\nname = "lab"\nvolume_m3 = 1.0\n'
        '[[transducer]]\nname = "p"\nsegment = "lab"\nrate_hz = 10.0\n'
    )
    path = tmp_path / "c.toml"
    path.write_text(
        '[station]\nname = "lab"\n[[segment]]\nname = "lab"\nvolume_m3 = 1.0\n'
        '[[sensor]]\nname = "p"\nsegment = "lab"\ndriver = "simulated"\n'
        f'[simulation]\nscenario = "{scenario}"\n'
        f'[spool]\npath = "{tmp_path}/spool.sqlite"\n'
        "[annunciator]\nbuzzer_gpio = 18\nled_gpio = 23\nack_button_gpio = 24\n"
    )
    return path


def run_daemon(cfg_path: Path, pins: MockFactory):
    daemon = Daemon(config.load(str(cfg_path)), pin_factory=pins)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    return daemon, stop, thread


def until(pred, timeout: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_the_annunciator_shows_the_restored_book_without_any_sink(tmp_path, mock_pins):
    # a latched rapid_depress emergency, unacknowledged, left by a previous run
    book = AlarmBook(latching=("rapid_depress",))
    for state in (AlarmState.ACTIVE, AlarmState.CLEARED):
        book.on_transition(AlarmTransition(time.time(), "rapid_depress", "lab", Severity.EMERGENCY, state, 12.0, 9.19))
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.save_book({name: json.dumps(row) for name, row in book.rows().items()})
    spool.close()

    cfg = quiet_station(tmp_path)
    daemon, stop, thread = run_daemon(cfg, mock_pins)
    try:
        assert until(lambda: mock_pins.pin(18).state), "the restored latch does not sound"
        assert daemon.desk.book.annunciation().worst_unacked is Severity.EMERGENCY
        mock_pins.pin(24).drive_low()  # the acknowledge button
        time.sleep(0.05)
        mock_pins.pin(24).drive_high()
        assert until(lambda: not mock_pins.pin(18).state), "acknowledging did not silence it"
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()

    daemon, stop, thread = run_daemon(cfg, mock_pins)  # again: latched and acknowledged, silent, LED steady
    try:
        assert until(lambda: daemon.desk.book.annunciation().any_active)
        time.sleep(0.5)
        assert not mock_pins.pin(18).state and mock_pins.pin(23).state
        [record] = daemon.desk.book.records()
        assert record.state.value == "latched_acked" and record.by == "button"
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()

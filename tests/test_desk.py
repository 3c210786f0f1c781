"""The alarm desk: lifecycle + annunciator + commands, and the daemon sounding the buzzer on mock pins."""

import threading
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from hullwatch import config
from hullwatch.core.lifecycle import AlarmBook, LifecycleState
from hullwatch.core.model import AlarmState, AlarmTransition, Severity
from hullwatch.desk import AlarmDesk
from hullwatch.service import Daemon

ROOT = Path(__file__).resolve().parents[1]


def transition(state, t=1.0, alarm="leak_rate", source="prk", severity=Severity.WARNING):
    return AlarmTransition(t, alarm, source, severity, state, 1.0, 0.9)


def test_commands_reach_the_book_and_bad_ones_are_refused_with_a_reason():
    shown, changes = [], []
    desk = AlarmDesk(AlarmBook(), clock=lambda: 10.0, show=shown.append)
    desk.outputs.append(changes.append)
    desk.transitions([transition(AlarmState.ACTIVE)])
    assert shown[-1].worst_unacked is Severity.WARNING
    reply = desk.command("ack", {"alarm": "leak_rate", "source": "prk", "severity": "warning"}, "mqtt")
    assert reply["ok"] and changes[-1].new is LifecycleState.ACKED and changes[-1].by == "mqtt"
    assert shown[-1].worst_unacked is None and shown[-1].any_active
    for name, payload, words in [
        ("ack", {"alarm": 5}, "alarm"),
        ("ack", {"alarm": "leak_rate", "source": "prk", "severity": "dire"}, "severity"),
        ("shelve", {"alarm": "leak_rate", "source": "prk", "severity": "warning"}, "duration_s"),
        ("maintenance", {"on": "yes"}, "on"),
        ("explode", {}, "unknown command"),
    ]:
        reply = desk.command(name, payload, "mqtt")
        assert not reply["ok"] and words in reply["message"], reply
    reply = desk.command("ack", {"alarm": "nope", "source": "x", "severity": "warning"}, "mqtt")
    assert not reply["ok"] and "no such alarm" in reply["message"]


def test_maintenance_commands_need_sources_and_name_unknown_ones():
    desk = AlarmDesk(AlarmBook(known_source={"prk", "p_prk"}.__contains__), clock=lambda: 10.0)
    desk.transitions([transition(AlarmState.ACTIVE, alarm="rapid_depress", severity=Severity.EMERGENCY)])
    reply = desk.command("maintenance", {"on": True}, "mqtt:dave")
    assert not reply["ok"] and reply["error"] == "bad_request" and '"all": true' in reply["message"]
    reply = desk.command("maintenance", {"on": True, "sources": ["prk", "zvedza"]}, "mqtt:dave")
    assert reply == {"ok": False, "message": "unknown source(s): zvedza", "error": "unknown_source"}
    reply = desk.command("maintenance", {"on": True, "all": True, "duration_s": 60}, "mqtt:dave")
    assert reply["ok"] and "emergencies still sound" in reply["message"]
    assert desk.book.annunciation().worst_unacked is Severity.EMERGENCY  # "all" leaves the emergency sounding
    reply = desk.command("maintenance", {"on": True, "sources": ["prk"]}, "mqtt:dave")
    assert reply["ok"] and desk.book.annunciation().worst_unacked is None  # its own source: deliberate venting
    for bad in ({"on": True, "all": "yes"}, {"on": True, "sources": ["prk"], "duration_s": "1h"}):
        assert not desk.command("maintenance", bad, "mqtt:dave")["ok"]


def test_every_change_reaches_the_store_and_restore_brings_it_back(caplog):
    saved = {}
    desk = AlarmDesk(AlarmBook(), clock=lambda: 10.0, store=saved.update)
    desk.transitions([transition(AlarmState.ACTIVE)])
    assert saved["alarm/leak_rate/prk/warning"]["state"] == "unack"
    desk.command("ack", {"all": True}, "mqtt:alice")
    assert saved["alarm/leak_rate/prk/warning"]["by"] == "mqtt:alice"
    desk.command("maintenance", {"on": True, "sources": ["zvezda"]}, "mqtt:dave")
    assert saved["maintenance"]["windows"]["zvezda"]["by"] == "mqtt:dave"

    rows = {name: row for name, row in saved.items() if row is not None} | {"alarm/x/y/warning": "garbage"}
    shown = []
    again = AlarmDesk(AlarmBook(), clock=lambda: 20.0, show=shown.append, store=saved.update)
    restored = again.restore(rows, lambda _alarm: 30.0)
    assert len(restored.problems) == 1 and "skipping a saved row" in caplog.text
    record = again.book.record(("leak_rate", "prk", Severity.WARNING))
    assert record.state is LifecycleState.ACKED and record.by == "mqtt:alice"
    assert shown[-1].any_active and shown[-1].maintenance and shown[-1].worst_unacked is None
    assert saved["alarm/x/y/warning"] is None  # the bad row goes from the store


def test_an_output_that_raises_does_not_stop_the_others():
    seen = []
    desk = AlarmDesk(AlarmBook(), clock=lambda: 0.0)
    desk.outputs += [lambda c: 1 / 0, seen.append]
    desk.transitions([transition(AlarmState.ACTIVE)])
    assert len(seen) == 1


@pytest.fixture
def mock_pins():
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


def test_a_hole_sounds_the_buzzer_and_the_button_silences_it(tmp_path, mock_pins):
    scenario = tmp_path / "hole.toml"
    scenario.write_text("""name = "hole"
[[segment]]
name = "lab"
volume_m3 = 1.0
[[transducer]]
name = "p"
segment = "lab"
rate_hz = 10.0
[[transducer]]
name = "t"
segment = "lab"
measures = ["temperature"]
[[event]]
at_s = 20
leak = { segment = "lab", kg_per_day = 100.0 }
""")
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f"""[station]
name = "lab"
[[segment]]
name = "lab"
volume_m3 = 1.0
[[sensor]]
name = "p"
segment = "lab"
driver = "simulated"
[[sensor]]
name = "t"
segment = "lab"
driver = "simulated"
[simulation]
scenario = "{scenario}"
speed = 20.0
[annunciator]
buzzer_gpio = 18
led_gpio = 23
ack_button_gpio = 24
""")
    daemon = Daemon(config.load(str(cfg_path)), pin_factory=mock_pins)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        buzzer = mock_pins.pin(18)
        deadline = time.monotonic() + 10
        while not buzzer.state and time.monotonic() < deadline:
            time.sleep(0.02)
        assert buzzer.state, "the buzzer did not sound for the hole"
        assert daemon.desk.book.annunciation().worst_unacked is Severity.EMERGENCY
        button = mock_pins.pin(24)
        button.drive_low()
        time.sleep(0.05)
        button.drive_high()
        deadline = time.monotonic() + 2
        while buzzer.state and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not buzzer.state, "acknowledging did not silence the buzzer"
        assert daemon.desk.book.annunciation().any_active  # acknowledged, still active: steady LED
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not mock_pins.pin(18).state and not mock_pins.pin(23).state  # outputs off on exit

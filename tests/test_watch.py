"""`hullwatch watch`: the pure station state, the settings, and the Textual view against a real mosquitto."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable

import pytest

from hullwatch import cli, config, exits
from hullwatch.config import MqttConfig
from hullwatch.core.lifecycle import AlarmBook
from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, Quality, Quantity, Sample, Severity
from hullwatch.desk import AlarmDesk
from hullwatch.sinks.mqtt import MqttSink
from hullwatch.watch import Settings, settings_from_args
from hullwatch.watch.state import (
    AlarmView,
    Stations,
    StationState,
    alarm_values,
    health_rows,
    leak,
    sensor_value,
    span,
)
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener, publish, retained

P = "hullwatch/lab"
T0 = 1_780_000_000.0

ALARM = {
    "type": "alarm",
    "time": T0 + 412.0,
    "alarm": "leak_rate",
    "source": "prk",
    "severity": "warning",
    "state": "active",
    "value": 0.97,
    "threshold": 0.9,
    "acknowledged": False,
    "lifecycle": "unack",
    "shelved_until": None,
    "suppressed": False,
    "latched": False,
    "by": "core",
    "cause": "condition_active",
    "changed_at": T0 + 412.0,
}
ESTIMATE = Estimate(T0 + 600.0, "prk-zvezda", 0.452, 0.031, 101318.2, 94.53, 1.2e7, 3600.0)
SAMPLE = {"time": T0, "quantity": "pressure", "value": 101324.49, "quality": "good"}
METRICS = {  # the daemon's self-metrics, retained on P/metrics
    "time": T0,
    "spool": {"depth": 41, "oldest_unsent_s": 0.0, "dropped": 0, "size_bytes": 102400},
    "sinks": {
        "mqtt": {"sent": 20533, "rejected": 0, "backlog": 41, "connected": True},
        "influxdb": {"sent": 20601, "rejected": 2, "backlog": 5012, "connected": False},
    },
    "sensors": {"p_prk": {"errors": 0, "quality": "good"}, "t_prk": {"errors": 3, "quality": "suspect"}},
}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def station(*messages: tuple[str, bytes | str], now: float = T0) -> StationState:
    s = StationState(P)
    for topic, payload in messages:
        s.apply(f"{P}/{topic}", payload.encode() if isinstance(payload, str) else payload, now)
    return s


# -- StationState ----------------------------------------------------------------------------


def test_status_hatch_volume_and_sensor_messages():
    s = station(
        ("status", "online"),
        ("hatch/prk-hatch", "open"),
        ("volume/prk-zvezda", dumps(ESTIMATE.to_dict())),
        ("volume/prk-zvezda/alarm", "ON"),
        ("sensor/p_prk", dumps(SAMPLE)),
        ("sensor/t_prk", dumps({"time": T0, "quantity": "temperature", "value": 295.001, "quality": "suspect"})),
        ("sensor/p_zvezda", dumps({"time": T0, "quantity": "pressure", "value": None, "quality": "bad"})),
    )
    assert s.station == "lab" and s.status == "online"
    assert s.hatches == {"prk-hatch": "open"}
    v = s.volumes["prk-zvezda"]
    assert (v.pressure_pa, v.mass_kg, v.leak_kg_per_day, v.leak_kg_per_day_sigma) == (101318.2, 94.53, 0.452, 0.031)
    assert (v.reserve_time_s, v.window_s, v.received) == (1.2e7, 3600.0, T0)
    assert s.volume_alarm == {"prk-zvezda": True}
    assert leak(v) == "0.452 ± 0.031" and span(v.reserve_time_s) == "138 d" and span(v.window_s) == "60 min"
    p = s.sensors[("p_prk", "pressure")]
    assert sensor_value(p) == "101.324 kPa" and not p.attention(T0 + 1)
    assert p.attention(T0 + 10.5)  # gone quiet
    assert s.sensors[("t_prk", "temperature")].attention(T0)  # suspect
    bad = s.sensors[("p_zvezda", "pressure")]
    assert bad.attention(T0) and sensor_value(bad) == "—"
    assert (s.messages, s.malformed, s.ignored, s.last_message) == (7, 0, 0, T0)

    s.apply(f"{P}/status", b"offline", T0 + 1)
    s.apply(f"{P}/hatch/prk-hatch", b"closed", T0 + 1)
    s.apply(f"{P}/hatch/prk-hatch", b"", T0 + 1)
    assert s.status == "offline" and s.hatches == {}


def test_alarms_sorted_by_severity_and_removed_by_an_empty_retained_payload():
    acked = ALARM | {"severity": "caution", "threshold": 0.5, "acknowledged": True, "lifecycle": "acked"}
    emergency = ALARM | {"alarm": "rapid_depress", "severity": "emergency", "value": 12.3, "threshold": 9.19}
    fault = ALARM | {"alarm": "sensor_fault", "source": "t_prk", "severity": "caution", "value": None}
    fault |= {"threshold": None, "reason": "no reading for 5.2 s"}
    s = station(
        ("alarm/leak_rate/prk/caution", dumps(acked)),
        ("alarm/leak_rate/prk/warning", dumps(ALARM)),
        ("alarm/sensor_fault/t_prk/caution", dumps(fault)),
        ("alarm/rapid_depress/prk/emergency", dumps(emergency | {"lifecycle": "latched_unack", "latched": True})),
    )
    order = [(a.alarm, a.severity, a.state_label) for a in s.sorted_alarms()]
    assert order == [
        ("rapid_depress", "emergency", "LATCHED"),
        ("leak_rate", "warning", "UNACK"),
        ("sensor_fault", "caution", "UNACK"),  # the unacknowledged first within a severity
        ("leak_rate", "caution", "acked"),
    ]
    assert s.unacknowledged() == 3
    assert [alarm_values(a) for a in s.sorted_alarms()] == [
        "12.3 / 9.19 Pa/s",
        "0.97 / 0.9 kg/d",
        "no reading for 5.2 s",
        "0.97 / 0.5 kg/d",
    ]
    a = s.alarms[("leak_rate", "prk", "warning")]
    assert (a.value, a.threshold, a.since, a.active, a.acknowledged) == (0.97, 0.9, T0 + 412.0, True, False)

    # acknowledged, then cleared: the daemon's empty retained message removes it
    s.apply(f"{P}/alarm/leak_rate/prk/warning", dumps(ALARM | {"acknowledged": True, "lifecycle": "acked"}), T0)
    assert s.alarms[("leak_rate", "prk", "warning")].state_label == "acked"
    s.apply(f"{P}/alarm/leak_rate/prk/warning", b"", T0)
    assert ("leak_rate", "prk", "warning") not in s.alarms and len(s.alarms) == 3
    assert s.malformed == 0


def test_alarm_state_labels():
    def label(**kw: object) -> str:
        base = dict(alarm="a", source="s", severity="warning", active=True, acknowledged=False, lifecycle="")
        base |= dict(value=None, threshold=None, since=None, reason="", latched=False, shelved_until=None)
        base |= dict(suppressed=False)
        return AlarmView(**(base | kw)).state_label  # type: ignore[arg-type]

    assert label() == "UNACK"
    assert label(active=False, lifecycle="rtn_unack") == "RTN unack"
    assert label(acknowledged=True) == "acked"
    assert label(acknowledged=True, latched=True, lifecycle="latched_acked") == "latched"
    assert label(acknowledged=True, lifecycle="shelved", shelved_until=T0) == "shelved"
    assert label(acknowledged=True, lifecycle="suppressed", suppressed=True) == "suppressed"


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("sensor/p_prk", b"garbage{"),
        ("sensor/p_prk", b"[1, 2]"),
        ("sensor/p_prk", b'{"quantity": "pressure"}'),  # no value
        ("sensor/p_prk", b'{"quantity": "pressure", "value": "high"}'),
        ("sensor/p_prk", b'{"quantity": 7, "value": 1.0}'),
        ("sensor/p_prk", b"\xff\xfe"),
        ("volume/prk", b"null"),
        ("volume/prk", b'{"pressure_pa": true}'),
        ("alarm/leak_rate/prk/warning", b'{"acknowledged": "no"}'),
        ("alarm/leak_rate/prk/warning", b'"active"'),
        ("alarm/leak_rate/prk/warning", b"[" * 100_000),
        ("status", b"sleeping"),
        ("hatch/prk-hatch", b"ajar"),
        ("volume/prk/alarm", b"MAYBE"),
        ("cmd/result", b"ok"),
        ("metrics/self", b"42"),
    ],
)
def test_malformed_payloads_are_counted_and_ignored(topic, payload):
    s = station(("alarm/leak_rate/prk/warning", dumps(ALARM)), ("hatch/prk-hatch", "open"), ("status", "online"))
    assert s.apply(f"{P}/{topic}", payload, T0) is False
    assert s.malformed == 1 and s.last_problem.startswith(topic)
    assert s.alarms[("leak_rate", "prk", "warning")].acknowledged is False
    assert (s.status, s.hatches, s.sensors, s.volumes, s.volume_alarm) == ("online", {"prk-hatch": "open"}, {}, {}, {})


def test_other_topics_are_ignored_without_complaint():
    s = station(
        ("cmd/ack", '{"all": true}'),  # our own commands come back on P/#
        ("cmd/shelve", "whatever"),
        ("alarm/leak_rate/prk", "{}"),  # too few levels
        ("something/new", "x"),
    )
    assert s.apply("hullwatch/other/status", b"online", T0) is False  # another station's
    assert (s.malformed, s.ignored, s.status, s.alarms) == (0, 4, None, {})


def test_a_volume_re_formed_by_a_hatch_replaces_the_old_one():
    joined = ESTIMATE.to_dict()
    s = station(("volume/prk-zvezda", dumps(joined)), ("volume/airlock", dumps(joined | {"volume": "airlock"})))
    s.apply(f"{P}/volume/prk", dumps(joined | {"volume": "prk"}), T0 + 10)
    assert sorted(s.volumes) == ["airlock", "prk"]
    s.apply(f"{P}/volume/zvezda", dumps(joined | {"volume": "zvezda"}), T0 + 10)
    assert sorted(s.volumes) == ["airlock", "prk", "zvezda"]


def test_metrics_result_and_forgetting_the_retained_state():
    s = station(
        ("status", "online"),
        ("alarm/leak_rate/prk/warning", dumps(ALARM)),
        ("hatch/prk-hatch", "open"),
        ("metrics", dumps(METRICS)),
        ("metrics/extra", dumps({"time": T0, "mqtt": {"published": 7, "connected": True}, "spool": {"rows": 12}})),
        ("cmd/result", dumps({"command": "ack", "ok": True, "message": "acknowledged 1 alarm"})),
        ("sensor/p_prk", dumps(SAMPLE)),
    )
    assert s.extras == {"metrics": METRICS, "metrics/extra": {"time": T0, "mqtt": {"published": 7, "connected": True},
                                                              "spool": {"rows": 12}}}  # fmt: skip
    assert s.extras_at == T0
    assert health_rows(s.extras["metrics/extra"]) == [("mqtt.published", "7", False), ("mqtt.connected", "yes", False),
                                                      ("spool.rows", "12", False)]  # fmt: skip
    assert s.recent_result(T0 + 1) == {"command": "ack", "ok": True, "message": "acknowledged 1 alarm"}
    assert s.recent_result(T0 + 60) is None
    s.forget_retained()
    assert (s.status, s.alarms, s.hatches, s.extras) == (None, {}, {}, {})
    assert ("p_prk", "pressure") in s.sensors  # live data stays, and goes stale


def test_daemon_health_rows():
    assert health_rows(METRICS) == [
        ("spool", "41 queued, 100 KiB", False),
        ("influxdb", "DOWN, 5012 behind", True),
        ("mqtt", "up, 41 behind", False),
        ("rejected", "influxdb 2", False),
    ]
    worried = {"spool": {"depth": 9000, "oldest_unsent_s": 900.0, "dropped": 12, "size_bytes": 5 << 20}}
    assert health_rows(worried) == [
        ("spool", "9000 queued, 5.0 MiB", False),
        ("oldest", "15 min unsent", True),
        ("dropped", "12 records", True),
    ]
    odd = {"spool": {"depth": "lots"}, "sinks": {"mqtt": None, "x": {"backlog": True}}}
    assert health_rows(odd) == [("spool", "? queued", False), ("x", "DOWN, ? behind", True)]
    assert health_rows({"sinks": []}) == [("sinks", "", False)]


def test_stations_shows_the_first_seen_and_cycles():
    found = Stations()
    assert found.subscription == "hullwatch/+/#" and found.current is None
    assert found.apply("homeassistant/sensor/x/config", b"{}", T0) is None
    found.apply("hullwatch/b/status", b"online", T0)
    found.apply("hullwatch/a/status", b"offline", T0)
    assert found.current is not None and found.current.station == "b"
    assert found.next().station == "a" and found.next().station == "b"  # type: ignore[union-attr]

    fixed = Stations("site/lab/")
    assert fixed.subscription == "site/lab/#" and fixed.current is not None and fixed.current.prefix == "site/lab"
    assert fixed.apply("hullwatch/b/status", b"online", T0) is None
    fixed.apply("site/lab/status", b"online", T0)
    assert list(fixed.states) == ["site/lab"] and fixed.current.status == "online"


def test_text_helpers():
    spans = [span(x) for x in (None, 45.9, 599.4, 600, 720, 3599, 12_600, 86_399, 12 * 86400, 1e9)]
    assert spans == ["—", "45 s", "9:59 min", "10 min", "12 min", "59 min", "3.5 h", "23.9 h", "12 d", "> 999 d"]
    low = AlarmView("low_pressure", "prk", "warning", True, False, "", 94_500.0, 95_000.0, None, "", False, None, False)
    assert alarm_values(low) == "94.5 / 95 kPa"
    reserve = AlarmView("reserve_time", "prk", "warning", True, False, "", 1800.0, 3600.0, None, "", False, None, False)
    assert alarm_values(reserve) == "30 min / 60 min"


# -- settings and exit codes -----------------------------------------------------------------


def args(**kw: object) -> argparse.Namespace:
    base = dict(config=None, host=None, port=None, prefix=None, username=None, password_file=None)
    return argparse.Namespace(**(base | kw))


def test_settings_default_without_a_config(monkeypatch, tmp_path):
    monkeypatch.delenv("HULLWATCH_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    s = settings_from_args(args())
    assert s == Settings(host="127.0.0.1", port=1883, prefix=None)
    assert Stations(s.prefix).subscription == "hullwatch/+/#"  # type: ignore[union-attr]


def test_settings_from_the_config_with_flags_overriding(write_file, two_segment_toml, tmp_path, capsys):
    (tmp_path / "pw").write_text("secret\n")
    mqtt = f'[mqtt]\nhost = "broker.lan"\nport = 8883\nusername = "op"\npassword_file = "{tmp_path}/pw"\n'
    path = write_file(two_segment_toml + "\n" + mqtt)
    s = settings_from_args(args(config=path))
    assert isinstance(s, Settings)
    assert (s.host, s.port, s.username, s.password) == ("broker.lan", 8883, "op", "secret")
    assert s.prefix == "hullwatch/prk-mockup"
    assert s.sensor_quiet_s == 10.0 and s.volume_stale_s == 30.0
    s = settings_from_args(args(config=path, host="10.0.0.2", port=1884, prefix="lab/x/", username="viewer"))
    assert (s.host, s.port, s.username, s.prefix) == ("10.0.0.2", 1884, "viewer", "lab/x")  # type: ignore[union-attr]

    assert settings_from_args(args(config=str(tmp_path / "missing.toml"))) == exits.EX_CONFIG
    assert "configuration file not found" in capsys.readouterr().err
    assert settings_from_args(args(config=write_file("[station]\nname = 'BAD NAME'\n", "bad.toml"))) == exits.EX_CONFIG
    assert "bad.toml" in capsys.readouterr().err
    assert settings_from_args(args(config=path, password_file=str(tmp_path / "nope"))) == exits.EX_CONFIG
    assert "cannot read the MQTT password" in capsys.readouterr().err
    assert settings_from_args(args(config=path, prefix="hullwatch/+")) == exits.EX_USAGE


def test_without_textual_watch_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hullwatch.watch.app", None)  # what a missing textual looks like to run()
    assert cli.main(["watch", "--port", "1"]) == exits.EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert "hullwatch[tools]" in err and len(err.strip().splitlines()) == 1


# -- the view, headless, against a real broker -----------------------------------------------

needs_broker = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto (apt install mosquitto)")


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def screen_text(app) -> str:
    """The screen as plain text, one line per row."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())


async def until(pilot, predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the app run until predicate() is true."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out; the screen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def run_view(port: int, body: Callable) -> None:
    """Run `body(app, pilot)` in the view on an 80×24 headless terminal."""
    from hullwatch.watch.app import WatchApp

    async def main() -> None:
        app = WatchApp(Settings(host="127.0.0.1", port=port, prefix=P))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.connected)
            await body(app, pilot)
        assert not app.feed.connected

    asyncio.run(main())


@needs_broker
def test_the_view_shows_a_station_and_acknowledges(broker):
    pytest.importorskip("textual")
    publish(broker.port, f"{P}/status", "online", retain=True)
    publish(broker.port, f"{P}/alarm/leak_rate/prk/warning", json.dumps(ALARM), retain=True)
    publish(broker.port, f"{P}/hatch/prk-hatch", "open", retain=True)
    publish(broker.port, f"{P}/metrics", json.dumps(METRICS), retain=True)
    acks = Listener(broker.port, f"{P}/cmd/ack")

    async def body(app, pilot) -> None:
        await until(pilot, lambda: "leak_rate" in screen_text(app))
        # live messages, as the daemon's sink publishes them
        publish(broker.port, f"{P}/volume/prk-zvezda", json.dumps(ESTIMATE.to_dict()))
        publish(broker.port, f"{P}/sensor/p_prk", json.dumps(SAMPLE))
        publish(broker.port, f"{P}/sensor/p_prk", b"not json")
        await until(pilot, lambda: "p_prk" in screen_text(app) and "prk-zvezda" in screen_text(app))
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and max(len(line) for line in lines) <= 80
        assert "lab" in lines[0] and "connected" in lines[0] and "daemon online" in lines[0]
        alarm_row = next(line for line in lines if "leak_rate" in line)
        for word in ("WARNING", "UNACK", "prk", "0.97 / 0.9 kg/d"):
            assert word in alarm_row
        volume_row = next(line for line in lines if "prk-zvezda" in line)
        for word in ("101.318", "94.53", "0.452 ± 0.031", "138 d", "60 min"):
            assert word in volume_row
        assert "prk-hatch" in text and "open" in text and "101.324 kPa" in text
        assert "spool     41 queued, 100 KiB" in text and "influxdb  DOWN, 5012 behind" in text
        assert "1 malformed message ignored" in lines[-2]
        assert "a Ack selected" in lines[-1] and "q Quit" in lines[-1]

        await pilot.press("a")
        await until(pilot, lambda: acks.on(f"{P}/cmd/ack"))
        await pilot.press("A")
        await until(pilot, lambda: len(acks.on(f"{P}/cmd/ack")) == 2)
        publish(broker.port, f"{P}/cmd/result", json.dumps({"command": "ack", "ok": True, "message": "done"}))
        await until(pilot, lambda: "ack: ok — done" in screen_text(app))

        publish(broker.port, f"{P}/alarm/leak_rate/prk/warning", b"", retain=True)
        await until(pilot, lambda: "Alarms: none" in screen_text(app))

    try:
        run_view(broker.port, body)
        sent = acks.on(f"{P}/cmd/ack")
        assert [json.loads(m[2]) for m in sent] == [
            {"alarm": "leak_rate", "source": "prk", "severity": "warning"},
            {"all": True},
        ]
        assert not any(m[3] for m in sent)
        assert retained(broker.port, f"{P}/cmd/#") == {}  # published without the retain flag: the broker kept none
    finally:
        acks.close()


@needs_broker
def test_end_to_end_with_the_daemons_sink_and_alarm_desk(broker):
    pytest.importorskip("textual")
    desk = AlarmDesk(AlarmBook(), clock=time.time)
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port, topic_prefix=P), "lab", desk.command)

    def publish_alarm(change) -> None:  # what the service does with each lifecycle change
        alarm, source, severity = change.key
        sink.alarm(change.record.to_dict(), alarm, source, severity.label, gone=change.gone)

    desk.outputs.append(publish_alarm)
    sink.start()
    try:
        desk.transitions([AlarmTransition(T0, "leak_rate", "prk", Severity.WARNING, AlarmState.ACTIVE, 0.97, 0.9)])
        sink.hatch("prk-hatch", True)

        async def body(app, pilot) -> None:
            await until(pilot, lambda: "UNACK" in screen_text(app) and "daemon online" in screen_text(app))
            sink.estimate(ESTIMATE)
            sink.sample(Sample(T0, "t_prk", Quantity.TEMPERATURE, 295.001, Quality.SUSPECT))
            await until(pilot, lambda: "295.00 K" in screen_text(app) and "prk-zvezda" in screen_text(app))
            assert "suspect" in screen_text(app)
            await pilot.press("a")
            await until(pilot, lambda: "acked" in screen_text(app) and "ack: ok" in screen_text(app))
            assert "UNACK" not in screen_text(app)

        run_view(broker.port, body)
        assert desk.book.records()[0].acknowledged
    finally:
        sink.stop()

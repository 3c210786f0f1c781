"""`hullwatch bridge`: stations' MQTT telemetry into InfluxDB through shared subscriptions."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from hullwatch.bridge import Bridge, Unstorable, _json_object, metric_records, station_topic, to_lines, to_record
from hullwatch.config import ConfigError, InfluxConfig, load_bridge
from hullwatch.sinks.influx import InfluxSink, to_line
from hullwatch.sinks.spool import Record, Spool, time_ns
from hullwatch.topics import Kind
from influxd_fixture import HAVE_INFLUXD, Influxd
from mosquitto_fixture import HAVE_MOSQUITTO, Broker

T0 = 1_780_000_000.0


def test_messages_become_records():
    payload = json.dumps({"time": T0, "quantity": "pressure", "value": 101325.0, "quality": "good", "replay": True})
    assert to_record("hullwatch/prk/sensor/p1", payload.encode(), "hullwatch", 5.0) == (
        "sample",
        T0,
        {"station": "prk", "sensor": "p1", "quantity": "pressure", "value": 101325.0, "quality": "good"},
    )
    # a hatch is stored from its event, with the event's time; the retained state (no time) stores nothing
    event = json.dumps({"time": T0, "open": False, "replay": True}).encode()
    assert to_record("hullwatch/prk/hatch/h1/event", event, "hullwatch", 5.0) == (
        "hatch",
        T0,
        {"station": "prk", "hatch": "h1", "open": False},
    )
    assert to_record("hullwatch/prk/hatch/h1", b"closed", "hullwatch", 5.0) is None
    with pytest.raises(Unstorable):
        to_record("hullwatch/prk/hatch/h1/open", event, "hullwatch", 5.0)
    alarm = {"time": T0, "state": "active", "value": 1.2, "threshold": 0.9, "acknowledged": False}
    kind, t, body = to_record("hullwatch/prk/alarm/leak_rate/prk-zvezda/warning", json.dumps(alarm).encode(),
                              "hullwatch", 5.0)  # fmt: skip
    assert (kind, t) == ("alarm", T0)
    assert body == {"station": "prk", "alarm": "leak_rate", "source": "prk-zvezda", "severity": "warning",
                    "state": "active", "value": 1.2, "threshold": 0.9}  # fmt: skip
    assert to_record("hullwatch/prk/alarm/leak_rate/prk/warning", b"", "hullwatch", 5.0) is None
    # the final record of an alarm that left the book (before the empty message): its clearing is stored
    final = alarm | {"time": T0 + 60, "state": "cleared", "acknowledged": True, "lifecycle": "normal"}
    assert to_record("hullwatch/prk/alarm/leak_rate/prk-zvezda/warning", json.dumps(final).encode(),
                     "hullwatch", 5.0) == ("alarm", T0 + 60, body | {"state": "cleared"})  # fmt: skip
    assert to_record("hullwatch/prk/cmd/ack", b"{}", "hullwatch", 5.0) is None
    assert to_record("elsewhere/prk/sensor/p1", payload.encode(), "hullwatch", 5.0) is None
    with pytest.raises(ValueError):
        to_record("hullwatch/prk/sensor/p1", b"not json", "hullwatch", 5.0)
    step = {"type": "step", "time": T0, "volume": "prk", "size_pa": -30.2, "sensor": "p1"}
    assert to_record("hullwatch/prk/step/prk", json.dumps(step).encode(), "hullwatch", 5.0) == (
        "step",
        T0,
        {"station": "prk", "volume": "prk", "size_pa": -30.2, "sensor": "p1"},
    )
    metrics = {"time": T0, "spool": {"depth": 3}, "sinks": {"mqtt": {"sent": 5}}, "sensors": {"p1": {"errors": 0}},
               "detection": {"prk": {"kg_per_day_600s": 0.1, "kg_per_day_3600s": 0.008}}}  # fmt: skip
    records = metric_records("prk", metrics, 5.0)
    assert [b["measurement"] for _, b in records] == ["spool", "sink", "sensor_health", "detection"]
    assert records[-1][1]["tags"] == {"volume": "prk"}


def records_of(topic: str, payload: bytes, received: float = 5.0) -> list[tuple[str, float, dict]] | None:
    """A message as the records the bridge once spooled (their bodies through the spool's JSON and back)."""
    station, parsed = station_topic(topic, "hullwatch")
    if parsed is not None and parsed.kind is Kind.METRICS:
        records = [("metric", t, body) for t, body in metric_records(station, json.loads(payload), received)]
    else:
        record = to_record(topic, payload, "hullwatch", received)
        if record is None:
            return None
        records = [record]
    return [(kind, t, json.loads(json.dumps(body, separators=(",", ":")))) for kind, t, body in records]


def lines_of_records(topic: str, payload: bytes, received: float = 5.0) -> list[tuple[float, bytes]] | None:
    """The lines the InfluxDB sink made of those records (the bridge's sink has no station of its own)."""
    records = records_of(topic, payload, received)
    if records is None:
        return None
    lines = [(t, to_line(Record(0, kind, time_ns(t), body), "")) for kind, t, body in records]
    return [(t, line.encode()) for t, line in lines if line]


ESTIMATE = {"time": T0, "volume": "prk", "leak_kg_per_day": 0.45, "leak_kg_per_day_sigma": 0.01,
            "pressure_pa": 101000.0, "mass_kg": 95.5, "reserve_time_s": None, "window_s": 3600.0,
            "detectable_kg_per_day": 0.2, "replay": True}  # fmt: skip
ALARM = {"time": T0, "state": "active", "value": 1.2, "threshold": 0.9, "acknowledged": False,
         "reason": 'rate "high", 2\\3'}  # fmt: skip
METRICS = {"time": T0, "spool": {"depth": 3, "oldest_unsent_s": 0.5, "problem": None},
           "sinks": {"mqtt": {"sent": 5, "connected": True, "last_error": "a \"b\""}},
           "sensors": {"p 1": {"errors": 0, "rate_hz": 1.0}},
           "detection": {"prk": {"kg_per_day_600s": 0.1}}}  # fmt: skip


def sensor_message(**changes) -> bytes:
    body = {"time": T0, "quantity": "pressure", "value": 101325.0, "quality": "good"} | changes
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


# (topic under hullwatch/alpha/, payload, kind of problem): messages a station must not send, each stored nowhere
UNSTORABLE = [
    ("sensor/p1", sensor_message(time=1e12), "bad_time"),  # milliseconds: year 33658, over SQLite's INTEGER
    ("sensor/p1", sensor_message(time=1e300), "bad_time"),
    ("sensor/p1", sensor_message(time=float("nan")), "bad_time"),  # Python's JSON writes NaN
    ("sensor/p1", sensor_message(time="2026-01-01T00:00:00Z"), "bad_time"),
    ("sensor/p1", sensor_message(time=True), "bad_time"),
    ("sensor/p1", sensor_message(value="101325"), "bad_field"),
    ("sensor/p1", sensor_message(value=10**400), "bad_field"),
    ("sensor/p1", sensor_message(quantity=...), "bad_field"),
    ("sensor/p1", sensor_message(quality=7), "bad_field"),
    ("sensor/p1", b"\xff\xfe garbage", "not_utf8"),
    ("sensor/p1", b"garbage", "not_json"),
    ("sensor/p1", b"[1, 2]", "not_object"),
    ("hatch/h1/event", json.dumps({"time": T0, "open": "ajar"}).encode(), "bad_field"),
    ("hatch/h1/event", json.dumps({"open": True}).encode(), "bad_time"),
    ("hatch/h1/event", b"open", "not_json"),
    ("volume/prk", json.dumps({"time": T0, "leak_kg_per_day": "lots"}).encode(), "bad_field"),
    ("alarm/leak_rate/prk", json.dumps({"time": T0, "state": "active"}).encode(), "bad_topic"),
    ("alarm/leak_rate/prk/warning", json.dumps({"time": T0, "state": ["active"]}).encode(), "bad_field"),
    ("metrics", json.dumps({"time": 1e12, "spool": {"depth": 1}}).encode(), "bad_time"),
    ("metrics", json.dumps({"time": T0, "sinks": ["mqtt"]}).encode(), "bad_field"),
]


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


# (topic under hullwatch/, payload): every kind of message the bridge stores, and some that store nothing
MESSAGES = [
    ("alpha/sensor/p1", sensor_message()),
    ("alpha/sensor/p1", sensor_message(value=101325, replay=True)),  # an integer value
    ("alpha/sensor/p1", sensor_message(value=-1e-300, quantity="temperature")),
    ("alpha/sensor/p1", sensor_message(value=1e300, time=T0 + 0.1234567)),
    ("alpha/sensor/p1", sensor_message(value=float("nan"), quality="bad")),
    ("alpha/sensor/p1", sensor_message(value=None, quality='stale "since" \\ boot')),
    ("alpha/sensor/p1", sensor_message(time=...)),  # the time received
    ("alpha/sensor/p1", sensor_message(time=-1.5, extra={"x": 1})),
    ("prk lab,1=2\\/sensor/p=1 ,x\\", sensor_message()),  # names line protocol escapes
    ("alpha/hatch/h1/event", dumps({"time": T0, "open": True, "replay": True})),
    ("alpha/hatch/h1", b"open"),  # the retained state: nothing
    ("alpha/volume/prk", dumps(ESTIMATE)),
    ("alpha/volume/prk", dumps({"time": T0, "leak_kg_per_day": float("inf"), "mass_kg": 7})),
    ("alpha/volume/prk", dumps({"time": T0, "leak_kg_per_day": None})),  # no number: no point
    ("alpha/step/prk", dumps({"type": "step", "time": T0, "volume": "prk", "size_pa": -30.2, "sensor": "p1"})),
    ("alpha/step/prk", dumps({"type": "step", "time": T0, "size_pa": None})),  # no number: no point
    ("alpha/clock_step", dumps({"time": T0, "step_s": -3.25})),
    ("alpha/alarm/leak_rate/prk-zvezda/warning", dumps(ALARM)),
    ("alpha/alarm/leak_rate/prk-zvezda/warning", dumps(ALARM | {"state": "cleared", "reason": None, "value": None})),
    ("alpha/alarm/leak_rate/prk-zvezda/warning", b""),  # a removed alarm: nothing
    ("alpha/metrics", dumps(METRICS)),
    ("alpha/metrics", dumps({"time": T0})),  # nothing in it
    ("alpha/cmd/ack", b"{}"),  # not telemetry
]


@pytest.mark.parametrize(("topic", "payload"), MESSAGES)
def test_the_lines_made_once_are_the_lines_the_sink_made_of_the_records(topic, payload):
    """Each message's lines: made in the bridge, the same text as the InfluxDB sink once made of its spooled records."""
    assert to_lines(f"hullwatch/{topic}", payload, "hullwatch", 5.0) == lines_of_records(f"hullwatch/{topic}", payload)


names = st.text(st.characters(blacklist_characters="/+#", blacklist_categories=("Cs",)), min_size=1, max_size=10)


@given(
    station=names,
    sensor=names,
    quantity=names,
    quality=names,
    value=st.one_of(st.none(), st.floats(), st.integers(-(2**70), 2**70)),
    t=st.floats(-1e9, 7e9),
)
def test_a_samples_line_is_the_line_of_its_record(station, sensor, quantity, quality, value, t):
    topic = f"hullwatch/{station}/sensor/{sensor}"
    payload = dumps({"time": t, "quantity": quantity, "value": value, "quality": quality})
    try:
        expected = lines_of_records(topic, payload)
    except Unstorable as exc:
        with pytest.raises(Unstorable) as err:
            to_lines(topic, payload, "hullwatch", 5.0)
        assert err.value.kind == exc.kind
        return
    assert to_lines(topic, payload, "hullwatch", 5.0) == expected


@pytest.mark.parametrize(("topic", "payload", "kind"), UNSTORABLE)
def test_unstorable_messages_name_their_problem(topic, payload, kind):
    with pytest.raises(Unstorable) as err:
        if topic == "metrics":
            metric_records("alpha", json.loads(payload), 5.0)
        else:
            to_record(f"hullwatch/alpha/{topic}", payload, "hullwatch", 5.0)
    assert err.value.kind == kind, err.value
    assert str(err.value)
    with pytest.raises(Unstorable) as err:
        to_lines(f"hullwatch/alpha/{topic}", payload, "hullwatch", 5.0)
    assert err.value.kind == kind, err.value


@pytest.mark.skipif(not HAVE_INFLUXD, reason="needs influxd (Debian package influxdb)")
def test_line_records_through_the_spool_store_the_points_the_records_stored(tmp_path):
    """Every message's lines, spooled, read back from the file and sent: InfluxDB holds the same points as from
    the records the bridge once spooled."""
    influx = Influxd(tmp_path / "influx")
    try:
        spooled: list[Record] = []
        for k, (topic, payload) in enumerate(MESSAGES):
            records = records_of(f"hullwatch/{topic}", payload, 5.0 + k) or []
            spooled += [Record(len(spooled) + 1, kind, time_ns(t), body) for kind, t, body in records]
        influx.query('CREATE DATABASE "old"', post=True)
        old = InfluxSink(InfluxConfig(url=influx.url, api="v1", database="old"), "")
        assert old.send(spooled, replay=False).rejected == {}

        path = str(tmp_path / "spool.sqlite")
        spool = Spool(path)
        try:
            for k, (topic, payload) in enumerate(MESSAGES):
                for t, line in to_lines(f"hullwatch/{topic}", payload, "hullwatch", 5.0 + k) or []:
                    spool.append("line", t, line)
        finally:
            spool.close()
        spool = Spool(path)
        try:
            lines = spool.read(0, 1000)  # from the file
        finally:
            spool.close()
        assert {r.kind for r in lines} == {"line"} and all(isinstance(r.body, bytes) for r in lines)
        influx.query('CREATE DATABASE "new"', post=True)
        new = InfluxSink(InfluxConfig(url=influx.url, api="v1", database="new"), "")
        assert new.send(lines, replay=False).rejected == {}

        def points(database: str) -> list:
            influx.database = database
            return sorted(map(repr, influx.rows("SELECT * FROM /.*/ GROUP BY *")))

        assert len(points("old")) > 10  # fewer than lines: a point with the series and time of one before replaces it
        assert points("new") == points("old")
    finally:
        influx.stop()


@pytest.mark.parametrize(
    "payload",
    [b'{"a":1}', b' {"a": 1}\n', b'{"a":1} x', b'{"a":1}{"b":2}', b'{"a":NaN,"b":[1e400]}', b"", b"{", b'"x"'],
)
def test_a_payload_is_json_exactly_when_json_loads_says_so(payload):
    try:
        expected = json.loads(payload)
    except ValueError:
        with pytest.raises(Unstorable) as err:
            _json_object(payload)
        assert err.value.kind == "not_json"
        return
    if isinstance(expected, dict):
        assert repr(_json_object(payload)) == repr(expected)
    else:
        with pytest.raises(Unstorable, match="must be a JSON object"):
            _json_object(payload)


def test_half_a_surrogate_pair_is_unstorable_not_a_line_that_cannot_be_sent():
    payload = b'{"time": 1780000000.0, "quantity": "pressure", "value": 1.0, "quality": "\\ud800"}'
    with pytest.raises(Unstorable) as err:
        to_lines("hullwatch/alpha/sensor/p1", payload, "hullwatch", 5.0)
    assert err.value.kind == "bad_field"


def test_storable_edge_cases():
    """No time: the time received; a NaN or null value is a bad reading, kept (InfluxDB gets its quality)."""
    assert to_record("hullwatch/a/sensor/p1", sensor_message(time=...), "hullwatch", 5.0)[1] == 5.0
    for value in (float("nan"), None):
        kind, _, body = to_record("hullwatch/a/sensor/p1", sensor_message(value=value, quality="bad"), "hullwatch", 5.0)
        assert kind == "sample" and body["quality"] == "bad"
    assert to_record("hullwatch/a/sensor/p1", sensor_message(time=-1.0), "hullwatch", 5.0)[1] == -1.0


def test_a_failed_commit_rolls_back_keeps_the_batch_and_acknowledges_nothing(tmp_path):
    """Whatever fails inside the spool's transaction, it is rolled back and nothing is confirmed as stored."""
    spool = Spool(str(tmp_path / "s.sqlite"))
    told = []
    spool.on_commit = told.append
    try:
        spool.append("sample", T0, {"v": 1})
        spool.commit()
        assert told == [1]
        spool.append("sample", T0 + 1, {"v": 2})
        spool.append("sample", T0 + 2, {"v": 3})
        spool.counters["broken"] = 2**70  # fails inside the transaction: over SQLite's INTEGER
        with pytest.raises(OverflowError):
            spool.commit()
        assert not spool._db.in_transaction
        assert told == [1]  # messages behind records 2 and 3 are not acknowledged
        assert [r.body["v"] for r in spool.read(1, 10)] == [2, 3]  # still held, for the next try
    finally:
        spool._pending.clear()
        spool.counters.pop("broken", None)
        spool.close()


def test_bridge_config_errors_name_the_key(write_file):
    path = write_file('[bridge]\nstations = "prk"\n[mqtt]\nport = 0\n[extra]\n', "bridge.toml")
    with pytest.raises(ConfigError) as err:
        load_bridge(path)
    text = "\n".join(err.value.problems)
    assert f"{path}: extra: unknown section" in text
    assert f"{path}: bridge.stations:" in text
    assert f"{path}: mqtt.port:" in text
    assert f"{path}: influxdb: missing" in text


@pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_INFLUXD), reason="needs mosquitto and influxd (Debian packages)")
def test_two_bridges_share_the_load_and_write_each_sample_once(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    influx = Influxd(tmp_path / "influx")
    bridges = []
    for i in range(2):
        path = tmp_path / f"bridge{i}.toml"
        path.write_text(
            f'[bridge]\nstations = ["+"]\nclient_id = "bridge-{i}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
            f'[spool]\npath = "{tmp_path / f"spool{i}.sqlite"}"\ncommit_interval_s = 0.2\n'
        )
        bridge = Bridge(load_bridge(str(path)))
        bridge.start()
        bridges.append(bridge)
    try:
        deadline = time.monotonic() + 10
        while not all(b.client.is_connected() for b in bridges) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the subscriptions are in
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        infos = []
        for station in ("alpha", "beta"):
            for k in range(200):
                body = {"time": T0 + k * 0.1, "quantity": "pressure", "value": 100000.0 + k, "quality": "good"}
                infos.append(pub.publish(f"hullwatch/{station}/sensor/p1", json.dumps(body), qos=1))
            infos.append(pub.publish(f"hullwatch/{station}/hatch/h1", "open", qos=1, retain=True))  # not stored
            event = json.dumps({"time": T0, "open": True})
            infos.append(pub.publish(f"hullwatch/{station}/hatch/h1/event", event, qos=1))
        pub.publish("hullwatch/alpha/sensor/p1", "garbage", qos=1)
        for info in infos:
            info.wait_for_publish(5)
        deadline = time.monotonic() + 20
        rows = []
        while time.monotonic() < deadline:
            rows = influx.rows('SELECT count(value) FROM sensor GROUP BY "station"')
            if sum(r["count"] for _, r in rows) >= 400:
                break
            time.sleep(0.2)
        assert {tags["station"]: r["count"] for tags, r in rows} == {"alpha": 200, "beta": 200}
        assert all(b.received > 0 for b in bridges), [b.received for b in bridges]
        assert sum(b.received for b in bridges) >= 402
        assert len(influx.rows("SELECT open FROM hatch")) == 2
        pub.loop_stop()
        pub.disconnect()
    finally:
        for b in bridges:
            b.stop()
        influx.stop()
        broker.stop()


@pytest.fixture
def broker_and_influx(tmp_path):
    """A private mosquitto and influxd, stopped whatever the test does."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        influx = Influxd(tmp_path / "influx")
        try:
            yield broker, influx
        finally:
            influx.stop()
    finally:
        broker.stop()


@pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_INFLUXD), reason="needs mosquitto and influxd (Debian packages)")
def test_unstorable_messages_are_set_aside_and_nothing_acknowledged_is_lost(tmp_path, caplog, broker_and_influx):
    """Bad messages among 400 good ones in one commit interval: each bad one set aside and counted, every good
    one in InfluxDB once, all acknowledged (a new bridge on the same session gets nothing again)."""
    caplog.set_level(logging.WARNING, logger="hullwatch.bridge")
    broker, influx = broker_and_influx
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'[bridge]\nstations = ["+"]\nclient_id = "bridge-a"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite"}"\ncommit_interval_s = 1.0\n'
    )
    cfg = load_bridge(str(path))
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    bridge: Bridge | None = Bridge(cfg)
    bridge.start()
    try:
        wait_subscribed(bridge, pub)
        ready = bridge.received
        infos = []
        for k in range(400):
            if k == 200:
                infos += [pub.publish(f"hullwatch/alpha/{t}", p, qos=1) for t, p, _ in UNSTORABLE]
            infos.append(pub.publish("hullwatch/alpha/sensor/p1", sensor_message(time=T0 + k, value=1000.0 + k), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        assert wait_until(lambda: influx_count(influx) >= 400)
        assert wait_until(lambda: not bridge._unacked)  # every message acknowledged, good and bad
        assert influx_count(influx) == 400
        assert bridge.received - ready == 400
        assert bridge.unstorable == Counter(kind for _, _, kind in UNSTORABLE)
        warnings = [r.getMessage() for r in caplog.records if "set aside a message" in r.getMessage()]
        assert len(warnings) == len(set(bridge.unstorable))  # one per kind, not one per message
        assert all("(bad_time)" in w for w in warnings if "1000000000000" in w)
        assert bridge.spool.counters["rejected.bridge"] == len(UNSTORABLE)
        bridge.stop()
        bridge = None
        with contextlib.closing(sqlite3.connect(tmp_path / "spool.sqlite")) as db:
            kept = db.execute("SELECT body, reason FROM rejected WHERE sink = 'bridge'").fetchall()
        topics = sorted(json.loads(body)["topic"] for body, _ in kept)
        assert topics == sorted(f"hullwatch/alpha/{t}" for t, _, _ in UNSTORABLE)
        assert all(reason for _, reason in kept)

        bridge = Bridge(cfg)  # the same client id and persistent session: nothing unacknowledged comes back
        bridge.start()
        pub.publish("hullwatch/alpha/sensor/p1", sensor_message(time=T0 + 1000), qos=1).wait_for_publish(10)
        assert wait_until(lambda: influx_count(influx) >= 401)
        assert bridge.received == 1 and not bridge.unstorable
    finally:
        if bridge is not None:
            bridge.stop()
        pub.loop_stop()
        pub.disconnect()


def wait_subscribed(bridge: Bridge, pub: mqtt.Client) -> None:
    """Publish a hatch event until the bridge has one: its subscriptions are in."""
    end = time.monotonic() + 30
    while bridge.received == 0 and time.monotonic() < end:
        pub.publish("hullwatch/alpha/hatch/ready/event", json.dumps({"time": T0, "open": True}), qos=1)
        wait_until(lambda: bridge.received > 0, 0.5)
    assert bridge.received > 0, "the bridge never subscribed"


def influx_count(influx: Influxd) -> int:
    rows = influx.rows("SELECT count(value) FROM sensor")
    return rows[0][1]["count"] if rows else 0


def wait_until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_INFLUXD), reason="needs mosquitto and influxd (Debian packages)")
def test_a_bridge_takes_far_more_than_mosquittos_default_window_before_acknowledging(tmp_path, broker_and_influx):
    """With no acknowledgement at all, 2000 messages still arrive: the bridge's Receive Maximum, not mosquitto's
    default of 20 in flight, bounds what the broker sends ahead of the spool's commits."""
    broker, influx = broker_and_influx
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'[bridge]\nstations = ["+"]\nclient_id = "bridge-w"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite"}"\n'
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    bridge = Bridge(load_bridge(str(path)))
    bridge.start()
    try:
        wait_subscribed(bridge, pub)
        assert wait_until(lambda: not bridge._unacked)
        bridge.spool.on_commit = None  # nothing is acknowledged from here on
        ready = bridge.received
        infos = [pub.publish("hullwatch/alpha/sensor/p1", sensor_message(time=T0 + k), qos=1) for k in range(2000)]
        for info in infos:
            info.wait_for_publish(30)
        assert wait_until(lambda: bridge.received - ready >= 2000), bridge.received - ready
        assert len(bridge._unacked) >= 2000
    finally:
        bridge.stop()
        pub.loop_stop()
        pub.disconnect()

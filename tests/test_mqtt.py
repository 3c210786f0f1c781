"""The MQTT sink against real mosquitto brokers (ICD §5)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hullwatch.config import MqttConfig, TlsConfig, parse
from hullwatch.core.model import Estimate, Quality, Quantity, Sample
from hullwatch.sinks.mqtt import MqttSetupError, MqttSink, StationDescription, apply_credentials
from hullwatch.sinks.mqtt.commands import validate
from hullwatch.sinks.mqtt.connection import Throttle
from hullwatch.sinks.spool import Record, Spool, time_ns
from mosquitto_fixture import (
    HAVE_MOSQUITTO,
    HAVE_OPENSSL,
    Broker,
    HoldingProxy,
    Listener,
    free_port,
    make_certs,
    publish,
    retained,
)

pytestmark = pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_OPENSSL), reason="needs mosquitto and openssl")

P = "hullwatch/lab"


class Commands:
    """A stand-in for the service's on_command: records calls, answers ok."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, str]] = []
        self.sink: MqttSink | None = None

    def __call__(self, name: str, payload: dict, origin: str) -> dict:
        self.calls.append((name, payload, origin))
        if payload.get("explode"):
            raise RuntimeError("boom")
        if payload.get("not_a_dict"):
            return "nope"  # type: ignore[return-value]
        if name == "ack" and self.sink is not None:  # like the service: re-publish the record, from paho's thread
            record = {
                "type": "alarm",
                "alarm": "leak_rate",
                "source": "lab",
                "severity": "warning",
                "acknowledged": True,
            }
            self.sink.alarm(record, "leak_rate", "lab", "warning", gone=False)
        return {"ok": True, "message": f"{name} done"}


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def make_sink():
    """make_sink(port, **MqttConfig fields / MqttSink keywords) -> (sink, commands); stopped at teardown."""
    made: list[MqttSink] = []

    def make(port: int, *, start: bool = True, description=None, homeassistant=False, max_queued=10_000, **cfg):
        cfg.setdefault("topic_prefix", P)
        commands = Commands()
        sink = MqttSink(
            MqttConfig(host="127.0.0.1", port=port, **cfg),
            "lab",
            commands,
            description,
            homeassistant=homeassistant,
            max_queued=max_queued,
        )
        commands.sink = sink
        made.append(sink)
        if start:
            sink.start()
        return sink, commands

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def listener():
    made: list[Listener] = []

    def make(port: int, topic: str = "#", **kw) -> Listener:
        made.append(Listener(port, topic, **kw))
        return made[-1]

    yield make
    for x in made:
        x.close()


def wait_until(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# -- status and Last Will --------------------------------------------------------------------


def test_status_online_retained_then_offline_on_stop(broker, make_sink, listener):
    sink, _ = make_sink(broker.port)
    assert wait_until(lambda: sink.connected)
    assert wait_until(lambda: retained(broker.port, f"{P}/status") == {f"{P}/status": b"online"})
    live = listener(broker.port, f"{P}/status")
    sink.stop()
    assert live.wait_topic(f"{P}/status", payload=b"offline", timeout=3)
    assert retained(broker.port, f"{P}/status") == {f"{P}/status": b"offline"}
    sink.stop()  # idempotent


def test_last_will_offline_when_the_process_is_killed(broker, listener, tmp_path):
    script = tmp_path / "sink.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from hullwatch.config import MqttConfig
        from hullwatch.sinks.mqtt import MqttSink
        s = MqttSink(MqttConfig(port={broker.port}, topic_prefix="{P}"), "lab", lambda *a: {{"ok": True}})
        s.start()
        while not s.connected:
            time.sleep(0.01)
        print("up", flush=True)
        time.sleep(60)
        """)
    )
    live = listener(broker.port, f"{P}/status")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert live.wait_topic(f"{P}/status", payload=b"online")
        n = live.count()
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        m = live.wait_topic(f"{P}/status", payload=b"offline", timeout=3, since=n)
        assert m is not None, "no Last Will within 3 s of SIGKILL"
        assert m[0] - t_kill < 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert retained(broker.port, f"{P}/status") == {f"{P}/status": b"offline"}


# -- topics and payloads ---------------------------------------------------------------------


def test_topics_and_payloads(broker, make_sink, listener):
    live = listener(broker.port, f"{P}/#")
    sink, _ = make_sink(broker.port, qos=1)
    assert live.wait_topic(f"{P}/status", payload=b"online")
    assert sink.synced.wait(5), "the snapshot after connecting is out: what follows is published once"

    sink.sample(Sample(1780000000.0, "p_prk", Quantity.PRESSURE, 101324.49))
    sink.sample(Sample(1780000000.5, "t_prk", Quantity.TEMPERATURE, 295.001, Quality.SUSPECT))
    sink.sample(Sample(1780000001.0, "p_prk", Quantity.PRESSURE, float("nan"), Quality.BAD))
    sink.hatch("prk-hatch", True)
    sink.hatch("prk-hatch", True)  # unchanged: not re-published
    sink.sample(Sample(1780000002.0, "prk-hatch", Quantity.HATCH, 0.0))  # a hatch reading goes to the hatch topic
    est = Estimate(1780000600.0, "prk-zvezda", 0.452, 0.031, 101318.2, 94.53, 1.2e7)
    sink.estimate(est)
    record = {
        "type": "alarm",
        "time": 1780011412.0,
        "alarm": "leak_rate",
        "source": "prk-zvezda",
        "severity": "warning",
        "state": "active",
        "value": 0.97,
        "threshold": 0.9,
        "acknowledged": False,
    }
    alarm_topic = f"{P}/alarm/leak_rate/prk-zvezda/warning"
    sink.alarm(record, "leak_rate", "prk-zvezda", "warning", gone=False)
    sink.volume_alarm("prk-zvezda", True)
    sink.publish_json("metrics/self", {"published": 7})
    assert live.wait_topic(f"{P}/metrics/self")

    assert live.json(f"{P}/sensor/p_prk") == [
        {"time": 1780000000.0, "quantity": "pressure", "value": 101324.49, "quality": "good"},
        {"time": 1780000001.0, "quantity": "pressure", "value": None, "quality": "bad"},
    ]
    assert live.json(f"{P}/sensor/t_prk") == [
        {"time": 1780000000.5, "quantity": "temperature", "value": 295.001, "quality": "suspect"}
    ]
    assert live.payloads(f"{P}/hatch/prk-hatch") == [b"open", b"closed"]
    assert live.json(f"{P}/volume/prk-zvezda") == [est.to_dict()]
    assert live.json(alarm_topic) == [record]
    assert live.payloads(f"{P}/volume/prk-zvezda/alarm") == [b"ON"]

    kept = retained(broker.port, f"{P}/#")
    assert kept == {
        f"{P}/status": b"online",
        f"{P}/hatch/prk-hatch": b"closed",
        alarm_topic: json.dumps(record, separators=(",", ":")).encode(),
        f"{P}/volume/prk-zvezda/alarm": b"ON",
    }

    # cleared and acknowledged: the final record goes out (not retained), then the retained alarm goes away
    n = live.count()
    final = record | {"state": "cleared", "acknowledged": True}
    sink.alarm(final, "leak_rate", "prk-zvezda", "warning", gone=True)
    assert live.wait_topic(alarm_topic, payload=b"", since=n)
    ending = [(json.loads(p) if p else None, r) for _, t, p, r in live.messages[n:] if t == alarm_topic]
    assert ending == [(final, False), (None, False)]
    assert alarm_topic not in retained(broker.port, f"{P}/#")
    assert sink.stats()["published"] >= 10


def test_hatch_readings_go_out_through_the_spool_with_their_own_time(broker, make_sink, listener):
    live = listener(broker.port, f"{P}/hatch/#")
    sink, _ = make_sink(broker.port)
    assert sink.synced.wait(5)
    opened = Record(1, "hatch", time_ns(1780000000.25), {"hatch": "prk-hatch", "open": True})
    closed = Record(2, "hatch", time_ns(1780000060.5), {"hatch": "prk-hatch", "open": False})
    assert sink.send([opened], replay=False).confirmed == 1
    assert sink.send([closed], replay=True).confirmed == 1
    assert wait_until(lambda: len(live.on(f"{P}/hatch/prk-hatch/event")) == 2)
    assert live.json(f"{P}/hatch/prk-hatch/event") == [
        {"time": 1780000000.25, "open": True},
        {"time": 1780000060.5, "open": False, "replay": True},
    ]
    assert retained(broker.port, f"{P}/hatch/#") == {}  # events are not retained; `hatch()` keeps the state


def spooled_sample(rid: int, value: float, sensor: str = "p1") -> Record:
    """A sample as the spool holds it (the service's body, its JSON text made once at append)."""
    body = {"time": 1780000000.0 + rid, "quantity": "pressure", "value": value, "quality": "good", "sensor": sensor}
    return Record(rid, "sample", time_ns(body["time"]), body, json.dumps(body, separators=(",", ":")))


def test_the_live_lane_is_confirmed_by_each_puback_in_whatever_order_it_comes(broker, make_sink, listener):
    live = listener(broker.port, f"{P}/#")
    sink, _ = make_sink(broker.port)
    assert sink.synced.wait(10)
    mids: list[int] = []
    sink._client.on_publish = lambda client, userdata, mid, rc, props: mids.append(mid)  # hold paho's reports back
    woken: list[bool] = []
    records = [spooled_sample(10 + i, 101325.0 + i, sensor="p\u00e9") for i in range(5)]
    assert sink.submit(records, False, lambda: woken.append(True)) == 5, "all handed over, no wait for a PUBACK"
    sink.publish_json("extra", {"x": 1})  # a message of the sink's own: its PUBACK confirms no record
    assert wait_until(lambda: len(mids) == 6, 10)
    assert sink.confirmed() == [] and not woken
    for mid in reversed(mids):  # the PUBACKs in the reverse order
        sink._on_publish(sink._client, None, mid, None, None)
    assert woken
    assert sink.confirmed() == [14, 13, 12, 11, 10]
    assert sink.confirmed() == [], "each once"
    assert wait_until(lambda: len(live.on(f"{P}/sensor/p\u00e9")) == 5)
    first = b'{"time":1780000010.0,"quantity":"pressure","value":101325.0,"quality":"good"}'
    assert live.payloads(f"{P}/sensor/p\u00e9")[0] == first, "the spool's text without the sensor"
    sink.submit([spooled_sample(20, 1.5)], True, lambda: None)  # replayed: cut from the text all the same
    assert wait_until(lambda: live.json(f"{P}/sensor/p1") == [
        {"time": 1780000020.0, "quantity": "pressure", "value": 1.5, "quality": "good", "replay": True}
    ])  # fmt: skip


def test_what_was_in_flight_when_the_link_dropped_goes_again_from_the_spool(broker, make_sink, listener, tmp_path):
    live = listener(broker.port, f"{P}/sensor/#")
    proxy = HoldingProxy(broker.port)
    spool = Spool(str(tmp_path / "spool.sqlite"), commit_interval_s=0.05)
    try:
        sink, _ = make_sink(proxy.port)
        assert sink.synced.wait(10)
        spool.start([sink])

        def append(k: int) -> None:
            body = {"time": 1780000000.0 + k, "quantity": "pressure", "value": float(k), "quality": "good"}
            spool.append("sample", body["time"], {**body, "sensor": "p1"})

        def values(since: int = 0) -> list[float]:
            return [json.loads(m[2])["value"] for m in live.messages[since:]]

        for k in range(5):
            append(k)
        assert wait_until(lambda: spool.cursors["mqtt"] == 5, 10), "confirmed through the proxy"
        proxy.hold()  # from now on no PUBACK reaches the sink
        for k in range(5, 25):
            append(k)
        assert wait_until(lambda: set(values()) == {float(k) for k in range(25)}, 10), "all out, none waited"
        assert spool.cursors["mqtt"] == 5 and len(spool.forwarder("mqtt").inflight) == 20, "none confirmed"
        n = len(live.messages)
        proxy.cut()  # the link drops with 20 messages unacknowledged
        assert wait_until(lambda: spool.cursors["mqtt"] == 25, 30), "sent again after the reconnect, and confirmed"
        assert set(values(n)) == {float(k) for k in range(5, 25)}, "exactly the unconfirmed ones went again"
        assert wait_until(lambda: spool.stats()["depth"] == 0, 10)
    finally:
        spool.close()
        proxy.close()


def test_sample_qos_is_capped_at_1_and_topic_prefix_defaults_to_station(broker, listener):
    live = listener(broker.port, "hullwatch/#")
    sink = MqttSink(MqttConfig(port=broker.port, qos=2), "lab", lambda *a: {"ok": True})
    assert sink.prefix == "hullwatch/lab" and sink.telemetry.sample_qos == 1 and sink.qos == 2
    sink.start()
    try:
        assert live.wait_topic("hullwatch/lab/status", payload=b"online")
        sink.sample(Sample(1.0, "p", Quantity.PRESSURE, 1.0))
        assert live.wait_topic("hullwatch/lab/sensor/p")
    finally:
        sink.stop()


# -- commands --------------------------------------------------------------------------------


def test_ack_reaches_on_command_and_the_result_is_published(broker, make_sink, listener):
    live = listener(broker.port, f"{P}/#")
    sink, commands = make_sink(broker.port)
    assert live.wait_topic(f"{P}/status", payload=b"online")
    assert sink.synced.wait(5)  # subscribed to cmd/#

    key = {"alarm": "leak_rate", "source": "lab", "severity": "warning", "id": "req-1"}
    publish(broker.port, f"{P}/cmd/ack", json.dumps(key))
    m = live.wait_topic(f"{P}/cmd/result")
    assert m is not None
    result = json.loads(m[2])
    assert m[3] is False  # not retained
    assert result["command"] == "ack" and result["ok"] is True and result["message"] == "ack done"
    assert json.loads(result["request"]) == key and result["id"] == "req-1"
    assert commands.calls == [("ack", key, "mqtt")]
    # on_command published from paho's thread (re-entrantly) without a deadlock
    assert live.wait_topic(f"{P}/alarm/leak_rate/lab/warning")

    n = live.count()
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}')
    for name, payload in [
        ("shelve", {"alarm": "leak_rate", "source": "lab", "severity": "caution", "duration_s": 3600}),
        ("unshelve", {"all": True}),
        ("reset", {"alarm": "low_pressure", "source": "lab", "severity": "warning"}),
        ("maintenance", {"on": True, "sources": ["p_prk"]}),
        ("maintenance", {"on": False}),
    ]:
        publish(broker.port, f"{P}/cmd/{name}", json.dumps(payload))
    assert wait_until(lambda: len([m for m in live.messages[n:] if m[1] == f"{P}/cmd/result"]) == 6)
    assert [c[0] for c in commands.calls[1:]] == ["ack", "shelve", "unshelve", "reset", "maintenance", "maintenance"]
    assert all(r["ok"] for r in live.json(f"{P}/cmd/result"))


def test_a_retained_command_is_refused_however_it_arrives(broker, make_sink, listener, caplog):
    caplog.set_level(logging.INFO, logger="hullwatch.sinks.mqtt")
    # left on the broker before the daemon connects: handed over with the subscription
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}', retain=True)
    live = listener(broker.port, f"{P}/#")
    sink, commands = make_sink(broker.port)
    refused = live.wait_topic(f"{P}/cmd/result")
    assert refused is not None
    result = json.loads(refused[2])
    assert (result["ok"], result["error"], result["command"]) == (False, "retained", "ack")
    assert "mosquitto_pub -r -n -t hullwatch/lab/cmd/ack" in result["message"]
    assert commands.calls == [] and "retained commands are refused" in caplog.text
    # published retained while the daemon listens: delivered live, still seen as retained (MQTT 5)
    n = live.count()
    publish(broker.port, f"{P}/cmd/reset", '{"all": true}', retain=True)
    m = live.wait_for(lambda m: m[1] == f"{P}/cmd/result", since=n)
    assert m is not None and json.loads(m[2])["error"] == "retained"
    assert commands.calls == []
    # clearing them (empty retained messages) is no command, and gets no answer
    n = live.count()
    for name in ("ack", "reset"):
        publish(broker.port, f"{P}/cmd/{name}", b"", retain=True)
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}')  # a plain command after them: the only one answered
    m = live.wait_for(lambda m: m[1] == f"{P}/cmd/result", since=n)
    assert m is not None and json.loads(m[2])["ok"] is True
    time.sleep(0.2)
    assert len([m for m in live.messages[n:] if m[1] == f"{P}/cmd/result"]) == 1
    assert commands.calls == [("ack", {"all": True}, "mqtt")]


def test_a_command_names_its_sender(broker, make_sink, listener):
    live = listener(broker.port, f"{P}/cmd/result")
    sink, commands = make_sink(broker.port)
    assert sink.synced.wait(5)
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}', user_properties={"by": "alice"})  # MQTT 5
    publish(broker.port, f"{P}/cmd/ack", '{"all": true, "by": "bob"}')  # in the payload (MQTT 3.1.1 clients)
    publish(broker.port, f"{P}/cmd/ack", '{"all": true, "by": "bob"}', user_properties={"by": "carol"})
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}')
    publish(broker.port, f"{P}/cmd/ack", '{"all": true, "by": ""}')
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}', user_properties={"by": "x" * 65})
    assert wait_until(lambda: len(live.on(f"{P}/cmd/result")) == 6)
    assert [c[2] for c in commands.calls] == ["mqtt:alice", "mqtt:bob", "mqtt:carol", "mqtt"]
    results = live.json(f"{P}/cmd/result")
    assert [r.get("by") for r in results[:4]] == ["mqtt:alice", "mqtt:bob", "mqtt:carol", "mqtt"]
    assert [r.get("error") for r in results[4:]] == ["bad_fields", "bad_fields"]


MALFORMED = [
    ("ack", b"not json", "not_json"),
    ("ack", b"[]", "not_object"),
    ("ack", b'{"alarm": 5}', "bad_fields"),
    ("ack", b"x" * 1_000_000, "too_large"),
    ("ack", b'{"alarm": "\xff\xfe"}', "not_utf8"),
    ("ack", b'{"all": false}', "bad_fields"),
    ("ack", b'{"alarm": "leak_rate", "source": "lab", "severity": "dire"}', "bad_fields"),
    ("ack", b"[" * 60_000, "not_json"),
    ("shelve", b'{"alarm": "leak_rate", "source": "lab", "severity": "caution", "duration_s": "1h"}', "bad_fields"),
    ("shelve", b'{"alarm": "leak_rate", "source": "lab", "severity": "caution", "duration_s": NaN}', "bad_fields"),
    ("maintenance", b'{"on": "yes"}', "bad_fields"),
    ("maintenance", b'{"on": true, "sources": "p_prk"}', "bad_fields"),
    ("maintenance", b'{"on": true}', "bad_fields"),
    ("maintenance", b'{"on": true, "sources": []}', "bad_fields"),
    ("maintenance", b'{"on": true, "all": true, "sources": ["lab"]}', "bad_fields"),
    ("maintenance", b'{"on": true, "all": "yes"}', "bad_fields"),
    ("maintenance", b'{"on": true, "all": true, "duration_s": -5}', "bad_fields"),
    ("ack", b'{"all": true, "by": 7}', "bad_fields"),
    ("frobnicate", b"{}", "unknown_command"),
    ("ack/extra", b'{"all": true}', "unknown_command"),
]


def test_malformed_commands_are_answered_and_never_reach_on_command(broker, make_sink, listener, caplog):
    caplog.set_level(logging.WARNING, logger="hullwatch.sinks.mqtt")
    live = listener(broker.port, f"{P}/#")
    sink, commands = make_sink(broker.port)
    assert live.wait_topic(f"{P}/status", payload=b"online")
    assert sink.synced.wait(5)  # subscribed to cmd/#

    for name, payload, _ in MALFORMED:
        publish(broker.port, f"{P}/cmd/{name}", payload)
    publish(broker.port, f"{P}/cmd/ack", b"still not json")  # a second one of a kind: answered, not logged
    assert wait_until(lambda: len(live.on(f"{P}/cmd/result")) == len(MALFORMED) + 1)
    results = live.json(f"{P}/cmd/result")
    assert [r["error"] for r in results] == [kind for _, _, kind in MALFORMED] + ["not_json"]
    assert all(r["ok"] is False and r["message"] for r in results)
    assert all(len(r["request"]) <= 257 for r in results)
    assert commands.calls == []
    assert caplog.text.count("is not JSON") == 1  # rate-limited: once per kind per minute
    assert caplog.text.count("rejected command") == len({kind for _, _, kind in MALFORMED})

    # publishing goes on, and so do valid commands
    n = live.count()
    sink.sample(Sample(2.0, "p_prk", Quantity.PRESSURE, 101000.0))
    assert live.wait_topic(f"{P}/sensor/p_prk", since=n)
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}')
    assert wait_until(lambda: commands.calls == [("ack", {"all": True}, "mqtt")])


def test_on_command_failures_become_ok_false(broker, make_sink, listener, caplog):
    caplog.set_level(logging.ERROR, logger="hullwatch.sinks.mqtt")
    live = listener(broker.port, f"{P}/cmd/result")
    sink, commands = make_sink(broker.port)
    assert wait_until(lambda: sink.connected)
    time.sleep(0.1)
    publish(broker.port, f"{P}/cmd/ack", '{"all": true, "explode": true}')
    publish(broker.port, f"{P}/cmd/ack", '{"all": true, "not_a_dict": true}')
    publish(broker.port, f"{P}/cmd/ack", '{"all": true}')
    assert wait_until(lambda: len(live.on(f"{P}/cmd/result")) == 3)
    r = live.json(f"{P}/cmd/result")
    assert r[0]["ok"] is False and "RuntimeError: boom" in r[0]["message"]
    assert r[1]["ok"] is False and "TypeError" in r[1]["message"]
    assert r[2]["ok"] is True
    assert "Traceback" in caplog.text and "boom" in caplog.text
    assert sink.connected


# -- authentication and TLS ------------------------------------------------------------------


def test_tls_with_a_client_certificate(tmp_path, certs, make_sink):
    b = Broker(tmp_path / "tls", tls=certs, require_certificate=True).start()
    try:
        live = Listener(b.port, f"{P}/#", tls=certs)
        try:
            tls = TlsConfig(ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)
            sink, _ = make_sink(b.port, tls=tls)
            assert live.wait_topic(f"{P}/status", payload=b"online")
            sink.hatch("h", False)
            assert live.wait_topic(f"{P}/hatch/h", payload=b"closed")
            # without a client certificate the broker refuses the handshake; the sink keeps trying
            nocert, _ = make_sink(b.port, tls=TlsConfig(ca_file=certs.ca), topic_prefix="hullwatch/nocert")
            time.sleep(1.0)
            assert not nocert.connected and sink.connected
        finally:
            live.close()
    finally:
        b.stop()


def test_password_auth_and_a_bad_password_is_retried(tmp_path, make_sink, caplog):
    caplog.set_level(logging.WARNING, logger="hullwatch.sinks.mqtt")
    b = Broker(tmp_path / "auth", users={"hullwatch": "s3cret", "viewer": "v"}).start()
    try:
        good = tmp_path / "good"
        good.write_text("s3cret\n")
        bad = tmp_path / "bad"
        bad.write_text("guess\n")
        live = Listener(b.port, "hullwatch/#", username="viewer", password="v")
        try:
            sink, _ = make_sink(b.port, username="hullwatch", password_file=str(good))
            assert live.wait_topic(f"{P}/status", payload=b"online")
            intruder, _ = make_sink(b.port, username="hullwatch", password_file=str(bad), topic_prefix="hullwatch/bad")
            time.sleep(2.5)
            assert not intruder.connected and sink.connected
            assert b.log_text().count("not authorised") >= 2  # retried (every 1-2 s)
            assert caplog.text.count("refused the connection") == 1  # ...but logged once
            assert live.on("hullwatch/bad/status") == []
            t = time.monotonic()
            intruder.stop()
            assert time.monotonic() - t < 2.0
        finally:
            live.close()
    finally:
        b.stop()


def test_unusable_settings_raise_at_start(tmp_path):
    def sink(**kw):
        return MqttSink(MqttConfig(port=free_port(), **kw), "lab", lambda *a: {"ok": True})

    with pytest.raises(MqttSetupError, match="password_file"):
        sink(username="u", password_file=str(tmp_path / "missing")).start()
    pw = tmp_path / "pw"
    pw.write_text("x")
    with pytest.raises(MqttSetupError, match="without mqtt.username"):
        apply_credentials(mqtt.Client(CallbackAPIVersion.VERSION2), MqttConfig(password_file=str(pw)))
    station = sink(password_file=str(pw))
    station.prepare()  # a station's password without a user name: the station logs in with its name
    assert station.username == "lab"
    with pytest.raises(MqttSetupError, match="mqtt.tls"):
        sink(tls=TlsConfig(ca_file=str(tmp_path / "no-ca.crt"))).start()


# -- outages ---------------------------------------------------------------------------------


def test_broker_restart_brings_the_retained_state_back(broker, make_sink, listener):
    sink, _ = make_sink(broker.port)
    assert wait_until(lambda: sink.connected)
    keep = {"type": "alarm", "alarm": "low_pressure", "source": "lab", "severity": "warning", "acknowledged": False}
    goes = {"type": "alarm", "alarm": "leak_rate", "source": "lab", "severity": "caution", "acknowledged": True}
    sink.alarm(keep, "low_pressure", "lab", "warning")
    sink.alarm(goes, "leak_rate", "lab", "caution")
    sink.hatch("prk-hatch", True)
    assert wait_until(lambda: len(retained(broker.port, f"{P}/#")) == 4)

    broker.stop()
    assert wait_until(lambda: not sink.connected, 3)
    # while the broker is away: retained changes go to the snapshot, estimates queue, samples drop
    sink.hatch("prk-hatch", False)
    sink.alarm(goes, "leak_rate", "lab", "caution", gone=True)
    sink.estimate(Estimate(5.0, "lab", 0.1, 0.01, 101000.0, 1.2, None))
    sink.sample(Sample(5.0, "p_prk", Quantity.PRESSURE, 101000.0))
    time.sleep(3.0)

    broker.start()
    t_restart = time.monotonic()
    live = listener(broker.port, f"{P}/#")
    m = live.wait_topic(f"{P}/status", payload=b"online", timeout=5)
    assert m is not None, "did not reconnect within 5 s of the broker restart"
    reconnect_s = m[0] - t_restart
    assert reconnect_s < 3.0, f"reconnected {reconnect_s:.2f} s after the restart"
    assert wait_until(lambda: live.on(f"{P}/hatch/prk-hatch"))
    assert live.wait_topic(f"{P}/volume/lab")  # queued at QoS 1 during the outage
    assert live.on(f"{P}/sensor/p_prk") == []  # live data is not queued
    kept = retained(broker.port, f"{P}/#")
    assert kept == {
        f"{P}/status": b"online",
        f"{P}/alarm/low_pressure/lab/warning": json.dumps(keep, separators=(",", ":")).encode(),
        f"{P}/hatch/prk-hatch": b"closed",
    }
    print(f"reconnected {reconnect_s:.2f} s after the broker restart")


# -- reconciliation: the broker keeps exactly the sink's retained state ------------------------


def test_stale_retained_state_is_cleared_or_set_right_at_connect(broker, make_sink, listener):
    """What a previous run left on the broker: removed, or set to the present state; others' topics untouched."""
    desc = StationDescription("lab", {"p": ("pressure",)}, volumes=("lab",))
    held = {"type": "alarm", "alarm": "low_pressure", "source": "lab", "severity": "warning", "acknowledged": True}
    held_topic = f"{P}/alarm/low_pressure/lab/warning"
    mine = "homeassistant/sensor/lab/p_pressure/config"
    stale = {
        f"{P}/alarm/leak_rate/lab/warning": b'{"state":"active"}',  # an alarm this run does not have
        f"{P}/alarm/rapid_depress/lab/emergency": b'{"state":"active"}',
        held_topic: b'{"state":"active","acknowledged":false}',  # held, but not like this
        f"{P}/volume/lab/alarm": b"ON",  # a volume of the station with no alarm: OFF
        f"{P}/volume/old/alarm": b"ON",  # a volume that no longer exists: removed
        "homeassistant/sensor/lab/old_pressure/config": b"{}",  # an entity that no longer exists
        mine: b"{}",  # an entity that exists, announced differently
        "hullwatch/other/alarm/leak_rate/x/warning": b"{}",  # another station's
        "homeassistant/sensor/other/p_pressure/config": b"{}",
    }
    for topic, payload in stale.items():
        publish(broker.port, topic, payload, retain=True)
    sink, _ = make_sink(broker.port, start=False, description=desc, homeassistant=True)
    sink.prepare()
    sink.alarm(held, "low_pressure", "lab", "warning")  # the present state, before connecting
    configs = {t: json.dumps(c, separators=(",", ":")).encode() for t, c in sink.discovery_messages()}
    sink.start()
    expected = {
        f"{P}/status": b"online",
        held_topic: json.dumps(held, separators=(",", ":")).encode(),
        f"{P}/volume/lab/alarm": b"OFF",
        "hullwatch/other/alarm/leak_rate/x/warning": b"{}",
        "homeassistant/sensor/other/p_pressure/config": b"{}",
        **configs,
    }
    assert mine in configs
    assert wait_until(lambda: {**retained(broker.port, "hullwatch/#"), **retained(broker.port, "homeassistant/#")}
                      == expected, 10)  # fmt: skip
    stats = sink.stats()
    assert stats["stale_cleared"] == 4 and stats["stale_rewritten"] >= 1, stats

    # the same station without Home Assistant: its discovery goes, the rest stays
    sink.stop()
    sink, _ = make_sink(broker.port, description=desc, homeassistant=False)
    assert wait_until(lambda: retained(broker.port, "homeassistant/+/lab/#") == {}, 10)
    assert retained(broker.port, "homeassistant/#") == {"homeassistant/sensor/other/p_pressure/config": b"{}"}


def test_live_messages_on_the_retained_topics_are_not_reconciled(broker, make_sink, listener):
    """Only what the broker hands over with the subscription is judged: never our own echoes."""
    sink, _ = make_sink(broker.port)
    assert sink.synced.wait(5)
    live = listener(broker.port, f"{P}/alarm/#")
    record = {"type": "alarm", "alarm": "leak_rate", "acknowledged": False}
    for _ in range(3):
        sink.alarm(record, "leak_rate", "lab", "warning")
        sink.alarm(record, "leak_rate", "lab", "warning", gone=True)
    assert wait_until(lambda: len(live.messages) == 9)
    time.sleep(0.3)
    assert len(live.messages) == 9 and sink.stats()["stale_cleared"] == 0


def test_a_restarted_broker_that_kept_stale_state_is_set_right_on_reconnect(tmp_path, make_sink):
    """A persistent broker restores what it saved: on reconnecting, the sink removes what it does not hold."""
    b = Broker(tmp_path / "persistent", persistence=True).start()
    try:
        sink, _ = make_sink(b.port)
        assert sink.synced.wait(5)
        keep = {"type": "alarm", "alarm": "low_pressure", "acknowledged": False}
        sink.alarm(keep, "low_pressure", "lab", "warning")
        stale = f"{P}/alarm/leak_rate/lab/warning"
        publish(b.port, stale, b'{"state":"active"}', retain=True)  # not the sink's state; it hears it live only
        time.sleep(0.3)
        assert stale in retained(b.port, f"{P}/#")
        b.stop()  # saves the retained messages ...
        assert wait_until(lambda: not sink.connected, 3)
        b.start()  # ... and restores them
        assert wait_until(lambda: sink.synced.is_set(), 10)
        assert wait_until(lambda: stale not in retained(b.port, f"{P}/#"), 10)
        kept = retained(b.port, f"{P}/#")
        assert kept == {f"{P}/status": b"online", f"{P}/alarm/low_pressure/lab/warning": _compact(keep)}
        assert sink.stats()["stale_cleared"] == 1
        sink.stop()
    finally:
        b.stop()


def _compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def test_broker_down_at_start_is_retried(tmp_path, make_sink, listener):
    b = Broker(tmp_path / "late")
    sink, _ = make_sink(b.port)
    sink.hatch("prk-hatch", True)
    time.sleep(1.2)
    assert not sink.connected
    try:
        b.start()
        t = time.monotonic()
        assert wait_until(lambda: sink.connected, 4), "no connection within 4 s of the broker starting"
        print(f"connected {time.monotonic() - t:.2f} s after the broker started")
        assert wait_until(lambda: retained(b.port, f"{P}/#").get(f"{P}/hatch/prk-hatch") == b"open", 2)
    finally:
        sink.stop()
        b.stop()


def test_a_full_queue_drops_and_the_snapshot_is_resent(broker, make_sink, listener):
    sink, _ = make_sink(broker.port, max_queued=5)
    assert wait_until(lambda: sink.connected)
    broker.proc.send_signal(signal.SIGSTOP)  # frozen: the connection stays up, nothing is acknowledged
    try:
        for i in range(8):
            sink.estimate(Estimate(float(i), "lab", 0.1, 0.01, 101000.0, 1.2, None))
        record = {"type": "alarm", "alarm": "low_pressure", "acknowledged": False}
        sink.alarm(record, "low_pressure", "lab", "warning")
        assert sink.stats()["dropped_queue_full"] >= 4
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    topic = f"{P}/alarm/low_pressure/lab/warning"

    def back() -> bool:
        sink.sample(Sample(1.0, "p", Quantity.PRESSURE, 1.0))  # any publish retries the snapshot
        return topic in retained(broker.port, topic, wait=0.2)

    assert wait_until(back, 5)


# -- Home Assistant discovery ----------------------------------------------------------------


def test_home_assistant_discovery_and_resend_on_birth(broker, make_sink, listener):
    desc = StationDescription(
        "lab",
        {"p_prk": (Quantity.PRESSURE, Quantity.TEMPERATURE), "p_zv": ("pressure",)},
        volumes=("prk-zvezda",),
        hatches=("prk-hatch",),
    )
    live = listener(broker.port, "homeassistant/#")
    sink, commands = make_sink(broker.port, description=desc, homeassistant=True)
    expected = 3 + 5 + 1 + 1  # sensor quantities, volume entities, hatch, button
    assert wait_until(lambda: len(live.messages) >= expected)
    time.sleep(0.2)
    configs = {t: json.loads(p) for _, t, p, _ in live.messages}
    assert len(configs) == expected
    kept = retained(broker.port, "homeassistant/#")
    assert set(kept) == set(configs)
    node = "lab"  # the station's name alone: the broker's ACL confines a station to it
    for topic, c in configs.items():
        assert topic.startswith("homeassistant/") and topic.endswith("/config") and f"/{node}/" in topic
        assert c["availability_topic"] == f"{P}/status" and c["device"]["identifiers"] == ["hullwatch_lab"]
        assert c["unique_id"].startswith("hullwatch_lab_") and c["name"]
    p = configs[f"homeassistant/sensor/{node}/p_prk_pressure/config"]
    assert p["device_class"] == "pressure" and p["unit_of_measurement"] == "Pa"
    assert p["state_topic"] == f"{P}/sensor/p_prk" and "'pressure'" in p["value_template"]
    t = configs[f"homeassistant/sensor/{node}/p_prk_temperature/config"]
    assert t["device_class"] == "temperature" and t["unit_of_measurement"] == "°C"
    assert f"homeassistant/sensor/{node}/p_zv_temperature/config" not in configs
    leak = configs[f"homeassistant/sensor/{node}/prk-zvezda_leak_rate/config"]
    assert leak["unit_of_measurement"] == "kg/d" and leak["state_class"] == "measurement"
    assert "device_class" not in leak and leak["state_topic"] == f"{P}/volume/prk-zvezda"
    rt = configs[f"homeassistant/sensor/{node}/prk-zvezda_reserve_time/config"]
    assert rt["device_class"] == "duration" and rt["unit_of_measurement"] == "s"
    alarm = configs[f"homeassistant/binary_sensor/{node}/prk-zvezda_alarm/config"]
    assert alarm["device_class"] == "problem" and alarm["state_topic"] == f"{P}/volume/prk-zvezda/alarm"
    assert (alarm["payload_on"], alarm["payload_off"]) == ("ON", "OFF")
    hatch = configs[f"homeassistant/binary_sensor/{node}/prk-hatch_hatch/config"]
    assert hatch["device_class"] == "door" and hatch["payload_on"] == "open" and hatch["payload_off"] == "closed"
    button = configs[f"homeassistant/button/{node}/acknowledge_all/config"]
    assert button["command_topic"] == f"{P}/cmd/ack" and json.loads(button["payload_press"]) == {"all": True}

    # Home Assistant restarted: its birth message makes the sink re-send every config
    n = live.count()
    publish(broker.port, "homeassistant/status", "online")
    assert wait_until(lambda: live.count() - n >= expected + 1)  # + the birth message itself
    assert {m[1] for m in live.messages[n:]} >= set(configs)
    # the button's payload is an ack command the sink accepts
    publish(broker.port, f"{P}/cmd/ack", button["payload_press"])
    assert wait_until(lambda: commands.calls == [("ack", {"all": True}, "mqtt")])


# -- pieces without a broker -----------------------------------------------------------------


def testvalidate():
    key = {"alarm": "leak_rate", "source": "lab", "severity": "warning"}
    assert validate("ack", key) is None
    assert validate("ack", {"all": True}) is None
    assert validate("reset", {"all": True}) is None
    assert validate("unshelve", key) is None
    assert validate("shelve", key | {"duration_s": 60}) is None
    assert validate("shelve", {"all": True, "duration_s": 60})
    assert validate("shelve", key | {"duration_s": True})
    assert validate("shelve", key | {"duration_s": -1})
    assert validate("shelve", key | {"duration_s": float("inf")})
    assert validate("ack", key | {"source": ""})
    assert validate("ack", {"alarm": "x", "source": "y"})
    assert validate("maintenance", {"on": False, "sources": []}) is None
    assert validate("maintenance", {"on": 1})
    assert validate("maintenance", {"on": True, "sources": [1]})
    assert validate("maintenance", {"on": True})
    assert validate("maintenance", {"on": True, "all": True}) is None
    assert validate("maintenance", {"on": True, "sources": ["lab"], "duration_s": 600}) is None
    assert validate("maintenance", {"on": False, "all": True}) is None
    assert validate("ack", {"all": True, "by": "alice"}) is None
    assert validate("ack", {"all": True, "by": "a\nb"})


def test_station_description_from_config(two_segment_toml):
    import tomllib

    cfg = parse(tomllib.loads(two_segment_toml))
    d = StationDescription.from_config(cfg, {"t_prk": ("temperature",), "p_prk": ("pressure",)})
    assert d.station == "prk-mockup"
    assert d.volumes == ("prk", "prk-zvezda", "zvezda")
    assert d.hatches == ("prk-hatch",)
    assert dict(d.sensors) == {"p_prk": ("pressure",), "t_prk": ("temperature",)}
    assert dict(StationDescription.from_config(cfg).sensors) == {"p_prk": (), "t_prk": ()}  # no driver told


def test_throttle_logs_once_per_interval_and_counts_the_rest(caplog):
    caplog.set_level(logging.INFO, logger="test.throttle")
    th = Throttle(logging.getLogger("test.throttle"), interval_s=0.2)
    for _ in range(5):
        th("a", logging.WARNING, "problem %s", "a")
    th("b", logging.WARNING, "problem %s", "b")
    time.sleep(0.25)
    th("a", logging.WARNING, "problem %s", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "problem a",
        "problem b",
        "problem a (4 more like this since the last report)",
    ]

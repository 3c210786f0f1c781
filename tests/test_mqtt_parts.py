"""The MQTT sink's pure parts: the retained snapshot, command reading, the outgoing messages."""

from __future__ import annotations

import json

from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.sinks.mqtt import commands
from hullwatch.sinks.mqtt.retained import RetainedState
from hullwatch.sinks.mqtt.telemetry import Telemetry
from hullwatch.sinks.spool import Record
from hullwatch.topics import Kind, Topics, parse


class Broker:
    """A `send` that records what it was given and takes it unless told to refuse."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.accept = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if self.accept:
            self.sent.append((topic, payload))
        return self.accept


def test_deletions_while_disconnected_become_tombstones_sent_first_on_reconnect() -> None:
    state, broker = RetainedState(), Broker()
    state.set("P/alarm/a/s/warning", b"{}", None)
    state.set("P/hatch/h", b"open", None)
    state.set("P/alarm/a/s/warning", b"", None)  # deleted while disconnected
    assert len(state) == 1 and broker.sent == []
    state.republish(broker)
    assert broker.sent == [("P/alarm/a/s/warning", b""), ("P/hatch/h", b"open")]
    broker.sent.clear()
    state.republish(broker)
    assert broker.sent == [("P/hatch/h", b"open")]  # the tombstone went out once


def test_dedupe_skips_an_unchanged_value() -> None:
    state, broker = RetainedState(), Broker()
    state.set("P/hatch/h", b"open", broker, dedupe=True)
    state.set("P/hatch/h", b"open", broker, dedupe=True)
    assert broker.sent == [("P/hatch/h", b"open")]


def test_reconcile_removes_rewrites_or_defaults() -> None:
    state, broker = RetainedState(), Broker()
    state.set("P/alarm/a/s/warning", b"new", broker)
    broker.sent.clear()
    assert state.reconcile("P/alarm/a/s/warning", b"new", broker) is None  # right already
    assert state.reconcile("P/alarm/a/s/warning", b"old", broker) == b"new"
    assert state.reconcile("P/alarm/gone/s/warning", b"{}", broker) == b""
    assert state.reconcile("P/volume/v/alarm", b"ON", broker, default=b"OFF") == b"OFF"
    assert state.get("P/volume/v/alarm") == b"OFF"
    assert broker.sent == [
        ("P/alarm/a/s/warning", b"new"),
        ("P/alarm/gone/s/warning", b""),
        ("P/volume/v/alarm", b"OFF"),
    ]


def test_a_removal_the_broker_refused_is_retried_at_the_next_republish() -> None:
    state, broker = RetainedState(), Broker()
    broker.accept = False
    assert state.reconcile("P/alarm/x/s/warning", b"{}", broker) == b""
    broker.accept = True
    state.republish(broker)
    assert broker.sent == [("P/alarm/x/s/warning", b"")]


def test_commands_are_read_with_their_sender() -> None:
    ok = commands.read("ack", b'{"all": true, "by": "alice"}')
    assert isinstance(ok, commands.Command) and ok.by == "mqtt:alice" and ok.obj == {"all": True, "by": "alice"}
    assert commands.read("ack", b'{"all": true}', sender="bob").by == "mqtt:bob"  # the user property wins
    assert commands.read("ack", b'{"all": true}').by == "mqtt"
    for name, raw, kind in [
        ("launch", b"{}", "unknown_command"),
        ("ack", b"\xff", "not_utf8"),
        ("ack", b"[1]", "not_object"),
        ("ack", b"{", "not_json"),
        ("ack", b'{"all": 1}', "bad_fields"),
        ("ack", b"{" + b" " * commands.MAX_COMMAND_BYTES + b"}", "too_large"),
    ]:
        rejected = commands.read(name, raw)
        assert isinstance(rejected, commands.Rejected) and rejected.kind == kind, (name, raw[:20])
    out = commands.rejection("ack", b'{"id": 7}', commands.Rejected("bad_fields", "why"), 12.5)
    assert out == {
        "command": "ack",
        "ok": False,
        "error": "bad_fields",
        "message": "why",
        "request": '{"id": 7}',
        "time": 12.5,
    }
    out = commands.result("ack", b'{"id": 7}', {"id": 7}, {"ok": True, "by": "mqtt"}, 1.0)
    assert out["id"] == 7 and out["ok"] is True and out["by"] == "mqtt"


def test_every_message_goes_to_its_icd_topic() -> None:
    t = Telemetry(Topics("hullwatch/lab"), qos=2)
    sample = t.sample(Sample(1.5, "fwd", Quantity.PRESSURE, float("nan"), Quality.BAD))
    assert parse(sample.topic[len("hullwatch/lab/") :]).kind is Kind.SENSOR and sample.qos == 1 and not sample.retain
    assert json.loads(sample.payload) == {"time": 1.5, "quantity": "pressure", "value": None, "quality": "bad"}
    final, removal = t.alarm_ending({"state": "cleared"}, "leak_rate", "v", "warning")
    assert final.topic == removal.topic == "hullwatch/lab/alarm/leak_rate/v/warning"
    assert (final.retain, removal.retain, removal.payload) == (False, True, b"")
    hatch = t.record(Record(id=1, kind="hatch", time_ns=2_500_000_000, body={"hatch": "h1", "open": 1}), replay=True)
    assert hatch.topic == "hullwatch/lab/hatch/h1/event" and json.loads(hatch.payload) == {
        "time": 2.5,
        "open": True,
        "replay": True,
    }
    spooled = t.record(Record(id=2, kind="sample", time_ns=0, body={"sensor": "fwd", "time": 0.0, "value": 1.0}), False)
    assert spooled.topic == "hullwatch/lab/sensor/fwd" and "sensor" not in json.loads(spooled.payload)
    assert t.status(online=False).retain and t.volume_alarm("v", True).payload == b"ON"


def test_a_spooled_sample_is_cut_from_the_spools_text_not_encoded_again() -> None:
    t = Telemetry(Topics("P"), qos=1)
    body = {"time": 1.5, "quantity": "pressure", "value": 101325.25, "quality": "good", "sensor": 'f"w\u00e9'}
    text = json.dumps(body, separators=(",", ":"))  # as Spool.append makes it, the sensor last
    live = t.record(Record(1, "sample", 0, body, text), replay=False)
    replayed = t.record(Record(1, "sample", 0, body, text), replay=True)
    expected = {k: v for k, v in body.items() if k != "sensor"}
    assert live.topic == 'P/sensor/f"w\u00e9' and live.qos == 1
    assert live.payload == text[: text.index(',"sensor"')].encode() + b"}", "the same bytes, cut"
    assert json.loads(live.payload) == expected
    assert json.loads(replayed.payload) == {**expected, "replay": True}
    moved = {"sensor": "fwd", **expected}  # a text of another order, or none: encoded afresh, same message
    for r in (Record(2, "sample", 0, moved, json.dumps(moved)), Record(2, "sample", 0, moved)):
        assert json.loads(t.record(r, replay=False).payload) == expected

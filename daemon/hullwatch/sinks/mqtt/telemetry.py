"""What the station publishes (ICD §5): every outgoing message built in one place.

Each method of `Telemetry` turns one thing the service hands over (a sample, an estimate, an
alarm record, a spooled record, ...) into a `Message`: its topic (from `hullwatch.topics`), its
JSON or plain payload, its QoS and whether the broker retains it. The sink only decides when and
how to hand a Message to paho; no other code builds a payload for MQTT, so the tests that read
what the daemon publishes check this one path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch.core.model import Estimate, Sample
from hullwatch.sinks.spool import Record
from hullwatch.topics import Topics

VOLUME_ALARM_FLAG = {True: b"ON", False: b"OFF"}  # P/volume/<volume>/alarm: any alarm of it active


@dataclass(frozen=True)
class Message:
    """One MQTT message: where it goes, what it says, how it is delivered."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False


def sample_payload(s: Sample) -> dict:
    """The ICD §5 sensor message of one sample (a spooled sample's body adds the sensor's name)."""
    value = float(s.value)
    return {
        "time": s.time,
        "quantity": getattr(s.quantity, "value", s.quantity),
        "value": value if math.isfinite(value) else None,
        "quality": getattr(s.quality, "value", s.quality),
    }


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN and infinities (which JSON lacks) become null."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()
    except ValueError:
        return json.dumps(finite(obj), separators=(",", ":"), allow_nan=False, default=str).encode()


def finite(obj: Any) -> Any:
    """A copy of a JSON-like value with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


class Telemetry:
    """The messages of one station: its topics, its QoS (samples at most QoS 1)."""

    def __init__(self, topics: Topics, qos: int) -> None:
        self.topics = topics
        self.qos = qos
        self.sample_qos = min(qos, 1)

    def status(self, online: bool) -> Message:
        """`P/status`: `online` or `offline` (also the Last Will), retained."""
        return Message(self.topics.status, b"online" if online else b"offline", self.qos, True)

    def sample(self, s: Sample) -> Message:
        """`P/sensor/<sensor>`: one reading, not retained."""
        return Message(self.topics.sensor(s.sensor), dumps(sample_payload(s)), self.sample_qos)

    def hatch(self, name: str, is_open: bool) -> Message:
        """`P/hatch/<hatch>`: `open` or `closed`, retained."""
        return Message(self.topics.hatch(name), b"open" if is_open else b"closed", self.qos, True)

    def estimate(self, e: Estimate) -> Message:
        """`P/volume/<volume>`: the ICD §4 estimate object, not retained."""
        return Message(self.topics.volume(e.volume), dumps(e.to_dict()), self.qos)

    def alarm(self, record: Mapping[str, Any], alarm: str, source: str, severity: str) -> Message:
        """`P/alarm/<alarm>/<source>/<severity>`: the alarm record, retained."""
        return Message(self.topics.alarm(alarm, source, severity), dumps(dict(record)), self.qos, True)

    def alarm_ending(self, record: Mapping[str, Any], alarm: str, source: str, severity: str) -> list[Message]:
        """An alarm that left the book: its final record (not retained), then the removal of its topic."""
        final = self.alarm(record, alarm, source, severity)
        return [Message(final.topic, final.payload, self.qos), Message(final.topic, b"", self.qos, True)]

    def stale_alarm_ending(self, topic: str, held: bytes, now: float) -> Message | None:
        """The final record of an alarm the broker kept that the station no longer has (a previous run's).

        The kept record, `"state": "cleared"` at `now`, by "restart", not retained: so that live
        subscribers and the bridge see it end. None if the kept payload is no alarm record.
        """
        try:
            record = json.loads(held)
        except (ValueError, RecursionError):
            return None
        if not isinstance(record, dict) or record.get("state") == "cleared":
            return None
        record.update(state="cleared", time=now, by="restart")
        return Message(topic, dumps(record), self.qos)

    def volume_alarm(self, volume: str, active: bool) -> Message:
        """`P/volume/<volume>/alarm`: `ON` while any alarm of the volume is active, else `OFF`; retained."""
        return Message(self.topics.volume_alarm(volume), VOLUME_ALARM_FLAG[active], self.qos, True)

    def metrics(self, obj: Mapping[str, Any]) -> Message:
        """`P/metrics`: the daemon's self-metrics, retained."""
        return Message(self.topics.metrics, dumps(dict(obj)), self.qos, True)

    def extra(self, subtopic: str, obj: Any, retain: bool = False) -> Message:
        """`P/<subtopic>`: any JSON value."""
        return Message(f"{self.topics.prefix}/{subtopic.strip('/')}", dumps(obj), self.qos, retain)

    def discovery(self, topic: str, config: Mapping[str, Any]) -> Message:
        """A Home Assistant discovery config (`discovery.messages`), retained."""
        return Message(topic, dumps(dict(config)), self.qos, True)

    def command_result(self, result: Mapping[str, Any]) -> Message:
        """`P/cmd/result`: a command's outcome, not retained."""
        return Message(self.topics.command_result, dumps(dict(result)), self.qos)

    def record(self, r: Record, replay: bool) -> Message:
        """A spooled record (sample, estimate, step, hatch reading, clock step) as its live message.

        A replayed record carries `"replay": true`; a hatch reading goes to `P/hatch/<hatch>/event`
        with its own time, which the retained `open`/`closed` state cannot carry.
        """
        if r.kind == "sample":
            return Message(self.topics.sensor(r.body["sensor"]), self._spooled_sample(r, replay), self.sample_qos)
        if r.kind == "hatch":
            body = {"time": r.time_ns // 1000 / 1e6, "open": bool(r.body["open"])}
        else:
            body = dict(r.body)
        if replay:
            body["replay"] = True
        if r.kind == "hatch":
            return Message(self.topics.hatch_event(r.body["hatch"]), dumps(body), self.qos)
        if r.kind == "step":
            return Message(self.topics.step(body["volume"]), dumps(body), self.qos)
        if r.kind == "clock_step":
            return Message(self.topics.clock_step, dumps(body), self.qos)
        return Message(self.topics.volume(body["volume"]), dumps(body), self.qos)

    def _spooled_sample(self, r: Record, replay: bool) -> bytes:
        """A spooled sample's message: its body without the sensor's name.

        The spool's text of a sample ends with `,"sensor":<name>}` (the service puts the name last),
        so the message is cut from the text made at append rather than encoded a second time; any
        other text (or none) is encoded afresh.
        """
        tail = ',"sensor":' + json.dumps(r.body["sensor"]) + "}"
        text = r.text
        if text is not None and text.endswith(tail) and "NaN" not in text and "Infinity" not in text:
            return (text[: -len(tail)] + (',"replay":true}' if replay else "}")).encode()
        body = {k: v for k, v in r.body.items() if k != "sensor"}
        if replay:
            body["replay"] = True
        return dumps(body)

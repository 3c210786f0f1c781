"""`hullwatch bridge`: the ground-server side, from the stations' MQTT telemetry into InfluxDB.

Theory of operation
-------------------
A bridge subscribes (MQTT 5, QoS 1, a persistent session) to the ICD §5 topics of one or more
stations — `<root>/<station>/sensor/+`, `volume/+`, `step/+`, `clock_step`, `hatch/+/event`, `alarm/#` and
`metrics` — turns each message into its InfluxDB point, tagged with its station (the sample's
own timestamp wherever the payload has one), and writes it to InfluxDB through the same spool
and sink as the daemon. The point's line protocol is made once, here, where the message is
checked: the spool keeps that text as a `line` record and the InfluxDB sink sends it as it is
(`to_lines`; the same text the sink makes of the record `to_record` describes).

Hatches are stored from `hatch/<hatch>/event` (`{"time", "open"}`), never from the retained
`hatch/<hatch>` state, which carries no time: a station re-sends that state at every
reconnect, and stamping each copy with its arrival would store a hatch operation that never
happened. Alarms are stored from every record on `alarm/...`; the final record of an alarm
that left the station's book (`"state": "cleared"`, published just before the empty retained
message that removes the topic) is how an acknowledged alarm's clearing reaches InfluxDB. The
empty message itself stores nothing. A message is acknowledged to the broker (manual PUBACK) only once its record is
committed to the spool file, so a bridge killed at any moment loses nothing: the broker sends
again what was not acknowledged.

Several bridges with the same `share_group` subscribe through MQTT 5 shared subscriptions
(`$share/<group>/...`): the broker hands each message to one of them, so a fleet scales out by
starting more bridges. InfluxDB overwrites a point with the same series and timestamp, so a
message delivered twice (after a reconnect) is still one point.

A message that cannot be stored — not UTF-8 or not JSON, a time that is not a number or out
of the range InfluxDB and the spool can hold (`1e12` is a time in milliseconds, year 33658),
a field of the wrong type, a missing key — is set aside before its PUBACK: kept in the
spool's `rejected` table (sink `bridge`, the first SET_ASIDE_MAX of a run, payloads cut at
SET_ASIDE_BYTES), counted per kind of problem (`unstorable`, and the spool's
`rejected.bridge`), and logged at WARNING once per kind, then at most every WARN_EVERY_S with
the count since. It never reaches the spool's transaction, so it can never fail a commit.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import Counter
from typing import Any

from hullwatch.config import BridgeConfig
from hullwatch.mqtt5 import Message, Subscriber
from hullwatch.sinks.influx import ESTIMATE_FIELDS, InfluxSink, sample_line, to_line
from hullwatch.sinks.mqtt import apply_credentials
from hullwatch.sinks.spool import Record, Spool, time_ns
from hullwatch.topics import Kind, Topic, parse, subscription

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600  # the broker keeps our queue this long while the bridge is away
RECEIVE_MAXIMUM = 65535  # unacknowledged messages the broker may have out to us (MQTT 5's largest)
STORED = (Kind.SENSOR, Kind.VOLUME, Kind.STEP, Kind.CLOCK_STEP, Kind.HATCH_EVENT, Kind.ALARM, Kind.METRICS)
TOPICS = tuple(subscription(kind) for kind in STORED)  # below each station's prefix
# The telemetry kinds whose malformed topics are set aside (a wrong number of levels), with why.
_SHAPES = {
    "sensor": "sensor topics have 1 level(s) after 'sensor/'",
    "volume": "volume topics have 1 level(s) after 'volume/'",
    "step": "step topics have 1 level(s) after 'step/'",
    "hatch": "hatch topics are hatch/<hatch> and hatch/<hatch>/event",
    "alarm": "alarm topics have 3 level(s) after 'alarm/'",
}
TOPICS_CACHED = 65536  # parsed topics kept (a fleet of 1000 stations x 60 topics fits)
SET_ASIDE_MAX = 1000  # unstorable messages kept per run (all are counted)
SET_ASIDE_BYTES = 4096  # of each one's payload
WARN_EVERY_S = 60.0  # at most one warning per kind of problem this often
LIVE_INTERVAL_S = 0.25  # the fleet's new lines go to InfluxDB 4 times a second (a station's own sink: once)


class Unstorable(ValueError):
    """A message the bridge cannot store; `kind` names the problem (not_utf8, not_json, bad_time, bad_field, ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _number(obj: dict, key: str) -> None:
    """Unstorable unless obj[key] is absent, null or a number (NaN and infinities are kept as missing values)."""
    v = obj.get(key)
    if v is None:
        return
    try:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError
        float(v)
    except (TypeError, OverflowError):
        raise Unstorable("bad_field", f"{key} must be a number or null, not {v!r:.60}") from None


def _string(obj: dict, key: str, required: bool = False) -> None:
    """Unstorable unless obj[key] is a non-empty string (or, when not required, absent or null)."""
    v = obj.get(key)
    if v is None and not required:
        return
    if key not in obj:
        raise Unstorable("bad_field", f"{key} is missing")
    if not isinstance(v, str) or not v:
        raise Unstorable("bad_field", f"{key} must be a non-empty string, not {v!r:.60}")


def message_time(obj: dict, received: float) -> float:
    """The message's `time` (the time it was received when it has none), if the spool and InfluxDB can hold it."""
    v = obj.get("time", received)
    try:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError
        t = float(v)
        if not -(2**63) < time_ns(t) < 2**63:  # nanoseconds in a signed 64-bit integer: years 1677..2262
            raise ValueError
    except (ValueError, OverflowError):
        raise Unstorable("bad_time", f"time {v!r:.60} is not an epoch time in seconds that can be stored") from None
    return t


_scan_json = json.JSONDecoder().scan_once  # one JSON value from a position: json.loads without its Python layers


def _json_object(payload: bytes) -> dict:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unstorable("not_utf8", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj, end = _scan_json(text, 0)  # a station's message: one value, no whitespace around it
        if end != len(text):
            raise ValueError("more after the value")
    except (StopIteration, ValueError, RecursionError):
        try:  # anything else: json.loads decides, and says why not
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise Unstorable("not_json", f"payload is not JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise Unstorable("not_object", f"payload must be a JSON object, not {type(obj).__name__}")
    return obj


@functools.lru_cache(maxsize=TOPICS_CACHED)
def station_topic(topic: str, root: str) -> tuple[str, Topic | None]:
    """(station, parsed topic) of `<root>/<station>/...`; the topic is None when it is none of ICD §5.

    Raises Unstorable for a telemetry topic with the wrong number of levels. Cached: a fleet
    sends the same few thousand topics over and over.
    """
    if not topic.startswith(root + "/"):
        return "", None
    station, _, sub = topic[len(root) + 1 :].partition("/")
    parsed = parse(sub)
    what, _, rest = sub.partition("/")
    if parsed is None and rest and what in _SHAPES:
        raise Unstorable("bad_topic", _SHAPES[what])
    return station, parsed


def _sample_fields(obj: dict) -> tuple[str, Any, str]:
    """A sensor message's quantity, value and quality; Unstorable if one is missing or of the wrong type."""
    _string(obj, "quantity", required=True)
    _string(obj, "quality", required=True)
    if "value" not in obj:
        raise Unstorable("bad_field", "value is missing")
    _number(obj, "value")
    return obj["quantity"], obj["value"], obj["quality"]


def to_record(topic: str, payload: bytes, root: str, received: float) -> tuple[str, float, dict] | None:
    """A station's message as (kind, time, body) for the spool; None for what is not telemetry.

    Raises Unstorable for a telemetry message that cannot be stored.
    """
    station, parsed = station_topic(topic, root)
    if parsed is None:
        return None
    kind, names = parsed.kind, parsed.names
    if kind is Kind.CLOCK_STEP:
        obj = _json_object(payload)
        _number(obj, "step_s")
        if obj.get("step_s") is None:
            raise Unstorable("bad_field", "step_s is missing")
        return "clock_step", message_time(obj, received), {"station": station, "step_s": obj["step_s"]}
    if kind not in (Kind.SENSOR, Kind.VOLUME, Kind.STEP, Kind.HATCH_EVENT, Kind.ALARM):
        return None  # the retained hatch state has no time of its own (hatches are stored from their events)
    if kind is Kind.ALARM and not payload:
        return None  # a removed alarm: its transitions are already stored
    obj = _json_object(payload)
    obj.pop("replay", None)
    t = message_time(obj, received)
    if kind is Kind.SENSOR:
        quantity, value, quality = _sample_fields(obj)
        return "sample", t, {"station": station, "sensor": names[0], "quantity": quantity, "value": value,
                             "quality": quality}  # fmt: skip
    if kind is Kind.VOLUME:
        for _, key in ESTIMATE_FIELDS:
            _number(obj, key)
        return "estimate", t, {**obj, "station": station, "volume": names[0]}
    if kind is Kind.HATCH_EVENT:
        if "time" not in obj:
            raise Unstorable("bad_time", "a hatch event needs its time")
        if not isinstance(obj.get("open"), bool):
            raise Unstorable("bad_field", f"open must be true or false, not {obj.get('open')!r:.60}")
        return "hatch", t, {"station": station, "hatch": names[0], "open": obj["open"]}
    if kind is Kind.STEP:
        _number(obj, "size_pa")
        _string(obj, "sensor")
        body = {k: obj[k] for k in ("size_pa", "sensor") if obj.get(k) is not None}
        return "step", t, {**body, "station": station, "volume": names[0]}
    alarm, source, severity = names
    _string(obj, "state")
    _string(obj, "reason")
    _number(obj, "value")
    _number(obj, "threshold")
    body = {"alarm": alarm, "source": source, "severity": severity, "state": obj.get("state") or "active"}
    body |= {k: obj[k] for k in ("value", "threshold", "reason") if obj.get(k) is not None}
    return "alarm", t, {"station": station, **body}


def to_lines(topic: str, payload: bytes, root: str, received: float) -> list[tuple[float, bytes]] | None:
    """A station's message as its InfluxDB lines, (time, line) each, for the spool; None for what is not telemetry.

    The same points the InfluxDB sink makes of `to_record`'s (or `metric_records`') records. A
    sample (most of a fleet's messages) goes straight to its line. Raises Unstorable for a
    telemetry message that cannot be stored.
    """
    station, parsed = station_topic(topic, root)
    if parsed is not None and parsed.kind is Kind.SENSOR:
        obj = _json_object(payload)
        t = message_time(obj, received)
        quantity, value, quality = _sample_fields(obj)
        return [(t, _encoded(sample_line(station, parsed.names[0], quantity, value, quality, time_ns(t))))]
    if parsed is not None and parsed.kind is Kind.METRICS:
        records = [("metric", t, body) for t, body in metric_records(station, _json_object(payload), received)]
    else:
        record = to_record(topic, payload, root, received)
        if record is None:
            return None
        records = [record]
    out = []
    for kind, t, body in records:
        try:
            line = to_line(Record(0, kind, time_ns(t), body), station)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise Unstorable("bad_field", f"cannot be written as a point: {exc!r:.80}") from None
        if line:  # none when nothing is left to write (e.g. every number of an estimate missing)
            out.append((t, _encoded(line)))
    return out


def _encoded(line: str) -> bytes:
    try:
        return line.encode()
    except UnicodeEncodeError:  # a JSON escape of half a surrogate pair
        raise Unstorable("bad_field", f"not valid Unicode text: {line!r:.80}") from None


def metric_records(station: str, obj: dict[str, Any], received: float) -> list[tuple[float, dict]]:
    """A station's `metrics` message as metric records (spool, sink and sensor health, detection limits).

    Raises Unstorable if it is malformed.
    """
    t = message_time(obj, received)
    out = []
    if obj.get("spool") is not None:
        if not isinstance(obj["spool"], dict):
            raise Unstorable("bad_field", f"spool must be an object, not {obj['spool']!r:.60}")
        out.append((t, {"station": station, "measurement": "spool", "fields": obj["spool"]}))
    groups = (("sink", "sinks", "sink"), ("sensor_health", "sensors", "sensor"), ("detection", "detection", "volume"))
    for measurement, key, tag in groups:
        group = obj.get(key) or {}
        if not isinstance(group, dict) or not all(isinstance(f, dict) for f in group.values()):
            raise Unstorable("bad_field", f"{key} must map names to objects, not {group!r:.60}")
        for name, fields in group.items():
            out.append((t, {"station": station, "measurement": measurement, "tags": {tag: name}, "fields": fields}))
    return out


class Bridge:
    """Subscribes to the stations, spools what arrives, and acknowledges it once committed."""

    def __init__(self, cfg: BridgeConfig, spool: Spool | None = None) -> None:
        self.cfg = cfg
        self.root = cfg.topic_root.strip("/")
        s = cfg.spool
        self.spool = spool or Spool(s.path, s.max_mb, s.commit_interval_s, s.replay_per_s)
        self.sink = InfluxSink(cfg.influxdb, station="")
        self.sink.live_interval_s = LIVE_INTERVAL_S  # InfluxDB a quarter of a second behind, not up to a second
        self.client_id = cfg.client_id or f"hullwatch-bridge-{uuid.uuid4().hex[:8]}"
        self._unacked: list[tuple[int, int, int]] = []  # (last record id, packet id, connection), oldest first
        self._lock = threading.Lock()
        self.received = 0  # telemetry messages taken (spooled, or with no point to write)
        self.ignored = 0  # not telemetry (e.g. a removed alarm)
        self.unstorable: Counter[str] = Counter()  # set aside, per kind of problem
        self._kept = 0  # of them in the spool's rejected table
        self._warned: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, how many since)
        qos = min(cfg.mqtt.qos, 1) or 1
        self.client = Subscriber(self.client_id, self.subscriptions(), qos, self._on_messages,
                                 keepalive_s=cfg.mqtt.keepalive_s, session_expiry_s=SESSION_EXPIRY_S,
                                 receive_maximum=RECEIVE_MAXIMUM)  # fmt: skip
        self.client.on_connect = self._on_connect
        apply_credentials(self.client, cfg.mqtt)  # MqttSetupError names the key

    def subscriptions(self) -> list[str]:
        """The topic filters, shared when a group is set."""
        share = f"$share/{self.cfg.share_group}/" if self.cfg.share_group else ""
        return [f"{share}{self.root}/{station}/{t}" for station in self.cfg.stations for t in TOPICS]

    def start(self) -> None:
        """Start the spool (its commits acknowledge messages) and connect in the background."""
        self.spool.on_commit = self._acknowledge
        self.spool.start([self.sink])
        m = self.cfg.mqtt
        self.client.start(m.host, m.port)
        log.info("bridge %s: %s:%d -> %s", self.client_id, m.host, m.port, self.cfg.influxdb.url)

    def stop(self) -> None:
        """Disconnect (the session stays on the broker) and close the spool."""
        self.client.stop()
        self.spool.close(drain_s=2.0)
        self.sink.close()
        if self.unstorable:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.unstorable.items()))
            total = self.unstorable.total()
            log.warning("bridge: %d message(s) could not be stored and were set aside (%s)", total, kinds)

    def _on_connect(self, session_present: bool) -> None:
        log.info("bridge: connected (%s session); %s", "resumed" if session_present else "new",
                 ", ".join(self.subscriptions()))  # fmt: skip

    def _on_messages(self, messages: list[Message]) -> None:
        """Spool a batch of messages (one read's worth); each is acknowledged once its records are committed."""
        now = time.time()
        lines: list[tuple[float, bytes]] = []
        for msg in messages:
            try:
                self._take(msg.topic, msg.payload, now, lines)
            except Unstorable as exc:
                self._set_aside(msg.topic, msg.payload, now, exc.kind, str(exc))
            except Exception as exc:  # never kills the connection's thread
                self._set_aside(msg.topic, msg.payload, now, "internal", f"{type(exc).__name__}: {exc}")
        self.spool.extend("line", lines)  # in one go: one taking of the spool's lock, one wake-up of the forwarder
        with self._lock:  # acknowledged once everything spooled so far is committed
            last = self.spool.last_id
            self._unacked += [(last, m.packet_id, m.connection) for m in messages if m.qos]

    def _take(self, topic: str, payload: bytes, now: float, lines: list[tuple[float, bytes]]) -> None:
        """Add a message's lines to the batch's."""
        got = to_lines(topic, payload, self.root, now)
        if got is None:
            self.ignored += 1
            return
        lines += got
        self.received += 1

    def _set_aside(self, topic: str, payload: bytes, now: float, kind: str, reason: str) -> None:
        """Count a message that cannot be stored, keep it in the spool's rejected table, warn once per kind."""
        self.unstorable[kind] += 1
        if self._kept < SET_ASIDE_MAX:
            body = {"topic": topic, "payload": payload[:SET_ASIDE_BYTES].decode("utf-8", "replace")}
            try:
                self.spool.reject("bridge", [Record(0, "message", time_ns(now), body)], {0: reason}, quiet=True)
                self._kept += 1
            except sqlite3.Error as exc:
                reason += f" (not kept: {exc})"
            if self._kept == SET_ASIDE_MAX:
                log.warning("bridge: %d messages set aside; further ones are only counted", SET_ASIDE_MAX)
        mono = time.monotonic()
        last, since = self._warned.get(kind, (-math.inf, 0))
        if mono - last < WARN_EVERY_S:
            self._warned[kind] = (last, since + 1)
            return
        more = f" ({since} more of this kind since the last warning)" if since else ""
        log.warning("bridge: set aside a message on %s (%s): %s%s", topic, kind, reason, more)
        self._warned[kind] = (mono, 0)

    def _acknowledge(self, committed_id: int) -> None:
        """PUBACK every message whose records are now in the spool file, one write per connection."""
        with self._lock:
            n = 0
            while n < len(self._unacked) and self._unacked[n][0] <= committed_id:
                n += 1
            done, self._unacked = self._unacked[:n], self._unacked[n:]
        by_connection: dict[int, list[int]] = {}
        for _, packet_id, connection in done:
            by_connection.setdefault(connection, []).append(packet_id)
        for connection, packet_ids in by_connection.items():
            self.client.ack(packet_ids, connection)


def run(cfg: BridgeConfig, stop: threading.Event) -> None:
    """Bridge until stop is set."""
    bridge = Bridge(cfg)
    bridge.start()
    try:
        stop.wait()
    finally:
        bridge.stop()

"""What `hullwatch watch` knows about a station: MQTT messages in (ICD §5), plain data out.

Pure: no paho, no Textual, no clock. Each message comes with the time it arrived, and each
question about age or staleness comes with the time it is asked, so the tests are tables of
(topic, payload) pairs. A payload that does not have the shape of ICD §5 is counted in
`malformed` and otherwise ignored; nothing a broker delivers can raise out of `apply`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch.core import alarm_kinds
from hullwatch.topics import SEVERITIES, Kind, Topics, parse

ROOT = "hullwatch"  # the first level of the default prefix, hullwatch/<station>
SENSOR_QUIET_S = 10.0
VOLUME_STALE_S = 30.0
RESULT_SHOWN_S = 15.0
OLDEST_UNSENT_WORRY_S = 60.0  # a spool record waiting longer than this is worth a look

AlarmKey = tuple[str, str, str]  # (alarm, source, severity)


@dataclass(frozen=True)
class AlarmView:
    """One retained `P/alarm/<alarm>/<source>/<severity>` record."""

    alarm: str
    source: str
    severity: str
    active: bool  # the condition holds ("state": "active")
    acknowledged: bool
    lifecycle: str  # the daemon's lifecycle name (unack, acked, rtn_unack, ...), or "" if absent
    value: float | None
    threshold: float | None
    since: float | None  # the record's "time": when the condition last changed
    reason: str
    latched: bool
    shelved_until: float | None
    suppressed: bool

    @property
    def key(self) -> AlarmKey:
        """(alarm, source, severity), as the topic and the ack command name it."""
        return (self.alarm, self.source, self.severity)

    @property
    def rank(self) -> int:
        """Severity as a number, 3 for emergency; -1 for a name outside ICD §4."""
        return SEVERITIES.index(self.severity) if self.severity in SEVERITIES else -1

    @property
    def state_label(self) -> str:
        """A short word for the lifecycle: UNACK, acked, RTN unack, latched, shelved, ..."""
        if self.lifecycle == "shelved" or self.shelved_until is not None:
            return "shelved"
        if self.lifecycle == "suppressed" or self.suppressed:
            return "suppressed"
        if not self.acknowledged:
            if self.lifecycle == "latched_unack":
                return "LATCHED"
            return "UNACK" if self.active else "RTN unack"
        if self.latched or self.lifecycle == "latched_acked":
            return "latched"
        return "acked" if self.active else "cleared"


@dataclass(frozen=True)
class VolumeView:
    """The latest `P/volume/<volume>` estimate (ICD §4)."""

    volume: str
    pressure_pa: float | None
    mass_kg: float | None
    leak_kg_per_day: float | None
    leak_kg_per_day_sigma: float | None
    reserve_time_s: float | None
    window_s: float | None
    time: float | None
    received: float


@dataclass(frozen=True)
class SensorView:
    """The latest `P/sensor/<sensor>` reading of one quantity."""

    sensor: str
    quantity: str
    value: float | None
    quality: str
    time: float | None
    received: float

    def age(self, now: float) -> float:
        """Seconds since it arrived."""
        return max(0.0, now - self.received)

    def attention(self, now: float, quiet_s: float = SENSOR_QUIET_S) -> bool:
        """Whether it deserves a look: quality not good, no value, or gone quiet."""
        return self.quality != "good" or self.value is None or self.age(now) > quiet_s


class Malformed(ValueError):
    """A payload that does not have the shape ICD §5 gives its topic."""


class StationState:
    """Everything known about the station under `prefix`, from the messages applied so far."""

    def __init__(self, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.prefix = self.topics.prefix
        self.status: str | None = None  # "online", "offline", or None before P/status arrives
        self.alarms: dict[AlarmKey, AlarmView] = {}
        self.volumes: dict[str, VolumeView] = {}
        self.volume_alarm: dict[str, bool] = {}  # P/volume/<volume>/alarm: ON while any alarm is active
        self.hatches: dict[str, str] = {}
        self.sensors: dict[tuple[str, str], SensorView] = {}
        self.extras: dict[str, dict[str, Any]] = {}  # P/metrics (the daemon's self-metrics), P/metrics/..., P/spool
        self.extras_at: float | None = None  # when the latest of them arrived
        self.result: dict[str, Any] | None = None  # the latest P/cmd/result
        self.result_at: float | None = None
        self.last_message: float | None = None
        self.messages = 0
        self.malformed = 0
        self.ignored = 0
        self.last_problem = ""

    @property
    def station(self) -> str:
        """The station's name: the last level of the prefix (hullwatch/<station>)."""
        return self.prefix.rsplit("/", 1)[-1]

    # -- messages in --------------------------------------------------------------------------

    def apply(self, topic: str, payload: bytes, now: float) -> bool:
        """Take one message; False if it was not for this station, or was ignored or malformed."""
        subtopic = self.topics.subtopic(topic)
        if subtopic is None:
            return False
        self.messages += 1
        self.last_message = now
        try:
            ok = self._apply(subtopic, bytes(payload), now)
        except Malformed as exc:
            self.malformed += 1
            self.last_problem = f"{subtopic}: {exc}"
            return False
        except Exception as exc:  # a payload shape no rule foresaw: still never the view's end
            self.malformed += 1
            self.last_problem = f"{subtopic}: {type(exc).__name__}: {exc}"
            return False
        if not ok:
            self.ignored += 1
        return ok

    def _apply(self, subtopic: str, raw: bytes, now: float) -> bool:
        topic = parse(subtopic)
        kind, names = (topic.kind, topic.names) if topic is not None else (None, ())
        if kind is Kind.STATUS:
            text = _text(raw)
            if text not in ("", "online", "offline"):
                raise Malformed(f"status {text[:20]!r} is neither online nor offline")
            self.status = text or None
        elif kind is Kind.ALARM:
            key = (names[0], names[1], names[2])
            if raw.strip():
                self.alarms[key] = _alarm(key, _object(raw))
            else:
                self.alarms.pop(key, None)
        elif kind is Kind.VOLUME:
            if raw:  # a retained clear of a topic that should not be retained: nothing to show
                volume = _volume(names[0], _object(raw), now)
                segments = set(volume.volume.split("-"))
                for other in [v for v in self.volumes if v != volume.volume and segments & set(v.split("-"))]:
                    del self.volumes[other]  # a segment is in one volume at a time: that one was re-formed
                self.volumes[volume.volume] = volume
        elif kind is Kind.VOLUME_ALARM:
            text = _text(raw).upper()
            if text not in ("", "ON", "OFF"):
                raise Malformed(f"volume alarm flag {text[:20]!r} is neither ON nor OFF")
            if text:
                self.volume_alarm[names[0]] = text == "ON"
            else:
                self.volume_alarm.pop(names[0], None)
        elif kind is Kind.HATCH:
            text = _text(raw).lower()
            if text not in ("", "open", "closed"):
                raise Malformed(f"hatch state {text[:20]!r} is neither open nor closed")
            if text:
                self.hatches[names[0]] = text
            else:
                self.hatches.pop(names[0], None)
        elif kind is Kind.SENSOR:
            reading = _sensor(names[0], _object(raw), now)
            self.sensors[(reading.sensor, reading.quantity)] = reading
        elif kind is Kind.COMMAND_RESULT:
            self.result = _object(raw)
            self.result_at = now
        elif kind is Kind.METRICS or _extra(subtopic):
            if raw.strip():
                self.extras[subtopic] = _object(raw)
                self.extras_at = now
            else:
                self.extras.pop(subtopic, None)
        else:  # commands (ours included), hatch events, steps, Home Assistant helpers, anything newer than this view
            return False
        return True

    def forget_retained(self) -> None:
        """Drop what the broker re-sends on a new subscription (alarms, hatches, status, extras)."""
        self.status = None
        self.alarms.clear()
        self.hatches.clear()
        self.volume_alarm.clear()
        self.extras.clear()
        self.extras_at = None

    # -- questions out ------------------------------------------------------------------------

    def sorted_alarms(self) -> list[AlarmView]:
        """Emergency first; within a severity the unacknowledged, then the active, then the newest."""
        return sorted(
            self.alarms.values(),
            key=lambda a: (-a.rank, a.acknowledged, not a.active, -(a.since or 0.0), a.alarm, a.source),
        )

    def unacknowledged(self) -> int:
        """How many alarms wait for an acknowledgement."""
        return sum(1 for a in self.alarms.values() if not a.acknowledged)

    def recent_result(self, now: float, shown_s: float = RESULT_SHOWN_S) -> dict[str, Any] | None:
        """The latest command result, if it arrived within `shown_s`."""
        if self.result is None or self.result_at is None or now - self.result_at > shown_s:
            return None
        return self.result


class Stations:
    """Routes messages to one StationState per prefix; with no prefix, finds `hullwatch/<station>` ones."""

    def __init__(self, prefix: str | None = None) -> None:
        self.fixed = prefix.rstrip("/") if prefix else None
        self.states: dict[str, StationState] = {}
        self.selected: str | None = None
        if self.fixed:
            self._add(self.fixed)

    @property
    def subscription(self) -> str:
        """The topic filter that covers every station this router takes."""
        return f"{self.fixed}/#" if self.fixed else f"{ROOT}/+/#"

    @property
    def current(self) -> StationState | None:
        """The station on screen."""
        return self.states.get(self.selected) if self.selected else None

    def apply(self, topic: str, payload: bytes, now: float) -> StationState | None:
        """Hand a message to its station (created on first sight); the station, or None if it has none."""
        if self.fixed:
            prefix = self.fixed
        else:
            parts = topic.split("/", 2)
            if len(parts) < 3 or parts[0] != ROOT or not parts[1]:
                return None
            prefix = f"{ROOT}/{parts[1]}"
        if not topic.startswith(prefix + "/"):
            return None
        state = self.states.get(prefix) or self._add(prefix)
        state.apply(topic, payload, now)
        return state

    def next(self) -> StationState | None:
        """Put the next station (in order of first sight) on screen."""
        names = list(self.states)
        if names:
            i = names.index(self.selected) if self.selected in names else -1
            self.selected = names[(i + 1) % len(names)]
        return self.current

    def forget_retained(self) -> None:
        """A new subscription: every station's retained state is about to be sent again."""
        for s in self.states.values():
            s.forget_retained()

    def _add(self, prefix: str) -> StationState:
        state = self.states[prefix] = StationState(prefix)
        if self.selected is None:
            self.selected = prefix
        return state


# -- payload shapes ---------------------------------------------------------------------------


def _extra(subtopic: str) -> bool:
    """Self-metrics beyond ICD §5 that the view shows as they are: P/metrics/..., P/spool, P/spool/<name>."""
    head, _, rest = subtopic.partition("/")
    return head == "metrics" or (head == "spool" and "/" not in rest)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Malformed("not UTF-8") from None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(_text(raw))
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if not isinstance(obj, dict):
        raise Malformed(f"a JSON {type(obj).__name__}, not an object")
    return obj


def _num(obj: Mapping[str, Any], key: str) -> float | None:
    """A numeric field: None when absent, null or not finite; Malformed for another type."""
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Malformed(f'"{key}" is not a number')
    v = float(v)
    return v if math.isfinite(v) else None


def _str(obj: Mapping[str, Any], key: str, default: str) -> str:
    v = obj.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise Malformed(f'"{key}" is not a string')
    return v


def _bool(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise Malformed(f'"{key}" is not true or false')
    return v


def _alarm(key: AlarmKey, obj: dict[str, Any]) -> AlarmView:
    alarm, source, severity = key
    return AlarmView(
        alarm=alarm,
        source=source,
        severity=severity,
        active=_str(obj, "state", "active") != "cleared",
        acknowledged=_bool(obj, "acknowledged", False),  # absent: ask for attention rather than hide it
        lifecycle=_str(obj, "lifecycle", ""),
        value=_num(obj, "value"),
        threshold=_num(obj, "threshold"),
        since=_num(obj, "time"),
        reason=_str(obj, "reason", ""),
        latched=_bool(obj, "latched", False),
        shelved_until=_num(obj, "shelved_until"),
        suppressed=_bool(obj, "suppressed", False),
    )


def _volume(volume: str, obj: dict[str, Any], now: float) -> VolumeView:
    return VolumeView(
        volume=volume,
        pressure_pa=_num(obj, "pressure_pa"),
        mass_kg=_num(obj, "mass_kg"),
        leak_kg_per_day=_num(obj, "leak_kg_per_day"),
        leak_kg_per_day_sigma=_num(obj, "leak_kg_per_day_sigma"),
        reserve_time_s=_num(obj, "reserve_time_s"),
        window_s=_num(obj, "window_s"),
        time=_num(obj, "time"),
        received=now,
    )


def _sensor(sensor: str, obj: dict[str, Any], now: float) -> SensorView:
    if "value" not in obj:
        raise Malformed('no "value"')
    return SensorView(
        sensor=sensor,
        quantity=_str(obj, "quantity", "pressure"),
        value=_num(obj, "value"),
        quality=_str(obj, "quality", "good"),
        time=_num(obj, "time"),
        received=now,
    )


def _flatten(obj: Mapping[str, Any], head: str = "") -> Iterable[tuple[str, Any]]:
    """Nested objects as dotted keys: {"a": {"b": 1}} -> ("a.b", 1)."""
    for k, v in obj.items():
        name = f"{head}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


# -- text for people --------------------------------------------------------------------------

SHORT_UNITS = {"kg/day": ("kg/d", 1.0), "Pa": ("kPa", 1000.0)}  # an alarm's unit -> (shown, divided by)


def span(seconds: float | None) -> str:
    """A duration in a few characters, rounded down: 45 s, 9:59 min, 12 min, 3.5 h, 12 d; '—' for none."""
    if seconds is None:
        return "—"
    s = max(0, math.floor(seconds))
    if s < 120:
        return f"{s} s"
    if s < 600:
        return f"{s // 60}:{s % 60:02d} min"
    if s < 7200:
        return f"{s // 60} min"
    if s < 4 * 86400:
        return f"{s // 360 / 10:.1f} h"
    if s < 1000 * 86400:
        return f"{s // 86400} d"
    return "> 999 d"


def clock(t: float | None, now: float | None = None) -> str:
    """A time of day (local), with the date when it is not today."""
    if t is None:
        return "—"
    lt = time.localtime(t)
    if now is not None and time.localtime(now)[:3] != lt[:3]:
        return time.strftime("%m-%d %H:%M", lt)
    return time.strftime("%H:%M:%S", lt)


def alarm_values(a: AlarmView) -> str:
    """value / threshold with the unit, e.g. `0.97 / 0.9 kg/d`; a sensor fault shows its reason."""
    unit = alarm_kinds.unit_of(a.alarm)
    if unit == "s":
        return f"{span(a.value)} / {span(a.threshold)}"
    if a.value is None and a.threshold is None:
        return a.reason or "—"
    unit, scale = SHORT_UNITS.get(unit, (unit, 1.0))

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x / scale:.4g}"

    return f"{num(a.value)} / {num(a.threshold)} {unit}".rstrip()


def sensor_value(s: SensorView) -> str:
    """A reading with its unit: pressure in kPa, temperature in K."""
    if s.value is None:
        return "—"
    if s.quantity == "pressure":
        return f"{s.value / 1000:.3f} kPa"
    if s.quantity == "temperature":
        return f"{s.value:.2f} K"
    return f"{s.value:.6g}"


def leak(v: VolumeView) -> str:
    """The leak rate and its σ, e.g. `0.452 ± 0.031`; '…' until the estimator has one."""
    if v.leak_kg_per_day is None:
        return "…"
    sigma = "" if v.leak_kg_per_day_sigma is None else f" ± {v.leak_kg_per_day_sigma:.2g}"
    return f"{v.leak_kg_per_day:.3f}{sigma}"


def health_rows(obj: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """A self-metrics object as (label, text, worth a look) rows.

    The daemon's `P/metrics` ({"spool": {...}, "sinks": {name: {...}}, ...}) comes out as a
    row for the spool (and for old or dropped records when there are), one per sink and one
    for rejected records; any other object as its dotted key/values.
    """
    try:
        spool = obj.get("spool")
        if (isinstance(spool, Mapping) and "depth" in spool) or isinstance(obj.get("sinks"), Mapping):
            return _daemon_health(obj)
    except (TypeError, ValueError, AttributeError):  # a shape this view does not know: show it raw
        pass
    return [(k, compact(v), False) for k, v in _flatten(obj) if k != "time"]


def _daemon_health(obj: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    rows: list[tuple[str, str, bool]] = []
    spool = obj.get("spool")
    if isinstance(spool, Mapping):
        text = f"{_or_unknown(_count(spool.get('depth')))} queued"
        size = _count(spool.get("size_bytes"))
        if size is not None:
            text += f", {size / 1024:.0f} KiB" if size < 1 << 20 else f", {size / (1 << 20):.1f} MiB"
        rows.append(("spool", text, False))
        oldest = _count(spool.get("oldest_unsent_s"))
        if oldest is not None and oldest >= OLDEST_UNSENT_WORRY_S:
            rows.append(("oldest", f"{span(oldest)} unsent", True))
        dropped = _count(spool.get("dropped"))
        if dropped:
            rows.append(("dropped", f"{dropped} records", True))
    sinks = obj.get("sinks")
    rejected = []
    for name, sink in sorted(sinks.items()) if isinstance(sinks, Mapping) else ():
        if not isinstance(sink, Mapping):
            continue
        up = sink.get("connected") is True
        rows.append((str(name), f"{'up' if up else 'DOWN'}, {_or_unknown(_count(sink.get('backlog')))} behind", not up))
        if _count(sink.get("rejected")):
            rejected.append(f"{name} {_count(sink.get('rejected'))}")
    if rejected:
        rows.append(("rejected", ", ".join(rejected), False))
    return rows


def _count(v: Any) -> int | None:
    """An integer counter, or None when it is not one."""
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _or_unknown(n: int | None) -> str:
    return "?" if n is None else str(n)


def compact(value: Any) -> str:
    """A metric's value in a few characters."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(compact(v) for v in value)
    return str(value)


def result_text(result: Mapping[str, Any]) -> str:
    """A command result (P/cmd/result) in one line."""
    command = result.get("command", "?")
    ok = result.get("ok") is True
    message = result.get("message") or result.get("error") or ""
    return f"{command}: {'ok' if ok else 'refused'}" + (f" — {message}" if message else "")

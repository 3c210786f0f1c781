"""The MQTT sink (ICD §5): a thin, non-blocking adapter between the service and a broker.

Theory of operation
-------------------
paho-mqtt runs the connection in a thread of its own (`loop_start`). The service calls the
publishing methods (`sample`, `hatch`, `estimate`, `alarm`, ...) from its threads; each call
serialises one message and hands it to paho, which only appends it to a queue and wakes its
thread, so no call ever waits for the network. Every public method and every paho callback is
wrapped so that no exception escapes: a bug or a bad payload is logged (rate-limited), never
allowed to kill paho's thread or the caller's loop.

Connection. `start()` reads the password file (a password without a user name logs in as the
station: the shipped broker ACL confines user `<station>` to `hullwatch/<station>/` and
`homeassistant/+/<station>/+/config`), sets up TLS, sets the Last Will (`P/status` =
`offline`, retained) and connects asynchronously; paho retries forever, every 1 s then 2 s
(`reconnect_delay_set(1, 2)`): a refused connect to a LAN broker costs nothing, and 2 s is the
longest a restarted broker waits for us. Failures are logged at most once a minute per kind.
`stop()` publishes `offline` itself (a clean disconnect sends no will) and disconnects.

Retained state. The sink keeps the latest retained payload of every topic it has published
(`hatch`, `alarm`, `volume_alarm`, discovery, retained extras); an empty payload deletes the
entry. On every (re)connect it publishes `online`, subscribes to `P/cmd/#` and, when the
broker's SUBACK arrives, publishes that whole snapshot again, so a broker that restarted
without persistence has the retained state back. The snapshot is sent after the SUBACK on
purpose: by then paho has re-sent the QoS>0 messages it held over from the last connection,
so the snapshot (the newest values) is what the broker keeps. While disconnected, retained
messages only update the snapshot (and deletions are remembered as tombstones) instead of
filling paho's queue with stale values.

Reconciliation. The same SUBSCRIBE also reads back what the broker keeps of this station's
retained state: `P/alarm/#`, `P/volume/+/alarm` and its Home Assistant discovery topics
(`<discovery_prefix>/+/<station>/+/config`, at QoS 0). The broker hands these over with the
retain flag right behind the SUBACK; each is compared with the snapshot as it arrives, so
nothing waits for them and no deadline is needed. A topic the snapshot lacks (an alarm of a
previous run, a volume or an entity that no longer exists, discovery while Home Assistant is
off) is removed with an empty retained message; a volume's alarm flag the station describes is
rewritten `OFF` instead (Home Assistant ignores an empty payload and would keep "Problem"); a
topic whose payload differs gets the snapshot's. Messages on these topics delivered live
(our own publications, retain flag clear) are ignored.

An alarm's ending. When an alarm leaves the book (`alarm(..., gone=True)`), its final record
(`"state": "cleared"`) is published first, not retained, and then the empty retained message
that removes the topic: live subscribers and `hullwatch bridge` see how it ended, a new
subscriber sees nothing.

Queueing. Samples, estimates, steps and hatch readings reach the broker through the spool
(`send`, the spool's SpoolSink): published in order at QoS `min(qos, 1)` for samples and `qos`
for the others (a hatch reading on `P/hatch/<hatch>/event` as `{"time", "open"}`: its own
time, which the retained `open`/`closed` state cannot carry), and
confirmed to the spool only once the broker's PUBACK is in, so a broker outage only grows the
spool; a replayed backlog carries `"replay": true`. The direct `sample` and `estimate` methods
publish live only (dropped while disconnected). Other non-retained messages (command results,
extras) at QoS >= 1 wait in paho's in-memory queue, bounded by `max_queued_messages_set`. If
that queue is ever full when a retained message is due, the snapshot is re-sent once there is
room again.

Commands. `P/cmd/<name>` messages are validated (UTF-8, JSON object, at most 64 KiB, field
types) and passed to `on_command(name, payload, by)`; its result, or the reason for a
rejection, is published on `P/cmd/result` (not retained). `by` names the sender as far as it
can be told: "mqtt:<who>" from the MQTT 5 user property `by`, else the payload's `"by"`, else
just "mqtt" (the broker's ACL decides who may publish commands at all). Retained commands are
refused, however they arrive: a stale retained `ack` must not acknowledge tomorrow's alarm.
The sink speaks MQTT 5 and subscribes to `P/cmd/#` with "retain as published", so a command
published with the retain flag is seen as retained when it is delivered live too, not only
when the broker hands it to a new subscription. An empty message (what clearing a retained
command looks like) is no command and gets no answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hullwatch import __version__
from hullwatch.core.model import Estimate, Quantity, Sample
from hullwatch.core.topology import form_volumes
from hullwatch.sinks.spool import Record, SendResult, SinkUnavailable
from hullwatch.topics import COMMANDS, SEVERITIES, Kind, Topics

if TYPE_CHECKING:
    from hullwatch.config import Config, MqttConfig

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
REQUEST_ECHO_CHARS = 256  # how much of a command's payload is echoed on cmd/result
DEFAULT_MAX_QUEUED = 10_000
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 2
LOG_INTERVAL_S = 60.0
RESYNC_INTERVAL_S = 1.0
PUBACK_TIMEOUT_S = 10.0
MAX_INFLIGHT = 100
ORIGIN = "mqtt"
MAX_SENDER_CHARS = 64  # a sender's name (`by`)

OnCommand = Callable[[str, dict, str], Mapping[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])


# Home Assistant entities (descriptions as data). Sensor samples share a topic per sensor, so
# each quantity's template renders empty for the other quantity's samples, which HA ignores;
# an unreadable sample (value null) renders "None": unknown. Temperatures go to HA in °C, the
# unit it converts to the user's own (it leaves kelvin alone).
_MEASUREMENT = {"state_class": "measurement"}
_HA_QUANTITIES: dict[str, tuple[str, dict[str, Any]]] = {  # quantity -> (value expression, config)
    "pressure": ("value_json.value",
                 {"device_class": "pressure", "unit_of_measurement": "Pa", "suggested_display_precision": 1,
                  **_MEASUREMENT}),
    "temperature": ("(value_json.value - 273.15) | round(3) if value_json.value is number else None",
                    {"device_class": "temperature", "unit_of_measurement": "°C", "suggested_display_precision": 2,
                     **_MEASUREMENT}),
}  # fmt: skip
# (component, object id suffix, name suffix, subtopic of P/volume/<id>, config)
_HA_VOLUME_ENTITIES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("sensor", "leak_rate", "leak rate", "",
     {"value_template": "{{ value_json.leak_kg_per_day }}", "unit_of_measurement": "kg/d",
      "suggested_display_precision": 3, **_MEASUREMENT}),
    ("sensor", "reserve_time", "reserve time", "",
     {"value_template": "{{ value_json.reserve_time_s }}", "device_class": "duration", "unit_of_measurement": "s",
      "suggested_display_precision": 0, **_MEASUREMENT}),
    ("sensor", "pressure", "pressure", "",
     {"value_template": "{{ value_json.pressure_pa }}", "device_class": "pressure", "unit_of_measurement": "Pa",
      "suggested_display_precision": 1, **_MEASUREMENT}),
    ("sensor", "air_mass", "air mass", "",
     {"value_template": "{{ value_json.mass_kg }}", "device_class": "weight", "unit_of_measurement": "kg",
      "suggested_display_precision": 3, **_MEASUREMENT}),
    ("binary_sensor", "alarm", "alarm", "/alarm",
     {"payload_on": "ON", "payload_off": "OFF", "device_class": "problem"}),
)  # fmt: skip


class MqttSetupError(Exception):
    """The [mqtt] settings cannot be used (unreadable password or TLS files): a configuration error."""


@dataclass(frozen=True)
class StationDescription:
    """What Home Assistant discovery announces: the station's sensors, volumes and hatches."""

    station: str
    sensors: Mapping[str, tuple[str, ...]]  # sensor name -> quantities it reports ("pressure", "temperature")
    volumes: tuple[str, ...] = ()
    hatches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sensors = {str(k): tuple(str(getattr(q, "value", q)) for q in v) for k, v in dict(self.sensors).items()}
        object.__setattr__(self, "sensors", MappingProxyType(sensors))
        object.__setattr__(self, "volumes", tuple(self.volumes))
        object.__setattr__(self, "hatches", tuple(self.hatches))

    @classmethod
    def from_config(cls, config: Config, quantities: Mapping[str, Iterable[str]] | None = None) -> StationDescription:
        """Describe a configured station.

        `quantities`: what each sensor reports, as its driver tells (`Driver.quantities`: a
        Modbus or MCP3008 channel, a serial line format, a simulated transducer); a sensor
        missing from it (a simulated one with no [simulation] to tell) is announced with none.
        """
        quantities = quantities or {}
        module = config.module
        segments = [s.name for s in module.segments]
        between = {h.name: h.between for h in module.hatches}
        names = list(between)
        volumes: set[str] = set()
        if len(names) <= 12:  # every volume any combination of hatch states can form
            for n in range(len(names) + 1):
                for open_ in combinations(names, n):
                    volumes.update(form_volumes(segments, between, open_))
        else:  # too many to enumerate: the initial volumes and every lone segment
            volumes.update(config.volumes())
            volumes.update(segments)
        return cls(
            station=config.station,
            sensors={s.name: tuple(quantities.get(s.name, ())) for s in config.sensors},
            volumes=tuple(sorted(volumes)),
            hatches=tuple(h.name for h in module.hatches),
        )


class _Throttle:
    """Logs each kind of problem at most once per interval, counting the ones it held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval_s
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log `msg` unless this kind was logged less than an interval ago."""
        now = time.monotonic()
        with self._lock:
            last, held = self._state.get(kind, (None, 0))
            if last is not None and now - last < self._interval:
                self._state[kind] = (last, held + 1)
                return
            self._state[kind] = (now, 0)
        if held:
            msg += " (%d more like this since the last report)"
            args = (*args, held)
        self._logger.log(level, msg, *args, exc_info=exc_info)


class _PahoLogFilter(logging.Filter):
    """Lets each of paho's messages (INFO and up) through at most once a minute.

    paho logs an ERROR on every failed reconnect cycle ("Client is not connected", a TLS
    alert), i.e. every 2 s for as long as a broker is away; the first of each says why.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self._interval = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        key = str(record.msg)[:60]
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            return False
        if len(self._last) > 100:
            self._last.clear()
        self._last[key] = now
        return True


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_PahoLogFilter())


def _guarded(kind: str) -> Callable[[F], F]:
    """Decorate a method so that no exception leaves it: it is logged (rate-limited) instead."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(self: MqttSink, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception:
                self._throttle(f"bug:{kind}", logging.ERROR, "MQTT sink: %s failed", kind, exc_info=True)
                return None

        return guarded  # type: ignore[return-value]

    return wrap


def apply_credentials(client: mqtt.Client, cfg: MqttConfig, default_username: str | None = None) -> str | None:
    """[mqtt] username, password (read from its file) and TLS onto a paho client; MqttSetupError naming the key.

    A password without a user name logs in as `default_username` (a station: its own name).
    Returns the user name used, None for an anonymous connection.
    """
    password = None
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise MqttSetupError(f"mqtt.password_file: cannot read {cfg.password_file}: {reason}") from None
    username = cfg.username or (default_username if password is not None else None)
    if password is not None and not username:
        raise MqttSetupError("mqtt.password_file: given without mqtt.username")
    if username:
        client.username_pw_set(username, password)
    if cfg.tls is not None:
        _check_tls_files(cfg.tls)
        try:
            client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttSetupError(f"mqtt.tls: {exc}") from None
    return username


def _check_tls_files(tls: Any) -> None:
    """Each [mqtt.tls] file readable and what it should be; MqttSetupError naming the key and the file."""
    import ssl

    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise MqttSetupError(f"mqtt.tls.{key}: cannot read {path}: {exc.strerror or exc}") from None
    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise MqttSetupError(f"mqtt.tls.ca_file: {tls.ca_file} holds no usable CA certificate ({exc})") from None
    if tls.cert_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, ValueError) as exc:
            files = f"{tls.cert_file} and {tls.key_file}" if tls.key_file else tls.cert_file
            raise MqttSetupError(
                f"mqtt.tls.cert_file: {files} are no client certificate with its private key ({exc})"
            ) from None


def sample_payload(s: Sample) -> dict:
    """The ICD §5 sensor message of one sample (a spooled sample's body adds the sensor's name)."""
    value = float(s.value)
    return {
        "time": s.time,
        "quantity": getattr(s.quantity, "value", s.quantity),
        "value": value if math.isfinite(value) else None,
        "quality": getattr(s.quality, "value", s.quality),
    }


def _dumps(obj: Any) -> bytes:
    """Compact JSON; NaN and infinities (which JSON lacks) become null."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()
    except ValueError:
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, default=str).encode()


def _finite(obj: Any) -> Any:
    """A copy of a JSON-like value with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _slug(s: str) -> str:
    """A Home Assistant node/object id: [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", s)


def _echo(raw: bytes) -> str:
    """The start of a command's payload, as text, for cmd/result."""
    text = raw[: REQUEST_ECHO_CHARS * 4].decode("utf-8", "replace")
    if len(text) > REQUEST_ECHO_CHARS or len(raw) > REQUEST_ECHO_CHARS * 4:
        text = text[:REQUEST_ECHO_CHARS] + "…"
    return text


def _user_property(msg: mqtt.MQTTMessage, name: str) -> str | None:
    """The value of an MQTT 5 user property of a message (the last one of that name), or None."""
    found = None
    for key, value in getattr(getattr(msg, "properties", None), "UserProperty", None) or ():
        if key == name:
            found = value
    return found


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _sender_problem(who: object) -> str | None:
    """Why a sender's name (`by`) is not one, or None."""
    if not isinstance(who, str) or not who or len(who) > MAX_SENDER_CHARS or not who.isprintable():
        return f'"by" must name the sender: printable text of 1 to {MAX_SENDER_CHARS} characters'
    return None


def _validate(name: str, obj: dict) -> str | None:
    """Why a command object is malformed, or None if its fields have the right types."""
    if "by" in obj:
        problem = _sender_problem(obj["by"])
        if problem:
            return problem

    def key() -> str | None:
        for field in ("alarm", "source", "severity"):
            if field not in obj:
                return f'missing "{field}" (or use {{"all": true}})' if name != "shelve" else f'missing "{field}"'
            if not _is_str(obj[field]):
                return f'"{field}" must be a non-empty string, not {json.dumps(obj[field])[:40]}'
        if obj["severity"] not in SEVERITIES:
            return f'"severity" must be one of {", ".join(SEVERITIES)}'
        return None

    if name in ("ack", "unshelve", "reset"):
        if "all" in obj:
            return None if obj["all"] is True else '"all" must be true'
        return key()
    if name == "shelve":
        err = key()
        if err:
            return err
        d = obj.get("duration_s")
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
            return '"duration_s" must be a positive number of seconds'
        return None
    if name == "maintenance":
        on = obj.get("on")
        if not isinstance(on, bool):
            return '"on" must be true or false'
        sources = obj.get("sources")
        if sources is not None and (not isinstance(sources, list) or not all(_is_str(s) for s in sources)):
            return '"sources" must be a list of non-empty strings'
        if "all" in obj and not isinstance(obj["all"], bool):
            return '"all" must be true or false'
        if on and not sources and obj.get("all") is not True:
            return 'maintenance needs "sources": [...] (volumes or sensors), or "all": true'
        if sources and obj.get("all") is True:
            return 'give "sources" or "all": true, not both'
        d = obj.get("duration_s")
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0):
            return '"duration_s" must be a positive number of seconds'
        return None
    return f"unknown command {name!r}"


class MqttSink:
    """Publishes samples, hatches, estimates and alarms to MQTT and takes commands from it."""

    def __init__(
        self,
        cfg: MqttConfig,
        station: str,
        on_command: OnCommand,
        description: StationDescription | None = None,
        *,
        homeassistant: bool = False,
        discovery_prefix: str = "homeassistant",
        client_id: str | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.cfg = cfg
        self.station = station
        self.topics = Topics(cfg.topic_prefix or f"hullwatch/{station}")
        self.prefix = self.topics.prefix
        self.qos = cfg.qos
        self.sample_qos = min(cfg.qos, 1)
        self.status_topic = self.topics.status
        self.result_topic = self.topics.command_result
        self._cmd_prefix = self.topics.command_prefix
        self._on_command = on_command
        self._description = description
        self._homeassistant = homeassistant and description is not None
        self._discovery_prefix = discovery_prefix.rstrip("/")
        self._ha_status_topic = f"{self._discovery_prefix}/status"
        self._client_id = client_id or f"hullwatch-{station}-{os.getpid()}"
        self.username: str | None = None  # set by prepare(): the user name the broker knows us by
        self._max_queued = max_queued
        self._throttle = _Throttle(log)
        # _lock guards the retained snapshot and is held across paho's publish() for retained
        # messages, so the snapshot and the caller can never reorder two values of one topic.
        # It is never taken by on_publish (which paho calls holding its own message mutex).
        self._lock = threading.Lock()
        self._retained: dict[str, bytes] = {}
        self.synced = threading.Event()  # set once the retained snapshot went out after the latest connect
        self._tombstones: set[str] = set()
        self._resync = False
        self._resync_at = 0.0
        self._client: mqtt.Client | None = None
        self._started = False
        self._sub_mid: int | None = None
        self._sub_filters: list[str] = []  # of the latest SUBSCRIBE, in order (its SUBACK answers each)
        self._stopping = False
        self._up = False  # connected since the last disconnect
        self._refused = False  # the last attempt got a CONNACK refusal (already logged)
        self._down_since: float | None = None  # when the last established connection was lost
        self._counts = {
            "connects": 0,
            "published": 0,
            "dropped_offline": 0,
            "dropped_queue_full": 0,
            "commands": 0,
            "commands_rejected": 0,
            "stale_cleared": 0,  # retained topics of ours the broker held that we removed
            "stale_rewritten": 0,  # and that we set right
        }

    # -- life cycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the client: credentials and TLS read, no network yet; MqttSetupError if the settings are unusable."""
        if self._client is not None:
            return
        cfg = self.cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5)
        client.suppress_exceptions = True  # belt and braces: our callbacks catch everything themselves
        client.enable_logger(_paho_log)
        self.username = apply_credentials(client, cfg, default_username=self.station)
        client.will_set(self.status_topic, b"offline", qos=self.qos, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(self._max_queued)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._stopping = False
        self._client = client
        if self._homeassistant:
            self._publish_discovery()  # goes into the snapshot, sent once connected

    def start(self) -> None:
        """Connect in the background (retried forever); raise MqttSetupError if the settings are unusable."""
        self.prepare()
        if self._started:
            return
        self._started = True
        cfg = self.cfg
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=True)
        self._client.loop_start()
        log.info(
            "MQTT: connecting to %s:%d as %s (user %s), topics under %s/",
            cfg.host,
            cfg.port,
            self._client_id,
            self.username or "anonymous",
            self.prefix,
        )
        if self.username and (self.username != self.station or self.prefix != f"hullwatch/{self.username}"):
            log.warning(
                "MQTT: user %s, station %s, topics under %s/: the shipped broker ACL (deploy/mosquitto/acl) "
                "drops whatever a station publishes outside hullwatch/<its user name>/; "
                "log in with the station's name",
                self.username,
                self.station,
                self.prefix,
            )

    def stop(self, timeout_s: float = 2.0) -> None:
        """Publish `offline` (retained), disconnect cleanly and stop paho's thread."""
        client = self._client
        if client is None:
            return
        self._stopping = True
        try:
            if client.is_connected():
                info = client.publish(self.status_topic, b"offline", qos=self.qos, retain=True)
                with contextlib.suppress(ValueError, RuntimeError):  # not queued / lost: the will covers it
                    info.wait_for_publish(timeout_s)
            client.disconnect()
        except Exception:
            log.warning("MQTT: unclean stop", exc_info=True)
        finally:
            if self._started:
                client.loop_stop()
                log.info("MQTT: stopped")
            self._client = None
            self._started = False

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now."""
        client = self._client
        return client is not None and client.is_connected()

    def stats(self) -> dict[str, int | bool]:
        """Counters for self-metrics."""
        return {"connected": self.connected, "retained_topics": len(self._retained), **self._counts}

    # -- publishing API (never blocks, never raises) ------------------------------------------

    @_guarded("sample")
    def sample(self, s: Sample) -> None:
        """`P/sensor/<sensor>`: one reading, not retained (a hatch reading goes to `hatch`)."""
        quantity = getattr(s.quantity, "value", s.quantity)
        if quantity == Quantity.HATCH.value:
            self.hatch(s.sensor, s.value >= 0.5)
            return
        payload = sample_payload(s)
        self._publish_live(self.topics.sensor(s.sensor), _dumps(payload), self.sample_qos, queue=False)

    @_guarded("hatch")
    def hatch(self, name: str, is_open: bool) -> None:
        """`P/hatch/<hatch>`: `open` or `closed`, retained (published only when it changes)."""
        self._publish_retained(self.topics.hatch(name), b"open" if is_open else b"closed", dedupe=True)

    @_guarded("estimate")
    def estimate(self, e: Estimate) -> None:
        """`P/volume/<volume>`: the ICD §4 estimate object, not retained."""
        self._publish_live(self.topics.volume(e.volume), _dumps(e.to_dict()), self.qos, queue=True)

    @_guarded("alarm")
    def alarm(self, record: Mapping[str, Any], alarm: str, source: str, severity: str, gone: bool = False) -> None:
        """`P/alarm/<alarm>/<source>/<severity>`: the alarm record, retained.

        `gone`: the alarm left the book; its final record goes out (not retained), then the empty
        retained message that removes the topic.
        """
        topic = self.topics.alarm(alarm, source, severity)
        if gone:
            self._publish_live(topic, _dumps(dict(record)), self.qos, queue=True)
        self._publish_retained(topic, b"" if gone else _dumps(dict(record)))

    @_guarded("volume_alarm")
    def volume_alarm(self, volume: str, active: bool) -> None:
        """`P/volume/<volume>/alarm`: `ON` while any alarm of the volume is active, else `OFF`; retained."""
        self._publish_retained(self.topics.volume_alarm(volume), b"ON" if active else b"OFF", dedupe=True)

    @_guarded("metrics")
    def metrics(self, obj: Mapping[str, Any]) -> None:
        """`P/metrics`: the daemon's self-metrics, retained."""
        self._publish_retained(self.topics.metrics, _dumps(dict(obj)))

    @_guarded("publish_json")
    def publish_json(self, subtopic: str, obj: Any, retain: bool = False) -> None:
        """`P/<subtopic>`: any JSON value (self-metrics and other extras)."""
        topic = f"{self.prefix}/{subtopic.strip('/')}"
        if retain:
            self._publish_retained(topic, _dumps(obj))
        else:
            self._publish_live(topic, _dumps(obj), self.qos, queue=True)

    # -- spooled records: samples and estimates, confirmed by PUBACK (the spool's SpoolSink) ----

    name = "mqtt"
    kinds = frozenset({"sample", "estimate", "step", "hatch", "clock_step"})
    live_batch = 1  # each live message waits for its PUBACK before the next goes: no burst for Nagle to hold

    def ready(self) -> bool:
        """Whether the broker connection is up."""
        return self.connected

    def send(self, records: Sequence[Record], replay: bool) -> SendResult:
        """Publish records in order and wait for the broker to take them (PUBACK at QoS >= 1).

        Replayed records carry `"replay": true` so that live consumers can tell them apart. A hatch
        reading goes to `P/hatch/<hatch>/event` with its own time.
        """
        client = self._client
        if client is None or not client.is_connected():
            raise SinkUnavailable("not connected")
        infos = []
        for r in records:
            body = dict(r.body)
            if replay:
                body["replay"] = True
            if r.kind == "sample":
                topic, qos = self.topics.sensor(body.pop("sensor")), self.sample_qos
            elif r.kind == "step":
                topic, qos = self.topics.step(body["volume"]), self.qos
            elif r.kind == "hatch":
                body = {
                    "time": r.time_ns // 1000 / 1e6,
                    "open": bool(body["open"]),
                    **({"replay": True} if replay else {}),
                }
                topic, qos = self.topics.hatch_event(r.body["hatch"]), self.qos
            elif r.kind == "clock_step":
                topic, qos = self.topics.clock_step, self.qos
            else:
                topic, qos = self.topics.volume(body["volume"]), self.qos
            info = client.publish(topic, _dumps(body), qos=qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            infos.append(info)
        confirmed = 0
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        for info in infos:
            with contextlib.suppress(ValueError, RuntimeError):
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                break
            confirmed += 1
        self._counts["published"] += confirmed
        if records and not confirmed:
            raise SinkUnavailable("the broker took none of the messages")
        return SendResult(confirmed)

    # -- the plumbing -------------------------------------------------------------------------

    def _send(self, client: mqtt.Client, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Hand one message to paho; True if it was sent or queued."""
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # a topic with wildcards, a payload over 256 MB
            self._throttle("bad_topic", logging.ERROR, "MQTT: cannot publish to %r: %s", topic, exc)
            return False
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._counts["published"] += 1
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._counts["dropped_queue_full"] += 1
            if retain:
                self._resync = True
            self._throttle(
                "queue_full", logging.WARNING, "MQTT: outgoing queue full (%d messages), dropping", self._max_queued
            )
        else:
            self._counts["dropped_offline"] += 1
        return False

    def _publish_live(self, topic: str, payload: bytes, qos: int, queue: bool) -> None:
        """A non-retained message: dropped while disconnected unless `queue` and QoS > 0."""
        client = self._client
        if client is None:
            self._counts["dropped_offline"] += 1
            return
        if not client.is_connected() and (qos == 0 or not queue):
            self._counts["dropped_offline"] += 1
            return
        self._send(client, topic, payload, qos, retain=False)
        self._maybe_resync(client)

    def _publish_retained(self, topic: str, payload: bytes, dedupe: bool = False) -> None:
        """Record a retained value in the snapshot and publish it if connected (empty payload: delete)."""
        with self._lock:
            if payload:
                if dedupe and self._retained.get(topic) == payload:
                    return
                self._retained[topic] = payload
                self._tombstones.discard(topic)
            else:
                self._retained.pop(topic, None)
            client = self._client
            sent = client is not None and client.is_connected() and self._send(client, topic, payload, self.qos, True)
            if not sent and not payload:
                self._tombstones.add(topic)
        if client is not None:
            self._maybe_resync(client)

    def _maybe_resync(self, client: mqtt.Client) -> None:
        """Re-send the snapshot if a retained message was dropped on a full queue (at most once a second)."""
        if not self._resync or not client.is_connected():
            return
        now = time.monotonic()
        if now - self._resync_at < RESYNC_INTERVAL_S:
            return
        self._resync_at = now
        self._republish(client)

    def _republish(self, client: mqtt.Client, only_prefix: str | None = None) -> None:
        """Publish the retained snapshot (tombstones first, as empty payloads)."""
        with self._lock:
            if only_prefix is None:
                self._resync = False
                for topic in sorted(self._tombstones):
                    if self._send(client, topic, b"", self.qos, True):
                        self._tombstones.discard(topic)
            for topic, payload in self._retained.items():
                if only_prefix is None or topic.startswith(only_prefix):
                    self._send(client, topic, payload, self.qos, True)

    # -- reconciliation: the broker's retained state of ours against the snapshot -------------

    def reconcile_filters(self) -> list[str]:
        """The topic filters of this station's retained state that the sink reads back at every connect."""
        node = _slug(self._description.station if self._description is not None else self.station)
        return [
            self.topics.filter(Kind.ALARM),
            self.topics.filter(Kind.VOLUME_ALARM),
            f"{self._discovery_prefix}/+/{node}/+/config",
        ]

    def _reconcile(self, client: mqtt.Client, topic: str, payload: bytes) -> None:
        """A retained message the broker held for one of our topics: remove or rewrite it unless it is right."""
        if not payload or not any(mqtt.topic_matches_sub(f, topic) for f in self.reconcile_filters()):
            return
        with self._lock:
            current = self._retained.get(topic)
            if current == payload:
                return
            if current is None and self._described_volume_flag(topic):
                current = self._retained[topic] = b"OFF"  # no alarm of that volume: say so, do not go silent
                if payload == current:
                    return
            fix = current if current is not None else b""
            if self._send(client, topic, fix, self.qos, True):
                self._tombstones.discard(topic)
            elif not fix:
                self._tombstones.add(topic)
        if fix:
            self._counts["stale_rewritten"] += 1
            self._throttle("stale_rewritten", logging.INFO, "MQTT: set right the broker's stale retained %s", topic)
        else:
            self._counts["stale_cleared"] += 1
            self._throttle(
                "stale_cleared", logging.INFO, "MQTT: removed retained %s (not in this station's state)", topic
            )

    def _described_volume_flag(self, topic: str) -> bool:
        """Whether a topic is `P/volume/<volume>/alarm` of a volume the station description knows."""
        parsed = self.topics.parse(topic)
        if self._description is None or parsed is None or parsed.kind is not Kind.VOLUME_ALARM:
            return False
        return parsed.names[0] in self._description.volumes

    # -- Home Assistant discovery -------------------------------------------------------------

    def discovery_messages(self) -> list[tuple[str, dict]]:
        """The Home Assistant discovery (topic, config) pairs for the station description."""
        d = self._description
        if d is None:
            return []
        p = self.prefix
        # The node id is the station's name alone, a whole topic level, so that the broker's ACL
        # can confine a station to homeassistant/+/<its user name>/+/config (mosquitto's %u).
        node = _slug(d.station)
        device = _slug(f"hullwatch_{d.station}")  # ids Home Assistant keeps in its registry
        common = {
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [device],
                "name": f"hullwatch {d.station}",
                "manufacturer": "hullwatch",
                "model": "pressure-integrity monitor",
                "sw_version": __version__,
            },
            "origin": {"name": "hullwatch", "sw_version": __version__},
        }
        out: list[tuple[str, dict]] = []

        def add(component: str, object_id: str, name: str, cfg: dict) -> None:
            oid = _slug(object_id)
            topic = f"{self._discovery_prefix}/{component}/{node}/{oid}/config"
            out.append((topic, {"name": name, "unique_id": f"{device}_{oid}", **cfg, **common}))

        for sensor, quantities in sorted(d.sensors.items()):
            for q in quantities:
                if q in _HA_QUANTITIES:
                    value, extra = _HA_QUANTITIES[q]
                    template = "{% if value_json.quantity == '" + q + "' %}{{ " + value + " }}{% endif %}"
                    cfg = {"state_topic": f"{p}/sensor/{sensor}", "value_template": template, **extra}
                    add("sensor", f"{sensor}_{q}", f"{sensor} {q}", cfg)
        for v in d.volumes:
            for component, suffix, label, subtopic, extra in _HA_VOLUME_ENTITIES:
                state = f"{p}/volume/{v}{subtopic}"
                attrs = {"json_attributes_topic": state} if suffix == "leak_rate" else {}
                add(component, f"{v}_{suffix}", f"{v} {label}", {"state_topic": state, **extra, **attrs})
        for h in d.hatches:
            cfg = {
                "state_topic": f"{p}/hatch/{h}",
                "payload_on": "open",
                "payload_off": "closed",
                "device_class": "door",
            }
            add("binary_sensor", f"{h}_hatch", h, cfg)
        cfg = {"command_topic": f"{p}/cmd/ack", "payload_press": '{"all":true}', "qos": self.qos, "retain": False}
        add("button", "acknowledge_all", "Acknowledge all alarms", cfg)
        return out

    def _publish_discovery(self) -> None:
        for topic, cfg in self.discovery_messages():
            self._publish_retained(topic, _dumps(cfg))
        for v in self._description.volumes if self._description is not None else ():
            # a volume's alarm entity reads OFF, not unknown, until the volume has an alarm
            topic = f"{self.prefix}/volume/{v}/alarm"
            with self._lock:
                unset = topic not in self._retained
            if unset:
                self.volume_alarm(v, False)

    # -- paho callbacks (run in paho's thread; never raise) ------------------------------------

    @_guarded("on_connect")
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = True
            self._throttle(
                "refused",
                logging.WARNING,
                "MQTT: broker %s:%d refused the connection: %s; retrying every %d s",
                self.cfg.host,
                self.cfg.port,
                reason_code,
                RECONNECT_MAX_S,
            )
            return
        self._counts["connects"] += 1
        self._up = True
        sock = client.socket()
        if sock is not None:  # each message waits for its PUBACK: Nagle would hold the next one ~40 ms
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._down_since is None:
            log.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        else:
            down_s = time.monotonic() - self._down_since
            self._throttle("reconnected", logging.INFO, "MQTT: connected again after %.1f s", down_s)
        self._down_since = None
        self._send(client, self.status_topic, b"online", self.qos, True)
        # retain as published: a command published retained shows as such even when delivered live
        topics = [(f"{self._cmd_prefix}#", SubscribeOptions(qos=self.qos, retainAsPublished=True))]
        if self._homeassistant:
            topics.append((self._ha_status_topic, SubscribeOptions(qos=self.qos)))
        topics += [(f, SubscribeOptions(qos=0)) for f in self.reconcile_filters()]  # what the broker keeps of ours
        self._sub_filters = [t for t, _ in topics]
        rc, mid = client.subscribe(topics)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_mid = mid  # the snapshot follows the SUBACK (see the module docstring)
        else:
            self._republish(client)

    @_guarded("on_subscribe")
    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if mid != self._sub_mid:
            return
        filters = self._sub_filters
        refused = [
            f"{filters[i] if i < len(filters) else '?'}: {rc}" for i, rc in enumerate(reason_codes) if rc.is_failure
        ]
        if refused:
            self._throttle(
                "sub_refused",
                logging.WARNING,
                "MQTT: subscription refused: %s (check the broker's ACL)",
                ", ".join(refused),
            )
        self._republish(client)
        self.synced.set()

    @_guarded("on_connect_fail")
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls this from inside its `except OSError`
        self._throttle(
            "connect_fail",
            logging.WARNING,
            "MQTT: cannot reach broker %s:%d: %s; retrying every %d s",
            self.cfg.host,
            self.cfg.port,
            exc or "connection failed",
            RECONNECT_MAX_S,
        )

    @_guarded("on_disconnect")
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_up, self._up = self._up, False
        self.synced.clear()
        refused, self._refused = self._refused, False
        if was_up:
            self._down_since = time.monotonic()
        if self._stopping or refused:
            return
        if not was_up:  # e.g. a TLS alert after the handshake; paho's log line has the cause
            self._throttle(
                "attempt_failed",
                logging.WARNING,
                "MQTT: connection attempt to %s:%d failed; retrying every %d s",
                self.cfg.host,
                self.cfg.port,
                RECONNECT_MAX_S,
            )
            return
        self._throttle(
            "disconnected",
            logging.WARNING,
            "MQTT: connection to %s:%d lost; reconnecting every %d s",
            self.cfg.host,
            self.cfg.port,
            RECONNECT_MAX_S,
        )

    @_guarded("on_message")
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if self._homeassistant and topic == self._ha_status_topic:
            if msg.payload.strip().lower() == b"online":
                log.info("MQTT: Home Assistant came online; re-sending discovery")
                self._republish(client, only_prefix=f"{self._discovery_prefix}/")
            return
        if not topic.startswith(self._cmd_prefix):
            if msg.retain:
                self._reconcile(client, topic, bytes(msg.payload))
            return
        name = topic[len(self._cmd_prefix) :]
        if name == "result":  # our own replies
            return
        if not msg.payload:  # what clearing a retained command looks like
            log.debug("MQTT: ignoring empty command on %s", topic)
            return
        if msg.retain:
            reason = f"retained commands are refused (clear this one: mosquitto_pub -r -n -t {topic})"
            return self._reject(name, bytes(msg.payload), "retained", reason)
        self._command(client, name, bytes(msg.payload), _user_property(msg, "by"))
        return None

    # -- commands -----------------------------------------------------------------------------

    def _command(self, client: mqtt.Client, name: str, raw: bytes, sender: str | None = None) -> None:
        """Validate one command, run it through on_command (with who sent it) and publish the result."""
        if name not in COMMANDS:
            return self._reject(
                name, raw, "unknown_command", f"unknown command {name!r} (known: {', '.join(COMMANDS)})"
            )
        if len(raw) > MAX_COMMAND_BYTES:
            return self._reject(name, raw, "too_large", f"payload of {len(raw)} bytes is over {MAX_COMMAND_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._reject(name, raw, "not_utf8", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return self._reject(name, raw, "not_json", f"payload is not JSON ({str(exc)[:80]})")
        if not isinstance(obj, dict):
            return self._reject(name, raw, "not_object", f"payload must be a JSON object, not {type(obj).__name__}")
        problem = _validate(name, obj) or (_sender_problem(sender) if sender is not None else None)
        if problem:
            return self._reject(name, raw, "bad_fields", problem)
        who = sender if sender is not None else obj.get("by")
        by = f"{ORIGIN}:{who}" if who else ORIGIN
        self._counts["commands"] += 1
        try:
            result = self._on_command(name, obj, by)
            if not isinstance(result, Mapping):
                raise TypeError(f"on_command returned {type(result).__name__}, not a dict")
        except Exception as exc:
            self._throttle(
                "command_error", logging.ERROR, "MQTT: command %s %s failed", name, text[:200], exc_info=True
            )
            result = {"ok": False, "message": f"internal error: {type(exc).__name__}: {exc}"}
        log.debug("MQTT: command %s %s from %s -> %s", name, text[:200], by, result)
        self._reply(name, raw, obj, {**result, "by": by})
        return None

    def _reject(self, name: str, raw: bytes, kind: str, reason: str) -> None:
        self._counts["commands_rejected"] += 1
        self._throttle(
            f"cmd:{kind}", logging.WARNING, "MQTT: rejected command on %s%s: %s", self._cmd_prefix, name[:64], reason
        )
        self._reply(name, raw, None, {"ok": False, "error": kind, "message": reason})

    def _reply(self, name: str, raw: bytes, obj: dict | None, result: Mapping[str, Any]) -> None:
        """Publish a command's outcome on `P/cmd/result` (not retained)."""
        out: dict[str, Any] = {"command": name[:64]}
        out.update(result)
        out["ok"] = bool(result.get("ok", False))
        out["command"] = name[:64]
        out["request"] = _echo(raw)
        if obj is not None and isinstance(obj.get("id"), str | int) and not isinstance(obj.get("id"), bool):
            out["id"] = obj["id"]  # a correlation id chosen by the sender, echoed back
        out["time"] = time.time()
        self._publish_live(self.result_topic, _dumps(out), self.qos, queue=True)

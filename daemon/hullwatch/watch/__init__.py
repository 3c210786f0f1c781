"""`hullwatch watch`: a live terminal view of a station, over MQTT (ICD §5).

Theory of operation
-------------------
Three parts, each ignorant of the others' machinery:

- `MqttFeed` (this module) owns the paho-mqtt client. paho runs the connection in its own
  thread (`loop_start`), reconnects every 1–2 s, and subscribes to `P/#` (or, with no prefix
  known, to `hullwatch/+/#`) on every connect, with a clean session and a client id of its
  own. Its callbacks only put events on a bounded queue — `("message", topic, payload,
  arrival time)` and `("connection", word, detail, connected)` — and catch everything, so
  nothing a broker sends can stop paho's thread. It publishes the operator's commands (`P/cmd/ack`,
  QoS 1, never retained) and refuses to while disconnected.
- `StationState` (`state.py`) is pure: it applies (topic, payload, arrival time) to plain
  dictionaries of alarms, volumes, hatches, sensors and self-metrics, counts what it had to
  ignore, and answers questions about age with the time it is asked. `Stations` routes
  messages to one StationState per prefix and knows which one is on screen.
- `WatchApp` (`app.py`, Textual) polls the queue ten times a second in its own thread,
  applies what arrived, and redraws when something changed (and every second, so ages
  move). On every new connection the retained state (alarms, hatches, status) is dropped
  first: the broker sends it again right after the subscription, so an alarm removed while
  the view was away does not linger.

The order of events on the queue is paho's order of arrival, so "connected" (which drops the
retained state) always comes before the retained messages that refill it.

Textual is an optional dependency (`hullwatch[tools]`): this module imports without it and
`run` says what to install (exit 69).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from hullwatch import config
from hullwatch.config import MqttConfig, TlsConfig
from hullwatch.exits import EX_CONFIG, EX_OK, EX_UNAVAILABLE, EX_USAGE, load_config
from hullwatch.topics import Topics
from hullwatch.watch.state import SENSOR_QUIET_S, VOLUME_STALE_S, Stations, StationState

__all__ = ["MqttFeed", "Settings", "StationState", "Stations", "run", "settings_from_args"]

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 2
KEEPALIVE_S = 30
MAX_QUEUED = 100_000


class WatchSetupError(Exception):
    """The broker settings cannot be used (unreadable TLS files): a configuration error."""


@dataclass(frozen=True)
class Settings:
    """Where the broker is, which station to show, and when data counts as old."""

    host: str = MqttConfig.host
    port: int = MqttConfig.port
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    prefix: str | None = None  # None: find stations under hullwatch/+/
    sensor_quiet_s: float = SENSOR_QUIET_S
    volume_stale_s: float = VOLUME_STALE_S
    note: str = ""  # a remark for the status line at start

    @property
    def broker(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


def settings_from_args(args: argparse.Namespace) -> Settings | int:
    """The settings from the configuration's [mqtt] and the command line; or an exit code after saying why."""
    path_arg = getattr(args, "config", None)
    path = config.config_path(path_arg)
    note = ""
    cfg: config.Config | None = None
    explicit = bool(path_arg or os.environ.get("HULLWATCH_CONFIG"))
    if explicit or os.path.exists(path):
        if not explicit and not os.access(path, os.R_OK):  # the system config, readable by root only
            note = f"{path} is not readable: using defaults"
        else:
            loaded = load_config(path_arg)
            if isinstance(loaded, int):
                return loaded
            cfg = loaded
    mqtt_cfg = (cfg.mqtt if cfg is not None else None) or MqttConfig()

    prefix = getattr(args, "prefix", None) or mqtt_cfg.topic_prefix or (f"hullwatch/{cfg.station}" if cfg else None)
    prefix = prefix.strip().rstrip("/") if prefix else None
    if prefix is not None and (not prefix or "+" in prefix or "#" in prefix):
        print(f"hullwatch watch: --prefix {prefix!r}: a topic prefix without wildcards is needed", file=sys.stderr)
        return EX_USAGE
    port = getattr(args, "port", None) or mqtt_cfg.port
    if not 0 < port < 65536:
        print(f"hullwatch watch: --port {port}: not a TCP port", file=sys.stderr)
        return EX_USAGE
    username = getattr(args, "username", None) or mqtt_cfg.username
    password_file = getattr(args, "password_file", None) or mqtt_cfg.password_file
    password = None
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"{password_file}: cannot read the MQTT password: {reason}", file=sys.stderr)
            return EX_CONFIG
        if not username:
            print(f"{password_file}: a password file needs a user name (--username or mqtt.username)", file=sys.stderr)
            return EX_CONFIG
    quiet, stale = SENSOR_QUIET_S, VOLUME_STALE_S
    if cfg is not None:
        quiet = max(quiet, cfg.module.alarms.sensor.stale_after_s)
        stale = max(stale, 3 * cfg.module.leak.report_interval_s)
    return Settings(
        host=getattr(args, "host", None) or mqtt_cfg.host,
        port=port,
        username=username,
        password=password,
        tls=mqtt_cfg.tls,
        prefix=prefix,
        sensor_quiet_s=quiet,
        volume_stale_s=stale,
        note=note,
    )


class MqttFeed:
    """The broker connection: paho's thread queues what arrives; commands go out from the caller's thread."""

    def __init__(self, settings: Settings, subscription: str, max_queued: int = MAX_QUEUED) -> None:
        self.settings = settings
        self.subscription = subscription
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=max_queued)
        self.dropped = 0
        self.client_id = f"hullwatch-watch-{secrets.token_hex(3)}"
        self._stopping = False
        self._up = False  # connected since the last disconnect
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        client.suppress_exceptions = True
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            t = settings.tls
            try:
                client.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise WatchSetupError(f"mqtt.tls: {exc}") from None
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def start(self) -> None:
        """Connect in the background; paho retries for as long as the feed runs."""
        self._stopping = False
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop paho's thread."""
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now."""
        return self.client.is_connected()

    def command(self, prefix: str, name: str, obj: dict[str, Any]) -> str | None:
        """Publish `P/cmd/<name>` (QoS 1, not retained), naming the user as its sender; None when handed to paho."""
        if not self.connected:
            return "not connected to the broker: nothing sent"
        if self.settings.username and "by" not in obj:
            obj = {**obj, "by": self.settings.username}  # the daemon's audit log says who
        payload = json.dumps(obj, separators=(",", ":"))
        try:
            info = self.client.publish(Topics(prefix).command(name), payload, qos=1, retain=False)
        except ValueError as exc:
            return f"cannot publish: {exc}"
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return f"cannot publish: {mqtt.error_string(info.rc)}"
        return None

    # -- paho callbacks (paho's thread): queue and never raise ------------------------------------

    def _post(self, event: tuple[Any, ...]) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                self._post(("connection", "refused", f"the broker refused the connection: {reason_code}", False))
                return
            self._up = True
            self._post(("connection", "connected", "", True))  # before the retained messages it makes room for
            client.subscribe(self.subscription, qos=1)
        except Exception as exc:
            self._post(("connection", "error", f"cannot subscribe: {exc}", False))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls this from inside its `except OSError`
        reason = (exc.strerror if isinstance(exc, OSError) else None) or exc or "connection failed"
        self._post(("connection", "unreachable", f"cannot reach {self.settings.broker}: {reason}; retrying", False))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_up, self._up = self._up, False
        if was_up and not self._stopping:  # a refused attempt has said why already
            self._post(("connection", "lost", f"connection lost ({reason_code}); reconnecting", False))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._post(("message", msg.topic, bytes(msg.payload), time.time()))
        except Exception:  # a topic paho could not decode: skip it
            self.dropped += 1


def run(args: argparse.Namespace) -> int:
    """`hullwatch watch`: the view, until the user quits; an exit code."""
    try:
        from hullwatch.watch.app import WatchApp
    except ImportError:
        print("hullwatch watch needs textual: pip install 'hullwatch[tools]'", file=sys.stderr)
        return EX_UNAVAILABLE
    settings = settings_from_args(args)
    if isinstance(settings, int):
        return settings
    try:
        app = WatchApp(settings)
    except WatchSetupError as exc:
        print(f"{config.config_path(getattr(args, 'config', None))}: {exc}", file=sys.stderr)
        return EX_CONFIG
    app.run()
    return EX_OK

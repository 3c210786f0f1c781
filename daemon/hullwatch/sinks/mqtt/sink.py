"""The MQTT sink (ICD §5): a thin, non-blocking adapter between the service and a broker.

Theory of operation
-------------------
paho-mqtt runs the connection in a thread of its own (`loop_start`). The service calls the
publishing methods (`sample`, `hatch`, `estimate`, `alarm`, ...) from its threads; each call
has `telemetry` build its one message and hands it to paho, which only appends it to a queue and
wakes its thread, so no call ever waits for the network. Every public method and every paho
callback is wrapped (`connection.guarded`) so that no exception escapes: a bug or a bad payload
is logged (rate-limited), never allowed to kill paho's thread or the caller's loop.

Connection. `start()` reads the password file (a password without a user name logs in as the
station: the shipped broker ACL confines user `<station>` to `hullwatch/<station>/` and
`homeassistant/+/<station>/+/config`), sets up TLS, sets the Last Will (`P/status` =
`offline`, retained) and connects asynchronously; paho retries forever, every 1 s then 2 s
(`reconnect_delay_set(1, 2)`): a refused connect to a LAN broker costs nothing, and 2 s is the
longest a restarted broker waits for us. Failures are logged at most once a minute per kind.
`stop()` publishes `offline` itself (a clean disconnect sends no will) and disconnects.

Retained state (`retained.RetainedState`). On every (re)connect the sink publishes `online`
and subscribes, in one SUBSCRIBE, to `P/cmd/#` and to its own retained topics (`P/alarm/#`,
`P/volume/+/alarm`, its discovery topics, at QoS 0), which the broker hands over with the
retain flag right behind the SUBACK; each is reconciled with the snapshot as it arrives, so
nothing waits for them and no deadline is needed. When the SUBACK arrives the whole snapshot
goes out again. That is after the SUBACK on purpose: by then paho has re-sent the QoS>0
messages it held over from the last connection, so the snapshot (the newest values) is what the
broker keeps. Messages on the reconciled topics delivered live (our own publications, retain
flag clear) are ignored.

An alarm's ending. When an alarm leaves the book (`alarm(..., gone=True)`), its final record
(`"state": "cleared"`) is published first, not retained, and then the empty retained message
that removes the topic: live subscribers and `hullwatch bridge` see how it ended, a new
subscriber sees nothing. A stale alarm that reconciliation removes (one the book no longer has)
ends the same way, its kept record marked cleared by "restart".

Queueing. Samples, estimates, steps, clock steps and hatch readings reach the broker through
the spool (the spool's SpoolSink): published in order at QoS `min(qos, 1)` for samples
and `qos` for the others, and confirmed to the spool only once the broker's PUBACK is in, so a
broker outage only grows the spool; a replayed backlog carries `"replay": true`. The live lane
is pipelined (`submit`): up to `LIVE_WINDOW` messages are out unacknowledged at once and each
is confirmed as its PUBACK comes (`on_publish`, by message id, in any order), so a slow link
costs latency, not throughput; after a reconnect the spool sends again whatever had no PUBACK
(paho re-sends its own copy as well: at least once). The backlog's lane (`send`) publishes a
chunk and waits for its PUBACKs. TCP_NODELAY is set, so that a lone message never waits for an
earlier one's PUBACK (Nagle's algorithm). The direct
`sample` and `estimate` methods publish live only (dropped while disconnected). Other
non-retained messages (command results, extras) at QoS >= 1 wait in paho's in-memory queue,
bounded by `max_queued_messages_set`. If that queue is ever full when a retained message is
due, the snapshot is re-sent once there is room again.

Commands (`commands`). `P/cmd/<name>` messages are checked and passed to
`on_command(name, payload, by)`; its result, or the reason for a rejection, is published on
`P/cmd/result` (not retained). Retained commands are refused, however they arrive: the sink
speaks MQTT 5 and subscribes to `P/cmd/#` with "retain as published", so a command published
with the retain flag is seen as retained when it is delivered live too, not only when the
broker hands it to a new subscription. An empty message (what clearing a retained command
looks like) is no command and gets no answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hullwatch.core.model import Estimate, Quantity, Sample
from hullwatch.sinks.mqtt import commands, discovery
from hullwatch.sinks.mqtt.connection import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    Throttle,
    apply_credentials,
    guarded,
    paho_log,
)
from hullwatch.sinks.mqtt.discovery import StationDescription
from hullwatch.sinks.mqtt.retained import RetainedState, Send
from hullwatch.sinks.mqtt.telemetry import VOLUME_ALARM_FLAG, Message, Telemetry
from hullwatch.sinks.spool import Record, SendResult, SinkUnavailable
from hullwatch.topics import Kind, Topics

if TYPE_CHECKING:
    from hullwatch.config import MqttConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 10_000
RESYNC_INTERVAL_S = 1.0
PUBACK_TIMEOUT_S = 10.0
MAX_INFLIGHT = 100  # paho's window of unacknowledged QoS > 0 messages, all kinds together
LIVE_WINDOW = 64  # of them, the spool's live records (the rest of paho's window is left to the others)

OnCommand = Callable[[str, dict, str], Mapping[str, Any]]


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
        self.telemetry = Telemetry(self.topics, cfg.qos)
        self._cmd_prefix = self.topics.command_prefix
        self._on_command = on_command
        self._description = description
        self._homeassistant = homeassistant and description is not None
        self._discovery_prefix = discovery_prefix.rstrip("/")
        self._ha_status_topic = f"{self._discovery_prefix}/status"
        self._client_id = client_id or f"hullwatch-{station}-{os.getpid()}"
        self.username: str | None = None  # set by prepare(): the user name the broker knows us by
        self._max_queued = max_queued
        self._throttle = Throttle(log)
        # the retained snapshot; its lock is never taken by on_publish (which paho calls holding
        # its own message mutex)
        self._retained = RetainedState()
        self.synced = threading.Event()  # set once the retained snapshot went out after the latest connect
        self._resync_at = 0.0
        self._client: mqtt.Client | None = None
        self._started = False
        self._sub_mid: int | None = None
        self._sub_filters: list[str] = []  # of the latest SUBSCRIBE, in order (its SUBACK answers each)
        self._stopping = False
        self._up = False  # connected since the last disconnect
        self._refused = False  # the last attempt got a CONNACK refusal (already logged)
        self._down_since: float | None = None  # when the last established connection was lost
        # the spool's live lane (pipelined): mid -> record id of what was handed to paho and not yet
        # confirmed, used by the forwarder's thread alone; on_publish only appends mids to _acks
        self._handed: dict[int, int] = {}
        self._acks: deque[int] = deque(maxlen=65535)  # mids paho reported published, not yet looked at
        self._wake_forwarder: Callable[[], None] | None = None
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
        client.enable_logger(paho_log)
        self.username = apply_credentials(client, cfg, default_username=self.station)
        will = self.telemetry.status(online=False)
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(self._max_queued)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
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
                offline = self.telemetry.status(online=False)
                info = client.publish(offline.topic, offline.payload, qos=offline.qos, retain=offline.retain)
                with contextlib.suppress(ValueError, RuntimeError):  # not queued / lost: the will covers it
                    info.wait_for_publish(timeout_s)
            # paho's thread may still run its loop once on the closed socket and log that at
            # ERROR ("Client is not connected"): nothing an operator stopping us needs to read
            client.disable_logger()
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

    @guarded("sample")
    def sample(self, s: Sample) -> None:
        """`P/sensor/<sensor>`: one reading, live only (a hatch reading goes to `hatch`)."""
        quantity = getattr(s.quantity, "value", s.quantity)
        if quantity == Quantity.HATCH.value:
            self.hatch(s.sensor, s.value >= 0.5)
            return
        self._publish_live(self.telemetry.sample(s), queue=False)

    @guarded("hatch")
    def hatch(self, name: str, is_open: bool) -> None:
        """`P/hatch/<hatch>`: `open` or `closed`, retained (published only when it changes)."""
        self._publish_retained(self.telemetry.hatch(name, is_open), dedupe=True)

    @guarded("estimate")
    def estimate(self, e: Estimate) -> None:
        """`P/volume/<volume>`: the ICD §4 estimate object, not retained."""
        self._publish_live(self.telemetry.estimate(e), queue=True)

    @guarded("alarm")
    def alarm(self, record: Mapping[str, Any], alarm: str, source: str, severity: str, gone: bool = False) -> None:
        """`P/alarm/<alarm>/<source>/<severity>`: the alarm record, retained.

        `gone`: the alarm left the book; its final record goes out (not retained), then the empty
        retained message that removes the topic.
        """
        if not gone:
            self._publish_retained(self.telemetry.alarm(record, alarm, source, severity))
            return
        final, removal = self.telemetry.alarm_ending(record, alarm, source, severity)
        self._publish_live(final, queue=True)
        self._publish_retained(removal)

    @guarded("volume_alarm")
    def volume_alarm(self, volume: str, active: bool) -> None:
        """`P/volume/<volume>/alarm`: `ON` while any alarm of the volume is active, else `OFF`; retained."""
        self._publish_retained(self.telemetry.volume_alarm(volume, active), dedupe=True)

    @guarded("metrics")
    def metrics(self, obj: Mapping[str, Any]) -> None:
        """`P/metrics`: the daemon's self-metrics, retained."""
        self._publish_retained(self.telemetry.metrics(obj))

    @guarded("publish_json")
    def publish_json(self, subtopic: str, obj: Any, retain: bool = False) -> None:
        """`P/<subtopic>`: any JSON value (self-metrics and other extras)."""
        message = self.telemetry.extra(subtopic, obj, retain)
        if retain:
            self._publish_retained(message)
        else:
            self._publish_live(message, queue=True)

    # -- spooled records: samples and estimates, confirmed by PUBACK (the spool's SpoolSink) ----

    name = "mqtt"
    kinds = frozenset({"sample", "estimate", "step", "hatch", "clock_step"})
    window = LIVE_WINDOW  # live records in flight at once: one round trip carries up to this many

    def ready(self) -> bool:
        """Whether the broker connection is up."""
        return self.connected

    def send(self, records: Sequence[Record], replay: bool) -> SendResult:
        """Publish records in order (`Telemetry.record`) and wait for the broker to take them (PUBACK at QoS >= 1).

        The backlog's lane (and a live record sent alone, to tell a bad one from an outage).
        """
        client = self._client
        if client is None or not client.is_connected():
            raise SinkUnavailable("not connected")
        infos = []
        for r in records:
            m = self.telemetry.record(r, replay)
            info = client.publish(m.topic, m.payload, qos=m.qos)
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

    def submit(self, records: Sequence[Record], replay: bool, wake: Callable[[], None]) -> int:
        """Hand records to paho in order without waiting; how many leading ones it took.

        The live lane: each is confirmed (`confirmed()`) when its PUBACK comes, in whatever order;
        `wake()` is called then, from paho's thread. SinkUnavailable if it took none.
        """
        client = self._client
        if client is None or not client.is_connected():
            raise SinkUnavailable("not connected")
        self._wake_forwarder = wake
        taken = 0
        for r in records:
            try:
                m = self.telemetry.record(r, replay)
            except Exception:
                if taken:
                    break  # the bad one goes first next time, alone
                raise
            info = client.publish(m.topic, m.payload, qos=m.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._handed[info.mid] = r.id
            taken += 1
        if records and not taken:
            raise SinkUnavailable("the broker took none of the messages")
        return taken

    def confirmed(self) -> list[int]:
        """Ids of submitted records whose PUBACK came since the last call (the forwarder's thread only)."""
        out = []
        while self._acks:
            rid = self._handed.pop(self._acks.popleft(), None)
            if rid is not None:  # else a message of our own (retained, a result) or of a forgotten round
                out.append(rid)
        self._counts["published"] += len(out)
        return out

    def forget(self) -> None:
        """Drop what was submitted and not confirmed: the spool sends it again (the forwarder's thread only)."""
        self._handed.clear()
        self._acks.clear()

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
                self._retained.resync = True
            self._throttle(
                "queue_full", logging.WARNING, "MQTT: outgoing queue full (%d messages), dropping", self._max_queued
            )
        else:
            self._counts["dropped_offline"] += 1
        return False

    def _publish_live(self, m: Message, queue: bool) -> None:
        """A non-retained message: dropped while disconnected unless `queue` and QoS > 0."""
        client = self._client
        if client is None:
            self._counts["dropped_offline"] += 1
            return
        if not client.is_connected() and (m.qos == 0 or not queue):
            self._counts["dropped_offline"] += 1
            return
        self._send(client, m.topic, m.payload, m.qos, retain=False)
        self._maybe_resync(client)

    def _publish_retained(self, m: Message, dedupe: bool = False) -> None:
        """Record a retained value in the snapshot and publish it if connected (empty payload: delete)."""
        client = self._client
        self._retained.set(m.topic, m.payload, self._retained_sender(client), dedupe)
        if client is not None:
            self._maybe_resync(client)

    def _retained_sender(self, client: mqtt.Client | None) -> Send | None:
        """How the snapshot hands a retained message to paho: None while disconnected."""
        if client is None or not client.is_connected():
            return None
        return lambda topic, payload: self._send(client, topic, payload, self.qos, True)

    def _maybe_resync(self, client: mqtt.Client) -> None:
        """Re-send the snapshot if a retained message was dropped on a full queue (at most once a second)."""
        if not self._retained.resync or not client.is_connected():
            return
        now = time.monotonic()
        if now - self._resync_at < RESYNC_INTERVAL_S:
            return
        self._resync_at = now
        self._republish(client)

    def _republish(self, client: mqtt.Client, only_prefix: str | None = None) -> None:
        """Publish the retained snapshot (tombstones first, as empty payloads)."""
        self._retained.republish(lambda topic, payload: self._send(client, topic, payload, self.qos, True), only_prefix)

    # -- reconciliation: the broker's retained state of ours against the snapshot -------------

    def reconcile_filters(self) -> list[str]:
        """The topic filters of this station's retained state that the sink reads back at every connect."""
        station = self._description.station if self._description is not None else self.station
        return [
            self.topics.filter(Kind.ALARM),
            self.topics.filter(Kind.VOLUME_ALARM),
            discovery.config_filter(self._discovery_prefix, station),
        ]

    def _reconcile(self, client: mqtt.Client, topic: str, payload: bytes) -> None:
        """A retained message the broker held for one of our topics: remove or rewrite it unless it is right."""
        if not payload or not any(mqtt.topic_matches_sub(f, topic) for f in self.reconcile_filters()):
            return
        # no alarm of a described volume: its flag says OFF rather than going silent
        parsed = self.topics.parse(topic)
        if parsed is not None and parsed.kind is Kind.ALARM and self._retained.get(topic) is None:
            ending = self.telemetry.stale_alarm_ending(topic, payload, time.time())
            if ending is not None:  # the topic is about to be removed: its ending goes first
                self._publish_live(ending, queue=True)
        default = VOLUME_ALARM_FLAG[False] if self._described_volume_flag(topic) else None
        fix = self._retained.reconcile(topic, payload, lambda t, p: self._send(client, t, p, self.qos, True), default)
        if fix is None:
            return
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
        if self._description is None:
            return []
        return discovery.messages(self._description, self.topics, self._discovery_prefix, self.qos)

    def _publish_discovery(self) -> None:
        for topic, cfg in self.discovery_messages():
            self._publish_retained(self.telemetry.discovery(topic, cfg))
        sender = self._retained_sender(self._client)
        for v in self._description.volumes if self._description is not None else ():
            # a volume's alarm entity reads OFF, not unknown, until the volume has an alarm
            flag = self.telemetry.volume_alarm(v, False)
            self._retained.set_default(flag.topic, flag.payload, sender)

    # -- paho callbacks (run in paho's thread; never raise) ------------------------------------

    @guarded("on_connect")
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
        if sock is not None:  # Nagle would hold a lone message until the previous one's PUBACK came back
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._down_since is None:
            log.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        else:
            down_s = time.monotonic() - self._down_since
            self._throttle("reconnected", logging.INFO, "MQTT: connected again after %.1f s", down_s)
        self._down_since = None
        online = self.telemetry.status(online=True)
        self._send(client, online.topic, online.payload, online.qos, online.retain)
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

    @guarded("on_subscribe")
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

    @guarded("on_publish")
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        """A message is out (QoS 0) or acknowledged (PUBACK): noted for the spool's live lane.

        paho calls this holding its message lock, and before the message's own `is_published()`
        is true: it only appends, wakes the forwarder and takes no lock of ours.
        """
        wake = self._wake_forwarder
        if wake is not None:  # a forwarder submits to us
            self._acks.append(mid)
            wake()

    @guarded("on_connect_fail")
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

    @guarded("on_disconnect")
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

    @guarded("on_message")
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
        raw = bytes(msg.payload)
        if msg.retain:
            self._reject(name, raw, commands.retained_refusal(topic))
        else:
            self._command(name, raw, commands.user_property(getattr(msg, "properties", None), "by"))

    # -- commands -----------------------------------------------------------------------------

    def _command(self, name: str, raw: bytes, sender: str | None = None) -> None:
        """Check one command, run it through on_command (with who sent it) and publish the result."""
        command = commands.read(name, raw, sender)
        if isinstance(command, commands.Rejected):
            self._reject(name, raw, command)
            return
        self._counts["commands"] += 1
        try:
            outcome = self._on_command(name, command.obj, command.by)
            if not isinstance(outcome, Mapping):
                raise TypeError(f"on_command returned {type(outcome).__name__}, not a dict")
        except Exception as exc:
            self._throttle(
                "command_error", logging.ERROR, "MQTT: command %s %s failed", name, command.text[:200], exc_info=True
            )
            outcome = {"ok": False, "message": f"internal error: {type(exc).__name__}: {exc}"}
        log.debug("MQTT: command %s %s from %s -> %s", name, command.text[:200], command.by, outcome)
        result = commands.result(name, raw, command.obj, {**outcome, "by": command.by}, time.time())
        self._publish_live(self.telemetry.command_result(result), queue=True)

    def _reject(self, name: str, raw: bytes, rejected: commands.Rejected) -> None:
        self._counts["commands_rejected"] += 1
        self._throttle(
            f"cmd:{rejected.kind}",
            logging.WARNING,
            "MQTT: rejected command on %s%s: %s",
            self._cmd_prefix,
            name[:64],
            rejected.reason,
        )
        result = commands.rejection(name, raw, rejected, time.time())
        self._publish_live(self.telemetry.command_result(result), queue=True)

"""`hullwatch bridge`: the ground-server side, from the stations' MQTT telemetry into InfluxDB.

Theory of operation
-------------------
A bridge subscribes (MQTT 5, QoS 1, a persistent session) to the ICD §5 topics of one or more
stations — `<root>/<station>/sensor/+`, `volume/+`, `hatch/+`, `alarm/#` and `metrics` — turns
each message back into a spool record tagged with its station (the sample's own timestamp
wherever the payload has one) and writes it to InfluxDB through the same spool and sink as
the daemon. A message is acknowledged to the broker (manual PUBACK) only once its record is
committed to the spool file, so a bridge killed at any moment loses nothing: the broker sends
again what was not acknowledged.

Several bridges with the same `share_group` subscribe through MQTT 5 shared subscriptions
(`$share/<group>/...`): the broker hands each message to one of them, so a fleet scales out by
starting more bridges. InfluxDB overwrites a point with the same series and timestamp, so a
message delivered twice (after a reconnect) is still one point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hullwatch.config import BridgeConfig
from hullwatch.sinks.influx import InfluxSink
from hullwatch.sinks.mqtt import apply_credentials
from hullwatch.sinks.spool import Spool

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600  # the broker keeps our queue this long while the bridge is away
TOPICS = ("sensor/+", "volume/+", "hatch/+", "alarm/#", "metrics")


def to_record(topic: str, payload: bytes, root: str, received: float) -> tuple[str, float, dict] | None:
    """A station's message as (kind, time, body) for the spool, or None for what is not telemetry."""
    parts = topic[len(root) + 1 :].split("/") if topic.startswith(root + "/") else []
    if len(parts) < 3:
        return None
    station, what, rest = parts[0], parts[1], parts[2:]
    text = payload.decode("utf-8")
    if what == "hatch" and len(rest) == 1 and text in ("open", "closed"):
        return "hatch", received, {"station": station, "hatch": rest[0], "open": text == "open"}
    if what == "alarm" and not text:
        return None  # a removed alarm: its transitions are already stored
    obj = json.loads(text)
    if not isinstance(obj, dict):
        return None
    obj.pop("replay", None)
    t = float(obj.get("time", received))
    if what == "sensor" and len(rest) == 1:
        body = {k: obj.get(k) for k in ("quantity", "value", "quality")}
        return "sample", t, {"station": station, "sensor": rest[0], **body}
    if what == "volume" and len(rest) == 1:
        return "estimate", t, {**obj, "station": station, "volume": rest[0]}
    if what == "alarm" and len(rest) == 3:
        alarm, source, severity = rest
        body = {"alarm": alarm, "source": source, "severity": severity, "state": obj.get("state", "active")}
        body |= {k: obj[k] for k in ("value", "threshold", "reason") if obj.get(k) is not None}
        return "alarm", t, {"station": station, **body}
    return None


def metric_records(station: str, obj: dict[str, Any]) -> list[tuple[float, dict]]:
    """A station's `metrics` message as metric records (spool, sink and sensor health)."""
    t = float(obj.get("time", 0.0))
    out = []
    if isinstance(obj.get("spool"), dict):
        out.append((t, {"station": station, "measurement": "spool", "fields": obj["spool"]}))
    for measurement, key, tag in (("sink", "sinks", "sink"), ("sensor_health", "sensors", "sensor")):
        for name, fields in (obj.get(key) or {}).items():
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
        self.client_id = cfg.client_id or f"hullwatch-bridge-{uuid.uuid4().hex[:8]}"
        self._unacked: list[tuple[int, int, int]] = []  # (last record id, mid, qos), oldest first
        self._lock = threading.Lock()
        self.received = 0
        self.ignored = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        apply_credentials(self.client, cfg.mqtt)  # MqttSetupError names the key

    def subscriptions(self) -> list[str]:
        """The topic filters, shared when a group is set."""
        share = f"$share/{self.cfg.share_group}/" if self.cfg.share_group else ""
        return [f"{share}{self.root}/{station}/{t}" for station in self.cfg.stations for t in TOPICS]

    def start(self) -> None:
        """Start the spool (its commits acknowledge messages) and connect in the background."""
        self.spool.on_commit = self._acknowledge
        self.spool.start([self.sink])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        m = self.cfg.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()
        log.info("bridge %s: %s:%d -> %s", self.client_id, m.host, m.port, self.cfg.influxdb.url)

    def stop(self) -> None:
        """Disconnect (the session stays on the broker) and close the spool."""
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close(drain_s=2.0)
        self.sink.close()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("bridge: broker refused the connection: %s", reason_code)
            return
        qos = min(self.cfg.mqtt.qos, 1) or 1
        client.subscribe([(t, SubscribeOptions(qos=qos)) for t in self.subscriptions()])
        log.info("bridge: connected; %s", ", ".join(self.subscriptions()))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg.topic, msg.payload, time.time())
        except Exception as exc:  # a malformed message is skipped, never kills paho's thread
            self.ignored += 1
            log.debug("bridge: ignored %s: %r", msg.topic, exc)
        with self._lock:
            self._unacked.append((self.spool.last_id, msg.mid, msg.qos))

    def _take(self, topic: str, payload: bytes, now: float) -> None:
        if topic.endswith("/metrics"):
            station = topic[len(self.root) + 1 :].split("/")[0]
            for t, body in metric_records(station, json.loads(payload)):
                self.spool.append("metric", t, body)
            return
        record = to_record(topic, payload, self.root, now)
        if record is None:
            self.ignored += 1
            return
        self.spool.append(*record)
        self.received += 1

    def _acknowledge(self, committed_id: int) -> None:
        """PUBACK every message whose records are now in the spool file."""
        with self._lock:
            done = [u for u in self._unacked if u[0] <= committed_id]
            self._unacked = self._unacked[len(done) :]
        for _, mid, qos in done:
            if qos > 0:
                self.client.ack(mid, qos)


def run(cfg: BridgeConfig, stop: threading.Event) -> None:
    """Bridge until stop is set."""
    bridge = Bridge(cfg)
    bridge.start()
    try:
        stop.wait()
    finally:
        bridge.stop()

"""The broker shows what the daemon knows: `hullwatch run` with a real mosquitto, `hullwatch bridge` with influxd.

A previous run's retained alarms are gone once the daemon is up; an acknowledged alarm that clears
is published as a final `cleared` record before its topic is removed, and the bridge stores that
ending; a persistent broker that restarts with stale state is set right on the reconnect; hatch
points carry the hatch reading's own time, so the re-sends of a reconnect store nothing twice.
"""

from __future__ import annotations

import json
import time

import pytest

from daemon_rig import Daemon, FakeSystemd, Transducer, station
from hullwatch.bridge import Bridge
from hullwatch.config import MqttConfig, load_bridge
from hullwatch.sinks.mqtt import MqttSink
from hullwatch.sinks.spool import Spool
from influxd_fixture import HAVE_INFLUXD, Influxd
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener, publish, retained

needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto (Debian package mosquitto)")
needs_influxd = pytest.mark.skipif(not HAVE_INFLUXD, reason="needs influxd (Debian package influxdb)")

STATION = "rec"
P = f"hullwatch/{STATION}"
T0 = 1_780_000_000.0


def wait_until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def stale_alarm(alarm: str, source: str, severity: str) -> tuple[str, bytes]:
    """The retained topic and record a previous run left for an active, unacknowledged alarm."""
    record = {"type": "alarm", "time": T0, "alarm": alarm, "source": source, "severity": severity,
              "state": "active", "acknowledged": False, "lifecycle": "unack"}  # fmt: skip
    return f"{P}/alarm/{alarm}/{source}/{severity}", json.dumps(record).encode()


def ours(port: int) -> dict[str, bytes]:
    """What the broker keeps of the station's alarms and volume flags, and its status."""
    kept = retained(port, f"{P}/#")
    return {t: p for t, p in kept.items() if "/alarm" in t or t == f"{P}/status"}


def alarms(port: int) -> dict[str, bytes]:
    """`ours` without the volume's `OFF` flag (which a daemon may publish at start or leave unpublished)."""
    return {t: p for t, p in ours(port).items() if (t, p) != (f"{P}/volume/lab/alarm", b"OFF")}


class Station:
    """`hullwatch run` for station "rec": one streaming transducer, MQTT to `port`; stopped by close()."""

    def __init__(self, tmp_path, port: int, stale_after_s: float = 2.0) -> None:
        self.transducer = Transducer()
        self.systemd = FakeSystemd(tmp_path / "notify.sock")
        path = tmp_path / "hullwatch.toml"
        path.write_text(station(STATION, self.transducer.port, stale_after_s, extra=f"[mqtt]\nport = {port}\n"))
        self.daemon = Daemon(path, tmp_path / "daemon.log", self.systemd)

    def ready(self) -> float:
        ready = self.systemd.wait_for("READY=1", timeout=30)
        assert ready, self.daemon.text()
        return ready

    def close(self) -> None:
        try:
            if self.daemon.alive():
                code, _ = self.daemon.stop()
                assert code == 0, self.daemon.text()
        finally:
            self.daemon.kill()
            self.systemd.close()
            self.transducer.close()


@needs_mosquitto
def test_a_previous_runs_retained_alarms_are_gone_once_the_daemon_is_up(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    stale = dict(
        [
            stale_alarm("leak_rate", "lab", "warning"),
            stale_alarm("rapid_depress", "lab", "emergency"),
            stale_alarm("sensor_fault", "p", "caution"),
        ]
    )
    stale[f"{P}/volume/lab/alarm"] = b"ON"  # the station's volume: no alarm now, so OFF
    stale[f"{P}/volume/lab-old/alarm"] = b"ON"  # a volume the station no longer has: removed
    for topic, payload in stale.items():
        publish(broker.port, topic, payload, retain=True)
    assert set(ours(broker.port)) == set(stale)
    rig = None
    live = Listener(broker.port, f"{P}/alarm/#")
    try:
        rig = Station(tmp_path, broker.port)
        ready = rig.ready()
        right = {f"{P}/status": b"online", f"{P}/volume/lab/alarm": b"OFF"}
        assert wait_until(lambda: ours(broker.port) == right), (ours(broker.port), rig.daemon.text())
        print(f"the broker held only the present state {time.monotonic() - ready:.1f} s after READY=1")
        assert "removed retained" in rig.daemon.text()
        for topic, payload in stale.items():  # each stale alarm ended with a cleared record, then its removal
            if "/alarm/" not in topic:
                continue
            assert wait_until(lambda t=topic: len(live.on(t)) >= 3), live.on(topic)
            kept, final, removal = live.on(topic)[:3]
            assert kept[3] and kept[2] == payload  # what the listener found retained on subscribing
            assert json.loads(final[2]) == {
                **json.loads(payload),
                "state": "cleared",
                "time": json.loads(final[2])["time"],
                "by": "restart",
            }
            assert not final[3] and removal[2] == b""
        time.sleep(1.0)  # and it stays so
        assert ours(broker.port) == right
    finally:
        live.close()
        if rig is not None:
            rig.close()
        broker.stop()


@needs_mosquitto
def test_a_persistent_broker_restarting_with_stale_state_is_set_right_on_reconnect(tmp_path):
    """A stale alarm the broker saved and restored (a station's old instance left it): the reconnect removes it."""
    broker = Broker(tmp_path / "broker", persistence=True).start()
    rig = None
    try:
        rig = Station(tmp_path, broker.port)
        rig.ready()
        right = {f"{P}/status": b"online"}
        assert wait_until(lambda: alarms(broker.port) == right), rig.daemon.text()
        topic, payload = stale_alarm("leak_rate", "lab", "warning")
        publish(broker.port, topic, payload, retain=True)  # heard live by the daemon: not what it judges
        assert wait_until(lambda: topic in ours(broker.port), 5)
        broker.stop()  # saves the retained messages, the stale alarm among them
        broker.start()  # and restores them
        restarted = time.monotonic()
        assert wait_until(lambda: alarms(broker.port) == right), (ours(broker.port), rig.daemon.text())
        print(f"set right {time.monotonic() - restarted:.1f} s after the broker restarted")
    finally:
        if rig is not None:
            rig.close()
        broker.stop()


@needs_mosquitto
@needs_influxd
def test_an_acknowledged_alarm_that_clears_ends_with_a_cleared_record_the_bridge_stores(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    influx = bridge = rig = live = None
    try:
        influx = Influxd(tmp_path / "influx")
        path = tmp_path / "bridge.toml"
        path.write_text(
            f'[bridge]\nstations = ["{STATION}"]\nclient_id = "bridge-rec"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
            f'[spool]\npath = "{tmp_path / "bridge.sqlite"}"\ncommit_interval_s = 0.2\n'
        )
        bridge = Bridge(load_bridge(str(path)))
        bridge.start()
        live = Listener(broker.port, f"{P}/alarm/#")
        rig = Station(tmp_path, broker.port, stale_after_s=1.0)
        rig.ready()
        assert wait_until(lambda: retained(broker.port, f"{P}/status") == {f"{P}/status": b"online"})
        assert wait_until(lambda: bridge.client.is_connected())
        topic = f"{P}/alarm/sensor_fault/p/warning"

        def seen(pred, since: int = 0):
            return live.wait_for(lambda m: m[1] == topic and m[2] and pred(json.loads(m[2])), 30, since)

        rig.transducer.streaming.clear()  # the transducer goes quiet: sensor_fault
        raised = seen(lambda r: r["state"] == "active" and not r["acknowledged"])
        assert raised is not None, rig.daemon.text()
        n = live.count()
        publish(broker.port, f"{P}/cmd/ack", '{"all": true}')
        acked = seen(lambda r: r["acknowledged"], n)
        assert acked is not None and json.loads(acked[2])["state"] == "active"
        n = live.count()
        rig.transducer.streaming.set()  # it talks again: the condition clears, acknowledged, so the alarm ends
        assert live.wait_topic(topic, payload=b"", timeout=30, since=n), rig.daemon.text()
        ending = [m for m in live.messages[n:] if m[1] == topic]
        final = json.loads(ending[-2][2])
        assert (final["state"], final["acknowledged"], final["lifecycle"]) == ("cleared", True, "normal")
        assert ending[-2][3] is False and ending[-1][2] == b""  # the final record is not retained
        assert topic not in retained(broker.port, f"{P}/#")

        def stored() -> list[tuple[float, str]]:
            rows = influx.rows(f"SELECT state FROM alarm WHERE station = '{STATION}' AND alarm = 'sensor_fault'")
            return [(r["time"], r["state"]) for _, r in rows]

        assert wait_until(lambda: [s for _, s in stored()] == ["active", "cleared"]), stored()
        assert stored()[1][0] == round(final["time"] * 1e6) * 1000  # at the clearing's own time
    finally:
        for close in (rig and rig.close, live and live.close, bridge and bridge.stop, influx and influx.stop):
            if close:
                close()
        broker.stop()


@needs_mosquitto
@needs_influxd
def test_hatch_points_carry_their_own_time_and_a_reconnect_stores_nothing_twice(tmp_path):
    """The station's hatch readings reach InfluxDB through the bridge once each, at the reading's time, however
    often the retained state is re-sent (the station's reconnect, the bridge's new subscription)."""
    broker = Broker(tmp_path / "broker").start()
    influx = bridge = spool = sink = None
    try:
        influx = Influxd(tmp_path / "influx")
        path = tmp_path / "bridge.toml"
        path.write_text(
            f'[bridge]\nstations = ["{STATION}"]\nclient_id = "bridge-hatch"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
            f'[spool]\npath = "{tmp_path / "bridge.sqlite"}"\ncommit_interval_s = 0.2\n'
        )
        cfg = load_bridge(str(path))
        bridge = Bridge(cfg)
        bridge.start()
        assert wait_until(lambda: bridge.client.is_connected())
        sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port), STATION, lambda *a: {"ok": True})
        spool = Spool(str(tmp_path / "station.sqlite"), commit_interval_s=0.1)
        spool.start([sink])
        sink.start()
        assert sink.synced.wait(10)
        time.sleep(0.5)  # the bridge's subscriptions are in
        for k, is_open in enumerate((True, False, True)):  # what the daemon does with each hatch reading
            sink.hatch("h1", is_open)
            spool.append("hatch", T0 + k, {"hatch": "h1", "open": is_open})

        def points() -> list[tuple[int, bool]]:
            return [(r["time"], r["open"]) for _, r in influx.rows("SELECT open FROM hatch")]

        want = [(int((T0 + k) * 1e9), is_open) for k, is_open in enumerate((True, False, True))]
        assert wait_until(lambda: points() == want), points()
        broker.stop()  # the station reconnects and re-sends its retained state; the bridge re-subscribes
        broker.start()
        assert wait_until(lambda: sink.synced.is_set() and bridge.client.is_connected())
        bridge.stop()
        bridge = Bridge(cfg)  # and a bridge starting afresh gets the retained state with its subscription
        bridge.start()
        assert wait_until(lambda: bridge.client.is_connected())
        time.sleep(1.5)  # what would be stored again is in by now (commit_interval_s 0.2)
        assert points() == want
    finally:
        if sink is not None:
            sink.stop()
        if spool is not None:
            spool.close()
        for close in (bridge and bridge.stop, influx and influx.stop):
            if close:
                close()
        broker.stop()

"""`hullwatch bridge`: stations' MQTT telemetry into InfluxDB through shared subscriptions."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hullwatch.bridge import Bridge, metric_records, to_record
from hullwatch.config import ConfigError, load_bridge
from influxd_fixture import HAVE_INFLUXD, Influxd
from mosquitto_fixture import HAVE_MOSQUITTO, Broker

T0 = 1_780_000_000.0


def test_messages_become_records():
    payload = json.dumps({"time": T0, "quantity": "pressure", "value": 101325.0, "quality": "good", "replay": True})
    assert to_record("hullwatch/prk/sensor/p1", payload.encode(), "hullwatch", 5.0) == (
        "sample",
        T0,
        {"station": "prk", "sensor": "p1", "quantity": "pressure", "value": 101325.0, "quality": "good"},
    )
    assert to_record("hullwatch/prk/hatch/h1", b"closed", "hullwatch", 5.0) == (
        "hatch",
        5.0,
        {"station": "prk", "hatch": "h1", "open": False},
    )
    alarm = {"time": T0, "state": "active", "value": 1.2, "threshold": 0.9, "acknowledged": False}
    kind, t, body = to_record("hullwatch/prk/alarm/leak_rate/prk-zvezda/warning", json.dumps(alarm).encode(),
                              "hullwatch", 5.0)  # fmt: skip
    assert (kind, t) == ("alarm", T0)
    assert body == {"station": "prk", "alarm": "leak_rate", "source": "prk-zvezda", "severity": "warning",
                    "state": "active", "value": 1.2, "threshold": 0.9}  # fmt: skip
    assert to_record("hullwatch/prk/alarm/leak_rate/prk/warning", b"", "hullwatch", 5.0) is None
    assert to_record("hullwatch/prk/cmd/ack", b"{}", "hullwatch", 5.0) is None
    assert to_record("elsewhere/prk/sensor/p1", payload.encode(), "hullwatch", 5.0) is None
    with pytest.raises(ValueError):
        to_record("hullwatch/prk/sensor/p1", b"not json", "hullwatch", 5.0)
    metrics = {"time": T0, "spool": {"depth": 3}, "sinks": {"mqtt": {"sent": 5}}, "sensors": {"p1": {"errors": 0}}}
    assert [b["measurement"] for _, b in metric_records("prk", metrics)] == ["spool", "sink", "sensor_health"]


def test_bridge_config_errors_name_the_key(write_file):
    path = write_file('[bridge]\nstations = "prk"\n[mqtt]\nport = 0\n[extra]\n', "bridge.toml")
    with pytest.raises(ConfigError) as err:
        load_bridge(path)
    text = "\n".join(err.value.problems)
    assert f"{path}: extra: unknown section" in text
    assert f"{path}: bridge.stations:" in text
    assert f"{path}: mqtt.port:" in text
    assert f"{path}: influxdb: missing" in text


@pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_INFLUXD), reason="needs mosquitto and influxd (Debian packages)")
def test_two_bridges_share_the_load_and_write_each_sample_once(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    influx = Influxd(tmp_path / "influx")
    bridges = []
    for i in range(2):
        path = tmp_path / f"bridge{i}.toml"
        path.write_text(
            f'[bridge]\nstations = ["+"]\nclient_id = "bridge-{i}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
            f'[spool]\npath = "{tmp_path / f"spool{i}.sqlite"}"\ncommit_interval_s = 0.2\n'
        )
        bridge = Bridge(load_bridge(str(path)))
        bridge.start()
        bridges.append(bridge)
    try:
        deadline = time.monotonic() + 10
        while not all(b.client.is_connected() for b in bridges) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the subscriptions are in
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        infos = []
        for station in ("alpha", "beta"):
            for k in range(200):
                body = {"time": T0 + k * 0.1, "quantity": "pressure", "value": 100000.0 + k, "quality": "good"}
                infos.append(pub.publish(f"hullwatch/{station}/sensor/p1", json.dumps(body), qos=1))
            infos.append(pub.publish(f"hullwatch/{station}/hatch/h1", "open", qos=1, retain=True))
        pub.publish("hullwatch/alpha/sensor/p1", "garbage", qos=1)
        for info in infos:
            info.wait_for_publish(5)
        deadline = time.monotonic() + 20
        rows = []
        while time.monotonic() < deadline:
            rows = influx.rows('SELECT count(value) FROM sensor GROUP BY "station"')
            if sum(r["count"] for _, r in rows) >= 400:
                break
            time.sleep(0.2)
        assert {tags["station"]: r["count"] for tags, r in rows} == {"alpha": 200, "beta": 200}
        assert all(b.received > 0 for b in bridges), [b.received for b in bridges]
        assert sum(b.received for b in bridges) >= 402
        assert len(influx.rows("SELECT open FROM hatch")) == 2
        pub.loop_stop()
        pub.disconnect()
    finally:
        for b in bridges:
            b.stop()
        influx.stop()
        broker.stop()

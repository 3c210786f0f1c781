"""End to end: `hullwatch run` through outages of InfluxDB and the broker and a kill -9, then exact counts."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from influxd_fixture import HAVE_INFLUXD, Influxd
from mosquitto_fixture import HAVE_MOSQUITTO, Broker

SENSORS = 2

pytestmark = pytest.mark.skipif(
    not (HAVE_INFLUXD and HAVE_MOSQUITTO), reason="needs influxd and mosquitto (Debian packages influxdb, mosquitto)"
)


def test_outages_and_a_kill_lose_nothing_and_double_nothing(tmp_path):
    influx = Influxd(tmp_path / "influx")
    broker = Broker(tmp_path / "broker")
    broker.start()
    ptys = [pty.openpty() for _ in range(SENSORS)]
    sensors = "".join(
        f'\n[[sensor]]\nname = "s{i}"\nsegment = "hab"\ndriver = "serial"\nport = "{os.ttyname(slave)}"\n'
        f"line_regex = '^(?P<pressure>[0-9.]+)$'\nunits = {{ pressure = \"Pa\" }}\n"
        for i, (_, slave) in enumerate(ptys)
    )
    cfg = tmp_path / "hullwatch.toml"
    cfg.write_text(
        f'[station]\nname = "lost"\n\n[[segment]]\nname = "hab"\nvolume_m3 = 20.0\n{sensors}\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n\n'
        f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite"}"\n'
    )
    seen: dict[str, set[float]] = {}  # what a persistent-session subscriber got, per sensor
    subscribed = threading.Event()

    def on_message(client, userdata, msg) -> None:
        seen.setdefault(msg.topic.rsplit("/", 1)[-1], set()).add(round(json.loads(msg.payload)["value"], 3))

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe("hullwatch/lost/sensor/#", qos=1)
        subscribed.set()

    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lost-sub", clean_session=False)
    listener.on_message, listener.on_connect = on_message, on_connect
    listener.reconnect_delay_set(1, 1)
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    assert subscribed.wait(30)
    sent: list[list[tuple[float, float]]] = [[] for _ in range(SENSORS)]
    stop = threading.Event()

    def stream() -> None:
        k = 0
        while not stop.wait(0.1):
            for i, (master, _) in enumerate(ptys):
                value = round(100000.0 + k * 0.01 + i * 0.001, 3)
                os.write(master, f"{value:.3f}\n".encode())
                sent[i].append((time.time(), value))
            k += 1

    log_path = tmp_path / "daemon.log"
    log_path.touch()

    def daemon() -> subprocess.Popen:
        """Start `hullwatch run`; return once it reads every port (pyserial drops what came before its open())."""
        offset = len(log_path.read_text())
        with open(log_path, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hullwatch", "run", "-c", str(cfg)], stderr=log)
        deadline = time.monotonic() + 60
        while not all(f"s{i}: reading" in log_path.read_text()[offset:] for i in range(SENSORS)):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[offset:]
            time.sleep(0.05)
        return proc

    proc = daemon()
    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    try:
        time.sleep(3.0)
        influx.stop()  # InfluxDB away ...
        time.sleep(2.0)
        broker_down = time.time()
        broker.stop()  # ... and the broker too, for a while (it keeps no sessions: tests' brokers don't persist)
        time.sleep(3.0)
        broker.start()
        time.sleep(3.0)
        killed = time.time()
        proc.send_signal(signal.SIGKILL)  # during the InfluxDB outage
        proc.wait()
        proc = daemon()
        restarted = time.time()  # reading again
        time.sleep(4.0)
        influx.start()
        time.sleep(3.0)
        stop.set()
        writer.join(10)

        def expected(i: int) -> list[float]:
            return [v for t, v in sent[i] if not killed - 1.5 <= t <= restarted + 0.5]

        got: dict[str, list[float]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = {}
            for tags, row in influx.rows('SELECT value FROM sensor GROUP BY "sensor"'):
                got.setdefault(tags["sensor"], []).append(round(row["value"], 3))
            if all(set(expected(i)) <= set(got.get(f"s{i}", [])) for i in range(SENSORS)):
                break
            time.sleep(0.5)
        for i in range(SENSORS):
            values = got.get(f"s{i}", [])
            missing = set(expected(i)) - set(values)
            assert not missing, f"s{i}: {len(missing)} of {len(expected(i))} samples missing in InfluxDB"
            assert len(values) == len(set(values)), f"s{i}: a sample was written twice"
        for i in range(SENSORS):
            live = [v for t, v in sent[i] if t < broker_down - 0.5]
            assert set(live) <= seen.get(f"s{i}", set()), "the MQTT subscriber got every sample"
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        listener.loop_stop()
        listener.disconnect()
        broker.stop()
        influx.stop()

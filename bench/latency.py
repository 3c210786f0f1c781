#!/usr/bin/env python3
"""Sample-to-subscriber latency over MQTT and alarm-to-buzzer latency, on loopback.

    python bench/latency.py [--seconds 30] [--alarms 10]

Eight pseudo-terminals stream Vaisala-style lines at 10 Hz into a daemon (in this process,
on gpiozero mock pins) that publishes to a private mosquitto; a paho subscriber stamps
each sample on arrival: latency = arrival − the sample's own timestamp (taken when its
line arrived at the daemon). Then sensor 0's pressure falls at 100 Pa/s for 3 s, several
times: alarm-to-buzzer latency = the moment the buzzer pin goes high − the timestamp of the
sample that raised rapid_depress. Prints p50/p99/max of both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import paho.mqtt.client as mqtt
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from hullwatch import config
from hullwatch.core.model import AlarmState, AlarmTransition
from hullwatch.service import Daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(xs: list[float]) -> str:
    xs = sorted(xs)
    if not xs:
        return "no data"
    p99 = xs[max(0, int(len(xs) * 0.99) - 1)]
    return (
        f"p50 {statistics.median(xs) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {xs[-1] * 1000:.2f} ms (n={len(xs)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--alarms", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("mosquitto"):
        sys.exit("needs mosquitto (scripts/setup.sh --test)")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        Path(tmp, "m.conf").write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
        )
        broker = subprocess.Popen(
            ["mosquitto", "-c", f"{tmp}/m.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.3)
        ptys = []
        for _ in range(8):
            master, slave = os.openpty()
            tty.setraw(slave)
            ptys.append((master, slave, os.ttyname(slave)))
        cfg = ['[station]\nname = "bench"\n']
        cfg += [f'[[segment]]\nname = "s{i}"\nvolume_m3 = 10.0\n' for i in range(8)]
        for i, (_, _, path) in enumerate(ptys):
            cfg.append(
                f'[[sensor]]\nname = "p{i}"\nsegment = "s{i}"\ndriver = "serial"\nport = "{path}"\n'
                "line_regex = '^P\\s*=\\s*(?P<pressure>[-+0-9.]+)'\nunits = { pressure = \"hPa\" }\n"
            )
        cfg.append(
            f"[mqtt]\nport = {port}\n[annunciator]\nbuzzer_gpio = 18\nled_gpio = 23\n"
            "[alarms]\nlatching = []\n[alarms.low_pressure]\nwarning_pa = false\nemergency_pa = false\n"
        )
        Path(tmp, "bench.toml").write_text("\n".join(cfg))
        factory = MockFactory()
        Device.pin_factory = factory
        daemon = Daemon(config.load(f"{tmp}/bench.toml"), pin_factory=factory)
        buzzer_high: list[float] = []
        show = daemon.desk.show

        def watched_show(annunciation) -> None:  # note when the buzzer pin goes high
            was = factory.pin(18).state
            show(annunciation)
            if factory.pin(18).state and not was:
                buzzer_high.append(time.time())

        daemon.desk.show = watched_show
        raised: list[float] = []
        daemon.outputs.append(
            lambda e: (
                raised.append(e.time)
                if isinstance(e, AlarmTransition) and e.alarm == "rapid_depress" and e.state is AlarmState.ACTIVE
                else None
            )
        )
        lat: list[float] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2)
        sub.on_message = lambda c, u, m: lat.append(time.time() - json.loads(m.payload)["time"])
        sub.connect("127.0.0.1", port)
        sub.subscribe("hullwatch/bench/sensor/#", qos=0)
        sub.loop_start()
        stop = threading.Event()
        falling = threading.Event()
        runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
        runner.start()

        def stream() -> None:
            pressure = [101325.0] * 8
            next_t = time.monotonic()
            while not stop.is_set():
                for n, (master, _, _) in enumerate(ptys):
                    if n == 0 and falling.is_set():
                        pressure[0] -= 10.0
                    with contextlib.suppress(OSError):
                        os.write(master, f"P = {pressure[n] / 100:.4f} hPa\r\n".encode())
                next_t += 0.1
                time.sleep(max(0.0, next_t - time.monotonic()))

        threading.Thread(target=stream, daemon=True).start()
        time.sleep(args.seconds)
        sample_lat = list(lat)
        alarm_lat = []
        for _ in range(args.alarms):
            n_raised, n_high = len(raised), len(buzzer_high)
            falling.set()
            time.sleep(3.0)
            falling.clear()
            time.sleep(17.0)  # the fall stops; rapid_depress clears once its 15 s window is past
            if len(raised) > n_raised and len(buzzer_high) > n_high:
                alarm_lat.append(buzzer_high[n_high] - raised[n_raised])
            daemon.desk.acknowledge_all("bench")
            time.sleep(0.5)
        stop.set()
        runner.join(10)
        sub.loop_stop()
        broker.terminate()
        broker.wait(5)
        for master, slave, _ in ptys:
            os.close(master)
            os.close(slave)
    print(f"sample -> MQTT subscriber, 8 sensors x 10 Hz: {percentiles(sample_lat)}")
    print(f"rapid_depress sample -> buzzer pin high: {percentiles(alarm_lat)}")


if __name__ == "__main__":
    main()

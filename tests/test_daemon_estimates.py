"""`hullwatch run` end to end on a pty transducer: what the estimator finds reaches the broker.

A transducer's offset steps by +40 Pa: the running daemon publishes one `P/step/<volume>`
event (and no leak alarm), and its retained `P/metrics` carries the volume's detection limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import threading

import pytest

import daemon_rig
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener

pytestmark = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto")


class NoisyTransducer:
    """A pty writing 101325 Pa with 2 Pa of white noise every 50 ms, plus `offset`."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self.offset = 0.0
        self.lines = 0
        self._rng = random.Random(3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            value = 101325.0 + self.offset + self._rng.gauss(0.0, 2.0)
            with contextlib.suppress(OSError):
                os.write(self.master, f"{value:.2f}\n".encode())
                self.lines += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)


def test_the_running_daemon_publishes_a_step_and_its_detection_limits(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    transducer = NoisyTransducer()
    extra = (
        "[leak]\nreport_interval_s = 0.5\nsettle_s = 0.0\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[spool]\npath = "{tmp_path}/spool.sqlite"\ncommit_interval_s = 0.2\n'
    )
    path = tmp_path / "hullwatch.toml"
    path.write_text(daemon_rig.station("lab", transducer.port, 5.0, extra))
    listener = Listener(broker.port, "hullwatch/lab/#")
    daemon = daemon_rig.Daemon(path, tmp_path / "daemon.log")
    try:
        assert listener.wait_for(
            lambda m: (
                m[1] == "hullwatch/lab/volume/lab"
                and b'"leak_kg_per_day": null' not in m[2]
                and b'"leak_kg_per_day":null' not in m[2]
            ),
            timeout=60,
        ), "a leak rate is estimated"
        lines_before = transducer.lines
        transducer.offset = 40.0
        step = listener.wait_topic("hullwatch/lab/step/lab", timeout=60)
        assert step is not None, daemon.text()[-2000:]
        body = json.loads(step[2])
        assert body["type"] == "step" and body["volume"] == "lab"
        assert 30.0 < body["size_pa"] < 50.0
        assert transducer.lines - lines_before < 400, "found within a few hundred readings"

        def detection(m) -> bool:
            return m[1] == "hullwatch/lab/metrics" and "lab" in json.loads(m[2]).get("detection", {})

        metrics = listener.wait_for(detection, timeout=60)
        assert metrics is not None
        limits = json.loads(metrics[2])["detection"]["lab"]
        assert limits["kg_per_day_600s"] > limits["kg_per_day_3600s"] > limits["kg_per_day_86400s"] > 0
        alarms = [m for m in listener.messages if m[1].startswith("hullwatch/lab/alarm/leak_rate/") and m[2]]
        assert not alarms
    finally:
        daemon.kill()
        listener.close()
        transducer.close()
        broker.stop()

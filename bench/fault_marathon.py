#!/usr/bin/env python3
"""Fault marathon: one running `hullwatch run` taken through every fault of the field, one after another.

    .venv/bin/python bench/fault_marathon.py            # about 5 minutes
    .venv/bin/python bench/fault_marathon.py --quick    # about 1.7 minutes
    .venv/bin/python bench/fault_marathon.py --keep     # keep the work directory (config, logs, spool, CSV)

One daemon, started once with a config written to a temporary directory, reads five pty
transducers: `pa` (pressure, 10 lines/s), `pt` (pressure and temperature on one line, 10
lines/s), `pg` (10 lines/s, garbage during its fault), `pf` (10 lines/s, 2,000 lines/s during
its fault) and `ps` (silent from start-up). It publishes to a private mosquitto (persistence on,
so a subscriber with a persistent session misses nothing across a broker restart) and writes to
a private influxd 1.6 through an HTTP front of this script's own: the front passes every write
through to influxd, except while a fault needs an answer a real influxd cannot give (413, 422,
a 301/302 redirect, a blanket 400). With influxd stopped the front drops each connection
unanswered. The recorder writes to a small tmpfs (mounted here, as root) that is shrunk to fill up.

The faults, each for a bounded time: a corrupt spool at start (garbage; it must be moved
aside), a sensor silent from start-up (its sensor_fault within stale_after_s + 2 s of READY),
the broker down then up, influxd down then up, 413 for bodies over 1,500 bytes, 422 for points
older than the fault (after a few seconds of 503, so there is a backlog to refuse), redirects,
a blanket 400, a full disk under the recorder, a SIGHUP with a config naming a missing password
file (refused: the old daemon keeps running) and the SIGHUP that restores the config (accepted),
a sensor sending garbage, and a sensor at 2,000 lines/s (held to its `max_rate_hz`, the default
50 lines a second: the daemon drops the excess before parsing and counts it).

Every line a feeder writes carries a value that is unique within the run, so each sample is
followed by (sensor, quantity, value). For each fault it prints:

- how long the fault lasted;
- samples written by the feeders during the fault, and how many of them reached the MQTT
  subscriber, InfluxDB and the recorder's CSV once the fault was gone; those InfluxDB refused
  and the spool set aside (its `rejected` table) are counted apart, and so are the lines the
  rate limit dropped: the samples in no output (not even the CSV) of a sensor whose count of
  them equals the daemon's own count (`rate_dropped` in `sensor_health`, read from P/metrics
  before the fault and once it is gone), line for line; `lost` counts what is missing from an
  output and neither set aside nor counted as dropped, and says whether the daemon never read
  it (in no output, not even the CSV) or read it and did not deliver it;
- blind: how late the daemon read a `pa` line at worst (its sample's timestamp minus the moment
  the feeder wrote it), the longest gap between consecutive `pa` samples (by their own
  timestamps, as finally delivered; beside it the feeder's own longest gap between writes, as
  the feeder shares this process with the faults), between `hab` estimates (the config asks
  for one a second), and between WATCHDOG=1 pings (every 0.5 s, sent only while samples arrive);
- live: the longest time a `pa` sample of the fault took to reach the subscriber, and how long
  after the fault every sample of it had reached MQTT and InfluxDB;
- RSS at the fault's peak, plus checks of what the fault must show (a file moved aside, an
  advisory raised and cleared, no redirect followed, ...).

At the end: totals (the rate limit's drops matched the same way over the whole run), RSS at
start (after a warm-up) / peak / end, the SIGTERM time and exit code, and the tracebacks in
the daemon's log. RESULT is PASS (exit 0) only if nothing is lost, every
check holds, RSS grows less than 60 MB, SIGTERM ends the daemon with 0 within 10 s and its log
holds no traceback.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.server
import json
import math
import os
import pty
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from daemon_rig import Daemon, FakeSystemd  # noqa: E402
from influxd_fixture import HAVE_INFLUXD, Influxd  # noqa: E402
from mosquitto_fixture import HAVE_MOSQUITTO, Broker  # noqa: E402

STATION = "marathon"
PREFIX = f"hullwatch/{STATION}"
STALE_AFTER_S = 2.0
REPORT_S = 1.0  # an estimate per volume at least this often: a fine measure of blindness
FEED_HZ = 10.0
FLOOD_HZ = 2000.0
MAX_BODY = 1500  # the front's 413 limit, bytes
KIB = 1024

Key = tuple[str, str, float]  # (sensor, quantity, value rounded to 1e-5): unique within a run


def key(sensor: str, quantity: str, value: float) -> Key:
    return (sensor, quantity, round(float(value), 5))


# -- the transducers ----------------------------------------------------------------------------


class Feeder:
    """A pty pair playing one transducer: the daemon opens `port`; a thread writes lines and logs each sample.

    Modes: "normal" (a line every 1/rate s, each value unique), "silent", "garbage" (random bytes, and
    one over-long line). Writes never block: what the pty cannot take waits here, and a sample counts
    as written once its whole line is in the kernel.
    """

    def __init__(self, name: str, both: bool = False, mode: str = "normal", seed: int = 1) -> None:
        self.name = name
        self.both = both  # "P=... T=..." lines: a pressure and a temperature sample each
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo before the daemon configures the port
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self.mode = mode
        self.rate = FEED_HZ
        self.k = 0
        self.written: list[tuple[float, Key]] = []  # (wall time, sample)
        self._rng = random.Random(seed)
        self._out = bytearray()
        self._queued = 0  # bytes handed to _out since the start
        self._sent = 0  # bytes the kernel took
        self._pending: list[tuple[int, list[Key]]] = []  # (end offset, samples of the line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set(self, mode: str, rate: float = FEED_HZ) -> None:
        self.mode, self.rate = mode, rate

    def line_regex(self) -> str:
        if self.both:
            return "^P=(?P<pressure>[0-9.]+) T=(?P<temperature>[0-9.]+)$"
        return "^(?P<pressure>[0-9.]+)$"

    def _next_line(self) -> tuple[bytes, list[Key]]:
        if self.mode == "garbage":
            if self._rng.random() < 0.02:
                return b"x" * 200_000 + b"\n", []  # longer than any line the driver keeps
            junk = bytes(self._rng.choice(range(256)) for _ in range(self._rng.randint(8, 60)))
            return junk.replace(b"\n", b"?").replace(b"\r", b"?") + b"\n", []
        self.k += 1
        p = 101000.0 + self.k * 0.001
        if self.both:
            t = 295.0 + self.k * 0.00001
            return f"P={p:.3f} T={t:.5f}\n".encode(), [
                key(self.name, "pressure", float(f"{p:.3f}")),
                key(self.name, "temperature", float(f"{t:.5f}")),
            ]
        return f"{p:.3f}\n".encode(), [key(self.name, "pressure", float(f"{p:.3f}"))]

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self.mode == "silent":
                due = now
            else:
                if due < now - 1.0:  # the pty is full (nobody reads): lines not made are not banked
                    due = now
                made = 0
                while due <= now and len(self._out) < 64 * KIB and made < 5000:
                    data, samples = self._next_line()
                    self._out += data
                    self._queued += len(data)
                    if samples:
                        self._pending.append((self._queued, samples))
                    due += 1.0 / self.rate
                    made += 1
            self._flush()
            self._stop.wait(0.005)

    def _flush(self) -> None:
        if self._out:
            try:
                n = os.write(self.master, self._out)
            except (BlockingIOError, OSError):
                n = 0
            del self._out[:n]
            self._sent += n
        now = time.time()
        done = 0
        for end, samples in self._pending:
            if end > self._sent:
                break
            self.written += [(now, s) for s in samples]
            done += 1
        del self._pending[:done]

    def between(self, t0: float, t1: float) -> set[Key]:
        """The samples whose lines were written in [t0, t1] (wall time)."""
        return {k for t, k in list(self.written) if t0 <= t <= t1}

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- InfluxDB: a front with switchable faults, in front of a real influxd -------------------------


class InfluxFront:
    """An HTTP server that passes writes to influxd, or answers a fault a real influxd cannot give.

    mode None: pass through (influxd down: the connection is dropped unanswered); "413": bodies over
    MAX_BODY refused, the rest passed; "503": every write refused as unavailable; "422": points
    older than `cutoff_ns` refused as beyond retention, the rest written (as InfluxDB 2.x does);
    "301"/"302": a redirect to /moved, a page that answers a GET with 200; "400": a blanket 400.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: str | None = None
        self.cutoff_ns = 0
        self.answers: Counter[tuple[str, int]] = Counter()  # (mode, status) of each POST
        self.gets = 0
        self.dropped = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = front.mode
                answer = front._answer(mode, self.path, body)
                if answer is None:  # influxd down: drop the connection unanswered
                    front.dropped += 1
                    self.close_connection = True
                    return
                status, text = answer
                front.answers[(mode or "pass", status)] += 1
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", "/moved")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def do_GET(self) -> None:  # noqa: N802
                front.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "15")
                self.end_headers()
                self.wfile.write(b"<html>ok</html>")

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _answer(self, mode: str | None, path: str, body: bytes) -> tuple[int, bytes] | None:
        if mode == "400":
            return 400, b"<html>400 Bad Request</html>"
        if mode == "503":
            return 503, b'{"error":"service unavailable"}'
        if mode in ("301", "302"):
            return int(mode), b""
        if mode == "413" and len(body) > MAX_BODY:
            return 413, b'{"error":"request entity too large"}'
        refused = 0
        if mode == "422":
            keep = []
            for line in body.decode().splitlines():
                if int(line.rsplit(" ", 1)[1]) < self.cutoff_ns:
                    refused += 1
                else:
                    keep.append(line)
            body = "\n".join(keep).encode()
            if not keep:
                return 422, f'{{"error":"partial write: points beyond retention policy dropped={refused}"}}'.encode()
        answer = self._forward(path, body)
        if answer is None or not refused or not 200 <= answer[0] < 300:
            return answer
        return 422, f'{{"error":"partial write: points beyond retention policy dropped={refused}"}}'.encode()

    def _forward(self, path: str, body: bytes) -> tuple[int, bytes] | None:
        req = urllib.request.Request(self.upstream + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- MQTT: a subscriber with a persistent session ---------------------------------------------


class Subscriber:
    """Everything the daemon publishes under PREFIX: samples by key, estimates, alarm messages."""

    def __init__(self, port: int) -> None:
        self.samples: dict[Key, list[tuple[float, float]]] = {}  # key -> [(arrival wall, sample time)]
        self.estimates: list[tuple[float, str, float]] = []  # (arrival wall, volume, estimate time)
        self.alarms: list[tuple[float, str, str, str]] = []  # (arrival wall, alarm, source, state)
        self.metrics: list[tuple[float, dict]] = []  # (arrival wall, P/metrics)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="marathon-sub", clean_session=False)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{PREFIX}/#", qos=1)
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parts = msg.topic[len(PREFIX) + 1 :].split("/")
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self._lock:
            if parts[0] == "sensor" and isinstance(body, dict) and body.get("value") is not None:
                k = key(parts[1], body["quantity"], body["value"])
                self.samples.setdefault(k, []).append((now, body["time"]))
            elif parts[0] == "volume" and isinstance(body, dict):
                self.estimates.append((now, parts[1], body["time"]))
            elif parts[0] == "alarm" and len(parts) == 4 and isinstance(body, dict):
                self.alarms.append((now, parts[1], parts[2], body.get("state", "")))
            elif parts == ["metrics"] and isinstance(body, dict):
                self.metrics.append((now, body))

    def have(self, keys: set[Key]) -> set[Key]:
        with self._lock:
            return {k for k in keys if k in self.samples}

    def sample_times(self, sensor: str) -> list[float]:
        with self._lock:
            return sorted(v[0][1] for k, v in self.samples.items() if k[0] == sensor)

    def first_alarm(self, alarm: str, source: str, state: str, after: float = 0.0) -> float | None:
        with self._lock:
            return next((t for t, a, s, st in self.alarms if (a, s, st) == (alarm, source, state) and t >= after), None)

    def rate_dropped(self, after: float, before: float, latest: bool) -> Counter[str] | None:
        """Each sensor's `rate_dropped` in the latest (or first) P/metrics that arrived between `after` and
        `before` (None if none did)."""
        with self._lock:
            found = [b for t, b in self.metrics if after < t < before]
        if not found:
            return None
        sensors = found[-1 if latest else 0].get("sensors", {})
        return Counter({name: int(h.get("rate_dropped", 0)) for name, h in sensors.items()})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the daemon's memory ------------------------------------------------------------------------


class RssWatch:
    """VmRSS of one process every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.points: list[tuple[float, int]] = []  # (wall time, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            self.points.append((time.time(), kib))

    def now(self) -> int:
        return self.points[-1][1] if self.points else 0

    def peak(self, t0: float = 0.0, t1: float = float("inf")) -> int:
        return max((k for t, k in list(self.points) if t0 <= t <= t1), default=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


# -- a fault's record ---------------------------------------------------------------------------


@dataclass
class Window:
    """One fault: when it ran (wall and monotonic) and what was checked on the way."""

    name: str
    t0: float
    m0: float
    t1: float = 0.0
    m1: float = 0.0
    counts: bool = True  # whether samples were written during it
    checks: list[tuple[str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caught_up_s: float | None = None
    settled: float = 0.0  # wall time once every sample of it was delivered (or known never read)
    after: Callable[[], object] | None = None  # checks to run once the fault is gone and caught up

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)


def longest_gap(times: list[float], t0: float, t1: float) -> float:
    """The longest gap between consecutive times around [t0, t1], counting the ones just outside it."""
    times = sorted(times)
    lo = max(0, bisect.bisect_left(times, t0) - 1)
    hi = min(len(times), bisect.bisect_right(times, t1) + 1)
    inside = times[lo:hi]
    if len(inside) < 2:
        return t1 - t0
    return max(b - a for a, b in zip(inside, inside[1:], strict=False))


def wait_until(predicate, timeout: float, every: float = 0.1) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


# -- the marathon -------------------------------------------------------------------------------


class Marathon:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        self.hold_s = 4.0 if quick else 20.0
        self.flood_s = 5.0 if quick else 20.0
        self.catch_up_s = 30.0 if quick else 90.0
        self.windows: list[Window] = []
        self.started = time.monotonic()
        self.spool = work / "spool.sqlite"
        self.disk_note = ""

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    # set-up ---------------------------------------------------------------------------------

    def set_up(self) -> None:
        work = self.work
        self.broker = Broker(work / "broker")
        conf = self.broker.conf.read_text().replace(
            "persistence false", f"persistence true\npersistence_location {work / 'broker'}/\nmax_queued_messages 0"
        )
        self.broker.conf.write_text(conf)
        self.broker.start()
        self.influx = Influxd(work / "influx")
        self.front = InfluxFront(self.influx.url)
        self.feeders = {
            "pa": Feeder("pa"),
            "pt": Feeder("pt", both=True),
            "pg": Feeder("pg", seed=7),
            "pf": Feeder("pf"),
            "ps": Feeder("ps", mode="silent"),
        }
        self.small = work / "small"
        self.small.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.small)]
        self.mounted = subprocess.run(mount, capture_output=True).returncode == 0
        self.disk_note = "a 16 MiB tmpfs shrunk to what it holds" if self.mounted else "no tmpfs (not root)"
        self.recorder = self.small / "samples.csv"
        segments = {"pa": "hab", "pt": "hab", "pg": "lock", "pf": "node", "ps": "aft"}
        text = f'[station]\nname = "{STATION}"\n'
        for seg, vol in (("hab", 20.0), ("lock", 5.0), ("node", 10.0), ("aft", 8.0)):
            text += f'\n[[segment]]\nname = "{seg}"\nvolume_m3 = {vol}\n'
        for name, f in self.feeders.items():
            units = '{ pressure = "Pa", temperature = "K" }' if f.both else '{ pressure = "Pa" }'
            text += (
                f'\n[[sensor]]\nname = "{name}"\nsegment = "{segments[name]}"\ndriver = "serial"\n'
                f"port = \"{f.port}\"\nline_regex = '{f.line_regex()}'\nunits = {units}\n"
            )
        text += f"\n[leak]\nreport_interval_s = {REPORT_S}\n"
        text += f"\n[alarms.sensor]\nstale_after_s = {STALE_AFTER_S}\n"
        text += f'\n[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
        text += f'\n[influxdb]\nurl = "{self.front.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
        text += f'\n[spool]\npath = "{self.spool}"\n'
        text += f'\n[recorder]\npath = "{self.recorder}"\n'
        self.config_text = text
        self.config = work / "hullwatch.toml"
        self.config.write_text(text)
        self.spool.write_bytes(random.Random(3).randbytes(300_000))  # a corrupt spool: garbage
        self.subscriber = Subscriber(self.broker.port)
        self.systemd = FakeSystemd(work / "notify.sock")

    # start-up: corrupt spool, silent sensor -------------------------------------------------

    def start(self) -> None:
        corrupt = Window("corrupt spool at start (300 kB of garbage)", time.time(), time.monotonic(), counts=False)
        silent = Window("sensor silent from start-up (ps)", corrupt.t0, corrupt.m0, counts=False)
        self.log = self.work / "daemon.log"
        self.daemon = Daemon(self.config, self.log, self.systemd)
        self.rss = RssWatch(self.daemon.proc.pid)
        moved = self.daemon.wait_for_log("moved aside", 60)
        corrupt.t1, corrupt.m1 = time.time(), time.monotonic()
        ready = self.systemd.wait_for("READY=1", timeout=60)
        if ready is None:
            raise RuntimeError(f"the daemon did not start:\n{self.daemon.text()[-3000:]}")
        corrupt.check("the log says the spool was moved aside", moved)
        corrupt.check("a *.corrupt-* file is left", any(".corrupt-" in p.name for p in self.work.iterdir()))
        corrupt.check("READY=1", ready is not None)
        corrupt.notes.append(
            f"process start -> moved aside {corrupt.m1 - corrupt.m0:.2f} s, -> READY {ready - corrupt.m0:.2f} s"
        )
        for name in self.feeders:  # pyserial flushes a port's input when it opens it: write only after that
            self.daemon.wait_for_log(f"{name}: reading", 30)
        for f in self.feeders.values():
            f.start()
        ready_wall = time.time() - (time.monotonic() - ready)
        seen = wait_until(lambda: self.subscriber.first_alarm("sensor_fault", "ps", "active") is not None, 30)
        silent.t1, silent.m1 = time.time(), time.monotonic()
        spool_fault = wait_until(lambda: self.subscriber.first_alarm("spool_fault", "spool", "active"), 20)
        corrupt.check("spool_fault advisory published", spool_fault)
        if seen:
            took = self.subscriber.first_alarm("sensor_fault", "ps", "active") - ready_wall
            silent.notes.append(f"READY -> sensor_fault ps active at the subscriber: {took:.2f} s")
            silent.check(f"within stale_after_s + 2 s = {STALE_AFTER_S + 2:g} s", took <= STALE_AFTER_S + 2)
        else:
            silent.check("sensor_fault ps published", False)
        self.windows += [corrupt, silent]
        self.say(f"started; {corrupt.notes[0]}; {silent.notes[0] if silent.notes else 'no sensor_fault for ps'}")

    # faults ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def fault(self, name: str):  # noqa: ANN201
        w = Window(name, time.time(), time.monotonic())
        self.say(f"fault: {name}")
        yield w
        w.t1, w.m1 = time.time(), time.monotonic()
        self.windows.append(w)
        self.catch_up(w)
        if w.after is not None:
            w.after()

    def hold(self, seconds: float | None = None) -> None:
        time.sleep(self.hold_s if seconds is None else seconds)

    def written(self, w: Window, t1: float | None = None) -> set[Key]:
        t1 = w.t1 if t1 is None else t1
        return set().union(*(f.between(w.t0, t1) for f in self.feeders.values()))

    def influx_have(self, keys: set[Key], since: float) -> set[Key]:
        q = f'SELECT value FROM sensor WHERE time >= {int((since - 5) * 1e9)} GROUP BY "sensor","quantity"'
        try:
            rows = self.influx.rows(q)
        except OSError:
            return set()
        got = {key(tags["sensor"], tags["quantity"], r["value"]) for tags, r in rows if r["value"] is not None}
        return keys & got

    def set_aside(self) -> dict[Key, tuple[str, str]]:
        """The samples the spool set aside: key -> (sink, reason)."""
        try:
            db = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=5)
            try:
                rows = db.execute("SELECT sink, body, reason FROM rejected WHERE kind = 'sample'").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return {}
        out = {}
        for sink, body, reason in rows:
            b = json.loads(body)
            if b.get("value") is not None:
                out[key(b["sensor"], b["quantity"], b["value"])] = (sink, reason)
        return out

    def rejected_rows(self) -> int:
        """How many records of any kind the spool has set aside so far."""
        try:
            db = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute("SELECT count(*) FROM rejected").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            return -1

    def catch_up(self, w: Window) -> None:
        """Wait until every sample of the fault is at the subscriber and in InfluxDB (or set aside).

        Samples in no output at all (not even the recorder's CSV) 5 s after the fault were never read
        by the daemon: nothing holds them, so they are not waited for (the report counts them), and the
        fault counts as caught up from the moment every other sample was delivered.
        """
        keys = self.written(w)
        missing: set[Key] = set()
        delivered_at: float | None = None  # since when only samples in no output at all are missing

        def done() -> bool:
            nonlocal missing, delivered_at
            mqtt_got = self.subscriber.have(keys)
            aside = {k for k, (sink, _) in self.set_aside().items() if sink == "influxdb"}
            influx_got = self.influx_have(keys - aside, w.t0) | (keys & aside)
            missing = keys - (mqtt_got & influx_got)
            if not missing:
                return True
            if not self.mounted:
                return False
            if missing & (mqtt_got | influx_got | self.csv_rows()):
                delivered_at = None  # something read is still on its way
            elif delivered_at is None:
                delivered_at = time.monotonic()
            return delivered_at is not None and time.monotonic() - w.m1 >= 5.0  # only samples never read

        caught = wait_until(done, self.catch_up_s, every=0.5)
        w.settled = time.time()
        if caught:
            w.caught_up_s = (delivered_at if missing and delivered_at else time.monotonic()) - w.m1
            never = f", except {len(missing)} never read" if missing else ""
            self.say(
                f"  caught up {w.caught_up_s:.1f} s after the fault{never} ({len(keys)} samples written during it)"
            )
        else:
            self.say(f"  NOT caught up within {self.catch_up_s:.0f} s: {len(missing)} sample(s) missing")
        time.sleep(1.0)

    def run_faults(self) -> None:
        time.sleep(3.0)  # warm-up
        self.rss_start = self.rss.now()
        self.t_start = time.time()

        with self.fault("MQTT broker down, then up") as w:
            self.broker.stop()
            self.hold()
            self.broker.start()

        with self.fault("influxd down, then up") as w:
            self.influx.stop()
            self.hold()
            self.influx.start()

        with self.fault(f"InfluxDB answers 413 to bodies over {MAX_BODY} bytes") as w:
            self.front.mode = "413"
            self.hold()
            self.front.mode = None
            w.check("the front answered 413", self.front.answers[("413", 413)] > 0)
            w.notes.append(f"front: {self.answers('413')}")

        blackout = 3.0 if self.quick else 5.0
        with self.fault(f"InfluxDB 503 for {blackout:g} s, then 422 for points older than that") as w:
            self.front.mode = "503"
            time.sleep(blackout)
            self.front.cutoff_ns = time.time_ns()
            self.front.mode = "422"
            self.hold()
            self.front.mode = None
            w.check("the front answered 422", self.front.answers[("422", 422)] > 0)
            w.notes.append(f"front: {self.answers('503')}; {self.answers('422')}")

        with self.fault("InfluxDB redirects (301, then 302) to a page that answers GET") as w:
            self.front.mode = "301"
            self.hold(self.hold_s / 2)
            self.front.mode = "302"
            self.hold(self.hold_s / 2)
            self.front.mode = None
            w.check("no redirect followed (no GET)", self.front.gets == 0)
            w.check("the log names the redirect", "redirects to" in self.daemon.text())
            w.notes.append(f"front: {self.answers('301')}; {self.answers('302')}; GETs {self.front.gets}")

        with self.fault("InfluxDB answers 400 to everything (a proxy)") as w:
            before = self.rejected_rows()
            self.front.mode = "400"
            self.hold()
            self.front.mode = None
            w.notes.append(f"front: {self.answers('400')}")
            w.after = lambda w=w, before=before: w.check(
                "no record of any kind set aside", self.rejected_rows() == before
            )

        if self.mounted:
            with self.fault(f"full disk under the recorder ({self.disk_note})") as w:
                mark = len(self.daemon.text())
                st = os.statvfs(self.small)
                used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // KIB
                self._remount(used_kib + 4)
                w.check("recorder_fault raised", self.daemon.wait_for_log("recorder_fault recorder ACTIVE", 30, mark))
                self.hold()
                self._remount(16 * KIB)
                w.check("recorder_fault cleared", self.daemon.wait_for_log("recorder_fault recorder CLEARED", 60, mark))
                w.check("ENOSPC in the log", "No space left" in self.daemon.text()[mark:])
        else:
            self.say("full disk: skipped (cannot mount a tmpfs)")

        with self.fault("SIGHUP with a config naming a missing password file (refused)") as w:
            mark = len(self.daemon.text())
            bad = self.config_text.replace(
                "[mqtt]\n", f'[mqtt]\nusername = "marathon"\npassword_file = "{self.work / "no-such-password"}"\n'
            )
            self.config.write_text(bad)
            pid = self.daemon.proc.pid
            os.kill(pid, signal.SIGHUP)
            w.check("the log says the reload was refused", self.daemon.wait_for_log("reload refused", 30, mark))
            w.check(
                "reload_fault published",
                wait_until(lambda: self.subscriber.first_alarm("reload_fault", "config", "active"), 20),
            )
            self.hold()
            w.check("the same process still runs", self.daemon.alive() and self.daemon.proc.pid == pid)

        with self.fault("SIGHUP with the config restored (accepted: the daemon is swapped)") as w:
            mark = len(self.daemon.text())
            self.config.write_text(self.config_text)
            os.kill(self.daemon.proc.pid, signal.SIGHUP)
            w.check("the log says reloaded", self.daemon.wait_for_log("configuration reloaded", 30, mark))
            w.check(
                "every sensor handed over running (unchanged), no port opened again",
                "reload: pa, pt, pg, pf, ps unchanged" in self.daemon.text()[mark:]
                and ": reading /dev/" not in self.daemon.text()[mark:],
            )
            self.hold(max(3.0, self.hold_s / 4))

        with self.fault("sensor pg sends garbage (random bytes, over-long lines)") as w:
            after = time.time()
            self.feeders["pg"].set("garbage")
            self.hold()
            self.feeders["pg"].set("normal")
            raised = self.subscriber.first_alarm("sensor_fault", "pg", "active", after)
            w.check("sensor_fault pg raised", raised is not None)
            w.after = lambda w=w, after=after: w.check(
                "sensor_fault pg cleared after it",
                self.subscriber.first_alarm("sensor_fault", "pg", "cleared", after) is not None,
            )

        name = (
            f"sensor pf at {FLOOD_HZ:,.0f} lines/s for {self.flood_s:g} s (max_rate_hz the default 50), then 2 s at 10"
        )
        now = time.time()  # P/metrics come every 10 s: one before the flood and one after count its drops
        wait_until(lambda: self.subscriber.rate_dropped(now, math.inf, False) is not None, 30)
        with self.fault(name) as w:
            pf = self.feeders["pf"]
            mark = len(self.daemon.text())
            k0 = pf.k
            pf.set("normal", FLOOD_HZ)
            time.sleep(self.flood_s)
            pf.set("normal", FEED_HZ)
            w.notes.append(f"pf wrote {(pf.k - k0) / self.flood_s:,.0f} lines/s")
            time.sleep(2.0)  # the lines right after the flood are in the window too (the rate limit may drop them)
            w.check(
                "the log says pf's excess lines are dropped", "pf: lines: more than 50" in self.daemon.text()[mark:]
            )

    def answers(self, mode: str) -> str:
        got = {s: n for (m, s), n in self.front.answers.items() if m == mode}
        return ", ".join(f"{n} x {s}" for s, n in sorted(got.items())) or f"no answers in mode {mode}"

    def _remount(self, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self.small)], check=True, capture_output=True)

    # the end --------------------------------------------------------------------------------

    def finish(self) -> None:
        self.t_end = time.time()
        everything = Window("the whole run", self.t_start, 0.0, self.t_end, time.monotonic())
        self.catch_up(everything)
        fresh = wait_until(lambda: self.subscriber.rate_dropped(everything.settled, math.inf, False) is not None, 30)
        if not fresh:
            self.say("no P/metrics after the end: the rate limit's count is unknown")
        self.rss_end = self.rss.now()
        code, took = self.daemon.stop(timeout=30)
        self.stop_result = (code, took)
        self.say(f"SIGTERM: exit {code} in {took:.2f} s")
        self.rss.close()
        self.everything = everything

    def csv_rows(self) -> set[Key]:
        rows: set[Key] = set()
        self.torn = 0
        for path in sorted(self.small.glob("samples*.csv")):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                self.torn += 1
            for line in data.decode(errors="replace").splitlines()[1:]:
                parts = line.split(",")
                with contextlib.suppress(ValueError, IndexError):
                    if parts[3] != "nan":
                        rows.add(key(parts[1], parts[2], float(parts[3])))
        return rows

    def report(self) -> bool:
        aside = self.set_aside()
        csv = self.csv_rows()
        mqtt_all = self.subscriber.samples
        influx_all = self.influx_have(self.written(self.everything), self.t_start)
        ok = True
        out = [
            "",
            "=" * 100,
            "FAULT MARATHON: one `hullwatch run`, " + ("--quick" if self.quick else "full"),
            "=" * 100,
        ]
        for j, w in enumerate(self.windows):
            before = max(self.windows[j - 1].t1, self.windows[j - 1].settled) if j else 0.0
            after = self.windows[j + 1].t0 if j + 1 < len(self.windows) else math.inf
            ok &= self._report_window(w, out, aside, csv, influx_all, mqtt_all, (before, after))
        written = self.written(self.everything)
        never = written - set(mqtt_all) - influx_all - set(aside) - csv
        dropped, said = self.rate_limited(never, (0.0, self.t_start), (self.everything.settled, math.inf))
        keys = written - dropped
        lost_mqtt = keys - set(mqtt_all)
        lost_influx = keys - influx_all - set(aside)
        lost_csv = keys - csv
        out += ["", "-" * 100, "Totals (every sample written from the end of the warm-up to the end of the faults)"]
        out.append(
            f"  written {len(written):,}; MQTT {len(written & set(mqtt_all)):,}; InfluxDB {len(written & influx_all):,}"
            f" + set aside {len(written & set(aside)):,}; recorder CSV {len(written & csv):,}"
        )
        if said:
            out.append(f"  {said}")
        lost = len(lost_mqtt) + len(lost_influx) + len(lost_csv)
        m_all = keys - lost_mqtt
        out.append(
            ("  lost: 0" if not lost else "  lost: " + self.where_lost(keys, m_all, keys - lost_influx, csv))
            + (f" (besides the {len(dropped):,} samples dropped by the rate limit and counted)" if dropped else "")
        )
        reasons = Counter((sink, reason.split(":")[0][:60]) for k, (sink, reason) in aside.items() if k in keys)
        for (sink, reason), n in reasons.items():
            out.append(f"  set aside by {sink}: {n:,} ({reason}...)")
        last = self.subscriber.metrics[-1][1].get("sensors", {}) if self.subscriber.metrics else {}
        counters = [
            f"{name} " + ", ".join(f"{k} {v:,}" for k, v in h.items() if k not in ("quality", "silent_s") and v)
            for name, h in sorted(last.items())
        ]
        out.append(
            "  sensor_health at the end (non-zero counts): " + "; ".join(c for c in counters if " " in c.strip())
        )
        dups = sum(len(v) - 1 for k, v in mqtt_all.items() if k in keys)
        out.append(f"  MQTT duplicates (at-least-once): {dups:,}; recorder files ending in a torn row: {self.torn}")
        peak = self.rss.peak()
        peak_at = max(self.rss.points, key=lambda p: p[1])[0]
        where = [w.name for w in self.windows if w.t0 <= peak_at]
        where = f"first reached during or after: {where[-1]}" if where else "before the faults"
        out.append(
            f"  RSS: start {self.rss_start / KIB:.1f} MB (after a 3 s warm-up), peak {peak / KIB:.1f} MB ({where}),"
            f" end {self.rss_end / KIB:.1f} MB"
        )
        growth_ok = (peak - self.rss_start) / KIB <= 60
        code, took = self.stop_result
        out.append(f"  SIGTERM: exit {code} in {took:.2f} s")
        text = self.daemon.text()
        tracebacks = text.count("Traceback")
        out.append(f"  daemon log: {tracebacks} traceback(s), {text.count(' ERROR ')} ERROR line(s)")
        out.append(f"  run time {time.monotonic() - self.started:.0f} s")
        ok &= not lost and growth_ok and code == 0 and took < 10 and tracebacks == 0
        out.append(f"  RESULT: {'PASS' if ok else 'FAIL'}")
        print("\n".join(out), flush=True)
        return ok

    def rate_limited(
        self, never: set[Key], base: tuple[float, float], end: tuple[float, float]
    ) -> tuple[set[Key], str | None]:
        """Of `never` (samples in no output, not even the CSV), those the daemon's own `rate_dropped` accounts for.

        A sensor's unread lines are accounted for only if their number equals exactly the growth of its
        `rate_dropped` from the latest P/metrics that arrived within `base` (after the previous fault
        settled, before this one began) to the first within `end` (after this one settled, before the
        next began). Also a line that says what was counted and what was never read (None if neither).
        """
        before = self.subscriber.rate_dropped(*base, latest=True)
        after = self.subscriber.rate_dropped(*end, latest=False)
        unread = Counter(k[0] for k in never if k[1] == "pressure")  # one pressure a line (pt's: and a temperature)
        counted = None if before is None or after is None else after - before
        if not counted and not unread:
            return set(), None
        if counted is None:
            return set(), f"lines never read: {sum(unread.values()):,}; no P/metrics between this fault and the next"
        matched = {name for name, n in unread.items() if counted.get(name) == n}
        accounted = {k for k in never if k[0] in matched}

        def each(c: Counter[str]) -> str:
            return ", ".join(f"{name} {n:,}" for name, n in sorted(c.items())) or "none"

        verdict = "the same, line for line" if counted == unread else "NOT the same"
        said = (
            "dropped by the rate limit, counted by the daemon (rate_dropped in P/metrics sensor_health):"
            f" {each(counted)};"
            f" lines never read: {each(unread)}: {verdict}"
        )
        return accounted, said

    def where_lost(self, keys: set[Key], mqtt_got: set[Key], influx_got: set[Key], csv: set[Key]) -> str:
        """Where the missing samples went: never read (in no output, not even the recorder's CSV), or read
        (in the CSV) and missing from a sink."""
        nowhere = keys - mqtt_got - influx_got - csv
        parts = []
        if nowhere:
            by_sensor = Counter(k[0] for k in nowhere)
            parts.append(
                f"{len(nowhere)} never read by the daemon (in no output, not in the recorder's CSV either: "
                + ", ".join(f"{s} {n}" for s, n in sorted(by_sensor.items()))
                + ")"
            )
        read = keys - nowhere
        for what, got in (("MQTT subscriber", mqtt_got), ("InfluxDB", influx_got), ("recorder CSV", csv)):
            missing = read - got
            if missing:
                parts.append(f"{len(missing)} read but not in the {what}")
        return "; ".join(parts)

    def _report_window(
        self,
        w: Window,
        out: list[str],
        aside: dict[Key, tuple[str, str]],
        csv: set[Key],
        influx_all: set[Key],
        mqtt_all: dict[Key, list],
        neighbours: tuple[float, float],
    ) -> bool:
        out += ["", f"{w.name}: lasted {w.m1 - w.m0:.1f} s"]
        ok = all(passed for _, passed in w.checks)
        if w.counts:
            written = self.written(w)
            m = {k for k in written if k in mqtt_all}
            i = written & influx_all
            a = written & {k for k, (sink, _) in aside.items() if sink == "influxdb"}
            c = written & csv if self.mounted else set()
            base, end = (neighbours[0], w.t0), (w.settled, neighbours[1])
            dropped, said = self.rate_limited(written - m - i - a - c, base, end)
            keys = written - dropped
            lost_m, lost_i, lost_c = len(keys - m), len(keys - i - a), len(keys - c) if self.mounted else 0
            out.append(
                f"  samples written {len(written):,}; MQTT {len(m):,}; InfluxDB {len(i):,}"
                + (f" + set aside {len(a):,}" if a else "")
                + f"; recorder CSV {len(c):,}"
            )
            if said:
                out.append(f"  {said}")
            lost = lost_m + lost_i + lost_c
            out.append(
                ("  lost: 0" if not lost else "  lost: " + self.where_lost(keys, m, i | a, c))
                + (f" (besides the {len(dropped):,} samples dropped by the rate limit and counted)" if dropped else "")
            )
            ok &= not lost
            pa = self.subscriber.sample_times("pa")
            wrote = {k: t for t, k in self.feeders["pa"].written if w.t0 <= t <= w.t1}
            read_late = [mqtt_all[k][0][1] - t for k, t in wrote.items() if mqtt_all.get(k)]
            est = [t for _, vol, t in self.subscriber.estimates if vol == "hab"]
            wd = self.systemd.times("WATCHDOG=1")
            gaps = (longest_gap(pa, w.t0, w.t1), longest_gap(est, w.t0, w.t1), longest_gap(wd, w.m0, w.m1))
            feed_gap = longest_gap(sorted(wrote.values()), w.t0, w.t1)
            out.append(
                f"  blind: pa read at most {max(read_late, default=0):.3f} s after it was written; longest gap in pa"
                f" sample times {gaps[0]:.2f} s (the feeder's own longest gap {feed_gap:.2f} s, nominal 0.1 s),"
                f" in hab estimates {gaps[1]:.2f} s (every {REPORT_S:g} s), in WATCHDOG pings {gaps[2]:.2f} s"
                " (every 0.5 s)"
            )
            lags = [v[0][0] - v[0][1] for k, v in self.subscriber.samples.items() if k[0] == "pa" and k in keys and v]
            caught = f"{w.caught_up_s:.1f} s" if w.caught_up_s is not None else "not within the wait"
            out.append(
                f"  live: longest sample -> subscriber {max(lags, default=0):.2f} s; all delivered {caught} after"
                f"; RSS peak {self.rss.peak(w.t0, w.t1) / KIB:.1f} MB"
            )
        for note in w.notes:
            out.append(f"  {note}")
        for what, passed in w.checks:
            out.append(f"  [{'ok' if passed else 'FAILED'}] {what}")
        return ok

    def tear_down(self, keep: bool) -> None:
        for step in (
            lambda: self.daemon.kill(),
            lambda: self.subscriber.close(),
            lambda: self.systemd.close(),
            lambda: [f.close() for f in self.feeders.values()],
            lambda: self.front.close(),
            lambda: self.influx.stop(),
            lambda: self.broker.stop(),
            lambda: self.mounted and subprocess.run(["umount", "-l", str(self.small)], check=False),
        ):
            with contextlib.suppress(Exception):
                step()
        if keep:
            print(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short faults: under 2 minutes in all")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not (HAVE_MOSQUITTO and HAVE_INFLUXD):
        print("needs mosquitto and influxd (Debian packages mosquitto, influxdb)", file=sys.stderr)
        return 69
    work = Path(tempfile.mkdtemp(prefix="hullwatch-marathon-"))
    m = Marathon(work, args.quick)
    try:
        m.set_up()
        m.start()
        m.run_faults()
        m.finish()
        return 0 if m.report() else 1
    finally:
        m.tear_down(args.keep)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The fleet side: many stations -> mosquitto -> `hullwatch bridge` on a shared subscription -> InfluxDB.

    .venv/bin/python bench/fleet.py                  # 125 stations x 8 sensors x 10 Hz, 60 s, 1 then 2 bridges
    .venv/bin/python bench/fleet.py --seconds 20 --bridges 2

A private mosquitto (MQTT 5, `max_queued_messages` as deploy/mosquitto ships it) and a private
influxd 1.6 (v1 API) on free loopback ports. The stations are one process of their own
(`fleet.py stations ...`): one MQTT connection per station, each sending its sensors' ICD §5
sample messages (`sample_payload`, QoS 1, as `hullwatch run` does) at the sensors' rate, the
stations spread evenly over each period. Each load runs against fresh bridges (`python -m
hullwatch bridge`, one process each, their own spool, one `share_group`) and a fresh
database (also the group's name), for a warm-up and a measuring window, then waits (up to --drain seconds) until
InfluxDB has everything, and prints:

- stored/s: points InfluxDB gained over the window, per second;
- stored, lost and doubled: a sample is one point (its station, sensor and own time are its
  series and timestamp), so `count(value)` is the distinct samples stored; lost = published
  (acknowledged by the broker) - stored; doubled = records the bridges spooled - stored (a
  message delivered to two bridges, or twice to one);
- per bridge: its share of the records (from the cursor of its spool's InfluxDB sink), its CPU
  (% of one core over the window, utime + stime from /proc) and RSS (at the window's end);
- the CPU of mosquitto, influxd and the stations over the window, for the conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(0, str(ROOT / "tests"))

from hullwatch.core.model import Quantity, Sample  # noqa: E402
from hullwatch.mqtt5 import utf8 as _text  # noqa: E402
from hullwatch.mqtt5 import varint as _varint  # noqa: E402
from hullwatch.sinks.mqtt import sample_payload  # noqa: E402
from influxd_fixture import Influxd  # noqa: E402
from mosquitto_fixture import Broker  # noqa: E402

TICKS = 1 / os.sysconf("SC_CLK_TCK")


# -- the stations: raw MQTT 3.1.1, QoS 1, so that thousands of messages a second cost little CPU --------------


def connect_packet(client_id: str) -> bytes:
    body = _text("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _text(client_id)  # clean session
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH (topic already length-prefixed)."""
    body = topic + mid.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


def run_stations(port: int, stations: int, sensors: int, rate: float, seconds: float) -> dict:
    """Publish for `seconds`; {published, acked, late_s (the worst lag behind the schedule), cpu_s}."""
    period = 1.0 / rate
    socks = []
    for i in range(stations):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"station-{i:03d}"))
        if s.recv(4)[:1] != b"\x20":
            raise RuntimeError("no CONNACK")
        s.setblocking(False)
        socks.append(s)
    topics = [[_text(f"hullwatch/s{i:03d}/sensor/p{j}") for j in range(sensors)] for i in range(stations)]
    acked = [0] * stations  # bytes of PUBACK (4 each)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    slots = max(1, min(stations, 10))  # stations spread over the period in this many slots
    t0 = time.time() + 0.5
    published, mid, late = 0, 0, 0.0
    cpu0 = time.process_time()
    k = 0
    while True:
        tick = t0 + k * period / slots
        if tick >= t0 + seconds:
            break
        while (delay := tick - time.time()) > 0:
            for key, _ in sel.select(delay):
                with contextlib.suppress(BlockingIOError):
                    acked[key.data] += len(key.fileobj.recv(65536))
        late = max(late, -delay)
        n, slot = divmod(k, slots)
        for i in range(slot, stations, slots):
            t = t0 + n * period + slot * period / slots
            out = []
            for j in range(sensors):
                mid = mid % 65535 + 1
                sample = Sample(t, f"p{j}", Quantity.PRESSURE, 100_000.0 + j + n * 0.01)
                payload = json.dumps(sample_payload(sample), separators=(",", ":")).encode()
                out.append(publish_packet(topics[i][j], payload, mid))
            socks[i].setblocking(True)
            socks[i].sendall(b"".join(out))
            socks[i].setblocking(False)
            published += sensors
        k += 1
    end = time.monotonic() + 10
    while sum(acked) // 4 < published and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            with contextlib.suppress(BlockingIOError):
                acked[key.data] += len(key.fileobj.recv(65536))
    cpu = time.process_time() - cpu0
    for s in socks:
        with contextlib.suppress(OSError):
            s.sendall(b"\xe0\x00")  # DISCONNECT
        s.close()
    return {"published": published, "acked": sum(acked) // 4, "late_s": late, "cpu_s": cpu}


# -- measuring -----------------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stored(influx: Influxd) -> int:
    rows = influx.rows("SELECT count(value) FROM sensor")
    return rows[0][1]["count"] if rows else 0


@dataclass
class BridgeProc:
    proc: subprocess.Popen
    spool: Path
    log: Path

    def records(self) -> int:
        """Records its spool handed to InfluxDB (read after it stopped)."""
        with contextlib.closing(sqlite3.connect(self.spool)) as db:
            row = db.execute("SELECT done FROM cursor WHERE sink = 'influxdb'").fetchone()
        return row[0] if row else 0


def start_bridge(work: Path, name: str, broker: Broker, influx: Influxd, database: str, commit_s: float) -> BridgeProc:
    conf = work / f"{name}.toml"
    spool = work / f"{name}.sqlite"
    conf.write_text(
        f'[bridge]\nstations = ["+"]\nclient_id = "{name}"\nshare_group = "{database}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "{database}"\n'
        f'[spool]\npath = "{spool}"\ncommit_interval_s = {commit_s}\n'
    )
    log = work / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hullwatch", "bridge", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=f,
            env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")},
        )
    return BridgeProc(proc, spool, log)


def wait_for(pred, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def measure(args: argparse.Namespace, work: Path, broker: Broker, influx: Influxd, bridges: int) -> None:
    database = f"fleet{bridges}"  # also the share group: the stopped bridges of a load before keep their
    # sessions (24 h) and with them their place in the group, where mosquitto would queue a share for them
    broker_log = len(broker.log_text())
    influx.query(f'CREATE DATABASE "{database}"', post=True)
    influx.database = database
    procs = [start_bridge(work, f"bridge-{bridges}-{i}", broker, influx, database, args.commit) for i in range(bridges)]
    try:
        if not wait_for(lambda: all("bridge: connected" in p.log.read_text() for p in procs), 30):
            raise RuntimeError("a bridge did not connect: " + " | ".join(p.log.read_text() for p in procs))
        time.sleep(1.0)  # the SUBACKs
        total_s = args.warmup + args.seconds
        stations = subprocess.Popen(
            [sys.executable, __file__, "stations", str(broker.port), str(args.stations), str(args.sensors),
             str(args.rate), str(total_s)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        others = {"mosquitto": broker.proc.pid, "influxd": influx.proc.pid, "stations": stations.pid}
        time.sleep(0.5 + args.warmup)
        c0 = {p.proc.pid: cpu_s(p.proc.pid) for p in procs} | {n: cpu_s(pid) for n, pid in others.items()}
        w0, s0 = time.monotonic(), stored(influx)  # timed as the count starts: at the end it takes ~0.5 s
        time.sleep(args.seconds)
        c1 = {p.proc.pid: cpu_s(p.proc.pid) for p in procs} | {n: cpu_s(pid) for n, pid in others.items()}
        w1, s1 = time.monotonic(), stored(influx)
        rss = [rss_mb(p.proc.pid) for p in procs]
        out, _ = stations.communicate(timeout=60)
        pub = json.loads(out)
        t_end = time.monotonic()
        wait_for(lambda: stored(influx) >= pub["acked"], args.drain, 1.0)
        drain_s = time.monotonic() - t_end
        total = stored(influx)
    finally:
        for p in procs:
            p.proc.terminate()
        for p in procs:
            p.proc.wait(30)
    window = w1 - w0
    records = [p.records() for p in procs]
    rate = args.stations * args.sensors * args.rate
    print(f"{bridges} bridge(s), {args.stations} stations x {args.sensors} sensors x {args.rate:g} Hz "
          f"= {rate:,.0f} samples/s offered, {args.seconds:g} s window after {args.warmup:g} s:")  # fmt: skip
    print(f"  stored/s {(s1 - s0) / window:,.0f}; published {pub['published']:,} (broker acked {pub['acked']:,}, "
          f"stations at most {pub['late_s'] * 1000:.0f} ms behind schedule); stored {total:,} "
          f"({drain_s:.1f} s after the stations stopped); lost {pub['acked'] - total:,}; "
          f"doubled {sum(records) - total:,}")  # fmt: skip
    for i, (p, n) in enumerate(zip(procs, records, strict=True)):
        cpu = (c1[p.proc.pid] - c0[p.proc.pid]) / window * 100
        share = n / sum(records) * 100 if sum(records) else 0.0
        per_sample = cpu * 1e4 / max(1.0, (s1 - s0) / window * share / 100)
        print(f"  bridge {i}: {n:,} records ({share:.1f} %), CPU {cpu:.0f} % of a core "
              f"({per_sample:.0f} µs/sample), RSS {rss[i]:.0f} MB")  # fmt: skip
    print("  " + ", ".join(f"{n} CPU {(c1[n] - c0[n]) / window * 100:.0f} %" for n in others)
          + f"; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for i, p in enumerate(procs):
        for line in [x for x in p.log.read_text().splitlines() if "WARNING" in x or "ERROR" in x][:3]:
            print(f"  bridge {i}: {line}")
    names = [p.spool.stem for p in procs]  # a load before's group, its bridges gone, has its own queue
    dropped = [x for x in broker.log_text()[broker_log:].splitlines() if "dropped" in x and any(n in x for n in names)]
    if dropped:
        print(f"  mosquitto: {dropped[0]} ({len(dropped)} such line(s))")
    sys.stdout.flush()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "stations":
        port, stations, sensors, rate, seconds = sys.argv[2:7]
        print(json.dumps(run_stations(int(port), int(stations), int(sensors), float(rate), float(seconds))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stations", type=int, default=125)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="Hz per sensor")
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--drain", type=float, default=60.0, help="most seconds to wait for InfluxDB to have everything")
    ap.add_argument("--bridges", default="1,2", help="the loads: bridges on the shared subscription, e.g. 1,2")
    ap.add_argument("--commit", type=float, default=1.0, help="the bridges' spool commit_interval_s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hullwatch-fleet-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker")
        broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 10000\n")
        broker.start()
        try:
            influx = Influxd(work / "influx")
            try:
                for n in (int(x) for x in args.bridges.split(",")):
                    measure(args, work, broker, influx, n)
            finally:
                influx.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()

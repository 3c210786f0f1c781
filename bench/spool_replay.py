#!/usr/bin/env python3
"""Spool figures: write cost on the disk, and the replay of a 1-hour outage into a real influxd.

    .venv/bin/python bench/spool_replay.py [--hours 1] [--write-seconds 30]

1. Write cost: 8 sensors x 10 Hz appended in real time for --write-seconds with the default
   1 s commits; bytes the process wrote to disk (/proc/self/io write_bytes) per sample, and
   commits per second.
2. Replay: the spool holds 8 x 10 Hz x --hours of samples that InfluxDB (Debian's influxd 1.6,
   started here) never got; then the forwarder starts while live samples keep arriving at
   80/s. Prints the drain time, the drain speed in multiples of real time, and how long live
   samples waited to be written meanwhile (append to confirmed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hullwatch.config import InfluxConfig  # noqa: E402
from hullwatch.sinks.influx import InfluxSink  # noqa: E402
from hullwatch.sinks.spool import Spool  # noqa: E402
from influxd_fixture import Influxd  # noqa: E402

SENSORS = 8
RATE_HZ = 10.0


def written_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes"))


def body(sensor: int, k: int) -> dict:
    return {"sensor": f"s{sensor}", "quantity": "pressure", "value": 100000.0 + k * 0.001, "quality": "good"}


def write_cost(directory: Path, seconds: float) -> None:
    spool = Spool(str(directory / "write.sqlite"))
    spool.start([])
    before, t0, k = written_bytes(), time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        now = time.time()
        for s in range(SENSORS):
            spool.append("sample", now, body(s, k))
        k += 1
        time.sleep(max(0.0, t0 + k / RATE_HZ - time.monotonic()))
    elapsed = time.monotonic() - t0
    spool.close()
    samples = k * SENSORS
    print(f"write cost: {samples} samples in {elapsed:.0f} s; {(written_bytes() - before) / samples:.0f} bytes "
          f"written to disk per sample; {spool.commits / elapsed:.2f} commits/s")  # fmt: skip


class TimedSink(InfluxSink):
    """The real InfluxDB sink, noting when each live record was confirmed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.confirmed_at: dict[int, float] = {}

    def send(self, records, replay):
        result = super().send(records, replay)
        now = time.monotonic()
        if not replay:
            for r in records[: result.confirmed]:
                self.confirmed_at[r.id] = now
        return result


def replay(directory: Path, hours: float) -> None:
    influx = Influxd(directory / "influx")
    path = str(directory / "replay.sqlite")
    spool = Spool(path)
    t_start = time.time() - hours * 3600
    n = int(hours * 3600 * RATE_HZ)
    for k in range(n):
        t = t_start + k / RATE_HZ
        for s in range(SENSORS):
            spool.append("sample", t, body(s, k))
        if k % 10_000 == 0:
            spool.commit()
    spool.commit()
    spool.close()
    backlog = n * SENSORS
    print(f"replay: {backlog} samples spooled ({os.path.getsize(path) / 2**20:.0f} MB file)")

    spool = Spool(path)
    sink = TimedSink(InfluxConfig(url=influx.url, api="v1", database=influx.database), "bench")
    appended_at: dict[int, float] = {}
    stop = threading.Event()

    def live() -> None:
        k = 0
        while not stop.is_set():
            now = time.time()
            for s in range(SENSORS):
                appended_at[spool.append("sample", now, body(s, 10**7 + k))] = time.monotonic()
            k += 1
            stop.wait(1 / RATE_HZ)

    feeder = threading.Thread(target=live, daemon=True)
    t0 = time.monotonic()
    feeder.start()
    spool.start([sink])
    last_backlog_id = backlog
    while spool.cursors.get("influxdb", 0) < last_backlog_id:
        time.sleep(0.1)
    drain = time.monotonic() - t0
    stop.set()
    feeder.join()
    time.sleep(1.0)
    spool.close(drain_s=5.0)
    waits = sorted(sink.confirmed_at[i] - appended_at[i] for i in appended_at if i in sink.confirmed_at)
    rows = influx.rows("SELECT count(value) FROM sensor")
    stored = rows[0][1]["count"] if rows else 0
    influx.stop()
    print(f"replay: {backlog} samples drained in {drain:.1f} s = {hours * 3600 / drain:.0f}x real time "
          f"({backlog / drain:.0f} samples/s); InfluxDB holds {stored}")  # fmt: skip
    if waits:
        print(f"live samples during the replay: {len(waits)} written, wait p50 {waits[len(waits) // 2] * 1000:.0f} ms, "
              f"max {waits[-1] * 1000:.0f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--write-seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hullwatch-bench-") as d:
        write_cost(Path(d), args.write_seconds)
        replay(Path(d), args.hours)


if __name__ == "__main__":
    main()

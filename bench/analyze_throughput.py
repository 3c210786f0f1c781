#!/usr/bin/env python3
"""Throughput of the whole `hullwatch analyze` command (start-up included) on a 172,800-row file.

    python bench/analyze_throughput.py [--runs 5]

Writes 24 h of a 1 Hz pressure + temperature pair (a steady 0.2 kg/day leak in 75 m³)
to a temporary samples file, runs `hullwatch analyze` on it several times, and prints
rows per second (best and median), the command's CPU time (which other load on the machine
changes far less than the wall time) and its peak RSS.

Then where a run's CPU goes, each part measured on its own (best of the runs): the command's
start-up (a one-row file), reading the rows into samples, and the least per-point work of the
estimators (each pressure point appended to the leak fit, the air temperature and the fall
rate, and the fall rate's bounds asked): parts that no faster arrangement of the monitor in
Python can skip while it gives the same answers.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))

from hullwatch.core.estimator import AdaptiveSlope, FallRate  # noqa: E402
from hullwatch.core.linefit import LineSeries  # noqa: E402
from hullwatch.core.model import Quantity  # noqa: E402
from hullwatch.samples import read_samples  # noqa: E402
from hullwatch.sim import stories  # noqa: E402

CONFIG = """[station]
name = "bench"
[[segment]]
name = "prk"
volume_m3 = 75.0
[[sensor]]
name = "p1"
segment = "prk"
driver = "simulated"
[[sensor]]
name = "t1"
segment = "prk"
driver = "simulated"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    hw = Path(sys.executable).with_name("hullwatch")
    with tempfile.TemporaryDirectory() as tmp:
        csv, cfg, out = (os.path.join(tmp, n) for n in ("samples.csv", "bench.toml", "out.jsonl"))
        Path(cfg).write_text(CONFIG)
        rows = 0
        with open(csv, "w") as f:
            f.write("time,sensor,quantity,value\n")
            for s in stories.leak_step(before=0.2, after=0.2, duration_s=86400.0).samples:
                f.write(f"{s.time:.3f},{s.sensor},{s.quantity.value},{s.value:.6f}\n")
                rows += 1
        walls, cpus = [], []
        for _ in range(args.runs):
            t, before = time.perf_counter(), _children_cpu_s()
            subprocess.run([str(hw), "analyze", "-c", cfg, csv, "-o", out], check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
            cpus.append(_children_cpu_s() - before)
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        one_row = os.path.join(tmp, "one.csv")
        with open(csv) as f, open(one_row, "w") as g:
            g.write(f.readline() + f.readline())
        start_up, reading, estimators = [], [], []
        for _ in range(args.runs):
            before = _children_cpu_s()
            subprocess.run([str(hw), "analyze", "-c", cfg, one_row, "-o", out], check=True, capture_output=True)
            start_up.append(_children_cpu_s() - before)
            reading.append(_cpu(lambda: _read(csv)))
            points = [(s.time, s.value) for s in _read(csv) if s.quantity is Quantity.PRESSURE]
            estimators.append(_cpu(lambda points=points: _least_point_work(points)))
    print(
        f"analyze: {rows:,} rows; best {rows / min(walls):,.0f} rows/s ({min(walls):.2f} s), "
        f"median {rows / statistics.median(walls):,.0f} rows/s over {args.runs} runs; peak RSS {rss_mb:.0f} MB"
    )
    print(  # CPU time: what the command costs, whatever else the machine runs meanwhile
        f"CPU time: best {min(cpus):.2f} s ({rows / min(cpus):,.0f} rows per CPU second), "
        f"median {statistics.median(cpus):.2f} s"
    )
    floor = min(start_up) + min(reading) + min(estimators)
    print(
        f"parts of it, CPU, best of {args.runs}: start-up {min(start_up):.2f} s, "
        f"reading the rows {min(reading):.2f} s, the estimators' least per-point work {min(estimators):.2f} s; "
        f"together {floor:.2f} s, {floor / min(cpus):.0%} of the best run (a quarter of it: {min(cpus) / 4:.2f} s)"
    )


def _read(csv: str) -> list:
    names = {"p1": frozenset({Quantity.PRESSURE}), "t1": frozenset({Quantity.TEMPERATURE})}
    return list(read_samples(csv, names))


def _least_point_work(points: list[tuple[float, float]]) -> None:
    """What the monitor does with every pressure point at the least: three series and the fall rate's bounds."""
    slope, air, fall = AdaptiveSlope(), LineSeries(), FallRate()
    for t, p in points:
        slope.add(t, math.log(p))
        air.append(t, 295.0)
        fall.add(t, p)
        fall.bounds(3.0, 9.19)


def _cpu(work) -> float:
    t = time.process_time()
    work()
    return time.process_time() - t


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()

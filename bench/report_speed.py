#!/usr/bin/env python3
"""Wall time and peak RSS of the whole `hullwatch report` command on a 24 h, 8-sensor, 1 Hz samples file.

    python bench/report_speed.py [--runs 3] [--hours 24] [--keep DIR]

The file (691,202 rows) is a PrK (4 m³) + Zvezda (75 m³) mock-up joined by an open hatch:
0.45 kg/day leaks from the PrK, doubling to 1.0 kg/day at 8 h; the hatch closes at 16 h.
Two pressure (σ 2 Pa) and two temperature (σ 2 mK) transducers per segment, at 295 K.
The physics is computed with numpy (a choked leak: ln P falls at rate/(P₀·ΣV/RT)), so
making the file takes seconds. Runs `hullwatch analyze` once for comparison, then the
report `--runs` times, and prints the wall time (best and median) and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

R_AIR, P0, T_K, T0 = 287.05, 101_325.0, 295.0, 1_780_000_000.0
SEGMENTS = {"prk": 4.0, "zvezda": 75.0}
SENSORS = [
    (f"{kind}{j}_{tag}", seg, kind) for seg, tag in (("prk", "prk"), ("zvezda", "zv")) for j in (1, 2) for kind in "pt"
]
CONFIG = """[station]
name = "prk-mockup"

[[segment]]
name = "prk"
volume_m3 = 4.0

[[segment]]
name = "zvezda"
volume_m3 = 75.0

[[hatch]]
name = "prk-hatch"
between = ["prk", "zvezda"]
initial = "open"
{sensors}
[alarms.leak_rate]
caution_kg_per_day = 0.5
warning_kg_per_day = 0.9
hysteresis_kg_per_day = 0.05
"""


def pressures(hours: float, step_s: float, close_s: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Times (s from start, 1 Hz) and each segment's true pressure (Pa)."""
    t = np.arange(int(hours * 3600.0), dtype=float)
    rate = np.where(t < step_s, 0.45, 1.0) / 86400.0  # kg/s at P0, all from the PrK
    capacity = np.where(t < close_s, sum(SEGMENTS.values()), SEGMENTS["prk"]) / (R_AIR * T_K)  # kg/Pa
    log_fall = np.concatenate(([0.0], np.cumsum(rate / (P0 * capacity))[:-1]))
    prk = P0 * np.exp(-log_fall)
    closed = t >= close_s
    zvezda = np.where(closed, prk[np.argmax(closed)] if closed.any() else 0.0, prk)
    return t, {"prk": prk, "zvezda": zvezda}


def write_samples(path: str, hours: float, seed: int = 29) -> int:
    """The samples file (ICD §3); returns its number of rows."""
    step_s, close_s = 8 * 3600.0, 16 * 3600.0
    t, p = pressures(hours, step_s, close_s)
    rng = np.random.default_rng(seed)
    values = []
    for _name, seg, kind in SENSORS:
        if kind == "p":
            values.append(np.round((p[seg] + rng.normal(0.0, 2.0, len(t))) / 0.01) * 0.01)
        else:
            values.append(np.round((T_K + rng.normal(0.0, 0.002, len(t))) / 0.001) * 0.001)
    labels = [f",{name},{'pressure' if kind == 'p' else 'temperature'}," for name, _, kind in SENSORS]
    rows = 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"time,sensor,quantity,value\n{T0:.3f},prk-hatch,hatch,1.000000\n")
        columns = [v.tolist() for v in values]
        for i, ti in enumerate(t.tolist()):
            stamp = f"{T0 + ti:.3f}"
            if ti == close_s:
                f.write(f"{stamp},prk-hatch,hatch,0.000000\n")
                rows += 1
            f.write("".join(f"{stamp}{label}{col[i]:.6f}\n" for label, col in zip(labels, columns, strict=True)))
            rows += len(labels)
    return rows


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command that must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {proc.returncode}: {err[-400:]}")
    return wall, usage.ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--keep", metavar="DIR", help="copy the samples, config and report here")
    args = ap.parse_args()
    hw = str(Path(sys.executable).with_name("hullwatch"))
    with tempfile.TemporaryDirectory() as tmp:
        csv, cfg, out = (os.path.join(tmp, n) for n in ("samples.csv", "report.toml", "report"))
        sensors = "".join(f'\n[[sensor]]\nname = "{n}"\nsegment = "{s}"\ndriver = "simulated"\n' for n, s, _ in SENSORS)
        Path(cfg).write_text(CONFIG.format(sensors=sensors), encoding="utf-8")
        t = time.perf_counter()
        rows = write_samples(csv, args.hours)
        print(f"samples: {rows:,} rows, {os.path.getsize(csv) / 1e6:.1f} MB, made in {time.perf_counter() - t:.1f} s")
        wall, rss = timed([hw, "analyze", "-c", cfg, csv, "-o", os.devnull])
        print(f"analyze (for comparison): {wall:.2f} s, peak RSS {rss:.0f} MB")
        walls, peaks = [], []
        for _ in range(args.runs):
            shutil.rmtree(out, ignore_errors=True)
            wall, rss = timed([hw, "report", "-c", cfg, csv, "-o", out])
            walls.append(wall)
            peaks.append(rss)
        print(
            f"report: best {min(walls):.2f} s, median {statistics.median(walls):.2f} s over {args.runs} runs "
            f"(bar 30 s); peak RSS {max(peaks):.0f} MB"
        )
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for path in (csv, cfg):
                shutil.copy(path, args.keep)
            shutil.copytree(out, os.path.join(args.keep, "report"), dirs_exist_ok=True)
            print(f"kept in {args.keep}")


if __name__ == "__main__":
    main()

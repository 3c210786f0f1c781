#!/usr/bin/env python3
"""`hullwatch run` at 80, 640 and 800 samples/s: CPU, RSS, lateness and losses, in one run.

    .venv/bin/python bench/scale.py             # 60 s windows
    .venv/bin/python bench/scale.py --quick     # 15 s windows

Three loads, one after another, each with its own ptys, feeder and daemon (spool, MQTT QoS 1
to a private mosquitto, recorder): 8 sensors × 10 Hz (the reference), 64 sensors × 10 Hz and
8 sensors × 100 Hz (`max_rate_hz = 200` there: the serial driver takes at most 50 lines/s a
port by default). Every sensor is a pressure transducer streaming `P = 1013.25xxx hPa`; the
sensors are spread over 8 segments. For each, after a 5 s warm-up, over the window:

- CPU % of one core (utime + stime from /proc) and CPU µs per sample, RSS at the window's end;
- read lateness p50/p99: the sample's own time (when the daemon read its line) − the feeder's
  write; delivery p50/p99: mosquitto_sub's arrival stamp − the feeder's write;
- lost: samples written in the window and not at the subscriber 3 s after it, missing from the
  recorder's CSV, lines the pty could not take (the daemon not reading), and the daemon's own
  count of lines its rate limit dropped (`rate_dropped` in P/metrics).

Last, CPU per sample of each load relative to the reference (1.00 = CPU grows linearly with the
sample rate; below 1, slower than linearly); with `--rounds N` the three loads are run N times,
each round with its own ratios.
"""

from __future__ import annotations

import argparse

from station_rig import Rig, ms, percentile

LOADS = ((8, 10.0), (64, 10.0), (8, 100.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window per load")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three loads (CPU on a shared machine varies)")
    ap.add_argument("--quick", action="store_true", help="15 s windows")
    args = ap.parse_args()
    seconds = 15.0 if args.quick else args.seconds
    for n in range(args.rounds):
        per_sample = [
            measure(sensors, rate, seconds, f"round {n + 1} " if args.rounds > 1 else "") for sensors, rate in LOADS
        ]
        print(
            "CPU per sample relative to 8 x 10 Hz: "
            + ", ".join(
                f"{s} x {r:g} Hz {us / per_sample[0]:.2f}" for (s, r), us in zip(LOADS, per_sample, strict=True)
            ),
            flush=True,
        )


def measure(sensors: int, rate: float, seconds: float, label: str) -> float:
    """Run one load, print its figures; its CPU µs a sample."""
    with Rig(sensors, rate) as rig:
        max_rate = 2 * rate if 2 * rate > 50.0 else None
        proc, work = rig.start_hullwatch(max_rate_hz=max_rate)
        res = rig.measure(proc, "hullwatch", 5.0, seconds, recorder_csv=work / "samples.csv")
        w0 = res.wall[0]
        last = [m for _, m in rig.sub.metrics if m["time"] >= w0]
        dropped = sum(s.get("rate_dropped", 0) for s in last[-1]["sensors"].values()) if last else "?"
    us = 1e4 * res.cpu_pct / res.rate  # CPU % of a second per (samples/s) -> µs a sample
    late50, late99 = ms(percentile(res.read_lateness, 0.5)), ms(percentile(res.read_lateness, 0.99))
    print(
        f"{label}{sensors} sensors x {rate:g} Hz ({res.rate:.0f} samples/s): CPU {res.cpu_pct:.2f} % of one core "
        f"({us:.0f} us a sample), RSS {res.rss_mb:.1f} MB; read lateness p50 {late50} / p99 {late99} ms; "
        f"delivery p50 {ms(res.p(0.5))} / p99 {ms(res.p(0.99))} ms; "
        f"lost {res.lost} of {res.written}, {res.recorded_missing} missing in the CSV, "
        f"{res.full} not taken by the pty, {dropped} dropped by the rate limit [{res.load}]",
        flush=True,
    )
    return us


if __name__ == "__main__":
    main()

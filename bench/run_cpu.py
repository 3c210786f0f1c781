#!/usr/bin/env python3
"""CPU, memory and sample → subscriber latency of `hullwatch run` with spool, MQTT and recorder on.

    .venv/bin/python bench/run_cpu.py [--seconds 60] [--sensors 8] [--rate 10]
    .venv/bin/python bench/run_cpu.py --quick          # a 15 s window

Pseudo-terminals stream `P = 1013.25 hPa` lines (one pressure sensor each, in eight segments);
`hullwatch run` reads them with the spool, MQTT (a private mosquitto on loopback) and the
recorder on. After a warm-up it prints the daemon's CPU (utime + stime from /proc over the
window, % of one core), its RSS, the latency from each line's write to its message at a
`mosquitto_sub` (p50/p99) and the samples lost on the way to the subscriber and to the
recorder's CSV. See bench/station_rig.py for how each sample is followed.
"""

from __future__ import annotations

import argparse

from station_rig import Rig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="lines a second per sensor")
    ap.add_argument("--quick", action="store_true", help="a 15 s window")
    args = ap.parse_args()
    seconds = 15.0 if args.quick else args.seconds
    with Rig(args.sensors, args.rate) as rig:
        proc, work = rig.start_hullwatch(max_rate_hz=max(50.0, 2 * args.rate))
        result = rig.measure(proc, "hullwatch", 5.0, seconds, recorder_csv=work / "samples.csv")
    print(
        f"hullwatch run, {args.sensors} serial sensors at {args.rate:g} Hz, spool + MQTT + recorder, "
        f"{result.seconds:.0f} s window:"
    )
    print(result.line())


if __name__ == "__main__":
    main()

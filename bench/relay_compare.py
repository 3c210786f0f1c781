#!/usr/bin/env python3
"""`hullwatch run` side by side with a bare pyserial + paho relay: the same ptys, broker and subscriber.

    .venv/bin/python bench/relay_compare.py             # 3 rounds of a 60 s window each
    .venv/bin/python bench/relay_compare.py --quick     # 3 rounds of 15 s

Eight pseudo-terminals stream `P = 1013.25xxx hPa` lines at 10 Hz (80 samples/s). In one run,
interleaved three times (the order alternating: H R, R H, H R), the same feeder, ptys, private
mosquitto and `mosquitto_sub` serve `hullwatch run` (spool, MQTT QoS 1 and recorder on) and then
the relay in station_rig.RELAY (~30 lines: a thread per port, `Serial.readline()`, a regex,
`json.dumps`, `publish(qos=1)` with paho's own network thread); only one program runs at a time.
For each: CPU % of one core (utime + stime from /proc over the window), RSS at its end (peak
in brackets), sample → subscriber latency p50 / p99 (mosquitto_sub's arrival stamp − the
feeder's write time; a sample lost counts as infinitely late) and the samples lost. Then the
CPU ratio hullwatch / relay of each round (the two measured minutes apart, so the machine's
other load weighs on both alike) and their median.
"""

from __future__ import annotations

import argparse
import os
import statistics

from station_rig import Rig, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window of each program")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="lines a second per sensor")
    ap.add_argument("--quick", action="store_true", help="15 s windows")
    args = ap.parse_args()
    seconds = 15.0 if args.quick else args.seconds
    print(
        f"{args.sensors} ptys x {args.rate:g} Hz, private mosquitto, mosquitto_sub; {args.rounds} rounds of "
        f"{seconds:g} s windows after a 5 s warm-up; {os.cpu_count()} CPUs"
    )
    ratios, rows = [], []
    with Rig(args.sensors, args.rate) as rig:
        for r in range(args.rounds):
            order = ("hullwatch", "relay") if r % 2 == 0 else ("relay", "hullwatch")
            got = {}
            for program in order:
                if program == "hullwatch":
                    proc, work = rig.start_hullwatch()
                    got[program] = rig.measure(proc, program, 5.0, seconds, recorder_csv=work / "samples.csv")
                else:
                    got[program] = rig.measure(rig.start_relay(), program, 5.0, seconds)
                print(f"round {r + 1} {got[program].line()}", flush=True)
            ratios.append(got["hullwatch"].cpu_pct / got["relay"].cpu_pct)
            rows.append(got)
    print(
        "CPU hullwatch / relay per round: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f"; median {statistics.median(ratios):.2f}"
    )
    for program in ("hullwatch", "relay"):
        res = [g[program] for g in rows]
        print(
            f"{program:9s}: CPU {min(x.cpu_pct for x in res):.2f}-{max(x.cpu_pct for x in res):.2f} %, "
            f"RSS {min(x.rss_mb for x in res):.1f}-{max(x.rss_mb for x in res):.1f} MB, "
            f"p50 {ms(min(x.p(0.5) for x in res))}-{ms(max(x.p(0.5) for x in res))} ms, "
            f"p99 {ms(min(x.p(0.99) for x in res))}-{ms(max(x.p(0.99) for x in res))} ms, "
            f"lost {sum(x.lost for x in res)} of {sum(x.written for x in res)}"
        )


if __name__ == "__main__":
    main()

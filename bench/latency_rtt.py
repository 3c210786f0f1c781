#!/usr/bin/env python3
"""`hullwatch run` publishing through a link with delay: delivered samples/s, p99 latency, backlog growth.

    .venv/bin/python bench/latency_rtt.py               # 0, 20, 50, 100 ms each way; 120 s windows
    .venv/bin/python bench/latency_rtt.py --quick       # 20 s windows
    .venv/bin/python bench/latency_rtt.py --delays 50 --seconds 300

Eight pseudo-terminals stream `P = 1013.25xxx hPa` lines at 10 Hz (80 samples/s) into
`hullwatch run` (spool, MQTT QoS 1, recorder). Its MQTT connection goes through a TCP proxy on
loopback that holds every chunk the given delay in each direction (station_rig.DelayProxy: the
round trip grows by twice the delay, bandwidth is not limited); the `mosquitto_sub` that stamps
arrivals talks to the broker directly. For each delay, a fresh daemon, spool and proxy; after a
5 s warm-up, over the window:

- delivered: samples of this run that reached the subscriber during the window, per second;
- p50 / p99: sample → subscriber latency of the samples written in the window (write by the
  feeder → arrival; one not delivered 3 s after the window counts as infinitely late);
- backlog: samples written since the feed began, over 1 s ago, and not yet at the subscriber, at
  the window's start and end, and its growth per second; beside it the daemon's own MQTT backlog in spool
  records (its P/metrics, every 10 s; samples, estimates and metrics alike).
"""

from __future__ import annotations

import argparse
import bisect
import math

from station_rig import HULLWATCH_PREFIX, DelayProxy, Result, Rig, ms

DRAIN_S = 3.0  # how long after the window a sample may still arrive
OVERDUE_S = 1.0  # a sample not at the subscriber this long after its write is backlog, not in flight


def backlog_at(rig: Rig, result: Result, when: float) -> int:
    """Samples of this run written over OVERDUE_S before `when` and not at the subscriber by then."""
    start, _, end = result.feed_seq
    written = arrived = 0
    for (i, seq), t in rig.feeder.written.items():
        if start <= seq < end and t <= when - OVERDUE_S:
            written += 1
            a = rig.sub.arrivals.get((HULLWATCH_PREFIX, i, seq))
            if a is not None and a.at <= when:
                arrived += 1
    return written - arrived


def late(x: float) -> str:
    return f"{ms(x)} ms" if math.isfinite(x) else f"over {DRAIN_S:g} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0, 50.0, 100.0], help="ms each way")
    ap.add_argument("--seconds", type=float, default=120.0, help="measuring window per delay")
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="lines a second per sensor")
    ap.add_argument("--quick", action="store_true", help="20 s windows")
    args = ap.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    print(
        f"hullwatch run, {args.sensors} ptys x {args.rate:g} Hz = {args.sensors * args.rate:g} samples/s, "
        f"MQTT through a delaying proxy; {seconds:g} s windows after a 5 s warm-up"
    )
    with Rig(args.sensors, args.rate) as rig:
        for delay_ms in args.delays:
            proxy = DelayProxy(rig.broker.port, delay_ms / 1000.0)
            try:
                proc, _ = rig.start_hullwatch(mqtt_port=proxy.port)
                res = rig.measure(proc, "hullwatch", 5.0, seconds, drain_s=DRAIN_S)
            finally:
                proxy.close()
            w0, w1 = res.wall
            times = sorted(a.at for (p, _, s), a in rig.sub.arrivals.items() if p == HULLWATCH_PREFIX
                           and res.feed_seq[0] <= s < res.feed_seq[2])  # fmt: skip
            delivered = (bisect.bisect_right(times, w1) - bisect.bisect_left(times, w0)) / (w1 - w0)
            b0, b1 = backlog_at(rig, res, w0), backlog_at(rig, res, w1)
            own = [m["sinks"]["mqtt"]["backlog"] for _, m in rig.sub.metrics if w0 <= m["time"] <= w1]
            own_text = f"{own[0]} -> {own[-1]} records" if own else "no metrics arrived"
            print(
                f"{delay_ms:5g} ms each way: delivered {delivered:.1f} samples/s of {res.rate:.1f} written; "
                f"p50 {late(res.p(0.5))}, p99 {late(res.p(0.99))} ({res.lost} not delivered); "
                f"backlog {b0} -> {b1} samples "
                f"({(b1 - b0) / (w1 - w0):+.2f}/s; the daemon's MQTT backlog {own_text}); "
                f"CPU {res.cpu_pct:.2f} % [{res.load}]",
                flush=True,
            )


if __name__ == "__main__":
    main()

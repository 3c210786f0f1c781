#!/usr/bin/env python3
"""Leak-rate estimator figures on synthetic stories (independent seeds), printed as a table.

    python bench/leak_estimator.py [--seeds N] [--quick]

Prints, per story: the warning delay after a 0.45 -> 1.0 kg/day step against the
least-squares minimum window (75 m3 and 10 m3), accuracy over the last 90 minutes,
sigma calibration (fraction of estimates within 2 sigma of the true instantaneous rate)
and false activations over long steady runs, and thermal compensation.
Figures come from the core directly; `bench/analyze_throughput.py` times the command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from hullwatch.core.model import AlarmState, AlarmTransition, Estimate  # noqa: E402
from hullwatch.core.monitor import Monitor, run  # noqa: E402
from hullwatch.sim import stories  # noqa: E402


def play(story):
    return list(run(Monitor(story.settings), story.samples))


def activations(events, alarm="leak_rate"):
    return [e for e in events if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE and e.alarm == alarm]


def rated(events):
    return [e for e in events if isinstance(e, Estimate) and e.leak_kg_per_day is not None]


def doubling(volume, seeds):
    ratios, early, accuracy = [], 0, []
    for seed in seeds:
        story = stories.leak_step(volume_m3=volume, seed=seed)
        events = play(story)
        step, tc = story.truth["step_time"], story.truth["confirm_window_s"]
        acts = activations(events)
        early += sum(1 for a in acts if a.time < step)
        warn = [a for a in acts if a.severity.label == "warning" and a.time >= step]
        ratios.append((warn[0].time - step) / tc if warn else float("inf"))
        late = [e for e in rated(events) if e.time > step + 5400]
        accuracy.append(statistics.median(e.leak_kg_per_day - e.pressure_pa / 101325.0 for e in late))
    return (
        f"doubling {volume:g} m3: warning delay / minimum window: median {statistics.median(ratios):.2f}, "
        f"max {max(ratios):.2f} (tc {tc:.0f} s); early activations {early}; "
        f"median error last 90 min: worst {max(accuracy, key=abs):+.4f} kg/day"
    )


def steady(seeds, hours):
    coverage, false_acts = [], 0
    for seed in seeds:
        story = stories.leak_step(volume_m3=75.0, before=0.2, after=0.2, duration_s=hours * 3600.0, seed=seed)
        events = play(story)
        false_acts += len([e for e in events if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE])
        est = [e for e in rated(events) if e.time > stories.T0 + 3600]
        inside = [abs(e.leak_kg_per_day - 0.2 * e.pressure_pa / 101325.0) <= 2 * e.leak_kg_per_day_sigma for e in est]
        coverage.append(sum(inside) / len(inside))
    return (
        f"steady 0.2 kg/day, {hours} h x {len(seeds)} runs: false activations {false_acts}; "
        f"within 2 sigma: mean {statistics.mean(coverage):.3f}, min {min(coverage):.3f}, max {max(coverage):.3f}"
    )


def thermal(seeds):
    worst_med, worst_p95, acts = 0.0, 0.0, 0
    for seed in seeds:
        events = play(stories.thermal(seed=seed))
        acts += len(activations(events))
        mags = sorted(abs(e.leak_kg_per_day) for e in rated(events) if e.time > stories.T0 + 1800)
        worst_med = max(worst_med, statistics.median(mags))
        worst_p95 = max(worst_p95, mags[int(0.95 * len(mags))])
    return (
        f"thermal 0.6 K swing, no leak, {len(seeds)} runs: leak activations {acts}; |estimate| median "
        f"worst {worst_med:.4f}, 95th percentile worst {worst_p95:.4f} kg/day"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hours", type=int, default=24, help="length of each steady run")
    ap.add_argument("--first-seed", type=int, default=1000)
    args = ap.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    started = time.perf_counter()
    for line in (doubling(75.0, seeds), doubling(10.0, seeds), steady(seeds, args.hours), thermal(seeds)):
        print(line, flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

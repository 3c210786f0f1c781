#!/usr/bin/env python3
"""Leak-rate estimator figures on synthetic stories (independent seeds), printed as a table.

    python bench/leak_estimator.py [--seeds N] [--quick]

Prints, per story: the warning delay after a 0.45 -> 1.0 kg/day step against the
least-squares minimum window (75 m3 and 10 m3), accuracy over the last 90 minutes,
sigma calibration (fraction of estimates within 2 sigma of the true instantaneous rate)
and false activations over long steady runs, and thermal compensation.

Then a table with a row per real-sensor phenomenon (hullwatch.sim.phenomena: one 75 m3
volume at 1 Hz, 2 Pa transducers unless the phenomenon says otherwise), each over --seeds
runs: false activations per 24 h of stream (and how many began in the first half hour),
2 sigma coverage of the estimates after the first hour (per run: mean, min-max), the delay
ratio where a delay applies (median, max), the median error (worst run) and the 95th
percentile of |error| (worst run), in kg/day.
Figures come from the core directly; `bench/analyze_throughput.py` times the command.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, LevelStep, Notice  # noqa: E402
from hullwatch.core.monitor import Monitor, run  # noqa: E402
from hullwatch.sim import phenomena, stories  # noqa: E402
from hullwatch.sim.phenomena import HOUR, T0, true_loss  # noqa: E402


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


# -- real-sensor phenomena ---------------------------------------------------------------------

THRESHOLDS = {"caution": 0.5, "warning": 0.9}  # leak_rate, kg/day (the defaults)
START_UP_S = 1800.0  # false activations in the first half hour are counted apart as well


def false_activations(story, events):
    """Activations the truth does not warrant: a leak_rate below its threshold, any other alarm
    (a sensor's staleness only where the story silences one)."""
    false, pressure = [], 101_325.0
    for e in events:
        if isinstance(e, Estimate):
            pressure = e.pressure_pa
        elif isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE:
            if e.alarm == "leak_rate" and true_loss(story, e.time, pressure) >= THRESHOLDS[e.severity.label]:
                continue
            if e.alarm == "sensor_fault" and "gap" in story.truth and e.reason.startswith("stale"):
                continue
            false.append(e)
    return false


def first_warning_after(events, t):
    warn = [e for e in events if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE]
    warn = [e for e in warn if e.alarm == "leak_rate" and e.severity.label == "warning" and e.time >= t]
    return warn[0].time if warn else math.inf


def recovery_ratio(story, events):
    """Time after each repressurisation ends until the estimate is back (within 0.05, σ < 0.05), worst of
    the run, over the least-squares window that confirms a rate 0.1 kg/day away."""
    est = rated(events)
    worst = 0.0
    for end in story.truth["ends"]:
        back = [
            e.time - end
            for e in est
            if e.time >= end
            and abs(e.leak_kg_per_day - true_loss(story, e.time, e.pressure_pa)) < 0.05
            and e.leak_kg_per_day_sigma < 0.05
        ]
        worst = max(worst, back[0] if back else math.inf)
    return worst / stories.confirm_window_s(75.0, 2.0, 0.002, 1.0, 0.1)


def random_steps(seed, sizes):
    """Two offset steps of random size (either sign) in a 6 h run, 30-90 min apart, after 1.5-2.5 h."""
    rng = random.Random(seed)
    first = rng.uniform(1.5, 2.5) * HOUR
    second = first + rng.uniform(0.5, 1.5) * HOUR
    return [(at, rng.choice((-1.0, 1.0)) * rng.uniform(*sizes)) for at in (first, second)]


def steps_found(story, events):
    """(steps reported within ±20 % of their size and ±60 s, steps made)."""
    made = story.truth["steps"]
    got = [e for e in events if isinstance(e, LevelStep)]
    right = sum(any(abs(g.time - at) <= 60.0 and abs(g.size_pa - d) <= 0.2 * abs(d) for g in got) for at, d in made)
    return right, len(made)


def settled(events):
    """The rated estimates after the first hour."""
    return [e for e in rated(events) if e.time - T0 >= HOUR]


def ramp_ratio(story, events):
    """Warning delay after the truth passes 0.9 kg/day, over the least a line fit could do (ramp_confirm_delay_s)."""
    slope = story.truth["ramp_kg_per_day_per_s"]
    crossed = T0 + (THRESHOLDS["warning"] - 0.3) / slope
    return (first_warning_after(events, crossed) - crossed) / phenomena.ramp_confirm_delay_s(slope)


def step_ratio(story, events):
    """Warning delay after the leak steps, over the least-squares window of the fused transducers."""
    step = story.truth["step_time"]
    return (first_warning_after(events, step) - step) / story.truth["confirm_window_s"]


def median_detectable(story, events):
    return statistics.median(e.detectable_kg_per_day for e in settled(events))


def restarts(story, events):
    return sum(isinstance(e, Notice) and "restarted" in e.message for e in events)


def blind_s(story, events):
    """Seconds after the first hour during which the smallest confirmable loss exceeds the caution threshold."""
    return sum(10.0 for e in settled(events) if e.detectable_kg_per_day > THRESHOLDS["caution"])


# (name, hours, story of a seed, delay ratio or None, (note, its measure) or None)
PHENOMENA = [
    (
        "coloured noise 1 Pa + AR(1) 1.2 Pa 3 min, 0.2 kg/day",
        24,
        lambda s: phenomena.coloured(s, 24 * HOUR),
        None,
        None,
    ),
    ("same, 0.45 kg/day", 24, lambda s: phenomena.coloured(s, 24 * HOUR, 0.45), None, None),
    ("wander 1 Pa + AR(1) 3 Pa 1 h, 0.2 kg/day", 24, lambda s: phenomena.wander(s, 24 * HOUR), None, None),
    (
        "HVAC ±0.2 K / 20 min, thermometer lag 60 s not told, 0.45 kg/day",
        8,
        lambda s: phenomena.lagged_hvac(s, 8 * HOUR),
        None,
        ("median detectable kg/day", median_detectable),
    ),
    (
        "same, time_constant_s = 60 told",
        8,
        lambda s: phenomena.lagged_hvac(s, 8 * HOUR, time_constant_s=60.0),
        None,
        ("median detectable kg/day", median_detectable),
    ),
    (
        "two offset steps ±10-50 Pa, 0.45 kg/day",
        6,
        lambda s: phenomena.offset_steps(s, 6 * HOUR, random_steps(s, (10.0, 50.0))),
        None,
        ("steps found", steps_found),
    ),
    (
        "two offset steps ±3-8 Pa, 0.45 kg/day",
        6,
        lambda s: phenomena.offset_steps(s, 6 * HOUR, random_steps(s, (3.0, 8.0))),
        None,
        ("steps found", steps_found),
    ),
    (
        "spikes -300, +150, -900, +3000 Pa, 0.2 kg/day",
        6,
        lambda s: phenomena.spikes(s, 6 * HOUR),
        None,
        ("blind s/run", blind_s),
    ),
    (
        "repressurisation 0.2 kg / 5 min twice, 0.45 kg/day",
        6,
        lambda s: phenomena.repress(s, 6 * HOUR),
        recovery_ratio,
        None,
    ),
    (
        "ramp 0.3 -> 1.5 kg/day over 12 h",
        12,
        lambda s: phenomena.ramp(s, 12 * HOUR, ramp_s=12 * HOUR),
        ramp_ratio,
        None,
    ),
    (
        "3 transducers 1.5/1.5/8 Pa, 0.45 -> 1.0 kg/day at 3 h",
        6,
        lambda s: phenomena.fusion(s, 6 * HOUR, 3 * HOUR),
        step_ratio,
        None,
    ),
    (
        "3 transducers, one +40 Pa away 10 min at 3 h, 0.45 kg/day",
        6,
        lambda s: phenomena.redundant_gap(s, 6 * HOUR, 40.0, (3 * HOUR, 3 * HOUR + 600.0)),
        None,
        ("fit restarts", restarts),
    ),
]


def phenomenon_row(name, hours, make, delay, note, seeds):
    false, early, coverage, ratios, medians, p95s, notes = 0, 0, [], [], [], [], []
    for seed in seeds:
        story = make(seed)
        events = play(story)
        wrong = false_activations(story, events)
        false += len(wrong)
        early += sum(a.time - T0 < START_UP_S for a in wrong)
        est = settled(events)
        err = [e.leak_kg_per_day - true_loss(story, e.time, e.pressure_pa) for e in est]
        coverage.append(sum(abs(d) <= 2 * e.leak_kg_per_day_sigma for d, e in zip(err, est, strict=True)) / len(est))
        medians.append(statistics.median(err))
        p95s.append(sorted(abs(d) for d in err)[int(0.95 * len(err))])
        if delay is not None:
            ratios.append(delay(story, events))
        if note is not None:
            notes.append(note[1](story, events))
    runs = len(seeds)
    cells = [
        f"{runs} x {hours} h",
        f"{false * 24.0 / (runs * hours):.2f} ({false}, {early} at start-up)",
        f"{statistics.mean(coverage):.3f} ({min(coverage):.3f}-{max(coverage):.3f})",
        f"{statistics.median(ratios):.2f} ({max(ratios):.2f})" if ratios else "-",
        f"{max(medians, key=abs):+.4f}",
        f"{max(p95s):.3f}",
    ]
    if note is None:
        cells.append("")
    elif note[0] == "steps found":
        cells.append(f"steps found {sum(r for r, _ in notes)}/{sum(n for _, n in notes)}")
    else:
        cells.append(f"{note[0]}: median {statistics.median(notes):.4g}, max {max(notes):.4g}")
    return name, cells


def phenomena_table(seeds):
    head = [
        "phenomenon",
        "runs",
        "false/24 h (n, of them at start-up)",
        "2σ coverage",
        "delay ratio",
        "median err",
        "p95 |err|",
        "notes",
    ]
    rows = [phenomenon_row(*spec, seeds) for spec in PHENOMENA]
    table = [head] + [[name, *cells] for name, cells in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hours", type=int, default=24, help="length of each steady run")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--phenomena-only", action="store_true", help="only the table of real-sensor phenomena")
    args = ap.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    started = time.perf_counter()
    if not args.phenomena_only:
        for line in (doubling(75.0, seeds), doubling(10.0, seeds), steady(seeds, args.hours), thermal(seeds)):
            print(line, flush=True)
    print(phenomena_table(seeds))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

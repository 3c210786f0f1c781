"""`hullwatch report`: a pressure-decay test report (PNG, PDF, Markdown) from a samples file.

Theory of operation
-------------------
The report is made in three separate steps, each a plain function of the one before:

1. **Collect** (`collect`). The samples stream once through the same core `Monitor`
   that `hullwatch analyze` and the live daemon use, so the report's rates and alarms
   are exactly theirs. Along the way it keeps:
   * per volume *period* (a volume from the moment a hatch change formed it to the one
     that ended it, or the start and end of the recording) every `Estimate`;
   * every hatch change, alarm transition and notice;
   * per sensor and quantity, the raw readings reduced on the fly to equal time buckets
     (count, mean time, mean, min, max). Readings are appended to compact `array`s and
     bucketed with numpy every 65,536 rows; when more than MAX_BUCKETS buckets exist the
     bucket width doubles and neighbours merge. A pressure sensor's readings are also
     averaged on a fine regular grid at its median sampling interval (`FineSeries`, at
     most FINE_MAX_BINS cells, the width doubling beyond) for its noise spectrum. Memory
     stays bounded whatever the recording's length, and the hot loop costs two appends
     per row;
   * every level step, and each volume's detection limits when its period ends.
2. **Analyse** (`best_estimate`, `rate_changes`, `attribution`, `alarm_spans`,
   `judge`, `sensor_noise`). A period's rate is its *best estimate*: among the estimates
   after the last restart of the fit (a detected rate change) and in the last quarter of
   the period, the one with the longest fit window, the latest on a tie. A hatch change that splits
   a joined volume (or joins several) gives a comparison: the parts' rates, measured
   apart, against the joined rate, each scaled to the joined pressure (a choked leak's
   rate is proportional to the pressure). The verdict weighs the alarms that were
   active and the final rates against the configured leak-rate limits. Each pressure
   sensor's noise is its overlapping Hadamard deviation against the averaging time
   (`hadamard_deviation`: the Allan deviation's three-sample form, blind to a linear
   drift such as a leak), split at hatch changes and located rate changes.
3. **Present** (`draw`, `draw_noise`, `markdown`). One multi-panel figure (PNG and PDF)
   on a time axis in hours from the start, with a few thousand points per line at most,
   a log-log plot of the sensors' noise (PNG), and a Markdown document that embeds both.
   matplotlib and numpy are imported only here, in step 1's bucketing and in the noise
   analysis, so the rest of hullwatch runs without them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hullwatch import __version__, present
from hullwatch.core import alarm_kinds
from hullwatch.core.model import (
    AlarmState,
    AlarmTransition,
    Estimate,
    HatchChange,
    LevelStep,
    Notice,
    Quantity,
    Sample,
    Severity,
)
from hullwatch.core.monitor import DETECTION_WINDOWS_S, LEAK_RATE, Monitor
from hullwatch.core.settings import ModuleSettings
from hullwatch.exits import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_OK, EX_UNAVAILABLE, load_config
from hullwatch.progress import Progress, file_size, open_positioned
from hullwatch.samples import SamplesError, read_samples

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from hullwatch.config import Config

MAX_BUCKETS = 2048  # per raw series: the most points a line of the figure gets
MAX_LINE_POINTS = 4000  # estimates per line in the figure (every n-th beyond that)
FINE_MAX_BINS = 1 << 19  # per pressure sensor: the most grid cells behind its noise deviation
NOISE_TABLE_TAUS_S = (1.0, 10.0, 100.0, 1000.0)  # the averaging times the noise table lists
_FLUSH_MASK = 0xFFFF  # bucket the raw readings every 65,536 rows
_PROGRESS_MASK = 0xFFF  # offer the progress line an update every 4,096 rows
SEVERITY_COLOURS = {
    Severity.ADVISORY: "#4c78a8",
    Severity.CAUTION: "#e3b505",
    Severity.WARNING: "#f07f0e",
    Severity.EMERGENCY: "#d62728",
}
PNG_NAME, PDF_NAME, MD_NAME, NOISE_PNG_NAME = "report.png", "report.pdf", "report.md", "allan.png"


# -- 1. collect ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decimated:
    """A raw series reduced to time buckets: mean time, mean, min and max per bucket."""

    t: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    count: int  # readings behind it


class Decimator:
    """Min, mean and max of a time series in equal time buckets, kept under `max_buckets` by doubling the width."""

    def __init__(
        self, origin: float, width_s: float = 0.125, max_buckets: int = MAX_BUCKETS, fine: FineSeries | None = None
    ) -> None:
        self.origin = origin
        self.width = width_s
        self.max_buckets = max_buckets
        self.fine = fine  # also given every reading, when set
        self.times = array("d")  # readings not yet bucketed
        self.values = array("d")
        self._cols: tuple | None = None  # (bucket index, count, Σt, Σv, min, max)

    def flush(self) -> None:
        """Put the pending readings into buckets."""
        import numpy as np

        if not self.times:
            return
        t = np.frombuffer(self.times, dtype=np.float64).copy()
        v = np.frombuffer(self.values, dtype=np.float64).copy()
        del self.times[:], self.values[:]
        if self.fine is not None:
            self.fine.add(t, v)
        new = (np.floor((t - self.origin) / self.width).astype(np.int64), np.ones(len(t)), t, v, v, v)
        cols = new if self._cols is None else tuple(np.concatenate(pair) for pair in zip(self._cols, new, strict=True))
        cols = _merge_buckets(cols)
        while len(cols[0]) > self.max_buckets:
            self.width *= 2.0
            cols = _merge_buckets((cols[0] // 2, *cols[1:]))
        self._cols = cols

    def result(self) -> Decimated:
        """The buckets so far."""
        import numpy as np

        self.flush()
        if self._cols is None:
            empty = np.empty(0)
            return Decimated(empty, empty, empty, empty, 0)
        _, n, ts, vs, lo, hi = self._cols
        return Decimated(ts / n, vs / n, lo, hi, int(n.sum()))


class FineSeries:
    """A series averaged on a regular grid at its median sampling interval, at most `max_bins` cells.

    The interval is measured from the first MIN_READINGS readings and the grid centred on
    them; past `max_bins` cells the width doubles and pairs of cells merge (still a
    regular grid). Empty cells are gaps. The input of `hadamard_deviation`.
    """

    MIN_READINGS = 16

    def __init__(self, max_bins: int = FINE_MAX_BINS) -> None:
        self.max_bins = max_bins
        self.interval = math.nan  # the median time between readings
        self.width = math.nan  # the grid's cell width: the interval, doubled as needed
        self.origin = math.nan
        self.reference = 0.0  # subtracted before summing, for precision
        self._held: list[tuple[np.ndarray, np.ndarray]] = []  # readings before the interval is known
        self._sums: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._used = 0  # cells in use; the arrays grow by doubling

    def add(self, t: np.ndarray, v: np.ndarray) -> None:
        """Average more readings (times never decreasing) into the grid."""
        import numpy as np

        if not len(t):
            return
        if self._sums is None:
            self._held.append((t, v))
            if sum(len(h[0]) for h in self._held) >= self.MIN_READINGS:
                self._start()
            return
        idx = np.floor((t - self.origin) / self.width).astype(np.int64)
        np.maximum(idx, 0, out=idx)
        while idx.max() >= self.max_bins:
            self._halve()
            idx //= 2
        need = int(idx.max()) + 1
        if need > len(self._sums):
            size = min(self.max_bins, max(need, 2 * len(self._sums)))
            self._sums = np.concatenate((self._sums, np.zeros(size - len(self._sums))))
            self._counts = np.concatenate((self._counts, np.zeros(size - len(self._counts))))
        lo = int(idx.min())
        cells = (idx - lo).astype(np.intp)  # bincount takes the platform's index type (32 bits on armhf)
        self._sums[lo:need] += np.bincount(cells, weights=v - self.reference, minlength=need - lo)
        self._counts[lo:need] += np.bincount(cells, minlength=need - lo)
        self._used = max(self._used, need)

    def _start(self) -> None:
        import numpy as np

        t = np.concatenate([h[0] for h in self._held])
        v = np.concatenate([h[1] for h in self._held])
        self._held = []
        steps = np.diff(t)
        steps = steps[steps > 0.0]
        self.interval = self.width = float(np.median(steps)) if len(steps) else 1.0
        self.origin = float(t[0]) - self.width / 2.0
        self.reference = float(v[0])
        self._sums, self._counts = np.zeros(1024), np.zeros(1024)
        self.add(t, v)

    def _halve(self) -> None:
        """Double the cell width: merge neighbouring pairs of cells."""
        import numpy as np

        used = self._used + self._used % 2
        pad = max(0, used - len(self._sums))
        sums, counts = (np.concatenate((a, np.zeros(pad)))[:used] for a in (self._sums, self._counts))
        half = used // 2
        self._sums = np.concatenate((sums.reshape(-1, 2).sum(axis=1), np.zeros(max(1024, half) - half)))
        self._counts = np.concatenate((counts.reshape(-1, 2).sum(axis=1), np.zeros(max(1024, half) - half)))
        self._used = half
        self.width *= 2.0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(cell centre times, cell means) of the cells that hold readings."""
        import numpy as np

        if self._sums is None and self._held:
            self._start()
        if self._sums is None:
            return np.empty(0), np.empty(0)
        counts = self._counts[: self._used]
        full = np.flatnonzero(counts > 0)
        t = self.origin + (full + 0.5) * self.width
        return t, self._sums[full] / counts[full] + self.reference


def _merge_buckets(cols: tuple) -> tuple:
    """Merge neighbouring rows with the same bucket index (indices never decrease)."""
    import numpy as np

    idx = cols[0]
    if len(idx) < 2:
        return cols
    starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
    if len(starts) == len(idx):
        return cols
    n, ts, vs = (np.add.reduceat(c, starts) for c in cols[1:4])
    return idx[starts], n, ts, vs, np.minimum.reduceat(cols[4], starts), np.maximum.reduceat(cols[5], starts)


@dataclass
class Period:
    """One volume, from the event that formed it to the one that ended it."""

    volume: str
    segments: tuple[str, ...]
    start: float
    started_by: str
    end: float = math.nan
    ended_by: str = "end of recording"
    estimates: list[Estimate] = field(default_factory=list)
    detection: dict[float, float] | None = None  # at its end: window (s) -> smallest confirmed leak (kg/day)

    @property
    def rated(self) -> list[Estimate]:
        """The estimates that carry a leak rate."""
        return [e for e in self.estimates if e.leak_kg_per_day is not None]


@dataclass
class Recording:
    """Everything the report shows, gathered in one pass over the samples."""

    start: float
    end: float
    rows: int
    hatch_rows: int
    series: dict[tuple[str, str], Decimated]  # (sensor, quantity) -> buckets
    periods: list[Period]
    hatches: list[HatchChange]
    alarms: list[AlarmTransition]
    notices: list[Notice]
    active_at_end: list[tuple[str, str, Severity]]
    steps: list[LevelStep] = field(default_factory=list)
    fine: dict[str, FineSeries] = field(default_factory=dict)  # pressure sensor -> its readings on a fine grid

    @property
    def duration(self) -> float:
        """Seconds from the first sample to the last."""
        return self.end - self.start


class NoSamples(ValueError):
    """The file has a header but no rows."""


def collect(
    settings: ModuleSettings, samples: Iterable[Sample], progress: Callable[[int], None] | None = None
) -> Recording:
    """Stream the samples through the core monitor once; keep estimates, events and decimated readings."""
    monitor = Monitor(settings)
    feed = monitor.feed
    hatch = Quantity.HATCH
    decimators: dict[tuple[str, Quantity], Decimator] = {}
    appenders: dict[tuple[str, Quantity], tuple[Callable, Callable]] = {}
    periods: list[Period] = []
    current: dict[str, Period] = {}
    hatches: list[HatchChange] = []
    alarms: list[AlarmTransition] = []
    notices: list[Notice] = []
    steps: list[LevelStep] = []
    fine: dict[str, FineSeries] = {}
    limits: dict[str, dict[float, float]] = {}
    rows = hatch_rows = 0
    start = end = math.nan
    for sample in samples:
        t, name, quantity, value, _ = sample
        if rows == 0:
            start = t
            for vid, v in monitor.volumes.items():
                current[vid] = Period(vid, v.segments, t, "start of recording")
                periods.append(current[vid])
        rows += 1
        if quantity is hatch:
            hatch_rows += 1
            limits = monitor.detection_limits()  # of the volumes this row may end
        else:
            app = appenders.get((name, quantity))
            if app is None:
                extra = None
                if quantity is Quantity.PRESSURE:
                    extra = fine[name] = FineSeries()
                d = decimators[(name, quantity)] = Decimator(start, fine=extra)
                app = appenders[(name, quantity)] = (d.times.append, d.values.append)
            app[0](t)
            app[1](value)
        events = feed(sample)
        if events:
            for ev in events:
                if isinstance(ev, Estimate):
                    current[ev.volume].estimates.append(ev)
                elif isinstance(ev, AlarmTransition):
                    alarms.append(ev)
                elif isinstance(ev, HatchChange):
                    hatches.append(ev)
                    _reform_periods(ev, current, periods, monitor, limits)
                elif isinstance(ev, LevelStep):
                    steps.append(ev)
                elif isinstance(ev, Notice):
                    notices.append(ev)
        if not rows & _PROGRESS_MASK:
            if not rows & _FLUSH_MASK:
                for d in decimators.values():
                    d.flush()
            if progress is not None:
                progress(rows)
        end = t
    if progress is not None:
        progress(rows)
    if rows == 0:
        raise NoSamples("no samples after the header")
    limits = monitor.detection_limits()
    for vid, p in current.items():
        p.end = end
        p.detection = limits.get(vid)
    for d in decimators.values():
        d.flush()  # the fine series get the last readings
    return Recording(
        start=start,
        end=end,
        rows=rows,
        hatch_rows=hatch_rows,
        series={(name, q.value): d.result() for (name, q), d in decimators.items()},
        periods=periods,
        hatches=hatches,
        alarms=alarms,
        notices=notices,
        active_at_end=monitor.active_alarms(),
        steps=steps,
        fine=fine,
    )


def _reform_periods(
    ev: HatchChange,
    current: dict[str, Period],
    periods: list[Period],
    monitor: Monitor,
    limits: dict[str, dict[float, float]],
) -> None:
    """Close the periods of volumes a hatch change ended (with their detection limits); open those it formed."""
    what = f"{ev.hatch} {'opened' if ev.open else 'closed'}"
    for vid in [v for v in current if v not in ev.volumes]:
        p = current.pop(vid)
        p.end, p.ended_by, p.detection = ev.time, what, limits.get(vid)
    for vid in ev.volumes:
        if vid not in current:
            current[vid] = Period(vid, monitor.volumes[vid].segments, ev.time, what)
            periods.append(current[vid])


# -- 2. analyse ---------------------------------------------------------------------------


def restart_indices(rated: list[Estimate]) -> list[int]:
    """Indices of estimates whose fit window was cut to under half the previous one: the fit restarted."""
    return [
        i
        for i in range(1, len(rated))
        if rated[i].window_s is not None
        and rated[i - 1].window_s is not None
        and rated[i].window_s < 0.5 * rated[i - 1].window_s
    ]


def _best_of(rated: list[Estimate], span_start: float, span_end: float) -> Estimate | None:
    """The estimate with the longest window in the last quarter of a span (the latest on a tie)."""
    if not rated:
        return None
    near_end = span_end - 0.25 * (span_end - span_start)
    candidates = [e for e in rated if e.time >= near_end] or rated[-1:]
    return max(reversed(candidates), key=lambda e: e.window_s or 0.0)


def best_estimate(period: Period) -> Estimate | None:
    """The period's final rate: the longest-window estimate near its end, after the fit's last restart."""
    rated = period.rated
    cuts = restart_indices(rated)
    tail = rated[cuts[-1] :] if cuts else rated
    if not tail:
        return None
    return _best_of(tail, tail[0].time, period.end)


@dataclass(frozen=True)
class RateChange:
    """A restart of the fit inside a period: the rate before and after."""

    detected: float  # time of the first estimate after the restart
    located: float  # where the new window starts
    before: Estimate
    after: Estimate


def rate_changes(period: Period) -> list[RateChange]:
    """The detected changes of rate within a period, with the best estimate on each side."""
    rated = period.rated
    cuts = restart_indices(rated)
    bounds = [0, *cuts, len(rated)]
    spans = [rated[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out = []
    for k, cut in enumerate(cuts):
        before_span, after_span = spans[k], spans[k + 1]
        before = _best_of(before_span, before_span[0].time, before_span[-1].time)
        span_end = after_span[-1].time if k + 2 < len(spans) else period.end
        after = _best_of(after_span, after_span[0].time, span_end)
        if before and after:
            e = rated[cut]
            out.append(RateChange(e.time, e.time - (e.window_s or 0.0), before, after))
    return out


@dataclass(frozen=True)
class Part:
    """A volume's rate in an attribution, and that rate scaled to a reference pressure."""

    period: Period
    estimate: Estimate
    scaled: float
    scaled_sigma: float


@dataclass(frozen=True)
class Comparison:
    """A hatch change between a joined volume and its parts: the parts' rates summed against the joined rate."""

    change: HatchChange
    joined: Part
    parts: tuple[Part, ...]
    reference_pa: float

    @property
    def total(self) -> float:
        """The parts' rates, scaled, summed."""
        return sum(p.scaled for p in self.parts)

    @property
    def difference(self) -> float:
        """Sum of the parts minus the joined rate."""
        return self.total - self.joined.scaled

    @property
    def sigma(self) -> float:
        """The standard uncertainty of the difference."""
        return math.sqrt(self.joined.scaled_sigma**2 + sum(p.scaled_sigma**2 for p in self.parts))


def _part(period: Period, e: Estimate, reference_pa: float) -> Part:
    f = reference_pa / e.pressure_pa
    return Part(period, e, e.leak_kg_per_day * f, e.leak_kg_per_day_sigma * f)


def attribution(data: Recording) -> list[Comparison]:
    """For each hatch change that split a volume (or joined several), the parts against the whole."""
    out = []
    for ev in data.hatches:
        ended = [p for p in data.periods if p.end == ev.time and p.ended_by.startswith(ev.hatch + " ")]
        formed = [p for p in data.periods if p.start == ev.time and p.started_by.startswith(ev.hatch + " ")]
        for wholes, pieces in ((ended, formed), (formed, ended)):
            for whole in wholes:
                parts = [p for p in pieces if set(p.segments) < set(whole.segments)]
                if len(parts) < 2 or set().union(*(p.segments for p in parts)) != set(whole.segments):
                    continue
                joined = best_estimate(whole)
                bests = [best_estimate(p) for p in parts]
                if joined is None or any(b is None for b in bests):
                    continue
                ref = joined.pressure_pa
                out.append(
                    Comparison(
                        ev,
                        _part(whole, joined, ref),
                        tuple(_part(p, b, ref) for p, b in zip(parts, bests, strict=True)),
                        ref,
                    )
                )
    return out


@dataclass(frozen=True)
class Span:
    """An alarm condition's active time."""

    alarm: str
    source: str
    severity: Severity
    start: float
    end: float
    still_active: bool
    value: float | None


def alarm_spans(alarms: list[AlarmTransition], end: float) -> list[Span]:
    """Active spans of each (alarm, source, severity), in order of activation; open spans run to `end`."""
    opened: dict[tuple, AlarmTransition] = {}
    spans = []
    for a in alarms:
        if a.state is AlarmState.ACTIVE:
            opened.setdefault(a.key, a)
        elif a.key in opened:
            first = opened.pop(a.key)
            spans.append(Span(a.alarm, a.source, a.severity, first.time, a.time, False, first.value))
    spans += [Span(a.alarm, a.source, a.severity, a.time, end, True, a.value) for a in opened.values()]
    return sorted(spans, key=lambda s: s.start)


@dataclass(frozen=True)
class Verdict:
    """PASS, ATTENTION or FAIL, with the reasons (the worst first)."""

    outcome: str
    reasons: tuple[str, ...]
    findings: tuple[tuple[str, str], ...]  # every (level, finding), for the full list

    def line(self) -> str:
        """The one-line verdict."""
        return f"{self.outcome} — " + "; ".join(self.reasons)


def judge(data: Recording, settings: ModuleSettings) -> Verdict:
    """The verdict against the configured limits.

    FAIL: a leak_rate warning or any emergency was active, or a final rate is at or above the warning limit.
    ATTENTION: a leak_rate caution or another alarm was active, a final rate is at or above the caution limit
    or not confidently below it (r + kσ), or a volume has no final rate.
    PASS: none of these.
    """
    lim = settings.alarms.leak_rate
    k = settings.leak.confidence_sigma
    findings: list[tuple[str, str]] = []
    first: dict[tuple[str, Severity], dict[str, AlarmTransition]] = {}
    for a in data.alarms:
        if a.state is AlarmState.ACTIVE:
            first.setdefault((a.alarm, a.severity), {}).setdefault(a.source, a)
    for (alarm, sev), by_source in sorted(first.items(), key=lambda kv: -kv[0][1]):
        fail = sev is Severity.EMERGENCY or (alarm == LEAK_RATE and sev is Severity.WARNING)
        where = ", ".join(f"{src} from {_hours(a.time - data.start)}" for src, a in by_source.items())
        findings.append(("FAIL" if fail else "ATTENTION", f"{alarm} {sev.label} was active ({where})"))
    limit_name, limit = ("caution", lim.caution_kg_per_day)
    if limit is None:
        limit_name, limit = ("warning", lim.warning_kg_per_day)
    finals = [p for p in data.periods if p.end == data.end]
    for p in finals:
        e = best_estimate(p)
        if e is None:
            findings.append(("ATTENTION", f"no leak rate could be estimated for {p.volume} at the end"))
            continue
        r, s = e.leak_kg_per_day, e.leak_kg_per_day_sigma
        rate = f"final leak rate of {p.volume} {_rate(r, s)} kg/day"
        if lim.warning_kg_per_day is not None and r >= lim.warning_kg_per_day:
            findings.append(("FAIL", f"{rate} is above the warning limit {lim.warning_kg_per_day:g} kg/day"))
        elif limit is not None and r >= limit:
            findings.append(("ATTENTION", f"{rate} is above the {limit_name} limit {limit:g} kg/day"))
        elif limit is not None and r + k * s >= limit:
            findings.append(
                ("ATTENTION", f"{rate} is not confidently below the {limit_name} limit {limit:g} (r + {k:g}σ)")
            )
    if limit is None:
        findings.append(("ATTENTION", "no leak_rate limits are configured: nothing to judge the rates against"))
    findings.sort(key=lambda f: f[0] != "FAIL")
    for level in ("FAIL", "ATTENTION"):
        worst = [text for lv, text in findings if lv == level]
        if worst:
            return Verdict(level, tuple(worst), tuple(findings))
    rates = ", ".join(
        f"{p.volume} {_rate(e.leak_kg_per_day, e.leak_kg_per_day_sigma)}"
        for p in finals
        if (e := best_estimate(p)) is not None
    )
    reason = f"no leak_rate alarm was active; final rates below the {limit_name} limit {limit:g} kg/day ({rates})"
    return Verdict("PASS", (reason,), ())


def hadamard_deviation(
    t: np.ndarray,
    y: np.ndarray,
    taus: Iterable[float] | None = None,
    *,
    dt: float | None = None,
    breaks: Iterable[float] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The overlapping Hadamard deviation of readings y at times t: (τ, deviation), τ in seconds.

    The Allan deviation's three-sample form, σ²(τ) = ⟨(ȳᵢ₊₂ − 2ȳᵢ₊₁ + ȳᵢ)²⟩ / 6 over every run
    of three adjacent τ-averages: a linear drift (a steady leak) cancels, white noise of σ per
    reading gives σ/√(τ/dt) and a random walk grows as √τ, as with the Allan deviation. The
    readings are first averaged onto a grid of dt (default: their median interval); empty cells
    are filled in linearly. A τ-average needs 90 % of its cells to hold readings (all, for τ
    under 10 dt: a clock a little off the median interval leaves the odd cell empty), so no run
    spans a gap; nor one of `breaks` (times where the series starts afresh).
    Each τ (default: ten per decade) is rounded to a multiple of dt and kept up to a third of
    the record; a τ that no run fits is left out.
    """
    import numpy as np

    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    nothing = np.empty(0), np.empty(0)
    if len(t) < 3:
        return nothing
    if dt is None:
        steps = np.diff(np.sort(t))
        steps = steps[steps > 0.0]
        if not len(steps):
            return nothing
        dt = float(np.median(steps))
    origin = float(t.min()) - dt / 2.0
    cell = np.floor((t - origin) / dt).astype(np.intp)  # bincount's index type (32 bits on armhf)
    n = int(cell.max()) + 1
    counts = np.bincount(cell, minlength=n)
    sums = np.bincount(cell, weights=y - y[0], minlength=n)
    full = counts > 0
    held_cells = np.flatnonzero(full)
    grid = np.interp(np.arange(n), held_cells, sums[full] / counts[full])  # empty cells filled in
    y_cum = np.concatenate(([0.0], np.cumsum(grid)))
    n_cum = np.concatenate(([0], np.cumsum(full)))
    break_cells = {int(c) for c in np.floor((np.asarray(list(breaks), dtype=float) - origin) / dt) if 0 < c < n}
    gaps = not full.all()
    if taus is None:
        ms = np.round(np.logspace(0.0, math.log10(max(n // 3, 1)), 1 + int(10 * math.log10(max(n // 3, 1)))))
    else:
        ms = np.round(np.asarray(list(taus), dtype=float) / dt)
    ms = np.unique(np.maximum(ms, 1).astype(np.int64))
    out_tau, out_dev = [], []
    for m in ms[3 * ms <= n]:
        runs = n - 3 * m + 1
        total = y_cum[m:] - y_cum[:-m]  # the sum of the m cells from each start
        d = total[2 * m : 2 * m + runs] - 2.0 * total[m : m + runs] + total[:runs]
        ok = None
        if gaps:
            whole = n_cum[m:] - n_cum[:-m] >= m - m // 10  # enough of the m cells hold readings
            ok = whole[:runs] & whole[m : m + runs] & whole[2 * m : 2 * m + runs]
        for cell in break_cells:  # runs from cell - 3m + 1 to cell - 1 span the break
            if ok is None:
                ok = np.ones(runs, dtype=bool)
            ok[max(0, cell - 3 * m + 1) : min(runs, cell)] = False
        if ok is not None:
            d = d[ok]
        if len(d):
            out_tau.append(m * dt)
            out_dev.append(math.sqrt(float(np.dot(d, d)) / (6.0 * len(d))) / m)
    return np.array(out_tau), np.array(out_dev)


@dataclass(frozen=True)
class SensorNoise:
    """A pressure sensor's Hadamard deviation (Pa) against the averaging time τ (s)."""

    sensor: str
    segment: str
    readings: int
    interval_s: float  # the median time between its readings
    taus: np.ndarray
    deviation: np.ndarray

    @property
    def white_pa(self) -> float:
        """The white noise of one reading: the shortest τ's deviation, scaled back to one interval."""
        return float(self.deviation[0] * math.sqrt(self.taus[0] / self.interval_s))

    def at(self, tau_s: float) -> tuple[float, float] | None:
        """(τ, deviation) at the computed τ nearest to tau_s, if within 10 %; else None."""
        if not len(self.taus):
            return None
        i = int(abs(self.taus - tau_s).argmin())
        return (float(self.taus[i]), float(self.deviation[i])) if abs(self.taus[i] - tau_s) <= 0.1 * tau_s else None


def sensor_noise(data: Recording, settings: ModuleSettings) -> list[SensorNoise]:
    """Each pressure sensor's Hadamard deviation; none for too few readings.

    The series is split where its slope changes by design or by a leak: at hatch changes and
    at the rate changes the monitor located. A level step is left in (its time is when it was
    recognised, not when it happened): it shows at the τ that span it.
    """
    segment_of = {s.name: s.segment for s in settings.sensors}
    breaks = [h.time for h in data.hatches] + [c.located for p in data.periods for c in rate_changes(p)]
    out = []
    for name, series in sorted(data.fine.items(), key=lambda kv: (segment_of.get(kv[0], ""), kv[0])):
        t, y = series.result()
        if len(t) < 3:
            continue
        span = float(t[-1] - t[0]) + series.width
        taus = sorted({*_log_taus(series.width, span / 3.0), *NOISE_TABLE_TAUS_S})
        taus_s, dev = hadamard_deviation(t, y, taus, dt=series.width, breaks=breaks)
        if len(taus_s):
            readings = data.series[(name, Quantity.PRESSURE.value)].count
            out.append(SensorNoise(name, segment_of.get(name, ""), readings, series.interval, taus_s, dev))
    return out


def _log_taus(shortest: float, longest: float, per_decade: int = 10) -> list[float]:
    """Averaging times from `shortest` to `longest`, evenly spaced on a log scale."""
    if longest < shortest:
        return [shortest]
    decades = math.log10(longest / shortest)
    count = max(1, int(per_decade * decades))
    return [shortest * 10 ** (decades * i / count) for i in range(count + 1)]


# -- 3a. the figure -----------------------------------------------------------------------


def _colours(settings: ModuleSettings, data: Recording) -> tuple[dict[str, str], dict[str, str]]:
    """A colour per segment (and its single-segment volume) and per joined volume."""
    segment = _segment_colours(settings)
    volume = dict(segment)
    joined = ["#6a3d9a", "#b15928", "#33a02c", "#e31a1c", "#000000"]
    for p in data.periods:
        if p.volume not in volume:
            volume[p.volume] = joined[sum(len(v.split("-")) > 1 for v in volume) % len(joined)]
    return segment, volume


def _segment_colours(settings: ModuleSettings) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
    return {s.name: palette[i % len(palette)] for i, s in enumerate(settings.segments)}


def _shade(colour: str, k: int) -> str:
    """The k-th shade of a colour: itself, then darker and lighter variants."""
    from matplotlib.colors import to_rgb

    factor = (1.0, 0.6, 1.35, 0.8, 1.15)[k % 5]
    r, g, b = to_rgb(colour)
    if factor <= 1.0:
        return "#{:02x}{:02x}{:02x}".format(*(int(255 * c * factor) for c in (r, g, b)))
    return "#{:02x}{:02x}{:02x}".format(*(int(255 * (c + (1 - c) * (factor - 1))) for c in (r, g, b)))


def _gaps_as_nan(t: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Insert NaN where consecutive points are far apart (a silent sensor), so lines break there."""
    import numpy as np

    if len(t) < 3:
        return (t, *ys)
    dt = np.diff(t)
    gaps = np.flatnonzero(dt > 5.0 * np.median(dt))
    if not len(gaps):
        return (t, *ys)
    return tuple(np.insert(a.astype(float), gaps + 1, np.nan) for a in (t, *ys))


def _hour_step(hours: float) -> float:
    """A tick spacing in hours giving about 8–16 ticks."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 12.0, 24.0, 48.0, 168.0):
        if hours / step <= 16:
            return step
    return 336.0


def _min_span(ax, span: float) -> None:
    """Widen a y axis to at least `span`, about its centre (a quiet signal should look quiet)."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def draw(data: Recording, settings: ModuleSettings, title: str, paths: Iterable[str]) -> Figure:
    """The multi-panel figure: pressure, temperature, air mass, leak rate, alarms; saved to each path."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MultipleLocator
    from matplotlib.transforms import blended_transform_factory

    t0 = data.start
    hours = max(data.duration / 3600.0, 1e-3)
    seg_colour, vol_colour = _colours(settings, data)
    segment_of = {s.name: s.segment for s in settings.sensors}
    spans = alarm_spans(data.alarms, data.end)
    keys = list(dict.fromkeys((s.alarm, s.source, s.severity) for s in spans))
    alarm_height = max(1.2, 0.32 * len(keys) + 0.6)
    fig = Figure(figsize=(13, 11.5 + alarm_height), dpi=100, layout="constrained")
    axes = fig.subplots(5, 1, sharex=True, gridspec_kw={"height_ratios": [3.0, 2.2, 2.2, 3.2, alarm_height]})
    ax_p, ax_t, ax_m, ax_r, ax_a = axes
    fig.suptitle(title, fontsize=13, fontweight="bold")

    # raw readings: mean per bucket, with the min–max band
    for ax, quantity, scale, offset in ((ax_p, "pressure", 1e-3, 0.0), (ax_t, "temperature", 1.0, -273.15)):
        count: dict[str, int] = {}
        for (name, q), d in sorted(data.series.items(), key=lambda kv: (segment_of.get(kv[0][0], ""), kv[0][0])):
            if q != quantity or not len(d.t):
                continue
            seg = segment_of.get(name, "")
            colour = _shade(seg_colour.get(seg, "#333333"), count.get(seg, 0))
            count[seg] = count.get(seg, 0) + 1
            t, mean, lo, hi = _gaps_as_nan(
                (d.t - t0) / 3600.0, d.mean * scale + offset, d.lo * scale + offset, d.hi * scale + offset
            )
            ax.fill_between(t, lo, hi, color=colour, alpha=0.25, linewidth=0)
            ax.plot(t, mean, color=colour, linewidth=1.2, label=f"{name} ({seg})")
        if not count:
            ax.text(0.5, 0.5, f"no {quantity} readings", transform=ax.transAxes, ha="center", va="center")
    ax_p.set_ylabel("pressure (kPa)")
    lo, hi = ax_p.get_ylim()
    lp = settings.alarms.low_pressure
    for v, sev in ((lp.warning_pa, Severity.WARNING), (lp.emergency_pa, Severity.EMERGENCY)):
        if v is not None and lo - 0.15 * (hi - lo) <= v / 1000.0 <= hi:  # only a limit the data came near
            ax_p.axhline(
                v / 1000.0,
                color=SEVERITY_COLOURS[sev],
                linestyle="--",
                linewidth=1.5,
                label=f"low_pressure {sev.label} {v / 1000.0:g} kPa",
            )
    ax_t.set_ylabel("temperature (°C)")
    _min_span(ax_p, 0.2)
    _min_span(ax_t, 0.2)

    # per volume period: mass change and leak rate
    labelled: set[str] = set()
    rate_bounds: list[np.ndarray] = []
    for p in data.periods:
        if not p.estimates:
            continue
        est = p.estimates[_settled(p) :]  # before the fit settles, a sensor may be missing
        step = max(1, len(est) // MAX_LINE_POINTS)
        est = est[::step]
        colour = vol_colour[p.volume]
        nan = math.nan
        t, mass, r, s = _gaps_as_nan(
            np.array([(e.time - t0) / 3600.0 for e in est]),
            np.array([e.mass_kg for e in est]),
            np.array([nan if e.leak_kg_per_day is None else e.leak_kg_per_day for e in est]),
            np.array([nan if e.leak_kg_per_day_sigma is None else e.leak_kg_per_day_sigma for e in est]),
        )
        first_label = p.volume not in labelled
        labelled.add(p.volume)
        ax_m.plot(
            t,
            mass - mass[0],
            color=colour,
            linewidth=1.2,
            label=f"{p.volume} (from {mass[0]:.2f} kg at {t[0]:.1f} h)",
        )
        ax_r.fill_between(t, r - 2 * s, r + 2 * s, color=colour, alpha=0.22, linewidth=0)
        ax_r.plot(t, r, color=colour, linewidth=1.3, label=p.volume if first_label else None)
        ok = np.isfinite(r) & np.isfinite(s)
        if ok.any():  # scale to the settled estimates: leave out the wide bands of the first few
            ok &= s <= 3.0 * np.median(s[ok])
            rate_bounds += [r[ok] - 2 * s[ok], r[ok] + 2 * s[ok]]
    ax_m.set_ylabel("air mass change (kg)\nfrom each volume's start")
    ax_m.axhline(0.0, color="0.6", linewidth=0.8)
    ax_r.set_ylabel("leak rate (kg/day)\nline: estimate, band: ±2σ")
    lim = settings.alarms.leak_rate
    thresholds = [
        (v, name, SEVERITY_COLOURS[sev])
        for v, name, sev in (
            (lim.caution_kg_per_day, "caution", Severity.CAUTION),
            (lim.warning_kg_per_day, "warning", Severity.WARNING),
        )
        if v is not None
    ]
    for v, name, colour in thresholds:
        ax_r.axhline(v, color=colour, linestyle="--", linewidth=1.5, label=f"{name} limit {v:g} kg/day")
    ax_r.axhline(0.0, color="0.6", linewidth=0.8)
    if rate_bounds:
        allb = np.concatenate(rate_bounds)
        lo = min(0.0, float(np.percentile(allb, 1))) if len(allb) else 0.0
        hi = max([float(np.percentile(allb, 99)) if len(allb) else 0.0, *(v * 1.15 for v, _, _ in thresholds), 0.1])
        ax_r.set_ylim(lo - 0.05 * (hi - lo), hi)

    # alarm timeline: one band per (alarm, source, severity)
    for row, key in enumerate(keys):
        mine = [s for s in spans if (s.alarm, s.source, s.severity) == key]
        bars = [((s.start - t0) / 3600.0, max((s.end - s.start) / 3600.0, hours / 800)) for s in mine]
        ax_a.broken_barh(bars, (row - 0.35, 0.7), facecolors=SEVERITY_COLOURS[key[2]], edgecolor="none")
    ax_a.set_yticks(range(len(keys)), [f"{a} {src} {sev.label}" for a, src, sev in keys], fontsize=9)
    ax_a.set_ylim(len(keys) - 0.5 if keys else 0.5, -0.5)
    if not keys:
        ax_a.set_yticks([])
        ax_a.text(0.5, 0.5, "no alarm was active", transform=ax_a.transAxes, ha="center", va="center")
    ax_a.set_ylabel("alarms")
    handles = [Patch(color=c, label=sev.label) for sev, c in SEVERITY_COLOURS.items() if any(k[2] is sev for k in keys)]

    # hatch changes on every panel, named on the top one
    top = blended_transform_factory(ax_p.transData, ax_p.transAxes)
    for h in data.hatches:
        x = (h.time - t0) / 3600.0
        for ax in axes:
            ax.axvline(x, color="0.25", linestyle=":", linewidth=1.3)
        ax_p.text(
            x,
            1.02,
            f"{h.hatch} {'opened' if h.open else 'closed'}",
            transform=top,
            ha="center",
            va="bottom",
            fontsize=9,
            color="0.15",
        )

    for ax in axes:
        ax.grid(True, color="0.88", linewidth=0.7, axis="x" if ax is ax_a else "both")
        ax.set_axisbelow(True)
    for ax in (ax_p, ax_t, ax_m, ax_r):
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    for ax in (ax_p, ax_t, ax_m, ax_r):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    if handles:
        ax_a.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    step = _hour_step(hours)
    whole = math.ceil(hours / step) * step
    ax_a.set_xlim(0.0, whole if whole - hours < 0.02 * hours else hours)
    ax_a.xaxis.set_major_locator(MultipleLocator(step))
    ax_a.set_xlabel(f"time since start (h); start {present.utc(t0)} UTC")
    for path in paths:
        fig.savefig(path)
        fig.set_layout_engine("none")  # keep the layout just computed for the next format
    return fig


def draw_noise(noise: list[SensorNoise], settings: ModuleSettings, title: str, path: str) -> Figure:
    """The pressure sensors' Hadamard deviation against τ, log-log, with each one's white-noise line; saved to path."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    seg_colour = _segment_colours(settings)
    fig = Figure(figsize=(10, 6.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title, fontsize=12, fontweight="bold")
    count: dict[str, int] = {}
    for n in noise:
        colour = _shade(seg_colour.get(n.segment, "#333333"), count.get(n.segment, 0))
        count[n.segment] = count.get(n.segment, 0) + 1
        ax.loglog(
            n.taus,
            n.deviation,
            "o-",
            color=colour,
            markersize=3.5,
            linewidth=1.3,
            label=f"{n.sensor} ({n.segment}): white {_three_digits(n.white_pa)} Pa per {n.interval_s:.3g} s reading",
        )
        ax.loglog(n.taus, n.white_pa * np.sqrt(n.interval_s / n.taus), "--", color=colour, linewidth=0.9, alpha=0.7)
    if not noise:
        ax.text(0.5, 0.5, "too few pressure readings", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("averaging time τ (s)")
    ax.set_ylabel("overlapping Hadamard deviation (Pa)")
    ax.set_title(
        "Hadamard deviation: the Allan deviation's three-sample form, in which a linear drift (a steady leak) "
        "cancels;\nseries split at hatch changes and located rate changes. Dashed: white noise alone (1/√τ).",
        fontsize=9.5,
    )
    ax.grid(True, which="both", color="0.88", linewidth=0.7)
    ax.set_axisbelow(True)
    if noise:
        ax.legend(loc="best", fontsize=9, frameon=False)
    fig.savefig(path)
    return fig


# -- 3b. the Markdown document ------------------------------------------------------------


def _settled(p: Period) -> int:
    """Index of the period's first estimate with a rate (its sensor set has settled), else 0."""
    return next((i for i, e in enumerate(p.estimates) if e.leak_kg_per_day is not None), 0)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600.0:.2f} h"


def _rate(r: float | None, s: float | None) -> str:
    """A rate with its σ to two significant digits, both to the same decimals: 0.452 ± 0.011, 0.92800 ± 0.00010."""
    if r is None:
        return "—"
    if s is None or not s > 0 or not math.isfinite(s):
        return f"{r:.3f}"
    decimals = min(6, max(3, 1 - math.floor(math.log10(s))))
    return f"{r:.{decimals}f} ± {s:.{decimals}f}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def markdown(
    data: Recording, cfg: Config, samples_path: str, verdict: Verdict, noise: list[SensorNoise] | None = None
) -> str:
    """The report document; the figure is `report.png` beside it, the noise plot `allan.png` when `noise` is given."""
    m = cfg.module
    t0 = data.start
    rel = lambda t: _hours(t - t0)  # noqa: E731
    segment_of = {s.name: s.segment for s in m.sensors}
    out = [
        f"# Pressure-decay test report: {cfg.station}, `{os.path.basename(samples_path)}`",
        "",
        f"**Verdict: {verdict.outcome}** — " + "; ".join(verdict.reasons),
        "",
        f"Samples `{samples_path}`, configuration `{cfg.path}`; made by hullwatch {__version__} through the "
        "monitor's own core (the same estimates and alarms as `hullwatch analyze`).",
        "",
        "## Test period",
        "",
    ]
    counts = {q: sum(d.count for (_, qq), d in data.series.items() if qq == q) for q in ("pressure", "temperature")}
    out += _table(
        ["", ""],
        [
            ["start (UTC)", present.utc(data.start)],
            ["end (UTC)", present.utc(data.end)],
            ["duration", f"{data.duration / 3600:.2f} h ({data.duration:,.0f} s)"],
            [
                "samples",
                f"{data.rows:,} rows: {counts['pressure']:,} pressure, {counts['temperature']:,} temperature, "
                f"{data.hatch_rows:,} hatch",
            ],
        ],
    )

    out += ["## Configuration", ""]
    reported: dict[str, list[str]] = {}
    for name, q in data.series:
        reported.setdefault(name, []).append(q)
    seg_rows = []
    for s in m.segments:
        sensors = [
            f"{n} ({', '.join(sorted(reported.get(n, []))) or 'no readings'})"
            for n, seg in segment_of.items()
            if seg == s.name
        ]
        seg_rows.append([s.name, f"{s.volume_m3:g}", ", ".join(sensors) or "—"])
    out += _table(["segment", "volume (m³)", "sensors (what they reported)"], seg_rows)
    if m.hatches:
        out += _table(
            ["hatch", "between", "initially"],
            [[h.name, " ↔ ".join(h.between), "open" if h.initially_open else "closed"] for h in m.hatches],
        )
    out += _table(
        ["limit", "setting"],
        [
            *([k.name, k.render(k.report_text, m.alarms, m.leak, _off)] for k in alarm_kinds.KINDS),
            ["estimates", f"every {m.leak.report_interval_s:g} s of data per volume"],
        ],
    )

    out += [
        "## Figure",
        "",
        "Pressure and temperature per sensor (bucket means, with each bucket's min–max band), the air mass of each "
        "volume relative to its start, the leak rate per volume with its ±2σ band and the configured limits, and the "
        f"alarms that were active. Dotted lines: hatch changes. Time in hours from {present.utc(t0)} UTC. "
        f"Also as [{PDF_NAME}]({PDF_NAME}).",
        "",
        f"![Pressure, temperature, air mass, leak rate and alarms of {cfg.station} against time]({PNG_NAME})",
        "",
    ]

    out += [
        "## Leak rate per volume period",
        "",
        "A period is a volume from the hatch change that formed it to the one that ended it. Its rate is the "
        "*best estimate*: after the fit's last restart, the estimate with the longest fit window in the last quarter "
        "of the period (the one used is named). The mass balance is the mass lost over the period divided by its "
        "length: a cross-check that averages over any change of rate.",
        "",
    ]
    rows = []
    changes = []
    for p in data.periods:
        e = best_estimate(p)
        first, last = (p.estimates[_settled(p)], p.estimates[-1]) if p.estimates else (None, None)
        settled = first is not None and first.leak_kg_per_day is not None  # else the mass may lack a sensor
        days = (last.time - first.time) / 86400.0 if settled else 0.0
        lost = first.mass_kg - last.mass_kg if settled else math.nan
        rows.append(
            [
                p.volume,
                f"{rel(p.start)} – {rel(p.end)}",
                f"{p.started_by} → {p.ended_by}",
                _rate(e.leak_kg_per_day, e.leak_kg_per_day_sigma) if e else "—",
                f"at {rel(e.time)}, {present.duration(e.window_s)} window" if e else "none",
                f"{first.pressure_pa:,.0f} → {last.pressure_pa:,.0f}" if first else "—",
                f"{first.mass_kg:.3f} → {last.mass_kg:.3f}" if settled else "—",
                f"{lost:.3f}" if settled else "—",
                f"{lost / days:.3f}" if days > 0 else "—",
            ]
        )
        changes += [(p, c) for c in rate_changes(p)]
    out += _table(
        [
            "volume",
            "period",
            "from → to",
            "leak rate ± σ (kg/day)",
            "estimate used",
            "pressure start → end (Pa)",
            "mass start → end (kg)",
            "mass lost (kg)",
            "mass balance (kg/day)",
        ],
        rows,
    )
    if changes:
        out += ["Rate changes detected within a period (the fit restarted):", ""]
        out += _table(
            ["volume", "detected", "new window from", "before (kg/day)", "after (kg/day)"],
            [
                [
                    p.volume,
                    rel(c.detected),
                    rel(c.located),
                    _rate(c.before.leak_kg_per_day, c.before.leak_kg_per_day_sigma),
                    _rate(c.after.leak_kg_per_day, c.after.leak_kg_per_day_sigma),
                ]
                for p, c in changes
            ],
        )

    out += _detection_section(data, cfg, rel)
    if noise is not None:
        out += _noise_section(noise)
    out += _attribution_section(data, cfg, rel)
    out += _alarm_section(data, rel)

    if data.hatches:
        out += ["## Hatch changes", ""]
        out += _table(
            ["time (UTC)", "t", "hatch", "state", "volumes after"],
            [
                [present.utc(h.time), rel(h.time), h.hatch, "open" if h.open else "closed", ", ".join(h.volumes)]
                for h in data.hatches
            ],
        )
    if data.notices:
        out += ["## Notices", ""]
        out += [f"- {rel(n.time)} ({present.utc(n.time)}): {n.message}" for n in data.notices] + [""]

    out += ["## Verdict", "", f"**{verdict.outcome}**", ""]
    if verdict.findings:
        out += [f"- {level}: {text}" for level, text in verdict.findings]
    else:
        out += [f"- {verdict.reasons[0]}"]
    lim_name = "caution" if m.alarms.leak_rate.caution_kg_per_day is not None else "warning"
    out += [
        "",
        f"PASS requires that no leak_rate caution or warning was ever active and that each final rate is below the "
        f"{lim_name} limit, with r + {m.leak.confidence_sigma:g}σ below it too. A leak_rate warning, an emergency, or "
        "a final rate at or above the warning limit is a FAIL; anything else short of PASS (a caution, another "
        "alarm such as a sensor fault or low pressure, a rate not confidently below the limit) is ATTENTION.",
        "",
    ]
    return "\n".join(out)


def _off(x: float | None, unit: str) -> str:
    return "off" if x is None else f"{x:g} {unit}"


def _two_digits(x: float) -> str:
    """A positive figure to two significant digits, without an exponent: 0.00012, 0.45, 12."""
    if not math.isfinite(x) or x <= 0.0:
        return "—"
    return f"{x:.{max(0, 1 - math.floor(math.log10(x)))}f}"


def _three_digits(x: float) -> str:
    """A positive figure to three significant digits, trailing zeros kept: 2.00, 0.0329, 135."""
    if not math.isfinite(x) or x <= 0.0:
        return "—"
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}"


def _detection_section(data: Recording, cfg: Config, rel: Callable[[float], str]) -> list[str]:
    """Per volume period: the smallest leak it would confirm over 10 min, 1 h and a day."""
    k = cfg.module.leak.confidence_sigma
    out = [
        "## Detection limits",
        "",
        f"The smallest leak each volume confirms at {k:g}σ (the leak-rate alarms' `confidence_sigma`) when fitted over "
        "each window: from its measured noise, the correlation of its residuals and its point rate at the end of the "
        "period (the monitor's own figures, as `hullwatch analyze --summary` gives them).",
        "",
    ]
    rows, longer = [], False
    for p in data.periods:
        span = p.end - p.start
        cells = []
        for w in DETECTION_WINDOWS_S:
            value = (p.detection or {}).get(w)
            mark = "*" if value is not None and w > span else ""
            longer |= bool(mark)
            cells.append(_two_digits(value) + mark if value is not None else "—")
        if p.detection is None:
            cells[-1] += " (no leak fit)"
        rows.append([p.volume, f"{rel(p.start)} – {rel(p.end)}", *cells])
    out += _table(
        ["volume", "period", *(f"in {present.window(w)} (kg/day)" for w in DETECTION_WINDOWS_S)],
        rows,
    )
    if longer:
        out += [
            "\\* The window is longer than the period was: the figure extrapolates from the measured noise and "
            "correlation, as if both stayed as they were.",
            "",
        ]
    return out


def _noise_section(noise: list[SensorNoise]) -> list[str]:
    """Each pressure sensor's Hadamard deviation at a few averaging times, and the plot."""
    out = [
        "## Pressure sensor noise",
        "",
        "The overlapping Hadamard deviation of each pressure sensor's readings against the averaging time τ: the "
        "readings averaged onto the sensor's median sampling interval, the series split at hatch changes and at the "
        "rate changes the monitor located, τ up to a third of the record. It is the Allan deviation's three-sample "
        "form, in which a linear drift (a steady leak) cancels: what remains is the transducer's noise and whatever "
        "is not a straight line (slow wander, a thermal cycle, a level step, the curvature of a fast leak's "
        "exponential decay). White noise falls as 1/√τ; where a curve flattens or rises, averaging longer stops "
        "helping.",
        "",
    ]
    if not noise:
        return out + ["Too few pressure readings for a deviation.", ""]
    rows = []
    for n in noise:
        cells = []
        for tau in NOISE_TABLE_TAUS_S:
            found = n.at(tau)
            if found is None:
                cells.append("—")
            else:
                at, dev = found
                cells.append(_three_digits(dev) + (f" (τ {at:.3g} s)" if abs(at - tau) > 0.005 * tau else ""))
        rows.append([n.sensor, n.segment, f"{n.readings:,}", f"{n.interval_s:.3g}", _three_digits(n.white_pa), *cells])
    out += _table(
        [
            "sensor",
            "segment",
            "readings",
            "interval (s)",
            "white noise (Pa per reading)",
            *(f"τ = {tau:g} s (Pa)" for tau in NOISE_TABLE_TAUS_S),
        ],
        rows,
    )
    return out + [
        "A dash: the record is too short for that τ (it needs three τ-averages in one stretch), or τ is shorter "
        "than the sampling interval. The longest τs rest on few independent averages (at a third of the record, "
        "one): read them as good to a factor of about two.",
        "",
        f"![Hadamard deviation of each pressure sensor against the averaging time]({NOISE_PNG_NAME})",
        "",
    ]


def _attribution_section(data: Recording, cfg: Config, rel: Callable[[float], str]) -> list[str]:
    """Per-segment rates from the periods each segment spent alone, and parts against the joined volume."""
    k = cfg.module.leak.confidence_sigma
    out = [
        "## Leak attribution per segment",
        "",
        "While a closed hatch isolates a segment, its volume's rate is that segment's own leak. Each segment's rate "
        "below is the best estimate of the period(s) it spent alone.",
        "",
    ]
    rows = []
    for s in cfg.module.segments:
        alone = [p for p in data.periods if p.segments == (s.name,)]
        if not alone:
            shared = sorted({p.volume for p in data.periods if s.name in p.segments}, key=len)
            rows.append(
                [
                    s.name,
                    f"{s.volume_m3:g}",
                    "never isolated",
                    "—",
                    f"measured only within {shared[0]}" if shared else "—",
                ]
            )
            continue
        for p in alone:
            e = best_estimate(p)
            if e is None:
                rows.append([s.name, f"{s.volume_m3:g}", f"{rel(p.start)} – {rel(p.end)}", "—", "no rate yet"])
                continue
            r, sig = e.leak_kg_per_day, e.leak_kg_per_day_sigma
            leaking = (
                f"leaking: r − {k:g}σ = {r - k * sig:.3f} > 0"
                if r - k * sig > 0
                else f"no leak shown: at most {r + k * sig:.3f} kg/day (r + {k:g}σ)"
            )
            rows.append(
                [
                    s.name,
                    f"{s.volume_m3:g}",
                    f"{rel(p.start)} – {rel(p.end)}",
                    f"{_rate(r, sig)} at {e.pressure_pa:,.0f} Pa",
                    leaking,
                ]
            )
    out += _table(["segment", "volume (m³)", "isolated", "leak rate ± σ (kg/day)", "finding"], rows)
    comparisons = attribution(data)
    if not comparisons:
        out += ["No hatch change split a measured volume into measured parts: no joined rate to compare with.", ""]
        return out
    out += [
        "Each hatch change between a joined volume and its parts compares the sum of the parts' rates with the "
        "joined rate. Rates are scaled to the joined volume's pressure (a choked leak's rate is proportional to "
        "the pressure); agreement means a difference within 2σ.",
        "",
    ]
    rows = []
    for c in comparisons:
        parts = ", ".join(f"{p.period.volume} {_rate(p.scaled, p.scaled_sigma)}" for p in c.parts)
        agree = abs(c.difference) <= 2 * c.sigma
        rows.append(
            [
                f"{c.change.hatch} {'opened' if c.change.open else 'closed'} at {rel(c.change.time)}",
                f"{c.joined.period.volume} {_rate(c.joined.scaled, c.joined.scaled_sigma)}",
                parts,
                _rate(c.total, math.sqrt(sum(p.scaled_sigma**2 for p in c.parts))),
                _rate(c.difference, c.sigma),
                "yes" if agree else f"no ({abs(c.difference) / c.sigma:.1f}σ)" if c.sigma > 0 else "no",
            ]
        )
    out += _table(
        [
            "hatch change",
            "joined rate (kg/day)",
            "parts (kg/day)",
            "sum of parts (kg/day)",
            "sum − joined (kg/day)",
            "agree",
        ],
        rows,
    )
    out += [f"Reference pressure: {', '.join(f'{c.reference_pa:,.0f} Pa' for c in comparisons)}.", ""]
    return out


def _alarm_section(data: Recording, rel: Callable[[float], str]) -> list[str]:
    """The alarm transitions as a table, what was still active at the end, and the level steps."""
    out = ["## Alarms", ""]
    if not data.alarms:
        return out + ["No alarm became active.", ""] + _step_lines(data, rel)
    out += _table(
        ["time (UTC)", "t", "alarm", "source", "severity", "state", "value", "threshold", "reason"],
        [
            [
                present.utc(a.time),
                rel(a.time),
                a.alarm,
                a.source,
                a.severity.label,
                a.state.value,
                present.quantity(a.alarm, a.value),
                present.quantity(a.alarm, a.threshold),
                a.reason or "—",
            ]
            for a in data.alarms
        ],
    )
    active = ", ".join(f"{alarm} {source} {sev.label}" for alarm, source, sev in data.active_at_end)
    return out + [f"Active at the end of the recording: {active or 'none'}.", ""] + _step_lines(data, rel)


def _step_lines(data: Recording, rel: Callable[[float], str]) -> list[str]:
    """The level steps: sudden offsets taken as offsets, not leaks."""
    out = [
        "### Level steps",
        "",
        "A level step is a sudden offset in a volume's readings (a re-zeroed or bumped transducer): the monitor takes "
        "it as an offset, not as a leak. The size is the jump in Pa; the sensor is named when the others tell which "
        "one stepped.",
        "",
    ]
    if not data.steps:
        return out + ["No level step was found.", ""]
    return out + _table(
        ["time (UTC)", "t", "volume", "sensor", "size (Pa)"],
        [
            [present.utc(s.time), rel(s.time), s.volume, s.sensor or "— (the volume's fit)", f"{s.size_pa:+.1f}"]
            for s in data.steps
        ],
    )


# -- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """`hullwatch report -c CONFIG SAMPLES -o OUTDIR`: exit code per sysexits."""
    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    if not os.path.isfile(args.samples):
        print(f"{args.samples}: samples file not found", file=sys.stderr)
        return EX_NOINPUT
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        print(f"hullwatch report needs {exc.name or 'matplotlib'}: pip install 'hullwatch[tools]'", file=sys.stderr)
        return EX_UNAVAILABLE
    outdir = args.output
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        print(f"{outdir}: cannot create the report directory: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    name = os.path.basename(args.samples)
    try:
        with (
            open_positioned(args.samples) as (stream, position),
            Progress(f"reading {name}", file_size(args.samples)) as progress,
        ):
            samples = read_samples(args.samples, cfg.sample_names(), stream)
            data = collect(cfg.module, samples, lambda rows: progress.update(position(), rows))
    except SamplesError as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    except NoSamples as exc:
        print(f"{args.samples}: {exc}", file=sys.stderr)
        return EX_DATAERR
    except OSError as exc:  # includes a corrupt .gz
        print(f"{exc.filename or args.samples}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    for n in data.notices:
        print(present.describe(n), file=sys.stderr)
    verdict = judge(data, cfg.module)
    title = (
        f"Pressure-decay test: {cfg.station} — {name}\n"
        f"start {present.utc(data.start)} UTC, duration {present.duration(data.duration)} — verdict {verdict.outcome}"
    )
    paths = {n: os.path.join(outdir, n) for n in (PNG_NAME, PDF_NAME, MD_NAME, NOISE_PNG_NAME)}
    noise = sensor_noise(data, cfg.module)
    try:
        draw(data, cfg.module, title, [paths[PNG_NAME], paths[PDF_NAME]])
        draw_noise(noise, cfg.module, f"Pressure sensor noise: {cfg.station} — {name}", paths[NOISE_PNG_NAME])
        with open(paths[MD_NAME], "w", encoding="utf-8") as f:
            f.write(markdown(data, cfg, args.samples, verdict, noise))
    except OSError as exc:
        print(f"{exc.filename or outdir}: cannot write the report: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(verdict.line())
    print(f"report: {paths[MD_NAME]} (figure {paths[PNG_NAME]}, {paths[PDF_NAME]}; noise {paths[NOISE_PNG_NAME]})")
    return EX_OK

"""Leak-rate estimation: the slope of a volume's air mass, with an honest uncertainty.

Theory of operation
-------------------
A leak shows as a steady fall of the air mass m(t) = Σ P·Vᵢ/(R·Tᵢ). The sensors add
white noise, so the rate is the least-squares slope of m over a window, and the
slope's standard error is σ_m/√Sxx (σ·√(12/(f·T³)) for N evenly spaced points): a long
window is quiet but slow to see a change, a short one quick but noisy. No single
length suits a 4 m³ airlock and a 75 m³ module, or a steady leak and a new hole, so
the window adapts by itself:

* It grows with the data, up to MAX_WINDOW_S (an hour: beyond that the model's
  own assumptions — a constant rate, steady sensor offsets — matter more than noise).
* Change detection cuts it. At each estimate the window is split at a ladder of
  points (the last MIN_POINTS, then 25 % more each rung), two independent lines are
  fitted, and their slopes compared with a z statistic on the pooled residual noise.
  When some split gives |z| > CHANGE_Z on two consecutive estimates, the window
  restarts at the split that best explains the data (least total squared error,
  refined between rungs). The high bar and the confirmation keep false restarts rare;
  a real change (a leak doubling, a hole) passes both within a fraction of the time
  needed to confirm the new rate at all.
* σ comes from the fit's own residuals, so it widens when the model fits badly. Just
  after a restart few points are left, so their noise estimate is pooled with the one
  measured over the last long window (a prior worth PRIOR_DOF degrees of freedom).
* Real residuals are not independent: a transducer's slow wander, a thermometer that
  lags the air through an HVAC cycle. Their dependence is measured over the window: the
  window is cut into BLOCKS blocks and the block means are fitted; the block residuals'
  variance, widened by their own lag-1 correlation (AR(1)), gives the slope's variance
  as the data really scatter it. When that exceeds the independent-point variance by
  more than WHITE_RATIO, the ratio (the *inflation*) widens σ, lowers the degrees of
  freedom behind Student's widening, and raises the change detector's bar; below it the
  noise counts as white and nothing changes. One window's inflation is a noisy measure
  of a property of the sensors, so the inflation of the long windows (fitted with a
  parabola, which a slowly changing rate does not disturb, and corrected for what the
  fit takes out of correlated residuals) is averaged over INFLATION_MEMORY_S; the window's
  own measure (fitted with the best of a line, a bend and a jump, so that a change about
  to be found is not taken for noise) counts when it is larger. Before any long window,
  the worst inflation seen so far stands in.
* The change detector also remembers, per split, how large its z² usually is; a split
  whose z² is usually large (a slow oscillation the noise model does not capture) needs
  that much more to cut the window.
* A level shift is not a rate. A sensor re-zeroed or a fitting bumped moves the series by
  a constant; two parallel lines with a jump between them then explain the data as well
  as two free lines, and far better than a bent (continuous) line. While the newest
  points look shifted but are too few to tell (fewer than MIN_POINTS), they wait outside
  the fit ("hold"). A shift confirmed like a change and sharp (the parallel fit scatters
  no more than the noise) is absorbed: the fit gets a free level from that point on (one
  slope, one level per piece), the window is kept, and the step is reported (`take_steps`).

* Points closer together than MIN_SPACING_S are averaged into one (the least-squares
  slope through averages is nearly that through the points), so a transducer streaming
  at a kilohertz costs no more memory or work than one at 2 Hz.

The estimate is the mean rate over the window it used, reported with that window's σ
and length. Everything here is a pure function of the points given: no clocks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from hullwatch.core.linefit import LineSeries

MAX_WINDOW_S = 3600.0
MIN_POINTS = 30  # the fewest points on either side of a change
MIN_SPACING_S = 0.5  # points closer together are averaged: at most 2 points a second are kept
COLD_START_POINTS = 60  # the fewest points for a first estimate, with no noise measured before
CHANGE_Z = 5.0
LADDER_RATIO = 1.25
PRIOR_DOF = 30
RELOCATE_GROWTH = 4.0  # after a restart, the change is re-located until the window is this much longer
_COMPACT_AFTER = 4096  # points dropped before the sums are rebuilt
BLOCKS = 32  # block means behind the correlated-noise estimate
MIN_BLOCKS = 12
POINTS_PER_BLOCK = 8
WHITE_RATIO = 3.0  # block-to-point variance ratio below which the residuals count as independent
MAX_BLOCK_RHO = 0.9
RATIO_REUSE = 1 / 16  # the inflation is measured again once the window has moved by this share of its length
LEARN_FRACTION = 0.8  # windows at least this share of the longest teach the remembered inflation
STEP_SHARPNESS = 4.0  # a level shift's parallel fit may scatter at most this many standard errors above the noise
BREAK_F = 16.0  # how much better a bent or shifted fit of the block means must be to count as a break
INFLATION_MEMORY_S = 3 * 3600.0  # the remembered inflation averages the long windows of about this long
Z2_MEMORY = 1 / 360  # weight of each estimate in a split's usual z² (about an hour of estimates)
Z2_WARM = round(1 / Z2_MEMORY)  # estimates after which a split's z² memory stops being a plain mean
Z2_CLIP = 9.0  # one estimate moves the usual z² at most this many times its value (a real change is rare)
CORRELATED_CHANGE_MARGIN = 2.0  # the change detector doubts a measured inflation this much more


@dataclass(frozen=True, slots=True)
class SlopeEstimate:
    """A slope with its standard uncertainty, over the window that produced it."""

    time: float  # the newest point
    slope: float  # units of y per second
    sigma: float
    level: float  # the fitted y at `time`
    window_s: float
    n: int
    inflation: float = 1.0  # slope variance over its independent-noise value (1: white residuals)
    noise: float = 0.0  # standard deviation of one point about the line


@dataclass(frozen=True, slots=True)
class LevelShift:
    """A step in the series at `time`, absorbed rather than taken for a rate."""

    time: float
    size: float  # in units of y


def _ladder(first: int, limit: int = 10_000_000) -> list[int]:
    """Recent-segment lengths to try as splits: first, then LADDER_RATIO times longer each rung."""
    rungs = [first]
    while rungs[-1] < limit:
        rungs.append(max(rungs[-1] + 1, int(rungs[-1] * LADDER_RATIO)))
    return rungs


def student_widening(dof: float, z: float = 3.0) -> float:
    """How much wider Student's t is than the normal at z, for a noise measured with `dof` degrees of freedom.

    Cornish–Fisher expansion of the t quantile; 1.045 at 58 dof, 1.01 at 300.
    """
    return 1.0 + (z * z + 1.0) / (4.0 * dof) + (5.0 * z**4 + 16.0 * z * z + 3.0) / (96.0 * dof * dof)


class AdaptiveSlope:
    """Least-squares slope of a noisy series over a window that adapts to changes."""

    def __init__(self, max_window_s: float = MAX_WINDOW_S, min_points: int = MIN_POINTS) -> None:
        self.max_window_s = max_window_s
        self.min_points = min_points
        self.series = LineSeries()
        self.start = 0  # index of the window's first point
        self.restarts = 0  # windows cut by a detected change
        self._pending: str | None = None  # "slope" or "step": seen once, awaiting confirmation
        self._noise_var: float | None = None  # residual variance over the last long window
        self._inflation = 1.0  # measured over the last long windows
        self._warming_up = True  # until a long window has measured the inflation
        self._inflation_mean = 1.0  # the long windows' inflation, averaged over INFLATION_MEMORY_S
        self._learned_at = 0.0
        self._ratio_cache: tuple[float, float, float, float] | None = None  # window start, end, ratio, dof
        self._offset = 0.0  # level shifts absorbed so far, taken off every new point
        self._due = -math.inf  # the next point is kept alone from this time on
        self._pending_n, self._pending_t, self._pending_y = 0, 0.0, 0.0  # points to average into the next
        self._steps: list[LevelShift] = []
        self._shift_at: list[int] = []  # indices of absorbed level shifts: the fit's pieces start there
        self._anchor: int | None = None  # window start before the last restart, while re-locating it
        self._anchor_span = 0  # points after the change when it was detected
        self._ladder = _ladder(min_points)
        self._z2_typical = [1.0] * len(self._ladder)  # each split's usual z², remembered across windows
        self._z2_seen = [0] * len(self._ladder)
        self._shift_rungs = sorted({1, 2, 3, 5, 8, 12, 18} | {r for r in self._ladder if r <= 2 * min_points})

    def add(self, t: float, y: float) -> None:
        """Add a point; t must not decrease.

        Points closer than MIN_SPACING_S to the last one kept are averaged into the next one
        kept, so memory and work stay bounded whatever the sample rate.
        """
        if t < self._due:
            self._pending_n += 1
            self._pending_t += t
            self._pending_y += y
            return
        self._due = t + MIN_SPACING_S
        n = self._pending_n
        if n:
            t, y = (self._pending_t + t) / (n + 1), (self._pending_y + y) / (n + 1)
            self._pending_n, self._pending_t, self._pending_y = 0, 0.0, 0.0
        self.series.append(t, y - self._offset)

    def reset(self) -> None:
        """Forget everything (the quantity measured is no longer the same)."""
        self.__init__(self.max_window_s, self.min_points)

    @property
    def warming_up(self) -> bool:
        """Whether no window long enough to measure the noise's correlation has been seen yet."""
        return self._warming_up

    def take_steps(self) -> list[LevelShift]:
        """The level shifts absorbed since the last call."""
        steps, self._steps = self._steps, []
        return steps

    def estimate(self) -> SlopeEstimate | None:
        """The slope over the current window, or None while there are too few points."""
        s = self.series
        end = len(s)
        if end == 0:
            return None
        t_end = s.x(end - 1)
        oldest = s.index_at(t_end - self.max_window_s)
        self.start = max(self.start, oldest)
        if self._anchor is not None:
            if end - self.start > RELOCATE_GROWTH * self._anchor_span:
                self._anchor = None
            else:
                span = self._anchor_span
                lo = max(self._anchor + self.min_points, self.start - span, oldest)
                hi = min(end - self.min_points, self.start + span)
                if lo < hi:
                    self.start = self._locate_knot(self._anchor, end, lo, hi)
        inflation = self._window_inflation(self.start, end)
        found = self._find_change(self.start, end, inflation)
        kind = found[0] if found else None
        hold = found[1] if kind in ("hold", "step") else None  # while a shift is in doubt, later points wait
        if kind == "hold":
            kind = None
        elif kind is not None and self._pending == kind:
            if kind == "step":
                self._absorb(found[1], found[2])
                hold = None
            else:
                self._anchor, self._anchor_span = self.start, end - found[1]
                self.start = found[1]
                self.restarts += 1
            self._pending = None
        else:
            self._pending = kind
        keep = self.start if self._anchor is None else self._anchor
        if keep > _COMPACT_AFTER and keep > end // 2:
            if hold is not None:
                hold -= keep
            self._shift_at = [i - keep for i in self._shift_at if i > keep]
            s.drop_before(keep)
            end -= keep
            self.start -= keep
            if self._anchor is not None:
                self._anchor -= keep
        if hold is not None:
            end = hold  # while a shift is in doubt, the points after it wait
        n = end - self.start
        if n < self.min_points:
            return None
        cuts = [self.start, *(i for i in self._shift_at if self.start < i < end), end]
        line = s.fit_pieces(cuts)
        if line is None:
            return None
        dof = n - len(cuts) + 1
        if self._noise_var is None:
            if n < COLD_START_POINTS:
                return None
            var = line.sse / dof
        else:
            var = (line.sse + PRIOR_DOF * self._noise_var) / (dof + PRIOR_DOF)
            dof += PRIOR_DOF
        if n - 2 >= 100:
            self._noise_var = line.sse / (n - len(cuts) + 1)
        ratio, block_dof, plain = self._block_ratio(self.start, end, var / line.sxx)
        window_s = t_end - s.x(self.start)
        if window_s >= LEARN_FRACTION * self.max_window_s:
            # a property of the sensors, measured over hours: one window's measure is noisy
            weight = 1.0 if self._warming_up else min(1.0, (t_end - self._learned_at) / INFLATION_MEMORY_S)
            self._inflation_mean += weight * (plain - self._inflation_mean)
            self._inflation = self._inflation_mean if self._inflation_mean >= WHITE_RATIO else 1.0
            self._learned_at = t_end
            self._warming_up = False
        elif self._warming_up:  # no long window seen yet: keep the worst dependence shown so far
            self._inflation = max(self._inflation, ratio)
        inflation = max(ratio, self._inflation)
        if inflation > ratio:  # the remembered inflation: hours of windows behind it
            dof = min(dof, block_dof * INFLATION_MEMORY_S / self.max_window_s)
        elif inflation > 1.0:
            dof = min(dof, block_dof)
        sigma = math.sqrt(var / line.sxx * inflation) * student_widening(dof)
        level = line.y_mean + line.slope * (t_end - line.x_mean) + self._offset
        return SlopeEstimate(t_end, line.slope, sigma, level, window_s, n, inflation, math.sqrt(var))

    def slope_sigma(self, window_s: float, fit: SlopeEstimate) -> float:
        """σ of a slope fitted over window_s at the point rate, noise and inflation `fit` found.

        The least-squares limit σ·√(12/(f·T³)) widened by the inflation: the smallest
        slope the same sensors could confirm over another window (10 min, 1 h, a day).
        """
        if fit.window_s <= 0.0 or fit.n < 3:
            return math.inf
        rate = (fit.n - 1) / fit.window_s
        inflation = max(fit.inflation, self._inflation)
        return fit.noise * math.sqrt(12.0 * inflation / (rate * window_s**3))

    # -- correlated residuals ----------------------------------------------------------------

    def _window_inflation(self, first: int, end: int) -> float:
        """The inflation that applies to the window first..end-1 (its own, or the remembered one)."""
        n = end - first
        line = self.series.fit(first, end) if n >= MIN_BLOCKS * POINTS_PER_BLOCK else None
        if line is None or line.sse <= 0.0:
            return self._inflation
        return max(self._inflation, self._block_ratio(first, end, line.sse / (n - 2) / line.sxx)[0])

    def _block_ratio(self, first: int, end: int, white_var: float) -> tuple[float, float, float]:
        """(inflation, its degrees of freedom, inflation about one line) from the block means of first..end-1.

        The block means are fitted with the best of a line, a bent line and two parallel
        lines, so that a change of rate or a level shift inside the window (which the
        change detector is about to find) is not mistaken for correlated noise. The third
        value takes the plain line whatever the fit: slow noise looks like breaks, and the
        long-run memory (whose hours dilute a real change) should not explain it away. An
        inflation is 1 when the block residuals scatter no more than independent points
        would (by less than WHITE_RATIO).
        """
        n = end - first
        k = min(BLOCKS, n // POINTS_PER_BLOCK)
        if k < MIN_BLOCKS or white_var <= 0.0:
            return 1.0, math.inf, 1.0
        s = self.series
        t_first, t_end = s.x(first), s.x(end - 1)
        cached = self._ratio_cache
        if cached is not None:
            moved = abs(t_first - cached[0]) + (t_end - cached[1])
            if t_end - cached[1] >= 0.0 and moved < (t_end - t_first) * RATIO_REUSE:
                return cached[2]  # the noise's dependence changes slowly: measured again as the window moves
        measured = self._measure_ratio(first, end, k, white_var)
        self._ratio_cache = (t_first, t_end, measured)
        return measured

    def _measure_ratio(self, first: int, end: int, k: int, white_var: float) -> tuple[float, float, float]:
        """_block_ratio, measured with k blocks."""
        n = end - first
        b = n // k
        lo = end - k * b
        sx, sy = self.series.sx, self.series.sy
        blocks = LineSeries()
        for i in range(lo, end, b):
            blocks.append((sx[i + b] - sx[i]) / b, (sy[i + b] - sy[i]) / b)
        line = blocks.fit(0, k)
        if line is None:
            return 1.0, math.inf, 1.0
        best, kind, knot = math.inf, "line", 0
        for j in range(3, k - 2):
            bend = hinge_sse(blocks, 0, k, j)
            if bend < best:
                best, kind, knot = bend, "bend", j
            shift = parallel_fit(blocks, 0, k, j)[0]
            if shift < best:
                best, kind, knot = shift, "shift", j
        white = line.sxx * white_var
        smooth = _inflation(_quadratic_residuals(blocks), 3, white, detrended=True)[0]
        if (line.sse - best) * (k - 3) < BREAK_F * best:
            kind = "line"  # a break that explains little is the noise's own wander
        return (*_inflation(_residuals(blocks, kind, knot), 2 if kind == "line" else 3, white), smooth)

    # -- changes and level shifts ------------------------------------------------------------

    def _find_change(self, first: int, end: int, inflation: float) -> tuple | None:
        """A significant change within first..end-1, or None.

        ("slope", index): the rate changed there; ("step", index, size): a level shift, clear
        enough to absorb; ("hold", index): the newest points look shifted, but too few of
        them have come to tell a shift from a change of rate.
        """
        m = self.min_points
        n = end - first
        if n < 2 * m:
            return None
        s = self.series
        sx, sy, sxx, sxy, syy = s.sx, s.sy, s.sxx, s.sxy, s.syy
        z2_bar = CHANGE_Z * CHANGE_Z * (inflation * CORRELATED_CHANGE_MARGIN if inflation > 1.0 else 1.0)
        dof = n - 4
        best_k, best_sse, best_r = -1, math.inf, 0  # the two-line split that explains most
        z2_typical, seen = self._z2_typical, self._z2_seen
        fx, fy, fxx, fxy, fyy = sx[first], sy[first], sxx[first], sxy[first], syy[first]
        ex, ey, exx, exy, eyy = sx[end], sy[end], sxx[end], sxy[end], syy[end]
        longest = n - m
        white, clip, memory, warm = WHITE_RATIO, Z2_CLIP, Z2_MEMORY, Z2_WARM  # this loop runs at every estimate
        for rung, r in enumerate(self._ladder):
            if r > longest:
                break
            k = end - r
            kx, ky, kxx, kxy, kyy = sx[k], sy[k], sxx[k], sxy[k], syy[k]
            # older segment first..k-1, recent segment k..end-1: centred sums of each
            na = n - r
            ax, ay = kx - fx, ky - fy
            axx = kxx - fxx - ax * ax / na
            bx, by = ex - kx, ey - ky
            bxx = exx - kxx - bx * bx / r
            if axx <= 0.0 or bxx <= 0.0:
                continue
            axy = kxy - fxy - ax * ay / na
            bxy = exy - kxy - bx * by / r
            slope_a = axy / axx
            slope_b = bxy / bxx
            sse = (kyy - fyy - ay * ay / na - slope_a * axy) + (eyy - kyy - by * by / r - slope_b * bxy)
            var = (1e-300 if sse < 1e-300 else sse) / dof  # max(sse, 1e-300), without the call
            z2 = (slope_a - slope_b) ** 2 / (var * (1.0 / axx + 1.0 / bxx))
            typical = z2_typical[rung]
            if z2 > z2_bar * (typical if typical > white else 1.0) and sse < best_sse:
                best_k, best_sse, best_r = k, sse, r
            count = seen[rung] + 1  # a plain mean at first, then an hour's memory
            seen[rung] = count
            weight = memory if count > warm else 1.0 / count
            cap = clip * typical + 1.0
            z2_typical[rung] = typical + weight * ((cap if cap < z2 else z2) - typical)  # min(z2, cap)
        shift = self._recent_shift(first, end, z2_bar)
        if shift is not None:
            shift_k, shift_sse = shift
            if best_k < 0 or shift_sse <= best_sse + z2_bar * shift_sse / (n - 3):
                r = end - shift_k
                if r < m:
                    return ("hold", shift_k)
                step = self._level_shift(first, end, r)
                if step is not None:
                    return step
        if best_k < 0:
            return None
        lo = max(first + m, end - 2 * best_r)
        hi = min(end - m, end - best_r // 3)
        return ("slope", self._locate_knot(first, end, lo, hi) if lo < hi else best_k)

    def _recent_shift(self, first: int, end: int, z2_bar: float) -> tuple[int, float] | None:
        """(index, squared error) of the most significant level shift among the newest points, or None."""
        s = self.series
        whole = s.fit(first, end)
        if whole is None:
            return None
        n = end - first
        best: tuple[int, float] | None = None
        sx, sy, sxx, sxy, syy = s.sx, s.sy, s.sxx, s.sxy, s.syy
        fx, fy, fxx, fxy, fyy = sx[first], sy[first], sxx[first], sxy[first], syy[first]
        ex, ey, exx, exy, eyy = sx[end], sy[end], sxx[end], sxy[end], syy[end]
        gain_bar = z2_bar / (n - 3)  # the share of the squared error a shift must explain
        for r in self._shift_rungs:
            if r > n - self.min_points:
                break
            k = end - r  # parallel_fit(s, first, end, k), inlined: this runs at every estimate
            na = n - r
            kx, ky, kxy = sx[k], sy[k], sxy[k]
            ax, ay, bx, by = kx - fx, ky - fy, ex - kx, ey - ky
            xx = sxx[k] - fxx - ax * ax / na + exx - sxx[k] - bx * bx / r
            if xx <= 0.0:
                continue
            xy = kxy - fxy - ax * ay / na + exy - kxy - bx * by / r
            sse = syy[k] - fyy - ay * ay / na + eyy - syy[k] - by * by / r - xy * xy / xx
            if whole.sse - sse > gain_bar * max(sse, 1e-300) and (best is None or sse < best[1]):
                best = (k, sse)
        if best is None:
            return None
        r = end - best[0]  # refine between the neighbouring rungs
        lo = max(first + self.min_points, end - (r * 3) // 2 - 1)
        hi = min(end - 1, end - (r * 2) // 3 + 1)
        k = min(range(lo, hi + 1), key=lambda i: parallel_fit(s, first, end, i)[0], default=best[0])
        return k, parallel_fit(s, first, end, k)[0]

    def _level_shift(self, first: int, end: int, r: int) -> tuple | None:
        """("step", index, size) for a sharp level shift near end - r, or None if a bend explains it as well."""
        m = self.min_points
        lo = max(first + m, end - 2 * r)
        hi = min(end - m, end - r // 3)
        if lo >= hi:
            return None
        k = min(range(lo, hi + 1), key=lambda i: parallel_fit(self.series, first, end, i)[0])
        sse, jump, _ = parallel_fit(self.series, first, end, k)
        dof = end - first - 3
        noise = self._noise_var if self._noise_var is not None else sse / dof
        if sse > dof * noise * (1.0 + STEP_SHARPNESS * math.sqrt(2.0 / dof)):
            return None  # the jump does not explain the data down to the noise: not a clean step
        bend = hinge_sse(self.series, first, end, self._locate_knot(first, end, lo, hi))
        if bend - sse < CHANGE_Z * CHANGE_Z * noise:
            return None  # a change of rate explains it about as well
        return ("step", k, jump)

    def _absorb(self, k: int, jump: float) -> None:
        """Take a level shift of `jump` at point k out of the series from there on."""
        s = self.series
        self._steps.append(LevelShift(s.x(k), jump))
        self._shift_at.append(k)
        s.shift_from(k, -jump)
        self._offset += jump

    def _locate_knot(self, first: int, end: int, lo: int, hi: int) -> int:
        """The knot in lo..hi of the continuous two-piece line over first..end-1 that fits best.

        A change of leak rate bends the mass curve but cannot break it, so the knot of a
        continuous fit locates the change far better than two independent lines would.
        """
        step = max(1, (hi - lo) // 64)
        best = min(range(lo, hi + 1, step), key=lambda k: hinge_sse(self.series, first, end, k))
        if step > 1:
            best = min(
                range(max(lo, best - step), min(hi, best + step) + 1),
                key=lambda k: hinge_sse(self.series, first, end, k),
            )
        return best


def hinge_sse(s: LineSeries, first: int, end: int, k: int) -> float:
    """Squared error of y = a + b₁·min(x−x_k, 0) + b₂·max(x−x_k, 0) over first..end-1."""
    return _hinge(s, first, end, k)[0]


def _hinge(s: LineSeries, first: int, end: int, k: int) -> tuple[float, float, float, float]:
    """(squared error, a, b₁, b₂) of the continuous two-piece line with its knot at point k."""
    sx, sy, sxx, sxy = s.sx, s.sy, s.sxx, s.sxy
    xk = s.xs[k]
    nl, nr = k - first, end - k
    lx, ly = sx[k] - sx[first], sy[k] - sy[first]
    rx, ry = sx[end] - sx[k], sy[end] - sy[k]
    ul = lx - nl * xk  # Σu over the left piece, u = x − x_k
    ur = rx - nr * xk
    uul = sxx[k] - sxx[first] - 2.0 * xk * lx + nl * xk * xk
    uur = sxx[end] - sxx[k] - 2.0 * xk * rx + nr * xk * xk
    if uul <= 0.0 or uur <= 0.0:
        return math.inf, 0.0, 0.0, 0.0
    uyl = sxy[k] - sxy[first] - xk * ly
    uyr = sxy[end] - sxy[k] - xk * ry
    y_total = ly + ry
    a = (y_total - ul * uyl / uul - ur * uyr / uur) / ((end - first) - ul * ul / uul - ur * ur / uur)
    bl = (uyl - ul * a) / uul
    br = (uyr - ur * a) / uur
    return s.syy[end] - s.syy[first] - a * y_total - bl * uyl - br * uyr, a, bl, br


def parallel_fit(s: LineSeries, first: int, end: int, k: int) -> tuple[float, float, float]:
    """(squared error, jump, slope) of two parallel lines over first..k-1 and k..end-1."""
    sx, sy, sxx, sxy, syy = s.sx, s.sy, s.sxx, s.sxy, s.syy
    na, nb = k - first, end - k
    ax, ay = sx[k] - sx[first], sy[k] - sy[first]
    bx, by = sx[end] - sx[k], sy[end] - sy[k]
    axx = sxx[k] - sxx[first] - ax * ax / na
    axy = sxy[k] - sxy[first] - ax * ay / na
    ayy = syy[k] - syy[first] - ay * ay / na
    bxx = sxx[end] - sxx[k] - bx * bx / nb
    bxy = sxy[end] - sxy[k] - bx * by / nb
    byy = syy[end] - syy[k] - by * by / nb
    if axx + bxx <= 0.0:
        return math.inf, 0.0, 0.0
    slope = (axy + bxy) / (axx + bxx)
    sse = ayy + byy - slope * (axy + bxy)
    jump = (by / nb - ay / na) - slope * (bx / nb - ax / na)
    return sse, jump, slope


def _inflation(res: list[float], params: int, white: float, detrended: bool = False) -> tuple[float, float]:
    """(variance ratio, degrees of freedom) of block residuals with AR(1) dependence, against `white`.

    `white` is what the residuals' variance over Σ(x − x̄)² would be for independent
    points; the ratio is 1 below WHITE_RATIO. With `detrended`, the variance is corrected
    for what the fit took out of correlated residuals (k/g independent blocks, g the AR(1)
    widening, lose about g of their spread to each fitted parameter beyond the mean).
    """
    k = len(res)
    ss = sum(r * r for r in res)
    if ss <= 0.0 or white <= 0.0:
        return 1.0, math.inf
    rho = sum(res[j] * res[j + 1] for j in range(k - 1)) / ss
    rho = min(max(rho + (1.0 + 3.0 * rho) / k, 0.0), MAX_BLOCK_RHO)  # less the lag-1 estimate's bias
    widen = (1.0 + rho) / (1.0 - rho)
    ratio = ss / (k - params) * widen / white
    if detrended:
        ratio /= max(0.4, 1.0 - widen / k)
    if ratio < WHITE_RATIO:
        return 1.0, math.inf
    return ratio, max(4.0, (k - params) / widen)


def _quadratic_residuals(s: LineSeries) -> list[float]:
    """Residuals of the points of s about their least-squares parabola (a steadily changing rate)."""
    n = len(s)
    xm = s.sx[n] / n
    us = [x - xm for x in s.xs]
    ys = s.ys
    # normal equations for y = a + b·u + c·(u² − mean u²), whose columns are orthogonal to 1
    u2m = sum(u * u for u in us) / n
    vs = [u * u - u2m for u in us]
    suu = sum(u * u for u in us)
    suv = sum(u * v for u, v in zip(us, vs, strict=True))
    svv = sum(v * v for v in vs)
    suy = sum(u * y for u, y in zip(us, ys, strict=True))
    svy = sum(v * y for v, y in zip(vs, ys, strict=True))
    det = suu * svv - suv * suv
    if det <= 0.0:
        return [0.0] * n
    b = (suy * svv - svy * suv) / det
    c = (svy * suu - suy * suv) / det
    a = s.sy[n] / n
    return [y - a - b * u - c * v for u, v, y in zip(us, vs, ys, strict=True)]


def _residuals(s: LineSeries, kind: str, k: int) -> list[float]:
    """Residuals of every point of s about a line, a bent line (knot k) or parallel lines (split k)."""
    xs, ys, n = s.xs, s.ys, len(s)
    if kind == "bend":
        _, a, bl, br = _hinge(s, 0, n, k)
        xk = xs[k]
        return [y - a - (bl if x < xk else br) * (x - xk) for x, y in zip(xs, ys, strict=True)]
    if kind == "shift":
        _, jump, slope = parallel_fit(s, 0, n, k)
        ma = (s.sy[k] - slope * s.sx[k]) / k
        return [y - ma - slope * x - (jump if i >= k else 0.0) for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    line = s.fit(0, n)
    mx, my = line.x_mean - s.x0, line.y_mean - s.y0
    return [y - my - line.slope * (x - mx) for x, y in zip(xs, ys, strict=True)]


class FallRate:
    """How fast the pressure falls over the last few seconds, with its uncertainty.

    Fits over WINDOWS_S (each needing MIN_POINTS); `bounds` gives the most confident
    evidence of a fall and the highest plausible fall, for the rapid-depress alarm. Each
    window's first point only moves forward as points come, so it is followed, not searched.
    """

    WINDOWS_S = (2.0, 5.0, 15.0)
    MIN_POINTS = 5

    def __init__(self) -> None:
        self.series = LineSeries()
        self._starts: list[int] | None = None  # each window's first point; None: to be searched

    def add(self, t: float, p: float) -> None:
        """Add a pressure reading."""
        s = self.series
        s.append(t, p)
        if len(s) > 2 * _COMPACT_AFTER:
            s.trim_before(t - self.WINDOWS_S[-1])
            self._starts = None

    def bounds(self, k: float, faster_than: float = -math.inf) -> tuple[float, float, float] | None:
        """(fall rate, its lower bound, the highest upper bound) in Pa/s at k sigma; None if too few points.

        Windows whose fall is no faster than `faster_than` are passed over (cheaply): enough to
        tell whether some window's lower bound exceeds it, the question while no alarm is active.
        """
        s = self.series
        xs = s.xs
        end = len(xs)
        few = self.MIN_POINTS
        if end < few:
            return None
        sx, sy, sxx, sxy, syy = s.sx, s.sy, s.sxx, s.sxy, s.syy
        ex, ey, exx, exy, eyy = sx[end], sy[end], sxx[end], sxy[end], syy[end]
        x_end = xs[-1]
        starts = self._starts
        if starts is None:
            starts = self._starts = [bisect_left(xs, x_end - w) for w in self.WINDOWS_S]
        last = end - few + 1  # a window starting later has too few points
        best_fall, best_lower, upper = math.nan, -math.inf, -math.inf
        for j, w in enumerate(self.WINDOWS_S):
            i = starts[j]
            cut = x_end - w
            while xs[i] < cut:  # the first point at or after the cut (the newest one is)
                i += 1
            starts[j] = i
            if i > last:
                i = last
            n = end - i
            if n < few:
                continue
            tx = ex - sx[i]
            ty = ey - sy[i]
            dxx = exx - sxx[i] - tx * tx / n
            if dxx <= 0.0:
                continue
            dxy = exy - sxy[i] - tx * ty / n
            fall = -dxy / dxx
            if fall <= faster_than:
                continue
            sse = eyy - syy[i] - ty * ty / n + fall * dxy
            half = k * math.sqrt(sse / (n - 2) / dxx) if sse > 0.0 else 0.0
            if fall - half > best_lower:
                best_fall, best_lower = fall, fall - half
            if fall + half > upper:
                upper = fall + half
        if best_lower == -math.inf:
            return None
        return best_fall, best_lower, upper


class Delag:
    """Undoes a thermometer's first-order lag: T_air ≈ T + τ·dT/dt.

    The derivative is the slope of a line fitted to the last τ/2 of readings (at least
    MIN_POINTS), evaluated at the newest one: smooth enough that the sensor's noise is
    not multiplied by τ, short enough to follow an HVAC cycle.
    """

    MIN_POINTS = 5

    def __init__(self, time_constant_s: float) -> None:
        self.tau = time_constant_s
        self.series = LineSeries()

    def correct(self, t: float, value: float) -> float:
        """The air temperature that a reading `value` at time t lags behind."""
        s = self.series
        s.append(t, value)
        if len(s) > 2 * _COMPACT_AFTER:
            s.trim_before(t - self.tau)
        end = len(s)
        first = min(s.index_at(t - 0.5 * self.tau), end - self.MIN_POINTS)
        line = s.fit(first, end) if first >= 0 else None
        if line is None:
            return value
        return line.y_mean + line.slope * (t - line.x_mean + self.tau)


def curvature_bound(s: LineSeries, t_start: float, t_end: float, k: float = 2.0) -> float:
    """How much the slope of s changed over [t_start, t_end], per second, beyond k of its noise (never negative).

    The slopes of the two halves are compared; their difference less k standard errors,
    over half the span. Zero when the series is straight as far as its noise can tell.
    """
    mid = 0.5 * (t_start + t_end)
    a, b, c = s.index_at(t_start), s.index_at(mid), len(s)
    first, second = s.fit(a, b), s.fit(b, c)
    if first is None or second is None or t_end <= t_start:
        return 0.0
    noise = first.sse / max(first.n - 2, 1) / first.sxx + second.sse / max(second.n - 2, 1) / second.sxx
    change = abs(second.slope - first.slope) - k * math.sqrt(noise)
    return max(change, 0.0) / (mid - t_start)

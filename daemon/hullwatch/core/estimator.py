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
COLD_START_POINTS = 60  # the fewest points for a first estimate, with no noise measured before
CHANGE_Z = 5.0
LADDER_RATIO = 1.25
PRIOR_DOF = 30
RELOCATE_GROWTH = 4.0  # after a restart, the change is re-located until the window is this much longer
_COMPACT_AFTER = 4096  # points dropped before the sums are rebuilt


@dataclass(frozen=True, slots=True)
class SlopeEstimate:
    """A slope with its standard uncertainty, over the window that produced it."""

    time: float  # the newest point
    slope: float  # units of y per second
    sigma: float
    level: float  # the fitted y at `time`
    window_s: float
    n: int


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
        self._change_pending = False
        self._noise_var: float | None = None  # residual variance over the last long window
        self._anchor: int | None = None  # window start before the last restart, while re-locating it
        self._anchor_span = 0  # points after the change when it was detected
        self._ladder = _ladder(min_points)

    def add(self, t: float, y: float) -> None:
        """Add a point; t must not decrease."""
        self.series.append(t, y)

    def reset(self) -> None:
        """Forget everything (the quantity measured is no longer the same)."""
        self.__init__(self.max_window_s, self.min_points)

    def estimate(self) -> SlopeEstimate | None:
        """The slope over the current window, or None while there are too few points."""
        s = self.series
        end = len(s)
        if end == 0:
            return None
        t_end = s.x(end - 1)
        self.start = max(self.start, s.index_at(t_end - self.max_window_s))
        if self._anchor is not None:
            if end - self.start > RELOCATE_GROWTH * self._anchor_span:
                self._anchor = None
            else:
                span = self._anchor_span
                lo = max(self._anchor + self.min_points, self.start - span)
                hi = min(end - self.min_points, self.start + span)
                if lo < hi:
                    self.start = self._locate_knot(self._anchor, end, lo, hi)
        split = self._find_change(self.start, end)
        if split is not None and self._change_pending:
            self._anchor, self._anchor_span = self.start, end - split
            self.start = split
            self.restarts += 1
        self._change_pending = split is not None and not self._change_pending
        keep = self.start if self._anchor is None else self._anchor
        if keep > _COMPACT_AFTER and keep > end // 2:
            s.drop_before(keep)
            end -= keep
            self.start -= keep
            if self._anchor is not None:
                self._anchor -= keep
        n = end - self.start
        if n < self.min_points:
            return None
        line = s.fit(self.start, end)
        if line is None:
            return None
        dof = n - 2
        if self._noise_var is None:
            if n < COLD_START_POINTS:
                return None
            var = line.sse / dof
        else:
            var = (line.sse + PRIOR_DOF * self._noise_var) / (dof + PRIOR_DOF)
            dof += PRIOR_DOF
        if n - 2 >= 100:
            self._noise_var = line.sse / (n - 2)
        sigma = math.sqrt(var / line.sxx) * student_widening(dof)
        level = line.y_mean + line.slope * (t_end - line.x_mean)
        return SlopeEstimate(t_end, line.slope, sigma, level, t_end - s.x(self.start), n)

    def _find_change(self, first: int, end: int) -> int | None:
        """The index where the slope changed significantly within first..end-1, or None."""
        m = self.min_points
        n = end - first
        if n < 2 * m:
            return None
        s = self.series
        sx, sy, sxx, sxy, syy = s.sx, s.sy, s.sxx, s.sxy, s.syy
        z2_bar = CHANGE_Z * CHANGE_Z
        dof = n - 4
        best_k, best_sse, best_r = -1, math.inf, 0  # the two-line split that explains most
        for r in self._ladder:
            if r > n - m:
                break
            k = end - r
            # older segment: first..k-1
            na = k - first
            ax = sx[k] - sx[first]
            ay = sy[k] - sy[first]
            axx = sxx[k] - sxx[first] - ax * ax / na
            axy = sxy[k] - sxy[first] - ax * ay / na
            ayy = syy[k] - syy[first] - ay * ay / na
            # recent segment: k..end-1
            bx = sx[end] - sx[k]
            by = sy[end] - sy[k]
            bxx = sxx[end] - sxx[k] - bx * bx / r
            bxy = sxy[end] - sxy[k] - bx * by / r
            byy = syy[end] - syy[k] - by * by / r
            if axx > 0.0 and bxx > 0.0:
                slope_a = axy / axx
                slope_b = bxy / bxx
                sse = (ayy - slope_a * axy) + (byy - slope_b * bxy)
                var = max(sse, 1e-300) / dof
                z2 = (slope_a - slope_b) ** 2 / (var * (1.0 / axx + 1.0 / bxx))
                if z2 > z2_bar and sse < best_sse:
                    best_k, best_sse, best_r = k, sse, r
        if best_k < 0:
            return None
        lo = max(first + m, end - 2 * best_r)
        hi = min(end - m, end - best_r // 3)
        return self._locate_knot(first, end, lo, hi) if lo < hi else best_k

    def _locate_knot(self, first: int, end: int, lo: int, hi: int) -> int:
        """The knot in lo..hi of the continuous two-piece line over first..end-1 that fits best.

        A change of leak rate bends the mass curve but cannot break it, so the knot of a
        continuous fit locates the change far better than two independent lines would.
        """
        step = max(1, (hi - lo) // 64)
        best = min(range(lo, hi + 1, step), key=lambda k: self._hinge_sse(first, end, k))
        if step > 1:
            best = min(
                range(max(lo, best - step), min(hi, best + step) + 1),
                key=lambda k: self._hinge_sse(first, end, k),
            )
        return best

    def _hinge_sse(self, first: int, end: int, k: int) -> float:
        """Squared error of y = a + b₁·min(x−x_k, 0) + b₂·max(x−x_k, 0) over first..end-1."""
        s = self.series
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
            return math.inf
        uyl = sxy[k] - sxy[first] - xk * ly
        uyr = sxy[end] - sxy[k] - xk * ry
        y_total = ly + ry
        a = (y_total - ul * uyl / uul - ur * uyr / uur) / ((end - first) - ul * ul / uul - ur * ur / uur)
        bl = (uyl - ul * a) / uul
        br = (uyr - ur * a) / uur
        return s.syy[end] - s.syy[first] - a * y_total - bl * uyl - br * uyr


class FallRate:
    """How fast the pressure falls over the last few seconds, with its uncertainty.

    Fits over WINDOWS_S (each needing MIN_POINTS); `bounds` gives the most confident
    evidence of a fall and the highest plausible fall, for the rapid-depress alarm.
    """

    WINDOWS_S = (2.0, 5.0, 15.0)
    MIN_POINTS = 5

    def __init__(self) -> None:
        self.series = LineSeries()

    def add(self, t: float, p: float) -> None:
        """Add a pressure reading."""
        s = self.series
        s.append(t, p)
        if len(s) > 2 * _COMPACT_AFTER:
            s.drop_before(s.index_at(t - self.WINDOWS_S[-1]))

    def bounds(self, k: float) -> tuple[float, float, float] | None:
        """(fall rate, its lower bound, the highest upper bound) in Pa/s at k sigma; None if too few points."""
        s = self.series
        end = len(s)
        if end < self.MIN_POINTS:
            return None
        xs, sx, sy, sxx, sxy, syy = s.xs, s.sx, s.sy, s.sxx, s.sxy, s.syy
        x_end = xs[-1]
        best_fall, best_lower, upper = math.nan, -math.inf, -math.inf
        for w in self.WINDOWS_S:
            i = bisect_left(xs, x_end - w)
            n = end - i
            if n < self.MIN_POINTS:
                continue
            tx = sx[end] - sx[i]
            ty = sy[end] - sy[i]
            dxx = sxx[end] - sxx[i] - tx * tx / n
            if dxx <= 0.0:
                continue
            dxy = sxy[end] - sxy[i] - tx * ty / n
            dyy = syy[end] - syy[i] - ty * ty / n
            slope = dxy / dxx
            sse = dyy - slope * dxy
            half = k * math.sqrt(sse / (n - 2) / dxx) if sse > 0.0 else 0.0
            if -slope - half > best_lower:
                best_fall, best_lower = -slope, -slope - half
            if -slope + half > upper:
                upper = -slope + half
        if best_lower == -math.inf:
            return None
        return best_fall, best_lower, upper

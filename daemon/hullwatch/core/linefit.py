"""Least-squares straight lines over any contiguous run of a growing series, in O(1) per fit.

The series keeps running (prefix) sums of x, y, x², x·y and y², so the fit of points
i..j-1 costs a handful of subtractions whatever its length. Values are stored relative
to an origin (the first point kept) and the sums are rebuilt when old points are
dropped, which keeps their magnitudes, and so their rounding errors, small.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import NamedTuple


class Line(NamedTuple):
    """A least-squares fit y = level + slope·(x − x_mean) over n points."""

    n: int
    slope: float
    sse: float  # sum of squared residuals
    sxx: float  # Σ(x − x_mean)²
    x_mean: float  # absolute
    y_mean: float  # absolute


class LineSeries:
    """A time series that answers least-squares line fits over index ranges."""

    __slots__ = ("x0", "y0", "xs", "ys", "sx", "sy", "sxx", "sxy", "syy")

    def __init__(self) -> None:
        self.x0 = 0.0
        self.y0 = 0.0
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.sx = [0.0]
        self.sy = [0.0]
        self.sxx = [0.0]
        self.sxy = [0.0]
        self.syy = [0.0]

    def __len__(self) -> int:
        return len(self.xs)

    def append(self, x: float, y: float) -> None:
        """Add a point; x must not decrease."""
        if not self.xs:
            self.x0, self.y0 = x, y
        x -= self.x0
        y -= self.y0
        self.xs.append(x)
        self.ys.append(y)
        sx, sy, sxx, sxy, syy = self.sx, self.sy, self.sxx, self.sxy, self.syy
        sx.append(sx[-1] + x)
        sy.append(sy[-1] + y)
        sxx.append(sxx[-1] + x * x)
        sxy.append(sxy[-1] + x * y)
        syy.append(syy[-1] + y * y)

    def x(self, i: int) -> float:
        """The absolute x of point i."""
        return self.xs[i] + self.x0

    def y(self, i: int) -> float:
        """The absolute y of point i."""
        return self.ys[i] + self.y0

    def index_at(self, x: float) -> int:
        """Index of the first point with x at or after the given absolute x."""
        return bisect_left(self.xs, x - self.x0)

    def fit(self, i: int, j: int) -> Line | None:
        """Fit points i..j-1; None with fewer than 3 points or no spread in x."""
        n = j - i
        if n < 3:
            return None
        sx = self.sx[j] - self.sx[i]
        sy = self.sy[j] - self.sy[i]
        sxx = self.sxx[j] - self.sxx[i] - sx * sx / n
        if sxx <= 0.0:
            return None
        sxy = self.sxy[j] - self.sxy[i] - sx * sy / n
        syy = self.syy[j] - self.syy[i] - sy * sy / n
        slope = sxy / sxx
        sse = syy - slope * sxy
        return Line(n, slope, sse if sse > 0.0 else 0.0, sxx, sx / n + self.x0, sy / n + self.y0)

    def trim_before(self, x: float) -> None:
        """Forget the points before absolute x once they are most of the series (O(1) amortised per point)."""
        xs = self.xs
        if xs and xs[len(xs) // 2] < x - self.x0:  # the first half is older: O(1) when it is not
            self.drop_before(self.index_at(x))

    def drop_before(self, i: int) -> None:
        """Forget points before index i (indices shift down by i) and rebuild the sums."""
        if i <= 0:
            return
        if i >= len(self.xs):
            self.__init__()
            return
        x0, y0 = self.xs[i], self.ys[i]
        xs = [x - x0 for x in self.xs[i:]]
        ys = [y - y0 for y in self.ys[i:]]
        self.x0 += x0
        self.y0 += y0
        self.xs, self.ys = xs, ys
        self.sx = list(accumulate(xs, initial=0.0))
        self.sy = list(accumulate(ys, initial=0.0))
        self.sxx = list(accumulate((x * x for x in xs), initial=0.0))
        self.sxy = list(accumulate((x * y for x, y in zip(xs, ys, strict=True)), initial=0.0))
        self.syy = list(accumulate((y * y for y in ys), initial=0.0))

    def shift_from(self, i: int, dy: float) -> None:
        """Add dy to the y of every point from index i on (absorbing a level shift) and mend the sums."""
        n = len(self.xs)
        if i >= n or dy == 0.0:
            return
        xs, ys = self.xs, self.ys
        for j in range(i, n):
            ys[j] += dy
        sy, sxy, syy = self.sy, self.sxy, self.syy
        for j in range(i, n):
            x, y = xs[j], ys[j]
            sy[j + 1] = sy[j] + y
            sxy[j + 1] = sxy[j] + x * y
            syy[j + 1] = syy[j] + y * y

    def fit_pieces(self, cuts: list[int]) -> Line | None:
        """One slope over the pieces cuts[0]..cuts[1]-1, cuts[1]..cuts[2]-1, …, each with its own level.

        The levels are free, so a constant error in any piece cannot bias the slope. The
        returned line's sxx is the pooled within-piece spread (the slope's precision) and
        its means are those of the last piece, so it extrapolates from there.
        """
        if len(cuts) == 2:
            return self.fit(cuts[0], cuts[1])
        sxy_total = sxx_total = syy_total = 0.0
        x_mean = y_mean = 0.0
        for i, j in zip(cuts, cuts[1:], strict=False):
            n = j - i
            if n <= 0:
                continue
            sx = self.sx[j] - self.sx[i]
            sy = self.sy[j] - self.sy[i]
            sxx_total += self.sxx[j] - self.sxx[i] - sx * sx / n
            sxy_total += self.sxy[j] - self.sxy[i] - sx * sy / n
            syy_total += self.syy[j] - self.syy[i] - sy * sy / n
            x_mean, y_mean = sx / n, sy / n
        n = cuts[-1] - cuts[0]
        if n < len(cuts) + 1 or sxx_total <= 0.0:
            return None
        slope = sxy_total / sxx_total
        sse = syy_total - slope * sxy_total
        return Line(n, slope, sse if sse > 0.0 else 0.0, sxx_total, x_mean + self.x0, y_mean + self.y0)

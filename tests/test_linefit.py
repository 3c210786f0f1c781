"""O(1) least-squares fits over runs of a series agree with the textbook formulas."""

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hullwatch.core.linefit import LineSeries


def direct_fit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    sse = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, sse, sxx, mx, my


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=3, max_value=200),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.floats(min_value=0.0, max_value=10.0),
    st.integers(min_value=0, max_value=2**31),
)
def test_any_run_matches_direct_fit(n, slope, noise, seed):
    rng = random.Random(seed)
    s = LineSeries()
    xs, ys = [], []
    for i in range(n + 20):
        x = 1.78e9 + i * 0.7
        y = 101325.0 + slope * i + rng.gauss(0.0, noise)
        s.append(x, y)
        xs.append(x)
        ys.append(y)
    i, j = 5, 5 + n
    line = s.fit(i, j)
    b, sse, sxx, mx, my = direct_fit(xs[i:j], ys[i:j])
    assert line.n == n
    assert math.isclose(line.slope, b, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(line.sxx, sxx, rel_tol=1e-9)
    assert math.isclose(line.x_mean, mx, rel_tol=1e-12)
    assert math.isclose(line.y_mean, my, rel_tol=1e-12)
    assert math.isclose(line.sse, sse, rel_tol=1e-4, abs_tol=1e-6 * max(1.0, noise**2))


def test_drop_before_keeps_the_same_fits():
    rng = random.Random(3)
    s = LineSeries()
    for i in range(1000):
        s.append(float(i), 0.5 * i + rng.gauss(0.0, 1.0))
    before = s.fit(600, 1000)
    s.drop_before(600)
    after = s.fit(0, 400)
    assert len(s) == 400
    assert math.isclose(before.slope, after.slope, rel_tol=1e-9)
    assert math.isclose(before.sse, after.sse, rel_tol=1e-6)
    assert math.isclose(s.x(0), 600.0)


def test_index_at_and_short_runs():
    s = LineSeries()
    for x in (10.0, 11.0, 12.0, 13.0):
        s.append(x, x)
    assert s.index_at(11.5) == 2
    assert s.index_at(0.0) == 0
    assert s.fit(0, 2) is None  # fewer than 3 points

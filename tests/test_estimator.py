"""The adaptive leak-rate estimator against synthetic series with known truth.

Each test draws white noise around a known line (or a line whose slope changes), so the
estimator's bias, its σ's calibration and its delay after a change can be measured.
Seeds are fixed: the tests are deterministic.
"""

import math
import random
import statistics

from hullwatch.core.estimator import MAX_WINDOW_S, AdaptiveSlope, FallRate

SIGMA = 2e-3  # kg, the mass noise of a 75 m³ volume with 2 Pa / 2 mK sensors


def feed(est, rng, slope_fn, n, t0=0.0, sigma=SIGMA, every=10, start_y=90.0):
    """Add n 1 Hz points of y = ∫slope + noise; estimate every `every` points; return the estimates."""
    out = []
    y = start_y
    for i in range(n):
        t = t0 + i
        y += slope_fn(t)
        est.add(t, y + rng.gauss(0.0, sigma))
        if i % every == every - 1:
            e = est.estimate()
            if e is not None:
                out.append(e)
    return out


def cr_sigma(sigma, n):
    """Cramér–Rao standard error of a least-squares slope over n evenly spaced 1 Hz points."""
    return sigma * math.sqrt(12.0 / (n * (n * n - 1)))


def test_unbiased_and_calibrated_over_independent_runs():
    z = []
    for seed in range(300):
        est = AdaptiveSlope()
        e = feed(est, random.Random(seed), lambda t: -1e-5, 600, every=600)[-1]
        z.append((e.slope + 1e-5) / e.sigma)
    inside_2 = sum(abs(x) < 2 for x in z) / len(z)
    assert abs(statistics.mean(z)) < 0.2  # unbiased
    assert 0.9 < statistics.pstdev(z) < 1.1  # sigma is the real spread
    assert 0.92 <= inside_2 <= 0.98


def test_sigma_reaches_the_cramer_rao_bound_when_steady():
    est = AdaptiveSlope()
    e = feed(est, random.Random(7), lambda t: -1e-5, 3600, every=3600)[-1]
    assert e.n == 3600
    assert 0.9 < e.sigma / cr_sigma(SIGMA, 3600) < 1.1


def test_window_stops_growing_at_the_maximum():
    est = AdaptiveSlope()
    e = feed(est, random.Random(8), lambda t: -1e-5, int(MAX_WINDOW_S) + 3000, every=500)[-1]
    assert e.window_s <= MAX_WINDOW_S
    assert e.window_s > MAX_WINDOW_S - 600
    assert est.restarts == 0


def test_no_restarts_over_a_long_steady_run():
    est = AdaptiveSlope()
    feed(est, random.Random(9), lambda t: -2.3e-6, 24 * 3600)
    assert est.restarts == 0


def test_a_rate_change_restarts_the_window_and_the_estimate_follows():
    before, after = 0.45 / 86400, 1.0 / 86400
    step = 3 * 3600.0
    est = AdaptiveSlope()
    rng = random.Random(11)
    history = feed(est, rng, lambda t: -(before if t < step else after), int(step) + 3600)
    assert est.restarts >= 1
    final = history[-1]
    assert final.window_s < 3600 + 60  # nothing from before the change is left
    assert abs(-final.slope - after) < 3 * final.sigma
    # the estimate was on the old rate just before the change
    pre = [e for e in history if step - 600 < e.time < step]
    assert all(abs(-e.slope - before) < 3 * e.sigma for e in pre)


def test_change_is_confirmed_within_twice_the_minimum_window():
    """After the change, |r − 0.9| > 3σ must come within 2× the least-squares minimum window."""
    before, after, threshold = 0.45 / 86400, 1.0 / 86400, 0.9 / 86400
    step = 2 * 3600.0
    tc = (12 * SIGMA**2 / ((after - threshold) / 3) ** 2) ** (1 / 3)
    delays = []
    for seed in range(5):
        est = AdaptiveSlope()
        history = feed(est, random.Random(100 + seed), lambda t: -(before if t < step else after), int(step + 3 * tc))
        confirmed = [e.time for e in history if e.time >= step and -e.slope - 3 * e.sigma > threshold]
        assert confirmed, f"seed {seed}: never confirmed"
        delays.append(confirmed[0] - step)
    assert max(delays) < 2 * tc, (delays, tc)


def test_noise_prior_survives_a_restart():
    est = AdaptiveSlope()
    rng = random.Random(12)
    feed(est, rng, lambda t: -1e-5, 4000)
    # an abrupt hole: the window restarts with few points, but σ must not collapse
    history = feed(est, rng, lambda t: -5e-3, 200, t0=4000)
    short = [e for e in history if e.n < 100]
    assert short
    for e in short:
        assert e.sigma > 0.5 * cr_sigma(SIGMA, e.n)


def test_fall_rate_sees_a_fast_fall_and_bounds_it():
    fr = FallRate()
    rng = random.Random(13)
    for i in range(100):  # 10 Hz, steady
        fr.add(i / 10, 101325 + rng.gauss(0.0, 2.0))
    fall, lower, upper = fr.bounds(3.0)
    assert lower < 0 < upper and abs(fall) < 3
    for i in range(100, 130):  # then -59 Pa/s
        fr.add(i / 10, 101325 - 59.0 * (i - 100) / 10 + rng.gauss(0.0, 2.0))
    fall, lower, upper = fr.bounds(3.0)
    assert 40 < lower <= fall <= upper
    assert abs(fall - 59.0) < 6.0


def test_fall_rate_needs_enough_points():
    fr = FallRate()
    for i in range(4):
        fr.add(float(i), 1e5)
    assert fr.bounds(3.0) is None


def ar1(rng, sigma, tau):
    """A generator of AR(1) noise with standard deviation sigma and correlation time tau (points)."""
    a = math.exp(-1.0 / tau)
    x = 0.0
    while True:
        x = a * x + math.sqrt(1.0 - a * a) * rng.gauss(0.0, sigma)
        yield x


def test_coloured_noise_widens_sigma_honestly_and_cuts_no_window():
    """White noise plus a slow wander: σ must cover the real scatter, and the wander is no change of rate."""
    slope = -2.3e-6
    z = []
    for seed in range(3):
        rng = random.Random(200 + seed)
        wander = ar1(rng, 1.2 * SIGMA, 180.0)
        est = AdaptiveSlope()
        for i in range(8 * 3600):
            est.add(float(i), 90.0 + slope * i + rng.gauss(0.0, SIGMA) + next(wander))
            if i % 10 == 9 and i >= 3600:
                e = est.estimate()
                z.append((e.slope - slope) / e.sigma)
        assert est.restarts <= 1
    inside = sum(abs(x) < 2 for x in z) / len(z)
    assert 0.85 <= inside <= 0.995, inside


def test_white_noise_is_not_taken_for_correlated():
    est = AdaptiveSlope()
    history = feed(est, random.Random(21), lambda t: -1e-5, 4 * 3600)
    assert sum(e.inflation > 1.0 for e in history) / len(history) < 0.02


def test_a_level_shift_is_absorbed_reported_and_leaves_the_rate_alone():
    rate = -0.45 / 86400
    est = AdaptiveSlope()
    rng = random.Random(31)
    history = feed(est, rng, lambda t: rate, 5000)
    history += feed(est, rng, lambda t: rate, 3000, t0=5000, start_y=90.0 + rate * 5000 - 15 * SIGMA)
    steps = est.take_steps()
    assert len(steps) == 1
    assert abs(steps[0].time - 5000) <= 3
    assert abs(steps[0].size + 15 * SIGMA) < 2 * SIGMA
    assert est.restarts == 0
    after = [e for e in history if e.time > 5000]
    assert all(abs(e.slope - rate) < 4 * e.sigma for e in after)
    assert est.take_steps() == []


def test_a_rate_change_is_not_taken_for_a_level_shift():
    before, after = 0.45 / 86400, 1.0 / 86400
    est = AdaptiveSlope()
    feed(est, random.Random(41), lambda t: -(before if t < 7200 else after), 7200 + 3600)
    assert est.take_steps() == []
    assert est.restarts >= 1


def test_a_fast_stream_is_averaged_to_two_points_a_second():
    rng = random.Random(7)
    slope = AdaptiveSlope()
    for i in range(120_000):  # two minutes at 1 kHz
        t = i / 1000.0
        slope.add(t, -1e-4 * t + rng.gauss(0.0, 1e-3))
    assert len(slope.series) <= 2 * 120 + 1
    fit = slope.estimate()
    assert fit is not None
    assert abs(fit.slope + 1e-4) < 3.0 * fit.sigma


def test_points_a_second_apart_are_kept_as_they_are():
    slope = AdaptiveSlope()
    for i in range(100):
        slope.add(float(i), 0.5 * i)
    assert list(slope.series.ys) == [0.5 * i for i in range(100)]

"""What real transducers and real modules do, on one volume, with the truth kept.

Clean stories (stories.py) have white noise and steady sensors. Real rigs have more:
coloured noise, a slow wander, re-zeroed transducers (offset steps), single-sample
spikes, a thermometer lagging the air through an HVAC cycle, repressurisation from a
tank, a leak that grows, redundant transducers of unequal quality, one of them leaving
and returning. Each story here is one of these, one volume at 1 Hz; its `truth` holds
the leak profile (kg/day at 101 325 Pa, choked: scaled by P/P0) and the phenomenon's
times and sizes, to judge the monitor's answers against.

Pure and seeded: the same arguments give the same samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from hullwatch.core.model import R_AIR, SECONDS_PER_DAY, Quantity, Sample
from hullwatch.core.settings import ModuleSettings, Segment, SensorSpec
from hullwatch.sim.stories import T0, Story, confirm_window_s

P0 = 101_325.0
VOLUME_M3 = 75.0
HOUR = 3600.0

Profile = Callable[[float], float]  # seconds since start -> value


@dataclass(frozen=True)
class Transducer:
    """A pressure transducer as it really behaves."""

    name: str = "p1"
    sigma: float = 2.0  # white noise, Pa
    ar_sigma: float = 0.0  # AR(1) noise, its standard deviation, Pa
    ar_tau_s: float = 0.0  # AR(1) noise, its correlation time
    offset: float = 0.0  # Pa, from the start
    steps: tuple[tuple[float, float], ...] = ()  # (time, Pa): the offset changes by Pa from then on
    spikes: tuple[tuple[float, float], ...] = ()  # (time, Pa): one reading off by Pa
    absent: tuple[tuple[float, float], ...] = ()  # [start, end): no readings


def one_volume(
    leak: Profile,
    duration_s: float,
    seed: int,
    transducers: Sequence[Transducer] = (Transducer(),),
    air: Profile = lambda _t: 295.0,
    thermometer_lag_s: float = 0.0,
    sigma_t: float = 0.002,
    inject: Profile = lambda _t: 0.0,
    time_constant_s: float = 0.0,
    volume_m3: float = VOLUME_M3,
    truth: dict | None = None,
) -> Story:
    """One volume at 1 Hz: leak(t) kg/day at P0 (choked), inject(t) kg/s added, air(t) K.

    The thermometer `t1` lags the air by thermometer_lag_s (first order); the monitor is told
    time_constant_s of it.
    """
    sensors = tuple(SensorSpec(x.name, "prk") for x in transducers)
    sensors += (SensorSpec("t1", "prk", time_constant_s=time_constant_s),)
    settings = ModuleSettings(segments=(Segment("prk", volume_m3),), sensors=sensors)
    samples = _samples(leak, duration_s, seed, transducers, air, thermometer_lag_s, sigma_t, inject, volume_m3)
    known = {"leak": leak, "inject": inject, "duration_s": duration_s, "sigma_p": _fused_sigma(transducers)}
    return Story(settings, samples, {**known, **(truth or {})})


def true_loss(story: Story, time: float, pressure_pa: float) -> float:
    """The true net loss (kg/day) of a story's volume at `time`, at pressure_pa: leak less what is let in."""
    t = time - T0
    return story.truth["leak"](t) * pressure_pa / P0 - story.truth["inject"](t) * SECONDS_PER_DAY


def ramp_confirm_delay_s(
    slope_kg_per_day_per_s: float,
    sigma_p: float = 2.0,
    sigma_t: float = 0.002,
    volume_m3: float = VOLUME_M3,
    rate_hz: float = 1.0,
    k: float = 3.0,
) -> float:
    """The least time after a steadily growing leak passes a threshold that a line fit can confirm it.

    A fit over a window T sees the mean rate, T/2 behind the truth, with σ(T) of white noise; it
    confirms at k σ once the truth is T/2 + k·σ(T)/slope past the threshold: the least over T.
    """
    mass = P0 * volume_m3 / (R_AIR * 295.0)
    sigma_m = mass * math.hypot(sigma_p / P0, sigma_t / 295.0)

    def delay(window_s: float) -> float:
        sigma = sigma_m * math.sqrt(12.0 / (rate_hz * window_s**3)) * SECONDS_PER_DAY
        return window_s / 2.0 + k * sigma / slope_kg_per_day_per_s

    return min(delay(float(w)) for w in range(60, 4 * 3600, 10))


def _fused_sigma(transducers: Sequence[Transducer]) -> float:
    """The white noise of the transducers' inverse-variance mean."""
    return 1.0 / math.sqrt(sum(1.0 / x.sigma**2 for x in transducers))


def _samples(leak, duration_s, seed, transducers, air, lag_s, sigma_t, inject, volume_m3) -> Iterator[Sample]:
    rng = random.Random(seed)
    ar = [0.0] * len(transducers)
    decay = [math.exp(-1.0 / x.ar_tau_s) if x.ar_sigma else 0.0 for x in transducers]
    mass = P0 * volume_m3 / (R_AIR * air(0.0))
    sensed = air(0.0)
    follow = 1.0 - math.exp(-1.0 / lag_s) if lag_s else 1.0
    for i in range(int(duration_s)):
        t = float(i)
        temperature = air(t)
        p = mass * R_AIR * temperature / volume_m3
        for k, x in enumerate(transducers):
            value = p + x.offset + rng.gauss(0.0, x.sigma)
            if x.ar_sigma:
                a = decay[k]
                ar[k] = a * ar[k] + math.sqrt(1.0 - a * a) * rng.gauss(0.0, x.ar_sigma)
                value += ar[k]
            value += sum(d for at, d in x.steps if t >= at) + sum(d for at, d in x.spikes if t == at)
            if not any(a <= t < b for a, b in x.absent):
                yield Sample(T0 + t, x.name, Quantity.PRESSURE, round(value, 2))
        sensed += (temperature - sensed) * follow
        yield Sample(T0 + t, "t1", Quantity.TEMPERATURE, round(sensed + rng.gauss(0.0, sigma_t), 4))
        mass += -leak(t) / SECONDS_PER_DAY * (p / P0) + inject(t)


def constant(rate: float) -> Profile:
    """A leak that never changes."""
    return lambda _t: rate


# -- the phenomena ---------------------------------------------------------------------------


def coloured(seed: int = 547, duration_s: float = 6 * HOUR, rate: float = 0.2) -> Story:
    """White noise (1 Pa) plus AR(1) noise of 1.2 Pa and a 3-minute correlation time."""
    x = Transducer(sigma=1.0, ar_sigma=1.2, ar_tau_s=180.0)
    return one_volume(constant(rate), duration_s, seed, (x,))


def wander(seed: int = 548, duration_s: float = 6 * HOUR, rate: float = 0.2) -> Story:
    """A transducer whose zero wanders: 1 Pa white plus a bounded random walk (AR(1), 3 Pa, 1 h)."""
    x = Transducer(sigma=1.0, ar_sigma=3.0, ar_tau_s=HOUR)
    return one_volume(constant(rate), duration_s, seed, (x,))


def lagged_hvac(
    seed: int = 553, duration_s: float = 4 * HOUR, rate: float = 0.45, time_constant_s: float = 0.0
) -> Story:
    """HVAC swings the air ±0.2 K every 20 min; the thermometer lags it by 60 s (told: time_constant_s)."""
    return one_volume(
        constant(rate),
        duration_s,
        seed,
        air=lambda t: 295.0 + 0.2 * math.sin(2.0 * math.pi * t / 1200.0),
        thermometer_lag_s=60.0,
        time_constant_s=time_constant_s,
    )


def offset_steps(
    seed: int = 543,
    duration_s: float = 4 * HOUR,
    steps: Sequence[tuple[float, float]] = ((1.5 * HOUR, -30.0), (3 * HOUR, 20.0)),
    rate: float = 0.45,
) -> Story:
    """The only transducer is re-zeroed: its offset steps by tens of Pa at the times given."""
    x = Transducer(steps=tuple(steps))
    return one_volume(constant(rate), duration_s, seed, (x,), truth={"steps": [(T0 + t, d) for t, d in steps]})


def spikes(
    seed: int = 541,
    duration_s: float = 4 * HOUR,
    glitches: Sequence[tuple[float, float]] = ((3000, -300.0), (6000, 150.0), (9500, -900.0), (12000, 3000.0)),
    rate: float = 0.2,
) -> Story:
    """Single-sample spikes on the only transducer (a flipped digit on a serial line)."""
    x = Transducer(spikes=tuple(glitches))
    return one_volume(constant(rate), duration_s, seed, (x,), truth={"spikes": [T0 + t for t, _ in glitches]})


def repress(
    seed: int = 559,
    duration_s: float = 5 * HOUR,
    starts: Sequence[float] = (1.5 * HOUR, 3.25 * HOUR),
    kg: float = 0.2,
    length_s: float = 300.0,
    rate: float = 0.45,
) -> Story:
    """Air let in from a tank: kg over length_s at each start."""

    def inject(t: float) -> float:
        return kg / length_s if any(s <= t < s + length_s for s in starts) else 0.0

    ends = [T0 + s + length_s for s in starts]
    return one_volume(
        constant(rate),
        duration_s,
        seed,
        inject=inject,
        truth={"repress": [(T0 + s, T0 + s + length_s) for s in starts], "ends": ends},
    )


def ramp(
    seed: int = 561, duration_s: float = 4 * HOUR, start: float = 0.3, end: float = 1.5, ramp_s: float = 4 * HOUR
) -> Story:
    """A crack grows: the leak ramps from start to end kg/day over ramp_s."""
    slope = (end - start) / ramp_s
    return one_volume(
        lambda t: start + slope * min(t, ramp_s), duration_s, seed, truth={"ramp_kg_per_day_per_s": slope}
    )


def fusion(
    seed: int = 567,
    duration_s: float = 3.5 * HOUR,
    step_s: float = 2 * HOUR,
    sigmas: Sequence[float] = (1.5, 1.5, 8.0),
    before: float = 0.45,
    after: float = 1.0,
) -> Story:
    """Three transducers of unequal noise in one volume; the leak steps before -> after at step_s."""
    xs = tuple(Transducer(f"p{i + 1}", sigma=s) for i, s in enumerate(sigmas))
    tc = confirm_window_s(VOLUME_M3, _fused_sigma(xs), 0.002, 1.0, 0.1)
    return one_volume(
        lambda t: before if t < step_s else after,
        duration_s,
        seed,
        xs,
        truth={"step_time": T0 + step_s, "confirm_window_s": tc},
    )


def redundant_gap(
    seed: int = 571,
    duration_s: float = 3 * HOUR,
    offset: float = 12.0,
    gap: tuple[float, float] = (1.5 * HOUR, 1.5 * HOUR + 600.0),
    rate: float = 0.45,
) -> Story:
    """Three transducers, one offset from the others, leaves (silent) for a while and returns."""
    xs = (Transducer("p1"), Transducer("p2"), Transducer("p3", offset=offset, absent=(gap,)))
    return one_volume(constant(rate), duration_s, seed, xs, truth={"gap": (T0 + gap[0], T0 + gap[1])})

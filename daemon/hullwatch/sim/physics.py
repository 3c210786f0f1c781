"""Physics of a mock-up module: ideal-gas segments, hatches, choked leaks, noisy sensors.

Each segment holds a mass of air at its own temperature. Segments joined by open hatches
share one pressure, P = R·Σm / Σ(V/T), and air moves freely between them. A leak is a
choked orifice: its mass flow is proportional to the pressure, so a leak is specified by
its rate at 101 325 Pa. Sensors add Gaussian noise, an offset and quantisation.

Pure and seeded: the same arguments give the same samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from hullwatch.core.model import R_AIR, SECONDS_PER_DAY, Quantity, Sample
from hullwatch.core.topology import form_volumes

P_REFERENCE = 101_325.0

Profile = Callable[[float], float]  # seconds since start -> value


def constant(value: float) -> Profile:
    """A profile that never changes."""
    return lambda _t: value


def steps(initial: float, changes: Sequence[tuple[float, float]]) -> Profile:
    """A profile that jumps to each (time, value) in turn."""
    ordered = sorted(changes)

    def profile(t: float) -> float:
        value = initial
        for at, v in ordered:
            if t < at:
                break
            value = v
        return value

    return profile


def cycle(mean: float, amplitude: float, period_s: float) -> Profile:
    """A smooth swing between mean−amplitude and mean+amplitude, starting at the bottom."""
    return lambda t: mean - amplitude * math.cos(2.0 * math.pi * t / period_s)


@dataclass(frozen=True)
class SensorModel:
    """A simulated transducer: what it measures, where, and how badly."""

    name: str
    segment: str
    quantity: Quantity
    sigma: float
    quantum: float = 0.0
    offset: float = 0.0


class Module:
    """The air in a set of segments joined by hatches."""

    def __init__(
        self,
        segments: Mapping[str, float],
        hatches: Mapping[str, tuple[str, str]],
        open_hatches: set[str],
        temperature: Mapping[str, Profile],
        leaks: Mapping[str, Profile],
        pressure_pa: float = P_REFERENCE,
    ) -> None:
        self.segments = dict(segments)
        self.hatches = dict(hatches)
        self.open = set(open_hatches)
        self.temperature = temperature
        self.leaks = leaks
        self.mass = {s: pressure_pa * v / (R_AIR * temperature[s](0.0)) for s, v in segments.items()}
        self._groups = self._form()

    def _form(self) -> list[tuple[str, ...]]:
        return list(form_volumes(self.segments, self.hatches, self.open).values())

    def pressures(self, t: float) -> dict[str, float]:
        """Each segment's pressure at time t."""
        out = {}
        for group in self._groups:
            capacity = sum(self.segments[s] / self.temperature[s](t) for s in group)
            p = R_AIR * sum(self.mass[s] for s in group) / capacity
            for s in group:
                out[s] = p
        return out

    def set_hatch(self, name: str, is_open: bool, t: float) -> None:
        """Open or close a hatch; the air redistributes at once."""
        if is_open:
            self.open.add(name)
        else:
            self.open.discard(name)
        self._groups = self._form()
        self._equalise(t)

    def advance(self, t: float, dt: float) -> None:
        """Let the leaks act from t to t+dt (exactly, for a choked leak: exponential decay)."""
        p = self.pressures(t)
        for s, leak in self.leaks.items():
            rate = leak(t) / SECONDS_PER_DAY  # kg/s at the reference pressure
            if rate > 0.0 and self.mass[s] > 0.0:
                # dm/dt = -rate·P/P_ref, with P ∝ m while the volume's temperatures hold
                tau = self.mass[s] * P_REFERENCE / (rate * p[s])
                self.mass[s] *= math.exp(-dt / tau)
        self._equalise(t + dt)

    def _equalise(self, t: float) -> None:
        p = self.pressures(t)
        for s in self.segments:
            self.mass[s] = p[s] * self.segments[s] / (R_AIR * self.temperature[s](t))


def run(
    module: Module,
    sensors: Sequence[SensorModel],
    duration_s: float,
    rate_hz: float,
    seed: int,
    t0: float = 1_780_000_000.0,
    hatch_events: Sequence[tuple[float, str, bool]] = (),
    dropouts: Sequence[tuple[str, float, float]] = (),
) -> Iterator[Sample]:
    """Sample the module at rate_hz for duration_s: hatch states first, then every sensor each tick."""
    rng = random.Random(seed)
    dt = 1.0 / rate_hz
    pending = sorted(hatch_events)
    for h in module.hatches:
        yield Sample(t0, h, Quantity.HATCH, 1.0 if h in module.open else 0.0)
    for i in range(int(duration_s * rate_hz)):
        t = i * dt
        while pending and pending[0][0] <= t:
            _, hatch, is_open = pending.pop(0)
            module.set_hatch(hatch, is_open, t)
            yield Sample(t0 + t, hatch, Quantity.HATCH, 1.0 if is_open else 0.0)
        p = module.pressures(t)
        for sen in sensors:
            if any(name == sen.name and a <= t < b for name, a, b in dropouts):
                continue
            true = p[sen.segment] if sen.quantity is Quantity.PRESSURE else module.temperature[sen.segment](t)
            v = true + sen.offset + rng.gauss(0.0, sen.sigma)
            if sen.quantum:
                v = round(v / sen.quantum) * sen.quantum
            yield Sample(t0 + t, sen.name, sen.quantity, v)
        module.advance(t, dt)

"""Named synthetic stories of a mock-up: what the tests, the benchmarks and the example recording play.

Each story gives the module settings the monitor needs, the samples, and the truth
(when things happened, the true rates) to judge the monitor's answers against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from hullwatch.core.model import R_AIR, Quantity, Sample
from hullwatch.core.settings import Hatch, ModuleSettings, Segment, SensorSpec
from hullwatch.sim.physics import Module, SensorModel, constant, cycle, run, steps

T0 = 1_780_000_000.0


@dataclass
class Story:
    """A module, what happens to it, and the truth to judge by."""

    settings: ModuleSettings
    samples: Iterator[Sample]
    truth: dict = field(default_factory=dict)


def _one_volume_sensors(sigma_p: float, sigma_t: float) -> list[SensorModel]:
    return [
        SensorModel("p1", "prk", Quantity.PRESSURE, sigma_p, 0.01),
        SensorModel("t1", "prk", Quantity.TEMPERATURE, sigma_t, 0.001),
    ]


def _one_volume_settings(volume_m3: float) -> ModuleSettings:
    return ModuleSettings(
        segments=(Segment("prk", volume_m3),), sensors=(SensorSpec("p1", "prk"), SensorSpec("t1", "prk"))
    )


def confirm_window_s(
    volume_m3: float,
    sigma_p: float,
    sigma_t: float,
    rate_hz: float,
    margin_kg_per_day: float,
    k: float = 3.0,
    temperature_k: float = 295.0,
    pressure_pa: float = 101_325.0,
) -> float:
    """The least-squares minimum window to tell a rate from one `margin` away at k sigma (white noise)."""
    mass = pressure_pa * volume_m3 / (R_AIR * temperature_k)
    sigma_m = mass * math.hypot(sigma_p / pressure_pa, sigma_t / temperature_k)
    sigma_b = margin_kg_per_day / k / 86400.0
    return (12.0 * sigma_m**2 / (rate_hz * sigma_b**2)) ** (1.0 / 3.0)


def leak_step(
    volume_m3: float = 75.0,
    before: float = 0.45,
    after: float = 1.0,
    step_s: float = 3 * 3600.0,
    duration_s: float = 6 * 3600.0,
    sigma_p: float = 2.0,
    sigma_t: float = 0.002,
    rate_hz: float = 1.0,
    seed: int = 1,
) -> Story:
    """A steady leak that changes rate at step_s (the 2026 PrK doubling: 0.45 → 1.0 kg/day)."""
    module = Module({"prk": volume_m3}, {}, set(), {"prk": constant(295.0)}, {"prk": steps(before, [(step_s, after)])})
    samples = run(module, _one_volume_sensors(sigma_p, sigma_t), duration_s, rate_hz, seed)
    tc = confirm_window_s(volume_m3, sigma_p, sigma_t, rate_hz, abs(after - 0.9) if after > 0.9 else 0.1)
    return Story(
        _one_volume_settings(volume_m3),
        samples,
        {"step_time": T0 + step_s, "before": before, "after": after, "confirm_window_s": tc},
    )


def thermal(
    volume_m3: float = 75.0,
    swing_k: float = 0.6,
    period_s: float = 4 * 3600.0,
    duration_s: float = 8 * 3600.0,
    seed: int = 2,
) -> Story:
    """No leak; the air warms and cools by swing_k (an HVAC cycle)."""
    module = Module(
        {"prk": volume_m3},
        {},
        set(),
        {"prk": cycle(295.0 + swing_k / 2, swing_k / 2, period_s)},
        {"prk": constant(0.0)},
    )
    return Story(
        _one_volume_settings(volume_m3),
        run(module, _one_volume_sensors(2.0, 0.002), duration_s, 1.0, seed),
        {"rate": 0.0},
    )


def dropout(gap_start_s: float = 600.0, gap_s: float = 120.0, duration_s: float = 1200.0, seed: int = 3) -> Story:
    """The pressure sensor goes silent for a while."""
    module = Module({"prk": 75.0}, {}, set(), {"prk": constant(295.0)}, {"prk": constant(0.2)})
    samples = run(
        module,
        _one_volume_sensors(2.0, 0.002),
        duration_s,
        1.0,
        seed,
        dropouts=[("p1", gap_start_s, gap_start_s + gap_s)],
    )
    return Story(
        _one_volume_settings(75.0),
        samples,
        {"gap_start": T0 + gap_start_s, "gap_end": T0 + gap_start_s + gap_s},
    )


def isolation(close_s: float = 2 * 3600.0, duration_s: float = 5 * 3600.0, leak: float = 1.0, seed: int = 4) -> Story:
    """PrK (4 m³) leaks into space through a joined Zvezda (75 m³); closing the hatch isolates the leak."""
    module = Module(
        {"prk": 4.0, "zvezda": 75.0},
        {"prk-hatch": ("prk", "zvezda")},
        {"prk-hatch"},
        {"prk": constant(295.0), "zvezda": constant(295.0)},
        {"prk": constant(leak)},
    )
    sensors = [
        SensorModel("p_prk", "prk", Quantity.PRESSURE, 2.0, 0.01),
        SensorModel("t_prk", "prk", Quantity.TEMPERATURE, 0.002, 0.001),
        SensorModel("p_zv", "zvezda", Quantity.PRESSURE, 2.0, 0.01, offset=3.0),
        SensorModel("t_zv", "zvezda", Quantity.TEMPERATURE, 0.002, 0.001),
    ]
    settings = ModuleSettings(
        segments=(Segment("prk", 4.0), Segment("zvezda", 75.0)),
        hatches=(Hatch("prk-hatch", ("prk", "zvezda"), True),),
        sensors=tuple(SensorSpec(s.name, s.segment) for s in sensors),
    )
    samples = run(module, sensors, duration_s, 1.0, seed, hatch_events=[(close_s, "prk-hatch", False)])
    return Story(settings, samples, {"close_time": T0 + close_s, "leak": leak})


def hole(
    volume_m3: float = 10.0,
    hole_s: float = 600.0,
    hole_kg_per_day: float = 600.0,
    duration_s: float = 900.0,
    rate_hz: float = 10.0,
    seed: int = 5,
) -> Story:
    """A hole opens: about −59 Pa/s in a 10 m³ volume. Truth: when the reserve time passes 600 s."""
    module = Module(
        {"prk": volume_m3},
        {},
        set(),
        {"prk": constant(295.0)},
        {"prk": steps(0.2, [(hole_s, hole_kg_per_day)])},
    )
    samples = run(module, _one_volume_sensors(2.0, 0.002), duration_s, rate_hz, seed)
    mass0 = 101_325.0 * volume_m3 / (R_AIR * 295.0)
    tau = mass0 / (hole_kg_per_day / 86400.0)
    reserve_600_s = tau * (math.log(101_325.0 / 65_300.0) - 600.0 / tau)  # after the hole
    return Story(
        _one_volume_settings(volume_m3),
        samples,
        {"hole_time": T0 + hole_s, "reserve_600_time": T0 + hole_s + reserve_600_s, "tau_s": tau},
    )


def prk_2026(
    duration_s: float = 6 * 3600.0,
    double_s: float = 2 * 3600.0,
    close_s: float = 4 * 3600.0,
    seed: int = 2026,
) -> Story:
    """The 2026 PrK story: 0.45 kg/day from the PrK through an open hatch, doubling to 1.0, then the hatch closes.

    Sensor names match config/hullwatch.example.toml.
    """
    story = isolation(close_s=close_s, duration_s=duration_s, seed=seed)
    module = Module(
        {"prk": 4.0, "zvezda": 75.0},
        {"prk-hatch": ("prk", "zvezda")},
        {"prk-hatch"},
        {"prk": cycle(295.4, 0.15, 3 * 3600.0), "zvezda": cycle(294.8, 0.25, 4 * 3600.0)},
        {"prk": steps(0.45, [(double_s, 1.0)])},
    )
    sensors = [
        SensorModel("p_prk", "prk", Quantity.PRESSURE, 2.0, 0.01),
        SensorModel("t_prk", "prk", Quantity.TEMPERATURE, 0.002, 0.001),
        SensorModel("p_zv", "zvezda", Quantity.PRESSURE, 2.0, 0.01, offset=3.0),
        SensorModel("t_zv", "zvezda", Quantity.TEMPERATURE, 0.002, 0.001),
    ]
    samples = run(module, sensors, duration_s, 1.0, seed, hatch_events=[(close_s, "prk-hatch", False)])
    return Story(
        story.settings,
        samples,
        {"double_time": T0 + double_s, "close_time": T0 + close_s, "before": 0.45, "after": 1.0},
    )

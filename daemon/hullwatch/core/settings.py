"""What the core needs to know about the mock-up: its segments, hatches, sensors and alarm limits.

Frozen, already validated objects; `hullwatch.config` builds them from the TOML file.
Defaults here are the defaults of ICD §2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hullwatch.core.alarm_kinds import RAPID_DEPRESS


@dataclass(frozen=True, slots=True)
class Segment:
    """A pressurised compartment."""

    name: str
    volume_m3: float


@dataclass(frozen=True, slots=True)
class Hatch:
    """A hatch that joins two segments into one volume while open."""

    name: str
    between: tuple[str, str]
    initially_open: bool = True


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """A transducer in a segment, with the physical range outside which a reading is absurd."""

    name: str
    segment: str
    # absolute Pa a cabin's air can plausibly read: never 0 (a lost line), nor hPa sent as Pa
    pressure_range_pa: tuple[float, float] = (2_000.0, 200_000.0)
    temperature_range_k: tuple[float, float] = (200.0, 350.0)
    time_constant_s: float = 0.0  # a thermometer's first-order lag behind the air (datasheet τ); 0: none


@dataclass(frozen=True, slots=True)
class LeakSettings:
    """The leak-rate estimator's reporting and confidence."""

    confidence_sigma: float = 3.0
    report_interval_s: float = 10.0
    settle_s: float = 600.0  # after a hatch re-forms a volume, its leak-rate and reserve-time alarms wait this long
    thermometer_lag_sigma_s: float = 60.0  # how far (1 σ) thermometers may still lag the air


@dataclass(frozen=True, slots=True)
class LeakRateLimits:
    caution_kg_per_day: float | None = 0.5
    warning_kg_per_day: float | None = 0.9
    hysteresis_kg_per_day: float = 0.05
    confirmations: int = 3  # consecutive estimates past the bound before activation


@dataclass(frozen=True, slots=True)
class RapidDepressLimits:
    emergency_pa_per_s: float | None = 9.19


@dataclass(frozen=True, slots=True)
class LowPressureLimits:
    warning_pa: float | None = 95_000.0
    emergency_pa: float | None = 65_300.0
    hysteresis_pa: float = 50.0
    on_delay_s: float = 1.0  # below the threshold on two readings at least this far apart


@dataclass(frozen=True, slots=True)
class ReserveTimeLimits:
    minimum_pa: float = 65_300.0
    caution_s: float | None = 86_400.0
    warning_s: float | None = 3_600.0
    emergency_s: float | None = 600.0
    hysteresis_fraction: float = 0.05
    confirmations: int = 2


@dataclass(frozen=True, slots=True)
class SensorLimits:
    stale_after_s: float = 5.0
    severity: str = "warning"  # of sensor_fault: advisory, caution, warning or emergency


@dataclass(frozen=True, slots=True)
class AlarmLimits:
    leak_rate: LeakRateLimits = field(default_factory=LeakRateLimits)
    rapid_depress: RapidDepressLimits = field(default_factory=RapidDepressLimits)
    low_pressure: LowPressureLimits = field(default_factory=LowPressureLimits)
    reserve_time: ReserveTimeLimits = field(default_factory=ReserveTimeLimits)
    sensor: SensorLimits = field(default_factory=SensorLimits)
    latching: tuple[str, ...] = (RAPID_DEPRESS.name,)  # alarm kinds that stay until reset (ISA-18.2 latching)
    max_shelve_s: float = 8 * 3600.0  # the longest an operator may shelve an alarm


@dataclass(frozen=True, slots=True)
class ModuleSettings:
    """Everything the core monitor is built from."""

    segments: tuple[Segment, ...]
    hatches: tuple[Hatch, ...] = ()
    sensors: tuple[SensorSpec, ...] = ()
    leak: LeakSettings = field(default_factory=LeakSettings)
    alarms: AlarmLimits = field(default_factory=AlarmLimits)

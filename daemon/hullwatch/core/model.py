"""Data that flows through the core: samples in, estimates and alarm transitions out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple

R_AIR = 287.05  # J/(kg K), specific gas constant of dry air
SECONDS_PER_DAY = 86400.0


class Quantity(StrEnum):
    """What a sample measures."""

    PRESSURE = "pressure"  # Pa absolute
    TEMPERATURE = "temperature"  # K
    HATCH = "hatch"  # 1 open, 0 closed


class Quality(StrEnum):
    """How far a reading can be trusted."""

    GOOD = "good"
    SUSPECT = "suspect"
    BAD = "bad"


class Severity(IntEnum):
    """Alarm severities, ordered so that max() finds the worst."""

    ADVISORY = 1
    CAUTION = 2
    WARNING = 3
    EMERGENCY = 4

    @property
    def label(self) -> str:
        """The lower-case name used on the wire."""
        return self.name.lower()


class AlarmState(StrEnum):
    """Whether an alarm condition holds."""

    ACTIVE = "active"
    CLEARED = "cleared"


class Sample(NamedTuple):
    """One reading: a sensor's pressure or temperature, or a hatch's state."""

    time: float
    sensor: str
    quantity: Quantity
    value: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class Estimate:
    """The state of one volume at one moment: mass, pressure and leak rate with its uncertainty."""

    time: float
    volume: str
    leak_kg_per_day: float | None
    leak_kg_per_day_sigma: float | None
    pressure_pa: float
    mass_kg: float
    reserve_time_s: float | None
    window_s: float | None = None
    detectable_kg_per_day: float | None = None  # the smallest loss this window confirms at k σ

    def to_dict(self) -> dict:
        """The ICD §4 estimate object."""
        return {
            "type": "estimate",
            "time": self.time,
            "volume": self.volume,
            "leak_kg_per_day": _round(self.leak_kg_per_day, 6),
            "leak_kg_per_day_sigma": _round(self.leak_kg_per_day_sigma, 6),
            "pressure_pa": _round(self.pressure_pa, 3),
            "mass_kg": _round(self.mass_kg, 6),
            "reserve_time_s": _round(self.reserve_time_s, 1),
            "window_s": _round(self.window_s, 1),
            "detectable_kg_per_day": _round(self.detectable_kg_per_day, 6),
        }


@dataclass(frozen=True, slots=True)
class AlarmTransition:
    """An alarm condition became active or cleared."""

    time: float
    alarm: str
    source: str
    severity: Severity
    state: AlarmState
    value: float | None
    threshold: float | None
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, Severity]:
        """Identifies the alarm across its transitions."""
        return (self.alarm, self.source, self.severity)

    def to_dict(self) -> dict:
        """The ICD §4 alarm object."""
        d = {
            "type": "alarm",
            "time": self.time,
            "alarm": self.alarm,
            "source": self.source,
            "severity": self.severity.label,
            "state": self.state.value,
            "value": _round(self.value, 6),
            "threshold": self.threshold,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True, slots=True)
class HatchChange:
    """A hatch opened or closed, and the volumes that resulted."""

    time: float
    hatch: str
    open: bool
    volumes: tuple[str, ...]

    def to_dict(self) -> dict:
        """A JSON Lines object of type "hatch" (an extension of ICD §4)."""
        return {
            "type": "hatch",
            "time": self.time,
            "hatch": self.hatch,
            "state": "open" if self.open else "closed",
            "volumes": list(self.volumes),
        }


@dataclass(frozen=True, slots=True)
class LevelStep:
    """A sudden offset in a volume's readings (a re-zeroed or bumped transducer), not a leak."""

    time: float
    volume: str
    size_pa: float  # the pressure-equivalent jump of the volume's air mass
    sensor: str | None = None  # the transducer that stepped, when the others tell which

    def to_dict(self) -> dict:
        """A JSON Lines object of type "step" (an extension of ICD §4)."""
        d = {"type": "step", "time": self.time, "volume": self.volume, "size_pa": round(self.size_pa, 3)}
        if self.sensor is not None:
            d["sensor"] = self.sensor
        return d


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator should read that is not an alarm (e.g. a missing temperature)."""

    time: float
    message: str


Event = Estimate | AlarmTransition | HatchChange | LevelStep | Notice


def _round(x: float | None, digits: int) -> float | None:
    """Round for output; None and non-finite values become None (JSON null)."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)

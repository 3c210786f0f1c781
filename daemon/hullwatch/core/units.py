"""Engineering units to and from SI: pressure (Pa), temperature (K), mass rate (kg/day), leak throughput.

Pure arithmetic, standard library only. Unit names are looked up case-insensitively, with common aliases;
NaN and infinities pass straight through (callers decide what a bad sample means).
"""

import operator
from collections.abc import Callable
from functools import partial

__all__ = [
    "LEAK_UNITS",
    "MASS_RATE_UNITS",
    "PRESSURE_UNITS",
    "TEMPERATURE_UNITS",
    "UnitError",
    "k_to_temperature",
    "kg_per_day_to_mass_rate",
    "kg_per_day_to_throughput",
    "mass_rate_to_kg_per_day",
    "pa_to_pressure",
    "pressure_converter",
    "pressure_to_pa",
    "temperature_converter",
    "temperature_to_k",
    "throughput_to_kg_per_day",
]


class UnitError(ValueError):
    """Unknown unit name, or a unit of the wrong kind for the quantity asked for."""


_ATM_PA = 101325.0
_TORR_PA = _ATM_PA / 760.0
_LB_KG = 0.45359237
_R_AIR = 287.05  # specific gas constant of dry air, J/(kg K)
_DAY_S = 86400.0
_STD_T_K = 273.15  # sccm reference: 0 degC, 1 atm

# Pressure: value_pa = value * factor.
_PRESSURE: dict[str, float] = {
    "Pa": 1.0,
    "hPa": 100.0,
    "kPa": 1000.0,
    "mbar": 100.0,
    "bar": 1e5,
    "psi": 6894.757293168361,
    "mmHg": 133.322387415,
    "Torr": _TORR_PA,
    "inHg": 3386.389,
    "atm": _ATM_PA,
}
# Temperature: value_k = (value + offset) * scale, as (scale, offset).
_TEMPERATURE: dict[str, tuple[float, float]] = {
    "K": (1.0, 0.0),
    "degC": (1.0, 273.15),
    "degF": (5.0 / 9.0, 459.67),
}
# Mass rate: value_kg_per_day = value * factor.
_MASS_RATE: dict[str, float] = {
    "kg/day": 1.0,
    "g/day": 1e-3,
    "lb/day": _LB_KG,
    "kg/s": _DAY_S,
    "g/h": 24e-3,
}
# Throughput: (factor to Pa*m3/s, fixed gas temperature in K or None to use the caller's temperature).
_LEAK: dict[str, tuple[float, float | None]] = {
    "Pa*m3/s": (1.0, None),
    "mbar*L/s": (0.1, None),
    "sccm": (_ATM_PA * 1e-6 / 60.0, _STD_T_K),
    "Torr*L/s": (_TORR_PA * 1e-3, None),
    "atm*cc/s": (_ATM_PA * 1e-6, None),
}

PRESSURE_UNITS: tuple[str, ...] = tuple(_PRESSURE)
TEMPERATURE_UNITS: tuple[str, ...] = tuple(_TEMPERATURE)
MASS_RATE_UNITS: tuple[str, ...] = tuple(_MASS_RATE)
LEAK_UNITS: tuple[str, ...] = tuple(_LEAK)

_SQUEEZE = str.maketrans({" ": None, "*": None, "·": None, "⋅": None, "^": None, "_": None, "³": "3", "°": "deg"})


def _key(unit: str) -> str:
    return unit.strip().lower().translate(_SQUEEZE)


_ALIASES: dict[str, dict[str, str]] = {
    "pressure": {
        "pascal": "Pa",
        "pascals": "Pa",
        "hectopascal": "hPa",
        "kilopascal": "kPa",
        "millibar": "mbar",
        "millibars": "mbar",
        "bars": "bar",
        "psia": "psi",
        "torrs": "Torr",
        "atmosphere": "atm",
        "atmospheres": "atm",
    },
    "temperature": {
        "kelvin": "K",
        "c": "degC",
        "celsius": "degC",
        "f": "degF",
        "fahrenheit": "degF",
    },
    "mass rate": {"kg/d": "kg/day", "g/d": "g/day", "lb/d": "lb/day", "lbs/day": "lb/day", "g/hr": "g/h"},
    "leak throughput": {"atmcm3/s": "atm*cc/s", "stdcm3/min": "sccm"},
}

_KINDS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    kind: (names, {_key(n): n for n in names} | {_key(a): n for a, n in _ALIASES[kind].items()})
    for kind, names in (
        ("pressure", PRESSURE_UNITS),
        ("temperature", TEMPERATURE_UNITS),
        ("mass rate", MASS_RATE_UNITS),
        ("leak throughput", LEAK_UNITS),
    )
}


def _resolve(unit: str, kind: str) -> str:
    key = _key(unit) if isinstance(unit, str) else None
    names, lookup = _KINDS[kind]
    if key in lookup:
        return lookup[key]
    other = next((k for k, (_, table) in _KINDS.items() if key in table), None)
    what = f"{unit!r} is a {other} unit, not a {kind} unit" if other else f"unknown {kind} unit {unit!r}"
    raise UnitError(f"{what}; accepted {kind} units: {', '.join(names)} (case-insensitive, common aliases)")


def pressure_to_pa(value: float, unit: str) -> float:
    """Convert a pressure in `unit` to pascals."""
    return value * _PRESSURE[_resolve(unit, "pressure")]


def pa_to_pressure(value_pa: float, unit: str) -> float:
    """Convert a pressure in pascals to `unit`."""
    return value_pa / _PRESSURE[_resolve(unit, "pressure")]


def temperature_to_k(value: float, unit: str) -> float:
    """Convert a temperature in `unit` to kelvin."""
    scale, offset = _TEMPERATURE[_resolve(unit, "temperature")]
    return (value + offset) * scale


def k_to_temperature(value_k: float, unit: str) -> float:
    """Convert a temperature in kelvin to `unit`."""
    scale, offset = _TEMPERATURE[_resolve(unit, "temperature")]
    return value_k / scale - offset


def mass_rate_to_kg_per_day(value: float, unit: str) -> float:
    """Convert a mass flow rate in `unit` to kg/day."""
    return value * _MASS_RATE[_resolve(unit, "mass rate")]


def kg_per_day_to_mass_rate(value: float, unit: str) -> float:
    """Convert a mass flow rate in kg/day to `unit`."""
    return value / _MASS_RATE[_resolve(unit, "mass rate")]


def _kg_per_day_per_unit(unit: str, temperature_k: float) -> float:
    factor, fixed_t = _LEAK[_resolve(unit, "leak throughput")]
    return factor * _DAY_S / (_R_AIR * (temperature_k if fixed_t is None else fixed_t))


def throughput_to_kg_per_day(value: float, unit: str, temperature_k: float = 293.15) -> float:
    """Convert an air leak throughput (pV units, or sccm) to kg/day via the ideal gas law at temperature_k."""
    return value * _kg_per_day_per_unit(unit, temperature_k)


def kg_per_day_to_throughput(value: float, unit: str, temperature_k: float = 293.15) -> float:
    """Convert an air mass leak rate in kg/day to throughput in `unit` (pV units or sccm) at temperature_k."""
    return value / _kg_per_day_per_unit(unit, temperature_k)


def pressure_converter(unit: str) -> Callable[[float], float]:
    """Return a function value -> Pa for `unit`, resolved once for hot loops."""
    return partial(operator.mul, _PRESSURE[_resolve(unit, "pressure")])


def temperature_converter(unit: str) -> Callable[[float], float]:
    """Return a function value -> K for `unit`, resolved once for hot loops."""
    scale, offset = _TEMPERATURE[_resolve(unit, "temperature")]
    if scale == 1.0:
        return partial(operator.add, offset)
    return lambda value: (value + offset) * scale

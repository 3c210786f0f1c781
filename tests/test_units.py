"""Tests for hullwatch.core.units: known values, round trips, aliases and error messages."""

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hullwatch.core import units
from hullwatch.core.units import (
    LEAK_UNITS,
    MASS_RATE_UNITS,
    PRESSURE_UNITS,
    TEMPERATURE_UNITS,
    UnitError,
    k_to_temperature,
    kg_per_day_to_mass_rate,
    kg_per_day_to_throughput,
    mass_rate_to_kg_per_day,
    pa_to_pressure,
    pressure_converter,
    pressure_to_pa,
    temperature_converter,
    temperature_to_k,
    throughput_to_kg_per_day,
)

REL = 1e-12

# Sensible finite magnitudes, no subnormals (tiny values times 1e-3 would underflow and lose digits).
magnitudes = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-9, max_value=1e9),
    st.floats(min_value=-1e9, max_value=-1e-9),
)
kelvins = st.floats(min_value=1.0, max_value=5000.0)


def close(a: float, b: float, rel: float = REL, abs_: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# --- the unit tables ---------------------------------------------------------------------------


def test_canonical_names() -> None:
    assert PRESSURE_UNITS == ("Pa", "hPa", "kPa", "mbar", "bar", "psi", "mmHg", "Torr", "inHg", "atm")
    assert TEMPERATURE_UNITS == ("K", "degC", "degF")
    assert MASS_RATE_UNITS == ("kg/day", "g/day", "lb/day", "kg/s", "g/h")
    assert set(LEAK_UNITS) == {"Pa*m3/s", "mbar*L/s", "sccm", "Torr*L/s", "atm*cc/s"}


def test_unit_error_is_value_error() -> None:
    assert issubclass(UnitError, ValueError)


# --- known values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "pa", "tol"),
    [
        (1013.25, "hPa", 101325.0, 1e-9),
        (1013.25, "mbar", 101325.0, 1e-9),
        (101.325, "kPa", 101325.0, 1e-9),
        (1.01325, "bar", 101325.0, 1e-9),
        (1.0, "atm", 101325.0, 0.0),
        (760.0, "Torr", 101325.0, 1e-9),
        # Conventional mmHg (133.322387415 Pa) is not Torr: 760 mmHg = 101325.0144 Pa, 0.01 Pa is too tight.
        (760.0, "mmHg", 101325.0, 0.02),
        (760.0, "mmHg", 101325.0144354, 1e-6),
        (14.6959, "psi", 101325.0, 1.0),
        (29.9213, "inHg", 101325.0, 1.0),
        (1.0, "psi", 6894.757293168361, 0.0),
        (1.0, "mmHg", 133.322387415, 0.0),
        (1.0, "inHg", 3386.389, 0.0),
        (12345.0, "Pa", 12345.0, 0.0),
    ],
)
def test_pressure_known_values(value: float, unit: str, pa: float, tol: float) -> None:
    assert pressure_to_pa(value, unit) == pytest.approx(pa, rel=0, abs=tol)


def test_torr_is_exactly_one_760th_atm() -> None:
    assert pressure_to_pa(1.0, "Torr") == 101325 / 760
    assert pa_to_pressure(101325.0, "Torr") == pytest.approx(760.0, rel=1e-15)


@pytest.mark.parametrize(
    ("value", "unit", "kelvin"),
    [
        (0.0, "degC", 273.15),
        (32.0, "degF", 273.15),
        (100.0, "degC", 373.15),
        (212.0, "degF", 373.15),
        (-459.67, "degF", 0.0),
        (-273.15, "degC", 0.0),
        (293.15, "K", 293.15),
    ],
)
def test_temperature_known_values(value: float, unit: str, kelvin: float) -> None:
    assert temperature_to_k(value, unit) == pytest.approx(kelvin, rel=0, abs=1e-9)


def test_minus_forty_is_minus_forty() -> None:
    assert k_to_temperature(temperature_to_k(-40.0, "degC"), "degF") == pytest.approx(-40.0, abs=1e-12)


@pytest.mark.parametrize(
    ("value", "unit", "kg_per_day"),
    [
        (1000.0, "g/day", 1.0),
        (1.0, "lb/day", 0.45359237),
        (1.0, "kg/s", 86400.0),
        (1000.0, "g/h", 24.0),
        (2.5, "kg/day", 2.5),
    ],
)
def test_mass_rate_known_values(value: float, unit: str, kg_per_day: float) -> None:
    assert mass_rate_to_kg_per_day(value, unit) == pytest.approx(kg_per_day, rel=1e-15)


def test_one_kg_per_day_is_1000_g_per_day() -> None:
    assert kg_per_day_to_mass_rate(1.0, "g/day") == pytest.approx(1000.0, rel=1e-15)


def test_sccm_of_air() -> None:
    # 1 cm3/min at 273.15 K and 101325 Pa, as mass: m = pV / (R T), per day.
    expected = 101325.0 * 1e-6 / 60.0 * 86400.0 / (287.05 * 273.15)
    assert expected == pytest.approx(1.8609e-3, rel=1e-4)  # about 1.86 g/day (air at STP is 1.2922 kg/m3)
    assert throughput_to_kg_per_day(1.0, "sccm") == pytest.approx(expected, rel=1e-12)


@given(kelvins)
def test_sccm_does_not_depend_on_temperature(t: float) -> None:
    assert close(throughput_to_kg_per_day(1.0, "sccm", t), throughput_to_kg_per_day(1.0, "sccm"))


def test_pv_throughput_known_values() -> None:
    # 1 Pa*m3/s of air at 293.15 K: 86400 / (287.05 * 293.15) kg/day.
    expected = 86400.0 / (287.05 * 293.15)
    assert throughput_to_kg_per_day(1.0, "Pa*m3/s") == pytest.approx(expected, rel=1e-12)
    assert throughput_to_kg_per_day(10.0, "mbar*L/s") == pytest.approx(expected, rel=1e-12)
    assert throughput_to_kg_per_day(1.0, "atm*cc/s") == pytest.approx(0.101325 * expected, rel=1e-12)
    torr_l = throughput_to_kg_per_day(1.0, "Torr*L/s") / throughput_to_kg_per_day(1.0, "mbar*L/s")
    assert torr_l == pytest.approx(101325 / 76000, rel=1e-12)


@given(kelvins)
def test_pv_throughput_scales_inversely_with_temperature(t: float) -> None:
    at_t = throughput_to_kg_per_day(1.0, "Pa*m3/s", t)
    assert close(at_t * t, throughput_to_kg_per_day(1.0, "Pa*m3/s", 293.15) * 293.15)


# --- round trips -------------------------------------------------------------------------------


@given(magnitudes, st.sampled_from(PRESSURE_UNITS))
def test_pressure_round_trip(x: float, unit: str) -> None:
    assert close(pa_to_pressure(pressure_to_pa(x, unit), unit), x)
    assert close(pressure_to_pa(pa_to_pressure(x, unit), unit), x)


@given(st.floats(min_value=-500.0, max_value=10000.0), st.sampled_from(TEMPERATURE_UNITS))
def test_temperature_round_trip(x: float, unit: str) -> None:
    # Offset units cannot hold 1e-12 relative near zero (x + 273.15 - 273.15), so the tolerance is
    # 1e-12 relative to the larger of the value and the ~500 K scale of the offsets.
    tol = REL * max(abs(x), 500.0)
    assert close(k_to_temperature(temperature_to_k(x, unit), unit), x, rel=0.0, abs_=tol)
    assert close(temperature_to_k(k_to_temperature(x, unit), unit), x, rel=0.0, abs_=tol)


@given(magnitudes, st.sampled_from(MASS_RATE_UNITS))
def test_mass_rate_round_trip(x: float, unit: str) -> None:
    assert close(kg_per_day_to_mass_rate(mass_rate_to_kg_per_day(x, unit), unit), x)
    assert close(mass_rate_to_kg_per_day(kg_per_day_to_mass_rate(x, unit), unit), x)


@given(magnitudes, st.sampled_from(LEAK_UNITS), kelvins)
def test_throughput_round_trip(x: float, unit: str, t: float) -> None:
    assert close(kg_per_day_to_throughput(throughput_to_kg_per_day(x, unit, t), unit, t), x)
    assert close(throughput_to_kg_per_day(kg_per_day_to_throughput(x, unit, t), unit, t), x)


# --- fast converters ---------------------------------------------------------------------------


@given(magnitudes, st.sampled_from(PRESSURE_UNITS))
def test_pressure_converter_matches(x: float, unit: str) -> None:
    assert pressure_converter(unit)(x) == pressure_to_pa(x, unit)


@given(st.floats(min_value=-500.0, max_value=10000.0), st.sampled_from(TEMPERATURE_UNITS))
def test_temperature_converter_matches(x: float, unit: str) -> None:
    assert temperature_converter(unit)(x) == temperature_to_k(x, unit)


def test_converters_reject_bad_units_up_front() -> None:
    with pytest.raises(UnitError):
        pressure_converter("degC")
    with pytest.raises(UnitError):
        temperature_converter("psi")


def test_nan_passes_through() -> None:
    assert math.isnan(pressure_to_pa(math.nan, "psi"))
    assert math.isnan(temperature_converter("degF")(math.nan))
    assert pressure_to_pa(math.inf, "bar") == math.inf


# --- aliases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("pa", "Pa"),
        ("PA", "Pa"),
        ("pascal", "Pa"),
        ("hpa", "hPa"),
        ("kpa", "kPa"),
        ("KPA", "kPa"),
        ("MBAR", "mbar"),
        ("millibar", "mbar"),
        ("BAR", "bar"),
        ("psia", "psi"),
        ("PSI", "psi"),
        ("torr", "Torr"),
        ("mmhg", "mmHg"),
        ("mm Hg", "mmHg"),
        ("inhg", "inHg"),
        ("ATM", "atm"),
        (" kPa ", "kPa"),
    ],
)
def test_pressure_aliases(alias: str, canonical: str) -> None:
    assert pressure_to_pa(3.0, alias) == pressure_to_pa(3.0, canonical)
    assert pa_to_pressure(3.0, alias) == pa_to_pressure(3.0, canonical)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("°C", "degC"),
        ("C", "degC"),
        ("c", "degC"),
        ("celsius", "degC"),
        ("Celsius", "degC"),
        ("degc", "degC"),
        ("deg C", "degC"),
        ("°F", "degF"),
        ("F", "degF"),
        ("fahrenheit", "degF"),
        ("DEGF", "degF"),
        ("kelvin", "K"),
        ("k", "K"),
    ],
)
def test_temperature_aliases(alias: str, canonical: str) -> None:
    assert temperature_to_k(21.5, alias) == temperature_to_k(21.5, canonical)
    assert k_to_temperature(295.0, alias) == k_to_temperature(295.0, canonical)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("KG/DAY", "kg/day"), ("kg/d", "kg/day"), ("g/d", "g/day"), ("lbs/day", "lb/day"), ("g/hr", "g/h")],
)
def test_mass_rate_aliases(alias: str, canonical: str) -> None:
    assert mass_rate_to_kg_per_day(7.0, alias) == mass_rate_to_kg_per_day(7.0, canonical)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("pa*m3/s", "Pa*m3/s"),
        ("Pa m3/s", "Pa*m3/s"),
        ("Pa·m³/s", "Pa*m3/s"),
        ("mbar l/s", "mbar*L/s"),
        ("mbar·L/s", "mbar*L/s"),
        ("torr*l/s", "Torr*L/s"),
        ("atm cc/s", "atm*cc/s"),
        ("SCCM", "sccm"),
    ],
)
def test_leak_aliases(alias: str, canonical: str) -> None:
    assert throughput_to_kg_per_day(2.0, alias, 300.0) == throughput_to_kg_per_day(2.0, canonical, 300.0)


# --- errors ------------------------------------------------------------------------------------


def test_unknown_pressure_unit_message_names_unit_and_accepted_units() -> None:
    with pytest.raises(UnitError) as info:
        pressure_to_pa(1.0, "furlong")
    message = str(info.value)
    assert "furlong" in message
    assert "pressure" in message
    for name in PRESSURE_UNITS:
        assert name in message


def test_temperature_unit_used_as_pressure_unit() -> None:
    with pytest.raises(UnitError) as info:
        pressure_to_pa(20.0, "degC")
    message = str(info.value)
    assert "degC" in message
    assert "temperature unit" in message
    for name in PRESSURE_UNITS:
        assert name in message


def test_pressure_unit_used_as_temperature_unit() -> None:
    with pytest.raises(UnitError, match="pressure unit") as info:
        temperature_to_k(1.0, "psi")
    for name in TEMPERATURE_UNITS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pa_to_pressure(1.0, "nope"),
        lambda: temperature_converter("rankine"),
        lambda: k_to_temperature(1.0, ""),
        lambda: mass_rate_to_kg_per_day(1.0, "kg"),
        lambda: kg_per_day_to_mass_rate(1.0, "psi"),
        lambda: throughput_to_kg_per_day(1.0, "kg/day"),
        lambda: kg_per_day_to_throughput(1.0, "slpm"),
        lambda: pressure_to_pa(1.0, "psig"),  # gauge is not absolute: must not be silently accepted
        lambda: pressure_to_pa(1.0, None),  # type: ignore[arg-type]
    ],
)
def test_bad_units_raise_unit_error(call: Callable[[], object]) -> None:
    with pytest.raises(UnitError):
        call()


def test_mass_rate_error_lists_mass_rate_units() -> None:
    with pytest.raises(UnitError) as info:
        mass_rate_to_kg_per_day(1.0, "stone/fortnight")
    for name in MASS_RATE_UNITS:
        assert name in str(info.value)


def test_leak_error_lists_leak_units() -> None:
    with pytest.raises(UnitError) as info:
        throughput_to_kg_per_day(1.0, "slpm")
    for name in LEAK_UNITS:
        assert name in str(info.value)


def test_public_api() -> None:
    assert set(units.__all__) == {
        "UnitError",
        "PRESSURE_UNITS",
        "TEMPERATURE_UNITS",
        "MASS_RATE_UNITS",
        "LEAK_UNITS",
        "pressure_to_pa",
        "pa_to_pressure",
        "temperature_to_k",
        "k_to_temperature",
        "mass_rate_to_kg_per_day",
        "kg_per_day_to_mass_rate",
        "throughput_to_kg_per_day",
        "kg_per_day_to_throughput",
        "pressure_converter",
        "temperature_converter",
    }

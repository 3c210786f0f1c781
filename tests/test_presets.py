"""Tests for hullwatch.sensors.presets: device formats, render/parse round trips, option validation, robustness."""

import dataclasses
import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hullwatch.core import units as units_module
from hullwatch.core.model import Quantity
from hullwatch.sensors.base import OptionError
from hullwatch.sensors.presets import (
    PRESETS,
    SERIAL_KEYS,
    LineParser,
    Preset,
    SerialSettings,
    serial_settings,
)

P, T = Quantity.PRESSURE, Quantity.TEMPERATURE
PSI = 6894.757293168361
HPA = MBAR = 100.0
REL = 1e-9
PORT = "/dev/ttyUSB0"


def parser_of(name: str) -> LineParser:
    return serial_settings({"port": PORT, "preset": name}).parser


def close(a: float, b: float, rel: float = REL, abs_: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# --- the table ---------------------------------------------------------------------------------


def test_required_presets_exist() -> None:
    assert {"digiquartz", "ptb330", "honeywell_ppt", "druck_dps8000", "plain", "plain_temperature"} <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_well_formed(name: str) -> None:
    p = PRESETS[name]
    assert p.name == name
    assert p.description and "\n" not in p.description
    assert p.parity in ("N", "E", "O") and 5 <= p.bytesize <= 8 and p.stopbits in (1, 1.5, 2) and p.baudrate > 0
    assert p.poll is None or (isinstance(p.poll, bytes) and p.poll.strip())
    assert p.eol in (b"\r", b"\n", b"\r\n")
    assert parser_of(name).quantities  # its regex and units build a parser
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.baudrate = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "maker"),
    [
        ("digiquartz", "Paroscientific"),
        ("ptb330", "Vaisala"),
        ("honeywell_ppt", "Honeywell"),
        ("druck_dps8000", "Druck"),
    ],
)
def test_descriptions_name_the_real_device(name: str, maker: str) -> None:
    assert maker in PRESETS[name].description


def test_serial_defaults_of_the_devices() -> None:
    d = PRESETS["digiquartz"]
    assert (d.poll, d.baudrate, d.bytesize, d.parity, d.stopbits, dict(d.units)) == (
        b"*0100P3\r\n",
        9600,
        8,
        "N",
        1,
        {"pressure": "psi"},
    )
    v = PRESETS["ptb330"]
    assert (v.poll, v.baudrate, v.bytesize, v.parity, v.stopbits, dict(v.units)) == (
        b"SEND\r\n",
        4800,
        7,
        "E",
        1,
        {"pressure": "hPa"},
    )
    h = PRESETS["honeywell_ppt"]
    assert (h.poll, h.baudrate, h.bytesize, h.parity, h.eol, dict(h.units)) == (
        b"*00P1\r",
        9600,
        8,
        "N",
        b"\r",
        {"pressure": "psi"},
    )
    k = PRESETS["druck_dps8000"]
    assert (k.poll, k.baudrate, k.bytesize, k.parity, k.eol, dict(k.units)) == (
        b" R\r",
        9600,
        8,
        "N",
        b"\r",
        {"pressure": "mbar"},
    )
    assert PRESETS["plain"].poll is None and dict(PRESETS["plain"].units) == {"pressure": "Pa"}
    assert PRESETS["plain_temperature"].poll is None and dict(PRESETS["plain_temperature"].units) == {
        "temperature": "K"
    }


def test_serial_keys() -> None:
    expected = {"port", "baudrate", "bytesize", "parity", "stopbits", "line_regex", "units", "poll", "interval_s"}
    expected |= {"timeout_s", "preset", "max_line", "max_rate_hz"}
    assert isinstance(SERIAL_KEYS, frozenset)
    assert set(SERIAL_KEYS) == expected


# --- real replies ------------------------------------------------------------------------------

SAMPLES = [
    # Paroscientific: *<to host 00><from unit 01><value>, psia
    ("digiquartz", b"*000114.69595\r\n", 14.69595 * PSI),
    ("digiquartz", b"*000114.69595", 14.69595 * PSI),
    ("digiquartz", b"*00010.00012", 0.00012 * PSI),
    ("digiquartz", b"*0002-0.50000", -0.5 * PSI),
    # Vaisala: the label depends on the FORM string
    ("ptb330", b"P =  1013.25 hPa\r\n", 101325.0),
    ("ptb330", b"P=1013.25 hPa", 101325.0),
    ("ptb330", b"1013.25 hPa", 101325.0),
    ("ptb330", b"pressure = 1013.02 hPa", 101302.0),
    ("ptb330", b"P= 1013.2 hPa", 101320.0),
    ("ptb330", b"  653.07 hPa OK", 65307.0),
    # Honeywell: ?/# header, 2-digit address, CP=, optional sign space
    ("honeywell_ppt", b"?01CP=14.6959\r", 14.6959 * PSI),
    ("honeywell_ppt", b"?01CP= 14.450", 14.450 * PSI),
    ("honeywell_ppt", b"#12CP= 14.32", 14.32 * PSI),
    ("honeywell_ppt", b"?01CP=-0.0012", -0.0012 * PSI),
    # Druck TERPS: value, units only after *A, address prefix in addressed mode
    ("druck_dps8000", b"1013.250\r", 101325.0),
    ("druck_dps8000", b"1013.250mbar", 101325.0),
    ("druck_dps8000", b"1013.250 mbar\r\n", 101325.0),
    ("druck_dps8000", b"1:1013.250", 101325.0),
    ("druck_dps8000", b"1.01325E03", 101325.0),
    ("plain", b"101325.0\n", 101325.0),
    ("plain", b"  101325 \r\n", 101325.0),
    ("plain", b"1.01325e5", 101325.0),
    ("plain", b"-12.5", -12.5),
]


@pytest.mark.parametrize(("name", "line", "pa"), SAMPLES)
def test_real_replies_parse_to_pascals(name: str, line: bytes, pa: float) -> None:
    values = parser_of(name).parse(line)
    assert len(values) == 1 and values[0][0] is P
    assert close(values[0][1], pa), (line, values, pa)


def test_plain_temperature_is_kelvin() -> None:
    assert parser_of("plain_temperature").parse(b"295.150\r\n") == [(T, 295.15)]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("digiquartz", b"*0100P3"),  # the echoed poll
        ("digiquartz", b"*000114.69595 psi"),
        ("digiquartz", b"14.69595"),
        ("ptb330", b"P = ****.** hPa"),  # Vaisala prints stars for a value it cannot give
        ("ptb330", b"P = 1013.25 mbar"),  # another unit than configured: not silently misread
        ("ptb330", b"SEND"),
        ("ptb330", b">"),
        ("honeywell_ppt", b"?01CP=.."),  # no data yet
        ("honeywell_ppt", b"?01CP!14.6959"),  # out of range or EEPROM error
        ("honeywell_ppt", b"*00P1"),
        ("druck_dps8000", b"1.01325bar"),
        ("druck_dps8000", b"!022 Bad Message"),
        ("plain", b""),
        ("plain", b"1013.25 hPa"),
        ("plain", b"nan"),
        ("plain", b"inf"),
        ("plain", b"1e999"),
        ("plain", b"1_000"),
        ("plain", b"12.5.3"),
        ("plain_temperature", b"-"),
    ],
)
def test_garbage_and_status_lines_give_nothing(name: str, line: bytes) -> None:
    assert parser_of(name).parse(line) == []


# --- render: the simulator's side ----------------------------------------------------------------

RESOLUTION_SI = {  # half a step of the last digit each format prints, in SI
    "digiquartz": 0.5e-5 * PSI,
    "ptb330": 0.5e-2 * HPA,
    "honeywell_ppt": 0.5e-4 * PSI,
    "druck_dps8000": 0.5e-3 * MBAR,
    "plain": 0.5e-3,
    "plain_temperature": 0.5e-4,
}


def test_every_preset_has_a_resolution_here() -> None:
    assert set(RESOLUTION_SI) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(pressure=st.floats(min_value=0.0, max_value=250_000.0), temperature=st.floats(min_value=150.0, max_value=400.0))
def test_render_then_parse_round_trips(name: str, pressure: float, temperature: float) -> None:
    preset = PRESETS[name]
    line = preset.render({P: pressure, T: temperature})
    assert line.endswith(preset.eol)
    assert line.isascii()
    values = dict(parser_of(name).parse(line))
    assert set(values) == set(parser_of(name).quantities)
    truth = {P: pressure, T: temperature}
    for quantity, value in values.items():
        assert abs(value - truth[quantity]) <= RESOLUTION_SI[name] * (1 + 1e-6) + 1e-9 * abs(truth[quantity])


def test_render_uses_the_device_format() -> None:
    v = {P: 101325.0, T: 295.15}
    assert PRESETS["digiquartz"].render(v) == b"*000114.69595\r\n"
    assert PRESETS["ptb330"].render(v) == b"P =  1013.25 hPa\r\n"
    assert PRESETS["honeywell_ppt"].render(v) == b"?01CP= 14.6959\r"
    assert PRESETS["druck_dps8000"].render(v) == b"1013.250\r"
    assert PRESETS["plain"].render(v) == b"101325.000\r\n"
    assert PRESETS["plain_temperature"].render(v) == b"295.1500\r\n"


def test_render_accepts_plain_string_keys() -> None:
    assert PRESETS["plain"].render({"pressure": 5.0}) == b"5.000\r\n"  # type: ignore[dict-item]


@pytest.mark.parametrize("values", [{}, {T: 295.0}, {P: math.nan}, {P: math.inf}])
def test_render_is_silent_without_a_usable_value(values: dict) -> None:
    assert PRESETS["ptb330"].render(values) == b""


def test_a_preset_without_a_reply_format_cannot_render() -> None:
    custom = Preset("x", "custom", r"(?P<pressure>\d+)", {"pressure": "Pa"}, None)
    with pytest.raises(ValueError, match="no reply format"):
        custom.render({P: 1.0})


# --- serial_settings -----------------------------------------------------------------------------


def test_no_preset_no_regex_is_plain_pascals() -> None:
    s = serial_settings({"port": PORT})
    assert s == SerialSettings(
        PORT, 9600, 8, "N", 1.0, None, 1.0, 1.0, 4096, LineParser(PRESETS["plain"].line_regex, {"pressure": "Pa"}), None
    )
    assert s.parser.parse(b"101325") == [(P, 101325.0)]


def test_preset_sets_the_defaults() -> None:
    s = serial_settings({"port": PORT, "preset": "ptb330"})
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits, s.poll, s.preset) == (
        4800,
        7,
        "E",
        1.0,
        b"SEND\r\n",
        "ptb330",
    )
    assert (s.interval_s, s.timeout_s, s.max_line) == (1.0, 1.0, 4096)
    assert s.parser == LineParser(PRESETS["ptb330"].line_regex, {"pressure": "hPa"})


def test_explicit_keys_override_the_preset() -> None:
    s = serial_settings(
        {
            "port": "socket://lab:4001",
            "preset": "ptb330",
            "baudrate": 19200,
            "bytesize": 8,
            "parity": "n",
            "stopbits": 2,
            "poll": "SEND 3\r",
            "interval_s": 0.5,
            "timeout_s": 2,
            "max_line": 256,
        }
    )
    assert (s.port, s.baudrate, s.bytesize, s.parity, s.stopbits, s.poll) == (
        "socket://lab:4001",
        19200,
        8,
        "N",
        2.0,
        b"SEND 3\r",
    )
    assert (s.interval_s, s.timeout_s, s.max_line, s.preset) == (0.5, 2.0, 256, "ptb330")
    assert s.parser == parser_of("ptb330")  # the format was not overridden


def test_poll_keeps_toml_escapes_as_bytes() -> None:
    # TOML "*0100P3\r\n" arrives as a str with a real CR LF.
    assert serial_settings({"port": PORT, "poll": "*0100P3\r\n"}).poll == b"*0100P3\r\n"


def test_empty_poll_turns_a_polled_preset_into_a_streaming_one() -> None:
    assert serial_settings({"port": PORT, "preset": "digiquartz", "poll": ""}).poll is None


def test_units_override_keeps_the_preset_regex() -> None:
    s = serial_settings({"port": PORT, "preset": "digiquartz", "units": {"pressure": "hPa"}})
    assert s.parser.line_regex == PRESETS["digiquartz"].line_regex
    assert s.parser.parse(b"*00011013.2500") == [(P, 101325.0)]


def test_regex_override_keeps_the_preset_units() -> None:
    s = serial_settings({"port": PORT, "preset": "ptb330", "line_regex": r"^(?P<pressure>\S+)\s+\S+$"})
    assert dict(s.parser.units) == {"pressure": "hPa"}
    assert s.parser.parse(b"1013.25 whatever") == [(P, 101325.0)]


def test_regex_override_drops_preset_units_it_cannot_carry() -> None:
    s = serial_settings({"port": PORT, "preset": "ptb330", "line_regex": r"^T=(?P<temperature>\S+)$"})
    assert s.parser.quantities == (T,)
    assert s.parser.parse(b"T=295.15") == [(T, 295.15)]  # kelvin: nothing said otherwise


def test_regex_without_preset_or_units_is_si() -> None:
    s = serial_settings({"port": PORT, "line_regex": r"(?P<pressure>\S+) (?P<temperature>\S+)"})
    assert dict(s.parser.units) == {"pressure": "Pa", "temperature": "K"}


def test_user_regex_with_both_quantities_in_kpa_and_celsius() -> None:
    s = serial_settings(
        {
            "port": PORT,
            "line_regex": r"P=(?P<pressure>\S+) kPa T=(?P<temperature>\S+) C",
            "units": {"pressure": "kPa", "temperature": "degC"},
        }
    )
    assert s.parser.quantities == (P, T)
    values = s.parser.parse(b"#3 P=101.325 kPa T=21.85 C\r\n")  # search, not match: a prefix is fine
    assert [q for q, _ in values] == [P, T]
    assert close(values[0][1], 101325.0) and close(values[1][1], 295.0)
    assert s.parser.parse(b"P=abc kPa T=21.85 C") == []  # one bad value spoils the line
    assert s.parser.parse(b"P=101.325 kPa T=nan C") == []


def test_an_optional_group_that_does_not_take_part_is_skipped() -> None:
    parser = LineParser(r"^(?P<pressure>[0-9.]+)(?: T=(?P<temperature>[0-9.]+))?$", {"temperature": "degC"})
    assert parser.parse(b"101325") == [(P, 101325.0)]
    assert parser.parse(b"101325 T=20") == [(P, 101325.0), (T, 293.15)]


def test_units_are_resolved_once_not_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = LineParser(r"(?P<pressure>\S+) (?P<temperature>\S+)", {"pressure": "psi", "temperature": "degF"})

    def boom(*_: Any) -> None:
        raise AssertionError("unit looked up while parsing")

    monkeypatch.setattr(units_module, "_resolve", boom)
    values = parser.parse(b"14.69595 32")
    assert close(values[0][1], 14.69595 * PSI) and close(values[1][1], 273.15)


# --- every bad option names its key --------------------------------------------------------------

BAD = [
    ({"port": PORT, "baud": 9600}, "baud"),
    ({"port": PORT, "name": "p_prk"}, "name"),
    ({}, "port"),
    ({"port": ""}, "port"),
    ({"port": 3}, "port"),
    ({"port": PORT, "preset": "digiquarz"}, "preset"),
    ({"port": PORT, "preset": 1}, "preset"),
    ({"port": PORT, "line_regex": "(?P<pressure>[0-9"}, "line_regex"),
    ({"port": PORT, "line_regex": r"(?P<p>\d+)"}, "line_regex"),
    ({"port": PORT, "line_regex": r"(\d+)"}, "line_regex"),
    ({"port": PORT, "line_regex": 5}, "line_regex"),
    ({"port": PORT, "units": {"humidity": "%RH"}}, "units"),
    ({"port": PORT, "units": {"pressure": "furlongs"}}, "units"),
    ({"port": PORT, "units": {"pressure": "degC"}}, "units"),
    ({"port": PORT, "units": {"pressure": 100}}, "units"),
    ({"port": PORT, "units": "hPa"}, "units"),
    ({"port": PORT, "units": {"temperature": "degC"}}, "units"),  # plain has no temperature group
    ({"port": PORT, "line_regex": r"(?P<temperature>\S+)", "units": {"temperature": "hPa"}}, "units"),
    ({"port": PORT, "parity": "X"}, "parity"),
    ({"port": PORT, "parity": "M"}, "parity"),
    ({"port": PORT, "parity": 0}, "parity"),
    ({"port": PORT, "bytesize": 4}, "bytesize"),
    ({"port": PORT, "bytesize": 9}, "bytesize"),
    ({"port": PORT, "bytesize": 7.0}, "bytesize"),
    ({"port": PORT, "stopbits": 0}, "stopbits"),
    ({"port": PORT, "stopbits": 1.25}, "stopbits"),
    ({"port": PORT, "stopbits": 3}, "stopbits"),
    ({"port": PORT, "stopbits": "1"}, "stopbits"),
    ({"port": PORT, "baudrate": 0}, "baudrate"),
    ({"port": PORT, "baudrate": -9600}, "baudrate"),
    ({"port": PORT, "baudrate": "9600"}, "baudrate"),
    ({"port": PORT, "baudrate": 9600.0}, "baudrate"),
    ({"port": PORT, "baudrate": True}, "baudrate"),
    ({"port": PORT, "interval_s": 0}, "interval_s"),
    ({"port": PORT, "interval_s": -1.0}, "interval_s"),
    ({"port": PORT, "interval_s": math.nan}, "interval_s"),
    ({"port": PORT, "interval_s": math.inf}, "interval_s"),
    ({"port": PORT, "timeout_s": 0.0}, "timeout_s"),
    ({"port": PORT, "timeout_s": "1"}, "timeout_s"),
    ({"port": PORT, "max_line": 0}, "max_line"),
    ({"port": PORT, "max_line": 1.5}, "max_line"),
    ({"port": PORT, "poll": "SENDé\r"}, "poll"),
    ({"port": PORT, "poll": 5}, "poll"),
]


@pytest.mark.parametrize(("options", "key"), BAD)
def test_bad_options_name_their_key(options: dict, key: str) -> None:
    with pytest.raises(OptionError) as info:
        serial_settings(options)
    assert info.value.key == key, info.value


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(OptionError) as info:
        serial_settings({"port": PORT, "preset": "nope"})
    for name in PRESETS:
        assert name in info.value.message


def test_line_parser_raises_option_errors_itself() -> None:
    with pytest.raises(OptionError) as info:
        LineParser("(", {})
    assert info.value.key == "line_regex"
    with pytest.raises(OptionError) as info:
        LineParser(r"(?P<pressure>\S+)", {"pressure": "nope"})
    assert info.value.key == "units"


# --- robustness ----------------------------------------------------------------------------------

PARSERS = [parser_of(name) for name in sorted(PRESETS)] + [
    LineParser(r"(?P<pressure>\S+)\s+(?P<temperature>\S+)", {"pressure": "psi", "temperature": "degF"}),
    LineParser(r"(?P<pressure>.*)", {"pressure": "bar"}),
]
NUMBERISH = st.text(alphabet="0123456789.-+eE *?#CPTR=hPambar:!\r\n\t", max_size=60).map(str.encode)


def check_output(parser: LineParser, values: list) -> None:
    assert isinstance(values, list)
    for quantity, value in values:
        assert quantity in parser.quantities
        assert isinstance(value, float) and math.isfinite(value)


@given(line=st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(line: bytes) -> None:
    for parser in PARSERS:
        check_output(parser, parser.parse(line))


@given(line=NUMBERISH)
def test_parse_never_raises_on_number_like_lines(line: bytes) -> None:
    for parser in PARSERS:
        check_output(parser, parser.parse(line))


def test_parse_huge_overflow_is_garbage() -> None:
    assert parser_of("plain").parse(b"1" + b"0" * 400) == []  # 1e400 Pa is not finite


def test_a_ten_megabyte_number_parses_quickly() -> None:
    # The presets' regexes are anchored and unambiguous, so a match is linear in the line's length.
    # (A user's unanchored regex may be quadratic: the driver's max_line bounds what it is given.)
    # Linear is about 0.5 s here and quadratic would be hours: 30 s leaves room for a slow CPU.
    line = b"7" * 10_000_000
    start = time.perf_counter()
    results = {name: parser_of(name).parse(line) for name in PRESETS}
    assert time.perf_counter() - start < 30.0
    assert results["plain"] == []  # it matches, but 7.7…e9999999 Pa overflows to inf: not a finite reading
    start = time.perf_counter()
    assert parser_of("plain").parse(b"0" * 10_000_000 + b"7") == [(P, 7.0)]
    assert parser_of("plain").parse(b"7" * 5_000_000 + b"x") == []
    assert time.perf_counter() - start < 30.0

"""ASCII serial transducers (Paroscientific, Vaisala, Honeywell, Druck, plain): settings, line parsing, replies.

Pure code, no I/O: `serial_settings()` turns a [[sensor]] table's driver options into what the
serial driver needs, `LineParser` turns a received line into SI values, and `Preset.render()`
writes a line the way the device would, for the simulator.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hullwatch.core.model import Quantity
from hullwatch.core.units import (
    UnitError,
    k_to_temperature,
    pa_to_pressure,
    pressure_converter,
    temperature_converter,
)
from hullwatch.sensors.base import OptionError, option, reject_unknown

__all__ = ["PRESETS", "SERIAL_KEYS", "LineParser", "Preset", "SerialSettings", "serial_settings"]

# A decimal number as the devices print it: 14.69595, -1.2345E02, .5, 7. An atomic group (the
# longest number, never given back digit by digit) keeps an anchored match linear in the line.
_NUM = r"(?>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_NUMBER = re.compile(_NUM, re.ASCII)

# The quantities a line may carry, with their unit resolvers (value in unit -> SI) and inverses.
_TO_SI: dict[Quantity, Callable[[str], Callable[[float], float]]] = {
    Quantity.PRESSURE: pressure_converter,
    Quantity.TEMPERATURE: temperature_converter,
}
_FROM_SI: dict[Quantity, Callable[[float, str], float]] = {
    Quantity.PRESSURE: pa_to_pressure,
    Quantity.TEMPERATURE: k_to_temperature,
}
_SI_UNIT = {Quantity.PRESSURE: "Pa", Quantity.TEMPERATURE: "K"}

_PARITIES = ("N", "E", "O")
MAX_INTERVAL_S = 3600.0  # longest poll interval and reply timeout: beyond it a value is a typo
DEFAULT_MAX_RATE_HZ = 50.0  # lines a second a streaming transducer may deliver (the excess is dropped, counted)
MAX_RATE_HZ = 10_000.0
_STOPBITS = (1.0, 1.5, 2.0)


@dataclass(frozen=True)
class Preset:
    """One transducer model's serial protocol: how to ask, what it answers, in which units."""

    name: str
    description: str
    line_regex: str
    units: Mapping[str, str]
    poll: bytes | None
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    eol: bytes = b"\r\n"
    _reply: str = field(default="", repr=False)  # str.format template of a reply line, in device units

    def render(self, values: Mapping[Quantity, float]) -> bytes:
        """A reply line in the device's own format and units from SI values (Pa, K); b"" if one is missing."""
        if not self._reply:
            raise ValueError(f"preset {self.name!r} has no reply format to render")
        fields: dict[str, float] = {}
        for _, name, _, _ in string.Formatter().parse(self._reply):
            if not name:
                continue
            quantity = Quantity(name)
            value = values.get(quantity)
            if value is None or not math.isfinite(value):
                return b""  # nothing sensible to say: the device stays silent
            fields[name] = _FROM_SI[quantity](value, self.units.get(name, _SI_UNIT[quantity]))
        return self._reply.format(**fields).encode("ascii") + self.eol


def _preset(
    name: str, description: str, line_regex: str, units: dict[str, str], poll: bytes | None, reply: str, **serial: Any
) -> Preset:
    """A table row: a Preset with read-only units and its reply format."""
    return Preset(name, description, line_regex, MappingProxyType(units), poll, _reply=reply, **serial)


# Where each format comes from (manuals as stored on manualshive.com, manualslib.com, manualsdir.com,
# azmanual.top; the Paroscientific and Druck serial defaults were not found in a manual: they are the
# ones public drivers use).
# - digiquartz: Paroscientific "Digiquartz Broadband Intelligent Instruments with RS-232 and RS-485
#   Interfaces" (doc. 8819-001) and public drivers: `*0100P3<CR><LF>` asks unit 01 for one pressure;
#   the reply `*0001<value>` goes to host 00 from unit 01, psia by default (UN=1). 9600 8N1.
# - ptb330: Vaisala "BAROCAP Digital Barometer PTB330 User's Guide" (M210855EN): SEND outputs the
#   reading once (`pressure = 1013.02 hPa` there, `P= 1013.2 hPa` in the PTU300 sibling's guide: the
#   label comes from the user-set FORM string, so it is optional here; the unit is required, so a
#   barometer switched to another unit is unreadable rather than misread). The `?` listing shows the
#   factory user port `Baud P D S : 4800 E 7 1`. The manual ends commands in CR; the poll adds LF as
#   public drivers do (not tried on a device: set `poll = "SEND\r"` if the barometer minds it).
#   Set ECHO OFF: an echoed command line is not a reading.
# - honeywell_ppt: Honeywell "PPT and PPTR User's Manual" (section 3 quick reference, 5.5 ASCII
#   replies, table 5.4 factory defaults BP=N9600, DU=PSI): `*00P1<CR>` asks the null-address unit for
#   one pressure; the reply is `?01CP= 14.450<CR>` (`#` for `?` from an assigned address; `!` for `=`
#   when out of range or after an EEPROM error, `=..` before the first reading: neither is read).
# - druck_dps8000: Druck / Baker Hughes "TERPS 8000/8100/8200/8300 Series Instruction Manual" (6.3,
#   6.4.1): `<SPACE>R<CR>` gets a reading (the space also stops a direct-mode stream); the reply is
#   `<value>[<units>]<CR>` (units only after `*A`, an `n:` address prefix in addressed mode). The
#   unit is the user's choice (U command): mbar is assumed. 9600 8N1 as in public DPS8000 drivers.
# - plain, plain_temperature: one number per line (Pa, K), streamed: simple in-house transmitters
#   and the simulator's thermometers.
_TABLE: tuple[Preset, ...] = (
    _preset(
        "digiquartz",
        "Paroscientific Digiquartz intelligent transmitter (Series 1000/6000/9000), P3: one pressure, psia",
        rf"^\*\d{{4}}(?P<pressure>{_NUM})$",
        {"pressure": "psi"},
        b"*0100P3\r\n",
        "*0001{pressure:.5f}",
    ),
    _preset(
        "ptb330",
        "Vaisala BAROCAP PTB330 digital barometer, SEND: one reading, hPa",
        rf"^>?\s*(?:(?:P|pressure)\s*=\s*)?(?P<pressure>{_NUM})\s*hPa\b",
        {"pressure": "hPa"},
        b"SEND\r\n",
        "P = {pressure:8.2f} hPa",
        baudrate=4800,
        bytesize=7,
        parity="E",
    ),
    _preset(
        "honeywell_ppt",
        "Honeywell PPT/PPTR precision pressure transducer, P1: one pressure (ASCII), psia",
        rf"^[?#]\d{{2}}CP=\s*(?P<pressure>{_NUM})$",
        {"pressure": "psi"},
        b"*00P1\r",
        "?01CP={pressure: .4f}",
        eol=b"\r",
    ),
    _preset(
        "druck_dps8000",
        "Druck (Baker Hughes) DPS8000 TERPS pressure transducer, RS-485/RS-232 ASCII, R: one reading, mbar",
        rf"^(?:\d{{1,2}}:)?\s*(?P<pressure>{_NUM})\s*,?\s*(?i:mbar)?$",
        {"pressure": "mbar"},
        b" R\r",
        "{pressure:.3f}",
        eol=b"\r",
    ),
    _preset(
        "plain",
        "Generic streaming transmitter: one number per line, Pa",
        rf"^(?P<pressure>{_NUM})$",
        {"pressure": "Pa"},
        None,
        "{pressure:.3f}",
    ),
    _preset(
        "plain_temperature",
        "Generic streaming thermometer: one number per line, K",
        rf"^(?P<temperature>{_NUM})$",
        {"temperature": "K"},
        None,
        "{temperature:.4f}",
    ),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _TABLE})

SERIAL_KEYS: frozenset[str] = frozenset(
    {
        "port",
        "baudrate",
        "bytesize",
        "parity",
        "stopbits",
        "line_regex",
        "units",
        "poll",
        "interval_s",
        "timeout_s",
        "preset",
        "max_line",
        "max_rate_hz",
    }
)


class LineParser:
    """Reads one device line into SI values with a regex (named groups `pressure`, `temperature`) and units."""

    def __init__(self, line_regex: str, units: Mapping[str, str]) -> None:
        if not isinstance(line_regex, str):
            raise OptionError("line_regex", f"must be a string, not {line_regex!r}")
        try:
            self._regex = re.compile(line_regex)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise OptionError("line_regex", f"does not compile: {exc}") from None
        groups = self._regex.groupindex
        self.quantities: tuple[Quantity, ...] = tuple(q for q in _TO_SI if q.value in groups)
        if not self.quantities:
            raise OptionError("line_regex", "needs a named group (?P<pressure>...) and/or (?P<temperature>...)")
        if not isinstance(units, Mapping):
            raise OptionError("units", f'must be a table like {{ pressure = "hPa" }}, not {units!r}')
        for key, unit in units.items():
            if key not in (q.value for q in _TO_SI):
                raise OptionError("units", f"unknown quantity {key!r} (known: pressure, temperature)")
            if Quantity(key) not in self.quantities:
                raise OptionError("units", f"{key} is given but line_regex has no (?P<{key}>...) group")
            if not isinstance(unit, str):
                raise OptionError("units", f"{key}: the unit must be a string, not {unit!r}")
        converters: list[tuple[Quantity, Callable[[float], float]]] = []
        resolved: dict[str, str] = {}
        for quantity in self.quantities:
            unit = units.get(quantity.value, _SI_UNIT[quantity])
            try:
                converters.append((quantity, _TO_SI[quantity](unit)))
            except UnitError as exc:
                raise OptionError("units", f"{quantity.value}: {exc}") from None
            resolved[quantity.value] = unit
        self._converters = tuple(converters)
        self.line_regex = line_regex
        self.units: Mapping[str, str] = MappingProxyType(resolved)

    def parse(self, line: bytes) -> list[tuple[Quantity, float]]:
        """The SI values on one line; [] if it does not match or a value is not a finite number. Never raises."""
        try:
            text = bytes(line).decode("latin-1").strip()
            m = self._regex.search(text)
            if m is None:
                return []
            out: list[tuple[Quantity, float]] = []
            for quantity, to_si in self._converters:
                raw = m.group(quantity.value)
                if raw is None:  # an optional group that did not take part
                    continue
                raw = raw.strip()
                if _NUMBER.fullmatch(raw) is None:
                    return []
                value = to_si(float(raw))
                if not math.isfinite(value):
                    return []
                out.append((quantity, value))
            return out
        except Exception:  # a line is data, never a reason to stop reading: garbage it is
            return []

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineParser):
            return NotImplemented
        return (self.line_regex, dict(self.units)) == (other.line_regex, dict(other.units))

    def __hash__(self) -> int:
        return hash((self.line_regex, tuple(sorted(self.units.items()))))

    def __repr__(self) -> str:
        return f"LineParser({self.line_regex!r}, {dict(self.units)!r})"


# The presets' parsers, built (and so validated) once at import.
_PRESET_PARSERS: Mapping[str, LineParser] = MappingProxyType(
    {name: LineParser(p.line_regex, p.units) for name, p in PRESETS.items()}
)


@dataclass(frozen=True)
class SerialSettings:
    """Everything the serial driver needs for one transducer."""

    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    poll: bytes | None
    interval_s: float
    timeout_s: float
    max_line: int
    parser: LineParser
    preset: str | None
    max_rate_hz: float = DEFAULT_MAX_RATE_HZ  # lines a second taken at most; the excess is dropped and counted


def serial_settings(options: Mapping[str, Any]) -> SerialSettings:
    """Settings from a [[sensor]] table's driver options: a preset's defaults, overridden by explicit keys."""
    reject_unknown(options, SERIAL_KEYS)
    preset_name = option(options, "preset", str, None)
    base: Preset | None = None
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise OptionError("preset", f"unknown preset {preset_name!r} (known: {', '.join(PRESETS)})")
        base = PRESETS[preset_name]
    defaults = base or PRESETS["plain"]

    port = option(options, "port", str)
    if not port.strip():
        raise OptionError("port", "must not be empty")
    baudrate = option(options, "baudrate", int, defaults.baudrate)
    if baudrate <= 0:
        raise OptionError("baudrate", f"must be positive, not {baudrate}")
    bytesize = option(options, "bytesize", int, defaults.bytesize)
    if not 5 <= bytesize <= 8:
        raise OptionError("bytesize", f"must be 5, 6, 7 or 8, not {bytesize}")
    parity = option(options, "parity", str, defaults.parity).upper()
    if parity not in _PARITIES:
        raise OptionError("parity", f'must be "N", "E" or "O", not {options.get("parity")!r}')
    stopbits = float(option(options, "stopbits", (int, float), defaults.stopbits))
    if stopbits not in _STOPBITS:
        raise OptionError("stopbits", f"must be 1, 1.5 or 2, not {options.get('stopbits')!r}")

    poll = defaults.poll
    if "poll" in options:
        text = option(options, "poll", str)
        try:
            poll = text.encode("ascii") or None  # poll = "" : the device streams by itself
        except UnicodeEncodeError:
            raise OptionError("poll", f"must be ASCII, not {text!r}") from None

    interval_s = _positive(options, "interval_s", 1.0, MAX_INTERVAL_S)
    timeout_s = _positive(options, "timeout_s", 1.0, MAX_INTERVAL_S)
    max_line = option(options, "max_line", int, 4096)
    if max_line <= 0:
        raise OptionError("max_line", f"must be a positive number of bytes, not {max_line}")
    # a polled device answers once per poll: room for twice that; a streaming one gets the default
    default_rate = max(DEFAULT_MAX_RATE_HZ, 2.0 / interval_s) if poll is not None else DEFAULT_MAX_RATE_HZ
    max_rate_hz = float(option(options, "max_rate_hz", (int, float), default_rate))
    if not (math.isfinite(max_rate_hz) and 0 < max_rate_hz <= MAX_RATE_HZ):
        raise OptionError("max_rate_hz", f"must be above 0 and at most {MAX_RATE_HZ:g} lines a second, not "
                          f"{options.get('max_rate_hz')!r}")  # fmt: skip

    return SerialSettings(
        port,
        baudrate,
        bytesize,
        parity,
        stopbits,
        poll,
        interval_s,
        timeout_s,
        max_line,
        _parser(options, base),
        preset_name,
        max_rate_hz,
    )


def _parser(options: Mapping[str, Any], base: Preset | None) -> LineParser:
    """The line parser: the preset's (or plain's), or one built from line_regex and/or units."""
    line_regex = option(options, "line_regex", str, None)
    units = option(options, "units", dict, None)
    source = base or PRESETS["plain"]
    if line_regex is None and units is None:
        return _PRESET_PARSERS[source.name]
    if line_regex is None:
        return LineParser(source.line_regex, units)
    if units is None:
        # The device still speaks its preset's units; keep those the new regex can carry (SI without a preset).
        inherited = base.units if base else {}
        groups = _group_names(line_regex)
        units = {k: v for k, v in inherited.items() if k in groups}
    return LineParser(line_regex, units)


def _group_names(line_regex: str) -> frozenset[str]:
    """The named groups of a regex; empty if it does not compile (LineParser then says why)."""
    try:
        return frozenset(re.compile(line_regex).groupindex)
    except (re.error, OverflowError, RecursionError, ValueError):
        return frozenset()


def _positive(options: Mapping[str, Any], key: str, default: float, most: float) -> float:
    """A number of seconds above 0 and at most `most`."""
    value = option(options, key, (int, float), default)
    if not (math.isfinite(value) and 0 < value <= most):
        raise OptionError(key, f"must be above 0 and at most {most:g} s, not {options.get(key)!r}")
    return float(value)

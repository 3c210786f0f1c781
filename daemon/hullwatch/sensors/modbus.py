"""Modbus RTU pressure/temperature transmitters (`driver = "modbus"`): poll registers, scale, convert, emit.

The protocol is minimalmodbus's (2.1+): one pure-Python file whose only dependency is pyserial, and whose
`Instrument` accepts an already-open serial object, so the port can come from `serial.serial_for_url()`
(device path, pty, `socket://`, `loop://`) — pymodbus is a far heavier stack for a Pi Zero, and umodbus has had
no release since 2020.

Each reading is one register block (1 register for int16/uint16, 2 for int32/uint32/float32, high word first
when `word_order = "big"`), read with function 3 (holding) or 4 (input) every `interval_s`; its value is
raw × scale + offset in `unit`, converted to SI (Pa, K). A reading that fails — no reply within
`timeout_s`, a bad CRC or malformed frame, an exception response, a non-finite value — is counted, logged
once per episode and emits nothing; the third failure in a row emits one BAD (NaN) sample for that reading,
once per episode. A port that is missing or vanishes is closed and reopened with backoff, logged once per
episode. `run` never raises and returns within about READ_SLICE_S of `stop` being set, whatever `timeout_s`
is: responses are awaited in short slices that look at `stop` between them.

Several transmitters on one RS-485 bus are several [[sensor]] tables with the same `port` (and the same
serial settings) and their own `slave`: their drivers take turns on the bus, one transaction at a time,
so no request is sent while another slave is answering and every reply reaches the driver that asked.

Options (the [[sensor]] table less name/segment/driver):

    port = "/dev/ttyUSB0"      # required: a device path or a pyserial URL
    slave = 1                  # required: 1..247
    baudrate = 9600            # bytesize = 8, parity = "N" | "E" | "O", stopbits = 1 | 1.5 | 2
    timeout_s = 0.5            # how long to wait for a reply
    interval_s = 1.0           # how often to read every register block
    registers = [
      { quantity = "pressure", address = 0, function = 3, type = "float32", word_order = "big",
        scale = 1.0, offset = 0.0, unit = "hPa" },
      { quantity = "temperature", address = 2, function = 4, type = "int16", scale = 0.1, unit = "degC" },
    ]

In a `registers` entry `quantity` ("pressure" | "temperature") and `address` (0..65535) are required;
`function` defaults to 3, `type` to "float32", `word_order` to "big", `scale` to 1, `offset` to 0 and
`unit` to the quantity's SI unit (Pa, K). For a single reading the entry's keys may sit directly on the
sensor table instead of `registers`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hullwatch import timebase
from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.core.units import UnitError, pressure_converter, temperature_converter
from hullwatch.sensors.base import Backoff, Emit, Episode, OptionError, option, reject_unknown

try:
    from termios import error as _TermiosError  # tcflush on a hung-up tty raises this, which is no OSError
except ImportError:  # not POSIX
    _TermiosError = OSError

log = logging.getLogger("hullwatch.sensors.modbus")

UNREADABLE_AFTER = 3  # consecutive failures of a reading before one BAD sample says it is unreadable
READ_SLICE_S = 0.1  # longest single blocking read: bounds the reaction to stop
WRITE_TIMEOUT_S = 0.5  # a request is 8 bytes; a port that cannot take them is broken
MAX_INTERVAL_S = 3600.0  # a reading at least every hour (a far longer wait overflows the thread's timer)
MAX_TIMEOUT_S = 60.0  # a reply longer in coming than a minute is no reply

# Register types and how many 16-bit registers each spans.
TYPES: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
WORD_ORDERS = ("big", "little")
FUNCTIONS = (3, 4)  # read holding registers, read input registers
PARITIES = ("N", "E", "O")
STOPBITS = (1, 1.5, 2)
SI_UNITS = {Quantity.PRESSURE: "Pa", Quantity.TEMPERATURE: "K"}
_CONVERTERS: dict[Quantity, Callable[[str], Callable[[float], float]]] = {
    Quantity.PRESSURE: pressure_converter,
    Quantity.TEMPERATURE: temperature_converter,
}

READING_KEYS = frozenset({"quantity", "address", "function", "type", "word_order", "scale", "offset", "unit"})
MODBUS_KEYS: frozenset[str] = frozenset(
    {"port", "baudrate", "bytesize", "parity", "stopbits", "slave", "timeout_s", "interval_s", "registers"}
    | READING_KEYS
)


def decode(registers: Sequence[int], kind: str, word_order: str = "big") -> float:
    """The number held in a register block (16-bit words, each big-endian as Modbus sends them)."""
    if TYPES[kind] == 1:
        raw = registers[0] & 0xFFFF
        return float(raw - 0x10000 if kind == "int16" and raw & 0x8000 else raw)
    hi, lo = (registers[0], registers[1]) if word_order == "big" else (registers[1], registers[0])
    raw = (hi & 0xFFFF) << 16 | (lo & 0xFFFF)
    if kind == "float32":
        return struct.unpack(">f", raw.to_bytes(4, "big"))[0]
    return float(raw - 0x1_0000_0000 if kind == "int32" and raw & 0x8000_0000 else raw)


@dataclass(frozen=True, slots=True)
class Reading:
    """One register block and how to turn it into an SI value."""

    quantity: Quantity
    address: int
    function: int = 3
    type: str = "float32"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = "Pa"
    to_si: Callable[[float], float] = field(default=float, compare=False, repr=False)

    @property
    def count(self) -> int:
        """How many registers the block spans."""
        return TYPES[self.type]

    def value(self, registers: Sequence[int]) -> float:
        """The SI value of a block as read (may be non-finite: callers check)."""
        return self.to_si(decode(registers, self.type, self.word_order) * self.scale + self.offset)

    def describe(self) -> str:
        """E.g. `pressure@3:0`: quantity, function and address, for log lines."""
        return f"{self.quantity.value}@{self.function}:{self.address}"


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """A validated [[sensor]] table for the modbus driver."""

    port: str
    slave: int
    readings: tuple[Reading, ...]
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    timeout_s: float = 0.5
    interval_s: float = 1.0

    @property
    def line(self) -> tuple[int, int, str, float]:
        """The serial line's settings, which every slave on one bus shares."""
        return self.baudrate, self.bytesize, self.parity, self.stopbits

    def describe_line(self) -> str:
        """E.g. `9600 8N1`."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits:g}"


def modbus_settings(options: Mapping[str, Any]) -> ModbusSettings:
    """Validate the driver options (no I/O); OptionError names the offending key."""
    reject_unknown(options, MODBUS_KEYS)
    port = option(options, "port", str)
    if not port.strip():
        raise OptionError("port", "must not be empty (a device path such as /dev/ttyUSB0, or a pyserial URL)")
    slave = option(options, "slave", int)
    if not 1 <= slave <= 247:
        raise OptionError("slave", f"must be a Modbus slave address 1..247, not {slave}")
    baudrate = option(options, "baudrate", int, 9600)
    if baudrate <= 0:
        raise OptionError("baudrate", f"must be positive, not {baudrate}")
    bytesize = option(options, "bytesize", int, 8)
    if bytesize not in (5, 6, 7, 8):
        raise OptionError("bytesize", f"must be 5, 6, 7 or 8, not {bytesize}")
    parity = option(options, "parity", str, "N").upper()
    if parity not in PARITIES:
        raise OptionError("parity", f'must be "N", "E" or "O", not {options["parity"]!r}')
    stopbits = option(options, "stopbits", (int, float), 1.0)
    if stopbits not in STOPBITS:
        raise OptionError("stopbits", f"must be 1, 1.5 or 2, not {options['stopbits']!r}")
    timeout_s = _seconds(options, "timeout_s", 0.5, MAX_TIMEOUT_S)
    interval_s = _seconds(options, "interval_s", 1.0, MAX_INTERVAL_S)
    return ModbusSettings(
        port=port,
        slave=slave,
        readings=_readings(options),
        baudrate=baudrate,
        bytesize=bytesize,
        parity=parity,
        stopbits=int(stopbits) if stopbits.is_integer() else stopbits,
        timeout_s=timeout_s,
        interval_s=interval_s,
    )


def _seconds(options: Mapping[str, Any], key: str, default: float, most: float) -> float:
    """A number of seconds above 0 and at most `most`."""
    value = option(options, key, (int, float), default)
    if not (math.isfinite(value) and 0 < value <= most):
        raise OptionError(key, f"must be above 0 and at most {most:g} s, not {value!r}")
    return value


def _readings(options: Mapping[str, Any]) -> tuple[Reading, ...]:
    """The `registers` list, or the single reading written on the sensor table itself."""
    shorthand = [k for k in options if k in READING_KEYS]
    if "registers" in options:
        if shorthand:
            raise OptionError(shorthand[0], "not allowed together with `registers` (put it in a registers entry)")
        entries = options["registers"]
        if not isinstance(entries, list) or not entries:
            raise OptionError(
                "registers", "must be a non-empty list of tables, e.g. [{ quantity = ..., address = ... }]"
            )
        readings: list[Reading] = []
        for i, entry in enumerate(entries):
            where = f"registers[{i}]"
            if not isinstance(entry, Mapping):
                raise OptionError(where, f"must be a table, not {entry!r}")
            try:
                readings.append(_reading(entry))
            except OptionError as exc:
                raise OptionError(f"{where}.{exc.key}", exc.message) from None
    elif shorthand:
        readings = [_reading({k: options[k] for k in shorthand})]
    else:
        raise OptionError("registers", "missing (required): a registers list, or quantity and address on the sensor")
    seen: dict[Quantity, int] = {}
    for i, r in enumerate(readings):
        if r.quantity in seen:
            key = f"registers[{i}].quantity" if "registers" in options else "quantity"
            raise OptionError(key, f"{r.quantity.value} is already read by registers[{seen[r.quantity]}]")
        seen[r.quantity] = i
    return tuple(readings)


def _reading(t: Mapping[str, Any]) -> Reading:
    """One register block's table (keys relative to the table)."""
    reject_unknown(t, READING_KEYS)
    name = option(t, "quantity", str)
    quantity = next((q for q in SI_UNITS if q.value == name), None)
    if quantity is None:
        raise OptionError("quantity", f'must be "pressure" or "temperature", not {name!r}')
    kind = option(t, "type", str, "float32")
    if kind not in TYPES:
        raise OptionError("type", f"must be one of {', '.join(TYPES)}, not {kind!r}")
    address = option(t, "address", int)
    if not 0 <= address <= 0x10000 - TYPES[kind]:
        raise OptionError("address", f"must be 0..{0x10000 - TYPES[kind]} for a {kind}, not {address}")
    function = option(t, "function", int, 3)
    if function not in FUNCTIONS:
        raise OptionError("function", f"must be 3 (holding registers) or 4 (input registers), not {function}")
    word_order = option(t, "word_order", str, "big")
    if word_order not in WORD_ORDERS:
        raise OptionError("word_order", f'must be "big" (high word first) or "little", not {word_order!r}')
    scale = option(t, "scale", (int, float), 1.0)
    if not math.isfinite(scale) or scale == 0:
        raise OptionError("scale", f"must be a finite, non-zero number, not {scale!r}")
    offset = option(t, "offset", (int, float), 0.0)
    if not math.isfinite(offset):
        raise OptionError("offset", f"must be a finite number, not {offset!r}")
    unit = option(t, "unit", str, SI_UNITS[quantity])
    try:
        to_si = _CONVERTERS[quantity](unit)
    except UnitError as exc:
        raise OptionError("unit", str(exc)) from None
    return Reading(quantity, address, function, kind, word_order, scale, offset, unit, to_si)


class _Bus:
    """One serial device and the slaves on it: one transaction at a time.

    RS-485 has one master talking at a time, and a reply must reach the driver that asked for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quiet_until = 0.0  # a reply its driver stopped waiting for may still be coming until then

    def take(self, stop: threading.Event) -> bool:
        """Wait for the bus (True) or until stop is set (False)."""
        while not stop.is_set():
            if not self._lock.acquire(timeout=READ_SLICE_S):
                continue
            quiet = self._quiet_until - time.monotonic()
            if quiet <= 0.0 or not stop.wait(quiet):
                return True
            self._lock.release()
        return False

    def release(self, reply_due_s: float = 0.0) -> None:
        """Let the next driver talk; not before `reply_due_s` from now if a reply was left coming."""
        if reply_due_s > 0.0:
            self._quiet_until = time.monotonic() + reply_due_s
        self._lock.release()


_BUSES: dict[str, _Bus] = {}  # serial device -> its bus
_BUSES_GUARD = threading.Lock()


def _bus(port: str) -> _Bus:
    """The bus every driver on `port` takes turns on."""
    if port.lower().startswith("loop://"):  # a port of its own each time it is opened
        return _Bus()
    key = port if "://" in port else os.path.realpath(port)  # the device behind a /dev/serial/by-id/ link
    with _BUSES_GUARD:
        return _BUSES.setdefault(key, _Bus())


class _StopAwarePort:
    """A pyserial port whose read() waits up to `timeout_s` for the bytes asked for, in slices that watch stop.

    The port itself is opened with a timeout of at most READ_SLICE_S; everything else is passed through, so
    minimalmodbus sees an ordinary serial object.
    """

    def __init__(self, port: Any, timeout_s: float, stop: threading.Event) -> None:
        self._port = port
        self._timeout_s = timeout_s
        self._stop = stop
        self.cut_short = False  # a read ended by stop, its reply perhaps still coming

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes: fewer on timeout, or once stop is set."""
        deadline = time.monotonic() + self._timeout_s
        data = bytearray()
        while len(data) < size:
            if self._stop.is_set():
                self.cut_short = True
                break
            data += self._port.read(size - len(data))
            if time.monotonic() >= deadline:
                break
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


class _ReadingState:
    """What the poll loop remembers about one reading between cycles."""

    def __init__(self, sensor: str, reading: Reading) -> None:
        self.reading = reading
        self.failures_in_a_row = 0
        self.trouble = Episode(log, f"{sensor}: {reading.describe()}")


class ModbusDriver:
    """One Modbus RTU transmitter (one slave on one port) read for one or more quantities."""

    def __init__(self, name: str, settings: ModbusSettings) -> None:
        self.name = name
        self.settings = settings
        self.readings_ok = 0  # good values emitted
        self.failures = 0  # failed readings (timeouts, CRC, exception responses, non-finite values)
        self.reconnects = 0  # the port came back after trouble
        self._bus = _bus(settings.port)  # shared with the other slaves on the port

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> ModbusDriver:
        """Build from the [[sensor]] table's driver options (no I/O); OptionError names the key."""
        return cls(name, modbus_settings(options))

    @property
    def quantities(self) -> dict[str, tuple[Quantity, ...]]:
        """What the sensor reports: one quantity per register reading."""
        return {self.name: tuple(r.quantity for r in self.settings.readings)}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Open, poll and reopen the port until stop is set. Never raises."""
        try:
            import minimalmodbus
            import serial  # pyserial
        except ImportError as exc:
            log.error("%s: cannot read Modbus devices: %s (pip install minimalmodbus)", self.name, exc)
            stop.wait()
            return
        try:
            self._run(emit, stop, serial, minimalmodbus)
        except Exception:  # the loop handles everything it knows; this is a bug, and the thread must end quietly
            log.exception("%s: Modbus driver failed", self.name)

    def _run(self, emit: Emit, stop: threading.Event, serial: Any, minimalmodbus: Any) -> None:
        s = self.settings
        port_trouble = Episode(log, f"{self.name}: port {s.port}")
        backoff = Backoff()
        states = [_ReadingState(self.name, r) for r in s.readings]
        while self._bus.take(stop):  # opening flushes the port's input: not while another slave answers
            try:
                port = serial.serial_for_url(
                    s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits,
                    timeout=min(s.timeout_s, READ_SLICE_S), write_timeout=WRITE_TIMEOUT_S,
                )  # fmt: skip
            except (serial.SerialException, OSError, ValueError) as exc:
                port, failure = None, exc
            finally:
                self._bus.release()
            if port is None:
                port_trouble.happened(f"cannot open ({failure}); retrying")
                stop.wait(backoff.next())
                continue
            log.info("%s: reading slave %d on %s", self.name, s.slave, s.port)
            try:
                instrument = minimalmodbus.Instrument(_StopAwarePort(port, s.timeout_s, stop), s.slave)
                self._poll(instrument, states, emit, stop, minimalmodbus, port_trouble, backoff)
            except (serial.SerialException, OSError, _TermiosError) as exc:  # ModbusException was handled inside
                port_trouble.happened(f"lost ({exc}); reopening")
                stop.wait(backoff.next())
            except Exception:  # a bug must not kill the thread
                log.exception("%s: unexpected error; reopening the port", self.name)
                stop.wait(backoff.next())
            finally:
                with contextlib.suppress(Exception):  # closing a vanished port may fail too
                    port.close()

    def _poll(
        self, instrument: Any, states: list[_ReadingState], emit: Emit, stop: threading.Event, minimalmodbus: Any,
        port_trouble: Episode, backoff: Backoff,
    ) -> None:  # fmt: skip
        """Read every block each interval until stop is set; serial errors propagate."""
        next_cycle = time.monotonic()
        while not stop.is_set():
            for state in states:
                if stop.is_set():
                    return
                self._read(instrument, state, emit, stop, minimalmodbus)
            if port_trouble.active:  # a whole cycle went through: the port works again
                self.reconnects += 1
                port_trouble.over()
            backoff.reset()
            now = time.monotonic()
            next_cycle = max(next_cycle + self.settings.interval_s, now)
            stop.wait(next_cycle - now)

    def _read(
        self, instrument: Any, state: _ReadingState, emit: Emit, stop: threading.Event, minimalmodbus: Any
    ) -> None:
        """Read one block and emit its sample, or count the failure (and report BAD on the third in a row)."""
        r = state.reading
        if not self._bus.take(stop):
            return
        reply_due = time.monotonic() + self.settings.timeout_s
        try:
            registers = instrument.read_registers(r.address, r.count, r.function)
            value = r.value(registers)
            problem = None if math.isfinite(value) else f"non-finite value {value} from registers {registers}"
        except minimalmodbus.NoResponseError:
            problem = f"no response within {self.settings.timeout_s:g} s"
        except minimalmodbus.SlaveReportedException as exc:
            problem = f"exception response ({exc})"
        except minimalmodbus.ModbusException as exc:  # bad CRC, wrong length or address, garbage
            problem = f"invalid response ({type(exc).__name__}: {str(exc)[:200]})"
        finally:
            # a read cut short by stop leaves its reply coming: the next request waits it out (what a
            # collision would cost it anyway, with a garbled reply besides)
            self._bus.release(reply_due - time.monotonic() if instrument.serial.cut_short else 0.0)
        arrived = timebase.now()
        if problem is not None:
            if stop.is_set():  # the read may have been cut short by stop: not the device's fault
                return
            self.failures += 1
            state.failures_in_a_row += 1
            state.trouble.happened(problem)
            if state.failures_in_a_row == UNREADABLE_AFTER:
                emit(Sample(arrived, self.name, r.quantity, math.nan, Quality.BAD))
            return
        self.readings_ok += 1
        state.failures_in_a_row = 0
        state.trouble.over()
        emit(Sample(arrived, self.name, r.quantity, value))

"""GPIO devices on the Pi through gpiozero: MCP3008 analog transducers, hatch reed switches, the ack button.

Every class takes an injectable `pin_factory` (gpiozero's own seam: None means gpiozero's default,
tests pass a `MockFactory`). gpiozero is imported lazily, inside `run` and constructors, so the
package imports (and `check-config` validates) on a machine without it.

- `Mcp3008Driver` (`driver = "mcp3008"`): a 0.5–4.5 V or 4–20 mA (through a shunt) transducer on an
  MCP3008 channel, over hardware SPI (`port`/`device`) or bit-banged SPI on any four pins. Each
  sample averages `samples` conversions; a conversion at either rail (open or shorted wire) makes the
  sample BAD (NaN) instead of bending the average.
- `ReedHatchDriver` (a `[[hatch]]` with `gpio`): 1 open / 0 closed, emitted at start, on every edge
  and again every `heartbeat_s` (re-read from the pin, which also repairs an edge lost to debouncing).
  It is a `DigitalInputDevice`, i.e. a `Button` without the hold thread that would make closing a
  closed switch wait for `hold_time`.
- `AckButton` (`[annunciator] ack_button_gpio`): short press and long press callbacks, guarded so a
  failing callback is logged and never reaches gpiozero's threads.

Drivers follow base.py: `from_options` does no I/O; `run` never raises, logs each problem once per
episode and retries with backoff until stop is set, then closes the device.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hullwatch import timebase
from hullwatch.core import units
from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.sensors.base import Backoff, Emit, Episode, OptionError, option, reject_unknown

log = logging.getLogger("hullwatch.sensors.gpio")

MCP3008_KEYS: frozenset[str] = frozenset(
    {
        "channel",
        "quantity",
        "vref_v",
        "calibration",
        "unit",
        "divider",
        "interval_s",
        "samples",
        "port",
        "device",
        "select_pin",
        "clock_pin",
        "mosi_pin",
        "miso_pin",
    }
)
REED_KEYS: frozenset[str] = frozenset({"gpio", "closed_level", "debounce_s", "heartbeat_s"})
SOFTWARE_SPI_KEYS: tuple[str, ...] = ("select_pin", "clock_pin", "mosi_pin", "miso_pin")
CALIBRATION_KEYS: frozenset[str] = frozenset({"volts", "values"})

BCM_PINS = range(0, 28)  # GPIO0..GPIO27 on the 40-pin header
RAIL_LOW = 0.001  # fraction of full scale at or below which a conversion means an open or grounded input
RAIL_HIGH = 0.999  # ... at or above which it means an input shorted to the supply
MAX_VREF_V = 5.5  # the MCP3008's VDD (and so VREF) limit
MAX_SAMPLES = 1000
DEFAULT_UNITS = {Quantity.PRESSURE: "Pa", Quantity.TEMPERATURE: "K"}


def gpiozero_module() -> ModuleType:
    """The gpiozero module, or a RuntimeError saying how to install it."""
    try:
        import gpiozero
    except ImportError as exc:
        raise RuntimeError("gpiozero is not installed: pip install gpiozero") from exc
    return gpiozero


def _close(device: Any, what: str) -> None:
    """Close a gpiozero device, logging (not raising) if that fails too."""
    if device is None:
        return
    try:
        device.close()
    except Exception as exc:  # a device that failed may fail to close as well
        log.debug("%s: close failed: %s", what, exc)


def _number(options: Mapping[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = True) -> float:
    """A finite number option within (lo, hi] (or [lo, hi] when lo_open is false)."""
    value = option(options, key, (int, float), default)
    value = float(value)
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        bracket = "(" if lo_open else "["
        raise OptionError(key, f"must be in {bracket}{lo:g}, {hi:g}], not {value:g}")
    return value


def _integer(options: Mapping[str, Any], key: str, valid: range, default: Any = ...) -> int:
    """An integer option within `valid`."""
    value = option(options, key, int, default)
    if value not in valid:
        raise OptionError(key, f"must be {valid.start}..{valid.stop - 1}, not {value}")
    return value


def _pair(calibration: Mapping[str, Any], key: str) -> tuple[float, float]:
    """`calibration.<key>`: a list of two finite numbers."""
    where = f"calibration.{key}"
    if key not in calibration:
        raise OptionError(where, "missing (required): a list of two numbers")
    value = calibration[key]
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise OptionError(where, f"must be a list of two numbers, not {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (math.isfinite(a) and math.isfinite(b)):
        raise OptionError(where, f"must be finite, not {value!r}")
    return a, b


@dataclass(frozen=True, slots=True)
class Mcp3008Settings:
    """A validated `driver = "mcp3008"` [[sensor]]."""

    channel: int
    quantity: Quantity
    vref_v: float
    volts: tuple[float, float]  # calibration points, volts at the transducer ...
    values: tuple[float, float]  # ... and the readings there, in `unit`
    unit: str
    divider: float  # volts at the transducer = volts at the ADC x divider
    interval_s: float
    samples: int
    port: int
    device: int
    software_pins: tuple[int, int, int, int] | None  # select, clock, mosi, miso; None = hardware SPI

    def spi_args(self) -> dict[str, int]:
        """The SPI keyword arguments for gpiozero's MCP3008."""
        if self.software_pins is None:
            return {"port": self.port, "device": self.device}
        return dict(zip(SOFTWARE_SPI_KEYS, self.software_pins, strict=True))

    def describe(self) -> str:
        """Where the chip is, for log lines."""
        if self.software_pins is None:
            return f"MCP3008 on SPI{self.port}.{self.device} channel {self.channel}"
        pins = ", ".join(f"{k}={p}" for k, p in self.spi_args().items())
        return f"MCP3008 on software SPI ({pins}) channel {self.channel}"


def mcp3008_settings(options: Mapping[str, Any]) -> Mcp3008Settings:
    """Validate a [[sensor]]'s mcp3008 options (no I/O); OptionError names the key."""
    reject_unknown(options, MCP3008_KEYS)
    channel = _integer(options, "channel", range(8))
    kind = option(options, "quantity", str, "pressure")
    if kind not in ("pressure", "temperature"):
        raise OptionError("quantity", f'must be "pressure" or "temperature", not {kind!r}')
    quantity = Quantity(kind)
    vref = _number(options, "vref_v", 3.3, 0.0, MAX_VREF_V)
    calibration = option(options, "calibration", dict)
    for key in calibration:
        if key not in CALIBRATION_KEYS:
            raise OptionError(f"calibration.{key}", "unknown key (known: values, volts)")
    volts = _pair(calibration, "volts")
    values = _pair(calibration, "values")
    if volts[0] == volts[1]:
        raise OptionError("calibration.volts", f"the two points must differ, not {list(volts)!r}")
    unit = option(options, "unit", str, DEFAULT_UNITS[quantity])
    try:
        (units.pressure_converter if quantity is Quantity.PRESSURE else units.temperature_converter)(unit)
    except units.UnitError as exc:
        raise OptionError("unit", str(exc)) from None
    divider = _number(options, "divider", 1.0, 0.0, 1000.0)
    interval = _number(options, "interval_s", 0.1, 0.0, 3600.0)
    samples = _integer(options, "samples", range(1, MAX_SAMPLES + 1), 8)
    given = [k for k in SOFTWARE_SPI_KEYS if k in options]
    if given:
        for key in ("port", "device"):
            if key in options:
                raise OptionError(key, f"cannot be combined with {', '.join(given)} (software SPI)")
        missing = [k for k in SOFTWARE_SPI_KEYS if k not in options]
        if missing:
            raise OptionError(missing[0], f"missing: software SPI needs all of {', '.join(SOFTWARE_SPI_KEYS)}")
        pins = tuple(_integer(options, k, BCM_PINS) for k in SOFTWARE_SPI_KEYS)
        for i, key in enumerate(SOFTWARE_SPI_KEYS):
            if pins[i] in pins[:i]:
                raise OptionError(key, f"GPIO{pins[i]} is already {SOFTWARE_SPI_KEYS[pins.index(pins[i])]}")
        software: tuple[int, int, int, int] | None = (pins[0], pins[1], pins[2], pins[3])
        port = device = 0
    else:
        software = None
        port = _integer(options, "port", range(1), 0)  # gpiozero knows SPI0 only
        device = _integer(options, "device", range(2), 0)  # CE0 (GPIO8) or CE1 (GPIO7)
    return Mcp3008Settings(
        channel, quantity, vref, volts, values, unit, divider, interval, samples, port, device, software
    )


class Mcp3008Driver:
    """An analog transducer on one MCP3008 channel (`driver = "mcp3008"`)."""

    driver = "mcp3008"
    retry_first_s = 0.5  # Backoff for a chip that cannot be opened or read (tests shorten it)
    retry_cap_s = 10.0

    def __init__(self, name: str, settings: Mcp3008Settings, pin_factory: Any = None) -> None:
        self.name = name
        self.settings = settings
        self.pin_factory = pin_factory
        self.quantities = {name: (settings.quantity,)}  # what the sensor reports
        s = settings
        to_si = (units.pressure_converter if s.quantity is Quantity.PRESSURE else units.temperature_converter)(s.unit)
        (v0, v1), (y0, y1) = s.volts, s.values
        # SI = a + b * fraction of full scale (the conversions to SI are affine, so this is exact)
        self._b = (to_si(y1) - to_si(y0)) / (v1 - v0) * s.vref_v * s.divider
        self._a = to_si(y0) - (to_si(y1) - to_si(y0)) / (v1 - v0) * v0
        self.readings = 0  # samples emitted GOOD
        self.rail_readings = 0  # samples emitted BAD because a conversion sat at a rail
        self.errors = 0  # failures to open or read the chip
        self.reconnects = 0

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], pin_factory: Any = None) -> Mcp3008Driver:
        """Build from the [[sensor]] table's driver options (no I/O); raises OptionError."""
        return cls(name, mcp3008_settings(options), pin_factory)

    def convert(self, fraction: float) -> float:
        """SI value for an ADC reading given as a fraction (0..1) of VREF."""
        return self._a + self._b * fraction

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Open the chip and sample it every interval_s until stop is set; never raises."""
        try:
            gpiozero = gpiozero_module()
        except RuntimeError as exc:
            log.error("%s: %s", self.name, exc)
            stop.wait()
            return
        s = self.settings
        trouble = Episode(log, f"{self.name}: {s.describe()}")
        rail = Episode(log, f"{self.name}: reading at an ADC rail (open or shorted wire?)")
        backoff = Backoff(self.retry_first_s, self.retry_cap_s)
        while not stop.is_set():
            adc = None
            try:
                adc = gpiozero.MCP3008(channel=s.channel, pin_factory=self.pin_factory, **s.spi_args())
                self._sample(adc, emit, stop, trouble, rail, backoff)
                return
            except Exception as exc:  # gpiozero raises many kinds (pins in use, SPI, OSError, no factory)
                self.errors += 1
                hint = ""
                if isinstance(exc, gpiozero.BadPinFactory) and self.pin_factory is not None:
                    hint = " (gpiozero 2.0's software SPI also needs gpiozero.Device.pin_factory set)"
                trouble.happened(f"{type(exc).__name__}: {exc}{hint}; retrying")
                log.debug("%s: device error", self.name, exc_info=True)
                emit(Sample(timebase.now(), self.name, s.quantity, math.nan, Quality.BAD))
            finally:
                _close(adc, self.name)
            stop.wait(backoff.next())

    def _sample(
        self, adc: Any, emit: Emit, stop: threading.Event, trouble: Episode, rail: Episode, backoff: Backoff
    ) -> None:
        """Read, average, convert and emit on schedule until stop is set (device errors propagate)."""
        s = self.settings
        deadline = time.monotonic()
        while not stop.is_set():
            readings = [adc.value for _ in range(s.samples)]
            now = timebase.now()
            if trouble.active:
                self.reconnects += 1
            trouble.over()
            backoff.reset()
            at_rail = [r for r in readings if r <= RAIL_LOW or r >= RAIL_HIGH]
            if at_rail:
                self.rail_readings += 1
                rail.happened(
                    f"{at_rail[0]:.4f} of full scale on channel {s.channel} "
                    f"({len(at_rail)} of {len(readings)} conversions); reporting the sensor unreadable"
                )
                emit(Sample(now, self.name, s.quantity, math.nan, Quality.BAD))
            else:
                rail.over()
                self.readings += 1
                emit(Sample(now, self.name, s.quantity, self.convert(math.fsum(readings) / len(readings))))
            deadline += s.interval_s
            delay = deadline - time.monotonic()
            if delay < 0:  # fell behind (slow bus): keep the interval, don't burst to catch up
                deadline, delay = time.monotonic(), 0.0
            stop.wait(delay)


@dataclass(frozen=True, slots=True)
class ReedSettings:
    """A validated hatch reed switch."""

    gpio: int
    closed_low: bool  # True: the switch pulls the pin to ground when the hatch is closed (pull-up)
    debounce_s: float | None
    heartbeat_s: float


def reed_settings(options: Mapping[str, Any]) -> ReedSettings:
    """Validate a [[hatch]]'s reed switch keys (no I/O); OptionError names the key."""
    reject_unknown(options, REED_KEYS)
    pin = _integer(options, "gpio", BCM_PINS)
    level = option(options, "closed_level", str, "low")
    if level not in ("low", "high"):
        raise OptionError("closed_level", f'must be "low" or "high", not {level!r}')
    debounce = _number(options, "debounce_s", 0.05, 0.0, 10.0, lo_open=False)
    heartbeat = _number(options, "heartbeat_s", 1.0, 0.0, 3600.0)
    return ReedSettings(pin, level == "low", debounce or None, heartbeat)


class ReedHatchDriver:
    """A hatch's reed switch on one GPIO pin: 1 open, 0 closed."""

    retry_first_s = 0.5
    retry_cap_s = 10.0

    def __init__(self, name: str, settings: ReedSettings, pin_factory: Any = None) -> None:
        self.name = name
        self.settings = settings
        self.pin_factory = pin_factory
        self._lock = threading.Lock()  # orders edge and heartbeat emissions
        self.edges = 0
        self.missed_edges = 0  # state changes first seen by the heartbeat
        self.errors = 0

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], pin_factory: Any = None) -> ReedHatchDriver:
        """Build from the [[hatch]] table's gpio, closed_level, debounce_s (and heartbeat_s); no I/O."""
        return cls(name, reed_settings(options), pin_factory)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Watch the switch, emitting its state at start, on each edge and every heartbeat_s, until stop."""
        try:
            gpiozero = gpiozero_module()
        except RuntimeError as exc:
            log.error("%s: %s", self.name, exc)
            stop.wait()
            return
        s = self.settings
        level = "low" if s.closed_low else "high"
        trouble = Episode(log, f"{self.name}: reed switch on GPIO{s.gpio} (closed = {level})")
        backoff = Backoff(self.retry_first_s, self.retry_cap_s)
        while not stop.is_set():
            switch = None
            try:
                # Button minus its hold thread, which would make close() wait up to hold_time while closed
                switch = gpiozero.DigitalInputDevice(
                    s.gpio, pull_up=s.closed_low, bounce_time=s.debounce_s, pin_factory=self.pin_factory
                )
                self._watch(switch, emit, stop, trouble, backoff)
                return
            except Exception as exc:
                self.errors += 1
                trouble.happened(f"{type(exc).__name__}: {exc}; retrying")
                log.debug("%s: device error", self.name, exc_info=True)
            finally:
                _close(switch, self.name)
            stop.wait(backoff.next())

    def _watch(self, switch: Any, emit: Emit, stop: threading.Event, trouble: Episode, backoff: Backoff) -> None:
        """Emit the state now, on edges and on each heartbeat until stop (pin errors propagate)."""
        last: list[bool | None] = [None]  # the state last emitted: open?

        def send(is_open: bool | None) -> None:
            """Emit a state; None = read it from the pin (the heartbeat), under the same lock as edges."""
            with self._lock:
                edge = is_open is not None
                if is_open is None:
                    is_open = not switch.is_active  # active = switch closed = hatch closed
                if last[0] is not None and is_open != last[0]:
                    if edge:
                        self.edges += 1
                    else:
                        self.missed_edges += 1
                        log.info("%s: hatch %s (seen by the heartbeat before any edge)", self.name, _state(is_open))
                last[0] = is_open
                emit(Sample(timebase.now(), self.name, Quantity.HATCH, 1.0 if is_open else 0.0))

        def closed() -> None:
            _guarded(lambda: send(False), f"{self.name}: hatch-closed edge")

        def opened() -> None:
            _guarded(lambda: send(True), f"{self.name}: hatch-open edge")

        switch.when_activated = closed  # active = switch closed = hatch closed
        switch.when_deactivated = opened
        send(None)  # the state at start (an edge racing this is emitted in order, under the lock)
        trouble.over()
        backoff.reset()
        while not stop.wait(self.settings.heartbeat_s):
            send(None)


def _state(is_open: bool) -> str:
    """A hatch state for log lines."""
    return "open" if is_open else "closed"


def _guarded(fn: Callable[[], None], what: str) -> None:
    """Call fn; log (never raise) what it raises, since it runs on a gpiozero thread."""
    try:
        fn()
    except Exception:
        log.exception("%s: callback failed", what)


class AckButton:
    """The acknowledge button: pull-up, pressed = low; a short press and a long (held) press."""

    def __init__(
        self,
        pin: int,
        on_short_press: Callable[[], None],
        on_long_press: Callable[[], None],
        long_press_s: float = 2.0,
        pin_factory: Any = None,
        bounce_s: float | None = 0.05,
    ) -> None:
        if not (math.isfinite(long_press_s) and long_press_s > 0):
            raise ValueError(f"long_press_s must be positive, not {long_press_s!r}")
        gpiozero = gpiozero_module()
        self.pin = pin
        self._on_short = on_short_press
        self._on_long = on_long_press
        self._lock = threading.Lock()
        self._down = False  # a press began while we were watching, and has not ended
        self._held = False  # this press already counted as long
        self.short_presses = 0
        self.long_presses = 0
        self.callback_errors = 0
        self._button = gpiozero.Button(
            pin,
            pull_up=True,
            bounce_time=bounce_s,
            hold_time=long_press_s,
            hold_repeat=False,
            pin_factory=pin_factory,
        )
        self._button.when_pressed = self._pressed
        self._button.when_held = self._held_long
        self._button.when_released = self._released

    def _pressed(self) -> None:
        """A press begins."""
        with self._lock:
            self._down, self._held = True, False

    def _held_long(self) -> None:
        """Held for long_press_s (gpiozero's hold thread): the long press, once."""
        with self._lock:
            if not self._down or self._held:
                return
            self._held = True
            self.long_presses += 1
        self._call(self._on_long, "long press")

    def _released(self) -> None:
        """Released: a short press unless it already counted as long."""
        with self._lock:
            short = self._down and not self._held
            self._down = self._held = False
            if short:
                self.short_presses += 1
        if short:
            self._call(self._on_short, "short press")

    def _call(self, fn: Callable[[], None], what: str) -> None:
        """Run a user callback; log what it raises instead of letting it into gpiozero's thread."""
        try:
            fn()
        except Exception:
            self.callback_errors += 1
            log.exception("ack button GPIO%d: %s callback failed", self.pin, what)

    def close(self) -> None:
        """Release the pin (idempotent)."""
        button, self._button = self._button, None
        _close(button, f"ack button GPIO{self.pin}")  # gpiozero's close() also drops the callbacks

"""The annunciator: a buzzer, an alarm LED, an optional fault LED and the acknowledge button.

Two parts. `pattern()` is pure: it maps an `Annunciation` (what the alarm lifecycle says needs
attention) to a `Pattern` (what each output does), as data. `Annunciator` drives gpiozero devices
with it: `show()` applies a pattern only when it differs from what an output is already doing (a
re-applied blink would restart, so a main loop calling `show()` at every sample would freeze it), and
uses gpiozero's background blinking, so `show()` returns at once and costs a comparison per call.

Patterns (first matching row wins; times are seconds on / seconds off; "on" = steady)

    ====  ===========================================  ==================  ==============  =========
    row   condition                                    buzzer              LED             fault LED
    ====  ===========================================  ==================  ==============  =========
    1     EMERGENCY unacknowledged                     on (continuous)     0.1 / 0.1       (*)
    2     WARNING unacknowledged                       0.5 / 0.5           0.25 / 0.25     (*)
    3     CAUTION unacknowledged                       0.2 / 2.8           0.5 / 0.5       (*)
    4     sensor fault unacknowledged                  0.1 / 4.9 (chirp)   0.1 / 0.9       (*)
    5     maintenance                                  off                 2 / 2           (*)
    6     ADVISORY unacknowledged                      off                 1 / 1           (*)
    7     active, all acknowledged                     off                 on              (*)
    8     normal                                       off                 0.05 / 2.95     (*)
    --    lamp test (long press), `lamp_test_s`        on                  on              on
    --    closed (`close()`)                           off                 off             off
    ====  ===========================================  ==================  ==============  =========

    (*) fault LED (optional `led2_pin`): on while a sensor fault is unacknowledged, else off.

Why this order: the buzzer gets faster and longer as severity rises (chirp every 5 s, short beep every
3 s, 1 Hz beeping, continuous), and the LED blinks faster (1 Hz ... 5 Hz). A sensor fault ranks below
CAUTION (a leak estimate beats a blind spot) but above ADVISORY, which never sounds. Acknowledging
silences the buzzer and turns the LED steady while anything is still active. The normal state is a
short heartbeat flash, so a stopped daemon is a dark (or stuck) LED, never a reassuring steady one.
Maintenance (deliberate venting, repressurisation) suppresses the alarms of the sources it covers in
the lifecycle, so they never reach `worst_unacked`; whatever still does comes from outside the
maintenance and sounds as usual. A returned-to-normal alarm not yet acknowledged is shown, silently,
like an acknowledged one (ISA-18.2).

The button (`AckButton` from sensors.gpio): a short press calls `on_ack`; a press held for
`long_press_s` runs the lamp test: every output on for `lamp_test_s`, then back to the pattern of the
latest `show()`, then `on_lamp_test_done`. Callbacks run on gpiozero's threads (the button's) or the
lamp-test timer's thread: they must be quick and thread-safe (set a flag, put on a queue); whatever
they raise is logged and goes no further.

Hardware: an active buzzer (sounds while its pin is high: gpiozero `Buzzer`; a passive one would need
`TonalBuzzer` and PWM) and LEDs through resistors, active high. gpiozero is imported lazily, so this
module imports without it; building an `Annunciator` without it raises a RuntimeError saying so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hullwatch.core.lifecycle import Annunciation
from hullwatch.core.model import Severity
from hullwatch.sensors.base import Episode
from hullwatch.sensors.gpio import AckButton, gpiozero_module

log = logging.getLogger("hullwatch.annunciator")

OUTPUTS: tuple[str, ...] = ("buzzer", "led", "fault_led")  # the Pattern fields, in the order they are applied


# -- the pure part ----------------------------------------------------------------------------------------------


NORMAL = Annunciation(None, False, False, False)


class Mode(StrEnum):
    """What an output does."""

    OFF = "off"
    ON = "on"
    CYCLE = "cycle"  # on for on_s, off for off_s, repeated


@dataclass(frozen=True, slots=True)
class Output:
    """One output's behaviour: off, steady on, or a cycle of on_s seconds on and off_s seconds off."""

    mode: Mode
    on_s: float = 0.0
    off_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode is Mode.CYCLE:
            if not all(math.isfinite(t) and t > 0 for t in (self.on_s, self.off_s)):
                raise ValueError(f"a cycle needs positive finite times, not {self.on_s!r} / {self.off_s!r}")
        elif (self.on_s, self.off_s) != (0.0, 0.0):
            raise ValueError(f"{self.mode.value} takes no times")

    @property
    def period_s(self) -> float | None:
        """The cycle's period; None unless cycling."""
        return self.on_s + self.off_s if self.mode is Mode.CYCLE else None

    def describe(self) -> str:
        """'off', 'on' or '0.5/0.5 s'."""
        return f"{self.on_s:g}/{self.off_s:g} s" if self.mode is Mode.CYCLE else self.mode.value


OFF = Output(Mode.OFF)
STEADY = Output(Mode.ON)


def cycle(on_s: float, off_s: float) -> Output:
    """An output switching on for on_s and off for off_s, repeatedly."""
    return Output(Mode.CYCLE, on_s, off_s)


@dataclass(frozen=True, slots=True)
class Pattern:
    """What every output does, and the name of the table row that chose it."""

    name: str
    buzzer: Output
    led: Output
    fault_led: Output = OFF

    def describe(self) -> str:
        """One line for logs."""
        b, led, fault = self.buzzer.describe(), self.led.describe(), self.fault_led.describe()
        return f"{self.name}: buzzer {b}, LED {led}, fault LED {fault}"


EMERGENCY = Pattern("emergency", STEADY, cycle(0.1, 0.1))
MAINTENANCE = Pattern("maintenance", OFF, cycle(2.0, 2.0))
WARNING = Pattern("warning", cycle(0.5, 0.5), cycle(0.25, 0.25))
CAUTION = Pattern("caution", cycle(0.2, 2.8), cycle(0.5, 0.5))
SENSOR_FAULT = Pattern("sensor fault", cycle(0.1, 4.9), cycle(0.1, 0.9))
ADVISORY = Pattern("advisory", OFF, cycle(1.0, 1.0))
ACKNOWLEDGED = Pattern("acknowledged", OFF, STEADY)
HEARTBEAT = Pattern("normal", OFF, cycle(0.05, 2.95))
LAMP_TEST = Pattern("lamp test", STEADY, STEADY, STEADY)
DARK = Pattern("dark", OFF, OFF, OFF)  # before the first show() and after close()

BY_SEVERITY: dict[Severity, Pattern] = {
    Severity.EMERGENCY: EMERGENCY,
    Severity.WARNING: WARNING,
    Severity.CAUTION: CAUTION,
    Severity.ADVISORY: ADVISORY,
}


def pattern(a: Annunciation) -> Pattern:
    """The pattern for an annunciation: the first matching row of the module docstring's table."""
    worst = a.worst_unacked
    if worst is not None and worst >= Severity.CAUTION:
        base = BY_SEVERITY[worst]
    elif a.sensor_fault_unacked:
        base = SENSOR_FAULT
    elif a.maintenance:
        base = MAINTENANCE
    elif worst is not None:
        base = BY_SEVERITY[worst]
    elif a.any_active or a.returned_unacked:
        base = ACKNOWLEDGED
    else:
        base = HEARTBEAT
    return dataclasses.replace(base, fault_led=STEADY) if a.sensor_fault_unacked else base


# -- the hardware part ------------------------------------------------------------------------------------------


def _positive(name: str, value: float) -> float:
    """value if positive and finite, else ValueError naming it."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, not {value!r}")
    return value


class Annunciator:
    """Buzzer, alarm LED, optional fault LED and ack button on GPIO pins, driven by `show()`.

    A pin of None leaves that part out. Until the first `show()` every output is off.
    """

    def __init__(
        self,
        buzzer_pin: int | None,
        led_pin: int | None,
        ack_pin: int | None,
        on_ack: Callable[[], None],
        on_lamp_test_done: Callable[[], None] | None = None,
        pin_factory: Any = None,
        *,
        led2_pin: int | None = None,
        long_press_s: float = 2.0,
        lamp_test_s: float = 2.0,
    ) -> None:
        self.lamp_test_s = _positive("lamp_test_s", lamp_test_s)
        _positive("long_press_s", long_press_s)
        gpiozero = gpiozero_module()
        self._on_lamp_test_done = on_lamp_test_done
        self._lock = threading.Lock()  # guards everything below: show() vs the button's and the timer's threads
        self._devices: dict[str, Any] = {}  # OUTPUTS name -> gpiozero device, for the pins given
        self._doing: dict[str, Output | None] = {}  # what each device is doing; None: unknown (a write failed)
        self._wanted: Pattern = DARK  # the pattern of the latest show()
        self._lamp_generation = 0  # counts lamp tests, so that a superseded one's timer does nothing
        self._lamp_timer: threading.Timer | None = None
        self._closed = False
        self._trouble = Episode(log, "annunciator")
        self._button: AckButton | None = None
        self.applied = 0  # outputs (re)programmed: one per output whose behaviour changed
        self.lamp_tests = 0
        self.callback_errors = 0  # raised by on_lamp_test_done (the button counts its own)
        try:
            for name, pin, kind in (
                ("buzzer", buzzer_pin, gpiozero.Buzzer),
                ("led", led_pin, gpiozero.LED),
                ("fault_led", led2_pin, gpiozero.LED),
            ):
                if pin is not None:
                    self._devices[name] = kind(pin, initial_value=False, pin_factory=pin_factory)
                    self._doing[name] = OFF
            if ack_pin is not None:
                self._button = AckButton(
                    ack_pin, on_ack, self._lamp_test, long_press_s=long_press_s, pin_factory=pin_factory
                )
        except BaseException:
            self._release()
            raise

    @property
    def shown(self) -> Pattern:
        """The pattern of the latest show() (DARK before the first); the lamp test does not change it."""
        with self._lock:
            return self._wanted

    @property
    def lamp_test_active(self) -> bool:
        """True while the lamp test holds every output on."""
        with self._lock:
            return self._lamp_timer is not None

    def show(self, a: Annunciation) -> None:
        """Put `pattern(a)` on the outputs, touching only those whose behaviour changes; never raises."""
        p = pattern(a)
        with self._lock:
            if self._closed:
                return
            if p != self._wanted:
                log.info("annunciator: %s", p.describe())
            self._wanted = p
            if self._lamp_timer is None:
                self._apply(p)

    def close(self) -> None:
        """Buzzer off, LEDs off, then release the pins (idempotent); show() does nothing afterwards."""
        button, self._button = self._button, None
        if button is not None:
            button.close()  # outside the lock: its hold thread may be waiting for the lock in _lamp_test
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lamp_generation += 1
            timer, self._lamp_timer = self._lamp_timer, None
            if timer is not None:
                timer.cancel()
            self._apply(DARK)
            self._release()

    # -- internals (call with the lock held, except where said) --

    def _apply(self, p: Pattern) -> None:
        """Program each output whose behaviour differs from p's; log (once per episode) a failed write."""
        failed = False
        for name in OUTPUTS:
            device = self._devices.get(name)
            want: Output = getattr(p, name)
            if device is None or self._doing[name] == want:
                continue
            try:
                if want.mode is Mode.CYCLE:
                    device.blink(on_time=want.on_s, off_time=want.off_s, n=None, background=True)
                elif want.mode is Mode.ON:
                    device.on()
                else:
                    device.off()
                self._doing[name] = want
                self.applied += 1
            except Exception as exc:  # a pin gone bad must not take the main loop (or a callback) down
                self._doing[name] = None  # unknown: the next show() tries again
                failed = True
                self._trouble.happened(f"{name}: {type(exc).__name__}: {exc}")
        if not failed:
            self._trouble.over()

    def _release(self) -> None:
        """Close the output devices (without the lock: also used when __init__ fails)."""
        devices, self._devices = self._devices, {}
        for name, device in devices.items():
            try:
                device.close()
            except Exception as exc:  # a device that failed may fail to close as well
                log.debug("annunciator: closing %s failed: %s", name, exc)

    def _lamp_test(self) -> None:
        """Long press (gpiozero's hold thread, without the lock): every output on for lamp_test_s."""
        with self._lock:
            if self._closed:
                return
            self._lamp_generation += 1
            self.lamp_tests += 1
            if self._lamp_timer is not None:  # a second long press during a lamp test starts it over
                self._lamp_timer.cancel()
            timer = threading.Timer(self.lamp_test_s, self._lamp_test_over, args=(self._lamp_generation,))
            timer.daemon = True
            self._lamp_timer = timer
            log.info("annunciator: lamp test for %g s", self.lamp_test_s)
            self._apply(LAMP_TEST)
            timer.start()

    def _lamp_test_over(self, generation: int) -> None:
        """The lamp test's timer (its own thread, without the lock): back to the latest show()'s pattern."""
        try:
            with self._lock:
                if self._closed or generation != self._lamp_generation:
                    return  # closed, or a newer lamp test owns the outputs
                self._lamp_timer = None
                self._apply(self._wanted)
            if self._on_lamp_test_done is not None:
                self._on_lamp_test_done()
        except Exception:
            self.callback_errors += 1
            log.exception("annunciator: end of lamp test failed")

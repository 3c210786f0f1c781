"""The annunciator: the pattern table as data, then the outputs and the ack button on gpiozero's mock pins."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero import LED, Button
from gpiozero.pins.mock import MockFactory

from hullwatch.annunciator import (
    ACKNOWLEDGED,
    ADVISORY,
    CAUTION,
    EMERGENCY,
    HEARTBEAT,
    MAINTENANCE,
    OFF,
    SENSOR_FAULT,
    STEADY,
    WARNING,
    Annunciation,
    Annunciator,
    Mode,
    Output,
    Pattern,
    cycle,
    pattern,
)
from hullwatch.core.model import Severity

E, W, C, A = Severity.EMERGENCY, Severity.WARNING, Severity.CAUTION, Severity.ADVISORY
BUZZER, LED_PIN, ACK, FAULT_LED = 18, 23, 24, 25  # AnnunciatorConfig's defaults, and a free pin for the fault LED
TOL = 0.04  # s: timing tolerance for background blinking on a loaded machine
START_TOL = 0.15  # s: how late a blink may start after show() on a slow or loaded machine


def ann(worst: Severity | None = None, fault: bool = False, active: bool = False, maint: bool = False) -> Annunciation:
    return Annunciation(worst_unacked=worst, sensor_fault_unacked=fault, any_active=active, maintenance=maint)


# One Annunciation per row of the module docstring's table, and the pattern it must give.
ROWS: list[tuple[str, Annunciation, Pattern, tuple[Output, Output]]] = [
    ("emergency", ann(E, active=True), EMERGENCY, (STEADY, cycle(0.1, 0.1))),
    ("maintenance", ann(maint=True), MAINTENANCE, (OFF, cycle(2, 2))),
    ("warning", ann(W, active=True), WARNING, (cycle(0.5, 0.5), cycle(0.25, 0.25))),
    ("caution", ann(C, active=True), CAUTION, (cycle(0.2, 2.8), cycle(0.5, 0.5))),
    ("sensor fault", ann(fault=True, active=True), SENSOR_FAULT, (cycle(0.1, 4.9), cycle(0.1, 0.9))),
    ("advisory", ann(A, active=True), ADVISORY, (OFF, cycle(1, 1))),
    ("acknowledged", ann(active=True), ACKNOWLEDGED, (OFF, STEADY)),
    ("normal", ann(), HEARTBEAT, (OFF, cycle(0.05, 2.95))),
]


# -- helpers ------------------------------------------------------------------------------------------------------


class Calls:
    """Counts calls; raises on the calls numbered in `fail_on`."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.count = 0
        self.fail_on = fail_on

    def __call__(self) -> None:
        self.count += 1
        if self.count in self.fail_on:
            raise RuntimeError("callback broke")


def wait_for(pred: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.002)


def changes(pin: Any) -> list[tuple[float, bool]]:
    """The pin's changes since its clear_states(), as (seconds since then, new state)."""
    t, out = 0.0, []
    for s in list(pin.states)[1:]:  # MockPin records (seconds since the previous change, state)
        t += s.timestamp
        out.append((t, bool(s.state)))
    return out


def expected_changes(output: Output, window: float, lit: bool = False) -> list[tuple[float, bool]]:
    """The changes an output shown at t=0 makes before `window` on a pin that was low (or high if lit)."""
    if output.mode is Mode.OFF:
        return [(0.0, False)] if lit else []
    if output.mode is Mode.ON:
        return [] if lit else [(0.0, True)]
    out, t, state = [], 0.0, True
    while t < window:
        out.append((t, state))
        t += output.on_s if state else output.off_s
        state = not state
    return out[1:] if lit else out  # a blink starts with its on phase: a lit pin just stays lit


def assert_follows(pin: Any, output: Output, window: float, what: str, lit: bool = False) -> None:
    """The pin (cleared, then shown `output` at t=0 and left for `window`) followed the output's cycle.

    The first change may come up to START_TOL late (a slow or loaded machine); the cycle is timed from it.
    """
    act = changes(pin)
    full = expected_changes(output, window, lit)
    shift = act[0][0] - full[0][0] if act and full else 0.0
    assert -TOL <= shift <= START_TOL, f"{what}: first change {shift:+.3f} s off ({act})"
    exp = [e for e in full if e[0] + shift < window - 2 * TOL]  # clear of the window's edge
    assert [s for _, s in act[: len(exp)]] == [s for _, s in exp], f"{what}: states {act} != {exp}"
    for (ta, _), (te, _) in zip(act, exp, strict=False):
        assert abs(ta - shift - te) <= TOL, f"{what}: change at {ta:.3f} s, expected {te + shift:.3f} s ({act})"
    extra = act[len(exp) :]
    assert all(t >= window - 3 * TOL for t, _ in extra), f"{what}: unexpected changes {extra}"


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def make(factory: MockFactory) -> Iterator[Callable[..., Annunciator]]:
    """make(**kwargs) -> an Annunciator on the default pins (led2 on 25, no button unless ack_pin=24), closed after."""
    made: list[Annunciator] = []

    def build(**kwargs: Any) -> Annunciator:
        args = {
            "buzzer_pin": BUZZER,
            "led_pin": LED_PIN,
            "ack_pin": None,
            "on_ack": Calls(),
            "pin_factory": factory,
            "led2_pin": FAULT_LED,
        } | kwargs
        a = Annunciator(**args)
        made.append(a)
        return a

    yield build
    for a in made:
        a.close()


# -- the pure part ------------------------------------------------------------------------------------------------


def test_annunciation_has_the_lifecycle_fields():
    assert [f.name for f in dataclasses.fields(Annunciation)] == [
        "worst_unacked",
        "sensor_fault_unacked",
        "any_active",
        "maintenance",
        "returned_unacked",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ann().maintenance = True  # type: ignore[misc]


@pytest.mark.parametrize(("name", "a", "expected", "outputs"), ROWS, ids=[r[0] for r in ROWS])
def test_pattern_table(name, a, expected, outputs):
    p = pattern(a)
    assert p.name == name
    assert (p.buzzer, p.led) == outputs
    fault = STEADY if a.sensor_fault_unacked else OFF
    assert p == dataclasses.replace(expected, fault_led=fault)


def test_every_row_is_distinct_on_buzzer_and_led():
    assert len({(p.buzzer, p.led) for _, _, p, _ in ROWS}) == len(ROWS)


@pytest.mark.parametrize(
    ("a", "expected"),
    [
        (ann(E, fault=True, active=True), EMERGENCY),  # emergency beats a sensor fault ...
        (ann(W, fault=True, active=True), WARNING),  # ... and so does a warning
        (ann(C, fault=True), CAUTION),
        (ann(A, fault=True), SENSOR_FAULT),  # a fault beats an advisory (which never sounds)
        (ann(maint=True), MAINTENANCE),
        (ann(A, maint=True), MAINTENANCE),
        # The lifecycle suppresses the alarms of sources under maintenance, so an unacknowledged alarm
        # seen during maintenance comes from elsewhere and sounds as usual.
        (ann(W, maint=True), WARNING),
        (ann(fault=True, maint=True), SENSOR_FAULT),
        (ann(E, maint=True), EMERGENCY),
    ],
)
def test_priority(a, expected):
    p = pattern(a)
    assert (p.name, p.buzzer, p.led) == (expected.name, expected.buzzer, expected.led)
    assert p.fault_led == (STEADY if a.sensor_fault_unacked else OFF)


def duty(o: Output) -> float:
    return {Mode.OFF: 0.0, Mode.ON: 1.0}.get(o.mode) if o.mode is not Mode.CYCLE else o.on_s / o.period_s


def test_properties_over_every_annunciation():
    severities = [None, A, C, W, E]
    for worst, fault, active, maint in itertools.product(severities, *[(False, True)] * 3):
        a = ann(worst, fault, active, maint)
        p = pattern(a)
        assert p.led.mode is not Mode.OFF, a  # the LED always shows something while the daemon runs
        assert (p.fault_led == STEADY) == fault, a
        if worst is E:
            assert p.buzzer == STEADY, a
        sounds = p.buzzer.mode is not Mode.OFF
        if sounds:  # the buzzer sounds only for something unacknowledged
            assert worst is not None or fault, a
        if worst is not None and worst >= C:
            assert sounds, a
        if not maint:  # a worse unacknowledged severity never sounds less
            for lower, higher in itertools.pairwise(severities):
                if worst is lower:
                    assert duty(pattern(ann(higher, fault, active)).buzzer) >= duty(p.buzzer), a


def test_output_validation_and_description():
    with pytest.raises(ValueError, match="positive finite"):
        cycle(0.0, 1.0)
    with pytest.raises(ValueError, match="positive finite"):
        cycle(1.0, float("inf"))
    with pytest.raises(ValueError, match="takes no times"):
        Output(Mode.ON, 1.0)
    assert (OFF.describe(), STEADY.describe(), cycle(0.5, 0.5).describe()) == ("off", "on", "0.5/0.5 s")
    assert cycle(0.2, 2.8).period_s == pytest.approx(3.0) and STEADY.period_s is None
    assert pattern(ann(W, fault=True)).describe() == "warning: buzzer 0.5/0.5 s, LED 0.25/0.25 s, fault LED on"


# -- outputs on mock pins -----------------------------------------------------------------------------------------


def test_every_row_on_the_pins(factory):
    """All eight rows at once (one annunciator each, on its own three pins), so the test takes one window."""
    window = 0.55
    units = []
    try:
        for i in range(len(ROWS)):
            pins = (2 + 3 * i, 3 + 3 * i, 4 + 3 * i)
            unit = Annunciator(pins[0], pins[1], None, Calls(), pin_factory=factory, led2_pin=pins[2])
            units.append((unit, [factory.pin(n) for n in pins]))
        for (unit, pins), (_, a, _, _) in zip(units, ROWS, strict=True):
            for pin in pins:  # t=0 of each unit is its own show(), however long the others' took
                pin.clear_states()
            unit.show(a)
        time.sleep(window)
        for (_, pins), (name, a, _, _) in zip(units, ROWS, strict=True):
            p = pattern(a)
            for pin, output, what in zip(
                pins, (p.buzzer, p.led, p.fault_led), ("buzzer", "LED", "fault LED"), strict=True
            ):
                assert_follows(pin, output, window, f"{name} {what}")
    finally:
        for unit, _ in units:
            unit.close()


def test_emergency_with_gpiozero_assert_states_and_times(make, factory):
    unit = make()
    buzzer, led = factory.pin(BUZZER), factory.pin(LED_PIN)
    buzzer.clear_states()
    led.clear_states()
    unit.show(ann(E))
    time.sleep(0.45)
    buzzer.assert_states_and_times([(0.0, False), (0.0, True)])
    led.assert_states_and_times([(0.0, False), (0.0, True), (0.1, False), (0.1, True), (0.1, False), (0.1, True)])
    assert len(buzzer.states) == 2  # assert_states_and_times zips: check the count too (no gap in the tone)
    assert len(led.states) >= 5


def test_showing_the_same_annunciation_again_does_not_restart_the_blink(make, factory):
    unit = make()
    led = factory.pin(LED_PIN)
    led.clear_states()
    unit.show(ann(W))
    applied = unit.applied
    time.sleep(0.15)
    for _ in range(1000):  # a main loop calling show() at every sample
        unit.show(ann(W))
    time.sleep(0.25)
    # a restart at 0.15 s would have stretched the first flash to 0.4 s
    assert_follows(led, WARNING.led, 0.4, "warning LED shown again")
    assert unit.applied == applied


def test_show_costs_a_comparison(make):
    unit = make()
    unit.show(ann(W))
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        unit.show(ann(W))
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 0.5e-3, f"{per_call * 1e6:.0f} µs per show()"


def test_only_the_outputs_that_change_are_reprogrammed(make, factory):
    unit = make()
    led = factory.pin(LED_PIN)
    led.clear_states()
    unit.show(ann(W))
    time.sleep(0.15)
    before = unit.applied
    unit.show(ann(W, fault=True))  # a sensor fault joins the warning: only the fault LED changes
    assert unit.applied == before + 1
    assert factory.pin(FAULT_LED).state
    time.sleep(0.25)
    assert_follows(led, WARNING.led, 0.4, "warning LED when the fault LED came on")


def test_acknowledged_active_is_a_steady_led_and_a_silent_buzzer(make, factory):
    unit = make()
    buzzer, led = factory.pin(BUZZER), factory.pin(LED_PIN)
    unit.show(ann(W, active=True))
    time.sleep(0.1)
    buzzer.clear_states()
    led.clear_states()
    unit.show(ann(active=True))  # the operator acknowledged; the warning is still active
    time.sleep(0.3)
    assert (buzzer.state, led.state) == (False, True)
    assert [s for _, s in changes(buzzer)] in ([], [False])  # went quiet (if it was sounding) and stayed quiet
    assert [s for _, s in changes(led)] in ([], [True])  # lit (if it was dark) and stayed lit


def test_close_leaves_every_output_low_and_frees_the_pins(make, factory):
    unit = make()
    unit.show(ann(E, fault=True))
    wait_for(lambda: factory.pin(LED_PIN).state)
    assert factory.pin(BUZZER).state and factory.pin(FAULT_LED).state
    unit.close()
    time.sleep(0.15)  # the blink thread is stopped: nothing turns a pin back on
    assert [factory.pin(n).state for n in (BUZZER, LED_PIN, FAULT_LED)] == [False, False, False]
    unit.show(ann(E))  # after close: nothing, and no error
    unit.close()  # idempotent
    assert not factory.pin(BUZZER).state
    LED(BUZZER, pin_factory=factory).close()  # the pins are free again


def test_missing_pins_are_left_out(factory):
    unit = Annunciator(None, None, None, Calls(), pin_factory=factory)
    unit.show(ann(E))
    assert unit.shown == EMERGENCY
    unit.close()
    only_led = Annunciator(None, LED_PIN, None, Calls(), pin_factory=factory)
    only_led.show(ann(active=True))
    assert factory.pin(LED_PIN).state
    only_led.close()


def test_show_to_buzzer_latency_for_an_emergency(make, factory):
    """From calling show() to the buzzer pin high: by the pin's own record, and as seen by polling after show()."""
    unit = make()
    buzzer = factory.pin(BUZZER)
    recorded, polled = [], []
    for _ in range(20):
        unit.show(ann())
        assert not buzzer.state
        buzzer.clear_states()  # the pin records its next change as the time since this
        t0 = time.monotonic()
        unit.show(ann(E))
        while not buzzer.state:
            assert time.monotonic() - t0 < 0.1, "buzzer never went high"
        polled.append(time.monotonic() - t0)
        recorded.append(buzzer.states[1].timestamp)
    for what, xs in (("pin record", recorded), ("polled", polled)):
        print(f"show() -> buzzer high ({what}): max {max(xs) * 1e3:.3f} ms, median {sorted(xs)[10] * 1e3:.3f} ms")
    assert max(recorded) < 0.020
    assert max(polled) < 0.020


def test_a_failed_write_is_logged_once_and_retried(make, factory, caplog):
    unit = make()
    device = unit._devices["led"]
    real = device.blink
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise OSError("pin gone")

    device.blink = broken
    with caplog.at_level(logging.WARNING, logger="hullwatch.annunciator"):
        unit.show(ann(W))  # does not raise into the main loop
        unit.show(ann(W))  # the LED's state is unknown: tried again
        assert len(calls) == 2
        assert factory.pin(BUZZER).state  # the buzzer was programmed all the same
        device.blink = real
        unit.show(ann(W))
    assert len([r for r in caplog.records if "pin gone" in r.getMessage()]) == 1
    wait_for(lambda: factory.pin(LED_PIN).state)


def test_missing_gpiozero_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # import gpiozero -> ImportError
    with pytest.raises(RuntimeError, match=r"gpiozero is not installed: pip install gpiozero"):
        Annunciator(BUZZER, LED_PIN, ACK, Calls())


def test_bad_arguments(factory):
    with pytest.raises(ValueError, match="lamp_test_s"):
        Annunciator(BUZZER, LED_PIN, None, Calls(), pin_factory=factory, lamp_test_s=0)
    with pytest.raises(ValueError, match="long_press_s"):
        Annunciator(BUZZER, LED_PIN, None, Calls(), pin_factory=factory, long_press_s=float("nan"))


def test_a_failed_constructor_releases_the_pins_it_took(factory):
    blocker = Button(ACK, pin_factory=factory)  # someone else holds the button's pin
    with pytest.raises(Exception, match="in use|already"):
        Annunciator(BUZZER, LED_PIN, ACK, Calls(), pin_factory=factory)
    blocker.close()
    LED(BUZZER, pin_factory=factory).close()
    LED(LED_PIN, pin_factory=factory).close()


# -- the ack button -----------------------------------------------------------------------------------------------


def test_short_press_calls_on_ack_once(make, factory):
    on_ack, done = Calls(), Calls()
    unit = make(ack_pin=ACK, on_ack=on_ack, on_lamp_test_done=done, long_press_s=0.3)
    unit.show(ann(W))
    pin = factory.pin(ACK)
    pin.drive_low()
    time.sleep(0.02)
    pin.drive_high()
    time.sleep(0.35)  # past long_press_s: no lamp test either
    assert (on_ack.count, unit.lamp_tests, done.count) == (1, 0, 0)


def test_long_press_runs_the_lamp_test_then_the_pattern_resumes(make, factory):
    on_ack, done = Calls(), Calls()
    unit = make(ack_pin=ACK, on_ack=on_ack, on_lamp_test_done=done, long_press_s=0.1, lamp_test_s=0.2)
    buzzer, led, fault = factory.pin(BUZZER), factory.pin(LED_PIN), factory.pin(FAULT_LED)
    unit.show(ann(E))
    buzzer.clear_states()
    pin = factory.pin(ACK)
    pin.drive_low()
    wait_for(lambda: unit.lamp_test_active)
    led.clear_states()
    time.sleep(0.12)  # the LED stops blinking: steady on, with the buzzer and the fault LED
    assert (buzzer.state, led.state, fault.state) == (True, True, True)
    assert changes(led) == []
    pin.drive_high()  # releasing a long press is not an acknowledgement
    wait_for(lambda: done.count == 1)
    assert not unit.lamp_test_active
    led.clear_states()
    assert not fault.state  # the fault LED back off at once
    time.sleep(0.35)
    assert_follows(led, cycle(0.1, 0.1), 0.35, "emergency LED after the lamp test", lit=True)  # started over
    assert changes(buzzer) == []  # the emergency tone never stopped
    assert (on_ack.count, unit.lamp_tests, done.count) == (0, 1, 1)


def test_show_during_the_lamp_test_takes_effect_after_it(make, factory):
    done = Calls()
    unit = make(ack_pin=ACK, on_lamp_test_done=done, long_press_s=0.05, lamp_test_s=0.15)
    buzzer, led = factory.pin(BUZZER), factory.pin(LED_PIN)
    unit.show(ann(W))
    factory.pin(ACK).drive_low()
    wait_for(lambda: unit.lamp_test_active)
    factory.pin(ACK).drive_high()
    unit.show(ann(active=True))  # acknowledged meanwhile (by the network, say)
    assert (buzzer.state, led.state) == (True, True)  # the lamp test still holds them
    assert unit.shown == ACKNOWLEDGED
    wait_for(lambda: done.count == 1)
    buzzer.clear_states()
    led.clear_states()
    time.sleep(0.2)
    assert (buzzer.state, led.state) == (False, True)
    assert changes(buzzer) == changes(led) == []


def test_raising_callbacks_do_not_break_the_next_press(make, factory, caplog):
    on_ack, done = Calls(fail_on=(1,)), Calls(fail_on=(1,))
    unit = make(ack_pin=ACK, on_ack=on_ack, on_lamp_test_done=done, long_press_s=0.05, lamp_test_s=0.05)
    pin = factory.pin(ACK)
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            pin.drive_low()
            pin.drive_high()  # on_ack runs here, on this thread: it must not raise
        for n in (1, 2):  # the lamp test runs on the hold thread and ends on a timer's: both survive a raise
            pin.drive_low()
            wait_for(lambda n=n: done.count == n)
            pin.drive_high()
    assert (on_ack.count, unit.lamp_tests, done.count) == (2, 2, 2)
    assert unit.callback_errors == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("short press callback failed" in m for m in messages)
    assert any("end of lamp test failed" in m for m in messages)


def test_close_during_a_lamp_test_leaves_the_outputs_low(make, factory):
    done = Calls()
    unit = make(ack_pin=ACK, on_lamp_test_done=done, long_press_s=0.05, lamp_test_s=0.3)
    unit.show(ann(W))
    factory.pin(ACK).drive_low()
    wait_for(lambda: unit.lamp_test_active)
    unit.close()  # closing the button takes up to 0.1 s (gpiozero's hold thread polls at 10 Hz)
    assert done.count == 0
    time.sleep(0.35)  # past the lamp test's end: its timer must not turn anything back on
    assert [factory.pin(n).state for n in (BUZZER, LED_PIN, FAULT_LED)] == [False, False, False]
    assert done.count == 0


def test_show_from_one_thread_while_lamp_tests_run_on_others(make, factory):
    done = Calls()
    unit = make(on_lamp_test_done=done, lamp_test_s=0.01)
    stop = threading.Event()
    errors: list[BaseException] = []
    rows = [a for _, a, _, _ in ROWS]

    def press() -> None:
        try:
            while not stop.is_set():
                unit._lamp_test()  # what the button's hold thread calls
                time.sleep(0.003)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    try:
        for a in itertools.islice(itertools.cycle(rows), 3000):
            unit.show(a)
    finally:
        stop.set()
        presser.join(30)
    assert errors == []
    wait_for(lambda: not unit.lamp_test_active)
    unit.show(ann(active=True))
    time.sleep(0.05)
    assert [factory.pin(n).state for n in (BUZZER, LED_PIN, FAULT_LED)] == [False, True, False]

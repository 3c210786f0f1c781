"""GPIO devices against gpiozero's own mock pins: an MCP3008 played by a MockSPIDevice, reed switch, ack button."""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from gpiozero import Button, Device, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.sensors.base import OptionError
from hullwatch.sensors.gpio import (
    MCP3008_KEYS,
    REED_KEYS,
    AckButton,
    Mcp3008Driver,
    ReedHatchDriver,
)

VREF = 3.3
CAL = {"volts": [0.5, 4.5], "values": [0.0, 200000.0]}  # a 0-200 kPa absolute, 0.5-4.5 V transducer
LOGGER = "hullwatch.sensors.gpio"


class FakeMcp3008(MockSPIDevice):
    """The chip's side of the MCP3008 single-ended protocol, on mock pins: answers each channel with set codes."""

    def __init__(self, factory: MockFactory, clock: int = 11, mosi: int = 10, miso: int = 9, select: int = 8) -> None:
        super().__init__(clock, mosi, miso, select, pin_factory=factory)
        self.codes: dict[int, Iterator[int]] = {ch: itertools.cycle([512]) for ch in range(8)}
        self.conversions = [0] * 8
        self.state = "idle"

    def set_codes(self, channel: int, *codes: int) -> None:
        """Answer conversions of `channel` with these 10-bit codes, in turn, forever."""
        self.codes[channel] = itertools.cycle(codes)

    def set_volts(self, channel: int, volts: float) -> int:
        """Put `volts` on the channel's input; returns the code the chip will give."""
        code = max(0, min(1023, int(volts / VREF * 1024)))
        self.set_codes(channel, code)
        return code

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        if self.state == "idle":
            if self.rx_buf[-1]:  # the start bit after the leading zeros
                self.state, self.rx_buf = "command", []
        elif self.state == "command" and len(self.rx_buf) == 4:  # single/diff bit, then 3 channel bits
            assert self.rx_buf[0] == 1, "the driver asked for a differential conversion"
            channel = self.rx_word() & 0b111
            self.conversions[channel] += 1
            self.tx_word(next(self.codes[channel]), 12)  # sample period, null bit, then 10 bits MSB first
            self.state = "result"


def fraction(code: int) -> float:
    """gpiozero's MCP3008.value for a code: (2*code + 1) / 2047, the middle of the code's bin."""
    return (2 * code + 1) / 2047


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def spi_default(factory: MockFactory, monkeypatch: pytest.MonkeyPatch) -> MockFactory:
    """gpiozero 2.0.1's SPISoftwareBus calls Device.__init__() without the pin_factory it was given, so
    software SPI (all SPI on a MockFactory) needs a default factory even when one is injected."""
    monkeypatch.setattr(Device, "pin_factory", factory)
    return factory


@pytest.fixture
def chip(spi_default: MockFactory) -> Iterator[FakeMcp3008]:
    c = FakeMcp3008(spi_default)  # before the driver: the chip's pins must be created as SPI mock pins
    yield c
    c.close()


def wait_for(pred: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.002)


@contextmanager
def running(driver: Any) -> Iterator[list[Sample]]:
    """Run driver.run in a thread, collecting samples; stop and join it on the way out."""
    samples: list[Sample] = []
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(samples.append, stop), daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive(), "run did not return after stop"


def mcp(factory: MockFactory, **options: Any) -> Mcp3008Driver:
    return Mcp3008Driver.from_options(
        "p_prk", {"channel": 3, "calibration": CAL, "interval_s": 0.005} | options, factory
    )


# -- MCP3008 ------------------------------------------------------------------------------------------


def test_mcp3008_voltage_through_divider_and_calibration_gives_pascals(factory, chip):
    driver = mcp(factory, divider=1.5)  # a 5 V transducer through a 1:1.5 divider
    code = chip.set_volts(3, 2.5 / 1.5)  # 2.5 V at the transducer = 100 kPa
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 3)
    s = samples[0]
    assert (s.sensor, s.quantity, s.quality) == ("p_prk", Quantity.PRESSURE, Quality.GOOD)
    volts = fraction(code) * VREF * 1.5
    assert s.value == pytest.approx((volts - 0.5) * 50000.0, rel=1e-12)
    lsb_pa = VREF / 1024 * 1.5 * 50000.0
    assert abs(s.value - 100000.0) < lsb_pa
    assert abs(s.time - time.time()) < 1.0
    DigitalOutputDevice(8, pin_factory=factory).close()  # stop closed the chip: its select pin is free again


@pytest.mark.parametrize(
    ("options", "quantity", "expected"),
    [
        ({"unit": "kPa", "calibration": {"volts": [0.5, 4.5], "values": [0.0, 200.0]}}, Quantity.PRESSURE, 1e5),
        (
            {"quantity": "temperature", "unit": "degC", "calibration": {"volts": [0.5, 4.5], "values": [-50, 150]}},
            Quantity.TEMPERATURE,
            273.15 + 50.0,
        ),
    ],
)
def test_mcp3008_unit_conversion_to_si(factory, chip, options, quantity, expected):
    code = chip.set_volts(3, 2.5)
    driver = mcp(factory, **options)
    with running(driver) as samples:
        wait_for(lambda: samples)
    span = 200000.0 if quantity is Quantity.PRESSURE else 200.0
    assert samples[0].quantity is quantity
    assert samples[0].value == pytest.approx(expected + (fraction(code) * VREF - 2.5) / 4.0 * span, rel=1e-12)


def test_mcp3008_software_spi_on_any_pins(factory, spi_default):
    chip = FakeMcp3008(factory, clock=6, mosi=13, miso=19, select=5)
    try:
        code = chip.set_volts(0, 1.2)
        driver = Mcp3008Driver.from_options(
            "p",
            {"channel": 0, "calibration": CAL, "select_pin": 5, "clock_pin": 6, "mosi_pin": 13, "miso_pin": 19},
            factory,
        )
        assert driver.settings.software_pins == (5, 6, 13, 19)
        with running(driver) as samples:
            wait_for(lambda: samples)
        assert samples[0].value == pytest.approx(driver.convert(fraction(code)))
        assert samples[0].quality is Quality.GOOD
    finally:
        chip.close()


def test_mcp3008_averages_samples_readings(factory, chip):
    chip.set_codes(3, 400, 600)
    driver = mcp(factory, samples=8)
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 3)
    assert chip.conversions[3] == 8 * len(samples)
    for s in samples:
        assert s.value == pytest.approx(driver.convert(fraction(500)), rel=1e-12)
    single = mcp(factory, samples=1)
    with running(single) as samples:
        wait_for(lambda: len(samples) >= 4)
    assert {round(s.value) for s in samples} == {
        round(single.convert(fraction(400))),
        round(single.convert(fraction(600))),
    }


@pytest.mark.parametrize("codes", [(0,), (1023,), (500, 500, 0, 500)], ids=["open", "shorted", "one-of-batch"])
def test_mcp3008_rail_reading_is_bad_and_logged_once_per_episode(factory, chip, caplog, codes):
    chip.set_codes(3, *codes)
    driver = mcp(factory, samples=4)
    with caplog.at_level(logging.INFO, logger=LOGGER), running(driver) as samples:
        wait_for(lambda: len(samples) >= 4)
        chip.set_volts(3, 1.5)
        wait_for(lambda: samples[-1].quality is Quality.GOOD)
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert len(bad) >= 4 and all(math.isnan(s.value) for s in bad)
    assert samples[0].quality is Quality.BAD
    rail_warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "rail" in r.getMessage()]
    assert len(rail_warnings) == 1
    assert any("over after" in r.getMessage() for r in caplog.records)
    assert driver.rail_readings == len(bad)


def test_mcp3008_device_error_is_retried_and_reported_bad(factory, chip, caplog):
    blocker = DigitalOutputDevice(8, pin_factory=factory)  # someone else holds the chip select pin
    driver = mcp(factory)
    driver.retry_first_s = 0.01
    driver.retry_cap_s = 0.02
    chip.set_volts(3, 1.5)
    with caplog.at_level(logging.INFO, logger=LOGGER), running(driver) as samples:
        wait_for(lambda: driver.errors >= 3)
        assert samples and all(s.quality is Quality.BAD for s in samples)
        blocker.close()
        wait_for(lambda: samples[-1].quality is Quality.GOOD)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPIOPinInUse" in warnings[0].getMessage()
    assert driver.reconnects == 1


def test_mcp3008_from_options_defaults_and_no_hardware():
    driver = Mcp3008Driver.from_options("p", {"channel": 0, "calibration": CAL}, pin_factory=object())
    s = driver.settings
    assert (s.quantity, s.unit, s.vref_v, s.divider, s.interval_s, s.samples) == (
        Quantity.PRESSURE,
        "Pa",
        3.3,
        1.0,
        0.1,
        8,
    )
    assert (s.port, s.device, s.software_pins) == (0, 0, None)
    assert driver.driver == "mcp3008"
    assert driver.convert(0.5 / 3.3) == pytest.approx(0.0)
    assert (
        Mcp3008Driver.from_options("t", {"channel": 1, "quantity": "temperature", "calibration": CAL}).settings.unit
        == "K"
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"channel": ...}, "channel"),
        ({"channel": 8}, "channel"),
        ({"channel": "0"}, "channel"),
        ({"chanel": 1}, "chanel"),
        ({"quantity": "humidity"}, "quantity"),
        ({"unit": "furlong"}, "unit"),
        ({"quantity": "temperature", "unit": "hPa"}, "unit"),
        ({"calibration": ...}, "calibration"),
        ({"calibration": [0.5, 4.5]}, "calibration"),
        ({"calibration": {"volts": [0.5]}}, "calibration.volts"),
        ({"calibration": {"volts": [0.5, 4.5]}}, "calibration.values"),
        ({"calibration": {"volts": [1, 1], "values": [0, 1]}}, "calibration.volts"),
        ({"calibration": {"volts": [0.5, 4.5], "values": [0, "x"]}}, "calibration.values"),
        ({"calibration": CAL | {"offset": 1}}, "calibration.offset"),
        ({"vref_v": 0}, "vref_v"),
        ({"vref_v": 12.0}, "vref_v"),
        ({"divider": -1}, "divider"),
        ({"interval_s": 0}, "interval_s"),
        ({"samples": 0}, "samples"),
        ({"samples": 2.5}, "samples"),
        ({"port": 1}, "port"),
        ({"device": 2}, "device"),
        ({"select_pin": 5}, "clock_pin"),
        ({"select_pin": 5, "clock_pin": 6, "mosi_pin": 13, "miso_pin": 19, "device": 1}, "device"),
        ({"select_pin": 5, "clock_pin": 40, "mosi_pin": 13, "miso_pin": 19}, "clock_pin"),
        ({"select_pin": 5, "clock_pin": 6, "mosi_pin": 6, "miso_pin": 19}, "mosi_pin"),
    ],
)
def test_mcp3008_option_errors_name_the_key(change, key):
    options = {"channel": 0, "calibration": CAL} | change
    options = {k: v for k, v in options.items() if v is not ...}
    with pytest.raises(OptionError) as err:
        Mcp3008Driver.from_options("p", options)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")
    assert key.split(".")[0] in MCP3008_KEYS | {"chanel"}


# -- reed switch ---------------------------------------------------------------------------------------


def reed(factory: MockFactory, **options: Any) -> ReedHatchDriver:
    return ReedHatchDriver.from_options("prk-hatch", {"gpio": 17, "heartbeat_s": 10.0} | options, factory)


@pytest.mark.parametrize("closed_level", ["low", "high"])
def test_reed_initial_state_and_edges(factory, closed_level):
    pin = factory.pin(17)
    close, open_ = (pin.drive_low, pin.drive_high) if closed_level == "low" else (pin.drive_high, pin.drive_low)
    with running(reed(factory, closed_level=closed_level)) as samples:
        wait_for(lambda: samples)  # the pull holds the switch's far side: an open switch, an open hatch
        close()
        open_()
        close()
    assert [s.value for s in samples] == [1.0, 0.0, 1.0, 0.0]
    assert all(s.sensor == "prk-hatch" and s.quantity is Quantity.HATCH and s.quality is Quality.GOOD for s in samples)
    assert [s.time for s in samples] == sorted(s.time for s in samples)
    Button(17, pin_factory=factory).close()  # closed on stop


def test_reed_heartbeat_re_emits_current_state(factory):
    with running(reed(factory, heartbeat_s=0.02)) as samples:
        wait_for(lambda: len(samples) >= 4)
        factory.pin(17).drive_low()
        n = len(samples)
        wait_for(lambda: len(samples) >= n + 3)
    assert {s.value for s in samples[:4]} == {1.0}
    assert {s.value for s in samples[n - 1 :]} == {0.0}  # the edge, then heartbeats
    assert len(samples) <= 60


def test_reed_heartbeat_reads_the_pin_so_a_lost_edge_is_repaired(factory):
    driver = reed(factory, heartbeat_s=0.02)
    with running(driver) as samples:
        wait_for(lambda: samples)
        factory.pin(17)._change_state(False)  # MockPin internals: change the level without firing the edge
        wait_for(lambda: samples[-1].value == 0.0)
    assert driver.missed_edges == 1


def test_reed_pin_in_use_is_retried(factory, caplog):
    blocker = DigitalOutputDevice(17, pin_factory=factory)
    driver = reed(factory)
    driver.retry_first_s = 0.01
    driver.retry_cap_s = 0.02
    with caplog.at_level(logging.INFO, logger=LOGGER), running(driver) as samples:
        wait_for(lambda: driver.errors >= 3)
        assert samples == []
        blocker.close()
        wait_for(lambda: samples)
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"gpio": ...}, "gpio"),
        ({"gpio": 28}, "gpio"),
        ({"gpio": True}, "gpio"),
        ({"closed_level": "down"}, "closed_level"),
        ({"debounce_s": -0.1}, "debounce_s"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"pull": "up"}, "pull"),
    ],
)
def test_reed_option_errors_name_the_key(change, key):
    options = {k: v for k, v in ({"gpio": 17} | change).items() if v is not ...}
    with pytest.raises(OptionError) as err:
        ReedHatchDriver.from_options("h", options)
    assert err.value.key == key


def test_reed_defaults():
    s = ReedHatchDriver.from_options("h", {"gpio": 4}).settings
    assert (s.gpio, s.closed_low, s.debounce_s, s.heartbeat_s) == (4, True, 0.05, 1.0)
    assert ReedHatchDriver.from_options("h", {"gpio": 4, "debounce_s": 0}).settings.debounce_s is None
    assert {"gpio", "closed_level", "debounce_s"} <= REED_KEYS


# -- ack button ----------------------------------------------------------------------------------------


class Calls:
    """Counts calls; raises on the calls numbered in `fail_on`."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.count = 0
        self.fail_on = fail_on

    def __call__(self) -> None:
        self.count += 1
        if self.count in self.fail_on:
            raise RuntimeError("callback broke")


@contextmanager
def ack_button(factory: MockFactory, short: Calls, long: Calls, long_press_s: float = 0.1) -> Iterator[Any]:
    button = AckButton(24, short, long, long_press_s=long_press_s, pin_factory=factory)
    try:
        yield factory.pin(24)
    finally:
        button.close()
        button.close()  # idempotent


def test_ack_short_press(factory):
    short, long = Calls(), Calls()
    with ack_button(factory, short, long, long_press_s=0.3) as pin:
        assert pin.state  # pull-up: released reads high
        pin.drive_low()
        time.sleep(0.02)
        pin.drive_high()
        time.sleep(0.35)  # past long_press_s: nothing more may fire
    assert (short.count, long.count) == (1, 0)
    Button(24, pin_factory=factory).close()  # close() released the pin


def test_ack_long_press_fires_once_and_not_short(factory):
    short, long = Calls(), Calls()
    with ack_button(factory, short, long) as pin:
        pin.drive_low()
        wait_for(lambda: long.count == 1)
        time.sleep(0.25)  # held for over two more long_press_s: no repeat
        pin.drive_high()
        assert (short.count, long.count) == (0, 1)
        pin.drive_low()
        pin.drive_high()
    assert (short.count, long.count) == (1, 1)


def test_ack_raising_callbacks_do_not_break_the_next_press(factory, caplog):
    short, long = Calls(fail_on=(1,)), Calls(fail_on=(1,))
    with caplog.at_level(logging.ERROR, logger=LOGGER), ack_button(factory, short, long) as pin:
        for _ in range(2):
            pin.drive_low()
            pin.drive_high()  # the short callback runs here, on this thread: it must not raise
        for _ in range(2):  # the long callback runs on gpiozero's hold thread: it must survive a raise
            pin.drive_low()
            wait_for(lambda n=long.count: long.count == n + 1)
            pin.drive_high()
    assert (short.count, long.count) == (2, 2)
    assert len([r for r in caplog.records if "callback failed" in r.getMessage()]) == 2


def test_ack_release_without_a_seen_press_is_not_a_press(factory):
    # MockPin's pull-up drives the pin high when the Button is made, so a button stuck low at start
    # cannot be staged; gpiozero fires no when_pressed for the initial state, only when_released later.
    short, long = Calls(), Calls()
    button = AckButton(24, short, long, long_press_s=5.0, pin_factory=factory)
    try:
        button._released()
        assert (short.count, long.count) == (0, 0)
    finally:
        button.close()


# -- without gpiozero ----------------------------------------------------------------------------------


def test_missing_gpiozero_is_a_clear_error(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # import gpiozero -> ImportError
    with pytest.raises(RuntimeError, match=r"gpiozero is not installed: pip install gpiozero"):
        AckButton(24, Calls(), Calls())
    for driver in (
        Mcp3008Driver.from_options("p", {"channel": 0, "calibration": CAL}),
        ReedHatchDriver.from_options("h", {"gpio": 17}),
    ):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger=LOGGER), running(driver) as samples:  # returns on stop
            wait_for(lambda: any("gpiozero is not installed" in r.getMessage() for r in caplog.records))
        assert samples == []

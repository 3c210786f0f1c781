"""The daemon: builds drivers, core and outputs from the configuration and runs them.

Data flows one way. Driver threads put samples on a queue; the main loop takes them in
arrival order (timestamps made non-decreasing), records them, feeds the core, lets the
core's clock tick when no sample comes, and hands every event to the outputs. The main
loop never waits on a device or the network for longer than one tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch import present
from hullwatch.config import Config, ConfigError
from hullwatch.core.lifecycle import AlarmBook
from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, Event, HatchChange, Notice, Sample
from hullwatch.core.monitor import Monitor
from hullwatch.desk import AlarmDesk
from hullwatch.recorder import Recorder
from hullwatch.sensors.base import Driver, OptionError

log = logging.getLogger("hullwatch")

TICK_S = 0.25  # the core's clock advances at least this often without samples


@dataclass
class Built:
    """Everything the daemon runs, built from a configuration."""

    drivers: list[Driver]
    clock: Callable[[], float]


def build_drivers(cfg: Config, pin_factory: Any = None, for_run: bool = True) -> Built:
    """One driver per device, validated; ConfigError naming `sensor[i].key` for bad options.

    With for_run False (check-config), simulated sensors without a [simulation] section are
    fine: `analyze` takes their values from a samples file.
    """
    problems: list[str] = []
    drivers: list[Driver] = []
    clock: Callable[[], float] = time.time
    simulated = [s.name for s in cfg.sensors if s.driver == "simulated"]
    if simulated and (for_run or cfg.simulation is not None):
        from hullwatch.sim.live import SimulatedModule

        try:
            sim = SimulatedModule.from_config(cfg)
        except (OSError, ValueError) as exc:
            raise ConfigError([f"{cfg.path}: simulation: {exc}"]) from None
        drivers.append(sim)
        clock = sim.clock
    for i, s in enumerate(cfg.sensors):
        if s.driver == "simulated":
            continue
        try:
            drivers.append(_driver(s.driver, s.name, s.options, pin_factory))
        except OptionError as exc:
            problems.append(f"{cfg.path}: sensor[{i}].{exc.key}: {exc.message}")
    simulated_hatches = getattr(drivers[0], "hatches", []) if drivers else []
    for i, h in enumerate(cfg.module.hatches):
        switch = cfg.hatch_switches.get(h.name)
        if switch is not None and h.name not in simulated_hatches:
            from hullwatch.sensors.gpio import ReedHatchDriver

            try:
                drivers.append(ReedHatchDriver.from_options(h.name, switch, pin_factory))
            except OptionError as exc:
                problems.append(f"{cfg.path}: hatch[{i}].{exc.key}: {exc.message}")
    if problems:
        raise ConfigError(problems)
    return Built(drivers, clock)


def _driver(kind: str, name: str, options: Mapping[str, Any], pin_factory: Any) -> Driver:
    if kind == "serial":
        from hullwatch.sensors.serial_line import SerialDriver

        return SerialDriver.from_options(name, options)
    if kind == "modbus":
        from hullwatch.sensors.modbus import ModbusDriver

        return ModbusDriver.from_options(name, options)
    if kind == "mcp3008":
        from hullwatch.sensors.gpio import Mcp3008Driver

        return Mcp3008Driver.from_options(name, options, pin_factory)
    raise OptionError("driver", f"unknown driver {kind!r}")


class Daemon:
    """The running monitor."""

    def __init__(self, cfg: Config, pin_factory: Any = None) -> None:
        self.cfg = cfg
        built = build_drivers(cfg, pin_factory)
        self.drivers = built.drivers
        self.clock = built.clock
        self.monitor = Monitor(cfg.module)
        self.samples: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.recorder = Recorder(cfg.recorder.path) if cfg.recorder else None
        self.outputs: list[Callable[[Event], None]] = [EventLog().write]
        self.annunciator = _annunciator(cfg, pin_factory, on_ack=lambda: self.desk.acknowledge_all("button"))
        limits = cfg.module.alarms
        self.desk = AlarmDesk(
            AlarmBook(limits.latching, limits.max_shelve_s),
            self.clock,
            self.annunciator.show if self.annunciator else lambda _a: None,
        )
        self._threads: list[threading.Thread] = []
        self._last_time = 0.0

    def run(self, stop: threading.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Run until stop is set."""
        for d in self.drivers:
            t = threading.Thread(target=d.run, args=(self.samples.put, stop), name=f"driver-{d.name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "monitoring %s: volumes %s; %d driver(s)",
            self.cfg.station,
            ", ".join(self.monitor.volumes),
            len(self.drivers),
        )
        ready()
        try:
            while not stop.is_set():
                self.step(TICK_S)
        finally:
            self.close()

    def step(self, wait_s: float) -> list[Event]:
        """Take what samples there are (waiting up to wait_s for the first), feed the core, publish."""
        events: list[Event] = []
        now = self.clock()  # before draining: every reading up to `now` is then on the queue
        try:
            sample = self.samples.get(timeout=wait_s)
            while True:
                events += self._feed(sample)
                sample = self.samples.get_nowait()
        except queue.Empty:
            pass
        events += self.monitor.tick(max(now, self._last_time))
        self.desk.transitions(e for e in events if isinstance(e, AlarmTransition))  # the annunciator first
        self.desk.tick(max(now, self._last_time))
        for event in events:
            for output in self.outputs:
                output(event)
        return events

    def _feed(self, sample: Sample) -> list[Event]:
        if sample.time < self._last_time:  # threads race by microseconds; the samples file must not go back
            sample = sample._replace(time=self._last_time)
        self._last_time = sample.time
        if self.recorder is not None:
            self.recorder.write(sample)
        return self.monitor.feed(sample)

    def close(self) -> None:
        """Stop reading, flush what was read, close the outputs."""
        for t in self._threads:
            t.join(timeout=2.0)
        try:
            while True:
                self._feed(self.samples.get_nowait())
        except queue.Empty:
            pass
        if self.recorder is not None:
            self.recorder.close()
        if self.annunciator is not None:
            self.annunciator.close()
        log.info("stopped")


def _annunciator(cfg: Config, pin_factory: Any, on_ack: Callable[[], None]) -> Any:
    """The buzzer, LEDs and acknowledge button, when [annunciator] is configured."""
    a = cfg.annunciator
    if a is None:
        return None
    from hullwatch.annunciator import Annunciator

    return Annunciator(
        a.buzzer_gpio, a.led_gpio, a.ack_button_gpio, on_ack=on_ack, pin_factory=pin_factory, led2_pin=a.fault_led_gpio
    )


class EventLog:
    """Logs events: alarms as warnings (active) or info (cleared); each volume's estimate every minute."""

    def __init__(self, estimate_every_s: float = 60.0) -> None:
        self.estimate_every_s = estimate_every_s
        self._next_estimate: dict[str, float] = {}

    def write(self, event: Event) -> None:
        """Log one event."""
        if isinstance(event, AlarmTransition):
            level = logging.WARNING if event.state is AlarmState.ACTIVE else logging.INFO
            log.log(level, "%s", present.describe(event))
        elif isinstance(event, Estimate):
            due = self._next_estimate.get(event.volume, -1.0)
            if event.time >= due:
                self._next_estimate[event.volume] = event.time + self.estimate_every_s
                log.info("%s", present.describe(event))
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("%s", present.describe(event))
        elif isinstance(event, HatchChange | Notice):
            log.info("%s", present.describe(event))

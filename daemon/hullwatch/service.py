"""The daemon: builds drivers, core and outputs from the configuration and runs them.

Data flows one way. Driver threads put samples on a queue; the main loop takes them in
arrival order (timestamps made non-decreasing), records them, feeds the core, lets the
core's clock tick when no sample comes, and hands every event to the outputs. The main
loop never waits on a device or the network for longer than one tick: samples, estimates,
alarm transitions and self-metrics go into the spool, whose forwarder threads deliver them
to MQTT and InfluxDB; the annunciator is driven directly, before anything else.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch import present
from hullwatch.config import Config, ConfigError
from hullwatch.core.lifecycle import AlarmBook, LifecycleChange
from hullwatch.core.model import (
    AlarmState,
    AlarmTransition,
    Estimate,
    Event,
    HatchChange,
    Notice,
    Quality,
    Quantity,
    Sample,
    Severity,
)
from hullwatch.core.monitor import Monitor
from hullwatch.desk import AlarmDesk
from hullwatch.recorder import Recorder
from hullwatch.sensors.base import Driver, OptionError
from hullwatch.sinks.mqtt import sample_payload
from hullwatch.systemd import Notifier

log = logging.getLogger("hullwatch")

TICK_S = 0.25  # the core's clock advances at least this often without samples
STATUS_EVERY_S = 5.0
METRICS_EVERY_S = 10.0
SPOOL_ADVISORY_CLEAR_S = 60.0  # the spool advisory clears after this long without dropping


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
        self.mqtt = _mqtt(cfg, self.drivers, self.desk.command) if cfg.mqtt else None
        if self.mqtt is not None:
            self.desk.outputs.append(self._publish_alarm)
        self.influx = _influx(cfg) if cfg.influxdb else None
        sinks = [s for s in (self.mqtt, self.influx) if s is not None]
        self.spool = _spool(cfg) if sinks else None
        if self.spool is not None:
            self.spool.start(sinks)
        self._sensor_health: dict[str, list] = {s.name: [0, "good"] for s in cfg.sensors}  # errors, quality
        self.metrics_every_s = METRICS_EVERY_S
        self._next_metrics = time.monotonic()  # the first right away: the backlog found at start shows
        self._spool_dropped = self.spool.counters.get("dropped", 0) if self.spool else 0
        self._spool_drop_at: float | None = None  # monotonic time of the last drop while the advisory is on
        self._threads: list[threading.Thread] = []
        self._driver_stop = threading.Event()
        self._last_time = 0.0
        self._sensor_time: dict[str, float] = {}
        self._last_good = -math.inf  # monotonic time of the last good sample
        self._latest: dict[str, Estimate] = {}

    def run(
        self, stop: threading.Event, notifier: Notifier | None = None, reload: Callable[[], bool] = lambda: False
    ) -> None:
        """Run until stop is set, or until `reload()` says a new configuration is ready to take over.

        systemd hears READY=1 once the drivers run, a STATUS line every few seconds, and
        WATCHDOG=1 only while samples keep arriving: dead sensors or a stuck loop let it fire.
        """
        notifier = notifier or Notifier({})
        self._driver_stop = threading.Event()
        for d in self.drivers:
            t = threading.Thread(
                target=d.run, args=(self.samples.put, self._driver_stop), name=f"driver-{d.name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        log.info(
            "monitoring %s: volumes %s; %d driver(s)",
            self.cfg.station,
            ", ".join(self.monitor.volumes),
            len(self.drivers),
        )
        notifier.ready(self.status())
        next_status = next_ping = time.monotonic()
        try:
            while not stop.is_set() and not reload():
                self.step(TICK_S)
                now = time.monotonic()
                if notifier.watchdog_s is not None and now >= next_ping and self.samples_fresh():
                    notifier.watchdog()
                    next_ping = now + notifier.watchdog_s
                if now >= next_status:
                    notifier.status(self.status())
                    next_status = now + STATUS_EVERY_S
        finally:
            self.close()

    def samples_fresh(self) -> bool:
        """Whether a good sample arrived within the stale limit."""
        return time.monotonic() - self._last_good < self.cfg.module.alarms.sensor.stale_after_s

    def status(self) -> str:
        """One line for systemd's STATUS: each volume's state, the alarms, the sensors."""
        parts = []
        for vid, v in self.monitor.volumes.items():
            est = self._latest.get(vid)
            rate = (
                f" {est.leak_kg_per_day:.3f}±{est.leak_kg_per_day_sigma:.2g} kg/day"
                if est and est.leak_kg_per_day is not None
                else ""
            )
            parts.append(f"{vid} {v.pressure:.0f} Pa{rate}" if v.pressure == v.pressure else f"{vid} no data")
        book = self.desk.book
        active = [r for r in book.records() if r.condition_active]
        worst = max((r.severity for r in active), default=None)
        alarms = f"{len(active)} active alarm(s), worst {worst.label}" if worst else "no active alarms"
        return "; ".join(parts) + f" | {alarms}"

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
            if isinstance(event, Estimate):
                self._latest[event.volume] = event
                if self.spool is not None:
                    self.spool.append("estimate", event.time, event.to_dict())
            elif isinstance(event, AlarmTransition) and self.spool is not None:
                self.spool.append("alarm", event.time, event.to_dict())
            for output in self.outputs:
                output(event)
        if self.spool is not None and time.monotonic() >= self._next_metrics:
            self._next_metrics = time.monotonic() + self.metrics_every_s
            self._self_metrics(max(now, self._last_time))
        return events

    def _feed(self, sample: Sample) -> list[Event]:
        if sample.quality is not Quality.BAD:
            self._last_good = time.monotonic()
        if sample.time < self._last_time:  # threads race by microseconds; the samples file must not go back
            sample = sample._replace(time=self._last_time)
        previous = self._sensor_time.get(sample.sensor)
        if previous is not None and sample.time < previous + 1e-6:
            # two readings of one sensor in the same microsecond (a burst of buffered lines) would be one
            # point in InfluxDB, whose key is series + timestamp: keep them a microsecond apart
            sample = sample._replace(time=previous + 1e-6)
        self._sensor_time[sample.sensor] = sample.time
        self._last_time = sample.time
        if self.recorder is not None:
            self.recorder.write(sample)
        if sample.quantity is Quantity.HATCH:
            if self.mqtt is not None:
                self.mqtt.hatch(sample.sensor, sample.value >= 0.5)
            if self.spool is not None:
                self.spool.append("hatch", sample.time, {"hatch": sample.sensor, "open": sample.value >= 0.5})
        else:
            health = self._sensor_health.setdefault(sample.sensor, [0, "good"])
            health[1] = sample.quality.value
            if sample.quality is not Quality.GOOD:
                health[0] += 1
            if self.spool is not None:
                self.spool.append("sample", sample.time, {"sensor": sample.sensor, **sample_payload(sample)})
        return self.monitor.feed(sample)

    def _self_metrics(self, now: float) -> None:
        """Spool and sink health and sensor error counts: to the spool (InfluxDB) and to `P/metrics` (retained)."""
        stats = self.spool.stats()
        dropped = stats["dropped"]
        spool = {k: stats[k] for k in ("depth", "oldest_unsent_s", "dropped", "size_bytes")}
        sinks = {}
        for sink in (self.mqtt, self.influx):
            if sink is not None:
                sinks[sink.name] = {
                    "sent": self.spool.sent(sink.name),
                    "rejected": self.spool.counters.get(f"rejected.{sink.name}", 0),
                    "backlog": stats[f"backlog.{sink.name}"],
                    "connected": sink.connected,
                }
        self.spool.append("metric", now, {"measurement": "spool", "fields": spool})
        for name, fields in sinks.items():
            self.spool.append("metric", now, {"measurement": "sink", "tags": {"sink": name}, "fields": fields})
        sensors = {n: {"errors": e, "quality": q} for n, (e, q) in self._sensor_health.items()}
        for name, fields in sensors.items():
            record = {"measurement": "sensor_health", "tags": {"sensor": name}, "fields": fields}
            self.spool.append("metric", now, record)
        if self.mqtt is not None:
            self.mqtt.publish_json("metrics", {"time": now, "spool": spool, "sinks": sinks, "sensors": sensors}, True)
        self._spool_advisory(now, dropped)

    def _spool_advisory(self, now: float, dropped: int) -> None:
        """An advisory while the spool is dropping its oldest records to stay within its budget."""
        mono = time.monotonic()
        if dropped > self._spool_dropped:
            if self._spool_drop_at is None:
                self._spool_transition(now, AlarmState.ACTIVE, dropped, "spool full: oldest records dropped")
            self._spool_drop_at = mono
        elif self._spool_drop_at is not None and mono - self._spool_drop_at > SPOOL_ADVISORY_CLEAR_S:
            self._spool_drop_at = None
            self._spool_transition(now, AlarmState.CLEARED, dropped, "")
        self._spool_dropped = dropped

    def _spool_transition(self, now: float, state: AlarmState, dropped: int, reason: str) -> None:
        t = AlarmTransition(now, "spool_full", "spool", Severity.ADVISORY, state, float(dropped), None, reason)
        self.desk.transitions([t])
        self.spool.append("alarm", now, t.to_dict())
        for output in self.outputs:
            output(t)

    def close(self) -> None:
        """Stop reading, flush what was read, close the outputs."""
        self._driver_stop.set()
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
        if self.spool is not None:
            self.spool.close(drain_s=1.0)
        if self.influx is not None:
            self.influx.close()
        if self.mqtt is not None:
            self.mqtt.stop()
        log.info("stopped")

    def _publish_alarm(self, change: LifecycleChange) -> None:
        """An alarm's lifecycle changed: its retained MQTT topic, and its volume's any-alarm flag."""
        alarm, source, severity = change.key
        self.mqtt.alarm(change.record.to_dict(), alarm, source, severity.label, gone=change.gone)
        if source in self.monitor.volumes or change.gone:
            active = any(r.condition_active for r in self.desk.book.records() if r.source == source)
            self.mqtt.volume_alarm(source, active)


def _mqtt(cfg: Config, drivers: list[Driver], on_command: Callable[[str, dict, str], dict]) -> Any:
    """The MQTT sink, started (it connects in the background, retrying forever)."""
    from hullwatch.sinks.mqtt import MqttSetupError, MqttSink, StationDescription

    quantities = {
        d.name: [q.value for q in d.settings.parser.quantities]
        for d in drivers
        if hasattr(d, "settings") and hasattr(d.settings, "parser")
    }
    sink = MqttSink(
        cfg.mqtt,
        cfg.station,
        on_command,
        StationDescription.from_config(cfg, quantities),
        homeassistant=cfg.mqtt.homeassistant,
        discovery_prefix=cfg.mqtt.discovery_prefix,
    )
    try:
        sink.start()
    except MqttSetupError as exc:
        raise ConfigError([f"{cfg.path}: mqtt: {exc}"]) from None
    return sink


def _influx(cfg: Config) -> Any:
    """The InfluxDB sink (it sends nothing until the spool's forwarder runs)."""
    from hullwatch.sinks.influx import InfluxSetupError, InfluxSink

    try:
        return InfluxSink(cfg.influxdb, cfg.station)
    except InfluxSetupError as exc:
        raise ConfigError([f"{cfg.path}: {exc}"]) from None


def _spool(cfg: Config) -> Any:
    """The spool: at [spool] path; without that section, in systemd's $STATE_DIRECTORY, else a temporary file."""
    from hullwatch.sinks.spool import Spool, SpoolInUse

    s = cfg.spool
    path = s.path
    if not s.configured:
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if not state:
            log.warning("spool: no [spool] section and no $STATE_DIRECTORY: a temporary file, lost at exit")
        path = os.path.join(state, os.path.basename(s.path)) if state else None
    try:
        return Spool(path, s.max_mb, s.commit_interval_s, s.replay_per_s)
    except SpoolInUse as exc:
        raise ConfigError([f"{cfg.path}: spool.path: {exc}"]) from None
    except Exception as exc:  # sqlite3.Error, OSError
        raise ConfigError([f"{cfg.path}: spool.path: cannot open {path}: {exc}"]) from None


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
            fields = {
                "ALARM": event.alarm,
                "SOURCE": event.source,
                "SEVERITY": event.severity.label,
                "ALARM_STATE": event.state.value,
            }
            log.log(level, "%s", present.describe(event), extra=fields)
        elif isinstance(event, Estimate):
            due = self._next_estimate.get(event.volume, -1.0)
            if event.time >= due:
                self._next_estimate[event.volume] = event.time + self.estimate_every_s
                log.info("%s", present.describe(event))
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("%s", present.describe(event))
        elif isinstance(event, HatchChange | Notice):
            log.info("%s", present.describe(event))

"""The daemon: builds drivers, core and outputs from the configuration and runs them.

Data flows one way. Driver threads put samples on a queue; the main loop takes them in
arrival order (timestamps made non-decreasing), at most `MAX_BATCH` at a time so that it
looks at `stop` and pings the watchdog between batches, records them, feeds the core, lets
the core's clock tick when no sample comes, and hands every event to the outputs. The main
loop never waits on a device, a disk or the network for longer than one tick: samples,
estimates, alarm transitions and self-metrics go into the spool, whose forwarder threads
deliver them to MQTT and InfluxDB, and the recorder writes from a thread of its own; the
annunciator is driven directly, before anything else.

Build, then swap. `build()` makes every resource a configuration needs — drivers, files,
credentials, sinks, spool, recorder, GPIO pins — into a daemon that does not run yet, or
raises BuildError (one line per problem and a sysexits code); nothing it made is left open.
`run()` starts it. A reload (`rebuild()`) builds the new daemon completely while the old one
runs, taking over what the old one holds with unchanged settings (the spool file, the
recorder file, the annunciator's pins); if the new annunciator needs pins the old one holds,
the old one's are released first and taken back if the new one still cannot be built. A
reload that cannot be built leaves the old daemon running and says why: log lines, STATUS,
and a `reload_fault` advisory.

Optional parts fail alone. The recorder, the spool and each sink report trouble (`problem`,
counters); the main loop turns it into advisory alarms — `recorder_fault`, `spool_fault`,
`spool_full`, `sink_fault` (a sink down for `SINK_FAULT_AFTER_S`) — while the parts retry by
themselves. Nothing they do stops sensors → core → annunciator.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hullwatch import config, present
from hullwatch.config import Config, ConfigError, MqttConfig
from hullwatch.core.lifecycle import AlarmBook, LifecycleChange
from hullwatch.core.model import (
    AlarmState,
    AlarmTransition,
    Estimate,
    Event,
    HatchChange,
    LevelStep,
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

EX_UNAVAILABLE, EX_CONFIG = 69, 78  # sysexits (ICD §1)

TICK_S = 0.25  # the core's clock advances at least this often without samples
MAX_BATCH = 1000  # samples per step: the loop looks at stop and the watchdog between batches
STATUS_EVERY_S = 5.0
METRICS_EVERY_S = 10.0
FAULTS_EVERY_S = 1.0  # how often the optional parts' trouble is looked at
ADVISORY_HOLD_S = 60.0  # an advisory raised by an event (records dropped, a file moved aside) clears after this
SINK_FAULT_AFTER_S = 30.0  # a sink unavailable this long raises sink_fault (a broker restart does not)
# SIGTERM: what each part of the stop may take, well within the unit's TimeoutStopSec=10
STOP_DRIVERS_S, STOP_DRAIN_S, STOP_RECORDER_S, STOP_SPOOL_S, STOP_SINK_S = 1.0, 1.5, 1.0, 1.5, 1.0
OWN_ALARMS = frozenset({"spool_full", "spool_fault", "sink_fault", "recorder_fault", "reload_fault"})
# drivers' own trouble counters, as sensor_health fields (the driver's `errors` becomes `device_errors`)
TROUBLE_COUNTERS = {
    "bad_lines": "bad_lines",
    "failures": "failures",
    "errors": "device_errors",
    "rail_readings": "rail_readings",
    "missed_edges": "missed_edges",
}
RECOVERY_COUNTERS = {"reconnects": "reconnects"}


class BuildError(Exception):
    """A configuration's resources cannot be built: one line per problem, and the exit code (sysexits)."""

    def __init__(self, problems: list[str], exit_code: int = EX_CONFIG, pins_busy: bool = False) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.exit_code = exit_code
        self.pins_busy = pins_busy  # a GPIO pin is held by another device of this process


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


def build(cfg: Config, pin_factory: Any = None, previous: Daemon | None = None) -> Daemon:
    """Every resource `cfg` needs, in a daemon that does not run yet; BuildError if one cannot be made."""
    try:
        return Daemon(cfg, pin_factory, previous)
    except BuildError:
        raise
    except Exception as exc:  # a failure nobody foresaw: still one line, never a traceback
        log.debug("building from %s failed", cfg.path, exc_info=True)
        raise BuildError([f"{cfg.path}: cannot start: {type(exc).__name__}: {exc}"], EX_UNAVAILABLE) from None


def rebuild(old: Daemon, path: str) -> Daemon:
    """The daemon of the configuration now at `path`, taking over what `old` can hand over; BuildError if not."""
    try:
        cfg = config.load(path)
    except ConfigError as exc:
        raise BuildError(exc.problems) from None
    except OSError as exc:
        raise BuildError([f"{path}: {exc.strerror or exc}"]) from None
    return build(cfg, old.pin_factory, previous=old)


class _AckRoute:
    """Where the acknowledge button goes: the daemon running now (a reload hands the annunciator over)."""

    def __init__(self) -> None:
        self.target: Callable[[], Any] = lambda: None

    def __call__(self) -> None:
        self.target()


class _FaultWatch:
    """An advisory that is active while a part reports a problem, or for a while after it counted an event."""

    def __init__(self, alarm: str, source: str, count: int = 0) -> None:
        self.alarm = alarm
        self.source = source
        self.count = count
        self.active = False
        self._hold_until = -math.inf
        self._event = ""

    def update(self, problem: str | None, count: int = 0, event: str = "") -> tuple[AlarmState, str] | None:
        """The transition due now, if any: (state, reason)."""
        mono = time.monotonic()
        if count > self.count:
            self.count = count
            self._hold_until = mono + ADVISORY_HOLD_S
            self._event = event
        want = problem is not None or mono < self._hold_until
        if want == self.active:
            return None
        self.active = want
        return (AlarmState.ACTIVE, problem or self._event) if want else (AlarmState.CLEARED, "")


@dataclass
class _Health:
    """What the main loop saw of one sensor or hatch switch."""

    quality: str = "good"
    bad_samples: int = 0  # samples not GOOD
    seen: float | None = None  # monotonic time of the latest sample
    trouble: int = 0  # the driver's trouble count at the previous metrics round


class Daemon:
    """The monitor: built by the constructor (nothing runs), run by `run()`, stopped by `close()`."""

    def __init__(self, cfg: Config, pin_factory: Any = None, previous: Daemon | None = None) -> None:
        """Build every resource of `cfg`; BuildError if one cannot be made (what was made is closed again).

        With `previous` (a reload, while it runs), its spool, recorder and annunciator are taken over
        when their settings are unchanged; they change hands in `run()`.
        """
        self.cfg = cfg
        self.pin_factory = pin_factory
        self.annunciator: Any = None
        self._annunciating = False  # the annunciator shows the desk's state (from run() until close())
        self._ack_route = _AckRoute()
        self.note = ""  # said on STATUS, e.g. why a reload was refused
        self.samples: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.outputs: list[Callable[[Event], None]] = [EventLog().write]
        try:
            built = build_drivers(cfg, pin_factory)
        except ConfigError as exc:
            raise BuildError(exc.problems) from None
        self.drivers = built.drivers
        self.clock = built.clock
        self.monitor = Monitor(cfg.module)
        limits = cfg.module.alarms
        self.desk = AlarmDesk(AlarmBook(limits.latching, limits.max_shelve_s), self.clock, self._show)
        with contextlib.ExitStack() as undo:
            self.recorder = self._take_or_build_recorder(previous, undo)
            self.mqtt = _mqtt(cfg, self.drivers, self._command) if cfg.mqtt else None
            if self.mqtt is not None:
                undo.callback(self.mqtt.stop)
                self.desk.outputs.append(self._publish_alarm)
            self.influx = _influx(cfg) if cfg.influxdb else None
            if self.influx is not None:
                undo.callback(self.influx.close)
            self.sinks = [s for s in (self.mqtt, self.influx) if s is not None]
            self.spool, self._spool_path = self._take_or_build_spool(previous, undo)
            self.annunciator = self._take_or_build_annunciator(previous)  # last: nothing after it can fail
            undo.pop_all()
        self.metrics_every_s = METRICS_EVERY_S
        self._next_metrics = time.monotonic()  # the first right away: the backlog found at start shows
        self._next_faults = time.monotonic()
        taken = self.spool is not None and previous is not None and previous.spool is self.spool
        dropped = self.spool.counters.get("dropped", 0) if self.spool else 0
        self._watches = {
            "spool_full": _FaultWatch("spool_full", "spool", dropped),
            "spool_fault": _FaultWatch("spool_fault", "spool", self.spool.recoveries if taken else 0),
            "recorder_fault": _FaultWatch("recorder_fault", "recorder", self.recorder.dropped if self.recorder else 0),
            **{f"sink_fault.{s.name}": _FaultWatch("sink_fault", s.name) for s in self.sinks},
        }
        self._threads: list[threading.Thread] = []
        self._driver_stop = threading.Event()
        self._last_time = 0.0
        self._sensor_time: dict[str, float] = {}
        self._last_good = -math.inf  # monotonic time of the last good sample
        self._latest: dict[str, Estimate] = {}
        self._started_at = time.monotonic()
        names = [s.name for s in cfg.sensors] + [h for h in cfg.hatch_switches if h in {d.name for d in self.drivers}]
        self._health: dict[str, _Health] = {n: _Health() for n in names}
        self._driver_of = {d.name: d for d in self.drivers}

    # -- building ---------------------------------------------------------------------------------

    def _take_or_build_recorder(self, previous: Daemon | None, undo: contextlib.ExitStack) -> Recorder | None:
        r = self.cfg.recorder
        if r is None:
            return None
        if previous is not None and previous.recorder is not None and _same_file(previous.recorder.path, r.path):
            return previous.recorder
        try:
            recorder = Recorder(r.path, r.rotate_mb, r.max_mb)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BuildError([f"{self.cfg.path}: recorder.path: cannot write {r.path}: {reason}"]) from None
        undo.callback(recorder.close)
        return recorder

    def _take_or_build_spool(self, previous: Daemon | None, undo: contextlib.ExitStack) -> tuple[Any, str | None]:
        if not self.sinks:
            return None, None
        path = _spool_path(self.cfg)
        if previous is not None and previous.spool is not None and _same_file(previous._spool_path, path):
            return previous.spool, path
        spool = _spool(self.cfg, path)
        undo.callback(spool.close)
        return spool, path

    def _take_or_build_annunciator(self, previous: Daemon | None) -> Any:
        """The annunciator; on a reload, the running one's if unchanged, else a new one (pins handed over)."""
        a = self.cfg.annunciator
        if a is None:
            return None
        old = previous.annunciator if previous is not None else None
        if old is not None and previous.cfg.annunciator == a and previous.pin_factory is self.pin_factory:
            self._ack_route = previous._ack_route
            return old
        try:
            return _annunciator(self.cfg, self.pin_factory, self._ack_route)
        except BuildError as exc:
            if not (exc.pins_busy and old is not None):
                raise
        log.info("reload: the new annunciator needs pins the running one holds; releasing them first")
        previous.release_annunciator()
        try:
            return _annunciator(self.cfg, self.pin_factory, self._ack_route)
        except BuildError as exc:
            problem = previous.restore_annunciator()
            raise BuildError(exc.problems + ([problem] if problem else []), exc.exit_code) from None

    def release_annunciator(self) -> None:
        """Close the annunciator and free its pins (a reload needs them); the alarms go on without it."""
        annunciator, self.annunciator = self.annunciator, None
        if annunciator is not None:
            annunciator.close()

    def restore_annunciator(self) -> str | None:
        """Build the annunciator again after release_annunciator(); a problem line if that failed."""
        try:
            self.annunciator = _annunciator(self.cfg, self.pin_factory, self._ack_route)
        except BuildError as exc:
            log.error("the annunciator could not be built again: %s", exc.problems[0])
            return f"the running annunciator could not be built again: {exc.problems[0]}"
        self._show(self.desk.book.annunciation())
        return None

    # -- running ----------------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        notifier: Notifier | None = None,
        reload: Callable[[Daemon], Daemon | None] | None = None,
    ) -> Daemon | None:
        """Run until stop is set, or until `reload(self)` returns a new daemon to take over (returned).

        systemd hears READY=1 once the drivers run, a STATUS line every few seconds, and
        WATCHDOG=1 only while samples keep arriving: dead sensors or a stuck loop let it fire.
        """
        notifier = notifier or Notifier({})
        self._start()
        log.info(
            "monitoring %s: volumes %s; %d driver(s)",
            self.cfg.station,
            ", ".join(self.monitor.volumes),
            len(self.drivers),
        )
        notifier.ready(self.status())
        next_status = next_ping = time.monotonic()
        successor: Daemon | None = None
        try:
            while not stop.is_set():
                self.step(TICK_S)
                now = time.monotonic()
                if notifier.watchdog_s is not None and now >= next_ping and self.samples_fresh():
                    notifier.watchdog()
                    next_ping = now + notifier.watchdog_s
                if now >= next_status:
                    notifier.status(self.status())
                    next_status = now + STATUS_EVERY_S
                if reload is not None:
                    successor = reload(self)
                    if successor is not None:
                        break
        finally:
            self.close(successor)
        return successor

    def _start(self) -> None:
        """Start what was built: recorder, spool and sinks, drivers, annunciator."""
        cfg = self.cfg
        self._ack_route.target = self._button
        self._annunciating = True
        self.desk.show(self.desk.book.annunciation())  # through desk.show: callers may have wrapped it
        if self.recorder is not None:
            self.recorder.configure(cfg.recorder.rotate_mb, cfg.recorder.max_mb)
            self.recorder.start()
        if self.mqtt is not None:
            self.mqtt.start()  # connects in the background, retrying for ever
        if self.spool is not None:
            self.spool.configure(cfg.spool.max_mb, cfg.spool.commit_interval_s, cfg.spool.replay_per_s)
            self.spool.start(self.sinks)
        self._driver_stop = threading.Event()
        for d in self.drivers:
            t = threading.Thread(
                target=d.run, args=(self.samples.put, self._driver_stop), name=f"driver-{d.name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    @property
    def processed_to(self) -> float:
        """The time of the last sample passed through the core (0 before the first)."""
        return self._last_time

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
        return "; ".join(parts) + f" | {alarms}" + (f" | {self.note}" if self.note else "")

    def step(self, wait_s: float) -> list[Event]:
        """Take up to MAX_BATCH samples (waiting up to wait_s for the first), feed the core, publish."""
        now = self.clock()  # before taking: every reading up to `now` is then on the queue
        batch = self._take(wait_s)
        events: list[Event] = []
        for sample in batch:
            events += self._feed(sample)
        if len(batch) == MAX_BATCH:  # more are waiting: the core's clock goes no further than the data
            now = self._last_time
        now = max(now, self._last_time)
        events += self.monitor.tick(now)
        self._publish(events, now)
        mono = time.monotonic()
        if mono >= self._next_faults:
            self._next_faults = mono + FAULTS_EVERY_S
            self._check_faults(now)
        if self.spool is not None and mono >= self._next_metrics:
            self._next_metrics = mono + self.metrics_every_s
            self._self_metrics(now)
        return events

    def _take(self, wait_s: float) -> list[Sample]:
        """Up to MAX_BATCH samples from the queue, waiting up to wait_s for the first."""
        batch: list[Sample] = []
        try:
            batch.append(self.samples.get(timeout=wait_s) if wait_s > 0 else self.samples.get_nowait())
            while len(batch) < MAX_BATCH:
                batch.append(self.samples.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _publish(self, events: list[Event], now: float) -> None:
        """The annunciator first (through the desk), then the spool and the other outputs."""
        self.desk.transitions(e for e in events if isinstance(e, AlarmTransition))
        self.desk.tick(now)
        for event in events:
            if isinstance(event, Estimate):
                self._latest[event.volume] = event
                if self.spool is not None:
                    self.spool.append("estimate", event.time, event.to_dict())
            elif isinstance(event, AlarmTransition) and self.spool is not None:
                self.spool.append("alarm", event.time, event.to_dict())
            elif isinstance(event, LevelStep) and self.spool is not None:
                self.spool.append("step", event.time, event.to_dict())
            for output in self.outputs:
                output(event)

    def _feed(self, sample: Sample) -> list[Event]:
        mono = time.monotonic()
        if sample.quality is not Quality.BAD:
            self._last_good = mono
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
        health = self._health.get(sample.sensor)
        if health is None:
            health = self._health[sample.sensor] = _Health()
        health.seen = mono
        health.quality = sample.quality.value
        if sample.quality is not Quality.GOOD:
            health.bad_samples += 1
        if sample.quantity is Quantity.HATCH:
            if self.mqtt is not None:
                self.mqtt.hatch(sample.sensor, sample.value >= 0.5)
            if self.spool is not None:
                self.spool.append("hatch", sample.time, {"hatch": sample.sensor, "open": sample.value >= 0.5})
        elif self.spool is not None:
            self.spool.append("sample", sample.time, {"sensor": sample.sensor, **sample_payload(sample)})
        return self.monitor.feed(sample)

    # -- health -----------------------------------------------------------------------------------

    def sensor_health(self) -> dict[str, dict[str, Any]]:
        """Per sensor and hatch switch: quality now, trouble counts (samples and the driver's own), staleness.

        `quality` is `bad` when nothing came for `stale_after_s` (an unplugged sensor, also from start-up),
        `suspect` before the first sample or when the driver counted trouble since the previous call,
        else the latest sample's. `errors` adds the non-good samples and the driver's trouble counts.
        """
        mono = time.monotonic()
        stale_after = self.cfg.module.alarms.sensor.stale_after_s
        out = {}
        for name, h in self._health.items():
            driver = self._driver_of.get(name)
            counts = {
                field: int(getattr(driver, attr))
                for attr, field in (TROUBLE_COUNTERS | RECOVERY_COUNTERS).items()
                if isinstance(getattr(driver, attr, None), int)
            }
            trouble = sum(v for k, v in counts.items() if k not in RECOVERY_COUNTERS.values())
            silent_s = mono - (h.seen if h.seen is not None else self._started_at)
            quality = h.quality if h.seen is not None else Quality.SUSPECT.value  # not heard from yet
            if silent_s > stale_after:
                quality = Quality.BAD.value
            elif trouble > h.trouble and quality == Quality.GOOD.value:
                quality = Quality.SUSPECT.value
            h.trouble = trouble
            out[name] = {
                "errors": h.bad_samples + trouble,
                "quality": quality,
                "bad_samples": h.bad_samples,
                "silent_s": round(silent_s, 3),
                **counts,
            }
        return out

    def _self_metrics(self, now: float) -> None:
        """Spool and sink health and sensor health: to the spool (InfluxDB) and to `P/metrics` (retained)."""
        stats = self.spool.stats()
        spool = {k: stats[k] for k in ("depth", "oldest_unsent_s", "dropped", "size_bytes", "corrupt")}
        sinks = {}
        for sink in self.sinks:
            sinks[sink.name] = {
                "sent": self.spool.sent(sink.name),
                "rejected": self.spool.counters.get(f"rejected.{sink.name}", 0),
                "backlog": stats[f"backlog.{sink.name}"],
                "connected": sink.connected if hasattr(sink, "connected") else True,
            }
        self.spool.append("metric", now, {"measurement": "spool", "fields": spool})
        for name, fields in sinks.items():
            self.spool.append("metric", now, {"measurement": "sink", "tags": {"sink": name}, "fields": fields})
        sensors = self.sensor_health()
        for name, fields in sensors.items():
            record = {"measurement": "sensor_health", "tags": {"sensor": name}, "fields": fields}
            self.spool.append("metric", now, record)
        detection = {  # the smallest loss each volume confirms at k σ in 10 min, 1 h, a day
            volume: {f"kg_per_day_{w:g}s": round(v, 6) for w, v in limits.items() if math.isfinite(v)}
            for volume, limits in self.monitor.detection_limits().items()
        }
        for volume, fields in detection.items():
            record = {"measurement": "detection", "tags": {"volume": volume}, "fields": fields}
            self.spool.append("metric", now, record)
        if self.mqtt is not None:
            metrics = {
                "time": now,
                "spool": spool,
                "sinks": sinks,
                "sensors": sensors,
                "detection": detection,
            }
            self.mqtt.publish_json("metrics", metrics, True)

    def _check_faults(self, now: float) -> None:
        """Raise or clear the advisories of the optional parts from what they report."""
        due: list[tuple[_FaultWatch, tuple[AlarmState, str], float | None]] = []

        def check(key: str, problem: str | None, count: int = 0, event: str = "") -> None:
            watch = self._watches[key]
            change = watch.update(problem, count, event)
            if change is not None:
                due.append((watch, change, float(count) if count else None))

        if self.spool is not None:
            dropped = self.spool.counters.get("dropped", 0)
            check("spool_full", None, dropped, f"spool full: {dropped} oldest record(s) dropped")
            check("spool_fault", self.spool.problem, self.spool.recoveries, self.spool.last_fault)
            mono = time.monotonic()
            for sink in self.sinks:
                f = self.spool.forwarder(sink.name)
                down = f is not None and f.down_since is not None and mono - f.down_since > SINK_FAULT_AFTER_S
                check(f"sink_fault.{sink.name}", f"{sink.name} unavailable: {f.last_error}" if down else None)
        if self.recorder is not None:
            dropped = self.recorder.dropped
            check("recorder_fault", self.recorder.problem, dropped, f"recorder: {dropped} row(s) dropped")
        for watch, (state, reason), value in due:
            self._advisory(now, watch.alarm, watch.source, state, value, reason)

    def _advisory(
        self, now: float, alarm: str, source: str, state: AlarmState, value: float | None, reason: str
    ) -> None:
        """One of the daemon's own advisory alarms changes: the desk (annunciator, MQTT), the spool, the log."""
        t = AlarmTransition(now, alarm, source, Severity.ADVISORY, state, value, None, reason)
        self.desk.transitions([t])
        if self.spool is not None:
            self.spool.append("alarm", now, t.to_dict())
        for output in self.outputs:
            output(t)

    def reload_refused(self, problems: list[str]) -> None:
        """A reload could not be built: keep running, and say why (log, STATUS, a reload_fault advisory)."""
        for line in problems:
            log.error("reload refused, keeping the running configuration: %s", line)
        self.note = f"reload refused: {problems[0]}" if problems else "reload refused"
        record = self.desk.book.record(("reload_fault", "config", Severity.ADVISORY))
        if record is None or not record.condition_active:
            now = max(self.clock(), self._last_time)
            self._advisory(now, "reload_fault", "config", AlarmState.ACTIVE, None, self.note)

    def _retire_own_advisories(self, now: float) -> None:
        """Before a successor takes over: clear and acknowledge the daemon's own advisories (it raises its own)."""
        for r in self.desk.book.records():
            if r.alarm not in OWN_ALARMS:
                continue
            if r.condition_active:
                self._advisory(now, r.alarm, r.source, AlarmState.CLEARED, None, "configuration reloaded")
            key = {"alarm": r.alarm, "source": r.source, "severity": r.severity.label}
            self.desk.command("ack", key, "reload")

    # -- stopping ---------------------------------------------------------------------------------

    def close(self, successor: Daemon | None = None) -> None:
        """Stop reading, pass what was read through the core and out, close what `successor` does not take.

        Bounded: each part gets a few seconds at most, so that SIGTERM ends the process well within
        systemd's TimeoutStopSec (10 s).
        """
        self._driver_stop.set()
        end = time.monotonic() + STOP_DRIVERS_S
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        end = time.monotonic() + STOP_DRAIN_S
        try:
            while time.monotonic() < end:  # the last samples' events reach the annunciator, the spool and MQTT
                if not self.step(0.0) and self.samples.empty():
                    break
            if successor is not None:
                self._retire_own_advisories(max(self.clock(), self._last_time))
        except Exception:  # whatever failed, the rest must still be closed
            log.exception("stopping: the last samples could not be processed")
        left = self.samples.qsize()
        if left:
            log.error("stopping: %d sample(s) read but not processed in time", left)
        self._annunciating = False
        keep = successor or _Nothing()
        if self.recorder is not None and self.recorder is not keep.recorder:
            self.recorder.close(STOP_RECORDER_S)
        if self.annunciator is not None and self.annunciator is not keep.annunciator:
            self.annunciator.close()
        if self.spool is not None:
            if self.spool is keep.spool:
                self.spool.stop_forwarding(STOP_SPOOL_S)
            else:
                self.spool.close(drain_s=0.5, timeout_s=STOP_SPOOL_S)
        if self.influx is not None:
            _bounded(self.influx.close, STOP_SINK_S / 2, "InfluxDB sink")
        if self.mqtt is not None:
            _bounded(lambda: self.mqtt.stop(timeout_s=STOP_SINK_S / 2), STOP_SINK_S, "MQTT sink")
        log.info("stopped")

    # -- callbacks --------------------------------------------------------------------------------

    def _show(self, annunciation: Any) -> None:
        """The desk's state onto the annunciator, while this daemon runs it."""
        if self._annunciating and self.annunciator is not None:
            self.annunciator.show(annunciation)

    def _button(self) -> None:
        """The acknowledge button was pressed."""
        self.desk.acknowledge_all("button")

    def _command(self, name: str, payload: dict, by: str) -> dict:
        """A remote command (MQTT) for the alarm desk."""
        return self.desk.command(name, payload, by)

    def _publish_alarm(self, change: LifecycleChange) -> None:
        """An alarm's lifecycle changed: its retained MQTT topic, and its volume's any-alarm flag."""
        alarm, source, severity = change.key
        self.mqtt.alarm(change.record.to_dict(), alarm, source, severity.label, gone=change.gone)
        if source in self.monitor.volumes or (change.gone and alarm not in OWN_ALARMS):
            active = any(r.condition_active for r in self.desk.book.records() if r.source == source)
            self.mqtt.volume_alarm(source, active)


class _Nothing:
    """A successor that takes nothing over."""

    recorder = annunciator = spool = None


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Run fn in a thread of its own and wait at most timeout_s for it (it may finish later, or never)."""

    def call() -> None:
        try:
            fn()
        except Exception:
            log.warning("stopping %s failed", what, exc_info=True)

    t = threading.Thread(target=call, name=f"stop-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("stopping %s took more than %.1f s; not waiting for it", what, timeout_s)


def _same_file(a: str | None, b: str | None) -> bool:
    """Whether two paths name the same file (None: the same temporary spool)."""
    if a is None or b is None:
        return a is None and b is None
    return os.path.realpath(a) == os.path.realpath(b)


def _mqtt(cfg: Config, drivers: list[Driver], on_command: Callable[[str, dict, str], dict]) -> Any:
    """The MQTT sink with its credentials and TLS read (it connects only when started)."""
    from hullwatch.sinks.mqtt import MqttSetupError, MqttSink, StationDescription

    quantities = {
        d.name: [q.value for q in d.settings.parser.quantities]
        for d in drivers
        if hasattr(d, "settings") and hasattr(d.settings, "parser")
    }
    settings = _without_empty_client_key(cfg.mqtt, cfg.path)
    sink = MqttSink(
        settings,
        cfg.station,
        on_command,
        StationDescription.from_config(cfg, quantities),
        homeassistant=settings.homeassistant,
        discovery_prefix=settings.discovery_prefix,
    )
    try:
        sink.prepare()
    except MqttSetupError as exc:
        raise BuildError([f"{cfg.path}: {exc}"]) from None
    return sink


def _without_empty_client_key(m: MqttConfig, path: str) -> MqttConfig:
    """[mqtt.tls] without the client certificate when its key (or certificate) file is empty.

    The unit's `SetCredential=mqtt-client-key:` fallback makes an empty key file when
    /etc/hullwatch/client.key is not installed: the monitor still starts, and MQTT connects without
    a client certificate (a broker that requires one refuses it, and the log says so).
    """
    tls = m.tls
    if tls is None:
        return m
    empty = [f for f in (tls.key_file, tls.cert_file) if f and _is_empty(f)]
    if not empty:
        return m
    key = "key_file" if tls.key_file in empty else "cert_file"
    log.warning(
        "%s: mqtt.tls.%s: %s is empty (the service's fallback when the file is not installed): "
        "connecting to the broker without a client certificate",
        path,
        key,
        empty[0],
    )
    return replace(m, tls=replace(tls, cert_file=None, key_file=None))


def _is_empty(path: str) -> bool:
    """Whether a file exists and holds nothing but white space."""
    try:
        with open(path, "rb") as f:
            return not f.read(4096).strip()
    except OSError:
        return False  # unreadable: the credentials step says so


def _influx(cfg: Config) -> Any:
    """The InfluxDB sink (it sends nothing until the spool's forwarder runs)."""
    from hullwatch.sinks.influx import InfluxSetupError, InfluxSink

    try:
        return InfluxSink(cfg.influxdb, cfg.station)
    except InfluxSetupError as exc:
        raise BuildError([f"{cfg.path}: {exc}"]) from None


def _spool_path(cfg: Config) -> str | None:
    """[spool] path; without that section, in systemd's $STATE_DIRECTORY, else None (a temporary file)."""
    s = cfg.spool
    if s.configured:
        return s.path
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state, os.path.basename(s.path)) if state else None


def _spool(cfg: Config, path: str | None) -> Any:
    """The spool file, open (a corrupt one is moved aside and a fresh one started)."""
    import sqlite3

    from hullwatch.sinks.spool import Spool, SpoolInUse

    s = cfg.spool
    if path is None:
        log.warning("spool: no [spool] section and no $STATE_DIRECTORY: a temporary file, lost at exit")
    try:
        return Spool(path, s.max_mb, s.commit_interval_s, s.replay_per_s)
    except SpoolInUse as exc:
        raise BuildError([f"{cfg.path}: spool.path: {exc}"]) from None
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BuildError([f"{cfg.path}: spool.path: cannot open {path}: {reason}"]) from None


def _annunciator(cfg: Config, pin_factory: Any, on_ack: Callable[[], None]) -> Any:
    """The buzzer, LEDs and acknowledge button; BuildError (pins_busy when a pin is taken) if they cannot be had."""
    a = cfg.annunciator
    from hullwatch.annunciator import Annunciator
    from hullwatch.sensors.gpio import gpiozero_module

    try:
        gpiozero = gpiozero_module()
    except RuntimeError as exc:
        raise BuildError([f"{cfg.path}: annunciator: {exc}"], EX_UNAVAILABLE) from None
    try:
        with warnings.catch_warnings(record=True) as fallbacks:  # gpiozero says which pin libraries it tried
            warnings.simplefilter("always")
            pins = (a.buzzer_gpio, a.led_gpio, a.ack_button_gpio)
            annunciator = Annunciator(*pins, on_ack=on_ack, pin_factory=pin_factory, led2_pin=a.fault_led_gpio)
    except gpiozero.GPIOPinInUse as exc:
        raise BuildError([f"{cfg.path}: annunciator: a GPIO pin is used twice: {exc}"], pins_busy=True) from None
    except gpiozero.BadPinFactory:
        tried = "; ".join(str(w.message) for w in fallbacks) or "none"
        raise BuildError(
            [
                f"{cfg.path}: annunciator: gpiozero finds no GPIO library that works here "
                "(on a Raspberry Pi 5: apt install python3-lgpio, or pip install lgpio; "
                f"without a Pi: GPIOZERO_PIN_FACTORY=mock); tried: {tried}"
            ]
        ) from None
    except gpiozero.GPIOZeroError as exc:  # an invalid pin for this board, a pin that cannot pull up, ...
        raise BuildError([f"{cfg.path}: annunciator: {type(exc).__name__}: {exc}"]) from None
    except Exception as exc:  # the GPIO chip busy or not permitted (lgpio errors, OSError)
        raise BuildError([f"{cfg.path}: annunciator: cannot use the GPIO pins: {exc}"], EX_UNAVAILABLE) from None
    for w in fallbacks:
        log.info("annunciator: %s", w.message)
    return annunciator


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
        elif isinstance(event, LevelStep):
            fields = {"VOLUME": event.volume, "STEP_PA": f"{event.size_pa:.3f}"}
            if event.sensor is not None:
                fields["SENSOR"] = event.sensor
            log.warning("%s", present.describe(event), extra=fields)
        elif isinstance(event, HatchChange | Notice):
            log.info("%s", present.describe(event))

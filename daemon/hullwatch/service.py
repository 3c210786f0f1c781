"""The daemon: builds drivers, core and outputs from the configuration and runs them.

Data flows one way. Every serial sensor is read by one I/O thread (`sensors.ioloop.IoLoop`:
a `selectors` loop over all the ports, which parses lines where it reads them and puts all the
samples of one wakeup on the inbox as one batch); the other drivers (Modbus, GPIO, the
simulation) run in threads of their own and put each sample. The main loop takes them in
arrival order (timestamps made non-decreasing), at most `MAX_BATCH` at a time so that it
looks at `stop` and pings the watchdog between batches, records them, feeds the core, lets
the core's clock tick when no sample comes, and hands every event to the outputs. The main
loop never waits on a device, a disk or the network for longer than one tick: samples,
estimates, alarm transitions and self-metrics go into the spool, whose forwarder threads
deliver them to MQTT and InfluxDB, and the recorder writes from a thread of its own; the
annunciator is driven directly, before anything else.

Two clocks. Samples are stamped, and the core, the alarm desk and the main loop run, on steady
time (`timebase`: the wall clock's scale, never stepped), so setting the clock neither raises
nor hides a fault, nor moves an on-delay or a shelving's end. Whatever leaves the daemon — spool
records (MQTT, InfluxDB), recorder rows, alarm payloads, the outputs' events — is converted to
wall-clock time. A step of the wall clock is logged (WARNING) and published once as a
`clock_step` record, and the recorder begins a new file, so that no samples file goes back.

Build, then swap. `build()` makes every resource a configuration needs — drivers, files,
credentials, sinks, spool, recorder, GPIO pins — into a daemon that does not run yet, or
raises BuildError (one line per problem and a sysexits code); nothing it made is left open.
Its first half, `prepare()`, makes or checks everything that needs nothing taken — drivers, the
GPIO pin library, credentials and TLS files, sinks, the places of the recorder and spool files —
and `check-config` calls that alone, so it refuses what `run` would refuse.
`run()` starts it. A reload (`rebuild()`) builds the new daemon completely while the old one
runs, taking over what the old one holds with unchanged settings (the spool file, the
recorder file, the annunciator's pins, the serial I/O loop, and each sensor and hatch switch
whose driver settings are unchanged: its driver keeps running and reading, and its samples go
to the new daemon from the moment the old one stops, so an open port is never closed and
opened again, which would flush its input); if the new annunciator needs pins the old one holds,
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
import errno
import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hullwatch import config, present, timebase
from hullwatch.config import Config, ConfigError, MqttConfig
from hullwatch.core.alarm_kinds import LEAK_RATE, LOW_PRESSURE, RESERVE_TIME
from hullwatch.core.lifecycle import (
    ALL_SOURCES,
    NOT_CONFIRMED,
    AlarmBook,
    AlarmRecord,
    LifecycleChange,
    LifecycleEvent,
)
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
from hullwatch.exits import EX_CONFIG, EX_UNAVAILABLE
from hullwatch.recorder import Recorder
from hullwatch.sensors.base import Driver, OptionError
from hullwatch.sensors.ioloop import IoLoop
from hullwatch.sensors.serial_line import SerialDriver
from hullwatch.sinks.mqtt import sample_payload
from hullwatch.systemd import Notifier

log = logging.getLogger("hullwatch")

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
CONFIRM_MARGIN_S = 30.0  # after a restart, what a restored active alarm's condition gets beyond its kind's own delays
# drivers' own trouble counters, as sensor_health fields (the driver's `errors` becomes `device_errors`)
TROUBLE_COUNTERS = {
    "bad_lines": "bad_lines",
    "failures": "failures",
    "errors": "device_errors",
    "rail_readings": "rail_readings",
    "missed_edges": "missed_edges",
}
# counted, but no trouble of the sensor: it came back; it delivered more than max_rate_hz (the excess dropped)
INFO_COUNTERS = {"reconnects": "reconnects", "rate_dropped": "rate_dropped"}


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
    timebase: timebase.Timebase  # the samples' time (steady; a simulation's own story time)


def build_drivers(cfg: Config, pin_factory: Any = None, for_run: bool = True) -> Built:
    """One driver per device, validated; ConfigError naming `sensor[i].key` for bad options.

    With for_run False (check-config), simulated sensors without a [simulation] section are
    fine: `analyze` takes their values from a samples file.
    """
    problems: list[str] = []
    drivers: list[Driver] = []
    time_base: timebase.Timebase = timebase.STEADY
    simulated = [s.name for s in cfg.sensors if s.driver == "simulated"]
    if simulated and (for_run or cfg.simulation is not None):
        from hullwatch.sim.live import SimulatedModule

        try:
            sim = SimulatedModule.from_config(cfg)
        except (OSError, ValueError) as exc:
            problems.append(f"{cfg.path}: simulation: {exc}")
        else:
            drivers.append(sim)
            time_base = timebase.Fixed(sim.clock)
    for i, s in enumerate(cfg.sensors):
        if s.driver == "simulated":
            continue
        try:
            drivers.append(_driver(s.driver, s.name, s.options, pin_factory))
        except OptionError as exc:
            problems.append(f"{cfg.path}: sensor[{i}].{exc.key}: {exc.message}")
    problems += _shared_ports(cfg, {d.name: d for d in drivers})
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
    return Built(drivers, time_base)


def _shared_ports(cfg: Config, drivers: Mapping[str, Driver]) -> list[str]:
    """Sensors on one serial device: only Modbus slaves may share it (a bus), and with the same serial settings.

    A URL is left alone: what several connections to a serial device server see is the server's to say.
    """
    problems: list[str] = []
    first: dict[str, tuple[int, str, str]] = {}  # device -> (index, name, driver) of its first sensor
    for i, s in enumerate(cfg.sensors):
        port = s.options.get("port") if s.driver in ("serial", "modbus") else None
        if not isinstance(port, str) or not port.strip() or "://" in port:
            continue
        key = os.path.realpath(port)  # the device behind a /dev/serial/by-id/ link
        j, other, other_driver = first.setdefault(key, (i, s.name, s.driver))
        if j == i:
            continue
        where = f"{cfg.path}: sensor[{i}].port"
        if "serial" in (s.driver, other_driver):
            problems.append(
                f"{where}: {port} is also read by sensor[{j}] ({other}): a serial port has one reader"
                " (only Modbus slaves share a port, as a bus)"
            )
            continue
        mine, theirs = drivers.get(s.name), drivers.get(other)
        if mine is not None and theirs is not None and mine.settings.line != theirs.settings.line:
            problems.append(
                f"{where}: {port} is the bus of sensor[{j}] ({other}) too, but with other serial settings"
                f" ({mine.settings.describe_line()} against {theirs.settings.describe_line()}):"
                " the slaves on one bus share baudrate, bytesize, parity and stopbits"
            )
    return problems


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


@dataclass
class Prepared:
    """What a configuration needs that can be made without taking or starting anything.

    The drivers (built, not running), the sinks (credentials and TLS read, not connected), and
    `notes`: what is worth telling but stops nothing (a damaged spool that `run` will move aside).
    """

    drivers: list[Driver]
    timebase: timebase.Timebase
    mqtt: Any
    influx: Any
    commands: _Route  # where the MQTT sink's remote commands go (the daemon, once it exists)
    notes: list[str]

    def close(self) -> None:
        """Release the sinks (when no daemon takes them)."""
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.influx is not None:
            self.influx.close()


def prepare(cfg: Config, pin_factory: Any = None, for_run: bool = True) -> Prepared:
    """Every resource `cfg` needs, made or checked without taking or starting anything.

    `run` and a reload call it before they take anything (files, locks, pins); `check-config`
    calls it alone (for_run False: simulated sensors need no [simulation], systemd credentials
    that exist only inside the service are not read, and the spool file is only looked at).
    Checked: every driver's options, a GPIO pin library for the annunciator, every credential,
    TLS and password file, the sinks, and the recorder's and the spool's files and directories.
    BuildError lists every problem, one line each naming the key and the file; its exit code is
    78 (configuration) unless every problem is a device or service that may yet appear (69).
    """
    problems: list[str] = []
    codes: set[int] = set()

    def attempt(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except BuildError as exc:
            problems.extend(exc.problems)
            codes.add(exc.exit_code)
        except ConfigError as exc:
            problems.extend(exc.problems)
            codes.add(EX_CONFIG)
        except Exception as exc:  # a failure nobody foresaw (a library missing ...): one line, as build() says it
            log.debug("preparing %s failed", cfg.path, exc_info=True)
            problems.append(f"{cfg.path}: cannot start: {type(exc).__name__}: {exc}")
            codes.add(EX_UNAVAILABLE)
        return None

    notes: list[str] = []
    built = attempt(build_drivers, cfg, pin_factory, for_run)
    if not for_run and cfg.simulation is None:
        notes += [
            f"{cfg.path}: sensor[{i}].driver: simulated: `run` needs a [simulation] section "
            "(`analyze` and `report` take the values from a samples file)"
            for i, s in enumerate(cfg.sensors)
            if s.driver == "simulated"
        ][:1]
    notes += attempt(_check_gpio, cfg, pin_factory, for_run) or []
    commands = _Route()
    secrets_cfg = cfg if for_run else _outside_the_service(cfg, notes)
    drivers = built.drivers if built is not None else []
    mqtt = attempt(_mqtt, secrets_cfg, drivers, commands, None if for_run else notes) if cfg.mqtt else None
    influx = attempt(_influx, secrets_cfg) if cfg.influxdb else None
    if cfg.recorder is not None:
        attempt(_check_recorder, cfg)
    notes += attempt(_check_spool, cfg, for_run) or []  # the sinks' records, and the alarm book in any case
    prepared = Prepared(drivers, built.timebase if built else timebase.STEADY, mqtt, influx, commands, notes)
    if problems:
        prepared.close()
        raise BuildError(problems, EX_UNAVAILABLE if codes == {EX_UNAVAILABLE} else EX_CONFIG)
    return prepared


CREDENTIALS_ROOT = "/run/credentials/"  # systemd's credentials of system services (LoadCredential=)


def _outside_the_service(cfg: Config, notes: list[str]) -> Config:
    """`cfg` less the systemd credentials that exist only inside the running service (when not in it).

    Each one left out is noted; a client key or certificate left out takes its partner with it.
    """
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return cfg

    def hidden(key: str, path: str | None) -> bool:
        if path and path.startswith(CREDENTIALS_ROOT) and not os.path.exists(path):
            notes.append(f"{cfg.path}: {key}: {path} exists only inside the running service: not checked here")
            return True
        return False

    mqtt, influx = cfg.mqtt, cfg.influxdb
    if mqtt is not None:
        if hidden("mqtt.password_file", mqtt.password_file):
            mqtt = replace(mqtt, password_file=None)
        tls = mqtt.tls
        if tls is not None:
            if hidden("mqtt.tls.ca_file", tls.ca_file):
                tls = replace(tls, ca_file=None)
            if hidden("mqtt.tls.cert_file", tls.cert_file) | hidden("mqtt.tls.key_file", tls.key_file):
                tls = replace(tls, cert_file=None, key_file=None)
            mqtt = replace(mqtt, tls=tls)
    if influx is not None:
        if hidden("influxdb.token_file", influx.token_file):
            influx = replace(influx, token_file=None)
        if hidden("influxdb.password_file", influx.password_file):
            influx = replace(influx, password_file=None)
    return replace(cfg, mqtt=mqtt, influxdb=influx)


def _gpio_users(cfg: Config) -> list[str]:
    """The configuration keys that need GPIO pins: the annunciator, reed switches, MCP3008 converters."""
    users = ["annunciator"] if cfg.annunciator is not None else []
    users += [f"hatch[{i}].gpio" for i, h in enumerate(cfg.module.hatches) if h.name in cfg.hatch_switches]
    users += [f"sensor[{i}]" for i, s in enumerate(cfg.sensors) if s.driver == "mcp3008"]
    return users


def _check_gpio(cfg: Config, pin_factory: Any, for_run: bool) -> list[str]:
    """A GPIO pin library that works here, as gpiozero finds it for `run` (no pin is taken).

    Without one the annunciator cannot be built (a problem); reed switches and converters are
    retried while the monitor runs (a note). In a run, the library found becomes gpiozero's
    default, as the first device would make it; check-config opens it in a scratch directory
    (lgpio makes its notification pipes in the working directory, the service's state directory)
    and closes it again.
    """
    from hullwatch.sensors.gpio import gpiozero_module

    users = _gpio_users(cfg)
    if not users or pin_factory is not None:
        return []
    try:
        gpiozero = gpiozero_module()
    except RuntimeError as exc:
        return _gpio_trouble(cfg, users, str(exc), EX_UNAVAILABLE)
    device = gpiozero.Device
    if device.pin_factory is not None:
        return []
    scratch = tempfile.TemporaryDirectory(prefix="hullwatch-gpio-") if not for_run else None
    here = os.getcwd() if scratch else ""
    try:
        if scratch:
            os.chdir(scratch.name)
        with warnings.catch_warnings(record=True) as fallbacks:  # gpiozero says which libraries it tried
            warnings.simplefilter("always")
            try:
                factory = device._default_pin_factory()
            except gpiozero.BadPinFactory as exc:
                tried = "; ".join(str(w.message) for w in fallbacks) or str(exc)
                return _gpio_trouble(cfg, users, _NO_PIN_LIBRARY + tried, EX_CONFIG)
            except Exception as exc:  # a pin library that fails to open the chip
                return _gpio_trouble(cfg, users, f"cannot use the GPIO pins: {exc}", EX_UNAVAILABLE)
    finally:
        if scratch:
            os.chdir(here)
    if for_run:
        device.pin_factory = factory
    else:
        with contextlib.suppress(Exception):
            factory.close()
        with contextlib.suppress(OSError):
            scratch.cleanup()
    return []


_NO_PIN_LIBRARY = (
    "gpiozero finds no GPIO library that works here (on a Raspberry Pi 5: apt install python3-lgpio, "
    "or pip install lgpio; without a Pi: GPIOZERO_PIN_FACTORY=mock); tried: "
)


def _gpio_trouble(cfg: Config, users: list[str], reason: str, code: int) -> list[str]:
    """BuildError if the annunciator needs the pins; else a note for each user that will not be read."""
    if users[0] == "annunciator":
        raise BuildError([f"{cfg.path}: annunciator: {reason}"], code)
    return [f"{cfg.path}: {key}: {reason}: not read until that is fixed" for key in users]


def _check_recorder(cfg: Config) -> None:
    """The recorder's file can be written (plain CSV; its directory there or makeable)."""
    path = cfg.recorder.path
    if path.endswith(".gz"):
        raise BuildError(
            [f"{cfg.path}: recorder.path: {path}: the recorder writes plain CSV (a .gz file cannot be appended)"]
        )
    problem = _unwritable(path)
    if problem:
        raise BuildError([f"{cfg.path}: recorder.path: cannot write {path}: {problem}"])


def _check_spool(cfg: Config, for_run: bool) -> list[str]:
    """The spool's file and directory can be written; for check-config, also how the file looks.

    A run opens the file itself (moving a damaged one aside). check-config does not take the
    file's lock nor let SQLite make anything: it reads the file's header and schema as they are,
    and says when the file is held by a running hullwatch or damaged.
    """
    path = _spool_path(cfg)
    if path is None:
        return []
    for name in (path, path + "-wal", path + "-shm", os.path.realpath(path) + ".lock"):
        problem = _unwritable(name)
        if problem:
            raise BuildError([f"{cfg.path}: spool.path: cannot open {name}: {problem}"])
    if for_run or not os.path.exists(path):
        return []
    if _locked(os.path.realpath(path) + ".lock"):
        return [f"{cfg.path}: spool.path: {path} is held by a running hullwatch (a second `run` would be refused)"]
    damage = _spool_damage(path)
    if damage is None:
        return []
    return [
        f"{cfg.path}: spool.path: {path} is damaged ({damage}): `run` will move it aside as "
        f"{path}.corrupt-<time> and start a fresh spool"
    ]


def _unwritable(path: str) -> str | None:
    """Why a file could not be opened for writing (made if missing, with its directories), or None."""
    if os.path.isdir(path):
        return "Is a directory"
    if os.path.lexists(path):
        if not os.path.exists(path):
            return "a dangling symbolic link"
        return None if os.access(path, os.R_OK | os.W_OK) else os.strerror(errno.EACCES)
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(directory):  # the nearest directory that is there must let us make the rest
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        return os.strerror(errno.ENOTDIR)
    if not os.access(directory, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(directory) else errno.EACCES
        return f"{os.strerror(code)} ({directory})"
    return None


def _read_only(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _locked(lock_path: str) -> bool:
    """Whether a process holds an flock on this file (read from /proc/locks: nothing is taken to find out)."""
    try:
        st = os.stat(lock_path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:  # `1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF` (waiters have `->` after the number)
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            return True
    return False


def _spool_damage(path: str) -> str | None:
    """What SQLite finds wrong when it opens the spool as `run` does, read as it is (no lock, no journal)."""
    import sqlite3
    import urllib.parse

    from hullwatch.sinks.spool import is_corrupt

    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "record" in tables:
            db.execute("SELECT min(id), max(id) FROM record").fetchone()
    except sqlite3.DatabaseError as exc:
        return str(exc) if is_corrupt(exc) else None
    finally:
        db.close()
    return None


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


class _Route:
    """Where a callback goes: the daemon running now (the acknowledge button, remote commands)."""

    def __init__(self) -> None:
        self.target: Callable[..., Any] = lambda *_: None

    def __call__(self, *args: Any) -> Any:
        return self.target(*args)


class Inbox:
    """The samples on their way to the main loop: single ones and batches in, taken in order up to a bound.

    Drivers in threads of their own `put` each sample; the serial loop puts all it read at one
    wakeup as one batch (`put_batch`), one hand-off however many ports it read. `take`, `qsize`
    and `empty` belong to the main loop (the one consumer).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Sample] | tuple[Sample, ...]] = queue.SimpleQueue()
        self._held: list[Sample] = []  # taken from the queue, not yet handed out

    def put(self, sample: Sample) -> None:
        self._queue.put((sample,))

    def put_batch(self, samples: list[Sample]) -> None:
        if samples:
            self._queue.put(samples)

    def take(self, limit: int, wait_s: float) -> list[Sample]:
        """Up to `limit` samples, in order, waiting up to wait_s for the first."""
        if not self._held:
            try:
                self._held.extend(self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait())
            except queue.Empty:
                return []
        self._gather(limit)
        if len(self._held) <= limit:
            batch, self._held = self._held, []
        else:
            batch, self._held = self._held[:limit], self._held[limit:]
        return batch

    def qsize(self) -> int:
        self._gather(math.inf)
        return len(self._held)

    def empty(self) -> bool:
        return not self._held and self._queue.empty()

    def _gather(self, limit: float) -> None:
        with contextlib.suppress(queue.Empty):
            while len(self._held) < limit:
                self._held.extend(self._queue.get_nowait())


class _DriverRun:
    """A driver running in its thread, with a stop of its own and a destination for its samples.

    A reload that takes the driver over sends its samples to the new daemon (`send_to`) instead
    of stopping it: the device is never closed and reopened.
    """

    def __init__(self, driver: Driver, inbox: Inbox) -> None:
        self.driver = driver
        self._stop = threading.Event()
        self._inbox = inbox
        self._lock = threading.Lock()  # once send_to returns, no sample goes to the old destination
        self.thread = threading.Thread(target=driver.run, args=(self.emit, self._stop), name=f"driver-{driver.name}")
        self.thread.daemon = True
        self.thread.start()

    def emit(self, sample: Sample) -> None:
        with self._lock:
            self._inbox.put(sample)

    def send_to(self, inbox: Inbox) -> None:
        with self._lock:
            self._inbox = inbox

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)


class _LoopRun:
    """A serial driver read by the daemon's I/O loop, its samples going to a daemon's inbox in batches."""

    def __init__(self, driver: Any, io: IoLoop, inbox: Inbox) -> None:
        self.driver = driver
        self._io = io
        self._closed: threading.Event | None = None
        io.attach(driver, inbox.put_batch)

    def send_to(self, inbox: Inbox) -> None:
        self._io.route(self.driver, inbox.put_batch)

    @property
    def alive(self) -> bool:
        return self._closed is None and self._io.reading(self.driver)

    def stop(self) -> None:
        self._closed = self._io.detach(self.driver)

    def join(self, timeout_s: float) -> None:
        if self._closed is not None:
            self._closed.wait(timeout_s)


def _driver_settings(cfg: Config) -> dict[str, tuple[str, dict[str, Any]]]:
    """What each real device's driver is built from, by name (a simulated module has none: always rebuilt)."""
    out = {s.name: (s.driver, dict(s.options)) for s in cfg.sensors if s.driver != "simulated"}
    out.update({name: ("reed", dict(options)) for name, options in cfg.hatch_switches.items()})
    return out


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

        With `previous` (a reload, while it runs), its spool, recorder, annunciator and running
        drivers are taken over when their settings are unchanged; they change hands in `run()`.
        """
        self.cfg = cfg
        self.pin_factory = pin_factory
        self.annunciator: Any = None
        self._annunciating = False  # the annunciator shows the desk's state (from run() until close())
        self._ack_route = _Route()
        self.note = ""  # said on STATUS, e.g. why a reload was refused
        self.samples = Inbox()
        self.outputs: list[Callable[[Event], None]] = [EventLog().write]
        parts = prepare(cfg, pin_factory)
        parts.commands.target = self._command
        self._runs: list[_DriverRun | _LoopRun] = []  # each driver running (those taken over: here from the start)
        # the serial sensors' one I/O thread: a reload's new daemon takes the running one's
        self.io = previous.io if previous is not None else IoLoop()
        self.drivers = self._take_or_keep_drivers(parts.drivers, previous)
        self.timebase = parts.timebase
        self.clock = self.timebase.now
        self.monitor = Monitor(cfg.module)
        limits = cfg.module.alarms
        book = AlarmBook(limits.latching, limits.max_shelve_s, cfg.max_maintenance_s, _source_names(cfg))
        self.desk = AlarmDesk(book, self.clock, self._show, self._save_book)
        self.desk.outputs.append(self._unconfirmed_cleared)
        self._previous_book = previous.desk.book if previous is not None else None  # a reload takes it at start
        with contextlib.ExitStack() as undo:
            undo.callback(parts.close)
            self.recorder = self._take_or_build_recorder(previous, undo)
            self.mqtt = parts.mqtt
            if self.mqtt is not None:
                self.desk.outputs.append(self._publish_alarm)
            self.influx = parts.influx
            self.sinks = [s for s in (self.mqtt, self.influx) if s is not None]
            self.store, self._spool_path = self._take_or_build_spool(previous, undo)
            self.spool = self.store if self.sinks else None  # records go to the file only for sinks
            self.annunciator = self._take_or_build_annunciator(previous)  # last: nothing after it can fail
            undo.pop_all()
        self.metrics_every_s = METRICS_EVERY_S
        self._next_metrics = time.monotonic()  # the first right away: the backlog found at start shows
        self._next_faults = time.monotonic()
        taken = self.store is not None and previous is not None and previous.store is self.store
        dropped = self.store.counters.get("dropped", 0) if self.store else 0
        self._watches = {
            "spool_full": _FaultWatch("spool_full", "spool", dropped),
            "spool_fault": _FaultWatch("spool_fault", "spool", self.store.recoveries if taken else 0),
            "recorder_fault": _FaultWatch("recorder_fault", "recorder", self.recorder.dropped if self.recorder else 0),
            **{f"sink_fault.{s.name}": _FaultWatch("sink_fault", s.name) for s in self.sinks},
        }
        self._last_time = 0.0
        self._sensor_time: dict[str, float] = {}
        self._last_good = -math.inf  # monotonic time of the last good sample
        self._latest: dict[str, Estimate] = {}
        self._started_at = time.monotonic()
        names = [s.name for s in cfg.sensors] + [h for h in cfg.hatch_switches if h in {d.name for d in self.drivers}]
        self._health: dict[str, _Health] = {n: _Health() for n in names}
        self._driver_of = {d.name: d for d in self.drivers}

    # -- building ---------------------------------------------------------------------------------

    def _take_or_keep_drivers(self, built: list[Driver], previous: Daemon | None) -> list[Driver]:
        """The drivers to run: the running one of `previous` where its settings are unchanged, else the one built."""
        if previous is None or previous.pin_factory is not self.pin_factory:
            return built
        mine, theirs = _driver_settings(self.cfg), _driver_settings(previous.cfg)
        running = {r.driver.name: r for r in previous._runs if r.driver.name in theirs}
        drivers, taken = [], []
        for d in built:
            run = running.get(d.name)
            same = d.name in mine and mine[d.name] == theirs.get(d.name)
            if run is not None and same and type(run.driver) is type(d) and run.alive:
                self._runs.append(run)
                drivers.append(run.driver)
                taken.append(d.name)
            else:
                drivers.append(d)
        if taken:
            log.info("reload: %s unchanged, read on without a pause", ", ".join(taken))
        return drivers

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
        """The spool file: the sinks' records and the alarm book (without sinks, the book alone if it can be kept)."""
        path = _spool_path(self.cfg)
        if not self.sinks and path is None:
            return None, None
        if previous is not None and previous.store is not None and _same_file(previous._spool_path, path):
            return previous.store, path
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
        self._restore_book()
        self._ack_route.target = self._button
        self._annunciating = True
        self.desk.show(self.desk.book.annunciation())  # through desk.show: callers may have wrapped it
        if self.recorder is not None:
            self.recorder.configure(cfg.recorder.rotate_mb, cfg.recorder.max_mb)
            self.recorder.start()
        if self.mqtt is not None:
            self.mqtt.start()  # connects in the background, retrying for ever
        if self.store is not None:
            self.store.configure(cfg.spool.max_mb, cfg.spool.commit_interval_s, cfg.spool.replay_per_s)
            self.store.start(self.sinks)
        running = {id(r.driver) for r in self._runs}  # taken over: they run already, their samples sent here
        for d in self.drivers:
            if id(d) not in running:
                looped = isinstance(d, SerialDriver)
                self._runs.append(_LoopRun(d, self.io, self.samples) if looped else _DriverRun(d, self.samples))

    def _restore_book(self) -> None:
        """The alarm book as the previous run (or, on a reload, the running daemon) left it; then shown and published.

        A saved row that cannot be read is logged (WARNING) and dropped: that alarm starts clean.
        Afterwards the file holds exactly the book restored.
        """
        stored: dict[str, str] = {}
        rows: dict[str, object] = {}
        if self.store is None or self.store.temporary:
            _say_once(
                "alarm book: not kept across restarts (no [spool] path and no $STATE_DIRECTORY): latches, "
                "acknowledgements, shelving and maintenance start afresh at every start"
            )
        if self.store is not None:
            stored, unreadable = self.store.load_book()
            for name in unreadable:
                log.warning("alarm book: skipping a saved row that cannot be read: %s", name)
        if self._previous_book is not None:
            rows = dict(self._previous_book.rows())
            self._previous_book = None
        else:
            for name, text in stored.items():
                try:
                    rows[name] = json.loads(text)
                except ValueError as exc:
                    log.warning("alarm book: skipping a saved row that is not JSON: %s: %s", name, exc)
        self.desk.restore(rows, self._confirm_within)
        if self.store is not None:
            now = self.desk.book.rows()
            replace = {name: None for name in stored if name not in now}
            replace.update({name: _dumps(row) for name, row in now.items()})
            self.store.save_book(replace)
        if self.mqtt is not None:
            for record in self.desk.book.records():
                self._publish_record(record)
            for vid in self.monitor.volumes:
                self.mqtt.volume_alarm(
                    vid, any(r.condition_active for r in self.desk.book.records() if r.source == vid)
                )

    def _confirm_within(self, alarm: str) -> float:
        """How long after a restart the monitor may take to raise a condition of this kind again, if it holds."""
        module = self.cfg.module
        a, leak = module.alarms, module.leak
        stale = a.sensor.stale_after_s
        if alarm in (LEAK_RATE.name, RESERVE_TIME.name):  # judged only after settle_s, on consecutive estimates
            n = a.leak_rate.confirmations if alarm == LEAK_RATE.name else a.reserve_time.confirmations
            return leak.settle_s + (n + 1) * leak.report_interval_s + stale + CONFIRM_MARGIN_S
        if alarm in OWN_ALARMS:  # the daemon's own checks
            return SINK_FAULT_AFTER_S + 2 * FAULTS_EVERY_S
        if alarm == LOW_PRESSURE.name:  # two readings on_delay_s apart
            return a.low_pressure.on_delay_s + stale + CONFIRM_MARGIN_S
        return stale + CONFIRM_MARGIN_S  # rapid_depress, sensor_fault: a few readings

    def _save_book(self, rows: dict[str, dict | None]) -> None:
        """The alarm book's changed rows to the spool's file (its committer writes them at once)."""
        if self.store is not None:
            self.store.save_book({name: None if row is None else _dumps(row) for name, row in rows.items()})

    def _unconfirmed_cleared(self, change: LifecycleChange) -> None:
        """A restored condition the monitor did not raise again: its clearing is stored and logged like any."""
        last = change.record.last
        if change.cause is not LifecycleEvent.CONDITION_CLEARED or last.reason != NOT_CONFIRMED:
            return
        last = self._at_wall(last)
        if self.spool is not None:
            self.spool.append("alarm", last.time, last.to_dict())
        for output in self.outputs:
            output(last)

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
        windows = book.maintenance()
        if windows:
            names = ", ".join("all sources" if s == ALL_SOURCES else s for s in sorted(windows))
            until = time.strftime("%H:%M:%SZ", time.gmtime(max(w.until for w in windows.values())))
            alarms += f" | maintenance: {names} until {until}"
        return "; ".join(parts) + f" | {alarms}" + (f" | {self.note}" if self.note else "")

    def step(self, wait_s: float) -> list[Event]:
        """Take up to MAX_BATCH samples (waiting up to wait_s for the first), feed the core, publish."""
        self._check_clock()
        now = self.clock()  # before taking: every reading up to `now` is then on the queue
        batch = self.samples.take(MAX_BATCH, wait_s)
        events: list[Event] = []
        # what this step spools goes to the forwarders at once, at the end of the step
        with self.spool.batch() if self.spool is not None else contextlib.nullcontext():
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

    def _publish(self, events: list[Event], now: float) -> None:
        """The annunciator first (through the desk), then the spool and the other outputs."""
        self.desk.transitions(e for e in events if isinstance(e, AlarmTransition))
        self.desk.tick(now)
        for event in events:
            if isinstance(event, Estimate):
                self._latest[event.volume] = event
            event = self._at_wall(event)
            if isinstance(event, Estimate) and self.spool is not None:
                self.spool.append("estimate", event.time, event.to_dict())
            elif isinstance(event, AlarmTransition) and self.spool is not None:
                self.spool.append("alarm", event.time, event.to_dict())
            elif isinstance(event, LevelStep) and self.spool is not None:
                self.spool.append("step", event.time, event.to_dict())
            for output in self.outputs:
                output(event)

    def _at_wall(self, event: Event) -> Event:
        """The event with its time on the wall clock (as it leaves the daemon)."""
        offset = self.timebase.offset
        return replace(event, time=event.time + offset) if offset else event

    def _check_clock(self) -> None:
        """A step of the wall clock: logged and published once; the recorder begins a new file."""
        step = self.timebase.check()
        if step is None:
            return
        now = self.timebase.to_wall(self.clock())
        way = "forward" if step > 0 else "back"
        log.warning(
            "the wall clock was set %s by %.3f s (%s%s): alarms and sensor liveness run on steady time and are "
            "not affected; stored times follow the wall clock from %s",
            way,
            abs(step),
            present.duration(abs(step)),
            ", or the system was suspended" if step > 0 else "",
            present.utc(now),
            extra={"CLOCK_STEP_S": f"{step:.3f}"},
        )
        if self.spool is not None:
            self.spool.append("clock_step", now, {"time": now, "step_s": round(step, 3)})
        if self.recorder is not None:
            self.recorder.new_file(f"the wall clock was set {way} by {abs(step):.3f} s")

    def _feed(self, sample: Sample) -> list[Event]:
        mono = time.monotonic()
        if sample.quality is not Quality.BAD:
            self._last_good = mono
        if sample.time < self._last_time:  # threads race by microseconds; the core takes time in order
            sample = sample._replace(time=self._last_time)
        previous = self._sensor_time.get(sample.sensor)
        if previous is not None and round(sample.time * 1e6) <= round(previous * 1e6):
            # two readings of one sensor in the same microsecond (a burst of buffered lines) would be one
            # point in InfluxDB, whose key is series + timestamp (whole microseconds, spool.time_ns): keep
            # them a whole microsecond apart (`previous + 1e-6` is 0.95 us at today's epoch and may round back)
            sample = sample._replace(time=(round(previous * 1e6) + 1) / 1e6)
        self._sensor_time[sample.sensor] = sample.time
        self._last_time = sample.time
        stored = sample._replace(time=self.timebase.to_wall(sample.time))  # what leaves the daemon: wall clock
        if self.recorder is not None:
            self.recorder.write(stored)
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
                self.spool.append("hatch", stored.time, {"hatch": sample.sensor, "open": sample.value >= 0.5})
        elif self.spool is not None:
            # the sensor last: the MQTT message is cut from this record's JSON text (Telemetry.record)
            self.spool.append("sample", stored.time, {**sample_payload(stored), "sensor": sample.sensor})
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
        glitches = self.monitor.glitches()
        out = {}
        for name, h in self._health.items():
            driver = self._driver_of.get(name)
            counts = {
                field: int(getattr(driver, attr))
                for attr, field in (TROUBLE_COUNTERS | INFO_COUNTERS).items()
                if isinstance(getattr(driver, attr, None), int)
            }
            if name in glitches:  # readings the core set aside as one-reading jumps
                counts["glitches"] = glitches[name]
            trouble = sum(v for k, v in counts.items() if k not in INFO_COUNTERS.values())
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
        now = self.timebase.to_wall(now)
        stats = self.spool.stats()
        spool = {k: stats[k] for k in ("depth", "oldest_unsent_s", "dropped", "size_bytes", "corrupt", "unstorable")}
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
            self.mqtt.metrics(metrics)

    def _check_faults(self, now: float) -> None:
        """Raise or clear the advisories of the optional parts from what they report."""
        due: list[tuple[_FaultWatch, tuple[AlarmState, str], float | None]] = []

        def check(key: str, problem: str | None, count: int = 0, event: str = "") -> None:
            watch = self._watches[key]
            change = watch.update(problem, count, event)
            if change is not None:
                due.append((watch, change, float(count) if count else None))

        if self.store is not None:
            dropped = self.store.counters.get("dropped", 0)
            check("spool_full", None, dropped, f"spool full: {dropped} oldest record(s) dropped")
            check("spool_fault", self.store.problem, self.store.recoveries, self.store.last_fault)
            mono = time.monotonic()
            for sink in self.sinks:
                f = self.store.forwarder(sink.name)
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
        t = self._at_wall(t)
        if self.spool is not None:
            self.spool.append("alarm", t.time, t.to_dict())
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
        stopping = []
        taken = {id(r) for r in successor._runs} if successor is not None else set()
        for run in self._runs:
            if id(run) in taken:
                run.send_to(successor.samples)  # read on; what this daemon holds is drained below
            else:
                run.stop()
                stopping.append(run)
        end = time.monotonic() + STOP_DRIVERS_S
        for run in stopping:
            run.join(max(0.0, end - time.monotonic()))
        if successor is None or successor.io is not self.io:
            self.io.close(max(0.0, end - time.monotonic()))
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
        if self.store is not None:
            if self.store is keep.store:
                self.store.stop_forwarding(STOP_SPOOL_S)
            else:
                self.store.close(drain_s=0.5, timeout_s=STOP_SPOOL_S)
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
        self._publish_record(change.record, change.gone)

    def _publish_record(self, record: AlarmRecord, gone: bool = False) -> None:
        """One alarm's retained MQTT topic (empty when gone), and its volume's any-alarm flag."""
        alarm, source, severity = record.key
        payload = record.to_dict()
        for key in ("time", "shelved_until", "changed_at"):  # steady time inside, wall clock outside
            if isinstance(payload.get(key), int | float):
                payload[key] = self.timebase.to_wall(payload[key])
        self.mqtt.alarm(payload, alarm, source, severity.label, gone=gone)
        if source in self.monitor.volumes or (gone and alarm not in OWN_ALARMS):
            active = any(r.condition_active for r in self.desk.book.records() if r.source == source)
            self.mqtt.volume_alarm(source, active)


class _Nothing:
    """A successor that takes nothing over."""

    recorder = annunciator = store = None


_said: set[str] = set()


def _say_once(message: str) -> None:
    """A warning logged once per process (builds and reloads repeat it otherwise)."""
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)


def _dumps(row: dict) -> str:
    return json.dumps(row, separators=(",", ":"))


def _source_names(cfg: Config) -> Callable[[str], bool]:
    """Which names maintenance may take: a sensor, or a volume (segment names, sorted, joined by "-")."""
    sensors = {s.name for s in cfg.sensors}
    segments = {s.name for s in cfg.module.segments}

    def known(name: str) -> bool:
        if name in sensors:
            return True
        parts = name.split("-")
        return all(p in segments for p in parts) and parts == sorted(set(parts))

    return known


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


def _mqtt(cfg: Config, drivers: list[Driver], on_command: Callable[..., Any], notes: list[str] | None = None) -> Any:
    """The MQTT sink with its credentials and TLS read (it connects only when started); `notes` for check-config."""
    from hullwatch.sinks.mqtt import MqttSetupError, MqttSink, StationDescription

    quantities: dict[str, Any] = {}
    for d in drivers:  # every sensor driver tells what its sensors report (hatch drivers do not)
        quantities.update(getattr(d, "quantities", {}))
    settings = _without_empty_client_key(cfg.mqtt, cfg.path, notes)
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


def _without_empty_client_key(m: MqttConfig, path: str, notes: list[str] | None = None) -> MqttConfig:
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
    line = (
        f"{path}: mqtt.tls.{key}: {empty[0]} is empty (the service's fallback when the file is not installed): "
        "connecting to the broker without a client certificate"
    )
    if notes is None:
        log.warning("%s", line)
    else:
        notes.append(line)
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

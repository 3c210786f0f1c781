"""The configuration file (ICD §2): TOML in, frozen and validated objects out.

Every problem found is reported, one line each, as `FILE: KEY.PATH: what is wrong`;
nothing half-valid is ever returned.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pkgutil
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from hullwatch.core import alarm_kinds
from hullwatch.core.lifecycle import DEFAULT_MAX_MAINTENANCE_S
from hullwatch.core.model import Quantity
from hullwatch.core.settings import (
    AlarmLimits,
    Hatch,
    LeakSettings,
    ModuleSettings,
    Segment,
    SensorLimits,
    SensorSpec,
)
from hullwatch.core.topology import form_volumes
from hullwatch.sim.live import SimulationSettings
from hullwatch.topics import SEVERITIES

DEFAULT_PATH = "/etc/hullwatch/hullwatch.toml"

STATION_NAME = re.compile(r"[a-z0-9_-]+")
SEGMENT_NAME = re.compile(r"[a-z0-9_]+")
DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]+")

# Drivers a [[sensor]] may name; each validates its own keys (hullwatch.sensors).
DRIVERS = ("simulated", "serial", "modbus", "mcp3008")
SENSOR_KEYS = frozenset({"name", "segment", "driver", "range_pa", "range_k", "time_constant_s"})
MAX_CONFIG_BYTES = 16 * 2**20  # a configuration file is a few kB: more is not one (/dev/zero, a wrong path)
MAX_TOPIC_PREFIX_BYTES = 1024  # MQTT topics end at 65535 bytes; a prefix needs room for what follows it

# GPIO pins of the Pi's hardware SPI0 (an MCP3008 without select_pin etc.): the bus, and CE0/CE1 per device.
SPI0_BUS_PINS = {"clock_pin": 11, "mosi_pin": 10, "miso_pin": 9}
SPI0_SELECT_PINS = {0: 8, 1: 7}


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SensorConfig:
    """A [[sensor]]: what the core needs (spec) and how its driver reaches it (options)."""

    spec: SensorSpec
    driver: str
    options: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RecorderConfig:
    path: str
    rotate_mb: float = 64.0  # a new file once the current one reaches this
    max_mb: float = 1024.0  # the oldest rotated files go while all of them exceed this


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "/var/lib/hullwatch/spool.sqlite"
    max_mb: float = 512.0
    commit_interval_s: float = 1.0
    replay_per_s: float = 10_000.0  # backlog records a second per sink after an outage
    configured: bool = False  # [spool] was in the file (else an unwritable default path means memory only)


@dataclass(frozen=True)
class AnnunciatorConfig:
    buzzer_gpio: int | None = 18
    led_gpio: int | None = 23
    ack_button_gpio: int | None = 24
    fault_led_gpio: int | None = None


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password_file: str | None = None
    tls: TlsConfig | None = None
    qos: int = 1
    topic_prefix: str = ""
    keepalive_s: int = 30
    homeassistant: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class InfluxConfig:
    url: str = "http://127.0.0.1:8086"
    api: str = "v2"
    org: str | None = None
    bucket: str | None = None
    database: str | None = None
    token_file: str | None = None
    username: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration."""

    path: str
    station: str
    module: ModuleSettings
    sensors: tuple[SensorConfig, ...]
    hatch_switches: Mapping[str, Mapping[str, Any]]  # hatch name -> reed switch options (gpio, closed_level, ...)
    recorder: RecorderConfig | None
    spool: SpoolConfig
    annunciator: AnnunciatorConfig | None
    mqtt: MqttConfig | None
    influxdb: InfluxConfig | None
    simulation: SimulationSettings | None = None
    max_maintenance_s: float = DEFAULT_MAX_MAINTENANCE_S  # [alarms] max_maintenance_s: maintenance ends by then

    def sample_names(self) -> dict[str, frozenset[Quantity]]:
        """What each name may report in a samples file."""
        names = {s.name: frozenset({Quantity.PRESSURE, Quantity.TEMPERATURE}) for s in self.sensors}
        names.update({h.name: frozenset({Quantity.HATCH}) for h in self.module.hatches})
        return names

    def volumes(self) -> dict[str, tuple[str, ...]]:
        """The volumes as the hatches' initial states form them."""
        m = self.module
        return form_volumes(
            [s.name for s in m.segments],
            {h.name: h.between for h in m.hatches},
            [h.name for h in m.hatches if h.initially_open],
        )


@dataclass(frozen=True)
class BridgeConfig:
    """`hullwatch bridge`: stations' telemetry from a broker into InfluxDB, through a spool."""

    path: str
    mqtt: MqttConfig
    influxdb: InfluxConfig
    spool: SpoolConfig
    stations: tuple[str, ...] = ("+",)
    topic_root: str = "hullwatch"
    share_group: str = "hullwatch-bridge"  # MQTT 5 shared subscription group; "" subscribes plainly
    client_id: str | None = None


def load_bridge(path: str) -> BridgeConfig:
    """Read and validate a bridge configuration ([bridge], [mqtt], [influxdb], [spool])."""
    return _Parser(path).bridge(_read_toml(path))


def config_path(cli_path: str | None) -> str:
    """-c, else $HULLWATCH_CONFIG, else the system path."""
    return cli_path or os.environ.get("HULLWATCH_CONFIG") or DEFAULT_PATH


def load(path: str) -> Config:
    """Read and validate a configuration file; raise ConfigError or FileNotFoundError."""
    return parse(_read_toml(path), path)


def _read_toml(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MB: not a configuration file"])
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: TOML nested too deeply to read"]) from None


def parse(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document."""
    return _Parser(path).parse(data)


_MISSING = object()


class _Parser:
    """Walks the document, collecting every problem with its key path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self.pins: dict[int, tuple[str, str]] = {}  # GPIO pin -> (key path, SPI role or "") of its first user
        self.max_maintenance_s = DEFAULT_MAX_MAINTENANCE_S  # [alarms] max_maintenance_s, read by alarms()

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def claim_pin(self, pin: int, key: str, spi_role: str = "", what: str = "") -> None:
        """One GPIO pin, one device: a second user is a problem naming both (MCP3008s may share SPI lines)."""
        first = self.pins.setdefault(pin, (key, spi_role))
        if first[0] != key and not (spi_role and first[1] == spi_role):
            self.problem(key, f"GPIO{pin}{what} is also used by {first[0]}: one pin, one device")

    # -- typed getters -----------------------------------------------------------------------

    def table(self, data: Mapping, key: str, where: str, known: set[str] | frozenset[str] | None) -> dict | None:
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(where, f"must be a table, not {type(value).__name__}")
            return None
        if known is not None:
            for k in value:
                if k not in known:
                    self.problem(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def value(
        self,
        table: Mapping,
        key: str,
        where: str,
        kind: str,
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        v = table.get(key, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                self.problem(f"{where}.{key}" if where else key, "missing (required)")
                return None
            return default
        full = f"{where}.{key}" if where else key
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, int | float) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
        }[kind]
        if not ok:
            self.problem(full, f"must be {_KIND_NAMES[kind]}, not {v!r}")
            return None if default is _MISSING else default
        if kind == "float":
            v = float(v)
            if v != v or v in (float("inf"), float("-inf")):
                self.problem(full, f"must be finite, not {v!r}")
                return None if default is _MISSING else default
        if check is not None:
            msg = check(v)
            if msg:
                self.problem(full, msg)
                return None if default is _MISSING else default
        return v

    def optional_threshold(self, table: Mapping, key: str, where: str, default: float | None) -> float | None:
        """A threshold that may be switched off with `false`."""
        if table.get(key) is False:
            return None
        return self.value(table, key, where, "float", default, _positive)

    # -- sections --------------------------------------------------------------------------

    def parse(self, data: Mapping[str, Any]) -> Config:
        known_top = {
            "station",
            "segment",
            "hatch",
            "sensor",
            "leak",
            "alarms",
            "recorder",
            "spool",
            "annunciator",
            "mqtt",
            "influxdb",
            "simulation",
        }
        for k in data:
            if k not in known_top:
                self.problem(k, f"unknown section (known: {', '.join(sorted(known_top))})")
        station_t = self.table(data, "station", "station", {"name"})
        if station_t is None:
            if "station" not in data:
                self.problem("station", 'missing (required): [station] with name = "..."')
            station = "station"
        else:
            station = self.value(station_t, "name", "station", "str", check=_matches(STATION_NAME, "[a-z0-9_-]+"))
        segments, seg_names = self.segments(data)
        hatches, hatch_switches = self.hatches(data, seg_names)
        sensors = self.sensors(data, seg_names, {h.name for h in hatches})
        leak = self.leak(data)
        alarms = self.alarms(data)
        recorder = spool = annunciator = mqtt = influx = None
        t = self.table(data, "recorder", "recorder", {"path", "rotate_mb", "max_mb"})
        if t is not None:
            r = RecorderConfig("")
            recorder = RecorderConfig(
                self.value(t, "path", "recorder", "str", check=_file_path),
                self.value(t, "rotate_mb", "recorder", "float", r.rotate_mb, _positive),
                self.value(t, "max_mb", "recorder", "float", r.max_mb, _positive),
            )
        spool = self.spool(data)
        pins = ("buzzer_gpio", "led_gpio", "ack_button_gpio", "fault_led_gpio")
        t = self.table(data, "annunciator", "annunciator", set(pins))
        if t is not None:
            a = AnnunciatorConfig()
            annunciator = AnnunciatorConfig(
                *(self.value(t, k, "annunciator", "int", getattr(a, k), _bcm_pin) for k in pins)
            )
            for k in pins:
                pin = getattr(annunciator, k)
                if pin is not None:
                    self.claim_pin(pin, f"annunciator.{k}")
        mqtt = self.mqtt(data, station)
        influx = self.influx(data)
        simulation = self.simulation(data)
        if self.problems:
            raise ConfigError(self.problems)
        module = ModuleSettings(tuple(segments), tuple(hatches), tuple(s.spec for s in sensors), leak, alarms)
        return Config(
            self.path,
            station,
            module,
            tuple(sensors),
            MappingProxyType(hatch_switches),
            recorder,
            spool or SpoolConfig(),
            annunciator,
            mqtt,
            influx,
            simulation,
            self.max_maintenance_s,
        )

    def array_of_tables(self, data: Mapping, key: str) -> list[tuple[str, dict]]:
        items = data.get(key, [])
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            self.problem(key, f"must be an array of tables ([[{key}]])")
            return []
        out = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if isinstance(item, dict):
                out.append((where, item))
            else:
                self.problem(where, "must be a table")
        return out

    def segments(self, data: Mapping) -> tuple[list[Segment], set[str]]:
        """The valid segments, and every name given (a segment with a bad volume is still a known name)."""
        items = self.array_of_tables(data, "segment")
        if not items:
            self.problem("segment", "missing (required): at least one [[segment]] with name and volume_m3")
        out, seen = [], set()
        for where, t in items:
            self.check_keys(t, where, {"name", "volume_m3"})
            name = self.value(t, "name", where, "str", check=_matches(SEGMENT_NAME, "[a-z0-9_]+ (no '-')"))
            volume = self.value(t, "volume_m3", where, "float", check=_positive)
            if name is not None and name in seen:
                self.problem(f"{where}.name", f"duplicate segment name {name!r}")
            seen.add(name)
            if name is not None and volume is not None:
                out.append(Segment(name, volume))
        return out, {n for n in seen if n is not None}

    def hatches(self, data: Mapping, seg_names: set[str]) -> tuple[list[Hatch], dict[str, dict]]:
        out, wired, seen = [], {}, set()
        for where, t in self.array_of_tables(data, "hatch"):
            self.check_keys(
                t, where, {"name", "between", "initial", "gpio", "closed_level", "debounce_s", "heartbeat_s"}
            )
            name = self.value(t, "name", where, "str", check=_matches(DEVICE_NAME, "[A-Za-z0-9_-]+"))
            if name is not None and name in seen:
                self.problem(f"{where}.name", f"duplicate hatch name {name!r}")
            seen.add(name)
            between = t.get("between", _MISSING)
            pair: tuple[str, str] | None = None
            if between is _MISSING:
                self.problem(f"{where}.between", "missing (required): two segment names")
            elif not (isinstance(between, list) and len(between) == 2 and all(isinstance(b, str) for b in between)):
                self.problem(f"{where}.between", f"must be a list of two segment names, not {between!r}")
            elif between[0] == between[1]:
                self.problem(f"{where}.between", f"joins segment {between[0]!r} to itself")
            else:
                bad = [b for b in between if b not in seg_names]
                for b in bad:
                    self.problem(f"{where}.between", f"unknown segment {b!r} (segments: {_names(seg_names)})")
                if not bad:
                    pair = (between[0], between[1])
            initial = self.value(t, "initial", where, "str", "open", _one_of(("open", "closed")))
            pin = self.value(t, "gpio", where, "int", None, _bcm_pin)
            if pin is not None:
                self.claim_pin(pin, f"{where}.gpio")
            if pin is None and any(k in t for k in ("closed_level", "debounce_s", "heartbeat_s")):
                self.problem(f"{where}.gpio", "missing: closed_level and debounce_s describe a reed switch on a pin")
            if name is not None and pair is not None:
                out.append(Hatch(name, pair, initial != "closed"))
                if pin is not None:
                    wired[name] = {k: t[k] for k in ("gpio", "closed_level", "debounce_s", "heartbeat_s") if k in t}
        return out, wired

    def sensors(self, data: Mapping, seg_names: set[str], hatch_names: set[str]) -> list[SensorConfig]:
        items = self.array_of_tables(data, "sensor")
        if not items:
            self.problem("sensor", "missing (required): at least one [[sensor]]")
        out, seen = [], set(hatch_names)
        for where, t in items:
            name = self.value(t, "name", where, "str", check=_matches(DEVICE_NAME, "[A-Za-z0-9_-]+"))
            if name is not None and name in seen:
                self.problem(f"{where}.name", f"duplicate name {name!r} (sensor and hatch names must be unique)")
            seen.add(name)
            segment = self.value(t, "segment", where, "str")
            if segment is not None and segment not in seg_names:
                self.problem(f"{where}.segment", f"unknown segment {segment!r} (segments: {_names(seg_names)})")
            driver = self.value(t, "driver", where, "str", check=_one_of(DRIVERS))
            if driver == "simulated":
                self.check_keys(t, where, SENSOR_KEYS)
            d = SensorSpec("", "")
            prange = self.range(
                t, "range_pa", where, d.pressure_range_pa, lambda lo: lo >= 0.0, "must not be negative (absolute Pa)"
            )
            trange = self.range(
                t,
                "range_k",
                where,
                d.temperature_range_k,
                lambda lo: lo > 0.0,
                "must be above 0 K (the mass divides by T)",
            )
            options = {k: v for k, v in t.items() if k not in SENSOR_KEYS}
            tau = self.value(t, "time_constant_s", where, "float", d.time_constant_s, _between(0.0, DAY_S, "s"))
            port = options.get("port")
            if driver in ("serial", "modbus") and isinstance(port, str) and port.strip():
                msg = _serial_port(port)
                if msg:
                    self.problem(f"{where}.port", msg)
            if driver == "mcp3008":
                self.claim_spi_pins(options, where)
            if None not in (name, segment, driver) and segment in seg_names:
                spec = SensorSpec(name, segment, prange, trange, tau)
                out.append(SensorConfig(spec, driver, MappingProxyType(options)))
        return out

    def claim_spi_pins(self, options: Mapping, where: str) -> None:
        """The pins an MCP3008 takes: its software-SPI pins, else SPI0's bus and chip-select (invalid ones aside)."""
        soft = {k: options[k] for k in SPI0_BUS_PINS.keys() | {"select_pin"} if k in options}
        if soft:
            for k in ("select_pin", "clock_pin", "mosi_pin", "miso_pin"):
                pin = soft.get(k)
                if isinstance(pin, int) and not isinstance(pin, bool) and _bcm_pin(pin) is None:
                    self.claim_pin(pin, f"{where}.{k}", k)
            return
        if options.get("port", 0) != 0:
            return
        device = options.get("device", 0)
        if device in SPI0_SELECT_PINS and not isinstance(device, bool):
            self.claim_pin(SPI0_SELECT_PINS[device], f"{where}.device", "select_pin", f" (SPI0 CE{device})")
        for role, pin in SPI0_BUS_PINS.items():
            self.claim_pin(pin, f"{where}.port", role, f" (SPI0 {role.removesuffix('_pin')})")

    def range(
        self, t: Mapping, key: str, where: str, default: tuple[float, float], low_ok: Callable[[float], bool], why: str
    ) -> tuple[float, float]:
        """A physical range [low, high], low < high, whose low end passes `low_ok` (else `why` says what is wrong)."""
        v = t.get(key, _MISSING)
        if v is _MISSING:
            return default
        if not (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            and v[0] < v[1]
        ):
            self.problem(f"{where}.{key}", f"must be [low, high] with low < high, not {v!r}")
            return default
        if not low_ok(float(v[0])):
            self.problem(f"{where}.{key}", f"low end {v[0]!r}: {why}")
            return default
        return (float(v[0]), float(v[1]))

    def leak(self, data: Mapping) -> LeakSettings:
        d = LeakSettings()
        t = self.table(
            data, "leak", "leak", {"confidence_sigma", "report_interval_s", "settle_s", "thermometer_lag_sigma_s"}
        )
        if t is None:
            return d
        return LeakSettings(
            self.value(t, "confidence_sigma", "leak", "float", d.confidence_sigma, _positive),
            self.value(t, "report_interval_s", "leak", "float", d.report_interval_s, _positive_at_most(DAY_S)),
            self.value(t, "settle_s", "leak", "float", d.settle_s, _between(0.0, WEEK_S, "s")),
            self.value(
                t, "thermometer_lag_sigma_s", "leak", "float", d.thermometer_lag_sigma_s, _between(0.0, DAY_S, "s")
            ),
        )

    def alarms(self, data: Mapping) -> AlarmLimits:
        names = {k.section for k in alarm_kinds.KINDS} | {"latching", "max_shelve_s", "max_maintenance_s"}
        top = self.table(data, "alarms", "alarms", names) or {}
        defaults = AlarmLimits()
        latching = top.get("latching", list(defaults.latching))
        kinds = alarm_kinds.NAMES
        if not (isinstance(latching, list) and all(k in kinds for k in latching)):
            self.problem("alarms.latching", f"must be a list of alarm kinds ({', '.join(kinds)}), not {latching!r}")
            latching = []
        max_shelve = self.value(
            top, "max_shelve_s", "alarms", "float", defaults.max_shelve_s, _positive_at_most(WEEK_S)
        )
        self.max_maintenance_s = self.value(
            top, "max_maintenance_s", "alarms", "float", DEFAULT_MAX_MAINTENANCE_S, _positive_at_most(WEEK_S)
        )
        limits = {k.section: self.alarm_section(top, k, getattr(defaults, k.section)) for k in alarm_kinds.VOLUME_KINDS}
        reserve = limits[alarm_kinds.RESERVE_TIME.section]
        if reserve.minimum_pa == 0.0:
            self.problem(
                "alarms.reserve_time.minimum_pa", "must be positive, not 0.0 (reserve time is τ·ln(P/minimum_pa))"
            )
        st = self.table(top, "sensor", "alarms.sensor", {"stale_after_s", "severity"}) or {}
        ds = SensorLimits()
        sensor = SensorLimits(
            self.value(st, "stale_after_s", "alarms.sensor", "float", ds.stale_after_s, _positive_at_most(DAY_S)),
            self.value(st, "severity", "alarms.sensor", "str", ds.severity, _one_of(SEVERITIES)),
        )
        for kind in alarm_kinds.VOLUME_KINDS:  # a graver threshold is never easier to reach than a milder one
            keys = [key for _, key in kind.thresholds]
            pairs = list(itertools.pairwise(keys))  # (milder, graver)
            ordered = pairs if kind.rises else [(graver, milder) for milder, graver in reversed(pairs)]
            for lo_key, hi_key in ordered:
                lo, hi = getattr(limits[kind.section], lo_key), getattr(limits[kind.section], hi_key)
                if lo is not None and hi is not None and lo > hi:
                    self.problem(f"alarms.{kind.section}.{lo_key}", f"{lo:g} is above {hi_key} = {hi:g}")
        return AlarmLimits(**limits, sensor=sensor, latching=tuple(latching), max_shelve_s=max_shelve)

    def alarm_section(self, top: Mapping, kind: alarm_kinds.AlarmKind, default: Any) -> Any:
        """A kind's [alarms.<section>]: its thresholds (each may be off), confirmations and other figures."""
        where = f"alarms.{kind.section}"
        thresholds = {key for _, key in kind.thresholds}
        keys = [f.name for f in fields(default)]
        t = self.table(top, kind.section, where, set(keys)) or {}
        kwargs = {}
        if "confirmations" in keys:
            kwargs["confirmations"] = self.value(t, "confirmations", where, "int", default.confirmations, _positive)
        for key in keys:
            if key in thresholds:
                kwargs[key] = self.optional_threshold(t, key, where, getattr(default, key))
            elif key != "confirmations":
                kwargs[key] = self.value(t, key, where, "float", getattr(default, key), _non_negative)
        return type(default)(**kwargs)

    def simulation(self, data: Mapping) -> SimulationSettings | None:
        t = self.table(data, "simulation", "simulation", {"scenario", "speed", "seed"})
        if t is None:
            return None
        return SimulationSettings(
            self.value(t, "scenario", "simulation", "str"),
            self.value(t, "speed", "simulation", "float", 1.0, _positive),
            self.value(t, "seed", "simulation", "int", 0),
        )

    def mqtt(self, data: Mapping, station: str | None) -> MqttConfig | None:
        keys = {
            "host",
            "port",
            "username",
            "password_file",
            "tls",
            "qos",
            "topic_prefix",
            "keepalive_s",
            "homeassistant",
            "discovery_prefix",
        }
        t = self.table(data, "mqtt", "mqtt", keys)
        if t is None:
            return None
        d = MqttConfig()
        tls = None
        tt = self.table(t, "tls", "mqtt.tls", {"ca_file", "cert_file", "key_file"})
        if tt is not None:
            tls = TlsConfig(
                *(self.value(tt, k, "mqtt.tls", "str", None, _file_path) for k in ("ca_file", "cert_file", "key_file"))
            )
        return MqttConfig(
            self.value(t, "host", "mqtt", "str", d.host, _host),
            self.value(t, "port", "mqtt", "int", d.port, _port),
            self.value(t, "username", "mqtt", "str", None),
            self.value(t, "password_file", "mqtt", "str", None, _file_path),
            tls,
            self.value(t, "qos", "mqtt", "int", d.qos, _one_of((0, 1, 2))),
            self.value(t, "topic_prefix", "mqtt", "str", f"hullwatch/{station}", _topic_prefix),
            self.value(t, "keepalive_s", "mqtt", "int", d.keepalive_s, _keepalive),
            self.value(t, "homeassistant", "mqtt", "bool", d.homeassistant),
            self.value(t, "discovery_prefix", "mqtt", "str", d.discovery_prefix, _topic_prefix),
        )

    def spool(self, data: Mapping) -> SpoolConfig | None:
        t = self.table(data, "spool", "spool", {"path", "max_mb", "commit_interval_s", "replay_per_s"})
        if t is None:
            return None
        d = SpoolConfig()
        return SpoolConfig(
            self.value(t, "path", "spool", "str", d.path, _file_path),
            self.value(t, "max_mb", "spool", "float", d.max_mb, _between(0.1, 1e6, "MB")),
            self.value(t, "commit_interval_s", "spool", "float", d.commit_interval_s, _positive_at_most(3600.0)),
            self.value(t, "replay_per_s", "spool", "float", d.replay_per_s, _positive),
            configured=True,
        )

    def bridge(self, data: Mapping) -> BridgeConfig:
        for key in data:
            if key not in {"bridge", "mqtt", "influxdb", "spool"}:
                self.problem(key, "unknown section for a bridge (known: bridge, mqtt, influxdb, spool)")
        t = self.table(data, "bridge", "bridge", {"stations", "topic_root", "share_group", "client_id"}) or {}
        d = BridgeConfig(self.path, MqttConfig(), InfluxConfig(), SpoolConfig())
        stations = t.get("stations", list(d.stations))
        if not isinstance(stations, list) or not stations or not all(isinstance(x, str) and x for x in stations):
            self.problem("bridge.stations", 'must be a non-empty list of station names, or ["+"] for every station')
            stations = list(d.stations)
        for i, name in enumerate(stations):
            if name != "+" and not STATION_NAME.fullmatch(name):
                self.problem(f"bridge.stations[{i}]", f'{name!r} must be a station name ([a-z0-9_-]+) or "+"')
        mqtt = self.mqtt(data, "+") if "mqtt" in data else None
        influx = self.influx(data) if "influxdb" in data else None
        if mqtt is None:
            self.problem("mqtt", "missing: the broker the stations publish to")
        if influx is None:
            self.problem("influxdb", "missing: the database to write to")
        spool = self.spool(data)
        cfg = BridgeConfig(
            self.path,
            mqtt or MqttConfig(),
            influx or InfluxConfig(),
            spool or SpoolConfig(),
            tuple(stations),
            self.value(t, "topic_root", "bridge", "str", d.topic_root, _topic_prefix),
            self.value(t, "share_group", "bridge", "str", d.share_group, _share_group),
            self.value(t, "client_id", "bridge", "str", None),
        )
        if self.problems:
            raise ConfigError(self.problems)
        return cfg

    def influx(self, data: Mapping) -> InfluxConfig | None:
        keys = {"url", "api", "org", "bucket", "database", "token_file", "username", "password_file"}
        t = self.table(data, "influxdb", "influxdb", keys)
        if t is None:
            return None
        d = InfluxConfig()
        api = self.value(t, "api", "influxdb", "str", d.api, _one_of(("v1", "v2")))
        cfg = InfluxConfig(
            self.value(t, "url", "influxdb", "str", d.url, _http_url),
            api,
            *(self.value(t, k, "influxdb", "str", None) for k in ("org", "bucket", "database")),
            self.value(t, "token_file", "influxdb", "str", None, _file_path),
            self.value(t, "username", "influxdb", "str", None),
            self.value(t, "password_file", "influxdb", "str", None, _file_path),
        )
        if api == "v2" and not cfg.bucket:
            self.problem("influxdb.bucket", 'missing (required with api = "v2")')
        if api == "v1" and not cfg.database:
            self.problem("influxdb.database", 'missing (required with api = "v1")')
        return cfg

    def check_keys(self, t: Mapping, where: str, known: set[str] | frozenset[str]) -> None:
        for k in t:
            if k not in known:
                self.problem(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")


DAY_S, WEEK_S = 86_400.0, 7 * 86_400.0  # upper bounds of timing keys: beyond them a value is a typo

_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be positive, not {v!r}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must not be negative, not {v!r}"


def _bcm_pin(v: int) -> str | None:
    return None if 0 <= v <= 27 else f"must be a BCM GPIO number 0..27, not {v!r}"


def _port(v: int) -> str | None:
    return None if 0 < v < 65536 else f"must be a TCP port 1..65535, not {v!r}"


def _keepalive(v: int) -> str | None:
    # MQTT's field is 16 bits; 0 would switch off the broker's check, and with it the Last Will (`P/status`).
    return (
        None if 0 < v < 65536 else f"must be 1..65535 s (MQTT's range; 0 would keep a dead station online), not {v!r}"
    )


def _between(lo: float, hi: float, unit: str) -> Callable[[float], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be {lo:g}..{hi:g} {unit}, not {v!r}"


def _positive_at_most(hi: float) -> Callable[[float], str | None]:
    return lambda v: None if 0 < v <= hi else f"must be above 0 and at most {hi:g}, not {v!r}"


def _file_path(v: str) -> str | None:
    if not v:
        return "must not be empty (a file path)"
    return "must not contain a NUL character" if "\0" in v else None


def _host(v: str) -> str | None:
    if not v or v != v.strip() or "\0" in v or "/" in v:
        return f"must be a host name or address, not {v!r}"
    return None


def _topic_prefix(v: str) -> str | None:
    """An MQTT topic prefix: something to publish under, not a subscription filter."""
    if not v.strip("/"):
        return f"must not be empty, not {v!r}"
    if v.startswith("/"):
        return f"{v!r} must not start with '/' (an empty first topic level)"
    if v.startswith("$"):
        return f"{v!r} must not start with '$' (those topics are the broker's own)"
    bad = [c for c in ("#", "+", "\0") if c in v]
    if bad:
        return f"{v!r} must not contain {' or '.join(map(repr, bad))} (wildcards are for subscribing, not topics)"
    if len(v.encode("utf-8")) > MAX_TOPIC_PREFIX_BYTES:
        return f"must be at most {MAX_TOPIC_PREFIX_BYTES} bytes long"
    return None


def _share_group(v: str) -> str | None:
    bad = [c for c in ("/", "#", "+", "\0") if c in v]
    return f"{v!r} must not contain {' or '.join(map(repr, bad))}" if bad else None


def _http_url(v: str) -> str | None:
    """An http(s) base URL with a host."""
    try:
        parts = urllib.parse.urlsplit(v)
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError as exc:
        return f"{v!r} is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{v!r} must be an http:// or https:// URL"
    if not parts.hostname:
        return f"{v!r} has no host"
    if port == 0:
        return f"{v!r} has port 0"
    if parts.query or parts.fragment or any(c.isspace() or c == "\0" for c in v):
        return f"{v!r} must be a plain base URL (no spaces, ?query or #fragment)"
    return None


def _serial_port(v: str) -> str | None:
    """A device path, or a URL whose scheme pyserial has a handler for (loop://, socket://, rfc2217://, ...)."""
    if "\0" in v:
        return "must not contain a NUL character"
    if "://" not in v:
        return None
    scheme = v.split("://", 1)[0].lower()
    handlers = _serial_url_handlers()
    module = handlers.get(scheme)
    if module is None:
        known = ", ".join(f"{h}://" for h in sorted(handlers))
        return f"{v!r}: pyserial knows no {scheme}:// (a device path such as /dev/ttyUSB0, or one of {known})"
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{v!r}: pyserial's {scheme}:// handler cannot load ({exc})"
    return _host_port(v) if scheme in ("socket", "rfc2217") else None


def _serial_url_handlers() -> dict[str, str]:
    """pyserial's URL schemes and their handler modules, found as serial_for_url() finds them."""
    import serial

    found: dict[str, str] = {}
    for package in serial.protocol_handler_packages:
        try:
            path = importlib.import_module(package).__path__
        except (ImportError, AttributeError):
            continue
        for m in pkgutil.iter_modules(path):
            if m.name.startswith("protocol_"):
                found.setdefault(m.name.removeprefix("protocol_"), f"{package}.{m.name}")
    return found


def _host_port(v: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(v)
        port = parts.port
    except ValueError as exc:
        return f"{v!r} is not a valid URL ({exc})"
    if not parts.hostname or not port:
        return f"{v!r} must name a host and a port ({parts.scheme}://HOST:PORT)"
    return None


def _matches(pattern: re.Pattern, shape: str) -> Callable[[str], str | None]:
    return lambda v: None if pattern.fullmatch(v) else f"{v!r} must match {shape}"


def _one_of(choices: tuple) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"{v!r} is not one of {', '.join(map(repr, choices))}"


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"

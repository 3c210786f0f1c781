"""Home Assistant MQTT discovery: what the station announces, as data, with no I/O.

`StationDescription` says what a configured station has (its sensors and what each reports,
every volume its hatches can form, its hatches); `messages` turns it into the retained
`<discovery_prefix>/<component>/<station>/<object>/config` messages: a pressure or temperature
entity per sensor quantity, leak rate, reserve time, pressure, air mass and an alarm flag per
volume, a door per hatch, and a button that acknowledges every alarm. The node id is the
station's name alone, a whole topic level, so that the broker's ACL can confine a station to
`homeassistant/+/<its user name>/+/config` (mosquitto's `%u`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hullwatch import __version__
from hullwatch.core.alarm_kinds import LEAK_RATE, RESERVE_TIME
from hullwatch.core.topology import form_volumes
from hullwatch.topics import Topics

if TYPE_CHECKING:
    from hullwatch.config import Config

# Sensor samples share a topic per sensor, so each quantity's template renders empty for the
# other quantity's samples, which HA ignores; an unreadable sample (value null) renders "None":
# unknown. Temperatures go to HA in °C, the unit it converts to the user's own (it leaves kelvin alone).
_MEASUREMENT = {"state_class": "measurement"}
QUANTITY_ENTITIES: dict[str, tuple[str, dict[str, Any]]] = {  # quantity -> (value expression, config)
    "pressure": ("value_json.value",
                 {"device_class": "pressure", "unit_of_measurement": "Pa", "suggested_display_precision": 1,
                  **_MEASUREMENT}),
    "temperature": ("(value_json.value - 273.15) | round(3) if value_json.value is number else None",
                    {"device_class": "temperature", "unit_of_measurement": "°C", "suggested_display_precision": 2,
                     **_MEASUREMENT}),
}  # fmt: skip
# (component, object id suffix, name suffix, state on P/volume/<id>/alarm rather than P/volume/<id>, config)
VOLUME_ENTITIES: tuple[tuple[str, str, str, bool, dict[str, Any]], ...] = (
    ("sensor", LEAK_RATE.name, "leak rate", False,
     {"value_template": "{{ value_json.leak_kg_per_day }}", "unit_of_measurement": "kg/d",
      "suggested_display_precision": 3, **_MEASUREMENT}),
    ("sensor", RESERVE_TIME.name, "reserve time", False,
     {"value_template": "{{ value_json.reserve_time_s }}", "device_class": "duration", "unit_of_measurement": "s",
      "suggested_display_precision": 0, **_MEASUREMENT}),
    ("sensor", "pressure", "pressure", False,
     {"value_template": "{{ value_json.pressure_pa }}", "device_class": "pressure", "unit_of_measurement": "Pa",
      "suggested_display_precision": 1, **_MEASUREMENT}),
    ("sensor", "air_mass", "air mass", False,
     {"value_template": "{{ value_json.mass_kg }}", "device_class": "weight", "unit_of_measurement": "kg",
      "suggested_display_precision": 3, **_MEASUREMENT}),
    ("binary_sensor", "alarm", "alarm", True,
     {"payload_on": "ON", "payload_off": "OFF", "device_class": "problem"}),
)  # fmt: skip


@dataclass(frozen=True)
class StationDescription:
    """What Home Assistant discovery announces: the station's sensors, volumes and hatches."""

    station: str
    sensors: Mapping[str, tuple[str, ...]]  # sensor name -> quantities it reports ("pressure", "temperature")
    volumes: tuple[str, ...] = ()
    hatches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sensors = {str(k): tuple(str(getattr(q, "value", q)) for q in v) for k, v in dict(self.sensors).items()}
        object.__setattr__(self, "sensors", MappingProxyType(sensors))
        object.__setattr__(self, "volumes", tuple(self.volumes))
        object.__setattr__(self, "hatches", tuple(self.hatches))

    @classmethod
    def from_config(cls, config: Config, quantities: Mapping[str, Iterable[str]] | None = None) -> StationDescription:
        """Describe a configured station.

        `quantities`: what each sensor reports, as its driver tells (`Driver.quantities`: a
        Modbus or MCP3008 channel, a serial line format, a simulated transducer); a sensor
        missing from it (a simulated one with no [simulation] to tell) is announced with none.
        """
        quantities = quantities or {}
        module = config.module
        segments = [s.name for s in module.segments]
        between = {h.name: h.between for h in module.hatches}
        names = list(between)
        volumes: set[str] = set()
        if len(names) <= 12:  # every volume any combination of hatch states can form
            for n in range(len(names) + 1):
                for open_ in combinations(names, n):
                    volumes.update(form_volumes(segments, between, open_))
        else:  # too many to enumerate: the initial volumes and every lone segment
            volumes.update(config.volumes())
            volumes.update(segments)
        return cls(
            station=config.station,
            sensors={s.name: tuple(quantities.get(s.name, ())) for s in config.sensors},
            volumes=tuple(sorted(volumes)),
            hatches=tuple(h.name for h in module.hatches),
        )


def slug(s: str) -> str:
    """A Home Assistant node/object id: [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", s)


def config_filter(discovery_prefix: str, station: str) -> str:
    """The topic filter of every discovery message of a station."""
    return f"{discovery_prefix}/+/{slug(station)}/+/config"


def messages(d: StationDescription, topics: Topics, discovery_prefix: str, qos: int) -> list[tuple[str, dict]]:
    """The Home Assistant discovery (topic, config) pairs of a station description."""
    node = slug(d.station)
    device = slug(f"hullwatch_{d.station}")  # ids Home Assistant keeps in its registry
    common = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [device],
            "name": f"hullwatch {d.station}",
            "manufacturer": "hullwatch",
            "model": "pressure-integrity monitor",
            "sw_version": __version__,
        },
        "origin": {"name": "hullwatch", "sw_version": __version__},
    }
    out: list[tuple[str, dict]] = []

    def add(component: str, object_id: str, name: str, cfg: dict) -> None:
        oid = slug(object_id)
        topic = f"{discovery_prefix}/{component}/{node}/{oid}/config"
        out.append((topic, {"name": name, "unique_id": f"{device}_{oid}", **cfg, **common}))

    for sensor, quantities in sorted(d.sensors.items()):
        for q in quantities:
            if q in QUANTITY_ENTITIES:
                value, extra = QUANTITY_ENTITIES[q]
                template = "{% if value_json.quantity == '" + q + "' %}{{ " + value + " }}{% endif %}"
                cfg = {"state_topic": topics.sensor(sensor), "value_template": template, **extra}
                add("sensor", f"{sensor}_{q}", f"{sensor} {q}", cfg)
    for v in d.volumes:
        for component, suffix, label, on_alarm_topic, extra in VOLUME_ENTITIES:
            state = topics.volume_alarm(v) if on_alarm_topic else topics.volume(v)
            attrs = {"json_attributes_topic": state} if suffix == LEAK_RATE.name else {}
            add(component, f"{v}_{suffix}", f"{v} {label}", {"state_topic": state, **extra, **attrs})
    for h in d.hatches:
        cfg = {"state_topic": topics.hatch(h), "payload_on": "open", "payload_off": "closed", "device_class": "door"}
        add("binary_sensor", f"{h}_hatch", h, cfg)
    cfg = {"command_topic": topics.command("ack"), "payload_press": '{"all":true}', "qos": qos, "retain": False}
    add("button", "acknowledge_all", "Acknowledge all alarms", cfg)
    return out

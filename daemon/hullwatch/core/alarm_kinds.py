"""The alarm kinds, each described once: what config, monitor, displays, reports and discovery read.

A kind's `name` is the `alarm` of its transitions (ICD §4) and a level of its MQTT topics (§5);
`section` is its table under `[alarms]` (§2) and the field of `AlarmLimits` that holds its limits;
`thresholds` pairs each severity it raises with the limit key that sets it (a key left out or
set to false turns that condition off). A sensor fault has no thresholds: it raises the one
severity `[alarms.sensor] severity` names.

`check_text` and `report_text` are `str.format` templates over the kind's limits, the `[leak]`
settings, its `name` and `unit`; `render` fills them, each threshold shown as the caller likes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hullwatch.core.model import Severity

if TYPE_CHECKING:  # settings imports this module (for its default latching kind)
    from hullwatch.core.settings import AlarmLimits, LeakSettings

VOLUME = "volume"
SENSOR = "sensor"


@dataclass(frozen=True, slots=True)
class AlarmKind:
    """One kind of alarm condition."""

    name: str
    per: str  # VOLUME or SENSOR: what its source names
    unit: str  # of its value and threshold in records and payloads ("" : none)
    rises: bool  # active when the value is above its threshold (else below it)
    section: str  # [alarms.<section>]
    thresholds: tuple[tuple[Severity, str], ...]  # (severity, limit key), mildest first
    description: str
    check_text: str  # its line in `hullwatch check-config`
    report_text: str  # its setting in the report's table of limits

    @property
    def severities(self) -> tuple[Severity, ...]:
        """The severities it can raise, mildest first."""
        return tuple(sev for sev, _ in self.thresholds) if self.thresholds else tuple(Severity)

    def render(
        self, template: str, alarms: AlarmLimits, leak: LeakSettings, threshold: Callable[[float | None, str], str]
    ) -> str:
        """`template` filled from this kind's limits in `alarms` and the `[leak]` settings.

        Each threshold value is shown as `threshold(value, unit)` gives; other values as they are.
        """
        limits = getattr(alarms, self.section)
        values: dict[str, Any] = _fields(leak) | _fields(limits)
        for _, key in self.thresholds:
            values[key] = threshold(values[key], self.unit)
        return template.format(name=self.name, unit=self.unit, **values)


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


LEAK_RATE = AlarmKind(
    name="leak_rate",
    per=VOLUME,
    unit="kg/day",
    rises=True,
    section="leak_rate",
    thresholds=((Severity.CAUTION, "caution_kg_per_day"), (Severity.WARNING, "warning_kg_per_day")),
    description="the estimated air-mass loss rate of a volume, judged at k σ of confidence",
    check_text="{name}: caution {caution_kg_per_day} / warning {warning_kg_per_day} {unit} at {confidence_sigma:g}σ,"
    " hysteresis {hysteresis_kg_per_day:g}; estimate every {report_interval_s:g} s",
    report_text="caution {caution_kg_per_day}, warning {warning_kg_per_day}; active when r − {confidence_sigma:g}σ"
    " > limit for {confirmations} estimates, cleared when r + {confidence_sigma:g}σ < limit − "
    "{hysteresis_kg_per_day:g}",
)
RAPID_DEPRESS = AlarmKind(
    name="rapid_depress",
    per=VOLUME,
    unit="Pa/s",
    rises=True,
    section="rapid_depress",
    thresholds=((Severity.EMERGENCY, "emergency_pa_per_s"),),
    description="a volume's pressure falls faster than the limit",
    check_text="{name}: emergency above {emergency_pa_per_s} {unit}",
    report_text="emergency {emergency_pa_per_s}",
)
LOW_PRESSURE = AlarmKind(
    name="low_pressure",
    per=VOLUME,
    unit="Pa",
    rises=False,
    section="low_pressure",
    thresholds=((Severity.WARNING, "warning_pa"), (Severity.EMERGENCY, "emergency_pa")),
    description="a volume's pressure is below the limit",
    check_text="{name}: warning below {warning_pa} {unit}, emergency below {emergency_pa} {unit}",
    report_text="warning {warning_pa}, emergency {emergency_pa}",
)
RESERVE_TIME = AlarmKind(
    name="reserve_time",
    per=VOLUME,
    unit="s",
    rises=False,
    section="reserve_time",
    thresholds=((Severity.CAUTION, "caution_s"), (Severity.WARNING, "warning_s"), (Severity.EMERGENCY, "emergency_s")),
    description="the projected time until a volume's pressure falls to minimum_pa at the current loss rate",
    check_text="{name} to {minimum_pa:g} Pa: caution {caution_s} {unit}, warning {warning_s} {unit},"
    " emergency {emergency_s} {unit}",
    report_text="to {minimum_pa:g} Pa: caution {caution_s}, warning {warning_s}, emergency {emergency_s}",
)
SENSOR_FAULT = AlarmKind(
    name="sensor_fault",
    per=SENSOR,
    unit="",
    rises=True,
    section="sensor",
    thresholds=(),
    description="a sensor is stale, unreadable, or reads outside its physical range",
    check_text="{name} ({severity}): stale after {stale_after_s:g} s",
    report_text="{severity}, stale after {stale_after_s:g} s",
)

KINDS: tuple[AlarmKind, ...] = (LEAK_RATE, RAPID_DEPRESS, LOW_PRESSURE, RESERVE_TIME, SENSOR_FAULT)
BY_NAME: Mapping[str, AlarmKind] = MappingProxyType({k.name: k for k in KINDS})
NAMES: tuple[str, ...] = tuple(BY_NAME)
VOLUME_KINDS: tuple[AlarmKind, ...] = tuple(k for k in KINDS if k.per == VOLUME)


def unit_of(alarm: str) -> str:
    """The unit of an alarm's value and threshold ("" for a kind without one or one not in the table)."""
    kind = BY_NAME.get(alarm)
    return kind.unit if kind is not None else ""

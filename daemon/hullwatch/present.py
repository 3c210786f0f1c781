"""Events as one line of text each, for people: logs, terminals, the analyze summary."""

from __future__ import annotations

import time

from hullwatch.core.alarm_kinds import SENSOR_FAULT, unit_of
from hullwatch.core.model import AlarmTransition, Estimate, Event, HatchChange, LevelStep, Notice


def utc(t: float) -> str:
    """An epoch time as `YYYY-MM-DD HH:MM:SSZ`."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def duration(seconds: float | None) -> str:
    """A duration for people: 45 s, 12 min, 3.5 h, 12 days; '—' for none."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 4 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return "over a year"


def window(seconds: float) -> str:
    """A fitting window's length: 10 min, 1 h, 24 h."""
    return f"{seconds / 3600:g} h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds / 60:g} min"


def quantity(alarm: str, value: float | None) -> str:
    """An alarm's value with its unit."""
    if value is None:
        return "—"
    unit = unit_of(alarm)
    if unit == "s":
        return duration(value)
    return f"{value:.0f} {unit}" if unit == "Pa" else f"{value:.3g} {unit}".rstrip()


def describe(event: Event) -> str:
    """One line for an event."""
    when = utc(event.time)
    if isinstance(event, AlarmTransition):
        head = f"{when} {event.severity.label.upper():9} {event.alarm} {event.source} {event.state.value.upper()}"
        if event.alarm == SENSOR_FAULT.name or (event.threshold is None and event.reason):  # and the daemon's own
            return f"{head}: {event.reason}"
        detail = f"{quantity(event.alarm, event.value)} (threshold {quantity(event.alarm, event.threshold)})"
        return f"{head}: {detail}" + (f"; {event.reason}" if event.reason else "")
    if isinstance(event, HatchChange):
        return f"{when} hatch {event.hatch} {'opened' if event.open else 'closed'}; volumes: {', '.join(event.volumes)}"
    if isinstance(event, Estimate):
        return f"{when} {estimate_text(event)}"
    if isinstance(event, LevelStep):
        who = f"sensor {event.sensor}" if event.sensor else "the readings"
        return f"{when} {event.volume}: {who} stepped by {event.size_pa:+.1f} Pa; taken as an offset, not a leak"
    if isinstance(event, Notice):
        return f"{when} notice: {event.message}"
    raise TypeError(f"not an event: {event!r}")


def estimate_text(e: Estimate) -> str:
    """A volume's state in a few words."""
    if e.leak_kg_per_day is None:
        leak = "leak rate not known yet"
    else:
        leak = f"leak {e.leak_kg_per_day:.3f} ± {e.leak_kg_per_day_sigma:.2g} kg/day"
    return (
        f"{e.volume}: {leak}, {e.pressure_pa:.0f} Pa, {e.mass_kg:.2f} kg of air, reserve {duration(e.reserve_time_s)}"
    )

"""The alarm lifecycle after ISA-18.2 / IEC 62682: what each alarm still needs from the operator.

Theory of operation
-------------------
The monitor says whether an alarm *condition* holds (an AlarmTransition: active or cleared, per
key (alarm, source, severity)). Operators acknowledge, reset, shelve and start maintenance. This
module keeps, per key, one lifecycle state that combines the two, so that the annunciator knows
what to sound and MQTT knows what to show. It is pure: no I/O, no clock; every call carries its
time, and the same calls give the same states.

States (ISA-18.2's state diagram; its letters in brackets)::

    NORMAL          condition clear, nothing pending (A)          not published: "gone"
    UNACK           condition active, not acknowledged (B)        sounds
    ACKED           condition active, acknowledged (C)            LED steady, silent
    RTN_UNACK       condition cleared before anyone acknowledged   shown, silent; ack makes it NORMAL
                    (D)
    LATCHED_UNACK   a latching alarm whose condition cleared, not  sounds, like UNACK
                    acknowledged (latched)
    LATCHED_ACKED   the same, acknowledged, waiting for a reset    LED steady, silent
    SHELVED         hidden by an operator until a time (F)         silent; condition still tracked
    SUPPRESSED      hidden by maintenance of its source (G/H)      silent; needs no acknowledgement

The condition is kept beside the state (`condition_active`), since SHELVED holds either way.

Transitions are data: `TRANSITIONS[(state, event)]` is the next state, or a `Refused(reason)`
for an event that makes no sense in that state -- a no-op whose reason goes back in the
command's reply, never an exception. Latching alarms (ISA: they stay in alarm after the
condition clears until an operator resets them) use `LATCHING_TRANSITIONS`, the same table
with the cells that differ replaced: a clearing condition latches instead of returning to
normal, `reset` works from the latched states, and `shelve` is refused (a latch exists to be
seen; shelving would let it lapse unseen). Acknowledging never clears an alarm whose condition
still holds (UNACK -> ACKED); it only removes one whose condition has gone (RTN_UNACK -> NORMAL,
reset aside). Resetting an unacknowledged latched alarm also acknowledges it: the reset is
itself a deliberate act by a named operator.

Two rules then settle the state against the standing facts, each through the same table:

1. Re-evaluation (ISA-18.2: an alarm leaving shelving or suppression is re-evaluated): a NORMAL
   alarm whose condition holds takes `condition_active`, so it comes back as UNACK.
2. Maintenance: an UNACK or ACKED alarm whose source is under maintenance takes `suppress`.
   So an alarm that rises during maintenance is SUPPRESSED at once (NORMAL -> SUPPRESSED, one
   change), and one whose shelving ends during maintenance stays hidden.

SUPPRESSED means "active, hidden"; when its condition clears it is NORMAL (nothing to
acknowledge), and when maintenance ends while it still holds, rule 1 makes it UNACK, even if it
had been acknowledged before. Maintenance leaves RTN_UNACK and latched alarms alone: they record
something that happened and still want an operator. A new occurrence of a latched alarm replaces
the latch (LATCHED_* -> UNACK).

Policy, beyond the table:

* Emergencies cannot be shelved (ISA-18.2 leaves shelving to the site's philosophy; a klaxon-class
  alarm one can hide for hours is not one). Maintenance does suppress them: deliberate venting
  trips rapid_depress by design.
* Shelving is for a time, at most `max_shelve_s` (longer requests are clamped and the reply says
  so); at the end it expires by itself. A NORMAL alarm may be shelved too (a chattering one is
  often NORMAL at the moment the operator reaches for it); the key must be one the book has seen.
* What sounds (`Annunciation.worst_unacked`): UNACK and LATCHED_UNACK. RTN_UNACK is shown but
  silent, as ISA-18.2 has it (`Annunciation.returned_unacked`); SHELVED and SUPPRESSED neither.
* `acknowledged` (ICD §5) is True unless an acknowledgement is pending: False exactly in UNACK,
  RTN_UNACK and LATCHED_UNACK. Shelved and suppressed alarms need none.

Every call that carries a time first expires the shelving due by then, so no change waits for
the next tick(). Every change comes back as a LifecycleChange saying who (`by`: "condition",
"mqtt:<user>", "button", "shelve timer", ...) and why (`cause`: the event), with the record after
it; the record also keeps the latest `by`, `cause` and `changed_at`. A change whose new state is
NORMAL is `gone`: an empty retained MQTT message removes it. A change may also leave the state as
it was and only update the record (a shelved alarm's condition cleared, a re-shelve).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from hullwatch.core.model import AlarmState, AlarmTransition, Severity

AlarmKey = tuple[str, str, Severity]

SENSOR_FAULT = "sensor_fault"  # = monitor.SENSOR_FAULT (not imported: monitor may import this module)
CONDITION = "condition"  # `by` for changes the monitor's transitions cause
SHELVE_TIMER = "shelve timer"  # `by` for shelving that expired


class LifecycleState(StrEnum):
    """Where an alarm is in its lifecycle; the value is the MQTT `"lifecycle"` name."""

    NORMAL = "normal"
    UNACK = "unack"
    ACKED = "acked"
    RTN_UNACK = "rtn_unack"
    LATCHED_UNACK = "latched_unack"
    LATCHED_ACKED = "latched_acked"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"


class LifecycleEvent(StrEnum):
    """What can happen to an alarm."""

    CONDITION_ACTIVE = "condition_active"
    CONDITION_CLEARED = "condition_cleared"
    ACKNOWLEDGE = "acknowledge"
    RESET = "reset"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    SHELVE_EXPIRED = "shelve_expired"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"


@dataclass(frozen=True, slots=True)
class Refused:
    """A table cell for an event that does nothing in that state, and why."""

    reason: str


# -- the transition tables ------------------------------------------------------------------------------------

NORMAL, UNACK, ACKED, RTN_UNACK = (
    LifecycleState.NORMAL,
    LifecycleState.UNACK,
    LifecycleState.ACKED,
    LifecycleState.RTN_UNACK,
)
LATCHED_UNACK, LATCHED_ACKED, SHELVED, SUPPRESSED = (
    LifecycleState.LATCHED_UNACK,
    LifecycleState.LATCHED_ACKED,
    LifecycleState.SHELVED,
    LifecycleState.SUPPRESSED,
)
_E = LifecycleEvent

_ALREADY_ACTIVE = Refused("condition already active")
_ALREADY_CLEARED = Refused("condition already cleared")
_NOT_LATCHING = Refused("not a latching alarm")
_NOT_SHELVED = Refused("not shelved")
_NOT_SUPPRESSED = Refused("not suppressed")
_NOT_ACTIVE = Refused("condition not active; nothing to suppress")

Target = LifecycleState | Refused

# Non-latching alarms. Read a row as: in this state, on this event, go there (or refuse, and stay).
_PLAIN_ROWS: Final[dict[LifecycleState, dict[LifecycleEvent, Target]]] = {
    NORMAL: {
        _E.CONDITION_ACTIVE: UNACK,
        _E.CONDITION_CLEARED: _ALREADY_CLEARED,
        _E.ACKNOWLEDGE: Refused("normal; nothing to acknowledge"),
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: SHELVED,
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: _NOT_ACTIVE,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    UNACK: {
        _E.CONDITION_ACTIVE: _ALREADY_ACTIVE,
        _E.CONDITION_CLEARED: RTN_UNACK,
        _E.ACKNOWLEDGE: ACKED,
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: SHELVED,
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: SUPPRESSED,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    ACKED: {
        _E.CONDITION_ACTIVE: _ALREADY_ACTIVE,
        _E.CONDITION_CLEARED: NORMAL,
        _E.ACKNOWLEDGE: Refused("already acknowledged"),
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: SHELVED,
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: SUPPRESSED,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    RTN_UNACK: {
        _E.CONDITION_ACTIVE: UNACK,
        _E.CONDITION_CLEARED: _ALREADY_CLEARED,
        _E.ACKNOWLEDGE: NORMAL,
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: SHELVED,
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: _NOT_ACTIVE,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    # Only latching alarms reach the two latched states; the rows are here so that the table is whole.
    LATCHED_UNACK: {
        _E.CONDITION_ACTIVE: UNACK,
        _E.CONDITION_CLEARED: _ALREADY_CLEARED,
        _E.ACKNOWLEDGE: LATCHED_ACKED,
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: Refused("latched; reset it instead"),
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: _NOT_ACTIVE,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    LATCHED_ACKED: {
        _E.CONDITION_ACTIVE: UNACK,
        _E.CONDITION_CLEARED: _ALREADY_CLEARED,
        _E.ACKNOWLEDGE: Refused("already acknowledged; latched until reset"),
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: Refused("latched; reset it instead"),
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: _NOT_ACTIVE,
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    SHELVED: {
        _E.CONDITION_ACTIVE: SHELVED,  # tracked in condition_active; re-evaluated when the shelving ends
        _E.CONDITION_CLEARED: SHELVED,
        _E.ACKNOWLEDGE: Refused("shelved; nothing to acknowledge"),
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: SHELVED,  # a new expiry time
        _E.UNSHELVE: NORMAL,  # then rule 1: UNACK if the condition holds
        _E.SHELVE_EXPIRED: NORMAL,
        _E.SUPPRESS: Refused("shelved; already hidden"),
        _E.UNSUPPRESS: _NOT_SUPPRESSED,
    },
    SUPPRESSED: {
        _E.CONDITION_ACTIVE: _ALREADY_ACTIVE,
        _E.CONDITION_CLEARED: NORMAL,
        _E.ACKNOWLEDGE: Refused("suppressed by maintenance; nothing to acknowledge"),
        _E.RESET: _NOT_LATCHING,
        _E.SHELVE: Refused("suppressed by maintenance; already hidden"),
        _E.UNSHELVE: _NOT_SHELVED,
        _E.SHELVE_EXPIRED: _NOT_SHELVED,
        _E.SUPPRESS: Refused("already suppressed"),
        _E.UNSUPPRESS: NORMAL,  # then rule 1: UNACK, since a suppressed alarm's condition holds
    },
}

_CANNOT_SHELVE_LATCHING = Refused("a latching alarm cannot be shelved")
_STILL_ACTIVE = Refused("condition still active; reset after it clears")
_NOT_LATCHED = Refused("not latched")

# Latching alarms: the plain table with these cells replaced.
_LATCHING_CELLS: Final[dict[tuple[LifecycleState, LifecycleEvent], Target]] = {
    (UNACK, _E.CONDITION_CLEARED): LATCHED_UNACK,
    (ACKED, _E.CONDITION_CLEARED): LATCHED_ACKED,
    (NORMAL, _E.RESET): _NOT_LATCHED,
    (UNACK, _E.RESET): _STILL_ACTIVE,
    (ACKED, _E.RESET): _STILL_ACTIVE,
    (RTN_UNACK, _E.RESET): _NOT_LATCHED,
    (LATCHED_UNACK, _E.RESET): NORMAL,  # a reset acknowledges too
    (LATCHED_ACKED, _E.RESET): NORMAL,
    (SHELVED, _E.RESET): _NOT_LATCHED,
    (SUPPRESSED, _E.RESET): _NOT_LATCHED,
    **{(state, _E.SHELVE): _CANNOT_SHELVE_LATCHING for state in LifecycleState},
}

TRANSITIONS: Final[Mapping[tuple[LifecycleState, LifecycleEvent], Target]] = {
    (state, event): target for state, row in _PLAIN_ROWS.items() for event, target in row.items()
}
LATCHING_TRANSITIONS: Final[Mapping[tuple[LifecycleState, LifecycleEvent], Target]] = {
    **TRANSITIONS,
    **_LATCHING_CELLS,
}

_NEEDS_ACK: Final = frozenset({UNACK, RTN_UNACK, LATCHED_UNACK})
_SOUNDING: Final = frozenset({UNACK, LATCHED_UNACK})
_STANDING_ACKED: Final = frozenset({ACKED, LATCHED_ACKED})
_LATCHED: Final = frozenset({LATCHED_UNACK, LATCHED_ACKED})


def next_state(state: LifecycleState, event: LifecycleEvent, latching: bool = False) -> Target:
    """The table's answer for one (state, event): the next state, or why the event is refused."""
    table = LATCHING_TRANSITIONS if latching else TRANSITIONS
    return table.get((state, event), Refused(f"no transition for {event} in {state}"))


def key_name(key: AlarmKey) -> str:
    """An alarm key as operators write it: "leak_rate/prk/warning"."""
    alarm, source, severity = key
    label = severity.label if isinstance(severity, Severity) else str(severity)
    return f"{alarm}/{source}/{label}"


# -- what comes out ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm as it stands: its lifecycle state and the latest transition of its condition."""

    alarm: str
    source: str
    severity: Severity
    state: LifecycleState
    condition_active: bool
    acknowledged: bool  # False while an acknowledgement is pending (UNACK, RTN_UNACK, LATCHED_UNACK)
    latched: bool
    shelved_until: float | None
    suppressed: bool
    last: AlarmTransition
    by: str  # who made the latest lifecycle change
    cause: str  # the event of the latest lifecycle change
    changed_at: float  # the time of the latest lifecycle change

    @property
    def key(self) -> AlarmKey:
        """(alarm, source, severity)."""
        return (self.alarm, self.source, self.severity)

    def to_dict(self) -> dict:
        """The ICD §4 alarm object of `last`, plus the lifecycle fields (the MQTT retained payload of ICD §5)."""
        d = self.last.to_dict()
        d["state"] = AlarmState.ACTIVE.value if self.condition_active else AlarmState.CLEARED.value
        d["acknowledged"] = self.acknowledged
        d["lifecycle"] = self.state.value
        d["shelved_until"] = self.shelved_until
        d["suppressed"] = self.suppressed
        d["latched"] = self.latched
        d["by"] = self.by
        d["cause"] = self.cause
        d["changed_at"] = self.changed_at
        return d


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    """An alarm's record changed: when, from which state to which, because of what, by whom."""

    time: float
    key: AlarmKey
    old: LifecycleState
    new: LifecycleState
    cause: LifecycleEvent
    by: str
    record: AlarmRecord

    @property
    def gone(self) -> bool:
        """The alarm returned to NORMAL: publish an empty retained message to remove it."""
        return self.new is NORMAL

    def to_dict(self) -> dict:
        """An audit-log object of type "lifecycle" (a JSON Lines extension of ICD §4)."""
        alarm, source, severity = self.key
        return {
            "type": "lifecycle",
            "time": self.time,
            "alarm": alarm,
            "source": source,
            "severity": self.record.severity.label,
            "old": self.old.value,
            "new": self.new.value,
            "cause": self.cause.value,
            "by": self.by,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """The reply to an operator's command: whether it did what was asked, a sentence, and the changes."""

    ok: bool
    message: str
    changes: list[LifecycleChange]


@dataclass(frozen=True, slots=True)
class Annunciation:
    """What the buzzer and LEDs must show."""

    worst_unacked: Severity | None  # worst severity in UNACK or LATCHED_UNACK (sounding); None: nothing
    sensor_fault_unacked: bool  # a sensor_fault alarm in UNACK or LATCHED_UNACK
    any_active: bool  # an alarm stands acknowledged: ACKED, or LATCHED_ACKED awaiting its reset
    maintenance: bool  # some source (or all) is under maintenance
    returned_unacked: bool = False  # an alarm in RTN_UNACK: show it, silently (ISA-18.2)


# -- the book ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """The book's mutable state for one key."""

    key: AlarmKey
    latching: bool
    last: AlarmTransition
    state: LifecycleState = NORMAL
    condition_active: bool = False
    shelved_until: float | None = None
    by: str = CONDITION
    cause: str = ""
    changed_at: float = 0.0


def _plural(n: int, word: str = "alarm") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class AlarmBook:
    """Every alarm's lifecycle: feed it the monitor's transitions and the operators' commands."""

    def __init__(self, latching: Collection[str] = (), max_shelve_s: float = 8 * 3600.0) -> None:
        """`latching` names alarm kinds that latch; shelving lasts at most `max_shelve_s`."""
        if not (isinstance(max_shelve_s, int | float) and math.isfinite(max_shelve_s) and max_shelve_s > 0):
            raise ValueError(f"max_shelve_s must be a positive number of seconds, not {max_shelve_s!r}")
        self.latching: frozenset[str] = frozenset((latching,) if isinstance(latching, str) else latching)
        self.max_shelve_s = float(max_shelve_s)
        self._entries: dict[AlarmKey, _Entry] = {}
        self._maintenance_all = False
        self._maintenance_sources: set[str] = set()

    # -- inputs ------------------------------------------------------------------------------------------------

    def on_transition(self, tr: AlarmTransition) -> list[LifecycleChange]:
        """Take one of the monitor's transitions; return the changes it caused."""
        changes = self._expire(tr.time)
        entry = self._entries.get(tr.key)
        if entry is None:
            entry = self._entries[tr.key] = _Entry(tr.key, tr.alarm in self.latching, tr, changed_at=tr.time)
        before = self._record(entry)
        entry.last = tr
        entry.condition_active = tr.state is AlarmState.ACTIVE
        event = _E.CONDITION_ACTIVE if entry.condition_active else _E.CONDITION_CLEARED
        # A refusal here is a repeat (already active / already cleared): the facts are updated all the same.
        self._step(entry, tr.time, event, CONDITION)
        change = self._change(tr.time, before, entry, event, CONDITION)
        if change is not None:
            changes.append(change)
        return changes

    def acknowledge(self, time: float, by: str, key: AlarmKey | None = None) -> Outcome:
        """Acknowledge one alarm, or (key None) every alarm waiting for it."""
        return self._command(time, by, key, _E.ACKNOWLEDGE, "acknowledged", "nothing to acknowledge")

    def reset(self, time: float, by: str, key: AlarmKey | None = None) -> Outcome:
        """Reset one latched alarm whose condition has cleared, or (key None) every such alarm."""
        return self._command(time, by, key, _E.RESET, "reset", "nothing to reset")

    def shelve(self, time: float, by: str, key: AlarmKey, duration_s: float) -> Outcome:
        """Hide one alarm for duration_s (at most max_shelve_s); emergencies and latching alarms cannot be."""
        changes = self._expire(time)
        entry = self._entries.get(key)
        if entry is None:
            return Outcome(False, f"no such alarm {key_name(key)}", changes)
        name = key_name(key)
        if entry.key[2] >= Severity.EMERGENCY:
            return Outcome(False, f"{name}: emergency alarms cannot be shelved", changes)
        if (
            isinstance(duration_s, bool)
            or not isinstance(duration_s, int | float)
            or not math.isfinite(duration_s)
            or duration_s <= 0
        ):
            return Outcome(False, f"{name}: shelve duration must be a positive number of seconds", changes)
        granted = min(float(duration_s), self.max_shelve_s)
        result = self._apply(entry, time, _E.SHELVE, by, shelved_until=time + granted)
        if isinstance(result, Refused):
            return Outcome(False, f"{name}: {result.reason}", changes)
        changes.extend(result)
        clamp = f" (clamped to the maximum of {self.max_shelve_s:g} s)" if granted < duration_s else ""
        return Outcome(True, f"shelved {name} for {granted:g} s, until {time + granted:g}{clamp}", changes)

    def unshelve(self, time: float, by: str, key: AlarmKey) -> Outcome:
        """Return a shelved alarm to annunciation (UNACK if its condition still holds)."""
        changes = self._expire(time)
        entry = self._entries.get(key)
        if entry is None:
            return Outcome(False, f"no such alarm {key_name(key)}", changes)
        result = self._apply(entry, time, _E.UNSHELVE, by)
        if isinstance(result, Refused):
            return Outcome(False, f"{key_name(key)}: {result.reason}", changes)
        changes.extend(result)
        return Outcome(True, f"unshelved {key_name(key)}, now {entry.state.value}", changes)

    def set_maintenance(self, time: float, by: str, on: bool, sources: Collection[str] | None = None) -> Outcome:
        """Start or end maintenance for some sources (None: all); it suppresses their active alarms."""
        changes = self._expire(time)
        if isinstance(sources, str):
            sources = (sources,)
        if sources is not None and not sources:
            return Outcome(False, "no sources given", changes)
        scope = "all sources" if sources is None else ", ".join(sorted(sources))
        if on:
            if sources is None:
                self._maintenance_all = True
            else:
                self._maintenance_sources.update(sources)
        elif sources is None:
            if not (self._maintenance_all or self._maintenance_sources):
                return Outcome(False, "maintenance is not on", changes)
            self._maintenance_all = False
            self._maintenance_sources.clear()
        else:
            ending = self._maintenance_sources.intersection(sources)
            if not ending:
                note = " (it is on for all sources: end that instead)" if self._maintenance_all else ""
                return Outcome(False, f"maintenance is not on for {scope}{note}", changes)
            self._maintenance_sources.difference_update(ending)
            scope = ", ".join(sorted(ending))
        done = []
        for entry in self._sorted_entries():
            if self.under_maintenance(entry.key[1]):
                result = self._apply(entry, time, _E.SUPPRESS, by)
            elif entry.state is SUPPRESSED:
                result = self._apply(entry, time, _E.UNSUPPRESS, by)
            else:
                continue
            if not isinstance(result, Refused):
                done.extend(result)
        changes.extend(done)
        if on:
            message = f"maintenance on for {scope}: {_plural(len(done))} suppressed"
        else:
            message = f"maintenance off for {scope}: {_plural(len(done))} no longer suppressed"
            if self._maintenance_all:
                message += " (still on for all sources)"
        return Outcome(True, message, changes)

    def tick(self, time: float) -> list[LifecycleChange]:
        """Let time pass: expire the shelving due by `time`."""
        return self._expire(time)

    # -- outputs -----------------------------------------------------------------------------------------------

    def records(self) -> list[AlarmRecord]:
        """Every alarm that is not NORMAL (the MQTT retained state), ordered by key."""
        return [self._record(e) for e in self._sorted_entries() if e.state is not NORMAL]

    def record(self, key: AlarmKey) -> AlarmRecord | None:
        """One alarm's record; None if it is NORMAL or the book has never seen it."""
        entry = self._entries.get(key)
        return None if entry is None or entry.state is NORMAL else self._record(entry)

    def annunciation(self) -> Annunciation:
        """What the buzzer and LEDs must show now."""
        sounding = [e for e in self._entries.values() if e.state in _SOUNDING]
        return Annunciation(
            worst_unacked=Severity(max(e.key[2] for e in sounding)) if sounding else None,
            sensor_fault_unacked=any(e.key[0] == SENSOR_FAULT for e in sounding),
            any_active=any(e.state in _STANDING_ACKED for e in self._entries.values()),
            maintenance=self._maintenance_all or bool(self._maintenance_sources),
            returned_unacked=any(e.state is RTN_UNACK for e in self._entries.values()),
        )

    def under_maintenance(self, source: str) -> bool:
        """Whether alarms of this source are suppressed now."""
        return self._maintenance_all or source in self._maintenance_sources

    # -- internals ---------------------------------------------------------------------------------------------

    def _sorted_entries(self) -> Iterator[_Entry]:
        """Entries in key order, so bulk commands and their changes are reproducible."""
        for key in sorted(self._entries, key=lambda k: (k[0], k[1], int(k[2]))):
            yield self._entries[key]

    def _command(
        self, time: float, by: str, key: AlarmKey | None, event: LifecycleEvent, verb: str, nothing: str
    ) -> Outcome:
        """Apply an acknowledge or reset to one key, or to every key that accepts it."""
        changes = self._expire(time)
        if key is not None:
            entry = self._entries.get(key)
            if entry is None:
                return Outcome(False, f"no such alarm {key_name(key)}", changes)
            result = self._apply(entry, time, event, by)
            if isinstance(result, Refused):
                return Outcome(False, f"{key_name(key)}: {result.reason}", changes)
            changes.extend(result)
            return Outcome(True, f"{verb} {key_name(key)}", changes)
        count = 0
        for entry in self._sorted_entries():
            result = self._apply(entry, time, event, by)
            if not isinstance(result, Refused):
                count += 1
                changes.extend(result)
        return Outcome(True, f"{verb} {_plural(count)}" if count else nothing, changes)

    def _expire(self, time: float) -> list[LifecycleChange]:
        """Apply shelve_expired to every shelving due by `time`."""
        changes: list[LifecycleChange] = []
        for entry in self._sorted_entries():
            if entry.state is SHELVED and entry.shelved_until is not None and entry.shelved_until <= time:
                result = self._apply(entry, time, _E.SHELVE_EXPIRED, SHELVE_TIMER)
                if not isinstance(result, Refused):
                    changes.extend(result)
        return changes

    def _apply(
        self, entry: _Entry, time: float, event: LifecycleEvent, by: str, shelved_until: float | None = None
    ) -> list[LifecycleChange] | Refused:
        """One operator or timer event on one entry: the change (if any), or the refusal."""
        before = self._record(entry)
        refusal = self._step(entry, time, event, by)
        if refusal is not None:
            return refusal
        if shelved_until is not None and entry.state is SHELVED:
            entry.shelved_until = shelved_until
        change = self._change(time, before, entry, event, by)
        return [] if change is None else [change]

    def _step(self, entry: _Entry, time: float, event: LifecycleEvent, by: str) -> Refused | None:
        """Move one entry through the table, then settle it (rules 1 and 2 of the theory of operation)."""
        target = next_state(entry.state, event, entry.latching)
        if isinstance(target, Refused):
            return target
        self._enter(entry, target)
        entry.by, entry.cause, entry.changed_at = by, event.value, time
        # Rule 1: re-evaluation. A NORMAL alarm whose condition holds is annunciated again.
        if entry.state is NORMAL and entry.condition_active:
            self._enter(entry, next_state(NORMAL, _E.CONDITION_ACTIVE, entry.latching))
        # Rule 2: maintenance. An annunciating active alarm of a source under maintenance is suppressed.
        if entry.state in (UNACK, ACKED) and self.under_maintenance(entry.key[1]):
            self._enter(entry, next_state(entry.state, _E.SUPPRESS, entry.latching))
        return None

    @staticmethod
    def _enter(entry: _Entry, target: Target) -> None:
        """Set the state; leaving SHELVED forgets the expiry."""
        if isinstance(target, Refused):  # the settling rules only take cells the table allows
            return
        if target is not SHELVED:
            entry.shelved_until = None
        entry.state = target

    def _change(
        self, time: float, before: AlarmRecord, entry: _Entry, event: LifecycleEvent, by: str
    ) -> LifecycleChange | None:
        """The LifecycleChange from `before` to the entry now, if there is anything to tell."""
        after = self._record(entry)
        if after.state is before.state and (after == before or after.state is NORMAL):
            return None
        return LifecycleChange(time, entry.key, before.state, after.state, event, by, after)

    @staticmethod
    def _record(entry: _Entry) -> AlarmRecord:
        """The frozen record of an entry."""
        alarm, source, severity = entry.key
        return AlarmRecord(
            alarm=alarm,
            source=source,
            severity=severity,
            state=entry.state,
            condition_active=entry.condition_active,
            acknowledged=entry.state not in _NEEDS_ACK,
            latched=entry.state in _LATCHED,
            shelved_until=entry.shelved_until if entry.state is SHELVED else None,
            suppressed=entry.state is SUPPRESSED,
            last=entry.last,
            by=entry.by,
            cause=entry.cause,
            changed_at=entry.changed_at,
        )

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
2. Maintenance: an UNACK or ACKED alarm that maintenance covers (`suppresses`) takes `suppress`.
   So an alarm that rises during maintenance is SUPPRESSED at once (NORMAL -> SUPPRESSED, one
   change), and one whose shelving ends during maintenance stays hidden.

SUPPRESSED means "active, hidden"; when its condition clears it is NORMAL (nothing to
acknowledge), and when maintenance ends while it still holds, rule 1 makes it UNACK, even if it
had been acknowledged before. Maintenance leaves RTN_UNACK and latched alarms alone: they record
something that happened and still want an operator. A new occurrence of a latched alarm replaces
the latch (LATCHED_* -> UNACK).

Policy, beyond the table:

* Emergencies cannot be shelved (ISA-18.2 leaves shelving to the site's philosophy; a klaxon-class
  alarm one can hide for hours is not one).
* Maintenance names its sources (volumes, sensors), each one the book knows (`known_source`, or
  one it has seen): it suppresses every alarm of those sources, emergencies included (deliberate
  venting trips rapid_depress by design), and nothing of any other source. Maintenance of "all"
  sources must be asked for as such and never suppresses an emergency: a real depressurisation
  sounds whatever the station's mode. Maintenance lasts at most `max_maintenance_s` (longer or
  open-ended requests get the maximum, and the reply says until when); at the end it expires by
  itself and what it hid is re-evaluated.
* Shelving is for a time, at most `max_shelve_s` (longer requests are clamped and the reply says
  so); at the end it expires by itself. A NORMAL alarm may be shelved too (a chattering one is
  often NORMAL at the moment the operator reaches for it); the key must be one the book has seen.
* What sounds (`Annunciation.worst_unacked`): UNACK and LATCHED_UNACK. RTN_UNACK is shown but
  silent, as ISA-18.2 has it (`Annunciation.returned_unacked`); SHELVED and SUPPRESSED neither.
* `acknowledged` (ICD §5) is True unless an acknowledgement is pending: False exactly in UNACK,
  RTN_UNACK and LATCHED_UNACK. Shelved and suppressed alarms need none.

Every call that carries a time first expires the shelving and maintenance due by then, so no
change waits for the next tick(). Every change comes back as a LifecycleChange saying who (`by`:
"condition", "mqtt:<user>", "button", "shelve timer", ...) and why (`cause`: the event), with the
record after it; the record also keeps the latest `by`, `cause` and `changed_at`. A change whose
new state is NORMAL is `gone`: an empty retained MQTT message removes it. A change may also leave
the state as it was and only update the record (a shelved alarm's condition cleared, a re-shelve).

Persistence. The book is kept across restarts as rows of plain JSON values, one per alarm that is
not NORMAL and one for maintenance (`rows()`); `take_changed_rows()` gives the rows changed since
it was last called (None: delete the row), so an adapter can write each change as it happens.
`restore()` starts a book from such rows: a row that does not make sense is skipped and reported,
and the rest is settled against the present configuration (a kind no longer latching is no longer
latched, what may not be shelved is unshelved, maintenance suppresses what it covers) and the
present time (what expired meanwhile expires now, by its timer). The monitor that restarts with
the book knows nothing of the old conditions: an alarm restored with its condition active keeps
its state (an acknowledgement survives) if the monitor raises it again within its kind's
`confirm_within` time; otherwise its condition is taken as cleared then (by "restart"), which
latches a latching alarm and ends an acknowledged one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from hullwatch.core import alarm_kinds
from hullwatch.core.model import AlarmState, AlarmTransition, Severity

AlarmKey = tuple[str, str, Severity]

SENSOR_FAULT = alarm_kinds.SENSOR_FAULT.name
CONDITION = "condition"  # `by` for changes the monitor's transitions cause
SHELVE_TIMER = "shelve timer"  # `by` for shelving that expired
MAINTENANCE_TIMER = "maintenance timer"  # `by` for maintenance that expired
RESTART = "restart"  # `by` for what a restore settles, and for restored conditions not confirmed in time
ALL_SOURCES = "*"  # the maintenance window of every source (no source has this name)
ROW_FORMAT = 1  # the `v` of persisted rows
MAINTENANCE_ROW = "maintenance"
ALARM_ROW_PREFIX = "alarm/"  # + key_name(key)
NOT_CONFIRMED = "condition not seen again since the restart"
DEFAULT_MAX_MAINTENANCE_S = 8 * 3600.0  # maintenance lasts at most this unless configured otherwise


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
    error: str = ""  # a machine-readable reason when not ok and the request itself was wrong ("unknown_source")


@dataclass(frozen=True, slots=True)
class Maintenance:
    """A maintenance window: until when, who started it and when."""

    until: float
    by: str
    since: float


@dataclass(frozen=True, slots=True)
class Restored:
    """What `AlarmBook.restore` made of the rows: the rows it skipped and why, and what it settled."""

    problems: list[str]
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
    confirm_by: float | None = None  # restored with its condition active: the monitor must raise it by then


def _plural(n: int, word: str = "alarm") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _positive_seconds(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


class AlarmBook:
    """Every alarm's lifecycle: feed it the monitor's transitions and the operators' commands."""

    def __init__(
        self,
        latching: Collection[str] = (),
        max_shelve_s: float = 8 * 3600.0,
        max_maintenance_s: float = DEFAULT_MAX_MAINTENANCE_S,
        known_source: Callable[[str], bool] | None = None,
    ) -> None:
        """`latching` names alarm kinds that latch; shelving lasts at most `max_shelve_s`, maintenance at most
        `max_maintenance_s`; `known_source` says which names maintenance may take (None: any)."""
        for name, value in (("max_shelve_s", max_shelve_s), ("max_maintenance_s", max_maintenance_s)):
            if not _positive_seconds(value):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self.latching: frozenset[str] = frozenset((latching,) if isinstance(latching, str) else latching)
        self.max_shelve_s = float(max_shelve_s)
        self.max_maintenance_s = float(max_maintenance_s)
        self.known_source = known_source
        self._entries: dict[AlarmKey, _Entry] = {}
        self._maintenance: dict[str, Maintenance] = {}  # source (or ALL_SOURCES) -> its window
        self._dirty: set[str] = set()  # rows changed since take_changed_rows()

    # -- inputs ------------------------------------------------------------------------------------------------

    def on_transition(self, tr: AlarmTransition) -> list[LifecycleChange]:
        """Take one of the monitor's transitions; return the changes it caused."""
        entry = self._entries.get(tr.key)
        if entry is not None:
            entry.confirm_by = None  # the monitor speaks of it: a restored condition is settled by this
        changes = self._expire(tr.time)
        entry = self._entries.get(tr.key)
        if entry is None:
            entry = self._entries[tr.key] = _Entry(tr.key, tr.alarm in self.latching, tr, changed_at=tr.time)
        change = self._condition(entry, tr, CONDITION)
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
        if not _positive_seconds(duration_s):
            return Outcome(False, f"{name}: shelve duration must be a positive number of seconds", changes)
        granted = min(float(duration_s), self.max_shelve_s)
        result = self._apply(entry, time, _E.SHELVE, by, shelved_until=time + granted)
        if isinstance(result, Refused):
            return Outcome(False, f"{name}: {result.reason}", changes)
        changes.extend(result)
        clamp = f" (clamped to the maximum of {self.max_shelve_s:g} s)" if granted < duration_s else ""
        return Outcome(True, f"shelved {name} for {granted:g} s, until {_at(time + granted)}{clamp}", changes)

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

    def set_maintenance(
        self,
        time: float,
        by: str,
        on: bool,
        sources: Collection[str] | None = None,
        *,
        everything: bool = False,
        duration_s: float | None = None,
    ) -> Outcome:
        """Start or end maintenance of named sources, or of everything (`everything`; never an emergency).

        Starting needs the sources (each known) or `everything`; it lasts duration_s, at most (and by
        default) max_maintenance_s. Ending with neither ends all maintenance.
        """
        changes = self._expire(time)
        if isinstance(sources, str):
            sources = (sources,)
        if sources is not None and everything:
            return Outcome(False, 'name the sources or ask for "all", not both', changes, "bad_request")
        if sources is not None and not sources:
            return Outcome(False, "no sources given", changes, "bad_request")
        if sources is not None and ALL_SOURCES in sources:
            return Outcome(False, f"unknown source(s): {ALL_SOURCES}", changes, "unknown_source")
        if on:
            if sources is None and not everything:
                return Outcome(
                    False,
                    'maintenance needs the sources it is for ("sources": [...]), or "all": true '
                    "(which never hides an emergency)",
                    changes,
                    "bad_request",
                )
            return self._start_maintenance(time, by, sources or (ALL_SOURCES,), duration_s, changes)
        if sources is None:
            if not self._maintenance:
                return Outcome(False, "maintenance is not on", changes)
            ending = set(self._maintenance)
        else:
            ending = self._maintenance.keys() & set(sources)
            if not ending:
                note = " (it is on for all sources: end that instead)" if ALL_SOURCES in self._maintenance else ""
                return Outcome(False, f"maintenance is not on for {', '.join(sorted(sources))}{note}", changes)
        for source in ending:
            del self._maintenance[source]
        self._dirty.add(MAINTENANCE_ROW)
        done = self._resettle(time, by)
        changes.extend(done)
        scope = "all sources" if sources is None else ", ".join(sorted(ending))
        message = f"maintenance off for {scope}: {_plural(len(done))} no longer suppressed"
        if ALL_SOURCES in self._maintenance:
            message += " (still on for all sources)"
        return Outcome(True, message, changes)

    def tick(self, time: float) -> list[LifecycleChange]:
        """Let time pass: expire the shelving and maintenance due by `time`, and restored conditions not confirmed."""
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
            maintenance=bool(self._maintenance),
            returned_unacked=any(e.state is RTN_UNACK for e in self._entries.values()),
        )

    def maintenance(self) -> dict[str, Maintenance]:
        """The maintenance windows now, by source (ALL_SOURCES: everything but emergencies)."""
        return dict(self._maintenance)

    def under_maintenance(self, source: str) -> bool:
        """Whether some maintenance window covers this source (for "all": emergencies aside)."""
        return ALL_SOURCES in self._maintenance or source in self._maintenance

    def suppresses(self, key: AlarmKey) -> bool:
        """Whether maintenance hides this alarm now: its source's own window, or "all" if not an emergency."""
        _alarm, source, severity = key
        return source in self._maintenance or (ALL_SOURCES in self._maintenance and severity < Severity.EMERGENCY)

    # -- persistence -------------------------------------------------------------------------------------------

    def rows(self) -> dict[str, dict]:
        """The whole book as rows of JSON values: one per alarm that is not NORMAL, and maintenance if any."""
        out = {
            ALARM_ROW_PREFIX + key_name(e.key): _entry_row(e) for e in self._sorted_entries() if e.state is not NORMAL
        }
        if self._maintenance:
            out[MAINTENANCE_ROW] = {
                "v": ROW_FORMAT,
                "windows": {
                    s: {"until": m.until, "by": m.by, "since": m.since} for s, m in sorted(self._maintenance.items())
                },
            }
        return out

    def take_changed_rows(self) -> dict[str, dict | None]:
        """The rows changed since the previous call: the row now, or None where it is to be deleted."""
        if not self._dirty:
            return {}
        now = self.rows()
        changed = {name: now.get(name) for name in sorted(self._dirty)}
        self._dirty.clear()
        return changed

    def restore(self, time: float, rows: Mapping[str, object], confirm_within: Callable[[str], float]) -> Restored:
        """Start again from persisted rows (whatever the book held is dropped), settled at `time`.

        A row that does not make sense is skipped, reported in `problems` and deleted at the next
        take_changed_rows(). An alarm restored with its condition active must be raised again by the
        monitor within confirm_within(alarm kind) seconds, or its condition is taken as cleared.
        """
        self._entries.clear()
        self._maintenance.clear()
        self._dirty.clear()
        problems: list[str] = []
        for name in sorted(rows, key=str):
            row = rows[name]
            try:
                if name == MAINTENANCE_ROW:
                    self._maintenance = self._maintenance_from_row(row, time)
                elif isinstance(name, str) and name.startswith(ALARM_ROW_PREFIX):
                    entry = self._entry_from_row(row)
                    if ALARM_ROW_PREFIX + key_name(entry.key) != name:
                        raise ValueError(f"holds {key_name(entry.key)}")
                    if entry.condition_active:
                        entry.confirm_by = time + max(0.0, float(confirm_within(entry.key[0])))
                    self._entries[entry.key] = entry
                else:
                    raise ValueError("not a row of the alarm book")
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                problems.append(f"{name}: {exc}")
                self._dirty.add(str(name))
        changes = self._settle_restored(time)
        changes += self._expire(time)
        return Restored(problems, changes)

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

    def _start_maintenance(
        self,
        time: float,
        by: str,
        sources: Collection[str],
        duration_s: float | None,
        changes: list[LifecycleChange],
    ) -> Outcome:
        """Open (or renew) a maintenance window for the sources (ALL_SOURCES: everything but emergencies)."""
        seen = {k[1] for k in self._entries}
        unknown = sorted(s for s in set(sources) if s != ALL_SOURCES and s not in seen and not self._known(s))
        if unknown:
            return Outcome(False, f"unknown source(s): {', '.join(unknown)}", changes, "unknown_source")
        if duration_s is not None and not _positive_seconds(duration_s):
            return Outcome(False, "maintenance duration must be a positive number of seconds", changes, "bad_request")
        granted = self.max_maintenance_s if duration_s is None else min(float(duration_s), self.max_maintenance_s)
        window = Maintenance(time + granted, by, time)
        for source in sources:
            self._maintenance[source] = window
        self._dirty.add(MAINTENANCE_ROW)
        done = self._resettle(time, by)
        changes.extend(done)
        scope = "all sources (emergencies still sound)" if ALL_SOURCES in sources else ", ".join(sorted(sources))
        clamp = ""
        if duration_s is not None and granted < duration_s:
            clamp = f" (clamped to the maximum of {self.max_maintenance_s:g} s)"
        return Outcome(
            True,
            f"maintenance on for {scope} for {granted:g} s, until {_at(time + granted)}{clamp}: "
            f"{_plural(len(done))} suppressed",
            changes,
        )

    def _known(self, source: str) -> bool:
        return self.known_source is None or bool(self.known_source(source))

    def _resettle(self, time: float, by: str) -> list[LifecycleChange]:
        """After maintenance changed: suppress what it covers now, and release what it no longer covers."""
        done: list[LifecycleChange] = []
        for entry in self._sorted_entries():
            if self.suppresses(entry.key):
                result = self._apply(entry, time, _E.SUPPRESS, by)
            elif entry.state is SUPPRESSED:
                result = self._apply(entry, time, _E.UNSUPPRESS, by)
            else:
                continue
            if not isinstance(result, Refused):
                done.extend(result)
        return done

    def _expire(self, time: float) -> list[LifecycleChange]:
        """Everything due by `time`: maintenance ending, shelving ending, restored conditions not confirmed."""
        changes: list[LifecycleChange] = []
        ended = [s for s, m in self._maintenance.items() if m.until <= time]
        if ended:
            for source in ended:
                del self._maintenance[source]
            self._dirty.add(MAINTENANCE_ROW)
            changes.extend(self._resettle(time, MAINTENANCE_TIMER))
        for entry in self._sorted_entries():
            if entry.state is SHELVED and entry.shelved_until is not None and entry.shelved_until <= time:
                result = self._apply(entry, time, _E.SHELVE_EXPIRED, SHELVE_TIMER)
                if not isinstance(result, Refused):
                    changes.extend(result)
            if entry.confirm_by is not None and entry.confirm_by <= time:
                entry.confirm_by = None
                if entry.condition_active:
                    last = entry.last
                    cleared = AlarmTransition(time, *entry.key, AlarmState.CLEARED, None, last.threshold, NOT_CONFIRMED)
                    change = self._condition(entry, cleared, RESTART)
                    if change is not None:
                        changes.append(change)
        return changes

    def _condition(self, entry: _Entry, tr: AlarmTransition, by: str) -> LifecycleChange | None:
        """A transition of the entry's condition (from the monitor, or a restored one not confirmed)."""
        before = self._record(entry)
        entry.last = tr
        entry.condition_active = tr.state is AlarmState.ACTIVE
        event = _E.CONDITION_ACTIVE if entry.condition_active else _E.CONDITION_CLEARED
        # A refusal here is a repeat (already active / already cleared): the facts are updated all the same.
        self._step(entry, tr.time, event, by)
        return self._change(tr.time, before, entry, event, by)

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
        # Rule 2: maintenance. An annunciating active alarm that maintenance covers is suppressed.
        if entry.state in (UNACK, ACKED) and self.suppresses(entry.key):
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
        self._dirty.add(ALARM_ROW_PREFIX + key_name(entry.key))
        return LifecycleChange(time, entry.key, before.state, after.state, event, by, after)

    def _settle_restored(self, time: float) -> list[LifecycleChange]:
        """Bring restored entries in line with this book's settings and maintenance (by "restart")."""
        changes: list[LifecycleChange] = []
        for entry in self._sorted_entries():
            result: list[LifecycleChange] | Refused = []
            if entry.state in _LATCHED and not entry.latching:
                # no longer a latching kind: the condition's clearing, as a plain alarm takes it
                before = self._record(entry)
                entry.state = UNACK if entry.state is LATCHED_UNACK else ACKED
                self._step(entry, time, _E.CONDITION_CLEARED, RESTART)
                change = self._change(time, before, entry, _E.CONDITION_CLEARED, RESTART)
                result = [] if change is None else [change]
            elif entry.state is SHELVED and (entry.latching or entry.key[2] >= Severity.EMERGENCY):
                result = self._apply(entry, time, _E.UNSHELVE, RESTART)
            elif entry.state is SHELVED and entry.shelved_until is not None:
                if entry.shelved_until > time + self.max_shelve_s:
                    entry.shelved_until = time + self.max_shelve_s
                    self._dirty.add(ALARM_ROW_PREFIX + key_name(entry.key))
            elif entry.state is SUPPRESSED and not self.suppresses(entry.key):
                result = self._apply(entry, time, _E.UNSUPPRESS, RESTART)
            elif entry.state in (UNACK, ACKED) and self.suppresses(entry.key):
                result = self._apply(entry, time, _E.SUPPRESS, RESTART)
            if not isinstance(result, Refused):
                changes.extend(result)
        return changes

    def _entry_from_row(self, row: object) -> _Entry:
        """An entry from a persisted row; ValueError (or TypeError, KeyError) if the row does not make sense."""
        if not isinstance(row, Mapping) or row.get("v") != ROW_FORMAT:
            raise ValueError(f"not an alarm row of format {ROW_FORMAT}")
        alarm, source = _text(row, "alarm"), _text(row, "source")
        severity = Severity[_text(row, "severity").upper()]
        state = LifecycleState(row["state"])
        active = row["condition_active"]
        if not isinstance(active, bool):
            raise ValueError("condition_active is not true or false")
        if (
            state is NORMAL
            or (state in (UNACK, ACKED, SUPPRESSED) and not active)
            or (state in (RTN_UNACK, *_LATCHED) and active)
        ):
            raise ValueError(f"state {state.value} with the condition {'active' if active else 'cleared'}")
        shelved_until = row.get("shelved_until")
        if state is SHELVED:
            shelved_until = _time(shelved_until, "shelved_until")
        elif shelved_until is not None:
            raise ValueError(f"shelved_until in state {state.value}")
        last = row["last"]
        if not isinstance(last, Mapping):
            raise ValueError("last is not an object")
        value, threshold = last.get("value"), last.get("threshold")
        for name, number in (("value", value), ("threshold", threshold)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)):
                raise ValueError(f"last.{name} is not a number")
        reason = last.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("last.reason is not text")
        transition = AlarmTransition(
            _time(last.get("time"), "last.time"),
            alarm,
            source,
            severity,
            AlarmState(last["state"]),
            value,
            threshold,
            reason,
        )
        return _Entry(
            key=(alarm, source, severity),
            latching=alarm in self.latching,
            last=transition,
            state=state,
            condition_active=active,
            shelved_until=shelved_until,
            by=_text(row, "by"),
            cause=_text(row, "cause", empty=True),
            changed_at=_time(row.get("changed_at"), "changed_at"),
        )

    def _maintenance_from_row(self, row: object, time: float) -> dict[str, Maintenance]:
        """Maintenance windows from a persisted row, none longer than max_maintenance_s from `time`."""
        if not isinstance(row, Mapping) or row.get("v") != ROW_FORMAT or not isinstance(row.get("windows"), Mapping):
            raise ValueError(f"not a maintenance row of format {ROW_FORMAT}")
        windows = {}
        for source, w in row["windows"].items():
            if not isinstance(source, str) or not source or not isinstance(w, Mapping):
                raise ValueError(f"bad window {source!r}")
            until = _time(w.get("until"), "until")
            if until > time + self.max_maintenance_s:  # the maximum was lowered meanwhile
                until = time + self.max_maintenance_s
                self._dirty.add(MAINTENANCE_ROW)
            windows[source] = Maintenance(until, _text(w, "by"), _time(w.get("since"), "since"))
        return windows

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


def _entry_row(entry: _Entry) -> dict:
    """The persisted row of an entry (JSON values)."""
    alarm, source, severity = entry.key
    last = entry.last
    return {
        "v": ROW_FORMAT,
        "alarm": alarm,
        "source": source,
        "severity": severity.label,
        "state": entry.state.value,
        "condition_active": entry.condition_active,
        "shelved_until": entry.shelved_until if entry.state is SHELVED else None,
        "by": entry.by,
        "cause": entry.cause,
        "changed_at": entry.changed_at,
        "last": {
            "time": last.time,
            "state": last.state.value,
            "value": last.value,
            "threshold": last.threshold,
            "reason": last.reason,
        },
    }


def _at(t: float) -> str:
    """An epoch time as people read it in a reply: ISO 8601, UTC, to the second."""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f}"


def _text(row: Mapping, name: str, empty: bool = False) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not (value or empty):
        raise ValueError(f"{name} is not {'text' if empty else 'a non-empty text'}")
    return value


def _time(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a time")
    return float(value)

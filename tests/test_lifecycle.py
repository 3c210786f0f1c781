"""The alarm lifecycle (ISA-18.2): the transition table cell by cell, operator scenarios, and random sequences."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hullwatch.core.lifecycle import (
    LATCHING_TRANSITIONS,
    TRANSITIONS,
    AlarmBook,
    Annunciation,
    LifecycleEvent,
    LifecycleState,
    Refused,
    next_state,
)
from hullwatch.core.model import AlarmState, AlarmTransition, Severity

T0 = 1_780_000_000.0

# -- the table, written out independently of the module ------------------------------------------------------------

N, U, A, R = "normal", "unack", "acked", "rtn_unack"
LU, LA, SH, SU = "latched_unack", "latched_acked", "shelved", "suppressed"
CA, CC, ACK, RST = "condition_active", "condition_cleared", "acknowledge", "reset"
SHV, UNSH, EXP, SUP, UNSUP = "shelve", "unshelve", "shelve_expired", "suppress", "unsuppress"
X = None  # refused: a no-op that says why

# (state, event, next state for a plain alarm, next state for a latching one)
EXPECTED = [
    (N, CA, U, U),
    (N, CC, X, X),
    (N, ACK, X, X),
    (N, RST, X, X),
    (N, SHV, SH, X),
    (N, UNSH, X, X),
    (N, EXP, X, X),
    (N, SUP, X, X),
    (N, UNSUP, X, X),
    (U, CA, X, X),
    (U, CC, R, LU),
    (U, ACK, A, A),
    (U, RST, X, X),
    (U, SHV, SH, X),
    (U, UNSH, X, X),
    (U, EXP, X, X),
    (U, SUP, SU, SU),
    (U, UNSUP, X, X),
    (A, CA, X, X),
    (A, CC, N, LA),
    (A, ACK, X, X),
    (A, RST, X, X),
    (A, SHV, SH, X),
    (A, UNSH, X, X),
    (A, EXP, X, X),
    (A, SUP, SU, SU),
    (A, UNSUP, X, X),
    (R, CA, U, U),
    (R, CC, X, X),
    (R, ACK, N, N),
    (R, RST, X, X),
    (R, SHV, SH, X),
    (R, UNSH, X, X),
    (R, EXP, X, X),
    (R, SUP, X, X),
    (R, UNSUP, X, X),
    (LU, CA, U, U),
    (LU, CC, X, X),
    (LU, ACK, LA, LA),
    (LU, RST, X, N),
    (LU, SHV, X, X),
    (LU, UNSH, X, X),
    (LU, EXP, X, X),
    (LU, SUP, X, X),
    (LU, UNSUP, X, X),
    (LA, CA, U, U),
    (LA, CC, X, X),
    (LA, ACK, X, X),
    (LA, RST, X, N),
    (LA, SHV, X, X),
    (LA, UNSH, X, X),
    (LA, EXP, X, X),
    (LA, SUP, X, X),
    (LA, UNSUP, X, X),
    (SH, CA, SH, SH),
    (SH, CC, SH, SH),
    (SH, ACK, X, X),
    (SH, RST, X, X),
    (SH, SHV, SH, X),
    (SH, UNSH, N, N),
    (SH, EXP, N, N),
    (SH, SUP, X, X),
    (SH, UNSUP, X, X),
    (SU, CA, X, X),
    (SU, CC, N, N),
    (SU, ACK, X, X),
    (SU, RST, X, X),
    (SU, SHV, X, X),
    (SU, UNSH, X, X),
    (SU, EXP, X, X),
    (SU, SUP, X, X),
    (SU, UNSUP, N, N),
]

CELLS = [
    pytest.param(state, event, plain if not latching else latched, latching, id=f"{state}-{event}-{kind}")
    for state, event, plain, latched in EXPECTED
    for latching, kind in ((False, "plain"), (True, "latching"))
]


def test_expected_table_covers_every_state_and_event():
    assert {(s, e) for s, e, _, _ in EXPECTED} == {(s.value, e.value) for s in LifecycleState for e in LifecycleEvent}
    assert len(EXPECTED) == len(LifecycleState) * len(LifecycleEvent)


def test_module_tables_are_complete_and_refusals_say_why():
    for table in (TRANSITIONS, LATCHING_TRANSITIONS):
        assert set(table) == {(s, e) for s in LifecycleState for e in LifecycleEvent}
        for target in table.values():
            assert isinstance(target, LifecycleState) or (isinstance(target, Refused) and target.reason)


@pytest.mark.parametrize(("state", "event", "expected", "latching"), CELLS)
def test_transition_cell(state, event, expected, latching):
    got = next_state(LifecycleState(state), LifecycleEvent(event), latching)
    if expected is None:
        assert isinstance(got, Refused), got
        assert got.reason
    else:
        assert got == LifecycleState(expected)


# -- helpers -------------------------------------------------------------------------------------------------------


def tr(t, active, alarm="leak_rate", source="prk", severity=Severity.WARNING, value=1.0, threshold=0.9):
    state = AlarmState.ACTIVE if active else AlarmState.CLEARED
    return AlarmTransition(T0 + t, alarm, source, severity, state, value, threshold, "")


def key(alarm="leak_rate", source="prk", severity=Severity.WARNING):
    return (alarm, source, severity)


def state_of(book, k):
    rec = book.record(k)
    return LifecycleState.NORMAL if rec is None else rec.state


# -- scenarios -----------------------------------------------------------------------------------------------------


def test_active_ack_clear_is_gone():
    book = AlarmBook()
    [c] = book.on_transition(tr(0, True))
    assert (c.old, c.new, c.cause, c.by) == (N, U, CA, "condition")
    assert not c.record.acknowledged and c.record.condition_active and not c.gone

    out = book.acknowledge(T0 + 5, "mqtt:alice", key())
    assert out.ok and out.message == "acknowledged leak_rate/prk/warning"
    [c] = out.changes
    assert (c.old, c.new, c.by, c.cause) == (U, A, "mqtt:alice", ACK)
    assert c.record.acknowledged and c.record.by == "mqtt:alice"

    [c] = book.on_transition(tr(60, False, value=0.8))
    assert (c.old, c.new) == (A, N) and c.gone
    assert c.record.to_dict()["state"] == "cleared"
    assert book.records() == [] and book.record(key()) is None


def test_active_clear_rtn_unack_then_ack_is_gone():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    [c] = book.on_transition(tr(30, False))
    assert (c.old, c.new) == (U, R)
    rec = book.record(key())
    assert rec.state == R and not rec.condition_active and not rec.acknowledged
    d = rec.to_dict()
    assert (d["state"], d["acknowledged"], d["lifecycle"]) == ("cleared", False, "rtn_unack")

    out = book.acknowledge(T0 + 40, "button")
    assert out.ok and out.message == "acknowledged 1 alarm"
    [c] = out.changes
    assert (c.old, c.new, c.by) == (R, N, "button") and c.gone
    assert book.records() == []


def test_ack_while_active_stays_acked_and_acknowledged():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    book.acknowledge(T0 + 1, "operator", key())
    rec = book.record(key())
    assert rec.state == A and rec.acknowledged and rec.condition_active
    d = rec.to_dict()
    assert (d["state"], d["acknowledged"], d["lifecycle"]) == ("active", True, "acked")
    again = book.acknowledge(T0 + 2, "operator", key())
    assert not again.ok and "already acknowledged" in again.message and again.changes == []
    assert book.record(key()).state == A


def test_latching_rapid_depress_stays_after_clear_until_reset():
    book = AlarmBook(latching=("rapid_depress",))
    k = key("rapid_depress", "prk", Severity.EMERGENCY)
    book.on_transition(tr(0, True, *k))
    [c] = book.on_transition(tr(3, False, *k))
    assert (c.old, c.new) == (U, LU) and not c.gone
    rec = book.record(k)
    assert rec.latched and not rec.acknowledged and not rec.condition_active
    assert book.annunciation().worst_unacked is Severity.EMERGENCY  # a latch sounds until acknowledged

    assert book.acknowledge(T0 + 10, "button").ok
    assert book.record(k).state == LA and book.record(k).latched and book.record(k).acknowledged
    a = book.annunciation()
    assert a.worst_unacked is None and a.any_active

    out = book.reset(T0 + 20, "mqtt:bob", k)
    assert out.ok and out.message == "reset rapid_depress/prk/emergency"
    [c] = out.changes
    assert (c.old, c.new, c.cause, c.by) == (LA, N, RST, "mqtt:bob") and c.gone
    assert book.records() == []


def test_reset_of_unacknowledged_latch_acknowledges_it_too():
    book = AlarmBook(latching={"rapid_depress"})
    k = key("rapid_depress", "prk", Severity.EMERGENCY)
    book.on_transition(tr(0, True, *k))
    book.on_transition(tr(3, False, *k))
    out = book.reset(T0 + 5, "operator")
    assert out.ok and out.message == "reset 1 alarm"
    assert [(c.old, c.new) for c in out.changes] == [(LU, N)]


def test_reset_refused_for_non_latching_or_still_active():
    book = AlarmBook(latching=("rapid_depress",))
    book.on_transition(tr(0, True))
    book.on_transition(tr(1, False))
    out = book.reset(T0 + 2, "operator", key())
    assert not out.ok and out.changes == []
    assert "leak_rate/prk/warning" in out.message and "not a latching alarm" in out.message
    assert state_of(book, key()) == R

    k = key("rapid_depress", "prk", Severity.EMERGENCY)
    book.on_transition(tr(3, True, *k))
    out = book.reset(T0 + 4, "operator", k)
    assert not out.ok and "still active" in out.message and "rapid_depress/prk/emergency" in out.message
    assert state_of(book, k) == U

    nothing = book.reset(T0 + 5, "operator")
    assert nothing.ok and nothing.message == "nothing to reset" and nothing.changes == []


def test_shelve_is_clamped_and_expires_by_tick():
    book = AlarmBook(max_shelve_s=3600.0)
    k = key(severity=Severity.CAUTION)
    book.on_transition(tr(0, True, severity=Severity.CAUTION))
    out = book.shelve(T0 + 10, "mqtt:carol", k, 7200.0)
    assert out.ok and "clamped" in out.message
    [c] = out.changes
    assert (c.old, c.new, c.cause, c.by) == (U, SH, SHV, "mqtt:carol")
    rec = book.record(k)
    assert rec.shelved_until == T0 + 10 + 3600.0 and rec.to_dict()["shelved_until"] == T0 + 3610.0
    assert book.annunciation().worst_unacked is None

    # the condition is still tracked while shelved
    [c] = book.on_transition(tr(100, False, severity=Severity.CAUTION))
    assert (c.old, c.new) == (SH, SH) and not c.record.condition_active
    [c] = book.on_transition(tr(200, True, severity=Severity.CAUTION))
    assert (c.old, c.new) == (SH, SH) and c.record.condition_active

    assert book.tick(T0 + 3609.0) == []
    [c] = book.tick(T0 + 3610.0)
    assert (c.old, c.new, c.cause, c.by) == (SH, U, EXP, "shelve timer")
    assert c.record.shelved_until is None and not c.record.acknowledged
    assert book.annunciation().worst_unacked is Severity.CAUTION


def test_shelving_that_ends_with_the_condition_clear_is_gone_and_any_call_expires_it():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    assert book.shelve(T0 + 1, "operator", key(), 60.0).ok
    book.on_transition(tr(2, False))
    # no tick: the next call carrying a later time expires the shelving first
    out = book.acknowledge(T0 + 100, "operator")
    assert out.message == "nothing to acknowledge"
    [c] = out.changes
    assert (c.old, c.new, c.cause) == (SH, N, EXP) and c.gone


def test_unshelve_returns_active_alarm_as_unack():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    book.acknowledge(T0 + 1, "operator")
    book.shelve(T0 + 2, "operator", key(), 600.0)
    out = book.unshelve(T0 + 3, "operator", key())
    assert out.ok and [(c.old, c.new) for c in out.changes] == [(SH, U)]
    refused = book.unshelve(T0 + 4, "operator", key())
    assert not refused.ok and "not shelved" in refused.message


def test_shelving_an_emergency_or_a_latching_alarm_is_refused():
    book = AlarmBook(latching=("sensor_fault",))
    k = key("low_pressure", "prk", Severity.EMERGENCY)
    book.on_transition(tr(0, True, *k))
    out = book.shelve(T0 + 1, "operator", k, 60.0)
    assert not out.ok and "emergency" in out.message and out.changes == []
    assert state_of(book, k) == U

    f = key("sensor_fault", "p_prk", Severity.CAUTION)
    book.on_transition(tr(0, True, *f))
    out = book.shelve(T0 + 1, "operator", f, 60.0)
    assert not out.ok and "latching" in out.message
    assert state_of(book, f) == U


@pytest.mark.parametrize("duration", [0.0, -5.0, math.nan, math.inf, "60"])
def test_shelve_needs_a_positive_duration(duration):
    book = AlarmBook()
    book.on_transition(tr(0, True))
    out = book.shelve(T0 + 1, "operator", key(), duration)
    assert not out.ok and "duration" in out.message
    assert state_of(book, key()) == U


def test_maintenance_suppresses_new_and_existing_alarms_and_lifting_it_reannunciates():
    book = AlarmBook()
    warn, caution = key(), key(severity=Severity.CAUTION)
    other = key("low_pressure", "zvezda", Severity.WARNING)
    book.on_transition(tr(0, True))  # prk warning, will be acknowledged
    book.on_transition(tr(0, True, severity=Severity.CAUTION))
    book.on_transition(tr(0, True, *other))
    book.acknowledge(T0 + 1, "operator", warn)

    out = book.set_maintenance(T0 + 10, "mqtt:dave", True, ["prk"])
    assert out.ok and out.message.startswith("maintenance on for prk for 28800 s, until 2026-")
    assert out.message.endswith(": 2 alarms suppressed")
    assert {(c.key, c.old, c.new) for c in out.changes} == {(warn, A, SU), (caution, U, SU)}
    rec = book.record(caution)
    assert rec.suppressed and rec.acknowledged and rec.to_dict()["suppressed"] is True
    a = book.annunciation()
    assert a.maintenance and a.worst_unacked is Severity.WARNING  # only zvezda's alarm still sounds
    assert book.acknowledge(T0 + 11, "operator").message == "acknowledged 1 alarm"  # zvezda's, not the suppressed
    assert book.annunciation().worst_unacked is None

    # a new alarm during maintenance is suppressed at once: one change, never annunciated
    rd = key("rapid_depress", "prk", Severity.EMERGENCY)
    [c] = book.on_transition(tr(20, True, *rd))
    assert (c.old, c.new, c.cause) == (N, SU, CA)
    assert book.annunciation().worst_unacked is None
    [c] = book.on_transition(tr(30, False, *rd))  # cleared while suppressed: nothing to acknowledge
    assert (c.old, c.new) == (SU, N) and c.gone

    out = book.set_maintenance(T0 + 40, "mqtt:dave", False, ["prk"])
    assert out.ok and "2 alarms no longer suppressed" in out.message
    assert {(c.key, c.old, c.new) for c in out.changes} == {(warn, SU, U), (caution, SU, U)}
    a = book.annunciation()
    assert not a.maintenance and a.worst_unacked is Severity.WARNING
    assert not book.record(warn).acknowledged  # acknowledged before maintenance, but it must be seen again


def test_maintenance_for_everything_leaves_returned_and_latched_alarms_alone():
    book = AlarmBook(latching=("rapid_depress",))
    rd = key("rapid_depress", "prk", Severity.EMERGENCY)
    book.on_transition(tr(0, True, *rd))
    book.on_transition(tr(1, False, *rd))  # latched
    book.on_transition(tr(0, True))
    book.on_transition(tr(1, False))  # returned, unacknowledged
    out = book.set_maintenance(T0 + 5, "operator", True, everything=True)
    assert out.ok and out.message.startswith("maintenance on for all sources (emergencies still sound)")
    assert out.message.endswith(": 0 alarms suppressed")
    assert state_of(book, rd) == LU and state_of(book, key()) == R
    assert book.under_maintenance("anything")
    off = book.set_maintenance(T0 + 6, "operator", False)
    assert off.ok and not book.annunciation().maintenance
    again = book.set_maintenance(T0 + 7, "operator", False)
    assert not again.ok and "not on" in again.message


def test_shelving_ending_during_maintenance_stays_hidden():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    book.shelve(T0 + 1, "operator", key(), 100.0)
    out = book.set_maintenance(T0 + 2, "operator", True, ["prk"])
    assert out.message.endswith(": 0 alarms suppressed") and state_of(book, key()) == SH
    [c] = book.tick(T0 + 101)
    assert (c.old, c.new, c.cause) == (SH, SU, EXP)
    assert book.annunciation().worst_unacked is None


def test_maintenance_needs_sources_or_all_and_all_never_hides_an_emergency():
    book = AlarmBook(latching=("rapid_depress",))
    rd = key("rapid_depress", "prk", Severity.EMERGENCY)
    low = key("low_pressure", "prk", Severity.WARNING)
    book.on_transition(tr(0, True, *low))
    out = book.set_maintenance(T0 + 1, "mqtt:dave", True)
    assert not out.ok and out.error == "bad_request" and '"all": true' in out.message
    assert not book.annunciation().maintenance and state_of(book, low) == U
    for bad in ([], ["*"]):
        assert not book.set_maintenance(T0 + 1, "mqtt:dave", True, bad).ok
    assert not book.set_maintenance(T0 + 1, "mqtt:dave", True, ["prk"], everything=True).ok

    out = book.set_maintenance(T0 + 2, "mqtt:dave", True, everything=True)
    assert out.ok and "emergencies still sound" in out.message and state_of(book, low) == SU
    [c] = book.on_transition(tr(3, True, *rd))  # a real depressurisation during maintenance of "all"
    assert (c.old, c.new) == (N, U)
    assert book.annunciation().worst_unacked is Severity.EMERGENCY
    assert not book.suppresses(rd) and book.suppresses(low)


def test_maintenance_of_one_source_leaves_the_others_sounding():
    book = AlarmBook()
    prk, zvezda = key("rapid_depress", "prk", Severity.EMERGENCY), key("rapid_depress", "zvezda", Severity.EMERGENCY)
    assert book.set_maintenance(T0, "operator", True, ["prk"]).ok
    [c] = book.on_transition(tr(1, True, *prk))  # deliberate venting of prk: hidden
    assert c.new == SU
    [c] = book.on_transition(tr(2, True, *zvezda))  # zvezda is not in maintenance: it sounds
    assert c.new == U and book.annunciation().worst_unacked is Severity.EMERGENCY


def test_maintenance_expires_by_itself_at_most_max_maintenance_s():
    book = AlarmBook(max_maintenance_s=600.0)
    book.on_transition(tr(0, True))
    out = book.set_maintenance(T0 + 10, "mqtt:dave", True, ["prk"], duration_s=3600)
    assert out.ok and "for 600 s" in out.message and "clamped" in out.message
    assert book.maintenance()["prk"].until == T0 + 610 and book.maintenance()["prk"].by == "mqtt:dave"
    assert book.tick(T0 + 609) == [] and state_of(book, key()) == SU
    [c] = book.tick(T0 + 610)
    assert (c.old, c.new, c.by) == (SU, U, "maintenance timer")
    assert book.maintenance() == {} and not book.annunciation().maintenance
    out = book.set_maintenance(T0 + 700, "mqtt:dave", True, ["prk"])  # no duration: the maximum
    assert out.ok and book.maintenance()["prk"].until == T0 + 1300
    assert not book.set_maintenance(T0 + 700, "x", True, ["prk"], duration_s=-1).ok


def test_maintenance_of_an_unknown_source_is_refused():
    known = {"prk", "zvezda", "p_prk"}
    book = AlarmBook(known_source=known.__contains__)
    out = book.set_maintenance(T0, "mqtt:dave", True, ["prk", "prk-zvedza", "nope"])
    assert not out.ok and out.error == "unknown_source" and "nope, prk-zvedza" in out.message
    assert book.maintenance() == {}
    book.on_transition(tr(0, True, "spool_fault", "spool", Severity.ADVISORY))
    assert book.set_maintenance(T0 + 1, "mqtt:dave", True, ["spool", "p_prk"]).ok  # one it has seen, one known


# -- persistence -----------------------------------------------------------------------------------------------------


def restart(book, t, confirm_within=30.0, **settings):
    """A new book from the old one's rows, as written to and read back from a file."""
    fresh = AlarmBook(**settings)
    restored = fresh.restore(T0 + t, json.loads(json.dumps(book.rows())), lambda _alarm: confirm_within)
    return fresh, restored


def test_rows_round_trip_every_state_and_maintenance():
    book = AlarmBook(latching=("rapid_depress",))
    acked, unacked, returned = key(), key(severity=Severity.CAUTION), key("leak_rate", "zvezda")
    latched, shelved = key("rapid_depress", "prk", Severity.EMERGENCY), key("reserve_time", "zvezda")
    suppressed = key("low_pressure", "node", Severity.WARNING)
    for k in (acked, unacked, returned, latched, shelved, suppressed):
        book.on_transition(tr(0, True, *k))
    book.acknowledge(T0 + 1, "mqtt:alice", acked)
    book.on_transition(tr(2, False, *returned))
    book.on_transition(tr(2, False, *latched))
    book.shelve(T0 + 3, "mqtt:bob", shelved, 3600)
    book.set_maintenance(T0 + 4, "mqtt:dave", True, ["node"], duration_s=7200)

    fresh, restored = restart(book, 100, latching=("rapid_depress",))
    assert restored.problems == [] and restored.changes == []
    assert fresh.records() == book.records()
    assert {r.key: r.state for r in fresh.records()} == {
        acked: A,
        unacked: U,
        returned: R,
        latched: LU,
        shelved: SH,
        suppressed: SU,
    }
    assert fresh.record(acked).by == "mqtt:alice" and fresh.record(shelved).shelved_until == T0 + 3603
    assert fresh.maintenance() == book.maintenance() and fresh.maintenance()["node"].until == T0 + 7204
    assert fresh.annunciation() == book.annunciation()
    assert fresh.reset(T0 + 101, "mqtt:carol", latched).ok  # latched until reset, across the restart


def test_changed_rows_name_what_to_write_and_what_to_delete():
    book = AlarmBook()
    assert book.take_changed_rows() == {}
    book.on_transition(tr(0, True))
    book.acknowledge(T0 + 1, "mqtt:alice", key())
    [(name, row)] = book.take_changed_rows().items()
    assert name == "alarm/leak_rate/prk/warning" and (row["state"], row["by"]) == ("acked", "mqtt:alice")
    assert book.take_changed_rows() == {}
    book.set_maintenance(T0 + 2, "op", True, ["zvezda"])
    assert list(book.take_changed_rows()) == ["maintenance"]
    book.on_transition(tr(3, False))
    assert book.take_changed_rows() == {"alarm/leak_rate/prk/warning": None}
    book.set_maintenance(T0 + 4, "op", False)
    assert book.take_changed_rows() == {"maintenance": None}


def test_a_restored_acknowledgement_survives_when_the_monitor_raises_the_alarm_again():
    book = AlarmBook()
    book.on_transition(tr(0, True))
    book.acknowledge(T0 + 1, "mqtt:alice", key())
    fresh, _ = restart(book, 100)
    changes = fresh.on_transition(tr(105, True, value=1.2))  # the new monitor finds the condition again
    assert [c.new for c in changes] == [A]  # the record's values are updated, nothing else
    assert fresh.record(key()).acknowledged and fresh.record(key()).by == "mqtt:alice"
    assert fresh.tick(T0 + 1000) == [] and state_of(fresh, key()) == A  # confirmed: no lapse later


def test_a_restored_condition_not_raised_again_in_time_is_taken_as_cleared():
    book = AlarmBook(latching=("rapid_depress",))
    rd = key("rapid_depress", "prk", Severity.EMERGENCY)
    for k in (key(), rd):
        book.on_transition(tr(0, True, *k))
        book.acknowledge(T0 + 1, "mqtt:alice", k)
    fresh, _ = restart(book, 100, confirm_within=30.0, latching=("rapid_depress",))
    assert fresh.tick(T0 + 129) == []
    changes = fresh.tick(T0 + 130)
    assert {(c.key, c.old, c.new, c.by) for c in changes} == {(key(), A, N, "restart"), (rd, A, LA, "restart")}
    rec = fresh.record(rd)
    assert rec.latched and not rec.condition_active and "since the restart" in rec.last.reason


def test_restore_settles_against_the_present_settings_and_time():
    book = AlarmBook(latching=("rapid_depress", "sensor_fault"))
    rd = key("rapid_depress", "prk", Severity.EMERGENCY)
    fault = key("sensor_fault", "p_prk", Severity.WARNING)
    shelved = key(severity=Severity.CAUTION)
    for k in (rd, fault):
        book.on_transition(tr(0, True, *k))
        book.on_transition(tr(1, False, *k))  # both latched
    book.acknowledge(T0 + 2, "op", fault)
    book.on_transition(tr(0, True, *shelved))
    book.shelve(T0 + 3, "op", shelved, 60)
    book.on_transition(tr(0, True, "low_pressure", "zvezda"))
    book.set_maintenance(T0 + 4, "op", True, ["zvezda"], duration_s=100)

    # restarted long after, with sensor_fault no longer latching
    fresh, restored = restart(book, 1000, latching=("rapid_depress",))
    got = {(c.key, c.old, c.new, c.by) for c in restored.changes}
    assert got == {
        (fault, LA, N, "restart"),  # acknowledged and no longer latching: gone
        (shelved, SH, U, "shelve timer"),  # the shelving ended while the daemon was down
        (key("low_pressure", "zvezda"), SU, U, "maintenance timer"),  # so did the maintenance
    }
    assert state_of(fresh, rd) == LU and fresh.maintenance() == {}
    rows = fresh.take_changed_rows()
    assert rows["alarm/sensor_fault/p_prk/warning"] is None and rows["maintenance"] is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda row: "garbage",
        lambda row: {**row, "v": 99},
        lambda row: {**row, "state": "exploded"},
        lambda row: {**row, "severity": "dire"},
        lambda row: {**row, "condition_active": "yes"},
        lambda row: {**row, "state": "acked", "condition_active": False},
        lambda row: {**row, "shelved_until": 5.0},
        lambda row: {**row, "last": {"time": "noon", "state": "active"}},
        lambda row: {**row, "changed_at": float("nan")},
        lambda row: {**row, "alarm": "low_pressure"},  # not the alarm its row is named after
        lambda row: {k: v for k, v in row.items() if k != "last"},
    ],
)
def test_a_row_that_makes_no_sense_is_skipped_and_the_rest_restored(damage):
    book = AlarmBook()
    book.on_transition(tr(0, True))
    book.on_transition(tr(0, True, "low_pressure", "zvezda"))
    book.acknowledge(T0 + 1, "op")
    rows = json.loads(json.dumps(book.rows()))
    rows["alarm/leak_rate/prk/warning"] = damage(rows["alarm/leak_rate/prk/warning"])
    rows["maintenance"] = {"v": 1, "windows": {"prk": {"until": "soon"}}}
    rows["something else"] = {}
    fresh = AlarmBook()
    restored = fresh.restore(T0 + 5, rows, lambda _alarm: 30.0)
    assert sorted(p.split(":")[0] for p in restored.problems) == [
        "alarm/leak_rate/prk/warning",
        "maintenance",
        "something else",
    ]
    assert [r.key for r in fresh.records()] == [key("low_pressure", "zvezda")]
    assert fresh.take_changed_rows() == {
        "alarm/leak_rate/prk/warning": None,
        "maintenance": None,
        "something else": None,
    }


def test_ack_all():
    book = AlarmBook()
    book.on_transition(tr(0, True, severity=Severity.CAUTION))
    book.on_transition(tr(0, True, "low_pressure", "zvezda", Severity.EMERGENCY))
    book.on_transition(tr(0, True, "sensor_fault", "p_prk", Severity.CAUTION))
    book.on_transition(tr(1, False, "sensor_fault", "p_prk", Severity.CAUTION))
    book.on_transition(tr(0, True, "leak_rate", "zvezda", Severity.ADVISORY))
    book.acknowledge(T0 + 2, "operator", key("leak_rate", "zvezda", Severity.ADVISORY))

    out = book.acknowledge(T0 + 3, "button")
    assert out.ok and out.message == "acknowledged 3 alarms"
    assert sorted(c.new for c in out.changes) == sorted([A, A, N])
    assert all(c.by == "button" for c in out.changes)
    assert [r.state for r in book.records()] == [A, A, A]
    assert all(r.acknowledged for r in book.records())
    again = book.acknowledge(T0 + 4, "button")
    assert again.ok and again.message == "nothing to acknowledge" and again.changes == []


@pytest.mark.parametrize("command", ["acknowledge", "reset", "shelve", "unshelve"])
def test_unknown_key_is_refused_naming_it(command):
    book = AlarmBook()
    book.on_transition(tr(0, True))
    k = key("leak_rate", "prk", Severity.CAUTION)
    if command == "shelve":
        out = book.shelve(T0 + 1, "operator", k, 60.0)
    else:
        out = getattr(book, command)(T0 + 1, "operator", k)
    assert not out.ok and out.changes == []
    assert out.message == "no such alarm leak_rate/prk/caution"


def test_annunciation_worst_severity_and_flags():
    book = AlarmBook()
    assert book.annunciation() == Annunciation(None, False, False, False, False)
    book.on_transition(tr(0, True, severity=Severity.ADVISORY))
    assert book.annunciation().worst_unacked is Severity.ADVISORY
    book.on_transition(tr(0, True, severity=Severity.CAUTION))
    assert book.annunciation().worst_unacked is Severity.CAUTION
    book.on_transition(tr(0, True, "low_pressure", "prk", Severity.EMERGENCY))
    assert book.annunciation().worst_unacked is Severity.EMERGENCY
    book.on_transition(tr(0, True, "low_pressure", "prk", Severity.WARNING))
    assert book.annunciation().worst_unacked is Severity.EMERGENCY
    book.acknowledge(T0 + 1, "operator", key("low_pressure", "prk", Severity.EMERGENCY))
    a = book.annunciation()
    assert a.worst_unacked is Severity.WARNING and a.any_active and not a.sensor_fault_unacked

    book.on_transition(tr(2, True, "sensor_fault", "p_prk", Severity.CAUTION))
    assert book.annunciation().sensor_fault_unacked
    book.on_transition(tr(3, False, "sensor_fault", "p_prk", Severity.CAUTION))
    a = book.annunciation()
    assert not a.sensor_fault_unacked and a.returned_unacked  # RTN_UNACK: shown, silent

    book.acknowledge(T0 + 4, "operator")
    a = book.annunciation()
    assert a.worst_unacked is None and a.any_active and not a.returned_unacked


def test_records_serialise_as_icd_alarm_objects_with_lifecycle():
    book = AlarmBook()
    [c] = book.on_transition(tr(0, True, value=0.97))
    d = c.record.to_dict()
    for k, v in {
        "type": "alarm",
        "time": T0,
        "alarm": "leak_rate",
        "source": "prk",
        "severity": "warning",
        "state": "active",
        "value": 0.97,
        "threshold": 0.9,
        "acknowledged": False,
        "lifecycle": "unack",
        "shelved_until": None,
        "suppressed": False,
        "latched": False,
    }.items():
        assert d[k] == v, k
    json.dumps(d, allow_nan=False)
    assert c.to_dict() == {
        "type": "lifecycle",
        "time": T0,
        "alarm": "leak_rate",
        "source": "prk",
        "severity": "warning",
        "old": "normal",
        "new": "unack",
        "cause": "condition_active",
        "by": "condition",
    }


def test_repeated_condition_events_are_harmless():
    book = AlarmBook()
    assert book.on_transition(tr(0, False)) == []  # first seen cleared: nothing to tell
    book.on_transition(tr(1, True))
    [c] = book.on_transition(tr(2, True, value=1.5))  # a repeat updates the value, not the state
    assert (c.old, c.new) == (U, U) and c.record.last.value == 1.5


def test_bad_max_shelve_is_a_constructor_error():
    with pytest.raises(ValueError):
        AlarmBook(max_shelve_s=0.0)


# -- random sequences ------------------------------------------------------------------------------------------------

KEYS = [
    ("leak_rate", "prk", Severity.CAUTION),
    ("leak_rate", "zvezda", Severity.WARNING),
    ("rapid_depress", "prk", Severity.EMERGENCY),
    ("sensor_fault", "p_zvezda", Severity.CAUTION),
]
condition = st.tuples(st.just("condition"), st.sampled_from(KEYS), st.booleans())
maybe_key = st.none() | st.sampled_from(KEYS)
durations = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10**6)
ops = st.one_of(
    *[condition] * 5,  # mostly the monitor talking, so that every state is reached
    st.tuples(st.just("ack"), maybe_key),
    st.tuples(st.just("reset"), maybe_key),
    st.tuples(st.just("shelve"), st.sampled_from(KEYS), durations),
    st.tuples(st.just("unshelve"), st.sampled_from(KEYS)),
    st.tuples(
        st.just("maintenance"),
        st.booleans(),
        st.none() | st.lists(st.sampled_from(["prk", "zvezda", "p_zvezda"]), max_size=2),
        st.booleans(),
        st.none() | durations,
    ),
    st.tuples(st.just("maintenance"), st.just(False), st.none(), st.just(False), st.none()),
    st.tuples(st.just("tick")),
)


def check(book):
    a = book.annunciation()
    records = book.records()
    sounding = [r for r in records if r.state in (U, LU)]
    assert a.worst_unacked == (max(r.severity for r in sounding) if sounding else None)
    assert a.any_active == any(r.state in (A, LA) for r in records)
    for r in records:
        assert r.state != N
        assert not (r.state == U and r.acknowledged)
        assert r.acknowledged == (r.state not in (U, R, LU))
        if r.state in (U, A, SU):
            assert r.condition_active
        if r.state in (R, LU, LA):
            assert not r.condition_active
        assert (r.shelved_until is not None) == (r.state == SH)
        assert r.latched == (r.state in (LU, LA))
        assert r.suppressed == (r.state == SU)
        if r.state == SU:
            assert book.suppresses(r.key)
            if r.severity == Severity.EMERGENCY:
                assert r.source in book.maintenance()  # its own maintenance: "all" never hides an emergency
        if r.state in (U, A):
            assert not book.suppresses(r.key)
        if r.state == SH:
            assert r.severity != Severity.EMERGENCY
        json.dumps(r.to_dict(), allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    latching=st.sets(st.sampled_from(["leak_rate", "rapid_depress", "sensor_fault"])),
    max_shelve=st.floats(1.0, 1e4),
    steps=st.lists(st.tuples(st.floats(0.0, 600.0), ops), min_size=10, max_size=80),
)
def test_random_sequences_never_raise_and_stay_consistent(latching, max_shelve, steps):
    book = AlarmBook(latching=latching, max_shelve_s=max_shelve)
    now = T0
    for dt, op in steps:
        now += dt
        kind = op[0]
        if kind == "condition":
            changes = book.on_transition(
                AlarmTransition(now, *op[1], AlarmState.ACTIVE if op[2] else AlarmState.CLEARED, 1.0, 0.5)
            )
        elif kind == "ack":
            changes = book.acknowledge(now, "t", op[1]).changes
        elif kind == "reset":
            changes = book.reset(now, "t", op[1]).changes
        elif kind == "shelve":
            changes = book.shelve(now, "t", op[1], op[2]).changes
        elif kind == "unshelve":
            changes = book.unshelve(now, "t", op[1]).changes
        elif kind == "maintenance":
            changes = book.set_maintenance(now, "t", op[1], op[2], everything=op[3], duration_s=op[4]).changes
        else:
            changes = book.tick(now)
        for c in changes:
            assert c.record.state == c.new and c.gone == (c.new == N)
            assert not (c.new == U and c.record.acknowledged)
            if c.new in (LU, LA):
                assert c.key[0] in latching
        check(book)
        # what is persisted brings the same book back, with nothing to settle (once what is due now is done)
        book.tick(now)
        rows = json.loads(json.dumps(book.rows()))
        copy = AlarmBook(latching=latching, max_shelve_s=max_shelve)
        restored = copy.restore(now, rows, lambda _alarm: 1e9)
        assert restored.problems == [] and restored.changes == []
        assert copy.records() == book.records() and copy.maintenance() == book.maintenance()
        assert copy.annunciation() == book.annunciation()

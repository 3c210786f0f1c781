"""Alarm conditions: the ICD's k-sigma rule with hysteresis, thresholds below, and the on-delay."""

import pytest

from hullwatch.core.conditions import Condition, below, confidently_above
from hullwatch.core.model import AlarmState, Severity


@pytest.mark.parametrize(
    ("r", "sigma", "activate", "clear"),
    [
        (1.00, 0.02, True, False),  # 1.00 - 0.06 = 0.94 > 0.9
        (0.95, 0.02, False, False),  # inside the band: no decision
        (0.84, 0.002, False, True),  # 0.846 < 0.85
        (0.86, 0.002, False, False),  # below the threshold but not below threshold - hysteresis
        (0.50, 1.00, False, False),  # too uncertain to say either way
    ],
)
def test_k_sigma_rule_with_hysteresis(r, sigma, activate, clear):
    assert confidently_above(r, sigma, 3.0, 0.9, 0.05) == (activate, clear)


def test_below_with_hysteresis():
    assert below(94_000, 95_000, 50) == (True, False)
    assert below(95_020, 95_000, 50) == (False, False)
    assert below(95_060, 95_000, 50) == (False, True)


def test_condition_transitions_once_each_way_and_holds_while_uncertain():
    c = Condition("leak_rate", "prk", Severity.WARNING, 0.9)
    assert c.update(0.0, (False, False), 0.5) is None
    on = c.update(1.0, (True, False), 1.2)
    assert on.state is AlarmState.ACTIVE and on.value == 1.2 and on.threshold == 0.9
    assert c.update(2.0, (True, False), 1.2) is None  # already active
    assert c.update(3.0, (False, False), 0.88) is None  # uncertain: holds
    off = c.update(4.0, (False, True), 0.7)
    assert off.state is AlarmState.CLEARED and off.time == 4.0
    assert c.update(5.0, (False, True), 0.7) is None


def test_on_delay_needs_consecutive_evidence():
    c = Condition("leak_rate", "prk", Severity.CAUTION, 0.5, confirmations=3)
    assert c.update(0.0, (True, False), 1.0) is None
    assert c.update(1.0, (True, False), 1.0) is None
    assert c.update(2.0, (False, False), 0.6) is None  # the streak breaks
    assert c.update(3.0, (True, False), 1.0) is None
    assert c.update(4.0, (True, False), 1.0) is None
    assert c.update(5.0, (True, False), 1.0).state is AlarmState.ACTIVE


def test_force_clear_only_when_active():
    c = Condition("leak_rate", "prk-zvezda", Severity.WARNING, 0.9)
    assert c.force_clear(1.0, "volume re-formed") is None
    c.update(2.0, (True, False), 1.0)
    tr = c.force_clear(3.0, "volume re-formed")
    assert tr.state is AlarmState.CLEARED and tr.reason == "volume re-formed" and tr.value is None


def test_on_delay_in_time_as_well_as_in_evaluations():
    c = Condition("low_pressure", "prk", Severity.WARNING, 95_000.0, confirmations=2, on_delay_s=1.0)
    assert c.update(0.0, (True, False), 90_000.0) is None
    assert c.arming
    assert c.update(0.5, (True, False), 90_000.0) is None  # two readings, but only 0.5 s apart
    assert c.update(1.0, (True, False), 90_000.0).state is AlarmState.ACTIVE
    c = Condition("low_pressure", "prk", Severity.WARNING, 95_000.0, confirmations=2, on_delay_s=1.0)
    c.update(0.0, (True, False), 90_000.0)
    assert c.update(1.0, (False, False), 95_010.0) is None
    assert not c.arming

"""The monitor against what real transducers and real modules do, one phenomenon per test.

Each stream is synthetic with its truth kept (hullwatch.sim.phenomena): a 75 m³ volume at
1 Hz, a few hours long. The tests ask what a test engineer asks: no alarm where nothing
happened, the right alarm no earlier than the truth allows, an uncertainty that covers the
error, the operator told what did happen (a step, a spike, a sensor away). The margins hold
for 20 other seeds of every story, not only the ones fixed here. Under coloured noise and a
wander, alarms raised in the first half hour are left to the start-up test.

The last section holds what the monitor does not yet do (strict xfails): each is a
reproducer, and passes once the shortfall is mended.
"""

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, LevelStep, Notice
from hullwatch.core.monitor import Monitor, run
from hullwatch.sim import phenomena
from hullwatch.sim.phenomena import HOUR, T0, true_loss

LEAK_ALARMS = ("leak_rate", "reserve_time", "rapid_depress")
CAUTION, WARNING = 0.5, 0.9  # kg/day, the default leak_rate thresholds
SETTLED_S = 1800.0  # under correlated noise σ can be too small before this (see the start-up test at the end)


def play(story):
    return list(run(Monitor(story.settings), story.samples))


def activations(events, *alarms):
    return [
        e
        for e in events
        if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE and (not alarms or e.alarm in alarms)
    ]


def settled(events, *alarms):
    """Activations that began after the start-up half hour."""
    return [a for a in activations(events, *alarms) if a.time - T0 >= SETTLED_S]


def rated(events, after_s=HOUR):
    return [e for e in events if isinstance(e, Estimate) and e.leak_kg_per_day is not None and e.time - T0 >= after_s]


def errors(story, estimates):
    return [e.leak_kg_per_day - true_loss(story, e.time, e.pressure_pa) for e in estimates]


def z_scores(story, estimates):
    """|error| / σ of each estimate."""
    return [abs(d) / e.leak_kg_per_day_sigma for d, e in zip(errors(story, estimates), estimates, strict=True)]


def share(z, bound):
    """The share of z within bound: 2σ coverage is share(z, 2.0)."""
    return sum(x <= bound for x in z) / len(z)


def p95(values):
    return sorted(abs(v) for v in values)[int(0.95 * len(values))]


def test_coloured_noise_raises_no_alarm_and_sigma_covers_the_error():
    """1 Pa white + 1.2 Pa AR(1) (3 min) at 0.2 kg/day: σ widens by the noise's correlation.

    σ is neither too small (2σ covers at least 85 %) nor inflated (1σ covers at most 95 %).
    The first half hour is left to the start-up test below.
    """
    stories = [phenomena.coloured(seed=s) for s in (547, 548, 549)]
    runs = [(story, play(story)) for story in stories]
    assert not [a for _, events in runs for a in settled(events)]
    z = [x for story, events in runs for x in z_scores(story, rated(events))]
    assert share(z, 2.0) >= 0.85
    assert 0.5 <= share(z, 1.0) <= 0.95
    assert abs(statistics.median(d for story, events in runs for d in errors(story, rated(events)))) < 0.01


def test_a_wandering_zero_raises_no_alarm():
    """A bounded random walk of the transducer's zero (AR(1), 3 Pa, 1 h) at 0.2 kg/day."""
    for seed in (548, 549):
        story = phenomena.wander(seed=seed)
        events = play(story)
        assert not settled(events)
        assert abs(statistics.median(errors(story, rated(events)))) < 0.05


@pytest.mark.parametrize("told", [False, True], ids=["lag-not-told", "lag-told"])
def test_a_lagging_thermometer_under_hvac_swings_raises_no_alarm(told):
    """The air swings ±0.2 K every 20 min, the thermometer lags it by 60 s; 0.45 kg/day."""
    story = phenomena.lagged_hvac(seed=553, time_constant_s=60.0 if told else 0.0)
    events = play(story)
    assert not activations(events, *LEAK_ALARMS)
    est = rated(events)
    err = errors(story, est)
    assert abs(statistics.median(err)) < 0.02
    if told:  # de-lagged: the error stays small, and the monitor can still see a caution-sized leak
        assert p95(err) < 0.06
        assert statistics.median(e.detectable_kg_per_day for e in est) < CAUTION


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    size=st.floats(10.0, 50.0),
    down=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_an_offset_step_is_reported_with_its_size_and_is_not_a_leak(size, down, seed):
    """The only transducer is re-zeroed by 10–50 Pa, up or down, at 1.5 h; 0.45 kg/day."""
    jump = -size if down else size
    story = phenomena.offset_steps(seed=seed, duration_s=2.5 * HOUR, steps=[(1.5 * HOUR, jump)])
    events = play(story)
    assert not activations(events, *LEAK_ALARMS)
    steps = [e for e in events if isinstance(e, LevelStep)]
    assert len(steps) == 1
    assert abs(steps[0].time - (T0 + 1.5 * HOUR)) <= 60.0
    assert abs(steps[0].size_pa - jump) <= 0.2 * size


SECOND_STEP_LOST = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="after a step is absorbed the window can restart; while it re-locates, a second step"
    " lands inside a window cut to ~30 points and is never reported as a step (no alarm: leak alarms"
    " judge windows of at least 90 points)",
)


@pytest.mark.parametrize("seed", [543, 546, pytest.param(545, marks=SECOND_STEP_LOST)])
@pytest.mark.parametrize("first", [-30.0, 20.0], ids=["down-up", "up-down"])
def test_two_offset_steps_are_both_reported_and_not_a_leak(first, seed):
    """Recalibrations 1 h apart, −30 then +20 Pa or +20 then −30 Pa; 0.45 kg/day.

    Seed 545 (and 544, 2 of 16 seeds tried) loses the second step.
    """
    steps = [(1.5 * HOUR, first), (2.5 * HOUR, -30.0 if first > 0 else 20.0)]
    story = phenomena.offset_steps(seed=seed, duration_s=3.5 * HOUR, steps=steps)
    events = play(story)
    assert not activations(events, *LEAK_ALARMS)
    found = [e for e in events if isinstance(e, LevelStep)]
    assert len(found) == 2
    for event, (at, jump) in zip(found, steps, strict=True):
        assert abs(event.time - (T0 + at)) <= 60.0
        assert abs(event.size_pa - jump) <= 0.2 * abs(jump)


def test_single_sample_spikes_are_set_aside():
    """−300, +150, −900 and +3000 Pa for one reading each; 0.2 kg/day. Neither an alarm nor a blind spell."""
    for seed in (541, 542):
        story = phenomena.spikes(seed=seed)
        monitor = Monitor(story.settings)
        events = list(run(monitor, story.samples))
        assert not activations(events)
        assert monitor.glitches() == {"p1": 4}
        est = rated(events)
        assert max(e.detectable_kg_per_day for e in est) < 0.05
        assert p95(errors(story, est)) < 0.02


def test_repressurisation_raises_no_alarm_and_the_rate_comes_back():
    """0.2 kg let in over 5 min, twice; 0.45 kg/day throughout."""
    story = phenomena.repress(seed=559)
    events = play(story)
    assert not activations(events)
    assert not [e for e in events if isinstance(e, LevelStep)]
    est = rated(events, 0.0)
    limit = 2.0 * phenomena.confirm_window_s(75.0, 2.0, 0.002, 1.0, 0.1)
    for end in story.truth["ends"]:
        back = [
            e.time - end
            for e in est
            if e.time >= end
            and abs(e.leak_kg_per_day - true_loss(story, e.time, e.pressure_pa)) < 0.05
            and e.leak_kg_per_day_sigma < 0.05
        ]
        assert back and back[0] <= limit


def test_a_growing_leak_warns_after_the_truth_passes_each_threshold_never_before():
    """The leak ramps 0.3 → 1.5 kg/day over 4 h: the truth passes 0.5 at 40 min and 0.9 at 2 h."""
    story = phenomena.ramp(seed=561)
    events = play(story)
    slope = story.truth["ramp_kg_per_day_per_s"]
    least = phenomena.ramp_confirm_delay_s(slope)
    for severity, threshold in (("caution", CAUTION), ("warning", WARNING)):
        crossed = T0 + (threshold - 0.3) / slope
        first = [a for a in activations(events, "leak_rate") if a.severity.label == severity]
        assert first and first[0].time >= crossed
        assert first[0].time - crossed <= 2.5 * least
    assert not activations(events, "reserve_time", "rapid_depress", "low_pressure", "sensor_fault")


def test_three_unequal_transducers_warn_within_twice_the_fused_minimum():
    """σ 1.5, 1.5 and 8 Pa in one volume; 0.45 → 1.0 kg/day at 2 h. The cheap one is weighted, not faulted."""
    story = phenomena.fusion(seed=567)
    events = play(story)
    step = story.truth["step_time"]
    assert not [a for a in activations(events) if a.time < step]
    warning = [a for a in activations(events, "leak_rate") if a.severity.label == "warning"]
    assert warning and warning[0].time - step <= 2.0 * story.truth["confirm_window_s"]
    assert not activations(events, "sensor_fault")


def test_a_redundant_transducer_with_an_offset_leaving_and_returning_keeps_the_fit():
    """p3 reads 40 Pa above p1 and p2, falls silent for 10 min at 1.5 h, returns; 0.45 kg/day."""
    story = phenomena.redundant_gap(seed=571, offset=40.0)
    events = play(story)
    gone, back = story.truth["gap"]
    assert [(a.alarm, a.source) for a in activations(events)] == [("sensor_fault", "p3")]
    assert not [e for e in events if isinstance(e, Notice) and "restarted" in e.message]
    assert not [e for e in events if isinstance(e, LevelStep) and e.time - T0 > 60.0]
    est = rated(events)
    windows = [e.window_s for e in est]
    assert min(windows) == pytest.approx(HOUR, abs=1.0)  # the fit was never cut
    for at in (gone, back):  # the pressure does not jump by the offset's share (13 Pa)
        before = [e for e in est if at - 300 <= e.time < at]
        after = [e for e in est if at + 10 <= e.time < at + 310]
        fall = (true_loss(story, at, before[0].pressure_pa) / 86400.0) * before[0].pressure_pa / before[0].mass_kg
        lapse = statistics.mean(e.time for e in after) - statistics.mean(e.time for e in before)
        jump = statistics.mean(e.pressure_pa for e in after) - statistics.mean(e.pressure_pa for e in before)
        assert abs(jump + fall * lapse) < 1.5
    assert p95(errors(story, est)) < 0.02


# -- what the monitor does not yet do ----------------------------------------------------------


@pytest.mark.parametrize(
    "story",
    [
        lambda: phenomena.coloured(seed=88, rate=0.2, duration_s=1800.0),
        lambda: phenomena.coloured(seed=2, rate=0.45, duration_s=1800.0),
    ],
    ids=["coloured-0.2", "coloured-0.45"],
)
def test_no_false_leak_alarm_at_start_up(story):
    """Until a long window has measured the noise's correlation, alarms ask 3 k σ."""
    assert not activations(play(story()), *LEAK_ALARMS)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a wander slower than the window can look like a leak in the first half hour even at 3 k σ"
    " (this seed raises a caution)",
)
def test_no_false_leak_alarm_at_start_up_under_a_wandering_zero():
    assert not activations(play(phenomena.wander(seed=21, duration_s=1800.0)), *LEAK_ALARMS)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a wander slower than the window looks like signal inside it: σ is 1.6-2.3x too small"
    " (2σ coverage 0.43-0.86 over 6-24 h runs)",
)
def test_a_wandering_zero_is_covered_by_sigma():
    stories = [phenomena.wander(seed=s) for s in (548, 549)]
    assert share([x for story in stories for x in z_scores(story, rated(play(story)))], 2.0) >= 0.85


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a few-Pa step is cut as a change of rate at a knot before it: a ~70 s window holds"
    " the step and reads 5 kg/day, confirmed as a leak_rate warning",
)
def test_a_small_offset_step_is_not_a_leak():
    story = phenomena.offset_steps(seed=0, duration_s=2.75 * HOUR, steps=[(2.5 * HOUR, -4.0)])
    assert not activations(play(story), *LEAK_ALARMS)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a steady ramp is never cut (the change detector learns its z² as usual): the estimate"
    " is the mean over the last hour, 30 min behind the truth, far outside its σ",
)
def test_during_a_growing_leak_the_rate_reported_is_the_rate_now():
    story = phenomena.ramp(seed=561)
    assert share(z_scores(story, rated(play(story))), 2.0) >= 0.5


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a transducer offset from the others from the start is held out, then settles as a step",
)
def test_a_transducer_offset_from_the_start_is_not_a_step():
    story = phenomena.redundant_gap(seed=571, offset=40.0, duration_s=600.0)
    assert not [e for e in play(story) if isinstance(e, LevelStep)]

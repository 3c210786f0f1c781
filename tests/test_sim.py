"""The simulated module: physics against closed-form truth, scenario files, playback."""

import math
from pathlib import Path

import pytest

from hullwatch.core.model import R_AIR, Quantity
from hullwatch.sim import scenario
from hullwatch.sim.live import Playback
from hullwatch.sim.physics import Module, constant

ROOT = Path(__file__).resolve().parents[1]


def test_a_choked_leak_decays_exponentially():
    m = Module({"a": 10.0}, {}, set(), {"a": constant(295.0)}, {"a": constant(600.0)})
    mass0 = 101325.0 * 10.0 / (R_AIR * 295.0)
    tau = mass0 / (600.0 / 86400.0)
    for i in range(600):
        m.advance(float(i), 1.0)
    assert m.pressures(600.0)["a"] == pytest.approx(101325.0 * math.exp(-600.0 / tau), rel=1e-9)


def test_joined_segments_share_pressure_and_closing_keeps_it():
    m = Module(
        {"a": 4.0, "b": 75.0},
        {"h": ("a", "b")},
        {"h"},
        {"a": constant(295.0), "b": constant(290.0)},
        {"a": constant(1.0)},
    )
    for i in range(3600):
        m.advance(float(i), 1.0)
    p = m.pressures(3600.0)
    assert p["a"] == pytest.approx(p["b"])
    lost = 101325.0 * (4.0 / 295.0 + 75.0 / 290.0) / R_AIR - sum(m.mass.values())
    assert lost == pytest.approx(1.0 / 24, rel=0.01)  # 1 kg/day for an hour
    m.set_hatch("h", False, 3600.0)
    assert m.pressures(3600.0)["a"] == pytest.approx(p["a"])


@pytest.mark.parametrize("name", ["prk-2026", "hatch-isolation", "rapid-depress"])
def test_shipped_scenarios_load(name):
    sc = scenario.load(str(ROOT / "config" / "scenarios" / f"{name}.toml"))
    assert sc.transducers and sc.segments
    sc.module()


def test_playback_applies_events_in_story_time():
    sc = scenario.load(str(ROOT / "config" / "scenarios" / "hatch-isolation.toml"))
    play = Playback(sc, seed=1)
    assert play.advance_to(3599.0) == []
    assert play.hatch_open("prk-hatch")
    changes = play.advance_to(3700.0)
    assert changes == [(3600.0, "prk-hatch", False)]
    readings = play.read(next(t for t in sc.transducers if t.name == "p_prk"))
    assert set(readings) == {Quantity.PRESSURE} and 90_000 < readings[Quantity.PRESSURE] < 102_000


def test_unplugged_transducer_reads_nothing():
    sc = scenario.parse(
        {
            "segment": [{"name": "a", "volume_m3": 1.0}],
            "transducer": [{"name": "p", "segment": "a"}],
            "event": [{"at_s": 10, "unplug": {"transducer": "p", "for_s": 5}}],
        }
    )
    play = Playback(sc)
    p = sc.transducers[0]
    play.advance_to(12.0)
    assert play.read(p) == {}
    play.advance_to(15.0)
    assert Quantity.PRESSURE in play.read(p)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({}, "segment"),
        ({"segment": [{"name": "a", "volume_m3": -1}]}, "segment[0].volume_m3"),
        (
            {"segment": [{"name": "a", "volume_m3": 1}], "transducer": [{"name": "p", "segment": "b"}]},
            "transducer[0].segment",
        ),
        (
            {"segment": [{"name": "a", "volume_m3": 1}], "event": [{"at_s": 1, "leak": {"segment": "z"}}]},
            "event[0].leak.segment",
        ),
        ({"segment": [{"name": "a", "volume_m3": 1}], "event": [{"at_s": 1}]}, "event[0]"),
    ],
)
def test_scenario_errors_name_the_key(doc, key):
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.parse(doc)
    assert str(err.value).startswith(f"<scenario>: {key}:")

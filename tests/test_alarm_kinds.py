"""core/alarm_kinds.py is the one description of the alarm kinds: config, monitor, displays and reports follow it."""

import ast
import dataclasses
import tomllib
from pathlib import Path

import pytest

from conftest import MINIMAL_TOML
from hullwatch import config, present
from hullwatch.cli import main
from hullwatch.core import alarm_kinds
from hullwatch.core.alarm_kinds import KINDS, NAMES, SENSOR, VOLUME, VOLUME_KINDS
from hullwatch.core.model import Severity
from hullwatch.core.monitor import Monitor
from hullwatch.core.settings import AlarmLimits, LeakSettings
from hullwatch.watch.state import SHORT_UNITS, AlarmView, alarm_values

DAEMON = Path(__file__).resolve().parent.parent / "daemon" / "hullwatch"
TABLE = DAEMON / "core" / "alarm_kinds.py"
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "hullwatch.example.toml"


def parsed(extra: str = "") -> config.Config:
    return config.parse(tomllib.loads(MINIMAL_TOML + extra), "hullwatch.toml")


def problems(extra: str) -> list[str]:
    with pytest.raises(config.ConfigError) as exc:
        parsed(extra)
    return exc.value.problems


# -- the table itself ---------------------------------------------------------------------------


def test_kinds_are_the_icd_five_with_distinct_names_and_sections():
    assert NAMES == ("leak_rate", "rapid_depress", "low_pressure", "reserve_time", "sensor_fault")
    assert len({k.section for k in KINDS}) == len(KINDS)
    assert {k.per for k in KINDS} == {VOLUME, SENSOR}


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_each_kind_names_real_limits_mildest_first(kind):
    limits = getattr(AlarmLimits(), kind.section)
    fields = {f.name for f in dataclasses.fields(limits)}
    assert {key for _, key in kind.thresholds} <= fields
    assert list(kind.severities) == sorted(set(kind.severities))
    assert kind.description
    for template in (kind.check_text, kind.report_text):  # every placeholder is a limit, a [leak] figure or so
        kind.render(template, AlarmLimits(), LeakSettings(), lambda x, unit: f"{x} {unit}")


def test_a_sensor_fault_raises_the_configured_severity():
    assert alarm_kinds.SENSOR_FAULT.severities == tuple(Severity)
    assert alarm_kinds.SENSOR_FAULT.per == SENSOR


def test_no_other_module_spells_a_kind():
    """Outside the table no string constant is a kind's name: every reference goes through the table."""
    found = []
    for path in sorted(DAEMON.rglob("*.py")):
        if path == TABLE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(DAEMON)}:{node.lineno}: {node.value!r}")
    assert found == []


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_config_accepts_every_kind_as_latching(kind):
    assert parsed(f'[alarms]\nlatching = ["{kind.name}"]\n').module.alarms.latching == (kind.name,)


def test_config_names_the_table_in_a_bad_latching_list():
    (line,) = problems('[alarms]\nlatching = ["leak"]\n')
    assert ", ".join(NAMES) in line


@pytest.mark.parametrize("kind", VOLUME_KINDS, ids=[k.name for k in VOLUME_KINDS])
def test_config_reads_and_switches_off_every_threshold(kind):
    for _, key in kind.thresholds:
        default = getattr(getattr(AlarmLimits(), kind.section), key)
        on = parsed(f"[alarms.{kind.section}]\n{key} = {default:.6g}\n").module.alarms
        assert getattr(getattr(on, kind.section), key) == pytest.approx(default)
        off = parsed(f"[alarms.{kind.section}]\n{key} = false\n").module.alarms
        assert getattr(getattr(off, kind.section), key) is None


@pytest.mark.parametrize("kind", [k for k in VOLUME_KINDS if len(k.thresholds) > 1], ids=lambda k: k.name)
def test_config_refuses_a_graver_threshold_that_is_easier_to_reach(kind):
    (_, milder), (_, graver) = kind.thresholds[:2]
    milder_at, graver_at = (2.0, 1.0) if kind.rises else (1.0, 2.0)  # the graver one is reached first
    others = "".join(f"{key} = false\n" for _, key in kind.thresholds[2:])
    lines = problems(f"[alarms.{kind.section}]\n{milder} = {milder_at}\n{graver} = {graver_at}\n{others}")
    lo, hi = (milder, graver) if kind.rises else (graver, milder)
    assert lines == [f"hullwatch.toml: alarms.{kind.section}.{lo}: 2 is above {hi} = 1"]


def test_every_section_is_in_the_commented_example():
    sections = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["alarms"]
    assert {k.section for k in KINDS} <= set(sections)


# -- monitor ------------------------------------------------------------------------------------


def test_a_volume_has_one_condition_per_threshold_of_the_table():
    conditions = Monitor(parsed().module).volume_conditions("prk")
    assert set(conditions) == {(k.name, sev) for k in VOLUME_KINDS for sev, _ in k.thresholds}


def test_a_threshold_switched_off_has_no_condition():
    kind = alarm_kinds.RESERVE_TIME
    sev, key = kind.thresholds[0]
    conditions = Monitor(parsed(f"[alarms.{kind.section}]\n{key} = false\n").module).volume_conditions("prk")
    assert (kind.name, sev) not in conditions
    assert all((kind.name, s) in conditions for s, _ in kind.thresholds[1:])


# -- what people see ----------------------------------------------------------------------------


def test_check_config_has_one_line_per_kind(capsys, write_file):
    path = write_file(MINIMAL_TOML + "[alarms.rapid_depress]\nemergency_pa_per_s = false\n")
    assert main(["check-config", "-c", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    for kind in KINDS:
        (line,) = [x for x in lines if x.startswith(kind.name)]
        assert kind.unit in line
    assert "rapid_depress: emergency above off Pa/s" in lines


def test_report_lists_every_kind_in_its_table_of_limits():
    pytest.importorskip("matplotlib")
    from hullwatch import report
    from hullwatch.core.model import Quantity
    from hullwatch.sim.physics import Module, SensorModel, constant
    from hullwatch.sim.physics import run as simulate

    cfg = parsed()
    module = Module({"prk": 4.0}, {}, set(), {"prk": constant(295.0)}, {"prk": constant(0.1)})
    sensors = [SensorModel("p_prk", "prk", Quantity.PRESSURE, 2.0, 0.01)]
    data = report.collect(cfg.module, simulate(module, sensors, 600.0, 1.0, seed=3))
    md = report.markdown(data, cfg, "samples.csv", report.judge(data, cfg.module))
    for kind in KINDS:
        (row,) = [x for x in md.splitlines() if x.startswith(f"| {kind.name} |")]
        assert kind.unit in row


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_every_kind_has_its_unit_in_the_display_paths(kind):
    shown = present.quantity(kind.name, 12.0)
    assert shown.endswith(kind.unit) and shown.startswith("12")
    view = AlarmView(kind.name, "prk", "warning", True, False, "unack", 12.0, 10.0, 0.0, "", False, None, False)
    shown_unit, _ = SHORT_UNITS.get(kind.unit, (kind.unit, 1.0))
    assert alarm_values(view).endswith(shown_unit)

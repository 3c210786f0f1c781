"""`hullwatch report` (PNG, PDF, Markdown) and the progress line, on synthetic mock-up stories with known truth."""

import contextlib
import gzip
import io
import os
import struct
import sys

import pytest

pytest.importorskip("matplotlib")
np = pytest.importorskip("numpy")

from hullwatch import config, present, report  # noqa: E402
from hullwatch.cli import main  # noqa: E402
from hullwatch.core.model import AlarmTransition, Estimate, HatchChange, LevelStep, Quantity, Sample  # noqa: E402
from hullwatch.core.monitor import Monitor  # noqa: E402
from hullwatch.core.monitor import run as run_monitor  # noqa: E402
from hullwatch.core.settings import ModuleSettings, Segment, SensorSpec  # noqa: E402
from hullwatch.progress import Progress, open_positioned  # noqa: E402
from hullwatch.samples import format_row, read_samples  # noqa: E402
from hullwatch.sim import stories  # noqa: E402
from hullwatch.sim.physics import Module, SensorModel, constant  # noqa: E402
from hullwatch.sim.physics import run as simulate  # noqa: E402

EX_OK, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_CONFIG = 0, 65, 66, 69, 78
CLOSE_S = 3600.0  # the hatch closes after an hour of two hours

# PrK (4 m³) leaks 1.0 kg/day through a joined Zvezda (75 m³); the hatch closes at 1 h.
ISOLATION_TOML = """\
[station]
name = "prk-mockup"

[[segment]]
name = "prk"
volume_m3 = 4.0

[[segment]]
name = "zvezda"
volume_m3 = 75.0

[[hatch]]
name = "prk-hatch"
between = ["prk", "zvezda"]
initial = "open"

[[sensor]]
name = "p_prk"
segment = "prk"
driver = "simulated"

[[sensor]]
name = "t_prk"
segment = "prk"
driver = "simulated"

[[sensor]]
name = "p_zv"
segment = "zvezda"
driver = "simulated"

[[sensor]]
name = "t_zv"
segment = "zvezda"
driver = "simulated"

[alarms.leak_rate]
caution_kg_per_day = 0.5
warning_kg_per_day = 0.9
"""


def write_samples(path, samples) -> str:
    """A samples file (ICD §3), gzip-compressed when the name ends in .gz."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write("time,sensor,quantity,value\n")
        for s in samples:
            f.write(format_row(s))
    return str(path)


def run_cli(argv):
    """(exit code, stdout, stderr) of `hullwatch ARGV`, stderr being a pipe-like, non-terminal stream."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def isolation(tmp_path_factory):
    """The isolation story written out, reported on once: paths, exit code, output, and the monitor's own events."""
    tmp = tmp_path_factory.mktemp("report")
    story = stories.isolation(close_s=CLOSE_S, duration_s=2 * CLOSE_S, leak=1.0, seed=8)
    samples = list(story.samples)
    csv = write_samples(tmp / "isolation.csv", samples)
    cfg = tmp / "hullwatch.toml"
    cfg.write_text(ISOLATION_TOML, encoding="utf-8")
    outdir = tmp / "out"
    code, out, err = run_cli(["report", "-c", str(cfg), csv, "-o", str(outdir)])
    events = list(run_monitor(Monitor(config.load(str(cfg)).module), samples))
    return {"dir": outdir, "csv": csv, "cfg": str(cfg), "code": code, "out": out, "err": err, "events": events}


def section(md: str, title: str) -> str:
    """The text of a `## title` section."""
    assert f"\n## {title}\n" in md, f"no section {title!r}"
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


# -- the command end to end ------------------------------------------------------------------


def test_report_succeeds_quietly_when_stderr_is_not_a_terminal(isolation):
    assert isolation["code"] == EX_OK, isolation["err"]
    assert isolation["err"] == ""  # no progress line, no notices


def test_png_is_a_readable_image(isolation):
    data = (isolation["dir"] / "report.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert kind == b"IHDR" and length == 13
    assert 1000 <= width <= 4000 and 1000 <= height <= 4000, (width, height)


def test_pdf_is_written(isolation):
    data = (isolation["dir"] / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF-")
    assert b"%%EOF" in data[-64:]


def test_stdout_gives_the_verdict_and_where_the_report_is(isolation):
    md = (isolation["dir"] / "report.md").read_text(encoding="utf-8")
    verdict = next(line for line in md.splitlines() if line.startswith("**Verdict:"))
    outcome = verdict.split("**")[1].split(": ")[1]
    assert outcome in isolation["out"].splitlines()[0]
    assert str(isolation["dir"] / "report.md") in isolation["out"]


def test_markdown_has_every_section_and_embeds_the_figure(isolation):
    md = (isolation["dir"] / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# ") and "prk-mockup" in md.splitlines()[0] and "isolation.csv" in md.splitlines()[0]
    for title in (
        "Test period",
        "Configuration",
        "Figure",
        "Leak rate per volume period",
        "Detection limits",
        "Pressure sensor noise",
        "Leak attribution per segment",
        "Alarms",
        "Hatch changes",
        "Verdict",
    ):
        section(md, title)
    assert "](report.png)" in md
    config = section(md, "Configuration")
    for name in ("prk", "zvezda", "prk-hatch", "p_prk", "t_zv", "0.5 kg/day", "0.9 kg/day"):
        assert name in config, name


def test_verdict_is_a_fail_stated_first_with_its_reason(isolation):
    """A 1.0 kg/day leak against a 0.9 kg/day warning limit: the warning sounded, so the test fails."""
    md = (isolation["dir"] / "report.md").read_text(encoding="utf-8")
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[1].startswith("**Verdict: FAIL**"), lines[1]
    warned = {
        e.source
        for e in isolation["events"]
        if isinstance(e, AlarmTransition) and e.alarm == "leak_rate" and e.severity.label == "warning"
    }
    assert warned
    for source in warned:
        assert source in lines[1]
    assert "leak_rate warning" in lines[1]


def test_every_alarm_transition_is_a_row_of_the_alarm_table(isolation):
    table = section((isolation["dir"] / "report.md").read_text(encoding="utf-8"), "Alarms")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| 2")]
    transitions = [e for e in isolation["events"] if isinstance(e, AlarmTransition)]
    assert transitions
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [
        (e.alarm, e.source, e.severity.label, e.state.value) for e in transitions
    ]


def test_periods_follow_the_hatch(isolation):
    table = section((isolation["dir"] / "report.md").read_text(encoding="utf-8"), "Leak rate per volume period")
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines())}
    assert {"prk-zvezda", "prk", "zvezda"} <= rows.keys()
    assert "prk-hatch closed" in rows["prk-zvezda"][2] and "prk-hatch closed" in rows["prk"][2]
    joined = float(rows["prk-zvezda"][3].split("±")[0])
    assert joined == pytest.approx(1.0, abs=0.05)  # the true leak, at about 101 kPa


def test_attribution_puts_the_leak_in_prk_and_the_sum_matches_the_joined_rate(isolation):
    text = section((isolation["dir"] / "report.md").read_text(encoding="utf-8"), "Leak attribution per segment")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    by_segment = {r[0]: r for r in rows if r[0] in ("prk", "zvezda")}
    assert set(by_segment) == {"prk", "zvezda"}
    prk_rate = float(by_segment["prk"][3].split("±")[0])
    zv_rate = float(by_segment["zvezda"][3].split("±")[0])
    assert prk_rate == pytest.approx(1.0, abs=0.05)
    assert abs(zv_rate) < 0.05
    assert by_segment["prk"][4].startswith("leaking")
    assert not by_segment["zvezda"][4].startswith("leaking")
    comparison = next(r for r in rows if r[0].startswith("prk-hatch closed"))
    assert comparison[-1] == "yes"


def test_figure_panels_have_units_and_mark_the_hatch(isolation, tmp_path):
    cfg = config.load(isolation["cfg"])
    data = report.collect(cfg.module, read_samples(isolation["csv"], cfg.sample_names()))
    fig = report.draw(data, cfg.module, "title", [str(tmp_path / "f.png")])
    labels = " ".join(ax.get_ylabel() for ax in fig.axes)
    for unit in ("kPa", "°C", "(kg)", "kg/day"):
        assert unit in labels, unit
    assert "(h)" in fig.axes[-1].get_xlabel()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "prk-hatch closed" in texts
    leak_axis = next(ax for ax in fig.axes if "kg/day" in ax.get_ylabel())
    legend = [t.get_text() for t in leak_axis.get_legend().get_texts()]
    assert any("0.5" in t and "caution" in t for t in legend) and any("0.9" in t and "warning" in t for t in legend)


# -- errors ------------------------------------------------------------------------------------


def test_config_error_is_exit_78_naming_the_file_and_key(tmp_path, isolation):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(ISOLATION_TOML.replace('segment = "prk"', 'segment = "nowhere"', 1), encoding="utf-8")
    code, out, err = run_cli(["report", "-c", str(cfg), isolation["csv"], "-o", str(tmp_path / "out")])
    assert code == EX_CONFIG
    assert str(cfg) in err and "sensor[0].segment" in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists()


def test_malformed_samples_are_exit_65_naming_the_line(tmp_path, isolation):
    with open(isolation["csv"], encoding="utf-8") as f:
        lines = f.read().splitlines()[:500]
    bad = next(i for i in range(300, 320) if ",pressure," in lines[i])
    lines[bad] = lines[bad].replace("pressure", "pressure,extra")
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(["report", "-c", isolation["cfg"], str(csv), "-o", str(tmp_path / "out")])
    assert code == EX_DATAERR
    assert f"{csv}:{bad + 1}:" in err and "4 fields" in err
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_samples_file_is_exit_66(tmp_path, isolation):
    code, _, err = run_cli(["report", "-c", isolation["cfg"], str(tmp_path / "absent.csv"), "-o", str(tmp_path)])
    assert code == EX_NOINPUT
    assert "absent.csv" in err and "not found" in err


def test_header_only_file_is_exit_65(tmp_path, isolation):
    csv = tmp_path / "empty.csv"
    csv.write_text("time,sensor,quantity,value\n", encoding="utf-8")
    code, _, err = run_cli(["report", "-c", isolation["cfg"], str(csv), "-o", str(tmp_path / "out")])
    assert code == EX_DATAERR
    assert str(csv) in err and "no samples" in err


def test_without_matplotlib_it_says_what_to_install(tmp_path, isolation, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, err = run_cli(["report", "-c", isolation["cfg"], isolation["csv"], "-o", str(tmp_path / "out")])
    assert code == EX_UNAVAILABLE
    assert len(err.strip().splitlines()) == 1 and "hullwatch[tools]" in err and "matplotlib" in err
    assert out == ""


# -- verdicts from the monitor's own answers ---------------------------------------------------


def one_segment(leak_kg_per_day: float, duration_s: float = 2400.0) -> report.Recording:
    """A steady leak in a 4 m³ segment with one pressure and one temperature sensor, collected."""
    module = Module({"prk": 4.0}, {}, set(), {"prk": constant(295.0)}, {"prk": constant(leak_kg_per_day)})
    sensors = [
        SensorModel("p1", "prk", Quantity.PRESSURE, 2.0, 0.01),
        SensorModel("t1", "prk", Quantity.TEMPERATURE, 0.002, 0.001),
    ]
    settings = ModuleSettings((Segment("prk", 4.0),), sensors=(SensorSpec("p1", "prk"), SensorSpec("t1", "prk")))
    return settings, report.collect(settings, simulate(module, sensors, duration_s, 1.0, seed=3))


def test_small_steady_leak_passes():
    settings, data = one_segment(0.1)
    verdict = report.judge(data, settings)
    assert verdict.outcome == "PASS", verdict.reasons
    assert "0.5" in verdict.reasons[0]  # judged against the caution limit


def test_leak_between_caution_and_warning_needs_attention():
    settings, data = one_segment(0.7)
    verdict = report.judge(data, settings)
    assert verdict.outcome == "ATTENTION", verdict.reasons
    assert any("caution" in r for r in verdict.reasons)
    assert not any(level == "FAIL" for level, _ in verdict.findings)


def test_collect_keeps_every_reading_in_bounded_buckets():
    settings, data = one_segment(0.1, duration_s=7200.0)
    pressure = data.series[("p1", "pressure")]
    assert pressure.count == 7200
    assert 1000 <= len(pressure.t) <= report.MAX_BUCKETS
    assert np.all(pressure.lo <= pressure.mean) and np.all(pressure.mean <= pressure.hi)
    assert data.periods[0].volume == "prk" and data.periods[0].estimates


def test_decimator_matches_numpy_and_stays_bounded():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.1, 1.9, 50_000))
    v = rng.normal(0.0, 1.0, len(t))
    d = report.Decimator(t[0], max_buckets=300)
    for chunk in np.array_split(np.arange(len(t)), 7):
        d.times.extend(t[chunk])
        d.values.extend(v[chunk])
        d.flush()
    out = d.result()
    assert out.count == len(t) and len(out.t) <= 300
    edges = np.floor((t - t[0]) / d.width).astype(int)
    for k in (0, len(out.t) // 2, len(out.t) - 1):
        members = edges == np.unique(edges)[k]
        assert out.mean[k] == pytest.approx(v[members].mean())
        assert out.lo[k] == v[members].min() and out.hi[k] == v[members].max()
        assert out.t[k] == pytest.approx(t[members].mean())


def test_best_estimate_is_the_longest_window_after_the_last_restart():
    def est(t, rate, window):
        return Estimate(t, "prk", rate, 0.01, 101000.0, 4.7, None, window)

    period = report.Period("prk", ("prk",), 0.0, "start of recording", end=10_000.0)
    period.estimates = [est(t, 0.45, min(t, 3600.0)) for t in range(100, 8000, 100)]
    period.estimates += [est(t, 1.0, t - 7900.0) for t in range(8000, 10_001, 100)]  # the fit restarted
    best = report.best_estimate(period)
    assert best.leak_kg_per_day == 1.0 and best.time == 10_000.0
    (change,) = report.rate_changes(period)
    assert change.before.leak_kg_per_day == 0.45 and change.after.leak_kg_per_day == 1.0
    assert change.located == pytest.approx(7900.0)


def test_attribution_needs_both_sides_of_a_hatch_change():
    change = HatchChange(100.0, "h", False, ("a", "b"))
    data = report.Recording(0.0, 200.0, 0, 0, {}, [], [change], [], [], [])
    assert report.attribution(data) == []


# -- progress --------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_one_rewritten_line_on_a_terminal():
    tty = Terminal()
    with Progress("reading x.csv", 1000, stream=tty, interval_s=0.0) as p:
        p.update(250, 10)
        p.update(1000, 40)
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert " 25.0 %" in text and "100.0 %" in text and "40 rows" in text


def test_progress_is_rate_limited():
    tty = Terminal()
    p = Progress("x", 100, stream=tty, interval_s=60.0)
    for i in range(1000):
        p.update(i, i)
    assert tty.getvalue().count("\r") == 1  # the first update only


def test_progress_writes_nothing_when_not_a_terminal():
    pipe = io.StringIO()
    with Progress("x", 100, stream=pipe, interval_s=0.0) as p:
        p.update(50, 5)
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("name", ["s.csv", "s.csv.gz"])
def test_open_positioned_reports_the_offset_on_disk(tmp_path, name):
    path = write_samples(tmp_path / name, stories.leak_step(duration_s=600.0).samples)
    size = os.path.getsize(path)
    with open_positioned(path) as (stream, position):
        assert position() == 0
        rows = list(read_samples(path, {"p1": {Quantity.PRESSURE}, "t1": {Quantity.TEMPERATURE}}, stream))
        assert position() == size
    assert len(rows) == 1200


# -- detection limits, sensor noise, level steps ---------------------------------------------

STEP_TOML = """\
[station]
name = "lab"

[[segment]]
name = "lab"
volume_m3 = 10.0

[[sensor]]
name = "p1"
segment = "lab"
driver = "simulated"

[[sensor]]
name = "p2"
segment = "lab"
driver = "simulated"

[[sensor]]
name = "p3"
segment = "lab"
driver = "simulated"

[[sensor]]
name = "t"
segment = "lab"
driver = "simulated"
"""
STEP_SIGMAS = {"p1": 1.0, "p2": 1.0, "p3": 5.0}  # white noise per 1 s reading (Pa)
STEP_AT_S, STEP_PA, STEP_DURATION_S = 1500.0, 40.0, 3000


@pytest.fixture(scope="module")
def rezeroed(tmp_path_factory):
    """A 10 m³ lab falling 0.01 Pa/s, three transducers of known white noise; p3 is re-zeroed by +40 Pa at 1500 s."""
    tmp = tmp_path_factory.mktemp("steps")
    rng = np.random.default_rng(5)
    t0 = 1_780_000_000.0
    samples = []
    for i in range(STEP_DURATION_S):
        for name, sigma in STEP_SIGMAS.items():
            offset = STEP_PA if name == "p3" and i >= STEP_AT_S else 0.0
            value = 101325.0 - 0.01 * i + rng.normal(0.0, sigma) + offset
            samples.append(Sample(t0 + i + 0.1, name, Quantity.PRESSURE, round(value, 2)))
        samples.append(Sample(t0 + i + 0.5, "t", Quantity.TEMPERATURE, 295.0))
    csv = write_samples(tmp / "lab.csv", samples)
    cfg = tmp / "lab.toml"
    cfg.write_text(STEP_TOML, encoding="utf-8")
    outdir = tmp / "out"
    code, out, err = run_cli(["report", "-c", str(cfg), csv, "-o", str(outdir)])
    assert code == EX_OK, err
    monitor = Monitor(config.load(str(cfg)).module)
    events = list(run_monitor(monitor, samples))
    md = (outdir / "report.md").read_text(encoding="utf-8")
    return {"dir": outdir, "md": md, "out": out, "events": events, "limits": monitor.detection_limits()}


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in a text (no header, no rule)."""
    lines = text.splitlines()
    body = [
        line
        for i, line in enumerate(lines)
        if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))
    ]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body]


def test_isolation_report_has_the_new_sections(isolation):
    md = (isolation["dir"] / "report.md").read_text(encoding="utf-8")
    section(md, "Detection limits")
    section(md, "Pressure sensor noise")
    assert "](allan.png)" in md
    assert "### Level steps" in section(md, "Alarms")


def test_detection_limits_are_the_monitors_own_at_the_end(rezeroed):
    text = section(rezeroed["md"], "Detection limits")
    assert "3σ" in text
    (row,) = [r for r in table_rows(text) if r[0] == "lab"]
    limits = rezeroed["limits"]["lab"]
    figures = [float(cell.rstrip("*")) for cell in row[2:5]]
    assert figures == [float(report._two_digits(limits[w])) for w in (600.0, 3600.0, 86400.0)]
    assert figures[0] > figures[1] > figures[2] > 0.0
    # 50 min of data: the 1 h and 24 h figures extrapolate, and the report says so
    assert not row[2].endswith("*") and row[3].endswith("*") and row[4].endswith("*")
    assert "extrapolates from the measured noise and correlation" in text


def test_noise_table_gives_each_sensors_known_white_noise(rezeroed):
    text = section(rezeroed["md"], "Pressure sensor noise")
    rows = {r[0]: r for r in table_rows(text)}
    assert set(rows) == {"p1", "p2", "p3"}
    for name, sigma in STEP_SIGMAS.items():
        sensor, segment, readings, interval, white, tau1, tau10, tau100, tau1000 = rows[name]
        assert segment == "lab" and readings == f"{STEP_DURATION_S:,}" and float(interval) == pytest.approx(1.0)
        assert float(white) == pytest.approx(sigma, rel=0.1)
        assert float(tau1) == float(white)
        if name != "p3":  # p3's 40 Pa step shows from τ = 10 s up; the others are white throughout
            assert float(tau10) == pytest.approx(sigma / np.sqrt(10.0), rel=0.15)
            assert float(tau100) == pytest.approx(sigma / np.sqrt(100.0), rel=0.35)
        assert float(tau1000) > 0.0  # three 1000 s averages fit 3000 s just once: a rough figure
    assert "](allan.png)" in text


def test_noise_plot_is_a_png(rezeroed):
    data = (rezeroed["dir"] / "allan.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert "allan.png" in rezeroed["out"]


def test_a_rezeroed_sensor_is_a_level_step_in_the_alarm_section(rezeroed):
    steps = [e for e in rezeroed["events"] if isinstance(e, LevelStep)]
    text = section(rezeroed["md"], "Alarms").split("### Level steps", 1)[1]
    rows = table_rows(text)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (present.utc(s.time), s.volume, s.sensor or "— (the volume's fit)") for s in steps
    ]
    assert any(r[2:4] == ["lab", "p3"] and float(r[4]) == pytest.approx(STEP_PA, abs=4.0) for r in rows), rows


def test_a_period_a_hatch_ended_has_the_limits_from_just_before_it(isolation):
    cfg = config.load(isolation["cfg"])
    monitor = Monitor(cfg.module)
    for sample in read_samples(isolation["csv"], cfg.sample_names()):
        if sample.quantity is Quantity.HATCH and sample.value == 0.0:
            break
        monitor.feed(sample)
    joined = monitor.detection_limits()["prk-zvezda"]
    rows = {
        r[0]: r for r in table_rows(section((isolation["dir"] / "report.md").read_text("utf-8"), "Detection limits"))
    }
    assert set(rows) == {"prk-zvezda", "prk", "zvezda"}
    assert [float(c.rstrip("*")) for c in rows["prk-zvezda"][2:5]] == [
        float(report._two_digits(joined[w])) for w in (600.0, 3600.0, 86400.0)
    ]
    # the same sensors see a leak in the 4 m³ PrK alone far sooner than in the 79 m³ joined volume
    assert float(rows["prk"][2]) < float(rows["prk-zvezda"][2]) / 5


def test_draw_noise_is_log_log_and_says_what_it_shows(rezeroed, tmp_path):
    settings = ModuleSettings((Segment("lab", 10.0),), sensors=(SensorSpec("p1", "lab"),))
    rng = np.random.default_rng(2)
    t = np.arange(5000.0)
    noise = [report.SensorNoise("p1", "lab", 5000, 1.0, *report.hadamard_deviation(t, rng.normal(0.0, 1.0, 5000)))]
    fig = report.draw_noise(noise, settings, "title", str(tmp_path / "a.png"))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "Hadamard" in ax.get_ylabel() and "(Pa)" in ax.get_ylabel() and "τ (s)" in ax.get_xlabel()
    assert "linear drift" in ax.get_title()
    assert (tmp_path / "a.png").stat().st_size > 10_000


# -- the Hadamard deviation on known truth -----------------------------------------------------


def test_white_noise_falls_as_one_over_root_tau_whatever_the_spacing_and_drift():
    """σ = 2 Pa every 0.5 s (jittered): σ/√(τ/dt), and a linear drift (a leak) changes nothing."""
    rng = np.random.default_rng(11)
    n, dt, sigma = 200_000, 0.5, 2.0
    t = np.arange(n) * dt + rng.uniform(-0.05, 0.05, n)
    y = 101325.0 + rng.normal(0.0, sigma, n)
    taus, dev = report.hadamard_deviation(t, y, [0.5, 5.0, 50.0, 500.0])
    assert taus == pytest.approx([0.5, 5.0, 50.0, 500.0], rel=1e-3)
    assert dev == pytest.approx(sigma / np.sqrt(taus / dt), rel=0.1)
    _, drifted = report.hadamard_deviation(t, y - 0.02 * t, taus)
    assert drifted == pytest.approx(dev, rel=1e-3)  # 2,000 Pa of drift over the record


def test_random_walk_grows_as_root_tau():
    rng = np.random.default_rng(12)
    y = np.cumsum(rng.normal(0.0, 1.0, 200_000))
    taus, dev = report.hadamard_deviation(np.arange(len(y), dtype=float), y)
    long = (taus >= 10.0) & (taus <= 2000.0)
    slope = np.polyfit(np.log(taus[long]), np.log(dev[long]), 1)[0]
    assert slope == pytest.approx(0.5, abs=0.08)
    assert taus.max() <= len(y) / 3


def test_breaks_and_gaps_keep_runs_inside_one_stretch():
    """A slope that changes at 50,000 s inflates the long τ unless the series is split there; a gap is skipped."""
    rng = np.random.default_rng(13)
    t = np.arange(100_000, dtype=float)
    y = rng.normal(0.0, 1.0, len(t)) - np.where(t < 50_000, 0.0, 0.01 * (t - 50_000))
    keep = (t < 20_000) | (t >= 20_500)  # a silent sensor for 500 s
    taus, whole = report.hadamard_deviation(t[keep], y[keep], [1000.0])
    _, split = report.hadamard_deviation(t[keep], y[keep], [1000.0], breaks=[50_000.0])
    assert whole[0] > 2.0 * split[0]
    assert split[0] == pytest.approx(1.0 / np.sqrt(1000.0), rel=0.15)
    assert report.hadamard_deviation(t[:2], y[:2]) == (pytest.approx([]), pytest.approx([]))


def test_fine_series_averages_onto_the_interval_and_stays_bounded():
    rng = np.random.default_rng(14)
    t = np.arange(100_000) * 0.1 + rng.uniform(-0.01, 0.01, 100_000)
    v = 101325.0 + rng.normal(0.0, 1.0, len(t))
    fine = report.FineSeries(max_bins=20_000)
    for chunk in np.array_split(np.arange(len(t)), 9):
        fine.add(t[chunk], v[chunk])
    grid_t, grid_v = fine.result()
    assert fine.interval == pytest.approx(0.1, rel=0.01)
    assert fine.width == pytest.approx(0.8, rel=0.01)  # 10,000 s at 0.1 s, halved three times to fit 20,000 cells
    assert len(grid_t) <= 20_000 and np.all(np.diff(grid_t) > 0)
    for k in (0, 5000, len(grid_t) - 1):  # each cell's mean is that of the readings inside it
        inside = np.abs(t - grid_t[k]) < fine.width / 2
        assert grid_v[k] == pytest.approx(v[inside].mean(), abs=1e-9)
    taus, dev = report.hadamard_deviation(grid_t, grid_v, [0.8, 8.0, 80.0], dt=fine.width)
    assert dev == pytest.approx(1.0 / np.sqrt(taus / 0.1), rel=0.1)

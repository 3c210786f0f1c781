"""The `hullwatch` command (ICD §1): exit codes, messages, and `analyze` output (ICD §4)."""

import gzip
import json
import math
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_rig import station
from hullwatch.cli import main

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CONFIG = 0, 64, 65, 66, 78
T0 = 1780000000.0
ESTIMATE_KEYS = {
    "type",
    "time",
    "volume",
    "leak_kg_per_day",
    "leak_kg_per_day_sigma",
    "pressure_pa",
    "mass_kg",
    "reserve_time_s",
}

# two volumes while the hatch is closed; every sensor reports pressure and temperature
ANALYZE_TOML = """\
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
initial = "closed"

[[sensor]]
name = "p_prk"
segment = "prk"
driver = "simulated"

[[sensor]]
name = "p_zv"
segment = "zvezda"
driver = "simulated"
"""


def run(capsys, argv):
    """(exit code, stdout, stderr) of main(argv), usage errors included."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors and --version leave through sys.exit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def write_samples(path: Path, seconds: int = 300, seed: int = 7, sensors=("p_prk", "p_zv")) -> Path:
    """1 Hz of steady air at ~101325 Pa (noise of a few Pa) and 295 K."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("time,sensor,quantity,value\n")
        for i in range(seconds):
            t = T0 + i
            for name in sensors:
                f.write(f"{t:.3f},{name},temperature,{295.0 + rng.gauss(0, 0.01):.4f}\n")
                f.write(f"{t:.3f},{name},pressure,{101325.0 + rng.gauss(0, 2.0):.2f}\n")
    return path


def jsonl(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]


def check_analysis(objs: list[dict], volumes: set[str], first: float, last: float, interval: float = 10.0) -> None:
    times = [o["time"] for o in objs]
    assert times == sorted(times), "objects out of time order"
    by_volume = defaultdict(list)
    for o in objs:
        assert o["type"] in {"estimate", "alarm", "hatch"}, o
        if o["type"] == "estimate":
            assert o.keys() >= ESTIMATE_KEYS, o
            assert isinstance(o["time"], float)
            assert math.isclose(o["pressure_pa"], 101325.0, abs_tol=20.0), o
            assert o["mass_kg"] > 0
            by_volume[o["volume"]].append(o["time"])
    assert set(by_volume) == volumes
    span = last - first
    for vid, ts in by_volume.items():
        assert len(ts) >= int(span // interval), (vid, len(ts))
        # at least one estimate per volume in every report interval of data
        gaps = [b - a for a, b in zip([first, *ts], [*ts, last], strict=True)]
        assert max(gaps) <= interval + 1e-6, (vid, max(gaps))


# -- check-config ------------------------------------------------------------------------


def test_check_config_good_file_summarises_it(capsys, write_file, two_segment_toml):
    path = write_file(two_segment_toml)
    code, out, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_OK, err
    assert path in out
    for word in ("segment", "volume", "sensor", "prk", "zvezda", "prk-zvezda", "p_prk", "t_prk", "prk-hatch"):
        assert word in out, word
    for threshold in ("0.5", "0.9", "9.19", "95000", "65300", "86400", "3600", "600"):
        assert threshold in out, threshold
    assert "Traceback" not in out + err


def test_check_config_unknown_segment(capsys, write_file, minimal_toml):
    path = write_file(minimal_toml.replace('segment = "prk"', 'segment = "nowhere"'))
    code, out, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_CONFIG
    lines = err.strip().splitlines()
    assert any(path in line and "sensor[0].segment" in line and "'nowhere'" in line for line in lines), err
    assert "Traceback" not in err
    assert "OK" not in out


def test_check_config_reports_driver_options(capsys, write_file, minimal_toml):
    pytest.importorskip("hullwatch.sensors.presets")
    serial = 'driver = "serial"\nport = "/dev/ttyUSB0"\nline_regex = \'(?P<pressure>[0-9.]+)\'\n'
    text = minimal_toml.replace('driver = "simulated"\n', serial + 'units = { pressure = "furlongs" }\n')
    path = write_file(text)
    code, _, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_CONFIG
    assert f"{path}: sensor[0].units" in err
    assert "furlongs" in err
    assert "Traceback" not in err


def test_check_config_toml_syntax_error(capsys, write_file):
    path = write_file('[station]\nname = "x"\n[[segment\n')
    code, _, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_CONFIG
    assert path in err and "line 3" in err
    assert "Traceback" not in err


def test_check_config_missing_file(capsys, tmp_path):
    path = str(tmp_path / "absent.toml")
    code, out, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_CONFIG
    assert path in err and "not found" in err
    assert "Traceback" not in err
    assert out == ""


def test_config_directory_instead_of_file(capsys, tmp_path):
    code, _, err = run(capsys, ["check-config", "-c", str(tmp_path)])
    assert code == EX_CONFIG
    assert str(tmp_path) in err
    assert "Traceback" not in err


def test_hullwatch_config_env_var_is_used_without_c(capsys, monkeypatch, write_file, minimal_toml):
    path = write_file(minimal_toml)
    monkeypatch.setenv("HULLWATCH_CONFIG", path)
    code, out, err = run(capsys, ["check-config"])
    assert code == EX_OK, err
    assert path in out


def test_hullwatch_config_env_var_missing_file(capsys, monkeypatch, tmp_path):
    path = str(tmp_path / "from-env.toml")
    monkeypatch.setenv("HULLWATCH_CONFIG", path)
    code, _, err = run(capsys, ["check-config"])
    assert code == EX_CONFIG
    assert path in err


def test_c_wins_over_the_env_var(capsys, monkeypatch, write_file, minimal_toml, tmp_path):
    path = write_file(minimal_toml)
    monkeypatch.setenv("HULLWATCH_CONFIG", str(tmp_path / "absent.toml"))
    code, out, err = run(capsys, ["check-config", "-c", path])
    assert code == EX_OK, err
    assert path in out


def test_default_path_without_c_or_env(capsys, monkeypatch):
    monkeypatch.delenv("HULLWATCH_CONFIG", raising=False)
    if Path("/etc/hullwatch/hullwatch.toml").exists():
        pytest.skip("this machine has a system configuration")
    code, _, err = run(capsys, ["check-config"])
    assert code == EX_CONFIG
    assert "/etc/hullwatch/hullwatch.toml" in err


# -- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["analyze"],
        ["analyze", "-c", "x.toml"],  # no samples file
        ["analyze", "samples.csv"],  # no -c
        ["check-config", "--bogus"],
        ["analyze", "-c", "x.toml", "samples.csv", "extra.csv"],
    ],
    ids=["nothing", "unknown command", "analyze bare", "no samples", "no -c", "unknown option", "extra argument"],
)
def test_usage_errors_exit_64(capsys, argv):
    code, _, err = run(capsys, argv)
    assert code == EX_USAGE
    assert "usage:" in err
    assert "Traceback" not in err


def test_version(capsys):
    code, out, _ = run(capsys, ["--version"])
    assert code == EX_OK
    assert out.startswith("hullwatch ")


# -- analyze -------------------------------------------------------------------------------


def test_analyze_missing_samples_file(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = str(tmp_path / "absent.csv")
    code, _, err = run(capsys, ["analyze", "-c", cfg, samples])
    assert code == EX_NOINPUT
    assert samples in err
    assert "Traceback" not in err


def test_analyze_bad_value_on_line_3(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = tmp_path / "bad.csv"
    samples.write_text("time,sensor,quantity,value\n1780000000,p_prk,pressure,101325\n1780000001,p_prk,pressure,abc\n")
    code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples), "-o", str(tmp_path / "out.jsonl")])
    assert code == EX_DATAERR
    assert f"{samples}:3:" in err
    assert "Traceback" not in err


def test_analyze_unknown_name_is_data_error(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = tmp_path / "bad.csv"
    samples.write_text("time,sensor,quantity,value\n1780000000,p_xyz,pressure,101325\n")
    code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code == EX_DATAERR
    assert f"{samples}:2:" in err and "p_xyz" in err


def test_analyze_config_error_comes_first(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML.replace('segment = "prk"', 'segment = "attic"'))
    samples = write_samples(tmp_path / "s.csv", seconds=5)
    code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code == EX_CONFIG
    assert "sensor[0].segment" in err


def test_analyze_writes_json_lines_to_a_file(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=300)
    out = tmp_path / "out.jsonl"
    code, stdout, err = run(capsys, ["analyze", "-c", cfg, str(samples), "-o", str(out)])
    assert code == EX_OK, err
    assert stdout == ""
    objs = jsonl(out.read_text(encoding="utf-8"))
    check_analysis(objs, {"prk", "zvezda"}, T0, T0 + 299)
    assert not [o for o in objs if o["type"] == "alarm" and o["state"] == "active"], "alarm on steady air"


def test_analyze_summary_gives_the_detection_limits(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=600)
    code, stdout, err = run(capsys, ["analyze", "--summary", "-c", cfg, str(samples)])
    assert code == EX_OK, err
    limits = [line for line in stdout.splitlines() if "smallest leak confirmed" in line]
    assert len(limits) == 2 and all("in 10 min" in line and ", 1 h " in line and ", 24 h " in line for line in limits)


def test_analyze_writes_to_stdout_without_o(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=120)
    code, stdout, err = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code == EX_OK, err
    check_analysis(jsonl(stdout), {"prk", "zvezda"}, T0, T0 + 119)


def test_analyze_gzip_samples_and_open_hatch(capsys, write_file, tmp_path):
    import gzip

    cfg = write_file(ANALYZE_TOML.replace('initial = "closed"', 'initial = "open"'))
    plain = write_samples(tmp_path / "s.csv", seconds=60)
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    code, stdout, err = run(capsys, ["analyze", "-c", cfg, str(gz)])
    assert code == EX_OK, err
    check_analysis(jsonl(stdout), {"prk-zvezda"}, T0, T0 + 59)


def test_analyze_is_deterministic(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=60)
    code_a, a, _ = run(capsys, ["analyze", "-c", cfg, str(samples)])
    code_b, b, _ = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code_a == code_b == EX_OK
    assert a == b and a


# -- the installed entry points -----------------------------------------------------------


def test_console_entry_points(write_file, minimal_toml, tmp_path):
    good = write_file(minimal_toml)
    bad = write_file(minimal_toml.replace('segment = "prk"', 'segment = "nowhere"'), "bad.toml")
    commands = [[sys.executable, "-m", "hullwatch"]]
    script = Path(sys.executable).parent / "hullwatch"
    if script.exists():
        commands.append([str(script)])
    for cmd in commands:
        ok = subprocess.run([*cmd, "check-config", "-c", good], capture_output=True, text=True, timeout=60)
        assert ok.returncode == EX_OK, (cmd, ok.stderr)
        assert good in ok.stdout
        ko = subprocess.run([*cmd, "check-config", "-c", bad], capture_output=True, text=True, timeout=60)
        assert ko.returncode == EX_CONFIG, (cmd, ko.stderr)
        assert "sensor[0].segment" in ko.stderr and "Traceback" not in ko.stderr
        usage = subprocess.run([*cmd, "frobnicate"], capture_output=True, text=True, timeout=60)
        assert usage.returncode == EX_USAGE, (cmd, usage.stderr)


# -- garbage in: a one-line error and the right exit code, never a traceback --------------------

EX_SOFTWARE, EX_CANTCREAT, EX_IOERR = 70, 73, 74


def one_line(err: str) -> str:
    """The single line of stderr (progress or notices aside), checked to be no traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [x for x in err.splitlines() if x.strip() and " notice: " not in x]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("rows", "line", "fragment"),
    [
        ("1e300,p_prk,pressure,101325\n", 3, "'1e300'"),
        ("inf,p_prk,pressure,101325\n", 3, "'inf'"),
        ("nan,p_prk,pressure,101325\n", 3, "'nan'"),
        ("1780000001,p_prk,pressure,10", 3, "no line end"),  # a write cut short
        ("1780000001,p_prk,pres", 3, "no line end"),
    ],
    ids=["time 1e300", "time inf", "time nan", "half a number at the end", "half a row at the end"],
)
def test_analyze_bad_row_is_exit_65_naming_the_line(capsys, write_file, tmp_path, rows, line, fragment):
    cfg = write_file(ANALYZE_TOML)
    samples = tmp_path / "s.csv"
    samples.write_text("time,sensor,quantity,value\n1780000000,p_prk,pressure,101325\n" + rows, newline="")
    code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code == EX_DATAERR
    message = one_line(err)
    assert message.startswith(f"{samples}:{line}: ") and fragment in message


@pytest.mark.parametrize(
    "damage",
    [lambda z: z[: len(z) // 2], lambda z: z[:300] + b"\xff" * 64 + z[364:], lambda z: b"plain text, not gzip\n"],
    ids=["truncated", "corrupt", "not gzip"],
)
def test_analyze_damaged_gzip_is_bad_data_not_a_missing_file(capsys, write_file, tmp_path, damage):
    cfg = write_file(ANALYZE_TOML)
    good = write_samples(tmp_path / "s.csv", seconds=300)
    samples = tmp_path / "s.csv.gz"
    samples.write_bytes(damage(gzip.compress(good.read_bytes())))
    code, out, err = run(capsys, ["analyze", "-c", cfg, str(samples)])
    assert code == EX_DATAERR
    message = one_line(err)
    assert message.startswith(f"{samples}:") and "gzip" in message


def test_analyze_refuses_to_overwrite_its_own_samples(capsys, write_file, tmp_path):
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=30)
    before = samples.read_bytes()
    link = tmp_path / "same.csv"
    link.symlink_to(samples)
    for out in (samples, link):
        code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples), "-o", str(out)])
        assert code == EX_USAGE
        assert "destroy" in one_line(err)
    assert samples.read_bytes() == before


@pytest.mark.parametrize("target", ["dir", "/dev/full"], ids=["a directory", "a full disk"])
def test_analyze_output_that_cannot_be_written(capsys, write_file, tmp_path, target):
    if target == "/dev/full" and not Path(target).exists():
        pytest.skip("no /dev/full here")
    out = str(tmp_path) if target == "dir" else target
    cfg = write_file(ANALYZE_TOML)
    samples = write_samples(tmp_path / "s.csv", seconds=30)
    code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples), "-o", out])
    assert code == EX_CANTCREAT
    assert one_line(err).startswith(f"{out}: cannot write: ")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"a = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
        (bytes(range(256)) * 16, "not UTF-8"),
        (gzip.compress(b"[station]\nname = 'x'\n"), "UTF-8"),
    ],
    ids=["deeply nested", "binary", "gzipped"],
)
@pytest.mark.parametrize("command", ["check-config", "run", "bridge"])
def test_a_file_that_is_no_config_is_one_line_and_exit_78(capsys, tmp_path, data, fragment, command):
    path = tmp_path / "hullwatch.toml"
    path.write_bytes(data)
    code, out, err = run(capsys, [command, "-c", str(path)])
    assert code == EX_CONFIG
    message = one_line(err)
    assert message.startswith(f"{path}: ") and fragment in message


STATION = station("bench", "/dev/null-not-there")
MODBUS = '\n[[sensor]]\nname = "m"\nsegment = "lab"\ndriver = "modbus"\nport = "loop://"\nslave = 1\n{}\n'
MODBUS += 'registers = [{{ quantity = "pressure", address = 0 }}]\n'
SERIAL = '\n[[sensor]]\nname = "s"\nsegment = "lab"\ndriver = "serial"\nport = "loop://"\npoll = "P"\n{}\n'
GPIO_CLASH = ANALYZE_TOML + "\n[annunciator]\nbuzzer_gpio = 18\nled_gpio = 18\n"
SERIAL_URL = ANALYZE_TOML + '\n[[sensor]]\nname = "p3"\nsegment = "prk"\ndriver = "serial"\nport = "bogus://x"\n'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GPIO_CLASH, "annunciator.led_gpio"),
        (SERIAL_URL, "sensor[2].port"),
        (ANALYZE_TOML + "\n[alarms.reserve_time]\nminimum_pa = 0\n", "alarms.reserve_time.minimum_pa"),
        (ANALYZE_TOML + '\n[spool]\npath = ""\n', "spool.path"),
        (ANALYZE_TOML + '\n[mqtt]\ntopic_prefix = "lab/#"\n', "mqtt.topic_prefix"),
        (ANALYZE_TOML + "\n[mqtt]\nkeepalive_s = 70000\n", "mqtt.keepalive_s"),
        (ANALYZE_TOML + '\n[influxdb]\nurl = "not a url"\nbucket = "b"\n', "influxdb.url"),
        (STATION + MODBUS.format("interval_s = 1e300"), "sensor[1].interval_s"),
        (STATION + MODBUS.format("timeout_s = 86400"), "sensor[1].timeout_s"),
        (STATION + SERIAL.format("interval_s = 1e12"), "sensor[1].interval_s"),
        (STATION + SERIAL.format("max_rate_hz = 0"), "sensor[1].max_rate_hz"),
        (ANALYZE_TOML + "\n[alarms.sensor]\nstale_after_s = 1e9\n", "alarms.sensor.stale_after_s"),
        (ANALYZE_TOML + "\n[leak]\nreport_interval_s = 1e9\n", "leak.report_interval_s"),
        (ANALYZE_TOML + "\n[alarms]\nmax_shelve_s = 1e9\n", "alarms.max_shelve_s"),
    ],
    ids=[
        "gpio clash",
        "serial url",
        "minimum_pa 0",
        "spool path empty",
        "wildcard prefix",
        "keepalive",
        "url",
        "modbus interval",
        "modbus timeout",
        "serial interval",
        "serial rate",
        "stale after",
        "report interval",
        "max shelve",
    ],  # fmt: skip
)
def test_check_config_and_run_refuse_alike(capsys, write_file, text, key):
    """What `run` would trip over later is a configuration error for both, before anything starts."""
    path = write_file(text)
    for command in ("check-config", "run"):
        code, out, err = run(capsys, [command, "-c", path])
        assert code == EX_CONFIG, (command, err)
        assert one_line(err).startswith(f"{path}: {key}: "), (command, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--speed", "0"],
        ["demo", "--speed", "nan"],
        ["demo", "--speed", "-3"],
        ["simulate", "--scenario", "x.toml", "--speed", "inf"],
    ],
    ids=["demo 0", "demo nan", "demo negative", "simulate inf"],
)
def test_speed_must_be_a_positive_number(capsys, argv):
    code, _, err = run(capsys, argv)
    assert code == EX_USAGE
    assert "--speed" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("data", "code"),
    [(bytes(range(256)) * 8, EX_DATAERR), (b"a = " + b"[" * 50_000 + b"]" * 50_000, EX_DATAERR), (None, EX_NOINPUT)],
    ids=["binary", "deeply nested", "a directory"],
)
def test_simulate_with_a_scenario_that_is_none(capsys, tmp_path, data, code):
    path = tmp_path / "scenario.toml"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    got, _, err = run(capsys, ["simulate", "--scenario", str(path)])
    assert got == code
    assert one_line(err).startswith(f"{path}: ")


def test_an_internal_error_is_one_line_and_exit_70(capsys, monkeypatch, write_file, minimal_toml):
    def broken(_args):
        return {}["no such key"]

    monkeypatch.setattr("hullwatch.cli.cmd_check_config", broken)
    code, out, err = run(capsys, ["check-config", "-c", write_file(minimal_toml)])
    assert code == EX_SOFTWARE
    (line,) = err.splitlines()
    assert line.startswith("hullwatch check-config: internal error: KeyError: 'no such key' (at test_cli.py:")


def test_stdout_on_a_full_disk_is_an_io_error(write_file, minimal_toml):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "hullwatch", "check-config", "-c", write_file(minimal_toml)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == EX_IOERR
    assert "No space left on device" in one_line(done.stderr)


# A sweep: garbage into the commands that read files; only their own exit codes come out.

GOOD_SAMPLES = "time,sensor,quantity,value\n" + "".join(
    f"{T0 + i},p_prk,pressure,{101325 - i}\n{T0 + i},p_zv,temperature,295\n{T0 + i},prk-hatch,hatch,{i % 2}\n"
    for i in range(20)
)
SWEEP_TOML = ANALYZE_TOML.replace('initial = "closed"', 'initial = "closed"\ngpio = 17')


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """data with a few random cuts, flips and insertions."""
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["cut", "flip", "insert", "truncate"]))
        if kind == "cut":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif kind == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=20)) + data[at:]
        else:
            data = data[:at]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sweep_garbage_configs(capsys, tmp_path, data):
    text = data.draw(
        st.one_of(
            damaged(SWEEP_TOML.encode()),
            st.binary(max_size=200),
            st.text(max_size=200).map(str.encode),
        )
    )
    path = tmp_path / "garbage.toml"
    path.write_bytes(text)
    samples = tmp_path / "s.csv"
    samples.write_text(GOOD_SAMPLES)
    for argv in (["check-config", "-c", str(path)], ["analyze", "-c", str(path), str(samples)]):
        code, _, err = run(capsys, argv)
        assert code in (EX_OK, EX_DATAERR, EX_CONFIG), (argv, err)
        assert "Traceback" not in err and "internal error" not in err, err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), gz=st.booleans())
def test_sweep_garbage_samples(capsys, write_file, tmp_path, data, gz):
    cfg = write_file(ANALYZE_TOML)
    raw = GOOD_SAMPLES.encode()
    if gz:
        raw = gzip.compress(raw)
    raw = data.draw(st.one_of(damaged(raw), st.binary(max_size=300)))
    samples = tmp_path / ("s.csv.gz" if gz else "s.csv")
    samples.write_bytes(raw)
    for extra in ([], ["--summary"]):
        code, _, err = run(capsys, ["analyze", "-c", cfg, str(samples), *extra])
        assert code in (EX_OK, EX_DATAERR), err
        assert "Traceback" not in err and "internal error" not in err, err
        if code == EX_DATAERR:
            assert one_line(err).startswith(f"{samples}:")


# -- check-config builds what `run` builds: what run refuses, check-config refuses ------------------------------------


SIMULATED = (
    '[station]\nname = "x"\n[[segment]]\nname = "lab"\nvolume_m3 = 1.0\n[[sensor]]\nname = "p"\nsegment = "lab"\n'
)
SIMULATED += 'driver = "simulated"\n'
REFUSED = [
    ("password file missing", '[mqtt]\nusername = "u"\npassword_file = "{tmp}/none"\n', "mqtt.password_file"),
    ("password file a directory", '[mqtt]\nusername = "u"\npassword_file = "{tmp}"\n', "mqtt.password_file"),
    ("TLS CA missing", '[mqtt]\n[mqtt.tls]\nca_file = "{tmp}/none.crt"\n', "mqtt.tls"),
    ("TLS key no key", '[mqtt]\n[mqtt.tls]\ncert_file = "{tmp}/secret"\nkey_file = "{tmp}/secret"\n', "mqtt.tls"),
    ("influx token missing", '[influxdb]\nbucket = "b"\ntoken_file = "{tmp}/none"\n', "influxdb.token_file"),
    (
        "influx password missing",
        '[influxdb]\napi = "v1"\ndatabase = "d"\nusername = "u"\npassword_file = "{tmp}/none"\n',
        "influxdb.password_file",
    ),
    ("two outputs on one pin", "[annunciator]\nbuzzer_gpio = 18\nled_gpio = 18\n", "annunciator.led_gpio"),
    ("no GPIO library", "[annunciator]\n", "annunciator"),
    ("spool under a file", '[mqtt]\n[spool]\npath = "{tmp}/secret/s.sqlite"\n', "spool.path"),
    ("spool a directory", '[mqtt]\n[spool]\npath = "{tmp}"\n', "spool.path"),
    ("spool dir read-only", '[mqtt]\n[spool]\npath = "{ro}/s.sqlite"\n', "spool.path"),
    ("spool dir to make read-only", '[mqtt]\n[spool]\npath = "{ro}/state/s.sqlite"\n', "spool.path"),
    ("recorder under a file", '[recorder]\npath = "{tmp}/secret/x.csv"\n', "recorder.path"),
    ("recorder dir read-only", '[recorder]\npath = "{ro}/x.csv"\n', "recorder.path"),
    ("recorder gzip", '[recorder]\npath = "{tmp}/x.csv.gz"\n', "recorder.path"),
    ("modbus interval", MODBUS.format("interval_s = 1e300").replace("{", "{{").replace("}", "}}"), "sensor[1]"),
    ("scenario missing", SIMULATED + '[simulation]\nscenario = "{tmp}/none.toml"\n', "simulation"),
]


@pytest.mark.parametrize(("case", "extra", "key"), REFUSED, ids=[c[0] for c in REFUSED])
def test_check_config_refuses_what_run_refuses_naming_the_key(capsys, monkeypatch, tmp_path, case, extra, key):
    from gpiozero import Device

    if "{ro}" in extra:
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
    (tmp_path / "secret").write_text("not a key, not a certificate\n")
    path = tmp_path / "hullwatch.toml"
    text = extra.format(tmp=tmp_path, ro=tmp_path / "ro")
    path.write_text(text if text.startswith("[station]") else station("bench", "/dev/null-not-there", extra=text))
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    if case == "no GPIO library":
        env.pop("GPIOZERO_PIN_FACTORY")
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setattr(os, "environ", env)
    try:
        code, out, err = run(capsys, ["check-config", "-c", str(path)])
        ran = subprocess.run(
            [sys.executable, "-m", "hullwatch", "run", "-c", str(path)], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True, check=False)
    assert ran.returncode == EX_CONFIG and f"{path}: {key}" in ran.stderr, ran.stderr  # run refuses it ...
    assert code == EX_CONFIG and not out, err  # ... and so does check-config, in one line naming the key
    assert one_line(err).startswith(f"{path}: {key}"), err


def test_check_config_passes_a_config_run_takes_and_notes_what_it_cannot_see(capsys, monkeypatch, tmp_path):
    """Secrets, TLS, both sinks, recorder, spool and annunciator: all good. Credentials that exist only
    inside the service are noted, not refused; an empty client key is the unit's fallback that `run` takes."""
    from gpiozero import Device

    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "empty.key").write_text("\n")
    extra = (
        f'[mqtt]\nusername = "u"\npassword_file = "{tmp_path}/password"\n'
        f'[mqtt.tls]\ncert_file = "{tmp_path}/token"\nkey_file = "{tmp_path}/empty.key"\n'
        f'[influxdb]\nbucket = "b"\ntoken_file = "/run/credentials/hullwatch.service/influx-token"\n'
        f'[recorder]\npath = "{tmp_path}/rec/samples.csv"\n[spool]\npath = "{tmp_path}/state/s.sqlite"\n'
        "[annunciator]\n"
    )
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("bench", "/dev/null-not-there", extra=extra))
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    code, out, err = run(capsys, ["check-config", "-c", str(path)])
    assert code == EX_OK, err
    assert out.startswith(f"{path}: OK")
    assert f"note: {path}: influxdb.token_file: /run/credentials/hullwatch.service/influx-token exists only" in out
    assert f"note: {path}: mqtt.tls.key_file: {tmp_path}/empty.key is empty" in out  # the fallback run takes
    assert "without a client certificate" in out and not err
    assert Device.pin_factory is None, "nothing taken: the pin library was opened and closed again"
    assert not (tmp_path / "state").exists() and not (tmp_path / "rec").exists(), "nothing made"


def test_check_config_says_a_damaged_spool_will_be_moved_aside_and_a_held_one_is_in_use(capsys, tmp_path):
    from hullwatch.sinks.spool import Spool

    spool = tmp_path / "s.sqlite"
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("bench", "/dev/null-not-there", extra=f'[mqtt]\n[spool]\npath = "{spool}"\n'))
    spool.write_bytes(b"\0" * 8192)  # a zeroed header, as after a power cut on an SD card
    code, out, err = run(capsys, ["check-config", "-c", str(path)])
    assert code == EX_OK, err
    assert f"note: {path}: spool.path: {spool} is damaged" in out and "will move it aside" in out
    assert spool.read_bytes() == b"\0" * 8192 and sorted(p.name for p in tmp_path.iterdir()) == [
        "hullwatch.toml",
        "s.sqlite",
    ], "looked at, not touched"
    spool.unlink()
    holder = Spool(str(spool))
    try:
        code, out, err = run(capsys, ["check-config", "-c", str(path)])
        assert code == EX_OK and f"spool.path: {spool} is held by a running hullwatch" in out, (out, err)
    finally:
        holder.close()
    code, out, err = run(capsys, ["check-config", "-c", str(path)])
    assert code == EX_OK and "spool.path" not in out, out

"""The configuration file (ICD §2): defaults, volumes, and one clear line per problem."""

from pathlib import Path

import pytest

from hullwatch import config
from hullwatch.config import ConfigError
from hullwatch.service import build_drivers

ROOT = Path(__file__).resolve().parents[1]

STATION = '[station]\nname = "prk-mockup"\n'
SEGMENTS = """
[[segment]]
name = "prk"
volume_m3 = 4.0

[[segment]]
name = "zvezda"
volume_m3 = 75.0
"""
HATCH = """
[[hatch]]
name = "prk-hatch"
between = ["prk", "zvezda"]
"""
SERIAL_OK = """port = "/dev/ttyUSB0"
baudrate = 9600
line_regex = '^P\\s*=\\s*(?P<pressure>[-+0-9.]+)\\s*hPa'
units = { pressure = "hPa" }
"""


def sensor(name="p_prk", segment="prk", driver='driver = "simulated"\n', extra=""):
    seg = f'segment = "{segment}"\n' if segment is not None else ""
    return f'\n[[sensor]]\nname = "{name}"\n{seg}{driver}{extra}'


def doc(*parts, station=STATION, segments=SEGMENTS):
    return station + segments + "".join(parts)


def problems_of(path: str) -> list[str]:
    """What check-config would report: the file itself, then every driver's own keys."""
    with pytest.raises(ConfigError) as info:
        cfg = config.load(path)
        build_drivers(cfg, for_run=False)
    return info.value.problems


# -- a valid minimal file and its defaults ------------------------------------------------


def test_minimal_config_parses_with_icd_defaults(write_file, minimal_toml):
    path = write_file(minimal_toml)
    cfg = config.load(path)
    assert cfg.path == path
    assert cfg.station == "prk-mockup"
    m = cfg.module
    assert [(s.name, s.volume_m3) for s in m.segments] == [("prk", 4.0)]
    assert m.hatches == ()
    assert [(s.name, s.driver, s.spec.segment) for s in cfg.sensors] == [("p_prk", "simulated", "prk")]
    assert dict(cfg.sensors[0].options) == {}
    assert cfg.volumes() == {"prk": ("prk",)}

    a = m.alarms
    assert (m.leak.confidence_sigma, m.leak.report_interval_s) == (3.0, 10.0)
    lr = a.leak_rate
    assert (lr.caution_kg_per_day, lr.warning_kg_per_day, lr.hysteresis_kg_per_day) == (0.5, 0.9, 0.05)
    assert a.rapid_depress.emergency_pa_per_s == 9.19
    assert (a.low_pressure.warning_pa, a.low_pressure.emergency_pa) == (95000.0, 65300.0)
    rt = a.reserve_time
    assert (rt.minimum_pa, rt.caution_s, rt.warning_s, rt.emergency_s) == (65300.0, 86400.0, 3600.0, 600.0)
    assert a.sensor.stale_after_s == 5.0

    assert cfg.recorder is None
    assert cfg.mqtt is None
    assert cfg.influxdb is None
    assert cfg.annunciator is None


def test_minimal_config_passes_driver_validation(write_file, minimal_toml):
    cfg = config.load(write_file(minimal_toml))
    build_drivers(cfg, for_run=False)  # a simulated sensor needs nothing more for analyze


def test_parse_takes_a_plain_dict():
    data = {
        "station": {"name": "lab"},
        "segment": [{"name": "lab", "volume_m3": 1}],
        "sensor": [{"name": "baro", "segment": "lab", "driver": "simulated"}],
    }
    cfg = config.parse(data, "mem.toml")
    assert cfg.module.segments[0].volume_m3 == 1.0
    assert isinstance(cfg.module.segments[0].volume_m3, float)


def test_mqtt_topic_prefix_defaults_to_station_name(write_file, minimal_toml):
    cfg = config.load(write_file(minimal_toml + '\n[mqtt]\nhost = "127.0.0.1"\n'))
    assert cfg.mqtt is not None
    assert cfg.mqtt.topic_prefix == "hullwatch/prk-mockup"
    assert cfg.mqtt.qos == 1


def test_mqtt_topic_prefix_can_be_set(write_file, minimal_toml):
    cfg = config.load(write_file(minimal_toml + '\n[mqtt]\ntopic_prefix = "lab/one"\n'))
    assert cfg.mqtt.topic_prefix == "lab/one"


def test_present_optional_sections_switch_outputs_on(write_file, minimal_toml):
    text = minimal_toml + ('\n[recorder]\npath = "/tmp/samples.csv"\n\n[annunciator]\n\n[influxdb]\nbucket = "hw"\n')
    cfg = config.load(write_file(text))
    assert cfg.recorder.path == "/tmp/samples.csv"
    assert (cfg.annunciator.buzzer_gpio, cfg.annunciator.led_gpio, cfg.annunciator.ack_button_gpio) == (18, 23, 24)
    assert cfg.influxdb.api == "v2"
    assert cfg.influxdb.bucket == "hw"


def test_overrides_are_taken(write_file, minimal_toml):
    text = minimal_toml + (
        "\n[leak]\nconfidence_sigma = 2.0\nreport_interval_s = 5\n"
        "\n[alarms.leak_rate]\ncaution_kg_per_day = 0.2\nwarning_kg_per_day = false\n"
    )
    cfg = config.load(write_file(text))
    assert (cfg.module.leak.confidence_sigma, cfg.module.leak.report_interval_s) == (2.0, 5.0)
    assert cfg.module.alarms.leak_rate.caution_kg_per_day == 0.2
    assert cfg.module.alarms.leak_rate.warning_kg_per_day is None  # switched off


def test_config_objects_are_frozen(write_file, minimal_toml):
    cfg = config.load(write_file(minimal_toml))
    with pytest.raises(AttributeError):
        cfg.station = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.sensors[0].options["port"] = "x"  # type: ignore[index]


# -- volumes ----------------------------------------------------------------------------


def test_two_segments_joined_by_an_open_hatch_form_one_volume(write_file, two_segment_toml):
    cfg = config.load(write_file(two_segment_toml))
    assert cfg.volumes() == {"prk-zvezda": ("prk", "zvezda")}
    assert [(h.name, h.between, h.initially_open) for h in cfg.module.hatches] == [
        ("prk-hatch", ("prk", "zvezda"), True)
    ]


def test_a_closed_hatch_leaves_two_volumes(write_file, two_segment_toml):
    cfg = config.load(write_file(two_segment_toml.replace('initial = "open"', 'initial = "closed"')))
    assert cfg.volumes() == {"prk": ("prk",), "zvezda": ("zvezda",)}


def test_hatch_initial_defaults_to_open(write_file, two_segment_toml):
    cfg = config.load(write_file(two_segment_toml.replace('initial = "open"\n', "")))
    assert cfg.volumes() == {"prk-zvezda": ("prk", "zvezda")}


def test_sample_names_map_sensors_and_hatches_to_their_quantities(write_file, two_segment_toml):
    from hullwatch.core.model import Quantity

    names = config.load(write_file(two_segment_toml)).sample_names()
    assert names["p_prk"] == {Quantity.PRESSURE, Quantity.TEMPERATURE}
    assert names["prk-hatch"] == {Quantity.HATCH}


# -- problems: one line each, naming file, key path and the offending value ----------------

# (id, document, key path, a fragment the message must contain)
PROBLEMS = [
    ("unknown segment in sensor", doc(sensor(segment="nowhere")), "sensor[0].segment", "'nowhere'"),
    (
        "duplicate segment",
        doc(sensor(), segments=SEGMENTS + '\n[[segment]]\nname = "prk"\nvolume_m3 = 1.0\n'),
        "segment[2].name",
        "'prk'",
    ),
    ("duplicate sensor", doc(sensor(), sensor()), "sensor[1].name", "'p_prk'"),
    ("sensor named like a hatch", doc(HATCH, sensor(), sensor(name="prk-hatch")), "sensor[1].name", "'prk-hatch'"),
    ("negative volume", doc(sensor(), segments=SEGMENTS.replace("4.0", "-4.0")), "segment[0].volume_m3", "-4.0"),
    ("zero volume", doc(sensor(), segments=SEGMENTS.replace("75.0", "0.0")), "segment[1].volume_m3", "0.0"),
    (
        "hatch to unknown segment",
        doc(HATCH.replace('"zvezda"]', '"node1"]'), sensor()),
        "hatch[0].between",
        "'node1'",
    ),
    (
        "hatch joins a segment to itself",
        doc(HATCH.replace('"zvezda"]', '"prk"]'), sensor()),
        "hatch[0].between",
        "'prk'",
    ),
    ("missing station", doc(sensor(), station=""), "station", "missing"),
    ("bad station name", doc(sensor(), station='[station]\nname = "Prk Mockup"\n'), "station.name", "'Prk Mockup'"),
    (
        "segment name with a dash",
        doc(sensor(), segments=SEGMENTS + '\n[[segment]]\nname = "node-1"\nvolume_m3 = 2.0\n'),
        "segment[2].name",
        "'node-1'",
    ),
    ("missing sensor driver", doc(sensor(driver="")), "sensor[0].driver", "missing"),
    ("unknown driver", doc(sensor(driver='driver = "telepathy"\n')), "sensor[0].driver", "'telepathy'"),
    ("typo in [leak]", doc(sensor(), "\n[leak]\nconfidance_sigma = 3.0\n"), "leak.confidance_sigma", "unknown key"),
    ("unknown section", doc(sensor(), "\n[alarm]\nx = 1\n"), "alarm", "unknown section"),
    ("wrong type", doc(sensor(), segments=SEGMENTS.replace("4.0", '"big"')), "segment[0].volume_m3", "'big'"),
    (
        "caution above warning",
        doc(sensor(), "\n[alarms.leak_rate]\ncaution_kg_per_day = 1.5\n"),
        "alarms.leak_rate.caution_kg_per_day",
        "1.5",
    ),
    ("influxdb v1 without database", doc(sensor(), '\n[influxdb]\napi = "v1"\n'), "influxdb.database", "missing"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in PROBLEMS], ids=[c[0] for c in PROBLEMS])
def test_problem_names_file_key_and_value(write_file, text, key, fragment):
    path = write_file(text)
    problems = problems_of(path)
    mine = [p for p in problems if p.startswith(f"{path}: {key}: ")]
    assert mine, problems
    assert any(fragment in p for p in mine), problems
    assert all("\n" not in p for p in problems)


def test_duplicate_hatch_names_are_a_problem(write_file):
    # ICD §2: names are unique among sensors and hatches
    second = '\n[[hatch]]\nname = "prk-hatch"\nbetween = ["zvezda", "node1"]\n'
    segments = SEGMENTS + '\n[[segment]]\nname = "node1"\nvolume_m3 = 2.0\n'
    path = write_file(doc(HATCH, second, sensor(), segments=segments))
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: hatch[1].name: ") and "'prk-hatch'" in p for p in problems), problems


# Serial driver options are validated by the driver (hullwatch.sensors), as check-config does.
SERIAL_PROBLEMS = [
    ("bad pressure unit", SERIAL_OK.replace('"hPa" }', '"furlongs" }'), "sensor[0].units", "furlongs"),
    ("regex that does not compile", SERIAL_OK.replace("[-+0-9.]+)", "[-+0-9.+"), "sensor[0].line_regex", "compile"),
    ("regex with no named group", SERIAL_OK.replace("(?P<pressure>", "("), "sensor[0].line_regex", "group"),
]


@pytest.mark.parametrize(
    ("extra", "key", "fragment"), [c[1:] for c in SERIAL_PROBLEMS], ids=[c[0] for c in SERIAL_PROBLEMS]
)
def test_serial_sensor_option_problems(write_file, extra, key, fragment):
    pytest.importorskip("hullwatch.sensors.presets")
    path = write_file(doc(sensor(driver='driver = "serial"\n', extra=extra)))
    problems = problems_of(path)
    mine = [p for p in problems if p.startswith(f"{path}: {key}")]
    assert mine, problems
    assert any(fragment in p for p in mine), problems


def test_a_valid_serial_sensor_passes(write_file):
    pytest.importorskip("hullwatch.sensors.presets")
    cfg = config.load(write_file(doc(sensor(driver='driver = "serial"\n', extra=SERIAL_OK))))
    build_drivers(cfg, for_run=False)
    assert cfg.sensors[0].driver == "serial"
    assert cfg.sensors[0].options["port"] == "/dev/ttyUSB0"


def test_toml_syntax_error_names_file_and_line(write_file):
    path = write_file(STATION + "\n[[segment]\nname = 'prk'\n")  # line 4: unclosed [[
    with pytest.raises(ConfigError) as info:
        config.load(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: ")
    assert "line 4" in problem


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(STATION.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert info.value.problems[0].startswith(f"{path}: ")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        config.load(str(tmp_path / "absent.toml"))


def test_every_problem_in_a_file_is_reported(write_file):
    text = (
        '[station]\nname = "Bad Name"\n'  # 1
        + SEGMENTS.replace("75.0", '"big"')  # 2
        + sensor(driver='driver = "telepathy"\n')  # 3
        + sensor(name="t_prk", segment="attic")  # 4
        + "\n[leak]\nconfidance_sigma = 3.0\n"  # 5
        + "\n[alarms.low_pressure]\nwarning_pa = 60000.0\n"  # 6: emergency 65300 above warning
    )
    path = write_file(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    problems = info.value.problems
    assert len(problems) == 6, problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    keys = {p.split(": ")[1] for p in problems}
    assert keys == {
        "station.name",
        "segment[1].volume_m3",
        "sensor[0].driver",
        "sensor[1].segment",
        "leak.confidance_sigma",
        "alarms.low_pressure.emergency_pa",
    }
    assert str(info.value) == "\n".join(problems)


def test_a_bad_volume_does_not_make_its_segment_unknown(write_file):
    path = write_file(doc(HATCH, sensor(), segments=SEGMENTS.replace("4.0", "-4.0")))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems == [f"{path}: segment[0].volume_m3: must be positive, not -4.0"]


def test_example_config_loads():
    path = ROOT / "config" / "hullwatch.example.toml"
    if not path.exists():
        pytest.skip("config/hullwatch.example.toml not written yet")
    cfg = config.load(str(path))
    assert cfg.module.segments
    assert cfg.sensors
    assert cfg.volumes()

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


def mqtt(**keys):
    return "\n[mqtt]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def mcp(name, **keys):
    keys = {"channel": 0, "calibration": "{ volts = [0.5, 4.5], values = [0, 100000] }", **keys}
    return sensor(name, driver='driver = "mcp3008"\n', extra="".join(f"{k} = {v}\n" for k, v in keys.items()))


def influx(url):
    return f'\n[influxdb]\nbucket = "b"\nurl = "{url}"\n'


def serial(port, driver="serial"):
    extra = f'port = "{port}"\n' + (
        'slave = 1\nregisters = [{ quantity = "pressure", address = 0 }]\n' if driver == "modbus" else ""
    )
    return sensor("s", driver=f'driver = "{driver}"\n', extra=extra)


ANNUNCIATOR = "\n[annunciator]\nbuzzer_gpio = 18\nled_gpio = 23\nack_button_gpio = 24\n"

# Values a config used to accept that break `run` later (a crash, a dead MQTT thread, a backlog
# that never drains): check-config refuses them, naming the key.
LATER_BREAKAGE = [
    ("topic prefix with #", doc(sensor(), mqtt(topic_prefix='"lab/#"')), "mqtt.topic_prefix", "'#'"),
    ("topic prefix with +", doc(sensor(), mqtt(topic_prefix='"lab/+/x"')), "mqtt.topic_prefix", "'+'"),
    ("empty topic prefix", doc(sensor(), mqtt(topic_prefix='""')), "mqtt.topic_prefix", "empty"),
    ("topic prefix of slashes", doc(sensor(), mqtt(topic_prefix='"//"')), "mqtt.topic_prefix", "empty"),
    ("topic prefix with leading /", doc(sensor(), mqtt(topic_prefix='"/lab"')), "mqtt.topic_prefix", "'/'"),
    ("topic prefix with NUL", doc(sensor(), mqtt(topic_prefix='"lab\\u0000x"')), "mqtt.topic_prefix", "\\x00"),
    ("topic prefix under $SYS", doc(sensor(), mqtt(topic_prefix='"$SYS/lab"')), "mqtt.topic_prefix", "'$'"),
    ("wildcard discovery prefix", doc(sensor(), mqtt(discovery_prefix='"ha/#"')), "mqtt.discovery_prefix", "'#'"),
    ("empty discovery prefix", doc(sensor(), mqtt(discovery_prefix='""')), "mqtt.discovery_prefix", "empty"),
    ("keepalive 0", doc(sensor(), mqtt(keepalive_s=0)), "mqtt.keepalive_s", "1..65535"),
    ("keepalive over 16 bits", doc(sensor(), mqtt(keepalive_s=65536)), "mqtt.keepalive_s", "65536"),
    ("empty broker host", doc(sensor(), mqtt(host='""')), "mqtt.host", "''"),
    ("empty password file", doc(sensor(), mqtt(password_file='""')), "mqtt.password_file", "empty"),
    ("replay_per_s 0", doc(sensor(), "\n[spool]\nreplay_per_s = 0\n"), "spool.replay_per_s", "positive"),
    ("spool path empty", doc(sensor(), '\n[spool]\npath = ""\n'), "spool.path", "empty"),
    ("spool budget huge", doc(sensor(), "\n[spool]\nmax_mb = 1e308\n"), "spool.max_mb", "1e+308"),
    ("spool budget tiny", doc(sensor(), "\n[spool]\nmax_mb = 0.001\n"), "spool.max_mb", "0.001"),
    (
        "commit interval huge",
        doc(sensor(), "\n[spool]\ncommit_interval_s = 1e300\n"),
        "spool.commit_interval_s",
        "1e+300",
    ),
    ("recorder path empty", doc(sensor(), '\n[recorder]\npath = ""\n'), "recorder.path", "empty"),
    ("influxdb url not a url", doc(sensor(), influx("not a url")), "influxdb.url", "http"),
    ("influxdb url of another scheme", doc(sensor(), influx("ftp://db:8086")), "influxdb.url", "http"),
    ("influxdb url without host", doc(sensor(), influx("http://")), "influxdb.url", "no host"),
    ("influxdb url with a bad port", doc(sensor(), influx("http://db:99999")), "influxdb.url", "not a URL"),
    ("influxdb url with a query", doc(sensor(), influx("http://db:8086/?db=x")), "influxdb.url", "?query"),
    ("serial port of an unknown scheme", doc(serial("bogus://x")), "sensor[0].port", "bogus://"),
    ("modbus port of an unknown scheme", doc(serial("bogus://x", "modbus")), "sensor[0].port", "bogus://"),
    ("socket port without host:port", doc(serial("socket://localhost")), "sensor[0].port", "HOST:PORT"),
    (
        "buzzer and LED on one pin",
        doc(sensor(), ANNUNCIATOR.replace("led_gpio = 23", "led_gpio = 18")),
        "annunciator.led_gpio",
        "annunciator.buzzer_gpio",
    ),
    (
        "hatch reed switch on the buzzer's pin",
        doc(HATCH + "gpio = 18\n", sensor(), ANNUNCIATOR),
        "annunciator.buzzer_gpio",
        "hatch[0].gpio",
    ),
    (
        "MCP3008 chip select on a hatch pin",
        doc(HATCH + "gpio = 8\n", mcp("a1")),
        "sensor[0].device",
        "hatch[0].gpio",
    ),
    (
        "software SPI clock on the LED's pin",
        doc(mcp("a1", select_pin=5, clock_pin=23, mosi_pin=13, miso_pin=19), ANNUNCIATOR),
        "annunciator.led_gpio",
        "sensor[0].clock_pin",
    ),
    (
        "one MCP3008's select is another's clock",
        doc(
            mcp("a1", select_pin=5, clock_pin=6, mosi_pin=13, miso_pin=19),
            mcp("a2", select_pin=6, clock_pin=16, mosi_pin=20, miso_pin=21),
        ),
        "sensor[1].select_pin",
        "sensor[0].clock_pin",
    ),
    ("temperature range from 0 K", doc(sensor(extra="range_k = [0, 350]\n")), "sensor[0].range_k", "0 K"),
    ("temperature range below 0 K", doc(sensor(extra="range_k = [-10, 350]\n")), "sensor[0].range_k", "-10"),
    ("negative pressure range", doc(sensor(extra="range_pa = [-1, 2e5]\n")), "sensor[0].range_pa", "-1"),
    (
        "reserve time down to 0 Pa",
        doc(sensor(), "\n[alarms.reserve_time]\nminimum_pa = 0\n"),
        "alarms.reserve_time.minimum_pa",
        "positive",
    ),
]
PROBLEMS += LATER_BREAKAGE


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in PROBLEMS], ids=[c[0] for c in PROBLEMS])
def test_problem_names_file_key_and_value(write_file, text, key, fragment):
    path = write_file(text)
    problems = problems_of(path)
    mine = [p for p in problems if p.startswith(f"{path}: {key}: ")]
    assert mine, problems
    assert any(fragment in p for p in mine), problems
    assert all("\n" not in p for p in problems)


# ... and the valid neighbours of those values still load.
STILL_VALID = [
    ("serial port on loop://", doc(serial("loop://"))),
    ("serial port on a TCP socket", doc(serial("socket://127.0.0.1:5000"))),
    ("serial port on rfc2217", doc(serial("rfc2217://10.0.0.5:2217"))),
    ("serial port spied on", doc(serial("spy://loop://?file=/dev/null"))),
    ("serial port found by hwgrep", doc(serial("hwgrep://FTDI"))),
    ("modbus port on a device path", doc(serial("/dev/serial/by-id/usb-FTDI-if00", "modbus"))),
    ("influxdb over https with a path", doc(sensor(), influx("https://influx.example:8443/db"))),
    ("influxdb on IPv6", doc(sensor(), influx("http://[::1]:8086"))),
    ("keepalive at both ends", doc(sensor(), mqtt(keepalive_s=1, topic_prefix='"lab/one/"'))),
    ("keepalive 65535", doc(sensor(), mqtt(keepalive_s=65535, discovery_prefix='"ha"'))),
    ("replay slower than one a second", doc(sensor(), "\n[spool]\nreplay_per_s = 0.25\n")),
    ("pressure range from vacuum", doc(sensor(extra="range_pa = [0, 2e5]\nrange_k = [0.001, 400]\n"))),
    ("two MCP3008 channels on one SPI0 chip", doc(mcp("a1"), mcp("a2", channel=1), ANNUNCIATOR)),
    (
        "two software-SPI chips on one bus",
        doc(
            mcp("a1", select_pin=5, clock_pin=6, mosi_pin=13, miso_pin=19),
            mcp("a2", select_pin=26, clock_pin=6, mosi_pin=13, miso_pin=19),
            ANNUNCIATOR,
        ),
    ),
]


@pytest.mark.parametrize("text", [c[1] for c in STILL_VALID], ids=[c[0] for c in STILL_VALID])
def test_valid_neighbours_of_refused_values_still_load(write_file, text):
    cfg = config.load(write_file(text))
    build_drivers(cfg, for_run=False)


def test_a_hatch_pin_conflict_names_both_users_once(write_file):
    path = write_file(doc(HATCH + "gpio = 24\n", sensor(), ANNUNCIATOR))
    assert problems_of(path) == [
        f"{path}: annunciator.ack_button_gpio: GPIO24 is also used by hatch[0].gpio: one pin, one device"
    ]


def test_an_unknown_serial_scheme_lists_the_known_ones(write_file):
    (problem,) = problems_of(write_file(doc(serial("bogus://x"))))
    assert "loop://" in problem and "socket://" in problem and "/dev/tty" in problem


BRIDGE = '[mqtt]\nhost = "127.0.0.1"\n[influxdb]\napi = "v1"\ndatabase = "hw"\n'


@pytest.mark.parametrize(
    ("bridge", "key"),
    [
        ('topic_root = "hullwatch/#"', "bridge.topic_root"),
        ('topic_root = ""', "bridge.topic_root"),
        ('share_group = "a/b"', "bridge.share_group"),
        ('share_group = "a+"', "bridge.share_group"),
        ('stations = ["prk", "lab/#"]', "bridge.stations[1]"),
    ],
)
def test_bridge_topics_without_wildcards(write_file, bridge, key):
    path = write_file(f"[bridge]\n{bridge}\n" + BRIDGE, "bridge.toml")
    with pytest.raises(ConfigError) as info:
        config.load_bridge(path)
    assert [p.split(": ")[1] for p in info.value.problems] == [key]


def test_bridge_takes_every_station_or_named_ones(write_file):
    assert config.load_bridge(write_file('[bridge]\nstations = ["+"]\n' + BRIDGE, "b1.toml")).stations == ("+",)
    named = config.load_bridge(write_file('[bridge]\nstations = ["prk", "lab-2"]\n' + BRIDGE, "b2.toml"))
    assert named.stations == ("prk", "lab-2")


# -- files that are no configuration at all: one line, no traceback --------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"a = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
        (b"x = " + b"{ y = " * 20_000 + b"1" + b" }" * 20_000 + b"\n", "nested too deeply"),
        (bytes(range(256)) * 8, "not UTF-8"),
        (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "TOML syntax"),
    ],
    ids=["deep arrays", "deep inline tables", "binary", "an executable"],
)
def test_garbage_file_is_one_config_problem(tmp_path, data, fragment):
    path = tmp_path / "hullwatch.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: ") and fragment in problem and "\n" not in problem


def test_an_endless_file_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * 200)
    with pytest.raises(ConfigError, match="larger than"):
        config.load(str(path))


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


MODBUS = 'driver = "modbus"\nport = "/dev/ttyUSB0"\nquantity = "pressure"\naddress = 0\n'


def test_modbus_slaves_may_share_their_bus(write_file):
    cfg = config.load(
        write_file(
            doc(
                sensor("p_prk", "prk", MODBUS, "slave = 1\n"),
                sensor("p_zv", "zvezda", MODBUS.replace("/dev/ttyUSB0", "/dev/../dev/ttyUSB0"), "slave = 2\n"),
            )
        )
    )
    assert [d.name for d in build_drivers(cfg, for_run=False).drivers] == ["p_prk", "p_zv"]


def test_a_bus_with_two_serial_settings_is_refused(write_file):
    path = write_file(
        doc(
            sensor("p_prk", "prk", MODBUS, "slave = 1\n"),
            sensor("p_zv", "zvezda", MODBUS.replace("/dev/", "/dev/../dev/"), "slave = 2\nparity = 'E'\n"),
        )
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: sensor[1].port: /dev/../dev/ttyUSB0 is the bus of sensor[0] (p_prk) too")
    assert "9600 8E1 against 9600 8N1" in problem


def test_a_serial_port_has_one_reader(write_file):
    pytest.importorskip("hullwatch.sensors.presets")
    path = write_file(
        doc(sensor("p_prk", "prk", 'driver = "serial"\n', SERIAL_OK), sensor("p_zv", "zvezda", MODBUS, "slave = 2\n"))
    )
    [problem] = problems_of(path)
    assert problem == (
        f"{path}: sensor[1].port: /dev/ttyUSB0 is also read by sensor[0] (p_prk): a serial port has one reader"
        " (only Modbus slaves share a port, as a bus)"
    )

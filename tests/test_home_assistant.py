"""Home Assistant end to end: a real Home Assistant reads what `hullwatch run` announces over MQTT.

Home Assistant (a venv of its own, Python >= 3.13, built by scripts/ha-venv.sh, which .ci/run
calls) runs headless on a fresh config directory and a free port; onboarding and the MQTT
config entry are made over its REST API, as its own frontend makes them; its MQTT integration
talks to a private mosquitto. `hullwatch run` plays the simulated PrK + Zvezda module with
discovery on, and everything is checked through `GET /api/states`: the entities, their states
against what the daemon published, `unavailable` after the daemon dies (its Last Will) and
back after a restart, the acknowledge button, and a log free of warnings about our topics.

The first tests here need no Home Assistant: each sensor is announced with what its driver
reads (a temperature channel as temperature, whatever the driver).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon_rig import Daemon
from hullwatch.config import load
from hullwatch.service import prepare
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener, free_port

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "config" / "hullwatch.sim.toml"
HA_VENV = Path(os.environ.get("HULLWATCH_HA_VENV", "~/.cache/hullwatch-ha-venv")).expanduser()
STATION = "prk-sim"
P = f"hullwatch/{STATION}"
ABSOLUTE_ZERO_C = -273.15


def sim_config(tmp_path: Path, extra: str) -> Path:
    """config/hullwatch.sim.toml with its scenario path made absolute, plus `extra` TOML."""
    text = SIM_CONFIG.read_text().replace(
        '"scenarios/prk-2026.toml"', json.dumps(str(ROOT / "config" / "scenarios" / "prk-2026.toml"))
    )
    path = tmp_path / "hullwatch.toml"
    path.write_text(text + extra)
    return path


# -- what each sensor is announced as (no Home Assistant needed) -------------------------------


def announced(cfg_path: Path) -> dict[str, dict]:
    """The discovery configs `run` would publish for this file: {object id: config}."""
    prepared = prepare(load(str(cfg_path)), for_run=False)
    try:
        return {t.split("/")[3]: c for t, c in prepared.mqtt.discovery_messages()}
    finally:
        prepared.close()


def test_simulated_temperature_sensors_are_announced_as_temperature(tmp_path):
    configs = announced(sim_config(tmp_path, "\n[mqtt]\nhomeassistant = true\n"))
    sensors = {k: c for k, c in configs.items() if c.get("state_topic", "").startswith(f"{P}/sensor/")}
    assert set(sensors) == {"p_prk_pressure", "p_zv_pressure", "t_prk_temperature", "t_zv_temperature"}
    for name, c in sensors.items():
        quantity = name.rsplit("_", 1)[1]
        assert (
            c["device_class"] == quantity
            and c["unit_of_measurement"] == {"pressure": "Pa", "temperature": "°C"}[quantity]
        )


HARDWARE = """
[station]
name = "lab"

[[segment]]
name = "lab"
volume_m3 = 1.0

[[sensor]]
name = "m_t"
segment = "lab"
driver = "modbus"
port = "loop://"
slave = 1
registers = [{ quantity = "temperature", address = 2, function = 4, type = "int16", scale = 0.1, unit = "degC" }]

[[sensor]]
name = "m_pt"
segment = "lab"
driver = "modbus"
port = "loop://"
slave = 2
registers = [{ quantity = "pressure", address = 0 }, { quantity = "temperature", address = 2 }]

[[sensor]]
name = "a_t"
segment = "lab"
driver = "mcp3008"
channel = 1
quantity = "temperature"
unit = "degC"
calibration = { volts = [0.0, 3.3], values = [-50.0, 150.0] }

[[sensor]]
name = "a_p"
segment = "lab"
driver = "mcp3008"
channel = 0
calibration = { volts = [0.5, 4.5], values = [0, 100000] }

[[sensor]]
name = "s_t"
segment = "lab"
driver = "serial"
port = "loop://"
line_regex = '^T=(?P<temperature>[0-9.]+)$'
units = { temperature = "degC" }

[mqtt]
homeassistant = true
"""


def test_hardware_temperature_channels_are_announced_as_temperature(tmp_path, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    path = tmp_path / "hullwatch.toml"
    path.write_text(HARDWARE)
    sensors = {k: c["device_class"] for k, c in announced(path).items() if "/sensor/" in c.get("state_topic", "")}
    assert sensors == {
        "m_t_temperature": "temperature",
        "m_pt_pressure": "pressure",
        "m_pt_temperature": "temperature",
        "a_t_temperature": "temperature",
        "a_p_pressure": "pressure",
        "s_t_temperature": "temperature",
    }


# -- a real Home Assistant ---------------------------------------------------------------------


def _ha_python() -> Path | None:
    python = HA_VENV / "bin" / "python"
    if not python.exists() or not list(HA_VENV.glob(".hullwatch-homeassistant-*")):
        return None
    return python


needs_ha = (
    pytest.mark.ha,
    pytest.mark.skipif(
        _ha_python() is None,
        reason=f"Home Assistant is not installed in {HA_VENV} (scripts/ha-venv.sh installs it; .ci/run calls it)",
    ),
)


class HomeAssistant:
    """Home Assistant headless on 127.0.0.1:port with a fresh config directory, driven over its REST API."""

    CONFIG = """\
homeassistant:
  name: hullwatch test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
"""

    def __init__(self, python: Path, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "configuration.yaml").write_text(self.CONFIG.format(port=self.port))
        self.log = self.dir / "home-assistant.log"
        self.token = ""
        self._out = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(python), "-m", "homeassistant", "--config", str(self.dir), "--skip-pip", "--log-no-color"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def request(self, method: str, path: str, body: Any = None, form: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def wait_up(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited ({self.proc.returncode}):\n{self.output()}")
            if self.log.exists() and "Activating recovery mode" in self.log.read_text(errors="replace"):
                raise RuntimeError(f"Home Assistant started in recovery mode:\n{self.output()}")
            try:
                self.request("GET", "/api/onboarding")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"Home Assistant did not answer within {timeout:.0f} s:\n{self.output()}")

    def onboard(self) -> None:
        """Make the owner (the onboarding's user step) and take an access token with its code."""
        client_id = self.url + "/"
        user = {"name": "Test", "username": "test", "password": "test-password", "client_id": client_id}
        code = self.request("POST", "/api/onboarding/users", {**user, "language": "en"})["auth_code"]
        token = {"grant_type": "authorization_code", "code": code, "client_id": client_id}
        self.token = self.request("POST", "/auth/token", token, form=True)["access_token"]

    def add_mqtt(self, port: int) -> dict:
        """The MQTT config entry, through the config flow the frontend runs ("broker" step)."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        assert flow["type"] == "form" and flow["step_id"] == "broker", flow
        done = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                            {"broker": "127.0.0.1", "port": port})  # fmt: skip
        assert done["type"] == "create_entry" and done["result"]["state"] == "loaded", done
        return done

    def mqtt_entities(self) -> set[str]:
        out = self.request("POST", "/api/template", {"template": "{{ integration_entities('mqtt') | tojson }}"})
        return set(json.loads(out) if isinstance(out, str) else out)

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}

    def output(self) -> str:
        texts = []
        for f in (self.dir / "stdout.log", self.log):
            if f.exists():
                texts.append(f.read_text(errors="replace")[-4000:])
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


@pytest.fixture
def home_assistant(tmp_path):
    ha = HomeAssistant(_ha_python(), tmp_path / "ha")
    try:
        ha.wait_up(240)  # ~20 s here on a fresh directory; a slow machine takes many times that
        yield ha
    finally:
        ha.stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def wait_for(what: str, fn, timeout: float) -> Any:
    """fn()'s first truthy value, polled until timeout; AssertionError naming `what` otherwise."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(0.25)


def expected_entities() -> dict[str, dict[str, Any]]:
    """Friendly name -> (domain, device class, unit) that the simulated module's config calls for."""
    with open(SIM_CONFIG, "rb") as f:
        doc = tomllib.load(f)
    scenario = tomllib.loads((ROOT / "config" / "scenarios" / "prk-2026.toml").read_text())
    measures = {t["name"]: t["measures"] for t in scenario["transducer"]}
    want: dict[str, dict[str, Any]] = {}

    def add(name: str, domain: str, device_class: str | None = None, unit: str | None = None) -> None:
        want[f"hullwatch {STATION} {name}"] = {"domain": domain, "device_class": device_class, "unit": unit}

    for s in doc["sensor"]:
        for q in measures[s["name"]]:
            add(f"{s['name']} {q}", "sensor", q, {"pressure": "Pa", "temperature": "°C"}[q])
    segments = [s["name"] for s in doc["segment"]]
    for v in [*segments, "-".join(sorted(segments))]:  # each alone (hatch closed) and both (open)
        add(f"{v} leak rate", "sensor", None, "kg/d")
        add(f"{v} reserve time", "sensor", "duration", "s")
        add(f"{v} pressure", "sensor", "pressure", "Pa")
        add(f"{v} air mass", "sensor", "weight", "kg")
        add(f"{v} alarm", "binary_sensor", "problem")
    for h in doc["hatch"]:
        add(h["name"], "binary_sensor", "door")
    add("Acknowledge all alarms", "button")
    return want


def ha_log_problems(ha: HomeAssistant) -> list[str]:
    """Warnings and errors in Home Assistant's log from its MQTT integration or about our topics."""
    text = ha.log.read_text(errors="replace") if ha.log.exists() else ""
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    ours = (
        "[homeassistant.components.mqtt",  # the integration
        "[homeassistant.helpers.template",  # our value templates
        *(f"[homeassistant.components.{d}]" for d in ("sensor", "binary_sensor", "button")),  # our entities
        f"hullwatch/{STATION}",  # our topics, entity ids
        f"/{STATION}/",
        "hullwatch_prk_sim",
    )
    return [
        e
        for e in entries
        if re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", e) and any(s in e.split("\n", 1)[0] for s in ours)
    ]


def numbers(listener: Listener, topic: str, key: str, quantity: str | None = None) -> list[float]:
    """Every value of `key` the daemon published on `topic` (of one quantity, for sensor topics)."""
    out = []
    for obj in listener.json(topic):
        if quantity is not None and obj.get("quantity") != quantity:
            continue
        if isinstance(obj.get(key), int | float):
            out.append(float(obj[key]))
    return out


def matches(state: str, published: list[float], convert=lambda x: x, tolerance: float = 1e-6) -> bool:
    """Whether HA's state is one of the values the daemon published (HA may round a converted unit)."""
    try:
        value = float(state)
    except ValueError:
        return False
    return any(math.isclose(value, convert(p), rel_tol=tolerance, abs_tol=tolerance) for p in published)


@needs_ha[0]
@needs_ha[1]
@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto (Debian package mosquitto)")
def test_home_assistant_shows_the_station(tmp_path, broker, home_assistant, capsys):
    ha = home_assistant
    ha.onboard()
    ha.add_mqtt(broker.port)
    listener = Listener(broker.port, [f"{P}/#"])
    # the leak of the scenario (0.45 kg/day) raises leak_rate caution within seconds of the first fit
    cfg = sim_config(
        tmp_path,
        f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nhomeassistant = true\n'
        "\n[alarms.leak_rate]\ncaution_kg_per_day = 0.2\n",
    )
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    try:
        want = expected_entities()

        def ours() -> dict[str, dict]:
            mine = ha.mqtt_entities()
            return {e: s for e, s in ha.states().items() if e in mine}

        # without a value: the button, and the estimates of the volumes not formed while the hatch is open
        may_lack = re.compile(rf"hullwatch {STATION} ((prk|zvezda) (leak rate|reserve time|pressure|air mass)|Ack.*)")

        def every_entity() -> dict[str, dict] | None:
            found = ours()
            lacking = [
                s["attributes"].get("friendly_name", e)
                for e, s in found.items()
                if s["state"] == "unavailable"
                or (s["state"] == "unknown" and not may_lack.fullmatch(s["attributes"].get("friendly_name", "")))
            ]
            return found if len(found) >= len(want) and not lacking else None

        found = wait_for("every announced entity in Home Assistant, with a value", every_entity, 120)
        with capsys.disabled():  # the entity list, in every run's output
            print(f"\nHome Assistant {ha.request('GET', '/api/config')['version']}: {len(found)} entities")
            for entity_id, s in sorted(found.items()):
                a = s["attributes"]
                print(f"  {entity_id:58} {s['state']:>14} {a.get('unit_of_measurement') or '':5} "
                      f"{a.get('device_class') or ''}")  # fmt: skip
        by_name = {s["attributes"]["friendly_name"]: s for s in found.values()}
        assert set(by_name) == set(want)
        for name, w in want.items():
            s = by_name[name]
            assert s["entity_id"].split(".")[0] == w["domain"], name
            assert s["attributes"].get("device_class") == w["device_class"], name
            assert s["attributes"].get("unit_of_measurement") == w["unit"], name
        entity = {name: s["entity_id"] for name, s in by_name.items()}

        def state(name: str) -> str:
            return ha.request("GET", f"/api/states/{entity[f'hullwatch {STATION} {name}']}")["state"]

        # states: each one of the values the daemon published on the entity's topic
        def sensor_states_match() -> list[str] | None:
            wrong = []
            for sensor, quantity, convert in (
                ("p_prk", "pressure", lambda x: x),
                ("p_zv", "pressure", lambda x: x),
                ("t_prk", "temperature", lambda k: k + ABSOLUTE_ZERO_C),
                ("t_zv", "temperature", lambda k: k + ABSOLUTE_ZERO_C),
            ):
                st = state(f"{sensor} {quantity}")
                published = numbers(listener, f"{P}/sensor/{sensor}", "value", quantity)
                if not matches(st, published, convert, tolerance=0.0006):  # kelvin to °C, to 3 decimals
                    wrong.append(f"{sensor} {quantity}: {st}")
            for label, key in (("leak rate", "leak_kg_per_day"), ("reserve time", "reserve_time_s"),
                               ("pressure", "pressure_pa"), ("air mass", "mass_kg")):  # fmt: skip
                st = state(f"prk-zvezda {label}")
                if not matches(st, numbers(listener, f"{P}/volume/prk-zvezda", key)):
                    wrong.append(f"prk-zvezda {label}: {st}")
            return None if wrong else ["ok"]

        wait_for("Home Assistant's states are values the daemon published", sensor_states_match, 60)
        assert state("prk-hatch") == "on" and listener.payloads(f"{P}/hatch/prk-hatch")[-1] == b"open"
        for v in ("prk", "zvezda"):  # volumes not formed while the hatch is open: no alarm, not "unknown"
            assert state(f"{v} alarm") == "off" and listener.payloads(f"{P}/volume/{v}/alarm")[-1] == b"OFF"
            assert state(f"{v} leak rate") == "unknown"  # no estimate while the volume is not formed

        # an alarm: Home Assistant shows it, and its button acknowledges it in the daemon
        alarm_topic = f"{P}/alarm/leak_rate/prk-zvezda/caution"
        wait_for("the prk-zvezda alarm on in Home Assistant", lambda: state("prk-zvezda alarm") == "on", 90)
        assert listener.payloads(f"{P}/volume/prk-zvezda/alarm")[-1] == b"ON"
        record = listener.json(alarm_topic)[-1]
        assert record["state"] == "active" and record["acknowledged"] is False
        n = listener.count()
        ha.request(
            "POST", "/api/services/button/press", {"entity_id": entity[f"hullwatch {STATION} Acknowledge all alarms"]}
        )
        acked = listener.wait_for(
            lambda m: m[1] == alarm_topic and m[2] and json.loads(m[2])["acknowledged"] is True, timeout=30, since=n
        )
        assert acked is not None, "pressing the button did not acknowledge the alarm"
        assert json.loads(acked[2])["by"] == "mqtt"
        result = listener.wait_topic(f"{P}/cmd/result", timeout=10, since=n)
        assert result is not None and json.loads(result[2])["ok"] is True

        # the daemon dies: its Last Will makes every entity unavailable; a restart brings them back
        daemon.kill()
        wait_for(
            "every entity unavailable after the daemon died",
            lambda: all(s["state"] == "unavailable" for s in ours().values()),
            60,
        )
        daemon = Daemon(cfg, tmp_path / "daemon2.log")
        wait_for(
            "every entity available again after a restart",
            lambda: all(s["state"] != "unavailable" for s in ours().values()),
            90,
        )
        wait_for("fresh states after the restart", sensor_states_match, 60)
        assert len(ours()) == len(want)  # the restart's discovery made no new entities
    finally:
        daemon.kill()
        listener.close()
    problems = ha_log_problems(ha)
    assert not problems, "Home Assistant's log:\n" + "\n".join(problems)

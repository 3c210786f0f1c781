"""The shipped broker configuration (deploy/mosquitto, its acl file itself) against a real mosquitto.

One identity per station: a station logs in with its name and writes only hullwatch/<name>/...
and homeassistant/+/<name>/+/config; the operator, Home Assistant, the bridge and viewers get
only what they need. mosquitto (MQTT 3.1.1) drops a denied publish silently, so every check
publishes payloads that tell who sent them, ends with a sentinel, and compares what arrived.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from hullwatch.bridge import TOPICS as BRIDGE_TOPICS
from hullwatch.config import MqttConfig
from hullwatch.core.model import Estimate, Quantity, Sample
from hullwatch.sinks.mqtt import MqttSink, StationDescription
from hullwatch.sinks.spool import Record
from hullwatch.topics import COMMANDS
from mosquitto_fixture import HAVE_MOSQUITTO, HAVE_OPENSSL, Listener, ShippedBroker, make_certs, publish, retained

pytestmark = pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_OPENSSL), reason="needs mosquitto and openssl")

USERS = {u: f"{u}-pw" for u in ("alpha", "beta", "operator", "homeassistant", "bridge", "viewer")}
SENTINEL = ("homeassistant/status", b"sentinel")  # Home Assistant's topic: every identity reads it


def as_(user: str) -> dict[str, str]:
    return {"username": user, "password": USERS[user]}


def station_topics(station: str) -> list[str]:
    """One topic of every kind a station publishes (ICD §5 and beyond), its discovery included."""
    p = f"hullwatch/{station}"
    return [
        f"{p}/status",
        f"{p}/sensor/p1",
        f"{p}/hatch/h1",
        f"{p}/volume/v1",
        f"{p}/volume/v1/alarm",
        f"{p}/step/v1",
        f"{p}/clock_step",
        f"{p}/alarm/leak_rate/v1/warning",
        f"{p}/metrics",
        f"{p}/cmd/result",
        f"homeassistant/sensor/{station}/p1_pressure/config",
        f"homeassistant/button/{station}/acknowledge_all/config",
    ]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def shipped(tmp_path, certs):
    broker = ShippedBroker(tmp_path / "broker", certs, USERS).start()
    yield broker
    broker.stop()


@pytest.fixture
def listener():
    made: list[Listener] = []

    def make(port: int, topic: str | list[str], **kw) -> Listener:
        made.append(Listener(port, topic, **kw))
        return made[-1]

    yield make
    for x in made:
        x.close()


def wait_until(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def arrived(broker: ShippedBroker, *watchers: Listener) -> list[set[tuple[str, bytes]]]:
    """Publish the sentinel (last), wait until every watcher has it; what each saw before it.

    Each publish() before this one waited for the broker's PUBACK, so the broker had routed it
    before the sentinel, and one connection delivers in order.
    """
    publish(broker.port, *SENTINEL, **as_("homeassistant"))
    for w in watchers:
        assert w.wait_for(lambda m: (m[1], m[2]) == SENTINEL, timeout=10.0), "the sentinel never arrived"
    return [{(t, p) for _, t, p, _ in w.messages} - {SENTINEL} for w in watchers]


def test_a_station_writes_only_its_own_prefix_and_discovery(shipped, listener):
    everything = ["hullwatch/#", "homeassistant/#"]
    ha = listener(shipped.port, everything, **as_("homeassistant"))  # reads both trees
    alpha_reads = listener(shipped.port, everything, **as_("alpha"))
    beta_reads = listener(shipped.port, everything, **as_("beta"))

    publish(shipped.port, "hullwatch/beta/status", "beta:online", retain=True, **as_("beta"))
    publish(shipped.port, "hullwatch/beta/alarm/leak_rate/v1/warning", "beta:alarm", retain=True, **as_("beta"))
    allowed = set()
    for topic in station_topics("alpha"):
        publish(shipped.port, topic, f"alpha:{topic}", **as_("alpha"))
        allowed.add((topic, f"alpha:{topic}".encode()))
    forged = [
        *station_topics("beta"),  # the neighbour's state, alarms, answers and discovery
        "hullwatch/alpha/cmd/ack",  # a command to itself: commands come from people
        "hullwatch/beta/cmd/ack",
        "homeassistant/status",  # Home Assistant's birth message
        "homeassistant/sensor/p1_pressure/config",  # discovery without the station's node id
        "homeassistant/sensor/alpha_p1/config",
        "homeassistant/sensor/alpha/p1/other",
        "hullwatch/alpha",
        "hullwatch/alpha_x/status",
        "other/alpha/status",
    ]
    for topic in forged:
        publish(shipped.port, topic, f"alpha:{topic}", **as_("alpha"))
    # deleting the neighbour's retained alarm (an empty retained message) is a write too
    publish(shipped.port, "hullwatch/beta/alarm/leak_rate/v1/warning", b"", retain=True, **as_("alpha"))

    seen_by_ha, seen_by_alpha, seen_by_beta = arrived(shipped, ha, alpha_reads, beta_reads)
    betas = {("hullwatch/beta/status", b"beta:online"), ("hullwatch/beta/alarm/leak_rate/v1/warning", b"beta:alarm")}
    assert seen_by_ha == allowed | betas
    # a station reads its own topics (its retained state, its commands) and nobody else's
    assert seen_by_alpha == allowed
    assert seen_by_beta == betas
    kept = retained(shipped.port, "hullwatch/beta/#", **as_("viewer"))
    assert kept == {"hullwatch/beta/status": b"beta:online", "hullwatch/beta/alarm/leak_rate/v1/warning": b"beta:alarm"}


def test_a_last_will_on_another_stations_status_is_dropped(shipped, listener):
    viewer = listener(shipped.port, ["hullwatch/#", "homeassistant/status"], **as_("viewer"))
    # the forged will first: the broker has handled that connection's end long before the second's
    for will_topic in ("hullwatch/beta/status", "hullwatch/alpha/status"):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        c.username_pw_set("alpha", USERS["alpha"])
        c.will_set(will_topic, f"will:{will_topic}", qos=1, retain=True)
        c.connect("127.0.0.1", shipped.port, keepalive=30)
        c.loop_start()
        try:
            assert wait_until(c.is_connected)
        finally:
            c.loop_stop()
            c.socket().close()  # a connection lost without DISCONNECT: the broker sends the will
    assert viewer.wait_topic("hullwatch/alpha/status", timeout=10.0)
    assert arrived(shipped, viewer) == [{("hullwatch/alpha/status", b"will:hullwatch/alpha/status")}]


def test_operator_home_assistant_bridge_and_viewers(shipped, certs, listener):
    tls = shipped.tls_options()
    alpha_cmds = listener(shipped.port, ["hullwatch/+/cmd/#", "homeassistant/status"], **as_("alpha"))
    beta_cmds = listener(shipped.port, ["hullwatch/+/cmd/#", "homeassistant/status"], **as_("beta"))
    viewer = listener(tls["port"], ["hullwatch/#", "homeassistant/#"], tls=certs, **as_("viewer"))
    publish(shipped.port, "hullwatch/alpha/status", "alpha:online", retain=True, **as_("alpha"))
    publish(shipped.port, "homeassistant/sensor/alpha/p1_pressure/config", "alpha:discovery", retain=True,
            **as_("alpha"))  # fmt: skip

    # the operator (over TLS, as off the station's host) commands any station, and nothing else
    for station in ("alpha", "beta"):
        for name in COMMANDS:
            publish(topic=f"hullwatch/{station}/cmd/{name}", payload=f"operator:{name}", **tls, **as_("operator"))
    for topic in ("hullwatch/alpha/status", "hullwatch/alpha/cmd/result", "hullwatch/alpha/alarm/x/v1/warning",
                  "hullwatch/alpha/cmd/other", "homeassistant/sensor/alpha/p1_pressure/config"):  # fmt: skip
        publish(topic=topic, payload="operator:forged", **tls, **as_("operator"))
    # Home Assistant presses the acknowledge button and announces itself; it sends nothing else
    publish(topic="hullwatch/beta/cmd/ack", payload="ha:ack", **tls, **as_("homeassistant"))
    publish(topic="homeassistant/status", payload="online", **tls, **as_("homeassistant"))
    for topic in ("hullwatch/beta/cmd/reset", "hullwatch/beta/cmd/maintenance", "hullwatch/beta/status",
                  "homeassistant/sensor/alpha/p1_pressure/config"):  # fmt: skip
        publish(topic=topic, payload="ha:forged", **tls, **as_("homeassistant"))
    # readers command nothing
    for user in ("bridge", "viewer"):
        publish(topic="hullwatch/alpha/cmd/ack", payload=f"{user}:ack", **tls, **as_(user))

    seen_alpha, seen_beta, seen_viewer = arrived(shipped, alpha_cmds, beta_cmds, viewer)
    assert seen_alpha == {(f"hullwatch/alpha/cmd/{n}", f"operator:{n}".encode()) for n in COMMANDS} | {
        ("homeassistant/status", b"online")
    }
    assert seen_beta == {(f"hullwatch/beta/cmd/{n}", f"operator:{n}".encode()) for n in COMMANDS} | {
        ("hullwatch/beta/cmd/ack", b"ha:ack"),
        ("homeassistant/status", b"online"),
    }
    assert seen_viewer == (
        {("hullwatch/alpha/status", b"alpha:online"), ("hullwatch/beta/cmd/ack", b"ha:ack")}
        | {(f"hullwatch/{s}/cmd/{n}", f"operator:{n}".encode()) for s in ("alpha", "beta") for n in COMMANDS}
        | {("homeassistant/status", b"online")}  # viewers do not read discovery
    )

    # Home Assistant reads the stations' state and discovery
    ha_view = retained(tls["port"], "#", tls=certs, **as_("homeassistant"))
    assert ha_view == {
        "hullwatch/alpha/status": b"alpha:online",
        "homeassistant/sensor/alpha/p1_pressure/config": b"alpha:discovery",
    }

    # the bridge reads every station through MQTT 5 shared subscriptions, as `hullwatch bridge` does
    got: list[tuple[str, bytes]] = []
    granted: list[bool] = []
    bridge = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    bridge.username_pw_set("bridge", USERS["bridge"])
    bridge.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    bridge.on_subscribe = lambda c, u, mid, codes, p: granted.extend(not rc.is_failure for rc in codes)
    filters = [(f"$share/hullwatch-bridge/hullwatch/+/{t}", SubscribeOptions(qos=1)) for t in BRIDGE_TOPICS]
    bridge.on_connect = lambda c, u, f, rc, p: c.subscribe(filters)
    bridge.connect("127.0.0.1", shipped.port, keepalive=30)
    bridge.loop_start()
    try:
        assert wait_until(lambda: len(granted) == len(filters)) and all(granted)
        publish(shipped.port, "hullwatch/alpha/sensor/p1", "alpha:sample", **as_("alpha"))
        publish(shipped.port, "hullwatch/beta/alarm/leak_rate/v1/warning", "beta:alarm", **as_("beta"))
        assert wait_until(lambda: len(got) >= 2)
        assert got == [("hullwatch/alpha/sensor/p1", b"alpha:sample"), ("hullwatch/beta/alarm/leak_rate/v1/warning",
                                                                        b"beta:alarm")]  # fmt: skip
    finally:
        bridge.disconnect()
        bridge.loop_stop()

    with pytest.raises(RuntimeError):  # a wrong password is refused
        Listener(shipped.port, "#", username="alpha", password="wrong", timeout=1.0)
    with pytest.raises(RuntimeError):  # a user not in the password file is refused
        Listener(shipped.port, "#", username="gamma", password="gamma-pw", timeout=1.0)
    with pytest.raises((RuntimeError, OSError)):  # TLS without a client certificate is refused
        Listener(tls["port"], "#", tls=replace(certs, client_cert="", client_key=""), timeout=1.0, **as_("viewer"))


def test_the_daemon_publishes_all_it_has_under_the_shipped_acl(shipped, listener, tmp_path):
    """A station's MqttSink (no user name configured: the station's name) gets every message through."""
    password = tmp_path / "mqtt-password"
    password.write_text(USERS["alpha"] + "\n")
    calls: list[tuple[str, dict, str]] = []

    def on_command(name: str, payload: dict, origin: str) -> dict:
        calls.append((name, payload, origin))
        return {"ok": True}

    desc = StationDescription("alpha", {"p1": ("pressure", "temperature")}, volumes=("v1",), hatches=("h1",))
    ha = listener(shipped.port, ["hullwatch/#", "homeassistant/#"], **as_("homeassistant"))
    sink = MqttSink(
        MqttConfig(host="127.0.0.1", port=shipped.port, password_file=str(password)),
        "alpha",
        on_command,
        desc,
        homeassistant=True,
    )
    sink.start()
    try:
        assert sink.username == "alpha"
        assert wait_until(lambda: sink.connected)
        sink.sample(Sample(1.0, "p1", Quantity.PRESSURE, 101000.0))
        sink.hatch("h1", True)
        sink.estimate(Estimate(1.0, "v1", 0.1, 0.01, 101000.0, 1.2, None))
        sink.alarm({"type": "alarm", "acknowledged": False}, "leak_rate", "v1", "warning")
        sink.volume_alarm("v1", True)
        sink.publish_json("metrics", {"spool": {}}, True)
        step = {"type": "step", "time": 1.0, "volume": "v1", "size_pa": -50.0}
        clock_step = {"time": 1.0, "step_s": 3600.0}
        assert sink.send([Record(1, "sample", 1, {"sensor": "p1", "time": 1.0, "value": 1.0}),
                          Record(2, "step", 1, step), Record(3, "hatch", 1000, {"hatch": "h1", "open": True}),
                          Record(4, "clock_step", 1, clock_step)], replay=False).confirmed == 4  # fmt: skip
        publish(shipped.port, "hullwatch/alpha/cmd/ack", '{"all": true}', **as_("operator"))
        assert wait_until(lambda: calls == [("ack", {"all": True}, "mqtt")])
        assert ha.wait_topic("hullwatch/alpha/cmd/result", timeout=10.0)
    finally:
        sink.stop()
    assert ha.wait_topic("hullwatch/alpha/status", payload=b"offline", timeout=10.0)
    arrived(shipped, ha)
    topics = {t for _, t, _, _ in ha.messages} - {SENTINEL[0]}
    discovery = {t for t, _ in sink.discovery_messages()}
    assert discovery and all(t.startswith("homeassistant/") and t.split("/")[2] == "alpha" for t in discovery)
    assert topics == discovery | {
        f"hullwatch/alpha/{t}"
        for t in (
            "status",
            "sensor/p1",
            "hatch/h1",
            "hatch/h1/event",
            "volume/v1",
            "alarm/leak_rate/v1/warning",
            "volume/v1/alarm",
            "metrics",
            "step/v1",
            "clock_step",
            "cmd/ack",
            "cmd/result",
        )  # fmt: skip
    }
    online = [p for _, t, p, _ in ha.messages if t == "hullwatch/alpha/status"]
    assert online[0] == b"online" and online[-1] == b"offline"
    result = json.loads(ha.payloads("hullwatch/alpha/cmd/result")[0])
    assert result["ok"] is True


def test_a_station_reconciles_its_own_retained_state_under_the_shipped_acl(shipped, tmp_path, caplog):
    """The read-back at connect is granted: what a previous run of the station left is removed or set right."""
    password = tmp_path / "mqtt-password"
    password.write_text(USERS["alpha"] + "\n")
    cfg = MqttConfig(host="127.0.0.1", port=shipped.port, password_file=str(password))
    desc = StationDescription("alpha", {"p1": ("pressure",)}, volumes=("v1",))
    previous = MqttSink(cfg, "alpha", lambda *a: {"ok": True}, desc, homeassistant=True)
    previous.start()
    try:
        assert previous.synced.wait(10)
        previous.alarm({"type": "alarm", "acknowledged": False}, "leak_rate", "v1", "warning")
        previous.volume_alarm("v1", True)
        n = len(previous.discovery_messages())
        assert wait_until(lambda: len(retained(shipped.port, "homeassistant/#", **as_("homeassistant"))) == n)
    finally:
        previous.stop()  # the retained state stays, as after a crash
    assert "hullwatch/alpha/alarm/leak_rate/v1/warning" in retained(shipped.port, "hullwatch/#", **as_("viewer"))
    sink = MqttSink(cfg, "alpha", lambda *a: {"ok": True}, desc, homeassistant=False)
    sink.start()
    try:

        def state() -> dict[str, bytes]:
            return retained(shipped.port, "#", **as_("homeassistant"))

        right = {"hullwatch/alpha/status": b"online", "hullwatch/alpha/volume/v1/alarm": b"OFF"}
        assert wait_until(lambda: state() == right), state()
        assert "subscription refused" not in caplog.text
    finally:
        sink.stop()

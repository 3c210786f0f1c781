"""What the running daemon publishes, held against ICD §5: `hullwatch run` with a real mosquitto, every message.

The station: a lab on a pty transducer (101 325 Pa with 2 Pa of noise) and two simulated
segments, fore and aft, joined by the hatch `fa`, with a 5 kg/day leak in fore, played at
real time. The hatch closes at 5 s and aft's transducer is unplugged from 8 s to 18 s (the
scenario's events, in story time). The test cuts the daemon's link to the broker until its
spool holds a backlog (replayed with `"replay": true` once the link is back, the retained
state re-sent); an operator acknowledges aft's sensor fault, which had cleared, so the alarm
ends (a final `cleared` record, then removal), and sends a malformed command; the lab
transducer steps by +40 Pa; the leak raises a leak-rate warning on fore, acknowledged too. A
subscriber to `P/#` records every message from the start to after the daemon's SIGTERM; each
one is then checked against the topic table and payload shapes below, written from ICD §5
and §4 (whose objects the daemon publishes) and the README's "Beyond the ICD", not from the
code.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import daemon_rig
from hullwatch.sinks.spool import BACKLOG_MIN
from mosquitto_fixture import HAVE_MOSQUITTO, Broker, Listener, free_port, publish, retained, wait_port
from test_daemon_estimates import NoisyTransducer

pytestmark = pytest.mark.skipif(not HAVE_MOSQUITTO or shutil.which("socat") is None, reason="needs mosquitto and socat")

STATION = "pub"
P = f"hullwatch/{STATION}"
WAIT_S = 120.0  # generous: this must hold on a machine many times slower

SCENARIO = """
name = "published"
[[segment]]
name = "fore"
volume_m3 = 1.0
leak_kg_per_day = 5.0
[[segment]]
name = "aft"
volume_m3 = 1.0
[[hatch]]
name = "fa"
between = ["fore", "aft"]
initial = "open"
[[transducer]]
name = "pf"
segment = "fore"
rate_hz = 4.0
noise_pa = 1.0
[[transducer]]
name = "pa"
segment = "aft"
rate_hz = 4.0
noise_pa = 1.0
[[event]]
at_s = 5
hatch = { name = "fa", state = "closed" }
[[event]]
at_s = 8
unplug = { transducer = "pa", for_s = 10 }
"""

# -- ICD §5, as a subscriber sees it -----------------------------------------------------------------------------------

NAME = r"([^/#+]+)"
TOPICS: dict[str, re.Pattern[str]] = {
    kind: re.compile(f"{re.escape(P)}/{pattern}")
    for kind, pattern in {
        "status": "status",
        "sensor": f"sensor/{NAME}",
        "hatch": f"hatch/{NAME}",
        "hatch_event": f"hatch/{NAME}/event",
        "volume": f"volume/{NAME}",
        "volume_alarm": f"volume/{NAME}/alarm",
        "step": f"step/{NAME}",
        "clock_step": "clock_step",
        "alarm": f"alarm/{NAME}/{NAME}/{NAME}",
        "metrics": "metrics",
        "command_result": "cmd/result",
        "command": f"cmd/{NAME}",
    }.items()
}
RETAINED = {"status", "hatch", "volume_alarm", "alarm", "metrics"}  # what the broker may keep
SEVERITIES = ("advisory", "caution", "warning", "emergency")
COMMANDS = ("ack", "shelve", "unshelve", "reset", "maintenance")
LIFECYCLES = {"normal", "unack", "acked", "rtn_unack", "latched_unack", "latched_acked", "shelved", "suppressed"}

Check = Callable[[Any], bool]


def number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def number_or_null(v: Any) -> bool:
    return v is None or number(v)


def text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def one_of(*values: Any) -> Check:
    return lambda v: v in values


def mapping(v: Any) -> bool:
    return isinstance(v, dict)


def flag(v: Any) -> bool:
    return isinstance(v, bool)


REPLAY = {"replay": one_of(True)}  # spooled telemetry sent from the backlog
# kind -> (required keys, optional keys): each with the check of its value
SHAPES: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "sensor": (
        {
            "time": number,
            "quantity": one_of("pressure", "temperature"),
            "value": number_or_null,
            "quality": one_of("good", "suspect", "bad"),
        },
        REPLAY,
    ),
    "hatch_event": ({"time": number, "open": flag}, REPLAY),
    "volume": (
        {
            "type": one_of("estimate"),
            "time": number,
            "volume": text,
            "leak_kg_per_day": number_or_null,
            "leak_kg_per_day_sigma": number_or_null,
            "pressure_pa": number_or_null,
            "mass_kg": number_or_null,
            "reserve_time_s": number_or_null,
        },
        {"window_s": number_or_null, "detectable_kg_per_day": number_or_null, **REPLAY},
    ),
    "step": (
        {"type": one_of("step"), "time": number, "volume": text, "size_pa": number},
        {"sensor": text, **REPLAY},
    ),
    "clock_step": ({"time": number, "step_s": number}, REPLAY),
    "alarm": (
        {
            "type": one_of("alarm"),
            "time": number,
            "alarm": text,
            "source": text,
            "severity": one_of(*SEVERITIES),
            "state": one_of("active", "cleared"),
            "value": number_or_null,
            "threshold": number_or_null,
            "acknowledged": flag,
            "lifecycle": one_of(*LIFECYCLES),
            "shelved_until": number_or_null,
            "suppressed": flag,
            "latched": flag,
            "by": text,
            "cause": text,
            "changed_at": number,
        },
        {"reason": text},
    ),
    "metrics": (
        {"time": number, "spool": mapping, "sinks": mapping, "sensors": mapping, "detection": mapping},
        {},
    ),
    "command_result": (
        {"command": text, "ok": flag, "message": text, "request": lambda v: isinstance(v, str), "time": number},
        {"by": text, "error": text, "id": lambda v: isinstance(v, str | int) and not isinstance(v, bool)},
    ),
}
WORDS = {"status": (b"online", b"offline"), "hatch": (b"open", b"closed"), "volume_alarm": (b"ON", b"OFF")}
# the names in the topic that the payload repeats
ECHOED = {"volume": ("volume",), "step": ("volume",), "alarm": ("alarm", "source", "severity")}


def kind_of(topic: str) -> tuple[str, tuple[str, ...]]:
    """The ICD §5 kind of a topic and the names in it; AssertionError for a topic outside the table."""
    for kind, pattern in TOPICS.items():
        m = pattern.fullmatch(topic)
        if m:
            return kind, m.groups()
    raise AssertionError(f"published outside ICD §5: {topic}")


def problems(topic: str, payload: bytes) -> list[str]:
    """What is wrong with one message, per ICD §5 (empty: nothing)."""
    kind, names = kind_of(topic)
    if kind in WORDS:
        return [] if payload in WORDS[kind] else [f"{payload[:40]!r} is not one of {WORDS[kind]}"]
    if kind == "command":
        return [] if names[0] in COMMANDS else [f"no such command {names[0]!r}"]
    if kind == "alarm" and payload == b"":
        return []  # removes the retained alarm
    try:
        obj = json.loads(payload)
    except ValueError:
        return [f"not JSON: {payload[:60]!r}"]
    if not isinstance(obj, dict):
        return [f"not a JSON object: {payload[:60]!r}"]
    required, optional = SHAPES[kind]
    out = [f"missing {k!r}" for k in required if k not in obj]
    out += [f"unexpected key {k!r}" for k in obj if k not in required and k not in optional]
    checks = {**optional, **required}
    out += [f"{k} = {obj[k]!r:.60}" for k, check in checks.items() if k in obj and not check(obj[k])]
    for key, name in zip(ECHOED.get(kind, ()), names, strict=False):
        if obj.get(key) != name:
            out.append(f"{key} = {obj.get(key)!r}, the topic says {name!r}")
    return out


# -- the run -----------------------------------------------------------------------------------------------------------


def station_config(tmp_path: Path, serial_port: str, broker_port: int) -> Path:
    (tmp_path / "scenario.toml").write_text(SCENARIO)
    path = tmp_path / "hullwatch.toml"
    path.write_text(
        f'[station]\nname = "{STATION}"\n'
        '[[segment]]\nname = "lab"\nvolume_m3 = 10.0\n'
        '[[segment]]\nname = "fore"\nvolume_m3 = 1.0\n'
        '[[segment]]\nname = "aft"\nvolume_m3 = 1.0\n'
        '[[hatch]]\nname = "fa"\nbetween = ["fore", "aft"]\ninitial = "open"\n'
        + daemon_rig.serial_sensor("p", serial_port)
        + '[[sensor]]\nname = "pf"\nsegment = "fore"\ndriver = "simulated"\n'
        '[[sensor]]\nname = "pa"\nsegment = "aft"\ndriver = "simulated"\n'
        '[simulation]\nscenario = "scenario.toml"\n'
        "[leak]\nreport_interval_s = 0.5\nsettle_s = 0.0\n"
        "[alarms.sensor]\nstale_after_s = 5.0\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[spool]\npath = "{tmp_path}/spool.sqlite"\ncommit_interval_s = 0.2\n'
    )
    return path


def wait_message(listener: Listener, pred: Callable[[str, bytes], bool], since: int = 0) -> tuple[str, bytes]:
    m = listener.wait_for(lambda m: pred(m[1], m[2]), timeout=WAIT_S, since=since)
    assert m is not None, "not published in time"
    return m[1], m[2]


def until(pred: Callable[[], bool]) -> bool:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def waiting(spool: Path) -> int:
    """How many records the spool file holds (read as another process would)."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM record").fetchone()[0]
    finally:
        db.close()


def record(payload: bytes) -> dict:
    return json.loads(payload) if payload else {}


class Link:
    """The daemon's way to the broker: a socat relay that `cut()` breaks (every connection) and `mend()` restores."""

    def __init__(self, broker_port: int) -> None:
        self.port = free_port()
        self.broker_port = broker_port
        self.proc: subprocess.Popen | None = None
        self.mend()

    def mend(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork", f"TCP:127.0.0.1:{self.broker_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the relays it forks end with it
        )
        assert wait_port(self.port, 10.0), "socat did not listen"

    def cut(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        if proc is not None:
            proc.wait(10)


@pytest.fixture
def rig(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    link = Link(broker.port)
    transducer = NoisyTransducer()
    listener = Listener(broker.port, f"{P}/#")
    daemon = daemon_rig.Daemon(station_config(tmp_path, transducer.port, link.port), tmp_path / "daemon.log")
    yield broker, link, transducer, listener, daemon
    daemon.kill()
    listener.close()
    transducer.close()
    link.cut()
    broker.stop()


def test_everything_the_running_daemon_publishes_has_the_shape_icd_5_gives_its_topic(rig, tmp_path):
    broker, link, transducer, listener, daemon = rig

    # the link to the broker breaks: the daemon replays what it spooled meanwhile and re-sends its retained state
    wait_message(listener, lambda t, p: t == f"{P}/status" and p == b"online")
    link.cut()
    spool = tmp_path / "spool.sqlite"
    assert until(lambda: waiting(spool) > BACKLOG_MIN + 100), "the spool keeps what the broker cannot take"
    n = listener.count()
    link.mend()
    wait_message(listener, lambda t, p: t.startswith(f"{P}/sensor/") and record(p).get("replay") is True, n)

    # the hatch closed meanwhile (its event spooled, its state retained)
    wait_message(listener, lambda t, p: t == f"{P}/hatch/fa/event" and record(p).get("open") is False)
    wait_message(listener, lambda t, p: t == f"{P}/hatch/fa" and p == b"closed")

    # aft's sensor came back: its fault, cleared but unacknowledged, is acknowledged and ends
    fault = f"{P}/alarm/sensor_fault/pa/warning"
    wait_message(listener, lambda t, p: t == fault and record(p).get("lifecycle") == "rtn_unack")
    key = {"alarm": "sensor_fault", "source": "pa", "severity": "warning"}
    n = listener.count()
    publish(broker.port, f"{P}/cmd/ack", json.dumps({**key, "id": 7}), user_properties={"by": "alice"})
    _, result = wait_message(listener, lambda t, p: t == f"{P}/cmd/result", since=n)
    assert record(result)["ok"] is True and record(result)["by"] == "mqtt:alice" and record(result)["id"] == 7
    wait_message(listener, lambda t, p: t == fault and p == b"", n)
    n = listener.count()
    publish(broker.port, f"{P}/cmd/ack", json.dumps({**key, "severity": "dire"}))
    _, result = wait_message(listener, lambda t, p: t == f"{P}/cmd/result", since=n)
    assert record(result)["ok"] is False and record(result)["error"] == "bad_fields", result

    # a step: the lab transducer jumps by 40 Pa once its leak rate is being estimated
    wait_message(listener, lambda t, p: t == f"{P}/volume/lab" and record(p).get("leak_kg_per_day") is not None)
    transducer.offset = 40.0
    wait_message(listener, lambda t, p: t == f"{P}/step/lab")

    # the leak warning on fore, acknowledged
    warning = f"{P}/alarm/leak_rate/fore/warning"
    wait_message(listener, lambda t, p: t == warning and record(p).get("state") == "active")
    n = listener.count()
    publish(broker.port, f"{P}/cmd/ack", json.dumps({"alarm": "leak_rate", "source": "fore", "severity": "warning"}))
    wait_message(listener, lambda t, p: t == warning and record(p).get("acknowledged") is True, n)

    kept = retained(broker.port, f"{P}/#", wait=1.0)
    assert daemon.stop()[0] == 0, daemon.text()[-3000:]
    wait_message(listener, lambda t, p: t == f"{P}/status" and p == b"offline")
    messages = [(t, p) for _, t, p, _ in list(listener.messages)]

    # every message on every topic has its ICD §5 shape, and nothing is published outside ICD §5
    wrong = {}
    for t, p in messages:
        found = problems(t, p)
        if found:
            wrong.setdefault(t, found)
    assert not wrong, json.dumps(wrong, indent=1)[:4000]

    kinds = {kind_of(t)[0] for t, _ in messages}
    driven = {"status", "sensor", "hatch", "hatch_event", "volume", "volume_alarm", "step", "alarm", "metrics",
              "command", "command_result"}  # fmt: skip
    assert driven <= kinds, driven - kinds

    # only the retained kinds stay on the broker
    assert kept and {kind_of(t)[0] for t in kept} <= RETAINED, sorted(kept)
    assert kept[f"{P}/status"] == b"online" and kept[f"{P}/hatch/fa"] == b"closed"
    assert fault not in kept and record(kept[warning])["lifecycle"] == "acked"  # the ended alarm is gone

    # an alarm is removed only after its final record, which says it cleared
    for t in {t for t, _ in messages if kind_of(t)[0] == "alarm"}:
        on_topic = [p for top, p in messages if top == t]
        for before, after in zip(on_topic, on_topic[1:], strict=False):
            if after == b"" and before != b"":  # (a removal may be sent again after a reconnect)
                assert record(before)["state"] == "cleared", (t, before)

    # the replayed backlog is marked, and replayed telemetry has the shapes too (checked above)
    assert any(record(p).get("replay") is True for t, p in messages if kind_of(t)[0] in ("sensor", "volume"))

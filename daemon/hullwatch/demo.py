"""`hullwatch demo`: the whole monitor on a simulated PrK mock-up, on a machine with no hardware.

The story (hullwatch/sim/demo.toml) plays 100 times faster than real time: the PrK leak
doubles, a leak-rate warning sounds; the hatch closes and the leak is isolated to the PrK;
then a hole opens and the rapid-depressurisation emergency sounds. The buzzer and LED are
gpiozero mock pins, shown on screen as their pattern changes. A private mosquitto is
started when it is installed, and the daemon publishes to it; every sample is recorded.
At the end the demo says where the data went and how to look at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from hullwatch import config, present
from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, Event, HatchChange

SCENARIO = Path(__file__).resolve().parent / "sim" / "demo.toml"  # package data: works from any install
SPEED = 100.0
REPORT_EVERY_S = 1800.0  # story seconds between state lines per volume


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen | None, int | None]:
    """A private broker on a free loopback port, if mosquitto is installed."""
    if shutil.which("mosquitto") is None:
        return None, None
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    proc.terminate()
    return None, None


def _start_influxd(workdir: Path) -> tuple[subprocess.Popen | None, int | None]:
    """A private InfluxDB 1.x on a free loopback port with a `hullwatch` database, if influxd is installed."""
    if shutil.which("influxd") is None:
        return None, None
    port, rpc = _free_port(), _free_port()
    d = workdir / "influxdb"
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n[meta]\n  dir = "{d}/meta"\n'
        f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        '[monitor]\n  store-enabled = false\n[logging]\n  level = "error"\n'
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(["influxd", "run", "-config", str(conf)], **quiet)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _influx_query(port, "CREATE DATABASE hullwatch", post=True)
            return proc, port
        time.sleep(0.1)
    proc.terminate()
    return None, None


def _influx_query(port: int, q: str, post: bool = False) -> dict:
    data = urllib.parse.urlencode({"q": q, "db": "hullwatch"})
    url = f"http://127.0.0.1:{port}/query"
    req = urllib.request.Request(url, data=data.encode()) if post else urllib.request.Request(f"{url}?{data}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _influx_counts(port: int) -> str:
    """How many points each measurement holds, e.g. `sensor 9600, leak 480, ...`."""
    out = []
    for m in ("sensor", "leak", "hatch", "alarm"):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            series = _influx_query(port, f'SELECT count(*) FROM "{m}"')["results"][0].get("series") or []
            counts = [v for v in series[0]["values"][0][1:] if isinstance(v, int)] if series else [0]
            out.append(f"{m} {max(counts, default=0)}")
    return ", ".join(out)


def _config_text(
    workdir: Path, scenario: Path, speed: float, mqtt_port: int | None, influx_port: int | None = None
) -> str:
    mqtt = f'\n[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n' if mqtt_port else ""
    if influx_port:
        mqtt += f'\n[influxdb]\nurl = "http://127.0.0.1:{influx_port}"\napi = "v1"\ndatabase = "hullwatch"\n'
    mqtt += f'\n[spool]\npath = "{workdir / "spool.sqlite"}"\n'
    return f"""[station]
name = "prk-demo"

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
{
        "".join(
            f'''
[[sensor]]
name = "{n}"
segment = "{seg}"
driver = "simulated"
'''
            for n, seg in (("p_prk", "prk"), ("t_prk", "prk"), ("p_zv", "zvezda"), ("t_zv", "zvezda"))
        )
    }
[simulation]
scenario = "{scenario}"
speed = {speed!r}

[recorder]
path = "{workdir / "samples.csv"}"

[annunciator]
buzzer_gpio = 18
led_gpio = 23
ack_button_gpio = 24
{mqtt}"""


class _Story:
    """Prints what an operator would want to see: alarms, hatches, each volume now and then, the lab's outputs."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.next_state: dict[str, float] = {}
        self.alarms = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def event(self, e: Event) -> None:
        if isinstance(e, AlarmTransition):
            self.alarms += e.state is AlarmState.ACTIVE
            self.say(("  !! " if e.state is AlarmState.ACTIVE else "  ok ") + present.describe(e))
        elif isinstance(e, HatchChange):
            self.say("  >> " + present.describe(e))
        elif isinstance(e, Estimate) and e.leak_kg_per_day is not None and e.time >= self.next_state.get(e.volume, 0):
            self.next_state[e.volume] = e.time + REPORT_EVERY_S
            self.say("     " + present.describe(e))

    def lab(self, text: str) -> None:
        self.say(f"  [buzzer/LED] {text}")


def run(speed: float = SPEED, scenario: Path = SCENARIO) -> int:
    """Play the demo; 0 when it ran to the end."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from hullwatch.annunciator import pattern
    from hullwatch.service import Daemon

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="hullwatch-demo-"))
    broker, port = _start_mosquitto(workdir)
    influxd, influx_port = _start_influxd(workdir)
    cfg_path = workdir / "hullwatch.toml"
    cfg_path.write_text(_config_text(workdir, scenario, speed, port, influx_port))
    factory = MockFactory()
    Device.pin_factory = factory
    story = _Story()
    from hullwatch.sim.scenario import load

    sc = load(str(scenario))
    duration = sc.duration_s or 3600.0
    story.say(f"hullwatch demo: {sc.description}")
    story.say(
        f"a simulated PrK (4 m³) + Zvezda (75 m³) mock-up, {duration / 3600:.1f} h of story at {speed:g}x "
        f"(about {duration / speed / 60:.0f} min); Ctrl-C stops it"
    )
    story.say(
        "  story: 0:00 leak 0.45 kg/day in the PrK, hatch open; 1:00 it doubles; 2:00 the hatch closes; 3:00 a hole"
    )
    if port:
        story.say(f"  watch it live from another terminal: hullwatch watch --port {port} --prefix hullwatch/prk-demo")
    daemon = Daemon(config.load(str(cfg_path)), pin_factory=factory)
    daemon.outputs.append(story.event)
    shown = daemon.desk.show
    last = {"pattern": ""}

    def show(a) -> None:
        shown(a)
        p = pattern(a)
        if p.name != last["pattern"]:
            last["pattern"] = p.name
            story.lab(p.describe())

    daemon.desk.show = show
    show(daemon.desk.book.annunciation())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sim = daemon.drivers[0]
    runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    runner.start()
    # to the end of the story as processed, not as played: a slow machine takes longer but tells all of it
    while not stop.is_set() and daemon.processed_to - sim.epoch0 < duration:
        stop.wait(0.2)
    finished = not stop.is_set()
    stop.set()
    runner.join(10)
    counts = _influx_counts(influx_port) if influx_port else ""
    for proc in (broker, influxd):
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    factory.reset()
    story.say("")
    story.say(f"the demo {'ended' if finished else 'was stopped'}: {story.alarms} alarm activations.")
    story.say(f"  every sample read:  {workdir / 'samples.csv'}")
    story.say(f"  replay it:          hullwatch analyze --summary -c {cfg_path} {workdir / 'samples.csv'}")
    story.say(f"  the configuration:  {cfg_path}")
    story.say(f"  a test report:      hullwatch report -c {cfg_path} {workdir / 'samples.csv'} -o {workdir / 'report'}")
    if port:
        story.say(
            f"  MQTT went to a private mosquitto on 127.0.0.1:{port} (stopped now); on a real station watch it "
            "with: mosquitto_sub -h HOST -t 'hullwatch/#' -v"
        )
    else:
        story.say("  MQTT: mosquitto is not installed, so nothing was published (scripts/setup.sh installs it)")
    if influx_port:
        story.say(f"  InfluxDB (a private influxd, stopped now; data in {workdir / 'influxdb'}): {counts} points")
        story.say(
            f"    look again: influxd run -config {workdir / 'influxdb.conf'} &  then  "
            f"influx -port {influx_port} -database hullwatch -execute 'SELECT * FROM alarm'"
        )
        story.say("    dashboards for Grafana: deploy/grafana/")
    else:
        story.say("  InfluxDB: influxd is not installed, so nothing was written (scripts/setup.sh installs it)")
    return 0

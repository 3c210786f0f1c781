"""The daemon end to end on the in-process simulated module: drivers → core → outputs, recorder round trip."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hullwatch import config
from hullwatch.cli import main as cli_main
from hullwatch.core.model import AlarmState, AlarmTransition
from hullwatch.service import Daemon

ROOT = Path(__file__).resolve().parents[1]


def sim_config(tmp_path, scenario="prk-2026.toml", speed=3600.0, recorder=True):
    text = (ROOT / "config" / "hullwatch.sim.toml").read_text()
    text = text.replace('scenario = "scenarios/prk-2026.toml"', f'scenario = "{ROOT}/config/scenarios/{scenario}"')
    text = text.replace("speed = 60.0", f"speed = {speed}")
    if recorder:
        text += f'\n[recorder]\npath = "{tmp_path}/samples.csv"\n'
    path = tmp_path / "sim.toml"
    path.write_text(text)
    return config.load(str(path))


def run_for(daemon, seconds):
    events = []
    daemon.outputs.append(events.append)
    stop = threading.Event()
    t = threading.Thread(target=daemon.run, args=(stop,))
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    return events


def test_simulated_prk_doubling_trips_the_warning_and_replays_identically(tmp_path):
    cfg = sim_config(tmp_path)
    daemon = Daemon(cfg)
    events = run_for(daemon, 4.0)  # about 4 h of story at 3600x: the doubling comes at 2 h
    active = [e for e in events if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE]
    warnings = [a for a in active if a.alarm == "leak_rate" and a.severity.label == "warning"]
    assert warnings, [str(a) for a in active]
    start = daemon.drivers[0].epoch0
    assert warnings[0].time - start > 2 * 3600  # not before the doubling
    # the recording replays to the same alarm transitions
    out = tmp_path / "out.jsonl"
    assert cli_main(["analyze", "-c", cfg.path, str(tmp_path / "samples.csv"), "-o", str(out)]) == 0
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    replayed = [
        (o["alarm"], o["source"], o["severity"], o["state"], round(o["time"], 3))
        for o in replayed
        if o["type"] == "alarm"
    ]
    live = [
        (e.alarm, e.source, e.severity.label, e.state.value, round(e.time, 3))
        for e in events
        if isinstance(e, AlarmTransition)
    ]
    assert replayed == live[: len(replayed)] and len(live) - len(replayed) <= 1


def test_the_hatch_closure_isolates_the_leak_live(tmp_path):
    cfg = sim_config(tmp_path, "hatch-isolation.toml", recorder=False)
    events = run_for(Daemon(cfg), 3.0)  # closure at 1 h of story
    active = [
        (e.alarm, e.source, e.severity.label)
        for e in events
        if isinstance(e, AlarmTransition) and e.state is AlarmState.ACTIVE
    ]
    assert ("leak_rate", "prk-zvezda", "warning") in active
    assert ("leak_rate", "prk", "warning") in active
    assert not [a for a in active if a[1] == "zvezda"]


def test_run_stops_cleanly_on_sigterm(tmp_path):
    cfg = sim_config(tmp_path, speed=60.0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hullwatch", "run", "-c", cfg.path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(2.0)
    assert proc.poll() is None
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert time.monotonic() - t < 5
    assert "monitoring prk-sim" in out and "stopped" in out
    assert (tmp_path / "samples.csv").read_text().startswith("time,sensor,quantity,value\n")


def test_simulated_sensors_need_a_simulation_section_to_run(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(
        '[station]\nname = "x"\n[[segment]]\nname = "a"\nvolume_m3 = 1.0\n'
        '[[sensor]]\nname = "p"\nsegment = "a"\ndriver = "simulated"\n'
    )
    assert cli_main(["check-config", "-c", str(path)]) == 0  # fine for analyze
    assert cli_main(["run", "-c", str(path)]) == 78
    assert "[simulation]" in capsys.readouterr().err

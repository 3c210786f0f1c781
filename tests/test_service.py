"""The daemon end to end on the in-process simulated module: drivers → core → outputs, recorder round trip."""

import json
import threading
import time
from pathlib import Path

import pytest

from daemon_rig import Daemon as DaemonProcess
from daemon_rig import Transducer, serial_sensor, station
from hullwatch import config
from hullwatch.cli import main as cli_main
from hullwatch.core.model import AlarmState, AlarmTransition, Quantity, Sample, Severity
from hullwatch.service import MAX_BATCH, BuildError, Daemon, build, rebuild
from hullwatch.sinks.spool import time_ns

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


def run_until_story(daemon, hours, timeout=120.0):
    """Run the daemon in a thread until its events cover `hours` of the simulated story; the events."""
    events = []
    daemon.outputs.append(events.append)
    stop = threading.Event()
    t = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    t.start()
    try:
        start = daemon.drivers[0].epoch0  # the simulation's story starts there
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if events and events[-1].time - start >= hours * 3600:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"{hours} h of story not covered within {timeout} s")
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    return events


def test_simulated_prk_doubling_trips_the_warning_and_replays_identically(tmp_path):
    cfg = sim_config(tmp_path)
    daemon = Daemon(cfg)
    events = run_until_story(daemon, 4.0)  # the doubling comes at 2 h
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
    events = run_until_story(Daemon(cfg), 3.0)  # closure at 1 h of story
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
    daemon = DaemonProcess(Path(cfg.path), tmp_path / "daemon.log")
    try:
        assert daemon.wait_for_log("monitoring prk-sim", timeout=60), daemon.text()
        code, took = daemon.stop(timeout=30)
        assert code == 0, daemon.text()
        assert took < 10, "within the unit's TimeoutStopSec"
        assert "stopped" in daemon.text()
        assert (tmp_path / "samples.csv").read_text().startswith("time,sensor,quantity,value\n")
    finally:
        daemon.kill()


def test_simulated_sensors_need_a_simulation_section_to_run(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(
        '[station]\nname = "x"\n[[segment]]\nname = "a"\nvolume_m3 = 1.0\n'
        '[[sensor]]\nname = "p"\nsegment = "a"\ndriver = "simulated"\n'
    )
    assert cli_main(["check-config", "-c", str(path)]) == 0  # fine for analyze
    assert cli_main(["run", "-c", str(path)]) == 78
    assert "[simulation]" in capsys.readouterr().err


# -- building, batches, the last events, health, reloads (in process) ---------------------------------------------


def station_config(tmp_path, port="/dev/null-not-there", extra="", name="hullwatch.toml", stale_after_s=1.0):
    path = tmp_path / name
    path.write_text(station("bench", port, stale_after_s, extra))
    return config.load(str(path))


def test_step_takes_a_bounded_batch_so_the_loop_can_look_at_stop(tmp_path):
    daemon = build(station_config(tmp_path))
    t = time.time()
    for i in range(5000):
        daemon.samples.put(Sample(t + i * 1e-3, "p", Quantity.PRESSURE, 101325.0))
    daemon.step(0.0)
    assert daemon.samples.qsize() == 5000 - MAX_BATCH
    daemon.close()


def test_a_burst_of_lines_read_at_one_instant_keeps_one_influxdb_timestamp_each(tmp_path):
    """InfluxDB keys a point by series and time (whole microseconds): a burst must not collapse into fewer."""
    daemon = build(station_config(tmp_path))
    fed = []
    feed = daemon.monitor.feed
    daemon.monitor.feed = lambda s: (fed.append(s), feed(s))[1]
    t = time.time()
    for i in range(500):
        daemon.samples.put(Sample(t, "p", Quantity.PRESSURE, 101325.0 + i))
    daemon.step(0.0)
    daemon.close()
    assert len(fed) == 500
    assert len({time_ns(s.time) for s in fed}) == 500


def test_close_passes_the_last_samples_through_the_core_and_out(tmp_path):
    daemon = build(station_config(tmp_path))
    events = []
    daemon.outputs.append(events.append)
    t = time.time()
    for i in range(15):  # 1.4 s: past low_pressure's on-delay
        daemon.samples.put(Sample(t + i * 0.1, "p", Quantity.PRESSURE, 50_000.0))
    daemon.close()
    alarms = {(e.alarm, e.severity.label) for e in events if isinstance(e, AlarmTransition)}
    assert ("low_pressure", "emergency") in alarms, "the core's last events are not dropped"
    assert daemon.desk.book.annunciation().worst_unacked is Severity.EMERGENCY


def test_sensor_health_tells_a_silent_sensor_and_a_garbling_one_from_a_good_one(tmp_path):
    good, garbling = Transducer(), Transducer(line=b"#@!?\n", interval_s=0.05)
    extra = serial_sensor("garbling", garbling.port) + serial_sensor("unplugged", str(tmp_path / "no-such-tty"))
    daemon = build(station_config(tmp_path, good.port, extra, stale_after_s=1.0))
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = daemon.sensor_health()
            if health["unplugged"]["quality"] == "bad" and health["garbling"]["bad_lines"] > 3:
                break
            time.sleep(0.1)
        assert health["p"]["quality"] == "good" and health["p"]["errors"] == 0
        assert health["unplugged"]["quality"] == "bad", "never read: not good"
        assert health["unplugged"]["silent_s"] > 1.0
        assert health["garbling"]["quality"] != "good"
        assert health["garbling"]["errors"] >= health["garbling"]["bad_lines"] > 3
    finally:
        stop.set()
        runner.join(10)
        good.close()
        garbling.close()


@pytest.fixture
def mock_pins():
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


class Running:
    """A daemon run as `hullwatch run` runs it (reloads included), in a thread."""

    def __init__(self, daemon, path) -> None:
        self.daemon = daemon
        self.path = str(path)
        self.stop = threading.Event()
        self._asked = threading.Event()
        self._answered = threading.Event()
        self.outcome = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        d = self.daemon
        while d is not None:
            d = d.run(self.stop, None, self._reload)

    def _reload(self, old):
        if not self._asked.is_set():
            return None
        self._asked.clear()
        try:
            new = rebuild(old, self.path)
        except BuildError as exc:
            old.reload_refused(exc.problems)
            self.outcome = exc
            self._answered.set()
            return None
        self.outcome = self.daemon = new
        self._answered.set()
        return new

    def reload(self):
        """SIGHUP: the new daemon, or the BuildError that kept the old one."""
        self._answered.clear()
        self._asked.set()
        assert self._answered.wait(10)
        return self.outcome

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def sound(daemon) -> None:
    """An emergency, as the core would raise it."""
    t = AlarmTransition(time.time(), "low_pressure", "lab", Severity.EMERGENCY, AlarmState.ACTIVE, 5e4, 65300.0)
    daemon.desk.transitions([t])


def test_a_reload_hands_the_annunciator_and_its_pins_over(tmp_path, mock_pins):
    pins = "\n[annunciator]\nbuzzer_gpio = {b}\nled_gpio = {led}\nack_button_gpio = 24\n"
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("bench", "/dev/null-not-there", 2.0, pins.format(b=18, led=23)))
    running = Running(build(config.load(str(path)), mock_pins), path)
    try:
        first = running.daemon
        assert wait_for(lambda: first._annunciating)
        # unchanged settings: the same annunciator, taken over
        second = running.reload()
        assert isinstance(second, Daemon) and second.annunciator is first.annunciator
        # the pins swapped: the old annunciator lets them go, the new one takes them
        path.write_text(station("bench", "/dev/null-not-there", 2.0, pins.format(b=23, led=18)))
        third = running.reload()
        assert isinstance(third, Daemon) and third.annunciator is not second.annunciator
        assert wait_for(lambda: third._annunciating)
        sound(third)
        assert wait_for(lambda: mock_pins.pin(23).state), "the buzzer sounds on its new pin"
        third.desk.acknowledge_all("test")
        # a pin nobody can have: the reload is refused and the running annunciator is back on its pins
        from gpiozero import LED

        squatter = LED(5, pin_factory=mock_pins)
        path.write_text(station("bench", "/dev/null-not-there", 2.0, pins.format(b=5, led=23)))
        refused = running.reload()
        assert isinstance(refused, BuildError) and "annunciator" in refused.problems[0]
        assert running.daemon is third and third.annunciator is not None
        assert "reload refused" in third.status()
        t = AlarmTransition(time.time(), "rapid_depress", "lab", Severity.EMERGENCY, AlarmState.ACTIVE, 20.0, 9.19)
        third.desk.transitions([t])
        assert wait_for(lambda: mock_pins.pin(23).state), "the running daemon's buzzer still sounds"
        record = third.desk.book.record(("reload_fault", "config", Severity.ADVISORY))
        assert record is not None and record.condition_active
        squatter.close()
    finally:
        running.close()
    assert not running.thread.is_alive()


def test_a_reload_keeps_the_alarm_book(tmp_path):
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("bench", "/dev/null-not-there", 2.0, "[alarms]\nmax_maintenance_s = 600.0\n"))
    running = Running(build(config.load(str(path))), path)
    try:
        first = running.daemon
        assert wait_for(lambda: first._annunciating)
        sound(first)
        first.desk.command("ack", {"all": True}, "mqtt:alice")
        assert first.desk.command("maintenance", {"on": True, "sources": ["p"]}, "mqtt:dave")["ok"]
        second = running.reload()
        assert isinstance(second, Daemon) and second is not first
        assert wait_for(lambda: second._annunciating)
        record = second.desk.book.record(("low_pressure", "lab", Severity.EMERGENCY))
        assert record is not None and record.state.value == "acked" and record.by == "mqtt:alice"
        assert second.desk.book.maintenance()["p"] == first.desk.book.maintenance()["p"]
    finally:
        running.close()


def test_a_reload_that_cannot_be_built_leaves_nothing_open(tmp_path):
    path = tmp_path / "hullwatch.toml"
    recorder = f'\n[recorder]\npath = "{tmp_path}/samples.csv"\n'
    path.write_text(station("bench", "/dev/null-not-there", 2.0, recorder))
    running = Running(build(config.load(str(path))), path)
    try:
        old = running.daemon
        broken = recorder + f'\n[spool]\npath = "{tmp_path}/spool.sqlite"\n[mqtt]\nusername = "u"\n'
        broken += f'password_file = "{tmp_path}/no-such-password"\n'
        path.write_text(station("bench", "/dev/null-not-there", 2.0, broken))
        refused = running.reload()
        assert isinstance(refused, BuildError)
        assert refused.problems == [
            f"{path}: mqtt.password_file: cannot read {tmp_path}/no-such-password: No such file or directory"
        ]
        assert running.daemon is old and old.recorder is not None
        from hullwatch.sinks.spool import Spool

        Spool(str(tmp_path / "spool.sqlite")).close()  # not left locked by the failed build
    finally:
        running.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()

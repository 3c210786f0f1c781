"""Setting the wall clock moves no alarm: steady time inside, wall-clock time in what is stored, a step told once."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from daemon_rig import Transducer, station
from hullwatch import config, timebase
from hullwatch.core.model import AlarmState, AlarmTransition, Quantity, Sample, Severity
from hullwatch.recorder import Recorder
from hullwatch.samples import read_samples
from hullwatch.service import build
from influx_stub import InfluxStub

NAMES = {"p": frozenset({Quantity.PRESSURE})}


# -- the time base ------------------------------------------------------------------------------------------------


class Clocks:
    """A wall clock and a monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.wall_s = 1_780_000_000.0
        self.mono_s = 500.0

    def tick(self, s: float) -> None:
        self.wall_s += s
        self.mono_s += s


def test_steady_time_follows_the_monotonic_clock_and_tells_a_step_once():
    c = Clocks()
    tb = timebase.Timebase(lambda: c.wall_s, lambda: c.mono_s)
    assert tb.now() == c.wall_s and tb.shift() == 0.0 and tb.check() is None
    c.tick(10.0)
    assert tb.now() == 1_780_000_010.0
    c.wall_s += 86_400.0  # NTP a day forward
    assert tb.now() == 1_780_000_010.0, "steady time does not jump"
    assert tb.check() == 86_400.0
    assert tb.check() is None, "told once"
    assert tb.to_wall(tb.now()) == c.wall_s
    c.wall_s -= 3600.0
    assert tb.check() == -3600.0 and tb.to_wall(tb.now()) == c.wall_s


def test_a_slew_is_followed_but_is_no_step():
    c = Clocks()
    tb = timebase.Timebase(lambda: c.wall_s, lambda: c.mono_s)
    for _ in range(100):  # 500 ppm for 100 s: 50 ms in all
        c.mono_s += 1.0
        c.wall_s += 1.0005
        assert tb.check() is None
    assert abs(tb.to_wall(tb.now()) - c.wall_s) <= timebase.TRACK_S
    c.wall_s += 0.0004  # noise below TRACK_S leaves the offset alone
    before = tb.offset
    assert tb.check() is None and tb.offset == before


def test_a_simulation_runs_on_its_own_clock():
    story = [1_780_000_000.0]
    tb = timebase.Fixed(lambda: story[0])
    story[0] += 7200.0
    assert tb.now() == story[0] and tb.check() is None and tb.to_wall(5.0) == 5.0


# -- the recorder's files stay in time order ----------------------------------------------------------------------


def sample(t: float, value: float = 101325.0) -> Sample:
    return Sample(t, "p", Quantity.PRESSURE, value)


def times(path) -> list[float]:
    return [s.time for s in read_samples(str(path), NAMES)]  # raises if a time goes back


def test_a_row_going_back_begins_a_new_file_and_a_small_step_back_takes_the_time_before(tmp_path):
    path = tmp_path / "samples.csv"
    rec = Recorder(str(path))
    t = 1_780_000_000.0
    rec.write(sample(t))
    rec.write(sample(t + 1.0))
    rec.write(sample(t + 0.6))  # 0.4 s back: written at t + 1
    rec.write(sample(t + 2.0))
    rec.write(sample(t + 2.0 - 3600.0))  # the clock set an hour back
    rec.write(sample(t + 3.0 - 3600.0))
    rec.close()
    (old,) = rec.rotated()
    assert times(old) == [t, t + 1.0, t + 1.0, t + 2.0]
    assert times(path) == [t + 2.0 - 3600.0, t + 3.0 - 3600.0]


def test_a_file_left_by_a_run_whose_clock_was_ahead_is_not_continued_backwards(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("time,sensor,quantity,value\n1780086400.000000,p,pressure,101325.0\n")
    rec = Recorder(str(path))
    rec.write(sample(1_780_000_000.0))  # a Pi without a real-time clock, before NTP
    rec.close()
    (old,) = rec.rotated()
    assert times(old) == [1_780_086_400.0] and times(path) == [1_780_000_000.0]


def test_new_file_moves_a_file_with_rows_aside_and_no_empty_one(tmp_path):
    path = tmp_path / "samples.csv"
    rec = Recorder(str(path))
    rec.new_file("nothing written yet")
    rec.write(sample(1_780_000_000.0))
    rec.new_file("the wall clock was set forward")
    rec.new_file("twice")
    rec.write(sample(1_780_086_400.0))
    rec.close()
    assert [times(p) for p in rec.rotated()] == [[1_780_000_000.0]]
    assert times(path) == [1_780_086_400.0]


# -- the daemon -----------------------------------------------------------------------------------------------------


@pytest.fixture
def wall(monkeypatch):
    """Set the process's wall clock as the daemon sees it: wall(+86400) steps it a day forward."""
    jump = [0.0]
    monkeypatch.setattr(timebase.STEADY, "_wall", lambda: time.time() + jump[0])
    monkeypatch.setattr(timebase.STEADY, "offset", timebase.STEADY.offset)  # restored afterwards

    def step(s: float) -> None:
        jump[0] += s

    return step


@pytest.fixture
def influx():
    stub = InfluxStub()
    yield stub
    stub.close()


def wait_for(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Station:
    """One serial pressure sensor on a pty, recorder and InfluxDB (a stub) on, the daemon running in a thread."""

    def __init__(self, tmp_path, influx: InfluxStub, stale_after_s: float = 1.0) -> None:
        self.stale_after_s = stale_after_s
        self.transducer = Transducer(interval_s=0.05)
        self.samples_path = tmp_path / "samples.csv"
        extra = (
            f'[recorder]\npath = "{self.samples_path}"\n\n[spool]\npath = "{tmp_path}/spool.sqlite"\n'
            f'commit_interval_s = 0.2\n\n[influxdb]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "hullwatch"\n'
        )
        path = tmp_path / "hullwatch.toml"
        path.write_text(station("bench", self.transducer.port, stale_after_s, extra))
        self.daemon = build(config.load(str(path)))
        self.events: list = []
        self.daemon.outputs.append(self.events.append)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.daemon.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def faults(self, state: AlarmState = AlarmState.ACTIVE) -> list[AlarmTransition]:
        return [
            e
            for e in list(self.events)
            if isinstance(e, AlarmTransition) and e.alarm == "sensor_fault" and e.state is state
        ]

    def newest_sample(self) -> float:
        """The latest sample's steady time the daemon fed to its core (-inf before the first)."""
        return self.daemon._sensor_time.get("p", -math.inf)

    def close(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.thread.join(10)
            self.transducer.close()


@pytest.fixture
def running(tmp_path, influx):
    made: list[Station] = []

    def start(stale_after_s: float = 1.0) -> Station:
        made.append(Station(tmp_path, influx, stale_after_s))
        return made[-1]

    yield start
    for s in made:
        s.close()


def clock_steps(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("the wall clock was set")]


def sensor_points(influx: InfluxStub) -> list[float]:
    return sorted(int(t) / 1e9 for (_series, t) in influx.stored("sensor"))


def test_a_day_forward_raises_no_fault_and_is_told_once(running, wall, influx, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hullwatch")
    st = running(stale_after_s=1.0)
    assert wait_for(lambda: st.newest_sample() > -math.inf and st.faults() == [] and len(sensor_points(influx)) > 5)
    stepped_at = time.time()
    wall(+86_400.0)  # NTP after boot, on a Pi without a real-time clock
    assert wait_for(lambda: len(clock_steps(caplog)) == 1)
    first_after = time.time()
    # steady time goes on: wait until the core has seen samples for three stale limits past the step
    since = st.newest_sample()
    assert wait_for(lambda: st.newest_sample() > since + 3 * st.stale_after_s)
    assert st.faults() == [], "a clock step is no sensor fault"
    assert len(clock_steps(caplog)) == 1 and "forward by 86400" in clock_steps(caplog)[0]
    # stored: wall-clock times, the step once in InfluxDB
    assert wait_for(lambda: influx.stored("clock_step"))
    ((series, t), fields), *more = influx.stored("clock_step").items()
    assert not more and series == "clock_step,station=bench" and fields == "step_s=86400"
    assert abs(int(t) / 1e9 - (first_after + 86_400.0)) < 30
    assert wait_for(lambda: sensor_points(influx)[-1] > first_after + 86_400.0)
    points = sensor_points(influx)
    assert all(p < stepped_at + 30 or p > stepped_at + 86_400.0 - 30 for p in points), "each on the wall clock"
    # the recorder began a new file at the step: each file in time order, the new one a day ahead
    st.close()
    (before,) = st.daemon.recorder.rotated()
    assert max(times(before)) < stepped_at + 30
    assert min(times(st.samples_path)) > stepped_at + 86_400.0 - 30


def test_an_hour_back_still_flags_a_silent_sensor_in_time(running, wall, influx, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hullwatch")
    st = running(stale_after_s=1.0)
    assert wait_for(lambda: st.newest_sample() > -math.inf and len(sensor_points(influx)) > 5)
    stepped_at = time.time()
    wall(-3600.0)
    assert wait_for(lambda: len(clock_steps(caplog)) == 1)
    assert "back by 3600" in clock_steps(caplog)[0]
    since = st.newest_sample()
    assert wait_for(lambda: st.newest_sample() > since + 1.0)
    assert st.faults() == []
    st.transducer.streaming.clear()  # the sensor goes silent
    silent_from = time.monotonic()
    assert wait_for(lambda: st.faults(), timeout=60.0)
    flagged_after = time.monotonic() - silent_from
    assert flagged_after < st.stale_after_s + 2.0, f"flagged {flagged_after:.2f} s after it went silent"
    # stored an hour back, as the wall clock says; the recorder's files each in time order
    assert wait_for(lambda: sensor_points(influx)[0] < stepped_at - 3000)
    st.close()
    (before,) = st.daemon.recorder.rotated()
    after = times(st.samples_path)
    assert after and max(after) < min(times(before)) - 3000


def test_alarm_payloads_carry_wall_clock_times(tmp_path, wall):
    path = tmp_path / "hullwatch.toml"
    path.write_text(station("bench", "/dev/null-not-there", 1.0))
    daemon = build(config.load(str(path)))
    try:
        sent = []

        class Broker:
            def alarm(self, record, *key, gone=False):
                sent.append(record)

            def volume_alarm(self, volume, active):
                pass

        daemon.mqtt = Broker()
        daemon.desk.outputs.append(daemon._publish_alarm)
        wall(-3600.0)
        daemon.step(0.0)
        now = daemon.clock()
        daemon.desk.transitions(
            [AlarmTransition(now, "low_pressure", "lab", Severity.WARNING, AlarmState.ACTIVE, 8e4, 9e4)]
        )
        daemon.desk.command("shelve", {"alarm": "low_pressure", "source": "lab", "severity": "warning",
                                       "duration_s": 600}, "test")  # fmt: skip
        assert abs(sent[0]["time"] - (now - 3600.0)) < 0.01
        assert abs(sent[-1]["shelved_until"] - (now + 600 - 3600.0)) < 1.0
        assert abs(sent[-1]["changed_at"] - (time.time() - 3600.0)) < 1.0
    finally:
        daemon.mqtt = None
        daemon.close()


def test_a_clock_step_goes_to_influxdb_and_through_the_bridge():
    from hullwatch.bridge import Unstorable, to_record
    from hullwatch.sinks.influx import to_line
    from hullwatch.sinks.spool import Record, time_ns

    body = {"time": 1_780_086_400.5, "step_s": 86_400.0}
    line = to_line(Record(1, "clock_step", time_ns(body["time"]), body), "bench")
    assert line == "clock_step,station=bench step_s=86400 1780086400500000000"
    kind, t, stored = to_record("hullwatch/bench/clock_step", b'{"time": 1780086400.5, "step_s": 86400.0}',
                                "hullwatch", 1.0)  # fmt: skip
    assert (kind, t, stored) == ("clock_step", 1_780_086_400.5, {"station": "bench", "step_s": 86_400.0})
    with pytest.raises(Unstorable):
        to_record("hullwatch/bench/clock_step", b'{"time": 1780086400.5}', "hullwatch", 1.0)

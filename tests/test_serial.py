"""The serial transducer driver through real pseudo-terminals (socat), and `hullwatch simulate` + `run`."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hullwatch.core.model import Quality, Quantity
from hullwatch.sensors.presets import PRESETS
from hullwatch.sensors.serial_line import SerialDriver

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (scripts/setup.sh --test)")


class Transducer:
    """A pty pair made by socat: the driver opens `dev`, the test plays the device on `feed`."""

    def __init__(self, tmp_path: Path) -> None:
        self.dev = str(tmp_path / "dev")
        self.feed_path = str(tmp_path / "feed")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={self.dev}", f"pty,raw,echo=0,link={self.feed_path}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            if "starting data transfer loop" in line:
                break
        self.fd = os.open(self.feed_path, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view[:65536])
            view = view[n:]

    def read(self, timeout: float = 1.0) -> bytes:
        import select

        r, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 4096) if r else b""

    def stop(self) -> None:
        os.close(self.fd)
        self.proc.terminate()
        self.proc.wait(5)


class Running:
    """A driver in a thread, collecting what it emits."""

    def __init__(self, driver: SerialDriver) -> None:
        self.driver = driver
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=driver.run, args=(self.samples.append, self.stop), daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.samples) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.samples

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def prime(self, transducer: "Transducer", line: bytes = b"P = 1000.00 hPa\r\n", timeout: float = 30.0) -> None:
        """Write `line` until one arrives: the port is open (pyserial drops what came before its open())."""
        deadline = time.monotonic() + timeout
        while not self.samples:
            assert time.monotonic() < deadline, "the driver never read the port"
            transducer.write(line)
            time.sleep(0.1)


@pytest.fixture
def transducer(tmp_path):
    t = Transducer(tmp_path)
    yield t
    t.stop()


def vaisala(dev):
    return SerialDriver.from_options(
        "baro", {"port": dev, "line_regex": r"^P\s*=\s*(?P<pressure>[-+0-9.]+)\s*hPa", "units": {"pressure": "hPa"}}
    )


def test_streamed_lines_arrive_converted_in_order_with_their_arrival_time(transducer):
    run = Running(vaisala(transducer.dev))
    run.prime(transducer, b"P = 999.00 hPa\r\n")
    run.wait_for(1_000_000, timeout=0.5)  # the primer's last lines
    primed = len(run.samples)
    sent = []
    for i in range(50):
        sent.append((time.time(), 1000.0 + i * 0.01))
        transducer.write(f"P = {1000.0 + i * 0.01:.2f} hPa\r\n".encode())
        time.sleep(0.005)
    samples = run.wait_for(primed + 50)[primed:]
    run.close()
    assert [s.value for s in samples] == [float(f"{v:.2f}") * 100.0 for _, v in sent]
    assert all(s.quantity is Quantity.PRESSURE and s.quality is Quality.GOOD for s in samples)
    # stamped when read: not before the line was written, and not long after (a generous bound for a slow CPU)
    lags = [s.time - t for s, (t, _) in zip(samples, sent, strict=True)]
    assert min(lags) > -0.002 and max(lags) < 0.5, lags


def test_a_polled_device_is_asked_and_answers(transducer):
    driver = SerialDriver.from_options("pq", {"port": transducer.dev, "preset": "digiquartz", "interval_s": 0.1})
    run = Running(driver)
    answered = 0
    deadline = time.monotonic() + 30
    while answered < 5 and time.monotonic() < deadline:
        if b"*0100P3" in transducer.read(0.5):
            transducer.write(b"*000114.69595\r\n")
            answered += 1
    samples = run.wait_for(5)
    run.close()
    assert answered == 5
    assert samples[0].value == pytest.approx(14.69595 * 6894.757293168361)


def test_garbage_and_a_huge_line_cost_nothing_and_good_lines_still_come(transducer):
    run = Running(vaisala(transducer.dev))
    run.prime(transducer)
    rng = random.Random(5)
    transducer.write(
        b"".join(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60))) + b"\n" for _ in range(2000))
    )
    transducer.write(b"7" * (10 * 1024 * 1024) + b"\n")
    time.sleep(1.0)
    for i in range(5):
        transducer.write(f"P = 1013.2{i} hPa\r\n".encode())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [round(s.value, 6) for s in run.samples][-1:] != [101324.0]:
        time.sleep(0.05)
    run.close()
    good = [s for s in run.samples if s.quality is not Quality.BAD]
    bad = [s for s in run.samples if s.quality is Quality.BAD]
    assert [round(s.value, 6) for s in good[-5:]] == [101320.0 + i for i in range(5)]
    assert bad  # the garbage was reported as an unreadable episode
    # a burst this fast is mostly dropped unread (max_rate_hz), the rest read as garbage: all counted
    assert run.driver.rate_dropped > 0 and run.driver.bad_lines + run.driver.rate_dropped >= 1000
    assert len(run.driver.settings.parser.parse(b"P = 1013.25 hPa")) == 1


def test_unplugged_device_is_reopened_without_a_restart(transducer):
    run = Running(vaisala(transducer.dev))
    run.prime(transducer)
    transducer.stop()  # the USB adapter is pulled
    time.sleep(1.5)
    transducer.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.samples[-1].value != pytest.approx(100100.0):
        transducer.write(b"P = 1001.00 hPa\r\n")
        time.sleep(0.2)
    run.close()
    assert run.samples[-1].value == pytest.approx(100100.0)
    assert run.driver.reconnects >= 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_through_a_pty(transducer, preset):
    p = PRESETS[preset]
    driver = SerialDriver.from_options(
        "x", {"port": transducer.dev, "preset": preset, "interval_s": 0.1, "baudrate": 9600}
    )
    run = Running(driver)
    quantity = Quantity.TEMPERATURE if "temperature" in p.line_regex else Quantity.PRESSURE
    value = 295.15 if quantity is Quantity.TEMPERATURE else 101325.0
    deadline = time.monotonic() + 30
    while not run.samples and time.monotonic() < deadline:
        if p.poll is None or p.poll.strip() in transducer.read(0.3):
            transducer.write(p.render({quantity: value}))
            time.sleep(0.1)
    run.close()
    assert run.samples and run.samples[0].value == pytest.approx(value, rel=1e-4)


def test_simulate_and_run_see_a_hole(tmp_path):
    scenario = tmp_path / "hole.toml"
    scenario.write_text("""name = "hole"
[[segment]]
name = "lab"
volume_m3 = 1.0
[[transducer]]
name = "p_lab"
segment = "lab"
preset = "ptb330"
rate_hz = 10.0
noise_pa = 1.0
[[transducer]]
name = "t_lab"
segment = "lab"
preset = "plain_temperature"
measures = ["temperature"]
[[event]]
at_s = 4
leak = { segment = "lab", kg_per_day = 100.0 }
""")
    cfg = tmp_path / "run.toml"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hullwatch",
            "simulate",
            "--scenario",
            str(scenario),
            "--config-out",
            str(cfg),
            "--link-dir",
            str(tmp_path / "ports"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not cfg.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = cfg.read_text()
        assert 'preset = "ptb330"' in text and str(tmp_path / "ports" / "p_lab") in text
        out = tmp_path / "run.log"
        with open(out, "w") as f:
            run = subprocess.Popen([sys.executable, "-m", "hullwatch", "run", "-c", str(cfg)], stdout=f, stderr=f)
        try:
            deadline = time.monotonic() + 90  # the hole opens 4 s into the story; ~9 s here
            while "rapid_depress lab ACTIVE" not in out.read_text() and time.monotonic() < deadline:
                assert run.poll() is None, out.read_text()
                time.sleep(0.1)
            run.send_signal(signal.SIGTERM)
            run.wait(30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        log = out.read_text()
    finally:
        sim.terminate()
        sim.wait(5)
    assert run.returncode == 0, log
    assert "EMERGENCY rapid_depress lab ACTIVE" in log, log[-2000:]
    assert "sensor_fault" not in log, log[-2000:]

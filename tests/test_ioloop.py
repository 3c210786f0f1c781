"""The serial I/O loop: one thread, one selector, one batch per destination per wakeup; real ptys."""

import math
import os
import threading
import time

from hullwatch.core.model import Quantity, Sample
from hullwatch.sensors.ioloop import IoLoop
from hullwatch.sensors.serial_line import SerialDriver


class PipeDevice:
    """A device reading a pipe: each byte read becomes one sample; `due` counts its calls."""

    def __init__(self, name: str, every_s: float = math.inf, emit: bool = False) -> None:
        self.name = name
        self.emit = emit
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.every_s = every_s
        self.wake_at = -math.inf
        self.dues = 0
        self.closed = threading.Event()
        self.threads = set()

    def fileno(self):
        return None if self.closed.is_set() else self.r

    def readable(self, out):
        self.threads.add(threading.get_ident())
        for _ in os.read(self.r, 4096):
            out.append(Sample(time.monotonic(), self.name, Quantity.PRESSURE, 1.0))

    def due(self, now, out):
        self.dues += 1
        if self.emit and self.dues > 1:
            out.append(Sample(now, self.name, Quantity.PRESSURE, 2.0))
        self.wake_at = (
            (math.floor(now / self.every_s + 1e-6) + 1) * self.every_s if self.every_s < math.inf else math.inf
        )

    def close(self):
        self.closed.set()

    def write(self, n: int = 1) -> None:
        os.write(self.w, b"x" * n)


class Batches:
    """A destination recording each batch delivered."""

    def __init__(self) -> None:
        self.batches = []
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.batches.append(list(batch))

    def samples(self):
        with self.lock:
            return [s for b in self.batches for s in b]


def wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_samples_made_at_one_wakeup_go_over_in_one_batch_and_routes_change_atomically():
    loop, first, second = IoLoop(), Batches(), Batches()
    devices = [PipeDevice(f"d{i}", every_s=0.1, emit=True) for i in range(8)]  # all due at the same instants
    try:
        for d in devices:
            loop.attach(d, first)
        assert wait_for(lambda: all(d.dues for d in devices)), "each device's first `due` opens it"
        seen = len(first.batches)
        assert wait_for(lambda: len(first.batches) >= seen + 4)
        assert all(len(b) == 8 for b in first.batches[-2:]), [len(b) for b in first.batches]
        assert {s.sensor for s in first.batches[-1]} == {d.name for d in devices}
        for d in devices[:4]:
            loop.route(d, second)
        seen = len(first.batches)
        assert wait_for(lambda: len(second.batches) >= 3 and len(first.batches) >= seen + 3)
        assert {s.sensor for s in second.batches[-1]} == {d.name for d in devices[:4]}
        assert {s.sensor for s in first.batches[-1]} == {d.name for d in devices[4:]}
        for d in devices:
            d.write()
        assert wait_for(lambda: sum(s.value == 1.0 for s in first.samples() + second.samples()) == 8)
        assert len({t for d in devices for t in d.threads}) == 1, "one thread reads them all"
        done = loop.detach(devices[0])
        assert done.wait(10) and devices[0].closed.is_set()
        assert not loop.reading(devices[0]) and loop.reading(devices[1])
    finally:
        loop.close(10)
    assert all(d.closed.is_set() for d in devices), "closing the loop closes every port"


def test_timers_come_on_time_and_a_failing_device_does_not_stop_the_others():
    loop, got = IoLoop(), Batches()
    ticking = PipeDevice("ticking", every_s=0.05)
    broken = PipeDevice("broken")

    def explode(out):
        raise RuntimeError("a bug")

    broken.readable = explode
    try:
        loop.attach(ticking, got)
        loop.attach(broken, got)
        broken.write()
        assert wait_for(lambda: ticking.dues >= 10), "due every 50 ms"
        ticking.write()
        assert wait_for(lambda: len(got.samples()) == 1)
        assert broken.closed.wait(10), "the device that failed is closed (its `due` reopens it)"
    finally:
        loop.close(10)


def test_eight_serial_ports_on_one_loop_all_lines_arrive(tmp_path):
    """Real ptys (the driver opens the slave side), one loop reading all of them, lines parsed on the loop."""
    pairs = [os.openpty() for _ in range(8)]
    drivers = [
        SerialDriver.from_options(
            f"p{i}", {"port": os.ttyname(slave), "line_regex": r"^(?P<pressure>[0-9.]+)$", "units": {"pressure": "Pa"}}
        )
        for i, (_, slave) in enumerate(pairs)
    ]
    loop, got = IoLoop(), Batches()
    try:
        for d in drivers:
            loop.attach(d, got)
        assert wait_for(lambda: all(d.fileno() is not None for d in drivers)), "every port open"
        for n in range(20):
            for i, (master, _) in enumerate(pairs):
                os.write(master, f"{1000 * i + n}\n".encode())
            time.sleep(0.01)
        assert wait_for(lambda: len(got.samples()) == 160), len(got.samples())
        for i, d in enumerate(drivers):
            assert [s.value for s in got.samples() if s.sensor == d.name] == [1000.0 * i + n for n in range(20)]
    finally:
        loop.close(10)
        for master, slave in pairs:
            os.close(master)
            os.close(slave)
    assert all(d.fileno() is None for d in drivers)

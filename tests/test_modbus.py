"""The modbus driver against a fake Modbus RTU slave of our own on a real pty (and over TCP, and loop://).

The fake computes CRC-16/MODBUS itself, independent of the library under test, answers function 3 and 4
reads from a register map, and can stay silent, corrupt its CRC or send an exception response.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import struct
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import pytest

from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.sensors import modbus
from hullwatch.sensors.base import OptionError
from hullwatch.sensors.modbus import MODBUS_KEYS, ModbusDriver, decode

INTERVAL_S = 0.05
TIMEOUT_S = 0.1


# --- the fake slave -------------------------------------------------------------------------------------------


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF), low byte first as sent on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def words_of(value: float, kind: str, word_order: str = "big") -> list[int]:
    """The 16-bit registers a device would hold for `value` as `kind`."""
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}[kind]
    raw = struct.pack(fmt, value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words[::-1] if word_order == "little" else words


class FakeSlave:
    """A Modbus RTU slave serving reads of holding (3) and input (4) registers on a file descriptor."""

    def __init__(self, fd: int, unit: int = 1) -> None:
        self.fd = fd
        self.units = {unit}  # several: slaves on one bus, sharing the register tables
        self.tables: dict[int, dict[int, int]] = {3: {}, 4: {}}
        self.mode = "ok"  # "ok" | "silent" | "bad_crc" | "exception"
        self.requests = 0
        self.turnaround_s = 0.0  # how long a slave takes to answer; a request meanwhile collides on the bus
        self.collisions = 0
        self.last_unit = 0  # the slave addressed by the request being answered (0: none)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def put(self, function: int, address: int, value: float, kind: str = "float32", word_order: str = "big") -> None:
        """Store `value` at `address` of the holding (3) or input (4) table."""
        for i, word in enumerate(words_of(value, kind, word_order)):
            self.tables[function][address + i] = word

    def start(self) -> FakeSlave:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 256)
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= 8:
                frame = bytes(buf[:8])
                del buf[:8]
                if crc16_modbus(frame[:6]) != frame[6:]:
                    buf.clear()  # out of step: drop everything and wait for the next request
                    break
                self.last_unit = frame[0]
                if self.turnaround_s and select.select([self.fd], [], [], self.turnaround_s)[0]:
                    self.collisions += 1  # another master talking while this request is being answered
                reply = self._answer(frame)
                self.last_unit = 0
                if reply:
                    os.write(self.fd, reply)

    def _answer(self, frame: bytes) -> bytes | None:
        unit, function, address, count = struct.unpack(">BBHH", frame[:6])
        if unit not in self.units:
            return None
        self.requests += 1
        if self.mode == "silent":
            return None
        table = self.tables.get(function)
        if table is None:
            pdu = bytes([function | 0x80, 0x01])  # illegal function
        elif self.mode == "exception":
            pdu = bytes([function | 0x80, 0x04])  # slave device failure
        elif any(a not in table for a in range(address, address + count)):
            pdu = bytes([function | 0x80, 0x02])  # illegal data address
        else:
            data = b"".join(struct.pack(">H", table[a]) for a in range(address, address + count))
            pdu = bytes([function, len(data)]) + data
        adu = bytes([unit]) + pdu
        crc = crc16_modbus(adu)
        if self.mode == "bad_crc":
            crc = bytes([crc[0] ^ 0x5A, crc[1]])
        return adu + crc


@pytest.fixture(autouse=True)
def fresh_buses(monkeypatch) -> None:
    """Each test its own buses: a pty's name is used again by the next test, for another device."""
    monkeypatch.setattr(modbus, "_BUSES", {})


@pytest.fixture
def pty_slave() -> Iterator[tuple[FakeSlave, str]]:
    """A fake slave on the master side of a pty; the driver opens the tty path."""
    master, slave_fd = os.openpty()
    tty.setraw(slave_fd)
    path = os.ttyname(slave_fd)
    fake = FakeSlave(master).start()
    try:
        yield fake, path
    finally:
        fake.stop()
        for fd in (master, slave_fd):
            with suppress(OSError):
                os.close(fd)


# --- helpers --------------------------------------------------------------------------------------------------


def opts(port: str, registers: list[dict] | None = None, **more: Any) -> dict[str, Any]:
    """Driver options with fast timing."""
    base: dict[str, Any] = {"port": port, "slave": 1, "interval_s": INTERVAL_S, "timeout_s": TIMEOUT_S}
    if registers is not None:
        base["registers"] = registers
    return base | more


@contextmanager
def running(driver: ModbusDriver) -> Iterator[list[Sample]]:
    """Run the driver in a thread; on exit stop it and check that it returned within a second."""
    samples: list[Sample] = []
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(samples.append, stop), daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        t0 = time.monotonic()
        thread.join(5)
        took = time.monotonic() - t0
    assert not thread.is_alive(), "run() did not return after stop"
    assert took < 1.0, f"run() took {took:.2f} s to return after stop"


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def good(samples: list[Sample], quantity: Quantity) -> list[Sample]:
    return [s for s in samples if s.quantity == quantity and s.quality == Quality.GOOD]


def bad(samples: list[Sample], quantity: Quantity | None = None) -> list[Sample]:
    return [s for s in samples if s.quality == Quality.BAD and quantity in (None, s.quantity)]


# --- the fake itself ------------------------------------------------------------------------------------------


def test_fake_crc_matches_the_published_check_value() -> None:
    assert crc16_modbus(b"123456789") == struct.pack("<H", 0x4B37)
    # the classic example frame: read 1 holding register at 0 from slave 1 → 01 03 00 00 00 01 84 0A
    assert crc16_modbus(bytes.fromhex("010300000001")) == bytes.fromhex("840A")


# --- decoding (pure) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "order"),
    [
        (-12345, "int16", "big"),
        (54321, "uint16", "big"),
        (-123456789, "int32", "big"),
        (-123456789, "int32", "little"),
        (3_000_000_000, "uint32", "big"),
        (3_000_000_000, "uint32", "little"),
        (1013.25, "float32", "big"),
        (1013.25, "float32", "little"),
    ],
)
def test_decode_round_trips_every_type(value: float, kind: str, order: str) -> None:
    assert decode(words_of(value, kind, order), kind, order) == pytest.approx(value)


# --- reading a device on a pty --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["big", "little"])
def test_float32_in_either_word_order_converted_from_hpa_to_pa(pty_slave, order: str) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1013.25, "float32", order)
    reg = {"quantity": "pressure", "address": 0, "type": "float32", "word_order": order, "unit": "hPa"}
    driver = ModbusDriver.from_options("p_prk", opts(path, [reg]))
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 2)
    s = samples[0]
    assert (s.sensor, s.quantity, s.quality) == ("p_prk", Quantity.PRESSURE, Quality.GOOD)
    assert s.value == pytest.approx(101325.0)
    assert abs(s.time - time.time()) < 5
    assert driver.failures == 0


def test_float32_word_order_matters(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1013.25, "float32", "little")
    driver = ModbusDriver.from_options("p", opts(path, [{"quantity": "pressure", "address": 0, "unit": "hPa"}]))
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 1)
    assert samples[0].value != pytest.approx(101325.0)


def test_int16_with_scale_and_offset_in_degc_to_kelvin(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(4, 7, -50, "int16")  # -50 × 0.1 + 20 = 15.0 degC
    reg = {"quantity": "temperature", "address": 7, "function": 4, "type": "int16", "scale": 0.1, "offset": 20.0,
           "unit": "degC"}  # fmt: skip
    driver = ModbusDriver.from_options("t_prk", opts(path, [reg]))
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 1)
    assert samples[0].quantity == Quantity.TEMPERATURE
    assert samples[0].value == pytest.approx(288.15)


def test_two_register_blocks_in_one_sensor(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(4, 0, 14.6959, "float32")  # psi
    fake.put(3, 10, 2215, "uint16")  # 22.15 degC as hundredths
    regs = [
        {"quantity": "pressure", "address": 0, "function": 4, "unit": "psi"},
        {"quantity": "temperature", "address": 10, "function": 3, "type": "uint16", "scale": 0.01, "unit": "degC"},
    ]
    driver = ModbusDriver.from_options("pt", opts(path, regs))
    with running(driver) as samples:
        wait_for(lambda: len(good(samples, Quantity.PRESSURE)) >= 2 and len(good(samples, Quantity.TEMPERATURE)) >= 2)
    assert good(samples, Quantity.PRESSURE)[0].value == pytest.approx(101325.0, rel=1e-5)
    assert good(samples, Quantity.TEMPERATURE)[0].value == pytest.approx(295.30)


def test_shorthand_reading_on_the_sensor_table(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(3, 100, 101_325, "uint32", "little")
    driver = ModbusDriver.from_options(
        "p", opts(path, quantity="pressure", address=100, type="uint32", word_order="little")
    )
    assert len(driver.settings.readings) == 1
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 1)
    assert samples[0].value == pytest.approx(101325.0)
    assert samples[0].quantity == Quantity.PRESSURE


def test_wrong_slave_address_gets_no_answer(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1.0)
    driver = ModbusDriver.from_options("p", opts(path, [{"quantity": "pressure", "address": 0}], slave=2))
    with running(driver) as samples:
        wait_for(lambda: driver.failures >= 3)
    assert [s.quality for s in samples] == [Quality.BAD]
    assert fake.requests == 0


def test_slaves_sharing_a_bus_take_turns(pty_slave) -> None:
    """Three transmitters on one RS-485 port: one request on the bus at a time, every reply to its asker."""
    fake, path = pty_slave
    fake.units = {1, 2, 3}
    fake.turnaround_s = 0.01
    fake.put(3, 0, 1013.25)
    reading = [{"quantity": "pressure", "address": 0, "unit": "hPa"}]
    drivers = [
        ModbusDriver.from_options(f"p{unit}", opts(path, reading, slave=unit, timeout_s=1.0)) for unit in (1, 2, 3)
    ]
    with ExitStack() as stack:
        runs = [stack.enter_context(running(d)) for d in drivers]
        wait_for(lambda: all(len(good(samples, Quantity.PRESSURE)) >= 15 for samples in runs), timeout=30.0)
    assert fake.collisions == 0
    assert [d.failures for d in drivers] == [0, 0, 0]
    assert all(not bad(samples) for samples in runs)


def test_a_driver_stopped_while_its_slave_answers_leaves_the_bus_quiet_for_the_reply(pty_slave) -> None:
    """A reload that changes one sensor of a bus stops its driver mid-transaction: the others wait out the reply."""
    fake, path = pty_slave
    fake.units = {1, 2}
    fake.turnaround_s = 0.2  # each reply comes well after a stopped driver has given up on it
    fake.put(3, 0, 1013.25)
    reading = [{"quantity": "pressure", "address": 0, "unit": "hPa"}]
    leaving, staying = (ModbusDriver.from_options(f"p{u}", opts(path, reading, slave=u, timeout_s=1.0)) for u in (1, 2))
    stop = threading.Event()
    thread = threading.Thread(target=leaving.run, args=(lambda _s: None, stop), daemon=True)
    thread.start()
    with running(staying) as samples:
        wait_for(lambda: len(good(samples, Quantity.PRESSURE)) >= 3 and leaving.readings_ok >= 3, timeout=30.0)
        wait_for(lambda: fake.last_unit == 1, timeout=30.0)  # slave 1 has its request: its reply is on the way
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
        seen = len(good(samples, Quantity.PRESSURE))
        wait_for(lambda: len(good(samples, Quantity.PRESSURE)) >= seen + 3, timeout=30.0)
    assert fake.collisions == 0
    assert staying.failures == 0


# --- failures -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["silent", "bad_crc", "exception"])
def test_three_failures_give_one_bad_sample_per_reading_then_recovery(pty_slave, mode: str, caplog) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1000.0)
    fake.put(3, 2, 25.0)
    regs = [
        {"quantity": "pressure", "address": 0, "unit": "hPa"},
        {"quantity": "temperature", "address": 2, "unit": "degC"},
    ]
    driver = ModbusDriver.from_options("pt", opts(path, regs))
    caplog.set_level(logging.INFO, logger="hullwatch.sensors.modbus")
    with running(driver) as samples:
        wait_for(lambda: len(good(samples, Quantity.TEMPERATURE)) >= 1)
        fake.mode = mode
        wait_for(lambda: driver.failures >= 2 * 4)  # four failures per reading: one past the third
        during = list(samples)
        fake.mode = "ok"
        n = len(samples)
        wait_for(
            lambda: len(good(samples[n:], Quantity.PRESSURE)) >= 1 and len(good(samples[n:], Quantity.TEMPERATURE))
        )
    # exactly one BAD per reading for the whole episode, NaN valued
    assert sorted(s.quantity for s in bad(during)) == [Quantity.PRESSURE, Quantity.TEMPERATURE]
    assert all(math.isnan(s.value) for s in bad(during))
    # nothing but those after the trouble started; good values again afterwards
    first_bad = next(i for i, s in enumerate(during) if s.quality == Quality.BAD)
    assert all(s.quality == Quality.BAD for s in during[first_bad:])
    assert good(samples[n:], Quantity.PRESSURE)[0].value == pytest.approx(100000.0)
    assert good(samples[n:], Quantity.TEMPERATURE)[0].value == pytest.approx(298.15)
    # logged once per reading per episode, and once more when each episode ended
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert sum("over after" in r.getMessage() for r in caplog.records) == 2


def test_a_second_episode_gives_a_second_bad_sample(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1000.0)
    driver = ModbusDriver.from_options("p", opts(path, [{"quantity": "pressure", "address": 0}]))
    with running(driver) as samples:
        for episode in (1, 2):
            fake.mode = "silent"
            wait_for(lambda episode=episode: len(bad(samples)) == episode)
            fake.mode = "ok"
            n = len(samples)
            wait_for(lambda n=n: len(good(samples[n:], Quantity.PRESSURE)) >= 1)
    assert len(bad(samples)) == 2


def test_non_finite_value_counts_as_a_failure(pty_slave) -> None:
    fake, path = pty_slave
    fake.put(3, 0, math.nan)
    driver = ModbusDriver.from_options("p", opts(path, [{"quantity": "pressure", "address": 0}]))
    with running(driver) as samples:
        wait_for(lambda: driver.failures >= 4)
    assert len(samples) == 1 and samples[0].quality == Quality.BAD and driver.readings_ok == 0


def test_stop_interrupts_a_long_reply_timeout(pty_slave) -> None:
    fake, path = pty_slave
    fake.mode = "silent"
    driver = ModbusDriver.from_options(
        "p", opts(path, [{"quantity": "pressure", "address": 0}], timeout_s=5.0, interval_s=10.0)
    )
    with running(driver):  # checks run() returns within a second although the reply timeout is 5 s
        wait_for(lambda: fake.requests >= 1)
        time.sleep(0.2)
    assert driver.failures == 0  # a read cut short by stop is not the device's fault


def test_missing_port_is_retried_quietly_and_never_raises(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hullwatch.sensors.modbus")
    driver = ModbusDriver.from_options("p", opts(str(tmp_path / "ttyUSB9"), [{"quantity": "pressure", "address": 0}]))
    with running(driver) as samples:
        time.sleep(0.7)  # the first retry comes after 0.5 s
    assert samples == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot open" in warnings[0].getMessage()


def test_port_vanishing_is_survived(pty_slave, caplog) -> None:
    fake, path = pty_slave
    fake.put(3, 0, 1000.0)
    caplog.set_level(logging.INFO, logger="hullwatch.sensors.modbus")
    driver = ModbusDriver.from_options("p", opts(path, [{"quantity": "pressure", "address": 0}]))
    with running(driver) as samples:
        wait_for(lambda: len(samples) >= 1)
        fake.stop()
        os.close(fake.fd)  # the master end goes away: the tty hangs up
        wait_for(lambda: any("port" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING))
        time.sleep(0.3)
    port_warnings = [r for r in caplog.records if r.levelno == logging.WARNING and ": port " in r.getMessage()]
    assert len(port_warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "lost" in port_warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- other transports -----------------------------------------------------------------------------------------


class TcpSlaves:
    """A TCP server on 127.0.0.1 that serves each connection with a fresh FakeSlave holding `registers`."""

    def __init__(self, registers: list[tuple[int, int, float, str]]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.registers = registers
        self.served: list[tuple[socket.socket, FakeSlave]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            fake = FakeSlave(conn.fileno())
            for function, address, value, kind in self.registers:
                fake.put(function, address, value, kind)
            self.served.append((conn, fake.start()))

    def drop(self, i: int) -> None:
        """Cut connection i from the server side."""
        conn, fake = self.served[i]
        fake.stop()
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for i, (conn, _) in enumerate(self.served):
            if conn.fileno() != -1:
                self.drop(i)
        self.server.close()


def test_socket_url_reads_a_slave_over_tcp_and_reconnects_after_a_drop() -> None:
    slaves = TcpSlaves([(4, 0, 295.5, "float32")])
    reg = {"quantity": "temperature", "address": 0, "function": 4}
    driver = ModbusDriver.from_options("t", opts(f"socket://127.0.0.1:{slaves.port}", [reg]))
    try:
        with running(driver) as samples:
            wait_for(lambda: len(samples) >= 1)
            slaves.drop(0)
            wait_for(lambda: len(slaves.served) == 2)  # the driver came back after its backoff
            n = len(samples)
            wait_for(lambda: len(samples) > n)
            wait_for(lambda: driver.reconnects == 1)
    finally:
        slaves.close()
    assert samples[0].value == pytest.approx(295.5)
    assert all(s.quality == Quality.GOOD for s in samples)
    assert driver.failures == 0


def test_loop_url_opens_and_its_echo_counts_as_garbage() -> None:
    driver = ModbusDriver.from_options("p", opts("loop://", [{"quantity": "pressure", "address": 0}]))
    with running(driver) as samples:
        wait_for(lambda: driver.failures >= 3)
    assert [s.quality for s in samples] == [Quality.BAD]
    assert driver.readings_ok == 0


# --- options --------------------------------------------------------------------------------------------------

P = {"quantity": "pressure", "address": 0}


def test_defaults_and_no_io() -> None:
    driver = ModbusDriver.from_options("p", {"port": "/dev/does-not-exist", "slave": 5, "registers": [P]})
    s = driver.settings
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits, s.timeout_s, s.interval_s) == (9600, 8, "N", 1, 0.5, 1.0)
    r = s.readings[0]
    assert (r.function, r.type, r.word_order, r.scale, r.offset, r.unit) == (3, "float32", "big", 1.0, 0.0, "Pa")
    t = ModbusDriver.from_options("t", {"port": "x", "slave": 1, "quantity": "temperature", "address": 1})
    assert t.settings.readings[0].unit == "K"
    assert "registers" in MODBUS_KEYS and "word_order" in MODBUS_KEYS


def test_serial_settings_are_accepted() -> None:
    d = ModbusDriver.from_options(
        "p", {"port": "x", "slave": 247, "baudrate": 19200, "bytesize": 7, "parity": "e", "stopbits": 2,
              "registers": [P]},
    )  # fmt: skip
    assert (d.settings.baudrate, d.settings.bytesize, d.settings.parity, d.settings.stopbits) == (19200, 7, "E", 2)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"slave": 1, "registers": [P]}, "port"),
        ({"port": "", "slave": 1, "registers": [P]}, "port"),
        ({"port": 5, "slave": 1, "registers": [P]}, "port"),
        ({"port": "x", "registers": [P]}, "slave"),
        ({"port": "x", "slave": 0, "registers": [P]}, "slave"),
        ({"port": "x", "slave": 248, "registers": [P]}, "slave"),
        ({"port": "x", "slave": True, "registers": [P]}, "slave"),
        ({"port": "x", "slave": 1, "baudrate": 0, "registers": [P]}, "baudrate"),
        ({"port": "x", "slave": 1, "baudrate": "9600", "registers": [P]}, "baudrate"),
        ({"port": "x", "slave": 1, "bytesize": 9, "registers": [P]}, "bytesize"),
        ({"port": "x", "slave": 1, "parity": "X", "registers": [P]}, "parity"),
        ({"port": "x", "slave": 1, "stopbits": 3, "registers": [P]}, "stopbits"),
        ({"port": "x", "slave": 1, "timeout_s": 0, "registers": [P]}, "timeout_s"),
        ({"port": "x", "slave": 1, "interval_s": -1.0, "registers": [P]}, "interval_s"),
        ({"port": "x", "slave": 1, "interval_s": math.inf, "registers": [P]}, "interval_s"),
        ({"port": "x", "slave": 1, "registers": [P], "bogus": 1}, "bogus"),
        ({"port": "x", "slave": 1}, "registers"),
        ({"port": "x", "slave": 1, "registers": []}, "registers"),
        ({"port": "x", "slave": 1, "registers": P}, "registers"),
        ({"port": "x", "slave": 1, "registers": [P, 3]}, "registers[1]"),
        ({"port": "x", "slave": 1, "registers": [P], "unit": "hPa"}, "unit"),
        ({"port": "x", "slave": 1, "registers": [{"address": 0}]}, "registers[0].quantity"),
        ({"port": "x", "slave": 1, "registers": [{**P, "quantity": "hatch"}]}, "registers[0].quantity"),
        ({"port": "x", "slave": 1, "registers": [P, P]}, "registers[1].quantity"),
        ({"port": "x", "slave": 1, "registers": [P, {"quantity": "temperature"}]}, "registers[1].address"),
        ({"port": "x", "slave": 1, "registers": [{**P, "address": -1}]}, "registers[0].address"),
        ({"port": "x", "slave": 1, "registers": [{**P, "address": 65535}]}, "registers[0].address"),
        ({"port": "x", "slave": 1, "registers": [{**P, "function": 6}]}, "registers[0].function"),
        ({"port": "x", "slave": 1, "registers": [{**P, "type": "float64"}]}, "registers[0].type"),
        ({"port": "x", "slave": 1, "registers": [{**P, "word_order": "middle"}]}, "registers[0].word_order"),
        ({"port": "x", "slave": 1, "registers": [{**P, "scale": 0}]}, "registers[0].scale"),
        ({"port": "x", "slave": 1, "registers": [{**P, "scale": "2"}]}, "registers[0].scale"),
        ({"port": "x", "slave": 1, "registers": [{**P, "offset": math.nan}]}, "registers[0].offset"),
        ({"port": "x", "slave": 1, "registers": [{**P, "unit": "degC"}]}, "registers[0].unit"),
        ({"port": "x", "slave": 1, "registers": [{**P, "unit": "furlongs"}]}, "registers[0].unit"),
        ({"port": "x", "slave": 1, "registers": [{**P, "colour": "red"}]}, "registers[0].colour"),
        ({"port": "x", "slave": 1, "quantity": "pressure"}, "address"),
        ({"port": "x", "slave": 1, "address": 0}, "quantity"),
        ({"port": "x", "slave": 1, "quantity": "pressure", "address": 0, "type": "int8"}, "type"),
        ({"port": "x", "slave": 1, "quantity": "temperature", "address": 0, "unit": "hPa"}, "unit"),
    ],
)
def test_every_option_error_names_its_key(options: dict, key: str) -> None:
    with pytest.raises(OptionError) as err:
        ModbusDriver.from_options("s", options)
    assert err.value.key == key, err.value
    assert str(err.value).startswith(f"{key}: ")

"""Parts for benches of the whole daemon: pty transducers, a timed feeder, a broker, a subscriber, a relay.

    with Rig(sensors=8) as rig:                    # ptys, a private mosquitto, a mosquitto_sub
        proc = rig.start_hullwatch()               # spool, MQTT and recorder on; waits for P/status online
        result = rig.measure(proc, "hullwatch", warmup_s=5, seconds=30)
        print(result.line())

The feeder writes `P = 1013.25xxx hPa` lines to every pty at a fixed rate; the digits after
1013.25 carry the line's sequence number (0.01 Pa a line, far below any alarm), so every
sample found at the subscriber is matched with the moment its line was written. The
subscriber is `mosquitto_sub -F '%U ...'`, a process of its own that stamps each message on
arrival with the wall clock the feeder stamps its writes with. CPU is the program's utime +
stime (all threads) from /proc over the measuring window, divided by the window's length.

`python bench/station_rig.py proxy LISTEN TARGET DELAY_S` runs a TCP proxy on loopback that
holds every chunk DELAY_S seconds in each direction, in order (a link with that one-way delay
and no bandwidth limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(0, str(ROOT / "tests"))

from hullwatch.sim.ptys import PtyTransducer  # noqa: E402
from mosquitto_fixture import Broker, free_port, wait_port  # noqa: E402

BASE_HPA = 1013.25
STEP_HPA = 1e-5  # one line's step: the sequence number in the 3rd..5th decimal
MAX_SEQ = 99_999  # sequence numbers the 5 decimals hold
HULLWATCH_PREFIX = "hullwatch/bench"
RELAY_PREFIX = "relay/bench"
LINE_REGEX = r"^P\s*=\s*(?P<pressure>[-+0-9.]+)"

RELAY = '''"""A bare serial -> MQTT relay: a thread per port, pyserial readline, a regex, paho publish (QoS 1)."""
import json
import re
import sys
import threading
import time

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

broker_port, prefix, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
number = re.compile(rb"^P\\s*=\\s*([-+0-9.]+)")
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.connect("127.0.0.1", broker_port)
client.loop_start()


def relay(path, name):
    with serial.Serial(path, 9600, timeout=1.0) as port:
        while True:
            match = number.match(port.readline())
            if match:
                sample = {"time": time.time(), "quantity": "pressure", "value": float(match[1]) * 100.0}
                client.publish(f"{prefix}/sensor/{name}", json.dumps(sample), qos=1)


for i, path in enumerate(paths):
    threading.Thread(target=relay, args=(path, f"p{i}"), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def percentile(xs: list[float], q: float) -> float:
    """The nearest-rank q-quantile (inf for an empty list)."""
    if not xs:
        return math.inf
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 1000:.2f}"


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


class Feeder:
    """Writes one line to every pty per tick at `rate_hz`, remembering when each (sensor, seq) was written."""

    def __init__(self, ports: list[PtyTransducer], rate_hz: float) -> None:
        self.ports = ports
        self.period = 1.0 / rate_hz
        self.seq = 0  # the next tick's sequence number
        self.written: dict[tuple[int, int], float] = {}  # (sensor index, seq) -> wall time of the write
        self.full = 0  # lines not written: the pty's buffer was full (nobody reading fast enough)
        self.worst_lag_s = 0.0  # how late the feeder's own ticks were at worst (a loaded machine)
        self._run = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        """Feed (nothing is written while paused, so nothing old waits in the ptys)."""
        self._idle.clear()
        self._run.set()

    def pause(self) -> None:
        """Stop feeding after the tick under way."""
        self._run.clear()
        self._idle.wait(5.0)

    def close(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait()
                next_t = time.monotonic()
                continue
            seq = self.seq
            if seq > MAX_SEQ:
                raise RuntimeError("sequence numbers exhausted: a shorter run or a lower rate")
            line = f"P = {BASE_HPA + seq * STEP_HPA:.5f} hPa\r\n".encode()
            for i, p in enumerate(self.ports):
                t = time.time()
                try:
                    n = os.write(p.master, line)
                except BlockingIOError:
                    n = 0
                if n == len(line):
                    self.written[(i, seq)] = t
                else:
                    self.full += 1
            self.seq = seq + 1
            next_t += self.period
            lag = time.monotonic() - next_t
            if lag < 0:
                time.sleep(-lag)
            else:
                self.worst_lag_s = max(self.worst_lag_s, lag)
                if lag > 1.0:  # far behind (a stalled machine): start afresh rather than burst
                    next_t = time.monotonic()
        self._idle.set()


def seq_of_pa(value: float) -> int:
    return round((value / 100.0 - BASE_HPA) / STEP_HPA)


@dataclass
class Arrival:
    at: float  # the subscriber's wall-clock stamp
    sample_time: float | None  # the payload's own time (when the program read the line)


class Subscriber:
    """mosquitto_sub on the samples (QoS 1), status and metrics of both programs; parsed on poll()."""

    def __init__(self, port: int, directory: Path) -> None:
        self.path = directory / "sub.txt"
        self._out = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        topics = [f"{HULLWATCH_PREFIX}/sensor/#", f"{HULLWATCH_PREFIX}/status", f"{HULLWATCH_PREFIX}/metrics"]
        topics.append(f"{RELAY_PREFIX}/sensor/#")
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-F", r"%U %t %p\n"]
        for t in topics:
            args += ["-t", t]
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.DEVNULL)
        self._offset = 0
        self._partial = b""
        self.arrivals: dict[tuple[str, int, int], Arrival] = {}  # (prefix, sensor index, seq) -> first arrival
        self.duplicates = 0
        self.unreadable: list[tuple[float, str, str]] = []
        self.online: list[float] = []  # arrival times of P/status online
        self.metrics: list[tuple[float, dict]] = []  # (arrival, payload)
        time.sleep(0.3)

    def poll(self) -> None:
        """Read what arrived since the last poll."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if not raw:  # mosquitto_sub ends each message with a newline of its own too
                continue
            stamp, topic, payload = raw.decode().split(" ", 2)
            at = float(stamp)
            if topic.endswith("/status"):
                if payload == "online":
                    self.online.append(at)
                continue
            if topic.endswith("/metrics"):
                self.metrics.append((at, json.loads(payload)))
                continue
            prefix, _, name = topic.rpartition("/sensor/")
            body = json.loads(payload)
            if body.get("value") is None:  # an unreadable line (quality bad): no sample to follow
                self.unreadable.append((at, topic, payload))
                continue
            key = (prefix, int(name[1:]), seq_of_pa(body["value"]))
            if key in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[key] = Arrival(at, body.get("time"))

    def wait_online(self, since: float, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll()
            if any(t >= since for t in self.online):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._out.close()


@dataclass
class Result:
    """One program's figures over one measuring window."""

    program: str
    seconds: float
    cpu_pct: float
    rss_mb: float
    hwm_mb: float
    written: int
    received: int
    lost: int
    latencies: list[float] = field(repr=False)  # subscriber stamp - feeder write, of the samples received
    read_lateness: list[float] = field(repr=False)  # payload time - feeder write (when the program read it)
    full: int = 0  # lines the feeder could not write (pty full)
    load: str = ""
    recorded_missing: int | None = None
    unreadable: int = 0  # messages without a value (the program could not read a line)
    feed_seq: tuple[int, int, int] = (0, 0, 0)  # seq at the feed's start, the window's start and its end
    wall: tuple[float, float] = (0.0, 0.0)  # the window, wall clock

    @property
    def rate(self) -> float:
        return self.written / self.seconds

    def p(self, q: float) -> float:
        """The q-quantile of latency, counting samples not received as infinitely late."""
        xs = self.latencies + [math.inf] * self.lost
        return percentile(xs, q)

    def line(self) -> str:
        rec = "" if self.recorded_missing is None else f", {self.recorded_missing} missing in the recorder's CSV"
        full = f", {self.full} lines not written (pty full)" if self.full else ""
        full += f", {self.unreadable} unreadable" if self.unreadable else ""
        return (
            f"{self.program:9s}: CPU {self.cpu_pct:5.2f} % of one core, RSS {self.rss_mb:.1f} MB "
            f"(peak {self.hwm_mb:.1f}), sample -> subscriber p50 {ms(self.p(0.5))} / p99 {ms(self.p(0.99))} ms, "
            f"{self.written} written, {self.lost} lost{rec}{full} [{self.load}]"
        )


def hullwatch_config(
    directory: Path,
    paths: list[str],
    mqtt_port: int,
    *,
    segments: int = 8,
    max_rate_hz: float | None = None,
) -> Path:
    """A `hullwatch run` configuration: the ptys as serial pressure sensors, spool, MQTT and recorder on."""
    segments = max(1, min(segments, len(paths)))
    cfg = ['[station]\nname = "bench"\n']
    cfg += [f'[[segment]]\nname = "s{i}"\nvolume_m3 = 10.0\n' for i in range(segments)]
    rate = "" if max_rate_hz is None else f"max_rate_hz = {max_rate_hz!r}\n"
    for i, path in enumerate(paths):
        cfg.append(
            f'[[sensor]]\nname = "p{i}"\nsegment = "s{i % segments}"\ndriver = "serial"\nport = "{path}"\n'
            f"line_regex = '{LINE_REGEX}'\nunits = {{ pressure = \"hPa\" }}\n{rate}"
        )
    cfg.append(f'[recorder]\npath = "{directory}/samples.csv"\n')
    cfg.append(f'[spool]\npath = "{directory}/spool.sqlite"\n')
    cfg.append(f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n')
    cfg.append("[alarms.sensor]\nstale_after_s = 60.0\n")  # the feeder pauses between runs
    path = directory / "bench.toml"
    path.write_text("\n".join(cfg))
    return path


def recorded_seqs(csv_path: Path) -> set[tuple[int, int]]:
    """(sensor index, seq) of the rows in a recorder file."""
    found = set()
    with contextlib.suppress(FileNotFoundError), open(csv_path) as f:
        next(f, None)
        for row in f:
            _, name, _, value = row.rstrip("\n").split(",")
            found.add((int(name[1:]), seq_of_pa(float(value))))
    return found


class Rig:
    """Ptys, a feeder, a private mosquitto and a subscriber for one bench run."""

    def __init__(self, sensors: int, rate_hz: float) -> None:
        if not shutil.which("mosquitto") or not shutil.which("mosquitto_sub"):
            sys.exit("needs mosquitto and mosquitto_sub (scripts/setup.sh --test)")
        self.hw = str(Path(sys.executable).with_name("hullwatch"))
        self._tmp = tempfile.TemporaryDirectory(prefix="hullwatch-bench-")
        self.dir = Path(self._tmp.name)
        self.broker = Broker(self.dir / "broker").start()
        self.sub = Subscriber(self.broker.port, self.dir)
        self.ports = [PtyTransducer(f"p{i}", "plain", None) for i in range(sensors)]
        self.feeder = Feeder(self.ports, rate_hz)
        self._runs = 0
        self._procs: list[subprocess.Popen] = []  # stopped at exit, whatever happened

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            stop(proc, 5.0)
        self.feeder.close()
        self.sub.close()
        self.broker.stop()
        for p in self.ports:
            p.close()
        self._tmp.cleanup()

    def start_hullwatch(
        self, mqtt_port: int | None = None, max_rate_hz: float | None = None, segments: int = 8
    ) -> tuple[subprocess.Popen, Path]:
        """`hullwatch run` in a directory of its own; returns once it says online on MQTT."""
        self._runs += 1
        work = self.dir / f"hullwatch-{self._runs}"
        work.mkdir()
        cfg = hullwatch_config(
            work,
            [p.path for p in self.ports],
            mqtt_port or self.broker.port,
            segments=segments,
            max_rate_hz=max_rate_hz,
        )
        since = time.time()
        with open(work / "log.txt", "wb") as log:
            proc = subprocess.Popen([self.hw, "run", "-c", str(cfg)], stdout=log, stderr=log)
        self._procs.append(proc)
        if not self.sub.wait_online(since):
            proc.kill()
            sys.exit(f"hullwatch did not come online:\n{(work / 'log.txt').read_text()[-3000:]}")
        time.sleep(1.0)  # its first metrics and estimates out of the way
        return proc, work

    def start_relay(self) -> subprocess.Popen:
        """The bare relay; returns once it has connected and started its port threads."""
        script = self.dir / "relay.py"
        script.write_text(RELAY)
        args = [sys.executable, str(script), str(self.broker.port), RELAY_PREFIX, *(p.path for p in self.ports)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        if proc.stdout is None or proc.stdout.readline().strip() != b"ready":
            proc.kill()
            sys.exit("the relay did not start")
        time.sleep(1.0)
        return proc

    def strangers(self, proc: subprocess.Popen) -> list[str]:
        """Other processes holding one of the ptys open (on a shared machine they would steal lines)."""
        paths = {os.path.realpath(p.path) for p in self.ports}
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in (os.getpid(), proc.pid):
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") in paths:
                            found.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
                            break
        return found

    def measure(
        self,
        proc: subprocess.Popen,
        program: str,
        warmup_s: float,
        seconds: float,
        drain_s: float = 3.0,
        recorder_csv: Path | None = None,
    ) -> Result:
        """Feed, warm up, measure a window, stop feeding, let the program drain, stop it; its figures."""
        prefix = HULLWATCH_PREFIX if program == "hullwatch" else RELAY_PREFIX
        full0, seq_start = self.feeder.full, self.feeder.seq
        others = self.strangers(proc)
        if others:
            print(f"WARNING: other processes hold the ptys open: {', '.join(others)}", file=sys.stderr)
        self.feeder.resume()
        time.sleep(warmup_s)
        seq0, c0, t0, w0 = self.feeder.seq, cpu_seconds(proc.pid), time.monotonic(), time.time()
        time.sleep(seconds)
        seq1, c1, t1, w1 = self.feeder.seq, cpu_seconds(proc.pid), time.monotonic(), time.time()
        rss, hwm, load = status_mb(proc.pid), status_mb(proc.pid, "VmHWM"), load_text()
        self.feeder.pause()
        time.sleep(drain_s)
        stop(proc)
        time.sleep(0.5)
        self.sub.poll()
        keys = [k for k in self.feeder.written if seq0 <= k[1] < seq1]
        got = [self.sub.arrivals.get((prefix, *k)) for k in keys]
        lat = [a.at - self.feeder.written[k] for k, a in zip(keys, got, strict=True) if a is not None]
        late = [
            a.sample_time - self.feeder.written[k]
            for k, a in zip(keys, got, strict=True)
            if a is not None and a.sample_time is not None
        ]
        missing = None
        if recorder_csv is not None:
            rows = recorded_seqs(recorder_csv)
            missing = sum(1 for k in keys if k not in rows)
        return Result(
            program,
            t1 - t0,
            100.0 * (c1 - c0) / (t1 - t0),
            rss,
            hwm,
            len(keys),
            len(lat),
            len(keys) - len(lat),
            lat,
            late,
            self.feeder.full - full0,
            load,
            missing,
            sum(1 for at, topic, _ in self.sub.unreadable if topic.startswith(prefix) and at >= w0),
            (seq_start, seq0, seq1),
            (w0, w1),
        )


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# -- the delaying proxy ------------------------------------------------------------------------


class DelayProxy:
    """A proxy process on a free loopback port that delays every chunk `delay_s` each way."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.port = free_port()
        args = [sys.executable, __file__, "proxy", str(self.port), str(target_port), repr(delay_s)]
        self.proc = subprocess.Popen(args)
        if not wait_port(self.port, 10.0):
            self.proc.kill()
            sys.exit("the delaying proxy did not start")

    def close(self) -> None:
        stop(self.proc, 5.0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        writer.close()


async def _serve(listen: int, target: int, delay_s: float) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer, delay_s), _pipe(up_reader, writer, delay_s))

    server = await asyncio.start_server(client, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(_serve(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))

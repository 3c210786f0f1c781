#!/usr/bin/env python3
"""CPU and memory of `hullwatch run` reading 8 serial transducers at 10 Hz each (issue: < 3 % of one core).

    python bench/run_cpu.py [--seconds 30] [--sensors 8] [--rate 10]

Eight pseudo-terminals stream Vaisala-style `P = 1013.25 hPa` lines (four segments, a
pressure and a temperature transducer each); `hullwatch run` reads them with the recorder
on. After a warm-up, the daemon's CPU time (from /proc) over the measuring window and its
RSS are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0)
    args = ap.parse_args()
    hw = Path(sys.executable).with_name("hullwatch")
    with tempfile.TemporaryDirectory() as tmp:
        ptys = []
        for _ in range(args.sensors):
            master, slave = os.openpty()
            tty.setraw(slave)
            ptys.append((master, slave, os.ttyname(slave)))
        segments = max(1, args.sensors // 2)
        cfg = ['[station]\nname = "bench"\n']
        cfg += [f'[[segment]]\nname = "s{i}"\nvolume_m3 = 10.0\n' for i in range(segments)]
        for i, (_, _, path) in enumerate(ptys):
            temperature = i % 2 == 1
            regex = r"^T\s*=\s*(?P<temperature>[-+0-9.]+)" if temperature else r"^P\s*=\s*(?P<pressure>[-+0-9.]+)"
            unit = '{ temperature = "degC" }' if temperature else '{ pressure = "hPa" }'
            cfg.append(
                f'[[sensor]]\nname = "x{i}"\nsegment = "s{i // 2 % segments}"\ndriver = "serial"\n'
                f"port = \"{path}\"\nline_regex = '{regex}'\nunits = {unit}\n"
            )
        cfg.append(f'[recorder]\npath = "{tmp}/samples.csv"\n')
        Path(tmp, "bench.toml").write_text("\n".join(cfg))
        daemon = subprocess.Popen(
            [str(hw), "run", "-c", f"{tmp}/bench.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stop = threading.Event()

        def stream() -> None:
            i = 0
            period = 1.0 / args.rate
            next_t = time.monotonic()
            while not stop.is_set():
                for n, (master, _, _) in enumerate(ptys):
                    line = (
                        f"T = {21.0 + (i % 7) * 0.001:.3f}\r\n"
                        if n % 2
                        else f"P = {1013.25 + (i % 5) * 0.01:.2f} hPa\r\n"
                    )
                    with contextlib.suppress(OSError):
                        os.write(master, line.encode())
                i += 1
                next_t += period
                time.sleep(max(0.0, next_t - time.monotonic()))

        writer = threading.Thread(target=stream, daemon=True)
        writer.start()
        time.sleep(5.0)  # start-up and warm-up
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        rss = rss_mb(daemon.pid)
        stop.set()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        rows = len(Path(tmp, "samples.csv").read_text().splitlines()) - 1
        for master, slave, _ in ptys:
            os.close(master)
            os.close(slave)
    print(
        f"hullwatch run, {args.sensors} serial sensors at {args.rate:g} Hz: CPU {100 * (c1 - c0) / (t1 - t0):.2f} % "
        f"of one core over {t1 - t0:.0f} s; RSS {rss:.1f} MB; {rows} samples recorded"
    )


if __name__ == "__main__":
    main()

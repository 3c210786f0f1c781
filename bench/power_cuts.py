#!/usr/bin/env python3
"""Power cuts: kill -9 the daemon at random moments under load, then check the spool file.

    .venv/bin/python bench/power_cuts.py [--cuts 50] [--seed 1]

Each round starts `hullwatch run` on 8 pty transducers at 10 Hz with a spool and an
InfluxDB that does not answer (so every record stays in the file), kills it with SIGKILL
after 1.5-4 s, then opens the spool: `PRAGMA integrity_check` must say ok, and the newest
committed sample must be younger than `commit_interval_s` (plus scheduling slack) at the
moment of the kill. Rounds killed before their first commit are counted apart (they lose
what was read since the ports opened). Prints the worst loss window and the rounds passed.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SENSORS = 8
COMMIT_S = 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="hullwatch-cuts-"))
    ptys = [pty.openpty() for _ in range(SENSORS)]
    sensors = "".join(
        f'\n[[sensor]]\nname = "s{i}"\nsegment = "hab"\ndriver = "serial"\nport = "{os.ttyname(slave)}"\n'
        f"line_regex = '^(?P<pressure>[0-9.]+)$'\nunits = {{ pressure = \"Pa\" }}\n"
        for i, (_, slave) in enumerate(ptys)
    )
    spool = work / "spool.sqlite"
    cfg = work / "hullwatch.toml"
    cfg.write_text(
        f'[station]\nname = "cuts"\n\n[[segment]]\nname = "hab"\nvolume_m3 = 20.0\n{sensors}\n'
        f'[influxdb]\nurl = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "hullwatch"\n\n'
        f'[spool]\npath = "{spool}"\ncommit_interval_s = {COMMIT_S}\n'
    )
    stop = threading.Event()

    def stream() -> None:
        k = 0
        while not stop.wait(0.1):
            for master, _ in ptys:
                os.write(master, f"{100000 + k * 0.01:.2f}\n".encode())
            k += 1

    threading.Thread(target=stream, daemon=True).start()
    bad, windows, early = [], [], 0
    for cut in range(args.cuts):
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "hullwatch", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        killed = time.time()
        proc.wait()
        db = sqlite3.connect(spool)
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        row = db.execute("SELECT body FROM record WHERE kind = 'sample' ORDER BY id DESC LIMIT 1").fetchone()
        db.close()
        if check != "ok":
            bad.append((cut, check))
        newest = json.loads(row[0])["time"] if row else 0.0
        if newest > started:
            windows.append(killed - newest)  # what this run read after its last commit
        else:
            early += 1  # killed before its first commit: it lost what it read since opening its ports
    stop.set()
    worst = max(windows, default=float("nan"))
    print(f"{args.cuts} kill -9s: {args.cuts - len(bad)} integrity checks ok"
          + (f", failures: {bad[:3]}" if bad else ""))  # fmt: skip
    median = sorted(windows)[len(windows) // 2] if windows else float("nan")
    print(f"samples lost at a cut (kill time - newest committed sample): median {median:.2f} s, "
          f"worst {worst:.2f} s (commit_interval_s {COMMIT_S:g}); {early} cut(s) before the first commit")  # fmt: skip
    print(f"spool file: {spool.stat().st_size / 2**20:.1f} MB after {args.cuts} rounds")


if __name__ == "__main__":
    main()

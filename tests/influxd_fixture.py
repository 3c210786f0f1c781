"""A real influxd (Debian's 1.6, v1 API) for tests, on free loopback ports in a temp directory.

    influx = Influxd(tmp_dir)          # started, database "hullwatch" created; ~0.1 s
    influx.query("SELECT ...")         # the /query JSON
    influx.rows("SELECT ...")          # [(tags, {column: value}), ...] over every series
    influx.stop(); influx.start()      # restartable on the same ports, data kept

The process is stopped by its own handle, never by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mosquitto_fixture import free_port, wait_port

HAVE_INFLUXD = shutil.which("influxd") is not None


class Influxd:
    """One influxd process; stop/start keep its ports and its data."""

    def __init__(self, directory: Path, database: str = "hullwatch") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.conf = self.dir / "influxdb.conf"
        self.proc: subprocess.Popen | None = None
        for attempt in range(3):  # a free port can be taken by another process before influxd binds it
            self._configure()
            try:
                self.start()
                break
            except RuntimeError:
                taken = "address already in use" in (self.dir / "influxd.log").read_text(errors="replace")
                if attempt == 2 or not taken:
                    raise
        self.query(f'CREATE DATABASE "{database}"', post=True)

    def _configure(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{self.dir}/meta"\n'
            f'[data]\n  dir = "{self.dir}/data"\n  wal-dir = "{self.dir}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            '[monitor]\n  store-enabled = false\n[logging]\n  level = "warn"\n'
        )

    def start(self) -> None:
        """Start influxd and wait until /ping answers."""
        log = open(self.dir / "influxd.log", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            ["influxd", "run", "-config", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log
        )
        log.close()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited ({self.proc.returncode}); see {self.dir / 'influxd.log'}")
            try:
                urllib.request.urlopen(self.url + "/ping", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("influxd does not answer /ping")

    def stop(self) -> None:
        """Stop influxd (SIGTERM) and wait until its port is free."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        wait_port(self.port, 5.0, up=False)

    def query(self, q: str, post: bool = False) -> dict[str, Any]:
        """Run InfluxQL; nanosecond epochs."""
        data = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": "ns"})
        req = (
            urllib.request.Request(self.url + "/query", data=data.encode())
            if post
            else urllib.request.Request(self.url + "/query?" + data)
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def rows(self, q: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """Every row of every series a query returns, as (tags, {column: value})."""
        out = []
        for result in self.query(q).get("results", []):
            if "error" in result:
                raise RuntimeError(result["error"])
            for series in result.get("series", []) or []:
                tags = series.get("tags", {}) or {}
                out += [(tags, dict(zip(series["columns"], values, strict=True))) for values in series["values"]]
        return out

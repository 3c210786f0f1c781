"""A real VictoriaMetrics (Debian's `victoria-metrics`) for tests: a v2 write server on a free loopback port.

    with VictoriaMetrics(tmp_dir) as vm:       # started; ~0.2 s; stopped on leaving, a failed test too
        vm.url                                 # takes line protocol on /api/v2/write (and /write)
        vm.export("sensor_value")              # every raw sample: [({label: value}, [(ms, value), ...]), ...]
        vm.stop(); vm.start()                  # restartable on the same port, data kept
    VictoriaMetrics(tmp_dir, dedup=True, login=("user", "pw"), flags=("-influx.maxLineSize=4096",))

VictoriaMetrics ignores a v2 write's token, org and bucket. Each field of a point becomes a
series named `<measurement>_<field>` with the point's tags as labels, at millisecond
resolution; booleans read 1/0 and strings (quality, alarm state) read as the number they spell,
else 0. It keeps every copy of a point written twice unless `dedup=True`
(`-dedup.minScrapeInterval=1ms`: one sample per series and millisecond, as InfluxDB keeps one
point per series and timestamp). Retention is 100 years, so fixed past timestamps stay.

The process is stopped by its own handle, never by name.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mosquitto_fixture import free_port, wait_port

BINARY = "victoria-metrics"
HAVE_VICTORIA = shutil.which(BINARY) is not None
MISSING = "victoria-metrics is not installed (Debian package victoria-metrics; scripts/setup.sh --test)"

FAR_FUTURE_S = 4_102_444_800  # 2100: export reads up to now unless told, and simulated story time runs ahead

Series = tuple[dict[str, str], list[tuple[int, float]]]


class VictoriaMetrics:
    """One victoria-metrics process; stop/start keep its port and its data."""

    def __init__(
        self,
        directory: Path,
        dedup: bool = False,
        flags: tuple[str, ...] = (),
        login: tuple[str, str] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "victoria-metrics.log"
        self.extra = ("-dedup.minScrapeInterval=1ms",) * dedup + tuple(flags)
        self.headers = {}
        if login is not None:  # HTTP basic auth on every endpoint
            self.extra += (f"-httpAuth.username={login[0]}", f"-httpAuth.password={login[1]}")
            self.headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
        self.proc: subprocess.Popen | None = None
        for attempt in range(3):  # a free port can be taken by another process before it binds
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            seen = self.log.stat().st_size if self.log.exists() else 0
            try:
                self.start()
                return
            except RuntimeError:
                taken = b"address already in use" in self.log.read_bytes()[seen:]
                if attempt == 2 or not taken:
                    raise

    def __enter__(self) -> VictoriaMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start victoria-metrics and wait until /health answers."""
        args = [
            BINARY,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.dir / 'data'}",
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
            *self.extra,
        ]
        log = open(self.log, "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited ({self.proc.returncode}); see {self.log}")
            try:
                self._get("/health", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"victoria-metrics does not answer /health; see {self.log}")

    def stop(self) -> None:
        """Stop victoria-metrics (SIGTERM: it finishes the writes under way and flushes) and free its port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        wait_port(self.port, 5.0, up=False)

    def export(self, match: str = '{__name__=~".+"}') -> list[Series]:
        """Every raw sample of every series `match` selects (newest data included): (labels, [(ms, value)])."""
        self._get("/internal/force_flush").close()  # make the newest rows searchable now
        query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": str(FAR_FUTURE_S)})
        with self._get(f"/api/v1/export?{query}") as r:
            lines = r.read().decode().splitlines()
        out = []
        for line in lines:
            row: dict[str, Any] = json.loads(line)
            out.append((row["metric"], list(zip(row["timestamps"], row["values"], strict=True))))
        return out

    def _get(self, path: str, timeout: float = 60) -> Any:
        return urllib.request.urlopen(urllib.request.Request(self.url + path, headers=self.headers), timeout=timeout)

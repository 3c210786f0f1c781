"""A stand-in for InfluxDB's write endpoints, for the answers Debian's influxd 1.6 cannot give.

influxd 1.6 never answers 413 or 422, never redirects and never sits behind a proxy that
answers 400 to everything; this small HTTP server on 127.0.0.1 does, on demand:

    stub = InfluxStub()                   # started on a free port; stub.url
    stub.fault = "blanket400"             # or "500", "301", "302", "slow", None
    stub.plan = ["blanket400", "ok"]      # faults for the next requests, one each, before `fault` applies
    stub.max_body = 4000                  # 413 for a larger body
    stub.retention_ns = ...               # 422 for older points (the rest is written, as InfluxDB 2.x does)
    stub.poison = "poison"                # 400 for lines holding this text (the rest is written, as 1.x does)
    stub.stored()                         # {(series, time): fields} — a point is its series and time
    stub.close()

It takes both `/write` (v1) and `/api/v2/write` (v2). A redirect points at `/moved`, a page
that answers a GET with 200, as a web server's login or index page would.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter


class InfluxStub:
    """InfluxDB's write API with switchable faults; stores points as InfluxDB does (series + time)."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.plan: list[str] = []
        self.max_body: int | None = None
        self.retention_ns: int | None = None
        self.poison: str | None = None
        self.slow_s = 2.0
        self.answers: Counter[int] = Counter()  # status codes sent to POSTs
        self.gets = 0
        self._points: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, text = stub._answer(self.path, body)
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", f"{stub.url}/moved")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def do_GET(self) -> None:  # noqa: N802
                with stub._lock:
                    stub.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "14")
                self.end_headers()
                self.wfile.write(b"<html>ok</html>")

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="influx-stub", daemon=True
        )
        self._thread.start()

    def _answer(self, path: str, body: bytes) -> tuple[int, bytes]:
        status, text = self._decide(path, body)
        with self._lock:
            self.answers[status] += 1
        return status, text

    def _decide(self, path: str, body: bytes) -> tuple[int, bytes]:
        if not path.startswith(("/write?", "/api/v2/write?")):
            return 404, b'{"error":"not found"}'
        with self._lock:
            fault = self.plan.pop(0) if self.plan else self.fault
        if fault == "slow":
            time.sleep(self.slow_s)
        if fault == "blanket400":
            return 400, b"<html>400 Bad Request</html>"
        if fault == "500":
            return 500, b'{"error":"internal error"}'
        if fault in ("301", "302"):
            return int(fault), b""
        if self.max_body is not None and len(body) > self.max_body:
            return 413, b'{"error":"request entity too large"}'
        refused: list[tuple[int, str]] = []
        with self._lock:
            for line in body.decode().splitlines():
                series, fields, t = line.rsplit(" ", 2)
                if self.poison and self.poison in line:
                    refused.append((400, f"unable to parse '{line[:40]}'"))
                elif self.retention_ns is not None and int(t) < self.retention_ns:
                    refused.append((422, "points beyond retention policy"))
                else:
                    self._points[(series, t)] = fields
        if refused:
            status = max(s for s, _ in refused)
            return status, f'{{"error":"partial write: {refused[0][1]} dropped={len(refused)}"}}'.encode()
        return 204, b""

    def stored(self, measurement: str = "sensor") -> dict[tuple[str, str], str]:
        """The points of one measurement, {(series, time): fields}."""
        with self._lock:
            return {k: v for k, v in self._points.items() if k[0].split(",", 1)[0] == measurement}

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

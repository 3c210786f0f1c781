"""The InfluxDB sink (ICD §6): spooled records to line protocol, written with the samples' own timestamps.

Both APIs take the same line protocol, nanosecond precision, encoded here by the rules of
influxdb-client's `Point` (the tests check that the two agree), so that the v1 path does
without importing influxdb-client (about 28 MB of memory on a Pi). `api = "v2"` writes
through influxdb-client's synchronous write API (InfluxDB 2.x, 3.x, and 1.8+ through its
compatibility endpoint); `api = "v1"` POSTs to `/write` of InfluxDB 1.x, which is what
Debian and Raspberry Pi OS ship. Neither retries by itself:
a failed batch stays in the spool and is sent again, so nothing is lost when a client's
in-memory retries would have run out. Points sent again (a lost answer, a split batch the
server had partly stored) are harmless where a point is its series and timestamp, as in
InfluxDB; VictoriaMetrics, which takes both APIs, needs `-dedup.minScrapeInterval=1ms` for that.

Every answer is classified (the same for both APIs):

- 2xx: delivered.
- 400 or 422 (a bad line, a type conflict, a point outside retention): some records in the
  batch are bad. The batch is split in halves until the bad ones stand alone; they are set
  aside as rejected with the server's reason, the rest is written, so one poison record never
  blocks the queue. 413 (body too large) is split the same way, down to one record; a single
  record still too large is set aside too.
- Before anything is set aside, the server must have shown that it takes valid writes, both
  before the first refusal of the batch and after the last one: by accepting other parts of
  the batch, or else a probe point (`sink_probe`, field `ok=true`, now; a record refused
  before any such evidence is sent once more after the probe). If the probe is refused as
  well, nothing is bad but the server or a proxy in front of it (one that answers 400 to
  everything, or starts to mid-batch): that is an outage, and no record is set aside.
- 3xx: never followed (a client following 301/302 turns the POST into a GET that a web page
  answers with 200, and the points are gone): a failure naming where it points.
- Anything else (connection, timeout, 401/403/404, 429, 5xx): SinkUnavailable; the spool
  tries again later with backoff.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hullwatch.sinks.spool import Record, SendResult, SinkUnavailable

if TYPE_CHECKING:
    from hullwatch.config import InfluxConfig

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
BATCH_LINES = 5000
SERIES_CACHED = 65536  # series whose line-protocol text is kept
KINDS = frozenset({"sample", "hatch", "estimate", "step", "alarm", "metric", "clock_step", "line"})


class InfluxSetupError(Exception):
    """The [influxdb] settings cannot work (e.g. an unreadable token file)."""


class _Refused(Exception):
    """The server refused what the body holds (HTTP 400, 422, or 413): split it to find out which records."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes every 3xx an HTTPError instead of a GET to the new address."""

    def redirect_request(self, *args: Any) -> None:
        return None


_V1_OPENER = urllib.request.build_opener(_NoRedirect)


def _answer(status: int, detail: str, location: str | None) -> Exception:
    """The exception for a non-2xx answer: _Refused for what splitting can fix, else SinkUnavailable."""
    if status in (400, 422):
        return _Refused(f"HTTP {status}: {detail}")
    if status == 413:
        return _Refused(f"HTTP 413 (body too large): {detail}")
    if 300 <= status < 400:
        return SinkUnavailable(
            f"HTTP {status}: the server redirects to {location or '(no Location given)'}; not followed "
            "(a redirected write is lost): set [influxdb] url to the address that takes writes"
        )
    return SinkUnavailable(f"HTTP {status}: {detail}")


def _read_secret(path: str | None, key: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InfluxSetupError(f"influxdb.{key}: cannot read {path}: {reason}") from None


def _finite(x: Any) -> bool:
    """A number (not a bool) with a finite float value (an integer too large for a float is not)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


ESTIMATE_FIELDS = (
    ("kg_per_day", "leak_kg_per_day"),
    ("kg_per_day_sigma", "leak_kg_per_day_sigma"),
    ("pressure_pa", "pressure_pa"),
    ("mass_kg", "mass_kg"),
    ("reserve_time_s", "reserve_time_s"),
    ("window_s", "window_s"),
    ("detectable_kg_per_day", "detectable_kg_per_day"),
)


def _point_parts(kind: str, b: dict) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """Measurement, tags and fields of one record (non-finite numbers left out)."""
    if kind == "sample":
        fields = {"value": float(b["value"])} if _finite(b.get("value")) else {}
        fields["quality"] = str(b.get("quality", "good"))
        return "sensor", {"sensor": b["sensor"], "quantity": b["quantity"]}, fields
    if kind == "hatch":
        return "hatch", {"hatch": b["hatch"]}, {"open": bool(b["open"])}
    if kind == "estimate":
        fields = {out: float(b[key]) for out, key in ESTIMATE_FIELDS if _finite(b.get(key))}
        return "leak", {"volume": b["volume"]}, fields
    if kind == "step":
        tags = {"volume": b["volume"]} | ({"sensor": b["sensor"]} if b.get("sensor") else {})
        return "step", tags, {"size_pa": float(b["size_pa"])} if _finite(b.get("size_pa")) else {}
    if kind == "clock_step":
        return "clock_step", {}, {"step_s": float(b["step_s"])} if _finite(b.get("step_s")) else {}
    if kind == "alarm":
        fields = {"state": str(b["state"])}
        fields |= {k: float(b[k]) for k in ("value", "threshold") if _finite(b.get(k))}
        if b.get("reason"):
            fields["reason"] = str(b["reason"])
        return "alarm", {"alarm": b["alarm"], "source": b["source"], "severity": b["severity"]}, fields
    if kind == "metric":
        fields = {k: v for k, v in b.get("fields", {}).items() if isinstance(v, bool | str) or _finite(v)}
        return b["measurement"], {k: str(v) for k, v in b.get("tags", {}).items()}, fields
    return None


_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


def _field(key: str, value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = f"{value}i"
    elif isinstance(value, float):
        text = str(value)
        text = text[:-2] if text.endswith(".0") else text
    else:
        text = '"' + value.translate(_ESCAPE_STRING) + '"'
    return f"{key.translate(_ESCAPE_KEY)}={text}"


def line_protocol(measurement: str, tags: dict[str, str], fields: dict[str, Any], time_ns: int) -> str:
    """One line: tags and fields sorted by key, empty tags and non-finite floats left out ("" if no field is left)."""
    field_text = ",".join(
        _field(k, v) for k, v in sorted(fields.items()) if not (isinstance(v, float) and not math.isfinite(v))
    )
    if not field_text:
        return ""  # a point without fields is no point (as influxdb-client's Point has it)
    return f"{_series(measurement, tuple(tags.items()))} {field_text} {time_ns}"


@functools.lru_cache(maxsize=SERIES_CACHED)
def _series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """A series' measurement and tags as line protocol (cached: a fleet writes the same series over and over)."""
    tag_text = "".join(f",{k.translate(_ESCAPE_KEY)}={_tag_value(v)}" for k, v in sorted(tags) if k and v)
    return measurement.translate(_ESCAPE_MEASUREMENT) + tag_text


def _tag_value(value: str) -> str:
    text = value.translate(_ESCAPE_KEY)
    return text + " " if text.endswith("\\") else text


def sample_line(station: str, sensor: str, quantity: str, value: Any, quality: str, time_ns: int) -> str:
    """A sample's line: the same text `to_line` makes of its record, without building the record's parts."""
    series = _series("sensor", (("station", station), ("sensor", sensor), ("quantity", quantity)))
    fields = f'quality="{quality.translate(_ESCAPE_STRING)}"'
    if _finite(value):
        text = str(float(value))
        fields += ",value=" + (text[:-2] if text.endswith(".0") else text)
    return f"{series} {fields} {time_ns}"


def to_line(record: Record, station: str) -> str | None:
    """The record as an ICD §6 line (tagged with its station), or None when it has nothing to write.

    A `line` record (the bridge's) is its line already.
    """
    if record.kind == "line":
        return record.body.decode()
    parts = _point_parts(record.kind, record.body)
    if parts is None or not parts[2]:
        return None
    measurement, tags, fields = parts
    line = line_protocol(measurement, {"station": record.body.get("station", station), **tags}, fields, record.time_ns)
    return line or None


class InfluxSink:
    """Writes spooled records to InfluxDB; `send` confirms a batch only on a 2xx."""

    name = "influxdb"
    kinds = KINDS
    live_interval_s = 1.0  # a second of live records per request: a Pi spares ~80 requests a second
    live_batch = BATCH_LINES

    def __init__(self, cfg: InfluxConfig, station: str) -> None:
        self.cfg = cfg
        self.station = station
        self.api = cfg.api
        self._client = None
        self._reachable = True
        self._accepted = self._accepted_since_refusal = False  # in the batch being written
        if cfg.api == "v2":
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            token = _read_secret(cfg.token_file, "token_file")
            self._client = InfluxDBClient(
                url=cfg.url, token=token or "", org=cfg.org or "", timeout=int(TIMEOUT_S * 1000), retries=False
            )
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        else:
            password = _read_secret(cfg.password_file, "password_file")
            query = {"db": cfg.database or "hullwatch", "precision": "ns"}
            self._v1_url = cfg.url.rstrip("/") + "/write?" + urllib.parse.urlencode(query)
            self._v1_headers = {"Content-Type": "text/plain; charset=utf-8"}
            if cfg.username:
                token = base64.b64encode(f"{cfg.username}:{password or ''}".encode()).decode()
                self._v1_headers["Authorization"] = f"Basic {token}"

    def ready(self) -> bool:
        """HTTP needs no connection: a failed write says when the server is away."""
        return True

    @property
    def connected(self) -> bool:
        """Whether the last write reached the server."""
        return self._reachable

    def send(self, records: Sequence[Record], replay: bool) -> SendResult:
        """Write records as points; poison records are found by halving and set aside."""
        lines: list[tuple[Record, bytes]] = []
        rejected: dict[int, str] = {}
        for r in records:
            if r.kind == "line":  # made once by the bridge, sent as it is
                lines.append((r, r.body))
                continue
            try:
                line = to_line(r, self.station)
            except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
                rejected[r.id] = f"cannot encode: {exc!r}"
                continue
            if line is not None:
                lines.append((r, line.encode()))
        try:
            for i in range(0, len(lines), BATCH_LINES):
                rejected |= self._write_batch(lines[i : i + BATCH_LINES])
        except SinkUnavailable:
            self._reachable = False
            raise
        self._reachable = True
        return SendResult(len(records), rejected)

    def _write_batch(self, lines: list[tuple[Record, bytes]]) -> dict[int, str]:
        """Write a batch; the records the server refuses, once it showed it takes valid points before and after."""
        self._accepted = False  # some write of this batch was accepted
        self._accepted_since_refusal = True  # ... after the last refusal
        refused: dict[int, str] = {}
        self._write_isolating(lines, refused)
        if refused and not self._accepted_since_refusal:  # a proxy may have begun refusing everything
            self._probe(next(iter(refused.values())))
        return refused

    def _write_isolating(self, lines: list[tuple[Record, bytes]], refused: dict[int, str]) -> None:
        refusal = self._try(b"\n".join(line for _, line in lines))
        if refusal is None:
            return
        if len(lines) > 1:
            half = len(lines) // 2
            self._write_isolating(lines[:half], refused)
            self._write_isolating(lines[half:], refused)
            return
        if not self._accepted:  # nothing shows the server takes anything: probe, then give the record one more go
            self._probe(str(refusal))
            refusal = self._try(lines[0][1])
            if refusal is None:
                return
        refused[lines[0][0].id] = str(refusal)
        self._accepted_since_refusal = False

    def _probe(self, refusal: str) -> None:
        """Write a probe point; SinkUnavailable if the server refuses that too (then nothing is poison)."""
        probe = line_protocol("sink_probe", {"station": self.station, "sink": self.name}, {"ok": True}, time.time_ns())
        answer = self._try(probe.encode())
        if answer is not None:
            raise SinkUnavailable(
                f"every write is refused, even a probe point ({refusal}; probe: {answer}): "
                "treated as an outage, nothing set aside"
            )

    def _try(self, body: bytes) -> _Refused | None:
        """Write a body: None if accepted, the refusal if its content was refused; SinkUnavailable otherwise."""
        try:
            self._write(body)
        except _Refused as exc:
            return exc
        self._accepted = self._accepted_since_refusal = True
        return None

    def _write(self, body: bytes) -> None:
        if self.api == "v2":
            self._write_v2(body)
        else:
            self._write_v1(body)

    def _write_v1(self, body: bytes) -> None:
        req = urllib.request.Request(self._v1_url, data=body, headers=self._v1_headers, method="POST")
        try:
            with _V1_OPENER.open(req, timeout=TIMEOUT_S) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").strip()
            location = exc.headers.get("Location")
            raise _answer(exc.code, detail, location and urllib.parse.urljoin(self._v1_url, location)) from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets
            raise SinkUnavailable(str(getattr(exc, "reason", exc))) from None

    def _write_v2(self, body: bytes) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self.cfg.bucket, org=self.cfg.org or "", record=body, write_precision=WritePrecision.NS
            )
        except ApiException as exc:
            detail = (exc.body or exc.reason or "")[:300] if isinstance(exc.body or "", str) else str(exc.reason)
            location = exc.headers.get("Location") if exc.headers else None
            location = location and urllib.parse.urljoin(self.cfg.url.rstrip("/") + "/api/v2/write", location)
            raise _answer(exc.status or 0, detail.strip(), location) from None
        except Exception as exc:  # urllib3's connection and timeout errors
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Release the v2 client's connections."""
        if self._client is not None:
            self._client.close()

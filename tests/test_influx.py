"""The InfluxDB sink: line protocol per ICD §6, a real influxd (v1 API), and the v2 API against a recording stub."""

from __future__ import annotations

import http.server
import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from hullwatch.config import InfluxConfig
from hullwatch.sinks.influx import InfluxSink, line_protocol, to_line
from hullwatch.sinks.spool import Record, SinkUnavailable
from influxd_fixture import HAVE_INFLUXD, Influxd

T0 = 1_780_000_000.0


def rec(i: int, kind: str, t: float, body: dict) -> Record:
    return Record(i, kind, round(t * 1e6) * 1000, body)


def sample(i: int, t: float, value: float, sensor: str = "p_prk", quality: str = "good") -> Record:
    return rec(i, "sample", t, {"sensor": sensor, "quantity": "pressure", "value": value, "quality": quality})


def test_line_protocol_per_icd():
    line = to_line(sample(1, T0 + 0.123456, 101325.125), "prk lab")
    assert line == (
        'sensor,quantity=pressure,sensor=p_prk,station=prk\\ lab quality="good",value=101325.125 1780000000123456000'
    )
    est = {
        "volume": "prk-zvezda",
        "leak_kg_per_day": 0.45,
        "leak_kg_per_day_sigma": 0.01,
        "pressure_pa": 101000.0,
        "mass_kg": 95.5,
        "reserve_time_s": None,
        "window_s": 3600.0,
    }
    line = to_line(rec(2, "estimate", T0, est), "s")
    assert line.startswith("leak,station=s,volume=prk-zvezda ")
    assert "kg_per_day=0.45," in line and "kg_per_day_sigma=0.01" in line and "reserve_time_s" not in line
    alarm = {"alarm": "leak_rate", "source": "prk", "severity": "warning", "state": "active", "value": 1.1,
             "threshold": 0.9}  # fmt: skip
    line = to_line(rec(3, "alarm", T0, alarm), "s")
    assert (
        line
        == 'alarm,alarm=leak_rate,severity=warning,source=prk,station=s state="active",threshold=0.9,value=1.1 '
        + str(1_780_000_000 * 10**9)
    )
    assert to_line(rec(4, "hatch", T0, {"hatch": "h", "open": False}), "s").startswith(
        "hatch,hatch=h,station=s open=false "
    )
    step = {"type": "step", "time": T0, "volume": "prk", "size_pa": -30.2, "sensor": "p_prk"}
    assert (
        to_line(rec(6, "step", T0, step), "s")
        == f"step,sensor=p_prk,station=s,volume=prk size_pa=-30.2 {T0 * 10**9:.0f}"
    )
    nan = sample(5, T0, float("nan"), quality="bad")
    assert to_line(nan, "s").startswith('sensor,quantity=pressure,sensor=p_prk,station=s quality="bad" ')


names = st.text(min_size=1, max_size=8)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**62), 2**62), st.booleans(), st.text()
)


@example(measurement="m", tags={}, fields={"f": float("inf")}, t=0)  # nothing finite left: no line
@given(
    measurement=names.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(names, st.text(max_size=8), max_size=4),
    fields=st.dictionaries(names, values, min_size=1, max_size=4),
    t=st.integers(0, 2**62),
)
def test_line_protocol_agrees_with_influxdb_client(measurement, tags, fields, t):
    point = Point(measurement)
    for k, v in tags.items():
        point.tag(k, v)
    for k, v in fields.items():
        point.field(k, v)
    assert line_protocol(measurement, tags, fields, t) == point.time(t, WritePrecision.NS).to_line_protocol()


needs_influxd = pytest.mark.skipif(not HAVE_INFLUXD, reason="influxd is not installed (Debian package influxdb)")


@needs_influxd
def test_v1_writes_every_sample_once_and_sets_poison_aside(tmp_path):
    influx = Influxd(tmp_path / "influx")
    sink = InfluxSink(InfluxConfig(url=influx.url, api="v1", database="hullwatch"), "bench")
    records = [sample(i, T0 + i * 0.1, 100000.0 + i * 0.001) for i in range(1000)]
    poison = rec(2000, "metric", T0, {"measurement": "sensor", "tags": {"sensor": "p_prk", "quantity": "pressure"},
                                      "fields": {"value": "not a number"}})  # fmt: skip
    result = sink.send([*records[:500], poison, *records[500:]], replay=False)
    assert result.confirmed == 1001 and list(result.rejected) == [2000]
    assert "field type conflict" in result.rejected[2000]
    sink.send(records[:100], replay=True)  # replayed: the same points, not new ones
    rows = influx.rows("SELECT value FROM sensor")
    assert len(rows) == 1000
    assert sorted(round(r["value"], 3) for _, r in rows) == [round(100000.0 + i * 0.001, 3) for i in range(1000)]
    assert rows[0][1]["time"] == int(T0 * 1e9)
    influx.stop()
    with pytest.raises(SinkUnavailable):
        sink.send(records[:1], replay=False)
    influx.start()
    assert sink.send([sample(3000, T0 + 500, 1.0)], replay=False).confirmed == 1
    influx.stop()


@needs_influxd
def test_v1_missing_database_is_unavailable_not_rejected(tmp_path):
    influx = Influxd(tmp_path / "influx")
    sink = InfluxSink(InfluxConfig(url=influx.url, api="v1", database="nowhere"), "bench")
    with pytest.raises(SinkUnavailable, match="404"):
        sink.send([sample(1, T0, 1.0)], replay=False)
    influx.stop()


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, dict, bytes]] = []
    status = 204

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append((self.path, dict(self.headers), body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_v2_path_against_a_recording_stub(tmp_path):
    """What influxdb-client sends (path, org, bucket, precision, token), recorded by a stub HTTP server.

    No InfluxDB 2.x can run here; tests/test_influx_victoria.py writes to a real v2 server, VictoriaMetrics."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    cfg = InfluxConfig(url=f"http://127.0.0.1:{server.server_port}", api="v2", org="lab", bucket="hull",
                       token_file=str(token))  # fmt: skip
    sink = InfluxSink(cfg, "bench")
    try:
        _Recorder.requests = []
        assert sink.send([sample(1, T0, 101325.5), sample(2, T0 + 1, 101325.25)], replay=False).confirmed == 2
        path, headers, body = _Recorder.requests[-1]
        assert path.startswith("/api/v2/write?")
        assert "org=lab" in path and "bucket=hull" in path and "precision=ns" in path
        assert headers["Authorization"] == "Token s3cret-token"
        lines = body.decode().splitlines()
        assert lines == [
            'sensor,quantity=pressure,sensor=p_prk,station=bench quality="good",value=101325.5 1780000000000000000',
            'sensor,quantity=pressure,sensor=p_prk,station=bench quality="good",value=101325.25 1780000001000000000',
        ]
        _Recorder.status = 503
        with pytest.raises(SinkUnavailable, match="503"):
            sink.send([sample(3, T0 + 2, 1.0)], replay=False)
        _Recorder.status = 400  # everything refused, even a probe point: an outage (see test_influx_answers.py)
        with pytest.raises(SinkUnavailable, match="every write is refused"):
            sink.send([sample(4, T0 + 3, 1.0)], replay=False)
    finally:
        _Recorder.status = 204
        sink.close()
        server.shutdown()

"""The InfluxDB sink classifies every answer: delivered, poison set aside, body split, or an outage retried.

Debian's influxd 1.6 (the real server, used here where it can show the case) never answers
413 or 422, never redirects and is never a proxy that refuses everything: those cases run
against `InfluxStub` (tests/influx_stub.py), a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time

import pytest

from hullwatch.config import InfluxConfig
from hullwatch.sinks import influx as influx_module
from hullwatch.sinks import spool as spool_module
from hullwatch.sinks.influx import InfluxSink
from hullwatch.sinks.spool import Record, SinkUnavailable, Spool
from influx_stub import InfluxStub
from influxd_fixture import HAVE_INFLUXD, Influxd

T0 = 1_780_000_000.0
OLD = 1_600_000_000.0  # outside the stub's and influxd's retention below


def sample(i: int, t: float | None = None, value: float | None = None, sensor: str = "p1") -> Record:
    t = T0 + i * 0.001 if t is None else t
    body = {"sensor": sensor, "quantity": "pressure", "value": float(i) if value is None else value, "quality": "good"}
    return Record(i, "sample", round(t * 1e6) * 1000, body)


def giant(i: int) -> Record:
    """A record whose line alone is larger than the stub's 413 limit."""
    return Record(i, "metric", round(T0 * 1e9), {"measurement": "note", "fields": {"text": "x" * 6000}})


def conflicting(i: int) -> Record:
    """A string where the sensor measurement holds a float: influxd refuses it (field type conflict)."""
    body = {"measurement": "sensor", "tags": {"sensor": "p1", "quantity": "pressure"}, "fields": {"value": "text"}}
    return Record(i, "metric", round((T0 + i * 0.001) * 1e9), body)


def sink_for(stub: InfluxStub, api: str) -> InfluxSink:
    return InfluxSink(InfluxConfig(url=stub.url, api=api, org="lab", bucket="hull", database="hullwatch"), "st")


@pytest.fixture
def stub():
    s = InfluxStub()
    try:
        yield s
    finally:
        s.close()


def wait_until(predicate, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_each_answer_is_classified(stub, api):
    """One send per case, straight to the sink: what is confirmed, set aside or left for a retry."""
    sink = sink_for(stub, api)
    try:
        assert sink.send([sample(i) for i in range(10)], replay=False).rejected == {}
        assert len(stub.stored()) == 10

        stub.fault = "blanket400"  # a proxy refusing everything: an outage, not 64 poison records
        before = stub.answers.total()
        with pytest.raises(SinkUnavailable, match="every write is refused"):
            sink.send([sample(i) for i in range(100, 164)], replay=False)
        assert stub.answers.total() - before <= math.log2(64) + 2  # halves down to one record, then a probe
        assert not sink.connected

        for code in ("301", "302"):  # never followed: the stub would answer the GET with 200
            stub.fault = code
            with pytest.raises(SinkUnavailable, match=f"HTTP {code}: the server redirects to {stub.url}/moved"):
                sink.send([sample(200)], replay=False)
        assert stub.gets == 0

        stub.fault = "500"
        with pytest.raises(SinkUnavailable, match="HTTP 500"):
            sink.send([sample(300)], replay=False)
        stub.fault = None
        assert len(stub.stored()) == 10  # nothing of the refused batches was counted as written

        stub.max_body = 4000  # about 35 lines per request; the giant line alone is over it
        batch = [sample(i) for i in range(400, 500)]
        result = sink.send([*batch[:50], giant(999), *batch[50:]], replay=False)
        assert result.confirmed == 101 and list(result.rejected) == [999]
        assert result.rejected[999].startswith("HTTP 413")
        assert sink.connected

        stub.retention_ns = int(T0 * 1e9)  # 422 for older points
        old = [sample(i, t=OLD + i) for i in range(500, 505)]
        result = sink.send([*old[:2], sample(505), *old[2:]], replay=False)
        assert sorted(result.rejected) == [500, 501, 502, 503, 504]
        assert all(r.startswith("HTTP 422") for r in result.rejected.values())
        result = sink.send(old, replay=True)  # a batch of nothing but old points: poison, not an outage
        assert sorted(result.rejected) == [500, 501, 502, 503, 504]

        stub.poison = "poison"
        result = sink.send([sample(600, sensor="poison"), sample(601), sample(602)], replay=False)
        assert list(result.rejected) == [600] and "HTTP 400" in result.rejected[600]

        expected = {str(i) for i in [*range(10), *range(400, 500), 505, 601, 602]}
        assert {fields.split("value=")[1] for fields in stub.stored().values()} == expected
        assert len(stub.stored()) == len(expected)
        assert len(stub.stored("sink_probe")) >= 1  # the probe that showed the server takes valid points
    finally:
        sink.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_a_proxy_that_stops_or_starts_refusing_mid_batch_sets_nothing_aside(stub, api):
    """Refusals count as poison only if the server took valid points both before and after them."""
    sink = sink_for(stub, api)
    try:
        stub.plan = ["blanket400"] * 4  # refused down to the first record, then fixed just before the probe
        assert sink.send([sample(i) for i in range(8)], replay=False).rejected == {}
        assert len(stub.stored()) == 8

        stub.plan, stub.fault = ["blanket400", "ok"], "blanket400"  # one half taken, then everything refused
        with pytest.raises(SinkUnavailable, match="every write is refused"):
            sink.send([sample(i) for i in range(10, 18)], replay=False)
        assert len(stub.stored()) == 12
        stub.fault = None
        assert sink.send([sample(i) for i in range(10, 18)], replay=True).rejected == {}
        assert len(stub.stored()) == 16
    finally:
        sink.close()


def test_a_slow_server_is_an_outage(stub, monkeypatch):
    """A request that outlasts the timeout is retried later, not set aside (v1: the timeout is read per request)."""
    monkeypatch.setattr(influx_module, "TIMEOUT_S", 0.3)
    sink = sink_for(stub, "v1")
    stub.fault, stub.slow_s = "slow", 1.0
    with pytest.raises(SinkUnavailable):
        sink.send([sample(1)], replay=False)
    stub.fault = None
    monkeypatch.setattr(influx_module, "TIMEOUT_S", 30.0)
    assert sink.send([sample(1)], replay=True).rejected == {}
    assert len(stub.stored()) == 1


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_through_the_spool_nothing_lost_nothing_doubled(stub, api, tmp_path, monkeypatch, caplog):
    """Faults one after another under a steady stream: live data flows whenever it can, all arrives once."""
    monkeypatch.setattr(spool_module, "RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(spool_module, "RETRY_MAX_S", 0.2)
    caplog.set_level(logging.INFO)
    spool = Spool(str(tmp_path / "spool.sqlite"), commit_interval_s=0.2)
    sink = sink_for(stub, api)
    spool.start([sink])
    good: set[str] = set()  # values of every good sample appended
    n = 0

    def feed(count: int = 20) -> None:
        nonlocal n
        for _ in range(count):
            spool.append("sample", T0 + n * 0.001, {"sensor": "p1", "quantity": "pressure", "value": float(n),
                                                    "quality": "good"})  # fmt: skip
            good.add(str(n))
            n += 1

    def delivered() -> bool:
        return {f.split("value=")[1] for f in stub.stored().values()} == good

    def feed_until(predicate) -> bool:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            feed()
            if predicate():
                return True
            time.sleep(0.05)
        return False

    try:
        feed()
        assert wait_until(delivered)
        for fault, code, refusals in (("blanket400", 400, 30), ("302", 302, 3), ("500", 500, 3)):
            stub.fault = fault
            seen = stub.answers[code]
            assert feed_until(lambda c=code, s=seen + refusals: stub.answers[c] >= s)  # refused, retried, refused
            assert spool.counters.get("rejected.influxdb", 0) == 0  # an outage, nothing set aside
            stub.fault = None
            assert wait_until(delivered), f"after {fault}: {len(good) - len(stub.stored())} missing"

        stub.max_body = 4000  # stays: the giant record is set aside, everything else keeps flowing
        spool.append("metric", T0, {"measurement": "note", "fields": {"text": "x" * 6000}})
        stub.retention_ns = int(T0 * 1e9)
        for i in range(5):
            spool.append("sample", OLD + i, {"sensor": "p1", "quantity": "pressure", "value": -1.0 - i,
                                             "quality": "good"})  # fmt: skip
        count = len(good)
        assert feed_until(lambda: len(stub.stored()) >= count + 100)  # live data flows past them
        feed()
        assert wait_until(delivered)
        assert wait_until(lambda: spool.counters.get("rejected.influxdb", 0) == 6)
    finally:
        spool.close()
        sink.close()
    assert len(stub.stored()) == len(good) == n  # once each: no point at a wrong time, none missing
    assert stub.gets == 0
    redirects = [r.getMessage() for r in caplog.records if "redirects to" in r.getMessage()]
    assert len(redirects) == 1 and f"{stub.url}/moved" in redirects[0]
    with contextlib.closing(sqlite3.connect(tmp_path / "spool.sqlite")) as db:
        reasons = db.execute("SELECT kind, reason FROM rejected WHERE sink = 'influxdb'").fetchall()
    assert sorted(k for k, _ in reasons) == ["metric", *["sample"] * 5]
    assert {r.split(" ")[1] for _, r in reasons} == {"413", "422:"}


needs_influxd = pytest.mark.skipif(not HAVE_INFLUXD, reason="influxd is not installed (Debian package influxdb)")


@needs_influxd
def test_real_influxd_poison_alone_or_first_is_set_aside_not_an_outage(tmp_path):
    """influxd 1.6: a batch of nothing but poison (type conflicts, points beyond retention) is poison, not an outage."""
    influx = Influxd(tmp_path / "influx")
    sink = InfluxSink(InfluxConfig(url=influx.url, api="v1", database="hullwatch"), "bench")
    try:
        assert sink.send([sample(1)], replay=False).rejected == {}
        conflict = [conflicting(i) for i in (2, 3, 4)]
        result = sink.send(conflict, replay=False)
        assert sorted(result.rejected) == [2, 3, 4]
        assert all("field type conflict" in r for r in result.rejected.values())
        result = sink.send([conflict[0], *[sample(i) for i in range(5, 40)]], replay=False)
        assert list(result.rejected) == [2]

        influx.query('CREATE RETENTION POLICY "day" ON "hullwatch" DURATION 24h REPLICATION 1 DEFAULT', post=True)
        old = [sample(i, t=OLD + i) for i in (50, 51)]
        result = sink.send(old, replay=False)
        assert sorted(result.rejected) == [50, 51]
        assert all("beyond retention" in r for r in result.rejected.values())
        now = time.time()
        result = sink.send([old[0], sample(60, t=now), old[1], sample(61, t=now + 1)], replay=False)
        assert sorted(result.rejected) == [50, 51]
        assert len(influx.rows('SELECT value FROM "day".sensor')) == 2
        assert len(influx.rows('SELECT value FROM "autogen".sensor')) == 36  # 1 and 5..39, once each
        assert influx.rows('SELECT ok FROM "day".sink_probe') or influx.rows('SELECT ok FROM "autogen".sink_probe')
    finally:
        sink.close()
        influx.stop()

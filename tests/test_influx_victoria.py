"""The InfluxDB sink's v2 path (influxdb-client) against a real v2 write server: Debian's VictoriaMetrics.

No InfluxDB 2.x/3.x can be had here; VictoriaMetrics takes line protocol on `/api/v2/write`
(token, org and bucket ignored) and keeps each field as a series `<measurement>_<field>`
(tests/victoria_fixture.py). Every point the sink or the daemon sends is read back from it, by
series and millisecond, and counted: once each, also across an outage of the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from hullwatch import config
from hullwatch.config import InfluxConfig
from hullwatch.service import Daemon
from hullwatch.sinks import spool as spool_module
from hullwatch.sinks.influx import InfluxSink
from hullwatch.sinks.spool import Record, SinkUnavailable, Spool, time_ns
from victoria_fixture import HAVE_VICTORIA, MISSING, VictoriaMetrics

pytestmark = pytest.mark.skipif(not HAVE_VICTORIA, reason=MISSING)

T0 = 1_780_000_000.0
STATION = "bench"

# ICD §6 by record kind: measurement, tag keys, {body key: field}
ICD = {
    "sample": ("sensor", ("sensor", "quantity"), {"value": "value", "quality": "quality"}),
    "hatch": ("hatch", ("hatch",), {"open": "open"}),
    "estimate": (
        "leak",
        ("volume",),
        {
            "leak_kg_per_day": "kg_per_day",
            "leak_kg_per_day_sigma": "kg_per_day_sigma",
            "pressure_pa": "pressure_pa",
            "mass_kg": "mass_kg",
            "reserve_time_s": "reserve_time_s",
            "window_s": "window_s",
            "detectable_kg_per_day": "detectable_kg_per_day",
        },
    ),  # fmt: skip
    "step": ("step", ("volume", "sensor"), {"size_pa": "size_pa"}),
    "alarm": (
        "alarm",
        ("alarm", "source", "severity"),
        {"state": "state", "value": "value", "threshold": "threshold", "reason": "reason"},
    ),
}

Key = tuple[str, frozenset, int]  # series name, labels, milliseconds


def as_stored(value: object) -> float | None:
    """What VictoriaMetrics keeps of a field: numbers, booleans as 1/0, strings as 0; None and NaN are no field."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return 0.0
    return None


def expected_points(kind: str, t_ns: int, body: dict, station: str = STATION) -> dict[Key, float]:
    """The series samples one spooled record becomes in VictoriaMetrics, by the ICD §6 table."""
    if kind == "metric":
        measurement, tags = body["measurement"], {k: str(v) for k, v in body.get("tags", {}).items()}
        fields = body["fields"]
    else:
        measurement, tag_keys, field_of = ICD[kind]
        tags = {k: body[k] for k in tag_keys if body.get(k)}
        fields = {field: body.get(key) for key, field in field_of.items()}
    labels = frozenset({"station": body.get("station", station), **tags}.items())
    out = {}
    for field, value in fields.items():
        stored = as_stored(value)
        if stored is not None:
            out[(f"{measurement}_{field}", labels, t_ns // 1_000_000)] = stored
    return out


def stored_points(vm: VictoriaMetrics) -> tuple[Counter[Key], dict[Key, float]]:
    """Every raw sample VictoriaMetrics holds: how often each (series, ms) is there, and its value."""
    counts: Counter[Key] = Counter()
    values: dict[Key, float] = {}
    for labels, samples in vm.export():
        name = labels.pop("__name__")
        for ms, value in samples:
            key = (name, frozenset(labels.items()), ms)
            counts[key] += 1
            values[key] = value
    return counts, values


def assert_once_each(vm: VictoriaMetrics, expected: dict[Key, float], ignore: tuple[str, ...] = ()) -> None:
    counts, values = stored_points(vm)
    counts = Counter({k: n for k, n in counts.items() if not k[0].startswith(ignore)})
    missing = [k for k in expected if k not in counts]
    doubled = [k for k, n in counts.items() if n > 1]
    unexpected = [k for k in counts if k not in expected]
    assert not missing, f"{len(missing)} of {len(expected)} points missing, e.g. {missing[:3]}"
    assert not doubled, f"{len(doubled)} points stored more than once, e.g. {doubled[:3]}"
    assert not unexpected, f"{len(unexpected)} points nobody sent, e.g. {unexpected[:3]}"
    wrong = [(k, v, values[k]) for k, v in expected.items() if not math.isclose(values[k], v, rel_tol=1e-12)]
    assert not wrong, f"{len(wrong)} values differ (key, sent, stored), e.g. {wrong[:3]}"


def rec(i: int, kind: str, t: float, body: dict) -> Record:
    return Record(i, kind, time_ns(t), body)


def sample(i: int, t: float, value: float, sensor: str = "p_prk", quality: str = "good") -> Record:
    return rec(i, "sample", t, {"sensor": sensor, "quantity": "pressure", "value": value, "quality": quality})


def v2_sink(vm: VictoriaMetrics, tmp_path: Path) -> InfluxSink:
    token = tmp_path / "token"
    token.write_text("ignored-by-victoria-metrics\n")
    cfg = InfluxConfig(url=vm.url, api="v2", org="lab", bucket="hull", token_file=str(token))
    return InfluxSink(cfg, STATION)


def test_every_kind_reads_back_under_its_series_name(tmp_path):
    """Samples, hatches, estimates, steps, alarms and metrics through influxdb-client: each point once."""
    records = [sample(i, T0 + i * 0.1, 101325.0 + i * 0.125) for i in range(300)]
    records += [sample(300, T0 + 30, float("nan"), quality="bad"), sample(301, T0 + 30.1, 101000.0, "p zv,1=a")]
    estimate = {"volume": "prk-zvezda", "leak_kg_per_day": 0.45, "leak_kg_per_day_sigma": 0.031,
                "pressure_pa": 101318.2, "mass_kg": 94.53, "reserve_time_s": None, "window_s": 3600.0,
                "detectable_kg_per_day": 0.02}  # fmt: skip
    active = {"alarm": "leak_rate", "source": "prk-zvezda", "severity": "warning", "state": "active", "value": 0.97,
              "threshold": 0.9}  # fmt: skip
    cleared = {**active, "state": "cleared", "value": 0.81, "reason": "reset by operator"}
    records += [
        rec(400, "hatch", T0 + 1, {"hatch": "prk-hatch", "open": True}),
        rec(401, "hatch", T0 + 2, {"hatch": "prk-hatch", "open": False}),
        rec(402, "estimate", T0 + 3, estimate),
        rec(403, "step", T0 + 4, {"volume": "prk", "size_pa": -30.2, "sensor": "p_prk"}),
        rec(404, "step", T0 + 5, {"volume": "prk", "size_pa": 12.5}),
        rec(405, "alarm", T0 + 6, active),
        rec(406, "alarm", T0 + 7, cleared),
        rec(407, "metric", T0 + 8, {"measurement": "spool", "fields": {"depth": 3, "oldest_unsent_s": 0.5}}),
        rec(
            408, "metric", T0 + 8, {"measurement": "sink", "tags": {"sink": "influxdb"}, "fields": {"connected": True}}
        ),
    ]
    with VictoriaMetrics(tmp_path / "vm") as vm:
        sink = v2_sink(vm, tmp_path)
        try:
            result = sink.send(records, replay=False)
            assert result.confirmed == len(records) and result.rejected == {}
            assert sink.connected
        finally:
            sink.close()
        names = {labels["__name__"] for labels, _ in vm.export()}
        assert names == {
            "sensor_value", "sensor_quality", "hatch_open",
            "leak_kg_per_day", "leak_kg_per_day_sigma", "leak_pressure_pa", "leak_mass_kg", "leak_window_s",
            "leak_detectable_kg_per_day", "step_size_pa", "alarm_state", "alarm_value", "alarm_threshold",
            "alarm_reason", "spool_depth", "spool_oldest_unsent_s", "sink_connected",
        }  # fmt: skip
        (labels, values), *_ = vm.export('sensor_value{sensor="p_prk"}')
        assert labels == {"__name__": "sensor_value", "station": STATION, "sensor": "p_prk", "quantity": "pressure"}
        assert values[:2] == [(1_780_000_000_000, 101325.0), (1_780_000_000_100, 101325.125)]
        assert vm.export('alarm_value{severity="warning"}')[0][1] == [
            (1_780_000_006_000, 0.97),
            (1_780_000_007_000, 0.81),
        ]
        expected: dict[Key, float] = {}
        for r in records:
            expected |= expected_points(r.kind, r.time_ns, r.body)
        assert_once_each(vm, expected)


def run_hole(tmp_path: Path, vm: VictoriaMetrics) -> list[tuple[str, int, dict]]:
    """`hullwatch run` (in-process) on a simulated module writing through api = "v2": VictoriaMetrics is stopped
    before a hole opens and started once alarms, estimates and a backlog of samples wait in the spool; then a
    restart on the same spool sends what the stopped daemon had not. Every record the daemon spooled."""
    scenario = tmp_path / "hole.toml"
    scenario.write_text(
        'name = "hole"\n[[segment]]\nname = "lab"\nvolume_m3 = 1.0\n'
        '[[transducer]]\nname = "p"\nsegment = "lab"\nrate_hz = 10.0\n'
        '[[transducer]]\nname = "t"\nsegment = "lab"\nmeasures = ["temperature"]\n'
        '[[event]]\nat_s = 180\nleak = { segment = "lab", kg_per_day = 100.0 }\n'
    )
    token = tmp_path / "token"
    token.write_text("ignored\n")
    spool_path = tmp_path / "spool.sqlite"
    cfg_path = tmp_path / "hullwatch.toml"
    cfg_path.write_text(
        f'[station]\nname = "{STATION}"\n[[segment]]\nname = "lab"\nvolume_m3 = 1.0\n'
        '[[sensor]]\nname = "p"\nsegment = "lab"\ndriver = "simulated"\n'
        '[[sensor]]\nname = "t"\nsegment = "lab"\ndriver = "simulated"\n'
        f'[simulation]\nscenario = "{scenario}"\nspeed = 60.0\n'
        f'[influxdb]\nurl = "{vm.url}"\napi = "v2"\norg = "lab"\nbucket = "hull"\ntoken_file = "{token}"\n'
        f'[spool]\npath = "{spool_path}"\n'
    )
    cfg = config.load(str(cfg_path))
    daemon = Daemon(cfg)
    daemon.metrics_every_s = 0.5
    spooled: list[tuple[str, int, dict]] = []
    append = daemon.spool.append

    def recording_append(kind: str, t: float, body: dict) -> int:
        rid = append(kind, t, body)
        if rid:
            spooled.append((kind, time_ns(t), json.loads(json.dumps(body))))
        return rid

    daemon.spool.append = recording_append

    def during(start: int) -> Counter[str]:
        return Counter(kind for kind, _, _ in spooled[start:])

    def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, f"no {what} within {timeout} s"
            time.sleep(0.05)

    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: vm.export("sensor_value"), "samples in VictoriaMetrics")
        vm.stop()  # before the hole opens: the daemon goes on, its records wait in the spool
        wait_for(lambda: not daemon.influx.connected, "failed write")
        failed = len(spooled)
        wait_for(
            lambda: (lambda n: n["alarm"] and n["estimate"] and n["sample"] > 2 * spool_module.BACKLOG_MIN)(
                during(failed)
            ),
            "alarms, estimates and a backlog of samples during the outage",
        )
        back = daemon.spool.last_id
        vm.start()
        wait_for(lambda: daemon.spool.cursors.get("influxdb", 0) >= back, "the backlog sent")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    # a restart on the same spool sends what the stopped daemon had not (and nothing it had)
    spool = Spool(str(spool_path))
    sink = InfluxSink(cfg.influxdb, STATION)
    spool.start([sink])
    try:
        end = time.monotonic() + 60
        while spool.stats()["depth"] and time.monotonic() < end:
            time.sleep(0.05)
        assert spool.stats()["depth"] == 0
        assert spool.counters.get("rejected.influxdb", 0) == 0
    finally:
        spool.close()
        sink.close()
    return spooled


def test_the_daemon_through_an_outage_every_point_once(tmp_path, monkeypatch):
    """Samples, estimates, alarms and health metrics: all there after the server was away, none doubled.

    The server keeps duplicates (no dedup), so a record sent twice would show.
    """
    monkeypatch.setattr(spool_module, "RETRY_FIRST_S", 0.1)
    monkeypatch.setattr(spool_module, "RETRY_MAX_S", 0.5)
    with VictoriaMetrics(tmp_path / "vm") as vm:
        spooled = run_hole(tmp_path, vm)
        kinds = Counter(kind for kind, _, _ in spooled)
        assert kinds["sample"] > 2 * spool_module.BACKLOG_MIN and kinds["estimate"] and kinds["alarm"], kinds
        expected: dict[Key, float] = {}
        for kind, t_ns, body in spooled:
            points = expected_points(kind, t_ns, body)
            assert not points.keys() & expected.keys(), f"two records, one point: {kind} {body}"
            expected |= points
        assert_once_each(vm, expected)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_a_line_too_long_is_400_and_set_aside_like_v1(tmp_path, api):
    """VictoriaMetrics answers 400 to a line over its -influx.maxLineSize (256 KiB): the record is set aside as in
    the v1 path, the rest is written. It stores the lines before the long one and then refuses: splitting the
    batch sends those again, which it keeps twice without dedup (InfluxDB overwrites them)."""
    giant = {"measurement": "note", "fields": {"text": "x" * 1_000_000}}
    batch = [sample(i, T0 + i * 0.1, 100.0 + i) for i in range(100)]
    with VictoriaMetrics(tmp_path / "vm", dedup=True) as vm:
        cfg = InfluxConfig(url=vm.url, api=api, org="lab", bucket="hull", database="hullwatch")
        sink = InfluxSink(cfg, STATION)
        try:
            result = sink.send([*batch[:50], rec(1000, "metric", T0, giant), *batch[50:]], replay=False)
            assert result.confirmed == 101 and list(result.rejected) == [1000]
            assert result.rejected[1000].startswith("HTTP 400") and "too long line" in result.rejected[1000]
            alone = sink.send([rec(1001, "metric", T0 + 1, giant)], replay=False)  # nothing else: probed first
            assert list(alone.rejected) == [1001] and "too long line" in alone.rejected[1001]
            assert sink.connected
        finally:
            sink.close()
        expected: dict[Key, float] = {}
        for r in batch:
            expected |= expected_points(r.kind, r.time_ns, r.body)
        if api == "v1":  # /write adds the database as a label
            expected = {(n, labels | {("db", "hullwatch")}, ms): v for (n, labels, ms), v in expected.items()}
        assert_once_each(vm, expected, ignore=("sink_probe",))


def test_a_password_the_v2_path_cannot_give_is_an_outage(tmp_path):
    """Behind HTTP basic auth (-httpAuth.*) the v2 path's token earns 401: an outage, retried, nothing set aside;
    the v1 path with username and password_file writes."""
    with VictoriaMetrics(tmp_path / "vm", login=("hull", "pw")) as vm:
        v2 = v2_sink(vm, tmp_path)
        password = tmp_path / "password"
        password.write_text("pw\n")
        v1 = InfluxSink(InfluxConfig(url=vm.url, api="v1", database="hullwatch", username="hull",
                                     password_file=str(password)), STATION)  # fmt: skip
        try:
            with pytest.raises(SinkUnavailable, match="HTTP 401"):
                v2.send([sample(1, T0, 1.0)], replay=False)
            assert not v2.connected
            assert v1.send([sample(1, T0, 1.0)], replay=False).rejected == {}
        finally:
            with contextlib.suppress(Exception):
                v2.close()
            v1.close()
        assert [s for _, s in vm.export("sensor_value")] == [[(1_780_000_000_000, 1.0)]]

"""The Grafana provisioning in deploy/grafana, and every query of its dashboard against a real influxd.

The dashboard's queries are raw InfluxQL. Each is expanded the way Grafana 10/11 expands it (the
template variables first, as the InfluxDB data source formats them, then `$timeFilter` and the
interval macros, as its backend does) and run on an influxd that holds an hour of data in the ICD §6
schema plus the daemon's self-metrics; each must return at least one series with a value in it.
The data comes from `fill_by_line_protocol`, written from the schema: it is the one place to change
when the fill is done by the daemon's own InfluxDB sink instead.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influxd_fixture import HAVE_INFLUXD, Influxd

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "hullwatch.json"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "hullwatch.yaml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "hullwatch.yaml"
DATASOURCE = {"type": "influxdb", "uid": "hullwatch-influx"}
PANEL_TYPES = {"timeseries", "state-timeline", "table", "stat"}
UNITS = {"s", "short", "none", "bytes", "masskg", "pressurepa", "celsius"}  # Grafana unit ids used here

STATION = "testbed"
T0 = 1_780_000_000  # epoch s of the first point
STEP_S = 10
STEPS = 360  # one hour
HATCH_CLOSES = 180  # the step at which prk-hatch closes: prk-zvezda becomes prk and zvezda
INTERVAL = "10s"  # $__interval for one hour: the data source's timeInterval floors Grafana's own choice
RANGE_MS = (T0 * 1000, (T0 + STEPS * STEP_S) * 1000)
VOLUME_M3 = {"prk": 4.0, "zvezda": 75.0}
R_AIR = 287.05
MINIMUM_PA = 65300.0

try:
    DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    LOAD_ERROR: Exception | None = None
except (OSError, ValueError) as exc:
    DASHBOARD, LOAD_ERROR = {}, exc

PANELS: list[dict[str, Any]] = DASHBOARD.get("panels", [])
VARIABLES: list[dict[str, Any]] = DASHBOARD.get("templating", {}).get("list", [])
ANNOTATIONS: list[dict[str, Any]] = [
    a for a in DASHBOARD.get("annotations", {}).get("list", []) if not a.get("builtIn")
]


# --- filling influxd ----------------------------------------------------------------------------------------------


def _field(value: bool | int | float | str) -> str:
    """One field value in line protocol: float 1.0, integer 1i, boolean true, string "text"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return f"{value:.6f}"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(measurement: str, tags: dict[str, str], fields: dict[str, Any], time_ns: int) -> str:
    tag_text = ",".join(f"{k}={v}" for k, v in sorted({"station": STATION, **tags}.items()))
    field_text = ",".join(f"{k}={_field(v)}" for k, v in fields.items())
    return f"{measurement},{tag_text} {field_text} {time_ns}"


def _lines() -> Iterator[str]:
    """An hour of a PrK + Zvezda mock-up: the leak doubles, the hatch closes, a sensor falters, MQTT drops out."""
    close_t = T0 + HATCH_CLOSES * STEP_S
    p_close = 101325.0 - 0.0056 * (close_t - T0)
    dropped = 0
    for i in range(STEPS):
        t = T0 + i * STEP_S
        ns = t * 10**9
        hatch_open = i < HATCH_CLOSES
        cycle = math.sin(2 * math.pi * (t - T0) / 600.0)
        temperature = {"prk": 295.0 + 0.3 * cycle, "zvezda": 294.0 + 0.2 * cycle}
        if hatch_open:
            pressure = dict.fromkeys(("prk", "zvezda"), 101325.0 - 0.0056 * (t - T0))
        else:
            pressure = {"prk": p_close - 0.23 * (t - close_t), "zvezda": p_close - 0.0001 * (t - close_t)}
        faulty = 250 <= i < 260  # t_zvezda stops answering for 100 s
        for seg in ("prk", "zvezda"):
            yield _line(
                "sensor",
                {"sensor": f"p_{seg}", "quantity": "pressure"},
                {"value": pressure[seg], "quality": "good"},
                ns,
            )
            if not (seg == "zvezda" and faulty):
                yield _line(
                    "sensor",
                    {"sensor": f"t_{seg}", "quantity": "temperature"},
                    {"value": temperature[seg], "quality": "good"},
                    ns,
                )
        yield _line("hatch", {"hatch": "prk-hatch"}, {"open": hatch_open}, ns)

        # estimates: per volume, once the fit has a few points
        if hatch_open and i >= 3:
            rates = {"prk-zvezda": (0.45 if i < 60 else 0.95, 0.05)}
        elif not hatch_open and i >= HATCH_CLOSES + 3:
            rates = {"prk": (0.95, 0.1), "zvezda": (0.0, 0.03)}
        else:
            rates = {}
        for volume, (rate, sigma) in rates.items():
            segs = volume.split("-")
            p = sum(pressure[s] for s in segs) / len(segs)
            mass = sum(p * VOLUME_M3[s] / (R_AIR * temperature[s]) for s in segs)
            fields: dict[str, Any] = {"kg_per_day": rate, "kg_per_day_sigma": sigma, "pressure_pa": p, "mass_kg": mass}
            confident = rate - 3 * sigma
            if confident > 0:  # null (absent) while the volume is not surely losing air
                fields["reserve_time_s"] = mass / (confident / 86400.0) * math.log(p / MINIMUM_PA)
            yield _line("leak", {"volume": volume}, fields, ns)

        # alarm transitions
        for step, alarm, source, severity, state, extra in (
            (70, "leak_rate", "prk-zvezda", "caution", "active", {"value": 0.62, "threshold": 0.5}),
            (95, "leak_rate", "prk-zvezda", "warning", "active", {"value": 0.93, "threshold": 0.9}),
            (HATCH_CLOSES, "leak_rate", "prk-zvezda", "caution", "cleared", {}),  # the volume is gone
            (HATCH_CLOSES, "leak_rate", "prk-zvezda", "warning", "cleared", {}),
            (200, "leak_rate", "prk", "caution", "active", {"value": 0.66, "threshold": 0.5}),
            (215, "leak_rate", "prk", "warning", "active", {"value": 0.91, "threshold": 0.9}),
            (251, "sensor_fault", "t_zvezda", "warning", "active", {}),
            (261, "sensor_fault", "t_zvezda", "warning", "cleared", {}),
        ):
            if step == i:
                yield _line(
                    "alarm", {"alarm": alarm, "source": source, "severity": severity}, {"state": state, **extra}, ns
                )

        # self-metrics, every 10 s, between the samples
        m_ns = ns + 5 * 10**9
        outage = 120 <= i < 130  # the MQTT broker is away for 100 s
        depth = 80 * (i - 119) if outage else 3 + i % 5
        if i == 300:
            dropped += 12
        yield _line(
            "spool",
            {},
            {
                "depth": depth,
                "oldest_unsent_s": 10.0 * (i - 119) if outage else 0.4,
                "dropped": dropped,
                "size_bytes": 1_048_576 + 512 * i,
            },
            m_ns,
        )
        mqtt_sent = 80 * (119 if outage else i)
        yield _line(
            "sink",
            {"sink": "mqtt"},
            {"sent": mqtt_sent, "rejected": 0, "backlog": depth, "connected": not outage},
            m_ns,
        )
        yield _line(
            "sink",
            {"sink": "influxdb"},
            {"sent": 80 * i, "rejected": int(i >= 150), "backlog": 3 + i % 5, "connected": True},
            m_ns,
        )
        for sensor in ("p_prk", "t_prk", "p_zvezda", "t_zvezda"):
            bad = sensor == "t_zvezda" and faulty
            errors = 10 * (min(i, 260) - 249) if sensor == "t_zvezda" and i >= 250 else 0
            yield _line(
                "sensor_health", {"sensor": sensor}, {"errors": errors, "quality": "suspect" if bad else "good"}, m_ns
            )


def fill_by_line_protocol(influx: Influxd) -> None:
    """Write the test hour into influx's database as line protocol, the way the daemon's InfluxDB sink would."""
    body = "\n".join(_lines()).encode()
    url = f"{influx.url}/write?db={influx.database}&precision=ns"
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as resp:
        assert resp.status == 204, resp.read()


# --- expanding a query the way Grafana does ------------------------------------------------------------------------

VARIABLE_REF = re.compile(r"\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]")


def escape_regex(value: str) -> str:
    """@grafana/data's escapeRegex."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def _looks_numeric(value: str) -> bool:
    """JavaScript's !isNaN(parseFloat(value))."""
    return re.match(r"\s*[+-]?(\d|\.\d|Infinity)", value) is not None


def expand_variables(query: str, chosen: dict[str, tuple[str | list[str], bool]]) -> str:
    """Template variables as the InfluxDB data source's interpolateQueryExpr formats them.

    `chosen` maps a variable's name to its value (a list for several values, e.g. All) and whether the
    variable is multi-value. A multi-value variable is always regex-escaped, several values as (a|b);
    a single-value one only where it stands inside a /regex/. Names that are no dashboard variable
    (`$timeFilter`, `$__interval`) are left to the backend.
    """

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in chosen:
            return m.group(0)
        value, multi = chosen[name]
        if isinstance(value, str) and _looks_numeric(value):
            return value
        in_regex = re.search(r"[=!]~\s*/[^/]*\$\{?" + name + r"\b[^/]*/", query) is not None
        if not (multi or in_regex):
            return value if isinstance(value, str) else ",".join(value)
        if isinstance(value, str):
            return escape_regex(value)
        escaped = [escape_regex(v) for v in value]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return VARIABLE_REF.sub(one, query)


def expand_macros(query: str) -> str:
    """`$timeFilter` and the interval macros, as the backend's models.Query.Build replaces them."""
    interval_ms = int(INTERVAL[:-1]) * 1000
    query = query.replace("$timeFilter", f"time >= {RANGE_MS[0]}ms and time <= {RANGE_MS[1]}ms")
    query = query.replace("$interval", INTERVAL)
    query = query.replace("$__interval_ms", str(interval_ms))
    return query.replace("$__interval", INTERVAL)


def render(query: str, chosen: dict[str, tuple[str | list[str], bool]]) -> str:
    """The InfluxQL that Grafana sends for a raw query."""
    text = expand_macros(expand_variables(query, chosen))
    assert not re.search(r"\$(\w|\{)|\[\[", text), f"a variable or macro was left: {text}"
    return text


def run(influx: Influxd, query: str) -> list[dict[str, Any]]:
    """The series of one statement; an InfluxDB error fails the test."""
    results = influx.query(query).get("results", [])
    assert len(results) == 1, f"{results}: {query}"
    assert "error" not in results[0], f"{results[0]['error']}: {query}"
    return results[0].get("series") or []


def has_value(series: list[dict[str, Any]]) -> bool:
    """At least one non-null value outside the time column."""
    return any(
        v is not None
        for s in series
        for row in s.get("values", [])
        for col, v in zip(s["columns"], row, strict=True)
        if col != "time"
    )


def _group_by_tags(query: str) -> set[str]:
    m = re.search(r"\bGROUP BY\s+(.*?)(?:\s+fill\(|\s+ORDER\b|\s+LIMIT\b|$)", query, re.IGNORECASE)
    return set(re.findall(r'"(\w+)"', m.group(1))) if m else set()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


TARGETS = [
    pytest.param(panel, target, id=f"{panel.get('id')}-{_slug(panel.get('title', ''))}-{target.get('refId')}")
    for panel in PANELS
    for target in panel.get("targets", [])
]


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """An influxd holding the test hour (one per module: the data is only read)."""
    if not HAVE_INFLUXD:
        pytest.skip("influxd is not installed (Debian package influxdb): the dashboard queries cannot be run")
    server = Influxd(tmp_path_factory.mktemp("influxd"))
    try:
        fill_by_line_protocol(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def options(influx: Influxd) -> dict[str, tuple[list[str], bool]]:
    """Each template variable's options and multi flag, found as Grafana finds them: its query, in order."""
    found: dict[str, tuple[list[str], bool]] = {}
    for var in VARIABLES:
        series = run(influx, render(var["query"], selection(found)))
        values = sorted({str(row[s["columns"].index("value")]) for s in series for row in s["values"]})
        found[var["name"]] = (values, bool(var.get("multi")))
    return found


def selection(found: dict[str, tuple[list[str], bool]]) -> dict[str, tuple[str | list[str], bool]]:
    """What the dashboard starts with: All for a multi-value variable, else the first option."""
    return {name: (values if multi else values[0], multi) for name, (values, multi) in found.items() if values}


# --- every query returns data --------------------------------------------------------------------------------------


def test_template_variables_list_the_station_and_its_volumes(options):
    assert [v["name"] for v in VARIABLES] == ["station", "volume"]
    assert options["station"] == ([STATION], False)
    assert options["volume"] == (["prk", "prk-zvezda", "zvezda"], True)


@pytest.mark.parametrize(("panel", "target"), TARGETS)
def test_panel_query_returns_data(influx, options, panel, target):
    assert target.get("rawQuery") is True and target.get("query"), "every target is a raw InfluxQL query"
    start = selection(options)
    repeat = panel.get("repeat")
    # a repeated panel gets one copy per value, each with that value alone
    choices = [start] if not repeat else [{**start, repeat: (v, options[repeat][1])} for v in options[repeat][0]]
    for chosen in choices:
        query = render(target["query"], chosen)
        series = run(influx, query)
        assert series and has_value(series), f"no data: {query}"
        for tag in re.findall(r"\$tag_(\w+)", target.get("alias", "")):
            assert all(tag in (s.get("tags") or {}) for s in series), f"alias $tag_{tag} has no tag to name: {query}"


@pytest.mark.parametrize("annotation", ANNOTATIONS, ids=lambda a: _slug(a.get("name", "")))
def test_annotation_query_returns_events(influx, options, annotation):
    query = render(annotation["query"], selection(options))
    series = run(influx, query)
    assert series and has_value(series), f"no events: {query}"
    wanted = {annotation["textColumn"], *annotation["tagsColumn"].split(",")}
    assert all(wanted <= set(s["columns"]) for s in series), "text and tag columns are columns of the result"
    states = {row[s["columns"].index("state")] for s in series for row in s["values"]}
    assert states == {"active"}


def _panel_with(fragment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for panel in PANELS:
        for target in panel.get("targets", []):
            if fragment in target.get("query", ""):
                return panel, target
    raise AssertionError(f"no query contains {fragment!r}")


def test_temperatures_are_shown_in_celsius(influx, options):
    panel, target = _panel_with('- 273.15 FROM "sensor"')
    assert panel["fieldConfig"]["defaults"]["unit"] == "celsius"
    series = run(influx, render(target["query"], selection(options)))
    values = [v for s in series for _, v in s["values"] if v is not None]
    assert {s["tags"]["sensor"] for s in series} == {"t_prk", "t_zvezda"}
    assert values and all(20.0 < v < 22.5 for v in values)


def test_leak_band_brackets_the_rate(influx, options):
    panel = next(p for p in PANELS if p.get("repeat") == "volume")
    by_alias = {t["alias"]: t for t in panel["targets"]}
    chosen = {**selection(options), "volume": ("prk-zvezda", True)}
    columns = {}
    for alias in ("$tag_volume", "r - 2σ", "r + 2σ"):
        (series,) = run(influx, render(by_alias[alias]["query"], chosen))
        columns[alias] = {t: v for t, v in series["values"] if v is not None}
    assert columns["$tag_volume"]
    for t, rate in columns["$tag_volume"].items():
        assert columns["r - 2σ"][t] < rate < columns["r + 2σ"][t]
    assert min(columns["$tag_volume"].values()) == pytest.approx(0.45)
    assert max(columns["$tag_volume"].values()) == pytest.approx(0.95)


# --- the dashboard is one Grafana 10/11 imports ---------------------------------------------------------------------


def test_dashboard_json_loads():
    assert LOAD_ERROR is None, f"{DASHBOARD_FILE}: {LOAD_ERROR}"
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    assert DASHBOARD["uid"] and DASHBOARD["title"] and PANELS


def test_everything_queries_the_hullwatch_datasource():
    for panel in PANELS:
        assert panel.get("datasource") == DATASOURCE, panel.get("title")
        assert panel.get("targets"), panel.get("title")
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel.get("title"), target.get("refId"))
    for item in VARIABLES + ANNOTATIONS:
        assert item.get("datasource") == DATASOURCE, item.get("name")
    assert ANNOTATIONS, "alarms are annotated on the time axis"


def test_panel_ids_are_unique_and_the_layout_fits_24_columns():
    ids = [p.get("id") for p in PANELS]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for p in PANELS:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), p["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_panels_are_valid_grafana_panels():
    refs = {v["name"] for v in VARIABLES}
    for p in PANELS:
        assert p.get("type") in PANEL_TYPES, p.get("title")
        assert isinstance(p.get("options"), dict), p["title"]
        defaults = p["fieldConfig"]["defaults"]
        assert isinstance(p["fieldConfig"].get("overrides"), list), p["title"]
        unit = defaults.get("unit", "")
        assert unit in UNITS or unit.startswith("suffix:"), (p["title"], unit)
        assert defaults.get("thresholds", {}).get("steps"), p["title"]
        assert [t["refId"] for t in p["targets"]] == sorted({t["refId"] for t in p["targets"]}), p["title"]
        if p.get("repeat"):
            var = next(v for v in VARIABLES if v["name"] == p["repeat"])
            assert var["multi"] and var["includeAll"] and p["repeat"] in refs
        aliases = {t.get("alias") for t in p["targets"]}
        for override in p["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "custom.fillBelowTo":  # the band: both edges are series of this panel
                    assert {prop["value"], override["matcher"]["options"]} <= aliases, p["title"]


def test_queries_filter_by_station_and_volume_and_group_by_interval():
    station, volume = '"station" =~ /^$station$/', '"volume" =~ /^$volume$/'
    for p in PANELS:
        for t in p["targets"]:
            q = t["query"]
            assert station in q and "$timeFilter" in q, (p["title"], q)
            if 'FROM "leak"' in q:
                assert volume in q, (p["title"], q)
            if "GROUP BY time(" in q:
                assert "GROUP BY time($__interval)" in q and re.search(r"fill\((null|previous)\)$", q), q
            assert set(re.findall(r"\$tag_(\w+)", t.get("alias", ""))) <= _group_by_tags(q), (p["title"], q)
    for a in ANNOTATIONS:
        assert station in a["query"] and "$timeFilter" in a["query"] and "\"state\" = 'active'" in a["query"]
    by_name = {v["name"]: v for v in VARIABLES}
    assert by_name["station"]["query"] == 'SHOW TAG VALUES FROM "leak" WITH KEY = "station"'
    assert by_name["volume"]["query"] == f'SHOW TAG VALUES FROM "leak" WITH KEY = "volume" WHERE {station}'
    assert by_name["volume"]["multi"] and by_name["volume"]["includeAll"]


def test_expansion_matches_grafana():
    chosen = {"station": ("testbed", False), "volume": (["prk", "prk-zvezda"], True)}
    q = 'SELECT mean("x") FROM "leak" WHERE "station" =~ /^$station$/ AND "volume" =~ /^$volume$/ AND $timeFilter'
    assert render(q + " GROUP BY time($__interval)", chosen) == (
        'SELECT mean("x") FROM "leak" WHERE "station" =~ /^testbed$/ AND "volume" =~ /^(prk|prk-zvezda)$/ '
        f"AND time >= {RANGE_MS[0]}ms and time <= {RANGE_MS[1]}ms GROUP BY time(10s)"
    )
    assert expand_variables('"t" =~ /^$v$/', {"v": ("a.b/c", False)}) == r'"t" =~ /^a\.b\/c$/'
    assert expand_variables("'$v'", {"v": ("a.b", False)}) == "'a.b'"


# --- the provisioning files ----------------------------------------------------------------------------------------


def _settings(path: Path) -> dict[str, str]:
    """key: value pairs of a provisioning file's uncommented lines (enough to check these flat files)."""
    text = path.read_text(encoding="utf-8")
    assert "\t" not in text, f"{path}: tabs are not YAML indentation"
    pairs = {}
    for line in text.splitlines():
        code = line.split("#", 1)[0].rstrip()
        if ":" in code:
            key, _, value = code.strip().lstrip("- ").partition(":")
            pairs[key.strip()] = value.strip()
    return pairs


def test_datasource_provisioning_matches_the_dashboard():
    ds = _settings(DATASOURCE_FILE)
    assert ds["apiVersion"] == "1"
    assert (ds["type"], ds["uid"], ds["access"]) == ("influxdb", DATASOURCE["uid"], "proxy")
    assert (ds["url"], ds["version"], ds["dbName"]) == ("http://localhost:8086", "InfluxQL", "hullwatch")
    assert ds["timeInterval"] == INTERVAL
    text = DATASOURCE_FILE.read_text(encoding="utf-8")
    uncommented = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "$" not in uncommented, "Grafana expands $NAME in provisioning files"
    assert "#   httpHeaderName1: Authorization" in text and "#   httpHeaderValue1: Token " in text


def test_dashboard_provider_points_where_the_readme_copies_to():
    provider = _settings(PROVIDER_FILE)
    assert (provider["apiVersion"], provider["type"]) == ("1", "file")
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    assert provider["path"] in readme
    for path in ("provisioning/datasources/hullwatch.yaml", "provisioning/dashboards/hullwatch.yaml"):
        assert path in readme


# --- filled by the daemon itself -----------------------------------------------------------------------------------


def test_every_panel_has_data_when_the_daemon_fills_influxdb(tmp_path):
    """The real writer: the daemon plays the demo's story (hatch closure, hole) at 1000x into a fresh influxd."""
    if not HAVE_INFLUXD:
        pytest.skip("influxd is not installed (Debian package influxdb)")
    import threading

    from gpiozero.pins.mock import MockFactory

    from hullwatch import config, demo
    from hullwatch.service import Daemon

    server = Influxd(tmp_path / "influx")
    try:
        path = tmp_path / "hullwatch.toml"
        path.write_text(demo._config_text(tmp_path, demo.SCENARIO, 1000.0, None, server.port))
        daemon = Daemon(config.load(str(path)), pin_factory=MockFactory())
        daemon.metrics_every_s = 2.0  # several self-metrics points within the short run
        sim, stop = daemon.drivers[0], threading.Event()
        runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + 300  # ~5 s here: the story as processed, however slow the machine
        while daemon.processed_to - sim.epoch0 < 3.2 * 3600:
            assert runner.is_alive() and time.monotonic() < deadline, "3.2 h of story not processed"
            time.sleep(0.2)
        stop.set()
        runner.join(30)
        first, last = (server.rows(f"SELECT {f}(value) FROM sensor")[0][1]["time"] // 10**6 for f in ("first", "last"))
        found: dict[str, tuple[list[str], bool]] = {}
        for var in VARIABLES:
            series = run(server, render(var["query"], selection(found)))
            found[var["name"]] = (sorted({str(r[s["columns"].index("value")]) for s in series for r in s["values"]}),
                                  bool(var.get("multi")))  # fmt: skip
        assert found["volume"][0] == ["prk", "prk-zvezda", "zvezda"]
        empty = []
        for panel, target in (param.values for param in TARGETS):
            query = render(target["query"], selection(found))
            query = query.replace(f"{RANGE_MS[0]}ms", f"{first}ms").replace(f"{RANGE_MS[1]}ms", f"{last + 60_000}ms")
            if not has_value(run(server, query)):
                empty.append(f"{panel.get('title')}: {query}")
        assert not empty, "panels with no data:\n" + "\n".join(empty)
    finally:
        server.stop()

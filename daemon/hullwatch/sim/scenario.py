"""Scenario files (TOML) for the simulated mock-up: the module, its transducers, and what happens when.

name = "prk-2026"
description = "..."
duration_s = 21600                  # optional: the story's length (it then holds its last state)

[[segment]]
name = "prk"
volume_m3 = 4.0
temperature_k = 295.0               # mean air temperature
temperature_swing_k = 0.0           # ± this, cycling with temperature_period_s
temperature_period_s = 14400.0
leak_kg_per_day = 0.45              # choked leak, at 101 325 Pa

[[hatch]]
name = "prk-hatch"
between = ["prk", "zvezda"]
initial = "open"

[[transducer]]
name = "p_prk"
segment = "prk"
preset = "ptb330"                   # serial protocol spoken by `hullwatch simulate` (sensors/presets.py)
measures = ["pressure"]             # and/or "temperature"
rate_hz = 1.0
noise_pa = 2.0                      # Gaussian, standard deviation
quantum_pa = 0.01
offset_pa = 0.0
noise_k = 0.002
quantum_k = 0.001

[[event]]
at_s = 7200
leak = { segment = "prk", kg_per_day = 1.0 }
[[event]]
at_s = 14400
hatch = { name = "prk-hatch", state = "closed" }
[[event]]
at_s = 3600
unplug = { transducer = "p_zv", for_s = 60 }
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch.core.model import Quantity
from hullwatch.sim.physics import Module, SensorModel, cycle, steps

MAX_SCENARIO_BYTES = 16 * 2**20  # a scenario is a few kB; more is a wrong file (/dev/zero ...)


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the file and key."""


@dataclass(frozen=True)
class Transducer:
    """A simulated device: one or two sensor models behind one name and protocol."""

    name: str
    segment: str
    preset: str
    rate_hz: float
    models: tuple[SensorModel, ...]


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, ready to build a Module from."""

    path: str
    name: str
    description: str
    duration_s: float | None
    segments: Mapping[str, dict]
    hatches: Mapping[str, tuple[tuple[str, str], bool]]  # name -> (between, initially open)
    transducers: tuple[Transducer, ...]
    leak_changes: Mapping[str, tuple[tuple[float, float], ...]]  # segment -> ((at_s, kg/day), ...)
    hatch_events: tuple[tuple[float, str, bool], ...]
    unplugged: tuple[tuple[str, float, float], ...]  # (transducer, from_s, to_s)

    def module(self) -> Module:
        """A fresh physics model of the module at the story's start."""
        temperature = {
            name: cycle(seg["temperature_k"], seg["temperature_swing_k"], seg["temperature_period_s"])
            if seg["temperature_swing_k"]
            else (lambda _t, k=seg["temperature_k"]: k)
            for name, seg in self.segments.items()
        }
        leaks = {
            name: steps(seg["leak_kg_per_day"], list(self.leak_changes.get(name, ())))
            for name, seg in self.segments.items()
        }
        return Module(
            {n: s["volume_m3"] for n, s in self.segments.items()},
            {n: between for n, (between, _) in self.hatches.items()},
            {n for n, (_, is_open) in self.hatches.items() if is_open},
            temperature,
            leaks,
        )

    def is_unplugged(self, transducer: str, t: float) -> bool:
        """Whether a transducer is disconnected at story time t."""
        return any(name == transducer and a <= t < b for name, a, b in self.unplugged)


def load(path: str) -> Scenario:
    """Read and check a scenario file."""
    with open(path, "rb") as f:
        raw = f.read(MAX_SCENARIO_BYTES + 1)
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{path}: larger than {MAX_SCENARIO_BYTES // 2**20} MB: not a scenario file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: TOML syntax: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise ScenarioError(f"{path}: TOML nested too deeply to read") from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: str = "<scenario>") -> Scenario:
    """Check a parsed scenario document."""

    def fail(key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{path}: {key}: {message}")

    def number(table: Mapping, key: str, where: str, default: float | None = None, positive: bool = False) -> float:
        v = table.get(key, default)
        if v is None:
            raise fail(f"{where}.{key}", "missing (required)")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise fail(f"{where}.{key}", f"must be a number, not {v!r}")
        if positive and v <= 0:
            raise fail(f"{where}.{key}", f"must be positive, not {v!r}")
        return float(v)

    segments: dict[str, dict] = {}
    for i, seg in enumerate(data.get("segment", [])):
        where = f"segment[{i}]"
        name = seg.get("name")
        if not isinstance(name, str):
            raise fail(f"{where}.name", "missing (required)")
        segments[name] = {
            "volume_m3": number(seg, "volume_m3", where, positive=True),
            "temperature_k": number(seg, "temperature_k", where, 295.0, positive=True),
            "temperature_swing_k": number(seg, "temperature_swing_k", where, 0.0),
            "temperature_period_s": number(seg, "temperature_period_s", where, 14400.0, positive=True),
            "leak_kg_per_day": number(seg, "leak_kg_per_day", where, 0.0),
        }
    if not segments:
        raise fail("segment", "at least one [[segment]] is required")
    hatches = {}
    for i, h in enumerate(data.get("hatch", [])):
        where = f"hatch[{i}]"
        between = h.get("between")
        if not (isinstance(between, list) and len(between) == 2 and all(b in segments for b in between)):
            raise fail(f"{where}.between", f"must name two segments of this scenario, not {between!r}")
        hatches[str(h.get("name"))] = ((between[0], between[1]), h.get("initial", "open") != "closed")
    transducers = []
    for i, tr in enumerate(data.get("transducer", [])):
        where = f"transducer[{i}]"
        name, segment = tr.get("name"), tr.get("segment")
        if not isinstance(name, str):
            raise fail(f"{where}.name", "missing (required)")
        if segment not in segments:
            raise fail(f"{where}.segment", f"unknown segment {segment!r}")
        measures = tr.get("measures", ["pressure"])
        if not measures or any(m not in ("pressure", "temperature") for m in measures):
            raise fail(f"{where}.measures", f"must list 'pressure' and/or 'temperature', not {measures!r}")
        models = []
        if "pressure" in measures:
            models.append(
                SensorModel(
                    name,
                    segment,
                    Quantity.PRESSURE,
                    number(tr, "noise_pa", where, 2.0),
                    number(tr, "quantum_pa", where, 0.01),
                    number(tr, "offset_pa", where, 0.0),
                )
            )
        if "temperature" in measures:
            models.append(
                SensorModel(
                    name,
                    segment,
                    Quantity.TEMPERATURE,
                    number(tr, "noise_k", where, 0.002),
                    number(tr, "quantum_k", where, 0.001),
                    number(tr, "offset_k", where, 0.0),
                )
            )
        transducers.append(
            Transducer(
                name,
                segment,
                str(tr.get("preset", "plain")),
                number(tr, "rate_hz", where, 1.0, positive=True),
                tuple(models),
            )
        )
    leak_changes: dict[str, list[tuple[float, float]]] = {}
    hatch_events = []
    unplugged = []
    names = {t.name for t in transducers}
    for i, ev in enumerate(data.get("event", [])):
        where = f"event[{i}]"
        at = number(ev, "at_s", where)
        if "leak" in ev:
            leak = ev["leak"]
            if leak.get("segment") not in segments:
                raise fail(f"{where}.leak.segment", f"unknown segment {leak.get('segment')!r}")
            leak_changes.setdefault(leak["segment"], []).append((at, number(leak, "kg_per_day", f"{where}.leak")))
        elif "hatch" in ev:
            h = ev["hatch"]
            if h.get("name") not in hatches or h.get("state") not in ("open", "closed"):
                raise fail(f"{where}.hatch", f"needs name (a hatch of this scenario) and state open|closed: {h!r}")
            hatch_events.append((at, h["name"], h["state"] == "open"))
        elif "unplug" in ev:
            u = ev["unplug"]
            if u.get("transducer") not in names:
                raise fail(f"{where}.unplug.transducer", f"unknown transducer {u.get('transducer')!r}")
            unplugged.append((u["transducer"], at, at + number(u, "for_s", f"{where}.unplug", positive=True)))
        else:
            raise fail(where, "needs one of leak, hatch or unplug")
    duration = data.get("duration_s")
    return Scenario(
        path,
        str(data.get("name", "scenario")),
        str(data.get("description", "")),
        None if duration is None else number(data, "duration_s", "", positive=True),
        segments,
        hatches,
        tuple(transducers),
        {k: tuple(sorted(v)) for k, v in leak_changes.items()},
        tuple(sorted(hatch_events)),
        tuple(unplugged),
    )

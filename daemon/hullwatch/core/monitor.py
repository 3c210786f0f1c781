"""The core monitor: samples in, estimates and alarm transitions out.

Theory of operation
-------------------
Sensors report pressures and temperatures; hatches report open or closed. Segments
joined by open hatches form volumes (topology.py), and each volume has one pressure
and one air mass, m = Σ P·Vᵢ/(R·Tᵢ).

A volume takes a *point* (time, P, m) each time every healthy pressure sensor in it has
reported since the last point: one reading per round, never the same reading twice, so
the points' noise is independent even when sensors run at different rates. P combines
the round's readings, each weighted by its sensor's noise and corrected by its offset to
the others (fusion.py: a sensor that re-zeroes is a LevelStep naming it, one that
wanders a sensor_fault); each segment's T is the mean of its healthy temperature
sensors, de-lagged where a time constant is given (else the volume's mean temperature,
else 293.15 K, with a notice).

Points feed three estimators per volume:
* the leak rate, from the adaptive least-squares slope of ln m (estimator.AdaptiveSlope),
  evaluated every `report_interval_s` of data time: an Estimate, the leak_rate and
  reserve_time conditions. A choked leak loses a fixed fraction of the mass per second,
  so ln m falls on a straight line even as the loss slows with the pressure; the loss
  now is that fraction times the fitted mass now, not the average over the window. Its
  σ also carries what a thermometer lagging by `thermometer_lag_sigma_s` would make of
  the temperature's changing rate (the bend of the volume's mean temperature over the
  window). Level shifts the fit absorbs are LevelStep events. For `settle_s` after the
  volume formed (start-up, a hatch operation), and until its fit has seen a window long
  enough to measure the noise's correlation (about 48 min), the conditions act only on
  overwhelming evidence (SETTLE_K_FACTOR × k σ): the air is mixing, and minutes of data
  cannot tell a sensor's slow wander from a leak. A window just cut by a change is not
  judged until it holds ALARM_MIN_POINTS: a step it holds may yet be found as a step;
* the short-window rate of fall of P (estimator.FallRate), every point: rapid_depress;
* P itself, every point: low_pressure.
When the set of sensors behind a volume's mass changes (one goes stale, one returns) the
leak fit restarts, since offsets between sensors would otherwise show as a step, unless
every pressure sensor involved has a known offset and the thermometers are the same. When a
hatch re-forms the volumes, a volume whose members changed starts afresh and the
alarms of a volume that no longer exists clear.

Sensors are checked for staleness whenever time advances: by tick() in the live daemon,
and by the samples themselves, which raise a fault at the very moment a silence reached
stale_after_s (so a recording replays the faults the live daemon saw). Physical range
and readability are checked on every sample. Any of these makes a per-sensor
sensor_fault active until a good reading returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hullwatch.core.conditions import Condition, below, confidently_above
from hullwatch.core.estimator import (
    MIN_POINTS,
    MIN_SPACING_S,
    AdaptiveSlope,
    Delag,
    FallRate,
    SlopeEstimate,
    curvature_bound,
)
from hullwatch.core.fusion import PressureTrack, combine
from hullwatch.core.linefit import LineSeries
from hullwatch.core.model import (
    R_AIR,
    SECONDS_PER_DAY,
    AlarmTransition,
    Estimate,
    Event,
    HatchChange,
    LevelStep,
    Notice,
    Quality,
    Quantity,
    Sample,
    Severity,
)
from hullwatch.core.settings import ModuleSettings, SensorSpec
from hullwatch.core.topology import form_volumes

DEFAULT_TEMPERATURE_K = 293.15
DETECTION_WINDOWS_S = (600.0, 3600.0, 86400.0)  # 10 min, 1 h, a day
ALARM_MIN_POINTS = 3 * MIN_POINTS  # leak-rate and reserve-time alarms judge windows of at least this many points
SETTLE_K_FACTOR = 3.0  # while a volume settles or its noise is unmeasured, alarms act at this many times k σ
JUMP_Z = 8.0  # a reading further than this many σ of a difference from the last waits for the next
JUMP_FLOOR_PA = 5.0  # ... and further than this (a smooth or quantised stream has almost no noise)
_HATCH, _PRESSURE, _BAD = Quantity.HATCH, Quantity.PRESSURE, Quality.BAD

LEAK_RATE = "leak_rate"
RESERVE_TIME = "reserve_time"
RAPID_DEPRESS = "rapid_depress"
LOW_PRESSURE = "low_pressure"
SENSOR_FAULT = "sensor_fault"


class _Sensor:
    """What the monitor knows of one sensor."""

    __slots__ = (
        "spec",
        "name",
        "segment",
        "pressure_range",
        "temperature_range",
        "last_seen",
        "pressure",
        "temperature",
        "faults",
        "fault",
        "delag",
        "track",
        "held",
        "glitches",
    )

    def __init__(self, spec: SensorSpec, severity: Severity) -> None:
        self.spec = spec
        self.name = spec.name
        self.segment = spec.segment
        self.pressure_range = spec.pressure_range_pa
        self.temperature_range = spec.temperature_range_k
        self.last_seen = -math.inf
        self.pressure: float | None = None  # latest good reading; None until one arrives
        self.temperature: float | None = None
        self.faults: dict[str, str] = {}  # reason -> detail
        self.fault = Condition(SENSOR_FAULT, spec.name, severity, None)
        self.delag = Delag(spec.time_constant_s) if spec.time_constant_s > 0.0 else None
        self.track = PressureTrack(spec.name)
        self.held: tuple[float, float] | None = None  # (time, pressure) of a jump awaiting the next reading
        self.glitches = 0  # readings set aside as one-reading jumps


class _Volume:
    """One volume: its members, its estimators and its alarm conditions."""

    def __init__(self, vid: str, segments: tuple[str, ...], monitor: Monitor, time: float) -> None:
        self.id = vid
        self.segments = segments
        self.parts = [
            (monitor.segment_volume[seg], [s for s in monitor.sensors.values() if s.spec.segment == seg])
            for seg in segments
        ]
        self.sensors = [s for _, members in self.parts for s in members]
        self.size_m3 = sum(vol for vol, _ in self.parts)
        self.formed_at = time
        self.settle_until = time + monitor.settings.leak.settle_s  # alarms need overwhelming evidence until then
        self.slope = AdaptiveSlope()
        self.fall = FallRate()
        self.air_temperature = LineSeries()  # the volume's mean temperature, MIN_SPACING_S apart
        self.air_temperature_due = -math.inf
        self.fresh: dict[str, float] = {}  # this round's pressure readings
        self.pressure_sensors: dict[str, _Sensor] = {}  # those that make the pressure now
        # The plan: which sensors make the mass now; rebuilt when any sensor's health changes.
        self.plan_version = -1
        self.expected = 0  # healthy pressure sensors in a full round
        self.temperatures: list[tuple[float, list[_Sensor]]] = []  # (segment volume, its healthy thermometers)
        self.signature: tuple | None = None
        self.pressure = math.nan
        self.mass = math.nan
        self.next_report = -math.inf
        self.last_fit: SlopeEstimate | None = None  # the leak fit behind the latest estimate
        self.temperature_notice_given = False
        self.conditions = monitor.volume_conditions(vid)
        self.low_pressure = [
            c for sev in (Severity.WARNING, Severity.EMERGENCY) if (c := self.conditions.get((LOW_PRESSURE, sev)))
        ]
        self.rapid_depress = self.conditions.get((RAPID_DEPRESS, Severity.EMERGENCY))


class Monitor:
    """Turns samples into estimates and alarm transitions; deterministic and free of I/O."""

    def __init__(self, settings: ModuleSettings) -> None:
        self.settings = settings
        self.k = settings.leak.confidence_sigma
        self.report_interval = settings.leak.report_interval_s
        self.stale_after = settings.alarms.sensor.stale_after_s
        self.low_pressure_hysteresis = settings.alarms.low_pressure.hysteresis_pa
        self.segment_volume = {s.name: s.volume_m3 for s in settings.segments}
        severity = Severity[settings.alarms.sensor.severity.upper()]
        self.sensors = {s.name: _Sensor(s, severity) for s in settings.sensors}
        self.hatch_between = {h.name: h.between for h in settings.hatches}
        self.hatch_open = {h.name: h.initially_open for h in settings.hatches}
        self.volumes: dict[str, _Volume] = {}
        self._volume_of_segment: dict[str, _Volume] = {}
        self._started = False
        self._stale_deadline = math.inf
        self._health_version = 0  # bumped whenever a sensor starts reporting, fails or recovers
        self._reform(-math.inf, [])

    # -- public --------------------------------------------------------------------------

    def feed(self, sample: Sample) -> list[Event]:
        """Process one sample; return what it caused, in time order."""
        events: list[Event] = []
        t = sample.time
        if not self._started:
            self._start(t)
        while t >= self._stale_deadline:  # as the live clock would have seen it
            self._check_stale(self._stale_deadline, events)
        quantity = sample.quantity
        if quantity is _HATCH:
            self._hatch(sample, events)
            return events
        sensor = self.sensors[sample.sensor]
        value = sample.value
        if sample.quality is _BAD or value != value:
            self._set_fault(sensor, t, "unreadable", f"unreadable {quantity.value} reading", events)
            return events
        pressure = quantity is _PRESSURE
        lo, hi = sensor.pressure_range if pressure else sensor.temperature_range
        if not lo <= value <= hi:
            unit = "Pa" if pressure else "K"
            detail = f"{quantity.value} {value:g} {unit} outside [{lo:g}, {hi:g}]" + _unit_hint(value, lo, hi, pressure)
            self._set_fault(sensor, t, "out_of_range_" + quantity.value, detail, events)
            return events
        sensor.last_seen = t
        if sensor.faults:
            self._clear_faults(sensor, t, quantity.value, value, events)
            if sensor.faults:  # still set apart (it disagrees with the others)
                return events
        if pressure:
            last = sensor.pressure
            if last is None:
                self._health_version += 1
                self._take_pressure(sensor, t, value, events)
            elif sensor.held is None and abs(value - last) <= _jump_limit(sensor.track):
                self._take_pressure(sensor, t, value, events)
            else:
                self._judge_jump(sensor, t, value, last, events)
        else:
            if sensor.temperature is None:
                self._health_version += 1
            sensor.temperature = value if sensor.delag is None else sensor.delag.correct(t, value)
        return events

    def _take_pressure(self, sensor: _Sensor, t: float, value: float, events: list[Event]) -> None:
        sensor.pressure = value
        volume = self._volume_of_segment[sensor.segment]
        if volume.plan_version != self._health_version:
            self._replan(volume, t, events)
        fresh = volume.fresh
        fresh[sensor.name] = value
        if len(fresh) >= volume.expected:
            self._point(volume, t, events)

    def _judge_jump(self, sensor: _Sensor, t: float, value: float, last: float, events: list[Event]) -> None:
        """A reading that jumped beyond the sensor's noise waits for the next one to tell a glitch from a change."""
        held = sensor.held
        if held is None:
            sensor.held = (t, value)
            return
        sensor.held = None
        held_t, held_value = held
        limit = _jump_limit(sensor.track)
        jump = value - last
        if abs(jump) > limit and (jump > 0.0) == (held_value > last):  # the change stayed: a real one
            self._take_pressure(sensor, held_t, held_value, events)
            if not sensor.faults:  # (the round it completed may have set it apart)
                self._take_pressure(sensor, t, value, events)
            return
        sensor.glitches += 1
        if _is_power_of_ten(sensor.glitches):
            events.append(
                Notice(
                    held_t,
                    f"sensor {sensor.name}: pressure {held_value:g} Pa set aside, a one-reading jump of"
                    f" {held_value - last:+.0f} Pa that the next reading did not confirm"
                    f" ({sensor.glitches} so far)",
                )
            )
        if abs(jump) > limit:  # another jump, the other way: it waits in turn
            sensor.held = (t, value)
        else:
            self._take_pressure(sensor, t, value, events)

    def tick(self, now: float) -> list[Event]:
        """Let time pass without a sample (the live daemon's clock): staleness."""
        events: list[Event] = []
        if not self._started:  # the clock runs from the first tick: a sensor silent from start-up goes stale
            self._start(now)
        if now >= self._stale_deadline:
            self._check_stale(now, events)
        return events

    def volume_conditions(self, vid: str) -> dict[tuple[str, Severity], Condition]:
        """The alarm conditions of a volume, one per configured threshold."""
        a = self.settings.alarms
        leak, reserve = a.leak_rate.confirmations, a.reserve_time.confirmations
        low_delay = a.low_pressure.on_delay_s
        low = 2 if low_delay > 0.0 else 1  # two readings, on_delay_s apart: one garbled line is not a pressure
        wanted = [
            (LEAK_RATE, Severity.CAUTION, a.leak_rate.caution_kg_per_day, leak),
            (LEAK_RATE, Severity.WARNING, a.leak_rate.warning_kg_per_day, leak),
            (RAPID_DEPRESS, Severity.EMERGENCY, a.rapid_depress.emergency_pa_per_s, 1),
            (LOW_PRESSURE, Severity.WARNING, a.low_pressure.warning_pa, low),
            (LOW_PRESSURE, Severity.EMERGENCY, a.low_pressure.emergency_pa, low),
            (RESERVE_TIME, Severity.CAUTION, a.reserve_time.caution_s, reserve),
            (RESERVE_TIME, Severity.WARNING, a.reserve_time.warning_s, reserve),
            (RESERVE_TIME, Severity.EMERGENCY, a.reserve_time.emergency_s, reserve),
        ]
        return {
            (al, sev): Condition(al, vid, sev, th, n, low_delay if al == LOW_PRESSURE else 0.0)
            for al, sev, th, n in wanted
            if th is not None
        }

    def detection_limits(self, windows_s: Iterable[float] = DETECTION_WINDOWS_S) -> dict[str, dict[float, float]]:
        """Per volume with a leak fit: the smallest loss (kg/day) confirmed at k σ over each window.

        From the volume's measured noise, its correlation (inflation) and its point rate: what a
        test engineer asks first, "what is the smallest leak this rig can see?".
        """
        limits = {}
        for vid, v in self.volumes.items():
            fit = v.last_fit
            if fit is None or not math.isfinite(v.mass):
                continue
            per_day = v.mass * SECONDS_PER_DAY * self.k
            limits[vid] = {w: per_day * v.slope.slope_sigma(w, fit) for w in windows_s}
        return limits

    def glitches(self) -> dict[str, int]:
        """Per pressure sensor: readings set aside as one-reading jumps the next reading did not confirm."""
        return {name: s.glitches for name, s in self.sensors.items() if s.pressure is not None}

    def active_alarms(self) -> list[tuple[str, str, Severity]]:
        """The (alarm, source, severity) of every active condition."""
        out = [
            (c.alarm, c.source, c.severity) for v in self.volumes.values() for c in v.conditions.values() if c.active
        ]
        out += [(SENSOR_FAULT, s.spec.name, s.fault.severity) for s in self.sensors.values() if s.fault.active]
        return out

    # -- sensors ---------------------------------------------------------------------------

    def _start(self, t: float) -> None:
        self._started = True
        for s in self.sensors.values():
            s.last_seen = t
        for v in self.volumes.values():
            v.formed_at = t
            v.settle_until = t + self.settings.leak.settle_s
        self._stale_deadline = t + self.stale_after

    def _check_stale(self, t: float, events: list[Event]) -> None:
        deadline = math.inf
        for s in self.sensors.values():
            if s.last_seen + self.stale_after <= t:  # the same sum as the deadline: no rounding gap
                if "stale" not in s.faults:
                    detail = f"no reading for {t - s.last_seen:.1f} s (limit {self.stale_after:g} s)"
                    self._set_fault(s, t, "stale", detail, events)
            else:
                deadline = min(deadline, s.last_seen + self.stale_after)
        self._stale_deadline = deadline

    def _set_fault(self, sensor: _Sensor, t: float, reason: str, detail: str, events: list[Event]) -> None:
        first = not sensor.faults
        sensor.faults[reason] = detail
        sensor.held = None
        if first:
            self._health_version += 1
        volume = self._volume_of_segment.get(sensor.spec.segment)
        if volume is not None:
            volume.fresh.pop(sensor.spec.name, None)
        if first:
            _append(events, sensor.fault.update(t, (True, False), None, f"{reason}: {detail}"))

    def _clear_faults(self, sensor: _Sensor, t: float, quantity: str, value: float, events: list[Event]) -> None:
        if "stale" in sensor.faults:
            self._stale_deadline = min(self._stale_deadline, t + self.stale_after)
        for reason in ("stale", "unreadable", "out_of_range_" + quantity):
            sensor.faults.pop(reason, None)
        if "disagrees" in sensor.faults and quantity == _PRESSURE.value:
            volume = self._volume_of_segment[sensor.segment]
            if sensor.track.agrees(value, volume.pressure):
                sensor.faults.pop("disagrees")
        if not sensor.faults:
            self._health_version += 1
            _append(events, sensor.fault.update(t, (False, True), None, "reading again"))

    # -- hatches and volumes -----------------------------------------------------------------

    def _hatch(self, sample: Sample, events: list[Event]) -> None:
        is_open = sample.value >= 0.5
        if self.hatch_open[sample.sensor] == is_open:
            return
        self.hatch_open[sample.sensor] = is_open
        cleared: list[Event] = []
        self._reform(sample.time, cleared)
        events.append(HatchChange(sample.time, sample.sensor, is_open, tuple(sorted(self.volumes))))
        events.extend(cleared)

    def _reform(self, t: float, events: list[Event]) -> None:
        open_hatches = [h for h, is_open in self.hatch_open.items() if is_open]
        groups = form_volumes(self.segment_volume, self.hatch_between, open_hatches)
        new = {vid: self.volumes.get(vid) or _Volume(vid, members, self, t) for vid, members in groups.items()}
        for vid, old in self.volumes.items():
            if vid not in new:
                for c in old.conditions.values():
                    _append(events, c.force_clear(t, "volume re-formed by a hatch"))
        self.volumes = new
        self._volume_of_segment = {seg: v for v in new.values() for seg in v.segments}

    # -- points and estimates ----------------------------------------------------------------

    def _replan(self, v: _Volume, t: float, events: list[Event]) -> None:
        """Work out which sensors make the volume's mass now; restart the fit if that changed."""
        v.plan_version = self._health_version
        pressures = tuple(s.spec.name for s in v.sensors if s.pressure is not None and not s.faults)
        v.expected = len(pressures)
        v.temperatures = [
            (vol, [s for s in members if s.temperature is not None and not s.faults]) for vol, members in v.parts
        ]
        v.pressure_sensors = {s.name: s for s in v.sensors if s.name in pressures}
        signature = (pressures, tuple(s.spec.name for _, group in v.temperatures for s in group))
        if signature == v.signature:
            return
        if v.signature is not None and signature[1] == v.signature[1]:
            everyone = {*pressures, *v.signature[0]}
            if all(self.sensors[name].track.offset_known for name in everyone):
                v.signature = signature  # offsets known: a transducer leaving or returning moves nothing
                return
        if v.signature is not None and len(v.slope.series) >= v.slope.min_points:
            events.append(
                Notice(
                    t,
                    f"volume {v.id}: mass now from {', '.join(sum(signature, ())) or 'nothing'};"
                    " leak-rate fit restarted",
                )
            )
        v.signature = signature
        v.slope.reset()
        v.fall = FallRate()
        v.air_temperature = LineSeries()
        v.air_temperature_due = -math.inf

    def _point(self, v: _Volume, t: float, events: list[Event]) -> None:
        fresh = v.fresh
        sensors = v.pressure_sensors
        if len(fresh) == 1:  # nothing to compare: the reading, corrected by its known offset
            [(name, value)] = fresh.items()
            track = sensors[name].track
            track.note(value)
            p = value - track.offset
        else:
            outcome = combine([(sensors[name].track, value) for name, value in fresh.items()])
            p = outcome.pressure
            for name, size in outcome.steps:
                events.append(LevelStep(t, v.id, size, name))
            for name in outcome.disagreeing:
                others = ", ".join(n for n in sensors if n != name)
                self._set_fault(sensors[name], t, "disagrees", f"with {others}, beyond its noise", events)
        fresh.clear()
        capacity = 0.0  # Σ Vᵢ/Tᵢ
        missing = 0.0  # Σ Vᵢ of segments without a temperature
        t_sum = 0.0
        t_count = 0
        for vol, group in v.temperatures:
            if group:
                seg_t = group[0].temperature if len(group) == 1 else sum(s.temperature for s in group) / len(group)
                capacity += vol / seg_t
                t_sum += seg_t
                t_count += 1
            else:
                missing += vol
        if missing:
            fallback = t_sum / t_count if t_count else DEFAULT_TEMPERATURE_K
            capacity += missing / fallback
            if not t_count and not v.temperature_notice_given and t - v.formed_at > self.stale_after:
                v.temperature_notice_given = True
                events.append(Notice(t, f"volume {v.id}: no temperature reading; assuming {fallback} K"))
        mass = p * capacity / R_AIR
        if mass > 0.0 and math.isfinite(mass):  # a vented volume (0 Pa) has no ln m: rate and reserve pause
            v.slope.add(t, math.log(mass))
            if t >= v.air_temperature_due:  # a slowly moving series: MIN_SPACING_S apart is enough
                v.air_temperature_due = t + MIN_SPACING_S
                v.air_temperature.append(t, v.size_m3 / capacity)
                v.air_temperature.trim_before(t - v.slope.max_window_s)
        v.fall.add(t, p)
        v.pressure = p
        v.mass = mass
        # An inactive condition whose rule cannot activate, and that is not inside its on-delay,
        # needs no update.
        for cond in v.low_pressure:
            if cond.active or p < cond.threshold or cond.arming:
                _append(events, cond.update(t, below(p, cond.threshold, self.low_pressure_hysteresis), p))
        cond = v.rapid_depress
        if cond is not None:
            # an inactive alarm needs a window falling faster than its threshold at all
            bounds = v.fall.bounds(self.k, -math.inf if cond.active else cond.threshold)
            if bounds is not None:
                fall, lower, upper = bounds
                _append(events, cond.update(t, (lower > cond.threshold, upper < cond.threshold), fall))
        if t >= v.next_report:
            v.next_report = t + self.report_interval
            events.append(self._estimate(v, t, events))

    def _estimate(self, v: _Volume, t: float, events: list[Event]) -> Estimate:
        fit = v.slope.estimate()
        for step in v.slope.take_steps():
            events.append(LevelStep(step.time, v.id, step.size * v.pressure))
        if fit is None:
            return Estimate(t, v.id, None, None, v.pressure, v.mass, None)
        v.last_fit = fit
        mass = math.exp(fit.level)
        rate = -fit.slope * mass * SECONDS_PER_DAY  # kg/day lost, now
        # A thermometer lagging the air by τ bends the mass by τ·(dT/dt)/T: while dT/dt changes,
        # the fitted rate is off by up to τ·(change of dT/dt)/T of the mass, which noise cannot show.
        bend = curvature_bound(v.air_temperature, t - fit.window_s, t)
        lag = self.settings.leak.thermometer_lag_sigma_s * bend / v.air_temperature.y(-1)
        sigma = math.hypot(fit.sigma, lag) * mass * SECONDS_PER_DAY
        k = self.k
        lim = self.settings.alarms
        reserve = reserve_time_s(mass, rate, v.pressure, lim.reserve_time.minimum_pa)
        estimate = Estimate(
            t,
            v.id,
            rate,
            sigma,
            v.pressure,
            v.mass,
            reserve if math.isfinite(reserve) else None,
            fit.window_s,
            k * sigma,
        )
        if fit.n < ALARM_MIN_POINTS:  # a window just cut by a change: the next minute tells it from a step
            return estimate
        if t < v.settle_until or v.slope.warming_up:
            k *= SETTLE_K_FACTOR  # the air mixing, or the noise's correlation unmeasured: overwhelming evidence only
        for sev in (Severity.CAUTION, Severity.WARNING):
            cond = v.conditions.get((LEAK_RATE, sev))
            if cond is not None:
                rule = confidently_above(rate, sigma, k, cond.threshold, lim.leak_rate.hysteresis_kg_per_day)
                _append(events, cond.update(t, rule, rate))
        rt = lim.reserve_time
        longest = reserve_time_s(mass, rate - k * sigma, v.pressure, rt.minimum_pa)
        shortest = reserve_time_s(mass, rate + k * sigma, v.pressure, rt.minimum_pa)
        for sev in (Severity.CAUTION, Severity.WARNING, Severity.EMERGENCY):
            cond = v.conditions.get((RESERVE_TIME, sev))
            if cond is not None:
                rule = (longest < cond.threshold, shortest > cond.threshold * (1.0 + rt.hysteresis_fraction))
                _append(events, cond.update(t, rule, longest if math.isfinite(longest) else None))
        return estimate


def _jump_limit(track: PressureTrack) -> float:
    """How far one reading may move from the last without waiting for the next to confirm it (Pa)."""
    if track.differences < 2:
        return math.inf  # its noise is not known yet
    return max(JUMP_Z * math.sqrt(2.0 * track.noise_var), JUMP_FLOOR_PA)


def _unit_hint(value: float, lo: float, hi: float, pressure: bool) -> str:
    """A guess at a units mix-up behind an out-of-range pressure, for the fault's detail."""
    if pressure:
        for factor, unit in ((100.0, "hPa or mbar"), (1000.0, "kPa"), (6894.757, "psi")):
            if lo <= value * factor <= hi:
                return f": a reading in {unit}?"
    return ""


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def reserve_time_s(mass_kg: float, loss_kg_per_day: float, pressure_pa: float, minimum_pa: float) -> float:
    """Time for a choked leak to bring the pressure down to minimum_pa: τ·ln(P/Pmin), τ = m/ṁ.

    Infinite when the volume is not losing air; zero when already at or below the minimum.
    """
    if pressure_pa <= minimum_pa:
        return 0.0
    if loss_kg_per_day <= 0.0:
        return math.inf
    tau = mass_kg / loss_kg_per_day * SECONDS_PER_DAY
    return tau * math.log(pressure_pa / minimum_pa)


def _append(events: list[Event], transition: AlarmTransition | None) -> None:
    if transition is not None:
        events.append(transition)


def run(monitor: Monitor, samples: Iterable[Sample]) -> Iterable[Event]:
    """Feed samples through a monitor, yielding every event in order."""
    for sample in samples:
        yield from monitor.feed(sample)

"""A scenario played in time: the physics stepped forward and its transducers read as they fall due.

`Playback` is the clock-free part (story time in, readings out); `SimulatedModule` is the
sensor driver behind `driver = "simulated"` in `hullwatch run`: it plays a scenario
`speed` times faster than real time and stamps samples with story time (epoch at the
start + story seconds), so hours of a leak pass in minutes and the leak rates the
monitor measures are still true rates.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass

from hullwatch.core.model import Quantity, Sample
from hullwatch.sim.scenario import Scenario, Transducer, load

log = logging.getLogger("hullwatch.sim")

MAX_STEP_S = 1.0  # physics step in story seconds


class Playback:
    """Steps a scenario's physics through story time and reads its transducers."""

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.scenario = scenario
        self.module = scenario.module()
        self.t = 0.0
        self.rng = random.Random(seed)
        self._pending = list(scenario.hatch_events)

    def advance_to(self, t: float) -> list[tuple[float, str, bool]]:
        """Run the physics up to story time t; return the hatch changes on the way."""
        changes = []
        while self.t < t or (self._pending and self._pending[0][0] <= t):
            if self._pending and self._pending[0][0] <= self.t:
                at, hatch, is_open = self._pending.pop(0)
                self.module.set_hatch(hatch, is_open, self.t)
                changes.append((self.t, hatch, is_open))
                continue
            horizon = min(t, self._pending[0][0]) if self._pending else t
            dt = min(MAX_STEP_S, horizon - self.t)
            if dt <= 0:
                break
            self.module.advance(self.t, dt)
            self.t += dt
        return changes

    def read(self, transducer: Transducer) -> dict[Quantity, float]:
        """What the transducer shows now: truth + offset + noise, quantised; {} while unplugged."""
        if self.scenario.is_unplugged(transducer.name, self.t):
            return {}
        out = {}
        pressures = self.module.pressures(self.t)
        for m in transducer.models:
            if m.quantity is Quantity.PRESSURE:
                true = pressures[m.segment]
            else:
                true = self.module.temperature[m.segment](self.t)
            v = true + m.offset + self.rng.gauss(0.0, m.sigma)
            if m.quantum:
                v = round(v / m.quantum) * m.quantum
            out[m.quantity] = v
        return out

    def hatch_open(self, hatch: str) -> bool:
        """Whether a hatch is open now."""
        return hatch in self.module.open


@dataclass(frozen=True)
class SimulationSettings:
    """[simulation]: which scenario to play, how fast."""

    scenario: str
    speed: float = 1.0
    seed: int = 0


class SimulatedModule:
    """The driver for every `driver = "simulated"` sensor and the hatches: a scenario played live."""

    name = "simulation"

    def __init__(self, scenario: Scenario, sensors: list[str], hatches: list[str], speed: float, seed: int) -> None:
        self.scenario = scenario
        self.sensors = [t for t in scenario.transducers if t.name in sensors]
        self.quantities = {t.name: tuple(m.quantity for m in t.models) for t in self.sensors}  # what each reports
        self.hatches = hatches
        self.speed = speed
        self.seed = seed
        self.epoch0 = time.time()
        self.mono0 = time.monotonic()
        self._played_to = self.epoch0  # story time, as epoch, up to which every reading was emitted

    @classmethod
    def from_config(cls, cfg) -> SimulatedModule:  # cfg: hullwatch.config.Config
        """Build from the configuration's [simulation] section; ValueError says what does not fit."""
        settings: SimulationSettings | None = cfg.simulation
        if settings is None:
            raise ValueError('driver = "simulated" needs a [simulation] section naming a scenario file')
        path = settings.scenario
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(cfg.path)), path)
        scenario = load(path)
        known = {t.name for t in scenario.transducers}
        wanted = [s.name for s in cfg.sensors if s.driver == "simulated"]
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(f"sensors {', '.join(missing)} are not transducers of {path} ({', '.join(sorted(known))})")
        hatches = [h.name for h in cfg.module.hatches if h.name in scenario.hatches]
        return cls(scenario, wanted, hatches, settings.speed, settings.seed)

    def clock(self) -> float:
        """The simulation's own clock: story time (as epoch) up to which it has emitted every reading.

        Not the free-running wall clock scaled by the speed: at high speeds that would run
        ahead of the readings in flight and make healthy sensors look stale.
        """
        return self._played_to

    def run(self, emit, stop: threading.Event) -> None:
        """Play the scenario until stop is set."""
        try:
            self._play(emit, stop)
        except Exception:  # a bug must not kill the thread silently
            log.exception("simulation stopped by an unexpected error")

    def _play(self, emit, stop: threading.Event) -> None:
        play = Playback(self.scenario, self.seed)
        for h in self.hatches:
            emit(Sample(self.epoch0, h, Quantity.HATCH, 1.0 if play.hatch_open(h) else 0.0))
        due = {t.name: 0.0 for t in self.sensors}
        by_name = {t.name: t for t in self.sensors}
        log.info("simulation: playing %s at %g× real time", self.scenario.name, self.speed)
        while not stop.is_set():
            now = (time.monotonic() - self.mono0) * self.speed
            while True:
                name, at = min(due.items(), key=lambda kv: kv[1]) if due else ("", now)
                if at > now:
                    break
                for when, hatch, is_open in play.advance_to(at):
                    if hatch in self.hatches:
                        emit(Sample(self.epoch0 + when, hatch, Quantity.HATCH, 1.0 if is_open else 0.0))
                tr = by_name[name]
                for quantity, value in play.read(tr).items():
                    emit(Sample(self.epoch0 + at, name, quantity, value))
                due[name] = at + 1.0 / tr.rate_hz
            self._played_to = self.epoch0 + now
            next_at = min(due.values()) if due else now + 1.0
            stop.wait(min(0.1, max(0.0, (next_at - now) / self.speed)))

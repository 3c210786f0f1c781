"""One pressure from redundant transducers: each weighted by its own noise, offsets tracked.

Theory of operation
-------------------
Transducers on one volume read one pressure, each with its own noise and its own offset.
Averaging them plainly lets a cheap, noisy one spoil good ones, and makes the volume's
pressure jump by the offset difference whenever one of them drops out or comes back.
So, for every round of readings (one per transducer):

* Each transducer's noise is measured from its own successive readings (half the mean
  square of the differences: the pressure itself moves far less between two readings),
  and the round is combined with inverse-variance weights.
* Each transducer's offset is learned against the others (the leave-one-out consensus),
  slowly, so that readings can be corrected to a common level. Once a transducer's offset
  is known (KNOWN_AFTER rounds together), its leaving or returning changes nothing.
* A reading that disagrees with the others' consensus by more than SUSPECT_Z of the
  difference's noise is held out of the round (the worst first, then the rest are looked
  at again without it), and of the next rounds until it is back within RELEASE_Z; its
  noise is not learned from meanwhile. If the disagreement settles at a steady value for
  SETTLE_ROUNDS (a transducer re-zeroed, a fitting bumped), it becomes the transducer's
  new offset and is reported as a step; if it keeps wandering, the transducer disagrees
  with the others and is reported as such (a sensor fault). Two transducers apart cannot
  say which of them moved: they take a new common level, and the volume's series the step.

With one transducer in a volume there is nothing to compare: its reading, corrected by
whatever offset it was known to have, is the pressure. Pure: no clocks, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NOISE_MEMORY = 0.01  # weight of each new difference in a transducer's noise, once warmed up
OFFSET_MEMORY = 1 / 300  # weight of each round in an offset, once warmed up
KNOWN_AFTER = 60  # rounds together before an offset is trusted across a change of transducers
SUSPECT_Z = 6.0
RELEASE_Z = 3.0  # a held-out transducer returns once it disagrees by less than this many σ
SETTLE_ROUNDS = 30
STEADY_Z = 4.0  # a held-out transducer is steady when its disagreements scatter within this many σ
NOISE_CLIP = 25.0  # one difference moves the noise at most this many times its value


@dataclass(slots=True)
class PressureTrack:
    """What is known of one pressure transducer across rounds."""

    name: str
    previous: float | None = None
    noise_var: float = 0.0
    differences: int = 0
    offset: float = 0.0
    together: int = 0  # rounds combined with other transducers
    held: list[float] = field(default_factory=list)  # disagreements while held out of the rounds
    agreeing: int = 0  # readings in a row back in line, while it stands apart as disagreeing

    @property
    def offset_known(self) -> bool:
        """Whether the offset to the others has been measured long enough to rely on."""
        return self.together >= KNOWN_AFTER

    def agrees(self, value: float, pressure: float) -> bool:
        """For a transducer set apart as disagreeing: whether SETTLE_ROUNDS readings in a row agree again."""
        self.note(value, learn=False)
        close = abs(value - self.offset - pressure) <= RELEASE_Z * math.sqrt(
            2.0 * self.noise_var
        )  # its noise and the others'
        self.agreeing = self.agreeing + 1 if close else 0
        if self.agreeing < SETTLE_ROUNDS:
            return False
        self.agreeing = 0
        return True

    def note(self, value: float, learn: bool = True) -> None:
        """Take a reading into the noise estimate (or only remember it, while it is suspect)."""
        if self.previous is not None and learn:
            half_square = 0.5 * (value - self.previous) ** 2
            self.differences += 1
            if self.differences > 1:
                half_square = min(half_square, NOISE_CLIP * self.noise_var)
            weight = max(NOISE_MEMORY, 1.0 / self.differences)
            self.noise_var += weight * (half_square - self.noise_var)
        self.previous = value


@dataclass(frozen=True, slots=True)
class Round:
    """The outcome of one round: the pressure, and what was seen of the transducers."""

    pressure: float
    steps: tuple[tuple[str, float], ...] = ()  # (transducer, new offset − old) settled this round
    disagreeing: tuple[str, ...] = ()  # transducers held out for SETTLE_ROUNDS without settling
    held: tuple[str, ...] = ()  # transducers held out of this round


def combine(readings: list[tuple[PressureTrack, float]]) -> Round:
    """One round: the weighted, offset-corrected pressure of the readings given."""
    if len(readings) == 1:  # (Monitor takes this path itself, without a Round)
        track, value = readings[0]
        track.note(value)
        return Round(value - track.offset)
    known = [t.noise_var for t, _ in readings if t.differences >= 2 and t.noise_var > 0.0]
    fallback = sorted(known)[len(known) // 2] if known else 1.0
    weights = [1.0 / (t.noise_var if t.differences >= 2 and t.noise_var > 0.0 else fallback) for t, _ in readings]
    corrected = [v - t.offset for t, v in readings]
    kept = list(range(len(readings)))
    out: list[int] = []
    while len(kept) > 2:  # hold out the worst disagreement, then look again without it
        worst = _worst(readings, weights, corrected, kept)
        if worst is None:
            break
        kept.remove(worst)
        out.append(worst)
    kept_w = sum(weights[i] for i in kept)
    pressure = sum(weights[i] * corrected[i] for i in kept) / kept_w
    apart = len(readings) == 2 and _worst(readings, weights, corrected, kept) is not None
    for i, (track, value) in enumerate(readings):
        track.note(value, learn=i not in out and not apart)
        if i not in out and not (apart and i == 0):
            track.held.clear()  # in line again before settling: it was a glitch
    if apart:
        first = readings[0][0]  # two transducers apart: which one moved cannot be told
        if _settled(first, corrected[0] - corrected[1], math.sqrt(1.0 / weights[0] + 1.0 / weights[1])):
            for track, c in zip((t for t, _ in readings), corrected, strict=True):
                track.offset += c - pressure  # a new common level: the volume's series takes the step
        elif len(first.held) >= SETTLE_ROUNDS:
            first.held.clear()
        return Round(pressure)
    steps: list[tuple[str, float]] = []
    disagreeing: list[str] = []
    for i in out:
        track = readings[i][0]
        if _settled(track, corrected[i] - pressure, math.sqrt(1.0 / weights[i] + 1.0 / kept_w)):
            steps.append((track.name, track.held[-1]))
            track.offset += track.held[-1]
            track.held.clear()
        elif len(track.held) >= SETTLE_ROUNDS:
            disagreeing.append(track.name)
            track.held.clear()
    for i in kept:
        track = readings[i][0]
        track.together += 1
        track.offset += max(OFFSET_MEMORY, 1.0 / track.together) * (corrected[i] - pressure)
    return Round(pressure, tuple(steps), tuple(disagreeing), tuple(readings[i][0].name for i in out))


def _worst(
    readings: list[tuple[PressureTrack, float]], weights: list[float], corrected: list[float], kept: list[int]
) -> int | None:
    """The kept reading that disagrees most with the others kept, beyond its limit; None if none does.

    The limit is SUSPECT_Z standard deviations of the difference, or RELEASE_Z for a transducer
    already held out (it must come well back into line to return).
    """
    w_sum = sum(weights[i] for i in kept)
    c_sum = sum(weights[i] * corrected[i] for i in kept)
    worst, worst_excess = None, 1.0
    for i in kept:
        others_w = w_sum - weights[i]
        residual = corrected[i] - (c_sum - weights[i] * corrected[i]) / others_w
        limit = (RELEASE_Z if readings[i][0].held else SUSPECT_Z) * math.sqrt(1.0 / weights[i] + 1.0 / others_w)
        if abs(residual) > worst_excess * limit:
            worst, worst_excess = i, abs(residual) / limit
    return worst


def _settled(track: PressureTrack, residual: float, spread: float) -> bool:
    """Hold out one more disagreement; True once SETTLE_ROUNDS of them sit steadily at one value.

    Then track.held[-1] is replaced by their mean (the step's size).
    """
    track.held.append(residual)
    if len(track.held) < SETTLE_ROUNDS:
        return False
    held = track.held
    mean = sum(held) / len(held)
    scatter = math.sqrt(sum((x - mean) ** 2 for x in held) / (len(held) - 1))
    if scatter > STEADY_Z * spread:
        return False
    held[-1] = mean
    return True

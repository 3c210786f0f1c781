"""Alarm conditions: a threshold with confidence and hysteresis, producing active/cleared transitions.

Each rule returns (may_activate, may_clear) from the evidence; a Condition turns that
into transitions. When neither holds (the evidence is too uncertain either way), the
condition keeps its state. A condition may ask for its activating evidence on several
consecutive evaluations, and for a least time (an on-delay, in ISA-18.2's words): an
estimate checked every few seconds against a 3σ bound gets many looks at the same noise,
and a fleeting excursion (one garbled reading) should not wake anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from hullwatch.core.model import AlarmState, AlarmTransition, Severity


def confidently_above(value: float, sigma: float, k: float, threshold: float, hysteresis: float) -> tuple[bool, bool]:
    """ICD rule: active when value − k·σ > threshold, cleared when value + k·σ < threshold − hysteresis."""
    return value - k * sigma > threshold, value + k * sigma < threshold - hysteresis


def below(value: float, threshold: float, hysteresis: float) -> tuple[bool, bool]:
    """Active below the threshold, cleared above threshold + hysteresis."""
    return value < threshold, value > threshold + hysteresis


@dataclass(slots=True)
class Condition:
    """One alarm condition (alarm, source, severity) and whether it holds."""

    alarm: str
    source: str
    severity: Severity
    threshold: float | None
    confirmations: int = 1  # consecutive activating evaluations needed
    on_delay_s: float = 0.0  # and for at least this long (from the first of them)
    active: bool = False
    _streak: int = 0
    _since: float = 0.0

    def update(
        self, time: float, rule: tuple[bool, bool], value: float | None, reason: str = ""
    ) -> AlarmTransition | None:
        """Apply a rule's (may_activate, may_clear); return the transition, if any."""
        may_activate, may_clear = rule
        if not self.active:
            if not may_activate:
                self._streak = 0
                return None
            if not self._streak:
                self._since = time
            self._streak += 1
            if self._streak < self.confirmations or time - self._since < self.on_delay_s:
                return None
            self.active = True
            self._streak = 0
            return self._transition(time, AlarmState.ACTIVE, value, reason)
        if self.active and may_clear and not may_activate:
            self.active = False
            return self._transition(time, AlarmState.CLEARED, value, reason)
        return None

    @property
    def arming(self) -> bool:
        """Whether activating evidence has begun to build up (an inactive condition inside its on-delay)."""
        return self._streak > 0

    def force_clear(self, time: float, reason: str) -> AlarmTransition | None:
        """Clear because the source is gone (a volume re-formed), whatever the evidence."""
        if not self.active:
            return None
        self.active = False
        return self._transition(time, AlarmState.CLEARED, None, reason)

    def _transition(self, time: float, state: AlarmState, value: float | None, reason: str) -> AlarmTransition:
        return AlarmTransition(time, self.alarm, self.source, self.severity, state, value, self.threshold, reason)

"""Steady time: epoch seconds on the wall clock's scale that never jump when the clock is set.

Theory of operation
-------------------
How long a sensor has been silent (`stale_after_s`), an alarm's on-delay, when shelving and
maintenance end, the leak fit's windows and the watchdog all measure intervals, and an interval
must not change because somebody set the clock. The wall clock (time.time) is set: by NTP after
boot (a Raspberry Pi without a real-time clock starts at the time it last saved, hours or days
behind), by an operator, by `date`. The monotonic clock (time.monotonic) never is.

Steady time is the wall clock's reading when the process started, advanced by the monotonic
clock: `now()` = wall(start) + monotonic() − monotonic(start). It is an epoch time, equal to the
wall clock until the wall clock is stepped or slewed, so the drivers stamp samples with it and
the core, the alarm book and the main loop run on it without any conversion. One instance,
`STEADY`, serves the whole process: a reload keeps the same time base.

Storage speaks wall time. Where a time leaves the daemon (the spool's records for MQTT and
InfluxDB, the recorder's rows, the alarm payloads, the log lines), `to_wall(t)` adds `offset`,
the difference wall − steady as last looked at. The main loop calls `check()` at every step:
the offset follows the wall clock whenever it has moved by more than `TRACK_S` (a slew, a small
step), so clock noise does not jitter the stored stamps, and a move of more than `STEP_S` between
two checks is a clock step, returned once for the daemon to log and publish (`clock_step`). A
time converted after a step gets the new offset even if it was read before: the newest knowledge
of the wall clock is used. A suspended system looks like a forward step (the monotonic clock
stops while suspended, the wall clock does not).

A simulation runs on its own story time: `Fixed(clock)` is steady by construction and never
shifted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STEP_S = 1.0  # a change of wall − steady larger than this between two checks is a clock step
TRACK_S = 1e-3  # the offset follows the wall clock in moves larger than this


class Timebase:
    """Steady time from a wall clock and a monotonic clock (both injectable for tests)."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._origin = wall() - monotonic()
        self.offset = 0.0  # wall − steady at the latest check: what to_wall adds

    def now(self) -> float:
        """Steady time: epoch seconds that only move forward, at the monotonic clock's rate."""
        return self._origin + self._monotonic()

    def shift(self) -> float:
        """How far the wall clock is from steady time now (0 until it is stepped or slewed)."""
        return self._wall() - self.now()

    def check(self) -> float | None:
        """Look at the wall clock: the step in seconds (+ forward) if it moved more than STEP_S since the last check.

        The offset follows any move larger than TRACK_S.
        """
        moved = self.shift() - self.offset
        if abs(moved) > TRACK_S:
            self.offset += moved
        return moved if abs(moved) > STEP_S else None

    def to_wall(self, t: float) -> float:
        """A steady time as a wall-clock time (with the offset of the latest check)."""
        return t + self.offset


class Fixed(Timebase):
    """A clock that is its own wall clock (a simulation's story time): never shifted, never stepped."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.offset = 0.0

    def now(self) -> float:
        return self._clock()

    def shift(self) -> float:
        return 0.0


STEADY = Timebase()


def now() -> float:
    """The process's steady time (what drivers stamp samples with)."""
    return STEADY.now()

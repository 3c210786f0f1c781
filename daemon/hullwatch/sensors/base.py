"""What every sensor driver is: something that emits samples until told to stop, and never raises.

A driver is built from its [[sensor]] options with no I/O (so `check-config` can build
it to validate). Then it runs in one of two ways:

- A serial line driver (`serial_line.SerialDriver`) is a device of the daemon's one serial
  loop (`ioloop.IoLoop`): a single thread that waits on every serial port at once with
  `selectors`, reads whatever a port holds without blocking, parses the lines right there and
  hands the main loop all the samples of one wakeup in one batch. Its port is opened, polled
  and reopened from the loop's timers (`due`); it never blocks the loop.
- Any other driver (Modbus, the MCP3008, reed switches, the simulation) runs in a thread of
  its own, where it may block on its device:

      driver = SomeDriver.from_options(name, options)     # raises OptionError
      driver.run(emit, stop)                               # returns once stop is set

  `emit` is cheap and thread-safe (it puts on a queue). A serial driver has `run` too: it
  reads its port on a loop of its own (for tools and tests).

Either way the driver must not raise: a device that vanishes, goes silent or talks garbage is
counted, logged once per episode (not once per line) and retried with backoff, and reading goes
on. Samples carry their own timestamp, taken when the reading arrived, in steady time
(`timebase.now()`: setting the clock does not move it; the daemon converts to wall-clock time
where samples are stored).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hullwatch.core.model import Sample

Emit = Callable[[Sample], None]


class OptionError(ValueError):
    """A driver option is wrong: `key` names it within the [[sensor]] table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class Driver(Protocol):
    """A sensor driver.

    A driver of sensors also tells what each reports, as `quantities`: sensor name -> the
    quantities its samples carry (Home Assistant discovery announces one entity per quantity).
    """

    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read the device, emitting samples, until stop is set. Never raises."""


class Episode:
    """Logs a recurring problem once when it starts and once when it ends, counting occurrences between."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.active = False
        self.count = 0  # occurrences in this episode
        self.total = 0  # occurrences ever

    def happened(self, detail: str) -> None:
        """One more occurrence; logged as a warning only if it starts an episode."""
        self.count += 1
        self.total += 1
        if not self.active:
            self.active = True
            self.log.warning("%s: %s", self.what, detail)

    def over(self) -> None:
        """The problem stopped; log how many times it happened."""
        if self.active:
            self.log.info("%s: over after %d occurrence(s)", self.what, self.count)
        self.active = False
        self.count = 0


def option(options: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A typed option, or its default; OptionError if missing (without default) or of the wrong type."""
    if key not in options:
        if default is ...:
            raise OptionError(key, "missing (required)")
        return default
    value = options[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise OptionError(key, f"must be {_kind_name(kinds)}, not {value!r}")
    if not isinstance(value, kinds):
        raise OptionError(key, f"must be {_kind_name(kinds)}, not {value!r}")
    return float(value) if float in kinds and int in kinds and not isinstance(value, bool) else value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def reject_unknown(options: Mapping[str, Any], known: set[str] | frozenset[str]) -> None:
    """OptionError for the first key not in `known`."""
    for key in options:
        if key not in known:
            raise OptionError(key, f"unknown key for this driver (known: {', '.join(sorted(known))})")


class Backoff:
    """Retry delays that double from `first` up to `cap`, reset on success."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the next one will be longer."""
        d = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.first


class RateLimit:
    """A token bucket: at most `rate_hz` a second on average, `burst` at once; the rest dropped and counted.

    A device that delivers far more than it should (a transmitter streaming thousands of lines a
    second) would otherwise flood the queue and the core. Each drop is counted (`dropped`); an
    episode of drops is logged when it begins and when no drop has come for a second.
    """

    def __init__(self, log: logging.Logger, what: str, rate_hz: float, burst: float | None = None) -> None:
        self.rate_hz = rate_hz
        self.burst = max(1.0, rate_hz if burst is None else burst)  # a second's worth by default
        self._tokens = self.burst
        self._at = time.monotonic()
        self._last_drop = -math.inf
        self.dropped = 0
        self._episode = Episode(log, what)

    def allow(self, now: float | None = None) -> bool:
        """Whether one more item may pass now (else it is counted as dropped)."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_hz)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            if self._episode.active and now - self._last_drop > 1.0:
                self._episode.over()
            return True
        self.dropped += 1
        self._last_drop = now
        self._episode.happened(f"more than {self.rate_hz:g} a second; dropping the excess (counted)")
        return False

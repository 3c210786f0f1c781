"""The alarm desk: one alarm lifecycle shared by the main loop, the acknowledge button and remote commands.

The main loop hands it the core's alarm transitions; the button (gpiozero's thread) and MQTT
commands (paho's thread) hand it acknowledgements, shelving, resets and maintenance. One
lock serialises them. After every change the annunciator is shown the new state first —
it never waits on the network — and only then do the other outputs (MQTT) hear of it.
Every change is logged with who or what caused it, for audit.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hullwatch.core.lifecycle import AlarmBook, AlarmKey, Annunciation, LifecycleChange, Outcome, key_name
from hullwatch.core.model import AlarmTransition, Severity

log = logging.getLogger("hullwatch.alarms")

COMMANDS = ("ack", "shelve", "unshelve", "reset", "maintenance")


class CommandError(ValueError):
    """A command's payload does not say what to do."""


class AlarmDesk:
    """The alarm lifecycle behind a lock, with the annunciator and outputs told of every change."""

    def __init__(
        self, book: AlarmBook, clock: Callable[[], float], show: Callable[[Annunciation], None] = lambda _a: None
    ) -> None:
        self.book = book
        self.clock = clock
        self.show = show
        self.outputs: list[Callable[[LifecycleChange], None]] = []
        self._lock = threading.RLock()
        self.show(book.annunciation())

    def transitions(self, transitions: Iterable[AlarmTransition]) -> None:
        """The core's alarm transitions, in order."""
        with self._lock:
            changes = [c for tr in transitions for c in self.book.on_transition(tr)]
            self._publish(changes)

    def tick(self, now: float) -> None:
        """Let shelving expire."""
        with self._lock:
            self._publish(self.book.tick(now))

    def acknowledge_all(self, by: str) -> dict:
        """The acknowledge button."""
        return self.command("ack", {"all": True}, by)

    def command(self, name: str, payload: Mapping[str, Any], by: str) -> dict:
        """Carry out a remote command; the reply says whether it worked and what it did."""
        try:
            with self._lock:
                outcome = self._dispatch(name, payload, by)
                self._publish(outcome.changes)
        except CommandError as exc:
            log.warning("command %s from %s refused: %s", name, by, exc)
            return {"ok": False, "message": str(exc)}
        log.info("command %s from %s: %s", name, by, outcome.message)
        return {"ok": outcome.ok, "message": outcome.message}

    def _dispatch(self, name: str, p: Mapping[str, Any], by: str) -> Outcome:
        now = self.clock()
        book = self.book
        if name == "ack":
            return book.acknowledge(now, by, None if p.get("all") is True else _key(p))
        if name == "reset":
            return book.reset(now, by, None if p.get("all") is True else _key(p))
        if name == "shelve":
            duration = p.get("duration_s")
            if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
                raise CommandError("shelve needs duration_s, a number of seconds")
            return book.shelve(now, by, _key(p), float(duration))
        if name == "unshelve":
            return book.unshelve(now, by, _key(p))
        if name == "maintenance":
            on = p.get("on")
            sources = p.get("sources")
            if not isinstance(on, bool):
                raise CommandError('maintenance needs "on": true or false')
            if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
                raise CommandError('"sources" must be a list of volume or sensor names')
            return book.set_maintenance(now, by, on, sources)
        raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")

    def _publish(self, changes: list[LifecycleChange]) -> None:
        if not changes:
            return
        self.show(self.book.annunciation())  # the lab first, the network after
        for c in changes:
            log.info("alarm %s: %s -> %s (%s by %s)", key_name(c.key), c.old.value, c.new.value, c.cause, c.by)
            for output in self.outputs:
                try:
                    output(c)
                except Exception:  # an output's bug must not stop the others
                    log.exception("alarm output failed")


def _key(p: Mapping[str, Any]) -> AlarmKey:
    """(alarm, source, severity) from a command payload."""
    alarm, source, severity = p.get("alarm"), p.get("source"), p.get("severity")
    if not all(isinstance(x, str) for x in (alarm, source, severity)):
        raise CommandError('name the alarm with "alarm", "source" and "severity" strings (or "all": true)')
    try:
        sev = Severity[severity.upper()]
    except KeyError:
        raise CommandError(f"unknown severity {severity!r} (advisory, caution, warning, emergency)") from None
    return (alarm, source, sev)

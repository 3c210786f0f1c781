"""The alarm desk: one alarm lifecycle shared by the main loop, the acknowledge button and remote commands.

The main loop hands it the core's alarm transitions; the button (gpiozero's thread) and MQTT
commands (paho's thread) hand it acknowledgements, shelving, resets and maintenance. One
lock serialises them. After every change the annunciator is shown the new state first —
it never waits on the network — then the book's changed rows go to the store (the spool's
file: handed over, never waited for), and only then do the other outputs (MQTT) hear of it.
Every command and every change is logged with who or what caused it, for audit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hullwatch.core.lifecycle import (
    ALL_SOURCES,
    AlarmBook,
    AlarmKey,
    Annunciation,
    LifecycleChange,
    Outcome,
    Restored,
    key_name,
)
from hullwatch.core.model import AlarmTransition, Severity
from hullwatch.topics import COMMANDS, SEVERITIES

log = logging.getLogger("hullwatch.alarms")

Rows = dict[str, dict | None]


class CommandError(ValueError):
    """A command's payload does not say what to do."""


class AlarmDesk:
    """The alarm lifecycle behind a lock, with the annunciator, the store and outputs told of every change."""

    def __init__(
        self,
        book: AlarmBook,
        clock: Callable[[], float],
        show: Callable[[Annunciation], None] = lambda _a: None,
        store: Callable[[Rows], None] | None = None,
    ) -> None:
        self.book = book
        self.clock = clock
        self.show = show
        self.store = store  # takes the book's changed rows (None: delete); must not block
        self.outputs: list[Callable[[LifecycleChange], None]] = []
        self._lock = threading.RLock()
        self.show(book.annunciation())

    def restore(self, rows: Mapping[str, object], confirm_within: Callable[[str], float]) -> Restored:
        """Start the book from persisted rows (see AlarmBook.restore); rows that make no sense are logged."""
        with self._lock:
            restored = self.book.restore(self.clock(), rows, confirm_within)
            for problem in restored.problems:
                log.warning("alarm book: skipping a saved row that makes no sense: %s", problem)
            kept = self.book.records()
            if kept:
                log.info("alarm book: %d alarm(s) restored: %s", len(kept), ", ".join(key_name(r.key) for r in kept))
            for source, window in sorted(self.book.maintenance().items()):
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(window.until))
                scope = "all sources" if source == ALL_SOURCES else source
                log.info("alarm book: maintenance of %s restored, until %s (by %s)", scope, until, window.by)
            self.show(self.book.annunciation())
            self._publish(restored.changes)
            self._persist()
        return restored

    def transitions(self, transitions: Iterable[AlarmTransition]) -> None:
        """The core's alarm transitions, in order."""
        with self._lock:
            changes = [c for tr in transitions for c in self.book.on_transition(tr)]
            self._publish(changes)

    def tick(self, now: float) -> None:
        """Let shelving and maintenance expire."""
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
            return {"ok": False, "error": "bad_request", "message": str(exc)}
        if outcome.ok:
            log.info("command %s from %s: %s", name, by, outcome.message)
        else:
            log.warning("command %s from %s refused: %s", name, by, outcome.message)
        reply = {"ok": outcome.ok, "message": outcome.message}
        if outcome.error:
            reply["error"] = outcome.error
        return reply

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
            return self._maintenance(now, p, by)
        raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")

    def _maintenance(self, now: float, p: Mapping[str, Any], by: str) -> Outcome:
        on, sources, everything = p.get("on"), p.get("sources"), p.get("all", False)
        duration = p.get("duration_s")
        if not isinstance(on, bool):
            raise CommandError('maintenance needs "on": true or false')
        if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
            raise CommandError('"sources" must be a list of volume or sensor names')
        if not isinstance(everything, bool):
            raise CommandError('"all" must be true or false')
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration)
        ):
            raise CommandError('"duration_s" must be a number of seconds')
        return self.book.set_maintenance(now, by, on, sources, everything=everything, duration_s=duration)

    def _publish(self, changes: list[LifecycleChange]) -> None:
        if not changes:
            self._persist()  # maintenance may have changed without changing an alarm
            return
        self.show(self.book.annunciation())  # the lab first, the disk and the network after
        self._persist()
        for c in changes:
            log.info("alarm %s: %s -> %s (%s by %s)", key_name(c.key), c.old.value, c.new.value, c.cause, c.by)
            for output in self.outputs:
                try:
                    output(c)
                except Exception:  # an output's bug must not stop the others
                    log.exception("alarm output failed")

    def _persist(self) -> None:
        rows = self.book.take_changed_rows()
        if not rows or self.store is None:
            return
        try:
            self.store(rows)
        except Exception:  # the store's trouble must not stop the alarms
            log.exception("alarm book: saving %d row(s) failed", len(rows))


def _key(p: Mapping[str, Any]) -> AlarmKey:
    """(alarm, source, severity) from a command payload."""
    alarm, source, severity = p.get("alarm"), p.get("source"), p.get("severity")
    if not all(isinstance(x, str) for x in (alarm, source, severity)):
        raise CommandError('name the alarm with "alarm", "source" and "severity" strings (or "all": true)')
    try:
        sev = Severity[severity.upper()]
    except KeyError:
        raise CommandError(f"unknown severity {severity!r} ({', '.join(SEVERITIES)})") from None
    return (alarm, source, sev)

"""One thread that reads every serial line: a `selectors` loop over the ports, with timers.

Theory of operation. Each device on the loop (a `LoopDevice`: today `SerialDriver`) says which
file descriptor to watch (`fileno()`: None while its port is closed or cannot be selected on)
and when it next needs the time (`wake_at`, steady seconds). The loop sleeps in one `select()`
until a port is readable, a device's time comes or another thread wakes it; then it calls
`readable(out)` on each ready device and `due(now, out)` on each device whose time has come
(open or reopen the port, write a poll command, notice silence). Both append the samples they
made to `out`. After the wakeup every destination gets all the samples read for it in one call
(`deliver(batch)`): a wakeup that read eight ports costs one hand-off to the main loop, not eight.

Other threads only `attach`, `route` (send a device's samples elsewhere: a reload hands a running
device to the new daemon), `detach` and `close`; these are queued and the loop is woken through a
pipe. Everything else — opening, reading, parsing, closing — happens on the loop's thread, so a
device needs no locks. A device's callbacks must not block (its port is non-blocking) and should
not raise: one that does is logged and closed, and its `due` is called a second later to reopen it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Protocol

from hullwatch.core.model import Sample

log = logging.getLogger("hullwatch.sensors.ioloop")

Deliver = Callable[[list[Sample]], None]
MAX_WAIT_S = 1.0  # the longest sleep (a device's timers and the wake pipe normally end it sooner)


class LoopDevice(Protocol):
    """A device read by the loop; called on the loop's thread only."""

    name: str
    wake_at: float  # time.monotonic() at which `due` is next wanted (math.inf: only when readable)

    def fileno(self) -> int | None:
        """The descriptor to watch for reading, or None (port closed, or not selectable)."""

    def readable(self, out: list[Sample]) -> None:
        """Read what the port holds, appending samples to out."""

    def due(self, now: float, out: list[Sample]) -> None:
        """Do what is due at `now` (open, poll, time out), appending samples to out."""

    def close(self) -> None:
        """Close the port (the device may be attached to a loop again later)."""


class IoLoop:
    """A thread reading every attached device through one selector; started by the first attach."""

    def __init__(self, name: str = "serial-io") -> None:
        self.name = name
        self._lock = threading.Lock()  # guards what follows; held while a batch is delivered
        self._routes: dict[LoopDevice, Deliver] = {}
        self._commands: list[tuple[str, LoopDevice | None, threading.Event | None]] = []
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # the wake pipe, made with the thread
        # the loop thread's own: the selector, and each device with the descriptor registered for it
        self._selector: selectors.BaseSelector | None = None
        self._watched: dict[LoopDevice, int | None] = {}

    # -- from any thread ----------------------------------------------------------------------------

    def attach(self, device: LoopDevice, deliver: Deliver) -> None:
        """Start reading `device` on the loop; its samples go to `deliver`, a batch per wakeup."""
        with self._lock:
            self._routes[device] = deliver
            self._commands.append(("attach", device, None))
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._wake()

    def route(self, device: LoopDevice, deliver: Deliver) -> None:
        """Send the device's samples to `deliver` from now on: once this returns, none goes to the old one."""
        with self._lock:
            if device in self._routes:
                self._routes[device] = deliver

    def detach(self, device: LoopDevice) -> threading.Event:
        """Stop reading the device and close its port; the event is set once it is closed."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # nothing reads it (its port is closed)
                self._routes.pop(device, None)
                done.set()
                return done
            self._commands.append(("detach", device, done))
        self._wake()
        return done

    def reading(self, device: LoopDevice) -> bool:
        """Whether the device is attached and the loop runs."""
        with self._lock:
            return device in self._routes and self._thread is not None and self._thread.is_alive()

    def close(self, timeout_s: float = 1.0) -> None:
        """Close every device's port and end the thread (waiting at most timeout_s)."""
        with self._lock:
            self._commands.append(("close", None, None))
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s: still closing ports after %.1f s; not waiting for it", self.name, timeout_s)
                return
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed (the loop is gone)
            os.write(self._wake_w, b"x")

    # -- on the loop's thread -----------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        watched = self._watched
        try:
            while True:
                if not self._obey():
                    return
                now = time.monotonic()
                first = min((d.wake_at for d in watched), default=math.inf)
                ready = selector.select(min(MAX_WAIT_S, max(0.0, first - now)))
                made: list[tuple[LoopDevice, list[Sample]]] = []
                for key, _ in ready:
                    device = key.data
                    if device is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    out: list[Sample] = []
                    self._call(device, device.readable, out)
                    self._watch(device)
                    if out:
                        made.append((device, out))
                now = time.monotonic()
                for device in watched:
                    if device.wake_at <= now:
                        out = []
                        self._call(device, device.due, now, out)
                        self._watch(device)
                        if out:
                            made.append((device, out))
                if made:
                    self._deliver(made)
        except Exception:  # a bug in the loop itself: say so loudly (the devices' own faults are caught below)
            log.exception("%s: the serial loop failed", self.name)
        finally:
            for device in list(watched):
                self._forget(device)
            selector.close()

    def _obey(self) -> bool:
        """Carry out the queued commands; False once told to close."""
        watched = self._watched
        with self._lock:
            commands, self._commands = self._commands, []
        for command, device, done in commands:
            if command == "close":
                return False
            if command == "attach" and device not in watched:
                watched[device] = None
                device.wake_at = -math.inf  # due at once: open the port
            elif command == "detach":
                with self._lock:
                    self._routes.pop(device, None)
                if device in watched:
                    self._forget(device)
                if done is not None:
                    done.set()
        return True

    def _call(self, device: LoopDevice, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a device's bug must not stop the others: its port is closed, reopened by `due`
            log.exception("%s: unexpected error on the serial loop; closing its port", device.name)
            with contextlib.suppress(Exception):
                device.close()
            device.wake_at = time.monotonic() + MAX_WAIT_S

    def _watch(self, device: LoopDevice) -> None:
        """Register the device's descriptor as it is now (a port opened, lost or reopened)."""
        selector, watched = self._selector, self._watched
        fd = device.fileno()
        if fd == watched[device]:
            return
        if watched[device] is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(watched[device])
        watched[device] = None
        if fd is not None:
            try:
                selector.register(fd, selectors.EVENT_READ, device)
            except (KeyError, ValueError, OSError):
                log.exception("%s: its port cannot be watched", device.name)
                return
            watched[device] = fd

    def _forget(self, device: LoopDevice) -> None:
        """Stop watching the device and close its port."""
        selector, watched = self._selector, self._watched
        fd = watched.pop(device)
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(fd)
        try:
            device.close()
        except Exception:
            log.exception("%s: closing failed", device.name)

    def _deliver(self, made: list[tuple[LoopDevice, list[Sample]]]) -> None:
        """Every destination's samples of this wakeup, in one call each."""
        with self._lock:
            batches: dict[Deliver, list[Sample]] = {}
            for device, samples in made:
                deliver = self._routes.get(device)
                if deliver is not None:
                    batches.setdefault(deliver, []).extend(samples)
            for deliver, batch in batches.items():
                try:
                    deliver(batch)
                except Exception:
                    log.exception("%s: delivering %d sample(s) failed", self.name, len(batch))

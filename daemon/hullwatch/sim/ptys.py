"""`hullwatch simulate`: the simulated mock-up's transducers on real pseudo-terminals.

Each transducer of a scenario gets a pty and speaks its preset's protocol there —
answering its poll command, or streaming lines at its rate — so `hullwatch run` reads it
through the very serial code path it uses for a real device. The readings come from the
scenario's physics, played `speed` times faster than real time. The reader stamps lines
with real time, so at a speed of N every rate it measures is N times the story's: the
printed configuration scales the rate thresholds to match, and says so.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty

from hullwatch.sensors.presets import DEFAULT_MAX_RATE_HZ, MAX_RATE_HZ, PRESETS
from hullwatch.sim.live import Playback
from hullwatch.sim.scenario import Scenario


class PtyTransducer:
    """One transducer's pty: the master end is ours, the slave end is the 'device'."""

    def __init__(self, name: str, preset: str, link_dir: str | None) -> None:
        self.name = name
        self.preset = PRESETS[preset]
        self.preset_name = preset
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)  # a full buffer (nobody reading) drops lines, as a real line would
        self.path = os.ttyname(self.slave)
        if link_dir:
            link = os.path.join(link_dir, name)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(self.path, link)
            self.path = link
        self.pending = b""

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def station_config(scenario: Scenario, ports: list[PtyTransducer], speed: float) -> str:
    """A configuration for `hullwatch run` reading the simulated transducers."""
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in scenario.name.lower()) or "sim"
    lines = [
        f"# hullwatch run configuration for the simulated module {scenario.name!r}",
        f"# written by `hullwatch simulate --scenario {scenario.path}` (speed {speed:g})",
    ]
    if speed != 1:
        lines.append(f"# Time runs {speed:g}x faster than real time, so every measured rate is {speed:g}x the")
        lines.append("# story's: rate thresholds below are scaled by the speed, durations divided by it.")
    lines += ["", "[station]", f'name = "{name}"', ""]
    for seg, s in scenario.segments.items():
        lines += ["[[segment]]", f'name = "{seg}"', f"volume_m3 = {s['volume_m3']!r}", ""]
    for hatch, ((a, b), is_open) in scenario.hatches.items():
        lines += [
            "[[hatch]]",
            f'name = "{hatch}"',
            f'between = ["{a}", "{b}"]',
            f'initial = "{"open" if is_open else "closed"}"',
            "",
        ]
    by_name = {t.name: t for t in scenario.transducers}
    for p in ports:
        lines += [
            "[[sensor]]",
            f'name = "{p.name}"',
            f'segment = "{by_name[p.name].segment}"',
            'driver = "serial"',
            f'port = "{p.path}"',
            f'preset = "{p.preset_name}"',
        ]
        streamed_hz = by_name[p.name].rate_hz * speed
        if p.preset.poll is None and 2 * streamed_hz > DEFAULT_MAX_RATE_HZ:  # room for the sped-up stream
            lines.append(f"max_rate_hz = {min(2 * streamed_hz, MAX_RATE_HZ)!r}")
        lines.append("")
    lines += [
        "[alarms.leak_rate]",
        f"caution_kg_per_day = {0.5 * speed!r}",
        f"warning_kg_per_day = {0.9 * speed!r}",
        f"hysteresis_kg_per_day = {0.05 * speed!r}",
        "",
        "[alarms.rapid_depress]",
        f"emergency_pa_per_s = {9.19 * speed!r}",
        "",
        "[alarms.reserve_time]",
        f"caution_s = {86400.0 / speed!r}",
        f"warning_s = {3600.0 / speed!r}",
        f"emergency_s = {600.0 / speed!r}",
        "",
    ]
    return "\n".join(lines)


def serve(scenario: Scenario, ports: list[PtyTransducer], speed: float, seed: int, stop: threading.Event) -> None:
    """Answer polls and stream lines on every pty until stop is set."""
    play = Playback(scenario, seed)
    by_name = {t.name: t for t in scenario.transducers}
    streaming = [p for p in ports if p.preset.poll is None]
    polled = {p.master: p for p in ports if p.preset.poll is not None}
    due = {p.name: 0.0 for p in streaming}
    mono0 = time.monotonic()
    while not stop.is_set():
        now = (time.monotonic() - mono0) * speed
        play.advance_to(now)
        for p in streaming:
            if due[p.name] <= now:
                _send(p, play.read(by_name[p.name]))
                due[p.name] = max(due[p.name] + 1.0 / by_name[p.name].rate_hz, now)
        wait = min([(d - now) / speed for d in due.values()] + [0.05])
        readable, _, _ = select.select(list(polled), [], [], max(0.0, wait))
        for fd in readable:
            p = polled[fd]
            try:
                p.pending += os.read(fd, 4096)
            except OSError:
                continue
            command = p.preset.poll.strip()
            while True:
                idx = p.pending.find(command)
                if idx < 0:
                    p.pending = p.pending[-len(command) :]
                    break
                p.pending = p.pending[idx + len(command) :]
                play.advance_to((time.monotonic() - mono0) * speed)
                _send(p, play.read(by_name[p.name]))


def _send(p: PtyTransducer, values: dict) -> None:
    if not values:  # unplugged: the device says nothing
        return
    with contextlib.suppress(OSError):  # nobody reading, buffer full: a real line would drop bytes too
        os.write(p.master, p.preset.render(values))

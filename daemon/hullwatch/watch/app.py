"""The Textual screen of `hullwatch watch`: a header, alarms, volumes, hatches, sensors, self-metrics.

Renders from `Stations` (see the package docstring); the only state here is what the screen
itself needs (the connection's last word, a pending command, the status line).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Footer, Static

from hullwatch.watch import MqttFeed, Settings
from hullwatch.watch.state import (
    AlarmView,
    Stations,
    StationState,
    alarm_values,
    clock,
    health_rows,
    leak,
    result_text,
    sensor_value,
    span,
)

POLL_S = 0.1  # alarms, status, hatches and command results are drawn at the next poll
REDRAW_S = 1.0  # live readings and ages at most this often
MAX_EVENTS_PER_POLL = 5000  # keeps the screen alive under a flood; the rest waits for the next poll
REPLY_WAIT_S = 5.0
NOTICE_SHOWN_S = 15.0

SEVERITY_COLOUR = {"emergency": "red", "warning": "dark_orange", "caution": "yellow", "advisory": "cyan"}
ALARM_COLUMNS = (("severity", "Severity"), ("state", "State"), ("alarm", "Alarm"), ("source", "Source"),
                 ("since", "Since"), ("values", "Value / threshold"))  # fmt: skip
VOLUME_COLUMNS = (("volume", "Volume"), ("kpa", "kPa"), ("kg", "Air kg"), ("leak", "Leak kg/d ± σ"),
                  ("reserve", "Reserve"), ("window", "Window"), ("age", "Age"))  # fmt: skip
HATCH_COLUMNS = (("hatch", "Hatch"), ("state", "State"))
EXTRA_COLUMNS = (("key", "Part"), ("value", "Health"))
SENSOR_COLUMNS = (("sensor", "Sensor"), ("value", "Value"), ("quality", "Quality"), ("age", "Age"))

Row = tuple[str, Sequence[Any]]


class WatchApp(App[int]):
    """The live view of one station."""

    TITLE = "hullwatch watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("a", "ack", "Ack selected"),
        Binding("A", "ack_all", "Ack all"),
        Binding("n", "next_station", "Next station"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", show=False, priority=True),  # nothing here to copy: Ctrl-C quits, as in top
    ]
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; background: $primary-background; color: $text; }
    #header, .title, #statusline { text-wrap: nowrap; text-overflow: ellipsis; }
    .title { height: 1; text-style: bold; color: $accent; }
    DataTable { height: auto; scrollbar-size-vertical: 1; background: $background; }
    DataTable > .datatable--header { background: $background; color: $text-muted; text-style: bold; }
    #alarms { max-height: 8; }
    #volumes { max-height: 6; }
    #lower { height: 1fr; }
    #left { width: 37; padding-right: 1; }
    #right { width: 1fr; }
    #hatches { max-height: 6; }
    #extras { height: 1fr; overflow-x: hidden; }
    #sensors { height: 1fr; }
    #statusline { height: 1; color: $text-muted; }
    """

    def __init__(self, settings: Settings, feed: MqttFeed | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.stations = Stations(settings.prefix)
        self.feed = feed or MqttFeed(settings, self.stations.subscription)
        self.connection = "connecting"
        self.connected = False
        self.notice = settings.note
        self.notice_at = time.time()
        self.pending: tuple[str, float] | None = None  # (command, sent at) until a cmd/result arrives
        self._dirty = True
        self._drawn_at = 0.0
        self._station_count = len(self.stations.states)
        self._connection_notice = False  # the status line describes a connection problem

    # -- layout and life cycle ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="alarms-title", classes="title")
        yield DataTable(id="alarms", cursor_type="row", zebra_stripes=False)
        yield Static(id="volumes-title", classes="title")
        yield DataTable(id="volumes", cursor_type="none", show_cursor=False)
        with Horizontal(id="lower"):
            with Vertical(id="left"):
                yield Static(id="hatches-title", classes="title")
                yield DataTable(id="hatches", cursor_type="none", show_cursor=False)
                yield Static(id="extras-title", classes="title")
                yield DataTable(id="extras", cursor_type="none", show_cursor=False)
            with Vertical(id="right"):
                yield Static(id="sensors-title", classes="title")
                yield DataTable(id="sensors", cursor_type="none", show_cursor=False)
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("alarms", ALARM_COLUMNS),
            ("volumes", VOLUME_COLUMNS),
            ("hatches", HATCH_COLUMNS),
            ("extras", EXTRA_COLUMNS),
            ("sensors", SENSOR_COLUMNS),
        ):
            table = self.query_one(f"#{table_id}", DataTable)
            for key, label in columns:
                table.add_column(label, key=key)
            table.can_focus = table_id == "alarms"
        self.feed.start()
        self.set_interval(POLL_S, self._poll)
        self._redraw()

    def on_unmount(self) -> None:
        self.feed.stop()

    # -- events in ----------------------------------------------------------------------------

    def _poll(self) -> None:
        """Apply what the feed queued; redraw at once for what matters, else once a second."""
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                event = self.feed.events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "message":
                _, topic, payload, at = event
                self.stations.apply(topic, payload, at)
                self._dirty = self._dirty or _urgent(topic)
            elif event[0] == "connection":
                self._dirty = True
                _, word, detail, up = event
                self.connection, self.connected = word, up
                if up:
                    self.stations.forget_retained()
                    if self._connection_notice:  # the trouble it described is over
                        self._say(f"connected to {self.settings.broker}")
                elif detail:
                    self._say(detail)
                self._connection_notice = not up
        now = time.time()
        self._check_reply(now)
        if self._dirty or now - self._drawn_at >= REDRAW_S:
            self._redraw()

    def _check_reply(self, now: float) -> None:
        """Clear a pending command once its result arrives; say so if none comes."""
        if self.pending is None:
            return
        name, sent = self.pending
        state = self.stations.current
        if state is not None and state.result_at is not None and state.result_at >= sent:
            self.pending = None
        elif now - sent > REPLY_WAIT_S:
            self.pending = None
            self._say(f"no reply to {name} within {REPLY_WAIT_S:g} s: is the daemon online, may this user command?")

    def _say(self, text: str) -> None:
        self.notice, self.notice_at = text, time.time()
        self._connection_notice = False
        self._dirty = True

    # -- actions ------------------------------------------------------------------------------

    def selected_alarm(self) -> tuple[str, str, str] | None:
        """The (alarm, source, severity) under the cursor of the alarm table."""
        table = self.query_one("#alarms", DataTable)
        if not table.row_count or not table.display:
            return None
        row_key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        alarm, source, severity = str(row_key).split("\x1f")
        return alarm, source, severity

    def action_ack(self) -> None:
        """Acknowledge the selected alarm."""
        key = self.selected_alarm()
        if key is None:
            self._say("no alarm selected")
            return
        alarm, source, severity = key
        self._command("ack", {"alarm": alarm, "source": source, "severity": severity}, f"{alarm} {source} {severity}")

    def action_ack_all(self) -> None:
        """Acknowledge every alarm."""
        self._command("ack", {"all": True}, "all alarms")

    def action_next_station(self) -> None:
        """Show the next station seen."""
        self.stations.next()
        self._dirty = True
        self._redraw()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`n` only while there is another station to show."""
        if action == "next_station":
            return len(self.stations.states) > 1
        return True

    def _command(self, name: str, obj: dict[str, Any], what: str) -> None:
        state = self.stations.current
        if state is None:
            self._say("no station yet: nothing sent")
            return
        problem = self.feed.command(state.prefix, name, obj)
        if problem:
            self._say(f"{name} {what}: {problem}")
            return
        self.pending = (name, time.time())
        self._say(f"{name} sent: {what}")

    # -- drawing ------------------------------------------------------------------------------

    def _redraw(self) -> None:
        now = time.time()
        self._dirty = False
        self._drawn_at = now
        if len(self.stations.states) != self._station_count:
            self._station_count = len(self.stations.states)
            self.refresh_bindings()
        state = self.stations.current or StationState(self.settings.prefix or "hullwatch/?")
        self.query_one("#header", Static).update(self._header(state, now))
        self._draw_alarms(state, now)
        self._draw_volumes(state, now)
        self._draw_lower(state, now)
        self.query_one("#statusline", Static).update(self._status(state, now))

    def _header(self, state: StationState, now: float) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        if self.stations.current is None:
            t.append(" no station yet", style="bold")
        else:
            t.append(f" {state.station}", style="bold")
            n = len(self.stations.states)
            if n > 1:
                t.append(f" ({list(self.stations.states).index(state.prefix) + 1}/{n})")
        t.append(" │ ")
        t.append(f"{self.settings.broker} ")
        t.append(self.connection, style="green" if self.connected else "bold red")
        t.append(" │ daemon ")
        status = state.status or "?"
        colour = {"online": "green", "offline": "bold red"}.get(status, "dim")
        t.append(status, style=colour if self.connected else "dim")
        t.append(" │ last ")
        if state.last_message is None:
            t.append("—", style="dim")
        else:
            quiet = now - state.last_message
            t.append(clock(state.last_message, now), style="yellow" if quiet > self.settings.sensor_quiet_s else "")
        return t

    def _draw_alarms(self, state: StationState, now: float) -> None:
        alarms = state.sorted_alarms()
        title = Text("Alarms", no_wrap=True)
        unacked = state.unacknowledged()
        if not alarms:
            title.append(": none", style="green")
        else:
            title.append(f" · {len(alarms)}")
            if unacked:
                title.append(" · ")
                title.append(f"{unacked} unacknowledged", style="bold reverse red")
        self.query_one("#alarms-title", Static).update(title)
        table = self.query_one("#alarms", DataTable)
        table.display = bool(alarms)
        _fill(table, [("\x1f".join(a.key), _alarm_cells(a, now)) for a in alarms])
        if alarms and self.focused is None:
            table.focus()

    def _draw_volumes(self, state: StationState, now: float) -> None:
        volumes = [state.volumes[k] for k in sorted(state.volumes)]
        title = Text("Volumes", no_wrap=True)
        if not volumes:
            title.append(": no estimate yet", style="dim")
        self.query_one("#volumes-title", Static).update(title)
        table = self.query_one("#volumes", DataTable)
        table.display = bool(volumes)
        rows: list[Row] = []
        for v in volumes:
            stale = now - v.received > self.settings.volume_stale_s
            style = "dim" if stale else ""
            name = Text(v.volume, style="bold red" if state.volume_alarm.get(v.volume) else style)
            cells = [
                name,
                _num(v.pressure_pa, 1000, ".3f", style),
                _num(v.mass_kg, 1, ".2f", style),
                Text(leak(v), style=style, justify="right"),
                Text(span(v.reserve_time_s), style=style, justify="right"),
                Text(span(v.window_s), style=style, justify="right"),
                Text(span(now - v.received), style="yellow" if stale else "", justify="right"),
            ]
            rows.append((v.volume, cells))
        _fill(table, rows)

    def _draw_lower(self, state: StationState, now: float) -> None:
        hatches = sorted(state.hatches.items())
        self.query_one("#hatches-title", Static).update(Text("Hatches" + ("" if hatches else ": none")))
        table = self.query_one("#hatches", DataTable)
        table.display = bool(hatches)
        _fill(table, [(h, (h, Text(s, style="green" if s == "open" else "bold"))) for h, s in hatches])

        extras = []
        for name, obj in sorted(state.extras.items()):
            for label, text, worth_a_look in health_rows(obj):
                if name != "metrics":
                    label = f"{_extra_name(name)}.{label}"
                extras.append((f"{name}\x1f{label}", (label, Text(text, style="bold yellow" if worth_a_look else ""))))
        for widget in ("#extras-title", "#extras"):
            self.query_one(widget).display = bool(extras)
        title = Text("Daemon", no_wrap=True)
        if state.extras_at is not None:
            old = now - state.extras_at > self.settings.volume_stale_s
            title.append(f" · metrics {span(now - state.extras_at)} ago", style="yellow" if old else "dim")
        self.query_one("#extras-title", Static).update(title)
        _fill(self.query_one("#extras", DataTable), extras)

        sensors = [state.sensors[k] for k in sorted(state.sensors)]
        quiet_s = self.settings.sensor_quiet_s
        attention = sum(1 for s in sensors if s.attention(now, quiet_s))
        title = Text("Sensors" + ("" if sensors else ": no reading yet"), no_wrap=True)
        if attention:
            title.append(f" · {attention} need attention", style="bold yellow")
        self.query_one("#sensors-title", Static).update(title)
        table = self.query_one("#sensors", DataTable)
        table.display = bool(sensors)
        rows: list[Row] = []
        for s in sensors:
            bad = s.quality == "bad" or s.value is None
            look = "bold red" if bad else "bold yellow" if s.attention(now, quiet_s) else ""
            quiet = s.age(now) > quiet_s
            cells = (
                Text(s.sensor, style=look),
                Text(sensor_value(s), justify="right"),
                Text(s.quality, style="" if s.quality == "good" else look),
                Text(span(s.age(now)), style="bold yellow" if quiet else "", justify="right"),
            )
            rows.append((f"{s.sensor}\x1f{s.quantity}", cells))
        _fill(table, rows)

    def _status(self, state: StationState, now: float) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        result = state.recent_result(now)
        if result is not None and (state.result_at or 0) >= self.notice_at:
            t.append(result_text(result), style="green" if result.get("ok") is True else "bold red")
        elif self.notice and now - self.notice_at < NOTICE_SHOWN_S:
            t.append(self.notice)
        if state.malformed:
            t.append(" · " if t.plain else "")
            n = state.malformed
            t.append(f"{n} malformed message{'s' if n != 1 else ''} ignored", style="yellow")
            t.append(f" (last: {state.last_problem})", style="dim")
        if self.feed.dropped:
            t.append(" · " if t.plain else "")
            t.append(f"{self.feed.dropped} dropped: the screen fell behind", style="yellow")
        return t


def _urgent(topic: str) -> bool:
    """Whether a message changes what must be drawn at once (alarms, status, hatches, command results)."""
    return "/alarm/" in topic or "/hatch/" in topic or topic.endswith(("/status", "/cmd/result"))


def _alarm_cells(a: AlarmView, now: float) -> list[Text]:
    """Severity, state, alarm, source, since, value / threshold: loud when unacknowledged."""
    colour = SEVERITY_COLOUR.get(a.severity, "white")
    loud = not a.acknowledged
    base = "" if loud else "dim"
    return [
        Text(a.severity.upper(), style=f"bold reverse {colour}" if loud else f"{colour} dim"),
        Text(a.state_label, style="bold" if loud else "dim"),
        Text(a.alarm, style=base),
        Text(a.source, style=base),
        Text(clock(a.since, now), style=base),
        Text(alarm_values(a), style=base),
    ]


def _num(value: float | None, scale: float, fmt: str, style: str) -> Text:
    return Text("—" if value is None else format(value / scale, fmt), style=style, justify="right")


def _extra_name(name: str) -> str:
    """metrics/self -> self; spool -> spool."""
    return name.removeprefix("metrics/").replace("/", ".") or name


def _fill(table: DataTable, rows: Sequence[Row]) -> None:
    """Show these rows: cells updated in place when the rows are the same, else rebuilt.

    A cursor on the top row stays on the top row (the worst alarm); one the user moved down
    follows its row.
    """
    keys = [k for k, _ in rows]
    current = [str(r.key.value) for r in table.ordered_rows]
    if keys == current:
        columns = list(table.columns.values())
        for key, cells in rows:
            old = table.get_row(key)
            for column, cell, was in zip(columns, cells, old, strict=False):
                if cell != was:
                    wider = len(cell.plain if isinstance(cell, Text) else str(cell)) > column.content_width
                    table.update_cell(key, column.key, cell, update_width=wider)
        return
    cursor = table.cursor_row if table.cursor_type != "none" else -1
    selected = current[cursor] if 0 <= cursor < len(current) else None
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys and cursor > 0:
        table.move_cursor(row=keys.index(selected), animate=False)

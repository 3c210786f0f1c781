"""The MQTT topics of a station (ICD §5), and the names on the wire: severities and command verbs.

Every topic the daemon publishes or takes, `watch` shows and the bridge stores is built and
parsed here. `P` is the station's prefix (`[mqtt] topic_prefix`, default `hullwatch/<station>`).

| topic                                 | kind           | ret. | payload                                          |
|---------------------------------------|----------------|------|--------------------------------------------------|
| `P/status`                            | status         | yes  | `online` or `offline` (also the Last Will)       |
| `P/sensor/<sensor>`                   | sensor         | no   | `{"time", "quantity", "value", "quality"}`       |
| `P/hatch/<hatch>`                     | hatch          | yes  | `open` or `closed`                               |
| `P/hatch/<hatch>/event`               | hatch_event    | no   | `{"time", "open"}`: a reading at its own time    |
| `P/volume/<volume>`                   | volume         | no   | the estimate object of ICD §4                    |
| `P/volume/<volume>/alarm`             | volume_alarm   | yes  | `ON` if an alarm of it is active, else `OFF`     |
| `P/step/<volume>`                     | step           | no   | `{"time", "type": "step", "volume", "size_pa"}`  |
| `P/clock_step`                        | clock_step     | no   | `{"time", "step_s"}`: the wall clock was stepped |
| `P/alarm/<alarm>/<source>/<severity>` | alarm          | yes  | the alarm object of ICD §4 + `"acknowledged"`    |
| `P/metrics`                           | metrics        | yes  | self-metrics: `{"time", "spool", "sinks", ...}`  |
| `P/cmd/<verb>`                        | command        | —    | subscribed: a command, one of COMMANDS           |
| `P/cmd/result`                        | command_result | no   | `{"command", "ok", "request", "time", ...}`      |

An alarm that leaves the book is published once more as its final record (`"state":
"cleared"`, not retained), then as an empty retained message that removes the topic. Retained
commands are refused. Spooled telemetry (sensor, hatch_event, volume, step, clock_step) carries
`"replay": true` when it is sent from the backlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hullwatch.core.model import Severity

SEVERITIES = tuple(s.label for s in Severity)  # mildest first: advisory, caution, warning, emergency
COMMANDS = ("ack", "shelve", "unshelve", "reset", "maintenance")  # the verbs of P/cmd/<verb>


class Kind(StrEnum):
    """What a topic of a station carries."""

    STATUS = "status"
    SENSOR = "sensor"
    HATCH = "hatch"
    HATCH_EVENT = "hatch_event"
    VOLUME = "volume"
    VOLUME_ALARM = "volume_alarm"
    STEP = "step"
    CLOCK_STEP = "clock_step"
    ALARM = "alarm"
    METRICS = "metrics"
    COMMAND = "command"
    COMMAND_RESULT = "command_result"


# Each kind's levels below the prefix: a word stands for itself, None for a name (sensor, volume, ...).
# Listed so that the first match wins: cmd/result before cmd/<verb>.
LEVELS: dict[Kind, tuple[str | None, ...]] = {
    Kind.STATUS: ("status",),
    Kind.SENSOR: ("sensor", None),
    Kind.HATCH: ("hatch", None),
    Kind.HATCH_EVENT: ("hatch", None, "event"),
    Kind.VOLUME: ("volume", None),
    Kind.VOLUME_ALARM: ("volume", None, "alarm"),
    Kind.STEP: ("step", None),
    Kind.CLOCK_STEP: ("clock_step",),
    Kind.ALARM: ("alarm", None, None, None),
    Kind.METRICS: ("metrics",),
    Kind.COMMAND_RESULT: ("cmd", "result"),
    Kind.COMMAND: ("cmd", None),
}
RETAINED = frozenset({Kind.STATUS, Kind.HATCH, Kind.VOLUME_ALARM, Kind.ALARM, Kind.METRICS})


@dataclass(frozen=True)
class Topic:
    """A parsed topic: its kind and the names in it (a sensor's; alarm, source, severity; a verb)."""

    kind: Kind
    names: tuple[str, ...] = ()


def subtopic(kind: Kind, *names: str) -> str:
    """The topic of `kind` below the prefix, e.g. subtopic(Kind.ALARM, "leak_rate", "prk", "warning")."""
    levels = LEVELS[kind]
    wanted = sum(level is None for level in levels)
    if len(names) != wanted:
        raise TypeError(f"a {kind.value} topic takes {wanted} name(s), not {len(names)}")
    given = iter(names)
    return "/".join(level if level is not None else next(given) for level in levels)


def subscription(kind: Kind) -> str:
    """The topic filter below the prefix that matches every topic of `kind` (alarms: the whole alarm/ tree)."""
    if kind is Kind.ALARM:
        return "alarm/#"  # malformed alarm topics too: the bridge sets them aside rather than never seeing them
    return "/".join(level if level is not None else "+" for level in LEVELS[kind])


def parse(sub: str) -> Topic | None:
    """A topic below the prefix as (kind, names); None for one that is no topic of ICD §5 (names are non-empty)."""
    parts = sub.split("/")
    for kind, levels in LEVELS.items():
        if len(parts) == len(levels) and all(
            part == level if level is not None else part != "" for part, level in zip(parts, levels, strict=True)
        ):
            return Topic(kind, tuple(part for part, level in zip(parts, levels, strict=True) if level is None))
    return None


@dataclass(frozen=True)
class Topics:
    """The topics of one station, under its prefix."""

    prefix: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))

    def of(self, kind: Kind, *names: str) -> str:
        """The full topic of `kind` with its names."""
        return f"{self.prefix}/{subtopic(kind, *names)}"

    def filter(self, kind: Kind) -> str:
        """The topic filter matching every topic of `kind` of this station."""
        return f"{self.prefix}/{subscription(kind)}"

    def parse(self, topic: str) -> Topic | None:
        """A topic of this station as (kind, names); None for another station's or an unknown one."""
        head = self.prefix + "/"
        return parse(topic[len(head) :]) if topic.startswith(head) else None

    def subtopic(self, topic: str) -> str | None:
        """What follows the prefix, or None for a topic of another station."""
        head = self.prefix + "/"
        return topic[len(head) :] if topic.startswith(head) else None

    @property
    def status(self) -> str:
        return self.of(Kind.STATUS)

    def sensor(self, sensor: str) -> str:
        return self.of(Kind.SENSOR, sensor)

    def hatch(self, hatch: str) -> str:
        return self.of(Kind.HATCH, hatch)

    def hatch_event(self, hatch: str) -> str:
        return self.of(Kind.HATCH_EVENT, hatch)

    def volume(self, volume: str) -> str:
        return self.of(Kind.VOLUME, volume)

    def volume_alarm(self, volume: str) -> str:
        return self.of(Kind.VOLUME_ALARM, volume)

    def step(self, volume: str) -> str:
        return self.of(Kind.STEP, volume)

    @property
    def clock_step(self) -> str:
        return self.of(Kind.CLOCK_STEP)

    def alarm(self, alarm: str, source: str, severity: str) -> str:
        return self.of(Kind.ALARM, alarm, source, severity)

    @property
    def metrics(self) -> str:
        return self.of(Kind.METRICS)

    def command(self, verb: str) -> str:
        return self.of(Kind.COMMAND, verb)

    @property
    def command_result(self) -> str:
        return self.of(Kind.COMMAND_RESULT)

    @property
    def command_prefix(self) -> str:
        """`P/cmd/`: what every command topic begins with (the verb follows)."""
        return f"{self.prefix}/cmd/"

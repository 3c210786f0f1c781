"""topics.py: every ICD §5 topic of a station built and parsed back, and what is no topic of ICD §5."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from hullwatch.core.model import Severity
from hullwatch.topics import COMMANDS, LEVELS, SEVERITIES, Kind, Topic, Topics, parse, subscription

T = Topics("hullwatch/prk/")

BUILT = [
    (T.status, "hullwatch/prk/status", Topic(Kind.STATUS)),
    (T.sensor("p1"), "hullwatch/prk/sensor/p1", Topic(Kind.SENSOR, ("p1",))),
    (T.hatch("h1"), "hullwatch/prk/hatch/h1", Topic(Kind.HATCH, ("h1",))),
    (T.hatch_event("h1"), "hullwatch/prk/hatch/h1/event", Topic(Kind.HATCH_EVENT, ("h1",))),
    (T.volume("prk-zvezda"), "hullwatch/prk/volume/prk-zvezda", Topic(Kind.VOLUME, ("prk-zvezda",))),
    (T.volume_alarm("prk"), "hullwatch/prk/volume/prk/alarm", Topic(Kind.VOLUME_ALARM, ("prk",))),
    (T.step("prk"), "hullwatch/prk/step/prk", Topic(Kind.STEP, ("prk",))),
    (T.clock_step, "hullwatch/prk/clock_step", Topic(Kind.CLOCK_STEP)),
    (
        T.alarm("leak_rate", "prk", "warning"),
        "hullwatch/prk/alarm/leak_rate/prk/warning",
        Topic(Kind.ALARM, ("leak_rate", "prk", "warning")),
    ),
    (T.metrics, "hullwatch/prk/metrics", Topic(Kind.METRICS)),
    (T.command("ack"), "hullwatch/prk/cmd/ack", Topic(Kind.COMMAND, ("ack",))),
    (T.command_result, "hullwatch/prk/cmd/result", Topic(Kind.COMMAND_RESULT)),
]


@pytest.mark.parametrize(("built", "expected", "parsed"), BUILT)
def test_each_topic_is_built_as_icd_5_names_it_and_parses_back(built, expected, parsed):
    assert built == expected
    assert T.parse(built) == parsed
    assert mqtt.topic_matches_sub(T.filter(parsed.kind), built)


def test_every_kind_is_in_the_table():
    assert {kind for _, _, p in BUILT for kind in [p.kind]} == set(Kind) == set(LEVELS)


@pytest.mark.parametrize(
    "sub",
    ["", "status/x", "sensor", "sensor/", "sensor/p1/x", "hatch/h1/open", "volume/v/alarm/x", "alarm/leak_rate/prk",
     "alarm/a//warning", "metrics/self", "spool", "cmd", "cmd/ack/x", "homeassistant/status"],
)  # fmt: skip
def test_what_is_no_topic_of_icd_5_parses_to_none(sub):
    assert parse(sub) is None


def test_another_stations_topic_is_not_ours():
    assert T.parse("hullwatch/prk2/status") is None
    assert T.subtopic("hullwatch/prk2/status") is None
    assert T.subtopic("hullwatch/prk/metrics/self") == "metrics/self"


def test_subscriptions_cover_a_kind_and_alarms_the_whole_tree():
    assert subscription(Kind.SENSOR) == "sensor/+"
    assert subscription(Kind.HATCH_EVENT) == "hatch/+/event"
    assert subscription(Kind.ALARM) == "alarm/#"
    assert T.filter(Kind.VOLUME_ALARM) == "hullwatch/prk/volume/+/alarm"


def test_a_topic_takes_exactly_its_names():
    with pytest.raises(TypeError):
        T.of(Kind.ALARM, "leak_rate", "prk")


def test_severities_are_the_cores_mildest_first_and_the_verbs_are_five():
    assert SEVERITIES == ("advisory", "caution", "warning", "emergency")
    assert [Severity[s.upper()] for s in SEVERITIES] == sorted(Severity)
    assert COMMANDS == ("ack", "shelve", "unshelve", "reset", "maintenance")

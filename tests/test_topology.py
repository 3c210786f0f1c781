"""Hatch topology: segments joined by open hatches form volumes."""

import pytest

from hullwatch.core.topology import form_volumes, volume_id

SEGMENTS = ["zvezda", "prk", "node", "airlock"]
HATCHES = {"h1": ("prk", "zvezda"), "h2": ("zvezda", "node"), "h3": ("node", "airlock")}


@pytest.mark.parametrize(
    ("open_hatches", "expected"),
    [
        ([], {"airlock", "node", "prk", "zvezda"}),
        (["h1"], {"prk-zvezda", "node", "airlock"}),
        (["h1", "h2"], {"node-prk-zvezda", "airlock"}),
        (["h1", "h2", "h3"], {"airlock-node-prk-zvezda"}),
        (["h1", "h3"], {"prk-zvezda", "airlock-node"}),
    ],
)
def test_open_hatches_join_segments(open_hatches, expected):
    assert set(form_volumes(SEGMENTS, HATCHES, open_hatches)) == expected


def test_members_are_sorted_and_complete():
    vols = form_volumes(SEGMENTS, HATCHES, ["h2", "h1"])
    assert vols["node-prk-zvezda"] == ("node", "prk", "zvezda")
    assert sorted(s for members in vols.values() for s in members) == sorted(SEGMENTS)


def test_volume_id_is_order_independent():
    assert volume_id(["zvezda", "prk"]) == volume_id(["prk", "zvezda"]) == "prk-zvezda"


def test_parallel_hatches_make_one_volume():
    hatches = {"a": ("prk", "zvezda"), "b": ("zvezda", "prk")}
    assert set(form_volumes(["prk", "zvezda"], hatches, ["a", "b"])) == {"prk-zvezda"}

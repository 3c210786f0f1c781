"""The recorder: whole rows only (a full disk, a torn last row), rotation and its disk cap."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daemon_rig
from hullwatch import recorder as recorder_module
from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.recorder import Recorder, format_rows
from hullwatch.samples import format_row, read_samples

NAMES = {"p_prk": frozenset({Quantity.PRESSURE})}


def sample(i: int) -> Sample:
    return Sample(1780000000.0 + i, "p_prk", Quantity.PRESSURE, 101325.0 + i / 7)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, unmounted afterwards."""
    with daemon_rig.small_disk(tmp_path) as disk:
        yield disk


def test_rows_round_trip_through_analyze_reading(tmp_path):
    path = tmp_path / "samples.csv"
    rec = Recorder(str(path))
    rec.start()
    for i in range(100):
        rec.write(sample(i))
    rec.write(Sample(1780000200.0, "p_prk", Quantity.PRESSURE, float("nan")))  # unreadable: not a sample
    rec.close()
    got = list(read_samples(str(path), NAMES))
    assert [s.value for s in got] == [sample(i).value for i in range(100)]
    assert rec.rows == 100


ODD_SAMPLES = [
    Sample(1780000000.0, "p_prk", Quantity.PRESSURE, 101325.0),
    Sample(1780000000.1 + 0.2, "p_prk", Quantity.PRESSURE, 0.1 + 0.2),  # 0.30000000000000004
    Sample(1780000000.0000005, "t_prk", Quantity.TEMPERATURE, 293.15),  # a time on a rounding edge
    Sample(1780000000.9999996, "t_prk", Quantity.TEMPERATURE, 5e-324),  # rounds up to the next second
    Sample(0.0, "p_prk", Quantity.PRESSURE, -0.0),
    Sample(1.5e-7, "p_prk", Quantity.PRESSURE, 1e-300),
    Sample(253402300799.0, "p_prk", Quantity.PRESSURE, 1.7976931348623157e308),
    Sample(1780000001.25, "p_prk", Quantity.PRESSURE, 1e16),  # repr switches to an exponent
    Sample(1780000001.5, "p_prk", Quantity.PRESSURE, 9999999999999998.0),
    Sample(1780000002.0, "p_prk", Quantity.PRESSURE, 101325.12299999999),
    Sample(1780000002.0, "p_prk", Quantity.PRESSURE, float(2**53 + 2)),
    Sample(1780000002.0, "p_prk", Quantity.PRESSURE, -123.456e-5),
    Sample(1780000003, "prk-hatch", Quantity.HATCH, 1.0),  # an int time
    Sample(1780000003.0, "prk-hatch", Quantity.HATCH, 0, Quality.BAD),  # an int value; quality is not written
    Sample(1780000004.0, "a-b_C9", Quantity.TEMPERATURE, 1 / 3),
]


def test_batch_formatting_writes_the_bytes_of_format_row():
    rows = [tuple(s[:4]) for s in ODD_SAMPLES]
    assert format_rows(rows) == "".join(format_row(s) for s in ODD_SAMPLES)
    assert [format_rows([r]) for r in rows] == [format_row(s) for s in ODD_SAMPLES]
    assert format_rows([]) == ""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=253402300799.0),
            st.sampled_from(["p_prk", "t_prk", "prk-hatch"]),
            st.sampled_from(list(Quantity)),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=30,
    )
)
def test_batch_formatting_matches_format_row_for_any_finite_samples(rows):
    assert format_rows(rows) == "".join(format_row(Sample(*r)) for r in rows)


def test_the_file_holds_the_rows_format_row_gives(tmp_path):
    path = tmp_path / "samples.csv"
    rec = Recorder(str(path))
    rec.start()
    in_order = sorted(ODD_SAMPLES, key=lambda s: s.time)
    for s in in_order:
        rec.write(s)
    rec.close()
    assert path.read_bytes() == ("time,sensor,quantity,value\n" + "".join(map(format_row, in_order))).encode()


def test_a_torn_last_row_is_cut_back_at_open(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("time,sensor,quantity,value\n1780000000.000000,p_prk,pressure,101325.0\n1780000001.000,p_prk,pre")
    rec = Recorder(str(path))
    rec.write(sample(5))
    rec.close()
    assert [s.value for s in read_samples(str(path), NAMES)] == [101325.0, sample(5).value]
    path.write_text("time,sensor,quan")  # even the header torn: begun again
    Recorder(str(path)).close()
    assert path.read_text() == "time,sensor,quantity,value\n"


def test_a_gz_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="plain CSV"):
        Recorder(str(tmp_path / "samples.csv.gz"))


def test_a_full_disk_leaves_whole_rows_holds_the_rest_and_catches_up(small_disk):
    path = small_disk.path / "samples.csv"
    rec = Recorder(str(path), flush_interval_s=0.05)
    rec.start()
    i = 0
    while rec.problem is None and i < 20_000:  # 64 KiB hold about 1,400 rows
        for _ in range(50):
            rec.write(sample(i))
            i += 1
        time.sleep(0.01)
    assert wait_until(lambda: rec.problem is not None), "the disk filled up"
    assert "No space left" in rec.problem
    data = path.read_bytes()
    assert data.endswith(b"\n"), "never a half row"
    written = list(read_samples(str(path), NAMES))
    assert len(written) == rec.rows and 0 < rec.rows < i
    small_disk.resize(4096)
    assert wait_until(lambda: rec.problem is None, 40), "writes again once there is room (with backoff)"
    rec.close()
    values = [s.value for s in read_samples(str(path), NAMES)]
    assert values == [sample(k).value for k in range(i)], "nothing lost, nothing doubled, in order"
    assert rec.dropped == 0


def test_rows_beyond_the_memory_bound_are_counted_not_silently_lost(small_disk, monkeypatch):
    monkeypatch.setattr(recorder_module, "MAX_HELD_ROWS", 500)
    filler = small_disk.path / "filler"
    filler.write_bytes(b"x" * 60 * 1024)
    rec = Recorder(str(small_disk.path / "samples.csv"), flush_interval_s=0.05)
    rec.start()
    for i in range(5000):
        rec.write(sample(i))
    assert wait_until(lambda: rec.problem is not None)
    assert rec.dropped >= 4000
    filler.unlink()
    assert wait_until(lambda: rec.problem is None, 40)
    rec.close()
    got = [s.value for s in read_samples(str(small_disk.path / "samples.csv"), NAMES)]
    assert got == [sample(k).value for k in range(5000 - len(got), 5000)], "the newest kept, in order"
    assert len(got) + rec.dropped == 5000


def test_rotation_keeps_whole_files_within_the_cap(tmp_path):
    path = tmp_path / "rec" / "samples.csv"
    rec = Recorder(str(path), rotate_mb=8 / 1024, max_mb=40 / 1024, flush_interval_s=0.02)  # 8 KiB files, 40 KiB
    rec.start()
    for i in range(6000):  # about 280 KiB of rows
        rec.write(sample(i))
        if i % 200 == 0:
            time.sleep(0.03)
    rec.close()
    rotated = rec.rotated()
    assert len(rotated) >= 2
    assert all(Path(p).name.startswith("samples.") and p.endswith(".csv") for p in rotated)
    total = sum(os.path.getsize(p) for p in [*rotated, str(path)])
    assert total <= 40 * 1024 + 8 * 1024, "the cap holds (within one file being written)"
    values = []
    for p in [*rotated, str(path)]:  # each file is a samples file of its own, and they follow each other
        values += [s.value for s in read_samples(p, NAMES)]
    assert values == [sample(k).value for k in range(6000 - len(values), 6000)]

"""The samples file (ICD §3): rows in, Samples out; every bad row named by its line."""

import gzip
import io
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hullwatch.core.model import Quality, Quantity, Sample
from hullwatch.samples import SamplesError, format_row, read_samples

P, T, H = Quantity.PRESSURE, Quantity.TEMPERATURE, Quantity.HATCH
NAMES = {"p_prk": frozenset({P, T}), "t_prk": frozenset({P, T}), "prk-hatch": frozenset({H})}
HEADER = "time,sensor,quantity,value\n"
ICD_EXAMPLE = (
    HEADER
    + "1780000000.000,p_prk,pressure,101324.49\n"
    + "1780000000.000,t_prk,temperature,295.001\n"
    + "1780000000.000,prk-hatch,hatch,1\n"
)
EPOCH_2026_05_28_NOON = datetime(2026, 5, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def read_text(tmp_path, text, name="samples.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return list(read_samples(str(path), NAMES))


def error_of(tmp_path, data, name="samples.csv"):
    """The SamplesError reading this file (text or bytes) raises."""
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", newline="")
    with pytest.raises(SamplesError) as info:
        list(read_samples(str(path), NAMES))
    err = info.value
    assert err.path == str(path)
    assert str(err).startswith(f"{path}:{err.line}: ")
    return err


def test_icd_example_rows(tmp_path):
    assert read_text(tmp_path, ICD_EXAMPLE) == [
        Sample(1780000000.0, "p_prk", P, 101324.49),
        Sample(1780000000.0, "t_prk", T, 295.001),
        Sample(1780000000.0, "prk-hatch", H, 1.0),
    ]


def test_samples_are_good_quality_and_typed(tmp_path):
    (s,) = read_text(tmp_path, HEADER + "1780000000.5,p_prk,pressure,101325\n")
    assert s.quality is Quality.GOOD
    assert s.quantity is Quantity.PRESSURE
    assert isinstance(s.time, float) and isinstance(s.value, float)
    assert s.time == 1780000000.5


def test_a_stream_can_be_given_instead_of_a_file():
    samples = list(read_samples("<stdin>", NAMES, stream=io.StringIO(ICD_EXAMPLE)))
    assert [s.sensor for s in samples] == ["p_prk", "t_prk", "prk-hatch"]


def test_hatch_closed_is_zero(tmp_path):
    (s,) = read_text(tmp_path, HEADER + "1780000000,prk-hatch,hatch,0\n")
    assert s.value == 0.0


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-05-28T12:00:00+00:00",
        "2026-05-28T12:00:00Z",
        "2026-05-28T14:00:00+02:00",
        "2026-05-28T07:00:00-05:00",
        f"{EPOCH_2026_05_28_NOON:.3f}",
    ],
)
def test_iso_times_with_an_offset_equal_the_epoch(tmp_path, stamp):
    (s,) = read_text(tmp_path, HEADER + f"{stamp},p_prk,pressure,101325\n")
    assert s.time == EPOCH_2026_05_28_NOON


def test_iso_time_with_fraction(tmp_path):
    (s,) = read_text(tmp_path, HEADER + "2026-05-28T12:00:00.250+00:00,p_prk,pressure,101325\n")
    assert s.time == EPOCH_2026_05_28_NOON + 0.25


def test_iso_time_without_offset_is_an_error(tmp_path):
    err = error_of(tmp_path, HEADER + "2026-05-28T12:00:00,p_prk,pressure,101325\n")
    assert err.line == 2
    assert "2026-05-28T12:00:00" in str(err)


def test_blank_lines_are_skipped(tmp_path):
    text = HEADER + "\n1780000000,p_prk,pressure,101325\n\n\n1780000001,p_prk,pressure,101326\n\n"
    assert [s.value for s in read_text(tmp_path, text)] == [101325.0, 101326.0]


def test_blank_lines_still_count_for_line_numbers(tmp_path):
    err = error_of(tmp_path, HEADER + "\n1780000000,p_prk,pressure,101325\n\n1780000001,p_prk,pressure,abc\n")
    assert err.line == 5


def test_equal_timestamps_are_fine(tmp_path):
    text = HEADER + "".join(f"1780000000,p_prk,pressure,{101325 + i}\n" for i in range(5))
    assert len(read_text(tmp_path, text)) == 5


def test_crlf_line_ends_and_a_bom_are_accepted(tmp_path):
    text = "\ufeff" + ICD_EXAMPLE.replace("\n", "\r\n")
    assert [s.value for s in read_text(tmp_path, text)] == [101324.49, 295.001, 1.0]


def test_header_only_gives_no_samples(tmp_path):
    assert read_text(tmp_path, HEADER) == []


def test_gzip_files_are_read(tmp_path):
    path = tmp_path / "samples.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(ICD_EXAMPLE)
    assert [s.value for s in read_samples(str(path), NAMES)] == [101324.49, 295.001, 1.0]


def test_gzip_errors_name_the_line(tmp_path):
    path = tmp_path / "samples.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(ICD_EXAMPLE + "1780000001,p_prk,pressure,abc\n")
    with pytest.raises(SamplesError) as info:
        list(read_samples(str(path), NAMES))
    assert info.value.line == 5


GOOD = "1780000000,p_prk,pressure,101325\n"

# (id, text after the header and one good row, line of the error, fragment of the message)
BAD_ROWS = [
    ("bad value", "1780000001,p_prk,pressure,abc\n", 3, "'abc'"),
    ("too few fields", "1780000001,p_prk,pressure\n", 3, "3"),
    ("too many fields", "1780000001,p_prk,pressure,1,2\n", 3, "5"),
    ("unknown sensor", "1780000001,p_zv,pressure,101325\n", 3, "'p_zv'"),
    ("unknown quantity", "1780000001,p_prk,humidity,0.4\n", 3, "'humidity'"),
    ("temperature for a hatch", "1780000001,prk-hatch,temperature,295\n", 3, "'prk-hatch'"),
    ("hatch quantity for a sensor", "1780000001,p_prk,hatch,1\n", 3, "'p_prk'"),
    ("hatch value 0.5", "1780000001,prk-hatch,hatch,0.5\n", 3, "'0.5'"),
    ("time going backwards", "1779999999,p_prk,pressure,101325\n", 3, "1779999999"),
    ("nan value", "1780000001,p_prk,pressure,nan\n", 3, "'nan'"),
    ("inf value", "1780000001,p_prk,pressure,inf\n", 3, "'inf'"),
    ("-inf value", "1780000001,p_prk,pressure,-inf\n", 3, "'-inf'"),
    ("nan time", "nan,p_prk,pressure,101325\n", 3, "'nan'"),
    ("inf time", "inf,p_prk,pressure,101325\n", 3, "'inf'"),
    ("garbage time", "yesterday,p_prk,pressure,101325\n", 3, "'yesterday'"),
    ("time 1e300", "1e300,p_prk,pressure,101325\n", 3, "'1e300'"),
    ("time past the year 9999", "253402300800,p_prk,pressure,101325\n", 3, "'253402300800'"),
    ("negative time", "-1,p_prk,pressure,101325\n", 3, "'-1'"),
    ("ISO time before 1970", "1969-12-31T23:59:59+00:00,p_prk,pressure,101325\n", 3, "1969"),
    ("empty value", "1780000001,p_prk,pressure,\n", 3, "''"),
    ("backwards after good rows", "1780000002,p_prk,pressure,1\n1780000001,p_prk,pressure,1\n", 4, "1780000001"),
]


@pytest.mark.parametrize(("rows", "line", "fragment"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_names_its_line(tmp_path, rows, line, fragment):
    err = error_of(tmp_path, HEADER + GOOD + rows)
    assert err.line == line
    assert fragment in str(err)


def test_times_up_to_the_end_of_year_9999_are_fine(tmp_path):
    rows = "0,p_prk,pressure,1\n9999-12-31T23:59:59Z,p_prk,pressure,2\n"
    assert [s.time for s in read_text(tmp_path, HEADER + rows)] == [0.0, 253402300799.0]


@pytest.mark.parametrize(
    "last",
    ["1780000001,p_prk,pres", "1780000001,p_prk,pressure,10", "1780000001,p_prk,pressure,"],
    ids=["fewer fields", "half a number", "no value yet"],
)
def test_a_last_row_without_its_line_end_is_truncated_not_data(tmp_path, last):
    """A power cut mid-write leaves `...,10` of `...,101325`: read as data it would be a 10 Pa EMERGENCY."""
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + GOOD + last, encoding="utf-8", newline="")
    it = read_samples(str(path), NAMES)
    assert next(it).value == 101325.0, "the whole rows before it are still read"
    with pytest.raises(SamplesError) as info:
        next(it)
    assert info.value.line == 3
    assert "no line end" in str(info.value)


def test_a_last_row_with_its_line_end_is_data(tmp_path):
    assert [s.value for s in read_text(tmp_path, HEADER + GOOD + "1780000001,p_prk,pressure,10\r\n")] == [
        101325.0,
        10.0,
    ]


def test_a_header_without_a_line_end_is_an_empty_recording(tmp_path):
    assert read_text(tmp_path, HEADER.rstrip("\n")) == []


def _gzipped_rows(n: int) -> bytes:
    return gzip.compress((HEADER + "".join(f"{1780000000 + i},p_prk,pressure,101325\n" for i in range(n))).encode())


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda z: z[: len(z) // 2], "ended before"),  # a copy cut short
        (lambda z: z[:-8], "ended before"),  # the trailer (CRC, size) missing
        (lambda z: z[:200] + b"\xff" * 64 + z[264:], "gzip"),  # bytes overwritten in the middle
        (lambda z: b"not gzip at all\n" + z, "Not a gzipped file"),
        (lambda z: z[:-8] + b"\0" * 8, "CRC"),  # a zeroed trailer
    ],
    ids=["truncated", "no trailer", "corrupt middle", "not gzip", "bad crc"],
)
def test_damaged_gzip_is_a_samples_error_naming_a_line(tmp_path, damage, fragment):
    err = error_of(tmp_path, damage(_gzipped_rows(5000)), name="samples.csv.gz")
    assert "damaged gzip data" in str(err) and fragment in str(err)
    assert err.line >= 1


def test_rows_before_a_bad_one_are_yielded(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + GOOD + "1780000001,p_prk,pressure,abc\n")
    it = read_samples(str(path), NAMES)
    assert next(it).value == 101325.0
    with pytest.raises(SamplesError):
        next(it)


@pytest.mark.parametrize(
    "text",
    [
        "when,who,what,how\n" + GOOD,
        "time,sensor,value,quantity\n" + GOOD,
        "time,sensor,quantity\n",
        GOOD,  # no header at all
    ],
    ids=["other names", "other order", "too few columns", "no header"],
)
def test_wrong_header_is_line_1(tmp_path, text):
    err = error_of(tmp_path, text)
    assert err.line == 1
    assert "header" in str(err)


def test_empty_file_is_line_1(tmp_path):
    err = error_of(tmp_path, "")
    assert err.line == 1
    assert "empty" in str(err)


def test_non_utf8_is_an_error(tmp_path):
    err = error_of(tmp_path, (HEADER + GOOD).encode() + b"1780000001,p_prk,pressure,1\xff\n")
    assert "UTF-8" in str(err)


def test_non_utf8_names_the_line_of_the_bad_byte(tmp_path):
    err = error_of(tmp_path, (HEADER + GOOD).encode() + b"1780000001,p_prk,pressure,1\xff\n")
    assert err.line == 3


def test_line_numbers_stay_physical_after_a_quoted_newline(tmp_path):
    err = error_of(tmp_path, HEADER + '1780000000,p_prk,pressure,"1\n"\n1780000001,p_prk,pressure,abc\n')
    assert err.line == 4  # header 1, quoted row 2-3, bad row 4


# -- format_row -> read_samples ---------------------------------------------------------

pressures = st.floats(min_value=0.0, max_value=500_000.0, allow_nan=False)
temperatures = st.floats(min_value=150.0, max_value=400.0, allow_nan=False)
times = st.integers(min_value=0, max_value=4_000_000_000_000_000).map(lambda us: float(f"{us / 1e6:.6f}"))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.one_of(
            st.tuples(st.just("p_prk"), st.just(P), pressures),
            st.tuples(st.just("t_prk"), st.just(T), temperatures),
            st.tuples(st.just("prk-hatch"), st.just(H), st.sampled_from([0.0, 1.0])),
        ),
        min_size=1,
        max_size=20,
    ),
    start=times,
    steps=st.lists(st.integers(min_value=0, max_value=5_000_000), min_size=20, max_size=20),
)
def test_format_row_round_trips_exactly(rows, start, steps):
    samples, t = [], start
    for (name, quantity, value), step in zip(rows, steps, strict=False):
        t = float(f"{t + step / 1e6:.6f}")
        samples.append(Sample(t, name, quantity, value))
    text = "time,sensor,quantity,value\n" + "".join(format_row(s) for s in samples)
    back = list(read_samples("<mem>", NAMES, stream=io.StringIO(text)))
    assert back == samples
    assert all(math.copysign(1.0, a.value) == math.copysign(1.0, b.value) for a, b in zip(back, samples, strict=True))


@given(t=st.floats(min_value=0.0, max_value=4e9, allow_nan=False), value=pressures)
def test_format_row_keeps_any_time_to_a_microsecond(t, value):
    row = format_row(Sample(t, "p_prk", P, value))
    assert row.endswith("\n") and row.count(",") == 3
    (back,) = read_samples("<mem>", NAMES, stream=io.StringIO("time,sensor,quantity,value\n" + row))
    assert abs(back.time - t) <= 1e-6
    assert back.value == value

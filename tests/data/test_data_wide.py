"""read_wide: every timestamp kind, CSV and Parquet and in-memory frames, the grid, and every rejection."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armt_ts.data import (DuplicateTimestampError, FormatError, NonFiniteValueError, SchemaError,
                          TimeSeriesFrame, TimestampError, UnsortedTimeError, ValueParseError, parse_freq,
                          read_wide)


def ts(*texts: str) -> np.ndarray:
    return np.array(texts, dtype="datetime64[ns]")


def write_parquet(tmp_path, df: pl.DataFrame, name: str = "data.parquet"):
    path = tmp_path / name
    df.write_parquet(path)
    return path


# ---------------------------------------------------------------------------------------------------
# Timestamp kinds


@pytest.mark.parametrize("cells, expected", [
    (["2020-01-01 00:00:00", "2020-01-01 01:00:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020-01-01T00:00:00", "2020-01-01T01:00:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020-01-01 00:00", "2020-01-01 01:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020/01/01 00:00:00", "2020/01/01 01:00:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020-01-01 00:00:00.500", "2020-01-01 00:00:01.500"], ["2020-01-01T00:00:00.5", "2020-01-01T00:00:01.5"]),
    (["2020-01-01", "2020-01-02"], ["2020-01-01", "2020-01-02"]),
    # midnight written as a bare date beside full datetimes (some exporters do this)
    (["2020-01-01", "2020-01-01 12:00:00"], ["2020-01-01T00:00", "2020-01-01T12:00"]),
    (["2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020-01-01T00", "2020-01-01T01"], ["2020-01-01T00:00", "2020-01-01T01:00"]),  # numpy datetime64[h]
    (["2020-01-01T01+01:00", "2020-01-01 02+01:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["2020-01-01 01:00:00+01:00", "2020-01-01 02:00:00+01:00"], ["2020-01-01T00:00", "2020-01-01T01:00"]),
    (["1577836800", "1577840400"], ["2020-01-01T00:00", "2020-01-01T01:00"]),  # epoch seconds
    (["1577836800000", "1577840400000"], ["2020-01-01T00:00", "2020-01-01T01:00"]),  # epoch milliseconds
])
def test_csv_timestamp_kinds(write_csv, cells, expected):
    path = write_csv("timestamp,x\n" + "".join(f"{c},{i}\n" for i, c in enumerate(cells)))
    frame = read_wide(path)
    np.testing.assert_array_equal(frame.timestamps, ts(*expected))
    np.testing.assert_array_equal(frame.values[:, 0], [0.0, 1.0])


def test_epoch_unit_can_be_given(write_csv):
    path = write_csv("time,x\n1577836800000,1\n1577836860000,2\n")
    assert read_wide(path, time_unit="ms").freq == "1m"
    # the same numbers read as microseconds land in 1970, a minute's worth of ms apart = 60 ms
    assert read_wide(path, time_unit="us").freq == "60ms"


def test_time_format(write_csv):
    path = write_csv("day,x\n20200101,1\n20200102,2\n")
    frame = read_wide(path, timestamp="day", time_format="%Y%m%d")
    np.testing.assert_array_equal(frame.timestamps, ts("2020-01-01", "2020-01-02"))
    assert frame.freq == "1d"


def test_parquet_typed_timestamps(tmp_path):
    base = dt.datetime(2020, 1, 1)
    stamps = [base + dt.timedelta(minutes=10 * i) for i in range(3)]
    for col in (pl.Series(stamps),
                pl.Series(stamps).dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Berlin"),
                pl.Series([int(s.replace(tzinfo=dt.timezone.utc).timestamp()) for s in stamps]),
                pl.Series([int(s.replace(tzinfo=dt.timezone.utc).timestamp() * 1000) for s in stamps])):
        path = write_parquet(tmp_path, pl.DataFrame({"time": col, "x": [1.0, 2.0, 3.0]}))
        frame = read_wide(path)
        np.testing.assert_array_equal(frame.timestamps, ts("2020-01-01T00:00", "2020-01-01T00:10", "2020-01-01T00:20"))
        assert frame.freq == "10m"


def test_parquet_dates_and_numeric_types(tmp_path):
    df = pl.DataFrame({"d": [dt.date(2020, 1, 1), dt.date(2020, 1, 2)], "i": [1, 2], "f": [0.5, float("nan")],
                       "s": ["3.5", None]})
    frame = read_wide(write_parquet(tmp_path, df))
    assert frame.channels == ["i", "f", "s"] and frame.freq == "1d"
    np.testing.assert_array_equal(frame.values, [[1, 0.5, 3.5], [2, 0, 0]])
    np.testing.assert_array_equal(frame.observed, [[1, 1, 1], [1, 0, 0]])


def test_frames_are_accepted(write_csv):
    index = pd.date_range("2020-01-01", periods=3, freq="h")
    pdf = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": ["1", 2.5, None]}, index=index)  # object column mixes types
    frame = read_wide(pdf)
    assert frame.source == "<frame>" and frame.channels == ["a", "b"] and frame.freq == "1h"
    np.testing.assert_array_equal(frame.observed, [[1, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(frame.values, [[1, 1], [0, 2.5], [3, 0]])
    pl_frame = pl.DataFrame({"date": ["2020-01-01", "2020-01-02"], "v": [1.0, 2.0]})
    for source in (pl_frame, pl_frame.lazy()):
        assert read_wide(source).values.tolist() == [[1.0], [2.0]]


def test_time_zones_are_converted_to_utc_and_mixing_is_rejected(write_csv, assert_names):
    path = write_csv("date,x\n2020-01-01 00:00+02:00,1\n2020-01-01 01:00+0200,2\n")
    np.testing.assert_array_equal(read_wide(path).timestamps, ts("2019-12-31T22:00", "2019-12-31T23:00"))
    # local time with its offset across a DST change: each cell converted by its own offset, an hourly UTC grid
    # (as the same instants in a time-zone-aware pandas column)
    path = write_csv("date,x\n2024-03-31T01:00:00+01:00,1\n2024-03-31T03:00:00+02:00,2\n"
                     "2024-03-31T04:00:00+02:00,3\n")
    frame = read_wide(path)
    np.testing.assert_array_equal(frame.timestamps, ts("2024-03-31T00:00", "2024-03-31T01:00", "2024-03-31T02:00"))
    assert frame.values[:, 0].tolist() == [1.0, 2.0, 3.0] and frame.observed.all()
    aware = pd.DataFrame({"date": pd.date_range("2024-03-31", periods=6, freq="h", tz="Europe/Berlin"),
                          "x": np.arange(6.0)})
    csv = write_csv(aware.assign(date=aware["date"].map(lambda t: t.isoformat())).to_csv(index=False), "dst.csv")
    np.testing.assert_array_equal(read_wide(csv).timestamps, read_wide(aware).timestamps)
    path = write_csv("date,x\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n2020-01-01T02:00:00Z,3\n")
    with pytest.raises(TimestampError, match="mixed time zones") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "date")


def test_timestamp_rejections(write_csv, assert_names):
    cases = [
        ("date,x\n2020-01-01,1\n,2\n", 2, "missing"),
        ("date,x\n2020-01-01,1\n2020-13-45,2\n", 2, "cannot read '2020-13-45'"),
        ("date,x\n2020-01-01,1\nyesterday,2\n", 2, "cannot read 'yesterday'"),
        ("date,x\n1577836800,1\n2020-01-01,2\n", 2, "not an epoch number"),
        ("date,x\n1577836800000,1\n1577836860,2\n", 2, "mixed epoch units"),
        ("date,x\n99999999999,1\n", 1, "outside the years"),
    ]
    for text, row, problem in cases:
        path = write_csv(text)
        with pytest.raises(TimestampError, match=problem) as err:
            read_wide(path, freq="1d")
        assert_names(err.value, path, row, "date")


def test_timestamp_column_inference(write_csv, assert_names):
    assert read_wide(write_csv("x,TIME,y\n1,2020-01-01,2\n3,2020-01-02,4\n")).channels == ["x", "y"]
    frame = read_wide(write_csv("when,y\n2020-01-01 00:00,2\n2020-01-01 00:05,4\n"))  # first column holds dates
    assert frame.channels == ["y"] and frame.freq == "5m"
    path = write_csv("a,b\n1577836800,1\n1577836860,2\n")  # epoch numbers are only taken from a named column
    with pytest.raises(SchemaError, match="no timestamp column") as err:
        read_wide(path)
    assert_names(err.value, path, None, "a")
    assert read_wide(path, timestamp="a").channels == ["b"]


def test_single_timestamp_needs_freq(write_csv, assert_names):
    path = write_csv("date,x\n2020-01-01,1\n")
    with pytest.raises(TimestampError, match="single distinct timestamp") as err:
        read_wide(path)
    assert_names(err.value, path, None, "date")
    assert read_wide(path, freq="1d").values.shape == (1, 1)


# ---------------------------------------------------------------------------------------------------
# Grid, gaps, frequency


def test_gaps_go_on_the_grid_with_mask_zero(write_csv):
    path = write_csv("date,a,b\n"
                     "2020-01-01 00:00,1,10\n"
                     "2020-01-01 01:00,2,\n"       # empty cell
                     "2020-01-01 04:00,NaN,40\n"   # NaN cell after a 2-step gap
                     "2020-01-01 05:00,nan,NA\n")
    frame = read_wide(path)
    assert frame.freq == "1h" and frame.n_steps == 6
    np.testing.assert_array_equal(frame.timestamps, np.arange("2020-01-01T00", "2020-01-01T06",
                                                              dtype="datetime64[h]").astype("datetime64[ns]"))
    np.testing.assert_array_equal(frame.observed, [[1, 1], [1, 0], [0, 0], [0, 0], [0, 1], [0, 0]])
    # never interpolated: missing cells are 0.0, not a blend of their neighbours
    np.testing.assert_array_equal(frame.values, [[1, 10], [2, 0], [0, 0], [0, 0], [0, 40], [0, 0]])
    assert frame.values.dtype == np.float32 and frame.observed.dtype == np.float32
    np.testing.assert_array_equal(frame.rows_per_step, [1, 1, 0, 0, 1, 1])


def test_given_freq_makes_a_finer_grid(write_csv):
    path = write_csv("date,a\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n")
    frame = read_wide(path, freq="30m")
    assert frame.freq == "30m"
    np.testing.assert_array_equal(frame.observed[:, 0], [1, 0, 1])


def test_off_grid_timestamp_is_rejected(write_csv, assert_names):
    path = write_csv("date,a\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n2020-01-01 01:30,3\n2020-01-01 03:00,4\n"
                     "2020-01-01 04:00,5\n")
    with pytest.raises(TimestampError, match="not on the regular 1h grid") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "date")


def test_calendar_frequency(write_csv):
    path = write_csv("date,a\n2020-01-31,1\n2020-02-29,2\n2020-04-30,4\n")
    frame = read_wide(path, freq="1mo")
    np.testing.assert_array_equal(frame.timestamps, ts("2020-01-31", "2020-02-29", "2020-03-31", "2020-04-30"))
    np.testing.assert_array_equal(frame.observed[:, 0], [1, 1, 0, 1])


def test_freq_strings():
    assert parse_freq("1h30m").text == "90m" and parse_freq("1h30m").pandas == "90min"
    assert parse_freq("60m").text == "1h" and parse_freq("1h").pandas == "h"
    assert parse_freq("10m").pandas == "10min" and parse_freq("1d").pandas == "D"
    assert parse_freq("3mo").pandas == "Q" and parse_freq("2y").pandas == "2Y"
    for bad in ("1 hour", "h", "0h", "1mo1d", "10min"):
        with pytest.raises(ValueError):
            parse_freq(bad)


# ---------------------------------------------------------------------------------------------------
# Order and duplicates


def test_unsorted_time_is_rejected_or_sorted(write_csv, assert_names):
    path = write_csv("date,a\n2020-01-01 00:00,0\n2020-01-01 02:00,2\n2020-01-01 01:00,1\n")
    with pytest.raises(UnsortedTimeError, match="time goes backwards") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "date")
    frame = read_wide(path, sort=True)
    np.testing.assert_array_equal(frame.values[:, 0], [0, 1, 2])


DUPLICATES = ("date,a,b\n"
              "2020-01-01 00:00,1,\n"
              "2020-01-01 01:00,2,20\n"
              "2020-01-01 01:00,,40\n"
              "2020-01-01 01:00,6,\n"
              "2020-01-01 02:00,3,30\n")


def test_duplicates_are_rejected_by_default(write_csv, assert_names):
    path = write_csv(DUPLICATES)
    with pytest.raises(DuplicateTimestampError, match="repeats row 2") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "date")


@pytest.mark.parametrize("how, row1", [("mean", [4, 30]), ("sum", [8, 60]), ("first", [2, 20]), ("last", [6, 40])])
def test_duplicates_aggregate_over_observed_cells(write_csv, how, row1):
    frame = read_wide(write_csv(DUPLICATES), aggregate=how)
    np.testing.assert_array_equal(frame.values, [[1, 0], row1, [3, 30]])
    np.testing.assert_array_equal(frame.observed, [[1, 0], [1, 1], [1, 1]])
    np.testing.assert_array_equal(frame.rows_per_step, [1, 3, 1])


def test_aggregate_keeps_all_missing_cells_missing(write_csv):
    frame = read_wide(write_csv("date,a\n2020-01-01,\n2020-01-01,nan\n2020-01-02,1\n"), aggregate="sum")
    np.testing.assert_array_equal(frame.observed[:, 0], [0, 1])
    with pytest.raises(ValueError, match="aggregate"):
        read_wide(write_csv(DUPLICATES), aggregate="median")


# ---------------------------------------------------------------------------------------------------
# Cells and columns


def test_value_rejections(write_csv, tmp_path, assert_names):
    path = write_csv("date,a,b\n2020-01-01,1,2\n2020-01-02,3,abc\n")
    with pytest.raises(ValueParseError, match="cannot read 'abc' as a number") as err:
        read_wide(path)
    assert_names(err.value, path, 2, "b")
    path = write_csv("date,a,b\n2020-01-01,1,2\n2020-01-02,1,2\n2020-01-03,-inf,2\n")
    with pytest.raises(NonFiniteValueError, match="infinite") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "a")
    path = write_csv("date,a\n2020-01-01,\"1,5\"\n2020-01-02,2\n")  # decimal comma: not silently 15 or 1
    with pytest.raises(ValueParseError) as err:
        read_wide(path)
    assert_names(err.value, path, 1, "a")
    parquet = write_parquet(tmp_path, pl.DataFrame({"date": ["2020-01-01", "2020-01-02"], "a": [1.0, float("inf")]}))
    with pytest.raises(NonFiniteValueError) as err:
        read_wide(parquet)
    assert_names(err.value, parquet, 2, "a")
    parquet = write_parquet(tmp_path, pl.DataFrame({"date": ["2020-01-01", "2020-01-02"], "a": [None, True]}))
    with pytest.raises(ValueParseError, match="Boolean") as err:
        read_wide(parquet)
    assert_names(err.value, parquet, 2, "a")


def test_odd_column_names_are_kept(write_csv, tmp_path):
    names = ["SWDR (W/m\ufffd)", "PAR (\ufffdmol/m\ufffd/s)", "a, b", " spaced name ", "*", "^x$"]
    header = "date," + ",".join(f'"{n}"' if "," in n else n for n in names)
    path = write_csv(header + "\n2020-01-01,1,2,3,4,5,6\n2020-01-02,7,8,9,10,11,12\n")
    frame = read_wide(path)
    assert frame.channels == names
    np.testing.assert_array_equal(frame.values[1], [7, 8, 9, 10, 11, 12])
    assert read_wide(path, channels=["^x$", "a, b"]).values[0].tolist() == [6, 3]
    unnamed_time = write_csv("^t$,*\n2020-01-01,1\n2020-01-02,2\n", name="star.csv")
    assert read_wide(unnamed_time).channels == ["*"]
    parquet = tmp_path / "odd.parquet"
    frame.to_polars().write_parquet(parquet)
    again = read_wide(parquet)
    assert again.channels == names
    np.testing.assert_array_equal(again.values, frame.values)


def test_schema_rejections(write_csv, assert_names):
    path = write_csv("date,a,a\n2020-01-01,1,2\n")
    with pytest.raises(SchemaError, match="twice") as err:
        read_wide(path)
    assert_names(err.value, path, None, "a")
    path = write_csv("date,a\n2020-01-01,1\n2020-01-02,2\n")
    with pytest.raises(SchemaError, match="no value \\(channel\\) column named 'OT'") as err:
        read_wide(path, channels=["a", "OT"])
    assert_names(err.value, path, None, "OT")
    with pytest.raises(SchemaError, match="no timestamp column named 'ts'") as err:
        read_wide(path, timestamp="ts")
    assert_names(err.value, path, None, "ts")
    with pytest.raises(SchemaError, match="used twice"):
        read_wide(path, channels=["date"])
    with pytest.raises(SchemaError, match="no channel column") as err:
        read_wide(write_csv("date\n2020-01-01\n"))


def test_format_rejections(write_csv, tmp_path, assert_names):
    path = write_csv("date,a\n2020-01-01,1\n2020-01-02,2,3\n2020-01-03,1\n")
    with pytest.raises(FormatError, match="3 fields") as err:
        read_wide(path)
    assert_names(err.value, path, 2, None)
    path = write_csv(b"date,a\n2020-01-01,1\n2020-01-02,\xb2\n")
    with pytest.raises(FormatError, match="not valid UTF-8") as err:
        read_wide(path)
    assert_names(err.value, path, 2, None)
    path = write_csv(b"date,\xb2\n2020-01-01,1\n")
    with pytest.raises(FormatError, match="header line is not valid UTF-8"):
        read_wide(path)
    for text in ("", "date,a\n"):
        with pytest.raises(FormatError):
            read_wide(write_csv(text))
    with pytest.raises(FormatError, match="unknown file suffix"):
        read_wide(write_csv("date,a\n2020-01-01,1\n", name="data.xlsx"))
    bad_parquet = write_csv(b"PAR1 not really parquet", name="bad.parquet")
    with pytest.raises(FormatError):
        read_wide(bad_parquet)
    with pytest.raises(FileNotFoundError):
        read_wide(tmp_path / "absent.csv")


def test_short_rows_are_missing_cells(write_csv):
    frame = read_wide(write_csv("date,a,b\n2020-01-01,1,2\n2020-01-02,3\n"))
    np.testing.assert_array_equal(frame.observed, [[1, 1], [1, 0]])


def test_blank_line_is_a_row_with_a_missing_timestamp(write_csv, assert_names):
    path = write_csv("date,a\n2020-01-01,1\n\n2020-01-02,2\n")
    with pytest.raises(TimestampError, match="missing") as err:
        read_wide(path)
    assert_names(err.value, path, 2, "date")


# ---------------------------------------------------------------------------------------------------
# Round trip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_round_trip_through_csv_and_parquet(tmp_path, data):
    T = data.draw(st.integers(2, 30))
    C = data.draw(st.integers(1, 4))
    values = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=T * C, max_size=T * C)),
                      dtype=np.float32).reshape(T, C)
    observed = np.array(data.draw(st.lists(st.booleans(), min_size=T * C, max_size=T * C))).reshape(T, C)
    observed[0] = observed[-1] = True  # the grid spans first..last timestamp
    stamps = np.datetime64("2021-03-01T00:00", "ns") + np.arange(T) * np.timedelta64(15, "m")
    frame = TimeSeriesFrame(stamps, np.where(observed, values, 0).astype(np.float32), observed.astype(np.float32),
                            [f"c{j}" for j in range(C)], "15m")
    table = frame.to_polars()
    # rows that are fully unobserved become gaps in the file: the grid must bring them back
    table = table.filter(pl.any_horizontal(pl.all().exclude("timestamp").is_not_null()))
    for path, writer in ((tmp_path / "rt.csv", table.write_csv), (tmp_path / "rt.parquet", table.write_parquet)):
        writer(path)
        back = read_wide(path, freq="15m")
        np.testing.assert_array_equal(back.timestamps, frame.timestamps)
        np.testing.assert_array_equal(back.observed, frame.observed)
        np.testing.assert_array_equal(back.values, frame.values)


def test_typed_timestamp_rejections(tmp_path, assert_names):
    far = write_parquet(tmp_path, pl.DataFrame({"date": [dt.datetime(2020, 1, 1), dt.datetime(2500, 1, 1)],
                                                "a": [1.0, 2.0]}))
    with pytest.raises(TimestampError, match="outside the years") as err:
        read_wide(far)
    assert_names(err.value, far, 2, "date")
    typed = write_parquet(tmp_path, pl.DataFrame({"date": [dt.date(2020, 1, 1), dt.date(2020, 1, 2)], "a": [1, 2]}))
    with pytest.raises(TimestampError, match="time_unit") as err:
        read_wide(typed, time_unit="s")
    assert_names(err.value, typed, None, "date")
    index = pd.date_range("2020-01-01", periods=2, freq="D", name="a")
    with pytest.raises(SchemaError, match="DatetimeIndex"):
        read_wide(pd.DataFrame({"a": [1.0, 2.0]}, index=index))


def test_a_mistyped_year_does_not_build_a_huge_grid(write_csv, assert_names):
    path = write_csv("date,a\n2020-01-01 00:00:00,1\n2020-01-01 00:00:01,2\n2200-01-01 00:00:02,3\n")
    with pytest.raises(TimestampError, match="would have") as err:
        read_wide(path)
    assert_names(err.value, path, 3, "date")
    path = write_csv("date,a\n2020-01-01 00:00:00,1\n2920-01-01 00:00:01,2\n")
    with pytest.raises(TimestampError, match="outside the years") as err:
        read_wide(path)
    assert_names(err.value, path, 2, "date")


def test_a_variation_float32_cannot_hold_is_warned_about_once(write_csv):
    """The model computes in float32: 1e9 + sin rounds to steps of 64 and its variation is lost. The reader keeps
    the values (as float32, what the model sees) and names the first such column, counting the others."""
    from armt_ts.data import PrecisionWarning

    rows = "".join(f"2024-01-01 {h:02d}:00,{1e9 + np.sin(h):.6f},{1.7e9 + h},{10 + np.sin(h):.6f}\n"
                   for h in range(24))
    path = write_csv("date,offset,counter,plain\n" + rows)
    with pytest.warns(PrecisionWarning) as caught:
        frame = read_wide(path)
    assert len(caught) == 1
    w = caught[0].message
    assert (w.file, w.column) == (str(path), "offset")
    assert "column 'offset': values of magnitude up to 1e+09" in str(w) and "(1 more column like it)" in str(w)
    assert "subtract an offset" in str(w)
    assert frame.values.dtype == np.float32 and np.ptp(frame.values[:, 0]) <= 128  # kept as the model sees them
    ok = write_csv("date,a,b\n" + "".join(f"2024-01-01 {h:02d}:00,{1e4 + np.sin(h):.4f},{1e-30 * h}\n"
                                          for h in range(24)), name="ok.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_wide(ok)  # float32 holds 1e4 + sin to 0.001 and tiny values to 7 digits: no warning

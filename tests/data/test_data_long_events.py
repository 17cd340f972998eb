"""read_long and read_events: layouts, CSV and Parquet, and every rejection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from armt_ts.data import (DuplicateTimestampError, NonFiniteValueError, SchemaError, TimestampError,
                          UnsortedTimeError, ValueParseError, read_events, read_long)

LONG = ("timestamp,series_id,channel,value\n"
        "2020-01-01 00:00,B,temp,1\n"
        "2020-01-01 00:00,B,load,10\n"
        "2020-01-01 00:00,A,temp,100\n"
        "2020-01-01 01:00,B,temp,2\n"
        "2020-01-01 01:00,B,load,\n"
        "2020-01-01 02:00,A,temp,300\n"
        "2020-01-01 03:00,A,load,400\n")


def to_parquet(csv_path, tmp_path):
    path = tmp_path / "data.parquet"
    pl.read_csv(csv_path, infer_schema=False).write_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_long_with_channels_on_a_shared_grid(write_csv, tmp_path, fmt):
    path = write_csv(LONG)
    if fmt == "parquet":
        path = to_parquet(path, tmp_path)
    frame = read_long(path)
    assert frame.series_ids == ["B", "A"] and frame.channels == ["temp", "load"]  # order of first appearance
    assert frame.values.shape == (2, 4, 2) and frame.freq == "1h"
    # B ends at 01:00 and A starts at 00:00 with a gap: outside a span and in gaps the mask is 0
    np.testing.assert_array_equal(frame.observed[0], [[1, 1], [1, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(frame.observed[1], [[1, 0], [0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(frame.values[1], [[100, 0], [0, 0], [300, 0], [0, 400]])
    b = frame.series("B")
    assert b.values.shape == (4, 2) and b.series_ids is None
    assert frame.to_polars().height == 8


def test_long_without_channel_column_and_typed_ids(tmp_path):
    df = pl.DataFrame({"time": [1577836800, 1577836860, 1577836800], "id": [7, 7, 8], "target": [1.0, 2.0, 3.0]})
    path = tmp_path / "long.parquet"
    df.write_parquet(path)
    frame = read_long(path)
    assert frame.series_ids == ["7", "8"] and frame.channels == ["target"] and frame.freq == "1m"
    np.testing.assert_array_equal(frame.values[:, :, 0], [[1, 2], [3, 0]])


def test_long_channel_major_order_is_sorted(write_csv):
    # a melted table lists one channel after the other: time restarts per channel, which is fine
    frame = read_long(write_csv("date,entity,variable,value\n"
                                "2020-01-01,e,a,1\n2020-01-02,e,a,2\n2020-01-01,e,b,3\n2020-01-02,e,b,4\n"))
    np.testing.assert_array_equal(frame.values[0], [[1, 3], [2, 4]])


def test_long_rejections(write_csv, assert_names):
    path = write_csv("timestamp,series_id,value\n2020-01-02,A,1\n2020-01-01,A,2\n")
    with pytest.raises(UnsortedTimeError, match="series 'A'") as err:
        read_long(path)
    assert_names(err.value, path, 2, "timestamp")
    np.testing.assert_array_equal(read_long(path, sort=True).values[0, :, 0], [2, 1])

    path = write_csv("timestamp,series_id,channel,value\n2020-01-01,A,x,1\n2020-01-01,A,y,2\n2020-01-01,A,x,3\n")
    with pytest.raises(DuplicateTimestampError, match="repeats row 1 in series 'A', channel 'x'") as err:
        read_long(path, freq="1d")
    assert_names(err.value, path, 3, "timestamp")
    np.testing.assert_array_equal(read_long(path, freq="1d", aggregate="last").values[0], [[3, 2]])

    path = write_csv("timestamp,series_id,value,site\n2020-01-01,A,1,north\n")
    with pytest.raises(SchemaError, match="unexpected column") as err:
        read_long(path)
    assert_names(err.value, path, None, "site")

    path = write_csv("timestamp,value\n2020-01-01,1\n")
    with pytest.raises(SchemaError, match="no series id column") as err:
        read_long(path)
    assert_names(err.value, path, None, None)

    path = write_csv("timestamp,series_id,value\n2020-01-01,A,1\n2020-01-02,,2\n")
    with pytest.raises(ValueParseError, match="series id is missing") as err:
        read_long(path)
    assert_names(err.value, path, 2, "series_id")

    path = write_csv("timestamp,series_id,value\n2020-01-01,A,1\n2020-01-02,A,x1\n")
    with pytest.raises(ValueParseError, match="'x1'") as err:
        read_long(path)
    assert_names(err.value, path, 2, "value")

    path = write_csv("timestamp,series_id,value\n2020-01-01 00:00,A,1\n2020-01-01 01:00,B,1\n"
                     "2020-01-01 01:00,A,1\n2020-01-01 02:00,A,1\n2020-01-01 02:20,B,1\n")
    with pytest.raises(TimestampError, match="not on the regular 1h grid") as err:
        read_long(path)
    assert_names(err.value, path, 5, "timestamp")


EVENTS = ("timestamp,entity,event_type,value\n"
          "2020-01-01 00:00:05,pump-1,start,\n"
          "2020-01-01 00:00:05,pump-2,start,1.5\n"
          "2020-01-01 00:01:00,pump-1,pressure,NaN\n"
          "2020-01-01 00:03:00,pump-1,stop,2\n")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_events(write_csv, tmp_path, fmt):
    path = write_csv(EVENTS)
    if fmt == "parquet":
        path = to_parquet(path, tmp_path)
    events = read_events(path)
    assert events.schema == pl.Schema({"timestamp": pl.Datetime("ns"), "entity": pl.String,
                                       "event_type": pl.String, "value": pl.Float64})
    assert events["entity"].to_list() == ["pump-1", "pump-2", "pump-1", "pump-1"]
    assert events["value"].to_list() == [None, 1.5, None, 2.0]
    assert events["timestamp"].is_sorted()


def test_events_without_value_and_sorting(write_csv, assert_names):
    path = write_csv("time,id,type\n1577836860,a,x\n1577836800,b,y\n")
    with pytest.raises(UnsortedTimeError) as err:
        read_events(path)
    assert_names(err.value, path, 2, "time")
    events = read_events(path, sort=True)
    assert events["entity"].to_list() == ["b", "a"] and events["value"].null_count() == 2


def test_event_rejections(write_csv, assert_names):
    path = write_csv("timestamp,entity,event_type\n2020-01-01,a,\n")
    with pytest.raises(ValueParseError, match="event type is missing") as err:
        read_events(path)
    assert_names(err.value, path, 1, "event_type")
    path = write_csv("timestamp,entity,event_type,value\n2020-01-01,a,x,1\n2020-01-02,a,x,inf\n")
    with pytest.raises(NonFiniteValueError) as err:
        read_events(path)
    assert_names(err.value, path, 2, "value")
    path = write_csv("timestamp,entity,event_type,note\n2020-01-01,a,x,hello\n")
    with pytest.raises(SchemaError, match="unexpected column") as err:
        read_events(path)
    assert_names(err.value, path, None, "note")
    path = write_csv("timestamp,entity,kind\n2020-01-01,a,x\n")
    with pytest.raises(SchemaError, match="no event type column"):
        read_events(path)
    assert read_events(path, event_type="kind")["event_type"].to_list() == ["x"]


def test_event_ids_from_typed_frames_and_folders():
    """Whole floats name an event type as an integer column does; a float NaN is a missing id; a column of lists is
    a SchemaError, not a polars exception; a folder is a FormatError naming it."""
    from armt_ts.data import FormatError, SchemaError, ValueParseError

    ts = ["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:02"]
    floats = pl.DataFrame({"timestamp": ts, "entity": [" a", "a ", "a"], "event_type": [1.0, 3.0, 2.0]})
    ints = pl.DataFrame({"timestamp": ts, "entity": ["a", "a", "a"], "event_type": [1, 3, 2]})
    assert read_events(floats).select(["entity", "event_type"]).rows() == [("a", "1"), ("a", "3"), ("a", "2")]
    assert read_events(floats).equals(read_events(ints))
    with pytest.raises(ValueParseError, match="row 2, column 'event_type': the event type is missing"):
        read_events(floats.with_columns(pl.Series("event_type", [1.0, float("nan"), 2.0])))
    with pytest.raises(SchemaError, match="column 'event_type': the event type column holds List"):
        read_events(floats.with_columns(pl.Series("event_type", [[1], [2], [3]])))
    assert read_events(floats.with_columns(pl.Series("event_type", [1.5, 2.0, 1.5])))["event_type"].to_list() == [
        "1.5", "2.0", "1.5"]  # not all whole: as written
    with pytest.raises(FormatError, match="this is a folder, not a file"):
        read_events(Path(__file__).parent)


def test_long_names_the_series_whose_variation_float32_cannot_hold(write_csv):
    from armt_ts.data import PrecisionWarning, read_long

    rows = "".join(f"2024-01-01 {h:02d}:00,{sid},{base + np.sin(h):.6f}\n"
                   for sid, base in (("x", 10.0), ("y", 1e15)) for h in range(24))
    path = write_csv("timestamp,series,value\n" + rows)
    with pytest.warns(PrecisionWarning, match=r"column 'value': series 'y': values of magnitude up to 1e\+15"):
        read_long(path)

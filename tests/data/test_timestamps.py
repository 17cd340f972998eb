"""A long file repeats each timestamp once per series. ``parse_timestamps`` parsed every cell (about 1.2 us each: 25 s
of a 20-million-row file with 1000 distinct times); it now parses each distinct cell once, with the same values and
errors naming the same (first) row."""

import numpy as np
import polars as pl
import pytest

from armt_ts.data import timegrid
from armt_ts.data.errors import TimestampError
from armt_ts.data.timegrid import parse_timestamps


def _parse(cells, **kw):
    return parse_timestamps(pl.Series("timestamp", cells), file="f.csv", column="timestamp", **kw)


def test_each_distinct_cell_is_parsed_once(monkeypatch):
    spelled = ["2020-01-01", "2020/01/02 03:00", "2020-01-03T04:05:06.5", "2020-01-04 05:06:07Z".replace("Z", "")]
    cells = [spelled[i % 4] for i in range(4000)]
    seen = []
    real = timegrid._parse_strings
    monkeypatch.setattr(timegrid, "_parse_strings", lambda s, *a, **k: seen.append(s.len()) or real(s, *a, **k))
    t = _parse(cells)
    assert seen == [4]
    expected = np.array(["2020-01-01T00:00", "2020-01-02T03:00", "2020-01-03T04:05:06.5", "2020-01-04T05:06:07"],
                        dtype="datetime64[ns]").view(np.int64)
    np.testing.assert_array_equal(t, expected[np.arange(4000) % 4])


def test_repeated_zoned_epoch_and_formatted_cells():
    zoned = ["2020-03-29 00:30+01:00", "2020-03-29 03:30+02:00"] * 50
    np.testing.assert_array_equal(_parse(zoned), np.array(["2020-03-28T23:30", "2020-03-29T01:30"] * 50,
                                                          dtype="datetime64[ns]").view(np.int64))
    epoch = ["1600000000", "1600003600"] * 50
    np.testing.assert_array_equal(_parse(epoch), np.array([1600000000, 1600003600] * 50) * 10**9)
    formatted = ["01.02.2020 10:00", "02.02.2020 10:00"] * 50
    np.testing.assert_array_equal(_parse(formatted, time_format="%d.%m.%Y %H:%M"),
                                  np.array(["2020-02-01T10:00", "2020-02-02T10:00"] * 50,
                                           dtype="datetime64[ns]").view(np.int64))


@pytest.mark.parametrize("bad, message", [
    ("2020-13-45 00:00", "cannot read"),              # not a date
    ("2020-01-01 00:00+02:00", "UTC offset"),           # a zoned cell among naive ones
    ("2300-01-01 00:00", "outside the years"),          # beyond datetime64[ns]
])
def test_an_error_names_the_first_row_of_the_bad_cell(bad, message):
    good = ["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00"]
    cells = good * 20
    cells[37] = cells[52] = cells[40] = bad  # first at row 38
    with pytest.raises(TimestampError, match=message) as info:
        _parse(cells)
    assert info.value.row == 38 and info.value.column == "timestamp" and info.value.file == "f.csv"


def test_mixed_epoch_units_name_the_first_row():
    cells = ["1600000000", "1600003600"] * 20
    cells[25] = cells[31] = "1600000000000"  # milliseconds among seconds
    with pytest.raises(TimestampError, match="mixed epoch units") as info:
        _parse(cells)
    assert info.value.row == 1  # the seconds cells are the odd ones out against the ms maximum: row 1 first


def test_a_missing_cell_is_still_named():
    cells = ["2020-01-01 00:00"] * 10 + [None] + ["2020-01-01 00:00"] * 5
    with pytest.raises(TimestampError, match="missing") as info:
        _parse(cells)
    assert info.value.row == 11

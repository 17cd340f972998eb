"""A long file's series ids are coded by ``readers._codes``. It sorted them as a numpy unicode array (an object
array of Python strings first): 7 s and a 2 GB transient for 20 million rows of 20000 ids, the peak of reading a
78 MB Parquet file. They are hashed by polars now."""

import tracemalloc

import numpy as np
import polars as pl

from armt_ts.data import read_long
from armt_ts.data.readers import _codes


def test_codes_keep_first_appearance_order():
    codes, names = _codes(pl.Series(["b", "a", "b", "c", "a", "é", "b"]))
    assert names == ["b", "a", "c", "é"]
    assert codes.dtype == np.int64 and codes.tolist() == [0, 1, 0, 2, 1, 3, 0]


def test_codes_build_no_python_strings_per_row():
    n = 400_000
    labels = pl.Series([f"series-{i % 3000:05d}" for i in range(n)])
    tracemalloc.start()
    try:
        codes, names = _codes(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(names) == 3000 and codes[3001] == 1
    # the codes themselves are 8 bytes a row; a Python string and a unicode cell per row were over 100
    assert peak < 24 * n, peak


def test_long_reader_names_series_in_first_appearance_order():
    df = pl.DataFrame({"timestamp": ["2024-01-01 00:00", "2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:00"],
                       "series_id": ["z", "a", "z", "a"], "value": [1.0, 2.0, 3.0, 4.0]})
    frame = read_long(df)
    assert frame.series_ids == ["z", "a"]
    np.testing.assert_array_equal(frame.values[:, :, 0], [[1.0, 3.0], [2.0, 4.0]])

"""Data layer: readers for wide / long / event tables (CSV, Parquet, polars, pandas), the regular time
grid with observed masks, the standard splits and z-scoring of DESIGN section 7, and GluonTS conversion.

Shapes: a single series is [T, C] (time, channels); several entities are [N, T, C]. Values always come
with an ``observed`` mask of the same shape (1 = observed); missing cells hold 0.0, never NaN.
"""

from armt_ts.data.errors import (DataError, DuplicateTimestampError, FormatError, NonFiniteValueError,
                                 PrecisionWarning, SchemaError, SuspiciousValueWarning, TimestampError,
                                 UnsortedTimeError, ValueParseError)
from armt_ts.data.frame import TimeSeriesFrame
from armt_ts.data.gluonts_conv import to_gluonts
from armt_ts.data.readers import read_events, read_long, read_wide
from armt_ts.data.splits import (DATASETS, Scaler, Split, Windows, count_windows, fit_scaler, sliding_windows,
                                 split_borders, standard_split)
from armt_ts.data.timegrid import Freq, parse_freq

__all__ = [
    "DATASETS", "DataError", "DuplicateTimestampError", "FormatError", "Freq", "NonFiniteValueError",
    "PrecisionWarning", "Scaler",
    "SchemaError", "Split", "SuspiciousValueWarning", "TimeSeriesFrame", "TimestampError", "UnsortedTimeError",
    "ValueParseError",
    "Windows", "count_windows", "fit_scaler", "parse_freq", "read_events", "read_long", "read_wide",
    "sliding_windows", "split_borders", "standard_split", "to_gluonts",
]

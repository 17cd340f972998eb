"""Readers for wide, long and event tables (DESIGN section 6): CSV or Parquet by suffix, or an in-memory
polars / pandas frame.

- wide: a timestamp column + one numeric column per channel (ETT, Weather)  -> TimeSeriesFrame [T, C]
- long: timestamp, series/entity id, [channel], value                        -> TimeSeriesFrame [N, T, C]
- events: timestamp, entity, event_type, [value]                            -> sorted polars DataFrame

Files are scanned lazily (``pl.scan_csv`` / ``pl.scan_parquet``) and only the needed columns are read.
CSV cells are read as text, so a bad cell is reported with its exact row, column and content.

Cell rules, the same for every reader:
- empty cells and ``NaN`` / ``nan`` / ``NA`` / ``N/A`` / ``null`` / ``None`` (any case) are missing: mask 0;
- +-inf is rejected (NonFiniteValueError): a fault to see, not a missing value to hide; so is a finite
  number beyond float32's range (|x| > 3.4e38, e.g. ``1e39``), which the float32 model would see as inf;
- a finite value of magnitude >= 1e20 (``1e30``, say) is kept as the number it is, with a
  SuspiciousValueWarning naming its file, row and column: such values are usually fill / sentinel values
  that the user should turn into empty cells;
- any other non-number is rejected (ValueParseError): ``1,5`` (decimal comma), ``0x10``, ``1_000``, text;
- a CSV row with fewer fields than the header has its trailing cells missing; one with more is rejected;
- id cells (series, channel, entity, event type) are names without their surrounding white space;
- a channel with no observed cell at all (all empty / NaN), or one whose first value comes late in the
  file, is kept: its cells are simply unobserved (mask 0) until it has values.

File-level rules for CSV (repairs, not errors): a UTF-8 byte-order mark is stripped; CRLF line ends are
accepted like LF; quoted fields may hold the separator, quotes (doubled) and line breaks, in names and in
cells. Rejected with a FormatError naming the file (and row where there is one): an empty file or blank
first line, a header line only, bytes that are not UTF-8 (the header, or the first data row holding such
bytes), bare-CR (classic Mac) line ends, a header of one column that contains ``;``, tab or ``|`` (another
separator: pass the file through a converter), an unterminated quote, a row with more fields than the header.
Wide files of many columns (100000 and more) are read column-parallel in one polars pass.

Time rules (wide and long): timestamps must be non-decreasing (per series and channel for long files)
unless ``sort=True``; a repeated timestamp is rejected unless ``aggregate`` is given; the regular grid
runs from the first to the last timestamp at ``freq`` (given, or the most common step); timestamps off
that grid are rejected; grid steps with no row are unobserved (mask 0), never interpolated.
Time zones (all readers): cells with a UTC offset (``Z``, ``+01:00``) and time-zone-aware Parquet / pandas
columns are converted to UTC (naive UTC timestamps come out), each cell by its own offset, so local time
across a DST change (``+01:00``, then ``+02:00``) lands on the UTC grid; a column that mixes naive and zoned
cells is rejected (TimestampError at the first differing row): the reader does not guess a naive cell's zone.
See ``timegrid`` for the accepted spellings.
Every rejection is a :class:`~armt_ts.data.errors.DataError` naming file, row and column.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Union

import numpy as np
import pandas as pd
import polars as pl

from armt_ts.data.errors import (DuplicateTimestampError, FormatError, NonFiniteValueError, PrecisionWarning,
                                 SchemaError, SuspiciousValueWarning, TimestampError, UnsortedTimeError,
                                 ValueParseError, pass_hint)
from armt_ts.data.frame import TimeSeriesFrame
from armt_ts.data.timegrid import (Freq, infer_step, parse_freq, parse_timestamps, place_on_grid, show_time,
                                   step_to_freq)

Source = Union[str, os.PathLike, pl.DataFrame, pl.LazyFrame, pd.DataFrame]
Aggregate = Literal["mean", "last", "first", "sum"]

# cells (stripped, lower case) that mean "missing"; public: ``armt-ts stream`` reads its cells by the same rules
MISSING_TEXT = ["", "nan", "-nan", "+nan", "na", "n/a", "null", "none"]
_TIME_NAMES = ("timestamp", "datetime", "date", "time")
# the id and value column names the long reader looks for (public: the CLI detects a long file by them)
ID_NAMES = ("series_id", "series", "entity_id", "entity", "item_id", "id")
_CHANNEL_NAMES = ("channel", "variable", "feature", "metric")
VALUE_NAMES = ("value", "target")
_EVENT_TYPE_NAMES = ("event_type", "type", "event")
_AGGREGATES = ("mean", "last", "first", "sum")
_AGGREGATE_VALUES = "|".join(repr(a) for a in _AGGREGATES)
_CSV_SUFFIXES = (".csv",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_EXPECTED_NUMBER = "a decimal number, or an empty cell / NaN for a missing value"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Magnitudes from here up are treated as likely fill / sentinel values (warned about, kept).
SUSPICIOUS_MAGNITUDE = 1e20
# Column lists in messages are cut to this many names (a header may have 100000 columns).
_SHOW_NAMES = 8


@dataclass(frozen=True)
class _Table:
    """A lazily scanned table: ``names`` exactly as in the source, ``csv_path`` to diagnose parse errors."""

    lazy: pl.LazyFrame
    file: str
    names: list[str]
    csv_path: Path | None = None

    @cached_property
    def positions(self) -> dict[str, int]:
        """Column name -> position (names are distinct: the CSV header check and pandas conversion ensure it)."""
        return {name: i for i, name in enumerate(self.names)}


def read_wide(source: Source, *, timestamp: str | None = None, channels: Sequence[str] | None = None,
              freq: str | None = None, aggregate: Aggregate | None = None, sort: bool = False,
              time_unit: str | None = None, time_format: str | None = None) -> TimeSeriesFrame:
    """Read a wide table (timestamp + one numeric column per channel) onto a regular grid.

    Args:
        source: path to a .csv / .parquet file, or a polars / pandas frame (a pandas DatetimeIndex
            becomes the timestamp column).
        timestamp: the time column; by default the first column named timestamp / datetime / date /
            time (any case), else the first column if it holds dates or ISO date strings (epoch numbers
            are only taken from a named or given column).
        channels: channel columns, in this order; default every other column.
        freq: grid step as a polars duration ("1h", "10m"); default the most common step.
        aggregate: how to merge rows with the same timestamp ("mean" | "last" | "first" | "sum",
            over the observed cells only; a channel with no observed cell stays missing).
            None: repeated timestamps raise DuplicateTimestampError.
        sort: sort rows by time (stably) instead of raising UnsortedTimeError.
        time_unit: unit of epoch-number timestamps ("s" | "ms" | "us" | "ns"); default by magnitude.
        time_format: strptime format for text timestamps that are not ISO-like.
    Returns:
        TimeSeriesFrame with values / observed [T, C].
    """
    _check_aggregate(aggregate)
    given = parse_freq(freq) if freq is not None else None
    table = _open(source)
    ts = _timestamp_column(table, timestamp)
    if channels is None:
        chans = [c for c in table.names if c != ts]
    else:
        chans = list(channels)
        for c in chans:
            _find(table, c, (), "value (channel)", "channels")
        _check_distinct(table, [ts, *chans])
    if not chans:
        raise SchemaError("there is no channel column", file=table.file, column=None,
                          expected="a timestamp column and at least one numeric column")
    df = _collect(table, [ts, *chans])
    t = parse_timestamps(df.to_series(0), file=table.file, column=ts, time_unit=time_unit,
                         time_format=time_format)
    v = _numeric_columns(df, chans, file=table.file, first=1)
    rows = np.arange(1, df.height + 1, dtype=np.int64)
    t, rows, v, _, merged = _order_and_dedupe(t, rows, v, None, sort=sort, aggregate=aggregate,
                                              file=table.file, column=ts, label=lambda g: "")
    grid_freq = given or _inferred_freq(t, None, table.file, ts)
    grid, pos = place_on_grid(t, rows, grid_freq, inferred=given is None, file=table.file, column=ts)
    ok = ~np.isnan(v)
    _check_float32_precision(v, None, len(chans), file=table.file, column=lambda j: chans[j], where=lambda j: "",
                             noun="column")
    values = np.zeros((grid.size, len(chans)), dtype=np.float32)
    observed = np.zeros_like(values)
    values[pos] = np.where(ok, v, 0.0)
    observed[pos] = ok
    rows_per_step = np.zeros(grid.size, dtype=np.int64)
    rows_per_step[pos] = merged
    return TimeSeriesFrame(grid.view("datetime64[ns]"), values, observed, chans, grid_freq.text, table.file,
                           rows_per_step=rows_per_step)


def read_long(source: Source, *, timestamp: str | None = None, series_id: str | None = None,
              channel: str | None = None, value: str | None = None, freq: str | None = None,
              aggregate: Aggregate | None = None, sort: bool = False, time_unit: str | None = None,
              time_format: str | None = None) -> TimeSeriesFrame:
    """Read a long table (timestamp, series id, [channel], value) into one [N, T, C] frame.

    Column names default to the first present of: timestamp as in :func:`read_wide`; series id
    series_id / series / entity_id / entity / item_id / id; channel channel / variable / feature /
    metric (optional: without it there is one channel named after the value column); value value /
    target. Any other column is rejected (SchemaError). Series ids and channels keep their order of
    first appearance. All series share one grid from the earliest to the latest timestamp (see
    :class:`TimeSeriesFrame`). Time must be non-decreasing within each (series, channel) unless
    ``sort=True``; a repeated (series, channel, timestamp) raises unless ``aggregate`` is given.
    Other arguments as in :func:`read_wide`.

    Returns:
        TimeSeriesFrame with values / observed [N, T, C] and ``series_ids`` (N).
    """
    _check_aggregate(aggregate)
    given = parse_freq(freq) if freq is not None else None
    table = _open(source)
    ts = _timestamp_column(table, timestamp)
    sid = _find(table, series_id, ID_NAMES, "series id", "series_id")
    ch = _find(table, channel, _CHANNEL_NAMES, "channel", "channel", required=False)
    val = _find(table, value, VALUE_NAMES, "value", "value")
    used = [c for c in (ts, sid, ch, val) if c is not None]
    _check_columns(table, used, "timestamp, series id, [channel], value")
    df = _collect(table, used)
    t = parse_timestamps(df.get_column(ts), file=table.file, column=ts, time_unit=time_unit,
                         time_format=time_format)
    v = _numeric(df.get_column(val), file=table.file, column=val)[:, None]
    ids, series_ids = _codes(_labels(df.get_column(sid), file=table.file, column=sid, role="series id"))
    if ch is None:
        chan_codes, chans = np.zeros(df.height, dtype=np.int64), [val]
    else:
        chan_codes, chans = _codes(_labels(df.get_column(ch), file=table.file, column=ch, role="channel"))
    n_chan = len(chans)
    rows = np.arange(1, df.height + 1, dtype=np.int64)
    t, rows, v, g, _ = _order_and_dedupe(
        t, rows, v, ids * n_chan + chan_codes, sort=sort, aggregate=aggregate, file=table.file, column=ts,
        label=lambda g: f" in series {series_ids[g // n_chan]!r}, channel {chans[g % n_chan]!r}")
    grid_freq = given or _inferred_freq(t, g, table.file, ts)
    grid, pos = place_on_grid(t, rows, grid_freq, inferred=given is None, file=table.file, column=ts)
    ok = ~np.isnan(v[:, 0])
    _check_float32_precision(v[:, 0], g, len(series_ids) * n_chan, file=table.file, column=lambda k: val,
                             where=lambda k: f"series {series_ids[k // n_chan]!r}"
                             + (f", channel {chans[k % n_chan]!r}" if ch is not None else "") + ": ", noun="series")
    values = np.zeros((len(series_ids), grid.size, n_chan), dtype=np.float32)
    observed = np.zeros_like(values)
    values[g // n_chan, pos, g % n_chan] = np.where(ok, v[:, 0], 0.0)
    observed[g // n_chan, pos, g % n_chan] = ok
    return TimeSeriesFrame(grid.view("datetime64[ns]"), values, observed, chans, grid_freq.text, table.file,
                           series_ids=series_ids)


def read_events(source: Source, *, timestamp: str | None = None, entity: str | None = None,
                event_type: str | None = None, value: str | None = None, sort: bool = False,
                time_unit: str | None = None, time_format: str | None = None) -> pl.DataFrame:
    """Read an event table (timestamp, entity, event_type, [value]), validated and sorted by time.

    Column names default to the first present of: timestamp as in :func:`read_wide`; entity as the
    series id of :func:`read_long`; event_type / type / event; value (optional). Any other column is
    rejected. Events are irregular by nature: no grid, and several events may share a timestamp.
    Empty entity or event_type cells are rejected; an empty / NaN value is null. Time must be
    non-decreasing in file order unless ``sort=True`` (a stable sort: ties keep file order).

    Returns:
        polars DataFrame with columns timestamp (Datetime[ns]), entity (String), event_type (String),
        value (Float64, null allowed), one row per event.
    """
    table = _open(source)
    ts = _timestamp_column(table, timestamp)
    ent = _find(table, entity, ID_NAMES, "entity", "entity")
    typ = _find(table, event_type, _EVENT_TYPE_NAMES, "event type", "event_type")
    val = _find(table, value, VALUE_NAMES, "value", "value", required=False)
    used = [c for c in (ts, ent, typ, val) if c is not None]
    _check_columns(table, used, "timestamp, entity, event_type, [value]")
    df = _collect(table, used)
    t = parse_timestamps(df.get_column(ts), file=table.file, column=ts, time_unit=time_unit,
                         time_format=time_format)
    rows = np.arange(1, df.height + 1, dtype=np.int64)
    if not sort:
        _check_order(t, rows, None, file=table.file, column=ts, label=lambda g: "")
    order = np.argsort(t, kind="stable")
    v = (np.full(df.height, np.nan) if val is None
         else _numeric(df.get_column(val), file=table.file, column=val))
    return pl.DataFrame({
        "timestamp": pl.Series(t[order].view("datetime64[ns]")).cast(pl.Datetime("ns")),
        "entity": _labels(df.get_column(ent), file=table.file, column=ent, role="entity").gather(order),
        "event_type": _labels(df.get_column(typ), file=table.file, column=typ, role="event type").gather(order),
        "value": pl.Series(v[order], dtype=pl.Float64).fill_nan(None),
    })


# ---------------------------------------------------------------------------------------------------
# Opening and collecting


def _open(source: Source) -> _Table:
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), str(source))
    if isinstance(source, pd.DataFrame):
        source = _from_pandas(source)
    if isinstance(source, pl.DataFrame):
        source = source.lazy()
    if isinstance(source, pl.LazyFrame):
        try:
            names = source.collect_schema().names()
        except pl.exceptions.PolarsError as err:
            raise FormatError(f"cannot read the frame's schema ({_first_line(err)})", file="<frame>",
                              expected="a polars or pandas frame") from err
        return _Table(source, "<frame>", names)
    raise TypeError(f"expected a path or a polars / pandas DataFrame, got {type(source).__name__}")


def _open_path(path: Path, file: str) -> _Table:
    if path.is_dir():
        raise FormatError("this is a folder, not a file", file=file, expected="a CSV or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {file!r}")
    suffix = path.suffix.lower()
    header: list[str] | None = None
    if suffix in _CSV_SUFFIXES:
        header = _check_csv_header(path, file)
        # Every cell as text: numbers are parsed here so a bad cell is reported with its content.
        lazy, csv_path, kind = pl.scan_csv(path, infer_schema=False, empty_string_is_null=True), path, "CSV"
    elif suffix in _PARQUET_SUFFIXES:
        lazy, csv_path, kind = pl.scan_parquet(path), None, "Parquet"
    else:
        raise FormatError(f"unknown file suffix {path.suffix!r}", file=file,
                          expected=f"one of {_CSV_SUFFIXES + _PARQUET_SUFFIXES}")
    try:
        names = lazy.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise FormatError(f"cannot read the {kind} file ({_first_line(err)})", file=file,
                          expected=f"a valid {kind} file") from err
    if header is not None and len(header) == len(names) and header != names:
        # polars keeps doubled quotes inside quoted header names ('say ""hi""'); use the RFC 4180 names.
        lazy = pl.scan_csv(path, infer_schema=False, empty_string_is_null=True, new_columns=header)
        names = header
    return _Table(lazy, file, names, csv_path=csv_path)


def _check_csv_header(path: Path, file: str) -> list[str]:
    """The header's column names (RFC 4180: quoted names may hold commas, doubled quotes and line breaks).

    Rejects an empty file, a non-UTF-8 header, bare-CR line ends, a single column that looks like another
    separator, and repeated names, which polars would quietly rename ('a_duplicated_0') or decode lossily.
    """
    with open(path, "rb") as f:
        first = f.readline()
        while first.count(b'"') % 2 and len(first) < 1 << 20:  # a quoted name holding a line break
            more = f.readline()
            if not more:
                break
            first += more
    if not first.strip():
        raise FormatError("the file is empty or its first line is blank", file=file,
                          expected="a header line with the column names")
    if b"\r" in first and b"\n" not in first:
        # Bare CR (classic Mac) line ends: there is no LF at all, and polars would read one endless header line.
        raise FormatError("the lines end with a bare CR (carriage return without line feed)", file=file,
                          expected="LF or CRLF line ends")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FormatError(f"the header line is not valid UTF-8 (byte {err.start})", file=file,
                          expected="a UTF-8 encoded file") from err
    try:
        names = next(csv.reader(io.StringIO(text.rstrip("\r\n"), newline="")), [])
    except csv.Error as err:
        raise FormatError(f"the header line cannot be parsed as CSV ({err})", file=file,
                          expected="a comma-separated header line") from err
    if len(names) == 1:
        other = next((sep for sep in (";", "\t", "|") if sep in names[0]), None)
        if other is not None:
            raise FormatError(f"the header has a single column that contains {other!r}: the file seems to be "
                              f"separated by {other!r}", file=file,
                              expected="comma-separated columns (a timestamp column and value columns)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SchemaError("the column name appears twice in the header", file=file, column=name,
                              expected="distinct column names")
        seen.add(name)
    return names


def _from_pandas(df: pd.DataFrame) -> pl.DataFrame:
    if isinstance(df.index, pd.DatetimeIndex):
        name = str(df.index.name) if df.index.name is not None else "timestamp"
        if name in map(str, df.columns):
            raise SchemaError("the DatetimeIndex's name is also a column name", file="<frame>", column=name,
                              expected="a DatetimeIndex whose name is not a column")
        df = df.reset_index(names=name)
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SchemaError("the column name appears twice", file="<frame>", column=dup,
                          expected="distinct column names")
    df = df.set_axis(names, axis=1)
    # pyarrow cannot convert object columns that mix types (numbers and text): make them text, which the
    # readers then parse cell by cell like a CSV.
    for name in df.columns[(df.dtypes == object).to_numpy()]:
        df[name] = df[name].map(lambda x: None if _is_na(x) else str(x))
    try:
        return pl.from_pandas(df, include_index=False)
    except Exception as err:  # pyarrow raises many unrelated types; all mean "cannot convert"
        raise FormatError(f"cannot convert the pandas frame ({_first_line(err)})", file="<frame>",
                          expected="columns of numbers, text or datetimes") from err


def _is_na(x: object) -> bool:
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _collect(table: _Table, columns: list[str]) -> pl.DataFrame:
    # pl.nth selects by position: a name like "^a.*$" or "*" would be a pattern for pl.col.
    idx = [table.positions[c] for c in columns]
    try:
        df = table.lazy.select(pl.nth(idx)).collect()
    except pl.exceptions.PolarsError as err:
        if table.csv_path is not None:
            raise _diagnose_csv(table, err) from err
        raise FormatError(f"cannot read the table ({_first_line(err)})", file=table.file,
                          expected="a readable CSV or Parquet table") from err
    if df.height == 0:
        raise FormatError("the table has no data rows", file=table.file, expected="at least one data row")
    return df


def _diagnose_csv(table: _Table, err: Exception) -> FormatError:
    """Find the row polars choked on: a line that is not UTF-8, a row with too many fields, or a quote that is
    never closed (Python's strict CSV reader names the row where that record starts)."""
    with open(table.csv_path, "rb") as f:
        for line_no, line in enumerate(f):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return FormatError("the line is not valid UTF-8", file=table.file, row=line_no,
                                   expected="a UTF-8 encoded file")
    with open(table.csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        row, start_line = 0, 1  # record 0 is the header; data row r is record r
        try:
            for record in reader:
                if len(record) > len(table.names):
                    return FormatError(f"the row has {len(record)} fields but the header has {len(table.names)}",
                                       file=table.file, row=row,
                                       expected=f"at most {len(table.names)} comma-separated fields per row")
                row, start_line = row + 1, reader.line_num + 1
        except csv.Error as csv_err:
            return FormatError(f"the record starting on line {start_line} cannot be parsed ({csv_err}); an "
                               f"unterminated quote?", file=table.file, row=row or None,
                               expected="a well-formed comma-separated file (every opening quote closed)")
    return FormatError(f"polars cannot parse the CSV ({_first_line(err)})", file=table.file,
                       expected="a well-formed comma-separated file")


def _show_names(names: Sequence[str]) -> str:
    """A column list for a message, cut after a few names."""
    if len(names) <= _SHOW_NAMES:
        return str(list(names))
    return f"{list(names[:_SHOW_NAMES])} and {len(names) - _SHOW_NAMES:,} more"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


# ---------------------------------------------------------------------------------------------------
# Columns


def _find(table: _Table, given: str | None, aliases: Sequence[str], role: str, param: str,
          required: bool = True) -> str | None:
    """The column for ``role``: ``given`` (must exist) or the first alias present (any case)."""
    if given is not None:
        if given not in table.positions:
            raise SchemaError(f"there is no {role} column named {given!r}", file=table.file, column=given,
                              expected=f"one of the columns {_show_names(table.names)}")
        return given
    lower = {}
    for name in table.names:
        lower.setdefault(name.lower(), name)
    for alias in aliases:
        if alias in lower:
            return lower[alias]
    if required:
        raise SchemaError(f"no {role} column was found", file=table.file, column=None,
                          expected=f"a column named one of {list(aliases)} (any case), or pass {_pass(param)}")
    return None


def _pass(param: str) -> str:
    """How to name a column for ``param``: the reader's argument, and the command line's option where there is one."""
    return pass_hint(param)


def _timestamp_column(table: _Table, given: str | None) -> str:
    found = _find(table, given, _TIME_NAMES, "timestamp", "timestamp", required=False)
    if found is not None:
        return found
    if not table.names:
        raise SchemaError("the table has no columns", file=table.file, expected="a timestamp column")
    first = table.names[0]
    head = _collect_head(table, first)
    if _looks_like_time(head, table.file, first):
        return first
    raise SchemaError("no timestamp column was found (the first column does not hold dates)",
                      file=table.file, column=first,
                      expected=f"a column named one of {list(_TIME_NAMES)} (any case), or pass "
                               f"{_pass('timestamp')}")


def _collect_head(table: _Table, column: str) -> pl.Series:
    try:
        head = table.lazy.select(pl.nth(table.positions[column])).head(100).collect().to_series()
        return head.alias("cell")  # a plain name: see _numeric
    except pl.exceptions.PolarsError as err:
        if table.csv_path is not None:
            raise _diagnose_csv(table, err) from err
        raise FormatError(f"cannot read the table ({_first_line(err)})", file=table.file,
                          expected="a readable CSV or Parquet table") from err


def _looks_like_time(head: pl.Series, file: str, column: str) -> bool:
    if isinstance(head.dtype, pl.Datetime) or head.dtype == pl.Date:
        return True
    head = head.drop_nulls()
    if head.dtype != pl.String or head.is_empty() or head.str.contains(r"^\s*[+-]?\d+(\.\d+)?\s*$").any():
        return False
    try:
        parse_timestamps(head, file=file, column=column)
    except TimestampError:
        return False
    return True


def _check_distinct(table: _Table, used: list[str]) -> None:
    seen: set[str] = set()
    for name in used:
        if name in seen:
            raise SchemaError("the column is used twice (e.g. as timestamp and as channel)", file=table.file,
                              column=name, expected="each column in one role")
        seen.add(name)


def _check_columns(table: _Table, used: list[str], layout: str) -> None:
    _check_distinct(table, used)
    used_set = set(used)
    extra = [c for c in table.names if c not in used_set]
    if extra:
        raise SchemaError(f"unexpected column(s) {_show_names(extra)}", file=table.file, column=extra[0],
                          expected=f"only the columns of the layout ({layout}); select them or name "
                                   f"them with the reader's arguments")


# ---------------------------------------------------------------------------------------------------
# Cells


def _numeric(s: pl.Series, *, file: str, column: str) -> np.ndarray:
    """A value column -> [n] float64 with NaN where missing. Raises on non-numbers and infinities."""
    s = s.alias("cell")  # polars evaluates Series methods as pl.col(name): "^x$" or "*" would be patterns
    dtype = s.dtype
    if dtype == pl.String:
        text = s.str.strip_chars()
        missing = text.is_null() | text.str.to_lowercase().is_in(MISSING_TEXT)
        x = text.cast(pl.Float64, strict=False)
        bad = ~missing & x.is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise ValueParseError(f"cannot read {s[i]!r} as a number", file=file, row=i + 1, column=column,
                                  expected=_EXPECTED_NUMBER)
        out = np.array(x.to_numpy(), dtype=np.float64)
        out[missing.to_numpy()] = np.nan
    elif dtype.is_numeric():
        out = np.array(s.cast(pl.Float64).to_numpy(), dtype=np.float64)
    elif dtype == pl.Null:
        out = np.full(len(s), np.nan)
    else:
        present = s.is_not_null()
        i = int(present.arg_true()[0]) if present.any() else 0
        raise ValueParseError(f"the column holds {dtype} values, not numbers", file=file, row=i + 1,
                              column=column, expected=_EXPECTED_NUMBER)
    inf = np.isinf(out)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise NonFiniteValueError(f"the value {s[i]!r} is infinite", file=file, row=i + 1, column=column,
                                  expected="a finite number (an empty cell or NaN marks a missing value)")
    magnitude = np.abs(np.nan_to_num(out, nan=0.0))
    over = magnitude > _FLOAT32_MAX
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise NonFiniteValueError(f"the value {s[i]!r} is beyond float32's range (it would reach the model as inf)",
                                  file=file, row=i + 1, column=column,
                                  expected=f"a finite number of magnitude at most {_FLOAT32_MAX:.4g}")
    large = magnitude >= SUSPICIOUS_MAGNITUDE
    if large.any():
        i = int(np.flatnonzero(large)[0])
        warnings.warn(SuspiciousValueWarning(
            f"the value {s[i]!r} (magnitude >= {SUSPICIOUS_MAGNITUDE:g}) looks like a fill / sentinel value; it is "
            f"kept as a number ({int(large.sum())} such cell(s) in the column): make these cells empty to mark them "
            f"missing", file=file, row=i + 1, column=column), stacklevel=3)
    return out


# PrecisionWarning when float32 rounds a series by more than this fraction of its standard deviation
_PRECISION_LOSS = 0.01


def _check_float32_precision(v: np.ndarray, groups: np.ndarray | None, n_groups: int, *, file: str,
                             column: Callable[[int], str], where: Callable[[int], str], noun: str) -> None:
    """Warn (PrecisionWarning, once per call, naming the first series and counting the rest) where storing the
    float64 values ``v`` as float32 moves some value by more than ``_PRECISION_LOSS`` of its series' standard
    deviation. ``v`` is [n, S] (a wide table's columns) with ``groups`` None, or [n] with ``groups`` [n] giving each
    value's series (a long table's (series, channel) index) among ``n_groups``; NaN is missing."""
    if groups is None:
        groups = np.broadcast_to(np.arange(v.shape[1]), v.shape)
    ok = ~np.isnan(v)
    x, g = v[ok], groups[ok]
    if x.size == 0:
        return
    count = np.bincount(g, minlength=n_groups)
    mean = np.bincount(g, x, minlength=n_groups) / np.maximum(count, 1)
    std = np.sqrt(np.bincount(g, (x - mean[g]) ** 2, minlength=n_groups) / np.maximum(count, 1))
    err = np.zeros(n_groups)
    np.maximum.at(err, g, np.abs(x - x.astype(np.float32).astype(np.float64)))
    bad = np.flatnonzero((std > 0) & (err > _PRECISION_LOSS * std))
    if bad.size == 0:
        return
    k = int(bad[0])
    size = float(np.max(np.abs(x[g == k])))
    plural = "s" if noun == "column" and bad.size > 2 else ""
    more = f" ({bad.size - 1} more {noun}{plural} like it)" if bad.size > 1 else ""
    ratio = err[k] / std[k]
    share = f"{100 * ratio:.0f}% of that spread" if ratio < 10 else f"{ratio:.3g} times that spread"
    warnings.warn(PrecisionWarning(
        f"{where(k)}values of magnitude up to {size:.4g} vary by a standard deviation of {std[k]:.3g}, but the "
        f"model computes in float32 (about 7 significant digits), which moves them by up to {err[k]:.3g} "
        f"({share}), so their variation is partly or wholly lost{more}; subtract an offset (e.g. the first "
        f"value) from the values", file=file, column=column(k)), stacklevel=3)


def _numeric_columns(df: pl.DataFrame, columns: list[str], *, file: str, first: int = 0) -> np.ndarray:
    """Columns ``first, first + 1, ...`` of ``df`` -> [n, C] float64 with NaN where missing; ``columns`` are their
    names as in the file.

    When every one of them is text (a CSV), the cells are stacked into one long column (``unpivot``) and parsed in
    one pass, so a header of 100000 columns costs well under a second here instead of a per-column loop; a
    column with any problem is then re-read by :func:`_numeric`, which raises (or warns) with the same message
    as column by column.
    """
    n, width = df.height, len(columns)
    if width == 0 or not all(dtype == pl.String for dtype in df.dtypes):  # unpivot needs one dtype throughout
        return np.stack([_numeric(df.to_series(first + j), file=file, column=c) for j, c in enumerate(columns)],
                        axis=1).reshape(n, width)
    cells = df.unpivot().get_column("value").slice(first * n, width * n).str.strip_chars()  # column-major
    missing = cells.str.to_lowercase().is_in(MISSING_TEXT).fill_null(True).to_numpy().reshape(width, n).T
    out = np.array(cells.cast(pl.Float64, strict=False).to_numpy(), dtype=np.float64).reshape(width, n).T.copy()
    with np.errstate(invalid="ignore"):
        problem = (np.isnan(out) & ~missing) | ~(np.abs(np.where(missing, 0.0, out)) < SUSPICIOUS_MAGNITUDE)
    for j in np.flatnonzero(problem.any(axis=0)):  # raises at the first column with a bad cell; warns for large ones
        out[:, j] = _numeric(df.to_series(first + int(j)), file=file, column=columns[int(j)])
    out[missing] = np.nan
    return out


def _labels(s: pl.Series, *, file: str, column: str, role: str) -> pl.Series:
    """An id column (series, channel, entity, event type) as text without surrounding white space (``a`` and ``a ``
    are one series, as in ``armt-ts stream``); empty cells are rejected. Whole numbers in a float column are
    named as in an integer column (``3``, not ``3.0``), and a float NaN is a missing id."""
    s = s.alias("cell")  # a plain name: see _numeric
    nan = pl.Series("cell", [False] * len(s))
    if s.dtype.is_float():
        nan = s.is_nan().fill_null(False)
        whole = s.filter(~nan & s.is_not_null())
        if len(whole) and bool(((whole % 1) == 0).all()) and bool((whole.abs() < 2**53).all()):
            s = s.cast(pl.Int64, strict=False)
    try:
        text = s.cast(pl.String).str.strip_chars()
    except pl.exceptions.PolarsError as err:
        raise SchemaError(f"the {role} column holds {s.dtype} values, not names ({_first_line(err)})", file=file,
                          column=column, expected=f"text or numbers as the {role}") from None
    missing = text.is_null() | (text == "") | nan
    if missing.any():
        i = int(missing.arg_true()[0])
        raise ValueParseError(f"the {role} is missing", file=file, row=i + 1, column=column,
                              expected=f"a non-empty {role} in every row")
    return text


def _codes(labels: pl.Series) -> tuple[np.ndarray, list[str]]:
    """[n] int64 codes and the distinct labels (text, no nulls: ``_labels``), in order of first appearance.

    Hashed by polars: numpy's ``unique`` of the labels as a fixed-width unicode array sorted the strings (7 s and
    a 2 GB transient for 20 million rows)."""
    uniq = labels.unique(maintain_order=True)
    codes = labels.cast(pl.Enum(uniq)).to_physical().to_numpy().astype(np.int64)
    return codes, uniq.to_list()


# ---------------------------------------------------------------------------------------------------
# Time order, duplicates, frequency


def _check_aggregate(aggregate: str | None) -> None:
    if aggregate is not None and aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r} must be None or one of {_AGGREGATES}")


def _check_order(t: np.ndarray, rows: np.ndarray, group: np.ndarray | None, *, file: str, column: str,
                 label: Callable[[int], str]) -> None:
    """Raise UnsortedTimeError at the first file row where time goes back (within its group)."""
    if group is None:
        perm = np.arange(t.size)
        g = np.zeros(t.size, dtype=np.int64)
    else:
        perm = np.argsort(group, kind="stable")  # file order within each group
        g = group[perm]
    ts, rs = t[perm], rows[perm]
    back = (ts[1:] < ts[:-1]) & (g[1:] == g[:-1])
    if back.any():
        k = np.flatnonzero(back)
        k = k[np.argmin(rs[1:][k])]
        raise UnsortedTimeError(
            f"time goes backwards{label(int(g[k + 1]))}: {show_time(ts[k + 1])} comes after {show_time(ts[k])} "
            f"(row {rs[k]})", file=file, row=int(rs[k + 1]), column=column,
            expected=f"non-decreasing timestamps, or pass {pass_hint('sort', 'True')}")


def _order_and_dedupe(t: np.ndarray, rows: np.ndarray, v: np.ndarray, group: np.ndarray | None, *,
                      sort: bool, aggregate: str | None, file: str, column: str,
                      label: Callable[[int], str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (group, time), then reject or aggregate repeated (group, time) keys.

    Args:
        t: [n] int64 ns; rows: [n] 1-based file rows; v: [n, K] float64 (NaN = missing);
        group: [n] int64 key codes (series x channel) or None for one group.
    Returns:
        t, rows (first occurrence), v [m, K], group [m], merged [m] (file rows per key): one entry per
        key, sorted by (group, time).
    """
    if not sort:
        _check_order(t, rows, group, file=file, column=column, label=label)
    g = np.zeros(t.size, dtype=np.int64) if group is None else group
    perm = np.lexsort((t, g))  # stable: rows with the same key keep file order, so first/last are defined
    t, rows, v, g = t[perm], rows[perm], v[perm], g[perm]
    dup = (t[1:] == t[:-1]) & (g[1:] == g[:-1])
    if not dup.any():
        return t, rows, v, g, np.ones(t.size, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, ~dup])
    if aggregate is None:
        later = np.flatnonzero(dup) + 1
        i = later[np.argmin(rows[later])]
        first = rows[starts[np.searchsorted(starts, i, side="right") - 1]]
        raise DuplicateTimestampError(
            f"timestamp {show_time(t[i])} repeats row {first}{label(int(g[i]))}", file=file, row=int(rows[i]),
            column=column, expected=f"one row per timestamp, or pass {pass_hint('aggregate', _AGGREGATE_VALUES)}")
    merged = np.diff(np.r_[starts, t.size])
    return t[starts], rows[starts], _aggregate(v, starts, aggregate), g[starts], merged


def _aggregate(v: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    """Reduce [n, K] rows to [m, K] groups starting at ``starts``, over observed (non-NaN) cells only."""
    observed = ~np.isnan(v)
    count = np.add.reduceat(observed.astype(np.int64), starts, axis=0)
    if how in ("mean", "sum"):
        total = np.add.reduceat(np.where(observed, v, 0.0), starts, axis=0)
        out = total / np.maximum(count, 1) if how == "mean" else total
    else:
        n = v.shape[0]
        idx = np.broadcast_to(np.arange(n)[:, None], v.shape)
        if how == "first":
            pick = np.minimum.reduceat(np.where(observed, idx, n - 1), starts, axis=0)
        else:
            pick = np.maximum.reduceat(np.where(observed, idx, 0), starts, axis=0)
        out = np.take_along_axis(v, pick, axis=0)
    out[count == 0] = np.nan
    return out


def _inferred_freq(t: np.ndarray, group: np.ndarray | None, file: str, column: str) -> Freq:
    step = infer_step(t, group)
    if step is None:
        raise TimestampError("cannot infer the frequency from a single distinct timestamp", file=file,
                             column=column, expected="two or more timestamps, or freq= given")
    return step_to_freq(step)


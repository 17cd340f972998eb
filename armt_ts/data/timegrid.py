"""Timestamps and the regular time grid: parsing, frequency strings, inference, placement.

Timestamps inside the data layer are int64 nanoseconds since the Unix epoch, time-zone naive, in UTC
when the input carried a zone (numpy ``datetime64[ns]`` on the way out).

Accepted timestamp cells:
- ISO-like strings: ``2020-01-01``, ``2020-01-01 00:10``, ``2020-01-01 00:10:00(.fff)``, with ``T`` or a
  space between date and time, ``/`` or ``-`` in the date, and optionally a UTC offset (``Z``, ``+01:00``,
  ``+0100``), kept to the microsecond. Offsets are converted to UTC, each cell by its own (so local time with
  its offset across a DST change, ``+01:00`` then ``+02:00``, lands on the UTC grid, as a time-zone-aware
  pandas or Parquet column does). Naive and offset cells in one column are rejected (mixed time zones): a naive
  cell's zone would be a guess.
- Dates / datetimes typed by Parquet, polars or pandas (a time-zone-aware column is converted to UTC).
- Epoch numbers (integers, or decimals for fractional units). Unless ``time_unit`` is given, the unit is
  chosen by the column's largest magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17
  microseconds, else nanoseconds (1e11 s is the year 5138; 1e11 ms is 1973-03-03, so realistic values of
  the two units never overlap). Any cell of magnitude >= 1e8 whose own class differs from the column's
  unit is rejected as a mix of units.
- Anything else with an explicit strptime-style ``time_format`` (chrono syntax, e.g. ``"%Y%m%d"``).

Frequencies are polars duration strings: fixed steps (``"10m"``, ``"1h"``, ``"1h30m"``, ``"7d"``) and the
calendar steps ``"<n>mo"``, ``"<n>q"``, ``"<n>y"`` (given only; inference yields fixed steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from armt_ts.data.errors import TimestampError, pass_hint

_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
       "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 604_800_000_000_000}
_CALENDAR_MONTHS = {"mo": 1, "q": 3, "y": 12}
_FREQ_TERM = re.compile(r"(\d+)(mo|ns|us|ms|s|m|h|d|w|q|y)")
# Largest unit first, so a 1-hour step prints as "1h", not "60m".
_FORMAT_UNITS = ("d", "h", "m", "s", "ms", "us", "ns")
_PANDAS_UNITS = {"d": "D", "h": "h", "m": "min", "s": "s", "ms": "ms", "us": "us", "ns": "ns"}

# Normalised ISO-like strings (see _normalise) are tried against these in order; the first that parses
# wins, so one column may mix "2020-01-01" (midnight) with "2020-01-01 01:00".
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")
_EXPECTED_ISO = f"an ISO date/time such as '2020-01-01 00:10:00', or pass {pass_hint('time_format')}"
_EPOCH_RE = r"^[+-]?\d+(\.\d+)?$"
_TZ_RE = r"\d:\d{2}(:\d{2}(\.\d+)?)?[+-]\d{2}:?\d{2}$"
# Magnitude classes for epoch numbers: (upper bound, unit).
_EPOCH_CLASSES = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (np.inf, "ns"))
_EPOCH_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MAX = np.iinfo(np.int64).max
# A grid this long (800 MB of float64 per channel) is a typo in a timestamp, not a gap worth masking.
MAX_GRID_STEPS = 100_000_000


@dataclass(frozen=True)
class Freq:
    """A parsed frequency. ``step_ns`` is the fixed step, or None for calendar steps (``months`` set)."""

    text: str  # normalised polars duration string, e.g. "10m"
    step_ns: int | None
    months: int | None

    @property
    def pandas(self) -> str:
        """The pandas / gluonts frequency alias ("10min", "h", "D", "M", "3M", ...)."""
        if self.step_ns is None:
            n, unit = (self.months // 12, "Y") if self.months % 12 == 0 else (self.months, "M")
            if unit == "M" and n % 3 == 0:
                n, unit = n // 3, "Q"
            return unit if n == 1 else f"{n}{unit}"
        n, unit = _largest_unit(self.step_ns)
        return _PANDAS_UNITS[unit] if n == 1 else f"{n}{_PANDAS_UNITS[unit]}"


def parse_freq(freq: str) -> Freq:
    """Parse a polars duration string ("1h", "10m", "1h30m", "1mo", ...) into a :class:`Freq`."""
    text = str(freq).strip().lower()
    terms = _FREQ_TERM.findall(text)
    if not terms or "".join(n + u for n, u in terms) != text:
        raise ValueError(f"freq={freq!r} is not a polars duration string such as '1h', '10m', '1d', '1mo'")
    if any(u in _CALENDAR_MONTHS for _, u in terms):
        if len(terms) != 1:
            raise ValueError(f"freq={freq!r}: a calendar step (mo, q, y) cannot be combined with others")
        n, unit = terms[0]
        months = int(n) * _CALENDAR_MONTHS[unit]
        if months <= 0:
            raise ValueError(f"freq={freq!r} must be positive")
        return Freq(text, None, months)
    step = sum(int(n) * _NS[u] for n, u in terms)
    if step <= 0:
        raise ValueError(f"freq={freq!r} must be positive")
    return step_to_freq(step)


def step_to_freq(step_ns: int) -> Freq:
    """The :class:`Freq` of a fixed step, written with the largest unit that divides it."""
    n, unit = _largest_unit(step_ns)
    return Freq(f"{n}{unit}", int(step_ns), None)


def _largest_unit(step_ns: int) -> tuple[int, str]:
    unit = next(u for u in _FORMAT_UNITS if step_ns % _NS[u] == 0)  # "ns" always divides
    return int(step_ns) // _NS[unit], unit


def infer_step(t: np.ndarray, group: np.ndarray | None = None) -> int | None:
    """Most common positive step (ns) between consecutive timestamps of the same group, or None.

    Args:
        t: [n] int64 ns, sorted within each group (and groups contiguous).
        group: [n] int group codes, or None for one group.
    Ties go to the smaller step, so a series with as many 30-minute as 1-hour steps gets a 30-minute grid
    (the finer grid holds every point; the coarser one would reject half of them).
    """
    d = np.diff(t)
    keep = d > 0
    if group is not None:
        keep &= group[1:] == group[:-1]
    d = d[keep]
    if d.size == 0:
        return None
    steps, counts = np.unique(d, return_counts=True)
    return int(steps[np.argmax(counts)])


def place_on_grid(t: np.ndarray, rows: np.ndarray, freq: Freq, *, inferred: bool, file: str,
                  column: str) -> tuple[np.ndarray, np.ndarray]:
    """Put timestamps on the regular grid from their minimum to their maximum.

    Args:
        t: [n] int64 ns (any order, repeats allowed: one per entity/channel key).
        rows: [n] 1-based file rows of ``t``, for error messages.
    Returns:
        grid [T] int64 ns and positions [n] int64 with ``grid[positions] == t``.
    Raises:
        TimestampError naming the first row (in file order) whose timestamp is off the grid.
    """
    t0, t1 = int(t.min()), int(t.max())
    if freq.step_ns is not None:
        off = (t - t0) % freq.step_ns != 0
        n_steps = (t1 - t0) // freq.step_ns + 1
        if n_steps > MAX_GRID_STEPS:
            # Almost always one mistyped timestamp (a wrong year): name the row after the largest gap.
            order = np.argsort(t, kind="stable")
            i = order[int(np.argmax(np.diff(t[order]))) + 1]
            raise TimestampError(
                f"the {freq.text} grid from {show_time(t0)} to {show_time(t1)} would have {n_steps:,} steps; "
                f"the largest gap ends at {show_time(t[i])}", file=file, row=int(rows[i]), column=column,
                expected=f"at most {MAX_GRID_STEPS:,} grid steps; check this timestamp, or pass a coarser "
                         f"{pass_hint('freq')}")
        grid = t0 + freq.step_ns * np.arange(n_steps, dtype=np.int64)
        pos = (t - t0) // freq.step_ns
    else:
        grid = _calendar_grid(t0, t1, freq.text)
        pos = np.minimum(np.searchsorted(grid, t), grid.size - 1)
        off = grid[pos] != t
    if off.any():
        i = int(np.argmin(np.where(off, rows, np.iinfo(np.int64).max)))
        how = "inferred from the most common step" if inferred else "given"
        raise TimestampError(
            f"timestamp {show_time(t[i])} is not on the regular {freq.text} grid ({how}) that starts at "
            f"{show_time(t0)}", file=file, row=int(rows[i]), column=column,
            expected=f"timestamps at whole {freq.text} steps from the first one; if the frequency is wrong, pass "
                     f"{pass_hint('freq')}")
    return grid, pos.astype(np.int64)


def _calendar_grid(t0: int, t1: int, interval: str) -> np.ndarray:
    # polars takes Python datetimes, which hold microseconds: exact for calendar (month) steps.
    start = np.datetime64(t0, "ns").astype("datetime64[us]").item()
    end = np.datetime64(t1, "ns").astype("datetime64[us]").item()
    grid = pl.datetime_range(start, end, interval=interval, time_unit="ns", eager=True)
    return grid.to_numpy().astype("datetime64[ns]").view(np.int64)


def show_time(t_ns: int) -> str:
    """An int64-ns timestamp as 'YYYY-MM-DD HH:MM:SS' for messages."""
    return str(np.datetime64(int(t_ns), "ns")).replace("T", " ").removesuffix(".000000000")


# A text column with at most this share of distinct cells is parsed one distinct cell at a time (see parse_timestamps).
_DISTINCT_SHARE = 0.5


def parse_timestamps(s: pl.Series, *, file: str, column: str, time_unit: str | None = None,
                     time_format: str | None = None) -> np.ndarray:
    """Parse a timestamp column into [n] int64 ns (UTC if zoned). Row i of ``s`` is file row i + 1.

    Raises TimestampError naming the row for a missing, unparseable, mixed-zone or mixed-unit cell.

    A text column whose cells repeat (a long file: every series has a row at each time) is parsed one distinct
    cell at a time and the results are spread back over the rows: parsing ISO text costs about 1.2 us a cell (the
    spellings are normalised by regular expressions, then tried against several formats), 25 s of a 20-million-row
    file of 1000 distinct times. The distinct cells keep the order of their first rows and every check is on the
    cell alone or against row 1, so an error names the same (first) row as parsing every row would.
    """
    s = s.alias("cell")  # polars evaluates Series methods as pl.col(name): "^x$" or "*" would be patterns
    if s.dtype == pl.String and s.null_count() == 0 and s.len() > 1:
        first = s.arg_unique()  # each distinct cell's first row, in file order
        if first.len() <= _DISTINCT_SHARE * s.len():
            distinct = s.gather(first)
            try:
                t = _parse_timestamps(distinct, file=file, column=column, time_unit=time_unit,
                                      time_format=time_format)
            except TimestampError as err:
                if err.row is None:
                    raise
                raise type(err)(err.problem, file=err.file, row=int(first[err.row - 1]) + 1, column=err.column,
                                expected=err.expected) from err.__cause__
            codes = s.cast(pl.Enum(distinct)).to_physical().to_numpy()
            return t[codes]
    return _parse_timestamps(s, file=file, column=column, time_unit=time_unit, time_format=time_format)


def _parse_timestamps(s: pl.Series, *, file: str, column: str, time_unit: str | None,
                      time_format: str | None) -> np.ndarray:
    """``parse_timestamps`` of every cell of ``s``."""
    ctx = {"file": file, "column": column}
    s = s.alias("cell")  # polars evaluates Series methods as pl.col(name): "^x$" or "*" would be patterns
    if s.null_count():
        i = int(s.is_null().arg_true()[0])
        raise TimestampError("the timestamp is missing", row=i + 1, expected=_EXPECTED_ISO, **ctx)
    if time_unit is not None and time_unit not in _EPOCH_UNIT_NS:
        raise ValueError(f"time_unit={time_unit!r} must be one of {sorted(_EPOCH_UNIT_NS)}")
    dtype = s.dtype
    if time_format is not None:
        if dtype != pl.String:
            raise TimestampError(f"time_format= was given but the column holds {dtype}, not text",
                                 expected="a text column when time_format is given", **ctx)
        return _parse_strings(s.str.strip_chars(), (time_format,), zoned=None, **ctx)
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        if time_unit is not None:
            raise TimestampError(f"time_unit={time_unit!r} was given but the column holds {dtype}",
                                 expected="epoch numbers when time_unit is given", **ctx)
        if dtype == pl.Date:
            s = s.cast(pl.Datetime("us"))
        elif dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return _datetime_ns(s, **ctx)
    if dtype.is_integer() or dtype.is_float():
        return _epoch(s.cast(pl.Int64 if dtype.is_integer() else pl.Float64).to_numpy(), time_unit, **ctx)
    if dtype != pl.String:
        raise TimestampError(f"the column has type {dtype}", expected=f"text, a date/datetime, or epoch "
                                                                     f"numbers", **ctx)
    s = s.str.strip_chars()
    epoch_like = s.str.contains(_EPOCH_RE)
    if epoch_like[0]:
        if not epoch_like.all():
            i = int((~epoch_like).arg_true()[0])
            raise TimestampError(f"{s[i]!r} is not an epoch number like row 1 ({s[0]!r})", row=i + 1,
                                 expected="epoch numbers in every row", **ctx)
        if s.str.contains(r"\.").any():
            return _epoch(s.cast(pl.Float64).to_numpy(), time_unit, **ctx)
        return _epoch(s.cast(pl.Int64, strict=False).to_numpy(), time_unit, **ctx)
    if time_unit is not None:
        raise TimestampError(f"time_unit={time_unit!r} was given but the timestamps are text like {s[0]!r}",
                             expected="epoch numbers when time_unit is given", **ctx)
    s = _normalise(s)
    zoned = s.str.contains(_TZ_RE)
    if zoned.any() and not zoned.all():
        i = int((zoned != zoned[0]).arg_true()[0])
        raise TimestampError(
            f"{s[i]!r} {'has' if zoned[i] else 'has no'} UTC offset but row 1 ({s[0]!r}) "
            f"{'has' if zoned[0] else 'has none'} (mixed time zones)", row=i + 1,
            expected="one time zone for the whole column (convert to UTC first)", **ctx)
    if zoned[0]:  # every cell with its own offset (a DST change included): each is one instant, made UTC
        return _parse_strings(s, _AWARE_FORMATS, zoned=True, **ctx)
    return _parse_strings(s, _NAIVE_FORMATS, zoned=False, **ctx)


def _normalise(s: pl.Series) -> pl.Series:
    """Bring ISO-like spellings to 'YYYY-MM-DD HH:MM:SS.fff+HH:MM' so a few formats cover them all."""
    return (s.str.replace(r"^(\d{4})/(\d{1,2})/(\d{1,2})", "${1}-${2}-${3}")
            .str.replace(r"^(\d{4}-\d{1,2}-\d{1,2})[Tt ]\s*", "${1} ")
            .str.replace(r"\s*[Zz]$", "+00:00")
            .str.replace(r"\s+([+-]\d{2}:?\d{2})$", "${1}")
            # hour precision ('2020-01-01T13', numpy's datetime64[h] spelling): add the minutes
            .str.replace(r"^(\d{4}-\d{1,2}-\d{1,2} \d{1,2})([+-]\d{2}:?\d{2})?$", "${1}:00${2}"))


def _parse_strings(s: pl.Series, formats: tuple[str, ...], *, zoned: bool | None, file: str,
                   column: str) -> np.ndarray:
    try:
        parsed = s.to_frame("s").select(pl.coalesce(
            # microseconds: parsing straight to ns would wrap years past 2262 around without an error
            [pl.col("s").str.to_datetime(f, strict=False, time_unit="us") for f in formats]).alias("t"))["t"]
    except pl.exceptions.PolarsError as err:
        raise TimestampError(f"polars cannot use the format {formats[0]!r} ({type(err).__name__})", file=file,
                             column=column, expected="a valid strptime-style format") from err
    failed = parsed.is_null()
    if failed.any():
        i = int(failed.arg_true()[0])
        expected = f"the format {formats[0]!r}" if zoned is None else _EXPECTED_ISO
        raise TimestampError(f"cannot read {s[i]!r} as a timestamp", file=file, row=i + 1, column=column,
                             expected=expected)
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is not None:
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return _datetime_ns(parsed, file=file, column=column)


_NS_RANGE = (np.datetime64("1677-09-22", "us"), np.datetime64("2262-04-11", "us"))


def _datetime_ns(s: pl.Series, *, file: str, column: str) -> np.ndarray:
    """Naive Datetime series -> [n] int64 ns, rejecting dates datetime64[ns] cannot hold (numpy's unit
    conversion would wrap around silently)."""
    t = s.to_numpy()
    if t.dtype != np.dtype("datetime64[ns]"):
        t_us = t.astype("datetime64[us]")
        outside = (t_us < _NS_RANGE[0]) | (t_us > _NS_RANGE[1])
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise TimestampError(f"the timestamp {t_us[i]} is outside the years 1677..2262", file=file,
                                 row=i + 1, column=column, expected="a timestamp that datetime64[ns] can hold")
    return t.astype("datetime64[ns]").view(np.int64)


def _epoch_class(magnitude: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array([b for b, _ in _EPOCH_CLASSES[:-1]]), magnitude, side="right")


def _epoch(v: np.ndarray, time_unit: str | None, *, file: str, column: str) -> np.ndarray:
    """Epoch numbers [n] (int64 or float64) -> [n] int64 ns; unit given or chosen by magnitude."""
    ctx = {"file": file, "column": column}
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        i = int(np.flatnonzero(~np.isfinite(v))[0])
        raise TimestampError("the timestamp is not a usable epoch number", row=i + 1,
                             expected="a finite epoch number within int64", **ctx)
    mag = np.abs(v.astype(np.float64))
    if time_unit is None:
        cls = _epoch_class(mag)
        unit_cls = int(cls.max())
        time_unit = _EPOCH_CLASSES[unit_cls][1]
        mixed = (mag >= 1e8) & (cls != unit_cls)
        if mixed.any():
            i = int(np.flatnonzero(mixed)[0])
            raise TimestampError(
                f"epoch value {v[i]} looks like {_EPOCH_CLASSES[cls[i]][1]} but the column's largest "
                f"values are in {time_unit} (mixed epoch units)", row=i + 1,
                expected=f"one epoch unit for the whole column, or pass {pass_hint('time_unit')}", **ctx)
    factor = _EPOCH_UNIT_NS[time_unit]
    # datetime64[ns] spans 1677..2262; anything beyond cannot be represented.
    out_of_range = mag * factor > _INT64_MAX * 0.999
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise TimestampError(f"epoch value {v[i]} ({time_unit}) is outside the years 1677..2262",
                             row=i + 1, expected="a timestamp that datetime64[ns] can hold", **ctx)
    if v.dtype.kind == "f":
        return np.round(v * factor).astype(np.int64)
    return v.astype(np.int64) * factor

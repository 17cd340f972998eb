"""Typed errors of the data layer: every rejection names the file, the row and the column.

Readers never let a polars / pyarrow exception escape: they catch it and raise one of these, so a
caller can ``except DataError`` and a user reads where the problem is and what was expected.
"""

from __future__ import annotations


# The armt-ts command-line options that set a reader argument: messages that advise passing an argument name the
# option too, so a command-line user is not told about a Python keyword only.
CLI_OPTIONS = {"timestamp": "--timestamp COL", "series_id": "--id COL", "entity": "--id COL", "value": "--target COL",
               "sort": "--sort", "aggregate": "--aggregate mean|last|first|sum", "freq": "--freq STEP",
               "time_format": "--time-format FMT", "time_unit": "--time-unit UNIT"}


def pass_hint(param: str, value: str = "") -> str:
    """``param=value``, and the command line's option where there is one: "sort=True (armt-ts: --sort)"."""
    option = CLI_OPTIONS.get(param)
    return f"{param}={value}" + (f" (armt-ts: {option})" if option else "")


class DataError(ValueError):
    """A file or frame the data layer cannot accept.

    Attributes:
        file: the path as given (or ``"<frame>"`` for an in-memory frame).
        row: 1-based data row as the user counts it: the first row after the CSV header is row 1
            (line 2 of a plain CSV file; a quoted cell that spans lines shifts the line number, not
            the row). ``None`` when the problem is not about one row (a missing column, say).
        column: the column name exactly as in the file, or ``None`` for a whole-file problem.
        problem: what is wrong, in words.
        expected: what the reader wanted instead.
    """

    def __init__(self, problem: str, *, file: str, row: int | None = None, column: str | None = None,
                 expected: str) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.problem = problem
        self.expected = expected
        where = [f"file {file!r}"]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}; expected {expected}")


class FormatError(DataError):
    """The file itself cannot be read as a table: unknown suffix, ragged CSV, not UTF-8, corrupt Parquet."""


class SchemaError(DataError):
    """A column is missing, duplicated, unexpected, or has a type the reader cannot use."""


class TimestampError(DataError):
    """A timestamp is missing, unparseable, in another time zone or unit, or off the regular grid."""


class UnsortedTimeError(TimestampError):
    """Time goes backwards (within an entity, for long files) and ``sort=False``."""


class DuplicateTimestampError(TimestampError):
    """The same timestamp occurs twice (per entity and channel) and no ``aggregate`` was asked for."""


class ValueParseError(DataError):
    """A value cell is not a number (or, for events, a required id cell is empty)."""


class NonFiniteValueError(ValueParseError):
    """A value cell is +inf or -inf. Infinities are rejected rather than masked: they are almost
    always a sensor or export fault the user should see, whereas NaN / empty cells mean 'missing'."""


class SuspiciousValueWarning(UserWarning):
    """A finite value so large (magnitude >= 1e20) that it is almost certainly a fill / sentinel value (1e20,
    1e30, 9.97e36 are common ones) rather than a measurement. It is kept as a number, because it is one; the
    warning names the first such cell so the user can turn it into a missing value. Values beyond float32's
    range (about 3.4e38) are not warned about but rejected (NonFiniteValueError): the model's float32 would
    turn them into inf."""

    def __init__(self, problem: str, *, file: str, row: int, column: str) -> None:
        self.file = file
        self.row = row
        self.column = column
        super().__init__(f"file {file!r}, row {row}, column {column!r}: {problem}")


class PrecisionWarning(UserWarning):
    """A series whose variation float32 cannot hold: the model computes in float32 (about 7 significant digits),
    so values like 1e9 + a variation of a few units (a counter, an epoch time, a price with a large offset) round
    to steps of 64 and their variation is partly or wholly lost. The readers keep the values (float32, as the
    model sees them) and name the first such series; subtracting an offset (e.g. the first value) fixes it."""

    def __init__(self, problem: str, *, file: str, column: str) -> None:
        self.file = file
        self.column = column
        super().__init__(f"file {file!r}, column {column!r}: {problem}")


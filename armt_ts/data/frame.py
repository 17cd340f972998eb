"""TimeSeriesFrame: series on a regular time grid, values always paired with an observed mask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True, eq=False)
class TimeSeriesFrame:
    """One series ([T, C]) or several entities on a shared grid ([N, T, C]).

    Fields:
        timestamps: [T] datetime64[ns], the regular grid (naive; UTC when the input had a zone).
        values: [T, C] float32, or [N, T, C] for several series; 0.0 wherever ``observed`` is 0, so a
            missing value can never leak into the model as a number.
        observed: same shape as ``values``, float32, 1 = observed, 0 = missing (empty/NaN cell, a gap
            in time, or outside an entity's span).
        channels: C channel names, exactly as in the file.
        freq: polars duration string of the grid step ("1h", "10m", "1mo").
        source: the file path as given, or ``"<frame>"``.
        series_ids: N entity ids for [N, T, C] frames (``read_long``); None for a single series.
        rows_per_step: [T] int64, how many file rows landed on each grid step (0 = a gap, 2+ = rows
            merged by ``aggregate``), for [T, C] frames read from rows (``read_wide``), else None. The
            standard splits count file rows, as the public code does, and use this to map them to the grid.

    Long files with several entities share one grid spanning all of them: entity n's rows before its
    first or after its last timestamp are simply unobserved. That keeps batches rectangular
    ([B=N, T, C], the layout the model and the streaming state use); memory is N * T * C, so entities
    with far-apart spans are better read separately. Treat the arrays as read-only: methods return
    new frames.
    """

    timestamps: np.ndarray
    values: np.ndarray
    observed: np.ndarray
    channels: list[str]
    freq: str
    source: str = "<frame>"
    series_ids: list[str] | None = None
    rows_per_step: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_axes = 2 if self.series_ids is None else 3
        if self.values.ndim != n_axes or self.values.shape != self.observed.shape:
            raise ValueError(f"values {self.values.shape} and observed {self.observed.shape} must both be "
                             f"{'[T, C]' if n_axes == 2 else '[N, T, C]'}")
        if self.values.shape[-2] != self.timestamps.shape[0] or self.values.shape[-1] != len(self.channels):
            raise ValueError(f"values {self.values.shape} do not match {self.timestamps.shape[0]} timestamps "
                             f"and {len(self.channels)} channels")
        if self.series_ids is not None and len(self.series_ids) != self.values.shape[0]:
            raise ValueError(f"{len(self.series_ids)} series_ids for {self.values.shape[0]} series")
        if self.rows_per_step is not None and self.rows_per_step.shape != self.timestamps.shape:
            raise ValueError(f"rows_per_step {self.rows_per_step.shape} does not match {self.n_steps} timestamps")

    @property
    def n_steps(self) -> int:
        """T, the number of grid steps."""
        return int(self.timestamps.shape[0])

    @property
    def n_channels(self) -> int:
        """C, the number of channels."""
        return len(self.channels)

    def __len__(self) -> int:
        return self.n_steps

    def slice(self, start: int, stop: int) -> TimeSeriesFrame:
        """Grid rows [start, stop) along time (numpy views, no copy)."""
        return dataclasses.replace(self, timestamps=self.timestamps[start:stop],
                                   values=self.values[..., start:stop, :],
                                   observed=self.observed[..., start:stop, :],
                                   rows_per_step=None if self.rows_per_step is None
                                   else self.rows_per_step[start:stop])

    def series(self, series_id: str) -> TimeSeriesFrame:
        """The [T, C] frame of one entity of an [N, T, C] frame."""
        if self.series_ids is None:
            raise ValueError("this frame holds one series; it has no series_ids")
        if series_id not in self.series_ids:
            raise KeyError(f"series {series_id!r} not in {self.series_ids[:10]}")
        i = self.series_ids.index(series_id)
        return dataclasses.replace(self, values=self.values[i], observed=self.observed[i], series_ids=None)

    def to_polars(self) -> pl.DataFrame:
        """Wide table: ``timestamp`` + one Float32 column per channel, null where unobserved.

        [N, T, C] frames stack the entities with a leading ``series_id`` column.
        """
        if self.series_ids is not None:
            parts = [self.series(sid).to_polars().insert_column(0, pl.Series("series_id", [sid] * self.n_steps))
                     for sid in self.series_ids]
            return pl.concat(parts)
        if "timestamp" in self.channels:
            raise ValueError("a channel is named 'timestamp', which to_polars uses for the time column")
        cols = {"timestamp": pl.Series(self.timestamps).cast(pl.Datetime("ns"))}
        for j, name in enumerate(self.channels):
            cols[name] = pl.Series(np.where(self.observed[:, j] > 0, self.values[:, j], np.nan)).fill_nan(None)
        return pl.DataFrame(cols)

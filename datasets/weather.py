"""Weather (Max Planck Institute for Biogeochemistry, Jena; 2020, every 10 minutes) loaded by path.

21 numeric channels plus ``date`` (``2020-01-01 00:10:00``). Three column names in the common copy carry
U+FFFD where the original had "²" and "µ" (e.g. ``SWDR (W/m\ufffd)``); they are kept exactly as written.

The common copy (52,696 rows) is not perfectly regular: 2020-05-12 06:00 appears twice with identical
values, and 2020-05-29 09:40 .. 11:00 (9 steps) is missing. On the 10-minute grid that gives 52,704
steps, 9 of them unobserved. The standard split still counts file rows, as the public code does
(:func:`armt_ts.data.standard_split`), so val and test are cut at the published timestamps.
"""

from __future__ import annotations

import os

from armt_ts.data import Split, TimeSeriesFrame, read_wide, standard_split


def load_weather(path: str | os.PathLike, aggregate: str | None = "first") -> TimeSeriesFrame:
    """Load ``weather.csv`` as a [T, C] frame (C = 21, ``OT`` last) on its 10-minute grid.

    ``aggregate`` merges repeated timestamps ("first" keeps the first row; the repeat in the common copy
    is an exact duplicate); None makes a repeat an error.
    """
    from datasets.ett import check_grid

    frame = read_wide(path, timestamp="date", freq="10m", aggregate=aggregate)
    if frame.n_channels != 21 or frame.channels[-1] != "OT":
        raise ValueError(f"{path}: {frame.n_channels} value columns ending in {frame.channels[-1]!r}; Weather has 21, "
                         f"OT last; is it the Weather file?")
    check_grid(frame, "Weather")
    return frame


def load_weather_split(path: str | os.PathLike, context_length: int) -> Split:
    """Load Weather and split it 0.7 / 0.1 / 0.2 of file rows (DESIGN section 7)."""
    return standard_split(load_weather(path), "Weather", context_length)

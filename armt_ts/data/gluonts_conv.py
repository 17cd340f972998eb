"""Conversion of a TimeSeriesFrame to a GluonTS dataset (gluonts 0.17 ``ListDataset``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from gluonts.dataset.common import ListDataset
from gluonts.dataset.field_names import FieldName

from armt_ts.data.frame import TimeSeriesFrame
from armt_ts.data.timegrid import parse_freq


def to_gluonts(frame: TimeSeriesFrame, *, multivariate: bool = False) -> list[dict]:
    """A GluonTS ``ListDataset`` (a list of processed entries) holding ``frame``.

    Every entry has "start" (``pd.Period`` at the frame's frequency), "target" (float32: GluonTS
    torch models fail on float64) and "item_id". Unobserved cells are NaN in the target: that is how
    GluonTS marks missing values (its ``AddObservedValuesIndicator`` turns NaN into
    ``observed_values`` 0), so the mask travels into GluonTS models too.

    Args:
        frame: [T, C] or [N, T, C].
        multivariate: False: one univariate entry per channel (and series), target [T], item_id the
            channel name (``"<series_id>/<channel>"`` for [N, T, C]). True: one entry per series,
            target [C, T] (the layout of gluonts' multivariate models such as ITransformerEstimator),
            item_id the series id (the file stem for a single series).
    """
    freq = parse_freq(frame.freq)
    first = pd.Timestamp(frame.timestamps[0])
    start = pd.Period(first, freq=freq.pandas)
    # A pandas Period is aligned to whole units of its frequency (an hourly Period starts at :00), so a
    # grid anchored elsewhere would be shifted without a word: refuse instead.
    if freq.step_ns is not None and start.start_time != first:
        raise ValueError(f"the grid starts at {first}, which is not the start of a {freq.pandas!r} pandas "
                         f"Period ({start.start_time}); GluonTS would shift the series")
    target = np.where(frame.observed > 0, frame.values, np.nan).astype(np.float32)
    if frame.series_ids is None:
        target = target[None]
        series_ids = [Path(frame.source).stem if frame.source != "<frame>" else "series"]
    else:
        series_ids = frame.series_ids
    entries = []
    for sid, series in zip(series_ids, target):
        if multivariate:
            entries.append({FieldName.START: start, FieldName.TARGET: series.T, FieldName.ITEM_ID: sid})
            continue
        for j, channel in enumerate(frame.channels):
            item = channel if frame.series_ids is None else f"{sid}/{channel}"
            entries.append({FieldName.START: start, FieldName.TARGET: series[:, j], FieldName.ITEM_ID: item})
    # start.freq is a DateOffset: passing it (not the alias) avoids pandas' deprecation of "M" / "Q" / "Y"
    # as offset aliases while still meaning the Period frequency.
    return ListDataset(entries, freq=start.freq, one_dim_target=not multivariate)

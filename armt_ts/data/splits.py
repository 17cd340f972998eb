"""The long-horizon protocol of DESIGN section 7: standard splits, train-statistics z-scoring, and
stride-1 test windows with none dropped.

- ETTh1/ETTh2: train rows [0, 8640), val [8640 - L, 11520), test [11520 - L, 14400); ETTm1/ETTm2: the same
  borders x4 (15-minute rows). The rows past 14400 (x4) are not used, as in the public code.
- Weather: n_train = int(0.7 n), n_test = int(0.2 n), n_val = n - n_train - n_test; train [0, n_train),
  val [n_train - L, n_train + n_val), test [n - n_test - L, n).
L is the context length: val and test start L rows early so their first window has a full context.
Rows are file rows, as in the public code (see :func:`standard_split` for files with gaps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from armt_ts.data.frame import TimeSeriesFrame

DatasetName = Literal["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather"]
DATASETS: tuple[str, ...] = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather")

# 12 / 4 / 4 months of 30 days of hourly rows (Informer's ETT split).
_ETT_BORDERS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)
_ETT_ROWS_PER_HOUR = {"ETTh1": 1, "ETTh2": 1, "ETTm1": 4, "ETTm2": 4}

Borders = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
ArrayOrFrame = TypeVar("ArrayOrFrame", np.ndarray, TimeSeriesFrame)


@dataclass(frozen=True)
class Split:
    """Train / val / test frames of one dataset under the standard protocol (views of the full frame)."""

    train: TimeSeriesFrame
    val: TimeSeriesFrame
    test: TimeSeriesFrame
    borders: Borders  # ((start, stop) of train, val, test) in rows of the full frame
    dataset: str
    context_length: int


def split_borders(dataset: DatasetName, n_rows: int, context_length: int) -> Borders:
    """Row ranges [start, stop) of train, val and test for ``dataset`` with ``n_rows`` rows."""
    return _with_context(_cut_points(dataset, n_rows), context_length, dataset)


def standard_split(frame: TimeSeriesFrame, dataset: DatasetName, context_length: int) -> Split:
    """Split ``frame`` ([T, C] or [N, T, C]) along time under the DESIGN section 7 protocol.

    The public code counts FILE rows. When the frame records them (``rows_per_step``, set by
    ``read_wide``), the train / val / test ends are taken in file rows and mapped to the grid, so a
    file with a gap or a merged duplicate (Weather has one of each) is cut at the same timestamps as in
    the public code; the L context rows before val and test are then L grid steps. Without
    ``rows_per_step`` grid rows are counted.
    """
    counts = frame.rows_per_step
    if counts is None:
        cuts = _cut_points(dataset, frame.n_steps)
    else:
        # file_rows_before[g] = file rows on grid steps [0, g); a cut after k file rows is the first
        # grid step preceded by k of them.
        file_rows_before = np.concatenate([[0], np.cumsum(counts)])
        cuts = tuple(int(np.searchsorted(file_rows_before, k, side="left"))
                     for k in _cut_points(dataset, int(file_rows_before[-1])))
    borders = _with_context(cuts, context_length, dataset)
    train, val, test = (frame.slice(a, b) for a, b in borders)
    return Split(train, val, test, borders, dataset, int(context_length))


def _cut_points(dataset: str, n_rows: int) -> tuple[int, int, int]:
    """Ends of train, val and test, in rows."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} must be one of {DATASETS}")
    if dataset == "Weather":
        # int(n * 0.7), int(n * 0.2): the exact expressions of the public code, floating point included.
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        return n_train, n_rows - n_test, n_rows
    a, b, c = (x * _ETT_ROWS_PER_HOUR[dataset] for x in _ETT_BORDERS)
    if n_rows < c:
        raise ValueError(f"{dataset} needs at least {c} rows for the standard split, the data have {n_rows}")
    return a, b, c


def _with_context(cuts: tuple[int, ...], context_length: int, dataset: str) -> Borders:
    if not isinstance(context_length, (int, np.integer)) or context_length < 0:
        raise ValueError(f"context_length={context_length!r} must be an int >= 0")
    train_end, val_end, test_end = cuts
    L = int(context_length)
    if train_end - L < 0:
        raise ValueError(f"context_length={L} is longer than the {dataset} train split ({train_end} rows)")
    return (0, train_end), (train_end - L, val_end), (val_end - L, test_end)


@dataclass(frozen=True, eq=False)
class Scaler:
    """Per-channel z-scoring: x -> (x - mean) / std.

    ``mean`` and ``std`` are float64 with shape [1, C] (or [N, 1, C] for an [N, T, C] frame: one set of
    statistics per series), so they broadcast against [T, C] / [N, T, C] and [W, L, C] windows.
    """

    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: ArrayOrFrame) -> ArrayOrFrame:
        """Scale a frame (unobserved cells stay 0.0) or an array [..., T, C] (every cell is scaled)."""
        return self._apply(x, lambda a: (a - self.mean) / self.std)

    def inverse_transform(self, x: ArrayOrFrame) -> ArrayOrFrame:
        """Undo :meth:`transform`: a frame (unobserved cells stay 0.0) or an array [..., T, C]."""
        return self._apply(x, lambda a: a * self.std + self.mean)

    def _apply(self, x, fn):
        if isinstance(x, TimeSeriesFrame):
            out = np.where(x.observed > 0, fn(x.values.astype(np.float64)), 0.0).astype(np.float32)
            return dataclasses.replace(x, values=out)
        x = np.asarray(x)
        out = fn(x.astype(np.float64))
        return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def fit_scaler(train: TimeSeriesFrame) -> Scaler:
    """Mean and population std (ddof=0, as sklearn's StandardScaler) of the OBSERVED train values.

    A channel with zero variance gets std 1 (sklearn's rule); one with no observed value gets mean 0 and
    std 1, so it passes through unchanged instead of turning into NaN.
    """
    obs = train.observed > 0
    x = train.values.astype(np.float64)
    count = obs.sum(axis=-2, keepdims=True)
    mean = np.where(obs, x, 0.0).sum(axis=-2, keepdims=True) / np.maximum(count, 1)
    var = np.where(obs, (x - mean) ** 2, 0.0).sum(axis=-2, keepdims=True) / np.maximum(count, 1)
    std = np.sqrt(var)
    std = np.where((count == 0) | (std == 0.0), 1.0, std)
    return Scaler(mean=mean, std=std)


def count_windows(n_steps: int, context_length: int, horizon: int, stride: int = 1) -> int:
    """Number of (context, horizon) windows in ``n_steps`` rows: every start, none dropped."""
    if n_steps < context_length + horizon:
        return 0
    return (n_steps - context_length - horizon) // stride + 1


@dataclass(frozen=True, eq=False)
class Windows:
    """Sliding windows of a frame (read-only numpy views, no copies).

    Shapes for a [T, C] frame (an [N, T, C] frame adds a leading N): past_* [W, L, C], future_* [W, H, C],
    start [W] = the frame row of each window's first context step.
    """

    past_values: np.ndarray
    past_observed: np.ndarray
    future_values: np.ndarray
    future_observed: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return int(self.start.shape[0])


def sliding_windows(frame: TimeSeriesFrame, context_length: int, horizon: int, stride: int = 1) -> Windows:
    """All windows of ``context_length`` past steps followed by ``horizon`` future steps, every
    ``stride`` rows (stride 1 is the protocol's test setting), the last partial one excluded."""
    if context_length < 1 or horizon < 1 or stride < 1:
        raise ValueError(f"context_length={context_length}, horizon={horizon} and stride={stride} must be >= 1")
    n = count_windows(frame.n_steps, context_length, horizon, stride)
    if n == 0:
        raise ValueError(f"{frame.n_steps} steps hold no window of {context_length} + {horizon} steps")
    width = context_length + horizon

    def views(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # [..., T, C] -> [..., T - width + 1, C, width] -> [..., W, width, C]
        w = np.swapaxes(sliding_window_view(a, width, axis=-2), -1, -2)[..., ::stride, :, :]
        return w[..., :context_length, :], w[..., context_length:, :]

    past_values, future_values = views(frame.values)
    past_observed, future_observed = views(frame.observed)
    return Windows(past_values, past_observed, future_values, future_observed,
                   np.arange(n, dtype=np.int64) * stride)

"""Rolling-origin backtests for ``armt-ts evaluate``: forecast origins, the naive peers and the scores.

The series are cut at ``cut``: the model trains on steps [0, cut); forecasts start at origins cut, cut + stride, ...
(each needs ``horizon`` steps after it) and read only the steps before their origin. Scores are taken on every
observed (series, origin, step) and on z-scored values (each series by the mean and standard deviation of its
observed training steps, ``armt_ts.data.fit_scaler``), so series in different units weigh alike; the per-series
table also gives MAE in the series' own units. A series constant over its training steps has standard deviation 0
and is divided by 1 instead (its z-scores are in its own units; the command names it). A forecast whose context
holds no observed value of its series (a gap at least the context long ends at the origin) is left out of every
model's scores (``blind``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DAY_NS = 86_400 * 10**9


def origins(n_steps: int, cut: int, horizon: int, stride: int) -> np.ndarray:
    """Forecast origins t = cut, cut + stride, ... with t + horizon <= n_steps (empty when none fits)."""
    if not 0 < cut < n_steps or horizon < 1 or stride < 1:
        raise ValueError(f"origins: need 0 < cut={cut} < n_steps={n_steps}, horizon={horizon} >= 1, "
                         f"stride={stride} >= 1")
    return np.arange(cut, n_steps - horizon + 1, stride)


def blind(target: np.ndarray, t: int, context: int) -> np.ndarray:
    """[S] True where a series has no observed value in the ``context`` steps [t - context, t) before origin t.

    The model reads only those steps, so its forecast from there is made from nothing (a constant near 0, not the
    series' level) and ``armt-ts forecast`` never issues one; the naive peers would still look further back. Such
    (series, origin) pairs are left out of every model's scores, so that all three are scored on the same points."""
    return ~np.isfinite(target[:, max(0, t - context):t]).any(axis=1)


def default_season(step_ns: int | None, months: int | None) -> int:
    """Seasonal naive's period for a grid step: a day of sub-daily steps (24 hourly, 144 of 10 minutes), 7 for
    days, 12 for months, 4 for quarters; 1 (the last value) when no such period fits the step."""
    if step_ns is not None:
        if step_ns < _DAY_NS and _DAY_NS % step_ns == 0:
            return _DAY_NS // step_ns
        return 7 if step_ns == _DAY_NS else 1
    if months in (1, 3):
        return 12 // months
    return 1


def last_observed(target: np.ndarray, t: int) -> np.ndarray:
    """[S] each series' last observed value before step t (NaN where it has none)."""
    past = target[:, :t]
    seen = ~np.isnan(past)
    idx = np.where(seen.any(1), t - 1 - np.argmax(seen[:, ::-1], axis=1), 0)
    return np.where(seen.any(1), past[np.arange(len(past)), idx], np.nan)


def seasonal_naive(target: np.ndarray, t: int, horizon: int, season: int) -> np.ndarray:
    """[S, horizon]: step h repeats the value ``season`` steps before it in the last observed season before t
    (x[t - season + h mod season]); a missing one falls back to the series' last observed value."""
    h = np.arange(horizon)
    src = t - season + (h % season)
    out = np.full((len(target), horizon), np.nan)
    ok = src >= 0
    out[:, ok] = target[:, src[ok]]
    last = last_observed(target, t)[:, None]
    return np.where(np.isnan(out), last, out)


@dataclass
class Scores:
    """Sums over the observed points of one model, per series: squared and absolute errors (z units), absolute
    error (the series' units), quantile loss (z units, summed over the levels) and the point count."""

    sq: np.ndarray
    abs_z: np.ndarray
    abs_raw: np.ndarray
    qloss: np.ndarray
    n: np.ndarray
    n_levels: int

    @classmethod
    def zeros(cls, n_series: int, n_levels: int) -> Scores:
        z = np.zeros(n_series)
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(n_series, dtype=np.int64), n_levels)

    def add(self, point: np.ndarray, actual: np.ndarray, loc: np.ndarray, scale: np.ndarray,
            quantiles: np.ndarray | None = None, levels: np.ndarray | None = None) -> None:
        """point, actual [S, H] in the series' units (actual NaN where unobserved); loc, scale [S]; quantiles
        [S, Q, H] at ``levels`` [Q] (None for a point forecast)."""
        keep = ~np.isnan(actual)
        y = np.where(keep, actual, 0.0)
        err = np.where(keep, point - y, 0.0)
        self.sq += ((err / scale[:, None]) ** 2).sum(1)
        self.abs_z += (np.abs(err) / scale[:, None]).sum(1)
        self.abs_raw += np.abs(err).sum(1)
        self.n += keep.sum(1)
        if quantiles is not None:
            tau = np.asarray(levels, dtype=np.float64)[None, :, None]
            d = (y[:, None] - quantiles) / scale[:, None, None]
            pin = np.maximum(tau * d, (tau - 1) * d)  # pinball loss, z units
            self.qloss += np.where(keep[:, None], pin, 0.0).sum((1, 2))

    def summary(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """MSE and MAE (z units), MAE (series units) and CRPS (z units, approximated by twice the mean pinball loss
        over the quantile levels; None for point forecasts) over ``rows`` (default all series). With no scored point
        (every future value of those series missing) the scores are NaN: nothing was measured, not a perfect score."""
        sel = slice(None) if rows is None else rows
        n = int(self.n[sel].sum()) or float("nan")
        crps = 2.0 * float(self.qloss[sel].sum()) / (n * self.n_levels) if self.n_levels else None
        return {"mse": float(self.sq[sel].sum()) / n, "mae": float(self.abs_z[sel].sum()) / n,
                "mae_units": float(self.abs_raw[sel].sum()) / n, "crps": crps, "points": int(self.n[sel].sum())}

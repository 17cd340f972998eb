"""benchmarks/stream_accuracy.py: origins, panels and scoring on a tiny run (the real run trains three models)."""

import math

import numpy as np
import pytest

from armt_ts.cli import main as cli
from benchmarks import stream_accuracy as sa


def test_origin_bins_are_geometric_segment_ends_that_leave_a_horizon():
    bins = sa.origin_bins(2**20, 128)
    assert [(lo, hi) for lo, hi, _ in bins][:4] == [(128, 1024), (1024, 8192), (8192, 65536), (65536, 524288)]
    assert bins[-1][1] == (2**20 - sa.HORIZON - 128) // 128 * 128  # a segment of offsets and a horizon after it
    for lo, hi, origins in bins:
        assert 1 <= len(origins) <= sa.PER_BIN and origins == sorted(set(origins))
        assert all(lo < t <= hi and t % 128 == 0 for t in origins)
        assert origins[-1] == hi  # the bin's last origin is its edge: max |A| is read there


@pytest.mark.parametrize("kind", ["telemetry", "stationary"])
def test_panel_is_the_generator_series_flattened(kind):
    v, o, scale = sa.panel(kind, 500, 3)
    assert v.shape == (32, 500, 1) and o.shape == v.shape and scale.shape == (32,)
    assert np.array_equal(np.isnan(v), ~o)


def test_scores_every_forecaster_at_every_origin(tmp_path):
    model = tmp_path / "m"
    assert cli(["forecast", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--context", "96",
                "--save-model", str(model), "--no-plot", "--out", str(tmp_path / "f.csv")]) == 0
    v, o, scale = sa.panel("telemetry", 1200, 1)
    bins = sa.origin_bins(1200, 128)
    rows = sa.score(model, v, o, scale, bins)
    assert [(r["bin_lo"], r["bin_hi"]) for r in rows] == [(lo, hi) for lo, hi, _ in bins]
    for r in rows:
        mses = ("stream_mse", "stream_whole_mse", "batch_mse", "naive_mse", "stream_end_mse", "batch_end_mse")
        assert r["targets"] > 0 and all(math.isfinite(r[k]) and r[k] > 0 for k in mses)
        assert math.isfinite(r["max_abs_A"])  # 0 here: a 96-step training context never writes the memory
    # the naive forecast is the day before: its error is computable by hand for the first bin, whose origins are
    # its segment ends and every patch start (16 steps) of the segment after each
    t = [end + j * 16 for end in bins[0][2] for j in range(8)]
    e = [((v[:, s - 24:s, 0] - v[:, s:s + 24, 0]) / scale[:, None]) ** 2 for s in t]
    e = np.concatenate([x[np.isfinite(x)] for x in e])
    assert rows[0]["naive_mse"] == pytest.approx(e.mean(), rel=1e-6)

"""DESIGN section 7 protocol pieces on synthetic frames: splits, train-statistics z-scoring, stride-1
windows, and the GluonTS conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from armt_ts.data import (TimeSeriesFrame, count_windows, fit_scaler, read_wide, sliding_windows, split_borders,
                          standard_split, to_gluonts)


def hourly(T: int, C: int = 3, seed: int = 0, start: str = "2016-07-01T00:00") -> TimeSeriesFrame:
    rng = np.random.default_rng(seed)
    values = (rng.normal(size=(T, C)) * np.arange(1, C + 1) + 10 * np.arange(C)).astype(np.float32)
    stamps = np.datetime64(start, "ns") + np.arange(T) * np.timedelta64(1, "h")
    return TimeSeriesFrame(stamps, values, np.ones_like(values), [f"c{j}" for j in range(C)], "1h")


def test_split_borders_follow_the_protocol():
    L = 336
    assert split_borders("ETTh1", 17420, L) == ((0, 8640), (8640 - L, 11520), (11520 - L, 14400))
    assert split_borders("ETTh2", 14400, L) == split_borders("ETTh1", 17420, L)
    assert split_borders("ETTm1", 69680, L) == ((0, 34560), (34560 - L, 46080), (46080 - L, 57600))
    n = 52696
    n_train, n_test = int(n * 0.7), int(n * 0.2)
    n_val = n - n_train - n_test
    assert split_borders("Weather", n, L) == ((0, n_train), (n_train - L, n_train + n_val), (n - n_test - L, n))
    assert split_borders("Weather", n, L) == ((0, 36887), (36551, 42157), (41821, 52696))
    with pytest.raises(ValueError, match="at least 14400"):
        split_borders("ETTh1", 14399, L)
    with pytest.raises(ValueError, match="longer than"):
        split_borders("ETTh1", 17420, 9000)
    with pytest.raises(ValueError, match="must be one of"):
        split_borders("ETTh3", 17420, L)


def test_ett_test_windows_count_all_stride_1_windows():
    # 14400 - 11520 - 96 + 1 = 2785 per channel: the protocol counts every window, none dropped
    split = standard_split(hourly(17420, C=7), "ETTh1", context_length=336)
    windows = sliding_windows(split.test, context_length=336, horizon=96)
    assert len(windows) == 2785 == count_windows(split.test.n_steps, 336, 96)
    assert windows.past_values.shape == (2785, 336, 7) and windows.future_values.shape == (2785, 96, 7)
    # the first window's targets start at the first test row; the last one ends at row 14400
    np.testing.assert_array_equal(windows.future_values[0, 0], split.test.values[336])
    np.testing.assert_array_equal(windows.future_values[-1, -1], split.test.values[-1])
    assert split.test.timestamps[336] == hourly(17420).timestamps[11520]
    assert len(sliding_windows(split.test, 336, 96, stride=10)) == count_windows(split.test.n_steps, 336, 96, 10) == 279
    assert count_windows(100, 60, 50) == 0


def test_scaler_uses_train_statistics_of_observed_values_only():
    frame = hourly(17420)
    observed = frame.observed.copy()
    values = frame.values.copy()
    observed[:100, 0] = 0  # missing in train: must not count, whatever the value
    values[:100, 0] = 0.0
    values[9000:, 1] += 1000.0  # a shift after train must not leak into the statistics
    frame = TimeSeriesFrame(frame.timestamps, values, observed, frame.channels, frame.freq)
    split = standard_split(frame, "ETTh1", 96)
    scaler = fit_scaler(split.train)
    train = values[:8640].astype(np.float64)
    np.testing.assert_allclose(scaler.mean[0, 0], train[100:, 0].mean())
    np.testing.assert_allclose(scaler.std[0, 0], train[100:, 0].std())  # ddof=0, as sklearn
    np.testing.assert_allclose(scaler.mean[0, 1:], train[:, 1:].mean(axis=0))
    z = scaler.transform(split.train)
    np.testing.assert_allclose(z.values[100:, 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.values[100:, 0].std(), 1.0, atol=1e-5)
    assert (z.values[:100, 0] == 0).all()  # unobserved cells stay 0, not -mean/std
    assert z.values.dtype == np.float32
    back = scaler.inverse_transform(scaler.transform(split.test))
    np.testing.assert_allclose(back.values, split.test.values, rtol=1e-5, atol=1e-3)
    # arrays (e.g. windows) are scaled cell by cell; rows 200.. are all observed
    w = sliding_windows(z.slice(200, 1000), 24, 12)
    np.testing.assert_allclose(scaler.inverse_transform(w.past_values),
                               sliding_windows(split.train.slice(200, 1000), 24, 12).past_values, rtol=1e-5, atol=1e-3)


def test_scaler_degenerate_channels():
    values = np.array([[1, 5, 0], [1, 7, 0]], dtype=np.float32)
    observed = np.array([[1, 1, 0], [1, 1, 0]], dtype=np.float32)
    frame = TimeSeriesFrame(np.arange(2).astype("datetime64[ns]"), values, observed, ["a", "b", "c"], "1ns")
    scaler = fit_scaler(frame)
    np.testing.assert_array_equal(scaler.std, [[1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(scaler.mean, [[1.0, 6.0, 0.0]])


def test_split_counts_file_rows_when_the_grid_has_gaps(tmp_path):
    # Weather-like: 10 file rows, one repeated timestamp, one 2-step gap -> 11 grid steps
    rows = ["2020-01-01 00:00", "2020-01-01 00:10", "2020-01-01 00:10", "2020-01-01 00:20", "2020-01-01 00:50",
            "2020-01-01 01:00", "2020-01-01 01:10", "2020-01-01 01:20", "2020-01-01 01:30", "2020-01-01 01:40"]
    path = tmp_path / "w.csv"
    path.write_text("date,x\n" + "".join(f"{r},{i}\n" for i, r in enumerate(rows)))
    frame = read_wide(path, aggregate="first")
    assert frame.n_steps == 11 and frame.rows_per_step.sum() == 10
    split = standard_split(frame, "Weather", context_length=1)
    # file rows: n_train = 7, n_test = 2 -> val / test start at file rows 7 and 8 (01:10, 01:30)
    assert split.val.timestamps[1] == np.datetime64("2020-01-01T01:20")
    assert split.test.timestamps[1] == np.datetime64("2020-01-01T01:30")
    assert split.test.n_steps == 2 + 1
    grid_only = TimeSeriesFrame(frame.timestamps, frame.values, frame.observed, frame.channels, frame.freq)
    assert standard_split(grid_only, "Weather", 1).borders == split_borders("Weather", 11, 1)


def test_multi_series_frames_split_and_scale_per_series():
    a, b = hourly(17420, seed=1), hourly(17420, seed=2)
    frame = TimeSeriesFrame(a.timestamps, np.stack([a.values, b.values * 3]), np.stack([a.observed, b.observed]),
                            a.channels, "1h", series_ids=["a", "b"])
    split = standard_split(frame, "ETTh1", 96)
    scaler = fit_scaler(split.train)
    assert scaler.mean.shape == (2, 1, 3)
    np.testing.assert_allclose(scaler.std[1], 3 * fit_scaler(standard_split(b, "ETTh1", 96).train).std, rtol=1e-5)
    assert sliding_windows(split.test, 96, 24).past_values.shape == (2, 2880 - 24 + 1, 96, 3)


def test_gluonts_entries_are_float32_with_nan_for_missing():
    frame = hourly(48, C=2)
    observed = frame.observed.copy()
    observed[5, 1] = 0
    frame = TimeSeriesFrame(frame.timestamps, np.where(observed > 0, frame.values, 0).astype(np.float32), observed,
                            ["load", "OT"], "1h", source="/data/ETTh1.csv")
    uni = to_gluonts(frame)
    assert [e["item_id"] for e in uni] == ["load", "OT"]
    for entry, j in zip(uni, range(2)):
        assert entry["target"].dtype == np.float32 and entry["target"].shape == (48,)
        assert entry["start"] == pd.Period("2016-07-01 00:00", freq="h")
    assert np.isnan(uni[1]["target"][5]) and not np.isnan(uni[0]["target"]).any()
    multi = to_gluonts(frame, multivariate=True)
    assert len(multi) == 1 and multi[0]["target"].shape == (2, 48) and multi[0]["target"].dtype == np.float32
    assert multi[0]["item_id"] == "ETTh1"


def test_gluonts_feeds_a_gluonts_model_pipeline():
    from gluonts.dataset.split import split as gluonts_split

    ten_min = TimeSeriesFrame(np.datetime64("2020-01-01T00:10", "ns") + np.arange(40) * np.timedelta64(10, "m"),
                              np.ones((40, 1), np.float32), np.ones((40, 1), np.float32), ["x"], "10m")
    ds = to_gluonts(ten_min)
    assert ds[0]["start"] == pd.Period("2020-01-01 00:10", freq="10min")
    _, template = gluonts_split(ds, offset=-10)
    instances = list(template.generate_instances(prediction_length=5, windows=6, distance=1))
    assert len(instances) == 6 and instances[0][1]["target"].dtype == np.float32


def test_gluonts_multi_series_and_misaligned_start():
    a = hourly(10, C=2)
    frame = TimeSeriesFrame(a.timestamps, np.stack([a.values] * 2), np.stack([a.observed] * 2), a.channels, "1h",
                            series_ids=["s1", "s2"])
    assert [e["item_id"] for e in to_gluonts(frame)] == ["s1/c0", "s1/c1", "s2/c0", "s2/c1"]
    assert [e["item_id"] for e in to_gluonts(frame, multivariate=True)] == ["s1", "s2"]
    shifted = hourly(10, start="2016-07-01T00:30")
    with pytest.raises(ValueError, match="not the start"):
        to_gluonts(shifted)

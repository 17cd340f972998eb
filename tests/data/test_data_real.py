"""Real ETT and Weather files (skipped when the shared data folder is absent), including the protocol
sanity check of NOTES.md: repeat-last-value on ETTh1, H=96, L=336 gives MSE 1.294 and MAE 0.713."""

from __future__ import annotations

import numpy as np

from armt_ts.data import fit_scaler, sliding_windows, to_gluonts
from datasets.ett import ett_name, load_ett, load_ett_split
from datasets.weather import load_weather, load_weather_split

ETT_CHANNELS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def test_etth1_loads(shared_data):
    frame = load_ett(shared_data / "ett" / "ETTh1.csv")
    assert frame.values.shape == (17420, 7) and frame.channels == ETT_CHANNELS
    assert frame.freq == "1h" and frame.observed.all()
    assert frame.timestamps[0] == np.datetime64("2016-07-01T00:00")
    assert frame.timestamps[-1] == np.datetime64("2018-06-26T19:00")
    assert ett_name("my_etth2.parquet") == "ETTh2"


def test_etth1_repeat_last_value_matches_the_published_sanity_check(shared_data):
    split = load_ett_split(shared_data / "ett" / "ETTh1.csv", context_length=336)
    assert split.borders == ((0, 8640), (8304, 11520), (11184, 14400))
    scaler = fit_scaler(split.train)
    windows = sliding_windows(scaler.transform(split.test), context_length=336, horizon=96)
    assert len(windows) == 2785
    forecast = np.repeat(windows.past_values[:, -1:, :], 96, axis=1).astype(np.float64)
    error = forecast - windows.future_values
    assert abs((error ** 2).mean() - 1.294) < 0.002
    assert abs(np.abs(error).mean() - 0.713) < 0.002
    entries = to_gluonts(scaler.transform(split.test))
    assert len(entries) == 7 and all(e["target"].dtype == np.float32 for e in entries)


def test_ettm1_splits_at_four_times_the_hourly_borders(shared_data):
    split = load_ett_split(shared_data / "ett" / "ETTm1.csv", context_length=512)
    assert split.train.freq == "15m" and split.borders == ((0, 34560), (34048, 46080), (45568, 57600))
    assert len(sliding_windows(split.test, 512, 96)) == 11520 - 96 + 1


def test_weather_loads_with_odd_names_a_gap_and_a_repeat(shared_data):
    frame = load_weather(shared_data / "weather" / "weather.csv")
    assert frame.n_channels == 21 and frame.channels[-1] == "OT" and frame.freq == "10m"
    assert "SWDR (W/m\ufffd)" in frame.channels and "PAR (\ufffdmol/m\ufffd/s)" in frame.channels
    # 52,696 file rows, one exact repeat merged, one 9-step gap left unobserved
    assert frame.rows_per_step.sum() == 52696 and frame.n_steps == 52704
    assert int((frame.observed == 0).all(axis=1).sum()) == 9
    split = load_weather_split(shared_data / "weather" / "weather.csv", context_length=336)
    # cut at the public code's timestamps, so the test set has its 10,539 rows and every window
    assert split.test.timestamps[336] == np.datetime64("2020-10-19T19:40")
    assert split.val.timestamps[336] == np.datetime64("2020-09-13T05:20")
    assert len(sliding_windows(split.test, 336, 96)) == 10539 - 96 + 1

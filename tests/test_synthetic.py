"""Tests for datasets/synthetic.py, the seeded synthetic telemetry (the project's embedded default dataset)."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.synthetic import (
    EVENT_TYPES,
    EVENTS_SCHEMA,
    Telemetry,
    TelemetryConfig,
    events_frame,
    generate_telemetry,
    parse_freq,
    to_long,
    to_wide,
    write_csv,
    write_parquet,
)

# Everything off: each test switches on only the component it checks, so the others cannot mask it.
QUIET = dict(
    daily_amplitude=0.0, weekly_amplitude=0.0, trend_scale=0.0, n_factors=0, noise_scale=0.0,
    missing_block_rate=0.0, level_shift_rate=0.0, regime_rate=0.0, maintenance_rate=0.0,
)


def quiet(**changes) -> TelemetryConfig:
    return TelemetryConfig(**{**QUIET, **changes})


def standard(tel: Telemetry) -> np.ndarray:
    """[N, T, C] values back in standard units (before each channel's level and scale)."""
    return (tel.values - tel.level[:, None, :]) / tel.scale[:, None, :]


def acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def assert_same(a: Telemetry, b: Telemetry) -> None:
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    for name in ("values", "observed", "regime", "level_offset", "offline", "level", "scale"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.entities == b.entities and a.channels == b.channels
    assert a.events.equals(b.events)


# --- shapes, determinism, masks ---------------------------------------------------------------------


def test_default_shapes_dtypes_and_names():
    t0 = time.perf_counter()
    tel = generate_telemetry()
    assert time.perf_counter() - t0 < 1.0  # the README's default job must not wait on its data
    n, length, c = 8, 24 * 7 * 8, 4
    assert tel.shape == (n, length, c)
    assert tel.values.dtype == np.float32 and tel.observed.dtype == np.float32
    assert tel.timestamps.dtype == np.dtype("datetime64[ns]") and tel.timestamps.shape == (length,)
    assert tel.timestamps[0] == np.datetime64("2024-01-01T00:00:00")
    assert np.all(np.diff(tel.timestamps) == np.timedelta64(1, "h"))
    assert tel.entities == [f"entity_{i:03d}" for i in range(n)]
    assert tel.channels == [f"ch_{j}" for j in range(c)]
    assert tel.regime.shape == tel.level_offset.shape == tel.offline.shape == (n, length)
    assert tel.level.shape == tel.scale.shape == (n, c)
    assert dict(tel.events.schema) == EVENTS_SCHEMA
    assert events_frame(tel) is tel.events
    # The default dataset exercises every event type and has missing data.
    assert set(tel.events["event_type"].unique()) == set(EVENT_TYPES)
    assert 0 < (tel.observed == 0).mean() < 0.2
    # Events come in stream order and the value is null exactly for maintenance.
    assert tel.events.equals(tel.events.sort("timestamp", "entity", "event_type"))
    assert (tel.events["value"].is_null() == (tel.events["event_type"] == "maintenance")).all()


def test_deterministic_per_seed():
    cfg = TelemetryConfig(n_entities=5, length=400, level_shift_rate=0.01, regime_rate=0.01,
                          maintenance_rate=0.01, seed=7)
    assert_same(generate_telemetry(cfg), generate_telemetry(cfg))
    other = generate_telemetry(TelemetryConfig(n_entities=5, length=400, level_shift_rate=0.01,
                                               regime_rate=0.01, maintenance_rate=0.01, seed=8))
    assert not np.array_equal(generate_telemetry(cfg).values, other.values, equal_nan=True)
    assert not generate_telemetry(cfg).events.equals(other.events)


def test_components_draw_from_independent_streams():
    # Switching level shifts off leaves every other event and the missing pattern untouched.
    a = generate_telemetry(TelemetryConfig(level_shift_rate=0.01, seed=3))
    b = generate_telemetry(TelemetryConfig(level_shift_rate=0.0, seed=3))
    others = pl.col("event_type") != "level_shift"
    assert a.events.filter(others).equals(b.events.filter(others))
    np.testing.assert_array_equal(a.observed, b.observed)
    np.testing.assert_array_equal(a.regime, b.regime)


def test_chunked_assembly_does_not_change_values(monkeypatch):
    import datasets.synthetic as synthetic

    cfg = TelemetryConfig(n_entities=23, length=100, missing_block_rate=0.05, maintenance_rate=0.02)
    whole = generate_telemetry(cfg)
    monkeypatch.setattr(synthetic, "_CHUNK_ENTITIES", 5)  # uneven: the last chunk holds 3 entities
    assert_same(generate_telemetry(cfg), whole)


def test_mask_consistency():
    tel = generate_telemetry(TelemetryConfig(missing_block_rate=0.01, maintenance_rate=0.005))
    assert set(np.unique(tel.observed)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.isnan(tel.values), tel.observed == 0)
    assert np.isfinite(tel.values[tel.observed == 1]).all()


def test_missing_blocks_present_only_when_enabled():
    none = generate_telemetry(TelemetryConfig(missing_block_rate=0.0, maintenance_rate=0.0))
    assert (none.observed == 1).all()

    lo, hi = 5, 9
    tel = generate_telemetry(TelemetryConfig(missing_block_rate=0.01, missing_block_length=(lo, hi),
                                             maintenance_rate=0.0))
    missing = tel.observed == 0
    assert missing.any()
    # Missing data comes in runs of at least `lo` steps (overlapping blocks merge into longer runs),
    # except where the series ends inside a block.
    for series in missing.transpose(0, 2, 1).reshape(-1, tel.shape[1]):
        edges = np.diff(np.concatenate([[0], series.astype(np.int8), [0]]))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs = (stops - starts)[stops < tel.shape[1]]
        assert (runs >= lo).all()
    # Missing blocks are per channel: some steps have one channel missing and another observed.
    assert (missing.any(axis=2) & ~missing.all(axis=2)).any()


# --- structure: seasonality, correlation, entities --------------------------------------------------


def test_daily_seasonality():
    tel = generate_telemetry(quiet(daily_amplitude=1.0, noise_scale=0.1, n_entities=3))
    flat = generate_telemetry(quiet(daily_amplitude=0.0, noise_scale=0.1, n_entities=3))
    for i in range(3):
        for j in range(tel.shape[2]):
            x = tel.values[i, :, j]
            assert acf(x, 24) > 0.8 and acf(x, 12) < 0.0
            assert abs(acf(flat.values[i, :, j], 24)) < 0.2  # control: noise alone has no lag-24 memory


def test_weekly_seasonality():
    tel = generate_telemetry(quiet(weekly_amplitude=1.0, noise_scale=0.1, n_entities=3))
    for i in range(3):
        for j in range(tel.shape[2]):
            x = tel.values[i, :, j]
            assert acf(x, 168) > 0.8 and acf(x, 84) < 0.0


def test_seasonality_follows_the_calendar_for_any_freq():
    tel = generate_telemetry(quiet(daily_amplitude=1.0, freq="15min", length=96 * 14, n_entities=2))
    assert np.all(np.diff(tel.timestamps) == np.timedelta64(15, "m"))
    x = tel.values[0, :, 0]
    assert acf(x, 96) > 0.9 and acf(x, 48) < 0.0  # one day is 96 steps of 15 minutes


def test_channels_correlated_entities_differ():
    tel = generate_telemetry(quiet(n_factors=1, factor_scale=1.0, n_entities=4))
    for i in range(4):
        assert (np.abs(np.corrcoef(tel.values[i].T)) > 0.999).all()  # one shared factor drives every channel
    # Default structure: channels of one entity co-move more than the same channel across entities.
    full = generate_telemetry(TelemetryConfig(n_entities=16, missing_block_rate=0.0, maintenance_rate=0.0))
    within = np.mean([np.abs(np.corrcoef(full.values[i].T))[np.triu_indices(4, 1)].mean() for i in range(16)])
    across = np.mean([np.abs(np.corrcoef(full.values[:, :, j]))[np.triu_indices(16, 1)].mean() for j in range(4)])
    assert within > across + 0.1
    levels = np.nanmean(tel.values, axis=1)  # [N, C]
    assert np.unique(np.round(levels, 3)).size == levels.size
    assert np.unique(np.round(tel.scale, 4)).size == tel.scale.size


# --- typed events change the state ------------------------------------------------------------------


def test_level_shift_events_move_the_level():
    cfg = dict(daily_amplitude=1.0, weekly_amplitude=0.5, noise_scale=0.2, n_factors=2, n_entities=6,
               level_shift_scale=2.0)
    tel = generate_telemetry(quiet(level_shift_rate=0.005, **cfg))
    control = generate_telemetry(quiet(level_shift_rate=0.0, **cfg))  # same draws, no shifts
    shifts = tel.events.filter(pl.col("event_type") == "level_shift")
    assert shifts.height > 0
    # The shift is exactly the running sum of event values, in standard units on every channel.
    np.testing.assert_allclose(standard(tel) - standard(control),
                               np.broadcast_to(tel.level_offset[:, :, None], tel.shape), atol=1e-3)
    step_of = {ts: k for k, ts in enumerate(tel.timestamps.astype("datetime64[us]"))}
    w = 48
    checked = 0
    for row in shifts.iter_rows(named=True):
        i, t, v = tel.entity_index(row["entity"]), step_of[np.datetime64(row["timestamp"], "us")], row["value"]
        np.testing.assert_allclose(tel.level_offset[i, t] - tel.level_offset[i, t - 1], v, rtol=1e-5)
        # The brief's raw-data view: mean after minus mean before, net of the control, is about v * scale.
        others = shifts.filter((pl.col("entity") == row["entity"]) & (pl.col("timestamp") != row["timestamp"]))
        near = [abs(step_of[np.datetime64(ts, "us")] - t) for ts in others["timestamp"]]
        if t < w or t + w > tel.shape[1] or any(d < w for d in near):
            continue
        moved = (tel.values[i, t:t + w] - tel.values[i, t - w:t]).mean(axis=0)
        moved_control = (control.values[i, t:t + w] - control.values[i, t - w:t]).mean(axis=0)
        np.testing.assert_allclose((moved - moved_control) / tel.scale[i], v, atol=0.05)
        checked += 1
    assert checked > 0
    assert np.all(np.abs(shifts["value"].to_numpy()) >= 0.5 * 2.0 - 1e-9)


def test_regime_events_change_amplitude_and_noise():
    n = 6
    noisy = generate_telemetry(quiet(noise_scale=1.0, regime_rate=0.01, n_entities=n))
    calm = generate_telemetry(quiet(noise_scale=1.0, regime_rate=0.0, n_entities=n))
    regimes = noisy.events.filter(pl.col("event_type") == "regime")
    assert regimes.height > 0
    # The regime array changes exactly at the events, to the event's value, and never to itself.
    step_of = {ts: k for k, ts in enumerate(noisy.timestamps.astype("datetime64[us]"))}
    changes = set(zip(*np.nonzero(np.diff(noisy.regime.astype(int), axis=1))))
    events = {(noisy.entity_index(e), step_of[np.datetime64(ts, "us")] - 1): v
              for ts, e, v in regimes.select("timestamp", "entity", "value").iter_rows()}
    assert changes == set(events)
    for (i, t), v in events.items():
        assert noisy.regime[i, t + 1] == v
    assert (noisy.regime[:, 0] == 0).all()
    # Before an entity's first regime event nothing differs from the control.
    first = {}
    for (i, t) in sorted(events):
        first.setdefault(i, t + 1)
    for i in range(n):
        stop = first.get(i, noisy.shape[1])
        np.testing.assert_array_equal(noisy.values[i, :stop], calm.values[i, :stop])
    # Noise std in each regime follows regime_noise.
    z = standard(noisy)
    for r, mult in enumerate(noisy.config.regime_noise):
        sel = z[noisy.regime == r]
        if sel.size > 500:
            assert sel.std() == pytest.approx(mult, rel=0.1)

    # Seasonal amplitude follows regime_amplitude: with no noise, the ratio to the control is exact.
    seasonal = generate_telemetry(quiet(daily_amplitude=1.0, weekly_amplitude=0.5, regime_rate=0.01, n_entities=n))
    control = generate_telemetry(quiet(daily_amplitude=1.0, weekly_amplitude=0.5, regime_rate=0.0, n_entities=n))
    amp = np.asarray(seasonal.config.regime_amplitude)
    np.testing.assert_allclose(standard(seasonal), standard(control) * amp[seasonal.regime][:, :, None], atol=1e-3)


def test_maintenance_takes_entity_offline_and_resets_trend():
    lo, hi = 6, 10
    tel = generate_telemetry(quiet(trend_scale=1.0, maintenance_rate=0.004, maintenance_length=(lo, hi),
                                   n_entities=6))
    maint = tel.events.filter(pl.col("event_type") == "maintenance")
    assert maint.height > 0
    # Maintenance is the only source of missing data here, and it takes out every channel at once.
    np.testing.assert_array_equal(tel.observed == 0, np.repeat(tel.offline[:, :, None], tel.shape[2], axis=2))
    step_of = {ts: k for k, ts in enumerate(tel.timestamps.astype("datetime64[us]"))}
    z = standard(tel)
    length = tel.shape[1]
    for ts, e in maint.select("timestamp", "entity").iter_rows():
        i, t = tel.entity_index(e), step_of[np.datetime64(ts, "us")]
        assert tel.offline[i, t:min(t + lo, length)].all()
        back = t + np.argmin(tel.offline[i, t:]) if not tel.offline[i, t:].all() else length
        if back == length:
            continue
        # Trend restarts from zero when the entity comes back: value == level, then it drifts again.
        np.testing.assert_allclose(z[i, back], 0.0, atol=1e-4)
        if back + 1 < length and not tel.offline[i, back + 1]:
            assert np.all(np.abs(z[i, back + 1]) > 0)
    # Before the first maintenance the trend has been growing since step 0.
    first = maint.group_by("entity").agg(pl.col("timestamp").min())
    for e, ts in first.iter_rows():
        i, t = tel.entity_index(e), step_of[np.datetime64(ts, "us")]
        if t > 2:
            assert np.all(np.abs(z[i, t - 1]) > np.abs(z[i, 1]))


# --- config validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("field, bad", [
    ("n_entities", 0), ("n_channels", 1.5), ("length", 1), ("freq", "1x"), ("freq", "0h"),
    ("start", "not a date"), ("noise_scale", -1.0), ("daily_amplitude", float("nan")),
    ("n_factors", -1), ("factor_ar", 1.0), ("missing_block_rate", 1.5), ("level_shift_rate", -0.1),
    ("missing_block_length", (5, 2)), ("maintenance_length", (0, 3)), ("regime_amplitude", (1.0,)),
    ("regime_noise", (1.0, 2.0)), ("seed", -1), ("n_entities", True),
])
def test_config_validation_names_the_field(field, bad):
    with pytest.raises(ValueError, match=rf"TelemetryConfig\.{field}:"):
        TelemetryConfig(**{field: bad})


def test_config_accepts_lists_and_parse_freq():
    cfg = TelemetryConfig(missing_block_length=[2, 3], regime_amplitude=[1, 2], regime_noise=[1, 1])
    assert cfg.missing_block_length == (2, 3) and cfg.regime_amplitude == (1.0, 2.0)
    assert hash(cfg) == hash(TelemetryConfig(missing_block_length=(2, 3), regime_amplitude=(1.0, 2.0),
                                             regime_noise=(1.0, 1.0)))
    assert parse_freq("15min") == parse_freq("15m") == np.timedelta64(15, "m")
    assert parse_freq("1d") == np.timedelta64(24, "h")


# --- export ------------------------------------------------------------------------------------------


def small() -> Telemetry:
    return generate_telemetry(TelemetryConfig(n_entities=3, n_channels=2, length=200, missing_block_rate=0.02,
                                              level_shift_rate=0.02, regime_rate=0.02, maintenance_rate=0.01))


def test_to_long_round_trip():
    tel = small()
    n, length, c = tel.shape
    long = to_long(tel)
    assert long.columns == ["timestamp", "entity", "channel", "value"]
    assert long.height == n * length * c
    assert long.schema["timestamp"] == pl.Datetime("us") and long.schema["value"] == pl.Float32
    back = long["value"].to_numpy().reshape(length, n, c).transpose(1, 0, 2)  # rows: timestamp, entity, channel
    np.testing.assert_array_equal(back, tel.values)  # nulls come back as NaN
    assert long["value"].null_count() == int((tel.observed == 0).sum())
    assert long.filter(pl.col("entity") == "entity_002", pl.col("channel") == "ch_1")["value"].to_numpy() \
        .tolist() == pytest.approx(tel.values[2, :, 1].tolist(), nan_ok=True)
    sparse = to_long(tel, drop_missing=True)
    assert sparse.height == int(tel.observed.sum()) and sparse["value"].null_count() == 0


def test_to_wide():
    tel = small()
    wide = to_wide(tel, "entity_001")
    assert wide.columns == ["timestamp", *tel.channels] and wide.height == tel.shape[1]
    np.testing.assert_array_equal(wide.select(tel.channels).to_numpy(), tel.values[1])
    assert sum(wide[ch].null_count() for ch in tel.channels) == int((tel.observed[1] == 0).sum())
    assert to_wide(tel, 1).equals(wide)
    with pytest.raises(KeyError):
        to_wide(tel, "entity_999")


def test_write_csv_files_parse_back(tmp_path):
    tel = small()
    paths = write_csv(tel, tmp_path / "out")
    expected = {"telemetry_long", "events", *(f"telemetry_wide_{e}" for e in tel.entities)}
    assert set(paths) == expected and all(p.exists() for p in paths.values())

    long = pl.read_csv(paths["telemetry_long"], try_parse_dates=True)
    assert long.schema["timestamp"] == pl.Datetime("us")
    assert long.cast({"value": pl.Float32}).equals(to_long(tel))
    events = pl.read_csv(paths["events"], try_parse_dates=True, schema_overrides={"value": pl.Float64})
    assert events.equals(tel.events)
    wide = pl.read_csv(paths["telemetry_wide_entity_000"], try_parse_dates=True)
    assert wide.cast({ch: pl.Float32 for ch in tel.channels}).equals(to_wide(tel, 0))

    some = write_csv(tel, tmp_path / "one", wide_entities=[0])
    assert set(some) == {"telemetry_long", "events", "telemetry_wide_entity_000"}


def test_write_parquet_keeps_types(tmp_path):
    tel = small()
    paths = write_parquet(tel, tmp_path, wide_entities=["entity_002"])
    assert pl.read_parquet(paths["telemetry_long"]).equals(to_long(tel))
    assert pl.read_parquet(paths["events"]).equals(tel.events)
    assert pl.read_parquet(paths["telemetry_wide_entity_002"]).equals(to_wide(tel, 2))


# --- property -----------------------------------------------------------------------------------------


rate = st.floats(0.0, 0.3, allow_nan=False)
block = st.tuples(st.integers(1, 6), st.integers(0, 6)).map(lambda p: (p[0], p[0] + p[1]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_entities=st.integers(1, 3), n_channels=st.integers(1, 3), length=st.integers(2, 80),
    freq=st.sampled_from(["1h", "15min", "1d", "30s"]), noise_scale=st.floats(0.0, 2.0),
    n_factors=st.integers(0, 2), missing_block_rate=rate, missing_block_length=block,
    level_shift_rate=rate, regime_rate=rate, maintenance_rate=rate, maintenance_length=block,
    seed=st.integers(0, 2**32 - 1),
)
def test_any_valid_config_gives_consistent_masks(**kw):
    tel = generate_telemetry(TelemetryConfig(**kw))
    n, length, c = kw["n_entities"], kw["length"], kw["n_channels"]
    assert tel.shape == (n, length, c) and tel.observed.shape == (n, length, c)
    np.testing.assert_array_equal(np.isnan(tel.values), tel.observed == 0)
    assert np.isfinite(tel.values[tel.observed == 1]).all()
    assert ((tel.observed == 0) | (tel.observed == 1)).all()
    assert ((tel.regime >= 0) & (tel.regime < tel.config.n_regimes)).all()
    ev = tel.events
    assert dict(ev.schema) == EVENTS_SCHEMA
    assert set(ev["entity"].unique()) <= set(tel.entities)
    assert set(ev["event_type"].unique()) <= set(EVENT_TYPES)
    if ev.height:
        ts = tel.timestamps.astype("datetime64[us]")
        assert ev["timestamp"].min() > ts[0].item() and ev["timestamp"].max() <= ts[-1].item()


def test_a_zoned_start_and_overflowing_magnitudes_are_refused():
    with pytest.raises(ValueError, match="TelemetryConfig.start: must be naive"):
        TelemetryConfig(start="2024-01-01T00:00:00+05:00")
    with pytest.raises(ValueError, match="overflow float32"):
        generate_telemetry(TelemetryConfig(n_entities=2, n_channels=2, length=30, daily_amplitude=1e308))

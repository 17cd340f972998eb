"""The forecast and missing-channel benchmarks' own machinery on synthetic data: protocol window counts,
metrics, seasonal naive, last-value imputation, seeded hidden-channel and block masks, and the ARMT wrapper
with fully hidden channels. No real data and no long training: every test runs in seconds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from armt_ts.data import TimeSeriesFrame, Windows
from benchmarks.forecast import (BASELINE_SETTINGS, ARMTBench, ARMTHyper, PartialRows, eval_windows, grid_candidates,
                                 masked_errors, mean_wql, predict_armt, prepare_frame, run_horizon, seasonal_naive,
                                 train_armt)
from benchmarks.missing_channels import (block_mask, conditions, goal_check, hidden_by_channel_section,
                                         hidden_channel_mask, last_value_impute, make_augment, score)


def synthetic_frame(n_steps: int, n_channels: int = 7, seed: int = 0) -> TimeSeriesFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    values = (np.sin(2 * np.pi * t / 24 + np.arange(n_channels)) * (1 + np.arange(n_channels))
              + 0.1 * rng.standard_normal((n_steps, n_channels)) + 5.0).astype(np.float32)
    stamps = np.datetime64("2016-07-01T00:00") + np.arange(n_steps).astype("timedelta64[h]")
    return TimeSeriesFrame(stamps.astype("datetime64[ns]"), values, np.ones_like(values),
                           [f"c{i}" for i in range(n_channels)], "1h")


@pytest.fixture(scope="module")
def etth1_like():
    return prepare_frame(synthetic_frame(14400), "ETTh1", 336)


def test_every_stride1_test_window_is_counted(etth1_like):
    # ETTh1-sized split: the test part is rows [11520 - L, 14400), so 2880 - H + 1 windows, none dropped
    assert etth1_like.borders == ((0, 8640), (8304, 11520), (11184, 14400))
    assert len(eval_windows(etth1_like, 96)) == 2785
    assert len(eval_windows(etth1_like, 720)) == 2161
    assert len(eval_windows(etth1_like, 96, "val")) == 2785
    # the window count does not depend on the context length: val / test start L rows early
    assert len(eval_windows(prepare_frame(synthetic_frame(14400), "ETTh1", 4096), 96)) == 2785


def test_z_scoring_uses_train_statistics_only(etth1_like):
    train = etth1_like.train.values.astype(np.float64)
    np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), 1.0, atol=1e-4)


def test_masked_errors_ignore_unobserved_targets():
    pred = np.zeros((2, 3, 1))
    future = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0]).reshape(2, 3, 1)
    observed = np.ones_like(future)
    observed[1, 2, 0] = 0  # the 100 is missing and must not count
    m = masked_errors(pred, future, observed)
    assert m["mse"] == pytest.approx((1 + 4 + 9 + 16 + 25) / 5)
    assert m["mae"] == pytest.approx(15 / 5)


def test_mean_wql_matches_the_definition_and_is_zero_for_a_perfect_forecast():
    future = np.array([1.0, -2.0]).reshape(1, 2, 1)
    observed = np.ones_like(future)
    q = np.zeros((1, 2, 1, 1))
    # level 0.5: pinball = 0.5 * |y - q| -> 0.5 + 1.0; 2 * 1.5 / (|1| + |-2|) = 1.0
    assert mean_wql(q, future, observed, levels=(0.5,)) == pytest.approx(1.0)
    perfect = np.repeat(future[..., None], 3, axis=-1)
    assert mean_wql(perfect, future, observed, levels=(0.1, 0.5, 0.9)) == pytest.approx(0.0)


def test_mean_wql_in_blocks_of_windows_equals_the_one_shot_formula():
    # Weather-sized windows (H=720, 21 channels, 9 levels) span several of mean_wql's blocks
    rng = np.random.default_rng(0)
    levels = tuple(np.linspace(0.1, 0.9, 9))
    future = rng.standard_normal((70, 720, 21)).astype(np.float32)
    observed = (rng.random(future.shape) > 0.1).astype(np.float32)
    q = np.sort(rng.standard_normal((*future.shape, 9)).astype(np.float32), axis=-1)
    keep, y, tau = (observed > 0)[..., None], future.astype(np.float64)[..., None], np.asarray(levels)
    loss = np.where(keep, np.abs((y - q.astype(np.float64)) * ((y <= q).astype(np.float64) - tau)), 0.0)
    one_shot = np.mean(2.0 * loss.sum(axis=(0, 1, 2)) / np.where(keep[..., 0], np.abs(y[..., 0]), 0.0).sum())
    assert mean_wql(q, future, observed, levels) == pytest.approx(one_shot, rel=1e-12)


def test_seasonal_naive_repeats_the_last_season():
    past = np.arange(2 * 30 * 2, dtype=np.float32).reshape(2, 30, 2)
    w = Windows(past, np.ones_like(past), np.zeros((2, 10, 2), np.float32), np.ones((2, 10, 2), np.float32),
                np.arange(2))
    out = seasonal_naive(w, horizon=10, season=4)  # also checked against gluonts' predictor inside
    np.testing.assert_array_equal(out[:, :4], past[:, -4:])
    np.testing.assert_array_equal(out[:, 4:8], past[:, -4:])


def test_last_value_imputation_fills_forward_and_zero_before_the_first_value():
    values = np.array([[9.0, 1.0], [9.0, 2.0], [3.0, 9.0], [9.0, 9.0], [5.0, 6.0]], dtype=np.float32)[None]
    observed = np.array([[0, 1], [0, 1], [1, 0], [0, 0], [1, 1]], dtype=np.float32)[None]
    filled = last_value_impute(values, observed)
    np.testing.assert_array_equal(filled[0, :, 0], [0.0, 0.0, 3.0, 3.0, 5.0])
    np.testing.assert_array_equal(filled[0, :, 1], [1.0, 2.0, 2.0, 2.0, 6.0])


def test_hidden_channel_masks_are_reproducible_from_seeds():
    a = hidden_channel_mask(500, 7, 0.3, seed=1000)
    assert a.dtype == bool and a.shape == (500, 7)
    assert (a.sum(1) == 2).all()  # round(0.3 * 7) channels in every window
    np.testing.assert_array_equal(a, hidden_channel_mask(500, 7, 0.3, seed=1000))
    assert not np.array_equal(a, hidden_channel_mask(500, 7, 0.3, seed=1001))
    assert len({tuple(r) for r in a}) > 10  # a different subset from window to window
    assert not hidden_channel_mask(50, 7, 0.0, seed=1000).any()
    assert (hidden_channel_mask(50, 7, 0.5, seed=1000).sum(1) == 4).all()
    with pytest.raises(ValueError, match="fraction"):
        hidden_channel_mask(5, 7, 1.0, seed=0)


def test_block_masks_are_one_contiguous_block_of_5_to_20_percent():
    m = block_mask(200, 336, 7, 0.05, 0.20, seed=3)
    np.testing.assert_array_equal(m, block_mask(200, 336, 7, 0.05, 0.20, seed=3))
    length = m.sum(1)
    assert length.min() >= round(0.05 * 336) and length.max() <= round(0.20 * 336)
    starts = np.diff(m.astype(np.int8), axis=1, prepend=0) == 1
    assert (starts.sum(1) == 1).all()  # exactly one block per (window, channel)


def test_conditions_and_scores_separate_visible_and_hidden_channels(etth1_like):
    w = eval_windows(etth1_like, 24)
    conds = conditions(w, 7, seed=1000, quick=False)
    assert [c["hidden_fraction"] for c in conds] == [0.0, 0.1, 0.3, 0.5, None]
    c30 = conds[2]
    assert (c30["observed"].sum(1) == 0).sum() == c30["hidden"].sum()  # hidden channels: no observed context
    pred = np.array(w.future_values, dtype=np.float64)
    pred[np.broadcast_to(c30["hidden"][:, None, :], pred.shape)] += 1.0  # wrong by 1 on hidden channels only
    s = score(pred, w, c30["hidden"])
    assert s["mse_visible"] == pytest.approx(0.0) and s["mse_hidden"] == pytest.approx(1.0)
    assert s["mse_all"] == pytest.approx(2 / 7)
    # channel by channel: wrong by 1 wherever that channel was hidden, exact where it was seen
    assert s["mse_hidden_by_channel"] == pytest.approx([1.0] * 7) and s["mse_by_channel"] == pytest.approx(
        [c30["hidden"][:, c].mean() for c in range(7)])
    pred[..., 3] += 1.0  # channel 3 now also wrong by 1 where visible: its hidden error becomes 4, the others stay
    s = score(pred, w, c30["hidden"])
    assert s["mse_hidden_by_channel"] == pytest.approx([1.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0])
    assert score(pred, w, None)["mse_hidden_by_channel"] is None
    table = "\n".join(hidden_by_channel_section(
        [{"model": "X", "scenario": "channels", "hidden_fraction": 0.0, "mse_by_channel": [0.5] * 7,
          "mse_hidden_by_channel": None},
         {"model": "X", "scenario": "channels", "hidden_fraction": 0.3, **s}], [f"ch{c}" for c in range(7)]))
    assert "| X | none (all visible) | 0.5 |" in table and "| X | 0.3 | 1 | 1 | 1 | 4 |" in table
    rows = [{"model": m, "scenario": "channels", "hidden_fraction": 0.3, "relative_increase": v}
            for m, v in (("ARMT", 0.1), ("DLinear", 0.5), ("PatchTST", 0.3))]
    goal = goal_check(rows)
    assert goal["best_baseline"] == "PatchTST" and goal["met"] == {"ARMT": True}


def test_armt_wrapper_reads_fully_hidden_channels_through_masks(etth1_like):
    torch.manual_seed(0)
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, linear_skip=True, batch_size=4)
    model = ARMTBench(hyper, 7, 24, 96)
    w = eval_windows(prepare_frame(synthetic_frame(14400), "ETTh1", 96), 24)
    obs = np.array(w.past_observed[:8])
    obs[:, :, 2] = 0.0  # channel 2 hidden for the whole context
    values = np.array(w.past_values[:8])
    values[:, :, 2] = np.nan  # never read where unobserved
    loc, scale = ARMTBench.stats(torch.as_tensor(values), torch.as_tensor(obs))
    assert float(loc[:, 0, 2].abs().max()) == 0.0 and float((scale[:, 0, 2] - 1).abs().max()) == 0.0
    pred = predict_armt(model, values, obs, "cpu", bf16=False)
    assert pred.shape == (8, 24, 7) and np.isfinite(pred).all()
    # the hidden channel's history does not leak in: changing it changes nothing
    values2 = values.copy()
    values2[:, :, 2] = 123.0
    np.testing.assert_array_equal(pred, predict_armt(model, values2, obs, "cpu", bf16=False))


def test_armt_training_runs_a_step_budget_with_mask_augmentation(etth1_like):
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4)
    model = ARMTBench(hyper, 7, 24, 96)
    frame = prepare_frame(synthetic_frame(14400), "ETTh1", 96).train
    info = train_armt(model, frame, 96, 24, budget_s=60.0, seed=0, device="cpu", bf16=False, max_steps=3,
                      augment=make_augment(7))
    assert info["steps"] == 3 and np.isfinite(info["final_train_loss"])
    rng = np.random.default_rng(0)
    aug = make_augment(7, p=1.0)(rng, np.ones((16, 96, 7), np.float32))
    hidden = (aug.sum(1) == 0).sum(1)  # channels with no observed context, per window
    assert ((hidden >= 1) & (hidden <= 6)).all()


def test_train_armt_times_each_step_without_changing_the_training():
    """``step_seconds`` gets one positive time per optimiser step (the channel benchmark's step time) and the
    weights are those of the same run untimed."""
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4)
    frame = prepare_frame(synthetic_frame(14400), "ETTh1", 96).train
    timed, plain, seconds = ARMTBench(hyper, 7, 24, 96, seed=0), ARMTBench(hyper, 7, 24, 96, seed=0), []
    train_armt(timed, frame, 96, 24, budget_s=60.0, seed=0, device="cpu", bf16=False, max_steps=3,
               step_seconds=seconds)
    train_armt(plain, frame, 96, 24, budget_s=60.0, seed=0, device="cpu", bf16=False, max_steps=3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    for (name, a), b in zip(timed.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_batched_gluonts_prediction_matches_gluonts_own_predictor():
    """predict_gluonts calls the trained network on [W * C, L] at once; its means must equal the forecasts of
    gluonts' predictor, series by series (this checks the [W, H, C] reshapes too)."""
    import pandas as pd
    from gluonts.dataset.common import ListDataset

    from benchmarks.forecast import predict_gluonts, train_gluonts

    prep = prepare_frame(synthetic_frame(14400, n_channels=3), "ETTh1", 48)
    est, predictor, info = train_gluonts("DLinear", prep, 12, budget_s=60.0, seed=0, device="cpu", bf16=False,
                                         max_steps=2)
    assert info["steps"] == 2
    w = eval_windows(prep, 12)
    sub = Windows(w.past_values[:5], w.past_observed[:5], w.future_values[:5], w.future_observed[:5], w.start[:5])
    mean, q = predict_gluonts("DLinear", est, predictor, prep, sub, "cpu", bf16=False)
    assert mean.shape == (5, 12, 3) and q.shape == (5, 12, 3, 9)
    assert (np.diff(q, axis=-1) >= 0).all()  # quantiles increase with the level
    start = pd.Period("2020-01-01", freq="h")
    entries = [{"start": start, "target": sub.past_values[i, :, c]} for i in range(5) for c in range(3)]
    forecasts = list(predictor.predict(ListDataset(entries, freq="h")))
    ref = np.stack([f.mean for f in forecasts]).reshape(5, 3, 12).transpose(0, 2, 1)
    np.testing.assert_allclose(mean, ref, rtol=1e-4, atol=1e-4)


def test_deepar_prediction_matches_gluonts_own_forecasts_series_by_series():
    """_predict_deepar fills [W * C] float32 arrays as the predictor yields its forecasts (lists of float64
    quantiles ran out of memory on Weather at H=720); means and quantiles must be the sample forecasts' own, in the
    [W, H, C] layout."""
    import pandas as pd
    from gluonts.dataset.common import ListDataset

    from benchmarks.forecast import QUANTILE_LEVELS, predict_gluonts, train_gluonts

    prep = prepare_frame(synthetic_frame(14400, n_channels=3), "ETTh1", 48)
    est, predictor, info = train_gluonts("DeepAR", prep, 12, budget_s=60.0, seed=0, device="cpu", bf16=False,
                                         max_steps=2)
    w = eval_windows(prep, 12)
    sub = Windows(w.past_values[:4], w.past_observed[:4], w.future_values[:4], w.future_observed[:4], w.start[:4])
    torch.manual_seed(7)
    mean, q = predict_gluonts("DeepAR", est, predictor, prep, sub, "cpu", bf16=False)
    assert mean.shape == (4, 12, 3) and q.shape == (4, 12, 3, 9) and mean.dtype == q.dtype == np.float32
    assert (np.diff(q, axis=-1) >= 0).all()
    # the same draws again through gluonts' predictor (same seed, same batches)
    start = pd.Period(pd.Timestamp(prep.test.timestamps[0]), freq="h")
    entries = [{"start": start + int(sub.start[i]), "target": sub.past_values[i, :, c]}
               for i in range(4) for c in range(3)]
    torch.manual_seed(7)
    forecasts = list(predictor.predict(ListDataset(entries, freq="h")))
    ref_mean = np.stack([f.samples.mean(0) for f in forecasts]).reshape(4, 3, 12).transpose(0, 2, 1)
    ref_q = np.stack([np.quantile(f.samples, QUANTILE_LEVELS, axis=0).T for f in forecasts])
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q, ref_q.reshape(4, 3, 12, 9).transpose(0, 2, 1, 3), rtol=1e-5, atol=1e-6)


def test_cosine_schedule_decays_the_learning_rate_over_the_step_budget(monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, lr_schedule="cosine")
    assert hyper.name().endswith("-cos")
    frame = prepare_frame(synthetic_frame(14400), "ETTh1", 96).train
    train_armt(ARMTBench(hyper, 7, 24, 96), frame, 96, 24, budget_s=600.0, seed=0, device="cpu", bf16=False,
               max_steps=4)
    # f = steps / max_steps (the time fraction is far smaller): 0, 1/4, 1/2, 3/4
    np.testing.assert_allclose(seen, [1e-3 * 0.5 * (1 + np.cos(np.pi * f)) for f in (0, 0.25, 0.5, 0.75)],
                               rtol=1e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        ARMTHyper(lr_schedule="linear")


def test_ema_evaluates_the_warmed_up_moving_average_of_the_iterates(monkeypatch):
    iterates = []
    original = torch.optim.AdamW.step

    def step(self, *a, **kw):
        out = original(self, *a, **kw)
        iterates.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, ema=0.9)
    assert hyper.name().endswith("-ema0.9")
    model = ARMTBench(hyper, 7, 24, 96)
    start = [p.detach().clone() for p in model.parameters()]
    frame = prepare_frame(synthetic_frame(14400), "ETTh1", 96).train
    train_armt(model, frame, 96, 24, budget_s=600.0, seed=0, device="cpu", bf16=False, max_steps=5)
    assert len(iterates) == 5
    expected = start
    for t, it in enumerate(iterates, start=1):  # decay min(0.9, (1 + t) / (10 + t)): 2/11, 3/12, ...
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * x for e, x in zip(expected, it)]
    for p, e, last in zip(model.parameters(), expected, iterates[-1]):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(p.detach(), last) for p, last in zip(model.parameters(), iterates[-1]))
    with pytest.raises(ValueError, match="ema"):
        ARMTHyper(ema=1.0)


def test_armt_wrapper_with_the_channel_imputer_fills_hidden_channels_from_the_others():
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, impute=True)
    prep = prepare_frame(synthetic_frame(14400), "ETTh1", 96)
    model = ARMTBench(hyper, 7, 24, 96)
    train_armt(model, prep.train, 96, 24, budget_s=60.0, seed=0, device="cpu", bf16=False, max_steps=1)
    assert bool(model.forecaster.imputer.fitted) and hyper.name().endswith("-impute")
    w = eval_windows(prep, 24)
    obs = np.array(w.past_observed[:4])
    obs[:, :, 2] = 0.0
    values = np.array(w.past_values[:4])
    values[:, :, 2] = np.nan
    filled, kept = model.forecaster.impute(torch.as_tensor(values), torch.as_tensor(obs))
    assert kept.all() and torch.isfinite(filled).all()  # channel 2 is a phase-shifted sine of the others
    assert np.isfinite(predict_armt(model, values, obs, "cpu", bf16=False)).all()


def test_finished_rows_reach_disk_before_the_run_ends(tmp_path, etth1_like):
    # a run stopped by a time limit (a device call's timeout) keeps every row it finished

    path = tmp_path / "forecast_x.partial.json"
    partial = PartialRows(path, {"command": "cmd", "git_commit": "abc"})
    rows = run_horizon(etth1_like, 96, ARMTHyper(), ["SeasonalNaive"], budget_s=1.0, seed=0, device="cpu",
                       bf16=False, max_steps=None, on_row=partial.add)
    saved = json.loads(path.read_text())
    assert saved["partial"] is True and saved["command"] == "cmd" and saved["git_commit"] == "abc"
    assert [r["model"] for r in saved["rows"]] == ["SeasonalNaive"]
    assert saved["rows"][0]["mse"] == pytest.approx(rows[0]["mse"])
    partial.add({"model": "x", "mse": 1.0})
    assert [r["model"] for r in json.loads(path.read_text())["rows"]] == ["SeasonalNaive", "x"]
    assert not list(tmp_path.glob("*.tmp"))
    partial.close()
    assert not path.exists()


def test_dropout_reaches_the_backbone_in_training_only():
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, dropout=0.2)
    assert hyper.name().endswith("-do0.2")
    model = ARMTBench(hyper, 7, 24, 96)
    assert model.forecaster.config.armt.dropout == 0.2
    x = torch.randn(3, 96, 7)
    obs = torch.ones_like(x)
    torch.manual_seed(0)
    model.train()
    a, b = model(x, obs), model(x, obs)
    assert not torch.equal(a, b)  # dropout draws differ between the two training-mode calls
    model.eval()
    torch.testing.assert_close(model(x, obs), model(x, obs), rtol=0, atol=0)


def test_the_seed_fixes_the_initial_weights():
    # torch's start seed differs between processes, so the wrapper seeds its own construction
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4)
    torch.manual_seed(123)
    a = ARMTBench(hyper, 7, 24, 96, seed=5).state_dict()
    torch.manual_seed(456)
    b = ARMTBench(hyper, 7, 24, 96, seed=5).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = ARMTBench(hyper, 7, 24, 96, seed=6).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_grid_candidates_build_on_the_given_choice():
    given = ARMTHyper(linear_skip=True, lr_schedule="cosine")
    assert len(grid_candidates("small", given, from_file=False)) == 4
    assert grid_candidates("small", given, from_file=True) == [] == grid_candidates("none", given, from_file=False)
    for kind, field, values in (("ema", "ema", [0.0, 0.98, 0.995]), ("dropout", "dropout", [0.0, 0.1, 0.2]),
                                ("schedule", "lr_schedule", [given.lr_schedule, "cosine", "cosine"]),
                                ("channels", "channel_independent", [False, True, True]),
                                ("width", "d_model", [64, 32, 16]), ("loss", "loss", ["mse", "huber", "mae"])):
        grid = grid_candidates(kind, given, from_file=True)
        assert grid[0] == given and [getattr(h, field) for h in grid] == values
        assert all(h.linear_skip for h in grid)  # the given choice's other fields are kept
    grid = grid_candidates("head", given, from_file=True)
    assert grid[0] == given and [h.head_patches for h in grid] == [1, 4, 8]
    grid = grid_candidates("skip", given, from_file=True)
    assert grid[0] == given and [(h.linear_skip, h.loss) for h in grid] == [
        (True, "mse"), (False, "mse"), (True, "huber"), (False, "huber")]
    assert all(h.lr_schedule == "cosine" for h in grid)


def test_the_flatten_head_reads_the_last_k_patches_of_every_channel():
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, patch_len=8, stride=8, head_patches=2)
    model = ARMTBench(hyper, 3, 24, 96, seed=0).eval()
    assert hyper.name().endswith("-hp2") and isinstance(model.forecaster.head, torch.nn.Identity)
    x = torch.randn(2, 96, 3, generator=torch.Generator().manual_seed(0))
    obs = torch.ones(2, 96, 3)
    with torch.no_grad():
        y = model(x, obs)
        loc, scale = model.stats(x, obs)
        out = model.forecaster.encode(x, obs, loc=loc, scale=scale)[0]  # [2, 12 patches * 3 channels, 16]
        # channel c's representation: patch 10's and patch 11's outputs of channel c, in time order
        rep = torch.stack([torch.cat([out[:, 10 * 3 + c], out[:, 11 * 3 + c]], dim=-1) for c in range(3)], dim=1)
        expect = loc + scale * model.flat(rep).transpose(1, 2)
    assert y.shape == (2, 24, 3)
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-6)
    # encode + the forecaster's own head is forward, bit for bit
    plain = ARMTBench(ARMTHyper(d_model=16, n_layers=1, segment_patches=4), 3, 24, 96, seed=0).eval()
    with torch.no_grad():
        f = plain.forecaster
        enc = f.encode(x, obs)
        assert torch.equal(f.head(enc[0][:, -3:])[0], f(x, obs).params[0])
    with pytest.raises(ValueError, match="head_patches"):
        ARMTHyper(segment_patches=4, head_patches=5)


def test_a_channel_independent_model_forecasts_each_channel_from_itself_alone():
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, linear_skip=True, channel_independent=True)
    model = ARMTBench(hyper, 5, 24, 96, seed=0).eval()
    assert model.forecaster.config.patch.n_channels == 1  # one set of weights for every channel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, 5, generator=gen)
    obs = torch.ones(3, 96, 5)
    with torch.no_grad():
        y = model(x, obs)
        x2 = x.clone()
        x2[:, :, 2] = 10 * torch.randn(3, 96, generator=gen)
        y2 = model(x2, obs)
        # channel c of a batch is the same forecast as the univariate series alone
        alone = model.forecaster(x[:, :, 3:4], obs[:, :, 3:4], loc=model.stats(x, obs)[0][:, :, 3:4],
                                 scale=model.stats(x, obs)[1][:, :, 3:4]).params[0]
    assert y.shape == (3, 24, 5)
    changed = (y2 - y).abs().amax(dim=(0, 1))
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3, 4]] == 0)
    loc, scale = model.stats(x, obs)
    skip = model.skip(((x[:, -96:, 3:4] - loc[:, :, 3:4]) / scale[:, :, 3:4]).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y[:, :, 3:4], loc[:, :, 3:4] + scale[:, :, 3:4] * (alone + skip), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impute"):
        ARMTHyper(channel_independent=True, impute=True)


def test_the_missing_channel_benchmark_keeps_finished_rows_when_a_run_stops(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.missing_channels as mc
    monkeypatch.setattr(mc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    monkeypatch.setattr(mc, "prepare", lambda path, dataset, L: prepare_frame(synthetic_frame(2000, 3), dataset, L))
    argv = ["--data", _placeholder(tmp_path), "--dataset", "Weather", "--horizon", "12", "--context-length", "192",
            "--quick", "--out", "mc_x"]

    def stop(*args, **kwargs):
        raise RuntimeError("the run stops here")

    # the second model's training stops the run after SeasonalNaive's rows are done: those rows stay on disk
    real_train = mc.train_gluonts
    monkeypatch.setattr(mc, "train_gluonts", stop)
    with pytest.raises(RuntimeError, match="the run stops here"):
        mc.main(argv + ["--models", "SeasonalNaive", "DLinear"])
    monkeypatch.setattr(mc, "train_gluonts", real_train)
    saved = json.loads((tmp_path / "mc_x.partial.json").read_text())
    assert saved["partial"] is True and "missing_channels" in saved["command"]
    assert [r["model"] for r in saved["rows"]] == ["SeasonalNaive"] * 4  # 0 / 0.1 / 0.3 hidden and blocks
    assert not (tmp_path / "mc_x.json").exists()
    # a complete run writes the result and removes the partial file
    payload = mc.main(argv + ["--models", "SeasonalNaive"])
    assert not (tmp_path / "mc_x.partial.json").exists()
    assert json.loads((tmp_path / "mc_x.json").read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
    assert [r["mse_all"] for r in payload["rows"]] == [r["mse_all"] for r in saved["rows"]]


def test_the_mask_augmentation_strength_is_chosen_on_the_validation_split(tmp_path, monkeypatch, capsys):
    import benchmarks.common
    import benchmarks.missing_channels as mc
    monkeypatch.setattr(mc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    monkeypatch.setattr(mc, "prepare", lambda path, dataset, L: prepare_frame(synthetic_frame(2000, 3), dataset, L))
    seen = []  # every augmentation the trainings used: (p, fraction of windows it masked)
    real_train = mc.train_armt

    def spy(model, *args):
        aug = args[-1]
        if aug is not None:
            rng = np.random.default_rng(0)
            masked = [bool((aug(rng, np.ones((1, 8, 3), np.float32)) == 0).any()) for _ in range(400)]
            seen.append(np.mean(masked))
        return real_train(model, *args)

    monkeypatch.setattr(mc, "train_armt", spy)
    payload = mc.main(["--data", _placeholder(tmp_path), "--dataset", "Weather", "--horizon", "12", "--context-length",
                       "192",
                       "--quick", "--max-steps", "2", "--models", "SeasonalNaive", "ARMT (mask-aug)",
                       "--aug-p", "0.1", "0.6", "--out", "mc_aug"])
    grid = payload["aug_grid"]
    assert [g["aug_p"] for g in grid] == [0.1, 0.6] and all(g["variant"] == "ARMT (mask-aug)" for g in grid)
    assert payload["aug_p"] == min(grid, key=lambda g: g["val_mse_all"])["aug_p"]
    assert all(g["val_windows"] > 0 and g["val_mse_hidden"] is not None for g in grid)
    # the two candidates, then the test model with the chosen p: masked ~1.5 p of the windows
    assert len(seen) == 3 and seen[0] == pytest.approx(0.15, abs=0.06) and seen[1] == pytest.approx(0.9, abs=0.06)
    assert seen[2] == seen[[0.1, 0.6].index(payload["aug_p"])]
    assert "chosen on the validation split" in (tmp_path / "mc_aug.md").read_text()
    with pytest.raises(SystemExit):
        mc.main(["--data", _placeholder(tmp_path), "--aug-p", "1.2"])
    assert "--aug-p: every value must be a fraction" in capsys.readouterr().err
    # above p = 2/3 the blocks take the rest of the windows: p = 0.9 masks every window, 0.9 of them by channel
    rng = np.random.default_rng(0)
    outs = [mc.make_augment(3, 0.9)(rng, np.ones((1, 40, 3), np.float32))[0] for _ in range(2000)]
    by_channel = np.mean([bool((o == 0).all(0).any()) for o in outs])
    assert all((o == 0).any() for o in outs) and by_channel == pytest.approx(0.9, abs=0.03)


def _placeholder(tmp_path) -> str:
    """A --data file that exists (the parser checks) for tests whose ``prepare`` never reads it."""
    path = tmp_path / "never_read.csv"
    path.write_text("")
    return str(path)


def _run_file(path, horizons, models=("ARMT", "DLinear"), **over):
    payload = {"benchmark": "forecast", "dataset": "ETTh1", "protocol": "DESIGN.md section 7 (exactly)",
               "command": f"python -m benchmarks.forecast --horizons {' '.join(map(str, horizons))}",
               "git_commit": "abc", "seed": 0, "wall_seconds": 10.0, "machine": {"cpu_model": "x"},
               "budget": {"kind": "wall seconds per trained model", "train_seconds": 150.0, "max_steps": None,
                          "threads": 1, "bf16": False},
               "armt_chosen": {"linear_skip": True, "lr_schedule": "cosine"}, "baseline_settings": BASELINE_SETTINGS,
               "rows": [{"dataset": "ETTh1", "horizon": h, "model": m, "source": "same-run", "table": "main",
                         "context_length": 336, "mse": 0.3 + h / 1000 + (0.01 if m == "ARMT" else 0.0), "mae": 0.4,
                         "crps": None, "params": 1, "train_seconds": 150.0, "train_steps": 10,
                         "predict_ms_per_window": 1.0, "n_test_windows": 100} for h in horizons for m in models]
               + [{"dataset": "ETTh1", "horizon": horizons[0], "model": "PatchTST/64", "source": "published",
                   "mse": 0.37, "mae": 0.4, "table": "main"}]}
    payload.update(over)
    path.write_text(json.dumps(payload))
    return path


def test_the_choices_grid_decides_between_earlier_choices_on_validation(tmp_path, monkeypatch, capsys):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    monkeypatch.setattr(fc, "prepare", lambda path, dataset, L: prepare_frame(synthetic_frame(2000, 3), dataset, L))
    small = dict(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols-frozen")
    a = _run_file(tmp_path / "a.json", [96], armt_chosen=dict(small, lr=1e-3))
    b = _run_file(tmp_path / "b.json", [720], armt_chosen=dict(small, lr=1e-4, skip_norm="last"))
    argv = ["--data", _placeholder(tmp_path), "--dataset", "Weather", "--horizons", "24", "--context-length", "96",
            "--models",
            "ARMT", "--train-seconds", "1e9", "--max-steps", "2", "--val-stride", "50", "--out", "ch"]
    payload = fc.main(argv + ["--grid", "choices", "--armt-from", str(a), str(b), str(a)])
    grid = payload["armt_grid"]
    assert [(g["lr"], g["skip_norm"]) for g in grid] == [(1e-3, "window"), (1e-4, "last")]  # each choice once
    best = min(grid, key=lambda g: g["val_mse"])
    assert {k: payload["armt_chosen"][k] for k in ("lr", "skip_norm")} == {k: best[k] for k in ("lr", "skip_norm")}
    assert str(b) in payload["armt_hyper_source"] and "grid=choices" in payload["armt_hyper_source"]
    # several files are for --grid choices only, and it needs two different choices
    with pytest.raises(SystemExit):
        fc.main(argv + ["--grid", "none", "--armt-from", str(a), str(b)])
    assert "several are for --grid choices only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fc.main(argv + ["--grid", "choices", "--armt-from", str(a), str(a)])
    assert "--grid choices: give --armt-from two or more" in capsys.readouterr().err
    # --armt-set changes fields of the given choice (every one of them under --grid choices) and is recorded
    payload = fc.main(argv + ["--grid", "none", "--armt-from", str(b), "--armt-set", "read_norm_cap=5"])
    assert payload["armt_chosen"]["read_norm_cap"] == 5 and payload["armt_chosen"]["lr"] == 1e-4
    assert "set read_norm_cap=5" in payload["armt_hyper_source"]
    with pytest.raises(SystemExit):
        fc.main(argv + ["--grid", "none", "--armt-from", str(b), "--armt-set", "read_cap=5"])
    assert "--armt-set" in capsys.readouterr().err
    # a field only valid on the given choice (the cross-channel term needs its least-squares skip), not the default
    payload = fc.main(argv + ["--grid", "none", "--armt-from", str(b), "--armt-set", "cross_lags=2"])
    assert payload["armt_chosen"]["cross_lags"] == 2 and payload["armt_chosen"]["skip_init"] == "ols-frozen"
    with pytest.raises(SystemExit):  # without a given choice it applies to the default, which has no skip
        fc.main(argv + ["--grid", "none", "--armt-set", "cross_lags=2"])
    assert "--armt-set" in capsys.readouterr().err


def test_the_read_guard_bounds_retrieved_rows_and_is_exact_where_it_does_not_bind(etth1_like):
    from benchmarks.forecast import parse_armt_set
    small = ARMTHyper(d_model=16, n_layers=1, segment_patches=2, batch_size=4, linear_skip=True,
                      skip_init="ols-frozen", skip_norm="last")
    assert parse_armt_set(["read_norm_cap=20", "skip_norm=window", "lr=1e-4"]) == {
        "read_norm_cap": 20, "skip_norm": "window", "lr": 1e-4}
    for bad in (["cap=20"], ["read_norm_cap"]):
        with pytest.raises(ValueError, match="FIELD=VALUE"):
            parse_armt_set(bad)
    with pytest.raises(ValueError, match="read_norm_cap"):
        ARMTHyper(read_norm_cap=0)
    assert dataclasses.replace(small, read_norm_cap=20).name() == small.name() + "-cap20"
    w = eval_windows(etth1_like, 24)
    x, obs = torch.as_tensor(w.past_values[:8]), torch.as_tensor(w.past_observed[:8])
    outs = {}
    for cap in (None, 1e6, 1e-3):
        model = ARMTBench(dataclasses.replace(small, read_norm_cap=cap), 7, 24, 336, seed=0)
        assert model.forecaster.config.armt.read_norm_cap == cap
        with torch.no_grad():  # a non-zero memory value map, so reads are not all zero
            for m in model.forecaster.backbone.memories:
                m.W_v.weight.normal_(0, 0.5)
            model.forecaster.head.out.weight.normal_(0, 0.1)
            outs[cap] = model(x, obs)
    assert torch.equal(outs[None], outs[1e6])  # a guard that never binds changes nothing, bit for bit
    assert not torch.allclose(outs[None], outs[1e-3], atol=1e-4)


def test_a_non_finite_loss_stops_training_with_the_last_finite_weights(etth1_like):
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols")
    ref = ARMTBench(hyper, 7, 24, 336, seed=0)
    info = train_armt(ref, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=2)
    assert info["steps"] == 2 and info["nonfinite_step"] is None
    model = ARMTBench(hyper, 7, 24, 336, seed=0)
    real, calls = model.forward, []

    def nan_on_third(values, observed):  # the third training batch's forecast is NaN (as a runaway read gives)
        calls.append(1)
        out = real(values, observed)
        return out * float("nan") if len(calls) == 3 else out
    model.forward = nan_on_third
    info = train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=5)
    assert info["steps"] == 2 and info["nonfinite_step"] == 2
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name  # the weights after the two finite steps, not NaN


def test_argmin_finite_never_chooses_a_non_finite_candidate():
    from benchmarks.common import argmin_finite
    assert argmin_finite([float("nan"), 0.5, 0.3, float("inf"), None], "x") == 2
    with pytest.raises(RuntimeError, match="every candidate's score is non-finite"):
        argmin_finite([float("nan"), None], "grid")


def test_merging_runs_keeps_each_rows_run_and_refuses_runs_that_differ(tmp_path, monkeypatch, capsys):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    a = _run_file(tmp_path / "run_a.json", [96])
    b = _run_file(tmp_path / "run_b.json", [192, 336, 720], armt_chosen={"linear_skip": True, "lr_schedule": "cosine",
                                                                           "ema": 0.0})  # a newer file's defaults
    out = fc.main(["--merge-from", str(a), str(b), "--out", "merged"])
    same = [r for r in out["rows"] if r["source"] == "same-run"]
    assert [(r["horizon"], r["model"], r["run"]) for r in same] == [
        (96, "ARMT", "run_a"), (96, "DLinear", "run_a"), (192, "ARMT", "run_b"), (192, "DLinear", "run_b"),
        (336, "ARMT", "run_b"), (336, "DLinear", "run_b"), (720, "ARMT", "run_b"), (720, "DLinear", "run_b")]
    avg = out["summary"]["average_mse_over_horizons"]
    assert avg["ARMT (same-run)"] == pytest.approx(0.3 + 0.01 + (96 + 192 + 336 + 720) / 4000)
    assert out["summary"]["armt_average_below_every_same_run_baseline"] is False
    published = {(r["model"], r["horizon"]) for r in out["rows"] if r["source"] == "published"}
    assert ("PatchTST/64", 720) in published and ("PatchTST/64", 96) in published  # made anew for every horizon
    assert [m["horizons"] for m in out["merged_from"]] == [[96], [192, 336, 720]]
    saved = json.loads((tmp_path / "merged.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(out["rows"]))
    assert (tmp_path / "merged.png").exists() and "run_b" in (tmp_path / "merged.md").read_text()
    # a different budget, a shared (horizon, model) or a partial file: refused, naming the file and the field
    c = _run_file(tmp_path / "run_c.json", [192], budget={"train_seconds": 45.0})
    with pytest.raises(ValueError, match=r"run_c.json: field 'budget'"):
        fc.merge_results([a, c], "x")
    d = _run_file(tmp_path / "run_d.json", [96, 192])
    with pytest.raises(ValueError, match=r"run_d.json: H=96 ARMT is also in .*run_a.json"):
        fc.merge_results([a, d], "x")
    # the context budget is per horizon: every model at a horizon reads the same L, horizons may differ
    g = _run_file(tmp_path / "run_g.json", [96], models=("PatchTST",))
    g.write_text(g.read_text().replace('"context_length": 336', '"context_length": 512'))
    with pytest.raises(ValueError, match=r"H=96 used different context lengths \(336 in run_a, 512 in run_g\)"):
        fc.merge_results([a, g], "x")
    g2 = _run_file(tmp_path / "run_g2.json", [192])
    g2.write_text(g2.read_text().replace('"context_length": 336', '"context_length": 512'))
    per_h = fc.merge_results([a, g2], "per_h")
    assert per_h["context_length_by_horizon"] == {96: 336, 192: 512}
    assert "H=96 L=336, H=192 L=512" in (tmp_path / "per_h.md").read_text()
    assert out["context_length_by_horizon"] == {96: 336, 192: 336, 336: 336, 720: 336}
    assert "Context length 336 for every model." in (tmp_path / "merged.md").read_text()
    e = _run_file(tmp_path / "run_e.json", [192], benchmark="streaming")
    with pytest.raises(ValueError, match="run_e.json: not a benchmarks.forecast result"):
        fc.merge_results([a, e], "x")
    with pytest.raises(SystemExit):  # the CLI turns a refusal into a usage error
        fc.main(["--merge-from", str(a), str(c), "--out", "x"])
    assert "error:" in capsys.readouterr().err
    # runs whose validation grids chose different ARMT settings: merged, each choice recorded with its run
    f = _run_file(tmp_path / "run_f.json", [192, 336, 720], armt_chosen={"linear_skip": True, "skip_init": "ols"})
    out = fc.merge_results([a, f], "mixed")
    assert out["armt_chosen"] is None
    assert {k: v["skip_init"] for k, v in out["armt_chosen_by_run"].items()} == {"run_a": "random", "run_f": "ols"}
    text = (tmp_path / "mixed.md").read_text()
    assert "-ols` in run_f" in text and "-cos` in run_a" in text
    assert out["armt_chosen_by_run"] == json.loads((tmp_path / "mixed.json").read_text())["armt_chosen_by_run"]
    with pytest.raises(SystemExit):  # --armt-from needs one choice
        fc.main(["--data", _placeholder(tmp_path), "--dataset", "ETTh1", "--armt-from", str(tmp_path / "mixed.json")])
    assert "no single armt_chosen there" in capsys.readouterr().err
    # PATH@H: only those horizons of a run (here d's H=192 gives way to a later run's H=192)
    sel = fc.merge_results([f"{d}@96", f], "sel")
    assert {(r["horizon"], r["run"]) for r in sel["rows"] if r["source"] == "same-run"} == {
        (96, "run_d"), (192, "run_f"), (336, "run_f"), (720, "run_f")}
    assert [(m["horizons"], m["horizons_left_out"]) for m in sel["merged_from"]] == [
        ([96], [192]), ([192, 336, 720], [])]
    assert "its H = 192 rows left out" in (tmp_path / "sel.md").read_text()
    with pytest.raises(ValueError, match=r"horizons \[720\] are not in that run"):
        fc.merge_results([f"{d}@96,720", f], "x")
    with pytest.raises(ValueError, match="integer horizons"):
        fc.merge_results([f"{d}@h96", f], "x")


def test_the_training_loss_options():
    from benchmarks.forecast import pointwise_loss
    err = torch.tensor([0.0, 0.5, -2.0, 3.0])
    assert torch.equal(pointwise_loss(err, "mse"), err ** 2)
    assert torch.equal(pointwise_loss(err, "mae"), err.abs())
    # Huber, delta 1: quadratic inside, linear outside, continuous at |e| = 1
    torch.testing.assert_close(pointwise_loss(err, "huber"), torch.tensor([0.0, 0.125, 1.5, 2.5]))
    with pytest.raises(ValueError, match="ARMTHyper.loss"):
        ARMTHyper(loss="l2")
    assert ARMTHyper(loss="huber").name().endswith("-huber") and "mse" not in ARMTHyper().name()


def test_a_stopped_run_contributes_the_horizons_it_finished(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    a = _run_file(tmp_path / "run_a.json", [720])
    cmd = ("python -m benchmarks.forecast --data x.csv --dataset ETTh1 --horizons 96 192 336 720 --models ARMT "
           "DLinear --train-seconds 150 --threads 1 --out stopped")
    full = json.loads(_run_file(tmp_path / "tmp.json", [96, 192]).read_text())
    # what PartialRows leaves: the header and the finished rows (H=336 has only ARMT: the run stopped there)
    rows = full["rows"][:4] + [dict(full["rows"][0], horizon=336)]
    ablation = [dict(full["rows"][0], model="ARMT: least-squares skip alone", table="ablation", horizon=h)
                for h in (96, 336)]
    stopped = tmp_path / "stopped.partial.json"
    stopped.write_text(json.dumps({"command": cmd, "git_commit": "def", "armt_chosen": full["armt_chosen"],
                                   "partial": True, "rows": rows + ablation}))
    out = fc.merge_results([stopped, a], "merged")
    assert [(r["horizon"], r["model"], r["run"]) for r in out["rows"] if r["source"] == "same-run"] == [
        (96, "ARMT", "stopped.partial"), (96, "DLinear", "stopped.partial"),
        (96, "ARMT: least-squares skip alone", "stopped.partial"), (192, "ARMT", "stopped.partial"),
        (192, "DLinear", "stopped.partial"), (720, "ARMT", "run_a"), (720, "DLinear", "run_a")]
    first = out["merged_from"][0]
    assert first["partial"] is True and first["rows_left_out"] == 2 and first["horizons"] == [96, 192]
    assert "stopped early" in (tmp_path / "merged.md").read_text()
    # the settings come from its command line: another budget there is refused like a complete file's
    stopped.write_text(json.dumps({"command": cmd.replace("150", "45"), "armt_chosen": full["armt_chosen"],
                                   "partial": True, "rows": rows}))
    with pytest.raises(ValueError, match="field 'budget'"):
        fc.merge_results([stopped, a], "x")
    stopped.write_text(json.dumps({"command": cmd, "partial": True, "rows": rows[4:]}))
    with pytest.raises(ValueError, match="finished no horizon"):
        fc.merge_results([stopped, a], "x")


def val_every_7th(prep) -> Windows:
    """Every 7th H=24 validation window of ``prep``, in float64 (the least-squares fit tests' rows)."""
    w = eval_windows(prep, 24, "val")
    return Windows(*(a[::7].astype(np.float64) if a.dtype.kind == "f" else a[::7]
                     for a in (w.past_values, w.past_observed, w.future_values, w.future_observed, w.start)))


def fitted_error(model: ARMTBench, sub: Windows) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Fit ``model``'s least-squares parts on ``sub`` with ridge 0, backpropagate the MSE of its forecast; returns
    the error and (past values, past observed, future values) as tensors."""
    model.fit_skip(sub, ridge=0.0)
    pv, po, fv = (torch.as_tensor(a) for a in (sub.past_values, sub.past_observed, sub.future_values))
    err = model(pv, po) - fv
    (err ** 2).mean().backward()
    return err, (pv, po, fv)


def test_the_least_squares_skip_fit_zeroes_the_gradient_of_the_training_mse(etth1_like):
    # ridge 0: the fit solves the normal equations of the data-unit MSE of the model whose network output is zero
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols")
    assert hyper.name().endswith("-ols")
    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    assert torch.count_nonzero(model.forecaster.head.out.weight) == 0  # the network starts as a zero residual
    sub = val_every_7th(etth1_like)
    info = model.fit_skip(sub, ridge=0.0)
    assert info["rows"] == len(sub.past_values) * 7
    pv, po = torch.as_tensor(sub.past_values), torch.as_tensor(sub.past_observed)
    err = model(pv, po) - torch.as_tensor(sub.future_values)
    (err ** 2).mean().backward()
    grad = torch.cat([model.skip.weight.grad.flatten(), model.skip.bias.grad])
    assert grad.abs().max() < 1e-8
    # the untrained model is the skip's forecast alone
    loc, scale = model.stats(pv, po)
    alone = loc + scale * model.skip(model.skip_inputs(pv, po, loc, scale)).transpose(1, 2)
    torch.testing.assert_close(model(pv, po), alone)
    # a better fit than the random skip it replaced, on the rows it was fitted to
    other = ARMTBench(dataclasses.replace(hyper, skip_init="random"), 7, 24, 96, seed=0).double()
    assert ((other(pv, po) - torch.as_tensor(sub.future_values)) ** 2).mean() > (err ** 2).mean()


def test_the_skip_anchored_at_the_last_value_fits_and_forecasts_around_it(etth1_like):
    # skip_norm "last": the skip maps (context - last observed value) / scale to (future - that value) / scale
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols",
                      skip_norm="last", skip_ridge=0.0)
    assert hyper.name().endswith("-ols-last-sr0")
    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    sub = val_every_7th(etth1_like)
    pv, po = torch.as_tensor(sub.past_values), torch.as_tensor(sub.past_observed).clone()
    # the anchor: the last observed value; a channel with nothing observed falls back to loc
    po[0, -5:, 2] = 0
    po[1, :, 4] = 0
    loc, scale = model.stats(pv, po)
    anchor = model.skip_anchor(pv, po, loc)
    assert anchor[0, 0, 2] == pv[0, -6, 2] and anchor[0, 0, 1] == pv[0, -1, 1] and anchor[1, 0, 4] == loc[1, 0, 4]
    assert torch.all(model.skip_inputs(pv, po, anchor, scale)[0, 1, -1] == 0)  # the last step minus itself
    # the fit zeroes the gradient of the training MSE (ridge 0), and the untrained model forecasts around the anchor
    model.fit_skip(sub)
    po = torch.as_tensor(sub.past_observed)
    err = model(pv, po) - torch.as_tensor(sub.future_values)
    (err ** 2).mean().backward()
    assert torch.cat([model.skip.weight.grad.flatten(), model.skip.bias.grad]).abs().max() < 1e-8
    loc, scale = model.stats(pv, po)
    anchor = model.skip_anchor(pv, po, loc)
    alone = anchor + scale * model.skip(model.skip_inputs(pv, po, anchor, scale)).transpose(1, 2)
    torch.testing.assert_close(model(pv, po), alone)
    # the default ridge is the hyperparameter's
    ridged = ARMTBench(dataclasses.replace(hyper, skip_ridge=0.5), 7, 24, 96, seed=0).double()
    ridged.fit_skip(sub)
    assert ridged.skip.weight.abs().sum() < model.skip.weight.abs().sum()
    with pytest.raises(ValueError, match="skip_norm"):
        ARMTHyper(skip_norm="mean")
    with pytest.raises(ValueError, match="needs linear_skip=True"):
        ARMTHyper(skip_norm="last")
    # with the cross-channel term: both fitted at ridge 0 (the zero last-step columns get weight 0) zero the gradient
    both = ARMTBench(dataclasses.replace(hyper, cross_lags=3, cross_ridge=0.0), 7, 24, 96, seed=0).double()
    both.fit_skip(sub)
    err = both(pv, po) - torch.as_tensor(sub.future_values)
    (err ** 2).mean().backward()
    assert both.cross.grad.abs().max() < 1e-8 and torch.count_nonzero(both.cross) > 0
    assert torch.all(both.cross[:, 2::3] == 0)  # every channel's last step (minus itself) is 0: weight 0
    with pytest.raises(ValueError, match="skip_ridge"):
        ARMTHyper(skip_ridge=-1.0)


def test_recency_weighting_fits_the_recency_weighted_mse_and_is_checked(etth1_like):
    # skip_halflife h: each train window weighs 0.5 ** (age / (h * span)) in both least-squares fits, so at ridge 0
    # the fit zeroes the gradient of the recency-weighted training MSE (the skip's; then the cross term's)
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols",
                      skip_ridge=0.0, skip_halflife=0.25)
    assert hyper.name().endswith("-ols-sr0-hl0.25")
    sub = val_every_7th(etth1_like)
    pv, po, fv = (torch.as_tensor(a) for a in (sub.past_values, sub.past_observed, sub.future_values))
    start = sub.start.astype(np.float64)
    r = torch.as_tensor(0.5 ** ((start.max() - start) / (0.25 * (start.max() - start.min()))))[:, None, None]
    assert torch.isclose(r.min(), torch.tensor(0.0625).double()) and r.max() == 1.0  # the oldest: 2^-4 of the newest

    def weighted_mse(m):
        return (r * (m(pv, po) - fv) ** 2).mean()

    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    model.fit_skip(sub)
    weighted_mse(model).backward()
    assert torch.cat([model.skip.weight.grad.flatten(), model.skip.bias.grad]).abs().max() < 1e-8
    plain = ARMTBench(dataclasses.replace(hyper, skip_halflife=None), 7, 24, 96, seed=0).double()
    plain.fit_skip(sub)
    with torch.no_grad():  # a different fit, the better one under the weights it minimises
        assert not torch.allclose(plain.skip.weight, model.skip.weight)
        assert weighted_mse(model) < weighted_mse(plain)
    both = ARMTBench(dataclasses.replace(hyper, cross_lags=3, cross_ridge=0.0), 7, 24, 96, seed=0).double()
    both.fit_skip(sub)
    weighted_mse(both).backward()
    assert both.cross.grad.abs().max() < 1e-8 and torch.count_nonzero(both.cross) > 0
    for bad, match in ((dict(skip_halflife=0.0), "skip_halflife"), (dict(skip_halflife=-1.0), "skip_halflife"),
                       (dict(skip_init="random", skip_halflife=0.5), "skip_halflife")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(hyper, **bad)
    # the recency grid: the given choice first, then half-lives 1 / 0.5 / 0.25 / 0.125 (no duplicate of the given)
    assert [h.skip_halflife for h in grid_candidates("recency", hyper, from_file=True)] == [0.25, 1.0, 0.5, 0.125]
    with pytest.raises(ValueError, match="--grid recency"):
        grid_candidates("recency", ARMTHyper(linear_skip=True), from_file=True)


def test_per_channel_skips_pooled_towards_the_shared_one_solve_their_ridge_problem(etth1_like):
    # skip_pool a: channel c's map w_c = shared + skip_channel[c] minimises its rows' data-unit squared error plus
    # a * m_c * |w_c - shared|^2, bias included (m_c: the mean diagonal of c's Gram matrix over the weights), so its
    # gradient with respect to skip_channel is 0 at the fit; a -> inf gives the shared map, a -> 0 each channel alone
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols",
                      skip_ridge=0.0, skip_pool=0.05)
    assert hyper.name().endswith("-ols-sr0-pool0.05")
    sub = val_every_7th(etth1_like)
    pv, po, fv = (torch.as_tensor(a) for a in (sub.past_values, sub.past_observed, sub.future_values))
    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    assert model.skip_channel.shape == (7, 97, 24) and torch.count_nonzero(model.skip_channel) == 0
    info = model.fit_skip(sub)
    assert info["rows"] == len(sub.past_values) * 7
    x = torch.cat([xb for xb, *_ in model._fit_batches(sub, 1024)])  # [B, C, L'] skip inputs
    wt = torch.cat([wb for _, _, wb, _ in model._fit_batches(sub, 1024)])  # [B, C, 1] row weights (scale)
    m = ((x * wt) ** 2).mean(2).sum(0)  # [C]: each channel's mean Gram diagonal over the weights
    loss = ((model(pv, po) - fv) ** 2).sum() + (0.05 * m[:, None, None] * model.skip_channel ** 2).sum()
    loss.backward()
    assert model.skip_channel.grad.abs().max() < 1e-7 * loss.item()
    assert torch.count_nonzero(model.skip_channel) > 0
    # against the shared fit alone: the pooled one is better on the rows it was fitted to
    shared = ARMTBench(dataclasses.replace(hyper, skip_pool=None), 7, 24, 96, seed=0).double()
    assert shared.skip_channel is None
    shared.fit_skip(sub)
    with torch.no_grad():
        torch.testing.assert_close(model.skip.weight, shared.skip.weight)  # the shared map is the same fit
        assert ((model(pv, po) - fv) ** 2).mean() < ((shared(pv, po) - fv) ** 2).mean()
        strong = ARMTBench(dataclasses.replace(hyper, skip_pool=1e9), 7, 24, 96, seed=0).double()
        strong.fit_skip(sub)
        torch.testing.assert_close(strong(pv, po), shared(pv, po))  # a huge pull: the shared map
        # each channel alone (a -> 0) fits its own rows at least as well as any pooled map
        alone = ARMTBench(dataclasses.replace(hyper, skip_pool=1e-12), 7, 24, 96, seed=0).double()
        alone.fit_skip(sub)
        per_channel = lambda mdl: ((mdl(pv, po) - fv) ** 2).mean((0, 1))  # noqa: E731
        assert torch.all(per_channel(alone) <= per_channel(model) + 1e-12)
    # the cross-channel term is fitted on the pooled skip's residual: at ridge 0 its gradient vanishes
    both = ARMTBench(dataclasses.replace(hyper, cross_lags=3, cross_ridge=0.0), 7, 24, 96, seed=0).double()
    both.fit_skip(sub)
    ((both(pv, po) - fv) ** 2).mean().backward()
    assert both.cross.grad.abs().max() < 1e-8 and torch.count_nonzero(both.cross) > 0
    # frozen with the skip under "ols-frozen"
    frozen = ARMTBench(dataclasses.replace(hyper, skip_init="ols-frozen"), 7, 24, 96, seed=0)
    assert not frozen.skip_channel.requires_grad and model.skip_channel.requires_grad
    for bad in (dict(skip_pool=0.0), dict(skip_pool=-1.0), dict(skip_init="random", skip_pool=0.5)):
        with pytest.raises(ValueError, match="skip_pool"):
            dataclasses.replace(hyper, **bad)
    # the pool grid: the given choice first, then 1 / 0.1 / 0.01 (no duplicate of the given)
    assert [h.skip_pool for h in grid_candidates("pool", dataclasses.replace(hyper, skip_pool=0.1),
                                                 from_file=True)] == [0.1, 1.0, 0.01]
    with pytest.raises(ValueError, match="--grid pool"):
        grid_candidates("pool", ARMTHyper(linear_skip=True), from_file=True)


def test_a_frozen_least_squares_skip_stays_fixed_while_the_network_trains(etth1_like):
    base = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True)
    skips = {}
    for init in ("ols", "ols-frozen"):
        model = ARMTBench(dataclasses.replace(base, skip_init=init), 7, 24, 336, seed=0)
        info = train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False,
                          max_steps=0)
        assert info["steps"] == 0 and info["skip_fit_seconds"] > 0
        fitted = model.skip.weight.detach().clone()
        train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=3)
        skips[init] = (fitted, model.skip.weight.detach())
        assert torch.count_nonzero(model.forecaster.head.out.weight) > 0  # the network's output layer learns
    assert torch.equal(*skips["ols-frozen"]) and not torch.equal(*skips["ols"])
    torch.testing.assert_close(skips["ols"][0], skips["ols-frozen"][0], rtol=0, atol=0)  # the same fit
    with pytest.raises(ValueError, match="needs linear_skip=True"):
        ARMTHyper(skip_init="ols")
    with pytest.raises(ValueError, match="ARMTHyper.skip_init"):
        ARMTHyper(linear_skip=True, skip_init="lstsq")
    grid = grid_candidates("ols", ARMTHyper(loss="huber"), from_file=True)
    assert [(h.linear_skip, h.skip_init, h.loss) for h in grid] == [
        (False, "random", "huber"), (True, "ols", "huber"), (True, "ols-frozen", "huber")]


def test_a_least_squares_skip_run_reports_the_skip_alone_as_an_ablation(tmp_path, monkeypatch, etth1_like):
    import benchmarks.common
    import benchmarks.forecast as fc
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True,
                      skip_init="ols-frozen")
    rows = run_horizon(etth1_like, 24, hyper, ["ARMT"], budget_s=1e9, seed=0, device="cpu", bf16=False,
                       max_steps=2)
    assert [(r["model"], r.get("table", "main"), r["train_steps"]) for r in rows] == [
        ("ARMT", "main", 2), ("ARMT: least-squares skip alone", "ablation", 0)]
    assert rows[1]["params"] == 336 * 24 + 24 and rows[1]["mse"] != rows[0]["mse"]
    assert "best_step" not in rows[0]
    # with early stopping the row says which check it kept; the ablation is the same fit, with no step to stop at
    es = run_horizon(etth1_like, 24, dataclasses.replace(hyper, val_every=1), ["ARMT"], budget_s=1e9, seed=0,
                     device="cpu", bf16=False, max_steps=2, check_stride=50)
    assert es[0]["val_checks"] == 3 and es[0]["best_step"] in (0, 1, 2) and es[0]["best_val_mse"] > 0
    assert es[1]["mse"] == rows[1]["mse"] and es[1]["hyperparameters"]["val_every"] == 1
    # kept by a merge, outside the averages
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    a = _run_file(tmp_path / "run_a.json", [96])
    payload = json.loads(a.read_text())
    payload["rows"].append(dict(payload["rows"][0], model="ARMT: least-squares skip alone", table="ablation"))
    a.write_text(json.dumps(payload))
    out = fc.merge_results([a, _run_file(tmp_path / "run_b.json", [192])], "merged")
    assert [r["model"] for r in out["rows"] if r.get("table") == "ablation"] == ["ARMT: least-squares skip alone"]
    assert not any("least-squares" in k for k in out["summary"]["average_mse_over_horizons"])
    assert "## Ablation" in (tmp_path / "merged.md").read_text()


def test_the_residual_grid_lowers_the_networks_learning_rate_over_a_least_squares_skip():
    grid = grid_candidates("residual", ARMTHyper(lr=1e-3, loss="huber"), from_file=True)
    assert [(h.linear_skip, h.skip_init, h.lr, h.loss) for h in grid] == [
        (True, "ols-frozen", pytest.approx(1e-3 / 3), "huber"), (True, "ols-frozen", pytest.approx(1e-4), "huber"),
        (True, "ols", pytest.approx(1e-4), "huber")]


def test_the_grid_scores_a_least_squares_candidates_skip_alone_on_validation(etth1_like):
    from benchmarks.forecast import select_armt
    small = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4)
    grid = [dataclasses.replace(small, linear_skip=True), dataclasses.replace(small, linear_skip=True,
                                                                              skip_init="ols-frozen")]
    best, scores = select_armt(etth1_like, 24, grid, budget_s=1e9, seed=0, device="cpu", bf16=False, val_stride=50,
                               max_steps=2)
    assert best in grid and "val_mse_skip_alone" not in scores[0]
    alone = ARMTBench(grid[1], 7, 24, 336, seed=0)
    train_armt(alone, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=0)
    wv = eval_windows(etth1_like, 24, "val")
    idx = np.arange(0, len(wv), 50)
    m = masked_errors(predict_armt(alone, wv.past_values[idx], wv.past_observed[idx], "cpu", False),
                      wv.future_values[idx], wv.future_observed[idx])
    assert scores[1]["val_mse_skip_alone"] == pytest.approx(m["mse"], rel=1e-6)
    assert scores[1]["val_mse_skip_alone"] != scores[1]["val_mse"]


def test_context_table_rows_carry_the_same_validation_scores_as_the_grid(etth1_like):
    from benchmarks.forecast import select_armt
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True,
                      skip_init="ols-frozen")
    rows = run_horizon(etth1_like, 24, hyper, ["SeasonalNaive", "ARMT"], budget_s=1e9, seed=0, device="cpu",
                       bf16=False, max_steps=2, val_stride=50)
    _, scores = select_armt(etth1_like, 24, [hyper], budget_s=1e9, seed=0, device="cpu", bf16=False, val_stride=50,
                            max_steps=2)
    naive, armt, alone = rows
    assert "val_mse" not in naive  # validation scores are ARMT's (the context table's), not the peers'
    assert armt["val_mse"] == pytest.approx(scores[0]["val_mse"], rel=1e-6)
    assert alone["val_mse"] == pytest.approx(scores[0]["val_mse_skip_alone"], rel=1e-6)
    assert armt["val_windows"] == alone["val_windows"] == len(range(0, len(eval_windows(etth1_like, 24, "val")), 50))
    # without val_stride the rows are as before: test numbers only
    plain = run_horizon(etth1_like, 24, hyper, ["ARMT"], budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=2)
    assert [r["mse"] for r in plain] == [armt["mse"], alone["mse"]]
    assert not any("val_mse" in r for r in plain)


def test_the_cross_channel_term_is_the_least_squares_fit_of_the_skips_residual(etth1_like):
    # cross_ridge 0: per output channel, the term solves the normal equations of the data-unit MSE of the skip's
    # residual, so the training MSE's gradient with respect to it vanishes right after the fit
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols",
                      cross_lags=4, cross_ridge=0.0)
    assert hyper.name().endswith("-ols-x4r0")
    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    assert model.cross.shape == (7, 7 * 4 + 1, 24) and torch.count_nonzero(model.cross) == 0
    sub = val_every_7th(etth1_like)
    err, (pv, po, fv) = fitted_error(model, sub)
    assert model.cross.grad.abs().max() < 1e-8
    # the untrained model is the skip plus the cross-channel term, and the term reads the other channels
    loc, scale = model.stats(pv, po)
    x = model.skip_inputs(pv, po, loc, scale)
    alone = loc + scale * (model.skip(x) + torch.einsum("bf,cfh->bch", model.cross_inputs(x), model.cross)
                           ).transpose(1, 2)
    torch.testing.assert_close(model(pv, po), alone)
    off_diagonal = model.cross[:, :-1].reshape(7, 7, 4, 24).clone()
    off_diagonal[torch.arange(7), torch.arange(7)] = 0
    assert off_diagonal.abs().sum() > 0
    # the same skip as without the term (fitted first), and a lower in-sample error with it
    plain = ARMTBench(dataclasses.replace(hyper, cross_lags=0), 7, 24, 96, seed=0).double()
    plain.fit_skip(sub, ridge=0.0)
    torch.testing.assert_close(plain.skip.weight, model.skip.weight, rtol=0, atol=0)
    with torch.no_grad():
        assert ((plain(pv, po) - fv) ** 2).mean() > (err.detach() ** 2).mean()


def test_the_cross_channel_terms_block_means_read_each_channels_longer_past(etth1_like):
    # cross_blocks b: after every channel's last k steps, its means over the last skip_len // b blocks of b steps
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True, skip_init="ols",
                      cross_lags=2, cross_ridge=0.0, cross_blocks=40)
    assert hyper.name().endswith("-ols-x2r0b40")
    model = ARMTBench(hyper, 7, 24, 96, seed=0).double()
    assert model.cross.shape == (7, 7 * (2 + 2) + 1, 24)  # 96 // 40 = 2 blocks: steps 16-55 and 56-95
    x = torch.randn(3, 7, 96, dtype=torch.float64)
    f = model.cross_inputs(x)
    torch.testing.assert_close(f[:, :14], x[:, :, -2:].reshape(3, 14), rtol=0, atol=0)
    blocks = f[:, 14:-1].reshape(3, 7, 2)
    torch.testing.assert_close(blocks[..., 0], x[:, :, 16:56].mean(2))
    torch.testing.assert_close(blocks[..., 1], x[:, :, 56:].mean(2))
    assert torch.equal(f[:, -1], torch.ones(3, dtype=torch.float64))
    # with ridge 0 the fit zeroes the training MSE's gradient with respect to the term, block means included
    sub = val_every_7th(etth1_like)
    err, (pv, po, fv) = fitted_error(model, sub)
    assert model.cross.grad.abs().max() < 1e-8
    assert model.cross[:, 14:-1].abs().sum() > 0
    # lags alone are a special case of lags and block means: the in-sample error is no higher with the means
    lags = ARMTBench(dataclasses.replace(hyper, cross_blocks=0), 7, 24, 96, seed=0).double()
    lags.fit_skip(sub, ridge=0.0)
    with torch.no_grad():
        assert ((lags(pv, po) - fv) ** 2).mean() > (err.detach() ** 2).mean()
    for bad in (dict(cross_blocks=16), dict(cross_lags=2, cross_blocks=-1), dict(cross_lags=2, cross_blocks=True),
                dict(cross_lags=2, cross_blocks=1.5)):
        with pytest.raises(ValueError, match="cross_blocks"):
            ARMTHyper(linear_skip=True, skip_init="ols", **bad)
    with pytest.raises(ValueError, match="cross_blocks=97 exceeds the skip's 96"):
        ARMTBench(dataclasses.replace(hyper, cross_blocks=97), 7, 24, 96)
    # the blocks grid: the given choice, then blocks of 16 and 8 at its ridge and at 3x (no duplicate)
    given = ARMTHyper(linear_skip=True, skip_init="ols-frozen", cross_lags=8, cross_ridge=3.0)
    assert [(h.cross_blocks, h.cross_ridge) for h in grid_candidates("blocks", given, from_file=True)] == [
        (0, 3.0), (16, 3.0), (16, 9.0), (8, 3.0), (8, 9.0)]
    given = dataclasses.replace(given, cross_blocks=16)
    assert [(h.cross_blocks, h.cross_ridge) for h in grid_candidates("blocks", given, from_file=True)] == [
        (16, 3.0), (16, 9.0), (8, 3.0), (8, 9.0)]
    with pytest.raises(ValueError, match="--grid blocks"):
        grid_candidates("blocks", ARMTHyper(linear_skip=True, skip_init="ols"), from_file=True)
    # the norm grid's anchored skips drop the whole cross-channel term, block means included
    assert [(h.cross_lags, h.cross_blocks) for h in grid_candidates("norm", given, from_file=True)][1:] == [(0, 0)] * 3


def test_a_frozen_cross_channel_term_stays_fixed_and_its_choices_are_checked(etth1_like):
    hyper = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, linear_skip=True,
                      skip_init="ols-frozen", cross_lags=2)
    model = ARMTBench(hyper, 7, 24, 336, seed=0)
    train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=0)
    fitted = model.cross.detach().clone()
    assert torch.count_nonzero(fitted) > 0
    train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=3)
    assert torch.equal(model.cross, fitted)
    rows = run_horizon(etth1_like, 24, hyper, ["ARMT"], budget_s=1e9, seed=0, device="cpu", bf16=False,
                       max_steps=1)
    assert rows[1]["model"] == "ARMT: least-squares skip alone"
    assert rows[1]["params"] == 336 * 24 + 24 + 7 * (7 * 2 + 1) * 24  # the skip and the cross-channel term
    for bad, match in ((dict(linear_skip=True, cross_lags=4), "cross_lags=4"),
                       (dict(linear_skip=True, skip_init="ols", cross_lags=-1), "cross_lags=-1"),
                       (dict(linear_skip=True, skip_init="ols", cross_lags=4, channel_independent=True),
                        "no other channel"),
                       (dict(linear_skip=True, skip_init="ols", cross_lags=4, cross_ridge=-1.0), "cross_ridge")):
        with pytest.raises(ValueError, match=match):
            ARMTHyper(**bad)
    with pytest.raises(ValueError, match="exceeds the skip's 96"):
        ARMTBench(dataclasses.replace(hyper, cross_lags=97), 7, 24, 96)
    grid = grid_candidates("cross", ARMTHyper(loss="huber", linear_skip=True, skip_init="ols"), from_file=True)
    assert [(h.skip_init, h.cross_lags, h.cross_ridge, h.loss) for h in grid] == [
        ("ols", 0, 1.0, "huber"), ("ols", 8, 1.0, "huber"), ("ols", 16, 1.0, "huber"),
        ("ols-frozen", 8, 1.0, "huber")]
    grid = grid_candidates("cross", ARMTHyper(), from_file=True)  # no least-squares skip yet: a frozen one
    assert [(h.linear_skip, h.skip_init, h.cross_lags) for h in grid[1:]] == [
        (True, "ols-frozen", 8), (True, "ols-frozen", 16), (True, "ols", 8)]
    given = ARMTHyper(linear_skip=True, skip_init="ols-frozen", cross_lags=8)  # the term already there: not twice
    assert [(h.skip_init, h.cross_lags) for h in grid_candidates("cross", given, from_file=True)] == [
        ("ols-frozen", 8), ("ols-frozen", 16), ("ols", 8)]
    # the norm grid: the given choice, its frozen least-squares skip, then that skip anchored at the last value
    grid = grid_candidates("norm", ARMTHyper(loss="huber"), from_file=True)
    assert [(h.linear_skip, h.skip_init, h.skip_norm, h.skip_ridge, h.loss) for h in grid] == [
        (False, "random", "window", 1e-3, "huber"), (True, "ols-frozen", "window", 1e-3, "huber"),
        (True, "ols-frozen", "last", 1e-3, "huber"), (True, "ols-frozen", "last", 0.05, "huber"),
        (True, "ols-frozen", "last", 0.2, "huber")]
    given = ARMTHyper(linear_skip=True, skip_init="ols", cross_lags=8)  # a fitted skip already: no duplicate
    assert [(h.skip_init, h.skip_norm, h.cross_lags) for h in grid_candidates("norm", given, from_file=True)] == [
        ("ols", "window", 8), ("ols", "last", 0), ("ols", "last", 0), ("ols", "last", 0)]
    # normcross keeps the given term and anchors its skip; it needs a fitted skip to start from
    assert [(h.skip_norm, h.skip_ridge, h.cross_lags) for h in grid_candidates("normcross", given, from_file=True)] == [
        ("window", 1e-3, 8), ("last", 1e-3, 8), ("last", 0.05, 8), ("last", 0.2, 8)]
    with pytest.raises(ValueError, match="normcross"):
        grid_candidates("normcross", ARMTHyper(), from_file=True)
    # the ridge grid: the given term's ridge first, then 0.3 / 0.1 / 0.03 (no duplicate of the given one)
    assert [(h.cross_lags, h.cross_ridge) for h in grid_candidates("ridge", given, from_file=True)] == [
        (8, 1.0), (8, 0.3), (8, 0.1), (8, 0.03)]
    given = dataclasses.replace(given, cross_ridge=0.1)
    assert [h.cross_ridge for h in grid_candidates("ridge", given, from_file=True)] == [0.1, 0.3, 0.03]
    with pytest.raises(ValueError, match="no cross-channel term"):
        grid_candidates("ridge", ARMTHyper(linear_skip=True, skip_init="ols"), from_file=True)
    # a stronger ridge shrinks the fitted term
    norms = []
    for r in (0.01, 100.0):
        m = ARMTBench(dataclasses.replace(hyper, cross_ridge=r), 7, 24, 336, seed=0)
        train_armt(m, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False, max_steps=0)
        norms.append(float(m.cross.detach().norm()))
    assert norms[1] < norms[0]


def test_the_seed_mean_averages_tables_that_differ_only_in_their_seed(tmp_path, monkeypatch, capsys):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    hs = [96, 192]
    a = _run_file(tmp_path / "s0.json", hs)
    payload = json.loads(a.read_text())
    for r in payload["rows"]:  # seed 1: ARMT worse than DLinear at H=192, so its average is above DLinear's there
        if r["source"] == "same-run":
            r["mse"] += 0.05 if (r["model"], r["horizon"]) == ("ARMT", 192) else 0.002
            r["train_steps"] = 12
    b = tmp_path / "s1.json"
    b.write_text(json.dumps(dict(payload, seed=1)))
    out = fc.main(["--seed-mean-from", str(a), str(b), "--out", "mean"])
    assert out["seeds"] == [0, 1]
    same = {(r["horizon"], r["model"]): r for r in out["rows"] if r["source"] == "same-run"}
    s0 = {(r["horizon"], r["model"]): r["mse"] for r in json.loads(a.read_text())["rows"] if r["source"] == "same-run"}
    s1 = {(r["horizon"], r["model"]): r["mse"] for r in payload["rows"] if r["source"] == "same-run"}
    assert set(same) == set(s0)
    for k, r in same.items():
        assert r["mse_by_seed"] == [s0[k], s1[k]]
        assert r["mse"] == pytest.approx((s0[k] + s1[k]) / 2)
        assert (r["mse_min"], r["mse_max"]) == (min(s0[k], s1[k]), max(s0[k], s1[k]))
        assert r["train_steps_by_seed"] == [10, 12] and r["crps"] is None
    avg = out["average_mse_by_seed"]
    assert avg["ARMT"] == pytest.approx([np.mean([s[(h, "ARMT")] for h in hs]) for s in (s0, s1)])
    # ARMT (+0.01 over DLinear in both seeds) is below DLinear in neither seed
    assert out["armt_average_below_baseline_in_seeds"] == {"DLinear": 0}
    assert out["summary"]["average_mse_over_horizons"]["ARMT (same-run)"] == pytest.approx(np.mean(avg["ARMT"]))
    assert any(r["source"] == "published" for r in out["rows"])
    md = (tmp_path / "mean.md").read_text()
    assert "mean over 2 seeds (0, 1)" in md and "DLinear 0/2" in md and (tmp_path / "mean.png").exists()
    # refused: the same seed twice, other settings, other rows, another ARMT choice, one file
    with pytest.raises(ValueError, match="each file needs its own seed"):
        fc.seed_mean([a, a], "x")
    c = _run_file(tmp_path / "c.json", hs, seed=2, budget={"kind": "x", "train_seconds": 60.0})
    with pytest.raises(ValueError, match="field 'budget'"):
        fc.seed_mean([a, c], "x")
    d = _run_file(tmp_path / "d.json", [96], seed=2)
    with pytest.raises(ValueError, match=r"missing \[\(192, 'ARMT'\), \(192, 'DLinear'\)\]"):
        fc.seed_mean([a, d], "x")
    e = _run_file(tmp_path / "e.json", hs, seed=2, armt_chosen={"linear_skip": True, "lr_schedule": "cosine",
                                                                 "lr": 0.123})
    with pytest.raises(ValueError, match="other ARMT settings"):
        fc.seed_mean([a, e], "x")
    f = _run_file(tmp_path / "f.json", hs, seed=2)
    f_payload = json.loads(f.read_text())
    for r in f_payload["rows"]:
        if r["horizon"] == 192 and r["source"] == "same-run":
            r["context_length"] = 512
    f.write_text(json.dumps(f_payload))
    with pytest.raises(ValueError, match=r"H=192 used different context lengths \(336 in s0, 512 in f\)"):
        fc.seed_mean([a, f], "x")
    assert out["context_length_by_horizon"] == {96: 336, 192: 336}
    with pytest.raises(SystemExit):
        fc.main(["--seed-mean-from", str(a), "--out", "x"])
    assert "error:" in capsys.readouterr().err


def test_merged_and_seed_mean_tables_say_which_check_early_stopping_kept(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    files = []
    for seed, best in ((0, 400), (1, 0)):
        payload = json.loads(_run_file(tmp_path / f"s{seed}.json", [96], seed=seed).read_text())
        for r in payload["rows"]:
            if r["model"] == "ARMT":
                r.update(best_step=best, best_val_mse=0.65, val_checks=11)
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps(payload))
    fc.merge_results([files[0], _run_file(tmp_path / "h192.json", [192])], "merged")
    md = (tmp_path / "merged.md").read_text()
    assert "## Early stopping" in md and "| 96 | ARMT | 10 | 11 | 400 | 0.65 | s0 |" in md
    assert "| 192 | ARMT |" not in md.split("## Early stopping")[1]
    out = fc.seed_mean(files, "mean")
    armt = next(r for r in out["rows"] if r["model"] == "ARMT")
    assert armt["best_step_by_seed"] == [400, 0]
    assert not any("best_step_by_seed" in r for r in out["rows"] if r["model"] != "ARMT")
    assert "| 96 | ARMT | 400 / 0 | 10 / 10 |" in (tmp_path / "mean.md").read_text()
    # a table without early stopping has no such section
    fc.merge_results([_run_file(tmp_path / "plain.json", [96]), tmp_path / "h192.json"], "plain_merged")
    assert "Early stopping" not in (tmp_path / "plain_merged.md").read_text()


def _edit_rows(path, edit, **over):
    """Rewrite a result file: ``edit(row)`` on every same-run row, then the top-level fields ``over``."""
    payload = json.loads(path.read_text())
    for r in payload["rows"]:
        if r["source"] == "same-run":
            edit(r)
    payload.update(over)
    path.write_text(json.dumps(payload))
    return path


def test_merge_and_seed_mean_refuse_inputs_that_would_make_a_wrong_table(tmp_path, monkeypatch, capsys):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    a = _run_file(tmp_path / "a.json", [96])
    b = _run_file(tmp_path / "b.json", [192])
    s1 = _run_file(tmp_path / "s1.json", [96], seed=1)
    s2 = _run_file(tmp_path / "s2.json", [96], seed=2)
    # another protocol: the table would state the first file's
    other = _run_file(tmp_path / "other.json", [192], protocol="another protocol")
    with pytest.raises(ValueError, match="other.json: field 'protocol'"):
        fc.merge_results([a, other], "x")
    with pytest.raises(ValueError, match="field 'protocol'"):
        fc.seed_mean([a, _run_file(tmp_path / "o1.json", [96], seed=1, protocol="another protocol")], "x")
    # a NaN error: its mean is NaN while min-max skipped it (or not: it depended on the file order), and the
    # "below the baseline in k seeds" count took it for a loss
    nan = tmp_path / "nan.json"
    nan.write_text(s1.read_text())
    _edit_rows(nan, lambda r: r.update(mse=float("nan")) if r["model"] == "DLinear" else None)
    for files in ([a, nan, s2], [nan, a, s2]):
        with pytest.raises(ValueError, match=r"nan.json: H=96 DLinear mse is nan"):
            fc.seed_mean(files, "x")
    with pytest.raises(ValueError, match=r"nan.json: H=96 DLinear mse is nan"):
        fc.merge_results([b, _edit_rows(nan, lambda r: None, seed=0)], "x")
    inf = _edit_rows(_run_file(tmp_path / "inf.json", [96], seed=1),
                     lambda r: r.update(mae=float("inf")) if r["model"] == "ARMT" else None)
    with pytest.raises(ValueError, match=r"inf.json: H=96 ARMT mae is inf"):
        fc.seed_mean([a, inf], "x")
    # one file with two rows of one (horizon, model): the mean took the last one
    dup = _run_file(tmp_path / "dup.json", [96], seed=1)
    payload = json.loads(dup.read_text())
    payload["rows"].append(dict(payload["rows"][0], mse=9.9))
    dup.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"dup.json: two rows of H=96 ARMT"):
        fc.seed_mean([a, dup], "x")
    # two files with the same stem (column run names a row's run): their choices were recorded as one
    (tmp_path / "x1").mkdir()
    (tmp_path / "x2").mkdir()
    r1 = _run_file(tmp_path / "x1" / "run.json", [96])
    r2 = _run_file(tmp_path / "x2" / "run.json", [192], armt_chosen={"linear_skip": True, "skip_init": "ols"})
    with pytest.raises(ValueError, match=r"two files named run\b"):
        fc.merge_results([r1, r2], "x")
    both = _run_file(tmp_path / "both.json", [96, 192])
    with pytest.raises(ValueError, match=r"two files named both\b.*PATH@H1,H2"):
        fc.merge_results([f"{both}@96", f"{both}@192"], "x")
    with pytest.raises(ValueError, match="integer horizons"):  # an empty selection is not "every horizon"
        fc.merge_results([f"{both}@", a], "x")
    # a merged table or a mean over seeds is not a run: refused by name, not by a TypeError in the rendering
    fc.merge_results([a, b], "ab")
    with pytest.raises(ValueError, match=r"ab.json: a merged table .*not a run"):
        fc.merge_results([f"{tmp_path / 'ab.json'}@96", _run_file(tmp_path / "c.json", [336])], "x")
    with pytest.raises(SystemExit):
        fc.main(["--merge-from", str(tmp_path / "ab.json"), str(tmp_path / "c.json"), "--out", "x"])
    assert "a merged table" in capsys.readouterr().err
    # PATH@H is for --merge-from: the mean takes whole files (it was a FileNotFoundError traceback)
    with pytest.raises(ValueError, match=r"s1.json@96: .*--merge-from only"):
        fc.seed_mean([a, f"{s1}@96"], "x")
    with pytest.raises(SystemExit):
        fc.main(["--seed-mean-from", str(a), f"{s1}@96", "--out", "x"])
    assert "--merge-from only" in capsys.readouterr().err


def test_the_seed_mean_compares_each_runs_armt_choice_of_a_merge(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    ols = {"linear_skip": True, "skip_init": "ols"}
    for seed, lr in ((0, 0.001), (1, 0.5)):  # seed 1's H=192 run chose another learning rate
        _run_file(tmp_path / f"h96_s{seed}.json", [96], seed=seed)
        _run_file(tmp_path / f"h192_s{seed}.json", [192], seed=seed, armt_chosen=dict(ols, lr=lr))
        fc.merge_results([tmp_path / f"h96_s{seed}.json", tmp_path / f"h192_s{seed}.json"], f"m{seed}")
    assert json.loads((tmp_path / "m1.json").read_text())["armt_chosen"] is None  # each run's choice, by run
    with pytest.raises(ValueError, match="H=192 ARMT used other ARMT settings"):
        fc.seed_mean([tmp_path / "m0.json", tmp_path / "m1.json"], "x")


def test_the_seed_mean_states_a_step_capped_budget(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.forecast as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    budget = {"kind": "wall seconds per trained model or optimiser steps, whichever comes first",
              "train_seconds": 100000.0, "max_steps": 900, "threads": 1, "bf16": False}
    files = [_run_file(tmp_path / f"s{s}.json", [96], seed=s, budget=budget) for s in (0, 1)]
    fc.seed_mean(files, "mean")
    assert "100000 wall seconds of training per model or 900 optimiser steps, whichever comes first" in (
        tmp_path / "mean.md").read_text()


def test_early_stopping_ends_with_the_weights_of_the_best_validation_check(etth1_like):
    from benchmarks.forecast import val_subset
    # lr 0.1 overshoots after a few steps on this data: the best check is neither the first nor the last
    small = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, lr=0.1)
    val = val_subset(etth1_like, 24, 50)
    assert len(val) == len(range(0, len(eval_windows(etth1_like, 24, "val")), 50))

    def train(hyper, steps, **kw):
        model = ARMTBench(hyper, 7, 24, 336, seed=0)
        info = train_armt(model, etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu", bf16=False,
                          max_steps=steps, **kw)
        return model, info

    def val_mse(model):
        return masked_errors(predict_armt(model, val.past_values, val.past_observed, "cpu", False),
                             val.future_values, val.future_observed)["mse"]

    # checks before the first step, after steps 2, 4 and 6, and after the last (7); a constant learning rate, so
    # a run stopped at the best check's step follows the same path and must give the same weights
    es = dataclasses.replace(small, val_every=2)
    assert es.name().endswith("-ve2")
    model, info = train(es, 7, val=val)
    assert info["steps"] == 7 and info["val_checks"] == 5 and info["best_step"] == 2
    assert info["best_val_mse"] == pytest.approx(val_mse(model), rel=1e-6)
    ref, ref_info = train(small, info["best_step"])
    assert ref_info["best_step"] is None and ref_info["val_checks"] is None
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for steps in (0, 4, 6, 7):  # every other check scored above the one kept
        assert val_mse(train(small, steps)[0]) > info["best_val_mse"]
    # an absurd learning rate ruins a least-squares fit: the check before the first step (the fit) is kept
    ols = dataclasses.replace(small, linear_skip=True, skip_init="ols")
    wild, wild_info = train(dataclasses.replace(ols, val_every=2, lr=10.0), 4, val=val)
    assert wild_info["best_step"] == 0
    alone, _ = train(ols, 0)
    for a, b in zip(wild.state_dict().values(), alone.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping_needs_validation_windows_and_a_valid_interval(etth1_like):
    es = ARMTHyper(d_model=16, n_layers=1, segment_patches=4, batch_size=4, val_every=3)
    with pytest.raises(ValueError, match="val_every=3 .*needs the validation windows"):
        train_armt(ARMTBench(es, 7, 24, 336), etth1_like.train, 336, 24, budget_s=1e9, seed=0, device="cpu",
                   bf16=False, max_steps=1)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="val_every"):
            ARMTHyper(val_every=bad)
    with pytest.raises(ValueError, match="val_every with ema"):
        ARMTHyper(val_every=10, ema=0.9)


def test_the_missing_channel_benchmark_refuses_an_early_stopping_choice(tmp_path):
    import benchmarks.missing_channels as mc
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps({"armt_chosen": {"linear_skip": True, "val_every": 100}}))
    with pytest.raises(SystemExit, match=r"choice.json: its ARMT choice stops early \(val_every=100\)"):
        mc.main(["--data", _placeholder(tmp_path), "--armt-from", str(choice), "--out", "x"])


def test_deepar_within_the_context_reads_exactly_the_shared_steps():
    import benchmarks.forecast as fc

    for freq, L in (("h", 336), ("15min", 336), ("10min", 512)):
        lags, ctx = fc.deepar_within(freq, L)
        assert max(lags) <= L // 2 and ctx + max(lags) == L and lags == sorted(lags)
    est = fc.make_estimator("DeepAR", "ETTh1", 24, 336, {"max_epochs": 1}, fc.baseline_settings("context"))
    assert est.context_length == 168 and max(est.lags_seq) == 168
    default = fc.make_estimator("DeepAR", "ETTh1", 24, 336, {"max_epochs": 1})
    from gluonts.time_feature import get_lags_for_frequency

    # default: gluonts' lags for the frequency (lags_seq None), which reach past the context
    assert default.context_length == 336 and default.lags_seq is None and max(get_lags_for_frequency("h")) > 336
    assert fc.baseline_settings()["DeepAR"] == fc.BASELINE_SETTINGS["DeepAR"]
    assert "lags" not in fc.BASELINE_SETTINGS["DeepAR"]  # baseline_settings("context") copies, never mutates


def test_deepar_normal_output_and_no_scaling_are_recorded_and_built():
    """--deepar-distr normal / --deepar-no-scaling (chosen on the validation split; HISTORY, "DeepAR's output"):
    recorded in the settings (JSON-able) and built into gluonts' estimator; the defaults leave the settings as the
    committed files record them, so those files still merge with new ones."""
    import json

    import benchmarks.forecast as fc
    from gluonts.torch.distributions import NormalOutput, StudentTOutput

    s = fc.baseline_settings("gluonts", "normal", False)
    assert s["DeepAR"]["distr_output"] == "normal" and s["DeepAR"]["scaling"] is False
    assert json.loads(json.dumps(s)) == s
    assert fc.baseline_settings("gluonts", "student_t", True) == fc.BASELINE_SETTINGS
    est = fc.make_estimator("DeepAR", "ETTh1", 24, 336, {"max_epochs": 1}, s)
    assert isinstance(est.distr_output, NormalOutput) and est.scaling is False
    default = fc.make_estimator("DeepAR", "ETTh1", 24, 336, {"max_epochs": 1})
    assert isinstance(default.distr_output, StudentTOutput) and default.scaling is True
    bad = {**s, "DeepAR": dict(s["DeepAR"], distr_output="gamma")}
    with pytest.raises(ValueError, match="DeepAR distr_output 'gamma'"):
        fc.make_estimator("DeepAR", "ETTh1", 24, 336, {"max_epochs": 1}, bad)
    args = fc.build_parser(live=False).parse_args(["--deepar-distr", "normal", "--deepar-no-scaling"])
    assert (args.deepar_distr, args.deepar_no_scaling) == ("normal", True)


def test_published_rows_carry_designs_ttm_anchor_unverified():
    """DESIGN section 7's ETTh1 H=96 anchors: PatchTST/64 0.370 and DLinear 0.375 (checked against a copy of their
    table) and TTM zero-shot 0.363 (quoted as given: MSE only, verified false); TTM has no average (one horizon)."""
    from benchmarks.forecast import published_rows, summary

    rows = published_rows("ETTh1", [96, 192])
    ttm = [r for r in rows if r["model"] == "TTM (zero-shot)"]
    assert [(r["horizon"], r["mse"], r["mae"], r["verified"]) for r in ttm] == [(96, 0.363, None, False)]
    anchors = {r["model"]: r["mse"] for r in rows if r["horizon"] == 96}
    assert (anchors["PatchTST/64"], anchors["DLinear"]) == (0.370, 0.375)
    assert all(r["verified"] for r in rows if r["model"] != "TTM (zero-shot)")
    assert published_rows("ETTm1", [96]) and not [r for r in published_rows("ETTm1", [96]) if "TTM" in r["model"]]
    avg = summary([dict(r, table="main") for r in rows], [96, 192])["average_mse_over_horizons"]
    assert "TTM (zero-shot) (published)" not in avg and "PatchTST/64 (published)" in avg

"""The least-squares linear skip (``ForecasterConfig.linear_skip``): its fit against a direct least-squares solve,
how it moves every head's forecast, its windows, the estimator and predictor files, and the stream (ring of the
last n steps: push granularity, the forecast it adds, save / load)."""

import warnings

import numpy as np
import pytest
import torch
from gluonts.dataset.common import ListDataset

from armt_ts.config import ARMTConfig, ConfigError, ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.forecaster import ARMTForecaster, _fill_gaps
from armt_ts.gluonts import ARMTEstimator, ARMTPredictor
from armt_ts.gluonts.estimator import SkipWindows
from armt_ts.stream import StreamingForecaster
from armt_ts.testing import assert_close, pushed

H, C = 5, 2
# sequential: block pushes that complete several segments at once give bit-identical states (the diagonal
# schedule agrees to float rounding; tests/test_stream.py)
ARMT = ARMTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, segment_length=3 * C, num_mem_tokens=2, d_mem=4,
                  schedule="sequential")


def _model(n=12, kind="quantile", ridge=0.2, seed=0, scaling="std") -> ARMTForecaster:
    torch.manual_seed(seed)
    cfg = ForecasterConfig.build(H, C, armt=ARMT, patch=PatchConfig(patch_len=4, stride=3), head=HeadConfig(kind=kind),
                                 scaling=scaling, linear_skip=n, linear_skip_ridge=ridge)
    model = ARMTForecaster(cfg).eval()
    with torch.no_grad():
        for mem in model.backbone.memories:  # a read that adds something (W_v = 0 at init)
            mem.W_v.weight.normal_(std=0.05)
        if n:
            model.skip_weight.normal_(std=0.1)
            model.skip_bias.normal_(std=0.1)
    return model


def _without_skip(model: ARMTForecaster) -> ARMTForecaster:
    """The same network with no skip (``linear_skip`` 0)."""
    twin = ARMTForecaster(model.config.replace(linear_skip=0)).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["skip_bias", "skip_weight"]
    return twin


def _series(T, B=1, seed=1, p_missing=0.2):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float)[None, :, None]
    x = 10 + 3 * torch.sin(2 * torch.pi * t / 12) + torch.randn(B, T, C, generator=g) + t / 20
    return x, torch.rand(B, T, C, generator=g) > p_missing


def _windows(T=200, L=20, seed=0):
    x, m = _series(T + 0, seed=seed, p_missing=0.1)
    idx = torch.arange(T - L - H + 1)
    pv = torch.stack([x[0, i:i + L] for i in idx])
    po = torch.stack([m[0, i:i + L] for i in idx])
    fv = torch.stack([x[0, i + L:i + L + H] for i in idx])
    fo = torch.ones_like(fv, dtype=torch.bool)
    return pv, po, fv, fo


def test_config_fields_are_checked():
    for bad in (-1, True, 2.5, 1):  # 1: a one-step window normalised by its own statistics is always 0
        with pytest.raises(ConfigError, match="ForecasterConfig.linear_skip"):
            ForecasterConfig.build(H, C, linear_skip=bad)
    for bad in (0.0, -0.1, float("nan"), "1"):
        with pytest.raises(ConfigError, match="ForecasterConfig.linear_skip_ridge"):
            ForecasterConfig.build(H, C, linear_skip=4, linear_skip_ridge=bad)
    cfg = ForecasterConfig.build(H, C, linear_skip=7, linear_skip_ridge=0.5)
    assert ForecasterConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["linear_skip"], old["linear_skip_ridge"]  # a model saved before the skip existed
    assert ForecasterConfig.from_dict(old).linear_skip == 0
    assert "skip_weight" not in dict(ARMTForecaster(ForecasterConfig.build(H, C)).named_buffers())


@pytest.mark.parametrize("ridge", [1e-3, 0.3])
def test_fit_equals_a_direct_ridge_least_squares_solve(ridge):
    model = _model(n=12, ridge=ridge)
    pv, po, fv, fo = _windows()
    rows = model.fit_skip([(pv[:50], po[:50], fv[:50], fo[:50]), (pv[50:], po[50:], fv[50:], fo[50:])])
    # the same rows written out directly: each (window, channel)'s last 12 steps z-scored by their own observed
    # values (0 where unobserved), the future in the same units, the bias unpenalised
    xs, ys = [], []
    for b in range(len(pv)):
        for c in range(C):
            keep = po[b, -12:, c]
            v = pv[b, -12:, c].double()
            mu = v[keep].mean()
            sd = torch.sqrt(((v[keep] - mu) ** 2).mean() + 1e-5)
            if not fo[b, :, c].all() or keep.sum() < 2:
                continue
            xs.append(torch.where(keep, (v - mu) / sd, torch.zeros(())))
            ys.append((fv[b, :, c].double() - mu) / sd)
    X = torch.cat([torch.stack(xs), torch.ones(len(xs), 1, dtype=torch.float64)], 1)
    Y = torch.stack(ys)
    G = X.T @ X
    reg = torch.zeros(13, dtype=torch.float64)
    reg[:-1] = ridge * G.diagonal()[:-1].mean()
    sol = torch.linalg.solve(G + torch.diag(reg), X.T @ Y)
    assert rows == len(xs) == 2 * len(pv)
    assert_close("skip weights", sol[:-1].T.float(), model.skip_weight, 1e-4)
    assert_close("skip bias", sol[-1].float(), model.skip_bias, 1e-4)


def test_gappy_futures_are_interpolated_then_refitted_close_to_the_gap_free_fit():
    """Telemetry with a gap in every future: no fully observed row, yet the fit (gaps interpolated, then filled by
    the previous fit's forecast twice) forecasts the true futures almost as well as the fit on the gap-free data."""
    t = torch.tensor([[1.0, 0.0, 0.0, 4.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    seen = torch.tensor([[True, False, False, True, False], [False, True, False, False, False]])
    assert _fill_gaps(t, seen).tolist() == [[1.0, 2.0, 3.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0, 2.0]]
    pv, po, fv, fo = _windows(T=400)
    g = torch.Generator().manual_seed(3)
    holes = torch.rand(fo.shape, generator=g) < 0.2
    at = torch.randint(0, H, (fo.shape[0], 1, fo.shape[2]), generator=g)
    holes |= torch.arange(H)[None, :, None] == at  # every (window, channel) misses at least one future step
    rows = (fo & ~holes).any(1)  # rows with an observed future step count; the others cannot

    def mse(refits, observed):
        f = _model(n=12)
        fitted = f.fit_skip([(pv, po, fv, observed)], refits=refits)
        v, keep = f.skip_inputs(pv, po)
        x, loc_w, scale_w = f.skip_window(v, keep)
        pred = loc_w + scale_w * (torch.einsum("bnc,hn->bhc", x, f.skip_weight) + f.skip_bias[:, None])
        return fitted, float(((pred - fv) ** 2).mean())

    n_full, full = mse(2, fo)
    n_once, once = mse(0, fo & ~holes)
    n_gappy, gappy = mse(2, fo & ~holes)
    assert n_full == 2 * len(pv) and n_gappy == n_once == int(rows.sum()) > 2 * len(pv) - 5
    assert gappy < once and gappy <= 1.02 * full, (full, once, gappy)
    with pytest.raises(TypeError, match="re-iterable"):
        _model(n=12).fit_skip(iter([(pv, po, fv, fo)]))


def test_fit_leaves_out_rows_it_cannot_fit_and_raises_without_any():
    model = _model(n=6)
    pv, po, fv, fo = _windows(T=60)
    flat = pv.clone()
    flat[:5, :, 0] = 7.0  # a constant window: scale sqrt(1e-5), so its future sits ~1000s of units away
    clean = model.fit_skip([(pv[5:], po[5:], fv[5:], fo[5:])])
    w = model.skip_weight.clone()
    assert model.fit_skip([(flat, po, fv, fo)]) == clean + 5  # channel 1 of the 5 windows counts, channel 0 not
    assert torch.isfinite(model.skip_weight).all() and (model.skip_weight - w).abs().max() < 0.5
    with pytest.raises(ValueError, match="no training window has an observed future step"):
        model.fit_skip([(pv, po, fv, torch.zeros_like(fo))])
    with pytest.raises(ValueError, match="has no linear skip"):
        _model(n=0).fit_skip([(pv, po, fv, fo)])


@pytest.mark.parametrize("kind", ["point", "quantile", "student_t", "normal", "laplace"])
def test_the_skip_moves_every_heads_forecast_by_its_own(kind):
    """With the skip the forecast is the network's moved by the skip's forecast (scale * delta in data units),
    whatever the head; the loss sees the same sum."""
    model = _model(n=12, kind=kind)
    twin = _without_skip(model)
    x, m = _series(30, B=3)
    params, loc, scale, _ = model(x, m)
    delta = model.skip_forecast(*model.skip_inputs(x, m), loc, scale)
    assert delta.shape == (3, H, C) and delta.abs().max() > 0.1
    assert_close("point", twin.point(x, m) + scale * delta, model.point(x, m), 1e-4)
    q_twin, q = twin.quantiles(x, m, [0.2, 0.5, 0.8]), model.quantiles(x, m, [0.2, 0.5, 0.8])
    assert_close("quantiles", q_twin + (scale * delta).unsqueeze(-1), q, 1e-4)


def test_a_skip_over_the_whole_context_works_in_its_units_and_a_short_context_is_padded():
    model = _model(n=16)
    x, m = _series(16, B=2, p_missing=0.0)
    _, loc, scale, _ = model(x, m)
    v, keep = model.skip_inputs(x, m)
    xw, loc_w, scale_w = model.skip_window(v, keep)
    assert_close("loc", loc, loc_w, 1e-6)
    assert_close("scale", scale, scale_w, 1e-6)
    short_v, short_keep = model.skip_inputs(x[:, -5:], m[:, -5:])
    assert short_v.shape == (2, 16, C) and not short_keep[:, :11].any() and short_keep[:, 11:].all()
    hidden = torch.zeros_like(m)
    hidden[:, :, 1] = True
    d = model.skip_forecast(*model.skip_inputs(x, hidden), loc, scale)
    assert (d[:, :, 0] == 0).all() and (d[:, :, 1] != 0).all()  # a channel with nothing observed: no skip


def test_skip_windows_take_whole_windows_pad_a_short_series_thin_out_past_a_cap_and_start_over():
    L = 8
    data = [{"target": np.arange(20, dtype=np.float32), "observed_values": np.ones(20, np.float32)},
            {"target": np.arange(10, dtype=np.float32), "observed_values": np.ones(10, np.float32)},  # short
            {"target": np.arange(4, dtype=np.float32), "observed_values": np.ones(4, np.float32)}]  # T <= H: none
    windows = SkipWindows(data, L, H, 1, chunk=3)
    batches = list(windows)
    pv = torch.cat([b[0] for b in batches])
    po = torch.cat([b[1] for b in batches])
    fv = torch.cat([b[2] for b in batches])
    # series 0: origins 8 .. 15 (whole contexts); series 1 (no whole context): origins 1 .. 5, padded
    assert pv.shape == (8 + 5, L, 1) and [len(b[0]) for b in batches] == [3, 3, 2, 3, 2]
    assert pv[0, :, 0].tolist() == list(range(8)) and fv[0, :, 0].tolist() == [8, 9, 10, 11, 12]
    assert fv[7, -1, 0] == 19 and po[:8].all()
    assert not po[8, :-1].any() and po[8, -1].all() and pv[8, -1, 0] == 0 and fv[8, :, 0].tolist() == [1, 2, 3, 4, 5]
    assert not po[12, :3].any() and po[12, 3:].all() and fv[12, :, 0].tolist() == [5, 6, 7, 8, 9]
    again = torch.cat([b[0] for b in windows])  # a second pass gives the same windows (fit_skip reads several)
    assert torch.equal(again, pv)
    thinned = torch.cat([b[0] for b in SkipWindows(data[:1], L, H, 1, max_windows=4)])
    assert len(thinned) == 4 and thinned[1, -1, 0] == 9  # every 2nd origin: 8, 10, 12, 14
    multi = [{"target": np.ones((C, 30), np.float32), "observed_values": np.ones((C, 30), np.float32)}]
    assert next(iter(SkipWindows(multi, L, H, C)))[0].shape == (30 - H - L + 1, L, C)


def test_a_lone_window_of_one_channel_is_a_writable_copy():
    """A series of exactly L + H steps has one whole window; with one channel its slice was already contiguous, so
    torch got the read-only window view itself (a UserWarning on stderr of ``armt-ts forecast``)."""
    L = 8
    one = [{"target": np.arange(L + H, dtype=np.float32), "observed_values": np.ones(L + H, np.float32)}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(SkipWindows(one, L, H, 1))
    assert len(batches) == 1 and len(batches[0][0]) == 1  # the one whole window
    pv, po, fv, fo = batches[0]
    assert pv[0, :, 0].tolist() == list(range(L)) and fv[0, :, 0].tolist() == list(range(L, L + H))
    for t in (pv, po, fv, fo):
        t.add_(0)  # writable: in place works on every tensor handed out


def test_estimator_fits_the_skip_and_the_predictor_file_keeps_it(tmp_path):
    t = np.arange(300)
    targets = [(np.sin(2 * np.pi * t / 24) * (k + 1) + k).astype(np.float32) for k in range(3)]
    ds = ListDataset([{"start": "2024-01-01", "target": y} for y in targets], freq="h")
    armt = ARMTConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, segment_length=4, num_mem_tokens=2, d_mem=4)
    est = ARMTEstimator(prediction_length=12, context_length=48, armt=armt, patch=PatchConfig(patch_len=8, stride=8),
                        linear_skip=48, linear_skip_ridge=1e-4, batch_size=8, num_batches_per_epoch=2,
                        trainer_kwargs=dict(max_epochs=1, default_root_dir=str(tmp_path), enable_progress_bar=False,
                                            enable_model_summary=False, logger=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        predictor = est.train(ds)
    f = predictor.prediction_net.model.forecaster
    assert f.config.linear_skip == 48 and f.skip_weight.abs().max() > 0.01
    # a pure 24-step sine: the fitted map alone (a small ridge) forecasts it almost exactly
    x = torch.as_tensor(targets[0][-60:-12]).view(1, 48, 1)
    v, keep = f.skip_inputs(x, torch.ones_like(x))
    xw, loc_w, scale_w = f.skip_window(v, keep)
    y = loc_w + scale_w * (torch.einsum("bnc,hn->bhc", xw, f.skip_weight) + f.skip_bias[:, None])
    assert_close("skip alone on a sine", torch.as_tensor(targets[0][-12:]).view(1, 12, 1), y, 0.05)
    path = tmp_path / "model"
    path.mkdir()
    predictor.serialize(path)
    loaded = ARMTPredictor.deserialize(path)
    g = loaded.prediction_net.model.forecaster
    assert torch.equal(g.skip_weight, f.skip_weight) and torch.equal(g.skip_bias, f.skip_bias)
    a, b = next(iter(predictor.predict(ds))), next(iter(loaded.predict(ds)))
    np.testing.assert_array_equal(a.mean, b.mean)


@pytest.mark.parametrize("T", [5, 12, 13, 40])
def test_stream_ring_is_the_same_however_the_steps_arrive(T):
    model = _model(n=12)
    x, m = _series(T)
    block = pushed(model, x, m, [T])
    for chunks in ([1], [5, 2], [13]):
        other = pushed(model, x, m, chunks)
        assert block.state.equal(other.state), chunks
        assert torch.equal(block.forecast().quantiles, other.forecast().quantiles), chunks
    # the ring holds the last min(T, 12) steps at slot t mod 12
    for t in range(max(0, T - 12), T):
        assert torch.equal(block.state.hist_observed[0, t % 12], m[0, t])
        assert torch.equal(block.state.hist_values[0, t % 12], torch.where(m[0, t], x[0, t], torch.zeros(())))


@pytest.mark.parametrize("T", [3, 12, 31])
def test_stream_forecast_adds_the_skip_of_its_last_steps(T):
    """The stream's forecast is the same stream's without the skip, moved by the skip's forecast from the last n
    pushed steps in the stream's units (what a batch forecast whose context holds those steps adds)."""
    model = _model(n=12)
    twin = _without_skip(model)
    x, m = _series(T)
    sf, plain = pushed(model, x, m, [1]), pushed(twin, x, m, [1])
    _, loc, scale = sf._representation(torch.tensor([0]))
    loc, scale = loc.unsqueeze(1), scale.unsqueeze(1)
    delta = model.skip_forecast(*model.skip_inputs(x, m), loc, scale)
    assert_close("point", plain.forecast().point + scale * delta, sf.forecast().point, 1e-5)


def test_fleet_with_a_skip_equals_one_stream_per_entity_and_survives_save_load(tmp_path):
    model = _model(n=7)
    xs = [_series(T, seed=T) for T in (9, 20, 4)]
    fleet = StreamingForecaster(model, entities=["a", "b", "c"])
    solos = [StreamingForecaster(model, entities=[e]) for e in "abc"]
    for t in range(20):  # ragged: entity c stops early, b pushes blocks of 2
        for i, (x, m) in enumerate(xs):
            step = 2 if i == 1 else 1
            if t * step < x.shape[1]:
                v, o = x[0, t * step:(t + 1) * step], m[0, t * step:(t + 1) * step]
                fleet.push(v[None].numpy(), o[None].numpy(), entities=["abc"[i]])
                solos[i].push(v.numpy(), o.numpy())
    # one push to all three at different step counts (the ring's per-row slots), then the lockstep fast path
    for _ in range(2):
        block, mask = _series(3, B=3, seed=99)
        fleet.push(block.numpy(), mask.numpy(), entities=["a", "b", "c"])
        for i, solo in enumerate(solos):
            solo.push(block[i].numpy(), mask[i].numpy())
    assert len(set(fleet.state.steps.tolist())) == 3
    fc = fleet.forecast()
    for i, solo in enumerate(solos):
        assert_close(f"entity {i}", solo.forecast().quantiles[0], fc.quantiles[i], 1e-5)
        assert torch.equal(solo.state.hist_values[0], fleet.state.hist_values[i])
    path = tmp_path / "fleet.safetensors"
    fleet.save(path)
    restored = StreamingForecaster.load(path, model)
    assert restored.state.equal(fleet.state)
    assert torch.equal(restored.forecast().quantiles, fc.quantiles)


def test_lockstep_fleet_with_a_skip_equals_one_stream_per_entity():
    """All entities at one step count: the ring is written and read by slices (wrapping around), for the whole
    fleet or a subset of it."""
    model = _model(n=7)
    x, m = _series(23, B=3, seed=5)
    fleet = StreamingForecaster(model, entities=[0, 1, 2])
    for t in range(0, 23, 5):
        fleet.push(x[:, t:t + 5].numpy(), m[:, t:t + 5].numpy(), entities=[0, 1, 2])
    fc, part = fleet.forecast(), fleet.forecast(entities=[2, 0])
    for e in range(3):
        solo = pushed(model, x[e:e + 1], m[e:e + 1], [1])
        assert torch.equal(solo.state.hist_values[0], fleet.state.hist_values[e])
        assert_close(f"entity {e}", solo.forecast().quantiles[0], fc.quantiles[e], 1e-5)
    assert_close("subset", fc.quantiles[[2, 0]], part.quantiles, 1e-6)

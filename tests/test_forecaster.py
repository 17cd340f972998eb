"""ARMTForecaster (armt_ts/forecaster.py) and ForecasterConfig: shapes for every patch mode and head kind, short and
long contexts, the memory as the path from early history to the forecast, masks, and units."""

import pytest
import torch

from armt_ts.config import ARMTConfig, ConfigError, ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.forecaster import ARMTForecaster
from armt_ts.testing import assert_close

KINDS = ["point", "quantile", "student_t", "normal", "laplace"]
MODES = ["independent", "mixing"]
B, H, C, P = 3, 6, 2, 4  # batch, horizon, channels, patch length
LEVELS = [0.1, 0.5, 0.9]
# Tiny: a segment is 4 tokens, i.e. 2 time patches of 2 channels ("independent") or 4 patches ("mixing").
ARMT = ARMTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, segment_length=4, num_mem_tokens=2, d_mem=4)


def _forecaster(kind="point", mode="independent", scaling="std", seed=0) -> ARMTForecaster:
    torch.manual_seed(seed)
    cfg = ForecasterConfig.build(H, C, armt=ARMT, patch=PatchConfig(patch_len=P, stride=P, mode=mode),
                                 head=HeadConfig(kind=kind), scaling=scaling)
    return ARMTForecaster(cfg).eval()


def _series(T, seed=0, level=5.0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float).view(1, T, 1)
    x = level + spread * torch.sin(2 * torch.pi * t / 12 + torch.rand(B, 1, C, generator=g) * 6)
    return x + 0.1 * torch.randn(B, T, C, generator=g), torch.ones(B, T, C)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_loss(kind, mode):
    f = _forecaster(kind, mode).train()
    x, m = _series(40)
    params, loc, scale, state = f(x, m)
    assert all(p.shape[:3] == (B, H, C) for p in params)
    assert loc.shape == scale.shape == (B, 1, C)
    assert state.batch_size == B and state.num_layers == ARMT.n_layers
    assert f.point(x, m).shape == (B, H, C)
    assert f.quantiles(x, m, LEVELS).shape == (B, H, C, len(LEVELS))
    y, ym = _series(H, seed=1)
    loss = f.loss(x, m, y, ym)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in f.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T, segments", [(3, 1), (24, None), (300, None)])
def test_short_and_long_context(mode, T, segments):
    """A context shorter than one patch, a few segments, and many segments all give finite forecasts."""
    f = _forecaster("student_t", mode)
    n = f.num_segments(T)
    assert n == segments if segments else n > 1
    x, m = _series(T)
    q = f.quantiles(x, m, LEVELS)
    assert torch.isfinite(q).all()
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()


@pytest.mark.parametrize("mode", MODES)
def test_early_history_reaches_the_forecast_through_the_memory(mode):
    """Changing only the first segment's steps changes the forecast exactly when the memory can carry it: with
    W_v = 0 (ARMT's initialisation: reads add 0) it cannot, with W_v != 0 it does. Scaling "none", so the scaler's
    statistics are no second path."""
    f = _forecaster("point", mode, scaling="none")
    T = 64
    assert f.num_segments(T) >= 4
    x, m = _series(T)
    x2 = x.clone()
    x2[:, :P] += 10.0  # the first time patch only: the first segment
    assert_close("W_v = 0: forecast ignores the first segment", f.point(x, m), f.point(x2, m), tol=1e-6)
    with torch.no_grad():
        for mem in f.backbone.memories:
            mem.W_v.weight.normal_(0, 0.5)
    assert (f.point(x, m) - f.point(x2, m)).abs().max() > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_masked_inputs_give_finite_forecasts(mode):
    f = _forecaster("student_t", mode).train()
    x, m = _series(50)
    g = torch.Generator().manual_seed(3)
    m = (torch.rand(m.shape, generator=g) > 0.3).float()
    m[0, :, 1] = 0  # a channel never observed
    m[1] = 0  # a series with nothing observed
    x_nan = torch.where(m > 0, x, torch.tensor(float("nan")))
    x_junk = torch.where(m > 0, x, torch.tensor(1e6))
    params, loc, scale, _ = f(x_nan, m)
    assert all(torch.isfinite(p).all() for p in params) and torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert_close("NaN and junk under the mask give one forecast", f.point(x_junk, m), f.point(x_nan, m), tol=0)
    y, ym = _series(H, seed=1)
    y_nan = y.clone()
    y_nan[0, :2] = float("nan")
    ym[0, :2] = 0
    loss = f.loss(x_nan, m, y_nan, ym)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


def test_non_finite_observed_value_raises():
    f = _forecaster()
    x, m = _series(20)
    x[1, 5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) at observed positions, first at \(1, 5, 0\)"):
        f(x, m)


@pytest.mark.parametrize("kind", KINDS)
def test_huge_values_after_a_flat_context_give_a_finite_loss_and_gradients(kind):
    """A training window whose context is empty or constant gets the scale floor sqrt(1e-5); data of magnitude 1e20
    then sit ~3e22 scales away, whose square overflows float32. The normalised targets are clipped at
    LOSS_TARGET_BOUND, so the loss stays finite; ordinary windows are untouched (bit for bit)."""
    from armt_ts.forecaster import LOSS_TARGET_BOUND

    f = _forecaster(kind).train()
    x, m = _series(20)
    future, fm = _series(H, seed=1)
    ordinary = f.loss(x, m, future, fm)
    _, _, loc, scale = f.normalise(x, m)
    assert float(((future - loc) / scale).abs().max()) < LOSS_TARGET_BOUND
    out = f(x, m)
    assert torch.equal(ordinary, f.head.loss(out.params, (future - out.loc) / out.scale, fm))  # nothing clipped
    flat = torch.full_like(x, 2e20)
    flat[0] = 0.0
    m_flat = m.clone()
    m_flat[0] = 0.0  # row 0: an empty context (a window at a series' start), row 1: a constant one
    loss = f.loss(flat, m_flat, future * 1e20, fm)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


@pytest.mark.parametrize("scaling", ["std", "mean"])
def test_values_near_float32s_maximum_get_finite_statistics(scaling):
    """gluonts' scalers sum in float32: a context of values ~1e38 had loc (or scale) inf and the forecast NaN.
    Those entries are computed again in float64; every other entry is the gluonts scaler's, bit for bit, whatever
    shares its batch."""
    f = _forecaster(scaling=scaling)
    x, m = _series(20)
    huge = x.clone()
    huge[1, :, 0] = 1e38 * (2 + torch.sin(torch.arange(20.0)))  # row 1, channel 0: sums past 3.4e38
    _, _, loc, scale = f.normalise(huge, m)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    want = f.scaler.inner(huge.double(), m.double())
    assert torch.allclose(loc[1, 0, 0].double(), want[1][1, 0, 0], rtol=1e-6)
    assert torch.allclose(scale[1, 0, 0].double(), want[2][1, 0, 0], rtol=1e-6)
    plain = f.scaler.inner(huge, m)  # the other entries: unchanged, bit for bit
    ok = torch.ones_like(loc, dtype=torch.bool)
    ok[1, 0, 0] = False
    assert torch.equal(loc[ok], plain[1][ok]) and torch.equal(scale[ok], plain[2][ok])
    alone = f.normalise(huge[1:2], m[1:2])
    assert torch.equal(alone[2], loc[1:2]) and torch.equal(alone[3], scale[1:2])  # independent of the batch
    assert torch.isfinite(f.point(huge, m)).all()


@pytest.mark.parametrize("kind", ["point", "quantile", "normal"])
def test_forecasts_come_back_in_data_units(kind):
    """z-scoring makes the forecast equivariant: a * x + b in, a * forecast + b out."""
    f = _forecaster(kind)
    x, m = _series(40, level=0.0, spread=1.0)
    a, b = 50.0, -300.0
    assert_close("point", a * f.point(x, m) + b, f.point(a * x + b, m), tol=1e-3)
    assert_close("quantiles", a * f.quantiles(x, m, LEVELS) + b, f.quantiles(a * x + b, m, LEVELS), tol=1e-3)


def test_given_scaler_statistics():
    """Passing the context's own loc / scale reproduces the default; other units change the input the model sees."""
    f = _forecaster("normal")
    x, m = _series(30)
    ref = f(x, m)
    same = f(x, m, loc=ref.loc, scale=ref.scale)
    for i, (p, q) in enumerate(zip(ref.params, same.params)):
        assert_close(f"params[{i}]", p, q, tol=1e-5)
    other = f(x, m, loc=ref.loc + 1.0, scale=ref.scale)
    assert not torch.allclose(other.params[0], ref.params[0])
    with pytest.raises(ValueError, match="both or neither"):
        f(x, m, loc=ref.loc)


def test_state_continues_a_context():
    """The returned state is the memory after the context: feeding it back continues the same recurrence
    (ARMT's own contract; here through the forecaster, with fixed scaler statistics)."""
    f = _forecaster("point", scaling="none")
    with torch.no_grad():
        for mem in f.backbone.memories:
            mem.W_v.weight.normal_(0, 0.5)
    x, m = _series(32)  # 8 patches x 2 channels = 16 tokens = 4 whole segments
    cut = 16  # 4 patches = 2 whole segments
    _, _, _, state = f(x[:, :cut], m[:, :cut])
    full = f(x, m)
    cont = f(x[:, cut:], m[:, cut:], state)
    assert_close("state carried between calls", full.params[0], cont.params[0], tol=1e-5)


def test_config_validation_and_round_trip():
    cfg = ForecasterConfig.build(H, 3, armt=ARMT.replace(segment_length=6), patch=PatchConfig(mode="mixing"),
                                 head=HeadConfig(kind="quantile", quantiles=(0.2, 0.5, 0.8)), scaling="mean")
    assert (cfg.patch.d_model, cfg.head.d_model, cfg.head.n_channels, cfg.head.horizon) == (16, 16, 3, H)
    assert cfg.head.per_channel is False
    assert ForecasterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"ForecasterConfig.patch.d_model: must equal armt.d_model=16, got 64"):
        ForecasterConfig(armt=ARMT, patch=PatchConfig(), head=HeadConfig(d_model=16))
    with pytest.raises(ConfigError, match=r"ForecasterConfig.head.per_channel: must be False"):
        ForecasterConfig(armt=ARMT, patch=PatchConfig(d_model=16, mode="mixing"), head=HeadConfig(d_model=16))
    with pytest.raises(ConfigError, match=r"ForecasterConfig.armt.segment_length: must be a multiple of "
                                          r"patch.n_channels=3"):
        ForecasterConfig.build(H, 3, armt=ARMT)  # segment_length 4, 3 channels per time patch
    with pytest.raises(ConfigError, match=r"ForecasterConfig.head.n_channels"):
        ForecasterConfig(armt=ARMT, patch=PatchConfig(d_model=16, n_channels=2), head=HeadConfig(d_model=16))
    with pytest.raises(ConfigError, match=r"ForecasterConfig.scaling"):
        ForecasterConfig.build(H, armt=ARMT, scaling="minmax")
    with pytest.raises(ConfigError, match=r"ForecasterConfig: unknown fields \['bogus'\]"):
        ForecasterConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("schedule", ["sequential", "diagonal"])
def test_forward_computes_only_the_rows_the_head_reads(mode, schedule):
    # forward asks the backbone for the last patch's outputs only (ARMT.forward's ``outputs``); the forecast, the
    # state and every gradient equal those of the full backbone output to float rounding
    model = _forecaster("student_t", mode)
    model.backbone.config = model.backbone.config.replace(schedule=schedule)
    for memory in model.backbone.memories:  # a live memory (W_v = 0 at init would make the reads add 0)
        torch.nn.init.normal_(memory.W_v.weight, std=0.3)
    x, m = _series(37)
    out = model(x, m)
    y, loc, scale, state = model.encode(x, m)
    rep = y[:, -C:] if mode == "independent" else y[:, -1]
    ref = model.head(rep)
    for a, b in zip(out.params, ref):
        assert_close("params", b, a, 1e-5)
    for l in range(ARMT.n_layers):
        assert_close(f"A[{l}]", state.A[l], out.state.A[l], 1e-5)
    w = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(ref)]
    params = [p for p in model.parameters() if p.requires_grad]
    g_out = torch.autograd.grad(sum((p * wi).sum() for p, wi in zip(out.params, w)), params, allow_unused=True)
    g_ref = torch.autograd.grad(sum((p * wi).sum() for p, wi in zip(ref, w)), params, allow_unused=True)
    for (name, _), a, b in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], g_out, g_ref):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        assert_close(f"grad {name}", b, a, 1e-4)


def test_given_statistics_and_skip_windows_are_checked():
    f = _forecaster("normal")
    x, m = _series(30)
    ref = f(x, m)
    for loc, scale, message in ((ref.loc[:1], ref.scale[:1], r"loc: expected \[B, 1, C\]"),
                                (ref.loc, ref.scale * 0, "scale: must be > 0"),
                                (ref.loc, ref.scale * float("nan"), "scale: non-finite")):
        with pytest.raises(ValueError, match=message):
            f(x, m, loc=loc, scale=scale)
    cfg = ForecasterConfig.build(H, C, armt=ARMT, patch=PatchConfig(patch_len=P, stride=P), linear_skip=8)
    g = ARMTForecaster(cfg)
    fut = torch.randn(B, H, C)
    with pytest.raises(ValueError, match=r"fit_skip: future_values .* expected \[B, 6, 2\]"):
        g.fit_skip([(x, m, fut[:, :-1], torch.ones(B, H - 1, C))])
    with pytest.raises(ValueError, match=r"fit_skip: past_values .* expected \[B, T, 2\]"):
        g.fit_skip([(x[..., :1], m[..., :1], fut, torch.ones_like(fut))])
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"fit_skip: past_values: 1 non-finite value\(s\) at observed positions, "
                                         r"first at \(0, 3, 1\)"):
        g.fit_skip([(bad, m, fut, torch.ones_like(fut))])


def test_the_package_names_its_user_facing_classes():
    import armt_ts

    for name in armt_ts.__all__:
        assert getattr(armt_ts, name) is not None, name
    assert armt_ts.StreamingForecaster.__module__ == "armt_ts.stream"
    assert armt_ts.ARMTForecaster is ARMTForecaster
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        armt_ts.Nope


def test_a_model_can_be_deep_copied_and_pickled():
    """The memory layers held their ops module as an attribute, which copy.deepcopy and pickle refuse (Lightning's
    weight averaging deep-copies the model); now they look it up from the config."""
    import copy
    import pickle

    f = _forecaster("student_t")
    x, m = _series(20)
    want = f.point(x, m)
    for other in (copy.deepcopy(f), pickle.loads(pickle.dumps(f))):
        assert torch.equal(other.point(x, m), want)

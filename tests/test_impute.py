"""armt_ts/impute.py: the Gaussian conditional mean, checked against the textbook formula per pattern."""

import numpy as np
import pytest
import torch

from armt_ts.impute import GaussianChannelImputer
from armt_ts.testing import assert_close


def _data(T=4000, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(C, C, generator=g, dtype=torch.float64)
    x = torch.randn(T, C, generator=g, dtype=torch.float64) @ L.T + torch.arange(C, dtype=torch.float64)
    return x


def test_fit_recovers_mean_and_covariance():
    x = _data()
    imp = GaussianChannelImputer(5, ridge=0.0).fit(x, torch.ones_like(x))
    np.testing.assert_allclose(imp.mean.numpy(), x.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(imp.cov.numpy(), np.cov(x.numpy().T), rtol=1e-10, atol=1e-12)
    assert bool(imp.fitted)


def test_fill_is_the_conditional_mean_for_every_pattern():
    x = _data()
    imp = GaussianChannelImputer(5, ridge=0.0, min_r2=0.0).fit(x, torch.ones_like(x))
    mu, S = imp.mean.numpy(), imp.cov.numpy()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(64, 5, generator=g, dtype=torch.float64) * 2
    m = torch.rand(64, 5, generator=g) > 0.4
    q_nan = torch.where(m, q, torch.full_like(q, float("nan")))  # unobserved entries may hold anything
    out, obs = imp(q_nan, m)
    for r in range(64):
        o = m[r].numpy()
        if not o.any():  # nothing to condition on: left as it was
            assert not obs[r].any() and torch.isnan(out[r]).all()
            continue
        assert obs[r].all()
        h = ~o
        want = q[r].numpy().copy()
        if h.any():
            want[h] = mu[h] + S[np.ix_(h, o)] @ np.linalg.solve(S[np.ix_(o, o)], q[r].numpy()[o] - mu[o])
        np.testing.assert_allclose(out[r].numpy(), want, rtol=1e-9, atol=1e-9)
        assert torch.equal(out[r][m[r]], q[r][m[r]])  # observed entries bit-identical


def test_fill_recovers_a_channel_that_is_a_sum_of_others():
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(3000, generator=g) for _ in range(3))
    x = torch.stack([a + b, a, b, c], dim=-1)  # channel 0 = channel 1 + channel 2
    imp = GaussianChannelImputer(4).fit(x, torch.ones_like(x))
    m = torch.ones_like(x, dtype=torch.bool)
    m[:, 0] = False
    out, obs = imp(x, m)
    err = (out[:, 0] - x[:, 0]).pow(2).mean() / x[:, 0].var()
    assert err < 1e-3 and obs.all()
    assert out.dtype == x.dtype and obs.dtype == torch.bool


def test_batched_shapes_float_masks_and_state_dict():
    x = _data(C=3)
    imp = GaussianChannelImputer(3, min_r2=0.0).fit(x.reshape(40, 100, 3), torch.ones(40, 100, 3))
    v = x[:200].reshape(2, 100, 3).float()
    m = (torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    out, obs = imp(v, m)
    assert out.shape == v.shape and out.dtype == torch.float32 and obs.dtype == torch.float32
    assert torch.equal(out[m != 0], v[m != 0])
    other = GaussianChannelImputer(3, min_r2=0.0)
    other.load_state_dict(imp.state_dict())
    out2, obs2 = other(v, m)
    assert torch.equal(out, out2) and torch.equal(obs, obs2)
    # a fully observed input comes back unchanged
    full = torch.ones_like(m)
    assert torch.equal(imp(v, full)[0], v)


def test_min_r2_leaves_poorly_explained_channels_unobserved():
    g = torch.Generator().manual_seed(7)
    a, b, noise = (torch.randn(5000, generator=g, dtype=torch.float64) for _ in range(3))
    # channel 0 = a + b exactly (R^2 1 from channels 1, 2); channel 3 = 0.5 a + noise (R^2 0.2 from the others)
    x = torch.stack([a + b, a, b, 0.5 * a + noise], dim=-1)
    imp = GaussianChannelImputer(4, min_r2=0.5).fit(x, torch.ones_like(x))
    m = torch.ones(3, 4, dtype=torch.bool)
    m[0, 0] = False  # well explained: filled
    m[1, 3] = False  # poorly explained: left unobserved
    m[2, 1:3] = False  # channels 1, 2 from 0 and 3: R^2 about 0.5 each, checked against the formula below
    q = x[:3].clone()
    out, obs = imp(torch.where(m, q, torch.full_like(q, float("nan"))), m)
    assert obs[0].all() and abs(float(out[0, 0] - q[0, 0])) < 1e-2
    assert not obs[1, 3] and torch.isnan(out[1, 3]) and obs[1, :3].all()
    S = imp.cov.numpy()
    for h in (1, 2):
        o = [0, 3]
        r2 = S[h, o] @ np.linalg.solve(S[np.ix_(o, o)], S[o, h]) / S[h, h]
        assert bool(obs[2, h]) == (r2 >= 0.5), (h, r2)
    with pytest.raises(ValueError, match="min_r2"):
        GaussianChannelImputer(3, min_r2=1.5)


def test_fit_with_missing_values_uses_pairwise_complete_steps():
    x = _data(T=20000, C=4)
    g = torch.Generator().manual_seed(4)
    m = torch.rand(x.shape, generator=g) > 0.3
    imp = GaussianChannelImputer(4, ridge=0.0).fit(torch.where(m, x, torch.full_like(x, float("nan"))), m)
    full = GaussianChannelImputer(4, ridge=0.0).fit(x, torch.ones_like(x))
    np.testing.assert_allclose(imp.cov.numpy(), full.cov.numpy(), rtol=0.05, atol=0.05)


def test_bad_input_is_refused_with_the_place_named():
    imp = GaussianChannelImputer(3)
    with pytest.raises(RuntimeError, match="fit"):
        imp(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"C=3"):
        imp.fit(torch.zeros(10, 4), torch.ones(10, 4))
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\]"):
        m = torch.ones(10, 3)
        m[1:, 2] = 0
        imp.fit(torch.randn(10, 3), m)
    x = torch.randn(10, 3)
    x[4, 1] = float("inf")
    with pytest.raises(ValueError, match="step 4, channel 1"):
        imp.fit(x, torch.ones(10, 3))
    with pytest.raises(ValueError, match="n_channels"):
        GaussianChannelImputer(0)


# ------------------------------------------------------------------------- inside the forecaster and the stream


def _forecasters():
    from armt_ts.config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
    from armt_ts.forecaster import ARMTForecaster

    def build(impute):
        torch.manual_seed(0)
        armt = ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=9, num_mem_tokens=2, d_mem=8)
        cfg = ForecasterConfig.build(horizon=4, n_channels=3, armt=armt, patch=PatchConfig(patch_len=4, stride=3),
                                     head=HeadConfig(kind="quantile"), impute=impute)
        model = ARMTForecaster(cfg).eval()
        with torch.no_grad():
            for mem in model.backbone.memories:
                mem.W_v.weight.normal_(std=0.05)
        return model

    with_imp, plain = build("gaussian"), build("none")
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2000, 2, generator=g)
    train = torch.stack([base[:, 0] + base[:, 1], base[:, 0], base[:, 1]], -1) * 2 + 5
    with_imp.fit_imputer(train, torch.ones_like(train))
    return with_imp, plain


def _series(T=47, seed=6):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, T, 2, generator=g)
    x = torch.stack([base[..., 0] + base[..., 1], base[..., 0], base[..., 1]], -1) * 2 + 5
    m = torch.rand(1, T, 3, generator=g) > 0.35
    return x, m


def test_forecaster_imputes_before_everything_else():
    with_imp, plain = _forecasters()
    assert [k for k in with_imp.state_dict() if k.startswith("imputer.")] == ["imputer.mean", "imputer.cov",
                                                                             "imputer.fitted"]
    x, m = _series()
    xi, mi = with_imp.imputer(x, m)
    assert int(mi.sum()) > int(m.sum())
    assert torch.equal(with_imp.quantiles(x, m, (0.1, 0.5)), plain.quantiles(xi, mi, (0.1, 0.5)))
    # the config round-trips, and a model without an imputer refuses to fit one
    from armt_ts.config import ForecasterConfig
    assert ForecasterConfig.from_dict(with_imp.config.to_dict()) == with_imp.config
    with pytest.raises(ValueError, match="no imputer"):
        plain.fit_imputer(x[0], m[0])
    from armt_ts.config import ConfigError
    with pytest.raises(ConfigError, match="impute"):
        with_imp.config.replace(impute="mice")
    # the imputer's R^2 threshold is part of the config (and so of a saved model)
    from armt_ts.forecaster import ARMTForecaster
    assert with_imp.imputer.min_r2 == 0.5 == with_imp.config.impute_min_r2
    strict = with_imp.config.replace(impute_min_r2=0.9)
    assert ARMTForecaster(strict).imputer.min_r2 == 0.9
    assert ForecasterConfig.from_dict(strict.to_dict()) == strict
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError, match="ForecasterConfig.impute_min_r2"):
            with_imp.config.replace(impute_min_r2=bad)


def test_stream_imputes_each_push_like_the_forecaster():
    from armt_ts.stream import StreamingForecaster

    with_imp, plain = _forecasters()
    x, m = _series(T=61)
    xi, mi = with_imp.imputer(x, m)
    block = StreamingForecaster(with_imp)
    block.push(torch.where(m, x, torch.full_like(x, float("nan")))[0].numpy(), m[0].numpy())
    point = StreamingForecaster(with_imp)
    for s in range(x.shape[1]):
        point.push(torch.where(m, x, torch.full_like(x, float("nan")))[0, s].numpy(), m[0, s].numpy())
    twin = StreamingForecaster(plain)
    twin.push(xi[0].numpy(), mi[0].numpy())
    for l in range(block.state.memory.num_layers):
        assert torch.equal(block.state.memory.A[l], twin.state.memory.A[l])
        assert_close(f"A[{l}] point vs block", block.state.memory.A[l], point.state.memory.A[l], 1e-5)
    for name in ("buf_values", "buf_observed", "fill", "stat_n", "stat_mean"):
        assert torch.equal(getattr(block.state, name), getattr(twin.state, name)), name
        assert torch.equal(getattr(block.state, name), getattr(point.state, name)), name
    assert torch.equal(block.forecast().quantiles, twin.forecast().quantiles)
    unfitted = _forecasters()[0]
    unfitted.imputer.fitted.zero_()
    with pytest.raises(ValueError, match="not fitted"):
        StreamingForecaster(unfitted)


def test_autocast_leaves_the_fill_in_float64():
    x = _data(C=3)
    imp = GaussianChannelImputer(3, min_r2=0.0).fit(x, torch.ones_like(x))
    v = x[:50].float()
    m = torch.rand(50, 3, generator=torch.Generator().manual_seed(8)) > 0.4
    ref = imp(v, m)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = imp(v, m)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_a_fit_on_few_steps_fills_nothing_and_a_constant_channel_is_no_error():
    """Eight independent channels: on about as many steps as channels the fitted R^2 is near 1 by chance. R^2 is
    judged adjusted for the fit's degrees of freedom (and not at all under 10 of them), so nothing is filled; on
    strongly related channels the same few steps still fill."""
    observed = torch.ones(50, 8)
    observed[:, 0] = 0
    for n in (3, 9, 20, 1000):
        x = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
        imp = GaussianChannelImputer(8).fit(x, torch.ones_like(x))
        assert imp.n_fit == n
        _, obs = imp(torch.randn(50, 8), observed)
        assert not obs[:, 0].any(), n
    z = torch.randn(30, 1, generator=torch.Generator().manual_seed(0))
    x = torch.cat([z + 0.01 * torch.randn(30, 1, generator=torch.Generator().manual_seed(c)) for c in range(3)], 1)
    imp = GaussianChannelImputer(3).fit(x, torch.ones_like(x))
    _, obs = imp(x[:5], torch.tensor([[0.0, 1.0, 1.0]]).repeat(5, 1))
    assert obs[:, 0].all()
    const = torch.stack([torch.ones(20), torch.arange(20.0), 2 * torch.arange(20.0)], 1)
    imp = GaussianChannelImputer(3).fit(const, torch.ones_like(const))  # channel 0 never varies
    filled, obs = imp(const[:4], torch.tensor([[1.0, 1.0, 0.0]]).repeat(4, 1))
    assert obs.all() and torch.allclose(filled[:, 2], 2 * torch.arange(4.0), atol=0.05)
    with pytest.raises(ValueError, match="every channel is constant"):
        GaussianChannelImputer(2).fit(torch.ones(5, 2), torch.ones(5, 2))
    for bad in (dict(ridge=float("inf")), dict(min_r2="a"), dict(ridge=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GaussianChannelImputer(2, **bad)

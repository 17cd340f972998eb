"""Forecasting heads (armt_ts/heads.py): shapes, losses, masking, quantiles, and gluonts' distributions."""

import numpy as np
import pytest
import scipy.stats
import torch

from armt_ts.config import ConfigError, HeadConfig
from armt_ts.heads import PPF_EXACT_BELOW, DistributionHead, build_head, student_t_ppf
from armt_ts.testing import assert_close

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds wake-up latency (tens of ms per op on a busy
    2-core machine), so run single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


KINDS = ["point", "quantile", "student_t", "normal", "laplace"]
DISTRIBUTIONS = ["student_t", "normal", "laplace"]
B, H, C, D = 4, 6, 3, 8


def _head(kind, per_channel=True, seed=0, **kw):
    torch.manual_seed(seed)
    return build_head(HeadConfig(kind=kind, horizon=H, n_channels=C, d_model=D, per_channel=per_channel, **kw))


def _rep(per_channel=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, C, D) if per_channel else (B, D)
    return torch.randn(shape, generator=g) * scale


def _target(seed=0, p_missing=0.3):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, H, C, generator=g)
    observed = (torch.rand(B, H, C, generator=g) > p_missing).float()
    return target, observed


def _loc_scale(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, C, generator=g), torch.rand(B, 1, C, generator=g) + 0.5  # a gluonts scaler's shapes


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_every_configuration(kind, per_channel):
    head = _head(kind, per_channel)
    params = head(_rep(per_channel))
    assert isinstance(params, tuple) and all(p.shape[:3] == (B, H, C) for p in params)
    target, observed = _target()
    for loc, scale in [(None, None), _loc_scale()]:
        assert head.point(params, loc, scale).shape == (B, H, C)
        q = head.quantiles(params, [0.1, 0.5, 0.9], loc, scale)
        assert q.shape == (B, H, C, 3) and torch.isfinite(q).all()
        loss = head.loss(params, target, observed, loc, scale)
        assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_loss_decreases_when_fitting_a_fixed_target(kind):
    head = _head(kind, seed=1)
    rep = _rep(seed=1)
    g = torch.Generator().manual_seed(2)
    steps = torch.arange(H, dtype=torch.float).view(1, H, 1)
    target = torch.sin(steps / 2 + torch.arange(C).view(1, 1, C)) + 0.1 * torch.randn(B, H, C, generator=g)
    observed = torch.ones(B, H, C)
    opt = torch.optim.Adam(head.parameters(), lr=0.03)
    losses = []
    for _ in range(50):
        loss = head.loss(head(rep), target, observed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3 * abs(losses[0]), f"{kind}: {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("kind", KINDS)
def test_masked_targets_are_excluded_from_the_loss(kind):
    head = _head(kind)
    params = head(_rep())
    target, observed = _target(p_missing=0.5)
    loc, scale = _loc_scale()
    loss = head.loss(params, target, observed, loc, scale)
    moved = target.clone()
    moved[observed == 0] = 1e4
    assert head.loss(params, moved, observed, loc, scale) == loss
    nan_target = target.clone()
    nan_target[observed == 0] = float("nan")
    nan_loss = head.loss(params, nan_target, observed, loc, scale)
    assert nan_loss == loss
    nan_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    # nothing observed: zero, not NaN
    assert head.loss(params, nan_target, torch.zeros(B, H, C)).item() == 0.0
    # only the observed entries count, and they are averaged
    one = torch.zeros(B, H, C)
    one[1, 2, 0] = 1.0
    two = one.clone()
    two[3, 5, 2] = 1.0
    l1 = head.loss(params, target, one)
    l2 = head.loss(params, target, two)
    only_second = head.loss(params, target, two - one)
    assert_close("mean of two", (l1 + only_second) / 2, l2, 1e-5)


def test_non_finite_observed_target_raises():
    head = _head("point")
    params = head(_rep())
    target, observed = _target(p_missing=0.0)
    target[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="target: 1 non-finite"):
        head.loss(params, target, observed)
    with pytest.raises(ValueError, match="observed: expected"):
        head.loss(params, target, observed[:, :2])


@pytest.mark.parametrize("point_loss", ["mse", "mae"])
def test_point_losses_by_hand(point_loss):
    head = _head("point", point_loss=point_loss)
    params = head(_rep())
    target, observed = _target()
    loc, scale = _loc_scale()
    pred = params[0] * scale + loc
    err = (pred - target)[observed == 1]
    expected = err.square().mean() if point_loss == "mse" else err.abs().mean()
    assert_close("loss", expected, head.loss(params, target, observed, loc, scale), 1e-6)
    assert_close("point", pred, head.point(params, loc, scale), 1e-6)
    q = head.quantiles(params, [0.2, 0.8], loc, scale)
    assert torch.equal(q[..., 0], q[..., 1])  # a point is a degenerate distribution


def test_quantile_head_non_crossing_pinball_and_interpolation():
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    head = _head("quantile", quantiles=levels)
    (q,) = head(_rep(scale=50.0))  # large inputs: raw outputs far apart and in any order
    assert q.shape == (B, H, C, 5)
    # non-crossing; equality is possible when a softplus step underflows next to a large quantile in float32
    assert (q.diff(dim=-1) >= 0).all()
    loc, scale = _loc_scale()
    target, observed = _target()
    qd = q * scale.unsqueeze(-1) + loc.unsqueeze(-1)
    tau = torch.tensor(levels)
    diff = target.unsqueeze(-1) - qd
    pinball = torch.maximum(tau * diff, (tau - 1) * diff).mean(-1)
    params = (q,)
    assert_close("pinball", pinball[observed == 1].mean(), head.loss(params, target, observed, loc, scale), 1e-6)
    # learned levels are returned exactly, others interpolated, the median is the point
    assert_close("learned levels", qd, head.quantiles(params, levels, loc, scale), 1e-6)
    mid = head.quantiles(params, [0.375], loc, scale)[..., 0]
    assert_close("interpolated", (qd[..., 1] + qd[..., 2]) / 2, mid, 1e-6)
    assert_close("median", qd[..., 2], head.point(params, loc, scale), 1e-6)
    many = head.quantiles(params, np.linspace(0.05, 0.95, 19))
    assert (many.diff(dim=-1) >= 0).all()
    with pytest.raises(ValueError, match="outside the learned range"):
        head.quantiles(params, [0.01])
    with pytest.raises(ValueError, match="levels"):
        head.quantiles(params, [1.0])


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_distribution_quantiles_are_monotone_and_exact(kind):
    head = _head(kind)
    params = head(_rep(scale=5.0))
    loc, scale = _loc_scale()
    levels = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    q = head.quantiles(params, levels, loc, scale)
    assert (q.diff(dim=-1) > 0).all()
    # the exact quantile of the scaled distribution, from scipy
    ref = _scipy_dist(kind, params, loc, scale)
    ref_q = np.moveaxis(ref.ppf(np.array(levels).reshape(-1, 1, 1, 1)), 0, -1)
    assert_close("quantiles", torch.from_numpy(ref_q), q.double(), 1e-4)
    assert_close("mean", torch.from_numpy(ref.mean()), head.point(params, loc, scale).double(), 1e-5)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_distribution_point_is_the_gluonts_mean_bit_for_bit(kind):
    # point() computes the mean without building gluonts' distribution objects: the same values, bit for bit
    head = _head(kind)
    params = head(_rep(scale=5.0))
    loc, scale = _loc_scale()
    for args in ((loc, scale), (None, None), (loc, None)):
        want = head.distribution(params, *args).mean
        got = head.point(params, *args)
        assert got.shape == want.shape and torch.equal(got, want), (kind, [a is None for a in args])
    if kind == "student_t":  # df <= 1: no mean (NaN), as torch's StudentT has it
        low = (torch.full_like(params[0], 0.5),) + tuple(params[1:])
        assert torch.isnan(head.point(low, loc, scale)).all()
        assert torch.isnan(head.distribution(low, loc, scale).mean).all()


def test_student_t_quantiles_are_exact_in_the_tails():
    # the Student-t levels stay float64 down to scipy.special.stdtrit (gluonts' icdf rounds them to float32 first:
    # 0.999 -> 0.99900001, an error of ~1e-3 in a heavy tail)
    head = _head("student_t")
    params = head(_rep(scale=5.0))
    loc, scale = _loc_scale()
    levels = [0.001, 0.02, 0.98, 0.999]
    q = head.quantiles(params, levels, loc, scale)
    ref = _scipy_dist("student_t", params, loc, scale)
    ref_q = torch.from_numpy(np.moveaxis(ref.ppf(np.array(levels).reshape(-1, 1, 1, 1)), 0, -1))
    assert q.dtype == params[0].dtype and q.shape == ref_q.shape
    assert ((q.double() - ref_q).abs() <= 1e-5 * ref_q.abs().clamp_min(1.0)).all()


def _scipy_dist(kind, params, loc, scale):
    """The same distribution in data units, built by scipy from the raw arguments (independent of gluonts)."""
    a = [p.detach().double().numpy() for p in params]
    lo, sc = loc.double().numpy(), scale.double().numpy()
    if kind == "student_t":
        df, mu, sigma = a
        return scipy.stats.t(df=df, loc=lo + sc * mu, scale=sc * sigma)
    mu, sigma = a
    family = scipy.stats.norm if kind == "normal" else scipy.stats.laplace
    return family(loc=lo + sc * mu, scale=sc * sigma)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_distribution_loss_is_the_negative_log_likelihood(kind):
    head = _head(kind)
    params = head(_rep())
    target, observed = _target()
    loc, scale = _loc_scale()
    keep = observed == 1
    # independently: scipy's log density of the affinely transformed distribution
    logpdf = _scipy_dist(kind, params, loc, scale).logpdf(target.double().numpy())
    expected = -torch.from_numpy(logpdf)[keep].mean()
    assert_close("nll, scaled", expected, head.loss(params, target, observed, loc, scale).double(), 1e-5)
    # and gluonts' own output object on the same arguments, without loc / scale
    nll = head.output.loss(target, params)
    assert_close("nll, gluonts", nll[keep].mean(), head.loss(params, target, observed), 1e-6)
    assert isinstance(head, DistributionHead)
    assert head.distribution(params, loc, scale).batch_shape == (B, H, C)


def test_rep_shape_is_checked():
    with pytest.raises(ValueError, match=r"rep: expected \[B, C, D\]"):
        _head("normal")(torch.zeros(B, D))
    with pytest.raises(ValueError, match=r"rep: expected \[B, D\]"):
        _head("normal", per_channel=False)(torch.zeros(B, C, D))
    with pytest.raises(ValueError, match="loc"):
        head = _head("point")
        head.point(head(_rep()), loc=torch.zeros(B, 2, C))


def test_head_config_validation_names_the_field():
    for kwargs, field in [
        ({"kind": "gamma"}, "kind"),
        ({"horizon": 0}, "horizon"),
        ({"n_channels": 0}, "n_channels"),
        ({"d_model": -1}, "d_model"),
        ({"step_features": 0}, "step_features"),
        ({"per_channel": 1}, "per_channel"),
        ({"point_loss": "huber"}, "point_loss"),
        ({"quantiles": ()}, "quantiles"),
        ({"quantiles": (0.5, 0.1)}, "quantiles"),
        ({"quantiles": (0.0, 0.5)}, "quantiles"),
        ({"quantiles": (0.6, 0.9)}, "quantiles"),
        ({"quantiles": ("a",)}, "quantiles"),
    ]:
        with pytest.raises(ConfigError, match=f"HeadConfig.{field}"):
            HeadConfig(**kwargs)
    cfg = HeadConfig(kind="quantile", quantiles=[0.1, 0.5, 0.9])  # a list, as from JSON
    assert cfg.quantiles == (0.1, 0.5, 0.9)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("levels", [[0.1, 0.5, 0.9], [0.001, 0.02, 0.98, 0.999], [1e-6, 1 - 1e-6]])
def test_student_t_ppf_spline_agrees_with_stdtrit(levels):
    # large batches go through the checked spline in 1 / df; it must agree with the exact routine everywhere
    from scipy import special

    rng = np.random.default_rng(0)
    df = np.exp(rng.uniform(np.log(0.3), np.log(1e7), PPF_EXACT_BELOW + 1000))
    df[:4] = [2.0, np.inf, np.nan, -1.0]  # the normal limit; NaN and a non-positive df give stdtrit's NaN
    lv = np.array(levels)
    got = student_t_ppf(df.reshape(-1, 8), lv)
    want = special.stdtrit(df.reshape(-1, 8), lv.reshape(-1, 1, 1))
    assert got.shape == want.shape == (lv.size, df.size // 8, 8)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want[:, 0, 2:4]).all()
    ok = ~np.isnan(want)
    assert (np.abs(got - want)[ok] <= 1e-8 * np.maximum(np.abs(want[ok]), 1.0)).all()
    # small batches, and a batch with a single df value, are the exact routine itself
    assert np.array_equal(student_t_ppf(df[:100], lv), special.stdtrit(df[:100], lv[:, None]), equal_nan=True)
    same = np.full(PPF_EXACT_BELOW * 2, 3.5)
    assert np.array_equal(student_t_ppf(same, lv), special.stdtrit(same, lv[:, None]))


def test_student_t_quantiles_of_a_large_batch_are_exact():
    # the streaming fleet's case: many (entity, step) rows take the spline; still scipy's t.ppf to 1e-6
    head = _head("student_t")
    big = (PPF_EXACT_BELOW // (H * C)) + 7
    rep = torch.randn(big, C, D, generator=torch.Generator().manual_seed(2)) * 5.0
    params = head(rep)
    loc, scale = torch.randn(big, 1, C), torch.rand(big, 1, C) + 0.5
    levels = [0.01, 0.1, 0.5, 0.9, 0.99]
    q = head.quantiles(params, levels, loc, scale)
    ref = _scipy_dist("student_t", params, loc, scale)
    ref_q = torch.from_numpy(np.moveaxis(ref.ppf(np.array(levels).reshape(-1, 1, 1, 1)), 0, -1))
    assert q.shape == ref_q.shape and (q.diff(dim=-1) > 0).all()
    assert ((q.double() - ref_q).abs() <= 1e-6 * ref_q.abs().clamp_min(1.0)).all()

"""Forecasting heads: a representation -> forecasts for H steps and C channels (DESIGN.md section 3).

Every head has the same interface, so training, streaming and the GluonTS predictor never branch on the kind:

    params = head(rep)            rep [B, C, D] (config.per_channel) or [B, D]; params: a tuple of tensors
    head.loss(params, target, observed, loc=None, scale=None)  -> scalar, mean over observed targets only
    head.point(params, loc=None, scale=None)                   -> [B, H, C]
    head.quantiles(params, levels, loc=None, scale=None)       -> [B, H, C, Q]

``loc`` / ``scale`` (broadcastable to [B, H, C], e.g. a gluonts scaler's [B, 1, C]) map the head's output, which
lives in the model's normalised units, to data units: y = loc + scale * y_normalised. ``target`` is in data units.

Kinds: "point" (MSE or MAE), "quantile" (pinball loss, non-crossing by construction), and distribution heads
built on ``gluonts.torch.distributions`` ("student_t", "normal", "laplace"): the arguments come from the
DistributionOutput's ``get_args_proj`` and the loss is its negative log-likelihood, so a trained head plugs into
gluonts' ``DistributionForecastGenerator`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from gluonts.torch.distributions import DistributionOutput, LaplaceOutput, NormalOutput, StudentTOutput
from torch import Tensor, nn
from torch.distributions import Distribution

from .config import HeadConfig

Params = tuple[Tensor, ...]

_DISTRIBUTIONS: dict[str, type[DistributionOutput]] = {
    "student_t": StudentTOutput,
    "normal": NormalOutput,
    "laplace": LaplaceOutput,
}


def _levels(levels: Sequence[float] | Tensor) -> Tensor:
    """Quantile levels as a float64 tensor [Q], each in (0, 1)."""
    lv = torch.as_tensor(levels, dtype=torch.float64).detach().cpu()
    if lv.dim() != 1 or lv.numel() == 0:
        raise ValueError(f"levels: expected a non-empty 1-D sequence, got shape {tuple(lv.shape)}")
    if not ((lv > 0) & (lv < 1)).all():
        raise ValueError(f"levels: every level must be in (0, 1), got {lv.tolist()}")
    return lv


def _broadcast(name: str, t: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    if t is None:
        return None
    try:
        return torch.broadcast_to(t, shape)
    except RuntimeError:
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not broadcast to [B, H, C] = {shape}") from None


class ForecastHead(nn.Module):
    """Shared part of every head: rep -> F = step_features features for each forecast (step, channel).

    Per-channel reps ([B, C, D]) go through one projection shared by all channels (channel-independent, as in
    PatchTST); a summary rep ([B, D]) is projected to all H * C (step, channel) pairs at once.
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = c = config
        per_rep = c.horizon * c.step_features * (1 if c.per_channel else c.n_channels)
        self.proj = nn.Linear(c.d_model, per_rep)

    def step_features(self, rep: Tensor) -> Tensor:
        """rep [B, C, D] or [B, D] -> features [B, H, C, F]."""
        c = self.config
        H, C, D, Fs = c.horizon, c.n_channels, c.d_model, c.step_features
        if c.per_channel:
            if rep.dim() != 3 or tuple(rep.shape[1:]) != (C, D):
                raise ValueError(f"rep: expected [B, C, D] = [B, {C}, {D}] (per_channel=True), got {tuple(rep.shape)}")
            return self.proj(rep).view(rep.shape[0], C, H, Fs).transpose(1, 2)
        if rep.dim() != 2 or rep.shape[1] != D:
            raise ValueError(f"rep: expected [B, D] = [B, {D}] (per_channel=False), got {tuple(rep.shape)}")
        return self.proj(rep).view(rep.shape[0], H, C, Fs)

    def forward(self, rep: Tensor) -> Params:
        """rep [B, C, D] or [B, D] -> params, a tuple of tensors whose leading dims are [B, H, C]."""
        raise NotImplementedError

    def elementwise_loss(self, params: Params, target: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        """[B, H, C] loss of each (step, channel) against a finite ``target`` [B, H, C]."""
        raise NotImplementedError

    def point(self, params: Params, loc: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """[B, H, C] point forecast in data units."""
        raise NotImplementedError

    def quantiles(
        self, params: Params, levels: Sequence[float] | Tensor, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        """[B, H, C, Q] forecast quantiles at ``levels`` (each in (0, 1)), in data units."""
        raise NotImplementedError

    def shift(self, params: Params, delta: Tensor) -> Params:
        """params whose forecast is moved by ``delta`` [B, H, C] (normalised units): the same distribution or
        quantiles, translated (``ForecasterConfig.linear_skip`` adds its forecast this way). Every head here is
        location-equivariant, so this is exact."""
        raise NotImplementedError

    def _shape(self, params: Params) -> tuple[int, int, int]:
        return (params[0].shape[0], self.config.horizon, self.config.n_channels)

    def _affine(self, x: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        """x [B, H, C] or [B, H, C, Q] in normalised units -> data units."""
        shape = tuple(x.shape[:3])
        loc, scale = _broadcast("loc", loc, shape), _broadcast("scale", scale, shape)
        extra = x.dim() - 3  # quantile dimension, if any
        if scale is not None:
            x = x * scale.reshape(shape + (1,) * extra)
        if loc is not None:
            x = x + loc.reshape(shape + (1,) * extra)
        return x

    def loss(
        self,
        params: Params,
        target: Tensor,
        observed: Tensor,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
    ) -> Tensor:
        """Scalar mean loss over the observed targets only (0 when none is observed).

        Args:
            params: ``head(rep)``.
            target: [B, H, C] in data units; finite where observed, anything (NaN included) where not.
            observed: [B, H, C] bool or 0/1 float, nonzero = observed.
            loc, scale: optional, broadcastable to [B, H, C].
        """
        shape = self._shape(params)
        for name, t in (("target", target), ("observed", observed)):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected [B, H, C] = {shape}, got {tuple(t.shape)}")
        keep = observed != 0
        bad = keep & ~torch.isfinite(target)
        if bad.any():
            raise ValueError(f"target: {int(bad.sum())} non-finite value(s) at observed positions")
        # Missing targets are replaced before the loss, not after: a NaN target would give a NaN gradient even
        # where the loss is then masked out. 0 is in the support of every kind here.
        zero = torch.zeros((), dtype=target.dtype, device=target.device)
        per = self.elementwise_loss(params, torch.where(keep, target, zero), loc, scale)
        per = torch.where(keep, per, torch.zeros((), dtype=per.dtype, device=per.device))
        return per.sum() / keep.sum().clamp_min(1)


class PointHead(ForecastHead):
    """One value per (step, channel), trained with MSE or MAE (``config.point_loss``).

    ``quantiles`` treats the point as a degenerate distribution: every quantile is the point, so quantile
    metrics can still be computed for point models.
    """

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.out = nn.Linear(config.step_features, 1)

    def forward(self, rep: Tensor) -> Params:
        return (self.out(self.step_features(rep)).squeeze(-1),)  # ([B, H, C],)

    def elementwise_loss(self, params: Params, target: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        err = self._affine(params[0], loc, scale) - target
        return err.square() if self.config.point_loss == "mse" else err.abs()

    def point(self, params: Params, loc: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        return self._affine(params[0], loc, scale)

    def shift(self, params: Params, delta: Tensor) -> Params:
        return (params[0] + delta.to(params[0].dtype),)

    def quantiles(
        self, params: Params, levels: Sequence[float] | Tensor, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        q = _levels(levels).numel()
        return self.point(params, loc, scale).unsqueeze(-1).expand(*self._shape(params), q)


class QuantileHead(ForecastHead):
    """Quantiles at the learned levels ``config.quantiles``, trained with the pinball loss.

    Non-crossing by construction: the lowest quantile is free and each next one adds a positive softplus step.
    Other levels inside [lowest, highest learned level] are interpolated linearly (monotone in the level); levels
    outside raise, because extrapolating a tail from interior quantiles would be a guess.
    """

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.out = nn.Linear(config.step_features, len(config.quantiles))
        # Kept as float64 from the config, not as a buffer: module.to(float32) would round a buffer, and then a
        # requested level 0.1 would no longer match the learned level 0.1.
        self.levels = torch.tensor(config.quantiles, dtype=torch.float64)

    def forward(self, rep: Tensor) -> Params:
        raw = self.out(self.step_features(rep))  # [B, H, C, Q]
        steps = F.softplus(raw[..., 1:])
        q = torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(steps, dim=-1)], dim=-1)
        return (q,)  # ([B, H, C, Q] increasing along Q,)

    def elementwise_loss(self, params: Params, target: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        q = self._affine(params[0], loc, scale)
        tau = self.levels.to(q.dtype)
        diff = target.unsqueeze(-1) - q
        return torch.maximum(tau * diff, (tau - 1) * diff).mean(-1)  # pinball, averaged over the levels

    def point(self, params: Params, loc: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        return self.quantiles(params, [0.5], loc, scale)[..., 0]  # the median

    def shift(self, params: Params, delta: Tensor) -> Params:
        return (params[0] + delta.to(params[0].dtype).unsqueeze(-1),)

    def quantiles(
        self, params: Params, levels: Sequence[float] | Tensor, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        lv = _levels(levels)
        tau = self.levels
        outside = (lv < tau[0]) | (lv > tau[-1])
        if outside.any():
            raise ValueError(f"levels: {lv[outside].tolist()} outside the learned range [{tau[0]}, {tau[-1]}]")
        q = params[0]
        if tau.numel() == 1:  # one learned level, and every requested level equals it
            return self._affine(q.expand(*q.shape[:3], lv.numel()), loc, scale)
        # side="right": a learned level k gives lo = k, w = 0, so it is returned exactly.
        hi = torch.searchsorted(tau, lv, side="right").clamp(1, tau.numel() - 1)
        lo = hi - 1
        w = ((lv - tau[lo]) / (tau[hi] - tau[lo])).to(device=q.device, dtype=q.dtype)
        q_lo, q_hi = q[..., lo.to(q.device)], q[..., hi.to(q.device)]
        # lo + w * (hi - lo), capped at hi: rounding can then never make a higher level give a lower value.
        return self._affine(torch.minimum(q_lo + w * (q_hi - q_lo), q_hi), loc, scale)


class DistributionHead(ForecastHead):
    """A parametric distribution per (step, channel), from ``gluonts.torch.distributions``.

    params are the DistributionOutput's ``distr_args`` (each [B, H, C]); the loss is gluonts' negative
    log-likelihood; ``point`` is the mean; ``quantiles`` uses the distribution's exact ``icdf`` (torch's for
    Normal and Laplace; for the Student-t, scipy.special.stdtrit on the CPU, so it carries no gradient).
    """

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.output: DistributionOutput = _DISTRIBUTIONS[config.kind]()
        self.args_proj = self.output.get_args_proj(config.step_features)

    def forward(self, rep: Tensor) -> Params:
        return tuple(self.args_proj(self.step_features(rep)))

    def distribution(self, params: Params, loc: Tensor | None = None, scale: Tensor | None = None) -> Distribution:
        """The forecast distribution in data units, batch shape [B, H, C]."""
        shape = self._shape(params)
        loc, scale = _broadcast("loc", loc, shape), _broadcast("scale", scale, shape)
        return self.output.distribution(params, loc=loc, scale=scale)

    def elementwise_loss(self, params: Params, target: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        shape = self._shape(params)
        loc, scale = _broadcast("loc", loc, shape), _broadcast("scale", scale, shape)
        return self.output.loss(target, params, loc=loc, scale=scale)  # negative log-likelihood, [B, H, C]

    def point(self, params: Params, loc: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """The mean, as gluonts computes it (the base distribution's mean * scale + loc; a Student-t's is NaN where
        df <= 1), without building the distribution objects: their construction and argument checks were about a
        quarter of a one-entity streaming forecast. Equal, bit for bit, to ``distribution(...).mean``."""
        if (loc is None) != (scale is None):
            return self.distribution(params, loc, scale).mean
        names = list(self.output.args_dim)  # Student-t (df, loc, scale); normal, Laplace (loc, scale)
        shape = self._shape(params)
        mean = params[names.index("loc")]
        if self.config.kind == "student_t":
            mean = torch.where(params[names.index("df")] <= 1, torch.full_like(mean, float("nan")), mean)
        if loc is None:
            return mean.clone()
        return mean * _broadcast("scale", scale, shape) + _broadcast("loc", loc, shape)

    def shift(self, params: Params, delta: Tensor) -> Params:
        i = list(self.output.args_dim).index("loc")  # Student-t (df, loc, scale); normal, Laplace (loc, scale)
        return params[:i] + (params[i] + delta.to(params[i].dtype),) + params[i + 1:]

    def quantiles(
        self, params: Params, levels: Sequence[float] | Tensor, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        lv = _levels(levels)
        if self.config.kind == "student_t":
            return self._student_t_quantiles(params, lv, loc, scale)
        shape = self._shape(params)
        ref = params[0]
        value = lv.to(device=ref.device, dtype=ref.dtype).view(-1, 1, 1, 1).expand(lv.numel(), *shape)
        return self.distribution(params, loc, scale).icdf(value).movedim(0, -1)  # [Q, B, H, C] -> [B, H, C, Q]

    def _student_t_quantiles(self, params: Params, lv: Tensor, loc: Tensor | None, scale: Tensor | None) -> Tensor:
        """gluonts' StudentT.icdf builds a frozen ``scipy.stats.t`` per call (~1.5 ms of docstring templating and
        class creation, most of a one-entity streaming forecast); this calls the routine it ends in,
        ``scipy.special.stdtrit``, directly (``student_t_ppf``: a checked spline for large batches), with the levels in
        float64 (gluonts rounds them to float32 first, off by ~1e-3 in a heavy tail at 0.999). Agrees with
        scipy.stats.t.ppf to 1e-5 relative (tests/test_heads.py)."""
        d = self.output.distribution(params)  # the base StudentT(df, loc0, scale0), batch [B, H, C]
        df, loc0, scale0 = (t.detach().cpu().double().numpy() for t in (d.df, d.loc, d.scale))
        base = torch.from_numpy(student_t_ppf(df, lv.numpy()) * scale0 + loc0)  # [Q, B, H, C] float64
        base = base.to(device=params[0].device, dtype=params[0].dtype).movedim(0, -1)  # [B, H, C, Q]
        return self._affine(base, loc, scale)


# Below this many degrees-of-freedom values the exact routine is cheaper than building and checking a spline.
PPF_EXACT_BELOW = 8192


def student_t_ppf(df: np.ndarray, levels: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Standard Student-t quantiles: df [...] (float64), levels [Q] in (0, 1) -> [Q, ...] float64.

    ``scipy.special.stdtrit`` costs about 160 ns per value (it inverts the incomplete beta function), most of a
    streaming fleet's forecast. For ``df.size >= PPF_EXACT_BELOW`` each level's quantile is instead a cubic spline
    in w = 1 / df over the batch's range of w, through exact values at equally spaced nodes; the node count doubles
    until the spline agrees with stdtrit at every midpoint between nodes to ``rtol`` (relative, floored at 1), and
    after 2^16 nodes the values are computed exactly. t_q is smooth in w on (0, 1/df_min], w = 0 (df = inf) being
    the normal quantile. Non-positive or NaN df take the exact routine (its NaN).
    """
    from scipy import special
    from scipy.interpolate import CubicSpline

    df = np.asarray(df, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    shaped = levels.reshape(-1, *([1] * df.ndim))
    if df.size < PPF_EXACT_BELOW:
        return special.stdtrit(df, shaped)
    ok = df > 0  # False for NaN
    w = 1.0 / df[ok]
    lo, hi = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    if not hi > lo:  # every df the same (or none valid): nothing to interpolate
        return special.stdtrit(df, shaped)
    out = np.empty((levels.size, *df.shape))
    out[:, ~ok] = special.stdtrit(df[~ok], levels[:, None])
    n = 257
    with np.errstate(divide="ignore"):  # w = 0 is df = inf: the normal quantile
        while n <= 65537:
            nodes = np.linspace(lo, hi, n)
            spline = CubicSpline(nodes, special.stdtrit(1.0 / nodes, levels[:, None]), axis=1)
            mids = 0.5 * (nodes[1:] + nodes[:-1])
            exact = special.stdtrit(1.0 / mids, levels[:, None])
            if (np.abs(spline(mids) - exact) <= rtol * np.maximum(np.abs(exact), 1.0)).all():
                out[:, ok] = spline(w)
                return out
            n = 2 * n - 1
    return special.stdtrit(df, shaped)


def build_head(config: HeadConfig) -> ForecastHead:
    """The head for ``config.kind``."""
    if config.kind == "point":
        return PointHead(config)
    if config.kind == "quantile":
        return QuantileHead(config)
    return DistributionHead(config)

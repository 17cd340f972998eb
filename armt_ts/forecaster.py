"""ARMTForecaster: scaler -> patch embedder -> ARMT backbone -> forecasting head (DESIGN.md section 3).

    values [B, T, C], observed [B, T, C]
      -> scaler over the observed context: normalised values, loc [B, 1, C], scale [B, 1, C]
      -> PatchEmbedder: tokens [B, N * C, D] ("independent", time-major) or [B, N, D] ("mixing")
      -> ARMT, segment by segment (armt.segment_length tokens each): a context longer than one segment
         reaches the forecast through the associative memory; a shorter one is a single partial segment
      -> representation: the last time patch's output tokens, [B, C, D] ("independent") or [B, D] ("mixing")
      -> head: params in normalised units; loc / scale bring forecasts back to data units.
      (+ with config.linear_skip = n: a least-squares linear forecast from the last n steps, fitted before
         training (``fit_skip``) and fixed, moves the head's location; the network learns what it leaves)

The loss is computed in normalised units (the target is scaled with the context's loc / scale), so every series
weighs the same whatever its magnitude; for the distribution heads this differs from the data-unit negative
log-likelihood only by the constant log(scale), so the gradients are the same. A (nearly) constant context is the
exception: "std" scaling floors its scale at sqrt(1e-5) (gluonts' StdScaler), so a future that then moves gives
normalised errors in the hundreds and such a window outweighs the rest ("mean" scaling does not). Normalised
targets are clipped at +-``LOSS_TARGET_BOUND`` (1e12 scales), far beyond any forecastable move: past it a
Student-t's squared error overflows float32 (data of magnitude ~1e17 and up after a constant or empty context, as
a training window at a series' start has), and the loss would be inf instead of merely huge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from gluonts.torch.scaler import MeanScaler, NOPScaler, Scaler, StdScaler
from torch import Tensor, nn

from .backbone import ARMT
from .config import ForecasterConfig
from .embed import PatchEmbedder
from .heads import Params, build_head
from .impute import GaussianChannelImputer
from .state import MemoryState


# fit_skip leaves out a (window, channel) whose normalised future leaves this many window standard deviations: a
# least-squares fit has no defence against such rows (a near-constant window, then a jump), and no linear map of
# the window could forecast them
SKIP_FIT_BOUND = 100.0
# |normalised target| at which ``ARMTForecaster.loss`` clips: (1e12 / the heads' smallest scale, float32's eps)^2
# is ~7e37, below float32's 3.4e38; no window of ordinary data comes near it (values ~1e3 over an empty context,
# scale sqrt(1e-5), are ~3e5 scales away)
LOSS_TARGET_BOUND = 1e12


def _fill_gaps(y: Tensor, observed: Tensor) -> Tensor:
    """y [R, H] with ``observed`` [R, H] (each row observed somewhere) -> y with every unobserved entry linearly
    interpolated between the row's nearest observed steps before and after it (the nearest one's value where
    there is only one side)."""
    R, H = y.shape
    steps = torch.arange(H, device=y.device).expand(R, H)
    before = torch.where(observed, steps, torch.full_like(steps, -1)).cummax(1).values  # last observed <= h
    after = torch.where(observed, steps, torch.full_like(steps, H)).flip(1).cummin(1).values.flip(1)  # first >= h
    lo, hi = before.clamp(0, H - 1), after.clamp(0, H - 1)
    y_lo, y_hi = y.gather(1, lo), y.gather(1, hi)
    y_lo = torch.where(before >= 0, y_lo, y_hi)  # nothing before: the next observed value
    y_hi = torch.where(after < H, y_hi, y_lo)  # nothing after: the last observed value
    w = torch.where((before >= 0) & (after < H) & (after > before),
                    (steps - before).to(y.dtype) / (after - before).clamp_min(1).to(y.dtype),
                    torch.zeros((), dtype=y.dtype, device=y.device))
    return torch.where(observed, y, y_lo + w * (y_hi - y_lo))


def _check_skip_batch(pv: Tensor, po: Tensor, fv: Tensor, fo: Tensor, C: int, H: int) -> None:
    """fit_skip's windows: [B, T, C] / [B, H, C] pairs, finite where observed (as forward and loss demand)."""
    for name, v, o, steps in (("past", pv, po, None), ("future", fv, fo, H)):
        if v.dim() != 3 or v.shape[-1] != C or (steps is not None and v.shape[1] != steps) or o.shape != v.shape:
            want = f"[B, {'T' if steps is None else steps}, {C}]"
            raise ValueError(f"fit_skip: {name}_values {tuple(v.shape)} / {name}_observed {tuple(o.shape)}; "
                             f"expected {want} each")
        bad = (o != 0) & ~torch.isfinite(v)
        if bool(bad.any()):
            raise ValueError(f"fit_skip: {name}_values: {int(bad.sum())} non-finite value(s) at observed positions, "
                             f"first at {tuple(int(i) for i in bad.nonzero()[0])}")


class SkipFitError(ValueError):
    """``fit_skip`` found no training window to fit the linear skip on (too few observed steps)."""


class ForecasterOutput(NamedTuple):
    """What ``ARMTForecaster.forward`` returns."""

    params: Params  # head parameters in normalised units, leading dims [B, H, C]
    loc: Tensor  # [B, 1, C], data = loc + scale * normalised
    scale: Tensor  # [B, 1, C]
    state: MemoryState  # memory after the last segment of the context


class _FiniteScaler:
    """A gluonts scaler whose statistics stay finite for every finite float32 input. The gluonts scalers sum in the
    data's dtype, so a float32 context of values near float32's maximum (mean x steps past 3.4e38) gets loc or
    scale inf. Those (row, channel) entries, and only those, are computed again in float64 (their statistics fit
    float32 again: a mean or spread of finite values is at most their magnitude); every other entry is the gluonts
    scaler's own result, bit for bit, and each entry depends on its own row only."""

    def __init__(self, inner: Scaler):
        self.inner = inner

    def __call__(self, data: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, loc, scale = self.inner(data, weights)
        bad = ~(torch.isfinite(loc) & torch.isfinite(scale))
        if data.dtype != torch.float64 and bool(bad.any()):
            x64, loc64, scale64 = self.inner(data.double(), weights.double())
            x = torch.where(bad, x64.to(x.dtype), x)  # [B, 1, C] broadcasts over the steps
            loc = torch.where(bad, loc64.to(loc.dtype), loc)
            scale = torch.where(bad, scale64.to(scale.dtype), scale)
        return x, loc, scale


def _scaler(kind: str) -> _FiniteScaler:
    # dim=1 is time in [B, T, C]; keepdim gives [B, 1, C], which broadcasts against [B, H, C].
    if kind == "std":
        return _FiniteScaler(StdScaler(dim=1, keepdim=True))
    if kind == "mean":
        # default_scale=1.0: a series with no observed value gets scale 1, not a batch statistic (a forecast must
        # not depend on which other series share its batch).
        return _FiniteScaler(MeanScaler(dim=1, keepdim=True, default_scale=1.0))
    return _FiniteScaler(NOPScaler(dim=1, keepdim=True))


class ARMTForecaster(nn.Module):
    """Embedder + ARMT backbone + head: ``forward(past_values, past_observed, state) -> ForecasterOutput``.

    Any context length T >= 1 works: shorter than one segment, or many segments long (the memory carries it).
    """

    def __init__(self, config: ForecasterConfig):
        super().__init__()
        self.config = config
        self.scaler = _scaler(config.scaling)
        self.embed = PatchEmbedder(config.patch)
        self.backbone = ARMT(config.armt)
        self.head = build_head(config.head)
        # config.impute == "gaussian": filled from the other channels of the same step before anything else
        self.imputer = (GaussianChannelImputer(config.patch.n_channels, min_r2=config.impute_min_r2)
                        if config.impute == "gaussian" else None)
        # config.linear_skip = n > 0: the least-squares linear forecast from the last n normalised steps, shared by
        # the channels (``fit_skip``); buffers, not parameters: the optimiser never moves them, the files keep them
        if config.linear_skip:
            self.register_buffer("skip_weight", torch.zeros(config.head.horizon, config.linear_skip))
            self.register_buffer("skip_bias", torch.zeros(config.head.horizon))

    def fit_imputer(self, values: Tensor, observed: Tensor) -> "ARMTForecaster":
        """Fit the channel imputer (``config.impute == "gaussian"``) on training data [..., C]; returns self."""
        if self.imputer is None:
            raise ValueError("fit_imputer: this model has no imputer (ForecasterConfig.impute is 'none')")
        self.imputer.fit(values, observed)
        return self

    def num_segments(self, context_length: int) -> int:
        """Segments the backbone runs for a context of ``context_length`` steps."""
        return -(-self.embed.num_tokens(context_length) // self.config.armt.segment_length)

    def impute(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """The imputer's fill of [..., C] values / observed (unchanged without one). A step-wise map, so a stream
        that imputes each pushed block sees the same inputs as a forward over the whole series."""
        if self.imputer is None:
            return values, observed
        if values.shape[-1:] != (self.config.patch.n_channels,) or observed.shape != values.shape:
            raise ValueError(f"past_values / past_observed: expected [..., C={self.config.patch.n_channels}] of one "
                             f"shape, got {tuple(values.shape)} and {tuple(observed.shape)}")
        return self.imputer(values, observed)

    def normalise(self, past_values: Tensor, past_observed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """values [B, T, C] -> (normalised [B, T, C], keep [B, T, C] bool, loc [B, 1, C], scale [B, 1, C]).

        Statistics use observed entries only; unobserved entries (NaN allowed) become 0 before scaling, since the
        gluonts scalers multiply by the mask and NaN * 0 is NaN.
        """
        C = self.config.patch.n_channels
        if past_values.dim() != 3 or past_values.shape[-1] != C:
            raise ValueError(f"past_values: expected [B, T, C] with C = {C}, got shape {tuple(past_values.shape)}")
        if past_observed.shape != past_values.shape:
            raise ValueError(f"past_observed: expected shape {tuple(past_values.shape)}, "
                             f"got {tuple(past_observed.shape)}")
        keep = past_observed != 0
        bad = keep & ~torch.isfinite(past_values)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"past_values: {int(bad.sum())} non-finite value(s) at observed positions, "
                             f"first at {first}")
        dtype = self.embed.proj.weight.dtype
        x = torch.where(keep, past_values.to(dtype), torch.zeros((), dtype=dtype, device=past_values.device))
        x, loc, scale = self.scaler(x, keep.to(dtype))
        return x, keep, loc, scale

    def forward(
        self,
        past_values: Tensor,
        past_observed: Tensor,
        state: MemoryState | None = None,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
    ) -> ForecasterOutput:
        """Read a context and return the head's parameters.

        Args:
            past_values: [B, T, C]; finite where observed, anything (NaN included) where not.
            past_observed: [B, T, C] bool or 0/1 float, nonzero = observed.
            state: memory left by an earlier call over the preceding history, or None (empty memory).
            loc, scale: [B, 1, C] scaler statistics to use instead of this context's own (a caller that feeds
                one series in several calls keeps them fixed, so the memory sees one set of units); both or neither.

        Returns:
            ForecasterOutput(params, loc, scale, state).
        """
        C = self.config.patch.n_channels
        # "independent": the last time patch's tokens are the last C (index n * C + c); "mixing": the last token.
        # Only those reach the head, so the backbone's last layer computes only them (and the memory rows).
        independent = self.config.patch.mode == "independent"
        y, loc, scale, state = self.encode(past_values, past_observed, state, loc, scale,
                                           outputs=C if independent else 1)
        rep = y[:, -C:] if independent else y[:, -1]  # [B, C, D] or [B, D]
        params = self.head(rep)
        if self.config.linear_skip:  # the least-squares linear forecast, moved into the head's location
            params = self.head.shift(params, self.skip_forecast(*self.skip_inputs(past_values, past_observed),
                                                                loc, scale))
        return ForecasterOutput(params, loc, scale, state)

    def skip_inputs(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """The linear skip's raw inputs: the last n = ``config.linear_skip`` steps of a context [B, T, C] (imputed as
        the backbone's inputs are), left-padded with unobserved zeros where T < n -> (values, observed bool), each
        [B, n, C]."""
        n = self.config.linear_skip
        values, observed = self.impute(values[:, -n:], observed[:, -n:])  # step-wise: the last n steps suffice
        keep = observed != 0
        v = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
        if v.shape[1] < n:
            pad = n - v.shape[1]
            v = torch.cat([v.new_zeros(v.shape[0], pad, v.shape[2]), v], dim=1)
            keep = torch.cat([keep.new_zeros(keep.shape[0], pad, keep.shape[2]), keep], dim=1)
        return v, keep

    def skip_window(self, values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The skip's inputs (``skip_inputs``) normalised by their own statistics (this model's scaler over the n
        steps) -> (x [B, n, C], 0 where unobserved; loc_w, scale_w [B, 1, C]). The skip is a forecaster of its
        own over the last n steps: a stream, whose scaler has seen the whole history, gets the same skip forecast
        from the same n steps as a batch forecast does."""
        dtype = self.skip_weight.dtype
        zero = torch.zeros((), dtype=dtype, device=values.device)
        x, loc_w, scale_w = self.scaler(torch.where(keep, values.to(dtype), zero), keep.to(dtype))
        return torch.where(keep, x, zero), loc_w, scale_w

    def skip_forecast(self, values: Tensor, keep: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """The linear skip's forecast [B, H, C] from its inputs (``skip_inputs``), in the normalised units of
        ``loc`` / ``scale`` [B, 1, C] (the head's): the shared weights map the window's ``skip_window`` values to
        its future in the window's own units, which are then re-expressed in the head's (the same units when the
        skip reads the whole context, n = T). 0 for a channel with no observed value among the n steps."""
        x, loc_w, scale_w = self.skip_window(values, keep)
        y = torch.einsum("bnc,hn->bhc", x, self.skip_weight) + self.skip_bias[:, None]
        # a channel with no observed value in the window gets no skip forecast (the network's alone)
        return torch.where(keep.any(1, keepdim=True), (loc_w - loc) / scale + (scale_w / scale) * y,
                           torch.zeros((), dtype=y.dtype, device=y.device))

    @torch.no_grad()
    def fit_skip(self, batches: Iterable[tuple[Tensor, Tensor, Tensor, Tensor]], refits: int = 2) -> int:
        """Set the linear skip (``config.linear_skip``) to the ridge least-squares map from its inputs to the
        normalised future, (future - loc_w) / scale_w with the statistics of its own n steps (``skip_window``).

        ``batches`` yields (past_values [B, T, C], past_observed, future_values [B, H, C], future_observed) training
        windows (one context length T); it is read once per pass, so it must start over when iterated again (a
        list, or ``armt_ts.gluonts.estimator.SkipWindows``; not a generator). A (window, channel) row counts with
        two or more observed steps among the n and one or more observed future steps, all within
        ``SKIP_FIT_BOUND`` window standard deviations. Without gaps in the rows' futures this is one exact
        least-squares fit. Gappy telemetry may have few or no fully observed futures, so a gap is filled, first by
        linear interpolation between the row's observed future steps (``_fill_gaps``), then in each of ``refits``
        more passes by the previous fit's forecast (least squares with missing targets by expectation-maximisation;
        the interpolation is the start, so two refits come close to its limit). Normal equations in float64; the
        ridge is ``config.linear_skip_ridge`` times the mean diagonal of the Gram matrix of the inputs (not on the
        bias). Returns the number of rows fitted; raises if there are none."""
        n, H = self.config.linear_skip, self.config.head.horizon
        if not n:
            raise ValueError("fit_skip: this model has no linear skip (ForecasterConfig.linear_skip is 0)")
        if iter(batches) is batches:
            raise TypeError("fit_skip: batches must be re-iterable (a list, or SkipWindows), not an iterator")
        dev = self.skip_weight.device
        sol = None
        for fill in range(refits + 1):
            gram = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=dev)
            cross = torch.zeros(n + 1, H, dtype=torch.float64, device=dev)
            rows, gaps = 0, 0
            for past_values, past_observed, future_values, future_observed in batches:
                _check_skip_batch(past_values, past_observed, future_values, future_observed,
                                  self.config.patch.n_channels, H)
                v, keep = self.skip_inputs(past_values.to(dev), past_observed.to(dev))
                x, loc, scale = self.skip_window(v, keep)
                fo = (future_observed.to(dev) != 0).transpose(1, 2)  # [B, C, H]
                y = ((future_values.to(dev, x.dtype) - loc) / scale).transpose(1, 2)  # [B, C, H], window units
                y = torch.where(fo, y, torch.zeros((), dtype=y.dtype, device=dev))
                # a near-constant window's tiny scale would make one row outweigh the rest
                use = (keep.sum(1) >= 2) & fo.any(2) & (y.abs().amax(2) <= SKIP_FIT_BOUND)  # [B, C]
                x1 = torch.cat([x.transpose(1, 2)[use].double(),
                                torch.ones(int(use.sum()), 1, dtype=torch.float64, device=dev)], 1)  # [rows, n + 1]
                seen = fo[use]
                target = y[use].double()
                gaps += int((~seen).sum())
                target = _fill_gaps(target, seen) if sol is None else torch.where(seen, target, x1 @ sol)
                gram += x1.T @ x1
                cross += x1.T @ target
                rows += len(x1)
            if rows == 0:
                raise SkipFitError(f"fit_skip: no training window has an observed future step (of {H}) and two "
                                 f"observed steps among its last {n}; the linear skip has nothing to fit (train "
                                 f"without it, ForecasterConfig.linear_skip=0)")
            reg = torch.zeros(n + 1, dtype=torch.float64, device=dev)
            diag = gram.diagonal()[:-1]
            reg[:-1] = self.config.linear_skip_ridge * diag.mean() + (diag == 0).to(reg.dtype)  # never seen: 0
            sol = torch.linalg.solve(gram + torch.diag(reg), cross)  # [n + 1, H]
            if not gaps:
                break
        self.skip_weight.copy_(sol[:-1].T.to(self.skip_weight.dtype))
        self.skip_bias.copy_(sol[-1].to(self.skip_bias.dtype))
        return rows

    def encode(
        self,
        past_values: Tensor,
        past_observed: Tensor,
        state: MemoryState | None = None,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        outputs: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, MemoryState]:
        """``forward`` up to the head: -> (backbone outputs y [B, tokens, D], loc, scale, state). Arguments as in
        ``forward``; y holds every context token's output ("independent": token n * C + c is patch n, channel c), or
        with ``outputs`` = k the last k of every segment (``ARMT.forward``)."""
        if (loc is None) != (scale is None):
            raise ValueError("loc and scale: pass both or neither")
        past_values, past_observed = self.impute(past_values, past_observed)
        x, keep, own_loc, own_scale = self.normalise(past_values, past_observed)
        if loc is not None:
            want = (past_values.shape[0], 1, self.config.patch.n_channels)
            for name, t in (("loc", loc), ("scale", scale)):
                if tuple(t.shape) != want:
                    raise ValueError(f"{name}: expected [B, 1, C] = {list(want)}, got {tuple(t.shape)}")
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{name}: non-finite values")
            if not bool((scale > 0).all()):
                raise ValueError(f"scale: must be > 0, got a minimum of {float(scale.min())}")
            # the scalers are affine, x = (v - own_loc) / own_scale: re-express in the given units
            x = (x * own_scale + own_loc - loc) / scale
        else:
            loc, scale = own_loc, own_scale
        tokens, _ = self.embed(x, keep)  # [B, N*C, D] or [B, N, D]
        y, state = self.backbone(tokens, state, outputs=outputs)
        return y, loc, scale, state

    def loss(
        self,
        past_values: Tensor,
        past_observed: Tensor,
        future_values: Tensor,
        future_observed: Tensor,
        state: MemoryState | None = None,
    ) -> Tensor:
        """Scalar mean loss over the observed future entries, in normalised units (see the module docstring).

        future_values / future_observed: [B, H, C]; future values may be NaN where not observed.
        """
        params, loc, scale, _ = self(past_values, past_observed, state)
        target = (future_values.to(loc.dtype) - loc) / scale  # NaN stays NaN; the head masks it out
        # clipped (the module docstring): +-inf (a float32 difference of two values near 3.4e38) too
        target = target.clamp(-LOSS_TARGET_BOUND, LOSS_TARGET_BOUND)
        return self.head.loss(params, target, future_observed)

    @torch.no_grad()
    def point(self, past_values: Tensor, past_observed: Tensor, state: MemoryState | None = None) -> Tensor:
        """[B, H, C] point forecast in data units (the mean, or the median of a quantile head)."""
        params, loc, scale, _ = self(past_values, past_observed, state)
        return self.head.point(params, loc, scale)

    @torch.no_grad()
    def quantiles(
        self,
        past_values: Tensor,
        past_observed: Tensor,
        levels: Sequence[float],
        state: MemoryState | None = None,
    ) -> Tensor:
        """[B, H, C, Q] forecast quantiles at ``levels`` in data units."""
        params, loc, scale, _ = self(past_values, past_observed, state)
        return self.head.quantiles(params, levels, loc, scale)

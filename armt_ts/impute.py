"""Cross-channel imputation from the channels observed at the same step (a fitted Gaussian).

Telemetry channels are often strongly related (on ETTh1, HUFL ~ MUFL + LUFL: each of five of the seven channels is
>= 0.9 R^2 predictable from the others at the same step). When some channels are missing at a step, the best
linear guess of them from the observed ones is the conditional mean of a Gaussian fitted to the training data:

    x_h | x_o  ~  mu_h + Sigma_ho Sigma_oo^{-1} (x_o - mu_o)

``GaussianChannelImputer`` fills an unobserved entry of a step with that conditional mean, and marks it observed,
when the observed channels of the step explain at least ``min_r2`` of its variance (R^2 = 1 - Var(x_h | x_o) /
Var(x_h) under the fitted Gaussian; default 0.5). Other entries are left as they are (unobserved), so the model's
own mask handling still covers them: a channel the others barely predict (ETTh1's oil temperature: R^2 0.40 on
the train split, and its relation to the loads drifts, so its fill on the test split is worse than the train
mean) is not guessed. Observed entries are returned bit-identical. ``fit`` estimates mu and
Sigma from pairwise-complete observations (each covariance entry from the steps where both channels are
observed), with a small ridge on the diagonal so that Sigma_oo is always invertible.

For each distinct observation pattern o (a 0/1 vector over channels) the fill is one matrix: with
M_o = Sigma * (o o^T) + diag(1 - o), alpha = M_o^{-1} (x - mu) * o, and E[x | x_o] = mu + Sigma alpha, which is
x_o itself on the observed channels and the formula above on the others. Patterns are deduplicated per call, so
the cost is one C x C solve per distinct pattern plus one C x C product per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GaussianChannelImputer"]

_MIN_DOF = 10  # residual degrees of freedom a fit needs before its R^2 decides a fill
_CHUNK = 1 << 16  # rows per gathered [rows, C, C] product (bounds the temporary at 64k * C^2 floats)


class GaussianChannelImputer(nn.Module):
    """Fills unobserved channels from the observed channels of the same step (see the module docstring).

    Args:
        n_channels: C.
        ridge: added to Sigma's diagonal, relative to its mean diagonal entry (default 1e-3).
        min_r2: fill an entry only where the step's observed channels explain at least this fraction of its
            variance (default 0.5; 0 fills every entry of a step with something observed).

    Buffers ``mean`` [C], ``cov`` [C, C] (float64) and ``fitted`` (0/1) are saved with the model's state dict.
    """

    def __init__(self, n_channels: int, ridge: float = 1e-3, min_r2: float = 0.5):
        super().__init__()
        if isinstance(n_channels, bool) or not isinstance(n_channels, int) or n_channels < 1:
            raise ValueError(f"n_channels: expected an int >= 1, got {n_channels!r}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0.0 <= ridge < float("inf"):
            raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
        if isinstance(min_r2, bool) or not isinstance(min_r2, (int, float)) or not 0.0 <= min_r2 <= 1.0:
            raise ValueError(f"min_r2: expected a fraction in [0, 1], got {min_r2!r}")
        self.n_channels = n_channels
        self.ridge = float(ridge)
        self.min_r2 = float(min_r2)
        self.register_buffer("mean", torch.zeros(n_channels, dtype=torch.float64))
        self.register_buffer("cov", torch.eye(n_channels, dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.int64))
        # steps behind the fit (the fewest any pair of channels was observed at); None after loading a state dict,
        # which then fills as fitted. With n steps, R^2 from p observed channels is judged adjusted for the fit's
        # degrees of freedom, 1 - (1 - R^2) (n - 1) / (n - p - 1): a fit on about as many steps as channels explains
        # noise, and its R^2 near 1 would fill every entry with it; under _MIN_DOF residual degrees of freedom
        # (n - p - 1) nothing is filled.
        self.n_fit: int | None = None

    def extra_repr(self) -> str:
        return (f"n_channels={self.n_channels}, ridge={self.ridge:g}, min_r2={self.min_r2:g}, "
                f"fitted={bool(self.fitted)}")

    @torch.no_grad()
    def fit(self, values: Tensor, observed: Tensor) -> "GaussianChannelImputer":
        """Estimate mu and Sigma from ``values`` [..., C] (any leading dims: steps, or series x steps) where
        ``observed`` [..., C] is nonzero. Every channel needs >= 2 observed steps and every pair >= 2 joint ones."""
        x, keep = self._flat(values, observed, "fit")
        if x.shape[0] == 0:
            raise ValueError("fit: no steps given")
        k = keep.to(torch.float64)
        xz = torch.where(keep, x.to(torch.float64), torch.zeros((), dtype=torch.float64, device=x.device))
        n = k.sum(0)
        lacking = [c for c in range(self.n_channels) if n[c] < 2]
        if lacking:
            raise ValueError(f"fit: channel(s) {lacking} have fewer than 2 observed steps")
        mean = xz.sum(0) / n
        d = (xz - mean) * k  # centred, 0 where unobserved
        pair_n = k.T @ k  # [C, C] steps where both are observed
        if (pair_n < 2).any():
            i, j = (int(v) for v in (pair_n < 2).nonzero()[0])
            raise ValueError(f"fit: channels {i} and {j} are observed together at fewer than 2 steps")
        cov = (d.T @ d) / (pair_n - 1)
        cov = 0.5 * (cov + cov.T)
        scale = float(cov.diagonal().mean())
        if not scale > 0.0:
            raise ValueError("fit: every channel is constant over its observed steps; there is no variance to "
                             "impute from")
        cov = cov + torch.eye(self.n_channels, dtype=torch.float64, device=cov.device) * (
            self.ridge * scale + (cov.diagonal() == 0).to(torch.float64) * scale)  # a constant channel: its own
        self.n_fit = int(pair_n.min())
        self.mean.copy_(mean.to(self.mean.device))
        self.cov.copy_(cov.to(self.cov.device))
        self.fitted.fill_(1)
        return self

    def forward(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """values, observed [..., C] -> (filled values, filled observed), same shapes and dtypes.

        An unobserved entry whose step's observed channels explain >= ``min_r2`` of its variance gets the
        conditional mean and becomes observed; other entries are unchanged (observed ones bit-identical; NaN may
        stay where nothing is filled).
        """
        if not bool(self.fitted):
            raise RuntimeError("GaussianChannelImputer: call fit(values, observed) on training data first")
        x, keep = self._flat(values, observed, "forward")
        rows = keep.any(-1) & ~keep.all(-1)  # steps with something to fill and something to fill it from
        if not bool(rows.any()):
            return values, observed
        xs, ks = x[rows].to(torch.float64), keep[rows]
        patterns, which = torch.unique(ks, dim=0, return_inverse=True)  # [U, C], [R]
        o = patterns.to(torch.float64)
        cov = self.cov.to(x.device)
        M = cov * (o[:, :, None] * o[:, None, :]) + torch.diag_embed(1.0 - o)  # [U, C, C]
        K = cov @ torch.linalg.inv(M)  # [U, C, C]: E[x | x_o] = mu + K ((x - mu) * o)
        # explained variance Sigma_ho Sigma_oo^-1 Sigma_oh = diag(K (Sigma * o)), as a fraction of Sigma_hh
        r2 = torch.diagonal(K @ (cov * o[:, :, None]), dim1=-2, dim2=-1) / cov.diagonal()
        if self.n_fit is not None:  # adjusted for the fit's degrees of freedom (see __init__)
            p = o.sum(1, keepdim=True)
            dof = self.n_fit - p - 1
            r2 = torch.where(dof >= _MIN_DOF, 1.0 - (1.0 - r2) * (self.n_fit - 1) / dof.clamp_min(1.0),
                             torch.full_like(r2, -torch.inf))
        fills = (o == 0) & (r2 >= self.min_r2)  # [U, C]
        centred = torch.where(ks, xs - self.mean.to(x.device), torch.zeros((), dtype=torch.float64, device=x.device))
        filled = torch.empty_like(centred)
        for a in range(0, centred.shape[0], _CHUNK):
            b = a + _CHUNK
            filled[a:b] = torch.einsum("rij,rj->ri", K[which[a:b]], centred[a:b])
        filled = filled + self.mean.to(x.device)
        fill_here = fills[which]  # [R, C]
        out_x = x.clone()
        out_x[rows] = torch.where(fill_here, filled.to(x.dtype), x[rows])
        out_keep = keep.clone()
        out_keep[rows] = ks | fill_here
        shape = values.shape
        new_observed = out_keep.reshape(shape)
        if observed.dtype != torch.bool:
            new_observed = new_observed.to(observed.dtype)
        return out_x.reshape(shape), new_observed

    def _flat(self, values: Tensor, observed: Tensor, where: str) -> tuple[Tensor, Tensor]:
        if not isinstance(values, Tensor) or not isinstance(observed, Tensor):
            raise TypeError(f"{where}: values and observed must be tensors")
        if values.shape != observed.shape:
            raise ValueError(f"{where}: values {tuple(values.shape)} and observed {tuple(observed.shape)} differ")
        if values.dim() < 1 or values.shape[-1] != self.n_channels:
            raise ValueError(f"{where}: expected [..., C={self.n_channels}], got {tuple(values.shape)}")
        if not values.is_floating_point():
            raise TypeError(f"{where}: values must be floating point, got {values.dtype}")
        keep = observed.reshape(-1, self.n_channels) != 0
        x = values.reshape(-1, self.n_channels)
        bad = keep & ~torch.isfinite(x)
        if bool(bad.any()):
            r, c = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"{where}: non-finite value at an observed entry (flattened step {r}, channel {c})")
        return x, keep

"""ARMTModel: the ARMT forecaster with gluonts' input names and output conventions (as gluonts.torch's
``patch_tst/module.py`` / ``d_linear/module.py``).

Inputs: ``past_target`` and ``past_observed_values``, [B, T] for a univariate target (C = 1) or [B, T, C]
(gluonts' multivariate layout after ``InstanceSplitter(output_NTC=True)``). Output of ``forward``, by head kind,
matching the predictor's forecast generator (``estimator.forecast_generator``):

- distribution heads ("student_t", "normal", "laplace"): ``(distr_args, loc, scale)`` for gluonts'
  ``DistributionForecastGenerator`` (the predictor uses its subclass ``ChannelDistributionForecastGenerator``);
  distr_args [B, H] (or [B, H, C]) in normalised units, loc / scale [B, 1] (or [B, 1, C]);
- "quantile": ``((quantiles,), loc, scale)`` for gluonts' ``QuantileForecastGenerator``, quantiles [B, H, Q]
  (or [B, H, C, Q]) in normalised units at the head's learned levels;
- "point": the point forecast [B, H] (or [B, H, C]) in data units, for ``PointForecastGenerator``.
"""

from __future__ import annotations

import torch
from gluonts.model import Input, InputSpec
from torch import Tensor, nn

from ..config import ForecasterConfig
from ..forecaster import ARMTForecaster

DISTRIBUTION_KINDS = ("student_t", "normal", "laplace")


class ARMTModel(nn.Module):
    """gluonts-facing wrapper of ``ARMTForecaster`` for a fixed context length (the InstanceSplitter's)."""

    def __init__(self, config: ForecasterConfig, context_length: int):
        super().__init__()
        if not (isinstance(context_length, int) and context_length > 0):
            raise ValueError(f"context_length: must be a positive int, got {context_length!r}")
        self.config = config
        self.context_length = context_length
        self.prediction_length = config.head.horizon
        self.target_dim = config.patch.n_channels
        self.forecaster = ARMTForecaster(config)

    def describe_inputs(self, batch_size: int = 1) -> InputSpec:
        """The inputs of ``forward``: ``describe_inputs(b).zeros()`` is a valid call."""
        shape = (batch_size, self.context_length) + (() if self.target_dim == 1 else (self.target_dim,))
        return InputSpec(
            {
                "past_target": Input(shape=shape, dtype=torch.float),
                "past_observed_values": Input(shape=shape, dtype=torch.float),
            },
            torch.zeros,
        )

    def _ntc(self, name: str, x: Tensor) -> Tensor:
        """[B, T] (C = 1) or [B, T, C] -> [B, T, C]."""
        if self.target_dim == 1 and x.dim() == 2:
            return x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[-1] != self.target_dim:
            want = "[B, T]" if self.target_dim == 1 else f"[B, T, {self.target_dim}]"
            raise ValueError(f"{name}: expected {want}, got shape {tuple(x.shape)}")
        return x

    def _squeeze(self, x: Tensor, channel_dim: int = 2) -> Tensor:
        """Drop the channel dimension of a univariate output, as gluonts' univariate generators expect."""
        return x.squeeze(channel_dim) if self.target_dim == 1 else x

    def forward(self, past_target: Tensor, past_observed_values: Tensor):
        """Forecast from a context; the return value depends on the head kind (see the module docstring)."""
        f = self.forecaster
        params, loc, scale, _ = f(self._ntc("past_target", past_target),
                                  self._ntc("past_observed_values", past_observed_values))
        kind = self.config.head.kind
        if kind == "point":
            return self._squeeze(f.head.point(params, loc, scale))  # [B, H(, C)]
        loc, scale = self._squeeze(loc), self._squeeze(scale)  # [B, 1(, C)]
        if kind == "quantile":
            return (self._squeeze(params[0]),), loc, scale  # ([B, H(, C), Q],), ...
        return tuple(self._squeeze(p) for p in params), loc, scale

    def loss(
        self,
        past_target: Tensor,
        past_observed_values: Tensor,
        future_target: Tensor,
        future_observed_values: Tensor,
    ) -> Tensor:
        """Scalar mean loss over observed future entries, in normalised units (``ARMTForecaster.loss``)."""
        return self.forecaster.loss(
            self._ntc("past_target", past_target),
            self._ntc("past_observed_values", past_observed_values),
            self._ntc("future_target", future_target),
            self._ntc("future_observed_values", future_observed_values),
        )

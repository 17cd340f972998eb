"""Sequence peers for the state-tracking comparison (DESIGN.md section 8, questions 3 and 4).

Every peer maps tokens [B, S, D] to [B, S, D] with a carried state, ``y, state = model(x, state)``
(state=None: empty), so a stream can be fed in chunks of any size with the same result:

- ``MambaPeer``: Mamba-1 from the pure-PyTorch ``mambapy`` package (parallel scan when a sequence starts
  from an empty state, its ``step`` recurrence otherwise). State per layer: h [B, ED, N] and the conv inputs.
- ``GatedDeltaNet``: the gated delta rule (Yang, Kautz, Hatamizadeh, ICLR 2025), written here from its
  published update  S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T,  o_t = S_t q_t.
  State per layer: S [B, H, d_v, d_k].
- ``SlidingWindowTransformer``: causal attention over the last W tokens (itself included) with a learned
  per-offset bias (so it runs at any length); state per layer: the previous W-1 layer inputs [B, W-1, D].
- ``KNNRetrieval``: the retrieval baseline: every past token's embedding is stored (up to ``capacity``);
  a token retrieves its top-k neighbours by dot product (minus a learned recency penalty) and reads their
  values. State: the stored embeddings [B, n <= capacity, D].
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _positive(cls: str, **sizes: Any) -> None:
    """Each size an int >= 1 (not a bool); the error names the class and the argument."""
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cls}.{name}: must be an int >= 1, got {v!r}")


def _mlp(d_model: int, d_ff: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))


class MambaPeer(nn.Module):
    """Stacked Mamba-1 blocks (mambapy) + a final norm. State: a list of per-layer (h, conv inputs)."""

    def __init__(self, d_model: int, n_layers: int = 2, d_state: int = 16, expand: int = 2, d_conv: int = 4):
        super().__init__()
        _positive("MambaPeer", d_model=d_model, n_layers=n_layers, d_state=d_state, expand=expand, d_conv=d_conv)
        try:
            from mambapy.mamba import Mamba, MambaConfig
        except ImportError as e:  # the explicit-backend rule: no silent fallback to another model
            raise ImportError("MambaPeer needs the 'mambapy' package (pip install 'mambapy>=1.2')") from e
        self.cfg = MambaConfig(d_model=d_model, n_layers=n_layers, d_state=d_state, expand_factor=expand, d_conv=d_conv)
        self.mamba = Mamba(self.cfg)
        self.ln_f = nn.LayerNorm(d_model)

    def state_numel(self) -> int:
        """Floats carried per stream between tokens."""
        c = self.cfg
        return c.n_layers * c.d_inner * (c.d_state + c.d_conv - 1)

    def empty_state(self, batch: int, device=None) -> list[tuple[Tensor, Tensor]]:
        c = self.cfg
        return [(torch.zeros(batch, c.d_inner, c.d_state, device=device),
                 torch.zeros(batch, c.d_inner, c.d_conv - 1, device=device)) for _ in range(c.n_layers)]

    def forward(self, x: Tensor, state: list | None = None, return_state: bool = False) -> tuple[Tensor, list | None]:
        """x [B, S, D] -> (y [B, S, D], state after the last token). Training from an empty state (gradients on,
        ``state`` None, S > 1) runs mambapy's parallel scan, which gives no final state: the second value is then
        None unless ``return_state=True`` (the token-by-token recurrence, the same outputs, slower), which chunked
        training (a state carried into the next chunk) needs."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"x: expected [B, S, {self.cfg.d_model}], got {tuple(x.shape)}")
        if x.shape[1] == 0:
            return x, (self.empty_state(x.shape[0], x.device) if state is None else state)
        if state is None and x.shape[1] > 1 and torch.is_grad_enabled() and not return_state:
            return self.ln_f(self.mamba(x)), None
        caches = self.empty_state(x.shape[0], x.device) if state is None else list(state)
        ys = []
        for t in range(x.shape[1]):
            y, caches = self.mamba.step(x[:, t], caches)
            ys.append(y)
        return self.ln_f(torch.stack(ys, 1)), caches


class GatedDeltaNetLayer(nn.Module):
    """One gated delta-rule mixer, per head:

        q, k = l2norm(W_q x), l2norm(W_k x);  v = W_v x
        a_t = exp(-exp(A_log) * softplus(W_a x + dt_bias))   (decay in (0, 1))
        b_t = sigmoid(W_b x)                                  (writing strength)
        S_t = a_t S_{t-1} (I - b_t k k^T) + b_t v k^T  =  a_t S_{t-1} + b_t (v - a_t S_{t-1} k) k^T
        o_t = S_t q / sqrt(d_k),  out = W_o (rmsnorm(o_t) * silu(W_g x))
    """

    def __init__(self, d_model: int, n_heads: int, d_key: int, d_value: int):
        super().__init__()
        self.h, self.dk, self.dv = n_heads, d_key, d_value
        self.W_q = nn.Linear(d_model, n_heads * d_key, bias=False)
        self.W_k = nn.Linear(d_model, n_heads * d_key, bias=False)
        self.W_v = nn.Linear(d_model, n_heads * d_value, bias=False)
        self.W_a = nn.Linear(d_model, n_heads)
        self.W_b = nn.Linear(d_model, n_heads)
        self.W_g = nn.Linear(d_model, n_heads * d_value, bias=False)
        self.W_o = nn.Linear(n_heads * d_value, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(torch.log(torch.expm1(torch.empty(n_heads).uniform_(1e-3, 1e-1))))

    def forward(self, x: Tensor, S: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, T, D], S [B, H, dv, dk] -> (out [B, T, D], S)."""
        B, T, _ = x.shape
        H, dk, dv = self.h, self.dk, self.dv
        q = F.normalize(self.W_q(x).view(B, T, H, dk), dim=-1) / math.sqrt(dk)
        k = F.normalize(self.W_k(x).view(B, T, H, dk), dim=-1)
        v = self.W_v(x).view(B, T, H, dv)
        a = torch.exp(-torch.exp(self.A_log) * F.softplus(self.W_a(x) + self.dt_bias))  # [B, T, H]
        b = torch.sigmoid(self.W_b(x))
        if S is None:
            S = x.new_zeros(B, H, dv, dk)
        outs = []
        for t in range(T):
            kt, at, bt = k[:, t], a[:, t, :, None, None], b[:, t, :, None]
            Sa = at * S
            err = v[:, t] - torch.einsum("bhvk,bhk->bhv", Sa, kt)  # v - a S k
            S = Sa + torch.einsum("bhv,bhk->bhvk", bt * err, kt)
            outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
        o = torch.stack(outs, 1)  # [B, T, H, dv]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
        o = o.reshape(B, T, H * dv) * F.silu(self.W_g(x))
        return self.W_o(o), S


class GatedDeltaNet(nn.Module):
    """Pre-norm stack: x + GDN(ln(x)), x + MLP(x). State: tuple of per-layer S [B, H, d_v, d_k]."""

    def __init__(self, d_model: int, n_layers: int = 2, n_heads: int = 2, d_key: int = 16, d_value: int = 16,
                 d_ff: int = 64):
        super().__init__()
        _positive("GatedDeltaNet", d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_key=d_key, d_value=d_value,
                  d_ff=d_ff)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.mixers = nn.ModuleList(GatedDeltaNetLayer(d_model, n_heads, d_key, d_value) for _ in range(n_layers))
        self.mlps = nn.ModuleList(_mlp(d_model, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.shape = (n_layers, n_heads, d_value, d_key)

    def state_numel(self) -> int:
        L, H, dv, dk = self.shape
        return L * H * dv * dk

    def forward(self, x: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        if x.dim() != 3 or x.shape[-1] != self.ln_f.normalized_shape[0]:
            raise ValueError(f"x: expected [B, S, {self.ln_f.normalized_shape[0]}], got {tuple(x.shape)}")
        if x.shape[1] == 0:  # nothing to read: the state is unchanged, as the other sequence peers do
            return x, state
        new = []
        for l, (norm, mixer, mlp) in enumerate(zip(self.norms, self.mixers, self.mlps)):
            out, S = mixer(norm(x), None if state is None else state[l])
            x = x + out
            x = x + mlp(x)
            new.append(S)
        return self.ln_f(x), tuple(new)


class _WindowAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int):
        super().__init__()
        self.h, self.window = n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.offset_bias = nn.Parameter(torch.zeros(n_heads, window))  # bias of attending `offset` tokens back

    def forward(self, x: Tensor, cache: Tensor) -> Tensor:
        """x [B, T, D] queries; cache [B, c, D] earlier inputs (c <= W-1) -> [B, T, D]."""
        B, T, D = x.shape
        c = cache.shape[1]
        ctx = torch.cat([cache, x], 1)  # [B, c+T, D]
        q = self.qkv(x)[..., :D]
        k, v = self.qkv(ctx)[..., D:].split(D, -1)
        hs = D // self.h
        q = q.view(B, T, self.h, hs).transpose(1, 2)
        k = k.view(B, c + T, self.h, hs).transpose(1, 2)
        v = v.view(B, c + T, self.h, hs).transpose(1, 2)
        offset = (torch.arange(T, device=x.device)[:, None] + c) - torch.arange(c + T, device=x.device)[None]
        allowed = (offset >= 0) & (offset < self.window)
        bias = self.offset_bias[:, offset.clamp(0, self.window - 1)]  # [h, T, c+T]
        bias = bias.masked_fill(~allowed, float("-inf"))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(att.transpose(1, 2).reshape(B, T, D))


class SlidingWindowTransformer(nn.Module):
    """Pre-norm transformer whose attention sees the last ``window`` tokens. State: per-layer caches
    of the previous window-1 normalised layer inputs, tuple of [B, <= W-1, D]."""

    def __init__(self, d_model: int, n_layers: int = 2, n_heads: int = 2, d_ff: int = 64, window: int = 16):
        super().__init__()
        _positive("SlidingWindowTransformer", d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff,
                  window=window)
        if d_model % n_heads:
            raise ValueError(f"SlidingWindowTransformer.n_heads: d_model={d_model} is not divisible by {n_heads}")
        self.window = window
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.attn = nn.ModuleList(_WindowAttention(d_model, n_heads, window) for _ in range(n_layers))
        self.mlps = nn.ModuleList(_mlp(d_model, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.n_layers, self.d_model = n_layers, d_model

    def state_numel(self) -> int:
        return self.n_layers * (self.window - 1) * self.d_model

    def forward(self, x: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        B = x.shape[0]
        new = []
        for l, (norm, attn, mlp) in enumerate(zip(self.norms, self.attn, self.mlps)):
            cache = x.new_zeros(B, 0, x.shape[-1]) if state is None else state[l]
            h = norm(x)
            x = x + attn(h, cache)
            x = x + mlp(x)
            new.append(torch.cat([cache, h], 1)[:, max(0, cache.shape[1] + h.shape[1] - (self.window - 1)):])
        return self.ln_f(x), tuple(new)


class KNNRetrieval(nn.Module):
    """Retrieval over stored past token embeddings (kNN), then an MLP. State: stored embeddings [B, n, D].

    score(t, j) = (W_q x_t) . (W_k x_j) / sqrt(D) - softplus(lam) * log1p(t - j)  over stored j <= t;
    the top-k scores are softmax-weighted and read W_v x_j; out = x_t + MLP([x_t; read]).
    """

    def __init__(self, d_model: int, k: int = 4, capacity: int = 4096, d_ff: int = 64):
        super().__init__()
        _positive("KNNRetrieval", d_model=d_model, k=k, capacity=capacity, d_ff=d_ff)  # capacity 0 kept everything
        self.k, self.capacity = k, capacity
        self.W_q = nn.Linear(d_model, d_model, bias=False)
        self.W_k = nn.Linear(d_model, d_model, bias=False)
        self.W_v = nn.Linear(d_model, d_model, bias=False)
        self.lam = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.ln_f = nn.LayerNorm(d_model)
        self.d_model = d_model

    def state_numel(self, stored: int | None = None) -> int:
        return (self.capacity if stored is None else stored) * self.d_model

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        mem = x.new_zeros(B, 0, D) if state is None else state
        c = mem.shape[1]
        ctx = torch.cat([mem, x], 1)
        scores = self.W_q(x) @ self.W_k(ctx).transpose(1, 2) / math.sqrt(D)  # [B, T, c+T]
        age = (torch.arange(T, device=x.device)[:, None] + c) - torch.arange(c + T, device=x.device)[None]
        scores = scores - F.softplus(self.lam) * torch.log1p(age.clamp(min=0).float())
        scores = scores.masked_fill(age < 0, float("-inf"))
        k = min(self.k, c + T)
        top, idx = scores.topk(k, dim=-1)  # [B, T, k]; at least the token itself is always allowed
        w = torch.softmax(top, -1)
        vals = self.W_v(ctx)  # [B, c+T, D]
        picked = torch.gather(vals.unsqueeze(1).expand(B, T, c + T, D), 2, idx.unsqueeze(-1).expand(B, T, k, D))
        read = (w.unsqueeze(-1) * picked).sum(2)
        y = x + self.mlp(torch.cat([x, read], -1))
        return self.ln_f(y), ctx[:, -self.capacity :]

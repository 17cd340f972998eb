"""Peers for every comparison, sharing ARMT's interface ``y, state = model(x, state)`` on [B, S, D] tokens.

- RMT (Bulatov et al. 2022): M memory tokens are READ at the start of each segment and WRITTEN at its end;
  the write positions' final-layer outputs become the next segment's read tokens. Same ``Block`` as ARMT.
- GRUPeer: a stacked GRU whose hidden size is chosen to match a parameter budget.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backbone import Block
from .config import ARMTConfig


class RMT(nn.Module):
    """Recurrent Memory Transformer. State: the memory tokens [B, M, D] (None -> the learned initial memory)."""

    def __init__(self, config: ARMTConfig):
        super().__init__()
        self.config = c = config
        M, T, D = c.num_mem_tokens, c.segment_length, c.d_model
        self.mem_init = nn.Parameter(torch.randn(M, D) * 0.02)
        # positions: read memory 0..M-1, content M..M+T-1, write memory M+T..M+T+M-1
        self.pos = nn.Parameter(torch.randn(M + T + M, D) * 0.02) if c.positional else None
        self.blocks = nn.ModuleList(Block(D, c.n_heads, c.d_ff, c.dropout) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(D)

    def segment_step(self, x: Tensor, mem: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, t, D], mem [B, M, D] -> (y [B, t, D], new mem [B, M, D])."""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.d_model:
            raise ValueError(f"x: expected [B, t, {c.d_model}], got {tuple(x.shape)}")
        B, t, _ = x.shape
        M, T = c.num_mem_tokens, c.segment_length
        if not 1 <= t <= T:
            raise ValueError(f"segment has {t} tokens; expected 1 to segment_length={T}")
        if mem is not None and tuple(mem.shape) != (B, M, c.d_model):
            raise ValueError(f"mem: expected [B, M, D] = [{B}, {M}, {c.d_model}], got {tuple(mem.shape)}")
        if mem is None:
            mem = self.mem_init.unsqueeze(0).expand(B, -1, -1)
        # the write tokens start as a copy of the read memory (RMT's decoder variant); causal attention
        # lets them see the whole segment, and their final outputs are the new memory
        h = torch.cat([mem, x, mem], dim=1)
        if self.pos is not None:
            pos = torch.cat([self.pos[: M + t], self.pos[M + T :]])
            h = h + pos
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h[:, M : M + t]), h[:, M + t :]

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.d_model or x.shape[1] == 0 or not x.is_floating_point():
            raise ValueError(f"x: expected float token embeddings [B, S >= 1, {c.d_model}], got {x.dtype} "
                             f"{tuple(x.shape)}")
        ys = []
        for s, start in enumerate(range(0, x.shape[1], c.segment_length)):
            if c.tbptt_segments is not None and s > 0 and s % c.tbptt_segments == 0:
                state = state.detach()
            y, state = self.segment_step(x[:, start : start + c.segment_length], state)
            ys.append(y)
        return torch.cat(ys, dim=1), state


def gru_params(d_model: int, hidden: int, n_layers: int) -> int:
    """Parameters of ``GRUPeer(d_model, hidden, n_layers)``."""
    first = 3 * (d_model * hidden + hidden * hidden + 2 * hidden)
    rest = 3 * (2 * hidden * hidden + 2 * hidden) * (n_layers - 1)
    return first + rest + hidden * d_model + d_model + 2 * d_model


def gru_hidden_for_params(d_model: int, n_layers: int, target_params: int) -> int:
    """The hidden size whose GRUPeer has the parameter count closest to ``target_params``."""
    best, best_gap = 1, math.inf
    for hidden in range(1, 4096):
        gap = abs(gru_params(d_model, hidden, n_layers) - target_params)
        if gap < best_gap:
            best, best_gap = hidden, gap
        elif gru_params(d_model, hidden, n_layers) > target_params:
            break
    return best


class GRUPeer(nn.Module):
    """Stacked GRU on [B, S, D] tokens. State: the GRU hidden state [n_layers, B, hidden]."""

    def __init__(self, d_model: int, hidden: int, n_layers: int = 2):
        super().__init__()
        self.gru = nn.GRU(d_model, hidden, n_layers, batch_first=True)
        self.proj = nn.Linear(hidden, d_model)
        self.ln_f = nn.LayerNorm(d_model)

    @classmethod
    def matched(cls, config: ARMTConfig, target_params: int, n_layers: int | None = None) -> "GRUPeer":
        """A GRU with (nearly) ``target_params`` parameters on ``config.d_model``-wide tokens."""
        n_layers = config.n_layers if n_layers is None else n_layers
        if n_layers < 1 or target_params < 1:
            raise ValueError(f"GRUPeer.matched: n_layers and target_params must be >= 1, got {n_layers}, "
                             f"{target_params}")
        return cls(config.d_model, gru_hidden_for_params(config.d_model, n_layers, target_params), n_layers)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.gru.input_size:  # nn.GRU reads [S, D] as one unbatched sequence
            raise ValueError(f"x: expected [B, S, {self.gru.input_size}], got {tuple(x.shape)}")
        out, h = self.gru(x, state)
        return self.ln_f(self.proj(out)), h

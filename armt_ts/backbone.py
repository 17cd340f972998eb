"""ARMT: a small pre-norm transformer whose every layer carries an associative memory across segments.

A sequence of tokens [B, S, D] is cut into segments of T = config.segment_length tokens (the last may be
shorter). Each segment gets the same M learned memory tokens appended at its END; attention is causal,
so content tokens never see their own segment's memory tokens. Per layer l and segment s:

    h <- h + read_l(h; A_l, z_l)          (skipped on the first segment: the memory is empty)
    h <- block_l(h)
    A_l, z_l <- write_l(h[:, -M:]; A_l, z_l)

Only (A_l, z_l) cross segment boundaries, and layer l reads and writes only its own memory, so layer l
of segment s depends on layer l of segment s-1 and layer l-1 of segment s (what diagonal batching uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import schedule
from .config import ARMTConfig
from .memory import AssociativeMemory
from .state import MemoryState


def check_outputs(outputs: int, t: int) -> int:
    """``outputs`` of a segment with t content rows: an int in [0, t]."""
    if isinstance(outputs, bool) or not isinstance(outputs, int) or not 0 <= outputs <= t:
        raise ValueError(f"outputs: expected an int in [0, {t}] (the segment's content rows), got {outputs!r}")
    return outputs


@dataclass(frozen=True)
class PendingWrite:
    """A segment's memory writes, computed but not applied (``ARMT.segment_step(defer=True)``): per layer the
    delta rule's terms (``ops.delta_terms``). ``apply_(state)`` adds them to the state's (A, z) in place."""

    terms: tuple[tuple[Tensor, Tensor, Tensor], ...]
    ops: Any

    def apply_(self, state: MemoryState) -> None:
        if state.num_layers != len(self.terms):
            raise ValueError(f"PendingWrite: {len(self.terms)} layers of writes for a state of {state.num_layers}")
        for A, z, t in zip(state.A, state.z, self.terms):
            self.ops.apply_delta_(A, z, t)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def causal_attention(q: Tensor, k: Tensor, v: Tensor, q_from: int = 0, dropout_p: float = 0.0) -> Tensor:
    """Causal attention of query rows q_from.. over every key: q, k, v [B, nh, N, hs] -> [B, nh, N - q_from, hs].

    Under CPU autocast it runs in fp32 (the casts included): this CPU's flash attention in bf16 took 2.3x the fp32
    time forward and 3.7x forward + backward at this model's sizes (256 x 4 heads x 12 rows; 32 x 4 x 56), where
    the bf16 matmuls of the linear layers run 4x faster than fp32 ones.
    """
    if q.device.type == "cpu" and _cpu_autocast():
        with torch.autocast(device_type="cpu", enabled=False):
            return causal_attention(q.float(), k.float(), v.float(), q_from, dropout_p)
    if q_from:
        # row q_from + i attends keys 0 .. q_from + i (is_causal would align the mask at the top left)
        N = k.shape[-2]
        mask = torch.ones(N - q_from, N, dtype=torch.bool, device=q.device).tril(diagonal=q_from)
        return F.scaled_dot_product_attention(q[:, :, q_from:], k, v, attn_mask=mask, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)); causal self-attention."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = dropout

    def forward(self, x: Tensor, q_from: int = 0) -> Tensor:
        """x [B, N, D] -> [B, N - q_from, D]: the outputs of rows q_from.. only (keys and values still come from
        every row; q_from > 0 skips the work of a last layer whose earlier rows nobody reads)."""
        B, N, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        # (B, nh, N, hs)
        q, k, v = (t.view(B, N, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        att = causal_attention(q, k, v, q_from, drop)
        x = x[:, q_from:]
        x = x + F.dropout(self.proj(att.transpose(1, 2).reshape(B, N - q_from, D)), drop, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), drop, self.training)


class ARMT(nn.Module):
    """Associative Recurrent Memory Transformer backbone: ``y, state = model(x, state)``.

    x [B, S, D] token embeddings -> y [B, S, D] (final layer norm applied), any S >= 1.
    ``state=None`` starts from an empty memory (first-segment rules: no read, vbar = 0, gamma = 1).
    """

    def __init__(self, config: ARMTConfig):
        super().__init__()
        self.config = config
        c = config
        self.mem_tokens = nn.Parameter(torch.randn(c.num_mem_tokens, c.d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(c.segment_length + c.num_mem_tokens, c.d_model) * 0.02) if c.positional else None
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.d_ff, c.dropout) for _ in range(c.n_layers))
        self.memories = nn.ModuleList(AssociativeMemory(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)

    def _segment_input(self, x: Tensor, with_memory: bool = True) -> Tensor:
        """[B, t, D] content (t <= T) -> [B, t + M, D] with positions and memory tokens appended."""
        c = self.config
        B, t, _ = x.shape
        if self.pos is not None:
            x = x + self.pos[:t]
        if not with_memory:
            return x
        mem = self.mem_tokens
        if self.pos is not None:
            mem = mem + self.pos[c.segment_length :]
        return torch.cat([x, mem.unsqueeze(0).expand(B, -1, -1)], dim=1)

    def segment_step(self, x: Tensor, state: MemoryState | None, key_ids: Tensor | None = None,
                     write: bool = True,
                     outputs: int | None = None, defer: bool = False) -> tuple[Tensor, MemoryState | PendingWrite]:
        """One segment: x [B, t, D], t <= T -> (y [B, t, D], new state). Reads, then writes, every layer.

        key_ids [B]: the segment's entity id per row (needed by config.key_mode "identity" / "mixed").
        write=False: read only (a forecast from memory): y is the same, bit for bit (a layer's write only reaches
        the next segment), and the state comes back unchanged (None stays None) without computing any write.
        outputs=k (``check_outputs``): y is only the last k content rows [B, k, D]; the last layer computes its
        attention queries, MLP and the final norm only for those rows and the memory rows (a stream and the
        forecaster's head read one patch's outputs). The kept rows, the new state and their gradients equal the full
        step's to float rounding.
        defer=True (inference only): the state is not updated; the second value is a ``PendingWrite`` whose
        ``apply_(state)`` later updates ``state`` (or its zeros, on a first segment) in place to the new state, the
        values without ``defer`` bit for bit, with no second buffer and no copy of A (a streaming fleet's update).
        """
        c = self.config
        self._check_input(x, state)
        B, t, _ = x.shape
        if t > c.segment_length:
            raise ValueError(f"segment has {t} tokens, more than segment_length={c.segment_length}")
        q_from = 0 if outputs is None else t - check_outputs(outputs, t)
        if defer and (not write or torch.is_grad_enabled()):
            raise ValueError("segment_step defer: an inference shortcut (no autograd), not with write=False")
        given = state
        first = state is None
        if first:
            state = MemoryState.zeros(c, B, device=x.device)
        h = self._segment_input(x)
        A, z = list(state.A), list(state.z)
        terms = []
        for l, (block, memory) in enumerate(zip(self.blocks, self.memories)):
            if not first:
                h = memory.read(h, A[l], z[l], key_ids)
            h = block(h, q_from) if l == c.n_layers - 1 and q_from else block(h)
            mem_rows = h[:, -c.num_mem_tokens:]  # the memory tokens are the last M rows (M >= 1), pruned or not
            if defer:
                terms.append(memory.write(mem_rows, A[l], z[l], first, key_ids, defer=True))
            elif write:
                A[l], z[l] = memory.write(mem_rows, A[l], z[l], first, key_ids)
        y = self.ln_f(h[:, :t - q_from])
        if defer:
            return y, PendingWrite(tuple(terms), self.memories[0].ops)
        if not write:
            return y, given
        return y, MemoryState(tuple(A), tuple(z))

    def forward(self, x: Tensor, state: MemoryState | None = None, key_ids: Tensor | None = None,
                outputs: int | None = None) -> tuple[Tensor, MemoryState]:
        """x [B, S, D] -> (y [B, S, D], state after the last segment), segments in the order of config.schedule.

        key_ids [B, n_segments] (keyed memory only): the entity id of each segment of each row.
        outputs=k (see ``segment_step``): y [B, n_segments * k, D] holds the last k content rows of every segment;
        each segment (the last included) must have at least k content rows.

        With config.tbptt_segments = k the carried state is detached every k segments of this call
        (truncated backpropagation through time); the values are unchanged.
        """
        c = self.config
        self._check_input(x, state)
        n_seg = -(-x.shape[1] // c.segment_length)
        if key_ids is not None and tuple(key_ids.shape) != (x.shape[0], n_seg):
            raise ValueError(f"key_ids: expected [B, n_segments] = [{x.shape[0]}, {n_seg}] (one entity id per row "
                             f"and segment), got {tuple(key_ids.shape)}")
        # config.schedule: the diagonal-batched schedule (schedule.py) gives the same results, faster where
        # supported and the batch is small; "auto" decides per call, "diagonal" raises where it cannot run.
        if c.schedule == "diagonal" or (c.schedule == "auto" and schedule.prefer_diagonal(self, x, key_ids)):
            if key_ids is not None:
                raise ValueError("schedule='diagonal' does not run keyed memory (key_ids); use 'sequential'")
            return schedule.run_diagonal(self, x, state, outputs)
        return schedule.run_sequential(self, x, state, key_ids, outputs)

    def _check_input(self, x: Tensor, state: MemoryState | None) -> None:
        """x [B, S, D] with B, S >= 1 in the weights' float type (or under autocast), and a state of this model."""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.d_model:
            raise ValueError(f"expected x of shape [B, S, {c.d_model}], got {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x: an empty batch or sequence, shape {tuple(x.shape)}; expected B, S >= 1")
        weight = self.mem_tokens.dtype
        if not x.is_floating_point() or (x.dtype != weight and x.dtype == torch.float64):
            raise ValueError(f"x: dtype {x.dtype}, the model's weights are {weight}")
        if state is not None:
            state.check(c, x.shape[0])

    def forget(self, state: MemoryState, key_ids: Tensor) -> MemoryState:
        """Erase entity key_ids[b] from row b's memory in every layer (config.key_mode "identity")."""
        A, z = zip(*(m.forget(a, zz, key_ids) for m, a, zz in zip(self.memories, state.A, state.z)))
        return MemoryState(tuple(A), tuple(z))

    def forward_without_memory(self, x: Tensor) -> Tensor:
        """The same transformer run segment by segment with no memory tokens and no reads or writes.

        The no-memory peer, and the reference for "an untrained ARMT (W_v = 0) equals the plain model".
        """
        ys = []
        for start in range(0, x.shape[1], self.config.segment_length):
            h = self._segment_input(x[:, start : start + self.config.segment_length], with_memory=False)
            for block in self.blocks:
                h = block(h)
            ys.append(self.ln_f(h))
        return torch.cat(ys, dim=1)

"""Execution schedules of ARMT's segments x layers grid: sequential and diagonal-batched (exactly equal math).

Layer l of segment s depends on layer l of segment s-1 (through the memory A_l, z_l) and on layer l-1 of segment
s (through the hidden states), nothing else (DESIGN.md section 2). So all cells on an anti-diagonal d = s + l are
independent: diagonal batching (Sivtsov et al., arXiv 2506.05229) runs layer l of segment d - l for every active
l in ONE set of batched kernels, with the layers' weights stacked and bmm / baddbmm over the layer dimension:

    diagonal d:  (l=0, s=d) (l=1, s=d-1) ... (l=L-1, s=d-L+1)        S + L - 1 diagonals instead of S * L cells

The arithmetic per cell is the one of ``ARMT.segment_step`` (read -> block -> write); only the grouping of the
matrix products changes, so outputs agree with the sequential schedule to float32 rounding (tests/test_schedule.py:
outputs, final state and gradients within 1e-5, or within the sequential schedule's own sensitivity to a 1-ulp
change of its input where a configuration is that ill-conditioned; for other random weights float32 differences
reach ~6e-5, and ~3e-4 with beta_per_channel, while with the blocks in float64 the schedules agree to 1e-12 for
every option: the blocks' rounding, amplified, not a schedule error). It pays where a layer's kernels are small
enough that their fixed cost dominates (small batches, narrow models: CPU streaming and offline scoring of long
sequences); with large batches the per-diagonal stacking of the states costs more than it saves, and
``ARMT.forward``'s "auto" schedule keeps the sequential loop (``prefer_diagonal``), as it does while autograd
records (training).

Supported: the paper's content-keyed memory with every ARMTConfig option of this file's time (memory_heads,
phi_l2norm, beta_per_channel, tbptt_segments, ops_backend, positional, read_norm_cap), bf16 autocast (the memory
math stays fp32), gradients. Not supported (``diagonal_supported`` says why; "auto" then runs sequentially, "diagonal"
raises): keyed memory (key_mode != "content"), dropout while training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .memory import cap_read
from .state import MemoryState

if TYPE_CHECKING:
    from .backbone import ARMT

# ARMTConfig fields the diagonal schedule knows how to run, whatever their values. Any other field must keep its
# default (a field added later may change the memory's math, which this file does not know).
_KNOWN_FIELDS = frozenset({
    "d_model", "n_layers", "n_heads", "d_ff", "dropout", "segment_length", "num_mem_tokens", "d_mem", "nu", "eps",
    "memory_heads", "phi_l2norm", "beta_per_channel", "tbptt_segments", "ops_backend", "positional", "schedule",
    "read_norm_cap", "vbar_floor",
})
_CONTENT_ONLY = {"key_mode": "content"}

# "auto" picks the diagonal schedule when a layer's token rows per segment, B * (T + M), are at most this many.
# Measured (benchmarks/results/streaming.md, CPU, 1 thread, T + M = 12 rows): 1.6-1.9x at B = 1, 1.3-1.4x at B = 4,
# 1.0-1.1x at B = 16 and 0.94x at B = 16 with 512 segments, where the per-diagonal stacking of A and z costs as much
# as the batching saves.
AUTO_MAX_ROWS = 128


def diagonal_supported(model: "ARMT", key_ids: Tensor | None = None) -> str | None:
    """None when the diagonal schedule can run ``model`` exactly; otherwise the reason it cannot."""
    c = model.config
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if f.name in _CONTENT_ONLY:
            if value != _CONTENT_ONLY[f.name]:
                return f"{f.name}={value!r} (keyed memory runs on the sequential schedule)"
        elif f.name not in _KNOWN_FIELDS and f.default is not dataclasses.MISSING and value != f.default:
            return f"{f.name}={value!r} is not known to the diagonal schedule"
    if key_ids is not None:
        return "key_ids given (keyed memory runs on the sequential schedule)"
    if model.training and c.dropout > 0:
        return "dropout while training (its random masks would differ from the sequential schedule's)"
    return None


def prefer_diagonal(model: "ARMT", x: Tensor, key_ids: Tensor | None = None) -> bool:
    """The "auto" rule: diagonal for inference (no autograd recording: offline scoring and streaming of long
    sequences, what the schedule is for) when it is supported, there are >= 2 segments and >= 2 layers, and the batch
    is small enough for the batched kernels to win (``AUTO_MAX_ROWS``). Training keeps the sequential schedule, whose
    outputs are bit-identical to segment-by-segment calls; config.schedule = "diagonal" forces it anyway."""
    if torch.is_grad_enabled():
        return False
    c = model.config
    n_seg = -(-x.shape[1] // c.segment_length)
    if n_seg < 2 or c.n_layers < 2 or diagonal_supported(model, key_ids) is not None:
        return False
    return x.shape[0] * (c.segment_length + c.num_mem_tokens) <= AUTO_MAX_ROWS


def run_sequential(model: "ARMT", x: Tensor, state: MemoryState | None,
                   key_ids: Tensor | None = None, outputs: int | None = None) -> tuple[Tensor, MemoryState]:
    """The reference schedule: segment after segment, layer after layer (``ARMT.segment_step``).

    key_ids [B, n_segments] (keyed memory only): the entity id of each segment of each row.
    outputs: see ``ARMT.forward``.
    """
    c = model.config
    ys = []
    for s, start in enumerate(range(0, x.shape[1], c.segment_length)):
        if c.tbptt_segments is not None and s > 0 and s % c.tbptt_segments == 0:
            state = state.detach()
        y, state = model.segment_step(x[:, start:start + c.segment_length], state,
                                      None if key_ids is None else key_ids[:, s], outputs=outputs)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def _stacked(model: "ARMT") -> dict[str, Tensor]:
    """Every layer's weights stacked on a leading layer dimension, transposed for x @ W."""
    blocks, mems = model.blocks, model.memories
    st = lambda ts: torch.stack(list(ts))  # noqa: E731
    return {
        "ln1_w": st(b.ln1.weight for b in blocks), "ln1_b": st(b.ln1.bias for b in blocks),
        "qkv_w": st(b.qkv.weight.t() for b in blocks), "qkv_b": st(b.qkv.bias for b in blocks),
        "proj_w": st(b.proj.weight.t() for b in blocks), "proj_b": st(b.proj.bias for b in blocks),
        "ln2_w": st(b.ln2.weight for b in blocks), "ln2_b": st(b.ln2.bias for b in blocks),
        "fc1_w": st(b.mlp[0].weight.t() for b in blocks), "fc1_b": st(b.mlp[0].bias for b in blocks),
        "fc2_w": st(b.mlp[2].weight.t() for b in blocks), "fc2_b": st(b.mlp[2].bias for b in blocks),
        "q_w": st(m.W_q.weight.t() for m in mems),
        "kvb_w": st(torch.cat([m.W_k.weight, m.W_v.weight, m.W_beta.weight]).t() for m in mems),
        "kvb_b": st(torch.cat([torch.zeros(m.W_k.out_features + m.W_v.out_features, device=m.W_beta.bias.device,
                                           dtype=m.W_beta.bias.dtype), m.W_beta.bias]) for m in mems),
    }


def _linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x [n, R, In] @ w [n, In, Out] (+ b [n, Out]) per layer -> [n, R, Out]."""
    if b is None:
        return torch.bmm(x, w)
    return torch.baddbmm(b.unsqueeze(1), x, w)


def _layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x [n, R, D] with per-layer affine w, b [n, D]: one normalisation, then a batched affine."""
    return torch.addcmul(b.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), w.unsqueeze(1))


def _block(lin: Callable[[Tensor, str, int, int], Tensor], W: dict[str, Tensor], hr: Tensor, a: int, b: int, B: int,
           N: int, nh: int, q_from: int) -> Tensor:
    """``Block.forward`` of layers a..b-1 with stacked weights: hr [n, B*N, D] -> [n, B*(N - q_from), D]."""
    n, _, D = hr.shape
    qkv = lin(_layer_norm(hr, W["ln1_w"][a:b], W["ln1_b"][a:b]), "qkv", a, b)
    qh, kh, vh = (u.reshape(n * B, N, nh, D // nh).transpose(1, 2) for u in qkv.split(D, dim=-1))
    from .backbone import causal_attention  # (backbone imports this module)

    att = causal_attention(qh, kh, vh, q_from)  # [n*B, nh, N - q_from, hs]; only rows q_from.. (Block.forward)
    if q_from:
        hr = hr.reshape(n, B, N, D)[:, :, q_from:].reshape(n, B * (N - q_from), D)
    hr = hr + lin(att.transpose(1, 2).reshape(n, B * (N - q_from), D), "proj", a, b)
    ff = F.gelu(lin(_layer_norm(hr, W["ln2_w"][a:b], W["ln2_b"][a:b]), "fc1", a, b))
    return hr + lin(ff, "fc2", a, b)


def run_diagonal(model: "ARMT", x: Tensor, state: MemoryState | None,
                 outputs: int | None = None) -> tuple[Tensor, MemoryState]:
    """Diagonal-batched schedule; same inputs, outputs and state as ``run_sequential`` (to float32 rounding).

    outputs: see ``ARMT.forward``."""
    reason = diagonal_supported(model)
    if reason is not None:
        raise ValueError(f"the diagonal schedule cannot run this model: {reason}")
    c = model.config
    B, S_total, D = x.shape
    T, M, L, nh = c.segment_length, c.num_mem_tokens, c.n_layers, c.n_heads
    H, r, Dv = c.memory_heads, c.d_mem, c.d_head
    n_seg = -(-S_total // T)
    lengths = [min(T, S_total - s * T) for s in range(n_seg)]
    if outputs is not None:
        from .backbone import check_outputs

        check_outputs(outputs, min(lengths))
    first_call = state is None
    if first_call:
        state = MemoryState.zeros(c, B, device=x.device)
    A, z = list(state.A), list(state.z)
    W = _stacked(model)
    mem0 = model.memories[0]  # phi and the ops depend on the config only, shared by every layer
    ops = mem0.ops
    def lin(u: Tensor, name: str, a: int, b: int) -> Tensor:
        """u [n, B*N, In] through layers a..b-1's linear ``name`` (one bmm) -> [n, B*N, Out]."""
        bias = W.get(f"{name}_b")
        return _linear(u, W[f"{name}_w"][a:b], None if bias is None else bias[a:b])

    carry: dict[int, Tensor] = {}  # layer -> its output on the segment it ran at the previous diagonal
    ys: list[Tensor | None] = [None] * n_seg

    for d in range(n_seg + L - 1):
        lo, hi = max(0, d - n_seg + 1), min(d, L - 1)
        # cells (l, s = d - l); the shorter last segment cannot share kernels with full ones: its own group
        groups: list[list[int]] = []
        for l in range(lo, hi + 1):
            if groups and lengths[d - groups[-1][0]] == lengths[d - l]:
                groups[-1].append(l)
            else:
                groups.append([l])
        new_carry: dict[int, Tensor] = {}
        for ls in groups:
            a, b_ = ls[0], ls[-1] + 1
            n = len(ls)
            t = lengths[d - a]
            N = t + M
            h = torch.stack([model._segment_input(x[:, (d - l) * T:(d - l) * T + t]) if l == 0 else carry[l - 1]
                             for l in ls])  # [n, B, N, D]
            for l in ls:  # truncated BPTT: the state entering segment s is detached when s % k == 0
                s = d - l
                if c.tbptt_segments is not None and s > 0 and s % c.tbptt_segments == 0:
                    A[l], z[l] = A[l].detach(), z[l].detach()
            As = torch.stack(A[a:b_]).flatten(0, 1)  # [n*B, H, K, Dv]
            zs = torch.stack(z[a:b_]).flatten(0, 1)  # [n*B, H, K]
            hr = h.reshape(n, B * N, D)

            # read (on the first segment of a fresh stream A = z = 0, so the read adds exactly 0, as the skip does)
            q = lin(hr, "q", a, b_)  # [n, B*N, H*r]
            with torch.autocast(device_type=x.device.type, enabled=False):
                phi_q = mem0._phi(q.float().reshape(n * B, N, H * r))
                out = cap_read(ops.associative_read(phi_q, As, zs, c.eps), c.read_norm_cap)  # [n*B, N, H, Dv]
            hr = hr + out.reshape(n, B * N, D).to(hr.dtype)

            # transformer block (Block.forward with per-layer weights). With ``outputs`` a last-layer cell that runs
            # alone computes only the rows kept (Block.forward's q_from); one batched with other layers computes
            # every row (splitting it off would cost the batching the schedule is for) and its rows are cut below
            q_last = t - outputs if outputs is not None and ls == [L - 1] else 0
            h = _block(lin, W, hr, a, b_, B, N, nh, q_last).reshape(n, B, N - q_last, D)

            # write from the memory positions (the last M rows), all layers of the group at once
            # one bmm for W_k | W_v | W_beta of every layer of the group
            kvb = _linear(h[:, :, -M:].reshape(n, B * M, D), W["kvb_w"][a:b_], W["kvb_b"][a:b_])
            k, v, bt = kvb.split([H * r, D, kvb.shape[-1] - H * r - D], dim=-1)
            with torch.autocast(device_type=x.device.type, enabled=False):
                k = mem0._phi(k.float().reshape(n * B, M, H * r))
                v = v.float().reshape(n * B, M, H, Dv)
                beta = torch.sigmoid(bt.float()).reshape(n * B, M, H, Dv if c.beta_per_channel else 1)
                fresh = [i for i, l in enumerate(ls) if first_call and d - l == 0]  # first-segment rules
                if not fresh:
                    nA, nz = ops.delta_write(k, v, beta, As, zs, False, c.eps, c.vbar_floor)
                else:  # at most one cell per diagonal is a stream's first segment: the last of the group
                    i = fresh[0]
                    rows = slice(0, i * B)
                    parts = []
                    if i:
                        parts.append(ops.delta_write(k[rows], v[rows], beta[rows], As[rows], zs[rows], False, c.eps,
                                                     c.vbar_floor))
                    f = slice(i * B, (i + 1) * B)
                    parts.append(ops.delta_write(k[f], v[f], beta[f], As[f], zs[f], True, c.eps, c.vbar_floor))
                    nA, nz = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            nA, nz = nA.view(n, B, *nA.shape[1:]), nz.view(n, B, *nz.shape[1:])
            for i, l in enumerate(ls):
                A[l], z[l] = nA[i], nz[i]
                if l == L - 1:  # the last ``keep`` of the cell's t - q_last content rows
                    keep = t if outputs is None else outputs
                    ys[d - l] = model.ln_f(h[i, :, t - q_last - keep:t - q_last])
                else:
                    new_carry[l] = h[i]
        carry = new_carry
    return torch.cat(ys, dim=1), MemoryState(tuple(A), tuple(z))

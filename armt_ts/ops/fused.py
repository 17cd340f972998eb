"""Batched versions of ``ops/naive.py``: same signatures, same layouts, a handful of einsums each.

tests/test_ops.py checks outputs, final state and gradients (including with respect to the initial
state) against the naive reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

# torch.compiler.is_compiling (torch >= 2.3; the package allows 2.2, which has no compiler to ask)
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def dpfp(x: Tensor, nu: int = 3, l2norm: bool = False) -> Tensor:
    """DPFP-nu from shifted slices of one padded copy of u; equal (bit for bit) to ``naive.dpfp``.

    With s = j mod 2r and P = min(nu, 2r): roll(u, j)[i] = u[(i - s) mod 2r] = up[i - s + P] for up = [u[2r - P:], u],
    so block j is u times the slice up[P - s : P - s + 2r]: nu products of views, no gather (an index_select along
    the last dimension was 5x slower). up is built from relu(x) and relu(-x) in one ``cat``, and without autograd
    the products go straight into their blocks of the output (no ``cat``): the same values, 1.5x / 1.2x faster for
    a fleet chunk's queries / keys (256 x 12 / 4 rows), 5 us slower for one entity's 12 rows (16 -> 21 us).
    Under torch.compile the products are concatenated (dynamo does not trace ``out=`` into a view; inductor fuses
    them anyway).
    """
    r = x.shape[-1]
    R = 2 * r
    P = min(nu, R)
    neg = torch.relu(-x)
    if P <= r:  # up = [u[2r - P:], u] = [relu(-x)[r - P:], relu(x), relu(-x)]
        up = torch.cat([neg[..., r - P:], torch.relu(x), neg], dim=-1)
    else:  # u[2r - P:] reaches into relu(x)
        u = torch.cat([torch.relu(x), neg], dim=-1)
        up = torch.cat([u[..., R - P:], u], dim=-1)
    u = up[..., P:]
    blocks = [up[..., P - j % R: P - j % R + R] for j in range(1, nu + 1)]
    if (torch.is_grad_enabled() and x.requires_grad) or _is_compiling():  # torch.compile refuses ``out=`` views
        feat = torch.cat([u * b for b in blocks], dim=-1)
    else:
        feat = x.new_empty(*x.shape[:-1], nu * R)
        for j, b in enumerate(blocks):
            torch.mul(u, b, out=feat[..., j * R:(j + 1) * R])
    if l2norm:
        feat = feat / (feat.norm(dim=-1, keepdim=True) + 1e-6)
    return feat


def _heads_first(x: Tensor) -> Tensor:
    """[B, N, H, X] -> [B*H, N, X] (a view when H == 1)."""
    B, N, H, X = x.shape
    return x.transpose(1, 2).reshape(B * H, N, X)


def _dot_z(x: Tensor, z: Tensor) -> Tensor:
    """x [BH, N, K] . z [BH, 1, K] -> [BH, N, 1]. A bmm with one output column ran at a fifth of this product and
    sum's speed (a fleet chunk's 256 x 12 queries: 211 against 43 us on this CPU)."""
    return (x * z).sum(-1, keepdim=True)


def _z_terms(kT: Tensor, g: Tensor) -> Tensor:
    """sum_m kT[:, :, m] g[:, m]: kT [BH, K, M], g [BH, M, 1] -> [BH, K, 1] (the bmm kT @ g, 3x faster)."""
    return (kT * g.transpose(1, 2)).sum(-1, keepdim=True)


def associative_read(q: Tensor, A: Tensor, z: Tensor, eps: float = 1e-5) -> Tensor:
    """q [B, N, H, K], A [B, H, K, Dv], z [B, H, K] -> [B, N, H, Dv]."""
    B, N, H, K = q.shape
    qh = _heads_first(q)  # [BH, N, K]
    num = torch.bmm(qh, A.reshape(B * H, K, -1))  # [BH, N, Dv]
    den = _dot_z(qh, z.reshape(B * H, 1, K)) + eps  # [BH, N, 1]
    return (num / den).view(B, H, N, -1).transpose(1, 2)


def delta_terms(
    k: Tensor, v: Tensor, beta: Tensor, A: Tensor, z: Tensor, first: bool, eps: float = 1e-5,
    vbar_floor: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The delta-rule write of ``naive.delta_write`` as its low-rank terms: (kT [B*H, K, M], u [B*H, M, Dv],
    g [B*H, M, 1]) with new A = A + kT @ u and new z = z + kT @ g (``apply_delta_``). Reads (A, z), changes nothing."""
    B, M, H, K = k.shape
    kh = _heads_first(k)  # [BH, M, K]
    delta = _heads_first(v)  # [BH, M, Dv]
    if first:
        gamma = torch.ones(B * H, M, 1, dtype=k.dtype, device=k.device)
    else:
        Ah = A.reshape(B * H, K, -1)  # [BH, K, Dv]
        zk = _dot_z(kh, z.reshape(B * H, 1, K)) + eps  # [BH, M, 1]
        kk = (kh * kh).sum(-1, keepdim=True) + eps
        den = zk if vbar_floor is None else torch.maximum(zk, vbar_floor * kk)  # ARMTConfig.vbar_floor
        delta = delta - torch.bmm(kh, Ah) / den  # v - vbar
        gamma = torch.clamp(1 - zk / kk, 0.0, 1.0).detach()
    return kh.transpose(1, 2), _heads_first(beta) * delta, gamma


def apply_delta_(A: Tensor, z: Tensor, terms: tuple[Tensor, Tensor, Tensor]) -> None:
    """A += kT @ u and z += kT @ g in place (no autograd): ``delta_write``'s new state, bit for bit, without a
    second buffer or a copy of A. A [B, H, K, Dv] and z [B, H, K] must be contiguous."""
    kT, u, g = terms
    B, H, K = z.shape
    if torch.is_grad_enabled() and any(t.requires_grad for t in (A, z, kT, u, g)):
        raise ValueError("apply_delta_: an in-place update carries no gradient; call it under torch.no_grad()")
    if not (A.is_contiguous() and z.is_contiguous()):
        raise ValueError("apply_delta_: A and z must be contiguous (views of whole batch rows are)")
    Ah, zh = A.view(B * H, K, -1), z.view(B * H, K, 1)
    # ``out=`` the input itself: the same in-place kernel as ``baddbmm_`` (no copy), which torch's FlopCounterMode,
    # unlike for ``baddbmm_``, counts
    torch.baddbmm(Ah, kT, u, out=Ah)
    zh.add_(_z_terms(kT, g))


def delta_write(
    k: Tensor, v: Tensor, beta: Tensor, A: Tensor, z: Tensor, first: bool, eps: float = 1e-5,
    vbar_floor: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Batched delta-rule write; see ``naive.delta_write`` for the equations."""
    B, M, H, K = k.shape
    kT, u, g = delta_terms(k, v, beta, A, z, first, eps, vbar_floor)
    # A + sum_i k_i (beta_i * delta_i)^T in one kernel; z + sum_i gamma_i k_i
    Ah, zh = A.reshape(B * H, K, -1), z.reshape(B * H, K, 1)
    return torch.baddbmm(Ah, kT, u).view(A.shape), (zh + _z_terms(kT, g)).view(z.shape)

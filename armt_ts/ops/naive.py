"""The specification of ARMT's memory operations, written for clarity, in fp32 (DESIGN.md section 2).

Every faster path (``ops/fused.py``, the backbone's schedules) is tested against these functions:
outputs, final state and gradients. Loops run over batch rows, heads and tokens on purpose, so each
line reads like the paper's equations.

Shapes (one layer):
    h        [B, N, H, r]   projected rows (W_q h or W_k m), split into H memory heads
    feat     [B, N, H, K]   phi(.) of the above, K = 2 * nu * r
    A        [B, H, K, Dv]  association matrix, Dv = D / H value channels per head
    z        [B, H, K]      normaliser
    v        [B, M, H, Dv]  values written by the M memory tokens
    beta     [B, M, H, 1] or [B, M, H, Dv]  write strength (scalar per token, or per value channel)
"""

from __future__ import annotations

import torch
from torch import Tensor


def dpfp(x: Tensor, nu: int = 3, l2norm: bool = False) -> Tensor:
    """Deterministic parameter-free projection, DPFP-nu (Schlag et al. 2021), as ARMT uses it.

    u = [relu(x); relu(-x)] (2r); block_j = u * roll(u, j) for j = 1..nu; phi = concat(blocks) (2*nu*r).
    With ``l2norm`` the features are divided by their L2 norm (a post-paper option).
    """
    u = torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)
    blocks = [u * torch.roll(u, shifts=j, dims=-1) for j in range(1, nu + 1)]
    feat = torch.cat(blocks, dim=-1)
    if l2norm:
        feat = feat / (feat.norm(dim=-1, keepdim=True) + 1e-6)
    return feat


def associative_read(q: Tensor, A: Tensor, z: Tensor, eps: float = 1e-5) -> Tensor:
    """Read every row from the memory: out = (q^T A) / (q^T z + eps).

    q [B, N, H, K], A [B, H, K, Dv], z [B, H, K] -> [B, N, H, Dv]. No gate, no norm, no scaling.
    """
    B, N, H, _ = q.shape
    rows = []
    for b in range(B):
        per_row = []
        for n in range(N):
            per_head = []
            for h in range(H):
                qv = q[b, n, h]
                per_head.append((qv @ A[b, h]) / (qv @ z[b, h] + eps))
            per_row.append(torch.stack(per_head))
        rows.append(torch.stack(per_row))
    return torch.stack(rows)


def delta_write(
    k: Tensor, v: Tensor, beta: Tensor, A: Tensor, z: Tensor, first: bool, eps: float = 1e-5,
    vbar_floor: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Delta-rule write of M memory tokens, all against the pre-update state (A, z).

    k [B, M, H, K] (already phi'd), v [B, M, H, Dv], beta [B, M, H, 1|Dv] (already sigmoid'ed).
        vbar_i  = (k_i^T A) / (z^T k_i + eps)                          (0 on the first segment)
        gamma_i = clip(1 - (z^T k_i + eps) / (|k_i|^2 + eps), 0, 1)    (1 on the first segment), detached
        A <- A + sum_i beta_i k_i (v_i - vbar_i)^T ;  z <- z + sum_i gamma_i k_i
    gamma ~ 0 when k_i is already stored, so rewriting a key does not grow z (paper App. F.1); it is
    detached, as in the official code, so it acts as a data-dependent constant.
    vbar_floor = f (``ARMTConfig.vbar_floor``, not in the paper): vbar_i's denominator is
    max(z^T k_i + eps, f (|k_i|^2 + eps)); gamma is unchanged.
    Returns the new (A, z); the inputs are not modified (``delta_terms`` / ``apply_delta_``: the same write in place).
    """
    B, M, H, _ = k.shape
    new_A, new_z = [], []
    for b in range(B):
        A_b, z_b = [], []
        for h in range(H):
            dA = torch.zeros_like(A[b, h])
            dz = torch.zeros_like(z[b, h])
            for i in range(M):
                ki = k[b, i, h]
                if first:
                    vbar = torch.zeros_like(v[b, i, h])
                    gamma = torch.ones((), dtype=k.dtype, device=k.device)
                else:
                    zk = z[b, h] @ ki + eps
                    vbar = (ki @ A[b, h]) / _floored(zk, ki, eps, vbar_floor)
                    gamma = torch.clamp(1 - zk / (ki @ ki + eps), 0.0, 1.0).detach()
                dA = dA + torch.outer(ki, beta[b, i, h] * (v[b, i, h] - vbar))
                dz = dz + gamma * ki
            A_b.append(A[b, h] + dA)
            z_b.append(z[b, h] + dz)
        new_A.append(torch.stack(A_b))
        new_z.append(torch.stack(z_b))
    return torch.stack(new_A), torch.stack(new_z)


def _floored(zk: Tensor, ki: Tensor, eps: float, vbar_floor: float | None) -> Tensor:
    return zk if vbar_floor is None else torch.maximum(zk, vbar_floor * (ki @ ki + eps))


def delta_terms(
    k: Tensor, v: Tensor, beta: Tensor, A: Tensor, z: Tensor, first: bool, eps: float = 1e-5,
    vbar_floor: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``delta_write`` as its terms (kT [B*H, K, M], u [B*H, M, Dv], g [B*H, M, 1]): new A = A + kT @ u, new
    z = z + kT @ g, row by row from the equations above (u_i = beta_i (v_i - vbar_i), g_i = gamma_i)."""
    B, M, H, K = k.shape
    u = torch.zeros(B, H, M, v.shape[-1], dtype=v.dtype, device=v.device)
    g = torch.ones(B, H, M, 1, dtype=k.dtype, device=k.device)
    for b in range(B):
        for h in range(H):
            for i in range(M):
                ki = k[b, i, h]
                vbar = torch.zeros_like(v[b, i, h])
                if not first:
                    zk = z[b, h] @ ki + eps
                    vbar = (ki @ A[b, h]) / _floored(zk, ki, eps, vbar_floor)
                    g[b, h, i, 0] = torch.clamp(1 - zk / (ki @ ki + eps), 0.0, 1.0).detach()
                u[b, h, i] = beta[b, i, h] * (v[b, i, h] - vbar)
    kT = k.permute(0, 2, 3, 1).reshape(B * H, K, M)
    return kT, u.reshape(B * H, M, -1), g.reshape(B * H, M, 1)


def apply_delta_(A: Tensor, z: Tensor, terms: tuple[Tensor, Tensor, Tensor]) -> None:
    """A += kT @ u and z += kT @ g, in place."""
    kT, u, g = terms
    A += (kT @ u).view(A.shape)
    z += (kT @ g).view(z.shape)

"""The associative memory block of one ARMT layer (DESIGN.md section 2, paper section 3).

Owns the projections W_q, W_k, W_v, W_beta; the state (A, z) is passed in and returned, never kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ARMTConfig
from .ops import get_ops


class AssociativeMemory(nn.Module):
    """Read before a transformer block, write after it.

    read:  q = phi(W_q h);  h <- h + (q^T A) / (q^T z + eps)             for every row of the segment
    write: k = phi(W_k m), v = W_v m, beta = sigmoid(W_beta m) from the block's outputs m at the M memory
           positions, applied by the delta rule with the gamma correction (ops.delta_write).
    W_v is zero-initialised, so an untrained model equals the plain transformer (reads add exactly 0).
    """

    def __init__(self, config: ARMTConfig):
        super().__init__()
        self.config = config
        D, H, r = config.d_model, config.memory_heads, config.d_mem
        self.W_q = nn.Linear(D, H * r, bias=False)
        self.W_k = nn.Linear(D, H * r, bias=False)
        self.W_v = nn.Linear(D, D, bias=False)
        self.W_beta = nn.Linear(D, D if config.beta_per_channel else H, bias=True)
        nn.init.zeros_(self.W_v.weight)
        self.ops = get_ops(config.ops_backend)

    def _phi(self, x: Tensor) -> Tensor:
        # [B, N, H*r] -> [B, N, H, K]
        c = self.config
        x = x.view(*x.shape[:-1], c.memory_heads, c.d_mem)
        return self.ops.dpfp(x, c.nu, c.phi_l2norm)

    def read(self, h: Tensor, A: Tensor, z: Tensor) -> Tensor:
        """h [B, N, D] -> h + retrieved [B, N, D]. A [B, H, K, Dv], z [B, H, K]."""
        q = self.W_q(h)
        # the memory math runs in fp32 even under bf16 autocast: the state accumulates over many writes
        with torch.autocast(device_type=h.device.type, enabled=False):
            out = self.ops.associative_read(self._phi(q.float()), A, z, self.config.eps)  # [B, N, H, Dv]
        return h + out.reshape(h.shape).to(h.dtype)

    def write(self, m: Tensor, A: Tensor, z: Tensor, first: bool) -> tuple[Tensor, Tensor]:
        """m [B, M, D]: this layer's outputs at the memory positions -> new (A, z), fp32."""
        c = self.config
        B, M, D = m.shape
        k, v, b = self.W_k(m), self.W_v(m), self.W_beta(m)
        with torch.autocast(device_type=m.device.type, enabled=False):
            k = self._phi(k.float())
            v = v.float().view(B, M, c.memory_heads, c.d_head)
            beta = torch.sigmoid(b.float()).view(B, M, c.memory_heads, c.d_head if c.beta_per_channel else 1)
            return self.ops.delta_write(k, v, beta, A, z, first, c.eps)

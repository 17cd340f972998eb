"""The associative memory block of one ARMT layer (DESIGN.md section 2, paper section 3).

Owns the projections W_q, W_k, W_v, W_beta; the state (A, z) is passed in and returned, never kept.

Keys (config.key_mode, DESIGN.md section 3): "content" is the paper's k = phi(W_k m); "identity" keys a
segment's reads and writes by its entity id e, k = q = phi(code(e)); "mixed" adds code(e) to the content
projections. With identity keys the delta rule makes a rewrite of e REPLACE e's value (vbar is the old
value, gamma ~ 0 keeps z from growing), and ``forget`` erases e's association. ``KeyWriteLog`` records,
per key, the step of its last write, so callers can ask how stale an entity's state is.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from .config import ARMTConfig
from .ops import get_ops


def cap_read(out: Tensor, cap: float | None) -> Tensor:
    """``ARMTConfig.read_norm_cap``'s bounded read: each row's retrieved vector out [..., N, H, Dv] (all heads
    together) scaled down to norm <= cap; None: unchanged (the paper's read)."""
    if cap is None:
        return out
    norm = out.flatten(-2).norm(dim=-1)[..., None, None]
    return out * torch.clamp(cap / norm.clamp_min(1e-12), max=1.0)


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
        # keyed modes only: the content-keyed default creates no extra parameters or buffers
        if config.key_mode != "content":
            if config.identity_keys == "learned":
                self.W_e = nn.Embedding(config.key_buckets, H * r)
                nn.init.normal_(self.W_e.weight, std=1.0)
            else:
                self.register_buffer("codes", orthogonal_codes(config.key_buckets, r, config.nu).repeat(1, H),
                                     persistent=False)

    @property
    def ops(self) -> ModuleType:
        """The memory ops (``config.ops_backend``), looked up on use: a module held as an attribute kept the layer,
        and every model holding it, from being copied or pickled (``copy.deepcopy``, Lightning's weight averaging)."""
        return get_ops(self.config.ops_backend)

    def code(self, key_ids: Tensor) -> Tensor:
        """Entity ids [B] -> pre-feature codes [B, H*r] (the identity part of the key)."""
        c = self.config
        if c.key_mode == "content":
            raise ValueError("AssociativeMemory.code: key_mode='content' has no identity keys")
        if key_ids.dim() != 1:
            raise ValueError(f"key_ids: expected one entity id per batch row [B], got shape {tuple(key_ids.shape)}")
        if key_ids.numel() and (int(key_ids.min()) < 0 or int(key_ids.max()) >= c.key_buckets):
            raise ValueError(f"key_ids: ids must lie in [0, key_buckets={c.key_buckets}), got "
                             f"[{int(key_ids.min())}, {int(key_ids.max())}]")
        return self.W_e(key_ids) if c.identity_keys == "learned" else self.codes[key_ids]

    def key_features(self, key_ids: Tensor) -> Tensor:
        """phi(code(e)) [B, H, K]: the identity key of each row's entity (fp32)."""
        return self._phi(self.code(key_ids).float())

    def _keyed_projection(self, proj: Tensor, key_ids: Tensor | None) -> Tensor:
        """[B, N, H*r] content projections -> the pre-feature keys/queries of config.key_mode."""
        mode = self.config.key_mode
        if mode == "content":
            return proj
        if key_ids is None:
            raise ValueError(f"key_mode={mode!r} needs key_ids (one entity id per batch row) for reads and writes")
        if tuple(key_ids.shape) != (proj.shape[0],):  # no broadcasting of one id over a batch
            raise ValueError(f"key_ids: expected one entity id per batch row, shape [{proj.shape[0]}], got "
                             f"{tuple(key_ids.shape)}")
        code = self.code(key_ids).to(proj.dtype)[:, None]  # [B, 1, H*r]
        return code.expand_as(proj) if mode == "identity" else proj + code

    def _phi(self, x: Tensor) -> Tensor:
        # [B, N, H*r] -> [B, N, H, K]
        c = self.config
        x = x.view(*x.shape[:-1], c.memory_heads, c.d_mem)
        return self.ops.dpfp(x, c.nu, c.phi_l2norm)

    def read(self, h: Tensor, A: Tensor, z: Tensor, key_ids: Tensor | None = None) -> Tensor:
        """h [B, N, D] -> h + retrieved [B, N, D]. A [B, H, K, Dv], z [B, H, K].

        key_ids [B] (keyed modes): every row of batch row b reads under entity key_ids[b].
        """
        q = self.W_q(h) if self.config.key_mode != "identity" else h.new_zeros(*h.shape[:-1], self.W_q.out_features)
        if key_ids is not None or self.config.key_mode != "content":
            q = self._keyed_projection(q, key_ids)
        # the memory math runs in fp32 even under bf16 autocast: the state accumulates over many writes
        with torch.autocast(device_type=h.device.type, enabled=False):
            out = self.ops.associative_read(self._phi(q.float()), A, z, self.config.eps)  # [B, N, H, Dv]
            out = cap_read(out, self.config.read_norm_cap)
        return h + out.reshape(h.shape).to(h.dtype)

    def write(self, m: Tensor, A: Tensor, z: Tensor, first: bool, key_ids: Tensor | None = None,
              defer: bool = False) -> tuple[Tensor, ...]:
        """m [B, M, D]: this layer's outputs at the memory positions -> new (A, z), fp32.

        key_ids [B] (keyed modes): all M writes of batch row b go under entity key_ids[b]'s key.
        defer=True: the write's terms instead (``ops.delta_terms``), for ``ops.apply_delta_`` on (A, z) later.
        """
        c = self.config
        B, M, D = m.shape
        k = self.W_k(m) if c.key_mode != "identity" else m.new_zeros(B, M, self.W_k.out_features)
        v, b = self.W_v(m), self.W_beta(m)
        if key_ids is not None or c.key_mode != "content":
            k = self._keyed_projection(k, key_ids)
        with torch.autocast(device_type=m.device.type, enabled=False):
            k = self._phi(k.float())
            v = v.float().view(B, M, c.memory_heads, c.d_head)
            beta = torch.sigmoid(b.float()).view(B, M, c.memory_heads, c.d_head if c.beta_per_channel else 1)
            if defer:
                return self.ops.delta_terms(k, v, beta, A, z, first, c.eps, c.vbar_floor)
            return self.ops.delta_write(k, v, beta, A, z, first, c.eps, c.vbar_floor)

    def forget(self, A: Tensor, z: Tensor, key_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Erase each row's entity association: -> new (A, z); key_mode="identity" only.

        With k = phi(code(e)): A <- A - k (k^T A) / |k|^2, i.e. a delta-rule write of the value 0 with the
        strength that makes the read under k return exactly 0 (for keys orthogonal to the others; with
        overlapping keys it removes k's component and leaves the rest), and z <- z - g k with
        g = clip(z^T k / |k|^2, 0, 1), undoing the gamma correction of k's first write (g = 1 for a stored
        orthogonal key, 0 for a key never written). Rows whose key was never written are unchanged.
        """
        if self.config.key_mode != "identity":
            raise ValueError(f"forget needs key_mode='identity' (the key must not depend on content), "
                             f"got {self.config.key_mode!r}")
        if tuple(key_ids.shape) != (A.shape[0],):  # no broadcasting of one id over a batch
            raise ValueError(f"key_ids: expected one entity id per batch row, shape [{A.shape[0]}], got "
                             f"{tuple(key_ids.shape)}")
        k = self.key_features(key_ids)  # [B, H, K]
        kk = (k * k).sum(-1, keepdim=True)  # [B, H, 1]
        safe = torch.where(kk > 0, kk, torch.ones_like(kk))
        kA = torch.einsum("bhk,bhkd->bhd", k, A)  # [B, H, Dv]
        new_A = A - k[..., None] * (kA / safe)[:, :, None, :]
        g = torch.clamp((z * k).sum(-1, keepdim=True) / safe, 0.0, 1.0)
        new_z = z - g * k
        return new_A, new_z


@dataclass(frozen=True)
class KeyWriteLog:
    """Per stream (batch row) and key, the step of the key's last write (-1: never written or forgotten).

    A value, like MemoryState: ``record`` and ``forget`` return new logs. ``staleness(ids, now)`` is the
    number of steps since each entity was last written (-1 where it never was).
    """

    last_write: Tensor  # [B, key_buckets] int64

    @classmethod
    def empty(cls, batch_size: int, key_buckets: int, device: torch.device | str | None = None) -> "KeyWriteLog":
        return cls(torch.full((batch_size, key_buckets), -1, dtype=torch.long, device=device))

    def _check(self, key_ids: Tensor) -> None:
        B, n = self.last_write.shape
        if key_ids.shape != (B,):
            raise ValueError(f"key_ids: expected shape [{B}] (one id per stream), got {tuple(key_ids.shape)}")
        if key_ids.numel() and (int(key_ids.min()) < 0 or int(key_ids.max()) >= n):
            raise ValueError(f"key_ids: ids must lie in [0, {n}), got [{int(key_ids.min())}, {int(key_ids.max())}]")

    def record(self, key_ids: Tensor, step: int | Tensor, mask: Tensor | None = None) -> "KeyWriteLog":
        """key_ids [B] were written at ``step`` (int or [B]); rows with mask [B] False are left as they are."""
        self._check(key_ids)
        rows = torch.arange(key_ids.shape[0], device=key_ids.device)
        step = torch.as_tensor(step, dtype=torch.long, device=key_ids.device).expand(key_ids.shape[0])
        old = self.last_write[rows, key_ids]
        if mask is not None and (tuple(mask.shape) != (key_ids.shape[0],) or mask.dtype != torch.bool):
            raise ValueError(f"mask: expected a bool tensor of shape [{key_ids.shape[0]}] (one per stream), got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        new = step if mask is None else torch.where(mask, step, old)
        out = self.last_write.clone()
        out[rows, key_ids] = new
        return KeyWriteLog(out)

    def forget(self, key_ids: Tensor) -> "KeyWriteLog":
        self._check(key_ids)
        out = self.last_write.clone()
        out[torch.arange(key_ids.shape[0], device=key_ids.device), key_ids] = -1
        return KeyWriteLog(out)

    def staleness(self, key_ids: Tensor, now: int | Tensor) -> Tensor:
        """Steps since the last write of key_ids [B] at step ``now`` -> [B] int64 (-1: never written)."""
        self._check(key_ids)
        last = self.last_write[torch.arange(key_ids.shape[0], device=key_ids.device), key_ids]
        now = torch.as_tensor(now, device=last.device)
        if bool(((last >= 0) & (now < last)).any()):
            raise ValueError(f"now: step {now.tolist()} is before a recorded write (step {int(last.max())})")
        return torch.where(last >= 0, now - last, torch.full_like(last, -1))


def orthogonal_codes(n_ids: int, r: int, nu: int = 3) -> Tensor:
    """Codes [n_ids, r] whose DPFP-nu features are one-hot: phi(codes[e]) = e_(e mod K), K = 2 nu r.

    phi's feature (j, i) is u[i] * u[i - j] with u = [relu(x); relu(-x)] (2r entries, indices mod 2r).
    Setting exactly the two entries u[i] and u[i - j] to 1 (through x[p mod r] = +1 for p < r, -1 for
    p >= r) makes that feature 1 and every other feature 0, provided r > nu (so the two entries are
    different coordinates of x and 2r - j is not another order in 1..nu). Ids beyond K share features
    (e and e + K collide): K is the number of entities one shared memory holds exactly.
    """
    if r <= nu:
        raise ValueError(f"orthogonal_codes: need r > nu, got r={r}, nu={nu}")
    K = 2 * nu * r
    out = torch.zeros(n_ids, r)
    for e in range(n_ids):
        f = e % K
        j, i = f // (2 * r) + 1, f % (2 * r)
        for p in (i, (i - j) % (2 * r)):
            out[e, p % r] = 1.0 if p < r else -1.0
    return out

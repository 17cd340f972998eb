"""Embedders: numeric series and typed events become the [B, S, D] tokens the ARMT backbone reads.

- ``PatchEmbedder``: values [B, T, C] with an observed mask [B, T, C] (1 = observed) become patch tokens.
  NaN never reaches the model: masked entries are replaced by zero with ``torch.where`` (so a NaN there
  gives neither a NaN token nor a NaN gradient) and the mask itself is an input of the projection, so a
  missing value is distinguishable from an observed zero (DESIGN.md section 3).
- ``EventEmbedder``: an event (time, entity, type, value) becomes one token, the sum of a type embedding,
  a hashed entity embedding, a value projection (or a learned "missing" vector) and a time-gap encoding.
- ``hash_entity`` / ``hash_entities``: a stable hash (blake2b, identical in every process and on every
  machine, unlike Python's salted ``hash``) from open-vocabulary entity names to embedding buckets.
- ``time_gaps``: seconds since the same entity's previous event, the input of the time-gap encoding.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from gluonts.model.inputs import Input, InputSpec
from torch import Tensor, nn

from .config import EventConfig, PatchConfig


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


def _check_finite_where_observed(name: str, x: Tensor, keep: Tensor) -> None:
    """Raise if ``x`` is NaN or infinite at a position where ``keep`` is true; masked positions may hold anything."""
    bad = keep & ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) at observed positions, first at index {first}")


class PatchEmbedder(nn.Module):
    """Patches of ``P = patch_len`` steps every ``S = stride`` steps; each patch's values and mask -> a token.

    Modes:
      - "independent": one token per (patch n, channel c), at index ``n * C + c`` (time-major), so a contiguous
        run of G * C tokens covers G time patches of every channel. All channels share the projection; a learned
        channel embedding (``config.embeds_channels``) tells them apart.
      - "mixing": one token per patch n: all channels' values and masks are projected together.

    Length rule: when T is not of the form ``P + k * S`` the series is LEFT-padded with unobserved steps so that
    the last patch ends at the last step (forecasting needs the most recent data intact). Padded steps count as
    unobserved in the mask features and in ``token_observed``. A caller that wants patches aligned to the start of
    the series instead (e.g. a stream that completes a patch every S steps) passes a length that needs no padding.
    """

    def __init__(self, config: PatchConfig):
        super().__init__()
        self.config = c = config
        # Each patch contributes its P values (zero where unobserved) and its P mask bits.
        in_features = 2 * c.patch_len if c.mode == "independent" else 2 * c.patch_len * c.n_channels
        self.proj = nn.Linear(in_features, c.d_model)
        self.channel_emb = nn.Parameter(torch.randn(c.n_channels, c.d_model) * 0.02) if c.embeds_channels else None

    def num_patches(self, length: int) -> int:
        """N, the number of patches for a series of ``length`` steps (at least 1 step)."""
        if length < 1:
            raise ValueError(f"length: must be >= 1, got {length}")
        P, S = self.config.patch_len, self.config.stride
        return 1 if length <= P else 1 + math.ceil((length - P) / S)

    def left_padding(self, length: int) -> int:
        """Unobserved steps prepended to a series of ``length`` steps so that the last patch ends at its last step."""
        P, S = self.config.patch_len, self.config.stride
        return P + (self.num_patches(length) - 1) * S - length

    def num_tokens(self, length: int) -> int:
        """Tokens produced for ``length`` steps: N * C in "independent" mode, N in "mixing" mode."""
        n = self.num_patches(length)
        return n * self.config.n_channels if self.config.mode == "independent" else n

    def describe_inputs(self, batch_size: int = 1, length: int | None = None) -> InputSpec:
        """The inputs of ``forward`` (GluonTS convention): ``describe_inputs(b, t).zeros()`` is a valid call."""
        t = self.config.patch_len if length is None else length
        shape = (batch_size, t, self.config.n_channels)
        return InputSpec(
            {"values": Input(shape=shape, dtype=torch.float), "observed": Input(shape=shape, dtype=torch.float)},
            zeros_fn=torch.zeros,
        )

    def forward(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """Embed a series.

        Args:
            values: [B, T, C] float; must be finite where observed; anything (NaN included) where not.
            observed: [B, T, C] bool or 0/1 float, nonzero = observed.

        Returns:
            tokens: [B, N * C, D] ("independent", index n * C + c) or [B, N, D] ("mixing").
            token_observed: [B, N * C] or [B, N], the fraction of observed steps in each token's patch(es).
        """
        c = self.config
        if values.dim() != 3:
            raise ValueError(f"values: expected [B, T, C], got shape {tuple(values.shape)}")
        B, T, C = values.shape
        if C != c.n_channels:
            raise ValueError(f"values: expected C = n_channels = {c.n_channels} channels, got {C}")
        if not values.is_floating_point():  # ints would be cast silently, complex values lose their imaginary part
            raise ValueError(f"values: expected a floating-point tensor, got {values.dtype}")
        _check_shape("observed", observed, (B, T, C))
        keep = observed != 0
        _check_finite_where_observed("values", values, keep)

        # torch.where (not values * mask): NaN * 0 is NaN, and its gradient would be NaN too.
        dtype = self.proj.weight.dtype  # float64 input meets float32 weights: compute in the weights' dtype
        x = torch.where(keep, values.to(dtype), torch.zeros((), dtype=dtype, device=values.device))
        m = keep.to(dtype)
        pad = self.left_padding(T)
        x = F.pad(x, (0, 0, pad, 0))  # left-pad time with zeros ...
        m = F.pad(m, (0, 0, pad, 0))  # ... marked unobserved
        xp = x.unfold(1, c.patch_len, c.stride)  # [B, N, C, P]
        mp = m.unfold(1, c.patch_len, c.stride)  # [B, N, C, P]
        feats = torch.cat([xp, mp], dim=-1)  # [B, N, C, 2P]
        N = feats.shape[1]

        if c.mode == "independent":
            tokens = self.proj(feats)  # [B, N, C, D]
            if self.channel_emb is not None:
                tokens = tokens + self.channel_emb
            return tokens.reshape(B, N * C, c.d_model), mp.mean(-1).reshape(B, N * C)
        tokens = self.proj(feats.reshape(B, N, C * 2 * c.patch_len))  # [B, N, D]
        return tokens, mp.mean(dim=(-2, -1))


def hash_entity(name: str, buckets: int) -> int:
    """Bucket id in [0, buckets) of an entity name: blake2b (8-byte digest) of its UTF-8 bytes, modulo ``buckets``.

    Stable across processes, machines and Python versions, so saved models and streams keep their meaning.
    Different names may share a bucket; with B buckets and n entities, about n^2 / (2B) pairs collide.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets: must be an int >= 1, got {buckets!r}")
    if not isinstance(name, str):
        raise ValueError(f"name: an entity name is a str, got {type(name).__name__} {name!r}")
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def hash_entities(names: Iterable[str], buckets: int) -> Tensor:
    """``hash_entity`` for each name: a LongTensor [n] of bucket ids."""
    return torch.tensor([hash_entity(n, buckets) for n in names], dtype=torch.long)


def time_gaps(time: Tensor, entity: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Seconds since the previous event of the same entity (of the stream when ``entity`` is None).

    Args:
        time: [B, S] event times in seconds, non-decreasing along S.
        entity: [B, S] integer entity ids, or None. Pass exact ids where available: hashed bucket ids merge
            colliding entities.

    Returns:
        gap: [B, S] float, 0 where there is no previous event.
        gap_observed: [B, S] bool, False for the first event of each entity (its gap is unknown).
    """
    if time.dim() != 2:
        raise ValueError(f"time: expected [B, S], got shape {tuple(time.shape)}")
    if not torch.isfinite(time).all():
        raise ValueError("time: must be finite")
    if time.dtype in (torch.float16, torch.bfloat16, torch.float32) and time.numel() and (
            float(time.abs().max()) >= 2.0 / torch.finfo(time.dtype).eps):  # whole seconds no longer exact
        raise ValueError(f"time: {time.dtype} holds times this large ({float(time.abs().max()):.4g} s) only to "
                         f"{float(time.abs().max()) * torch.finfo(time.dtype).eps:.3g} s; pass float64 (or times "
                         f"relative to the first event)")
    back = time[:, 1:] < time[:, :-1]
    if back.any():
        b, s = (int(i) for i in back.nonzero()[0])
        raise ValueError(f"time: goes backwards in row {b} at position {s + 1}")
    if entity is None:
        entity = torch.zeros(time.shape, dtype=torch.long, device=time.device)
    _check_shape("entity", entity, tuple(time.shape))
    # A stable sort groups each entity's events and keeps them in time order; neighbours within a group are
    # consecutive events of one entity. Results are scattered back to the original positions.
    ent_sorted, order = torch.sort(entity, dim=1, stable=True)
    t_sorted = time.gather(1, order)
    same = ent_sorted[:, 1:] == ent_sorted[:, :-1]
    first = torch.zeros(time.shape[0], 1, dtype=torch.bool, device=time.device)  # [B, 1] even when S = 1
    obs_sorted = torch.cat([first, same], dim=1)
    diff = torch.cat([torch.zeros_like(t_sorted[:, :1]), t_sorted[:, 1:] - t_sorted[:, :-1]], dim=1)
    gap_sorted = torch.where(obs_sorted, diff, torch.zeros_like(diff))
    gap = torch.empty_like(gap_sorted).scatter_(1, order, gap_sorted)
    gap_observed = torch.empty_like(obs_sorted).scatter_(1, order, obs_sorted)
    return gap, gap_observed


class EventEmbedder(nn.Module):
    """One token per event: type embedding + entity embedding + value term + time-gap term.

    - value term: a linear projection of the value, or a learned vector where the value is missing (so a missing
      value differs from an observed 0).
    - time-gap term: g = log1p(gap in seconds) (gaps span milliseconds to months; the log evens them out), fed to a
      learned linear map as [g / max_log_gap, sin(w_k g), cos(w_k g)] with fixed frequencies
      w_k = 2^k * pi / max_log_gap; a learned vector where the gap is unknown (an entity's first event).
    """

    def __init__(self, config: EventConfig):
        super().__init__()
        self.config = c = config
        self.type_emb = nn.Embedding(c.n_types, c.d_model)
        # Public: the backbone's entity-keyed memory may reuse these vectors as keys (DESIGN.md section 3).
        self.entity_emb = nn.Embedding(c.entity_buckets, c.d_model)
        self.value_proj = nn.Linear(1, c.d_model)
        self.value_missing = nn.Parameter(torch.randn(c.d_model) * 0.02)
        freqs = (2.0 ** torch.arange(c.gap_frequencies, dtype=torch.float)) * math.pi / c.max_log_gap
        self.register_buffer("gap_freqs", freqs, persistent=False)
        self.gap_proj = nn.Linear(2 * c.gap_frequencies + 1, c.d_model)
        self.gap_missing = nn.Parameter(torch.randn(c.d_model) * 0.02)
        for emb in (self.type_emb, self.entity_emb):
            nn.init.normal_(emb.weight, std=0.02)

    def describe_inputs(self, batch_size: int = 1, length: int = 1) -> InputSpec:
        """The inputs of ``forward`` (GluonTS convention): ``describe_inputs(b, s).zeros()`` is a valid call."""
        shape = (batch_size, length)
        return InputSpec(
            {
                "event_type": Input(shape=shape, dtype=torch.long),
                "entity": Input(shape=shape, dtype=torch.long),
                "value": Input(shape=shape, dtype=torch.float),
                "value_observed": Input(shape=shape, dtype=torch.float),
                "time_gap": Input(shape=shape, dtype=torch.float),
                "gap_observed": Input(shape=shape, dtype=torch.float),
            },
            zeros_fn=torch.zeros,
        )

    def gap_features(self, time_gap: Tensor) -> Tensor:
        """[..., 2K + 1] features of gaps in seconds (>= 0): log1p, scaled, and its sinusoids."""
        g = torch.log1p(time_gap).unsqueeze(-1)
        angles = g * self.gap_freqs
        return torch.cat([g / self.config.max_log_gap, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(
        self,
        event_type: Tensor,
        entity: Tensor,
        value: Tensor,
        value_observed: Tensor,
        time_gap: Tensor,
        gap_observed: Tensor | None = None,
    ) -> Tensor:
        """Embed events.

        Args:
            event_type: [B, S] long, in [0, n_types).
            entity: [B, S] long bucket ids in [0, entity_buckets) (``hash_entity`` / ``hash_entities``).
            value: [B, S] float; finite where observed, anything (NaN included) where not.
            value_observed: [B, S] bool or 0/1 float, nonzero = the event carries a value.
            time_gap: [B, S] float seconds since the previous event (``time_gaps``); finite and >= 0 where known.
            gap_observed: [B, S] bool or 0/1 float, nonzero = the gap is known; None = every gap is known.

        Returns:
            tokens: [B, S, D].
        """
        c = self.config
        if event_type.dim() != 2:
            raise ValueError(f"event_type: expected [B, S], got shape {tuple(event_type.shape)}")
        shape = tuple(event_type.shape)
        for name, t in (("entity", entity), ("value", value), ("value_observed", value_observed),
                        ("time_gap", time_gap)):
            _check_shape(name, t, shape)
        for name, t, n in (("event_type", event_type, c.n_types), ("entity", entity, c.entity_buckets)):
            if t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name}: expected an integer tensor, got {t.dtype}")
            if t.numel() and (t.min() < 0 or t.max() >= n):
                b, s = (int(i) for i in ((t < 0) | (t >= n)).nonzero()[0])
                raise ValueError(f"{name}: ids must be in [0, {n}), got range [{int(t.min())}, {int(t.max())}]; "
                                 f"the first outside is {int(t[b, s])} at [{b}, {s}] (batch row, event)")
        v_keep = value_observed != 0
        _check_finite_where_observed("value", value, v_keep)
        if gap_observed is None:
            g_keep = torch.ones(shape, dtype=torch.bool, device=time_gap.device)
        else:
            _check_shape("gap_observed", gap_observed, shape)
            g_keep = gap_observed != 0
        _check_finite_where_observed("time_gap", time_gap, g_keep)
        negative = g_keep & (time_gap < 0)
        if negative.any():
            raise ValueError(f"time_gap: must be >= 0 where known, got {float(time_gap[negative].min())}")

        dtype = self.value_proj.weight.dtype  # float64 input meets float32 weights: compute in the weights' dtype
        zero = torch.zeros((), dtype=dtype, device=value.device)
        v = torch.where(v_keep, value.to(dtype), zero).unsqueeze(-1)  # [B, S, 1]
        value_term = torch.where(v_keep.unsqueeze(-1), self.value_proj(v), self.value_missing)
        gap = torch.where(g_keep, time_gap.to(dtype), zero)
        gap_term = torch.where(g_keep.unsqueeze(-1), self.gap_proj(self.gap_features(gap)), self.gap_missing)
        return self.type_emb(event_type) + self.entity_emb(entity) + value_term + gap_term  # [B, S, D]

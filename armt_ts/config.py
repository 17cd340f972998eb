"""Configuration: one frozen dataclass per concern, validated in ``__post_init__``.

Modules take a config object, never loose hyperparameters, so a value lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration field has a value the model cannot use; the message names the field."""


def _check(cond: bool, cls: str, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{field}: {msg}")


class _ConfigMethods:
    """replace / to_dict / from_dict for every config below."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ARMTConfig(_ConfigMethods):
    """The ARMT backbone (DESIGN.md section 2). Defaults are a small CPU-friendly model."""

    d_model: int = 64  # D, width of every token
    n_layers: int = 2  # transformer blocks; each owns one associative memory (A_l, z_l)
    n_heads: int = 4  # attention heads of the transformer block
    d_ff: int = 256  # hidden width of the block's MLP
    dropout: float = 0.0
    segment_length: int = 16  # T, content tokens per segment
    num_mem_tokens: int = 4  # M, write-only memory tokens appended at the END of each segment
    d_mem: int = 32  # r, width of W_q / W_k outputs before the DPFP feature map
    nu: int = 3  # DPFP order; feature size K = 2 * nu * d_mem
    eps: float = 1e-5  # the paper's epsilon in the read / write denominators
    # Post-paper options, all off by default (the defaults reproduce the paper's memory exactly).
    memory_heads: int = 1  # >1: split D and the keys into independent associative memories
    phi_l2norm: bool = False  # divide phi(x) by its L2 norm
    beta_per_channel: bool = False  # beta is a vector over the value channels instead of a scalar
    # Training: detach the carried state every `tbptt_segments` segments (None = full BPTT).
    tbptt_segments: int | None = None
    ops_backend: Literal["fused", "naive"] = "fused"  # naive is the slow reference (ops/naive.py)
    positional: bool = True  # learned in-segment positions (content 0..T-1, memory T..T+M-1)
    # Bounded read (not in the paper): scale each row's retrieved vector (all heads) down to norm <= this value.
    # None = the paper's read. benchmarks/retrieval_drift.py shows why: past the training length the associations,
    # and so what a read adds, keep growing while z stays flat.
    read_norm_cap: float | None = None
    # Floored write estimate (not in the paper): the delta rule's old value vbar = (k^T A) / (z^T k + eps) divides
    # by at least vbar_floor * (|k|^2 + eps). None = the paper's write. The gamma rule adds to z only while a key is
    # new, so A gathers mass on DPFP features that z never covers; a later key on those features has z^T k ~ 0, and
    # eps turns a small k^T A into a huge vbar, which the write then stores (benchmarks/results/HISTORY.md, "What
    # makes the memory state jump": |v - vbar| up to 3312; a stream's max |A| from tens to 1.2e5). 0.1 floors only
    # such writes: ordinary ones have z^T k / |k|^2 >= 1.
    vbar_floor: float | None = None
    # Entity/channel-keyed memory (DESIGN.md section 3). "content": the paper's k = phi(W_k m), q = phi(W_q h);
    # "identity": k = q = phi(code(e)) from the segment's entity id e, so rewriting e REPLACES its value;
    # "mixed": k = phi(W_k m + code(e)), q = phi(W_q h + code(e)). Keyed modes need key_ids in forward().
    key_mode: Literal["content", "identity", "mixed"] = "content"
    key_buckets: int = 0  # entity ids the keyed memory accepts, [0, key_buckets); 0 with key_mode="content"
    # code(e): "orthogonal" = a fixed code whose phi is one-hot (feature e mod K; exact for up to K entities,
    # needs d_mem > nu); "learned" = a learned embedding W_e e (nn.Embedding(key_buckets, memory_heads * d_mem)).
    identity_keys: Literal["orthogonal", "learned"] = "orthogonal"
    # How ARMT.forward runs the segments x layers grid (armt_ts/schedule.py; equal results to fp32 rounding):
    # "sequential" = segment after segment; "diagonal" = Sivtsov et al.'s diagonal batching (layer l of segment s
    # with layer l+1 of segment s-1, ...); "auto" = diagonal for inference (no autograd) where it is supported and
    # faster (>= 2 segments, small batches: schedule.prefer_diagonal), sequential otherwise (training included).
    schedule: Literal["auto", "sequential", "diagonal"] = "auto"

    def __post_init__(self) -> None:
        c = "ARMTConfig"
        _check_positive_ints(self, c, ("d_model", "n_layers", "n_heads", "d_ff", "segment_length", "num_mem_tokens",
                                       "d_mem", "nu", "memory_heads"))
        for name in ("phi_l2norm", "beta_per_channel", "positional"):
            value = getattr(self, name)
            _check(isinstance(value, bool), c, name, f"must be True or False, got {value!r}")
        for name in ("dropout", "eps"):
            _check(_is_number(getattr(self, name)), c, name, f"must be a finite number, got {getattr(self, name)!r}")
        _check(self.d_model % self.n_heads == 0, c, "n_heads",
               f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        _check(self.d_model % self.memory_heads == 0, c, "memory_heads",
               f"d_model={self.d_model} is not divisible by memory_heads={self.memory_heads}")
        _check(0.0 <= self.dropout < 1.0, c, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        _check(self.eps > 0, c, "eps", f"must be > 0, got {self.eps!r}")
        _check(self.tbptt_segments is None or (isinstance(self.tbptt_segments, int) and self.tbptt_segments >= 1),
               c, "tbptt_segments", f"must be None or an int >= 1, got {self.tbptt_segments!r}")
        _check(self.ops_backend in ("fused", "naive"), c, "ops_backend",
               f"must be 'fused' or 'naive', got {self.ops_backend!r}")
        _check(self.read_norm_cap is None or (_is_number(self.read_norm_cap) and self.read_norm_cap > 0),
               c, "read_norm_cap", f"must be None or a finite number > 0, got {self.read_norm_cap!r}")
        _check(self.vbar_floor is None or (_is_number(self.vbar_floor) and self.vbar_floor > 0),
               c, "vbar_floor", f"must be None or a finite number > 0, got {self.vbar_floor!r}")
        _check(self.schedule in ("auto", "sequential", "diagonal"), c, "schedule",
               f"must be 'auto', 'sequential' or 'diagonal', got {self.schedule!r}")
        _check(self.key_mode in ("content", "identity", "mixed"), c, "key_mode",
               f"must be 'content', 'identity' or 'mixed', got {self.key_mode!r}")
        _check(isinstance(self.key_buckets, int) and not isinstance(self.key_buckets, bool) and self.key_buckets >= 0,
               c, "key_buckets", f"must be an int >= 0, got {self.key_buckets!r}")
        _check(self.key_mode == "content" or self.key_buckets >= 1, c, "key_buckets",
               f"key_mode={self.key_mode!r} needs key_buckets >= 1 (the number of entity ids), got {self.key_buckets}")
        _check(self.identity_keys in ("orthogonal", "learned"), c, "identity_keys",
               f"must be 'orthogonal' or 'learned', got {self.identity_keys!r}")
        _check(self.key_mode == "content" or self.identity_keys != "orthogonal" or self.d_mem > self.nu, c, "d_mem",
               f"identity_keys='orthogonal' needs d_mem > nu={self.nu} (one-hot DPFP features), got {self.d_mem}")

    @property
    def d_key(self) -> int:
        """K, the DPFP feature size."""
        return 2 * self.nu * self.d_mem

    @property
    def d_head(self) -> int:
        """Value width of one memory head."""
        return self.d_model // self.memory_heads


def _is_number(value: Any) -> bool:
    """A finite real number (int, float, numpy scalar; not a bool, not a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_ints(obj: Any, cls: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, cls, name,
               f"must be a positive int, got {value!r}")


@dataclass(frozen=True)
class PatchConfig(_ConfigMethods):
    """The patch embedder (DESIGN.md section 3): a series [B, T, C] becomes N patch tokens per channel or per step."""

    n_channels: int = 1  # C, channels of the input series
    d_model: int = 64  # D, token width; must equal the backbone's ARMTConfig.d_model
    patch_len: int = 16  # P, time steps per patch
    stride: int = 16  # S, steps between patch starts; S < P overlaps patches (S > P would skip steps)
    mode: Literal["independent", "mixing"] = "independent"  # one token per (patch, channel) / per patch
    # Learned per-channel vector added to each token. None picks the mode's default: on for "independent"
    # (tokens of different channels must differ), off for "mixing", which has no per-channel tokens and
    # identifies a channel by its input columns; True with "mixing" is rejected rather than ignored.
    # None stays None (``embeds_channels`` resolves it), so ``replace(mode=...)`` picks the new mode's default.
    channel_embedding: bool | None = None

    def __post_init__(self) -> None:
        c = "PatchConfig"
        _check_positive_ints(self, c, ("n_channels", "d_model", "patch_len", "stride"))
        _check(self.stride <= self.patch_len, c, "stride",
               f"must be <= patch_len={self.patch_len} (a larger stride skips time steps), got {self.stride}")
        _check(self.mode in ("independent", "mixing"), c, "mode",
               f"must be 'independent' or 'mixing', got {self.mode!r}")
        _check(self.channel_embedding is None or isinstance(self.channel_embedding, bool), c, "channel_embedding",
               f"must be None, True or False, got {self.channel_embedding!r}")
        _check(not (self.mode == "mixing" and self.channel_embedding is True), c, "channel_embedding",
               "mode='mixing' has one token per patch, so there is no channel token to embed; use None or False")

    @property
    def embeds_channels(self) -> bool:
        """Whether tokens get the per-channel vector: ``channel_embedding``, or the mode's default when None."""
        return self.mode == "independent" if self.channel_embedding is None else self.channel_embedding


@dataclass(frozen=True)
class EventConfig(_ConfigMethods):
    """The event embedder (DESIGN.md section 3): one token per event (type, entity, value, time gap)."""

    n_types: int = 16  # event types are ids in [0, n_types)
    entity_buckets: int = 4096  # entities are hashed (embed.hash_entity) into ids in [0, entity_buckets)
    d_model: int = 64  # D, token width; must equal the backbone's ARMTConfig.d_model
    gap_frequencies: int = 8  # sinusoidal frequencies applied to log1p(time gap in seconds)
    # log1p(gap) at which the slowest sinusoid completes half a period, so its cosine is monotone over the
    # range that matters: log1p(one year in seconds) is about 17.3.
    max_log_gap: float = 20.0

    def __post_init__(self) -> None:
        c = "EventConfig"
        _check_positive_ints(self, c, ("n_types", "entity_buckets", "d_model", "gap_frequencies"))
        _check(isinstance(self.max_log_gap, (int, float)) and self.max_log_gap > 0, c, "max_log_gap",
               f"must be > 0, got {self.max_log_gap!r}")


@dataclass(frozen=True)
class HeadConfig(_ConfigMethods):
    """A forecasting head (DESIGN.md section 3): a representation -> forecasts for H steps and C channels."""

    kind: Literal["point", "quantile", "student_t", "normal", "laplace"] = "point"
    horizon: int = 24  # H, forecast steps
    n_channels: int = 1  # C, forecast channels
    d_model: int = 64  # D, width of the representation
    # True: the representation is [B, C, D], one vector per channel, and the projection is shared by all
    # channels (channel-independent). False: it is [B, D], one summary, and the projection has H * C
    # outputs per feature, so it grows with C (prefer per-channel representations for many channels).
    per_channel: bool = True
    step_features: int = 8  # features per (step, channel) between the shared projection and the output
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # kind="quantile": the learned levels, increasing
    point_loss: Literal["mse", "mae"] = "mse"  # kind="point": the training loss

    def __post_init__(self) -> None:
        c = "HeadConfig"
        _check(self.kind in ("point", "quantile", "student_t", "normal", "laplace"), c, "kind",
               f"must be one of 'point', 'quantile', 'student_t', 'normal', 'laplace', got {self.kind!r}")
        _check_positive_ints(self, c, ("horizon", "n_channels", "d_model", "step_features"))
        _check(isinstance(self.per_channel, bool), c, "per_channel", f"must be a bool, got {self.per_channel!r}")
        _check(self.point_loss in ("mse", "mae"), c, "point_loss",
               f"must be 'mse' or 'mae', got {self.point_loss!r}")
        # A list (e.g. from JSON) becomes a tuple, so the config stays hashable and round-trips.
        _check(isinstance(self.quantiles, (tuple, list)) and len(self.quantiles) > 0, c, "quantiles",
               f"must be a non-empty sequence of levels, got {self.quantiles!r}")
        _check(all(isinstance(q, (int, float)) and not isinstance(q, bool) for q in self.quantiles), c,
               "quantiles", f"every level must be a number, got {self.quantiles!r}")
        qs = tuple(float(q) for q in self.quantiles)
        object.__setattr__(self, "quantiles", qs)
        _check(all(0.0 < q < 1.0 for q in qs), c, "quantiles", f"every level must be in (0, 1), got {qs}")
        _check(all(a < b for a, b in zip(qs, qs[1:])), c, "quantiles", f"must be strictly increasing, got {qs}")
        # point() of a quantile head is the median, interpolated between learned levels.
        _check(qs[0] <= 0.5 <= qs[-1], c, "quantiles", f"must bracket the median 0.5, got {qs}")


@dataclass(frozen=True)
class ForecasterConfig(_ConfigMethods):
    """A forecaster (armt_ts/forecaster.py): scaler -> patch embedder -> ARMT backbone -> head.

    The parts share D (``armt.d_model``), C (``patch.n_channels``) and the representation layout (per channel in
    "independent" mode, one summary in "mixing" mode); the check below rejects parts that disagree, and
    ``ForecasterConfig.build`` fills the shared fields from one place.
    """

    armt: ARMTConfig = dataclasses.field(default_factory=ARMTConfig)
    patch: PatchConfig = dataclasses.field(default_factory=PatchConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    # Statistics of the observed context that normalise the input and map forecasts back to data units
    # (gluonts.torch.scaler): "std" = z-score (StdScaler), "mean" = mean |value| (MeanScaler), "none".
    scaling: Literal["std", "mean", "none"] = "std"
    # Unobserved channels of a step filled from the observed channels of that step before scaling (armt_ts/impute.py:
    # the conditional mean of a Gaussian fitted on training data with ``ARMTForecaster.fit_imputer``), or "none".
    impute: Literal["none", "gaussian"] = "none"
    # The imputer fills an entry only where the step's observed channels explain at least this fraction of its
    # variance (R^2); below it the entry stays unobserved for the embedder's mask (GaussianChannelImputer.min_r2).
    impute_min_r2: float = 0.5
    # n > 0: a linear map from each channel's last n normalised context steps (0 where unobserved or before the
    # series starts) to its H future steps, shared by the channels, is added to the head's location: the forecast is
    # the least-squares linear forecast plus what the network adds. ``ARMTForecaster.fit_skip`` sets it in closed
    # form (ridge least squares on the training windows; ``ARMTEstimator`` does this before training) and it stays
    # fixed while the network trains on the residual. 0: no skip (the network alone).
    linear_skip: int = 0
    # the least-squares fit's ridge, times the mean diagonal of the Gram matrix of the skip's inputs (the weights
    # only, not the bias); > 0. 0.2: the forecast benchmark's validation choice for its skip on ETTh1
    linear_skip_ridge: float = 0.2

    def __post_init__(self) -> None:
        c = "ForecasterConfig"
        for name, cls in (("armt", ARMTConfig), ("patch", PatchConfig), ("head", HeadConfig)):
            _check(isinstance(getattr(self, name), cls), c, name,
                   f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        D, C = self.armt.d_model, self.patch.n_channels
        _check(self.patch.d_model == D, c, "patch.d_model", f"must equal armt.d_model={D}, got {self.patch.d_model}")
        _check(self.head.d_model == D, c, "head.d_model", f"must equal armt.d_model={D}, got {self.head.d_model}")
        _check(self.head.n_channels == C, c, "head.n_channels",
               f"must equal patch.n_channels={C}, got {self.head.n_channels}")
        independent = self.patch.mode == "independent"
        _check(self.head.per_channel == independent, c, "head.per_channel",
               f"must be {independent} for patch.mode={self.patch.mode!r} (the representation is "
               f"{'[B, C, D]' if independent else '[B, D]'}), got {self.head.per_channel}")
        # A segment then holds whole time patches (all C channel tokens of a patch), never half of one.
        _check(not independent or self.armt.segment_length % C == 0, c, "armt.segment_length",
               f"must be a multiple of patch.n_channels={C} in 'independent' mode, got {self.armt.segment_length}")
        _check(self.scaling in ("std", "mean", "none"), c, "scaling",
               f"must be 'std', 'mean' or 'none', got {self.scaling!r}")
        _check(self.impute in ("none", "gaussian"), c, "impute", f"must be 'none' or 'gaussian', got {self.impute!r}")
        _check(isinstance(self.impute_min_r2, (int, float)) and not isinstance(self.impute_min_r2, bool)
               and 0.0 <= self.impute_min_r2 <= 1.0, c, "impute_min_r2",
               f"must be a fraction in [0, 1], got {self.impute_min_r2!r}")
        _check(isinstance(self.linear_skip, int) and not isinstance(self.linear_skip, bool) and self.linear_skip >= 0
               and self.linear_skip != 1, c, "linear_skip", f"must be 0 (none) or an int >= 2 (context steps the "
               f"skip reads; one step, normalised by its own statistics, is always 0), got {self.linear_skip!r}")
        _check(isinstance(self.linear_skip_ridge, (int, float)) and not isinstance(self.linear_skip_ridge, bool)
               and math.isfinite(self.linear_skip_ridge) and self.linear_skip_ridge > 0, c, "linear_skip_ridge",
               f"must be a finite number > 0 (the scaler centres each window, so its steps sum to 0 and the "
               f"least-squares fit has no unique solution without a ridge), got {self.linear_skip_ridge!r}")

    @classmethod
    def build(
        cls,
        horizon: int,
        n_channels: int = 1,
        armt: ARMTConfig | None = None,
        patch: PatchConfig | None = None,
        head: HeadConfig | None = None,
        scaling: Literal["std", "mean", "none"] = "std",
        impute: Literal["none", "gaussian"] = "none",
        impute_min_r2: float = 0.5,
        linear_skip: int = 0,
        linear_skip_ridge: float = 0.2,
    ) -> "ForecasterConfig":
        """A consistent config from its parts: the shared fields are set HERE, once, and overwrite the parts'.

        ``patch.n_channels`` and ``head.n_channels`` <- n_channels; ``patch.d_model`` and ``head.d_model`` <-
        ``armt.d_model``; ``head.horizon`` <- horizon; ``head.per_channel`` <- ``patch.mode == "independent"``.
        """
        armt = armt or ARMTConfig()
        patch = (patch or PatchConfig()).replace(n_channels=n_channels, d_model=armt.d_model)
        head = (head or HeadConfig()).replace(horizon=horizon, n_channels=n_channels, d_model=armt.d_model,
                                              per_channel=patch.mode == "independent")
        return cls(armt=armt, patch=patch, head=head, scaling=scaling, impute=impute, impute_min_r2=impute_min_r2,
                   linear_skip=linear_skip, linear_skip_ridge=linear_skip_ridge)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ForecasterConfig":
        """The inverse of ``to_dict`` (nested dicts for the parts)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"ForecasterConfig: unknown fields {sorted(unknown)}")
        parts = {"armt": ARMTConfig, "patch": PatchConfig, "head": HeadConfig}
        return cls(**{k: parts[k].from_dict(v) if k in parts and isinstance(v, dict) else v for k, v in d.items()})

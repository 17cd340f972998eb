"""Streaming runtime (DESIGN.md section 4): ``StreamingForecaster`` keeps one ``StreamState`` for a fleet of
entities (one batch row each) and updates it as observations arrive.

    sf = StreamingForecaster(model, entities=["pump-1", "pump-2"])
    sf.push(values, observed, timestamps, entities=["pump-1", "pump-2"])   # one step [N, C] or a block [N, L, C]
    fc = sf.forecast(24)            # fc.point [N, h, C], fc.quantiles [N, h, C, Q]; reads, never writes
    sf.staleness()                  # {id: steps pushed since the entity's last memory write} (-1: none yet)
    sf.save("fleet.safetensors");  sf2 = StreamingForecaster.load("fleet.safetensors", model)

The streaming model is defined by a per-segment recurrence over the ARMTForecaster's parts (patch embedder,
ARMT backbone, head), so that a full-sequence pass, segment-by-segment pushes and point-by-point pushes give the
same state (tests/test_stream.py, the streaming contract; to float rounding, tested to 1e-5). Pushes of any
granularity give bit-identical states with the model's ``schedule="sequential"``; with "auto" (the default) a push
that completes several segments at once runs them diagonally batched (schedule.py), so it equals the same steps
pushed one segment at a time to float rounding only:

- Patches are aligned to the START of the stream: patch n covers steps [n*S, n*S + P) (P = patch_len,
  S = stride). A segment is G consecutive patches (G = segment_length / tokens per patch; C tokens per patch in
  "independent" mode, 1 in "mixing" mode), so segment s covers steps [s*G*S, s*G*S + W) with W = G*S + P - S.
- Causal scaler: per (entity, channel) the statistics (count, mean, M2, sum |x|) of every observed value up to
  the end of the segment being processed (merged segment by segment with Chan's parallel formula, in float64).
  With ``scaler_window`` = w steps (``from_predictor``'s default: the model's training context) the statistics
  forget: before a segment's k observed values of a channel are merged, the weight of everything before them is
  multiplied by exp(-k / w) (exp(-G*S / w) for a fully observed segment; a channel with no new values keeps its
  statistics through an outage), so they follow a drifting series as the model's own context window does in
  training (with the whole history, a series that drifts ends up far outside the units the model was trained in).
  A completed segment is normalised with those statistics ("std": (x - mean) / sqrt(var + 1e-5), "mean":
  x / mean|x|, "none"), the same formulas as the gluonts scalers the forecaster trains with.
- Each completed segment runs through the backbone (read and write, ``ARMT.forward``); its steps are then
  dropped, except the last P steps, which later patches (stride < P) and the forecast's tail patch need.
- ``forecast`` normalises with the statistics up to the last step, embeds the partial segment's complete patches
  plus a "tail" patch of the last P steps (the last patch always ends at the last step, as in
  ``ARMTForecaster``), runs them through one segment step that reads the memory and discards the write, and
  applies the head to the last patch's outputs. Right after a segment completes, the tail is that segment's last
  patch: its output, cached in the state at completion, is used.
- A model with a linear skip (``ForecasterConfig.linear_skip`` = n) keeps each entity's last n steps in a ring;
  ``forecast`` adds the skip's forecast from them (``ARMTForecaster.skip_forecast``: the n steps normalised by
  their own statistics, as in a batch forecast whose context holds them), whatever the stream's length.

Memory: the state of an entity is fixed-size (per layer A [H, K, Dv] and z [H, K], a buffer of G*S + P steps,
the scaler statistics, counters, the last timestamp and, with a linear skip, its last n steps), whatever the
stream length. A fleet grown by ``join`` keeps up to a quarter more rows allocated, so that entities joining one at a
time do not copy the whole fleet at every join.

What ``push`` accepts (all checks happen before anything changes: a rejected push leaves the state
bit-identical):

- ``values``: int or float numbers (numpy array, torch tensor, nested lists, a Python number).
  Single-entity form (``entities`` is None or one id): [C] (one step) or [L, C] (a block); a scalar when C == 1.
  Fleet form (``entities`` a list of N distinct ids): [N, C] (one step each) or [N, L, C] (a block each);
  [N] when C == 1. L == 0 and N == 0 are no-ops.
- ``observed``: None, or the shape of ``values``, bool or 0/1 numbers (nonzero = observed). With None a NaN value
  means "missing" and every other value is observed. Values must be finite where observed.
- ``timestamps``: None, or integers / numpy datetime64 (stored as int64; datetime64 as nanoseconds, so dates from
  1677-09-21 to 2262-04-11; integers above int64's minimum, which means "none yet"): a scalar (one step) or [L] in
  the single form, [N] or [N, L] in the fleet form. Per entity they must strictly increase, within the push and
  against the entity's last timestamp. They only order the steps: each pushed step is the step after the entity's
  previous one, whatever the time between them (the stream has no time grid; push a missing step as NaN or with
  ``observed`` False).
- ``channels``: None (the last axis of ``values`` is the model's channels, in order), or a list of channel names
  naming the columns of ``values``: a subset, in any order; the channels left out are unobserved for these steps.
- ``entities``: ids (str or int) that joined the fleet (``join``; the constructor's ``entities``).

Errors (all subclasses of ``StreamError``, itself a ``ValueError``):
    ShapeError            values / observed / timestamps / entities of the wrong shape, or a wrong type of array
    UnknownChannelError   a channel name the model does not have, or a channel named twice
    UnknownEntityError    an entity id that is not in the fleet (push, forecast, leave)
    DuplicateEntityError  an entity named twice in one call, or joined twice
    TimeOrderError        a timestamp not strictly after the previous one of the same entity
    NonFiniteValueError   NaN / inf at an observed position (or inf with observed=None)
    ArgumentError         forecast(h, quantiles): h not in [1, horizon], levels the head cannot give
    StreamFileError       (also a ``StateFileError``) a state file that is unreadable, of another format, or made
                          for another model (``ModelMismatchError``)

``CompileError`` (a ``RuntimeError``, not a ``StreamError``: the input was fine) is raised by a push or forecast of a
``compile=True`` forecaster when torch.compile cannot compile its step (no C++ compiler, say); the state is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .backbone import PendingWrite
from .forecaster import ARMTForecaster
from .state import MemoryState, StateFileError, atomic_save_safetensors, load_safetensors

__all__ = [
    "ArgumentError",
    "CompileError",
    "DuplicateEntityError",
    "ModelMismatchError",
    "NonFiniteValueError",
    "ShapeError",
    "StreamError",
    "StreamFileError",
    "StreamForecast",
    "StreamState",
    "StreamingForecaster",
    "TimeOrderError",
    "UnknownChannelError",
    "UnknownEntityError",
]

_FORMAT = "armt_ts.StreamState"
_FORMAT_VERSION = 1
_STD_MIN_SCALE = 1e-5  # gluonts StdScaler's minimum_scale
_MEAN_MIN_SCALE = 1e-10  # gluonts MeanScaler's minimum_scale
_MEAN_DEFAULT_SCALE = 1.0  # the forecaster's MeanScaler default_scale (a series with no observation)
_NO_TIME = torch.iinfo(torch.int64).min
# Entities per backbone call when many complete a segment at once (see StreamingForecaster._advance_group).
FLEET_CHUNK = 256


# ---------------------------------------------------------------------------------------------------
# Errors


def _tensor_to_numpy(name: str, t: Tensor) -> np.ndarray:
    """A tensor's values as numpy; float types numpy lacks (bfloat16) as float32, which holds them exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    try:
        return t.numpy()
    except TypeError as e:  # a dtype numpy cannot hold (e.g. float8, quantised)
        raise ShapeError(f"{name}: tensor of dtype {t.dtype} ({e})") from None


def _datetime_text(ns: int) -> str:
    """int64 nanoseconds since 1970 as an ISO datetime, to the second unless it has a fraction of one."""
    t = np.datetime64(ns, "ns")
    return str(t.astype("datetime64[s]") if ns % 1_000_000_000 == 0 else t)


_NS_PER_UNIT = {"W": 7 * 86_400 * 10**9, "D": 86_400 * 10**9, "h": 3_600 * 10**9, "m": 60 * 10**9, "s": 10**9,
                "ms": 10**6, "us": 10**3, "ns": 1}


def datetimes_to_ns(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """datetime64 values (no NaT) -> (int64 nanoseconds since 1970, bool mask of the values that are not a whole
    nanosecond in (int64 min, int64 max]: those get 0). numpy's conversion to nanoseconds wraps around silently, and
    its conversion back to a coarser unit overflows within one unit of int64's minimum (1677-09-22 in days comes back
    as 2262-04-11), so units of a fixed length are checked in integers."""
    ts = np.asarray(ts)
    unit, count = np.datetime_data(ts.dtype)
    if unit in _NS_PER_UNIT:
        f = _NS_PER_UNIT[unit] * count
        v = ts.astype(np.int64)
        wrong = (v < -(-(_NO_TIME + 1) // f)) | (v > np.iinfo(np.int64).max // f)
        return np.where(wrong, 0, v) * f, wrong
    # months, years (no fixed length; never within a unit of the range's ends) and units finer than a nanosecond
    ns = ts.astype("datetime64[ns]")
    wrong = np.isnat(ns) | (ns.astype(ts.dtype) != ts)
    return np.where(wrong, 0, ns.astype(np.int64)), wrong


class StreamError(ValueError):
    """Base class of every error a StreamingForecaster raises for bad input; the state is left unchanged."""


class ShapeError(StreamError):
    """values / observed / timestamps / entities have the wrong shape or type."""


class ArgumentError(StreamError):
    """A forecast request out of range: h not in [1, horizon], or quantile levels the head cannot give."""


class UnknownChannelError(StreamError):
    """A channel name the model does not know, or one named twice."""


class UnknownEntityError(StreamError):
    """An entity id that is not in the fleet."""


class DuplicateEntityError(StreamError):
    """An entity named twice in one call, or joined while already in the fleet."""


class TimeOrderError(StreamError):
    """A timestamp that is not strictly after the entity's previous one (time going backwards or repeating).

    ``entity``, ``time`` and ``previous`` (int64: nanoseconds since 1970 for datetimes, else the integers pushed) say
    which, so a caller that knows its time format can word its own message."""

    def __init__(self, message: str, entity: Any = None, time: int | None = None, previous: int | None = None):
        super().__init__(message)
        self.entity, self.time, self.previous = entity, time, previous


class NonFiniteValueError(StreamError):
    """NaN or inf at an observed position."""


class StreamFileError(StreamError, StateFileError):
    """A stream state file that cannot be used (missing, truncated, another format or version)."""


class ModelMismatchError(StreamFileError):
    """A stream state file written for another model (configuration or weights differ)."""


class CompileError(RuntimeError):
    """``compile=True``: torch.compile could not compile a segment step (the message names the cause)."""


# ---------------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class StreamState:
    """Everything a stream carries between pushes, one row per entity (N entities).

    memory: MemoryState, per layer A [N, H, K, Dv] and z [N, H, K].
    buf_values [N, G*S + P, C] float32 and buf_observed [N, G*S + P, C] bool: raw steps from S steps before the
        current segment's first step; ``fill`` [N] int64 of them are valid (the rest are zero / False).
    stat_n, stat_mean, stat_m2, stat_abs [N, C] float64: causal scaler statistics of the observed values up to
        the end of the last completed segment (count, mean, sum of squared deviations, sum of |x|).
    rep [N, tokens per patch, D] float32: the backbone's output at the last completed segment's last patch.
    hist_values [N, n, C] float32 and hist_observed [N, n, C] bool: the last n pushed steps of a model with a
        linear skip (``ForecasterConfig.linear_skip`` = n; n = 0 without one), a ring: step t (counted from the
        entity's first) sits at t mod n.
    segments [N] int64: completed segments. steps [N] int64: steps pushed.
    last_write_step [N] int64: the step count at the end of the last segment written to memory (-1: never).
    last_time [N] int64: last timestamp (int64 min: none seen).
    entities: the entity ids, row order.
    """

    memory: MemoryState
    buf_values: Tensor
    buf_observed: Tensor
    fill: Tensor
    stat_n: Tensor
    stat_mean: Tensor
    stat_m2: Tensor
    stat_abs: Tensor
    rep: Tensor
    segments: Tensor
    steps: Tensor
    last_write_step: Tensor
    last_time: Tensor
    hist_values: Tensor
    hist_observed: Tensor
    entities: tuple = ()

    TENSOR_FIELDS = ("buf_values", "buf_observed", "fill", "stat_n", "stat_mean", "stat_m2", "stat_abs", "rep",
                     "segments", "steps", "last_write_step", "last_time", "hist_values", "hist_observed")
    HISTORY_FIELDS = ("hist_values", "hist_observed")  # empty (and left out of files) without a linear skip

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the state by name (memory as ``memory.A.l`` / ``memory.z.l``)."""
        out = {f"memory.A.{l}": a for l, a in enumerate(self.memory.A)}
        out |= {f"memory.z.{l}": z for l, z in enumerate(self.memory.z)}
        out |= {name: getattr(self, name) for name in self.TENSOR_FIELDS
                if name not in self.HISTORY_FIELDS or getattr(self, name).shape[1]}
        return out

    def clone(self) -> "StreamState":
        return dataclasses.replace(self, memory=self.memory.clone(),
                                   **{n: getattr(self, n).clone() for n in self.TENSOR_FIELDS})

    def equal(self, other: "StreamState") -> bool:
        """Bit-exact equality of every tensor and of the entity list."""
        a, b = self.tensors(), other.tensors()
        return (self.entities == other.entities and a.keys() == b.keys()
                and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def select(self, rows: Tensor) -> "StreamState":
        """The state of the entities at ``rows`` (a LongTensor), in that order."""
        mem = MemoryState(tuple(a.index_select(0, rows) for a in self.memory.A),
                          tuple(z.index_select(0, rows) for z in self.memory.z))
        ents = tuple(self.entities[i] for i in rows.tolist())
        return dataclasses.replace(self, memory=mem, entities=ents,
                                   **{n: getattr(self, n).index_select(0, rows) for n in self.TENSOR_FIELDS})

    @staticmethod
    def concat(a: "StreamState", b: "StreamState") -> "StreamState":
        mem = MemoryState(tuple(torch.cat([x, y]) for x, y in zip(a.memory.A, b.memory.A)),
                          tuple(torch.cat([x, y]) for x, y in zip(a.memory.z, b.memory.z)))
        return dataclasses.replace(a, memory=mem, entities=a.entities + b.entities,
                                   **{n: torch.cat([getattr(a, n), getattr(b, n)]) for n in a.TENSOR_FIELDS})


class StreamForecast(NamedTuple):
    """What ``StreamingForecaster.forecast`` returns (data units)."""

    entities: tuple  # the N entity ids, row order
    point: Tensor  # [N, h, C]: mean (distribution heads), median (quantile head) or the point forecast
    quantiles: Tensor  # [N, h, C, Q] at ``levels``
    levels: tuple[float, ...]


def _fields(st: StreamState) -> dict[str, Tensor]:
    """Every tensor of a state by name, the empty history ones included (``tensors`` leaves those out)."""
    out = {f"memory.A.{l}": a for l, a in enumerate(st.memory.A)}
    out |= {f"memory.z.{l}": z for l, z in enumerate(st.memory.z)}
    return out | {name: getattr(st, name) for name in StreamState.TENSOR_FIELDS}


# ---------------------------------------------------------------------------------------------------
# Scaler statistics (float64; Chan et al.'s parallel merge of (count, mean, M2))


def _block_stats(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [n, L, C] float64 (0 where unobserved), m [n, L, C] float64 0/1 -> (count, mean, M2, sum|x|), each [n, C]."""
    n = m.sum(1)
    mean = x.sum(1) / n.clamp_min(1.0)
    m2 = ((x - mean.unsqueeze(1)) * m).square().sum(1)
    return n, mean, m2, x.abs().sum(1)


def _merge_stats(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    na, ma, m2a, abs_a = a
    nb, mb, m2b, abs_b = b
    n = na + nb
    safe = n.clamp_min(1.0)
    delta = mb - ma
    mean = ma + delta * (nb / safe)
    m2 = m2a + m2b + delta.square() * (na * nb / safe)
    return n, mean, m2, abs_a + abs_b


def _bad_window(w: Any) -> bool:
    """Not a valid ``scaler_window``: None or an int >= 1."""
    return w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1)


def _forget(stats: tuple[Tensor, ...], new: Tensor, window: int | None) -> tuple[Tensor, ...]:
    """Statistics [n, C] before ``new`` [n, C] more observed values are merged in: every past observation's weight
    multiplied by exp(-new / window) (count, M2 and sum|x| scale; the mean does not), so they forget as new values
    arrive, and a channel with none keeps its statistics. window None: no forgetting."""
    if window is None:
        return stats
    keep = torch.exp(-new / window)
    n, mean, m2, abs_sum = stats
    return n * keep, mean, m2 * keep, abs_sum * keep


def _loc_scale(kind: str, stats: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """-> loc [n, C], scale [n, C] float32, the gluonts scalers' formulas on the statistics."""
    n, mean, m2, abs_sum = stats
    if kind == "std":
        loc = mean
        scale = torch.sqrt(m2 / n.clamp_min(1.0) + _STD_MIN_SCALE)
    elif kind == "mean":
        loc = torch.zeros_like(mean)
        scale = torch.where(n > 0, abs_sum / n.clamp_min(1.0), torch.full_like(mean, _MEAN_DEFAULT_SCALE))
        scale = scale.clamp_min(_MEAN_MIN_SCALE)
    else:
        loc, scale = torch.zeros_like(mean), torch.ones_like(mean)
    return loc.float(), scale.float()


# ---------------------------------------------------------------------------------------------------
# The forecaster


def model_fingerprint(model: ARMTForecaster) -> str:
    """sha256 of the model's configuration and weights: a state file records it, ``load`` checks it."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_entity_id(e: Any) -> Hashable:
    if isinstance(e, (np.integer, np.str_)):
        e = e.item()
    if isinstance(e, bool) or not isinstance(e, (int, str)):
        raise ShapeError(f"entity ids must be str or int, got {e!r} ({type(e).__name__})")
    return e


class StreamingForecaster:
    """A trained ``ARMTForecaster`` run as a stream over a fleet of entities; see the module docstring.

    Args:
        model: the trained forecaster (``from_predictor`` / ``from_directory`` take a saved ``ARMTPredictor``).
        entities: ids of the initial fleet (default: one entity, id 0).
        channels: names of the model's C channels (default "0", "1", ...).
        device: where the state lives and the model runs (default: the model's device).
        bf16: run the patch embedder and the backbone under bf16 autocast (the memory math, the state, the scaler
            statistics and the head stay fp32). Forecasts differ from fp32 ones by bf16 rounding; the streaming
            contract (block and point pushes give the same state, save / load) holds as in fp32.
        scaler_window: None (default here): the scaler statistics weigh the whole history equally. w: exponential
            forgetting, segment by segment, with time constant w observed values per channel (w steps of a fully
            observed series; see the module docstring).
            ``from_predictor`` / ``from_directory`` default to the predictor's context length. A saved state keeps
            its window; ``load`` restores it.
        compile: run a fleet's lockstep segment update (every entity completing one segment in the same push, as
            single-step pushes of a whole fleet or of one entity do) through ``torch.compile`` (inductor: fused
            elementwise kernels, far fewer operator calls; the first such push compiles, about 5-10 s, and a second
            fleet size once more, after which one graph serves every size), and so does a forecast's read of the
            memory where the state holds no cached output (a forecast between segment ends). Other pushes run
            eagerly. Values agree with the eager ones to float rounding, not bit for bit, so the streaming
            contract's bit-identity between block and point pushes holds only within rounding; save / load are
            unaffected (a run setting, like bf16).
            Needs a C++ compiler on the CPU (a ``CompileError`` at the first compiled step otherwise).

    The forecaster owns its ``state`` and updates it in place after a push has been validated (copying the state
    of thousands of entities at every update would cost more than the update); ``state.clone()`` is a snapshot.

    ``notes``: a dict of the caller's own JSON values (str keys), saved with the state and restored by ``load``
    (``armt-ts stream`` records there the kind of timestamp its input had); empty in a new forecaster.
    """

    def __init__(
        self,
        model: ARMTForecaster,
        entities: Sequence[Hashable] | None = None,
        channels: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        bf16: bool = False,
        scaler_window: int | None = None,
        compile: bool = False,
    ):
        if not isinstance(model, ARMTForecaster):
            raise TypeError(f"model: expected an ARMTForecaster, got {type(model).__name__}")
        self.model = model.eval()
        c = model.config
        if model.imputer is not None and not bool(model.imputer.fitted):
            raise ValueError("model: its channel imputer (config.impute='gaussian') is not fitted; call "
                             "model.fit_imputer(train_values, train_observed) first")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if not isinstance(bf16, bool):
            raise TypeError(f"bf16: expected a bool, got {bf16!r}")
        self.bf16 = bf16
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {compile!r}")
        self.compile = compile
        self._compiled: dict[str, Any] = {}  # torch.compile'd segment steps ("update", "read"), built at first use
        if _bad_window(scaler_window):
            raise ValueError(f"scaler_window: expected None or an int >= 1 (steps), got {scaler_window!r}")
        self.scaler_window = scaler_window
        self.model.to(self.device)
        self.C = c.patch.n_channels
        self.P, self.S = c.patch.patch_len, c.patch.stride
        self.tokens_per_patch = self.C if c.patch.mode == "independent" else 1
        self.G = c.armt.segment_length // self.tokens_per_patch  # patches per segment
        if self.G < 1:
            raise ValueError(f"segment_length={c.armt.segment_length} holds no whole patch of "
                             f"{self.tokens_per_patch} tokens")
        self.capacity = self.G * self.S + self.P  # buffer steps
        self.window = self.capacity - self.S  # steps one segment's patches cover
        self.horizon = c.head.horizon
        self.scaling = c.scaling
        self.skip_steps = c.linear_skip  # the last steps the linear skip reads (0: no skip)
        names = [str(i) for i in range(self.C)] if channels is None else [str(ch) for ch in channels]
        if len(names) != self.C or len(set(names)) != self.C:
            raise UnknownChannelError(f"channels: need {self.C} distinct names, got {names}")
        self.channels = tuple(names)
        self._channel_index = {n: i for i, n in enumerate(names)}
        self.fingerprint = model_fingerprint(model)
        self.state = self._empty_state(())
        self._spare: dict[str, Tensor] = {}  # see _appended
        self.notes: dict[str, Any] = {}
        self._rows: dict[Hashable, int] = {}
        self.join([0] if entities is None else entities)

    # --- construction from saved models -------------------------------------------------------------

    @classmethod
    def from_predictor(cls, predictor: Any, **kwargs: Any) -> "StreamingForecaster":
        """From an ``ARMTPredictor`` (``armt-ts forecast --save-model``). ``scaler_window`` defaults to the
        predictor's context length: the stream's statistics then cover about the steps the model was trained to
        read (pass None for the whole history)."""
        kwargs.setdefault("scaler_window", predictor.prediction_net.model.context_length)
        return cls(predictor.prediction_net.model.forecaster, **kwargs)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> "StreamingForecaster":
        from .gluonts import ARMTPredictor

        predictor = ARMTPredictor.deserialize(directory, device=device)
        return cls.from_predictor(predictor, **kwargs)

    # --- fleet ---------------------------------------------------------------------------------------

    @property
    def entities(self) -> tuple:
        return self.state.entities

    def entities_with_data(self, entities: Sequence[Hashable] | None = None) -> list:
        """The entities with at least one observed value so far (in the scaler statistics or the buffer), in row
        order; a forecast for any other one has nothing but the model's prior to go on. ``entities``: look at
        these only (a few of a large fleet cost a few rows, not the fleet)."""
        st = self.state
        names = st.entities
        rows = slice(None)
        if entities is not None:
            rows = self._rows_of(self._as_id_list(entities), "entities_with_data").sort().values
            names = [names[i] for i in rows.tolist()]
        steps = torch.arange(st.buf_observed.shape[1], device=st.buf_observed.device)
        buffered = (st.buf_observed[rows] & (steps[None, :, None] < st.fill[rows, None, None])).flatten(1).any(1)
        seen = ((st.stat_n[rows].sum(1) > 0) | buffered).cpu().tolist()
        return [e for e, ok in zip(names, seen) if ok]

    def staleness(self, entities: Sequence[Hashable] | None = None) -> dict:
        """How stale each entity's memory is: {id: steps pushed since its last segment was written to memory}.

        -1 for an entity whose first segment is not complete yet (nothing written). The steps in between wait in
        the buffer: forecasts read them, but the associative memory has not absorbed them. Reads nothing else.
        """
        ids = list(self.entities) if entities is None else self._as_id_list(entities)
        rows = self._rows_of(ids, "staleness")
        st = self.state
        last = st.last_write_step.index_select(0, rows)
        behind = torch.where(last >= 0, st.steps.index_select(0, rows) - last, torch.full_like(last, -1))
        return dict(zip(ids, behind.tolist()))

    def _empty_state(self, entities: tuple) -> StreamState:
        n, C, dev = len(entities), self.C, self.device
        c = self.model.config
        f64 = dict(dtype=torch.float64, device=dev)
        i64 = dict(dtype=torch.int64, device=dev)
        return StreamState(
            memory=MemoryState.zeros(c.armt, n, device=dev),
            buf_values=torch.zeros(n, self.capacity, C, device=dev),
            buf_observed=torch.zeros(n, self.capacity, C, dtype=torch.bool, device=dev),
            fill=torch.full((n,), self.S, **i64),  # the first S positions are left padding (unobserved)
            stat_n=torch.zeros(n, C, **f64), stat_mean=torch.zeros(n, C, **f64),
            stat_m2=torch.zeros(n, C, **f64), stat_abs=torch.zeros(n, C, **f64),
            rep=torch.zeros(n, self.tokens_per_patch, c.armt.d_model, device=dev),
            segments=torch.zeros(n, **i64), steps=torch.zeros(n, **i64),
            last_write_step=torch.full((n,), -1, **i64), last_time=torch.full((n,), _NO_TIME, **i64),
            hist_values=torch.zeros(n, self.skip_steps, C, device=dev),
            hist_observed=torch.zeros(n, self.skip_steps, C, dtype=torch.bool, device=dev),
            entities=entities,
        )

    def join(self, entities: Sequence[Hashable]) -> None:
        """Add entities with an empty memory, buffer and statistics (new rows at the end)."""
        ids = tuple(_check_entity_id(e) for e in self._as_id_list(entities))
        if len(set(ids)) != len(ids):
            raise DuplicateEntityError(f"join: an entity is named twice in {list(ids)}")
        present = [e for e in ids if e in self._rows]
        if present:
            raise DuplicateEntityError(f"join: already in the fleet: {present[:5]}")
        if not ids:
            return
        first = self.state.num_entities
        self.state = self._appended(self._empty_state(ids))
        # the new rows only: rebuilding the whole index made N one-at-a-time joins (a long-layout file's ids, as
        # they appear) cost O(N^2), 57 s for 32000 entities
        self._rows.update((e, first + i) for i, e in enumerate(ids))

    def _appended(self, new: StreamState) -> StreamState:
        """The state with ``new``'s rows after its own. Each tensor is a view of the first rows of a larger one
        (``_spare``), grown by a quarter when full: entities joining one at a time (a long-layout file's ids, as they
        appear) copy the fleet's state O(log N) times instead of at every join. A tensor that is no longer such a
        view (replaced by an update, ``leave`` or ``load``) is copied into a new one."""
        old = self.state
        n, k = old.num_entities, new.num_entities
        spare: dict[str, Tensor] = {}
        views: dict[str, Tensor] = {}
        added = _fields(new)
        for name, a in _fields(old).items():
            b, room = added[name], self._spare.get(name)
            if (room is None or room.shape[0] < n + k or room.shape[1:] != a.shape[1:] or room.dtype != a.dtype
                    or (n and (a.data_ptr() != room.data_ptr() or a.stride() != room.stride()))):
                rows = n + k if n == 0 else max(n + k, n + n // 4)  # a fleet made at once gets no spare rows
                room = torch.empty((rows, *a.shape[1:]), dtype=a.dtype, device=a.device)
                room[:n].copy_(a)
            room[n:n + k].copy_(b)
            spare[name], views[name] = room, room[:n + k]
        # kept only where there is room to spare: a fleet made at once holds no second reference to its tensors,
        # which an update that replaces a field would otherwise keep alive until the next join
        self._spare = {name: room for name, room in spare.items() if room.shape[0] > n + k}
        layers = old.memory.num_layers
        mem = MemoryState(tuple(views[f"memory.A.{l}"] for l in range(layers)),
                          tuple(views[f"memory.z.{l}"] for l in range(layers)))
        return StreamState(memory=mem, entities=old.entities + new.entities,
                           **{f: views[f] for f in StreamState.TENSOR_FIELDS})

    def leave(self, entities: Sequence[Hashable]) -> None:
        """Remove entities and their state; the others keep theirs."""
        rows = self._rows_of(self._as_id_list(entities), "leave")
        gone = set(rows.tolist())
        keep = torch.tensor([i for i in range(self.state.num_entities) if i not in gone], dtype=torch.long,
                            device=self.device)
        self.state = self.state.select(keep)
        self._spare = {}  # the next join copies the rows into new room (and the old room is freed now)
        self._rows = {e: i for i, e in enumerate(self.state.entities)}

    @staticmethod
    def _as_id_list(entities: Any) -> list:
        if isinstance(entities, (str, int, np.integer, np.str_)):
            return [entities]
        if isinstance(entities, (torch.Tensor, np.ndarray)):
            if entities.ndim != 1:
                raise ShapeError(f"entities: expected a 1-D list of ids, got shape {tuple(entities.shape)}")
            return entities.tolist()
        try:
            return list(entities)
        except TypeError:
            raise ShapeError(f"entities: expected a list of ids, got {type(entities).__name__}") from None

    def _rows_of(self, ids: list, what: str) -> Tensor:
        ids = [_check_entity_id(e) for e in ids]
        if len(set(ids)) != len(ids):
            raise DuplicateEntityError(f"{what}: an entity is named twice")
        missing = [e for e in ids if e not in self._rows]
        if missing:
            raise UnknownEntityError(f"{what}: not in the fleet: {missing[:5]}"
                                     f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}")
        return torch.tensor([self._rows[e] for e in ids], dtype=torch.long, device=self.device)

    # --- push ----------------------------------------------------------------------------------------

    def push(
        self,
        values: Any,
        observed: Any = None,
        timestamps: Any = None,
        entities: Any = None,
        channels: Sequence[str] | None = None,
    ) -> int:
        """Append one step or a block for one entity or a fleet (shapes in the module docstring).

        Returns the number of segments completed (and written to memory) by this push, over all entities.
        Raises a StreamError subclass, leaving the state unchanged, when the input is rejected.
        """
        rows, x, m, t = self._validate(values, observed, timestamps, entities, channels)
        if rows.numel() == 0 or x.shape[1] == 0:
            return 0
        x, m = self.model.impute(x, m)  # step-wise (config.impute), as ARMTForecaster.forward does
        return self._advance(rows, x, m, t)

    def _validate(self, values, observed, timestamps, entities, channels):
        fleet = entities is not None and not isinstance(entities, (str, int, np.integer, np.str_))
        if fleet:
            ids = self._as_id_list(entities)
            rows = self._rows_of(ids, "push")
        else:
            if entities is None:
                if self.state.num_entities != 1:
                    raise ShapeError(f"push: the fleet has {self.state.num_entities} entities; name them with "
                                     "entities=[...]")
                rows = torch.zeros(1, dtype=torch.long, device=self.device)
            else:
                rows = self._rows_of([entities], "push")
        n = rows.numel()
        cols = None if channels is None else self._channel_columns(channels)
        width = self.C if cols is None else len(cols)
        raw = self._as_array("values", values)
        o_raw = None if observed is None else self._as_array("observed", observed, allow_bool=True)
        if o_raw is not None and o_raw.shape != raw.shape:
            raise ShapeError(f"observed: expected the shape of values {tuple(raw.shape)}, got {tuple(o_raw.shape)}")
        x = raw
        # -> [n, L, width]
        if fleet:
            if x.ndim == 1 and width == 1:
                x = x[:, None, None]
            elif x.ndim == 2:
                x = x[:, None, :]
            if x.ndim != 3 or x.shape[0] != n or x.shape[2] != width:
                raise ShapeError(f"values: expected [N, C] or [N, L, C] with N = {n} entities and C = {width}, "
                                 f"got shape {tuple(raw.shape)}")
        else:
            if x.ndim == 0 and width == 1:
                x = x.reshape(1, 1)
            elif x.ndim == 1:
                x = x[None, :]
            if x.ndim != 2 or x.shape[1] != width:
                raise ShapeError(f"values: expected [C] or [L, C] with C = {width} for one entity, "
                                 f"got shape {tuple(raw.shape)}")
            x = x[None]
        L = x.shape[1]
        if o_raw is None:
            obs = ~np.isnan(x)
        else:
            if o_raw.dtype.kind == "f" and np.isnan(o_raw).any():
                raise ShapeError("observed: NaN in the mask (expected bool or 0/1)")
            obs = o_raw.reshape(x.shape) != 0
        xf = x.astype(np.float32)  # a finite float64 beyond float32's range becomes inf: rejected below
        bad = obs & ~np.isfinite(xf)
        if bad.any():
            i, s, c = (int(v) for v in np.argwhere(bad)[0])
            where = f"entity {self.state.entities[int(rows[i])]!r}, step {s} of the push, channel " \
                    f"{(self.channels if channels is None else list(channels))[c]!r}"
            raise NonFiniteValueError(f"values: {int(bad.sum())} non-finite observed value(s), first at {where}: "
                                      f"{x[i, s, c]!r}" + ("" if observed is not None else
                                                           " (NaN means missing; inf is rejected)"))
        if cols is not None:
            full = np.zeros((n, L, self.C), np.float32)
            fobs = np.zeros((n, L, self.C), bool)
            full[:, :, cols] = xf
            fobs[:, :, cols] = obs
            xf, obs = full, fobs
        xf = np.where(obs, xf, np.float32(0.0))
        t = None if timestamps is None else self._check_times(timestamps, rows, n, L, fleet)
        xt = torch.from_numpy(np.ascontiguousarray(xf)).to(self.device)
        mt = torch.from_numpy(np.ascontiguousarray(obs)).to(self.device)
        return rows, xt, mt, t

    @staticmethod
    def _as_array(name: str, a: Any, allow_bool: bool = False) -> np.ndarray:
        if isinstance(a, torch.Tensor):
            a = _tensor_to_numpy(name, a)
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as e:
            raise ShapeError(f"{name}: not an array of numbers ({e})") from None
        kinds = "iuf" + ("b" if allow_bool else "")
        if arr.dtype.kind not in kinds:
            raise ShapeError(f"{name}: expected {'bool or ' if allow_bool else ''}int / float numbers, "
                             f"got dtype {arr.dtype}")
        return arr

    def _channel_columns(self, channels: Sequence[str]) -> list[int]:
        if isinstance(channels, str):
            raise ShapeError("channels: expected a list of channel names, got one string")
        names = [str(ch) for ch in channels]
        unknown = [ch for ch in names if ch not in self._channel_index]
        if unknown:
            raise UnknownChannelError(f"channels: unknown {unknown[:5]}; the model's channels are "
                                      f"{list(self.channels)}")
        if len(set(names)) != len(names):
            raise UnknownChannelError(f"channels: a channel is named twice in {names}")
        return [self._channel_index[ch] for ch in names]

    def _check_times(self, timestamps: Any, rows: Tensor, n: int, L: int, fleet: bool) -> Tensor:
        if isinstance(timestamps, torch.Tensor):
            timestamps = _tensor_to_numpy("timestamps", timestamps)
        ts = np.asarray(timestamps)
        dates = ts.dtype.kind == "M"
        if dates:
            if np.isnat(ts).any():
                raise ShapeError("timestamps: NaT (not a time) is not a timestamp")
            ts, wrong = datetimes_to_ns(ts)
            if wrong.any():
                bad = np.asarray(timestamps).reshape(-1)[int(np.argmax(wrong.reshape(-1)))]
                raise ShapeError(f"timestamps: {bad} is not a whole nanosecond between {_datetime_text(_NO_TIME + 1)} "
                                 f"and {_datetime_text(np.iinfo(np.int64).max)} (stored as int64 nanoseconds)")
        elif ts.dtype.kind not in "iu":
            raise ShapeError(f"timestamps: expected integers or numpy datetime64, got dtype {ts.dtype}")
        elif ts.size and (int(ts.max()) > np.iinfo(np.int64).max or int(ts.min()) <= _NO_TIME):
            bad = int(ts.max()) if int(ts.max()) > np.iinfo(np.int64).max else int(ts.min())
            raise ShapeError(f"timestamps: {bad} is outside the stored int64 range ({_NO_TIME + 1} ... "
                             f"{np.iinfo(np.int64).max})")
        ts = ts.astype(np.int64)
        if fleet:
            if ts.ndim == 1 and L == 1:
                ts = ts[:, None]
            if ts.shape != (n, L):
                raise ShapeError(f"timestamps: expected [N] (one step) or [N, L] = [{n}, {L}], got {ts.shape}")
        else:
            if ts.ndim == 0 and L == 1:
                ts = ts.reshape(1)
            if ts.shape != (L,):
                raise ShapeError(f"timestamps: expected a scalar (one step) or [L] = [{L}], got {ts.shape}")
            ts = ts[None]
        t = torch.from_numpy(np.ascontiguousarray(ts)).to(self.device)
        prev = self.state.last_time.index_select(0, rows).unsqueeze(1)
        seq = torch.cat([prev, t], dim=1)
        back = seq[:, 1:] <= seq[:, :-1]
        back[:, 0] &= prev[:, 0] != _NO_TIME
        if back.any():
            i, s = (int(v) for v in back.nonzero()[0])
            entity, now, before = self.state.entities[int(rows[i])], int(seq[i, s + 1]), int(seq[i, s])
            shown = _datetime_text if dates else str
            raise TimeOrderError(f"timestamps: entity {entity!r}, step {s} of the push: {shown(now)} is not after the "
                                 f"previous timestamp {shown(before)}", entity=entity, time=now, previous=before)
        return t

    # --- the recurrence ------------------------------------------------------------------------------

    @torch.no_grad()
    def _advance(self, rows: Tensor, x: Tensor, m: Tensor, t: Tensor | None) -> int:
        """Append x / m [n, L, C] to the entities at ``rows``; run every segment they complete. Computes all
        new values first and commits them at the end (an exception in the model leaves the state as it was)."""
        st = self.state
        fill = st.fill.index_select(0, rows)
        first = st.segments.index_select(0, rows) == 0
        # Rows with the same (fill, first) advance together; a fleet in lockstep is one group.
        key = fill * 2 + first.long()
        groups = [rows] if bool((key == key[0]).all()) else [rows[key == k] for k in torch.unique(key)]
        locs = [None] if len(groups) == 1 else [torch.nonzero(key == k).squeeze(1) for k in torch.unique(key)]
        updates = [self._advance_group(g, x if li is None else x.index_select(0, li),
                                       m if li is None else m.index_select(0, li))
                   for g, li in zip(groups, locs)]
        completed = 0
        for g, up in zip(groups, updates):
            completed += self._commit(g, up)
        st = self.state
        if self.skip_steps:
            self._remember(rows, x, m)
        st.steps.index_add_(0, rows, torch.full_like(rows, x.shape[1]))
        if t is not None:
            st.last_time.index_copy_(0, rows, t[:, -1])
        return completed

    def _remember(self, rows: Tensor, x: Tensor, m: Tensor) -> None:
        """The linear skip's ring: the last min(L, n) steps of x / m [g, L, C] at their slots, step t at t mod n
        (``steps`` not yet advanced). Entities at one step count (a fleet in lockstep) write slices."""
        st, n, L = self.state, self.skip_steps, x.shape[1]
        k = min(L, n)
        keep = m[:, L - k:] != 0
        vals = torch.where(keep, x[:, L - k:], torch.zeros((), dtype=x.dtype, device=x.device))
        steps = st.steps.index_select(0, rows)
        if bool((steps == steps[0]).all()):
            s = (int(steps[0]) + L - k) % n
            first = min(k, n - s)
            at = slice(None) if self._all_rows(rows) else rows
            for lo, hi, a, b in ((s, s + first, 0, first), (0, k - first, first, k)):
                if hi > lo:
                    st.hist_values[at, lo:hi] = vals[:, a:b]
                    st.hist_observed[at, lo:hi] = keep[:, a:b]
            return
        slots = (steps[:, None] + (L - k) + torch.arange(k, device=self.device)[None]) % n  # [g, k], distinct per row
        st.hist_values[rows[:, None], slots] = vals
        st.hist_observed[rows[:, None], slots] = keep

    def _recall(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The ring's last n steps of the entities at ``rows``, oldest first (slots never written: unobserved)
        -> (values, observed), each [r, n, C]."""
        st, n = self.state, self.skip_steps
        steps = st.steps.index_select(0, rows)
        if bool((steps == steps[0]).all()):  # one step count: the oldest step sits at the same slot in every row
            s = int(steps[0]) % n
            return tuple(torch.roll(t if self._all_rows(rows) else t.index_select(0, rows), -s, 1)
                         for t in (st.hist_values, st.hist_observed))
        slots = ((steps[:, None] + torch.arange(n, device=self.device)[None]) % n).unsqueeze(-1).expand(-1, -1, self.C)
        return (st.hist_values.index_select(0, rows).gather(1, slots),
                st.hist_observed.index_select(0, rows).gather(1, slots))

    def _autocast(self) -> torch.autocast:
        """bf16 autocast where ``bf16`` is set (the memory modules keep their math in fp32 inside it)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _all_rows(self, rows: Tensor) -> bool:
        n = self.state.num_entities
        return rows.numel() == n and bool((rows == torch.arange(n, device=self.device)).all())

    def _advance_group(self, rows: Tensor, x: Tensor, m: Tensor) -> dict:
        st = self.state
        every = self._all_rows(rows)
        take = (lambda t: t) if every else (lambda t: t.index_select(0, rows))  # noqa: E731 (no copy for all rows)
        fill = int(st.fill[rows[0]])
        first = int(st.segments[rows[0]]) == 0
        total = fill + x.shape[1]
        GS = self.G * self.S
        n_seg = 0 if total < self.capacity else 1 + (total - self.capacity) // GS
        up: dict[str, Any] = {"n_seg": n_seg, "all_rows": every, "fill": fill}
        if not n_seg:  # the cheap push: the steps wait in the buffer (written in place at commit)
            up.update(append=(x, m), new_fill=total)
            return up
        vals = torch.cat([take(st.buf_values)[:, :fill], x], dim=1)  # [g, total, C]
        obs = torch.cat([take(st.buf_observed)[:, :fill], m], dim=1)
        stats = tuple(take(getattr(st, k)) for k in ("stat_n", "stat_mean", "stat_m2", "stat_abs"))
        windows, start = [], (self.S if first else self.P)
        for j in range(n_seg):
            end = self.capacity + j * GS
            xs = vals[:, start:end].double().contiguous()
            ms = obs[:, start:end].double().contiguous()
            block = _block_stats(xs, ms)
            stats = _merge_stats(_forget(stats, block[0], self.scaler_window), block)
            loc, scale = _loc_scale(self.scaling, stats)
            w = slice(self.S + j * GS, end)
            windows.append((vals[:, w] - loc.unsqueeze(1)) / scale.unsqueeze(1))
            start = end
        # one embedder call per segment, with the shapes a point-by-point push uses: the same kernels, so
        # block and point pushes give bit-identical tokens
        with self._autocast():
            tokens = torch.cat([self.model.embed(w, obs[:, self.S + j * GS:self.capacity + j * GS])[0]
                                for j, w in enumerate(windows)], dim=1)  # [g, n_seg * G * tpp, D]
        # The backbone runs on chunks of at most FLEET_CHUNK entities: each chunk's activations stay small enough for
        # the allocator to reuse freed memory (fleet-sized ones would be fresh mmaps whose page faults cost more than
        # the arithmetic). A whole fleet advancing one segment (the lockstep update) defers its memory writes
        # (ARMT.segment_step's ``defer``): the commit adds them to the state's A and z in place, with no second
        # copy of the memory and no copy of A per update; other groups get new (A, z) chunks that the commit copies
        # in. Only the last patch's outputs are kept (``outputs``): the last layer skips the queries, MLP and norm
        # of the segment's other rows.
        lockstep = every and n_seg == 1
        chunks, reps = [], []
        for lo in range(0, rows.numel(), FLEET_CHUNK):
            hi = min(lo + FLEET_CHUNK, rows.numel())
            part = rows[lo:hi]
            pick = (lambda t: t[lo:hi]) if every else (lambda t: t.index_select(0, part))  # noqa: E731
            memory = None if first else MemoryState(tuple(pick(a) for a in st.memory.A),
                                                    tuple(pick(z) for z in st.memory.z))
            with self._autocast():
                if lockstep:  # ``memory`` becomes the chunk's PendingWrite
                    y, memory = self._update_step(tokens[lo:hi], memory)
                else:
                    y, memory = self.model.backbone(tokens[lo:hi], memory, outputs=self.tokens_per_patch)
            chunks.append((lo, hi, memory))
            reps.append(y[:, -self.tokens_per_patch:].to(st.rep.dtype))
        up.update(stats=stats, memory=chunks, rep=torch.cat(reps), deferred=lockstep)
        keep = n_seg * GS
        new_fill = total - keep
        buf_v = torch.zeros(rows.numel(), self.capacity, self.C, device=self.device)
        buf_o = torch.zeros(rows.numel(), self.capacity, self.C, dtype=torch.bool, device=self.device)
        buf_v[:, :new_fill] = vals[:, keep:]
        buf_o[:, :new_fill] = obs[:, keep:]
        up.update(buf_v=buf_v, buf_o=buf_o, new_fill=new_fill)
        return up

    def _update_step(self, tokens: Tensor, memory: MemoryState | None) -> tuple[Tensor, PendingWrite]:
        """``segment_step(tokens, memory, outputs=tpp, defer=True)``; through torch.compile where ``compile=True``
        and there is a memory to read (a first segment, once per entity, runs eagerly)."""
        backbone, k = self.model.backbone, self.tokens_per_patch
        if not self.compile or memory is None:
            return backbone.segment_step(tokens, memory, outputs=k, defer=True)

        def update(x: Tensor, A: tuple[Tensor, ...], z: tuple[Tensor, ...]):
            y, pending = backbone.segment_step(x, MemoryState(A, z), outputs=k, defer=True)
            return y, pending.terms

        y, terms = self._run_compiled("update", update, tokens, memory)
        return y, PendingWrite(terms, backbone.memories[0].ops)

    def _read_step(self, tokens: Tensor, memory: MemoryState | None) -> Tensor:
        """``segment_step(tokens, memory, write=False)[0]`` (a forecast's read); compiled as ``_update_step`` is."""
        backbone = self.model.backbone
        if not self.compile or memory is None:
            return backbone.segment_step(tokens, memory, write=False)[0]

        def read(x: Tensor, A: tuple[Tensor, ...], z: tuple[Tensor, ...]) -> Tensor:
            return backbone.segment_step(x, MemoryState(A, z), write=False)[0]

        return self._run_compiled("read", read, tokens, memory)

    def _run_compiled(self, kind: str, step: Any, tokens: Tensor, memory: MemoryState) -> Any:
        """``step(tokens, A, z)`` through ``torch.compile``, compiled at the first call of each ``kind``.

        Dynamo turns off ``torch.distributions``' argument validation for the whole process when it first compiles
        (``Distribution.set_default_validate_args(False)``, torch/_dynamo/eval_frame.py); the caller's setting is
        restored after every call, so compiling a stream does not change how the rest of the program's
        distributions check their arguments (the compiled step builds none)."""
        validate = torch.distributions.Distribution._validate_args
        if kind not in self._compiled:
            # fullgraph: a graph break would quietly run part of the step eagerly, at the eager speed or worse
            self._compiled[kind] = torch.compile(step, fullgraph=True)
        try:
            return self._compiled[kind](tokens, memory.A, memory.z)
        except Exception as e:  # dynamo / inductor failures (no C++ compiler, an untraceable op) name their cause
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            cause = (str(e).strip().splitlines() or [""])[0][:300]
            raise CompileError(f"StreamingForecaster(compile=True): torch.compile could not compile the segment "
                               f"{kind} ({type(e).__name__}: {cause}); use compile=False") from e
        finally:
            torch.distributions.Distribution.set_default_validate_args(validate)

    def _commit(self, rows: Tensor, up: dict) -> int:
        st = self.state
        all_rows = up["all_rows"]
        if not up["n_seg"]:
            x, m = up["append"]
            span = slice(up["fill"], up["new_fill"])
            if all_rows:
                st.buf_values[:, span] = x
                st.buf_observed[:, span] = m
            else:
                st.buf_values[rows, span] = x
                st.buf_observed[rows, span] = m
            st.fill.index_fill_(0, rows, up["new_fill"])
            return 0
        if up["n_seg"]:
            for lo, hi, mem in up["memory"]:
                if up["deferred"]:  # rows lo:hi of the whole fleet (a first segment's are still zeros): in place
                    mem.apply_(MemoryState(tuple(a[lo:hi] for a in st.memory.A), tuple(z[lo:hi] for z in st.memory.z)))
                    continue
                for old, new in zip((*st.memory.A, *st.memory.z), (*mem.A, *mem.z)):
                    if all_rows:
                        old[lo:hi].copy_(new)
                    else:
                        old.index_copy_(0, rows[lo:hi], new)
            for name, new in zip(("stat_n", "stat_mean", "stat_m2", "stat_abs"), up["stats"]):
                getattr(st, name).index_copy_(0, rows, new)
            st.rep.index_copy_(0, rows, up["rep"])
            st.segments.index_add_(0, rows, torch.full_like(rows, up["n_seg"]))
            # the step count at which the last completed segment ended (the same however the steps were pushed)
            last = self.window + (st.segments.index_select(0, rows) - 1) * (self.G * self.S)
            st.last_write_step.index_copy_(0, rows, last)
        if all_rows:
            self.state = st = dataclasses.replace(st, buf_values=up["buf_v"], buf_observed=up["buf_o"])
        else:
            st.buf_values.index_copy_(0, rows, up["buf_v"])
            st.buf_observed.index_copy_(0, rows, up["buf_o"])
        st.fill.index_fill_(0, rows, up["new_fill"])
        return up["n_seg"] * rows.numel()

    # --- forecast ------------------------------------------------------------------------------------

    @torch.no_grad()
    def forecast(
        self,
        h: int | None = None,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        entities: Any = None,
    ) -> StreamForecast:
        """Forecast the next ``h`` steps (default and maximum: the model's horizon) of each entity (default all).

        Reads the memory and the buffered partial segment; writes nothing.
        """
        h = self.horizon if h is None else h
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 1 <= h <= self.horizon:
            raise ArgumentError(f"h: expected an int in [1, {self.horizon}] (the model's horizon), got {h!r}")
        try:
            levels = tuple(float(q) for q in quantiles)
        except (TypeError, ValueError):
            raise ArgumentError(f"quantiles: expected a sequence of levels in (0, 1), got {quantiles!r}") from None
        if not levels or not all(0.0 < q < 1.0 for q in levels):
            raise ArgumentError(f"quantiles: expected levels in (0, 1), got {list(quantiles)}")
        if entities is None:
            rows = torch.arange(self.state.num_entities, device=self.device)
        else:
            rows = self._rows_of(self._as_id_list(entities), "forecast")
        st = self.state
        ids = tuple(st.entities[i] for i in rows.tolist())
        n = rows.numel()
        if n == 0:
            return StreamForecast(ids, torch.zeros(0, h, self.C), torch.zeros(0, h, self.C, len(levels)), levels)
        rep, loc, scale = self._representation(rows)
        head = self.model.head
        params = head(rep if self.model.config.patch.mode == "independent" else rep[:, 0])
        loc, scale = loc.unsqueeze(1), scale.unsqueeze(1)  # [n, 1, C]
        if self.skip_steps:  # the linear skip over the entities' last n steps
            params = head.shift(params, self.model.skip_forecast(*self._recall(rows), loc, scale))
        point = head.point(params, loc, scale)[:, :h]
        try:
            q = head.quantiles(params, list(levels), loc, scale)[:, :h]
        except ValueError as e:  # e.g. levels outside a quantile head's learned range
            raise ArgumentError(f"quantiles: {e}") from None
        return StreamForecast(ids, point, q, levels)

    def _representation(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> rep [n, tpp, D], loc [n, C], scale [n, C] at the current step of each entity."""
        st, S, P, tpp = self.state, self.S, self.P, self.tokens_per_patch
        fill = st.fill.index_select(0, rows)
        first = st.segments.index_select(0, rows) == 0
        names = ("stat_n", "stat_mean", "stat_m2", "stat_abs")
        if bool((~first & (fill == P)).all()):  # right after a segment end: the cached output, the stored statistics
            # (the buffer holds only steps they count; merging its empty block below changes no bit)
            loc, scale = _loc_scale(self.scaling, tuple(getattr(st, k).index_select(0, rows) for k in names))
            return st.rep.index_select(0, rows), loc, scale
        vals = st.buf_values.index_select(0, rows)
        obs = st.buf_observed.index_select(0, rows)
        # statistics up to the last step: stored ones + the buffered steps not yet counted
        pos = torch.arange(self.capacity, device=self.device)
        start = torch.where(first, torch.full_like(fill, S), torch.full_like(fill, P))
        inc = ((pos >= start[:, None]) & (pos < fill[:, None])).unsqueeze(-1) & obs  # [n, cap, C]
        m = inc.double()
        block = _block_stats(vals.double() * m, m)
        stats = _merge_stats(_forget(tuple(getattr(st, k).index_select(0, rows) for k in names), block[0],
                                     self.scaler_window), block)
        loc, scale = _loc_scale(self.scaling, stats)
        cached = ~first & (fill == P)
        rep = st.rep.index_select(0, rows).clone()
        run = torch.nonzero(~cached).squeeze(1)
        if run.numel():
            f = fill.index_select(0, run)
            k = torch.where(f >= S + P, torch.div(f - S - P, S, rounding_mode="floor") + 1, torch.zeros_like(f))
            tail = (k == 0) | (f != k * S + P)
            group = torch.where(tail, k, k - 1)  # the patch whose output is the representation
            v, o = vals.index_select(0, run), obs.index_select(0, run)
            lc, sc = loc.index_select(0, run).unsqueeze(1), scale.index_select(0, run).unsqueeze(1)
            normed = (v - lc) / sc
            with self._autocast():
                tokens, _ = self.model.embed(normed[:, S:], o[:, S:])  # [r, G * tpp, D]: the segment's patches
            # tail patch: the last P steps, left-padded with unobserved steps where the stream is shorter
            padded_v = torch.cat([torch.zeros_like(normed[:, :P]), normed], dim=1)
            padded_o = torch.cat([torch.zeros_like(o[:, :P]), o], dim=1)
            idx = (f[:, None] + torch.arange(P, device=self.device)[None]).unsqueeze(-1).expand(-1, -1, self.C)
            with self._autocast():
                tail_tok, _ = self.model.embed(padded_v.gather(1, idx), padded_o.gather(1, idx))  # [r, tpp, D]
            tok_group = torch.arange(tokens.shape[1], device=self.device) // tpp  # [G * tpp]
            put = tail[:, None] & (tok_group[None] == k[:, None])  # [r, G * tpp]
            tokens = torch.where(put.unsqueeze(-1), tail_tok.repeat(1, self.G, 1), tokens)
            r_first = first.index_select(0, run)
            y = torch.empty_like(tokens, dtype=rep.dtype)
            for is_first in (True, False):
                sel_all = torch.nonzero(r_first == is_first).squeeze(1)
                for lo in range(0, sel_all.numel(), FLEET_CHUNK):  # chunks: see _advance_group
                    sel = sel_all[lo:lo + FLEET_CHUNK]
                    state_rows = rows.index_select(0, run.index_select(0, sel))
                    mem = None if is_first else MemoryState(tuple(a.index_select(0, state_rows) for a in st.memory.A),
                                                            tuple(z.index_select(0, state_rows) for z in st.memory.z))
                    with self._autocast():
                        y_sel = self._read_step(tokens.index_select(0, sel), mem)
                    y.index_copy_(0, sel, y_sel.to(y.dtype))
            gather = (group[:, None] * tpp + torch.arange(tpp, device=self.device)[None])
            rep.index_copy_(0, run, y.gather(1, gather.unsqueeze(-1).expand(-1, -1, y.shape[-1])))
        return rep, loc, scale

    # --- files ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Atomic safetensors write (temp file, fsync, rename) of the state; JSON metadata in the header."""
        meta = {
            "format": _FORMAT, "version": _FORMAT_VERSION, "fingerprint": self.fingerprint,
            "entities": list(self.state.entities), "channels": list(self.channels),
            "num_layers": self.state.memory.num_layers, "config": self.model.config.to_dict(),
            "scaler_window": self.scaler_window,
        }
        if self.notes:
            try:
                if not isinstance(self.notes, dict) or not all(isinstance(k, str) for k in self.notes):
                    raise TypeError("not a dict with str keys")
                json.dumps(self.notes, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"notes: expected a dict of JSON values with str keys ({e})") from None
            meta["notes"] = self.notes
        atomic_save_safetensors(self.state.tensors(), path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: ARMTForecaster, device: torch.device | str | None = None,
             bf16: bool = False, compile: bool = False) -> "StreamingForecaster":
        """A forecaster saved by ``save``, for the same ``model``; raises StreamFileError / ModelMismatchError.
        ``bf16`` and ``compile`` (see the constructor) are settings of the run, not of the state: a state saved with
        either loads with either."""
        try:
            tensors, meta = load_safetensors(path, _FORMAT)
        except StateFileError as e:
            raise StreamFileError(str(e)) from None
        if meta.get("version") != _FORMAT_VERSION:
            raise StreamFileError(f"{path}: stream state version {meta.get('version')!r}, this armt_ts reads "
                                  f"{_FORMAT_VERSION}")
        ents, chans = meta.get("entities"), meta.get("channels")
        if not isinstance(ents, list) or not isinstance(chans, list):
            raise StreamFileError(f"{path}: metadata lacks the entity / channel lists")
        window = meta.get("scaler_window")  # absent in files written before it existed: the whole history
        if _bad_window(window):
            raise StreamFileError(f"{path}: metadata scaler_window {window!r} is not None or an int >= 1")
        n_model = model.config.patch.n_channels
        if len(chans) != n_model:
            raise ModelMismatchError(f"{path}: the state has {len(chans)} channels, the model {n_model}; load it with "
                                     "the model it was made with")
        try:
            sf = cls(model, entities=[], channels=chans, device=device, bf16=bf16, scaler_window=window,
                     compile=compile)
        except StreamError as e:  # e.g. a channel named twice in the file
            raise StreamFileError(f"{path}: {e}") from None
        if meta.get("fingerprint") != sf.fingerprint:
            raise ModelMismatchError(f"{path}: the state was written for another model (weights or configuration "
                                     "differ); load it with the model it was made with")
        try:
            ids = tuple(_check_entity_id(e) for e in ents)
        except ShapeError as e:
            raise StreamFileError(f"{path}: {e}") from None
        if len(set(ids)) != len(ids):
            twice = next(e for i, e in enumerate(ids) if e in ids[:i])
            raise StreamFileError(f"{path}: entity {twice!r} is listed twice")
        template = sf._empty_state(ids)
        want = template.tensors()
        if set(tensors) != set(want):
            raise StreamFileError(f"{path}: tensors {sorted(tensors)} differ from the expected {sorted(want)}")
        for name, t in tensors.items():
            if t.dtype != want[name].dtype or t.shape != want[name].shape:
                raise StreamFileError(f"{path}: tensor {name} is {t.dtype} {tuple(t.shape)}, expected "
                                      f"{want[name].dtype} {tuple(want[name].shape)}")
        n_layers = template.memory.num_layers
        dev = sf.device
        mem = MemoryState(tuple(tensors[f"memory.A.{l}"].to(dev) for l in range(n_layers)),
                          tuple(tensors[f"memory.z.{l}"].to(dev) for l in range(n_layers)))
        fill = tensors["fill"]
        if fill.numel() and (int(fill.min()) < 0 or int(fill.max()) >= sf.capacity):
            raise StreamFileError(f"{path}: buffer fill out of range [0, {sf.capacity})")
        # a state without a linear skip has no history tensors in its file (they are empty)
        sf.state = StreamState(memory=mem, entities=ids,
                               **{k: tensors[k].to(dev) if k in tensors else getattr(template, k)
                                  for k in StreamState.TENSOR_FIELDS})
        sf._rows = {e: i for i, e in enumerate(ids)}
        notes = meta.get("notes", {})  # absent in files without notes, and in those written before notes existed
        if not isinstance(notes, dict):
            raise StreamFileError(f"{path}: metadata notes {notes!r} is not a JSON object")
        sf.notes = notes
        return sf

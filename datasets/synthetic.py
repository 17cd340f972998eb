"""Seeded synthetic telemetry: the embedded default dataset (DESIGN.md sections 3, 6 and 8).

``generate_telemetry(TelemetryConfig(...))`` returns a panel of N entities x C channels x T regular steps
plus a stream of typed events that change the entities' state. It needs no files and no network, so the
README's main job, the tests and the benchmarks can always run on it.

Generative model, per entity n, step t, channel c (z is in "standard units"; a channel's raw value is
``level[n, c] + scale[n, c] * z``):

    z[n, t, c] = amp[regime[n, t]] * (daily + weekly)[n, t, c]      calendar seasonality
               + sum_k loading[n, k, c] * factor[n, t, k]           shared latent AR(1) factors
               + slope[n, c] * weeks_since_reset[n, t]              trend, reset by maintenance
               + level_offset[n, t]                                 sum of level_shift events so far
               + noise_scale * noise_mult[regime[n, t]] * eps       eps ~ N(0, 1) iid

- Seasonality follows the timestamps (time of day, day of week), not the step index, so any ``freq``
  gives the same calendar pattern. Each entity has its own phase; each channel its own weight and a
  small phase offset.
- Channels of one entity are correlated: they load on the same latent factors, share the seasonal
  phase, and their trend slopes have the same sign.
- Entities differ in level, scale, seasonal phase, factor loadings and trend.

Typed events (``Telemetry.events``; ``value`` is Float64, null where a type carries no value):

- ``level_shift``: value = shift size in standard units; from that step on every channel of the entity
  moves by ``value * scale[n, c]`` (raw units). Sizes are uniform in [0.5, 1.5] * level_shift_scale with
  a random sign.
- ``regime``: value = the new regime id (always different from the current one; every entity starts in
  regime 0). Regime r multiplies the seasonal amplitude by ``regime_amplitude[r]`` and the noise by
  ``regime_noise[r]`` from that step on.
- ``maintenance``: value = null. All channels of the entity are unobserved for a block of
  ``maintenance_length`` steps starting at the event; when the entity comes back its trend restarts
  from zero (``weeks_since_reset`` is 0 at the first step after the block).

Missing data: besides maintenance, each (entity, channel) has independent missing blocks. ``values`` is
NaN exactly where ``observed`` is 0.

Randomness: every component draws from its own child stream of ``SeedSequence(seed)`` (entity
parameters, factors, noise, missing blocks, and one stream per event type). Same config -> bit-identical
output; changing one component's setting (say ``level_shift_rate = 0``) leaves the other components'
draws unchanged, so two configs differing in one field are matched controls for each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

EVENT_TYPES: tuple[str, ...] = ("level_shift", "regime", "maintenance")

# Column schema of every events frame this module returns or writes (DESIGN.md section 6).
EVENTS_SCHEMA: dict[str, Any] = {
    "timestamp": pl.Datetime("us"),
    "entity": pl.String,
    "event_type": pl.String,
    "value": pl.Float64,
}

# Frames use microsecond timestamps: polars' default unit, so a frame equals what a CSV reader produces.
_TIME_UNIT = "us"
_CSV_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the ETT files' format; freq has whole seconds at least

_FREQ_RE = re.compile(r"^(\d+)(s|m|min|h|d)$")
_FREQ_UNITS = {"s": "s", "m": "m", "min": "m", "h": "h", "d": "D"}

_SECONDS_PER_DAY = 86_400
_SECONDS_PER_WEEK = 7 * _SECONDS_PER_DAY

# Child streams of SeedSequence(seed), one per component; the order is part of the dataset's definition.
_STREAMS = ("entities", "factors", "noise", "missing", "level_shift", "regime", "maintenance")

# Entities are assembled in chunks so that temporaries stay small for 1000s of entities; every
# operation inside a chunk is elementwise per entity, so the chunk size does not change any value.
_CHUNK_ENTITIES = 256


def parse_freq(freq: str) -> np.timedelta64:
    """``"<int><unit>"`` (unit s, m or min, h, d) -> a positive ``numpy.timedelta64``; ValueError otherwise."""
    m = _FREQ_RE.match(freq.strip()) if isinstance(freq, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"freq must look like '1h', '15min', '30s' or '1d' (positive), got {freq!r}")
    return np.timedelta64(int(m.group(1)), _FREQ_UNITS[m.group(2)])


def _fail(field: str, msg: str) -> None:
    raise ValueError(f"TelemetryConfig.{field}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


@dataclass(frozen=True)
class TelemetryConfig:
    """Everything that defines a synthetic telemetry panel; validated on construction.

    Amplitudes, scales and shift sizes are in standard units (before each channel's level and scale).
    Rates are per-step probabilities: the expected count per entity (or per entity-channel for missing
    blocks) is about ``rate * length``; draws that land on the same step are merged into one.
    """

    # Shape and calendar.
    n_entities: int = 8  # N: machines / sites, each with its own level, scale, phase and events
    n_channels: int = 4  # C: sensors per entity, correlated through shared factors
    length: int = 24 * 7 * 8  # T: eight weeks of hourly steps, enough for several weekly cycles
    freq: str = "1h"  # step: "<int><unit>", unit s, m or min, h, d (from 1d up the daily cycle is constant)
    start: str = "2024-01-01 00:00:00"  # first timestamp (naive, no time zone); a Monday
    # Seasonality, trend, latent factors and noise.
    daily_amplitude: float = 1.0  # time-of-day cycle (fundamental + a weaker 2nd harmonic)
    weekly_amplitude: float = 0.5  # day-of-week cycle
    trend_scale: float = 0.1  # std of trend slopes, standard units per week
    n_factors: int = 2  # shared AR(1) factors per entity; 0 makes channels correlate only via seasonality
    factor_scale: float = 0.5  # stationary std of each factor
    factor_ar: float = 0.98  # per-step AR(1) coefficient of the factors: slow, weather-like drift
    noise_scale: float = 0.2  # std of the iid noise in regime 0
    # How entities and channels differ in raw units.
    level_spread: float = 10.0  # std of channel levels
    scale_spread: float = 0.5  # std of log channel scales
    # Missing blocks, independent per (entity, channel); maintenance adds entity-wide ones.
    missing_block_rate: float = 0.002  # per entity-channel-step probability that a block starts
    missing_block_length: tuple[int, int] = (4, 48)  # inclusive range of a block's length in steps
    # Typed events (see the module docstring for what each one does).
    level_shift_rate: float = 0.002  # per entity-step probability of a level_shift event
    level_shift_scale: float = 1.0  # |shift| is uniform in [0.5, 1.5] * this
    regime_rate: float = 0.002  # per entity-step probability of a regime event
    regime_amplitude: tuple[float, ...] = (1.0, 0.4, 1.8)  # seasonal multiplier of regime id 0, 1, ...
    regime_noise: tuple[float, ...] = (1.0, 2.5, 0.6)  # noise multiplier of regime id 0, 1, ...
    maintenance_rate: float = 0.001  # per entity-step probability of a maintenance event
    maintenance_length: tuple[int, int] = (6, 24)  # inclusive range of the offline block in steps
    seed: int = 0  # root of all randomness (numpy SeedSequence)

    def __post_init__(self) -> None:
        for name in ("n_entities", "n_channels"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                _fail(name, f"must be an int >= 1, got {getattr(self, name)!r}")
        if not (_is_int(self.length) and self.length >= 2):
            _fail("length", f"must be an int >= 2, got {self.length!r}")
        try:
            parse_freq(self.freq)
        except ValueError as e:
            _fail("freq", str(e))
        try:
            start = np.datetime64(self.start, "ns") if isinstance(self.start, str) else None
        except ValueError:
            start = None
        if start is None or np.isnat(start):
            _fail("start", f"must be a timestamp string like '2024-01-01 00:00:00', got {self.start!r}")
        if isinstance(self.start, str) and re.search(r"(Z|[+-]\d{2}:?\d{2})\s*$", self.start.strip()[10:]):
            _fail("start", f"must be naive (no time zone: the calendar phase starts there), got {self.start!r}")
        for name in ("daily_amplitude", "weekly_amplitude", "trend_scale", "factor_scale", "noise_scale",
                     "level_spread", "scale_spread", "level_shift_scale"):
            v = getattr(self, name)
            if not (_is_real(v) and v >= 0):
                _fail(name, f"must be a finite number >= 0, got {v!r}")
        if not (_is_int(self.n_factors) and self.n_factors >= 0):
            _fail("n_factors", f"must be an int >= 0, got {self.n_factors!r}")
        if not (_is_real(self.factor_ar) and 0 <= self.factor_ar < 1):
            _fail("factor_ar", f"must be in [0, 1) so the factors are stationary, got {self.factor_ar!r}")
        for name in ("missing_block_rate", "level_shift_rate", "regime_rate", "maintenance_rate"):
            v = getattr(self, name)
            if not (_is_real(v) and 0 <= v <= 1):
                _fail(name, f"must be a probability in [0, 1], got {v!r}")
        for name in ("missing_block_length", "maintenance_length"):
            v = getattr(self, name)
            ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(x) for x in v) and 1 <= v[0] <= v[1]
            if not ok:
                _fail(name, f"must be a pair (lo, hi) of ints with 1 <= lo <= hi, got {v!r}")
            object.__setattr__(self, name, (int(v[0]), int(v[1])))  # lists in, hashable tuples kept
        for name in ("regime_amplitude", "regime_noise"):
            v = getattr(self, name)
            ok = isinstance(v, (tuple, list)) and 2 <= len(v) <= 127 and all(_is_real(x) and x >= 0 for x in v)
            if not ok:
                _fail(name, f"must be 2..127 finite numbers >= 0 (one per regime id), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if len(self.regime_amplitude) != len(self.regime_noise):
            _fail("regime_noise", f"must have one entry per regime like regime_amplitude "
                                  f"({len(self.regime_amplitude)}), got {len(self.regime_noise)}")
        if not (_is_int(self.seed) and self.seed >= 0):
            _fail("seed", f"must be an int >= 0, got {self.seed!r}")

    @property
    def step(self) -> np.timedelta64:
        """The time between consecutive timestamps."""
        return parse_freq(self.freq)

    @property
    def n_regimes(self) -> int:
        return len(self.regime_amplitude)

    def timestamps(self) -> np.ndarray:
        """[T] datetime64[ns]: ``start + i * freq``."""
        step = self.step.astype("timedelta64[ns]")
        return np.datetime64(self.start, "ns") + np.arange(self.length, dtype=np.int64) * step


@dataclass(frozen=True, eq=False)
class Telemetry:
    """A generated panel. Arrays are numpy; N entities, T steps, C channels.

    ``values`` and ``observed`` are what a model sees. ``regime``, ``level_offset``, ``offline``, ``level``
    and ``scale`` are the ground-truth state, kept so that experiments can score state tracking.
    """

    config: TelemetryConfig
    timestamps: np.ndarray  # [T] datetime64[ns]
    values: np.ndarray  # [N, T, C] float32, NaN where missing
    observed: np.ndarray  # [N, T, C] float32, 1 = observed, 0 = missing (exactly where values is NaN)
    entities: list[str]  # N names, "entity_000", ...
    channels: list[str]  # C names, "ch_0", ...
    events: pl.DataFrame  # timestamp, entity, event_type, value; sorted by timestamp, entity, event_type
    regime: np.ndarray  # [N, T] int8, regime id in force at each step
    level_offset: np.ndarray  # [N, T] float32, sum of level_shift values up to and including each step
    offline: np.ndarray  # [N, T] bool, inside a maintenance block
    level: np.ndarray  # [N, C] float32, raw value of z = 0
    scale: np.ndarray  # [N, C] float32, raw units per standard unit

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, T, C)."""
        return self.values.shape  # type: ignore[return-value]

    def entity_index(self, entity: str | int) -> int:
        """Row of ``entity`` (a name or an index) in the [N, ...] arrays; KeyError/IndexError if unknown."""
        if _is_int(entity):
            if not 0 <= int(entity) < len(self.entities):
                raise IndexError(f"entity index {entity} out of range [0, {len(self.entities)})")
            return int(entity)
        try:
            return self.entities.index(entity)  # type: ignore[arg-type]
        except ValueError:
            known = f"{self.entities[0]!r} .. {self.entities[-1]!r}"
            raise KeyError(f"unknown entity {entity!r}; known: {known}") from None


def _names(prefix: str, n: int, min_width: int) -> list[str]:
    # Zero-padded so that lexicographic order equals index order (files, sorted frames).
    width = max(min_width, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _event_positions(rng: np.random.Generator, n: int, length: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Entity rows and steps (>= 1, so every event has a 'before') of one event type, sorted, no duplicates."""
    counts = rng.binomial(length - 1, rate, size=n)
    ent = np.repeat(np.arange(n, dtype=np.int64), counts)
    t = rng.integers(1, length, size=ent.size)
    flat = np.unique(ent * length + t)
    return flat // length, flat % length


def _forward_fill_index(marks: np.ndarray) -> np.ndarray:
    """[N, T] bool -> [N, T] int: index of the latest True at or before each step (0 if none)."""
    steps = np.arange(marks.shape[1], dtype=np.int64)
    return np.maximum.accumulate(np.where(marks, steps, 0), axis=1)


def _block_cover(lead: tuple[int, ...], rows: tuple[np.ndarray, ...], start: np.ndarray, stop: np.ndarray,
                 length: int) -> np.ndarray:
    """[*lead, T] bool: True inside any half-open block [start, stop) of the series ``rows`` indexes.

    ``rows`` holds one index array per axis of ``lead``. Time is the last axis so that the cumsum over a
    difference array (O(size) however many blocks overlap) runs over contiguous memory.
    """
    diff = np.zeros(lead + (length + 1,), dtype=np.int32)
    np.add.at(diff, rows + (start,), 1)
    np.add.at(diff, rows + (stop,), -1)
    return np.cumsum(diff, axis=-1)[..., :length] > 0


def generate_telemetry(config: TelemetryConfig | None = None) -> Telemetry:
    """Generate the panel described by ``config`` (default: ``TelemetryConfig()``); see the module docstring."""
    cfg = config if config is not None else TelemetryConfig()
    n, length, c = cfg.n_entities, cfg.length, cfg.n_channels
    rng = {name: np.random.default_rng(s)
           for name, s in zip(_STREAMS, np.random.SeedSequence(cfg.seed).spawn(len(_STREAMS)))}
    timestamps = cfg.timestamps()

    # Entity parameters.
    r = rng["entities"]
    level = r.normal(0.0, cfg.level_spread, size=(n, c))
    scale = np.exp(r.normal(0.0, cfg.scale_spread, size=(n, c)))
    channel_shift = r.normal(0.0, 0.3, size=(n, c))  # small per-channel lag of the daily cycle
    day_phase = r.uniform(0.0, 2 * np.pi, size=(n, 1)) + channel_shift
    harmonic_phase = r.uniform(0.0, 2 * np.pi, size=(n, 1)) + 2 * channel_shift
    harmonic_rel = r.uniform(0.0, 0.5, size=(n, 1))
    week_phase = r.uniform(0.0, 2 * np.pi, size=(n, 1)) + r.normal(0.0, 0.2, size=(n, c))
    day_weight = r.uniform(0.5, 1.5, size=(n, c))
    week_weight = r.uniform(0.5, 1.5, size=(n, c))
    # Same-sign slopes within an entity: a drifting machine drifts on all its sensors.
    slope = cfg.trend_scale * r.normal(0.0, 1.0, size=(n, 1)) * r.uniform(0.5, 1.5, size=(n, c))
    loadings = r.normal(0.0, 1.0 / math.sqrt(max(cfg.n_factors, 1)), size=(n, cfg.n_factors, c))

    # Calendar basis [T, 6]: sin/cos of time of day (1st, 2nd harmonic) and of time of week. Entity phases
    # go into the loadings (sin(a + p) = sin a cos p + cos a sin p), so the basis is shared by all entities.
    seconds = timestamps.astype("datetime64[s]").astype(np.int64)
    a_day = 2 * np.pi * (seconds % _SECONDS_PER_DAY) / _SECONDS_PER_DAY
    a_week = 2 * np.pi * (seconds % _SECONDS_PER_WEEK) / _SECONDS_PER_WEEK
    basis = np.stack([np.sin(a_day), np.cos(a_day), np.sin(2 * a_day), np.cos(2 * a_day),
                      np.sin(a_week), np.cos(a_week)], axis=1).astype(np.float32)
    d_amp = cfg.daily_amplitude * day_weight
    h_amp = d_amp * harmonic_rel
    w_amp = cfg.weekly_amplitude * week_weight
    season_w = np.stack([d_amp * np.cos(day_phase), d_amp * np.sin(day_phase),  # [N, 6, C]
                         h_amp * np.cos(harmonic_phase), h_amp * np.sin(harmonic_phase),
                         w_amp * np.cos(week_phase), w_amp * np.sin(week_phase)], axis=1)

    # Latent factors [N, T, K]: stationary AR(1), started from the stationary law.
    k = cfg.n_factors
    factors = np.zeros((n, length, k), dtype=np.float32)  # [N, T, K]
    if k:
        r = rng["factors"]
        # Time-major [T, N, K] so each recursion step touches contiguous memory; row 0 is the start.
        path = r.standard_normal(size=(length, n, k), dtype=np.float32)
        path[0] *= np.float32(cfg.factor_scale)
        path[1:] *= np.float32(cfg.factor_scale * math.sqrt(1 - cfg.factor_ar ** 2))
        ar = np.float32(cfg.factor_ar)
        for t in range(1, length):
            path[t] += ar * path[t - 1]
        factors = np.ascontiguousarray(path.transpose(1, 0, 2))

    # Events -> state arrays.
    ls_ent, ls_t = _event_positions(rng["level_shift"], n, length, cfg.level_shift_rate)
    ls_val = (rng["level_shift"].choice([-1.0, 1.0], size=ls_ent.size)
              * rng["level_shift"].uniform(0.5, 1.5, size=ls_ent.size) * cfg.level_shift_scale)
    shift_at = np.zeros((n, length), dtype=np.float64)
    shift_at[ls_ent, ls_t] = ls_val
    level_offset = np.cumsum(shift_at, axis=1)

    rg_ent, rg_t = _event_positions(rng["regime"], n, length, cfg.regime_rate)
    # Each event moves the regime by 1..R-1 (mod R), so the new regime always differs from the current one.
    step_by = rng["regime"].integers(1, cfg.n_regimes, size=rg_ent.size)
    total = np.cumsum(step_by)
    first = np.searchsorted(rg_ent, rg_ent, side="left")  # first event of the same entity
    before = np.where(first > 0, total[np.maximum(first - 1, 0)], 0)
    rg_val = (total - before) % cfg.n_regimes
    regime_marks = np.zeros((n, length), dtype=np.int8)
    regime_marks[rg_ent, rg_t] = rg_val
    has = np.zeros((n, length), dtype=bool)
    has[rg_ent, rg_t] = True
    regime = np.take_along_axis(regime_marks, _forward_fill_index(has), axis=1)  # step 0 has no event: 0

    mt_ent, mt_t = _event_positions(rng["maintenance"], n, length, cfg.maintenance_rate)
    lo, hi = cfg.maintenance_length
    mt_stop = np.minimum(mt_t + rng["maintenance"].integers(lo, hi + 1, size=mt_ent.size), length)
    offline = _block_cover((n,), (mt_ent,), mt_t, mt_stop, length)
    resets = np.zeros((n, length), dtype=bool)
    back = mt_stop < length
    resets[mt_ent[back], mt_stop[back]] = True
    step_weeks = cfg.step / np.timedelta64(7, "D")
    weeks_since_reset = (np.arange(length) - _forward_fill_index(resets)) * step_weeks

    # Missing blocks per (entity, channel); sorted by entity, so each chunk takes a contiguous slice.
    r = rng["missing"]
    counts = r.binomial(length, cfg.missing_block_rate, size=(n, c))
    mb_ent = np.repeat(np.repeat(np.arange(n), c), counts.ravel())
    mb_ch = np.repeat(np.tile(np.arange(c), n), counts.ravel())
    mb_start = r.integers(0, length, size=mb_ent.size)
    lo, hi = cfg.missing_block_length
    mb_stop = np.minimum(mb_start + r.integers(lo, hi + 1, size=mb_ent.size), length)

    # Structured part as one product per entity: design [n, T, P] @ weights [n, P, C], with P = 6 calendar
    # columns (scaled by the regime's amplitude) + K factors + trend + level offset.
    weights = np.concatenate([season_w, loadings, slope[:, None, :], np.ones((n, 1, c))], axis=1)
    weights = weights.astype(np.float32)  # [N, P, C]
    amp_of = np.asarray(cfg.regime_amplitude, dtype=np.float32)
    noise_of = np.asarray(cfg.regime_noise, dtype=np.float32) * np.float32(cfg.noise_scale)
    values = np.empty((n, length, c), dtype=np.float32)
    rng["noise"].standard_normal(dtype=np.float32, out=values)
    observed = np.empty((n, length, c), dtype=np.float32)
    level32, scale32 = level.astype(np.float32), scale.astype(np.float32)
    for lo_e in range(0, n, _CHUNK_ENTITIES):
        sl = slice(lo_e, min(lo_e + _CHUNK_ENTITIES, n))
        z, reg = values[sl], regime[sl]
        z *= noise_of[reg][:, :, None]
        design = np.concatenate([basis[None] * amp_of[reg][:, :, None], factors[sl],
                                 weeks_since_reset[sl, :, None].astype(np.float32),
                                 level_offset[sl, :, None].astype(np.float32)], axis=2)
        z += design @ weights[sl]
        z *= scale32[sl, None, :]
        z += level32[sl, None, :]

        a, b = np.searchsorted(mb_ent, [sl.start, sl.stop])
        missing = _block_cover((z.shape[0], c), (mb_ent[a:b] - sl.start, mb_ch[a:b]),
                               mb_start[a:b], mb_stop[a:b], length).transpose(0, 2, 1)  # [n, T, C]
        missing |= offline[sl, :, None]
        np.copyto(z, np.float32(np.nan), where=missing)
        np.logical_not(missing, out=observed[sl], casting="unsafe")
        if not np.isfinite(z[~missing]).all():
            raise ValueError("TelemetryConfig: these amplitudes, levels or scales overflow float32 (observed values "
                             "came out infinite); use magnitudes below about 1e30")

    entities = _names("entity_", n, 3)
    events = _events_frame(
        timestamps, entities,
        [(ls_ent, ls_t, "level_shift", ls_val),
         (rg_ent, rg_t, "regime", rg_val.astype(np.float64)),
         (mt_ent, mt_t, "maintenance", np.full(mt_ent.size, np.nan))],
    )
    return Telemetry(
        config=cfg, timestamps=timestamps, values=values, observed=observed, entities=entities,
        channels=_names("ch_", c, 1), events=events, regime=regime,
        level_offset=level_offset.astype(np.float32), offline=offline, level=level32, scale=scale32,
    )


def _events_frame(timestamps: np.ndarray, entities: list[str],
                  parts: Sequence[tuple[np.ndarray, np.ndarray, str, np.ndarray]]) -> pl.DataFrame:
    frames = [
        pl.DataFrame({
            "timestamp": pl.Series(timestamps[t]).cast(pl.Datetime(_TIME_UNIT)),
            "entity": pl.Series(entities, dtype=pl.String).gather(ent),
            "event_type": pl.Series([etype] * ent.size, dtype=pl.String),
            "value": pl.Series(value, dtype=pl.Float64, nan_to_null=True),
        }, schema=EVENTS_SCHEMA)
        for ent, t, etype, value in parts
    ]
    return pl.concat(frames).sort("timestamp", "entity", "event_type")


def events_frame(telemetry: Telemetry) -> pl.DataFrame:
    """The events in DESIGN.md's event format: timestamp, entity, event_type, value (Float64, nullable)."""
    return telemetry.events


def to_wide(telemetry: Telemetry, entity: str | int) -> pl.DataFrame:
    """One entity in wide format: "timestamp" + one Float32 column per channel, null where missing. [T rows]"""
    i = telemetry.entity_index(entity)
    cols = {"timestamp": pl.Series(telemetry.timestamps).cast(pl.Datetime(_TIME_UNIT))}
    for j, name in enumerate(telemetry.channels):
        cols[name] = pl.Series(telemetry.values[i, :, j], nan_to_null=True)
    return pl.DataFrame(cols)


def to_long(telemetry: Telemetry, *, drop_missing: bool = False) -> pl.DataFrame:
    """All entities in long format: timestamp, entity, channel, value (Float32).

    Rows are ordered by timestamp, then entity, then channel, the order a stream would deliver them.
    Missing observations are kept as rows with a null value (N * T * C rows, so the regular grid is
    explicit in the file); ``drop_missing=True`` omits them instead, as a sparse logger would.
    """
    n, length, c = telemetry.shape
    ent_idx = np.tile(np.repeat(np.arange(n, dtype=np.uint32), c), length)
    ch_idx = np.tile(np.arange(c, dtype=np.uint32), n * length)
    df = pl.DataFrame({
        "timestamp": pl.Series(np.repeat(telemetry.timestamps, n * c)).cast(pl.Datetime(_TIME_UNIT)),
        "entity": pl.Series(telemetry.entities, dtype=pl.String).gather(ent_idx),
        "channel": pl.Series(telemetry.channels, dtype=pl.String).gather(ch_idx),
        "value": pl.Series(telemetry.values.transpose(1, 0, 2).ravel(), nan_to_null=True),
    })
    return df.drop_nulls("value") if drop_missing else df


def _write(telemetry: Telemetry, directory: str | Path, fmt: str,
           wide_entities: Sequence[str | int] | None) -> dict[str, Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = telemetry.entities if wide_entities is None else [
        telemetry.entities[telemetry.entity_index(e)] for e in wide_entities]
    frames = {"telemetry_long": to_long(telemetry), "events": telemetry.events}
    frames.update({f"telemetry_wide_{e}": to_wide(telemetry, e) for e in names})
    paths: dict[str, Path] = {}
    for stem, df in frames.items():
        path = out / f"{stem}.{fmt}"
        if fmt == "csv":
            df.write_csv(path, datetime_format=_CSV_DATETIME_FORMAT)
        else:
            df.write_parquet(path)
        paths[stem] = path
    return paths


def write_csv(telemetry: Telemetry, directory: str | Path, *,
              wide_entities: Sequence[str | int] | None = None) -> dict[str, Path]:
    """Write the panel as CSV files into ``directory`` (created if needed); returns {file stem: path}.

    Files: ``telemetry_long.csv`` (all entities, ``to_long``), ``events.csv``, and one
    ``telemetry_wide_<entity>.csv`` per entity in ``wide_entities`` (default: every entity).
    Timestamps are written as ``YYYY-MM-DD HH:MM:SS`` like the ETT files; missing values as empty fields.
    """
    return _write(telemetry, directory, "csv", wide_entities)


def write_parquet(telemetry: Telemetry, directory: str | Path, *,
                  wide_entities: Sequence[str | int] | None = None) -> dict[str, Path]:
    """Same files as ``write_csv`` with the ``.parquet`` extension (types kept exactly)."""
    return _write(telemetry, directory, "parquet", wide_entities)

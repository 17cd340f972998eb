"""Seeded generators for streaming state tracking (DESIGN.md sections 3 and 8, question 3).

(a) ``EventStreamTask``: typed events over E entities, one event per step:
      SET(e, v)    entity e's state becomes v                      (v in 0..V-1)
      ADD(e, d)    e's state becomes (state + d) mod V             (d in 1..max_add)
      QUERY(e)     no change; the answer is e's current state
      NOISE(e, v)  a distractor event: no change
    Every entity starts at state 0. The target at every step is the state of that step's entity AFTER the
    event (for QUERY: the answer), so a model can be scored densely or on queries only.
(b) ``RegimeTelemetryTask``: per-entity numeric telemetry whose level (and noise regime) changes only when
    an ANNOUNCE event says so; the task is to forecast each entity's next observation.

Both are pure functions of (task, batch, length, generator): the same seed gives the same streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from datasets.synthetic import _is_int, _is_real


def _fraction(v: object) -> bool:
    return _is_real(v) and 0.0 <= v <= 1.0

SET, ADD, QUERY, NOISE = 0, 1, 2, 3
EVENT_TYPES = ("set", "add", "query", "noise")
OBS, ANNOUNCE = 0, 1


@dataclass(frozen=True)
class EventBatch:
    """[B, L] tensors of one batch of event streams."""

    types: Tensor  # long: SET / ADD / QUERY / NOISE
    entities: Tensor  # long, in [0, E)
    values: Tensor  # long: the value of SET / NOISE, the delta of ADD, 0 for QUERY
    targets: Tensor  # long: the state of `entities` after the event
    last_write: Tensor  # long: steps since the entity was last written (SET/ADD) at this step; -1 if never

    @property
    def query_mask(self) -> Tensor:
        return self.types == QUERY


@dataclass(frozen=True)
class EventStreamTask:
    """Generator (a). Rates are per event; distractors take the rest (1 - write_rate - query_rate)."""

    num_entities: int  # E, 1 .. 4096 (any positive int works)
    num_values: int = 16  # V
    max_add: int = 3  # ADD deltas are 1..max_add (mod V)
    write_rate: float = 0.4  # fraction of events that write (SET or ADD): the rewrite rate
    add_fraction: float = 0.3  # of the writes, the fraction that are ADDs
    query_rate: float = 0.4  # fraction of events that are queries
    # queries ask the entity of a uniformly chosen earlier write (an entity that has a state to recall);
    # False: any entity, so with many entities most answers are the initial 0
    query_written: bool = True
    hot_fraction: float = 0.0  # fraction of writes that go to entity 0 as SETs (the stale-key test)

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"EventStreamTask.{field}: {msg}")

        check(_is_int(self.num_entities) and self.num_entities >= 1, "num_entities",
              f"must be an int >= 1, got {self.num_entities!r}")
        check(_is_int(self.num_values) and self.num_values >= 2, "num_values", f"must be >= 2, got {self.num_values!r}")
        check(_is_int(self.max_add) and 1 <= self.max_add < self.num_values, "max_add",
              f"must be in [1, num_values), got {self.max_add!r}")
        for f in ("write_rate", "add_fraction", "query_rate", "hot_fraction"):
            v = getattr(self, f)
            check(_fraction(v), f, f"must be a number in [0, 1], got {v!r}")
        check(self.write_rate + self.query_rate <= 1.0 + 1e-9, "query_rate",
              f"write_rate + query_rate must be <= 1, got {self.write_rate} + {self.query_rate}")

    def sample(self, batch: int, length: int, generator: torch.Generator) -> EventBatch:
        """-> an EventBatch of [batch, length] streams."""
        if batch < 1 or length < 1:
            raise ValueError(f"EventStreamTask.sample: batch and length must be >= 1, got {batch}, {length}")
        E, V, g = self.num_entities, self.num_values, generator
        u = torch.rand(batch, length, generator=g)
        is_write = u < self.write_rate
        is_query = (u >= self.write_rate) & (u < self.write_rate + self.query_rate)
        is_add = is_write & (torch.rand(batch, length, generator=g) < self.add_fraction)
        types = torch.full((batch, length), NOISE)
        types[is_write] = SET
        types[is_add] = ADD
        types[is_query] = QUERY
        entities = torch.randint(0, E, (batch, length), generator=g)
        hot = is_write & (torch.rand(batch, length, generator=g) < self.hot_fraction)
        entities[hot] = 0
        types[hot] = SET
        values = torch.randint(0, V, (batch, length), generator=g)
        deltas = torch.randint(1, self.max_add + 1, (batch, length), generator=g)
        values = torch.where(types == ADD, deltas, values)
        values[types == QUERY] = 0
        pick = torch.rand(batch, length, generator=g)

        rows = torch.arange(batch)
        state = torch.zeros(batch, E, dtype=torch.long)
        last = torch.full((batch, E), -1, dtype=torch.long)
        write_log = torch.zeros(batch, length, dtype=torch.long)  # entities of past writes, per row
        n_writes = torch.zeros(batch, dtype=torch.long)
        targets = torch.empty(batch, length, dtype=torch.long)
        since = torch.empty(batch, length, dtype=torch.long)
        for t in range(length):
            ty = types[:, t]
            if self.query_written:
                # a query asks about the entity of a uniformly chosen earlier write (if there is one)
                q = (ty == QUERY) & (n_writes > 0)
                idx = (pick[:, t] * n_writes).long().clamp(max=length - 1)
                entities[:, t] = torch.where(q, write_log[rows, idx], entities[:, t])
            e = entities[:, t]
            cur = state[rows, e]
            new = torch.where(ty == SET, values[:, t], torch.where(ty == ADD, (cur + values[:, t]) % V, cur))
            w = (ty == SET) | (ty == ADD)
            state[rows, e] = new
            last[rows, e] = torch.where(w, torch.full_like(e, t), last[rows, e])
            write_log[rows, n_writes.clamp(max=length - 1)] = torch.where(w, e, write_log[rows, n_writes.clamp(max=length - 1)])
            n_writes = n_writes + w.long()
            targets[:, t] = new
            lw = last[rows, e]
            since[:, t] = torch.where(lw >= 0, t - lw, torch.full_like(lw, -1))
        return EventBatch(types, entities, values, targets, since)


def replay(batch: EventBatch, num_entities: int, num_values: int) -> Tensor:
    """The exact entity -> state table replayed from the events (the oracle): -> predictions [B, L]."""
    B, L = batch.types.shape
    for name, what, n, ids in (("num_entities", "entity", num_entities, batch.entities),
                               ("num_values", "value", num_values, batch.values)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"replay: {name} must be an int >= 1, got {n!r}")
        if ids.numel() and int(ids.max()) >= n:
            raise ValueError(f"replay: the batch holds {what} ids up to {int(ids.max())}, more than {name}={n} "
                             f"(the task's own sizes)")
    rows = torch.arange(B)
    state = torch.zeros(B, num_entities, dtype=torch.long)
    out = torch.empty(B, L, dtype=torch.long)
    for t in range(L):
        ty, e, v = batch.types[:, t], batch.entities[:, t], batch.values[:, t]
        cur = state[rows, e]
        new = torch.where(ty == SET, v, torch.where(ty == ADD, (cur + v) % num_values, cur))
        state[rows, e] = new
        out[:, t] = new
    return out


@dataclass(frozen=True)
class TelemetryBatch:
    """[B, L] tensors of one batch of announced-regime telemetry streams (one event per step)."""

    types: Tensor  # long: OBS (a measurement) or ANNOUNCE (a level / regime change for the entity)
    entities: Tensor  # long, in [0, E)
    values: Tensor  # float: the measurement (OBS) or the announced new level (ANNOUNCE)
    regimes: Tensor  # long: the announced noise regime (ANNOUNCE), the current one (OBS)
    targets: Tensor  # float: the entity's NEXT observation after this step (NaN if there is none)
    levels: Tensor  # float: the entity's level after this step (the best point forecast of the next value)


@dataclass(frozen=True)
class RegimeTelemetryTask:
    """Generator (b): x_e(t) = level_e + noise_sd[regime_e] * eps, where level_e and regime_e change ONLY at
    ANNOUNCE events (which carry the new level and regime). Forecasting an entity's next value therefore
    needs that entity's latest announcement: per-entity state that must be overwritten, never averaged.
    """

    num_entities: int
    announce_rate: float = 0.1  # fraction of events that are announcements
    level_scale: float = 3.0  # new levels ~ N(0, level_scale^2)
    noise_sd: tuple[float, ...] = (0.1, 0.5)  # the noise of each regime

    def __post_init__(self) -> None:
        if not (isinstance(self.num_entities, int) and not isinstance(self.num_entities, bool)
                and self.num_entities >= 1):
            raise ValueError(f"RegimeTelemetryTask.num_entities: must be an int >= 1, got {self.num_entities!r}")
        if not _fraction(self.announce_rate):
            raise ValueError(f"RegimeTelemetryTask.announce_rate: must be a number in [0, 1], got "
                             f"{self.announce_rate!r}")
        if not (isinstance(self.noise_sd, tuple) and self.noise_sd
                and all(_is_real(s) and s >= 0 for s in self.noise_sd)):
            raise ValueError(f"RegimeTelemetryTask.noise_sd: must be a non-empty tuple of finite numbers >= 0, got "
                             f"{self.noise_sd!r}")
        if not (_is_real(self.level_scale) and self.level_scale >= 0):
            raise ValueError(f"RegimeTelemetryTask.level_scale: must be a finite number >= 0, got {self.level_scale!r}")

    def sample(self, batch: int, length: int, generator: torch.Generator) -> TelemetryBatch:
        if batch < 1 or length < 1:
            raise ValueError(f"RegimeTelemetryTask.sample: batch and length must be >= 1, got {batch}, {length}")
        E, g = self.num_entities, generator
        sd = torch.tensor(self.noise_sd)
        types = (torch.rand(batch, length, generator=g) < self.announce_rate).long()
        entities = torch.randint(0, E, (batch, length), generator=g)
        new_levels = torch.randn(batch, length, generator=g) * self.level_scale
        new_regimes = torch.randint(0, len(self.noise_sd), (batch, length), generator=g)
        noise = torch.randn(batch, length, generator=g)
        rows = torch.arange(batch)
        level = torch.randn(batch, E, generator=g) * self.level_scale
        regime = torch.zeros(batch, E, dtype=torch.long)
        values = torch.empty(batch, length)
        regimes = torch.empty(batch, length, dtype=torch.long)
        levels = torch.empty(batch, length)
        for t in range(length):
            e, ann = entities[:, t], types[:, t] == ANNOUNCE
            level[rows, e] = torch.where(ann, new_levels[:, t], level[rows, e])
            regime[rows, e] = torch.where(ann, new_regimes[:, t], regime[rows, e])
            obs = level[rows, e] + sd[regime[rows, e]] * noise[:, t]
            values[:, t] = torch.where(ann, new_levels[:, t], obs)
            regimes[:, t] = regime[rows, e]
            levels[:, t] = level[rows, e]
        # target: the entity's next observation (scan backwards for the next OBS of the same entity)
        targets = torch.full((batch, length), float("nan"))
        nxt = torch.full((batch, E), float("nan"))
        for t in range(length - 1, -1, -1):
            e = entities[:, t]
            targets[:, t] = nxt[rows, e]
            is_obs = types[:, t] == OBS
            nxt[rows, e] = torch.where(is_obs, values[:, t], nxt[rows, e])
        return TelemetryBatch(types, entities, values, regimes, targets, levels)

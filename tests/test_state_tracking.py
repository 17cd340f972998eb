"""Generators for streaming state tracking (datasets/state_tracking.py)."""

import math

import pytest
import torch

from datasets.state_tracking import (ADD, ANNOUNCE, NOISE, OBS, QUERY, SET, EventStreamTask, RegimeTelemetryTask,
                                     replay)


def reference_targets(types, entities, values, E, V):
    """A plain-Python dictionary replay of one stream: the semantics in the module docstring."""
    state, last, out, since = {}, {}, [], []
    for t, (ty, e, v) in enumerate(zip(types, entities, values)):
        cur = state.get(e, 0)
        if ty == SET:
            state[e], last[e] = v, t
        elif ty == ADD:
            state[e], last[e] = (cur + v) % V, t
        out.append(state.get(e, 0))
        since.append(t - last[e] if e in last else -1)
    return out, since


@pytest.mark.parametrize("E", [1, 5, 300])
def test_event_stream_targets_follow_the_semantics(E):
    task = EventStreamTask(num_entities=E, num_values=8, max_add=3)
    b = task.sample(4, 200, torch.Generator().manual_seed(1))
    for row in range(4):
        ref, since = reference_targets(b.types[row].tolist(), b.entities[row].tolist(), b.values[row].tolist(), E, 8)
        assert b.targets[row].tolist() == ref
        assert b.last_write[row].tolist() == since
    assert torch.equal(replay(b, E, 8), b.targets)
    assert b.entities.min() >= 0 and b.entities.max() < E
    assert set(b.types.unique().tolist()) <= {SET, ADD, QUERY, NOISE}
    adds = b.types == ADD
    assert ((b.values[adds] >= 1) & (b.values[adds] <= 3)).all()
    assert (b.values[b.types == QUERY] == 0).all()


def test_event_stream_is_seeded_and_rates_hold():
    task = EventStreamTask(num_entities=16, write_rate=0.5, query_rate=0.3, add_fraction=0.2)
    a = task.sample(8, 500, torch.Generator().manual_seed(3))
    b = task.sample(8, 500, torch.Generator().manual_seed(3))
    c = task.sample(8, 500, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    assert not torch.equal(a.types, c.types)
    n = a.types.numel()
    writes = ((a.types == SET) | (a.types == ADD)).sum().item() / n
    assert abs(writes - 0.5) < 0.03 and abs(a.query_mask.sum().item() / n - 0.3) < 0.03
    assert abs((a.types == NOISE).sum().item() / n - 0.2) < 0.03


def test_queries_ask_written_entities():
    task = EventStreamTask(num_entities=4096, query_written=True)
    b = task.sample(2, 400, torch.Generator().manual_seed(0))
    for row in range(2):
        written = set()
        for ty, e in zip(b.types[row].tolist(), b.entities[row].tolist()):
            if ty == QUERY and written:
                assert e in written
            if ty in (SET, ADD):
                written.add(e)


def test_hot_entity_is_rewritten_often():
    task = EventStreamTask(num_entities=8, write_rate=0.5, hot_fraction=0.5)
    b = task.sample(1, 4000, torch.Generator().manual_seed(0))
    hot_writes = ((b.entities == 0) & (b.types == SET)).sum().item()
    assert hot_writes > 1000


@pytest.mark.parametrize("field,value", [("num_entities", 0), ("max_add", 16), ("write_rate", 1.5),
                                         ("query_rate", 0.7), ("num_values", 1)])
def test_event_stream_rejects_bad_settings(field, value):
    with pytest.raises(ValueError, match=field):
        EventStreamTask(**{"num_entities": 4, field: value})
    with pytest.raises(ValueError, match="length"):
        EventStreamTask(num_entities=4).sample(1, 0, torch.Generator())


def test_regime_telemetry_announcements_set_levels_and_targets_are_next_observations():
    task = RegimeTelemetryTask(num_entities=6, announce_rate=0.2, noise_sd=(0.0, 0.0))
    b = task.sample(3, 300, torch.Generator().manual_seed(0))
    for row in range(3):
        level = {}
        for t in range(300):
            e, ty, v = b.entities[row, t].item(), b.types[row, t].item(), b.values[row, t].item()
            if ty == ANNOUNCE:
                level[e] = v
            elif e in level:  # zero noise: an observation equals the announced level
                assert math.isclose(v, level[e], abs_tol=1e-6)
            nxt = next((b.values[row, s].item() for s in range(t + 1, 300)
                        if b.entities[row, s] == e and b.types[row, s] == OBS), float("nan"))
            tgt = b.targets[row, t].item()
            assert (math.isnan(nxt) and math.isnan(tgt)) or math.isclose(nxt, tgt, abs_tol=1e-6)
    with pytest.raises(ValueError, match="num_entities"):
        RegimeTelemetryTask(num_entities=0)


def test_per_entity_layout_equals_running_each_entity_alone():
    """benchmarks/state_tracking.py: the per-entity layout (one memory row per entity, masked updates) gives
    the same predictions as feeding each entity's own events to a fresh memory, one entity at a time."""
    import argparse

    from benchmarks.state_tracking import build, map_ids, predict_per_entity, predict_shared

    args = argparse.Namespace(d_model=16, layers=1, d_mem=4, d_ff=32, num_values=8, chunk=7, device="cpu", bf16=False)
    model, _ = build("armt_keyed", args)
    for m in model.backbone.memories:
        torch.nn.init.normal_(m.W_v.weight, std=0.5)
    model.eval()
    g = torch.Generator().manual_seed(0)
    b = EventStreamTask(num_entities=3, num_values=8).sample(2, 40, g)
    ids = map_ids(b.entities, 3, 24, g)
    preds, stats = predict_per_entity(model, b, ids, args)
    assert stats["max_z"] > 0
    for row in range(2):
        for e in range(3):
            sel = (b.entities[row] == e).nonzero().flatten()
            if len(sel) == 0:
                continue
            sub = type(b)(*(t[row : row + 1, sel] for t in (b.types, b.entities, b.values, b.targets, b.last_write)))
            alone, _ = predict_shared(model, sub, ids[row : row + 1, sel], args)
            assert torch.equal(alone[0], preds[row, sel])


def test_replay_refuses_sizes_smaller_than_the_batch_holds():
    task = EventStreamTask(num_entities=3, num_values=5)
    batch = task.sample(2, 40, torch.Generator().manual_seed(0))
    assert torch.equal(replay(batch, 3, 5), replay(batch, 3, 5))
    for args, message in (((2, 5), "entity ids up to 2, more than num_entities=2"),
                          ((3, 0), "num_values must be an int >= 1")):
        with pytest.raises(ValueError, match=message):
            replay(batch, *args)


def test_task_fields_of_the_wrong_type_are_named():
    for make, message in ((lambda: EventStreamTask(num_entities=True), "EventStreamTask.num_entities"),
                          (lambda: EventStreamTask(num_entities=3, write_rate="0.5"), "EventStreamTask.write_rate"),
                          (lambda: RegimeTelemetryTask(num_entities=2, level_scale=float("nan")),
                           "RegimeTelemetryTask.level_scale"),
                          (lambda: RegimeTelemetryTask(num_entities=2, noise_sd=[0.1]), "RegimeTelemetryTask.noise_sd"),
                          (lambda: RegimeTelemetryTask(num_entities=2, announce_rate=True),
                           "RegimeTelemetryTask.announce_rate")):
        with pytest.raises(ValueError, match=message):
            make()

"""Streaming state tracking (DESIGN.md section 8, questions 3 and 4): keyed ARMT against its peers.

Task: datasets/state_tracking.py generator (a): SET / ADD / QUERY / distractor events over E entities,
one event per step (one ARMT segment each); the answer to a query is the entity's current state.
Train every model on streams of L events (same steps, batch, data), then evaluate on fresh streams of
L, 10L, 100L and 1000L events (inference only, batched across the evaluation streams); draw the capacity
curve (accuracy against E at one state size); run the stale-key test (one entity rewritten ~1000 times).

    python -m benchmarks.state_tracking            # full run (~30 min on one core)
    python -m benchmarks.state_tracking --quick    # a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from torch import Tensor, nn

from armt_ts import ARMT, ARMTConfig, MemoryState
from armt_ts.peers import RMT, GRUPeer
from armt_ts.seq_peers import GatedDeltaNet, KNNRetrieval, MambaPeer, SlidingWindowTransformer
from benchmarks.common import (RESULTS, device_name, git_commit, machine_info, markdown_table, non_negative_float,
                               non_negative_int, optimizer_step, positive_float, positive_int, Timer, result_name,
                               write_results)
from datasets.state_tracking import ADD, QUERY, SET, EventBatch, EventStreamTask, replay

MODELS = ("armt_keyed", "armt_content", "rmt", "gru", "mamba", "gdn", "swa", "knn", "oracle")
N_TYPES = 4
MAX_IDS = 4096  # entity ids the models accept (the generator's E goes up to 4096)


class EventEncoder(nn.Module):
    """One token per event: type embedding + value embedding + a projection of a FIXED random entity code.

    The entity codes are seeded N(0, 1) vectors, not learned, so an entity never seen in training still
    gets a distinct token (every model reads the same tokens).
    """

    def __init__(self, d_model: int, num_values: int, seed: int = 1234):
        super().__init__()
        self.type_emb = nn.Embedding(N_TYPES, d_model)
        self.value_emb = nn.Embedding(num_values, d_model)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("codes", torch.randn(MAX_IDS, d_model, generator=g), persistent=False)
        self.entity_proj = nn.Linear(d_model, d_model, bias=False)
        # GPT-2 scale for everything (benchmarks/associative_retrieval.py: N(0, 1) embeddings drown the rest)
        for emb in (self.type_emb, self.value_emb):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.entity_proj.weight, std=0.02 / math.sqrt(d_model))

    def forward(self, types: Tensor, ids: Tensor, values: Tensor) -> Tensor:
        return self.type_emb(types) + self.value_emb(values) + self.entity_proj(self.codes[ids])


class Tracker(nn.Module):
    """Encoder -> backbone -> logits over the V states at every event."""

    def __init__(self, kind: str, backbone: nn.Module, d_model: int, num_values: int):
        super().__init__()
        self.kind = kind
        self.encoder = EventEncoder(d_model, num_values)
        self.backbone = backbone
        self.head = nn.Linear(d_model, num_values)

    def forward(self, types: Tensor, ids: Tensor, values: Tensor, state=None):
        x = self.encoder(types, ids, values)
        if isinstance(self.backbone, ARMT):
            y, state = self.backbone(x, state, ids if self.backbone.config.key_mode != "content" else None)
        else:
            y, state = self.backbone(x, state)
        return self.head(y), state


def armt_config(args: argparse.Namespace, key_mode: str) -> ARMTConfig:
    return ARMTConfig(d_model=args.d_model, n_layers=args.layers, n_heads=2, d_ff=args.d_ff,
                      segment_length=1, num_mem_tokens=1, d_mem=args.d_mem, key_mode=key_mode,
                      key_buckets=MAX_IDS if key_mode != "content" else 0)


def armt_state_floats(args: argparse.Namespace) -> int:
    c = armt_config(args, "content")
    return c.n_layers * c.memory_heads * c.d_key * (c.d_head + 1)


def build(name: str, args: argparse.Namespace, match: str = "state", size: int | None = None) -> tuple[Tracker | None, dict]:
    """-> (model, info) with info["state_floats"] the floats one stream carries, and how it was sized.

    match="state": every peer's carried state is sized to ARMT's (A, z) floats (armt_state_floats).
    ``size`` overrides the peer's size knob (used for the matched-latency configurations).
    """
    D, Lyr, V = args.d_model, args.layers, args.num_values
    target = armt_state_floats(args)
    if name in ("armt_keyed", "armt_content"):
        backbone = ARMT(armt_config(args, "identity" if name == "armt_keyed" else "content"))
        info = {"state_floats": target, "size": f"d_mem {args.d_mem}, K {armt_config(args, 'content').d_key}"}
    elif name == "rmt":
        M = size or max(1, round(target / D))
        backbone = RMT(armt_config(args, "content").replace(num_mem_tokens=M))
        info = {"state_floats": M * D, "size": f"{M} memory tokens"}
    elif name == "gru":
        h = size or max(1, round(target / Lyr))
        backbone = GRUPeer(D, h, Lyr)
        info = {"state_floats": Lyr * h, "size": f"hidden {h}"}
    elif name == "mamba":
        d_inner, d_conv = 2 * D, 4
        N = size or max(1, round(target / (Lyr * d_inner) - (d_conv - 1)))
        backbone = MambaPeer(D, Lyr, d_state=N, expand=2, d_conv=d_conv)
        info = {"state_floats": backbone.state_numel(), "size": f"d_state {N}, d_inner {d_inner}"}
    elif name == "gdn":
        H, dk = 2, 2 * args.d_mem if size is None else size
        dv = max(1, round(target / (Lyr * H * dk))) if size is None else D
        backbone = GatedDeltaNet(D, Lyr, n_heads=H, d_key=dk, d_value=dv, d_ff=args.d_ff)
        info = {"state_floats": backbone.state_numel(), "size": f"{H} heads, d_k {dk}, d_v {dv}"}
    elif name == "swa":
        W = size or max(1, round(target / (Lyr * D))) + 1
        backbone = SlidingWindowTransformer(D, Lyr, n_heads=2, d_ff=args.d_ff, window=W)
        info = {"state_floats": backbone.state_numel(), "size": f"window {W}"}
    elif name == "knn":
        cap = size or max(1, round(target / D))
        backbone = KNNRetrieval(D, k=4, capacity=cap, d_ff=args.d_ff)
        info = {"state_floats": backbone.state_numel(), "size": f"capacity {cap} events, top-4"}
    elif name == "oracle":
        return None, {"state_floats": None, "size": "exact entity -> state table (1 int per entity)"}
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    model = Tracker(name, backbone, D, V)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["match"] = match
    return model, info


def map_ids(entities: Tensor, num_entities: int, id_space: int, g: torch.Generator) -> Tensor:
    """Generator entities [B, L] in [0, E) -> model ids: a random injective map per stream into
    [0, max(E, id_space)) (a fleet registers its entities under arbitrary ids)."""
    space = max(num_entities, id_space)
    perms = torch.argsort(torch.rand(entities.shape[0], space, generator=g), dim=1)[:, :num_entities]
    return torch.gather(perms, 1, entities)


def autocast(args):
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)


def train(model: Tracker, args: argparse.Namespace, seed: int) -> dict:
    """Same steps, batch and data for every model: E ~ U{1..train_entities} per batch, dense loss on the
    state after every event."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 30
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)
                                              * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    log = []
    model.train()
    for step in range(1, args.steps + 1):
        E = int(torch.randint(1, args.train_entities + 1, (1,), generator=g))
        b = task_for(E, args).sample(args.batch, args.train_length, g)
        ids = map_ids(b.entities, E, args.id_space, g)
        with autocast(args):
            logits, _ = model(b.types.to(args.device), ids.to(args.device), b.values.to(args.device))
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), b.targets.to(args.device).flatten())
        optimizer_step(loss, model, opt, sched, f"step {step} ({model.kind}, batch of {args.batch})")
        if step % args.log_every == 0 or step == args.steps:
            with torch.no_grad():
                q = b.query_mask.to(args.device)
                acc = (logits.argmax(-1)[q] == b.targets.to(args.device)[q]).float().mean().item()
            log.append({"step": step, "loss": round(loss.item(), 4), "train_query_acc": round(acc, 4)})
            print(f"    step {step:>5}  loss {loss.item():.4f}  query acc {acc:.3f}", flush=True)
    model.eval()
    return {"log": log}


def task_for(E: int, args: argparse.Namespace, **kw) -> EventStreamTask:
    return EventStreamTask(num_entities=E, num_values=args.num_values, max_add=args.max_add,
                           write_rate=args.write_rate, query_rate=args.query_rate, **kw)


def _armt_stats(state) -> tuple[float, float]:
    return max(a.abs().max().item() for a in state.A), max(z.max().item() for z in state.z)


@torch.no_grad()
def predict_shared(model: Tracker | None, b: EventBatch, ids: Tensor, args: argparse.Namespace) -> tuple[Tensor, dict]:
    """Shared layout: one state per stream (a batch row), all of its entities in it. -> predictions [B, L]."""
    if model is None:  # the oracle: replay the exact table
        return replay(b, int(b.entities.max()) + 1, args.num_values), {}
    preds, state, max_A, max_z = [], None, 0.0, 0.0
    L = b.types.shape[1]
    for s in range(0, L, args.chunk):
        sl = slice(s, s + args.chunk)
        with autocast(args):
            logits, state = model(b.types[:, sl].to(args.device), ids[:, sl].to(args.device),
                                  b.values[:, sl].to(args.device), state)
        preds.append(logits.argmax(-1).cpu())
        if isinstance(state, MemoryState):
            a, zz = _armt_stats(state)
            max_A, max_z = max(max_A, a), max(max_z, zz)
    stats = {"max_abs_A": round(max_A, 3), "max_z": round(max_z, 3)} if isinstance(model.backbone, ARMT) else {}
    return torch.cat(preds, 1), stats


@torch.no_grad()
def predict_per_entity(model: Tracker, b: EventBatch, ids: Tensor, args: argparse.Namespace) -> tuple[Tensor, dict]:
    """Per-entity layout: every (stream, entity) gets its own memory (a batch row) and sees only its own
    events; rows whose entity has no event at a step keep their state unchanged. ARMT only."""
    B, L = b.types.shape
    E = int(b.entities.max()) + 1
    row = torch.arange(B)[:, None] * E + b.entities  # [B, L] -> row of (stream, entity)
    order = torch.argsort(row.flatten() * L + torch.arange(L).repeat(B), stable=True)
    rows_sorted = row.flatten()[order]
    counts = torch.bincount(rows_sorted, minlength=B * E)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(B * L) - starts[rows_sorted]  # position within the row's own subsequence
    Lmax = int(counts.max())
    grid = lambda src, fill: torch.full((B * E, Lmax), fill, dtype=src.dtype).index_put_((rows_sorted, pos), src.flatten()[order])
    types, vals, kid = grid(b.types, 0), grid(b.values, 0), grid(ids, 0)
    valid = torch.zeros(B * E, Lmax, dtype=torch.bool).index_put_((rows_sorted, pos), torch.ones(B * L, dtype=torch.bool))
    out = torch.zeros(B * E, Lmax, dtype=torch.long)
    state, max_A, max_z = None, 0.0, 0.0
    bb = model.backbone
    for t in range(Lmax):
        x = model.encoder(types[:, t : t + 1], kid[:, t : t + 1], vals[:, t : t + 1])
        keys = kid[:, t] if bb.config.key_mode != "content" else None
        y, new = bb.segment_step(x, state, keys)
        if state is None:
            # every row's first event sits at t = 0 (rows with no events at all are never read)
            state = new
        else:
            m = valid[:, t]
            state = MemoryState(tuple(torch.where(m[:, None, None, None], n, o) for n, o in zip(new.A, state.A)),
                                tuple(torch.where(m[:, None, None], n, o) for n, o in zip(new.z, state.z)))
        out[:, t] = model.head(y[:, 0]).argmax(-1)
        if t % args.chunk == 0 or t == Lmax - 1:
            a, zz = _armt_stats(state)
            max_A, max_z = max(max_A, a), max(max_z, zz)
    preds = torch.empty(B * L, dtype=torch.long)
    preds[order] = out[rows_sorted, pos]
    return preds.view(B, L), {"max_abs_A": round(max_A, 3), "max_z": round(max_z, 3)}


def scores(preds: Tensor, b: EventBatch, tail: int) -> dict:
    q = b.query_mask
    correct = (preds == b.targets) & q
    tail_q = q[:, -tail:]
    return {"accuracy": round(correct.sum().item() / max(1, q.sum().item()), 4),
            "accuracy_tail": round(correct[:, -tail:].sum().item() / max(1, tail_q.sum().item()), 4),
            "queries": int(q.sum().item())}


@torch.no_grad()
def update_latency_us(model: Tracker | None, args: argparse.Namespace, events: int = 200) -> float:
    """Median wall time of one event update for ONE stream (batch 1, no grad), after 20 warm-up events."""
    g = torch.Generator().manual_seed(0)
    b = task_for(8, args).sample(1, events + 20, g)
    if model is None:  # oracle: one table lookup + write per event
        table = torch.zeros(1, MAX_IDS, dtype=torch.long)
        times = []
        for t in range(events + 20):
            t0 = time.perf_counter()
            e, ty, v = b.entities[:, t], b.types[:, t], b.values[:, t]
            cur = table[0, e]
            table[0, e] = torch.where(ty == SET, v, torch.where(ty == ADD, (cur + v) % args.num_values, cur))
            times.append(time.perf_counter() - t0)
        return round(1e6 * sorted(times[20:])[len(times[20:]) // 2], 1)
    state, times = None, []
    for t in range(events + 20):
        sl = slice(t, t + 1)
        t0 = time.perf_counter()
        with autocast(args):
            _, state = model(b.types[:, sl].to(args.device), b.entities[:, sl].to(args.device),
                             b.values[:, sl].to(args.device), state)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(1e6 * sorted(times[20:])[len(times[20:]) // 2], 1)


def state_bytes_per_entity(info: dict, layout: str, E: int) -> float | None:
    if info["state_floats"] is None:  # oracle: one int32 per entity
        return 4.0
    per_stream = 4.0 * info["state_floats"]
    return per_stream if layout == "per_entity" else round(per_stream / E, 2)


class EvalData:
    """Evaluation streams, generated once and shared by every model (same seeds, same events)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.cache = args, {}

    def get(self, kind: str, E: int, length: int) -> tuple[EventBatch, Tensor]:
        key = (kind, E, length)
        if key not in self.cache:
            a = self.args
            g = torch.Generator().manual_seed(a.seed + 1000 + 7 * E + length + (1 if kind == "stale" else 0))
            task = task_for(E, a, hot_fraction=0.5) if kind == "stale" else task_for(E, a)
            with Timer() as t:
                b = task.sample(a.eval_streams, length, g)
            ids = map_ids(b.entities, E, a.id_space, g)
            print(f"  [data] {kind} E={E} length={length}: generated in {t.seconds:.1f} s", flush=True)
            self.cache[key] = (b, ids)
        return self.cache[key]


def evaluate_model(name: str, model, info: dict, data: EvalData, args: argparse.Namespace) -> list[dict]:
    rows = []
    latency = update_latency_us(model, args)
    layouts = ["shared"] + (["per_entity"] if name == "armt_keyed" else [])
    base = {"model": name, "match": info.get("match", "state"), "size": info["size"], "params": info.get("params"),
            "train_length": args.train_length, "train_entities_max": args.train_entities,
            "train_seconds": info.get("train_seconds"), "update_latency_us": latency,
            "state_floats_per_stream": info["state_floats"], "eval_streams": args.eval_streams}
    jobs = [("length", args.eval_entities, m * args.train_length) for m in args.length_multipliers]
    if info.get("match", "state") == "state":
        jobs += [("capacity", E, max(10 * args.train_length, 4 * E)) for E in args.capacity_entities
                 if name in args.capacity_models]
        jobs += [("stale", args.eval_entities, args.stale_length)]
    for kind, E, length in jobs:
        b, ids = data.get("stale" if kind == "stale" else "stream", E, length)
        for layout in layouts:
            if kind == "capacity" and layout == "per_entity" and E * args.eval_streams > 40000:
                continue
            with Timer() as t:
                if layout == "per_entity":
                    preds, stats = predict_per_entity(model, b, ids, args)
                else:
                    preds, stats = predict_shared(model, b, ids, args)
            row = {**base, "experiment": kind, "layout": layout, "entities": E, "eval_length": length,
                   "length_multiple": round(length / args.train_length, 2),
                   "state_bytes_per_entity": state_bytes_per_entity(info, layout, E),
                   **scores(preds, b, args.train_length), "eval_seconds": round(t.seconds, 2), **stats}
            if kind == "stale":
                hot = (b.entities == 0) & b.query_mask
                late = hot & (torch.arange(length) >= length - length // 10)
                row["hot_rewrites"] = int(((b.entities == 0) & ((b.types == SET) | (b.types == ADD))).sum(1).min())
                row["hot_query_accuracy_last10pct"] = round(((preds == b.targets) & late).sum().item() / max(1, late.sum().item()), 4)
            if kind == "capacity" and model is not None and name.startswith("armt") and layout == "shared":
                row["key_features_K"] = model.backbone.config.d_key
            rows.append(row)
            print(f"    {name:>12} {layout:>10} {kind:>8} E={E:<5} len={length:<6} acc {row['accuracy']:.4f} "
                  f"tail {row['accuracy_tail']:.4f} ({t.seconds:.1f} s) {stats if stats else ''}", flush=True)
    return rows


def latency_matched_size(name: str, args: argparse.Namespace, target_us: float) -> int:
    """The size knob of ``name`` whose one-stream update latency is closest to ``target_us``."""
    grid = {"gru": [64, 128, 256, 512, 792, 1024, 1536, 2048], "mamba": [4, 9, 16, 32, 64, 128, 256],
            "gdn": [4, 8, 16, 32, 64, 128], "rmt": [1, 4, 16, 50, 100, 200], "swa": [4, 16, 26, 64, 256, 1024],
            "knn": [16, 50, 256, 1024, 4096]}[name]
    best, gap = grid[0], math.inf
    for s in grid:
        torch.manual_seed(args.seed)
        model, _ = build(name, args, "latency", s)
        lat = update_latency_us(model, args, events=60)
        print(f"    [latency match] {name} size {s}: {lat} us (target {target_us})", flush=True)
        if abs(math.log(lat / target_us)) < gap:
            best, gap = s, abs(math.log(lat / target_us))
    return best


def run(args: argparse.Namespace, checkpoint=None) -> dict:
    """All models; ``checkpoint(partial_result)`` is called after each model (results survive a cut-off run)."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = EvalData(args)
    rows, curves, sizes = [], {}, {}
    keyed_latency = None
    for name in args.models:
        torch.manual_seed(args.seed)
        model, info = build(name, args)
        print(f"[{name}] {info}", flush=True)
        if model is not None:
            model.to(args.device)
            with Timer() as t:
                curves[name] = train(model, args, args.seed)["log"]
            info["train_seconds"] = round(t.seconds, 1)
        sizes[name] = info
        new = evaluate_model(name, model, info, data, args)
        rows += new
        if name == "knn" and args.knn_capacity:
            # the same trained retriever, storing far more past events than the matched state allows
            model.backbone.capacity = args.knn_capacity
            big = {**info, "match": "large_store", "state_floats": args.knn_capacity * args.d_model,
                   "size": f"capacity {args.knn_capacity} events, top-4"}
            sizes["knn@large_store"] = big
            rows += evaluate_model(name, model, big, data, args)
        if name == "armt_keyed":
            keyed_latency = new[0]["update_latency_us"]
        if checkpoint:
            checkpoint({"rows": rows, "curves": curves, "sizes": sizes, "wall_seconds": round(time.perf_counter() - t0, 1),
                        "partial": True})
    if args.latency_match and keyed_latency:
        for name in args.latency_match:
            size = latency_matched_size(name, args, keyed_latency)
            torch.manual_seed(args.seed)
            model, info = build(name, args, "latency", size)
            print(f"[{name} @ matched latency] {info}", flush=True)
            if name in sizes and sizes[name]["size"] == info["size"]:
                # the state-matched model is also the latency-matched one: reuse its rows, do not retrain
                sizes[f"{name}@latency"] = {**sizes[name], "match": "latency (same model as match=state)"}
                rows += [{**r, "match": "latency"} for r in rows if r["model"] == name and r["match"] == "state"
                         and r["experiment"] == "length"]
                continue
            with Timer() as t:
                curves[f"{name}@latency"] = train(model, args, args.seed)["log"]
            info["train_seconds"] = round(t.seconds, 1)
            sizes[f"{name}@latency"] = info
            rows += evaluate_model(name, model, info, data, args)
            if checkpoint:
                checkpoint({"rows": rows, "curves": curves, "sizes": sizes,
                            "wall_seconds": round(time.perf_counter() - t0, 1), "partial": True})
    return {"rows": rows, "curves": curves, "sizes": sizes, "wall_seconds": round(time.perf_counter() - t0, 1)}


def goals(rows: list[dict], args: argparse.Namespace) -> list[str]:
    def acc(model, mult, layout="shared", match="state"):
        r = [x for x in rows if x["model"] == model and x["experiment"] == "length" and x["layout"] == layout
             and x["match"] == match and x["length_multiple"] == mult]
        return r[0]["accuracy"] if r else None

    out = []
    for mult, bar in ((100, 0.99), (1000, 0.95)):
        a = acc("armt_keyed", mult)
        if a is not None:
            out.append(f"keyed ARMT (shared memory) at {mult}x the training length: accuracy {a} "
                       f"(goal >= {bar}: {'MET' if a >= bar else 'MISSED'})")
        a = acc("armt_keyed", mult, "per_entity")
        if a is not None:
            out.append(f"keyed ARMT (per-entity memory) at {mult}x: accuracy {a} (goal >= {bar}: {'MET' if a >= bar else 'MISSED'})")
    cap = [x for x in rows if x["model"] == "armt_keyed" and x["experiment"] == "capacity" and x["layout"] == "shared"]
    if cap:
        K = cap[0].get("key_features_K")
        ok = [x["entities"] for x in cap if x["accuracy"] >= 0.95]
        best = max(ok) if ok else 0
        out.append(f"shared keyed memory with K = {K} features tracks up to {best} entities at >= 0.95 "
                   f"(goal >= 0.5 K = {K / 2:g}: {'MET' if best >= K / 2 else 'MISSED'})")
    for mult in (1, 10, 100, 1000):
        k = acc("armt_keyed", mult)
        peers = {m: acc(m, mult) for m in ("rmt", "gru", "mamba", "gdn")}
        peers = {m: a for m, a in peers.items() if a is not None}
        if k is not None and peers:
            ahead = all(k > a for a in peers.values())
            out.append(f"matched state, {mult}x: keyed ARMT {k} vs " + ", ".join(f"{m} {a}" for m, a in peers.items())
                       + f" (goal: ahead of all: {'MET' if ahead else 'MISSED'})")
    return out


def plot(rows: list[dict], path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for (model, layout, match) in sorted({(r["model"], r["layout"], r["match"]) for r in rows if r["experiment"] == "length"}):
        rs = sorted((r for r in rows if r["experiment"] == "length" and (r["model"], r["layout"], r["match"]) == (model, layout, match)),
                    key=lambda r: r["eval_length"])
        ax.plot([r["length_multiple"] for r in rs], [r["accuracy"] for r in rs], marker="o",
                label=f"{model} ({layout}{', matched latency' if match == 'latency' else ''})")
    ax.set_xscale("log"), ax.set_xlabel("evaluation length / training length"), ax.set_ylabel("query accuracy")
    ax.set_title("Length generalisation"), ax.legend(fontsize=7)
    ax = axes[1]
    for (model, layout) in sorted({(r["model"], r["layout"]) for r in rows if r["experiment"] == "capacity"}):
        rs = sorted((r for r in rows if r["experiment"] == "capacity" and (r["model"], r["layout"]) == (model, layout)),
                    key=lambda r: r["entities"])
        ax.plot([r["entities"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=f"{model} ({layout})")
    ax.set_xscale("log"), ax.set_xlabel("entities E"), ax.set_ylabel("query accuracy")
    ax.set_title("Capacity at a fixed state size"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: fewer steps, shorter evaluation")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--train-length", type=positive_int, default=32, help="L, events per training stream")
    p.add_argument("--length-multipliers", type=positive_int, nargs="+", default=None,
                   help="default 1 10 100 1000 (quick: 1 10 100)")
    p.add_argument("--train-entities", type=positive_int, default=12, help="E per training batch ~ U{1..this}")
    p.add_argument("--eval-entities", type=positive_int, default=8, help="E of the length and stale-key evaluations")
    p.add_argument("--capacity-entities", type=positive_int, nargs="+", default=None)
    p.add_argument("--capacity-models", nargs="+", default=["armt_keyed", "armt_content", "gdn", "gru", "oracle"])
    p.add_argument("--stale-length", type=positive_int, default=None,
                   help="default 5000 (quick 1200): entity 0 gets ~1000 SETs")
    p.add_argument("--id-space", type=positive_int, default=None,
                   help="entity ids per stream are drawn from [0, max(E, this)); default K")
    p.add_argument("--num-values", type=positive_int, default=16)
    p.add_argument("--max-add", type=positive_int, default=3)
    p.add_argument("--write-rate", type=non_negative_float, default=0.4)
    p.add_argument("--query-rate", type=non_negative_float, default=0.4)
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per model (default 600; quick 200)")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--log-every", type=positive_int, default=50)
    p.add_argument("--d-model", type=positive_int, default=32)
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--d-ff", type=positive_int, default=128, help="MLP width of every transformer-style block")
    p.add_argument("--d-mem", type=positive_int, default=4, help="ARMT key width r; K = 6r features")
    p.add_argument("--eval-streams", type=positive_int, default=None,
                   help="streams per evaluation row (default 8; quick 4)")
    p.add_argument("--chunk", type=positive_int, default=256,
                   help="events per inference chunk (state carried between chunks)")
    p.add_argument("--latency-match", nargs="*", default=None,
                   help="peers to rerun at ARMT-keyed's per-update latency (default gru mamba gdn; quick: none)")
    p.add_argument("--knn-capacity", type=positive_int, default=4096,
                   help="also evaluate the trained kNN retriever storing this many past events (0: skip)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (ARMT's memory state stays fp32)")
    p.add_argument("--name", type=result_name, default=None,
                   help="result file stem (default state_tracking, quick: state_tracking_quick)")
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (200 if q else 600)
    args.length_multipliers = args.length_multipliers or ([1, 10, 100] if q else [1, 10, 100, 1000])
    args.capacity_entities = args.capacity_entities or ([1, 4, 12, 24, 64, 256] if q else
                                                        [1, 2, 4, 8, 12, 16, 24, 32, 64, 256, 1024, 4096])
    args.stale_length = args.stale_length or (1200 if q else 5000)
    args.eval_streams = args.eval_streams or (4 if q else 8)
    args.id_space = args.id_space or armt_config(args, "content").d_key
    if args.latency_match is None:
        args.latency_match = [] if q else ["gru", "mamba", "gdn"]
    args.name = args.name or ("state_tracking_quick" if q else "state_tracking")
    command = "python -m benchmarks.state_tracking " + " ".join(argv if argv is not None else sys.argv[1:])

    commit = git_commit()
    report(args, command, commit, run(args, lambda partial: report(args, command, commit, partial)))


def report(args: argparse.Namespace, command: str, commit: str, result: dict) -> None:
    """Write results/<name>.json, .md and .png (also called with partial results after every model)."""
    goal_lines = goals(result["rows"], args)
    payload = {"benchmark": "state_tracking", "command": command.strip(), "args": vars(args), "seed": args.seed,
               "git_commit": commit, "machine": machine_info(args.device), "goals": goal_lines, **result}
    png = RESULTS / f"{args.name}.png"
    has_plot = plot(result["rows"], png)
    cols = ["model", "match", "size", "layout", "experiment", "entities", "eval_length", "accuracy", "accuracy_tail",
            "state_bytes_per_entity", "update_latency_us", "max_abs_A", "max_z", "train_seconds", "eval_seconds"]
    stale_cols = ["model", "layout", "entities", "eval_length", "hot_rewrites", "hot_query_accuracy_last10pct",
                  "accuracy", "max_abs_A", "max_z"]
    a = args
    md = [
        "# Streaming state tracking: keyed ARMT against its peers", "",
        f"Command: `{command.strip()}`", "",
        f"Task (datasets/state_tracking.py, generator a): one event per step, SET / ADD (delta 1..{a.max_add}, mod "
        f"{a.num_values}) / QUERY / distractor over E entities; write rate {a.write_rate}, query rate {a.query_rate}; "
        f"queries ask entities written earlier; the answer is the entity's current state. Tokens: type + value "
        f"embedding + projection of a fixed random entity code; ARMT: one event per segment, 1 memory token.",
        "",
        f"Training, identical for every model: {a.steps} steps of batch {a.batch}, streams of L = {a.train_length} "
        f"events, E ~ U{{1..{a.train_entities}}} per batch, AdamW lr {a.lr} (warm-up, cosine), clip 1.0, dense "
        f"cross-entropy on the state after every event. Models: d_model {a.d_model}, {a.layers} layer(s), MLP width {a.d_ff}. "
        f"Evaluation: {a.eval_streams} fresh streams per row (the same streams for every model), batched, no grad, "
        f"in chunks of {a.chunk} events; accuracy over all queries of the stream, accuracy_tail over the queries "
        f"of its last L events. Seed {a.seed}; commit {commit}; wall time {result['wall_seconds']} s on "
        f"{payload['machine'].get('cpu_model', '?')}, {a.threads} thread(s).",
        "",
        "Matched state size: every peer's carried per-stream state (floats kept between events) is sized to keyed "
        f"ARMT's (A, z): {armt_state_floats(a)} floats = layers x K x (D + 1). RMT: memory tokens x D; GRU: layers x "
        "hidden; Mamba: layers x d_inner x (d_state + d_conv - 1); GDN: layers x heads x d_k x d_v; sliding window: "
        "layers x (W - 1) x D cached inputs; kNN: stored events x D. Matched per-update latency: the peer's size knob "
        "picked from a grid so its median one-stream, one-event update time (batch 1, no grad, 1 thread) is closest "
        "to keyed ARMT's (rows with match = latency). Layouts: shared = one memory per stream holding all its "
        "entities (bytes per entity = state bytes / E); per_entity = one memory (batch row) per entity. "
        f"match = large_store: the same trained kNN retriever keeping up to {a.knn_capacity} past events (its latency is "
        "measured with the store still short, 220 events). The oracle replays the exact entity -> state table.",
        "",
        *(["**PARTIAL RESULTS: the run was still going (or was cut off) when this was written.**", ""]
          if result.get("partial") else []),
        "## Goals (issue 6)", "", *[f"- {g}" for g in goal_lines], "",
        "## Sizes", "", markdown_table([{"model": k, **v} for k, v in result["sizes"].items()],
                                        ["model", "match", "size", "state_floats", "params", "train_seconds"]), "",
        "## Length generalisation", "",
        markdown_table([r for r in result["rows"] if r["experiment"] == "length"], cols), "",
        "## Capacity curve (accuracy against E at a fixed state size)", "",
        markdown_table([r for r in result["rows"] if r["experiment"] == "capacity"], cols), "",
        f"## Stale-key test (entity 0 receives half of all writes; stream of {a.stale_length} events)", "",
        markdown_table([r for r in result["rows"] if r["experiment"] == "stale"], stale_cols), "",
    ]
    if has_plot:
        md += [f"![state tracking]({png.name})", ""]
    write_results(args.name, payload, "\n".join(md))
    if not result.get("partial"):
        print("\n".join(goal_lines))


if __name__ == "__main__":
    main()

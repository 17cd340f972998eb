"""Streaming runtime (issue 5, DESIGN.md section 4): per-update latency and throughput for fleets of 1 ... 10000
entities, peak RSS against stream length (10^3 ... 10^7 steps, one fresh process per length), cost per update
(and per step, when a forecast follows every step) against re-running a 512-step window and against a gluonts
PatchTST predictor, diagonal vs sequential schedule, and a long run (max |A|, max z, finiteness) over a 10^7-step
stream of one entity and of a fleet.

    python -m benchmarks.streaming [--quick] [--device cpu|cuda] [--bf16]

The model is the one ``armt-ts forecast`` trains (ARMT d_model 64, 2 layers, segment 8 patch tokens + 4 memory
tokens; patch 16 steps; Student-t head, horizon 24), trained briefly on the embedded synthetic telemetry (cost is
what is measured; accuracy is not). One segment = 8 patches = 128 steps; an "update" is a push that completes a
segment (it runs the backbone: read + write); the other 127 pushes only buffer the step ("cheap" rows).

Timing: wall clock (``time.perf_counter``) and this process's CPU time (``time.process_time``, summed over threads)
are both recorded, since the machine is shared (see ``load_average`` in the results): wall clock includes waiting for
a core. ``--threads`` (default 2, the goals' "2 CPU cores") sets torch's intra-op threads for every part, PatchTST
included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.common import (RESULTS, device_name, git_commit, machine_info, markdown_table, non_negative_int,
                               peak_rss_mb, positive_int, result_name, write_results)

NAME = "streaming"
PARTS = ("rss", "latency", "cost", "schedule")
HORIZON = 24
# our stream's variants: (impl, bf16 autocast, torch.compile'd update)
IMPLS = (("ours", False, False), ("ours_bf16", True, False), ("ours_compiled", False, True),
         ("ours_bf16_compiled", True, True))
WINDOW = 512  # (a): the window the re-run baseline reads at every update


# ---------------------------------------------------------------------------------------------------
# helpers


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    w, c = _clock()
    return w - t0[0], c - t0[1]


def _quantiles(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _signal(rng: np.random.Generator, n: int, start: int, entities: int = 1, p_missing: float = 0.05) -> np.ndarray:
    """[entities, n, 1] telemetry-like values (daily + weekly cycles, noise, regime shifts), NaN where missing."""
    t = np.arange(start, start + n)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=(entities, 1))
    level = 10 + 3 * np.sign(np.sin(2 * np.pi * t / 50_000 + phase))  # regime shifts
    x = level + 2 * np.sin(2 * np.pi * t / 24 + phase) + np.sin(2 * np.pi * t / 168) + rng.normal(0, 0.3, (entities, n))
    x[rng.random(x.shape) < p_missing] = np.nan
    return x[..., None].astype(np.float32)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_model(directory: Path, quick: bool) -> float:
    """Train the ``armt-ts forecast`` model briefly on the embedded synthetic telemetry; returns the wall seconds."""
    from armt_ts.cli import main as cli

    t0 = time.perf_counter()
    code = cli(["forecast", "--epochs", "1" if quick else "2", "--batches-per-epoch", "10" if quick else "25",
                "--save-model", str(directory), "--no-plot", "--out", str(directory / "forecast.csv"), "--seed", "0"])
    if code != 0:
        raise SystemExit(f"training the model failed (exit {code})")
    return time.perf_counter() - t0


def load_stream(model_dir: Path, device: str, entities, bf16: bool = False, compile: bool = False):
    from armt_ts.stream import StreamingForecaster

    return StreamingForecaster.from_directory(model_dir, device=device, entities=entities, bf16=bf16, compile=compile)


# ---------------------------------------------------------------------------------------------------
# 1. latency and throughput


def bench_latency(model_dir: Path, n_entities: int, updates: int, warmup: int, device: str, seed: int,
                  bf16: bool = False, compile: bool = False) -> dict:
    """Single-step pushes for a fleet in lockstep, ``warmup + updates`` full segment cycles; every push is timed.
    bf16: the stream's bf16 autocast (``StreamingForecaster(bf16=True)``); compile: its torch.compile'd update
    (``compile=True``; compiled in the warm-up cycles, which are not timed). The same values are pushed either way."""
    ids = list(range(n_entities))
    sf = load_stream(model_dir, device, ids, bf16, compile)
    rng = np.random.default_rng(seed)
    steps = sf.G * sf.S
    # one block of values reused for every cycle (generating 10000 x 128 fresh values per cycle is not the point)
    block = _signal(rng, steps, 0, n_entities)
    ts0 = np.zeros(n_entities, np.int64)
    upd_w, upd_c, cheap_w, cheap_c, fc_w, fc_c = [], [], [], [], [], []
    cycle_w, cycle_c = [], []
    t = 0
    # first cycle: the first segment completes at window = 128 steps (P == S); later ones every 128 steps
    for cycle in range(warmup + updates):
        c0 = _clock()
        for i in range(steps):
            t0 = _clock()
            done = sf.push(block[:, i], timestamps=ts0 + t, entities=ids)
            _sync(device)
            w, c = _since(t0)
            t += 1
            if cycle >= warmup:
                (upd_w if done else cheap_w).append(w)
                (upd_c if done else cheap_c).append(c)
        cw, cc = _since(c0)
        t0 = _clock()
        sf.forecast(HORIZON)
        _sync(device)
        w, c = _since(t0)
        if cycle >= warmup:
            cycle_w.append(cw)
            cycle_c.append(cc)
            fc_w.append(w)
            fc_c.append(c)
    assert len(upd_w) == updates, f"expected one segment completion per cycle, got {len(upd_w)} in {updates}"
    last_point = sf.forecast(HORIZON).point  # after the last timed cycle: compared across precisions
    # matmul-type FLOPs (torch.utils.flop_counter: mm, bmm, addmm, attention; elementwise ops not counted) of the
    # next segment-completing push, untimed (eager only: the compiled update does the same arithmetic)
    from torch.utils.flop_counter import FlopCounterMode

    update_flops = None
    for i in range(steps if not compile else 0):
        with FlopCounterMode(display=False) as counter:
            done = sf.push(block[:, i], timestamps=ts0 + t, entities=ids)
        t += 1
        if done:
            update_flops = counter.get_total_flops()
    return {"update_flops": update_flops, "update_wall": upd_w, "update_cpu": upd_c, "cheap_wall": cheap_w,
            "cheap_cpu": cheap_c,
            "forecast_wall": fc_w, "forecast_cpu": fc_c, "cycle_wall": cycle_w, "cycle_cpu": cycle_c,
            "steps_per_cycle": steps, "state_bytes": sf.state.nbytes(), "last_point": last_point}


def latency_rows(row: Callable[..., None], impl: str, n: int, updates: int, r: dict) -> None:
    """The result rows of one ``bench_latency`` run ``r`` of ``n`` entities, both clocks; prints its update line."""
    for clock in ("wall", "cpu"):
        p50, p99 = _quantiles(r[f"update_{clock}"])
        row("p50_latency", n, None, impl, p50 * 1e3, "ms", clock=clock, kind="update", samples=updates)
        row("p99_latency", n, None, impl, p99 * 1e3, "ms", clock=clock, kind="update", samples=updates)
        row("p99_latency_per_entity", n, None, impl, p99 / n * 1e6, "us", clock=clock, kind="update", samples=updates)
        c50, c99 = _quantiles(r[f"cheap_{clock}"])
        row("p50_latency", n, None, impl, c50 * 1e3, "ms", clock=clock, kind="buffered",
            samples=len(r[f"cheap_{clock}"]))
        row("p99_latency", n, None, impl, c99 * 1e3, "ms", clock=clock, kind="buffered",
            samples=len(r[f"cheap_{clock}"]))
        f50, _ = _quantiles(r[f"forecast_{clock}"])
        row("p50_latency", n, None, impl, f50 * 1e3, "ms", clock=clock, kind="forecast", samples=updates)
        if clock == "wall" and r["update_flops"] is not None:
            row("flops_per_update", n, None, impl, r["update_flops"] / n / 1e6, "MFLOP",
                kind="matmul-type FLOPs of a segment-completing update, per entity (torch FlopCounterMode)")
            row("achieved_flop_rate", n, None, impl, r["update_flops"] / p50 / 1e9, "GFLOP/s",
                kind="those FLOPs / p50 wall latency of the update")
        tput = n * r["steps_per_cycle"] / statistics.median(r[f"cycle_{clock}"])
        row("throughput", n, None, impl, tput, "entity-steps/s", clock=clock, kind="single-step pushes")
    print(f"  update p50/p99 {np.percentile(r['update_wall'], 50) * 1e3:.2f}/"
          f"{np.percentile(r['update_wall'], 99) * 1e3:.2f} ms wall, "
          f"{np.percentile(r['update_cpu'], 50) * 1e3:.2f}/{np.percentile(r['update_cpu'], 99) * 1e3:.2f} ms cpu",
          flush=True)


def reference_matmul_rate(device: str, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------------
# 2. peak RSS against stream length (one fresh process per length) and the long run


def child_stream(args: argparse.Namespace) -> None:
    """Subprocess: push ``--child-length`` steps for ``--child-entities`` entities in blocks; print one JSON line."""
    torch.set_num_threads(args.threads)
    n, length = args.child_entities, args.child_length
    ids = list(range(n))
    sf = load_stream(Path(args.child_model), args.device, ids)
    rng = np.random.default_rng(args.seed)
    block = 64 * sf.G * sf.S  # 64 segments per push: a block push that completes many segments is one update call
    checks = max(1, length // 10)  # max |A|, max z and a forecast's finiteness, ten times along the stream
    max_a = max_z = 0.0
    nonfinite = 0
    trace = []
    rss_base = peak_rss_mb()
    t0 = _clock()
    pushed, next_check = 0, checks
    while pushed < length:
        L = min(block, length - pushed)
        sf.push(_signal(rng, L, pushed, n), entities=ids)
        pushed += L
        if pushed >= next_check or pushed == length:
            next_check += checks
            a = max(float(x.abs().max()) for x in sf.state.memory.A)
            z = max(float(x.abs().max()) for x in sf.state.memory.z)
            fc = sf.forecast(HORIZON)
            bad = int((~torch.isfinite(fc.quantiles)).sum()) + sum(
                int((~torch.isfinite(x)).sum()) for x in (*sf.state.memory.A, *sf.state.memory.z))
            max_a, max_z, nonfinite = max(max_a, a), max(max_z, z), nonfinite + bad
            trace.append({"steps": pushed, "max_abs_A": a, "max_z": z, "nonfinite": bad,
                          "rss_mb": peak_rss_mb()})
    wall, cpu = _since(t0)
    print(json.dumps({
        "entities": n, "stream_length": length, "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_base, "state_bytes": sf.state.nbytes(), "segments": int(sf.state.segments[0]),
        "max_abs_A": max_a, "max_z": max_z, "nonfinite": nonfinite, "wall_s": wall, "cpu_s": cpu, "trace": trace,
    }))


def run_child(model_dir: Path, length: int, entities: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.streaming", "--child-model", str(model_dir), "--child-length",
           str(length), "--child-entities", str(entities), "--device", args.device, "--seed", str(args.seed),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
    if out.returncode != 0:
        raise SystemExit(f"child {cmd} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# 3. cost per update: ours vs re-running a 512-step window vs gluonts PatchTST


def bench_window_rerun(model_dir: Path, n_entities: int, repeats: int, device: str, seed: int) -> list[float]:
    """(a): the same model re-reads the last 512 steps (4 segments) at every update; seconds (cpu) per call."""
    sf = load_stream(model_dir, device, [0])
    model = sf.model
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.nan_to_num(_signal(rng, WINDOW, 0, n_entities, 0.0))).to(device)
    obs = torch.ones_like(x)
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            t0 = _clock()
            model.quantiles(x, obs, [0.1, 0.5, 0.9])
            _sync(device)
            if i >= 2:
                times.append(_since(t0))
    return times


def train_patchtst(quick: bool, device: str):
    from gluonts.torch.model.patch_tst import PatchTSTEstimator

    from armt_ts.cli import _gluonts_dataset, _synthetic_panel

    tmp = tempfile.mkdtemp(prefix="patchtst-")
    est = PatchTSTEstimator(prediction_length=HORIZON, context_length=WINDOW, patch_len=16, stride=8,
                            batch_size=32, num_batches_per_epoch=5 if quick else 20,
                            trainer_kwargs=dict(max_epochs=1, accelerator="gpu" if device == "cuda" else "cpu",
                                                devices=1, default_root_dir=tmp, logger=False,
                                                enable_progress_bar=False, enable_model_summary=False))
    t0 = time.perf_counter()
    predictor = est.train(_gluonts_dataset(_synthetic_panel()))
    return predictor, time.perf_counter() - t0


@contextlib.contextmanager
def _bf16_network(predictor, device: str):
    """The predictor's network under bf16 autocast, its outputs (distribution parameters) cast back to fp32 for
    gluonts' distribution code (numpy has no bf16), as the stream's head stays fp32."""
    from torch.utils._pytree import tree_map

    net = predictor.prediction_net
    forward = net.forward

    def bf16_forward(*a, **k):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = forward(*a, **k)
        return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)

    net.forward = bf16_forward
    try:
        yield
    finally:
        del net.forward  # back to the class's forward


def bench_patchtst(predictor, n_entities: int, repeats: int, seed: int, bf16: bool = False,
                   device: str = "cpu") -> list[tuple[float, float]]:
    """(b): one predict call per update for every entity's latest 512-step window (a ListDataset of N series).
    bf16: the network under bf16 autocast (``_bf16_network``)."""
    from gluonts.dataset.common import ListDataset

    rng = np.random.default_rng(seed)
    x = np.nan_to_num(_signal(rng, WINDOW, 0, n_entities, 0.0))[..., 0]
    data = ListDataset([{"start": "2024-01-01 00:00", "target": x[i]} for i in range(n_entities)], freq="h")
    predictor.batch_size = max(predictor.batch_size, min(n_entities, 1024))
    times = []
    with _bf16_network(predictor, device) if bf16 else contextlib.nullcontext():
        for i in range(repeats + 2):
            t0 = _clock()
            for f in predictor.predict(data):
                f.quantile(0.5)
            if i >= 2:
                times.append(_since(t0))
    return times


# ---------------------------------------------------------------------------------------------------
# 4. diagonal vs sequential schedule


def bench_schedule(model_dir: Path, segments: list[int], batches: list[int], repeats: int, device: str,
                   bf16: bool) -> list[dict]:
    from armt_ts.schedule import run_diagonal, run_sequential

    backbone = load_stream(model_dir, device, [0]).model.backbone
    T = backbone.config.segment_length
    out = []
    for B in batches:
        for n in segments:
            x = torch.randn(B, n * T, backbone.config.d_model, device=device)
            res = {}
            for name, fn in (("sequential", run_sequential), ("diagonal", run_diagonal)):
                cpu, wall = [], []
                with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                    fn(backbone, x[:, :2 * T], None)  # warm-up
                    for _ in range(repeats):
                        t0 = _clock()
                        fn(backbone, x, None)
                        _sync(device)
                        w, c = _since(t0)
                        wall.append(w)
                        cpu.append(c)
                res[name] = (min(wall), min(cpu))
            with torch.no_grad():
                ys, _ = run_sequential(backbone, x, None)
                yd, _ = run_diagonal(backbone, x, None)
            err = float((ys - yd).abs().max() / ys.abs().max())
            out.append({"batch": B, "segments": n, "seq_wall": res["sequential"][0], "seq_cpu": res["sequential"][1],
                        "diag_wall": res["diagonal"][0], "diag_cpu": res["diagonal"][1], "rel_err": err})
            print(f"  schedule B={B} segments={n}: sequential {res['sequential'][1] * 1e3:.1f} ms cpu, diagonal "
                  f"{res['diagonal'][1] * 1e3:.1f} ms cpu ({res['sequential'][1] / res['diagonal'][1]:.2f}x), "
                  f"rel err {err:.1e}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small configuration (a few minutes)")
    p.add_argument("--device", type=device_name, choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the schedule benchmark (memory stays fp32)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--fleet-long", type=positive_int, default=8,
                   help="entities of the fleet long run (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="torch intra-op threads (default %(default)s: the goals are stated for 2 CPU cores)")
    p.add_argument("--out-name", type=result_name, default=None,
                   help="results file stem (default: streaming, or streaming_quick)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="which measurements to run (default: all). A GPU run takes latency and schedule: peak RSS "
                        "is host memory, and the PatchTST peer is a CPU predictor")
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-entities", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_model:
        return child_stream(args)
    torch.set_num_threads(args.threads)  # --threads >= 1 and --device cuda's availability: checked by the parser
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    commit = git_commit()
    command = "python -m benchmarks.streaming " + " ".join(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    name = args.out_name or (NAME + ("_quick" if quick else ""))
    rows: list[dict] = []

    def row(metric, entities, stream_length, impl, value, unit, **extra):
        rows.append({"metric": metric, "entities": entities, "stream_length": stream_length, "impl": impl,
                     "value": value, "unit": unit, **extra})

    parts = set(args.parts)
    tmp = Path(tempfile.mkdtemp(prefix="armt-stream-bench-"))
    model_dir = tmp / "model"
    print("training the model ...", flush=True)
    train_s = train_model(model_dir, quick)

    # 2. peak RSS per stream length (fresh process each) and the long runs
    lengths = [10**3, 10**4, 10**5] if quick else [10**3, 10**4, 10**5, 10**6, 10**7]
    rss, long_runs = [], []
    for L in lengths if "rss" in parts else []:
        print(f"stream of {L} steps, 1 entity (fresh process) ...", flush=True)
        r = run_child(model_dir, L, 1, args)
        rss.append(r)
        row("peak_rss", 1, L, "ours", r["peak_rss_mb"], "MiB", state_bytes=r["state_bytes"],
            rss_after_load_mb=r["rss_after_load_mb"], wall_s=r["wall_s"], cpu_s=r["cpu_s"])
        print(f"  peak RSS {r['peak_rss_mb']:.1f} MiB, {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s cpu", flush=True)
    fleet_len = 10**5 if quick else 10**7
    if "rss" in parts:
        long_runs = [rss[-1]]
        print(f"fleet long run: {args.fleet_long} entities x {fleet_len} steps each ...", flush=True)
        fr = run_child(model_dir, fleet_len, args.fleet_long, args)
        long_runs.append(fr)
        row("peak_rss", args.fleet_long, fleet_len, "ours", fr["peak_rss_mb"], "MiB", state_bytes=fr["state_bytes"],
            rss_after_load_mb=fr["rss_after_load_mb"], wall_s=fr["wall_s"], cpu_s=fr["cpu_s"])
    for r in long_runs:
        row("max_abs_state", r["entities"], r["stream_length"], "ours", r["max_abs_A"], "", quantity="A")
        row("max_abs_state", r["entities"], r["stream_length"], "ours", r["max_z"], "", quantity="z")
        row("nonfinite", r["entities"], r["stream_length"], "ours", r["nonfinite"], "count",
            quantity="NaN/inf in A, z and forecasts at 10 checkpoints")
    if rss:
        base = next(r for r in rss if r["stream_length"] == (10**4 if not quick else 10**3))
        growth = rss[-1]["peak_rss_mb"] / base["peak_rss_mb"] - 1
        row("peak_rss_growth", 1, rss[-1]["stream_length"], "ours", growth * 100, "%",
            kind=f"from {base['stream_length']} to {rss[-1]['stream_length']} steps")

    # 1. latency / throughput
    fleets = [(1, 20, 2), (100, 10, 2)] if quick else [(1, 200, 3), (100, 60, 2), (1000, 20, 2), (10000, 8, 1)]
    # every fleet four times: fp32 (the default), the stream's bf16 autocast (``StreamingForecaster(bf16=True)``),
    # and each of those with the torch.compile'd update (``compile=True``)
    by_impl: dict[str, dict] = {impl: {} for impl, _, _ in IMPLS}
    lat, lat_bf16 = by_impl["ours"], by_impl["ours_bf16"]
    for n, updates, warmup in fleets if "latency" in parts else []:
        for impl, bf16, compiled in IMPLS:
            print(f"latency ({impl}): {n} entities, {updates} updates ...", flush=True)
            r = bench_latency(model_dir, n, updates, warmup + compiled, args.device, args.seed, bf16, compiled)
            by_impl[impl][n] = r
            latency_rows(row, impl, n, updates, r)
        for impl, base, kind in (("ours_bf16", "ours", "max |bf16 - fp32| / max |fp32|"),
                                 ("ours_compiled", "ours", "max |compiled - eager| / max |eager|"),
                                 ("ours_bf16_compiled", "ours_bf16",
                                  "max |compiled - eager| / max |eager| (both bf16)")):
            ref, got = by_impl[base][n]["last_point"], by_impl[impl][n]["last_point"]
            row("bf16_forecast_rel_diff" if impl == "ours_bf16" else "compiled_forecast_rel_diff", n, None, impl,
                float((got - ref).abs().max() / ref.abs().max()), "",
                kind=f"{kind} over the point forecasts after the last timed cycle")

    if "latency" in parts:
        rate = reference_matmul_rate(args.device)
        row("reference_matmul_rate", None, None, "torch.mm", rate, "GFLOP/s",
            kind="one 2048 x 2048 x 2048 fp32 product on this device and thread count, best of 5: the ceiling "
                 "the update's achieved rate compares with")
        print(f"  reference fp32 matmul: {rate:.0f} GFLOP/s", flush=True)

    # 3. cost per update
    cost_entities = [1, 100] if quick else [1, 1000]
    patchtst_train_s = None
    if "cost" in parts:
        print("PatchTST: training briefly ...", flush=True)
        patchtst, patchtst_train_s = train_patchtst(quick, args.device)
    for n in cost_entities if "cost" in parts else []:
        reps = 10 if n == 1 else 3
        for impl, bf16, compiled in IMPLS:
            ours_src = by_impl[impl].get(n)
            if ours_src is None:
                ours_src = bench_latency(model_dir, n, 5, 1 + compiled, args.device, args.seed, bf16, compiled)
            # ours: the update push plus the forecast read right after it, per entity
            steps = ours_src["steps_per_cycle"]
            for clock in ("wall", "cpu"):
                forecast = statistics.median(ours_src[f"forecast_{clock}"])
                ours = (statistics.median(ours_src[f"update_{clock}"]) + forecast) / n
                row("cost_per_update", n, None, impl, ours * 1e3, "ms", clock=clock,
                    kind="segment-completing push + forecast, per entity")
                # a forecast after every step: a cycle's single-step pushes (one the update) spread over its steps
                per_step = (statistics.median(ours_src[f"cycle_{clock}"]) / steps + forecast) / n
                row("cost_per_step", n, None, impl, per_step * 1e3, "ms", clock=clock,
                    kind=f"a forecast after every step: one cycle's {steps} single-step pushes (one of them the "
                         f"segment-completing update) / {steps} + the forecast, per entity")
        win = bench_window_rerun(model_dir, n, reps, args.device, args.seed)
        peers = [("window_rerun", win, f"our model re-reading the last {WINDOW} steps, per entity")]
        for impl, bf16 in (("patchtst", False), ("patchtst_bf16", True)):
            pt = bench_patchtst(patchtst, n, reps, args.seed, bf16, args.device)
            peers.append((impl, pt, f"gluonts PatchTST predict on the last {WINDOW} steps, per entity"
                                    f"{' (network under bf16 autocast)' if bf16 else ''} "
                                    f"(trained {patchtst_train_s:.0f} s: cost only)"))
        for clock, k in (("wall", 0), ("cpu", 1)):
            for metric in ("cost_per_update", "cost_per_step"):  # the peers re-read their window at every step
                for impl, times, kind in peers:
                    row(metric, n, None, impl, statistics.median(t[k] for t in times) / n * 1e3, "ms",
                        clock=clock, kind=kind)
        print(f"  cost per update, {n} entities: done", flush=True)

    # 4. diagonal vs sequential
    segs = [16, 64] if quick else [16, 32, 64, 128, 256, 512]
    sched = []
    if "schedule" in parts:
        print("diagonal vs sequential ...", flush=True)
        sched = bench_schedule(model_dir, segs, [1, 4] if quick else [1, 4, 16], 2 if quick else 3, args.device,
                               args.bf16)
    for s in sched:
        for clock in ("wall", "cpu"):
            row("diagonal_speedup", s["batch"], s["segments"] * 128, "diagonal_vs_sequential",
                s[f"seq_{clock}"] / s[f"diag_{clock}"], "x", clock=clock, segments=s["segments"],
                sequential_ms=s[f"seq_{clock}"] * 1e3, diagonal_ms=s[f"diag_{clock}"] * 1e3, max_rel_err=s["rel_err"])

    wall = time.perf_counter() - started
    payload = {
        "name": name, "command": command, "commit": commit, "machine": machine_info(args.device),
        "load_average": os.getloadavg(), "seed": args.seed, "threads": args.threads, "wall_seconds": wall,
        "model_train_seconds": train_s,
        "patchtst_train_seconds": patchtst_train_s, "quick": quick, "parts": sorted(parts), "bf16": args.bf16,
        "model": "armt-ts forecast's model (ARMT d64 x 2 layers, segment 8 patch tokens + 4 memory tokens, patch 16, "
                 "Student-t head, horizon 24), trained briefly on the embedded synthetic telemetry",
        "rows": rows, "traces": {f"{r['entities']}x{r['stream_length']}": r["trace"] for r in long_runs},
    }
    md = render_markdown(payload, rss, long_runs, sched)
    write_results(name, payload, md)
    if lat and rss:
        plot(RESULTS / f"{name}.png", lat, rss, lat_bf16, by_impl.get("ours_bf16_compiled"))
    print(f"wrote {RESULTS / name}.json / .md in {wall:.0f} s", flush=True)


def render_markdown(payload: dict, rss: list, long_runs: list, sched: list) -> str:
    rows = payload["rows"]
    sel = lambda **kw: [r for r in rows if all(r.get(k) == v for k, v in kw.items())]  # noqa: E731
    lines = [f"# Streaming runtime ({'quick' if payload['quick'] else 'full'} run)", "",
             f"Command: `{payload['command']}`  ", f"Commit: `{payload['commit']}`  ",
             f"Machine: {payload['machine'].get('cpu_model')} ({payload['machine']['cpu_count']} CPUs, shared; "
             f"load average at the end {', '.join(f'{x:.1f}' for x in payload['load_average'])}), torch "
             f"{payload['machine']['torch']}, {payload['threads']} thread(s), device {payload['machine']['device']}  ",
             f"Seed {payload['seed']}; wall time {payload['wall_seconds']:.0f} s  ", f"Model: {payload['model']}", "",
             "Wall-clock numbers include waiting for a core on this shared machine; CPU numbers are this process's "
             "own CPU time, summed over its threads (so with 2 threads a CPU number can exceed the wall clock: "
             "latency is the wall-clock column).", ""]
    if payload["machine"]["device"] != "cpu":
        lines += [f"On {payload['machine'].get('device_name', payload['machine']['device'])} the wall clock is the "
                  "measure (every timed call ends with a device synchronise); the CPU clock there is the host "
                  "thread's time, mostly launching kernels and waiting.", ""]
    if set(payload["parts"]) != set(PARTS):
        lines += [f"Parts run: {', '.join(payload['parts'])} (`--parts`); the others are in the full run's file.", ""]
    lines += render_sections(payload, rss, long_runs, sched)
    return "\n".join(lines)


def render_sections(payload: dict, rss: list, long_runs: list, sched: list) -> list[str]:
    rows = payload["rows"]
    sel = lambda **kw: [r for r in rows if all(r.get(k) == v for k, v in kw.items())]  # noqa: E731
    lines = []
    titles = {"ours": "", "ours_bf16": ", bf16 autocast (`StreamingForecaster(bf16=True)`)",
              "ours_compiled": ", torch.compile'd update (`StreamingForecaster(compile=True)`)",
              "ours_bf16_compiled": ", bf16 autocast and the torch.compile'd update (`bf16=True, compile=True`)"}
    for impl, title in titles.items():
        table = []
        for n in sorted({r["entities"] for r in sel(metric="p50_latency", kind="update", impl=impl)}):
            d = {"entities": n}
            for clock in ("wall", "cpu"):
                g = lambda m, kind="update": next(r["value"] for r in sel(metric=m, entities=n, clock=clock,  # noqa
                                                                          kind=kind, impl=impl))
                d[f"update p50 / p99 ms ({clock})"] = f"{g('p50_latency'):.2f} / {g('p99_latency'):.2f}"
                d[f"p99 per entity us ({clock})"] = f"{g('p99_latency_per_entity'):.1f}"
                d[f"buffered push p50 / p99 ms ({clock})"] = (f"{g('p50_latency', 'buffered'):.3f} / "
                                                              f"{g('p99_latency', 'buffered'):.3f}")
                d[f"forecast p50 ms ({clock})"] = f"{g('p50_latency', 'forecast'):.2f}"
                d[f"entity-steps/s ({clock})"] = f"{g('throughput', 'single-step pushes'):.0f}"
            for metric, col, fmt in (("flops_per_update", "MFLOP per entity-update", "{:.2f}"),
                                     ("achieved_flop_rate", "GFLOP/s at p50", "{:.1f}"),
                                     ("bf16_forecast_rel_diff", "forecast rel. diff. from fp32", "{:.1e}"),
                                     ("compiled_forecast_rel_diff", "forecast rel. diff. from eager", "{:.1e}")):
                got = sel(metric=metric, entities=n, impl=impl)
                if got:
                    d[col] = fmt.format(got[0]["value"])
            d["samples"] = next(r["samples"] for r in sel(metric="p50_latency", entities=n, kind="update", impl=impl))
            table.append(d)
        if table:
            lines += [f"## Per-update latency (a push that completes a segment) and throughput{title}", "",
                      markdown_table(table, list(table[0])), ""]
            ref = sel(metric="reference_matmul_rate")
            if ref and impl == "ours":
                lines += [f"MFLOP: matmul-type FLOPs of one update (torch FlopCounterMode); GFLOP/s at p50 = those / "
                          f"the p50 wall latency. Reference: one 2048^3 fp32 matmul runs at {ref[0]['value']:.0f} "
                          f"GFLOP/s here.", ""]
            if impl == "ours_bf16":
                lines += ["The embedder and the backbone's matmuls run in bf16 (the memory math, the state, the "
                          "statistics, attention on the CPU and the head stay fp32); the same values are pushed as "
                          "in the fp32 table. Forecast rel. diff.: max |bf16 - fp32| / max |fp32| of the point "
                          "forecasts after the last timed cycle.", ""]
            if impl == "ours_compiled":
                lines += ["The segment update (the backbone's step with its deferred memory write) runs through "
                          "torch.compile (inductor); the embedder, the scaler, the commit of the write and the "
                          "forecast's head run eagerly as above. Compiled during the untimed warm-up cycles. Forecast "
                          "rel. diff.: against the eager stream of the same precision.", ""]

    captions = {
        "cost_per_update": (
            "Cost per update: ours vs re-running a 512-step window vs gluonts PatchTST",
            "ours = the segment-completing push + the forecast read after it (fp32; bf16: the stream's bf16 "
            "autocast); (a) = our model re-reading the last 512 steps (4 segments) at every update; (b) = gluonts "
            "PatchTST (context 512, patch 16, stride 8), `predictor.predict` at every update; (b') = the same with "
            "its network under bf16 autocast. Per entity; milliseconds. The bf16 ratio divides the cheaper of "
            "(b) and (b') by ours in bf16. Compiled: the stream with `compile=True` (fp32, and bf16)."),
        "cost_per_step": (
            "Cost per step when a forecast is wanted after every step",
            "ours = one segment cycle of single-step pushes (the cheap buffered ones and the one update), divided by "
            "its steps, + one forecast; (a) and (b) re-read their window at every step, so their cost is the table "
            "above's. The issue's goal is stated per update (the table above)."),
    }
    for metric, (heading, caption) in captions.items():
        table = []
        for n in sorted({r["entities"] for r in sel(metric=metric)}):
            for clock in ("wall", "cpu"):
                g = {r["impl"]: r["value"] for r in sel(metric=metric, entities=n, clock=clock)}
                d = {"entities": n, "clock": clock, "ours": g["ours"], "window re-run (a)": g["window_rerun"],
                     "patchtst (b)": g["patchtst"], "(b) / ours": g["patchtst"] / g["ours"],
                     "(a) / ours": g["window_rerun"] / g["ours"]}
                if "ours_bf16" in g and "patchtst_bf16" in g:  # (files from before the bf16 rows have neither)
                    d.update({"ours bf16": g["ours_bf16"], "patchtst bf16 (b')": g["patchtst_bf16"],
                              "min(b, b') / ours bf16": min(g["patchtst"], g["patchtst_bf16"]) / g["ours_bf16"]})
                if "ours_compiled" in g and "ours_bf16_compiled" in g:  # (nor files from before compile=True)
                    d.update({"ours compiled": g["ours_compiled"], "(b) / ours compiled": g["patchtst"] /
                              g["ours_compiled"], "ours bf16 compiled": g["ours_bf16_compiled"],
                              "min(b, b') / ours bf16 compiled": min(g["patchtst"], g["patchtst_bf16"]) /
                              g["ours_bf16_compiled"]})
                table.append(d)
        if table:
            lines += [f"## {heading}", "", caption, "", markdown_table(table, list(table[0])), ""]
    if sched:
        lines += ["## Diagonal vs sequential schedule (backbone only, offline long sequence)", "",
                  "128 steps per segment; best of the repeats; max relative difference of the outputs.", "",
                  markdown_table([{"batch": s["batch"], "segments": s["segments"],
                                   "sequential ms (cpu)": s["seq_cpu"] * 1e3, "diagonal ms (cpu)": s["diag_cpu"] * 1e3,
                                   "speedup (cpu)": s["seq_cpu"] / s["diag_cpu"],
                                   "sequential ms (wall)": s["seq_wall"] * 1e3,
                                   "diagonal ms (wall)": s["diag_wall"] * 1e3,
                                   "speedup (wall)": s["seq_wall"] / s["diag_wall"], "max rel diff": s["rel_err"]}
                                  for s in sched],
                                 ["batch", "segments", "sequential ms (cpu)", "diagonal ms (cpu)", "speedup (cpu)",
                                  "sequential ms (wall)", "diagonal ms (wall)", "speedup (wall)", "max rel diff"]), ""]
    if rss:
        lines += ["## Peak RSS against stream length (one entity, a fresh process per length)", "",
                  "Pushed in blocks of 64 segments (8192 steps) per call; every segment goes through the backbone.", "",
                  markdown_table([{"steps": r["stream_length"], "peak RSS MiB": r["peak_rss_mb"],
                                   "RSS after loading MiB": r["rss_after_load_mb"], "state bytes": r["state_bytes"],
                                   "segments": r["segments"], "wall s": r["wall_s"], "cpu s": r["cpu_s"]} for r in rss],
                                 ["steps", "peak RSS MiB", "RSS after loading MiB", "state bytes", "segments",
                                  "wall s", "cpu s"]), ""]
        g = next(r for r in rows if r["metric"] == "peak_rss_growth")
        lines += [f"Peak RSS growth {g['kind']}: {g['value']:.2f}% (goal: <= 5%).", ""]
    if long_runs:
        lines += ["## Long runs: state and output health", "",
                  markdown_table([{"entities": r["entities"], "steps per entity": r["stream_length"],
                                   "max abs A": r["max_abs_A"], "max z": r["max_z"], "NaN/inf found": r["nonfinite"],
                                   "peak RSS MiB": r["peak_rss_mb"], "wall s": r["wall_s"]} for r in long_runs],
                                 ["entities", "steps per entity", "max abs A", "max z", "NaN/inf found",
                                  "peak RSS MiB", "wall s"]), ""]
    return lines


def plot(path: Path, lat: dict, rss: list, lat_bf16: dict | None = None, lat_best: dict | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ns = sorted(lat)
    for clock, style in (("wall", "-o"), ("cpu", "--s")):
        ax1.plot(ns, [np.percentile(lat[n][f"update_{clock}"], 50) / n * 1e6 for n in ns], style,
                 label=f"p50 per entity ({clock})")
        ax1.plot(ns, [np.percentile(lat[n][f"update_{clock}"], 99) / n * 1e6 for n in ns], style,
                 label=f"p99 per entity ({clock})")
    if lat_bf16:
        nb = sorted(lat_bf16)
        ax1.plot(nb, [np.percentile(lat_bf16[n]["update_wall"], 50) / n * 1e6 for n in nb], ":^",
                 label="p50 per entity (wall), bf16 autocast")
    if lat_best:
        nc = sorted(lat_best)
        ax1.plot(nc, [np.percentile(lat_best[n]["update_wall"], 50) / n * 1e6 for n in nc], ":v",
                 label="p50 per entity (wall), bf16 + compiled update")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("entities updated per push")
    ax1.set_ylabel("microseconds per entity-update")
    ax1.set_title("segment-completing push")
    ax1.legend(fontsize=8)
    ls = [r["stream_length"] for r in rss]
    ax2.plot(ls, [r["peak_rss_mb"] for r in rss], "-o", label="peak RSS")
    ax2.plot(ls, [r["rss_after_load_mb"] for r in rss], ":", label="RSS after loading the model")
    ax2.set_xscale("log")
    ax2.set_ylim(0, max(r["peak_rss_mb"] for r in rss) * 1.2)
    ax2.set_xlabel("stream length (steps, one entity)")
    ax2.set_ylabel("MiB")
    ax2.set_title("memory against stream length")
    ax2.legend(fontsize=8)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

"""Research question 2 (DESIGN.md section 8): what forecasting costs as the channel count grows, 7 -> 21 -> 100 -> 1000.

    python -m benchmarks.channels [--quick] [--channels 7 21 100 1000] [--steps 6] [--windows 64] [--device cpu]

Synthetic telemetry with C channels that share a few latent factors (a daily and a weekly cycle, two AR(1)
processes, level shifts; each channel its own loadings plus its own AR(1) noise; ``synthetic_channels``), split
and z-scored as Weather is under DESIGN section 7 (0.7 / 0.1 / 0.2 of the rows), context 336, horizon 96. For every
C and every model, in a child process of its own (so its peak RSS is its own):

- ARMT (joint): the forecast benchmark's default ARMT (``ARMTHyper()``: d_model 64, 2 layers, 8 time patches per
  segment), a token per (patch, channel), so a segment holds 8 C tokens + 4 memory tokens and attention grows with
  C^2;
- ARMT (channel-independent): the same, every (window, channel) its own batch row with its own memory;
- ARMT (mixing): a token per time patch, every channel's values projected together (``PatchConfig.mode="mixing"``);
- DLinear, PatchTST (univariate: every channel its own series, as in the forecast benchmark) and iTransformer (a
  token per channel), gluonts, with the forecast benchmark's fixed settings.

Measured: parameters; seconds per optimiser step (the mean over ``--steps`` steps after one step of warm-up,
each model with its own batch of 32: ARMT 32 windows of all C channels, the univariate gluonts models 32 single-channel
windows, iTransformer 32 windows of all channels; forward, backward and update, the batch's assembly not counted for
any model); prediction milliseconds per window of all C channels (``--windows``
test windows); peak RSS of the child. A child runs under a data-size limit (``--mem-limit-gb``, via RLIMIT_DATA),
so a model that needs more fails with an allocation error that the table reports, instead of waking the kernel's
OOM killer. Accuracy is not compared here: a few optimiser steps say nothing about it; the forecast tables cover 7
(ETTh1, ETTm1) and 21 (Weather) real channels.

Results: ``benchmarks/results/channels.json`` (``rows``: channels, model, status, params, step_seconds,
predict_ms_per_window, peak_rss_mb, ...) and ``.md``, ``.png`` (cost against C).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (command_line, device_name, git_commit, machine_info, markdown_table, non_negative_int,
                               peak_rss_mb, positive_float, positive_int, result_name, write_results)

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["ARMT (joint)", "ARMT (channel-independent)", "ARMT (mixing)", "DLinear", "PatchTST", "iTransformer"]
CONTEXT, HORIZON = 336, 96


def synthetic_channels(n_channels: int, n_steps: int, seed: int) -> np.ndarray:
    """[T, C] float32: C channels mixing six shared latent factors (daily and weekly cycles, two AR(1) processes,
    a level that shifts every ~300 steps) with their own loadings, plus each channel's own AR(1) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)

    def ar1(phi: float, size: tuple[int, ...]) -> np.ndarray:
        e = rng.normal(size=size) * np.sqrt(1 - phi ** 2)
        x = np.empty(size)
        x[0] = e[0]
        for i in range(1, size[0]):
            x[i] = phi * x[i - 1] + e[i]
        return x

    shifts = np.repeat(rng.normal(size=n_steps // 300 + 1), 300)[:n_steps]
    factors = np.stack([np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 24), np.sin(2 * np.pi * t / 168),
                        ar1(0.99, (n_steps,)), ar1(0.9, (n_steps,)), shifts], 1)  # [T, 6]
    loadings = rng.normal(size=(n_channels, factors.shape[1]))
    noise = 0.3 * ar1(0.5, (n_steps, n_channels))
    return (factors @ loadings.T + noise).astype(np.float32)


def synthetic_frame(n_channels: int, n_steps: int, seed: int):
    from armt_ts.data import TimeSeriesFrame

    values = synthetic_channels(n_channels, n_steps, seed)
    stamps = np.datetime64("2024-01-01T00:00", "ns") + np.arange(n_steps) * np.timedelta64(1, "h")
    return TimeSeriesFrame(timestamps=stamps, values=values, observed=np.ones_like(values),
                           channels=[f"ch{i}" for i in range(n_channels)], freq="1h", source="<synthetic>")


def measure(model: str, n_channels: int, steps: int, windows: int, seed: int, device: str) -> dict[str, Any]:
    """One (model, C): train ``1 + steps`` steps and predict ``windows`` test windows, timed (in this process)."""
    import torch

    from armt_ts.data import Windows, to_gluonts
    from benchmarks.forecast import (ARMTBench, ARMTHyper, eval_windows, n_params, predict_armt, predict_gluonts,
                                     prepare_frame, train_armt)

    torch.set_num_threads(1)
    n_steps = max(4000, CONTEXT * 4 + HORIZON * 12)
    prep = prepare_frame(synthetic_frame(n_channels, n_steps, seed), "Weather", CONTEXT)
    w = eval_windows(prep, HORIZON)
    idx = np.arange(min(windows, len(w)))
    past, observed = w.past_values[idx], w.past_observed[idx]
    rss_data = peak_rss_mb()
    out: dict[str, Any] = {"train_rows": prep.train.n_steps}
    if model.startswith("ARMT"):
        hyper = ARMTHyper(channel_independent=model == "ARMT (channel-independent)",
                          patch_mode="mixing" if model == "ARMT (mixing)" else "independent")
        net = ARMTBench(hyper, n_channels, HORIZON, CONTEXT, seed=seed)
        out["params"] = n_params(net)
        out["segment_tokens"] = (8 * (1 if hyper.patch_mode == "mixing" or hyper.channel_independent
                                      else n_channels) + 4)
        # each optimiser step timed as the gluonts callback below times theirs (the batch's sampling not counted),
        # the first one left out as warm-up
        seconds: list[float] = []
        train_armt(net, prep.train, CONTEXT, HORIZON, 1e9, seed, device, False, max_steps=1 + steps,
                   step_seconds=seconds)
        if len(seconds) < 2:  # a non-finite loss stops training early (train_armt logs it)
            raise RuntimeError(f"{model}: {len(seconds)} of {1 + steps} optimiser steps ran; none to time after the "
                               f"warm-up")
        out["step_seconds"] = float(np.mean(seconds[1:]))
        predict_armt(net, past[:2], observed[:2], device, False, batch=32)  # warm-up
        t0 = time.perf_counter()
        pred = predict_armt(net, past, observed, device, False, batch=32)
        out["predict_ms_per_window"] = (time.perf_counter() - t0) * 1e3 / len(idx)
    else:
        # gluonts: each optimiser step timed by a lightning callback (forward, backward and update; the data loader's
        # batch assembly before it is not counted), the first one left out as warm-up
        import lightning.pytorch as lpl

        from benchmarks.forecast import _quiet, make_estimator, trainer_kwargs

        class BatchTimer(lpl.Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self.t0 = 0.0

            def on_train_batch_start(self, *_: Any) -> None:
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, *_: Any) -> None:
                self.seconds.append(time.perf_counter() - self.t0)

        _quiet()
        lpl.seed_everything(seed, workers=True, verbose=False)
        timer = BatchTimer()
        with tempfile.TemporaryDirectory() as root:
            kw = trainer_kwargs(1e9, device, False, root, max_steps=1 + steps) | {"callbacks": [timer]}
            est = make_estimator(model, prep.dataset, HORIZON, CONTEXT, kw)
            predictor = est.train_model(to_gluonts(prep.train, multivariate=model == "iTransformer")).predictor
        out["step_seconds"] = float(np.mean(timer.seconds[1:]))
        out["params"] = n_params(predictor.prediction_net)
        sub = Windows(past, observed, w.future_values[idx], w.future_observed[idx], w.start[idx])
        predict_gluonts(model, est, predictor, prep, sub, device, False)  # warm-up
        t0 = time.perf_counter()
        pred, _ = predict_gluonts(model, est, predictor, prep, sub, device, False)
        out["predict_ms_per_window"] = (time.perf_counter() - t0) * 1e3 / len(idx)
    if not np.isfinite(pred).all():
        raise RuntimeError(f"{model}: non-finite forecasts at C={n_channels}")
    out["rss_after_data_mb"] = rss_data
    return out


def out_of_memory(err: BaseException, limit_gb: float) -> str | None:
    """The status of a child stopped by its memory limit (a MemoryError, or torch's RuntimeError from a failed
    allocation), None for any other error."""
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and "alloc" in str(err).lower()):
        return f"out of memory at the {limit_gb:g} GB limit"
    return None


def child(args: argparse.Namespace) -> None:
    limit = int(args.mem_limit_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    row: dict[str, Any] = {"channels": args.child_channels, "model": args.child_model}
    try:
        row |= measure(args.child_model, args.child_channels, args.steps, args.windows, args.seed, args.device)
        row["status"] = "ok"
    except (MemoryError, RuntimeError) as err:
        status = out_of_memory(err, args.mem_limit_gb)
        if status is None:
            raise
        row["status"], row["error"] = status, (str(err).splitlines() or [type(err).__name__])[0][:200]
    row["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(row), flush=True)


def run_child(model: str, n_channels: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.channels", "--child-model", model, "--child-channels", str(n_channels),
           "--steps", str(args.steps), "--windows", str(args.windows), "--seed", str(args.seed),
           "--device", args.device, "--mem-limit-gb", str(args.mem_limit_gb)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"channels": n_channels, "model": model, "status": f"stopped at the {args.child_timeout:g} s limit",
                "wall_s": time.perf_counter() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        return {"channels": n_channels, "model": model, "status": f"failed (exit {proc.returncode})", "error": tail,
                "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1][len("RESULT "):]) | {"wall_s": time.perf_counter() - t0}


COLUMNS = ["channels", "model", "status", "params", "segment_tokens", "step_seconds", "predict_ms_per_window",
           "peak_rss_mb", "wall_s"]


def render(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        "# Cost against the channel count (research question 2)", "",
        f"Command: `{payload['command']}`  ",
        f"Commit: `{payload['git_commit']}`; wall time {payload['wall_seconds']:.0f} s; seed {payload['seed']}  ",
        f"Machine: {payload['machine'].get('cpu_model', '?')} ({payload['machine'].get('cpu_count', '?')} CPUs), "
        f"device "
        f"{payload['device']}, 1 thread per child process, a {payload['mem_limit_gb']:g} GB data limit per child", "",
        "Synthetic telemetry (`synthetic_channels`: six shared latent factors, per-channel loadings and noise), the "
        f"Weather split, context {CONTEXT}, horizon {HORIZON}. step_seconds: one optimiser step with each model's own "
        "batch of 32 (ARMT and iTransformer: 32 windows of all C channels; DLinear and PatchTST: 32 single-channel "
        "windows, since they train on one channel at a time), the mean over "
        f"{payload['steps']} steps after a warm-up step; a step is its forward, backward and update, the batch's "
        "assembly before it not counted (ARMT: timed inside `train_armt`; gluonts: a lightning callback). "
        "predict_ms_per_window: a forecast of all C channels of one "
        f"window (the mean over {payload['windows']} test windows, batches of 32). peak_rss_mb: the child process's "
        "peak resident memory, its imports and data included. Accuracy is not compared (a few steps say nothing "
        "of it).", "",
        markdown_table(rows, COLUMNS), "",
    ]
    if ok:
        lines += ["Prediction milliseconds per window, by channel count:", ""]
        chans = sorted({r["channels"] for r in rows})
        table = []
        for m in payload["models"]:
            cells = {r["channels"]: r for r in rows if r["model"] == m}
            table.append({"model": m} | {str(c): summary_cell(cells.get(c)) for c in chans})
        lines += [markdown_table(table, ["model"] + [str(c) for c in chans]), ""]
    return "\n".join(lines)


def summary_cell(row: dict[str, Any] | None) -> str:
    """A model's prediction time at one channel count, or why there is none (its status, e.g. out of memory)."""
    if row is None:
        return "not run"
    return f"{row['predict_ms_per_window']:.3g}" if row["status"] == "ok" else row["status"]


def plot(rows: list[dict[str, Any]], models: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in models:
        pts = sorted((r["channels"], r) for r in rows if r["model"] == m and r["status"] == "ok")
        if not pts:
            continue
        c = [p[0] for p in pts]
        axes[0].plot(c, [p[1]["predict_ms_per_window"] for p in pts], marker="o", label=m)
        axes[1].plot(c, [p[1]["step_seconds"] for p in pts], marker="o", label=m)
    for ax, title in zip(axes, ("prediction ms per window (all channels)", "seconds per optimiser step")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("channels")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=positive_int, nargs="+", default=[7, 21, 100, 1000])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--steps", type=positive_int, default=6,
                   help="timed optimiser steps per model (after one warm-up step)")
    p.add_argument("--windows", type=positive_int, default=64, help="test windows predicted per model")
    p.add_argument("--mem-limit-gb", type=positive_float, default=6.0, help="data-size limit of each child process")
    p.add_argument("--child-timeout", type=positive_float, default=900.0,
                   help="seconds before a child is stopped (its row says so)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--quick", action="store_true", help="7 and 21 channels, 2 steps, 16 windows")
    p.add_argument("--out", type=result_name, default=None, help="result name (default: channels, or channels_quick)")
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-channels", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_model:
        child(args)
        return None
    if args.quick:
        args.channels, args.steps, args.windows = [7, 21], 2, 16
    if min(args.channels) < 1 or args.steps < 1 or args.windows < 1 or not args.mem_limit_gb > 0:
        p.error("--channels, --steps and --windows must be >= 1 and --mem-limit-gb > 0")
    t0 = time.perf_counter()
    rows = []
    for c in args.channels:
        for m in args.models:
            r = run_child(m, c, args)
            print(f"C={c:5d} {m:28s} {r['status']:>10s} step {r.get('step_seconds', float('nan')):.3f} s  predict "
                  f"{r.get('predict_ms_per_window', float('nan')):.2f} ms/window  rss {r.get('peak_rss_mb', 0):.0f} MB",
                  flush=True)
            rows.append(r)
    name = args.out or ("channels_quick" if args.quick else "channels")
    payload = {"command": command_line("channels", argv), "git_commit": git_commit(),
               "machine": machine_info(args.device),
               "device": args.device, "seed": args.seed, "steps": args.steps, "windows": args.windows,
               "mem_limit_gb": args.mem_limit_gb, "models": args.models, "context_length": CONTEXT,
               "horizon": HORIZON, "wall_seconds": time.perf_counter() - t0, "rows": rows}
    write_results(name, payload, render(payload))
    plot(rows, args.models, RESULTS / f"{name}.png")
    return payload


if __name__ == "__main__":
    main()

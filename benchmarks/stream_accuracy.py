"""How accurate is a stream's forecast as the stream grows? The stream against the same model's batch forecast over
its context window, and seasonal naive, at the same origins, in one run:

    python -m benchmarks.stream_accuracy [--length 1048576] [--seed 0] [--quick] [--out-name NAME]

Models: the main job's (``armt-ts forecast --save-model``, its default training on the embedded synthetic
telemetry: context 192 steps, 1.5 ARMT segments of 128; a least-squares linear skip over the whole context; memory
reads capped at norm 0.1; the write's old-value estimate floored at 0.1), and the same training with ``--linear-skip
0`` (the network alone), that with ``--read-norm-cap 0 --vbar-floor 0`` too (the paper's memory: the main job's
model before these defaults), ``--context 1152`` (9 segments per training window), ``--random-start`` (training
contexts start at a random patch) and ``--vbar-floor 0`` (the paper's write). ``--models`` picks a subset (the
files ``stream_accuracy_vbar_floor*`` compare the default before the floor with ``--vbar-floor 0.1``).

Data: the main job's kind of telemetry (``datasets.synthetic.generate_telemetry``), ``--length`` steps, seed
``--seed + 1`` (training used ``--seed``): 8 entities x 4 channels, streamed as a fleet of 32 univariate series.
Two panels: "telemetry" (the generator's defaults: trends and level shifts make it drift) and "stationary"
(``trend_scale=0``, ``level_shift_rate=0``: no drift, so the stream's whole-history scaler statistics stay
representative and what changes along the stream is mostly the memory).

Origins: PER_BIN segment ends spread evenly over each geometric bin of stream length (128-1024, 1024-8192, ... up
to ``--length``), and after each of them the start of every patch of the next segment (offsets 0, 16, ..., 112
steps): a stream forecasts at any step, and its last patch then sits anywhere in its segment (a model trained on a
192-step context has only ever forecast from the 4th patch of a segment). At each origin:

- stream: ``StreamingForecaster.forecast`` after pushing every step up to the origin (block pushes between
  origins): the memory of the whole stream, with the scaler statistics of ``from_predictor``'s default
  (``scaler_window`` = the model's context: exponential forgetting);
- stream, whole history: the same with ``scaler_window=None`` (the statistics of every step, equally weighted;
  the only behaviour before ``scaler_window`` existed);
- batch: ``ARMTForecaster.point`` over the last ``context`` steps (at most the origin's): what ``armt-ts
  forecast --model`` does, and the window re-run of ``benchmarks.streaming``'s cost table;
- seasonal naive: the value 24 steps before.

Scored: squared error of the 24 steps after the origin, in each series' standard units (the generator's scale),
over observed targets; MSE per bin, over every origin and (``*_end_mse``) over the segment ends only. Also max |A|
of the stream's memory at each bin's last origin.

Writes ``benchmarks/results/stream_accuracy.json`` (``rows``: model, data, bin_lo, bin_hi, origins,
stream_mse, stream_whole_mse, batch_mse, naive_mse, stream_end_mse, batch_end_mse, max_abs_A) and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (command_line, git_commit, machine_info, markdown_table, non_negative_int, positive_int,
                               result_name, train_main_job, write_results)

NAME = "stream_accuracy"
HORIZON = 24  # the main job's
SEASON = 24  # hourly telemetry: seasonal naive repeats the day
MODELS = {"main job (default)": [], "--linear-skip 0": ["--linear-skip", "0"],
          "--linear-skip 0 --read-norm-cap 0 --vbar-floor 0": ["--linear-skip", "0", "--read-norm-cap", "0",
                                                               "--vbar-floor", "0"],
          "--context 1152": ["--context", "1152"], "--random-start": ["--random-start"],
          "--vbar-floor 0": ["--vbar-floor", "0"]}
PER_BIN = 8  # origins per stream-length bin


def panel(kind: str, length: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> values [S, T, 1] float32 (NaN where missing), observed [S, T, 1] bool and scale [S] (raw units per
    standard unit) of the S = entities x channels univariate series of a generated panel."""
    from datasets.synthetic import TelemetryConfig, generate_telemetry

    extra = {"trend_scale": 0.0, "level_shift_rate": 0.0} if kind == "stationary" else {}
    tel = generate_telemetry(TelemetryConfig(length=length, seed=seed, **extra))
    v = np.ascontiguousarray(tel.values.transpose(0, 2, 1)).reshape(-1, tel.values.shape[1], 1)
    o = np.ascontiguousarray(tel.observed.transpose(0, 2, 1)).reshape(v.shape) > 0
    return v, o, tel.scale.reshape(-1)


def origin_bins(length: int, segment: int, first: int = 1024) -> list[tuple[int, int, list[int]]]:
    """Geometric bins (lo, hi] of stream length from one segment to the last segment end that leaves a segment and a
    horizon after it, each with up to PER_BIN segment-end origins spread evenly inside it."""
    last = (length - HORIZON - segment) // segment * segment
    edges = [segment]
    while edges[-1] * 8 < last:
        edges.append(first if edges[-1] == segment else edges[-1] * 8)
    edges.append(last)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ends = np.arange(lo // segment + 1, hi // segment + 1) * segment  # segment ends in (lo, hi]
        pick = np.unique(np.linspace(0, len(ends) - 1, min(PER_BIN, len(ends))).round().astype(int))
        bins.append((lo, hi, ends[pick].tolist()))
    return bins


def score(model_dir: Path, values: np.ndarray, observed: np.ndarray, scale: np.ndarray,
          bins: list[tuple[int, int, list[int]]]) -> list[dict[str, Any]]:
    """Stream, batch and seasonal-naive squared errors at every origin, summed per bin (see the module docstring)."""
    from armt_ts.gluonts import ARMTPredictor
    from armt_ts.stream import StreamingForecaster

    predictor = ARMTPredictor.deserialize(model_dir)
    model = predictor.prediction_net.model.forecaster.eval()
    context = predictor.prediction_net.model.context_length
    ids = list(range(values.shape[0]))
    streams = {"stream": StreamingForecaster.from_predictor(predictor, entities=ids),
               "stream_whole": StreamingForecaster(model, entities=ids, scaler_window=None)}
    sf = streams["stream"]
    sd = scale[:, None]
    pushed, rows = 0, []
    for lo, hi, origins in bins:
        err = {k: [0.0, 0] for k in ("stream", "stream_whole", "batch", "naive", "stream_end", "batch_end")}
        for t in (end + j * sf.S for end in origins for j in range(sf.G)):
            while pushed < t:  # blocks of at most 64 segments up to the origin
                n = min(t - pushed, 64 * sf.G * sf.S)
                for f in streams.values():
                    f.push(values[:, pushed:pushed + n], observed[:, pushed:pushed + n], entities=ids)
                pushed += n
            truth, seen = values[:, t:t + HORIZON, 0], observed[:, t:t + HORIZON, 0]
            a = max(0, t - context)
            with torch.no_grad():
                batch = model.point(torch.from_numpy(np.nan_to_num(values[:, a:t])), torch.from_numpy(observed[:, a:t]))
            forecasts = {k: f.forecast(HORIZON).point[:, :, 0].numpy() for k, f in streams.items()}
            forecasts |= {"batch": batch[:, :, 0].numpy(),
                          "naive": values[:, t - SEASON:t - SEASON + HORIZON, 0]}  # HORIZON <= SEASON
            if t in origins:  # a segment end: the stream's last patch is the segment's last
                forecasts |= {"stream_end": forecasts["stream"], "batch_end": forecasts["batch"]}
            for k, f in forecasts.items():
                ok = seen & np.isfinite(f)
                e = ((f - truth) / sd)[ok]
                err[k][0] += float((e ** 2).sum())
                err[k][1] += int(ok.sum())
        max_a = max(float(x.abs().max()) for x in sf.state.memory.A)
        rows.append({"bin_lo": lo, "bin_hi": hi, "origins": len(origins),
                     **{f"{k}_mse": s / max(n, 1) for k, (s, n) in err.items()}, "targets": err["stream"][1],
                     "max_abs_A": max_a})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=positive_int, default=2**20, help="steps per series (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="training seed; the panels use seed + 1 (default 0)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true", help="2^14 steps and a few training batches per model")
    p.add_argument("--out-name", type=result_name, default=None,
                   help="results file stem (default: stream_accuracy, or _quick)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME",
                   help=f"which models (default: all of {list(MODELS)})")
    args = p.parse_args(argv)
    from armt_ts.stream import StreamingForecaster

    if args.length < 4096:
        p.error(f"--length: expected >= 4096 steps, got {args.length}")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    length = 2**14 if args.quick else args.length
    rows: list[dict[str, Any]] = []
    train_seconds = {}
    with tempfile.TemporaryDirectory(prefix="armt-stream-acc-") as tmp:
        dirs = {}
        for name, extra in ((n, MODELS[n]) for n in MODELS if n in args.models):
            d = Path(tmp) / f"m{len(dirs)}"
            print(f"training {name} ...", file=sys.stderr, flush=True)
            short = ["--epochs", "1", "--batches-per-epoch", "4"] if args.quick else []
            train_seconds[name] = train_main_job(d, [*short, *extra], args.seed)
            dirs[name] = d
        for kind in ("telemetry", "stationary"):
            values, observed, scale = panel(kind, length, args.seed + 1)
            for name, d in dirs.items():
                probe = StreamingForecaster.from_directory(d, entities=[0])
                bins = origin_bins(length, probe.G * probe.S)
                t0 = time.perf_counter()
                for r in score(d, values, observed, scale, bins):
                    rows.append({"model": name, "data": kind, **r})
                    print(f"{name} / {kind} / ({r['bin_lo']}, {r['bin_hi']}]: stream {r['stream_mse']:.3f} "
                          f"(whole history {r['stream_whole_mse']:.3f}) batch "
                          f"{r['batch_mse']:.3f} naive {r['naive_mse']:.3f} max|A| {r['max_abs_A']:.3g}",
                          file=sys.stderr, flush=True)
                print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    payload = {"benchmark": NAME, "command": command_line(NAME, argv), "git_commit": git_commit(),
               "machine": machine_info("cpu"), "seed": args.seed, "length": length, "threads": args.threads,
               "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - started, "rows": rows}
    write_results(args.out_name or NAME + ("_quick" if args.quick else ""), payload, render(payload))


def render(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    out = ["# Stream forecast accuracy against stream length", "",
           f"Command: `{payload['command']}`  ", f"Commit: `{payload['git_commit']}`; wall time "
           f"{payload['wall_seconds']:.0f} s; seed {payload['seed']}; {payload['threads']} thread(s)  ",
           f"Machine: {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} CPUs)", "",
           f"Each model is trained by `armt-ts forecast` on the embedded synthetic telemetry (1344 steps per series), "
           f"then streams a generated panel of the same kind, {payload['length']} steps x 32 series (seed "
           f"{payload['seed'] + 1}). At origins in each bin of stream length: stream = the "
           f"`StreamingForecaster`'s forecast (the memory of the whole stream; scaler statistics forgetting with "
           f"`scaler_window` = the model's context, `from_predictor`'s default); stream_whole = the same with "
           f"`scaler_window=None` (every step's statistics, equally weighted); batch = the same "
           f"model's forecast over its last context window (`ARMTForecaster.point`, as `armt-ts forecast --model`); "
           f"naive = seasonal naive (24). Origins: {PER_BIN} segment ends per bin and the start of every patch of "
           f"the segment after each (origins counts the segment ends; *_end: at the segment ends only). "
           f"MSE of the next {HORIZON} steps in each series' standard units. "
           f"\"telemetry\" drifts (trends, level shifts); \"stationary\" has neither.", ""]
    for kind in ("telemetry", "stationary"):
        rows = [dict(r, bin=f"({r['bin_lo']}, {r['bin_hi']}]") for r in payload["rows"] if r["data"] == kind]
        out += [f"## {kind}", "", markdown_table(rows, ["model", "bin", "origins", "stream_mse", "stream_whole_mse",
                                                          "batch_mse", "naive_mse", "stream_end_mse",
                                                          "batch_end_mse", "max_abs_A"]), ""]
    out += ["Training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in payload["train_seconds"].items()), ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()

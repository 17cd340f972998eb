"""What the CLI's least-squares linear skip (``--linear-skip N``, ``ForecasterConfig.linear_skip``) does, with and
without it, in one run:

    python -m benchmarks.linear_skip [--data ../shared/data/ett/ETTh1.csv] [--state-length 10000000] [--quick]

1. Backtests: ``armt-ts evaluate`` on the embedded synthetic telemetry (the main job's data and training) and on
   ETTh1 (``--horizon 96 --context 336``; skipped, saying so, when ``--data`` is absent), each with
   ``--linear-skip 0`` and ``512`` (the default): MSE, MAE and CRPS on z-scored values as the command prints them.
2. The memory state of a long stream: the main job's model (``armt-ts forecast --save-model``, its default
   training, ``--seed``) with and without the skip, streamed by ``benchmarks.streaming``'s child (8 entities,
   ``--state-length`` steps each, blocks of 64 segments): max |A|, max z and non-finite values, ten times along.

Writes ``benchmarks/results/linear_skip.json`` (``rows``: part, data, linear_skip, and the metrics) and ``.md``
(``linear_skip_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (command_line, git_commit, machine_info, markdown_table, non_negative_int, positive_int,
                               train_main_job, write_results)

NAME = "linear_skip"
SKIPS = (0, 512)
DEFAULT_DATA = "../shared/data/ett/ETTh1.csv"


def evaluate(args: list[str]) -> dict[str, float]:
    """``python -m armt_ts evaluate ARGS`` -> ARMT's summary row {mse, mae, crps} and seasonal naive's mse."""
    out = subprocess.run([sys.executable, "-m", "armt_ts", "evaluate", *args, "--threads", "1"], capture_output=True,
                         text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"armt-ts evaluate {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    armt, naive = lines["ARMT"], next(v for k, v in lines.items() if k.startswith("SeasonalNaive"))
    return {"mse": float(armt[0]), "mae": float(armt[1]), "crps": float(armt[2]),
            "seasonal_naive_mse": float(naive[1])}


def state_trace(model_dir: Path, length: int, entities: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.streaming", "--child-model", str(model_dir), "--child-length",
           str(length), "--child-entities", str(entities), "--seed", str(seed), "--threads", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "2"})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="ETTh1.csv (default: %(default)s, left out with a note where it is absent)")
    p.add_argument("--state-length", type=positive_int, default=10_000_000,
                   help="steps per entity (default: %(default)s)")
    p.add_argument("--entities", type=positive_int, default=8)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quick", action="store_true", help="10^5 steps per entity, no ETTh1")
    args = p.parse_args(argv)
    started = time.perf_counter()
    length = 100_000 if args.quick else args.state_length
    rows: list[dict[str, Any]] = []
    sets = [("synthetic", [])]
    data = Path(args.data)
    if not args.quick and not data.exists() and args.data != DEFAULT_DATA:  # a path given by hand: a typo, not absence
        p.error(f"--data {args.data}: no such file")
    if args.quick:
        print("ETTh1 left out (--quick)", file=sys.stderr)
    elif data.exists():
        sets.append(("ETTh1", [str(data), "--horizon", "96", "--context", "336"]))
    else:
        print(f"ETTh1 left out: {data} does not exist", file=sys.stderr)
    for name, extra in sets:
        for skip in SKIPS:
            r = evaluate([*extra, "--seed", str(args.seed), "--linear-skip", str(skip)])
            print(f"backtest {name} --linear-skip {skip}: {r}", file=sys.stderr)
            rows.append({"part": "backtest", "data": name, "linear_skip": skip, **r})
    with tempfile.TemporaryDirectory() as tmp:
        for skip in SKIPS:
            d = Path(tmp) / f"skip{skip}"
            train_main_job(d, ["--linear-skip", str(skip)], args.seed)
            r = state_trace(d, length, args.entities, args.seed)
            print(f"state --linear-skip {skip}: max |A| {r['max_abs_A']:.4g}, max z {r['max_z']:.4g}", file=sys.stderr)
            rows.append({"part": "state", "data": "synthetic stream", "linear_skip": skip, "entities": r["entities"],
                         "stream_length": r["stream_length"], "max_abs_A": r["max_abs_A"], "max_z": r["max_z"],
                         "nonfinite": r["nonfinite"],
                         "max_abs_A_trace": [round(t["max_abs_A"], 4) for t in r["trace"]],
                         "max_z_trace": [round(t["max_z"], 4) for t in r["trace"]],
                         "trace_steps": [t["steps"] for t in r["trace"]]})
    payload = {"benchmark": NAME, "command": command_line(NAME, argv), "git_commit": git_commit(),
               "machine": machine_info("cpu"), "seed": args.seed, "wall_seconds": time.perf_counter() - started,
               "rows": rows}
    write_results(NAME + ("_quick" if args.quick else ""), payload, render(payload))  # a quick run keeps the full one


def render(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    back = [r for r in payload["rows"] if r["part"] == "backtest"]
    state = [dict(r, trace=" / ".join(f"{a:.3g}" for a in r["max_abs_A_trace"]))
             for r in payload["rows"] if r["part"] == "state"]
    return "\n".join([
        "# The CLI's least-squares linear skip, with and without", "",
        f"Command: `{payload['command']}`  ", f"Commit: `{payload['git_commit']}`; wall time "
        f"{payload['wall_seconds']:.0f} s; seed {payload['seed']}  ",
        f"Machine: {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} CPUs)", "",
        "## Backtests (`armt-ts evaluate`, one thread)", "",
        "Synthetic: the embedded default (the main job's data and training). ETTh1: `--horizon 96 --context 336`, "
        "origins every 96 steps over the last 20% of the file (not the forecast benchmark's protocol). z-scored "
        "values, as the command prints them.", "",
        markdown_table(back, ["data", "linear_skip", "mse", "mae", "crps", "seasonal_naive_mse"]), "",
        "## Memory state over a long stream", "",
        "The main job's model (`armt-ts forecast`, its default training) with and without the skip, streamed by "
        "`benchmarks.streaming`'s child: every entity its own synthetic signal, blocks of 64 segments. trace: max |A| "
        "at ten points along the stream.", "",
        markdown_table(state, ["linear_skip", "entities", "stream_length", "max_abs_A", "max_z", "nonfinite",
                               "trace"]), ""])


if __name__ == "__main__":
    main()

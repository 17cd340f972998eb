"""How `armt-ts forecast` and `armt-ts stream` scale with the input: seconds and peak memory against rows.

    python -m benchmarks.scale [--quick] [--long 1000x1000 2000x2000 20000x1000] [--wide 1000x5000 5000x5000]
                               [--stream-entities 1000 4000] [--stream-steps 100] [--threads 1] [--seed 0]
                               [--workdir DIR] [--out-name NAME]

The scale QA of the CLI found super-linear costs on large files (278dd0e, 2c565a9, 26a696a, fcdf4b4: one-at-a-time
stream joins, series ids coded by numpy's unique over unicode, timestamps parsed per row, quantiles evaluated per
series and level, stream blocks that forecast the whole fleet); this benchmark keeps those costs measured.

Data (seeded, written to a temporary folder and removed after its runs): hourly telemetry, every series a daily
cycle, a level and a random walk of its own, a ragged start (somewhere in the first quarter of the grid), ~2% empty
value cells and ~1% rows absent (gaps in time). Long files are time-ordered, as a telemetry log is written
(timestamp, id, value: every series' row of an hour, then the next hour; ids like ``sensor-000042``); wide files have
a timestamp column and one column per series. SIZE is SERIESxSTEPS (rows: about 0.87 x series x steps).

- forecast: ``armt-ts forecast FILE --epochs 1 --batches-per-epoch 5 --no-plot --out OUT --threads T --seed S`` on
  every long file (CSV and Parquet) and wide file (CSV), each in a child process of its own, so its peak RSS (VmHWM)
  is its own. The child runs the CLI's ``main`` with timers around its phases (``_read_panel``: reading and checking
  the file; ``train``; ``predict``; ``write_csv``); the CLI itself prints only the training time. A run on a tiny
  file with the same options (the baseline: interpreter, imports and 5 training batches) gives the fixed cost;
  ``marginal_*`` is a run's excess over it. Log-log slopes of seconds (and of each phase, and of RSS) against cells
  (rows of a long file, series x steps of a wide one) are fitted per layout and format: 1 is linear.
- stream: ``armt-ts stream --model M --id id FILE --out OUT --every 24 --threads T`` on time-ordered long CSVs of E
  entities, without ``--state``, and with ``--state`` saved every ``--save-every`` rows (default: a quarter of the
  file's rows, so four saves and the last); M is the baseline run's model (``--save-model``). A block forecasts the
  entities pushed since the block before, so the output is at most rows x H (``out_per_row`` <= H = 24 while
  --every <= E), not blocks x entities x H: ``fleet_block_rows`` is what forecasting every entity with data at every
  block (before fcdf4b4) would have written. A row costs ~0.5 ms here, so the default files are 100 steps per
  entity: under the model's 128-step segment, no memory write (``--stream-steps 180`` gives them, at ~1.8x the time).

The full run takes ~12 minutes on a 2-core CPU, --quick ~2. Results: ``benchmarks/results/scale.json`` (``rows``:
part, layout, format, series, steps, rows, cells, wall_s, peak_rss_mb, phase seconds, ...; ``slopes``;
``baseline``) and ``.md`` (``scale_quick`` with --quick; ``--out-name`` names another).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (command_line, git_commit, machine_info, markdown_table, non_negative_int, peak_rss_mb,
                               positive_float, positive_int, result_name, write_results)

NAME = "scale"
ROOT = Path(__file__).resolve().parents[1]
START = np.datetime64("2024-01-01T00:00", "us")
HORIZON = 24  # the CLI's default, which the runs keep
FORECAST_OPTIONS = ["--epochs", "1", "--batches-per-epoch", "5", "--no-plot"]
FULL = {"long": ["1000x1000", "2000x2000", "20000x1000"], "wide": ["1000x5000", "5000x5000"],
        "stream_entities": [1000, 4000], "stream_steps": 100}
QUICK = {"long": ["100x1000", "400x1000"], "wide": ["200x2000"], "stream_entities": [200, 800], "stream_steps": 48}
BASELINE = (10, 400)  # series x steps of the baseline file (and of the stream's model)
MISSING, ABSENT = 0.02, 0.01  # shares of empty value cells and of absent rows


def size(text: str) -> tuple[int, int]:
    """SERIESxSTEPS, e.g. 1000x1000."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 2:
        raise argparse.ArgumentTypeError(f"expected SERIESxSTEPS (e.g. 1000x1000, at least 1x2), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------- data


def _series_values(n_series: int, n_steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> ([T, S] float32 values, NaN before each series' ragged start and in ~MISSING of the cells; [S] starts)."""
    first = rng.integers(0, max(1, n_steps // 4), n_series)
    level = rng.normal(0, 10, n_series).astype(np.float32)
    amp = rng.uniform(0.5, 3, n_series).astype(np.float32)
    phase = rng.uniform(0, 24, n_series).astype(np.float32)
    t = np.arange(n_steps, dtype=np.float32)[:, None]
    values = np.cumsum(rng.standard_normal((n_steps, n_series), dtype=np.float32) * np.float32(0.1), axis=0)
    values += level + amp * np.sin(np.float32(2 * np.pi / 24) * (t + phase))
    values[rng.random((n_steps, n_series), dtype=np.float32) < MISSING] = np.nan
    values[np.arange(n_steps)[:, None] < first[None, :]] = np.nan
    return values, first


def long_table(n_series: int, n_steps: int, seed: int):
    """A time-ordered long polars frame (timestamp, id, value; null where a value is missing): every series from its
    ragged start, ~ABSENT of those rows left out (gaps) and ~MISSING of the values empty."""
    import polars as pl

    rng = np.random.default_rng(seed)
    values, first = _series_values(n_series, n_steps, rng)
    keep = (np.arange(n_steps)[:, None] >= first[None, :]) & (rng.random((n_steps, n_series), dtype=np.float32)
                                                              >= ABSENT)
    step, series = np.nonzero(keep)  # row-major: time-ordered, then by series
    del keep
    vals = values[step, series]
    del values
    names = pl.Series("id", [f"sensor-{i:06d}" for i in range(n_series)])
    return pl.DataFrame({"timestamp": START + step.astype("timedelta64[h]"), "id": names.gather(series),
                         "value": pl.Series("value", vals, nan_to_null=True)})


def wide_table(n_series: int, n_steps: int, seed: int):
    """A wide polars frame: timestamp and one column per series (null before its start and in ~MISSING cells)."""
    import polars as pl

    rng = np.random.default_rng(seed)
    values, _ = _series_values(n_series, n_steps, rng)
    stamps = pl.Series("timestamp", START + np.arange(n_steps).astype("timedelta64[h]"))
    cols = [pl.Series(f"sensor-{i:06d}", values[:, i], nan_to_null=True) for i in range(n_series)]
    return pl.DataFrame([stamps, *cols])


def write_table(df, path: Path) -> None:
    if path.suffix == ".csv":
        df.write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S", float_precision=3)
    else:
        df.write_parquet(path)


def make_files(layout: str, shape: tuple[int, int], formats: list[str], seed: int, folder: Path) -> dict[str, Any]:
    """Write one table in every format; -> its facts and the paths."""
    t0 = time.perf_counter()
    df = (long_table if layout == "long" else wide_table)(*shape, seed)
    info: dict[str, Any] = {"layout": layout, "series": shape[0], "steps": shape[1], "rows": df.height,
                            "cells": df.height if layout == "long" else df.height * shape[0], "paths": {}}
    if layout == "long":
        info["observed"] = int(df["value"].is_not_null().sum())
    for fmt in formats:
        path = folder / f"{layout}_{shape[0]}x{shape[1]}.{fmt}"
        write_table(df, path)
        info["paths"][fmt] = path
    info["generate_s"] = time.perf_counter() - t0
    return info


def stream_table(n_entities: int, n_steps: int, seed: int):
    """A stream's time-ordered long frame, and the sorted row numbers (1-based) of every entity's first observed
    value."""
    import polars as pl

    df = long_table(n_entities, n_steps, seed)
    first = (df.with_row_index("row", offset=1).filter(pl.col("value").is_not_null()).group_by("id")
             .agg(pl.col("row").min())["row"].to_numpy())
    return df, np.sort(first)


def fleet_block_rows(first_obs: np.ndarray, rows: int, every: int) -> int:
    """Forecast rows written if every block forecast every entity with an observed value so far (before fcdf4b4):
    a block after every ``every`` rows pushed, and one at the end when the last block is not there."""
    ends = list(range(every, rows + 1, every)) if every else []
    if not ends or ends[-1] != rows:
        ends.append(rows)
    return int(np.searchsorted(first_obs, np.array(ends), side="right").sum()) * HORIZON


# ---------------------------------------------------------------- child processes


def child(argv: list[str]) -> int:
    """The child's side: ``armt_ts.cli.main(argv)`` with timers around its phases, then a RESULT line on stdout
    (phases in seconds, calls per phase, peak RSS, CPU seconds)."""
    import resource

    t_start = time.perf_counter()
    import armt_ts.cli as cli

    phases: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(owner: Any, attr: str, key: str) -> None:
        fn = getattr(owner, attr)

        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
                calls[key] = calls.get(key, 0) + 1

        setattr(owner, attr, wrapper)

    if argv[0] == "forecast":
        for attr, key in (("_read_panel", "read"), ("train", "train"), ("predict", "predict"),
                          ("write_csv", "write")):
            timed(cli, attr, key)
    else:
        from armt_ts.stream import StreamingForecaster

        timed(StreamingForecaster, "forecast", "forecast")
        timed(StreamingForecaster, "save", "save")
        timed(StreamingForecaster, "join", "join")
        timed(cli._StreamOutput, "write", "write")
    t_main = time.perf_counter()
    code = cli.main(argv)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    sys.stdout.flush()
    print("RESULT " + json.dumps({"code": code, "phases": phases, "calls": calls, "peak_rss_mb": peak_rss_mb(),
                                  "cpu_s": ru.ru_utime + ru.ru_stime, "import_s": t_main - t_start,
                                  "main_s": time.perf_counter() - t_main}), flush=True)
    return code


def run_child(argv: list[str], threads: int, timeout: float) -> dict[str, Any]:
    """``armt-ts ARGV`` in a child process (``child``); -> wall seconds, the child's RESULT and its output's tail."""
    cmd = [sys.executable, "-c", "import sys; from benchmarks.scale import child; sys.exit(child(sys.argv[1:]))",
           *map(str, argv)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"stopped at the {timeout:g} s limit", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1][:300]
        return {"status": f"failed (exit {proc.returncode})", "error": tail, "wall_s": wall}
    result = json.loads(lines[-1][len("RESULT "):])
    return {"status": "ok", "wall_s": wall, **result, "stdout": proc.stdout, "stderr": proc.stderr}


def _phase_columns(row: dict[str, Any], result: dict[str, Any]) -> None:
    for key, seconds in result.get("phases", {}).items():
        row[f"{key}_s"] = seconds
    for key in ("peak_rss_mb", "cpu_s", "main_s", "status", "error"):
        if key in result:
            row[key] = result[key]


def forecast_run(info: dict[str, Any], fmt: str, args: argparse.Namespace, folder: Path,
                 extra: list[str] = ()) -> dict[str, Any]:
    path = info["paths"][fmt]
    out = folder / f"forecast_{path.stem}_{fmt}.csv"
    argv = ["forecast", path, *FORECAST_OPTIONS, "--out", out, "--threads", args.threads, "--seed", args.seed, *extra]
    result = run_child(argv, args.threads, args.child_timeout)
    row = {"part": "forecast", "layout": info["layout"], "format": fmt,
           **{k: info[k] for k in ("series", "steps", "rows", "cells")}, "file_mb": path.stat().st_size / 2 ** 20,
           "wall_s": result["wall_s"]}
    _phase_columns(row, result)
    if result["status"] == "ok":
        m = re.search(r"wrote \S+ \((\d+) rows\)", result["stdout"])
        row["out_rows"] = int(m.group(1)) if m else None
        m = re.search(r"forecast: (\d+) series from .*?, (\d+) steps of", result["stdout"])
        if m:
            row["series_read"], row["steps_read"] = int(m.group(1)), int(m.group(2))
        trained = re.search(r"trained in ([\d.]+) s", result["stdout"])
        row["cli_trained_s"] = float(trained.group(1)) if trained else None
    out.unlink(missing_ok=True)
    return row


def stream_run(path: Path, model: Path, info: dict[str, Any], config: str, args: argparse.Namespace, folder: Path,
               save_every: int | None) -> dict[str, Any]:
    out, state = folder / f"stream_{path.stem}.csv", folder / f"stream_{path.stem}.state"
    out.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    argv = ["stream", "--model", model, "--id", "id", path, "--out", out, "--every", args.every, "--threads",
            args.threads]
    if save_every is not None:
        argv += ["--state", state, "--save-every", save_every]
    result = run_child(argv, args.threads, args.child_timeout)
    row = {"part": "stream", "layout": "long", "format": "csv", "config": config, "entities": info["series"],
           "steps": info["steps"], "rows": info["rows"], "every": args.every, "save_every": save_every,
           "file_mb": path.stat().st_size / 2 ** 20, "wall_s": result["wall_s"]}
    _phase_columns(row, result)
    if result["status"] == "ok":
        m = re.search(r"stream: (\d+) row\(s\) from .*?; (\d+) entities.*?(\d+) segment\(s\) written to memory; "
                      r"(\d+) forecast row\(s\)", result["stderr"])
        if m:
            row["rows_pushed"], row["entities_seen"], row["segments"], row["out_rows"] = map(int, m.groups())
        row["forecast_blocks"] = result["calls"].get("forecast", 0)
        row["saves"] = result["calls"].get("save", 0)
        row["state_mb"] = state.stat().st_size / 2 ** 20 if state.exists() else None
    out.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    return row


# ---------------------------------------------------------------- summary


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of log(y) against log(x) (1: linear); None with fewer than two distinct x or y <= 0."""
    pts = [(x, y) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def derive(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-million-cell seconds, marginal seconds and RSS over the baseline, and the stream's per-row numbers; ->
    the fitted slopes."""
    base_s, base_rss = baseline.get("wall_s"), baseline.get("peak_rss_mb")
    for r in rows:
        if r.get("status") != "ok":
            continue
        if r["part"] == "forecast":
            mcells = r["cells"] / 1e6
            r["s_per_mcell"] = r["wall_s"] / mcells
            r["marginal_s"] = r["wall_s"] - base_s
            r["marginal_s_per_mcell"] = r["marginal_s"] / mcells
            r["rss_b_per_cell"] = r["peak_rss_mb"] * 2 ** 20 / r["cells"]
            r["marginal_rss_b_per_cell"] = (r["peak_rss_mb"] - base_rss) * 2 ** 20 / r["cells"]
            r["series_ok"] = r.get("series_read") == r["series"] and r.get("out_rows") == r["series"] * HORIZON
        else:
            pushed = r.get("rows_pushed") or r["rows"]
            r["us_per_row"] = r["wall_s"] / pushed * 1e6
            r["main_us_per_row"] = r["main_s"] / pushed * 1e6
            r["join_us_per_entity"] = r.get("join_s", 0.0) / r["entities"] * 1e6
            r["out_per_row"] = (r.get("out_rows") or 0) / pushed
            r["forecast_us_per_row"] = r.get("forecast_s", 0.0) / pushed * 1e6
            r["save_s_per_save"] = r["save_s"] / r["saves"] if r.get("saves") else None
    slopes = []
    groups = sorted({(r["part"], r["layout"], r["format"]) for r in rows if r["part"] == "forecast"})
    for part, layout, fmt in groups:
        pts = [r for r in rows if (r["part"], r["layout"], r["format"]) == (part, layout, fmt) and r.get("status") ==
               "ok"]
        x = [r["cells"] for r in pts]
        slopes.append({"part": part, "layout": layout, "format": fmt, "points": len(pts),
                       "range": f"{min(x, default=0):,} .. {max(x, default=0):,} cells",
                       "wall_slope": loglog_slope(x, [r["wall_s"] for r in pts]),
                       "marginal_slope": loglog_slope(x, [r["marginal_s"] for r in pts]),
                       **{f"{k}_slope": loglog_slope(x, [r.get(f"{k}_s") for r in pts])
                          for k in ("read", "train", "predict", "write")},
                       "rss_slope": loglog_slope(x, [r["peak_rss_mb"] - base_rss for r in pts])})
    for config in sorted({r["config"] for r in rows if r["part"] == "stream"}):
        pts = [r for r in rows if r.get("config") == config and r.get("status") == "ok"]
        x = [r.get("rows_pushed") or r["rows"] for r in pts]
        slopes.append({"part": "stream", "config": config, "points": len(pts),
                       "range": f"{min(x, default=0):,} .. {max(x, default=0):,} rows",
                       "wall_slope": loglog_slope(x, [r["wall_s"] for r in pts]),
                       "main_slope": loglog_slope(x, [r["main_s"] for r in pts]),
                       **{f"{k}_slope": loglog_slope(x, [r.get(f"{k}_s") for r in pts])
                          for k in ("forecast", "write", "save")},
                       "rss_slope": loglog_slope(x, [r["peak_rss_mb"] for r in pts])})
    return slopes


FORECAST_COLUMNS = ["layout", "format", "series", "steps", "rows", "cells", "file_mb", "wall_s", "read_s", "train_s",
                    "predict_s", "write_s", "peak_rss_mb", "s_per_mcell", "marginal_s_per_mcell", "rss_b_per_cell",
                    "marginal_rss_b_per_cell", "out_rows", "status"]
STREAM_COLUMNS = ["config", "entities", "steps", "rows_pushed", "wall_s", "main_s", "main_us_per_row",
                  "join_us_per_entity", "forecast_blocks", "forecast_s", "write_s", "saves", "save_s", "state_mb",
                  "segments", "out_rows", "out_per_row", "fleet_block_rows", "peak_rss_mb", "status"]
SLOPE_COLUMNS = ["layout", "format", "points", "range", "wall_slope", "marginal_slope", "read_slope", "train_slope",
                 "predict_slope", "write_slope", "rss_slope"]
STREAM_SLOPE_COLUMNS = ["config", "points", "range", "wall_slope", "main_slope", "forecast_slope", "write_slope",
                        "save_slope", "rss_slope"]


def render(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    rows, base, slopes = payload["rows"], payload["baseline"], payload["slopes"]
    fc = [r for r in rows if r["part"] == "forecast"]
    st = [r for r in rows if r["part"] == "stream"]
    nan = float("nan")
    lines = [
        "# How `armt-ts forecast` and `armt-ts stream` scale with the input", "",
        f"Command: `{payload['command']}`  ",
        f"Commit: `{payload['git_commit']}`; wall time {payload['wall_seconds']:.0f} s; seed {payload['seed']}  ",
        f"Machine: {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} CPUs), {payload['threads']} thread(s) per "
        f"run (`--threads`, OMP_NUM_THREADS); load average at the start {payload['load_average']}", "",
        "Seeded synthetic hourly telemetry: a daily cycle, a level and a random walk per series, ragged starts (in "
        f"the first quarter of the grid), {MISSING:.0%} empty value cells and {ABSENT:.0%} absent rows; long files "
        "time-ordered (timestamp, id, value), wide files a timestamp and a column per series. Every run is a child "
        "process of its own and its peak RSS (peak_rss_mb) is that process's VmHWM. cells: rows of a long file, "
        "series x steps of a wide one. No older commit is measured here (no same-run peer).", "",
        "## forecast", "",
        f"`armt-ts forecast FILE {' '.join(FORECAST_OPTIONS)} --out OUT --threads {payload['threads']} --seed "
        f"{payload['seed']}`; read / train / predict / write: timers around the CLI's `_read_panel`, `train`, "
        "`predict` and `write_csv` (the CLI prints only the training time). Baseline, the fixed cost (interpreter, "
        f"imports, 5 training batches): a {BASELINE[0]}x{BASELINE[1]} long CSV ({base.get('rows')} rows) in "
        f"{base.get('wall_s', nan):.1f} s (train {base.get('train_s', nan):.1f} s), "
        f"{base.get('peak_rss_mb', nan):.0f} MB peak RSS; marginal_*: a run's excess over it. out_rows: forecast "
        f"rows written (series x {HORIZON}).", "",
        markdown_table(fc, FORECAST_COLUMNS), "",
        "Fitted log-log slopes against cells (1: linear; marginal: the seconds over the baseline's; read ... write: "
        "the phases; rss: the peak RSS over the baseline's):", "",
        markdown_table([s for s in slopes if s["part"] == "forecast"], SLOPE_COLUMNS), "",
    ]
    if st:
        lines += [
            "## stream", "",
            f"`armt-ts stream --model M --id id FILE --out OUT --every {payload['every']} --threads "
            f"{payload['threads']}` [`--state S --save-every N`] on time-ordered long CSVs of E entities x steps; M "
            "was saved by the baseline run (`--save-model`). main_s: the CLI's `main` (the interpreter and torch's "
            "import left out); main_us_per_row: main_s per row pushed; forecast_s / write_s / save_s / join_s: time in "
            "`StreamingForecaster.forecast`, in writing forecast CSV lines, in `StreamingForecaster.save`, in "
            "`StreamingForecaster.join`. segments: memory writes (a 128-step segment completed). out_per_row: forecast "
            f"rows per row pushed (at most H = {HORIZON} while --every <= E); fleet_block_rows: the rows that "
            "forecasting every entity with data at every block (before fcdf4b4) would have written.", "",
            markdown_table(st, STREAM_COLUMNS), "",
            "Fitted log-log slopes against rows pushed (1: linear):", "",
            markdown_table([s for s in slopes if s["part"] == "stream"], STREAM_SLOPE_COLUMNS), "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", type=size, nargs="*", default=None, metavar="SIZE",
                   help=f"long files, SERIESxSTEPS (default: {' '.join(FULL['long'])}; --quick: "
                        f"{' '.join(QUICK['long'])}; none: no long run)")
    p.add_argument("--wide", type=size, nargs="*", default=None, metavar="SIZE",
                   help=f"wide files, SERIESxSTEPS (default: {' '.join(FULL['wide'])}; --quick: "
                        f"{' '.join(QUICK['wide'])}; none: no wide run)")
    p.add_argument("--formats", nargs="+", choices=["csv", "parquet"], default=["csv", "parquet"],
                   help="formats of the long files (default: both)")
    p.add_argument("--wide-formats", nargs="+", choices=["csv", "parquet"], default=["csv"],
                   help="formats of the wide files (default: csv)")
    p.add_argument("--stream-entities", type=positive_int, nargs="*", default=None, metavar="E",
                   help=f"fleets streamed (default: {' '.join(map(str, FULL['stream_entities']))}; --quick: "
                        f"{' '.join(map(str, QUICK['stream_entities']))}; none: no stream run)")
    p.add_argument("--stream-steps", type=positive_int, default=None,
                   help=f"steps per entity of a stream file (default {FULL['stream_steps']}, --quick "
                        f"{QUICK['stream_steps']}: under the model's 128-step segment, so no memory write; about 180 "
                        "or more: nearly every entity completes a segment and writes its memory)")
    p.add_argument("--every", type=positive_int, default=24, help="the stream's --every (default 24, its default)")
    p.add_argument("--save-every", type=positive_int, default=None,
                   help="the stream's --save-every with --state (default: a quarter of the file's rows)")
    p.add_argument("--threads", type=positive_int, default=1, help="--threads of every CLI run (default 1)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--child-timeout", type=positive_float, default=900.0,
                   help="seconds before a run is stopped (its row says so)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for the generated files (default: a temporary folder, removed at the end)")
    p.add_argument("--quick", action="store_true",
                   help=f"long {' '.join(QUICK['long'])}, wide {' '.join(QUICK['wide'])}, stream "
                        f"{' '.join(map(str, QUICK['stream_entities']))} entities x {QUICK['stream_steps']} steps")
    p.add_argument("--out-name", type=result_name, default=None, help="result name (default: scale, or scale_quick)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    longs = args.long if args.long is not None else [size(s) for s in preset["long"]]
    wides = args.wide if args.wide is not None else [size(s) for s in preset["wide"]]
    fleets = args.stream_entities if args.stream_entities is not None else preset["stream_entities"]
    steps = args.stream_steps or preset["stream_steps"]
    load = tuple(round(x, 2) for x in os.getloadavg())
    t0 = time.perf_counter()
    own = args.workdir is None
    folder = Path(tempfile.mkdtemp(prefix="armt_scale_")) if own else args.workdir
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    generated: list[dict[str, Any]] = []
    try:
        # the baseline: the fixed cost of a run; it also saves the stream's model
        info = make_files("long", BASELINE, ["csv"], args.seed, folder)
        model = folder / "model"
        baseline = forecast_run(info, "csv", args, folder, ["--save-model", model])
        info["paths"]["csv"].unlink()
        if baseline.get("status") != "ok":
            raise SystemExit(f"the baseline run failed: {baseline.get('error')}")
        print(f"baseline {BASELINE[0]}x{BASELINE[1]}: {baseline['wall_s']:.1f} s, {baseline['peak_rss_mb']:.0f} MB",
              flush=True)
        for layout, shapes, formats in (("long", longs, args.formats), ("wide", wides, args.wide_formats)):
            for k, shape in enumerate(shapes):
                info = make_files(layout, shape, formats, args.seed + 1 + k, folder)
                generated.append({k: v for k, v in info.items() if k != "paths"})
                for fmt in formats:
                    row = forecast_run(info, fmt, args, folder)
                    rows.append(row)
                    print(f"forecast {layout} {fmt} {shape[0]}x{shape[1]} ({row['rows']:,} rows): {row['status']} "
                          f"{row['wall_s']:.1f} s, {row.get('peak_rss_mb', float('nan')):.0f} MB", flush=True)
                    info["paths"][fmt].unlink()
        for k, n in enumerate(fleets):
            df, first_obs = stream_table(n, steps, args.seed + 100 + k)
            path = folder / f"stream_{n}x{steps}.csv"
            write_table(df, path)
            info = {"series": n, "steps": steps, "rows": df.height}
            generated.append({"layout": "stream", "series": n, "steps": steps, "rows": df.height})
            del df
            save_every = args.save_every or max(1, info["rows"] // 4)
            label = f"--state, --save-every {args.save_every}" if args.save_every else "--state, --save-every rows/4"
            for config, every in (("no --state", None), (label, save_every)):
                row = stream_run(path, model, info, config, args, folder, every)
                row["fleet_block_rows"] = fleet_block_rows(first_obs, row.get("rows_pushed") or info["rows"],
                                                           args.every)
                rows.append(row)
                print(f"stream {n} entities ({info['rows']:,} rows), {config}: {row['status']} {row['wall_s']:.1f} s, "
                      f"{row.get('out_rows')} forecast rows", flush=True)
            path.unlink()
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    slopes = derive(rows, baseline)
    name = args.out_name or (NAME + ("_quick" if args.quick else ""))
    payload = {"benchmark": NAME, "command": command_line(NAME, argv), "git_commit": git_commit(),
               "machine": machine_info("cpu"), "load_average": load, "seed": args.seed, "threads": args.threads,
               "quick": args.quick, "every": args.every, "stream_steps": steps, "horizon": HORIZON,
               "forecast_options": FORECAST_OPTIONS, "baseline": baseline, "files": generated, "rows": rows,
               "slopes": slopes, "wall_seconds": time.perf_counter() - t0,
               "args": {k: str(v) for k, v in vars(args).items()}}
    js, md = write_results(name, payload, render(payload))
    print(render(payload))
    print(f"wrote {js} and {md}")
    return payload


if __name__ == "__main__":
    main()

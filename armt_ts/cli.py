"""``armt-ts``: the command line (DESIGN.md section 1). One subcommand so far:

    armt-ts forecast [FILE] --horizon 24 --out forecast.csv --plot forecast.png

reads a wide or long CSV / Parquet file (or, without FILE, generates the embedded synthetic telemetry), trains an
ARMT forecaster on every series with ``ARMTEstimator`` (or loads one saved earlier with ``--save-model``), and
writes the point and quantile forecasts of every series as a CSV plus a PNG of history and forecast bands.

Every (entity, channel) is forecast as its own univariate series: the estimator is channel-independent, so any
number of columns works and all series share one model. Saved models are JSON + safetensors (``ARMTPredictor``),
never pickle. A user error (bad file, bad option, missing model folder) prints one line on stderr and exits with
status 2; ``main`` returns the status instead of calling ``sys.exit``, so it can be called from Python and tests.

The heavy imports (torch, gluonts, lightning, matplotlib) happen inside the command, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from armt_ts.data import TimeSeriesFrame
    from armt_ts.gluonts import ARMTPredictor

PROG = "armt-ts"

# Defaults sized so that `armt-ts forecast` on the embedded default (32 series of 1344 hourly steps), imports
# included, finishes well under 3 minutes on 2 CPU cores.
DEFAULT_HORIZON = 24
CONTEXT_PER_HORIZON = 8  # default context = 8 * horizon: 192 hourly steps, more than the synthetic weekly cycle
DEFAULT_EPOCHS = 10
DEFAULT_BATCHES_PER_EPOCH = 50
DEFAULT_BATCH_SIZE = 32
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
# One intra-op thread: the default model's matmuls are too small to gain much from a second one, and on a busy
# 2-core machine two threads wait on each other at every op (measured: 130 s instead of 26 s for the default run).
DEFAULT_THREADS = 1
# Context steps the least-squares linear skip reads (ForecasterConfig.linear_skip; capped at the context; 0: none).
# It lowers the backtest error on the synthetic default and on ETTh1 (README), and on a validation panel it gave the
# most accurate streams and batch forecasts (HISTORY.md, "Stream forecast accuracy"). It was off for a while because
# models trained with it let the memory state grow over long streams (max |A| 3664 after 10^7 steps); with the
# memory reads capped (DEFAULT_READ_NORM_CAP) that became 128, against 48 without the skip (results/linear_skip.md).
DEFAULT_LINEAR_SKIP = 512
DEFAULT_RANDOM_START = False  # ARMTEstimator(random_start=...): contexts start a random number of patches later
# ARMTConfig.read_norm_cap (0: none, the paper's read): the norm of each memory read is capped at this. The paper's
# read lets a stream's forecasts drift away from the batch forecaster's as the stream outgrows the training context
# (benchmarks/results/stream_accuracy.md); trained with a cap they stay close. 0.1 was chosen among 0.1 / 0.25 / 0.5
# / 1 on a validation panel (HISTORY.md, "Stream forecast accuracy"); the batch forecasts hardly move.
DEFAULT_READ_NORM_CAP = 0.1
# ARMTConfig.vbar_floor (0: none, the paper's write): the memory write's old-value estimate k^T A / (z^T k + eps)
# divides by at least this times |k|^2. Without it a key on DPFP features that z never covered reads k^T A / eps and
# one write can take a stream's state from tens to 10^5 (HISTORY.md, "What makes the memory state jump"). With 0.1
# the main job's streams kept max |A| <= 357, their MSE within 0.0002 of the unfloored model's in every bin of the
# stream accuracy benchmark's 3 seeds x 2 panels (results/stream_accuracy_vbar_floor*.md); the main job's training and
# batch forecasts are bit-identical (its 192-step contexts make only first-segment writes, which have no old value).
DEFAULT_VBAR_FLOOR = 0.1
# The plot shows the median and the 10-90% band, whatever --quantiles the CSV gets.
PLOT_LEVELS = (0.1, 0.5, 0.9)
SCORE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # evaluate's CRPS approximation, as gluonts' mean_wQL
PLOT_HISTORY_PER_HORIZON = 3  # history shown before the forecast, in horizons
DEFAULT_PLOT_SERIES = 4

# The model the command trains: the library's default ARMT width and depth, with 16-step patches and 8 patch
# tokens per segment, so that the default context (12 patches) spans two segments and the second one reads
# what the associative memory wrote from the first.
PATCH_LEN = 16
SEGMENT_LENGTH = 8


class CLIError(Exception):
    """A problem with the user's input or options: reported as one line on stderr, exit status 2."""


# ---------------------------------------------------------------------------------------------------
# Argument parsing


def build_parser() -> argparse.ArgumentParser:
    """The ``armt-ts`` parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ARMT (Associative Recurrent Memory Transformer) forecasting for telemetry time series.",
        epilog="Run 'armt-ts forecast --help' for the options of a command.\n\n"
               "Example (the embedded synthetic default: trains, forecasts 24 steps, writes a CSV and a PNG):\n"
               "  armt-ts forecast --out forecast.csv --plot forecast.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_forecast(commands)
    _add_evaluate(commands)
    _add_stream(commands)
    _add_bench(commands)
    return parser


# the scripts of benchmarks/ (each also runs as ``python -m benchmarks.NAME``; a test keeps this list complete)
BENCHMARKS = ("agenda", "associative_retrieval", "channels", "forecast", "linear_skip", "missing_channels", "ops",
              "reliability", "retrieval_drift", "scale", "state_tracking", "stream_accuracy", "streaming")


def _add_bench(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench",
        help="run one of the benchmarks (the same as python -m benchmarks.NAME)",
        description=(
            "Run benchmarks/NAME.py with the options that follow NAME, exactly as 'python -m benchmarks.NAME'\n"
            "does: it writes benchmarks/results/<result name>.json and .md (and .png) next to the package's\n"
            "benchmarks folder (the repository's, with the README's editable install), with the machine, the git\n"
            "commit, the seeds and its wall time. 'armt-ts bench NAME --help' lists that benchmark's options;\n"
            "the README and benchmarks/results/README.md say what each one measures."
        ),
        epilog=(
            "Examples:\n"
            "  armt-ts bench streaming --quick\n"
            "  armt-ts bench forecast --data ../shared/data/ett/ETTh1.csv --dataset ETTh1 --quick\n"
            "  armt-ts bench reliability --quick"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=BENCHMARKS, metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: ``benchmarks.<name>.main(options)``; its own usage errors exit 2 as they do under
    ``python -m``."""
    import importlib

    try:
        module = importlib.import_module(f"benchmarks.{args.name}")
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", f"benchmarks.{args.name}"):
            raise
        raise CLIError(f"bench: the benchmarks package is not importable here ({err}); install armt_ts from its "
                       f"repository (pip install -e .) to run the benchmarks") from None
    saved = sys.argv
    sys.argv = [f"{PROG} bench {args.name}", *args.options]  # its usage lines name this command (argparse's prog)
    try:
        module.main(list(args.options))
    finally:
        sys.argv = saved
    return 0


def _add_forecast(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "forecast",
        help="train (or load) a model and forecast every series of a file",
        description=(
            "Train an ARMT forecaster on every series of FILE (or load one with --model) and write point and\n"
            "quantile forecasts for the next --horizon steps of each series, plus a PNG of history and\n"
            "forecast bands. Without FILE the embedded synthetic telemetry is used (8 entities x 4 channels,\n"
            "8 weeks of hourly steps), so the command runs with no data at all.\n\n"
            "Layouts (CSV or Parquet):\n"
            "  wide  a timestamp column and one numeric column per series (ETT, Weather);\n"
            "  long  timestamp, series id, [channel], value: one row per observation.\n"
            "The file is read as long when it has a series-id column (series_id, series, entity_id, entity,\n"
            "item_id or id) and a value column (value or target), or when --id is given; as wide otherwise.\n"
            "Every (series, channel) is forecast as its own univariate series with one shared model.\n"
            "Empty / NaN cells and gaps in time are missing values (masked, never filled in); timestamps must\n"
            "lie on a regular grid, which is inferred or given with --freq."
        ),
        epilog=(
            "Output CSV: one row per series, [channel] and forecast step, with columns series, [channel],\n"
            "timestamp (continuing the series' grid), mean (point forecast) and q<level> per quantile.\n\n"
            "Examples:\n"
            "  armt-ts forecast                                  # embedded default -> forecast.csv, forecast.png\n"
            "  armt-ts forecast ETTh1.csv --horizon 96 --target OT HUFL --save-model ett-model\n"
            "  armt-ts forecast new.csv --model ett-model --out new_forecast.csv --no-plot\n"
            "  armt-ts forecast sensors.parquet --id machine --target reading --freq 10m"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_args(p)

    g = p.add_argument_group("forecast")
    _horizon_context_args(g, "steps to forecast", "; it may span many ARMT segments, carried by the associative memory")
    g.add_argument("--quantiles", type=float, nargs="+", metavar="Q", default=list(DEFAULT_QUANTILES),
                   help="quantile levels in (0, 1) written to the CSV (default: "
                        f"{' '.join(f'{q:g}' for q in DEFAULT_QUANTILES)})")

    _training_args(p)

    g = p.add_argument_group("model files (JSON + safetensors, never pickle)")
    g.add_argument("--model", metavar="DIR", help="load this saved model instead of training")
    g.add_argument("--save-model", metavar="DIR", help="save the trained model to this folder")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", metavar="CSV", default="forecast.csv", help="forecast table (default: %(default)s)")
    g.add_argument("--plot", metavar="PNG", default="forecast.png",
                   help="picture of history and forecast bands (default: %(default)s)")
    g.add_argument("--no-plot", action="store_true", help="do not draw the picture")
    g.add_argument("--plot-series", type=int, default=DEFAULT_PLOT_SERIES, metavar="N",
                   help="series drawn in the picture, the first N in output order (default: %(default)s)")
    p.set_defaults(run=run_forecast)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="backtest: train on the start of a file, score rolling forecasts of its end against naive peers",
        description=(
            "A rolling-origin backtest on FILE (or the embedded synthetic telemetry). The model trains on the\n"
            "first steps of every series (or is loaded with --model); the last --test-fraction of the steps is\n"
            "forecast from origins every --stride steps, each forecast reading only the steps before its\n"
            "origin, and scored against what happened, next to two naive forecasts from the same origins:\n"
            "seasonal naive (the last season repeated; --season, by default a day of sub-daily steps, a week of\n"
            "days, a year of months) and the last observed value. File layouts and column options are those of\n"
            "'forecast'.\n\n"
            "Scores, over every observed (series, origin, step): MSE and MAE on z-scored values (each series by\n"
            "the mean and standard deviation of its training steps, so series in different units weigh alike)\n"
            "and CRPS in the same units (approximated by twice the mean pinball loss over --quantiles; point\n"
            "forecasts have none). A forecast whose context holds no observed value of its series (a gap at\n"
            "least the context long ends at its origin) is made from nothing: it is left out of every model's\n"
            "scores, with a note. --out writes the scores per series, with MAE in the series' own units too."
        ),
        epilog=(
            "Examples:\n"
            "  armt-ts evaluate                                  # the embedded synthetic telemetry\n"
            "  armt-ts evaluate ETTh1.csv --horizon 96 --test-fraction 0.2 --out scores.csv\n"
            "  armt-ts evaluate sensors.csv --model sensor-model --stride 24"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_args(p)
    g = p.add_argument_group("backtest")
    _horizon_context_args(g, "steps to forecast from each origin")
    g.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="the last fraction of the steps that is forecast and scored (default: %(default)s; at "
                        "least one horizon)")
    g.add_argument("--stride", type=int, metavar="S", help="steps between two origins (default: the horizon)")
    g.add_argument("--season", type=int, metavar="K",
                   help="seasonal naive's period in steps (default: from the grid step, see above)")
    g.add_argument("--quantiles", type=float, nargs="+", metavar="Q", default=list(SCORE_LEVELS),
                   help="quantile levels of the CRPS approximation (default: "
                        f"{' '.join(f'{q:g}' for q in SCORE_LEVELS)})")
    _training_args(p)
    g = p.add_argument_group("model files (JSON + safetensors, never pickle)")
    g.add_argument("--model", metavar="DIR",
                   help="score this saved model instead of training one (it should not have seen the scored steps)")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", metavar="CSV", help="scores per series and model (default: the summary only)")
    p.set_defaults(run=run_evaluate)


def _horizon_context_args(g: argparse._ArgumentGroup, horizon_help: str, context_note: str = "") -> None:
    """--horizon and --context, shared by forecast and evaluate (defaults: the --model's, else the package's)."""
    g.add_argument("--horizon", type=int, metavar="H",
                   help=f"{horizon_help} (default {DEFAULT_HORIZON}, or the --model's)")
    g.add_argument("--context", type=int, metavar="T",
                   help=f"steps of history the model reads (default {CONTEXT_PER_HORIZON} * horizon, or the "
                        f"--model's){context_note}")


def _data_args(p: argparse.ArgumentParser) -> None:
    """FILE and the options that say how to read it (forecast and evaluate)."""
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="CSV (.csv) or Parquet (.parquet, .pq) file; omit it for the embedded synthetic default")
    g = p.add_argument_group("columns (inferred unless given)")
    g.add_argument("--timestamp", metavar="COL",
                   help="time column (default: timestamp / datetime / date / time, else the first column if it "
                        "holds dates)")
    g.add_argument("--id", metavar="COL", help="series-id column; giving it selects the long layout")
    g.add_argument("--target", metavar="COL", nargs="+",
                   help="wide: the value columns to forecast (default: every column but the timestamp); "
                        "long: the value column")
    g.add_argument("--freq", metavar="STEP",
                   help="grid step as a polars duration: 10m, 1h, 1d, 1mo (default: the most common step)")
    g.add_argument("--time-format", metavar="FMT",
                   help="strptime-style format of text timestamps that are not ISO-like, e.g. '%%d.%%m.%%Y %%H:%%M' "
                        "(chrono syntax; default: ISO dates / times, or epoch numbers)")
    g.add_argument("--time-unit", choices=("s", "ms", "us", "ns"),
                   help="unit of epoch-number timestamps (default: chosen by their magnitude)")
    g.add_argument("--sort", action="store_true", help="sort rows by time instead of rejecting time going backwards")
    g.add_argument("--aggregate", choices=("mean", "last", "first", "sum"),
                   help="merge rows with the same timestamp this way instead of rejecting them")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (ignored with --model)")
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (default: %(default)s)")
    g.add_argument("--batches-per-epoch", type=int, default=DEFAULT_BATCHES_PER_EPOCH, metavar="N",
                   help="training batches per epoch (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help="windows per batch (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed of training (default: %(default)s)")
    g.add_argument("--bf16", action="store_true", help="train in bf16 mixed precision (the memory stays fp32)")
    g.add_argument("--linear-skip", type=_non_negative_int, default=DEFAULT_LINEAR_SKIP, metavar="N",
                   help="add a least-squares linear forecast from the last N context steps (at most --context), "
                        "fitted on every training window before the network trains on its residual; 0: the "
                        "network alone (default: %(default)s, capped at --context)")
    g.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=DEFAULT_RANDOM_START,
                   help="start each training batch's contexts a random number of patches later, so the head learns "
                        "to forecast from every position in an ARMT segment, as `armt-ts stream` does (default: "
                        "%(default)s)")
    g.add_argument("--read-norm-cap", type=_non_negative_float, default=DEFAULT_READ_NORM_CAP, metavar="X",
                   help="cap the norm of every associative-memory read at X (ARMTConfig.read_norm_cap; 0: the "
                        "paper's uncapped read, whose long streams drift from the batch forecasts; default: "
                        "%(default)s)")
    g.add_argument("--vbar-floor", type=_non_negative_float, default=DEFAULT_VBAR_FLOOR, metavar="F",
                   help="floor the memory write's old-value denominator at F times the key's squared norm "
                        "(ARMTConfig.vbar_floor, not in the paper: it stops single writes from blowing the memory "
                        "state up by orders of magnitude; 0: the paper's write; default: %(default)s)")

    g = p.add_argument_group("compute")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train and predict (default: %(default)s)")
    g.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                   help="CPU threads per torch operation (default: %(default)s: the default model is small, and "
                        "two threads competing with other work for the cores can run 5x slower than one)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``armt-ts`` and ``python -m armt_ts``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad options, 0 after --help
    # gluonts warns at import that it serialises with the standard json module (no orjson / ujson): not the user's
    warnings.filterwarnings("ignore", message="Using `json`-module", category=UserWarning)
    try:
        return args.run(args)
    except CLIError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------------
# forecast


@dataclass(frozen=True)
class Panel:
    """The univariate series to forecast, all on one regular grid.

    Fields:
        frame: the data as read (its timestamps, freq and source).
        target: [S, T] float32, NaN where unobserved; S = every (series, channel) of ``frame``.
        series: S series names (wide: the column; long: the series id).
        channels: S channel names, or None when each series has one channel.
        description: where the data came from, in words.
    """

    frame: TimeSeriesFrame
    target: np.ndarray
    series: list[str]
    channels: list[str] | None
    description: str


@dataclass(frozen=True)
class Forecasts:
    """Forecasts of every series of a Panel: timestamps [S, H], mean [S, H], quantiles [S, Q, H] at ``levels``.
    A series forecasts from the end of the file's grid, or from its own last observation where its last context
    holds none (``predict``); its timestamps say which."""

    timestamps: np.ndarray
    mean: np.ndarray
    levels: tuple[float, ...]
    quantiles: np.ndarray

    def at(self, level: float) -> np.ndarray:
        """[S, H] forecasts at one of ``levels``."""
        return self.quantiles[:, self.levels.index(level)]


def run_forecast(args: argparse.Namespace) -> int:
    """The ``forecast`` subcommand."""
    quantiles = _check_options(args)
    with _quiet_libraries(), _torch_threads(args.threads):
        panel = _read_panel(args)
        if args.model is not None:
            predictor = load_model(args.model, args.device)
            horizon, context = _check_loaded(predictor, args)
            how = f"loaded the model from {args.model}"
        else:
            horizon = args.horizon or DEFAULT_HORIZON
            context = args.context or CONTEXT_PER_HORIZON * horizon
            started = time.perf_counter()
            predictor = train(panel, horizon, context, args)
            how = (f"trained in {time.perf_counter() - started:.1f} s ({args.epochs} epoch(s) x "
                   f"{args.batches_per_epoch} batches of {args.batch_size} windows, "
                   f"{'cuda' if args.device == 'cuda' else f'cpu, {args.threads} thread(s)'}"
                   f"{', bf16' if args.bf16 else ''})")
            if args.save_model is not None:
                with _writing(args.save_model):
                    save_model(predictor, args.save_model)
                how += f"; saved to {args.save_model}"
        forecasts = predict(predictor, panel, horizon, sorted(set(quantiles) | set(PLOT_LEVELS)))
    with _writing(args.out):
        rows = write_csv(panel, forecasts, quantiles, Path(args.out))
    outputs = [f"{args.out} ({rows} rows)"]
    if not args.no_plot:
        with _writing(args.plot):
            plot_forecast(panel, forecasts, Path(args.plot), n_series=args.plot_series)
        outputs.append(args.plot)
    print(f"{PROG} forecast: {len(panel.series)} series from {panel.description}; horizon {horizon}, "
          f"context {context}\n  {how}\n  wrote {', '.join(outputs)}")
    return 0


def _read_panel(args: argparse.Namespace) -> Panel:
    """``load_panel`` with the reader's errors as CLIErrors and its warnings about the data (e.g. 1e30 fill values)
    printed one line each; every series must have an observed value."""
    from armt_ts.data import DataError, SuspiciousValueWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SuspiciousValueWarning)
            panel = load_panel(args)
    except (DataError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    _check_observed(panel)
    _warn_small_spread(panel)
    return panel


# evaluate names the series with fewer observed training values than this (their z-scoring std is a guess)
FEW_TRAIN_VALUES = 10

# A series whose standard deviation is below this gets a warning: the std scaler's floor (variance + 1e-5, i.e. a
# scale of at least 0.0032) then inflates a typical context's scale by 5% or more and flattens its forecast
SMALL_SPREAD = 0.01


def _warn_small_spread(panel: Panel) -> None:
    """One warning line for the series that vary too little for the model's std scaling (``SMALL_SPREAD``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a series with one observation: std 0, left alone
        std = np.nanstd(panel.target.astype(np.float64), axis=1)
    small = np.flatnonzero((std > 0) & (std < SMALL_SPREAD))
    if small.size == 0:
        return
    k = int(small[0])
    power = int(math.ceil(-math.log10(std[k])))
    print(f"{PROG}: warning: {small.size} series {'varies' if small.size == 1 else 'vary'} by a standard deviation "
          f"below {SMALL_SPREAD:g} (the first, "
          f"{_series_names(panel, [k])}: {std[k]:.3g}); the model's std scaling adds 1e-5 to every context's "
          f"variance (a scale of at least {math.sqrt(1e-5):.2g}), so their forecasts come out flattened: multiply "
          f"the values by a power of ten (e.g. 1e{power}) and the forecasts back", file=sys.stderr)


def run_evaluate(args: argparse.Namespace) -> int:
    """The ``evaluate`` subcommand: a rolling-origin backtest (``armt_ts/evaluate.py``). An --out file that did not
    exist is created first, to fail before the work if it cannot be written, and removed again if the run fails."""
    made = args.out is not None and not Path(args.out).exists()
    try:
        return _run_evaluate(args)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # e.g. it never got made: a folder on its path is a file
                Path(args.out).unlink()
        raise


def _run_evaluate(args: argparse.Namespace) -> int:
    from armt_ts import evaluate as ev
    from armt_ts.data import fit_scaler, parse_freq

    levels = _check_options(args)
    if not 0.0 < args.test_fraction < 1.0:
        raise CLIError(f"--test-fraction must lie strictly between 0 and 1, got {args.test_fraction}")
    for name in ("stride", "season"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.out is not None:  # before the work, not after it
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            open(args.out, "a").close()  # the file it will write (over) once the scores are in
        except OSError as err:
            raise CLIError(f"cannot write {args.out!r}: {err.strerror or err}") from None
    with _quiet_libraries(), _torch_threads(args.threads):
        panel = _read_panel(args)
        n = panel.frame.n_steps
        if args.model is not None:
            predictor = load_model(args.model, args.device)
            horizon, context = _check_loaded(predictor, args)
        else:
            horizon = args.horizon or DEFAULT_HORIZON
            context = args.context or CONTEXT_PER_HORIZON * horizon
        cut = n - max(int(round(args.test_fraction * n)), horizon)
        if cut <= horizon:
            before = ("for training, which needs more than the horizon" if args.model is None else
                      "before the test part, where a forecast needs more than the horizon")
            raise CLIError(f"the series have {n} steps: a test part of {n - cut} (--test-fraction "
                           f"{args.test_fraction:g}, at least the horizon {horizon}) leaves {max(cut, 0)} {before}; "
                           f"lower --horizon or --test-fraction")
        train_panel = _panel(panel.frame.slice(0, cut), panel.description)
        _check_observed(train_panel, "before the test part")
        if args.model is None:
            started = time.perf_counter()
            predictor = train(train_panel, horizon, context, args)
            how = f"trained on steps [0, {cut}) in {time.perf_counter() - started:.1f} s"
        else:
            how = f"loaded the model from {args.model} (trained elsewhere: the scores assume it never saw them)"
        stride = args.stride or horizon
        starts = ev.origins(n, cut, horizon, stride)
        freq = parse_freq(panel.frame.freq)
        season = args.season or ev.default_season(freq.step_ns, freq.months)
        # the training part's z-scores, flattened to the panel's series order (wide: channels; long: series-major)
        scaler = fit_scaler(panel.frame.slice(0, cut))
        loc, scale = scaler.mean.reshape(-1), scaler.std.reshape(-1)
        models = {"ARMT": ev.Scores.zeros(len(panel.series), len(levels)),
                  f"SeasonalNaive ({season})": ev.Scores.zeros(len(panel.series), 0),
                  "Naive (last value)": ev.Scores.zeros(len(panel.series), 0)}
        forecasts = _backtest_forecasts(predictor, panel, starts, context, levels)
        blind = np.zeros(len(panel.series), dtype=np.int64)  # per series: scorable origins with an empty context
        for t, (mean, quantiles) in zip(starts, forecasts):
            actual = panel.target[:, t:t + horizon].astype(np.float64)
            empty = ev.blind(panel.target, int(t), context)  # a forecast made from nothing: no model is scored there
            blind += empty & ~np.isnan(actual).all(1)
            actual[empty] = np.nan
            models["ARMT"].add(mean, actual, loc, scale, quantiles, np.asarray(levels))
            models[f"SeasonalNaive ({season})"].add(ev.seasonal_naive(panel.target, t, horizon, season), actual,
                                                   loc, scale)
            last = ev.last_observed(panel.target, t)
            models["Naive (last value)"].add(np.repeat(last[:, None], horizon, 1), actual, loc, scale)
    armt = models["ARMT"]
    blind_note = (f"{int(blind.sum())} forecast(s) of {int((blind > 0).sum())} series read no observed value in "
                  f"their {context} context steps (a gap at least that long ends at the origin) and are left out "
                  f"of every model's scores: {_series_names(panel, np.flatnonzero(blind))}")
    if armt.summary()["points"] == 0:
        if blind.any():
            raise CLIError(f"nothing to score in the test part [{cut}, {n}): {blind_note}")
        raise CLIError(f"no series has an observed value in the test part [{cut}, {n}) (--test-fraction "
                       f"{args.test_fraction:g}): nothing to score")
    unscored = [i for i in range(len(panel.series)) if armt.summary(np.array([i]))["points"] == 0]
    notes = []
    if unscored:
        notes.append(f"{len(unscored)} series have no observed value at the scored test steps and are left out of "
                     f"the scores: {_series_names(panel, unscored)}")
    if blind.any():
        notes.append(blind_note)
    train_part = panel.target[:, :cut]  # every series has an observed value there (checked above)
    flat = np.flatnonzero(np.nanmax(train_part, 1) == np.nanmin(train_part, 1))
    if flat.size:
        notes.append(f"{flat.size} series are constant over the training part [0, {cut}) (standard deviation 0): "
                     f"their z-scores divide by 1, so they are in the series' own units: "
                     f"{_series_names(panel, flat)}")
    few = np.flatnonzero((np.isfinite(train_part).sum(1) < FEW_TRAIN_VALUES) & ~np.isin(np.arange(len(train_part)),
                                                                                         flat))
    if few.size:
        notes.append(f"{few.size} series have fewer than {FEW_TRAIN_VALUES} observed values in the training part, so "
                     f"the standard deviation that z-scores them rests on those few and their scores can outweigh "
                     f"the rest: {_series_names(panel, few)}")
    if int(starts[-1]) - season + min(horizon, season) - 1 < 0:  # seasonal_naive's every look-back is before 0
        notes.append(f"the season ({season} steps) reaches before the first step from every origin, so "
                     f"SeasonalNaive repeats the last value (Naive's forecast); lower --season")
    scored_to = int(starts[-1]) + horizon
    if scored_to < n:
        notes.append(f"origins every {stride} steps score steps [{cut}, {scored_to}) of the test part [{cut}, {n}); "
                     f"a smaller --stride scores the rest")
    if args.out is not None:
        with _writing(args.out):
            _write_scores(panel, models, Path(args.out))
    print(f"{PROG} evaluate: {len(panel.series)} series from {panel.description}; horizon {horizon}, context "
          f"{context}\n  {how}\n  {len(starts)} origin(s) every {stride} steps in [{cut}, {n}) ({n - cut} test "
          f"steps), each forecast reading only the steps before it\n")
    table = [["model", "MSE (z)", "MAE (z)", "CRPS (z)", "points"]]
    for name, sc in models.items():
        r = sc.summary()
        table.append([name, _score_text(r["mse"], ".4f", "n/a"), _score_text(r["mae"], ".4f", "n/a"),
                      _score_text(r["crps"], ".4f", ""), str(r["points"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for note in notes:
        print(f"  note: {note}")
    if args.out is not None:
        print(f"\n  wrote {args.out} (scores per series)")
    return 0


def _backtest_forecasts(predictor: ARMTPredictor, panel: Panel, starts: np.ndarray, context: int,
                        levels: Sequence[float]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per origin t: the mean [S, H] and quantiles [S, Q, H] forecast from the ``context`` steps before t (every
    series of the panel, one predict call per batch of origins)."""
    S = len(panel.series)
    per_call = max(1, 4096 // max(S, 1))
    for i in range(0, len(starts), per_call):
        chunk = starts[i:i + per_call]
        entries = []
        for t in chunk:
            entries += list(_gluonts_dataset(_panel(panel.frame.slice(max(0, int(t) - context), int(t)), "")))
        forecasts = _predicted(predictor, entries, panel)
        for k in range(len(chunk)):
            yield _forecast_arrays(forecasts[k * S:(k + 1) * S], levels)


def _series_names(panel: Panel, rows: Sequence[int]) -> str:
    """The first five of these panel rows' names (with the channel, where there are channels), for a note."""
    names = [panel.series[i] if panel.channels is None else f"{panel.series[i]} / {panel.channels[i]}"
             for i in rows]
    return f"{', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''}"


def _score_text(x: float | None, spec: str, nothing: str) -> str:
    """A score as text; None (no such score) -> "", NaN (no point scored) -> ``nothing``."""
    if x is None:
        return ""
    return nothing if np.isnan(x) else format(x, spec)


def _write_scores(panel: Panel, models: dict, path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["series", "channel", "model", "mse_z", "mae_z", "crps_z", "mae", "points"])
        for name, sc in models.items():
            for i, series in enumerate(panel.series):
                r = sc.summary(np.array([i]))
                w.writerow([series, "" if panel.channels is None else panel.channels[i], name,
                            *(_score_text(r[k], ".6g", "") for k in ("mse", "mae", "crps", "mae_units")),
                            r["points"]])


def _check_options(args: argparse.Namespace) -> list[float]:
    for name in ("horizon", "context"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name} must be a positive number of steps, got {value}")
    for name in ("epochs", "batches_per_epoch", "batch_size", "plot_series", "threads"):
        if getattr(args, name, 1) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    quantiles = list(args.quantiles)
    bad = [q for q in quantiles if not 0.0 < q < 1.0]
    if bad:
        raise CLIError(f"--quantiles must lie strictly between 0 and 1, got {bad[0]}")
    if len(set(quantiles)) != len(quantiles):
        raise CLIError(f"--quantiles has a repeated level: {quantiles}")
    _check_quantile_columns(quantiles)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda was asked for but torch sees no CUDA device")
    return sorted(quantiles)


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """An output that cannot be written (no permission, a folder in the way, disk full) is a CLIError."""
    try:
        yield
    except OSError as err:
        raise CLIError(f"cannot write {path!r}: {err.strerror or err}") from None


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count for the command, restored on exit."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence Lightning's and gluonts' info logging and their warnings about the data loader and the logger,
    which are noise on a command line; restored on exit, so calling ``main`` from Python leaves no trace."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels when first imported: import it first)

    names = ("lightning.pytorch", "lightning.fabric", "gluonts")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning\..*")
            warnings.filterwarnings("ignore", module=r"gluonts\..*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------------
# Input


def load_panel(args: argparse.Namespace) -> Panel:
    """Read FILE as wide or long (see the forecast help), or generate the embedded default without it."""
    from armt_ts.data import DataError, read_long, read_wide

    if args.file is None:
        if any(v is not None for v in (args.timestamp, args.id, args.target, args.freq, args.time_format,
                                       args.time_unit)):
            raise CLIError("--timestamp, --id, --target, --freq, --time-format and --time-unit describe a FILE; "
                           "none was given")
        return _synthetic_panel()
    if args.freq is not None:
        from armt_ts.data import parse_freq

        try:
            parse_freq(args.freq)
        except ValueError as err:
            raise CLIError(f"--freq: {err}") from None
    common = dict(timestamp=args.timestamp, freq=args.freq, aggregate=args.aggregate, sort=args.sort,
                  time_format=args.time_format, time_unit=args.time_unit)
    if _is_long(args):
        if args.target is not None and len(args.target) > 1:
            raise CLIError(f"a long file has one value column, but --target names {len(args.target)}")
        try:
            frame = read_long(args.file, series_id=args.id, value=args.target[0] if args.target else None, **common)
        except DataError as err:
            if args.id is not None:
                raise
            # the layout was inferred from the header: say so, since a wide file with columns named like an id
            # and a value is read as long
            raise type(err)(f"{err.problem} (read as the long layout: the header has a series-id and a value "
                            f"column; to read it as wide, name every value column with --target)", file=err.file,
                            row=err.row, column=err.column, expected=err.expected) from None
        layout = "long"
    else:
        frame = read_wide(args.file, channels=args.target, **common)
        layout = "wide"
    return _panel(frame, f"{args.file} ({layout}, {frame.n_steps} steps of {frame.freq})")


def _check_observed(panel: Panel, part: str = "") -> None:
    """A series without a single observed value (an all-empty / all-NaN column) would get a forecast made from
    nothing: refuse it, naming the file and the column (wide) or series and channel (long); ``part`` says which
    steps were looked at (evaluate's training part), when not all."""
    empty = np.flatnonzero(~np.isfinite(panel.target).any(axis=1))
    if empty.size == 0:
        return
    i = int(empty[0])
    if panel.frame.series_ids is None:
        where, fix = f"column {panel.series[i]!r}", "drop the column, or choose columns with --target"
    else:
        where = f"series {panel.series[i]!r}" + (f", channel {panel.channels[i]!r}" if panel.channels else "")
        fix = "remove its rows from the file"
    more = f" ({empty.size} such series)" if empty.size > 1 else ""
    part = f" {part}" if part else ""
    raise CLIError(f"file {panel.frame.source!r}, {where}: the series has no observed value{part} (every cell is "
                   f"empty or NaN){more}; expected at least one observed value per series ({fix})")


def _is_long(args: argparse.Namespace) -> bool:
    """Long when --id is given, or when the file has a series-id column and a value column (given or named
    as the long reader expects); wide otherwise."""
    if args.id is not None:
        return True
    if args.target is not None and len(args.target) > 1:
        return False
    # The long reader's own column names, so that detection and reading cannot disagree.
    from armt_ts.data.readers import ID_NAMES, VALUE_NAMES

    names = _column_names(Path(args.file))
    lower = {n.lower() for n in names}
    has_value = args.target[0] in names if args.target else any(a in lower for a in VALUE_NAMES)
    return has_value and any(a in lower for a in ID_NAMES)


def _column_names(path: Path) -> list[str]:
    """The header of a CSV / Parquet file, or [] when it cannot be read: the reader then says why."""
    import polars as pl

    try:
        if path.suffix.lower() == ".csv":
            return pl.scan_csv(path, infer_schema=False).collect_schema().names()
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.scan_parquet(path).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError):
        pass
    return []


def _synthetic_panel() -> Panel:
    from armt_ts.data import TimeSeriesFrame
    from armt_ts.data.timegrid import step_to_freq
    from datasets.synthetic import TelemetryConfig, generate_telemetry

    tel = generate_telemetry(TelemetryConfig())
    n, length, c = tel.shape
    frame = TimeSeriesFrame(
        timestamps=tel.timestamps, values=np.nan_to_num(tel.values, nan=0.0), observed=tel.observed,
        channels=list(tel.channels), freq=step_to_freq(int(tel.config.step / np.timedelta64(1, "ns"))).text,
        source="<synthetic telemetry>", series_ids=list(tel.entities))
    return _panel(frame, f"the embedded synthetic telemetry ({n} entities x {c} channels, {length} steps of "
                         f"{frame.freq})")


def _panel(frame: TimeSeriesFrame, description: str) -> Panel:
    target = np.where(frame.observed > 0, frame.values, np.nan).astype(np.float32)
    if frame.series_ids is None:  # wide, [T, C]: each column is a series
        return Panel(frame, np.ascontiguousarray(target.T), list(frame.channels), None, description)
    n, length, c = target.shape  # long, [N, T, C]: series-major, channels inside (to_gluonts' order too)
    series = [sid for sid in frame.series_ids for _ in range(c)]
    channels = list(frame.channels) * n if c > 1 else None
    return Panel(frame, target.transpose(0, 2, 1).reshape(n * c, length), series, channels, description)


def _gluonts_dataset(panel: Panel):
    """The panel as a gluonts ListDataset, one univariate entry per series, in the panel's order.

    gluonts dates an entry by a pandas Period, which is aligned to whole units (an hourly Period starts at :00),
    and ``to_gluonts`` rightly refuses to shift a grid that starts elsewhere. The model reads no calendar
    features, so here the start is moved back to the Period's start; output timestamps come from the frame's own
    grid (``future_timestamps``), never from gluonts.
    """
    import pandas as pd

    from armt_ts.data import parse_freq, to_gluonts

    frame = panel.frame
    first = pd.Timestamp(frame.timestamps[0])
    aligned = pd.Period(first, freq=parse_freq(frame.freq).pandas).start_time
    shift = (first - aligned).to_timedelta64().astype("timedelta64[ns]")
    return to_gluonts(dataclasses.replace(frame, timestamps=frame.timestamps - shift))


def future_timestamps(frame: TimeSeriesFrame, horizon: int, last: int | None = None) -> np.ndarray:
    """[horizon] datetime64[ns]: the steps of the frame's regular grid after step ``last`` (default: its end)."""
    import polars as pl

    from armt_ts.data import parse_freq

    last = frame.n_steps - 1 if last is None else last
    freq = parse_freq(frame.freq)
    if freq.step_ns is not None:
        start = frame.timestamps[last].astype("datetime64[ns]")
        return start + np.arange(1, horizon + 1, dtype=np.int64) * np.timedelta64(freq.step_ns, "ns")
    # Calendar steps: continue the grid from its first timestamp as the reader built it (month ends stay month
    # ends: Jan 31, Feb 29, Mar 31), not by adding months to the last one.
    first = pl.Series(frame.timestamps[:1].astype("datetime64[ns]"))
    end = first.dt.offset_by(f"{(last + horizon) * freq.months}mo")[0]
    grid = pl.datetime_range(first[0], end, interval=freq.text, time_unit="ns", eager=True)
    return grid.to_numpy().astype("datetime64[ns]")[last + 1:last + 1 + horizon]


# ---------------------------------------------------------------------------------------------------
# Model


def train(panel: Panel, horizon: int, context: int, args: argparse.Namespace) -> ARMTPredictor:
    """Train an ARMT forecaster on every series of the panel (all of its history) with ``ARMTEstimator``."""
    import lightning.pytorch as lp

    from armt_ts.config import ARMTConfig, HeadConfig, PatchConfig
    from armt_ts.forecaster import SkipFitError
    from armt_ts.gluonts import ARMTEstimator, DatasetError

    if panel.frame.n_steps <= horizon:
        raise CLIError(f"the series have {panel.frame.n_steps} steps; training needs more than the horizon "
                       f"({horizon}): lower --horizon, or forecast with a saved --model")
    lp.seed_everything(args.seed, verbose=False)  # torch, numpy (gluonts' window sampler) and random
    seen = panel.frame.n_steps - horizon  # the most context steps a training window can hold
    if context > seen:
        print(f"{PROG}: note: the series have {panel.frame.n_steps} steps, so a training window holds at most {seen} "
              f"of the {context} context steps (the rest is padding, masked as missing)", file=sys.stderr)
    skip = min(args.linear_skip, context)
    if skip == 1:  # one step normalised by its own statistics is always 0: nothing for the skip to read
        print(f"{PROG}: note: --context 1 leaves the linear skip a single step, which carries nothing; training "
              f"without it (as --linear-skip 0)", file=sys.stderr)
        skip = 0
    print(f"{PROG}: training on {len(panel.series)} series (horizon {horizon}, context {context}, "
          f"{args.epochs} epochs x {args.batches_per_epoch} batches)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="armt-ts-") as tmp:
        estimator = ARMTEstimator(
            prediction_length=horizon,
            context_length=context,
            armt=ARMTConfig(segment_length=SEGMENT_LENGTH, read_norm_cap=args.read_norm_cap or None,
                            vbar_floor=args.vbar_floor or None),
            patch=PatchConfig(patch_len=PATCH_LEN, stride=PATCH_LEN),
            head=HeadConfig(kind="student_t"),  # a distribution: any quantile level can be asked for
            linear_skip=skip,
            random_start=args.random_start,
            batch_size=args.batch_size,
            num_batches_per_epoch=args.batches_per_epoch,
            trainer_kwargs=dict(
                max_epochs=args.epochs,
                accelerator="gpu" if args.device == "cuda" else "cpu",
                devices=1,
                precision="bf16-mixed" if args.bf16 else "32-true",
                # gluonts always adds a ModelCheckpoint: its checkpoint goes to a folder deleted below
                default_root_dir=tmp,
                logger=False,
                enable_model_summary=False,
                enable_progress_bar=sys.stderr.isatty(),
            ),
        )
        try:
            predictor = estimator.train(_gluonts_dataset(panel))
        except DatasetError as err:  # the readers' checks come first; this is a last line of defence
            raise CLIError(f"{panel.description}: {err}") from None
        except SkipFitError:
            raise CLIError(f"the series have {panel.frame.n_steps} steps: no training window has both an observed "
                           f"step among the {horizon} it forecasts and two observed context steps, so the linear "
                           f"skip has nothing to fit; lower --horizon, or train without it (--linear-skip 0)") from None
        except FloatingPointError as err:  # a loss or gradient that is not finite, before any checkpoint
            raise CLIError(f"training failed, nothing was written: {err}. Fill / sentinel values kept as numbers "
                           f"(-9999, 1e30: make those cells empty) are the usual cause; otherwise try another "
                           f"--seed") from None
    return predictor.to(args.device)


def save_model(predictor: ARMTPredictor, directory: str) -> None:
    """JSON (gluonts serde) + safetensors weights; see ``ARMTPredictor.serialize``."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--save-model {directory!r} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    predictor.serialize(path)


def load_model(directory: str, device: str) -> ARMTPredictor:
    """A predictor saved by ``--save-model``; any failure is a CLIError naming the folder."""
    from armt_ts.gluonts import ARMTPredictor

    path = Path(directory)
    if not path.is_dir():
        raise CLIError(f"--model {directory!r}: no such folder (expected one written by --save-model)")
    try:
        return ARMTPredictor.deserialize(path, device=device)
    except Exception as err:  # missing files, bad JSON, a foreign predictor, mismatched tensors: all "cannot load"
        text = str(err).strip().splitlines()
        raise CLIError(f"--model {directory!r}: cannot load the model ({type(err).__name__}: "
                       f"{text[0] if text else ''})") from None


def _predicted(predictor: ARMTPredictor, entries, panel: Panel) -> list:
    """``predictor.predict`` of the entries, its DatasetError (a value the model cannot read) as a CLIError."""
    from armt_ts.gluonts import DatasetError

    try:
        return list(predictor.predict(entries))
    except DatasetError as err:
        raise CLIError(f"{panel.description}: {err}") from None


def _check_loaded(predictor: ARMTPredictor, args: argparse.Namespace) -> tuple[int, int]:
    horizon = predictor.prediction_length
    context = predictor.prediction_net.model.context_length
    channels = predictor.prediction_net.model.config.patch.n_channels
    if channels != 1:  # the command forecasts every column (wide) or series (long) as its own univariate series
        raise CLIError(f"--model {args.model}: the model forecasts {channels}-channel series (ARMTEstimator("
                       f"target_dim={channels})), but armt-ts {args.command} forecasts each series on its own; use "
                       f"the model from Python (ARMTPredictor.deserialize), or train one with armt-ts forecast")
    for name, given, saved in (("horizon", args.horizon, horizon), ("context", args.context, context)):
        if given is not None and given != saved:
            raise CLIError(f"--{name} {given} differs from the model's ({saved}); omit --{name} with --model, "
                           f"or train a new model")
    return horizon, context


def predict(predictor: ARMTPredictor, panel: Panel, horizon: int, levels: Sequence[float]) -> Forecasts:
    """Forecast the next ``horizon`` steps of every series, from the end of the file's grid; a series whose last
    ``context`` steps hold no observed value (it ended earlier, or a column went silent) is forecast from its own
    last observation instead, dated from there, with a note naming it: from the grid's end its forecast would read
    nothing at all."""
    n, context = panel.frame.n_steps, predictor.prediction_net.model.context_length
    observed = np.isfinite(panel.target)
    ends = n - 1 - np.argmax(observed[:, ::-1], axis=1)  # each series' last observed step (every series has one)
    early = np.flatnonzero(ends < n - context)
    entries = list(_gluonts_dataset(panel))
    for s in early:
        entries[s] = dict(entries[s], target=entries[s]["target"][:ends[s] + 1])
    mean, quantiles = _forecast_arrays(_predicted(predictor, entries, panel), levels)
    timestamps = np.tile(future_timestamps(panel.frame, horizon), (len(panel.series), 1))
    for s in early:
        timestamps[s] = future_timestamps(panel.frame, horizon, last=int(ends[s]))
    if early.size:
        names = [panel.series[s] if panel.channels is None else f"{panel.series[s]} / {panel.channels[s]}"
                 for s in early]
        print(f"{PROG}: note: {early.size} series have no observed value in their last {context} steps and are "
              f"forecast from their own last observation (dated from there): "
              f"{', '.join(map(repr, names[:5]))}{' ...' if early.size > 5 else ''}", file=sys.stderr)
    return Forecasts(timestamps, mean, tuple(levels), quantiles)


def _forecast_arrays(forecasts: list, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """gluonts forecasts of S series -> mean [S, H] and quantiles [S, Q, H] at ``levels``, float64.

    The distribution forecasts of the default head are evaluated all at once (``_distribution_arrays``): asked one
    series and one level at a time, gluonts' Student-t builds a scipy distribution per call (about 0.2 ms each, with
    the mean), 16 s of a 20000-series forecast and most of a backtest's time."""
    batched = _distribution_arrays(forecasts, levels)
    if batched is not None:
        return batched
    mean = np.stack([np.asarray(f.mean, dtype=np.float64) for f in forecasts])
    quantiles = np.stack([np.stack([np.asarray(f.quantile(q), dtype=np.float64) for q in levels])
                          for f in forecasts])
    return mean, quantiles


def _distribution_arrays(forecasts: list, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """``_forecast_arrays`` for ``ChannelDistributionForecast`` objects of one distribution and shape (what
    ``ARMTPredictor.predict`` yields for a distribution head): their parameters stacked into one distribution of
    batch [S, H], whose mean and ``icdf`` are the per-series ones computed elementwise, so the values are the same
    as asking each forecast (``f.mean``, ``f.quantile(q)``). None for anything else (the caller then asks each)."""
    import torch

    from armt_ts.gluonts.estimator import ChannelDistributionForecast

    if not forecasts or not all(type(f) is ChannelDistributionForecast for f in forecasts):
        return None
    output, args, loc, scale = forecasts[0]._parts
    shape = [tuple(a.shape) for a in args] + [tuple(loc.shape), tuple(scale.shape)]
    for f in forecasts:
        o, a, lo, sc = f._parts
        if o is not output or [tuple(x.shape) for x in (*a, lo, sc)] != shape:
            return None
    stacked = tuple(torch.stack([f._parts[1][k] for f in forecasts]) for k in range(len(args)))
    d = output.distribution(stacked, torch.stack([f._parts[2] for f in forecasts]),
                            torch.stack([f._parts[3] for f in forecasts]))
    if len(d.batch_shape + d.event_shape) != 2:  # [S, H]: univariate forecasts only
        return None
    device = d.mean.device
    mean = d.mean.cpu().numpy().astype(np.float64)
    # as DistributionForecast.quantile does it: the level as a one-element float32 tensor, broadcast over [S, H]
    quantiles = np.stack([d.icdf(torch.tensor([q], device=device)).cpu().numpy().astype(np.float64)
                          for q in levels], axis=1)
    return mean, quantiles


# ---------------------------------------------------------------------------------------------------
# Outputs


def _quantile_column(level: float) -> str:
    return f"q{level:g}"


def _check_quantile_columns(levels: Sequence[float]) -> None:
    """Levels so close that their columns would share a name (q0.123457 for 0.1234567 and 0.1234568) are refused."""
    names = [_quantile_column(q) for q in levels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CLIError(f"--quantiles: levels {[q for q in levels if _quantile_column(q) in twice]} would all be "
                       f"written as column {twice[0]}; give levels that differ in their first 6 digits")


def write_csv(panel: Panel, forecasts: Forecasts, levels: Sequence[float], path: Path) -> int:
    """One row per series, [channel] and forecast step; returns the number of rows."""
    import polars as pl

    n_series, horizon = forecasts.mean.shape
    cols: dict[str, pl.Series] = {"series": pl.Series(np.repeat(panel.series, horizon), dtype=pl.String)}
    if panel.channels is not None:
        cols["channel"] = pl.Series(np.repeat(panel.channels, horizon), dtype=pl.String)
    cols["timestamp"] = pl.Series(forecasts.timestamps.reshape(-1)).cast(pl.Datetime("ns"))
    cols["mean"] = pl.Series(forecasts.mean.ravel())
    for q in levels:
        cols[_quantile_column(q)] = pl.Series(forecasts.at(q).ravel())
    whole_seconds = (forecasts.timestamps.astype(np.int64) % 1_000_000_000 == 0).all()
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(cols).write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S" if whole_seconds else None)
    return n_series * horizon


def plot_forecast(panel: Panel, forecasts: Forecasts, path: Path, *, n_series: int = DEFAULT_PLOT_SERIES) -> None:
    """PNG of the first ``n_series`` series: the last few horizons of history, the forecast median and the
    10-90% band. Drawn on an Agg canvas (no pyplot, no GUI, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    n = min(n_series, len(panel.series))
    horizon = forecasts.timestamps.shape[1]
    keep = min(PLOT_HISTORY_PER_HORIZON * horizon, panel.frame.n_steps)
    t_hist = panel.frame.timestamps[-keep:]
    fig = Figure(figsize=(10, 1.0 + 2.4 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    lo, mid, hi = (forecasts.at(q) for q in PLOT_LEVELS)
    for i, ax in enumerate(axes):
        name = panel.series[i] if panel.channels is None else f"{panel.series[i]} / {panel.channels[i]}"
        ax.plot(t_hist, panel.target[i, -keep:], color="0.25", lw=1.0, label="history")
        ax.fill_between(forecasts.timestamps[i], lo[i], hi[i], color="tab:blue", alpha=0.25,
                        label=f"{PLOT_LEVELS[0]:.0%}-{PLOT_LEVELS[2]:.0%} band")
        ax.plot(forecasts.timestamps[i], mid[i], color="tab:blue", lw=1.5, label="median forecast")
        ax.axvline(forecasts.timestamps[i, 0], color="0.6", ls=":", lw=1.0)
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel("value")
    axes[0].legend(loc="upper left", fontsize=8, ncols=3)
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time")
    fig.suptitle(f"ARMT forecast, {horizon} steps ahead: {panel.description}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------------
# stream

DEFAULT_EVERY = 24  # rows between two forecast blocks of `stream`


def _add_stream(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "stream",
        help="update a saved model's streaming state row by row and print forecasts at a cadence",
        description=(
            "Read CSV rows as they arrive (from FILE, or from stdin with '-' or no FILE), push each row into the\n"
            "streaming state of a model saved with 'forecast --save-model' (armt_ts.stream.StreamingForecaster: each\n"
            "completed segment is written to the associative memory, partial ones wait in a buffer), and write\n"
            "forecasts every --every rows and at the end of the input. Each entity's scaler statistics forget\n"
            "with the model's training context as time constant (StreamingForecaster.scaler_window), so a\n"
            "drifting series stays in the units the model was trained in.\n\n"
            "Layouts (the first line is the header):\n"
            "  wide  a timestamp column and one value column per series (a univariate model: every column is an\n"
            "        entity; a model with C channels: exactly C value columns, one entity);\n"
            "  long  with --id COL: timestamp, id, value per row; an id seen for the first time joins the fleet.\n"
            "Timestamps are ISO dates / datetimes, spelled as 'forecast' reads them (one with a UTC offset is\n"
            "converted to UTC), or integers; one kind for the whole input (and for a resumed --state), increasing\n"
            "per entity. They only order the rows: each row is the next step of its entities, whatever the time\n"
            "since their previous row (the stream has no time grid; write a missing step as a row with an empty\n"
            "cell). Value cells follow the rules of 'forecast': empty / NaN / NA / N/A / null / None are missing\n"
            "values, infinities and text are errors, magnitudes >= 1e20 are kept with a warning. Errors name the\n"
            "row as 'forecast' does (the first row after the header is row 1) and the column. With --state PATH\n"
            "the state is loaded from PATH when it exists and saved there (atomically) at every forecast block\n"
            "(or every --save-every rows) and at the end; after a restart, rows at or before an entity's saved\n"
            "last timestamp are skipped, so replaying the same file continues where the last run stopped. Ctrl-C\n"
            "(SIGINT) or SIGTERM stops the stream after the row being pushed, saves the state and exits with\n"
            "128 + the signal's number (130, 143). After a SIGKILL the rows since the last save are pushed again,\n"
            "and their forecasts written again."
        ),
        epilog=(
            "Output CSV (stdout or --out): entity, as_of (the entity's last timestamp, as the input spells its\n"
            "kind: an integer, or a date/time in UTC to the second or its fraction), step (1..h), mean and\n"
            "q<level> per quantile; an entity without any observed value yet gets none. A block (every --every\n"
            "rows) holds the entities pushed since the block before; a run that writes no block before the end\n"
            "of its input writes every entity's forecast there.\n\n"
            "Examples:\n"
            "  armt-ts forecast ETTh1.csv --target OT HUFL --save-model ett-model\n"
            "  tail -f live.csv | armt-ts stream --model ett-model --state live.state --every 1\n"
            "  armt-ts stream --model ett-model readings.csv --id machine --out forecasts.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="CSV file, or '-' (default) for stdin")
    p.add_argument("--model", metavar="DIR", required=True, help="a model saved with 'forecast --save-model'")
    p.add_argument("--state", metavar="PATH",
                   help="stream state file: loaded if present, saved at each forecast block (see --save-every) and "
                        "at the end")
    p.add_argument("--every", type=int, default=DEFAULT_EVERY, metavar="N",
                   help="write forecasts every N rows pushed, for the entities pushed since the last block (rows "
                        "skipped after a restart do not count; default: %(default)s; 0: only at the end)")
    p.add_argument("--save-every", type=int, metavar="N",
                   help="with --state, save it every N rows pushed instead of at every forecast block (a large "
                        "fleet's state is ~100 KB per entity; 0: only at the end, on a stop signal or on a bad row; "
                        "rows after the last save are pushed and forecast again after a restart)")
    p.add_argument("--horizon", type=int, metavar="H", help="steps to forecast (default and maximum: the model's)")
    p.add_argument("--quantiles", type=float, nargs="+", metavar="Q", default=list(DEFAULT_QUANTILES),
                   help=f"quantile levels (default: {' '.join(f'{q:g}' for q in DEFAULT_QUANTILES)})")
    p.add_argument("--timestamp", metavar="COL", help="time column (default: the first column)")
    p.add_argument("--id", metavar="COL", help="entity-id column: selects the long layout")
    p.add_argument("--target", metavar="COL", nargs="+",
                   help="wide: the value columns (default: all but the timestamp); long: the value column "
                        "(default: 'value')")
    p.add_argument("--out", metavar="CSV", default="-",
                   help="where forecasts go (default: stdout); an existing file is appended to when its header has "
                        "the same columns")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: %(default)s")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for the embedder and the backbone (the memory state and the head stay fp32)")
    p.add_argument("--compile", action="store_true",
                   help="run the segment updates and the forecasts' memory reads through torch.compile (faster "
                        "per update; the first of each compiles for several seconds; values within float rounding "
                        "of the default's; needs a C++ compiler)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                   help="CPU threads per torch operation (default: %(default)s)")
    p.set_defaults(run=run_stream)


# Timestamp spellings of ``stream``, normalised as the file readers' (armt_ts/data/timegrid.py) are.
_TIME_REWRITES = (
    (re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})"), r"\1-\2-\3"),
    (re.compile(r"^(\d{4})-(\d)(?=-)"), r"\1-0\2"),  # 2020-1-05 -> 2020-01-05
    (re.compile(r"^(\d{4}-\d{2})-(\d)(?!\d)"), r"\1-0\2"),  # 2020-01-5 -> 2020-01-05
    (re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ]\s*"), r"\1 "),
    (re.compile(r"\s*[Zz]$"), "+00:00"),
    (re.compile(r"\s+([+-]\d{2}:?\d{2})$"), r"\1"),
    (re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d)(?!\d)"), r"\1 0\2"),  # a one-digit hour
    (re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2})([+-]\d{2}:?\d{2})?$"), r"\1:00\2"),  # hour precision
)
_TIME_OFFSET = re.compile(r"(?<=\d:\d{2})(?::\d{2}(?:\.\d+)?)?([+-])(\d{2}):?(\d{2})$")
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INFINITY = re.compile(r"[+-]?inf(inity)?", re.IGNORECASE)
_INT64 = np.iinfo(np.int64)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parse_time(text: str, where: str) -> tuple[int, str]:
    """A timestamp cell -> (int64: nanoseconds for a date / time, converted to UTC where it has a UTC offset, or
    the integer itself; its kind: "integer", "naive" or "zoned"). ISO-like spellings as the file readers accept
    them: ``2020-01-01``, ``2020/01/01 00:10``, ``2020-01-01T00:10:00.5``, with ``Z`` / ``+01:00`` / ``+0100``."""
    t = text.strip()
    if _INTEGER.fullmatch(t):
        v = int(t)
        if not _INT64.min < v <= _INT64.max:
            raise CLIError(f"{where}: timestamp {t} is outside the int64 range ({_INT64.min + 1} .. {_INT64.max})")
        return v, "integer"
    for pattern, repl in _TIME_REWRITES:
        t = pattern.sub(repl, t)
    offset = _TIME_OFFSET.search(t)
    minutes = 0
    if offset:
        sign, hh, mm = offset.group(1), int(offset.group(2)), int(offset.group(3))
        minutes = (hh * 60 + mm) * (1 if sign == "+" else -1)
        t = t[:offset.start(1)]
    try:
        d = np.datetime64(t.replace(" ", "T"))  # in the unit its spelling has (days, seconds, ...)
    except (ValueError, OverflowError):
        d = np.datetime64("NaT")
    if np.isnat(d):
        raise CLIError(f"{where}: timestamp {text.strip()!r} is neither an ISO date/time (such as "
                       f"'2020-01-01 00:10:00', optionally with a UTC offset) nor an integer")
    from armt_ts.stream import datetimes_to_ns

    nano, wrong = datetimes_to_ns(np.array([d]))  # numpy's own conversion wraps around / overflows at the ends
    ns = None if wrong[0] else int(nano[0]) - minutes * 60_000_000_000
    if ns is None or not _INT64.min < ns <= _INT64.max:
        why = ("has a fraction of a second finer than nanoseconds" if np.datetime_data(d.dtype)[0] in ("ps", "fs", "as")
               else "is outside the years 1677..2262")
        raise CLIError(f"{where}: timestamp {text.strip()!r} {why}, which int64 nanoseconds cannot hold")
    return ns, "zoned" if offset else "naive"


_TIME_KINDS = {"integer": "an integer", "naive": "a date/time without a UTC offset",
               "zoned": "a date/time with a UTC offset"}


@functools.cache
def _cell_rules() -> tuple[frozenset[str], float]:
    """The file readers' missing-cell spellings and fill-value magnitude (imported once, on the first cell)."""
    from armt_ts.data.readers import MISSING_TEXT, SUSPICIOUS_MAGNITUDE

    return frozenset(MISSING_TEXT), SUSPICIOUS_MAGNITUDE


def _parse_value(text: str, where: str, warn: Callable[[str], None] | None = None) -> float:
    """A value cell by the file readers' rules (armt_ts/data/readers.py): empty / NaN / NA / N/A / null / None
    (any case) are missing (NaN); infinities and magnitudes beyond float32 are rejected; ``warn`` gets a message
    for a magnitude >= 1e20 (a likely fill value, kept as a number)."""
    missing, fill_at = _cell_rules()
    t = text.strip()
    if t.lower() in missing:
        return float("nan")
    if _INFINITY.fullmatch(t):
        raise CLIError(f"{where}: {text.strip()!r} is not a finite number (an empty cell or NaN marks a missing "
                       f"value)")
    if not _NUMBER.fullmatch(t):
        raise CLIError(f"{where}: {text.strip()!r} is not a number (expected a decimal number, or an empty cell / "
                       f"NaN for a missing value)")
    v = float(t)
    if not abs(v) <= _FLOAT32_MAX:
        raise CLIError(f"{where}: {t!r} is beyond float32's range (it would reach the model as inf); expected a "
                       f"finite number of magnitude at most {_FLOAT32_MAX:.4g}")
    if abs(v) >= fill_at and warn is not None:
        warn(f"{where}: the value {t!r} (magnitude >= {fill_at:g}) looks like a fill / sentinel value; "
             f"it is kept as a number: make such cells empty to mark them missing")
    return v


class _StreamOutput:
    """Forecast blocks as CSV lines, flushed after each block (for pipes and `tail -f`)."""

    def __init__(self, path: str, levels: Sequence[float]):
        self.levels = list(levels)
        header = ",".join(["entity", "as_of", "step", "mean", *map(_quantile_column, self.levels)])
        if path != "-" and os.path.exists(path) and os.path.getsize(path):  # appending: the columns must match
            with open(path, encoding="utf-8", errors="replace") as f:
                first = f.readline().rstrip("\r\n")
            if first != header:
                raise OSError(f"it exists with the header {first!r}, not {header!r} (forecasts are appended to an "
                              f"existing file only under the same columns)")
        self.file = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self.owned = path != "-"
        if not self.owned or self.file.tell() == 0:
            self.file.write(header + "\n")

    def write(self, fc, as_of: dict, channels: Sequence[str]) -> int:
        import csv

        w = csv.writer(self.file, lineterminator="\n")
        point, q = fc.point.cpu().numpy(), fc.quantiles.cpu().numpy()  # [N, h, C], [N, h, C, Q]
        rows = 0
        for i, e in enumerate(fc.entities):
            for c in range(point.shape[2]):
                name = e if point.shape[2] == 1 else f"{e}/{channels[c]}"
                for h in range(point.shape[1]):
                    # 9 significant digits: every float32 exactly (6 lost the band of values near 1e6)
                    w.writerow([name, as_of.get(e, ""), h + 1, f"{point[i, h, c]:.9g}",
                                *(f"{q[i, h, c, k]:.9g}" for k in range(q.shape[3]))])
                    rows += 1
        self.file.flush()
        return rows

    def close(self) -> None:
        if self.owned:
            self.file.close()


def run_stream(args: argparse.Namespace) -> int:
    """The ``stream`` subcommand."""
    if args.every < 0:
        raise CLIError(f"--every must be >= 0, got {args.every}")
    if args.save_every is not None and args.save_every < 0:
        raise CLIError(f"--save-every must be >= 0, got {args.save_every}")
    if args.save_every is not None and args.state is None:
        raise CLIError("--save-every sets how often the --state file is saved; give --state PATH too")
    if args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    levels = sorted(args.quantiles)
    if any(not 0.0 < q < 1.0 for q in levels) or len(set(levels)) != len(levels):
        raise CLIError(f"--quantiles must be distinct levels strictly between 0 and 1, got {args.quantiles}")
    _check_quantile_columns(levels)
    source = "<stdin>" if args.file == "-" else args.file
    with _quiet_libraries(), _torch_threads(args.threads):
        from armt_ts.state import StateFileError
        from armt_ts.stream import CompileError, StreamingForecaster

        predictor = load_model(args.model, args.device)
        model = predictor.prediction_net.model.forecaster
        horizon = args.horizon or model.config.head.horizon
        if not 1 <= horizon <= model.config.head.horizon:
            raise CLIError(f"--horizon {horizon}: the model forecasts at most {model.config.head.horizon} steps")
        resumed = args.state is not None and Path(args.state).exists()
        try:
            run_opts = dict(device=args.device, bf16=args.bf16, compile=args.compile)
            sf = (StreamingForecaster.load(args.state, model, **run_opts) if resumed
                  else StreamingForecaster.from_predictor(predictor, entities=[], **run_opts))
        except StateFileError as err:
            raise CLIError(f"--state {args.state!r}: {err}") from None
        try:  # bytes that are not UTF-8 come through as surrogates, so the row loop can name their row
            if args.file == "-":
                stream = sys.stdin
                if hasattr(stream, "reconfigure"):
                    stream.reconfigure(errors="surrogateescape")
            else:
                stream = open(args.file, encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as err:
            raise CLIError(f"cannot read {args.file!r}: {err.strerror or err}") from None
        try:
            out = _StreamOutput(args.out, levels)
        except OSError as err:
            raise CLIError(f"cannot write {args.out!r}: {err.strerror or err}") from None
        run = _StreamRun(sf, args, source, out, horizon, levels)
        handlers = _catch_stop_signals(run)
        if not resumed:  # a model of C > 1 channels takes the file's value column names as its channel names
            run.fresh = lambda names: StreamingForecaster.from_predictor(predictor, entities=[], channels=names,
                                                                         **run_opts)
        try:
            run.rows(iter(stream.readline, ""))  # row by row as they arrive, no read-ahead
            if not run.forecast_is_current or run.saved_at != run.counts["rows"] or run.blocks == 0:
                run.save_and_forecast(end=True)
        except CLIError:
            if run.counts["rows"]:
                run.save_state()  # the rows before the bad one are kept: a restart continues from there
            raise
        except CompileError as err:  # --compile without a working torch.compile: the rows pushed so far are kept
            if run.counts["rows"]:
                run.save_state()
            raise CLIError(f"--compile: {err}") from None
        except BrokenPipeError:  # the reader of stdout went away (`| head`): keep the state, stop quietly
            run.save_state()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except _Stopped as stop:  # Ctrl-C / SIGTERM, between two rows' updates: keep the state, stop quietly
            if run.counts["rows"]:
                run.save_state()
            saved = f"; state in {args.state}" if args.state and run.counts["rows"] else ""
            print(f"{PROG} stream: stopped by {signal.Signals(stop.signum).name} after {run.counts['rows']} row(s) "
                  f"from {source}{saved}", file=sys.stderr)
            return 128 + stop.signum
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            out.close()
            if stream is not sys.stdin:
                stream.close()
    c = run.counts
    skipped = f", skipped {c['skipped']} row(s) already in the state" if c["skipped"] else ""
    waiting = len(sf.entities) - len(sf.entities_with_data())
    waiting = f" ({waiting} without an observed value yet, so not forecast)" if waiting else ""
    print(f"{PROG} stream: {c['rows']} row(s) from {source}{skipped}; {len(sf.entities)} entities{waiting}, "
          f"{c['segments']} segment(s) written to memory; {c['forecast_rows']} forecast row(s)"
          f"{f'; state in {args.state}' if args.state else ''}", file=sys.stderr)
    return 0


_UNFORECAST = "unforecast"  # the state's note: entities pushed since the last forecast block written


class _StreamRun:
    """The row loop of ``stream``: parse, push, and forecast / save every ``args.every`` rows."""

    NO_TIME = int(np.iinfo(np.int64).min)

    def __init__(self, sf, args: argparse.Namespace, source: str, out: _StreamOutput, horizon: int,
                 levels: Sequence[float]):
        self.sf, self.args, self.source, self.out = sf, args, source, out
        self.horizon, self.levels = horizon, list(levels)
        self.C = sf.C
        # after a restart, rows at or before an entity's saved last timestamp were pushed already: skip them
        self.watermark = {e: int(t) for e, t in zip(sf.entities, sf.state.last_time.tolist())}
        self.as_of = {e: t for e, t in self.watermark.items() if t != self.NO_TIME}  # each entity's last time
        self.counts = {"rows": 0, "skipped": 0, "segments": 0, "forecast_rows": 0}
        self.forecast_is_current = False
        # entities pushed since the last forecast block (a dict as an ordered set): a block forecasts these only
        # (another entity's forecast is the one already written: nothing it reads has changed). Forecasting the
        # whole fleet every N rows made a long file's output grow as rows x entities. A state saved between two
        # blocks (--save-every, an error, a stop) keeps them in its notes, so a restart, which skips their rows,
        # still forecasts them.
        self.pushed: dict[Hashable, None] = dict.fromkeys(e for e in sf.notes.get(_UNFORECAST, ()) if e in sf._rows)
        self.blocks = 0  # forecast blocks written by this run
        self.saved_at = 0  # rows pushed when the state was last saved
        # the kind of timestamp and the row that set it: the first row's, or a resumed state's (row None)
        kind = sf.notes.get("time_kind")
        self.time_kind: tuple[str, int | None] | None = (kind, None) if kind in _TIME_KINDS else None
        self.updating = False  # a row is updating the state: a stop signal waits for it (_catch_stop_signals)
        self.stop_signal: int | None = None
        self.fresh: Callable[[list[str]], Any] | None = None  # a new stream with these channel names (not resumed)
        self.warned: set[str] = set()  # columns already warned about (a likely fill value)

    def _warn(self, column: str) -> Callable[[str], None]:
        def warn(message: str) -> None:
            if column not in self.warned:
                self.warned.add(column)
                print(f"{PROG}: warning: {message} (said once per column)", file=sys.stderr)
        return warn

    def _time(self, cell: str, where: str, row_no: int) -> int:
        ts, kind = _parse_time(cell, where)
        if self.time_kind is None:
            self.time_kind = (kind, row_no)
        elif kind != self.time_kind[0]:
            first_kind, first_row = self.time_kind
            first = (f"row {first_row}'s is" if first_row is not None else
                     f"the state in {self.args.state!r} was made from rows whose timestamps are")
            raise CLIError(f"{where}: timestamp {cell.strip()!r} is {_TIME_KINDS[kind]}, but {first} "
                           f"{_TIME_KINDS[first_kind]}; expected one kind of timestamp in the whole input"
                           + (" (convert local times to UTC first)" if {kind, first_kind} == {"naive", "zoned"}
                              else ""))
        return ts

    def save_state(self) -> None:
        self.saved_at = self.counts["rows"]
        if self.args.state is not None:
            self.sf.notes[_UNFORECAST] = list(self.pushed)
            if self.time_kind is not None:  # a restart reads its input's times as this run did
                self.sf.notes["time_kind"] = self.time_kind[0]
            with _writing(self.args.state):
                self.sf.save(self.args.state)

    def show_time(self, t: int) -> str:
        return _format_time(t, None if self.time_kind is None else self.time_kind[0])

    def save_and_forecast(self, end: bool = False) -> None:
        """A forecast block for the entities pushed since the last one (at the end of a run that wrote none: every
        entity, so a resumed state with no new rows still gives its forecasts), then the state saved if due."""
        # an entity without an observed value yet (a wide file's column before its first value) has nothing to
        # forecast from
        ready = self.sf.entities_with_data(None if end and self.blocks == 0 else list(self.pushed))
        if ready:
            fc = self.sf.forecast(self.horizon, self.levels, entities=ready)
            as_of = {e: self.show_time(self.as_of[e]) for e in fc.entities if e in self.as_of}
            self.counts["forecast_rows"] += self.out.write(fc, as_of, self.sf.channels)
        self.blocks += 1
        self.pushed.clear()
        save_every = self.args.every if self.args.save_every is None else self.args.save_every
        if end or (save_every and self.counts["rows"] - self.saved_at >= save_every):
            self.save_state()
        self.forecast_is_current = True

    def _seen(self, entity, ts: int) -> bool:
        return ts <= self.watermark.get(entity, self.NO_TIME)

    def rows(self, lines: Iterator[str]) -> None:
        import csv

        sf, C = self.sf, self.C
        header_line = next(lines, None)
        if header_line is None:
            raise CLIError(f"{self.source}: empty input (expected a CSV header line)")
        _check_utf8(header_line, f"{self.source}, the header line")
        header = next(csv.reader([header_line.removeprefix("\ufeff")]))  # a UTF-8 byte-order mark is no name
        t_col, id_col, cols = _stream_columns(header, self.args, self.source, C)
        if C > 1:  # the value columns are the channels, by name: a resumed state must get them in its order
            names = [name for _, name in cols]
            if self.fresh is not None:
                self.sf = sf = self.fresh(names)
            elif list(sf.channels) != names and list(sf.channels) != [str(c) for c in range(C)]:
                raise CLIError(f"{self.source}: the value columns {names} are not the state's channels "
                               f"{list(sf.channels)} in that order; name them so with --target "
                               f"{' '.join(sf.channels)}")
        if id_col is None:
            wanted = [name for _, name in cols] if C == 1 else ["series"]
            sf.join([e for e in wanted if e not in sf._rows])
        warners = {name: self._warn(name) for _, name in cols}  # one per value column, not one per cell
        # rows are numbered as the file readers number them: the first row after the header is row 1
        for row_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{self.source}, row {row_no}"
            _check_utf8(line, where)
            cells = next(csv.reader([line]))
            if len(cells) != len(header):
                raise CLIError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            ts = self._time(cells[t_col], f"{where}, column {header[t_col]!r}", row_no)
            if id_col is None:
                vals = np.array([_parse_value(cells[i], f"{where}, column {name!r}", warners[name])
                                 for i, name in cols])
                if C == 1:  # every column is an entity
                    ents = [name for _, name in cols]
                    keep = [k for k, e in enumerate(ents) if not self._seen(e, ts)]
                    ents, vals = [ents[k] for k in keep], vals[keep][:, None]  # [N, C=1]
                else:  # the columns are the C channels of one entity
                    ents, vals = ([] if self._seen("series", ts) else ["series"]), vals[None]
            else:
                e = cells[id_col].strip()
                if e == "":
                    raise CLIError(f"{where}, column {header[id_col]!r}: empty entity id")
                i, name = cols[0]
                ents = [] if self._seen(e, ts) else [e]
                vals = np.array([[_parse_value(cells[i], f"{where}, column {name!r}", warners[name])]])
            if not ents:
                self.counts["skipped"] += 1
                continue
            self.updating = True  # from here to the counts, a stop signal waits (the state saved is a real one)
            try:
                if id_col is not None and ents[0] not in sf._rows:
                    sf.join(ents)  # a new entity joins the fleet
                self.counts["segments"] += _push(sf, vals, np.full(len(ents), ts), ents, where, self.time_kind[0])
                for e in ents:
                    self.as_of[e] = ts
                    self.pushed[e] = None
                self.counts["rows"] += 1
                self.forecast_is_current = False
            finally:
                self.updating = False
            if self.stop_signal is not None:
                raise _Stopped(self.stop_signal)
            if self.args.every and self.counts["rows"] % self.args.every == 0:
                self.save_and_forecast()
            elif (self.args.save_every and self.args.state is not None
                  and self.counts["rows"] - self.saved_at >= self.args.save_every):
                self.save_state()


def _check_utf8(line: str, where: str) -> None:
    """A line read with errors="surrogateescape" holds surrogates where its bytes were not UTF-8."""
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = line[err.start:err.end].encode("utf-8", "surrogateescape")
            raise CLIError(f"{where}: bytes that are not UTF-8 ({bad!r} at character {err.start + 1}); expected "
                           f"a UTF-8 text file (convert it first, e.g. with iconv)") from None


def _format_time(t: int, kind: str | None) -> str:
    """A time as written in the output: as an integer for integer timestamps, else int64 nanoseconds as a UTC
    date/time, to the second or its fraction. With no kind known (a state written before the kind was saved, and
    no row read yet) the size decides: nanoseconds since 1970 for any date after 1970-01-12."""
    t = int(t)
    if kind == "integer" or (kind is None and abs(t) < 10**15):
        return str(t)
    whole, _, fraction = str(np.datetime64(t, "ns")).replace("T", " ").partition(".")
    return f"{whole}.{fraction.rstrip('0')}" if fraction.rstrip("0") else whole


class _Stopped(Exception):
    """SIGINT or SIGTERM while streaming (``_catch_stop_signals``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _catch_stop_signals(run: "_StreamRun") -> dict:
    """SIGINT / SIGTERM raise ``_Stopped`` in the row loop; one that arrives while a row updates the state (a join
    and a push) is raised once the update is complete, so the state saved on the way out is one the stream had.
    -> the previous handlers (none outside the main thread, where Python cannot set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, frame: Any) -> None:
        if run.updating:
            run.stop_signal = signum
        else:
            raise _Stopped(signum)

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}


def _stream_columns(header: list[str], args: argparse.Namespace, source: str, C: int):
    """-> (timestamp column index, id column index or None, [(value column index, name)])."""
    names = [h.strip() for h in header]
    if len(set(names)) != len(names):
        raise CLIError(f"{source}: the header repeats a column name: {names}")

    def index(col: str, what: str) -> int:
        if col not in names:
            raise CLIError(f"{source}: no {what} column {col!r}; the header has {names}")
        return names.index(col)

    t_col = index(args.timestamp, "timestamp") if args.timestamp else 0
    if args.id is not None:
        id_col = index(args.id, "id")
        value = args.target[0] if args.target else "value"
        if args.target and len(args.target) > 1:
            raise CLIError(f"a long file has one value column, but --target names {len(args.target)}")
        if C != 1:
            raise CLIError(f"--id (long layout) needs a univariate model; this one has {C} channels")
        return t_col, id_col, [(index(value, "value"), value)]
    targets = args.target or [n for i, n in enumerate(names) if i != t_col]
    cols = [(index(n, "value"), n) for n in targets]
    if not cols:
        raise CLIError(f"{source}: no value column besides the timestamp")
    if C > 1 and len(cols) != C:
        raise CLIError(f"{source}: the model has {C} channels, the file {len(cols)} value columns {targets}")
    return t_col, None, cols


def _push(sf, values: np.ndarray, timestamps: np.ndarray, entities: list, where: str, kind: str) -> int:
    from armt_ts.stream import StreamError, TimeOrderError

    try:
        return sf.push(values, timestamps=timestamps, entities=entities)
    except TimeOrderError as err:  # the times as the file writes them, not as int64 nanoseconds
        now, before = _format_time(err.time, kind), _format_time(err.previous, kind)
        raise CLIError(f"{where}: entity {err.entity!r}: timestamp {now} is not after its previous one, {before} "
                       f"(timestamps must increase per entity)") from None
    except StreamError as err:
        raise CLIError(f"{where}: {err}") from None

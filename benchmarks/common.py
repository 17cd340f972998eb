"""Shared plumbing for benchmark scripts: machine info, git commit, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, where: str,
                   clip: float = 1.0) -> None:
    """One training update: refuse a non-finite loss (naming ``where``: step, batch), backward, clip, step."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()} at {where}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()


# --- argparse types: a bad value is a one-line usage error (exit 2) before any data is read or model trained ---


def _number(kind, text: str, low: float, low_ok: bool, what: str):
    import argparse

    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not low_ok):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, 1, True, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """Counts that may be 0, and seeds (numpy refuses negative ones)."""
    return _number(int, text, 0, True, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(float, text, 0.0, False, "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, 0.0, True, "a finite number >= 0")


def existing_file(text: str) -> str:
    import argparse

    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file (a folder?)")
    return text


def existing_dir(text: str) -> str:
    import argparse

    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def result_file(text: str) -> str:
    """A result JSON of an earlier run (a path, optionally with forecast.py's @H1,H2 suffix): it must exist and
    hold a JSON object."""
    import argparse

    path = text.split("@", 1)[0] if "@" in text and not Path(text).exists() else text
    existing_file(path)
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path}: holds a JSON {type(data).__name__}, not a result file's object")
    return text


def result_name(text: str) -> str:
    """A result name: the stem of the files a run writes under benchmarks/results (``NAME.json``, ``NAME.md``,
    ``NAME.png``), so letters, digits, ``.``, ``_`` and ``-`` only, no folder and no extension."""
    import argparse

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"expected a file stem (letters, digits, '.', '_', '-'; no folder), "
                                         f"got {text!r}: results go to benchmarks/results/<name>.json and .md")
    for ext in (".json", ".md", ".png"):
        if text.endswith(ext):
            raise argparse.ArgumentTypeError(f"{text!r}: give the stem without {ext} (results go to "
                                             f"benchmarks/results/{text[:-len(ext)]}.json and .md)")
    return text


def device_name(text: str) -> str:
    """cpu, or cuda where torch sees a CUDA device."""
    import argparse

    if text not in ("cpu", "cuda") and not text.startswith("cuda:"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device on this machine")
    return text


def command_line(name: str, argv: list[str] | None = None) -> str:
    """How to rerun this benchmark: ``python -m benchmarks.<name> <arguments>`` (``argv`` or sys.argv[1:])."""
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", f"benchmarks.{name}", *map(shlex.quote, args)])


def git_commit() -> str:
    """HEAD (+ "-dirty"). $ARMT_TS_COMMIT, when set, names the commit instead: a device machine runs a copy of the
    tree whose .git can be older than the files (seen on the H100: it said the session's first commit + "-dirty")."""
    given = os.environ.get("ARMT_TS_COMMIT", "").strip()
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=RESULTS.parent, check=True).stdout.strip()
        found = out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        found = "no git"
    return f"{given} (from $ARMT_TS_COMMIT; git here: {found})" if given else ("unknown" if found == "no git" else found)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    except OSError:
        pass
    return info


def argmin_finite(values: list[float], what: str) -> int:
    """Index of the lowest finite value (a NaN or inf candidate is never chosen); raises when none is finite."""
    finite = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not finite:
        raise RuntimeError(f"{what}: every candidate's score is non-finite ({values})")
    return min(finite)[1]


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md (atomically enough: whole-file writes)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a
    child started by a large parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best available


def train_main_job(directory: Path, extra: list[str], seed: int) -> float:
    """``python -m armt_ts forecast --save-model DIRECTORY --seed SEED EXTRA`` (the main job's model, one thread, in
    a fresh process); returns the wall seconds. A failed training exits with its stderr's tail."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "armt_ts", "forecast", "--save-model", str(directory), "--no-plot",
                          "--out", str(Path(directory) / "forecast.csv"), "--seed", str(seed), *extra],
                         capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"training the main job's model (armt-ts forecast {' '.join(extra)}) failed:\n"
                         f"{out.stderr[-3000:]}")
    return time.perf_counter() - t0

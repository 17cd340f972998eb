"""The research agenda (DESIGN.md section 8): run the quick version of every experiment in benchmarks/ and
write benchmarks/results/agenda.md, answering the four questions with numbers read from the results files
and the command that produced each.

    python -m benchmarks.agenda              # run every experiment's --quick mode, then write agenda.md
    python -m benchmarks.agenda --no-run     # only build agenda.md (+ agenda.png) from existing result files

Experiments are run as subprocesses (``python -m benchmarks.<name> --quick ...``) with a distinct result
name where the script takes one (``--name`` or ``--out``: agenda_<name>); a script that is missing or fails
gets a clear line in agenda.md instead of numbers. With --no-run the newest existing result of each
experiment is used, preferring the full run over the quick one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, git_commit, markdown_table, positive_int, result_name

ROOT = RESULTS.parent.parent
# name -> extra arguments of its quick run (beyond --quick and the result name)
EXPERIMENTS: dict[str, list[str]] = {
    "associative_retrieval": [],
    "ops": ["--repeats", "5", "--threads", "1"],
    "forecast": ["--data", "../shared/data/ett/ETTh1.csv", "--dataset", "ETTh1"],
    "missing_channels": ["--data", "../shared/data/ett/ETTh1.csv", "--dataset", "ETTh1"],
    "streaming": [],
    "state_tracking": [],
    "reliability": [],
    "channels": [],
}
# benchmarks/retrieval_drift.py is not run here: it traces models saved by a full associative_retrieval run
# result stems to look for, best first (agenda_<name> is what this script's own runs write)
CANDIDATES: dict[str, list[str]] = {
    "associative_retrieval": ["associative_retrieval", "agenda_associative_retrieval", "associative_retrieval_quick"],
    "ops": ["ops", "agenda_ops"],
    # the current ETTh1 table (150 s per model, ARMT with early stopping, context 512 at H=192, cross-channel terms at
    # H=192 / 720 and the skip's ridge at H=720 where validation chose them, mean of three seeds), the same before the
    # skip's ridge, before the cross-channel terms, at context 336 throughout, without early stopping, then the early
    # 45 s run with DeepAR
    "forecast": ["forecast_ETTh1_150s_es_crosssr_seeds", "forecast_ETTh1_150s_es_cross_seeds",
                 "forecast_ETTh1_150s_es_L512_seeds",
                 "forecast_ETTh1_150s_es_seeds", "forecast_ETTh1_150s_pruned_seeds", "forecast_ETTh1",
                 "agenda_forecast", "forecast_ETTh1_quick"],
    # the full run with the current H=96 choice (150 s per model) before the early 45 s run
    "missing_channels": ["missing_channels_150s_last", "missing_channels", "agenda_missing_channels",
                         "missing_channels_quick"],
    "streaming": ["streaming", "agenda_streaming", "streaming_quick"],
    "state_tracking": ["state_tracking", "agenda_state_tracking", "state_tracking_quick"],
    "reliability": ["reliability", "agenda_reliability", "reliability_quick"],
    "channels": ["channels", "agenda_channels", "channels_quick"],
}
# question 2's 21-channel rows: the first of these Weather forecast results that exists (the current table: per-channel
# least-squares skips and early stopping, mean of three seeds; then the same without them)
WEATHER_STEMS = [
    "forecast_Weather_150s_es_pool_seeds",
    "forecast_Weather_150s_pruned_seeds",
    "forecast_Weather",
    "forecast_Weather_h96_360s",
    "forecast_Weather_h96_150s_schedule",
    "forecast_Weather_h96_150s",
    "forecast_Weather_quick",
]


# question 2's 21-channel missing-channel run
WEATHER_MISSING_STEM = "missing_channels_Weather_150s"


def script_help(name: str) -> str | None:
    """The script's --help text, or None if there is no such script."""
    if not (ROOT / "benchmarks" / f"{name}.py").is_file():
        return None
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    return out.stdout + out.stderr


def quick_command(name: str, help_text: str) -> tuple[list[str], bool]:
    """-> (command, whether the script writes to the distinct result name agenda_<name> itself)."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}"]
    if "--quick" in help_text:
        cmd.append("--quick")
    cmd += EXPERIMENTS[name]
    if "--name" in help_text:
        return cmd + ["--name", f"agenda_{name}"], True
    if "--out" in help_text:
        return cmd + ["--out", f"agenda_{name}"], True
    return cmd, False


def _own_outputs(name: str) -> list[Path]:
    return [RESULTS / f"{name}{ext}" for ext in (".json", ".md", ".png")]


def _move_to_agenda_name(name: str, backups: dict[Path, bytes]) -> None:
    """A script with no result-name option wrote results/<name>.*: move those to agenda_<name>.* and put the
    files that were there before back, so an agenda run never replaces a full run's results."""
    for path in _own_outputs(name):
        if path.is_file():
            path.replace(RESULTS / f"agenda_{path.name}")
        if path in backups:
            path.write_bytes(backups[path])


def run_all(names: list[str], timeout: int) -> dict[str, dict]:
    """Run each experiment's quick mode; -> per name: status, command, seconds, log tail."""
    status = {}
    for name in names:
        help_text = script_help(name)
        if help_text is None:
            status[name] = {"status": "missing", "note": f"benchmarks/{name}.py does not exist (yet)"}
            print(f"[agenda] {name}: missing", flush=True)
            continue
        cmd, named = quick_command(name, help_text)
        shown = "python " + " ".join(cmd[1:])
        print(f"[agenda] {name}: {shown}", flush=True)
        backups = {} if named else {p: p.read_bytes() for p in _own_outputs(name) if p.is_file()}
        t0 = time.perf_counter()
        try:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
            finally:
                if not named:
                    _move_to_agenda_name(name, backups)
            ok = out.returncode == 0
            tail = (out.stdout + out.stderr)[-600:]
            status[name] = {"status": "ok" if ok else f"failed (exit {out.returncode})", "command": shown,
                            "seconds": round(time.perf_counter() - t0, 1), "log_tail": None if ok else tail}
        except subprocess.TimeoutExpired:
            status[name] = {"status": f"timed out after {timeout} s", "command": shown,
                            "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[agenda] {name}: {status[name]['status']} ({status[name]['seconds']} s)", flush=True)
    return status


def load_result(name: str, prefer: str | None = None) -> tuple[str | None, dict | None]:
    """The first existing result of ``name`` (``prefer`` first when given): -> (stem, payload)."""
    stems = ([prefer] if prefer else []) + CANDIDATES.get(name, [name])
    for stem in stems:
        path = RESULTS / f"{stem}.json"
        if path.is_file():
            try:
                return stem, json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
    return None, None


def command_of(stem: str, payload: dict) -> str:
    """The command line that produced a result: its JSON 'command', else the 'Command:' line of its .md."""
    if isinstance(payload.get("command"), str):
        return payload["command"]
    md = RESULTS / f"{stem}.md"
    if md.is_file():
        m = re.search(r"Command:\s*`([^`]*)`", md.read_text())
        if m:
            return m.group(1).strip()
    return f"(not recorded in {stem}.json)"


def rows_of(payload: dict | None) -> list[dict]:
    rows = (payload or {}).get("rows")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def generic_table(rows: list[dict], max_rows: int = 12, max_cols: int = 9) -> str:
    """A compact table of a result file we know no schema for: its first rows and columns."""
    if not rows:
        return "(no rows)"
    cols = [c for c in rows[0] if not isinstance(rows[0][c], (dict, list))][:max_cols]
    more = f"\n\n({len(rows) - max_rows} more rows in the file)" if len(rows) > max_rows else ""
    return markdown_table(rows[:max_rows], cols) + more


def _seeds_note(payload: dict) -> str:
    seeds = payload.get("seeds")
    return f"; mean over seeds {', '.join(map(str, seeds))}" if isinstance(seeds, list) and len(seeds) > 1 else ""


def source_line(stem: str | None, payload: dict | None, name: str, status: dict) -> str:
    if stem is None:
        st = status.get(name, {})
        why = st.get("note") or st.get("status") or "no result file"
        return f"- **{name}**: no result ({why})."
    quick = "quick" in stem or bool((payload.get("args") or {}).get("quick"))
    return (f"- **{name}**: `benchmarks/results/{stem}.json`{' (quick run)' if quick else ''}, commit "
            f"{payload.get('git_commit', payload.get('commit', '?'))}; command: `{command_of(stem, payload)}`")


def forecast_table(payload: dict) -> str:
    """MSE by model and horizon, with the average over the horizons, of a benchmarks.forecast result (its main
    table; a seed mean's rows carry the mean over its seeds)."""
    rows = [r for r in rows_of(payload) if r.get("table", "main") == "main" and r.get("mse") is not None]
    horizons = sorted({r["horizon"] for r in rows})
    models: dict[str, dict[int, float]] = {}
    for r in rows:
        name = r["model"] + (" (published)" if r.get("source") == "published" else "")
        models.setdefault(name, {})[r["horizon"]] = r["mse"]
    table = []
    for name, by_h in models.items():
        row = {"model": name, **{str(h): round(by_h[h], 4) if h in by_h else None for h in horizons}}
        row["avg"] = round(sum(by_h.values()) / len(by_h), 4) if len(by_h) == len(horizons) else None
        table.append(row)
    return markdown_table(table, ["model", *map(str, horizons), "avg"])


def missing_channels_goal(payload: dict) -> list[str]:
    """The goal line of a benchmarks.missing_channels result: the relative MSE increase at 30% hidden channels."""
    goal = payload.get("goal") or {}
    inc = goal.get("relative_increase_at_30pct") or {}
    if not inc:
        return []
    table = [{"model": m, "increase_at_30pct_hidden": f"{v * 100:+.1f}%", "goal_met": (goal.get("met") or {}).get(m)}
             for m, v in inc.items()]
    best = goal.get("best_baseline_increase")
    head = (f"Goal: ARMT's increase at most half the best baseline's ({goal.get('best_baseline')}: {best * 100:+.1f}%, "
            f"so at most {best * 50:+.1f}%)." if best is not None else "Goal: at most half the best baseline's.")
    return [head, "", markdown_table(table, ["model", "increase_at_30pct_hidden", "goal_met"]), ""]


# ---------------------------------------------------------------- the four questions


def q1_streaming(res: dict, status: dict) -> list[str]:
    out = ["## 1. Streaming state: constant-size state, bounded per-update latency, always-on updates", ""]
    stem, st = res["state_tracking"]
    if st:
        rows = [r for r in rows_of(st) if r.get("experiment") == "length" and r.get("layout") == "shared"
                and r.get("match", "state") == "state"]
        keyed = sorted((r for r in rows if r["model"] == "armt_keyed"), key=lambda r: r["eval_length"])
        if keyed:
            out.append(f"Keyed ARMT carries {keyed[0]['state_floats_per_stream']} floats per stream whatever the "
                       f"stream length; one event update takes {keyed[0]['update_latency_us']} us (median, one "
                       f"stream, 1 thread). Over streams of {keyed[0]['eval_length']} to {keyed[-1]['eval_length']} "
                       f"events the largest |A| seen was {max(r.get('max_abs_A') or 0 for r in keyed)} and the largest "
                       f"z {max(r.get('max_z') or 0 for r in keyed)} (bounded), with accuracy "
                       + ", ".join(f"{r['accuracy']} at {r['eval_length']}" for r in keyed) + ".")
            out.append("")
        lat = {}
        for r in rows:
            lat.setdefault(r["model"], (r["update_latency_us"], r.get("state_floats_per_stream")))
        if lat:
            cols = ["model", "update_latency_us", "state_floats_per_stream"]
            out.append(markdown_table([dict(zip(cols, (m, *v))) for m, v in lat.items()], cols))
            out.append("")
    stem_s, s = res["streaming"]
    if s:
        out += ["Streaming benchmark (its own rows):", "", generic_table(rows_of(s)), ""]
    stem_o, o = res["ops"]
    if o:
        out += ["Memory ops (naive spec vs fused):", "", generic_table(rows_of(o)), ""]
    out += ["Sources:", "", source_line(stem, st, "state_tracking", status),
            source_line(stem_s, s, "streaming", status), source_line(stem_o, o, "ops", status), ""]
    return out


def q2_channels(res: dict, status: dict) -> list[str]:
    out = ["## 2. High-channel multivariate encoding: accuracy and cost as channels grow", ""]
    stem_f, f = res["forecast"]
    if f:
        out += [f"Forecast MSE ({f.get('dataset', 'ETTh1')}, 7 channels{_seeds_note(f)}):", "", forecast_table(f), ""]
    stem_m, m = res["missing_channels"]
    if m:
        out += ["Missing channels:", "", *missing_channels_goal(m), generic_table(rows_of(m)), ""]
    stem_w, w = next((r for r in map(load_result, WEATHER_STEMS) if r[0] is not None), (None, None))
    if w:
        out += [f"Forecast MSE (Weather, 21 channels{_seeds_note(w)}):", "", forecast_table(w), ""]
    stem_mw, mw = load_result(WEATHER_MISSING_STEM)
    if mw:
        out += ["Missing channels, Weather (21 channels):", "", *missing_channels_goal(mw)]
    stem_c, c = res["channels"]
    if c:
        counts = sorted({r["channels"] for r in c.get("rows", [])})
        out += [f"Cost as the channel count grows ({', '.join(map(str, counts))} synthetic channels; prediction ms "
                f"per window of all channels / seconds per optimiser step; `benchmarks/channels.py`):", "",
                channels_table(c), ""]
    if not f and not m and not w and not c:
        out += ["No result file answers this question yet.", ""]
    if not c or max((r["channels"] for r in c.get("rows", [])), default=0) < 1000:
        out += ["Not measured here: scaling to 1000s of channels (`python -m benchmarks.channels`)"
                + ("" if w else "; for 21 channels run `python -m benchmarks.forecast --data ../shared/data/weather/"
                   "weather.csv --dataset Weather`") + ".", ""]
    if c:
        out += ["Accuracy at 1000s of channels is not measured: there is no such public dataset here.", ""]
    out += ["Sources:", "", source_line(stem_f, f, "forecast", status)]
    if w:
        out += [source_line(stem_w, w, "forecast", status)]
    out += [source_line(stem_m, m, "missing_channels", status)]
    if mw:
        out += [source_line(stem_mw, mw, "missing_channels", status)]
    if c:
        out += [source_line(stem_c, c, "channels", status)]
    return out + [""]


def channels_table(payload: dict) -> str:
    """One row per model: 'predict ms / step s' at each channel count, or the status of a run that did not finish."""
    rows = payload.get("rows", [])
    counts = sorted({r["channels"] for r in rows})
    table = []
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = {r["channels"]: r for r in rows if r["model"] == model}
        line = {"model": model}
        for n in counts:
            r = cells.get(n)
            line[str(n)] = ("" if r is None else f"{r['predict_ms_per_window']:.3g} / {r['step_seconds']:.3g}"
                            if r["status"] == "ok" else r["status"])
        table.append(line)
    return generic_table(table)


def q3_events(res: dict, status: dict) -> list[str]:
    out = ["## 3. Event streams and mutable state: does keyed memory track the latest value per entity at 100x and "
           "1000x?", ""]
    stem, st = res["state_tracking"]
    if st:
        out += [f"- {g}" for g in st.get("goals", [])] + [""]
        rows = [r for r in rows_of(st) if r.get("experiment") == "length" and r.get("match", "state") == "state"]
        cols = ["model", "layout", "entities", "eval_length", "accuracy", "state_bytes_per_entity"]
        out += [markdown_table(rows, cols), ""]
        stale = [r for r in rows_of(st) if r.get("experiment") == "stale"]
        if stale:
            cols = ["model", "layout", "eval_length", "hot_rewrites", "hot_query_accuracy_last10pct", "max_abs_A",
                    "max_z"]
            out += ["Stale-key test:", "", markdown_table(stale, cols), ""]
    stem_a, a = res["associative_retrieval"]
    if a:
        rw = [r for r in rows_of(a) if r.get("task") == "rewrite"]
        out += ["The paper's rewrite task (content keys, one pair per segment):", "",
                markdown_table(rw, ["model", "pairs", "exact_match", "train_pairs", "params"]), ""]
    out += ["Sources:", "", source_line(stem, st, "state_tracking", status),
            source_line(stem_a, a, "associative_retrieval", status), ""]
    return out


def q4_efficiency(res: dict, status: dict) -> list[str]:
    out = ["## 4. Compute and memory efficiency: matched-budget comparison", ""]
    stem, st = res["state_tracking"]
    if st:
        rows = [r for r in rows_of(st) if r.get("experiment") == "length"]
        longest = {}
        for r in rows:
            key = (r["model"], r["layout"], r.get("match", "state"))
            if key not in longest or r["eval_length"] > longest[key]["eval_length"]:
                longest[key] = r
        first = {}
        for r in rows:
            key = (r["model"], r["layout"], r.get("match", "state"))
            if key not in first or r["eval_length"] < first[key]["eval_length"]:
                first[key] = r
        table = [{"model": k[0], "layout": k[1], "match": k[2], "size": v.get("size"),
                  "acc_at_L": first[k]["accuracy"], "longest": v["eval_length"], "acc_longest": v["accuracy"],
                  "state_bytes_per_entity": v["state_bytes_per_entity"], "update_latency_us": v["update_latency_us"],
                  "params": v.get("params"), "train_seconds": v.get("train_seconds")} for k, v in longest.items()]
        out += ["State tracking at matched state size (match = state) and matched per-update latency (match = "
                "latency); the same training budget for every model:", "",
                markdown_table(table, list(table[0]) if table else []), ""]
    stem_f, f = res["forecast"]
    if f:
        rows = [r for r in rows_of(f) if r.get("source") == "same-run" and r.get("table", "main") == "main"]
        first = min((r["horizon"] for r in rows), default=None)
        cols = [c for c in ("model", "horizon", "mse", "params", "train_seconds", "train_steps")
                if any(c in r for r in rows)]
        out += [f"Forecasting cost at H={first} (same wall-clock budget per model{_seeds_note(f)}):", "",
                markdown_table([r for r in rows if r["horizon"] == first], cols), ""]
    out += ["Sources:", "", source_line(stem, st, "state_tracking", status),
            source_line(stem_f, f, "forecast", status), ""]
    return out


def plot(res: dict, path: Path) -> bool:
    stem, st = res["state_tracking"]
    if not st:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows_of(st) if r.get("experiment") == "length" and r.get("layout") == "shared"
            and r.get("match", "state") == "state"]
    if not rows:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in sorted({r["model"] for r in rows}):
        rs = sorted((r for r in rows if r["model"] == m), key=lambda r: r["eval_length"])
        axes[0].plot([r["length_multiple"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=m)
    axes[0].set_xscale("log"), axes[0].set_xlabel("evaluation / training length"), axes[0].set_ylabel("query accuracy")
    axes[0].set_title("Q3: state tracking, matched state size"), axes[0].legend(fontsize=7)
    lat = {}
    for r in rows:
        lat.setdefault(r["model"], r["update_latency_us"])
    axes[1].bar(list(lat), list(lat.values()))
    axes[1].set_ylabel("one-event update latency (us)"), axes[1].set_title("Q1/Q4: per-update latency")
    axes[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build_agenda(status: dict, prefer_agenda: bool, out_name: str = "agenda") -> Path:
    res = {name: load_result(name, f"agenda_{name}" if prefer_agenda else None) for name in EXPERIMENTS}
    png = RESULTS / f"{out_name}.png"
    has_plot = plot(res, png)
    md = ["# Research agenda (DESIGN.md section 8): answers with numbers", "",
          f"Built by `python -m benchmarks.agenda{'' if prefer_agenda else ' --no-run'}` at commit {git_commit()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every number below is read from the result file "
          "named under it, with the command that produced that file.", ""]
    if status:
        cols = ["experiment", "status", "seconds", "command"]
        md += ["## Runs", "", markdown_table([{"experiment": k, **{c: v.get(c) for c in cols[1:]}}
                                              for k, v in status.items()], cols), ""]
        for k, v in status.items():
            if v.get("log_tail"):
                md += [f"`{k}` log tail:", "", "```", v["log_tail"].strip(), "```", ""]
    missing = [n for n in EXPERIMENTS if res[n][0] is None]
    if missing:
        md += ["Experiments with no result file: " + ", ".join(
            f"{n} ({'not run' if (ROOT / 'benchmarks' / f'{n}.py').is_file() else f'no script benchmarks/{n}.py'})"
            for n in missing) + ".", ""]
    md += q1_streaming(res, status) + q2_channels(res, status) + q3_events(res, status) + q4_efficiency(res, status)
    if has_plot:
        md += [f"![agenda]({png.name})", ""]
    path = RESULTS / f"{out_name}.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-run", action="store_true", help="build agenda.md from existing result files only")
    p.add_argument("--only", nargs="+", default=None, choices=list(EXPERIMENTS), help="run only these experiments")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds per experiment before it is stopped")
    p.add_argument("--name", type=result_name, default="agenda", help="output stem under benchmarks/results")
    args = p.parse_args(argv)
    status = {} if args.no_run else run_all(args.only or list(EXPERIMENTS), args.timeout)
    path = build_agenda(status, prefer_agenda=not args.no_run, out_name=args.name)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

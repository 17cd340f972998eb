"""benchmarks/scale.py: its synthetic files, the pre-fcdf4b4 output count, the slope, and one run at the tiniest sizes
(every part, each CLI run a child process; about half a minute, mostly the children's imports), written to tmp_path."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import benchmarks.common
from benchmarks import scale

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_long_tables_are_seeded_time_ordered_ragged_and_have_gaps():
    df = scale.long_table(40, 400, seed=3)
    assert df.columns == ["timestamp", "id", "value"]
    assert df.equals(scale.long_table(40, 400, seed=3)) and not df.equals(scale.long_table(40, 400, seed=4))
    assert df["timestamp"].is_sorted() and df["id"].n_unique() == 40 and df["id"][0].startswith("sensor-")
    first = df.group_by("id").agg(pl.col("timestamp").min())["timestamp"]
    assert first.n_unique() > 10 and first.max() - first.min() < timedelta(hours=100)  # ragged, in the first quarter
    per_series = df.group_by("id").len()["len"].to_numpy()
    assert per_series.max() <= 400 and per_series.min() < 400 * 0.9  # ragged starts (up to a quarter) and gaps
    assert 0.005 < df["value"].null_count() / df.height < 0.05  # ~2% empty cells
    assert 0.8 * 40 * 400 < df.height < 0.95 * 40 * 400


def test_wide_tables_have_a_column_per_series_and_empty_cells():
    df = scale.wide_table(6, 200, seed=1)
    assert df.columns[0] == "timestamp" and df.width == 7 and df.height == 200
    nulls = sum(df[c].null_count() for c in df.columns[1:])
    assert 0 < nulls < 6 * 200 * 0.3


def test_fleet_block_rows_counts_every_entity_with_data_at_every_block():
    first = np.array([1, 1, 30])  # two entities have data from row 1, the third from row 30
    # blocks after rows 24 and 48, and one at the end (row 50): 2 + 3 + 3 entities
    assert scale.fleet_block_rows(first, 50, 24) == (2 + 3 + 3) * scale.HORIZON
    assert scale.fleet_block_rows(first, 48, 24) == (2 + 3) * scale.HORIZON  # the end is the last block


def test_slope_and_size():
    x = [1e5, 1e6, 1e7]
    assert scale.loglog_slope(x, [2 * v for v in x]) == pytest.approx(1.0)
    assert scale.loglog_slope(x, [v ** 2 for v in x]) == pytest.approx(2.0)
    assert scale.loglog_slope([5.0], [1.0]) is None and scale.loglog_slope(x, [-1, 0, 1]) is None
    assert scale.size("20000x1000") == (20000, 1000)
    with pytest.raises(argparse.ArgumentTypeError, match="SERIESxSTEPS"):
        scale.size("1000")


def test_a_tiny_run_measures_every_part_in_child_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in RESULTS.iterdir()}
    payload = scale.main(["--quick", "--long", "6x300", "--wide", "4x300", "--stream-entities", "5",
                          "--stream-steps", "40", "--seed", "2", "--workdir", str(tmp_path / "work"),
                          "--out-name", "scale_test"])
    assert {p.name: p.stat().st_mtime_ns for p in RESULTS.iterdir()} == before, "wrote into benchmarks/results"
    saved = json.loads((tmp_path / "scale_test.json").read_text())
    md = (tmp_path / "scale_test.md").read_text()
    assert saved["rows"] == json.loads(json.dumps(payload["rows"], default=str))
    for key in ("command", "git_commit", "machine", "seed", "wall_seconds", "baseline", "slopes", "files"):
        assert key in saved, key
    assert saved["seed"] == 2 and saved["quick"] and "--quick" in saved["command"]
    assert "## forecast" in md and "## stream" in md and "Commit:" in md

    base = saved["baseline"]
    assert base["status"] == "ok" and base["series_read"] == 10 and base["out_rows"] == 10 * scale.HORIZON
    forecast = [r for r in saved["rows"] if r["part"] == "forecast"]
    assert [(r["layout"], r["format"]) for r in forecast] == [("long", "csv"), ("long", "parquet"), ("wide", "csv")]
    long_rows = scale.long_table(6, 300, seed=3).height  # the first long file's seed: --seed + 1
    for r in forecast:
        assert r["status"] == "ok", r
        assert r["series_read"] == r["series"] and r["out_rows"] == r["series"] * scale.HORIZON and r["series_ok"]
        assert r["peak_rss_mb"] > 100 and r["wall_s"] > r["read_s"] > 0 and r["train_s"] > 0 and r["predict_s"] > 0
        assert r["rows"] == (long_rows if r["layout"] == "long" else 300)
        assert r["cells"] == (long_rows if r["layout"] == "long" else 4 * 300)
        assert r["s_per_mcell"] == pytest.approx(r["wall_s"] / r["cells"] * 1e6)
    assert {(s["layout"], s["format"]) for s in saved["slopes"] if s["part"] == "forecast"} == {
        ("long", "csv"), ("long", "parquet"), ("wide", "csv")}

    stream = [r for r in saved["rows"] if r["part"] == "stream"]
    stream_rows = scale.long_table(5, 40, seed=102).height  # --seed + 100 for the first fleet
    assert [r["config"] for r in stream] == ["no --state", "--state, --save-every rows/4"]
    for r in stream:
        assert r["status"] == "ok", r
        assert r["entities"] == r["entities_seen"] == 5 and r["rows"] == r["rows_pushed"] == stream_rows
        assert 0 < r["out_rows"] <= r["rows_pushed"] * scale.HORIZON and r["out_rows"] % scale.HORIZON == 0
        assert r["out_rows"] <= r["fleet_block_rows"] and r["forecast_blocks"] >= stream_rows // 24
    plain, state = stream
    assert plain["saves"] == 0 and plain["state_mb"] is None
    assert state["save_every"] == stream_rows // 4 and state["saves"] == 5 and state["state_mb"] > 0
    assert plain["out_rows"] == state["out_rows"]

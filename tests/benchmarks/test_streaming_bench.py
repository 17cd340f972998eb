"""benchmarks/streaming.py: the report renders whatever parts ran (``--parts``), and the reference matmul rate."""

from benchmarks.streaming import PARTS, reference_matmul_rate, render_markdown


def _payload(rows, parts, device="cpu"):
    machine = {"cpu_model": "test cpu", "cpu_count": 2, "torch": "x", "device": device}
    if device != "cpu":
        machine["device_name"] = "Some GPU"
    return {"rows": rows, "parts": sorted(parts), "quick": True, "command": "python -m benchmarks.streaming",
            "commit": "abc", "machine": machine, "load_average": (0.0, 0.0, 0.0), "threads": 1, "seed": 0,
            "wall_seconds": 1.0, "model": "m"}


def test_a_schedule_only_report_has_the_schedule_and_nothing_else():
    sched = [{"batch": 1, "segments": 64, "seq_wall": 0.2, "seq_cpu": 0.2, "diag_wall": 0.1, "diag_cpu": 0.1,
              "rel_err": 1e-7}]
    md = render_markdown(_payload([], {"schedule"}, device="cuda"), [], [], sched)
    assert "## Diagonal vs sequential" in md and "| 1 | 64 |" in md
    assert "Peak RSS" not in md and "Per-update latency" not in md and "Cost per update" not in md
    assert "Parts run: schedule" in md and "On Some GPU the wall clock is the measure" in md


def _latency_rows(impl, value):
    rows = []
    for clock in ("wall", "cpu"):
        for kind in ("update", "buffered", "forecast"):
            for m in ("p50_latency", "p99_latency"):
                rows.append({"metric": m, "entities": 10, "clock": clock, "kind": kind, "value": value, "samples": 3,
                             "impl": impl})
        rows.append({"metric": "p99_latency_per_entity", "entities": 10, "clock": clock, "kind": "update",
                     "value": 100 * value, "impl": impl})
        rows.append({"metric": "throughput", "entities": 10, "clock": clock, "kind": "single-step pushes",
                     "value": 1e5, "impl": impl})
    return rows


def test_a_latency_report_shows_flops_and_the_reference_rate():
    rows = _latency_rows("ours", 2.0)
    rows.append({"metric": "flops_per_update", "entities": 10, "value": 3.59, "impl": "ours"})
    rows.append({"metric": "achieved_flop_rate", "entities": 10, "value": 33.7, "impl": "ours"})
    rows.append({"metric": "reference_matmul_rate", "entities": None, "value": 150.0, "impl": "torch.mm"})
    md = render_markdown(_payload(rows, {"latency"}), [], [], [])
    assert "| 3.59 | 33.7 |" in md and "runs at 150 GFLOP/s here" in md
    assert "Diagonal" not in md and set(PARTS) == {"rss", "latency", "cost", "schedule"}
    assert "bf16" not in md  # a file without bf16 rows has no bf16 table


def test_a_latency_report_has_a_bf16_table_beside_the_fp32_one():
    rows = _latency_rows("ours", 2.0) + _latency_rows("ours_bf16", 1.5)
    rows.append({"metric": "bf16_forecast_rel_diff", "entities": 10, "value": 0.0042, "impl": "ours_bf16"})
    md = render_markdown(_payload(rows, {"latency"}), [], [], [])
    fp32, bf16 = md.split("throughput, bf16 autocast")
    assert "| 10 | 2.00 / 2.00 | 200.0 |" in fp32 and "4.2e-03" not in fp32
    assert "| 10 | 1.50 / 1.50 | 150.0 |" in bf16 and "| 4.2e-03 |" in bf16


def test_reference_matmul_rate_is_a_positive_rate():
    assert reference_matmul_rate("cpu", n=64, repeats=2) > 0


def test_a_cost_report_has_the_per_update_and_the_per_step_tables():
    rows = []
    for clock in ("wall", "cpu"):
        for metric, ours in (("cost_per_update", 0.05), ("cost_per_step", 0.005)):
            for impl, v in (("ours", ours), ("window_rerun", 0.25), ("patchtst", 0.5)):
                rows.append({"metric": metric, "entities": 1000, "clock": clock, "impl": impl, "value": v})
    md = render_markdown(_payload(rows, {"cost"}), [], [], [])
    per_update, per_step = md.split("## Cost per step")
    assert "## Cost per update" in per_update and "| 1000 | wall | 0.05 | 0.25 | 0.5 | 10 | 5 |" in per_update
    assert "| 1000 | wall | 0.005 | 0.25 | 0.5 | 100 | 50 |" in per_step


def test_a_cost_report_with_bf16_divides_the_cheaper_patchtst_by_ours_in_bf16():
    rows = []
    for clock in ("wall", "cpu"):
        for metric in ("cost_per_update", "cost_per_step"):
            for impl, v in (("ours", 0.05), ("ours_bf16", 0.04), ("window_rerun", 0.25), ("patchtst", 0.5),
                            ("patchtst_bf16", 0.48)):
                rows.append({"metric": metric, "entities": 1000, "clock": clock, "impl": impl, "value": v})
    md = render_markdown(_payload(rows, {"cost"}), [], [], [])
    assert "| 1000 | wall | 0.05 | 0.25 | 0.5 | 10 | 5 | 0.04 | 0.48 | 12 |" in md


def test_a_report_with_compiled_rows_has_their_tables_and_cost_columns():
    rows = _latency_rows("ours", 2.0) + _latency_rows("ours_compiled", 1.2)
    rows.append({"metric": "compiled_forecast_rel_diff", "entities": 10, "value": 6e-8, "impl": "ours_compiled"})
    for clock in ("wall", "cpu"):
        for metric in ("cost_per_update", "cost_per_step"):
            for impl, v in (("ours", 0.05), ("ours_bf16", 0.04), ("ours_compiled", 0.025),
                            ("ours_bf16_compiled", 0.02), ("window_rerun", 0.25), ("patchtst", 0.5),
                            ("patchtst_bf16", 0.48)):
                rows.append({"metric": metric, "entities": 1000, "clock": clock, "impl": impl, "value": v})
    md = render_markdown(_payload(rows, {"latency", "cost"}), [], [], [])
    eager, compiled = md.split("throughput, torch.compile'd update")
    assert "| 10 | 2.00 / 2.00 | 200.0 |" in eager and "6.0e-08" not in eager
    assert "| 10 | 1.20 / 1.20 | 120.0 |" in compiled and "| 6.0e-08 |" in compiled
    assert "| 1000 | wall | 0.05 | 0.25 | 0.5 | 10 | 5 | 0.04 | 0.48 | 12 | 0.025 | 20 | 0.02 | 24 |" in md

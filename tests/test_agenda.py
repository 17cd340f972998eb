"""benchmarks.agenda: which command runs each quick experiment, and agenda.md built from result files."""

import json

import pytest

import benchmarks.agenda as agenda


def test_quick_command_uses_a_distinct_result_name():
    cmd, named = agenda.quick_command("state_tracking", "usage ... --quick ... --name NAME")
    assert cmd[-3:] == ["--quick", "--name", "agenda_state_tracking"]
    assert named
    cmd, named = agenda.quick_command("forecast", "--quick --out OUT")
    assert cmd[-2:] == ["--out", "agenda_forecast"] and "--data" in cmd and named
    cmd, named = agenda.quick_command("reliability", "--quick --kills K --out NAME")
    assert cmd[-3:] == ["--quick", "--out", "agenda_reliability"] and named
    cmd, named = agenda.quick_command("ops", "--repeats R --threads T")
    assert "--quick" not in cmd and not named  # no result-name option: its outputs are moved to agenda_ops.*
    # scripts that need real data get the path; every experiment has a quick-run entry
    assert "--data" in agenda.EXPERIMENTS["missing_channels"]
    assert set(agenda.CANDIDATES) == set(agenda.EXPERIMENTS)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(agenda, "RESULTS", tmp_path)
    return tmp_path


def test_no_result_files_gives_a_page_that_says_so(results):
    path = agenda.build_agenda({}, prefer_agenda=False)
    text = path.read_text()
    assert "Experiments with no result file" in text and "state_tracking" in text
    assert text.count("## ") >= 4  # the four questions are there, each saying what is missing


def test_results_are_read_with_their_commands(results):
    rows = [{"model": "armt_keyed", "layout": "shared", "entities": 8, "train_length": 32, "eval_length": 320,
             "accuracy": 0.97, "state_bytes_per_entity": 396, "update_latency_us": 123.0, "experiment": "length",
             "match": "state", "state_floats_per_stream": 792, "max_abs_A": 0.5, "max_z": 1.0,
             "length_multiple": 10}]
    (results / "state_tracking.json").write_text(json.dumps({"rows": rows, "git_commit": "abc123"}))
    (results / "state_tracking.md").write_text("# x\n\nCommand: `python -m benchmarks.state_tracking --seed 4`\n")
    (results / "agenda_state_tracking.json").write_text(json.dumps({"rows": [], "commit": "def456"}))
    # --no-run prefers the full run's file; a run prefers its own agenda_ file
    assert agenda.load_result("state_tracking")[0] == "state_tracking"
    assert agenda.load_result("state_tracking", "agenda_state_tracking")[0] == "agenda_state_tracking"
    stem, payload = agenda.load_result("state_tracking")
    assert agenda.command_of(stem, payload) == "python -m benchmarks.state_tracking --seed 4"
    line = agenda.source_line(stem, payload, "state_tracking", {})
    assert "abc123" in line and "--seed 4" in line
    _, other = agenda.load_result("state_tracking", "agenda_state_tracking")
    assert "def456" in agenda.source_line("agenda_state_tracking", other, "state_tracking", {})
    text = agenda.build_agenda({}, prefer_agenda=False).read_text()
    assert "Keyed ARMT carries 792 floats per stream" in text and "0.97 at 320" in text


def test_forecast_and_missing_channel_answers_are_tables_of_the_current_files(results):
    rows = [{"dataset": "ETTh1", "horizon": h, "model": m, "source": "same-run", "table": "main", "mse": v,
             "params": 10, "train_seconds": 150.0, "train_steps": 900}
            for h, vals in ((96, (0.37, 0.38)), (192, (0.41, 0.40))) for m, v in zip(("ARMT", "DLinear"), vals)]
    rows += [{"dataset": "ETTh1", "horizon": 96, "model": "ARMT: fit alone", "source": "same-run",
              "table": "ablation", "mse": 0.1},
             {"dataset": "ETTh1", "horizon": 96, "model": "PatchTST/64", "source": "published", "mse": 0.370}]
    (results / "forecast_ETTh1_150s_pruned_seeds.json").write_text(
        json.dumps({"rows": rows, "dataset": "ETTh1", "seeds": [0, 1, 2], "git_commit": "abc"}))
    (results / "forecast_ETTh1.json").write_text(json.dumps({"rows": [], "git_commit": "old"}))
    goal = {"relative_increase_at_30pct": {"SeasonalNaive": 0.33, "ARMT (impute)": 0.2},
            "best_baseline": "SeasonalNaive", "best_baseline_increase": 0.33, "met": {"ARMT (impute)": False}}
    (results / "missing_channels_150s_last.json").write_text(json.dumps({"rows": [], "goal": goal}))
    assert agenda.load_result("forecast")[0] == "forecast_ETTh1_150s_pruned_seeds"
    text = agenda.build_agenda({}, prefer_agenda=False).read_text()
    # one row per model with its average over the horizons; the ablation row stays out, published rows are marked
    assert "| ARMT | 0.37 | 0.41 | 0.39 |" in text and "| DLinear | 0.38 | 0.4 | 0.39 |" in text
    assert "fit alone" not in text and "| PatchTST/64 (published) | 0.37 |  |  |" in text
    assert "mean over seeds 0, 1, 2" in text
    assert "at most +16.5%" in text and "| ARMT (impute) | +20.0% | False |" in text
    # each later ETTh1 table, once there, comes before the ones above it: early stopping, then context 512 at H=192,
    # then validation's cross-channel terms, then the skip's ridge at H=720
    for stem in ("forecast_ETTh1_150s_es_seeds", "forecast_ETTh1_150s_es_L512_seeds",
                 "forecast_ETTh1_150s_es_cross_seeds", "forecast_ETTh1_150s_es_crosssr_seeds"):
        (results / f"{stem}.json").write_text(
            json.dumps({"rows": rows, "dataset": "ETTh1", "seeds": [0, 1, 2], "git_commit": stem}))
        assert agenda.load_result("forecast")[0] == stem


def test_the_preferred_forecast_files_are_the_tables_the_readme_calls_current():
    """The agenda answers from the tables the README shows (the Weather one once lagged a table behind)."""
    readme = (agenda.ROOT / "README.md").read_text()
    current = readme[readme.index("The current tables"):][:600]
    assert f"results/{agenda.CANDIDATES['forecast'][0]}.md" in current
    assert f"results/{agenda.WEATHER_STEMS[0]}.md" in current


def test_weathers_missing_channel_goal_is_answered_next_to_etth1s(results):
    goal = {"relative_increase_at_30pct": {"SeasonalNaive": 0.288, "ARMT (mask-aug, impute)": 0.049},
            "best_baseline": "SeasonalNaive", "best_baseline_increase": 0.288,
            "met": {"ARMT (mask-aug, impute)": True}}
    (results / f"{agenda.WEATHER_MISSING_STEM}.json").write_text(json.dumps({"rows": [], "goal": goal,
                                                                            "git_commit": "w"}))
    text = agenda.build_agenda({}, prefer_agenda=False).read_text()
    assert "Missing channels, Weather (21 channels):" in text
    assert "at most +14.4%" in text and "| ARMT (mask-aug, impute) | +4.9% | True |" in text
    assert f"`benchmarks/results/{agenda.WEATHER_MISSING_STEM}.json`" in text

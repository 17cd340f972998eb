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
    cmd, named = agenda.quick_command("reliability", "--quick --kills K")
    assert cmd[-1] == "--quick" and not named  # its outputs are moved to agenda_reliability.* after the run
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

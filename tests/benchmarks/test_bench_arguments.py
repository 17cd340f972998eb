"""Every benchmark script refuses a bad argument with a one-line usage error (exit 2) before it reads data or trains
(benchmarks/common.py's argparse types), so a typo never costs a run or writes a results file."""

import importlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {"list": tmp / "list.json", "text": tmp / "text.json", "bogus": tmp / "bogus.json", "csv": tmp / "a.csv",
             "hourly": tmp / "ETTh1.csv"}
    files["list"].write_text("[1, 2]")
    files["text"].write_text("not json")
    files["bogus"].write_text(json.dumps({"armt_chosen": {"no_such_field": 1}}))
    files["csv"].write_text("date,x\n2024-01-01 00:00,1\n")
    # an ETT-shaped hourly file, too short for any test window
    cols = "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"
    files["hourly"].write_text(cols + "\n" + "".join(f"2024-01-{1 + h // 24:02d} {h % 24:02d}:00,1,2,3,4,5,6,7\n"
                                                      for h in range(48)))
    return files


CASES = [
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--threads", "0"], "--threads: expected an integer >= 1"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--seed", "-1"], "--seed: expected an integer >= 0"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--horizons", "96", "0"], "--horizons: expected"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--models", "FOO"], "invalid choice: 'FOO'"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--train-seconds", "-1"], "--train-seconds: expected"),
    ("forecast", ["--data", "{tmp}/absent.csv", "--dataset", "ETTh1"], "absent.csv: no such file"),
    ("forecast", ["--data", "{tmp}", "--dataset", "ETTh1"], "not a file (a folder?)"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--armt-from", "{list}"], "holds a JSON list"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--armt-from", "{text}"], "not a JSON file"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--armt-from", "{bogus}", "--grid", "none"],
     "armt_chosen has fields ARMTHyper does not know: ['no_such_field']"),
    ("forecast", ["--data", "{hourly}", "--dataset", "Weather", "--grid", "none"], "Weather has 21"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTm1", "--grid", "none"], "grid steps have a row"),
    ("forecast", ["--data", "{csv}", "--dataset", "ETTh1", "--grid", "none"], "are not ETTh1's"),
    ("forecast", ["--seed-mean-from", "{list}", "--out", "x"], "holds a JSON list"),
    ("forecast", ["--seed-mean-from", "{bogus}", "--merge-from", "{bogus}", "--out", "x"], "not allowed with"),
    ("forecast", ["--merge-from", "{bogus}", "--data", "{hourly}", "--out", "x"], "trains nothing"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--device", "cuda"], "no CUDA device"),
    ("missing_channels", ["--data", "{hourly}", "--models", "FOO"], "unknown model 'FOO'"),
    ("missing_channels", ["--data", "{hourly}", "--horizon", "0"], "--horizon: expected an integer >= 1"),
    ("missing_channels", ["--data", "{hourly}", "--train-seconds", "-1"], "--train-seconds: expected"),
    ("channels", ["--quick", "--channels", "0"], "--channels: expected an integer >= 1"),
    ("state_tracking", ["--quick", "--steps", "-1"], "--steps: expected an integer >= 1"),
    ("associative_retrieval", ["--jobs", "0"], "--jobs: expected an integer >= 1"),
    ("associative_retrieval", ["--load-models", "{tmp}/absent"], "no such folder"),
    ("ops", ["--repeats", "0"], "--repeats: expected an integer >= 1"),
    ("retrieval_drift", ["--models", "{tmp}/absent"], "rewrite_armt.safetensors"),
    ("stream_accuracy", ["--length", "100"], "--length: expected >= 4096 steps"),
    ("streaming", ["--fleet-long", "0"], "--fleet-long: expected an integer >= 1"),
    ("linear_skip", ["--data", "{tmp}/typo.csv"], "typo.csv: no such file"),
    ("reliability", ["--kills", "0"], "--kills: expected an integer >= 1"),
    ("scale", ["--quick", "--long", "1000"], "--long: expected SERIESxSTEPS"),
    ("scale", ["--quick", "--stream-entities", "0"], "--stream-entities: expected an integer >= 1"),
    ("agenda", ["--timeout", "0"], "--timeout: expected an integer >= 1"),
    # result names are file stems under benchmarks/results: no folder, no extension
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--out", "runs/x"], "--out: expected a file stem"),
    ("forecast", ["--data", "{hourly}", "--dataset", "ETTh1", "--out", "x.json"], "give the stem without .json"),
    ("missing_channels", ["--data", "{hourly}", "--out", "../x"], "--out: expected a file stem"),
    ("channels", ["--quick", "--out", ""], "--out: expected a file stem"),
    ("state_tracking", ["--quick", "--name", "x.md"], "give the stem without .md"),
    ("associative_retrieval", ["--name", "a b"], "--name: expected a file stem"),
    ("retrieval_drift", ["--models", "{tmp}", "--name", "/tmp/x"], "--name: expected a file stem"),
    ("stream_accuracy", ["--out-name", "x/y"], "--out-name: expected a file stem"),
    ("streaming", ["--out-name", ".hidden"], "--out-name: expected a file stem"),
    ("reliability", ["--out", "x.png"], "give the stem without .png"),
    ("scale", ["--quick", "--out-name", "x.json"], "give the stem without .json"),
    ("agenda", ["--name", "a/b"], "--name: expected a file stem"),
]


@pytest.mark.parametrize("script,argv,message", CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES])
def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys, monkeypatch, script, argv, message):
    """In process (``main(argv)``, as ``python -m benchmarks.<script>`` calls it): argparse's exit 2 is SystemExit."""
    files = {k: str(v) for k, v in _bad_files(tmp_path).items()}
    argv = [a.format(tmp=tmp_path, **files) for a in argv]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same answer on a machine with a GPU
    before = {p.name: p.stat().st_mtime_ns for p in RESULTS.iterdir()}
    main = importlib.import_module(f"benchmarks.{script}").main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "error:" in last and message in last, err[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in RESULTS.iterdir()} == before, "a results file was written"

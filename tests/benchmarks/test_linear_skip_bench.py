"""benchmarks/linear_skip.py: its two measurements on a tiny run (the real run trains the main job's model)."""

import math

import numpy as np

from armt_ts.cli import main as cli
from benchmarks import linear_skip

TINY = ["--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--horizon", "6", "--context", "24"]


def test_backtest_summary_and_state_trace_are_read_from_the_commands(tmp_path):
    start = np.datetime64("2024-01-01T00:00")
    rows = ["timestamp,a,b"] + [f"{str(start + np.timedelta64(i, 'h')).replace('T', ' ')},{np.sin(i / 4):.3f},"
                                f"{np.cos(i / 5):.3f}" for i in range(200)]
    data = tmp_path / "w.csv"
    data.write_text("\n".join(rows) + "\n")
    for skip in linear_skip.SKIPS:
        r = linear_skip.evaluate([str(data), *TINY, "--linear-skip", str(skip)])
        assert set(r) == {"mse", "mae", "crps", "seasonal_naive_mse"} and all(math.isfinite(v) for v in r.values())
    model = tmp_path / "m"
    # the streaming child forecasts its benchmark's 24 steps
    assert cli(["forecast", str(data), *TINY[:6], "--horizon", "24", "--context", "48", "--linear-skip", "48",
                "--save-model", str(model), "--no-plot", "--out", str(tmp_path / "f.csv")]) == 0
    r = linear_skip.state_trace(model, 300, 2, 0)
    assert r["entities"] == 2 and r["stream_length"] == 300 and r["nonfinite"] == 0 and len(r["trace"]) >= 1

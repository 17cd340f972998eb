"""The ``armt-ts`` command (armt_ts/cli.py): help, wide / long / embedded inputs end to end, the forecast table and
picture, saved models (JSON + safetensors, identical forecasts after loading), and one-line errors with exit 2.

Every run trains for two tiny batches: these tests check the plumbing, not accuracy."""

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from armt_ts.cli import future_timestamps, main
from armt_ts.data import read_wide

TINY = ["--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--horizon", "6", "--context", "24"]
H = 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ODD = "temp °C (ü)"
REPLACEMENT = "load \ufffd"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _read_forecast(path):
    # Timestamps as text: the test checks the exact spelling the command writes.
    return pl.read_csv(path, schema_overrides={"timestamp": pl.String})


def _check_forecast(df, series, quantiles=("q0.1", "q0.5", "q0.9"), channel=False):
    expected = ["series"] + (["channel"] if channel else []) + ["timestamp", "mean", *quantiles]
    assert df.columns == expected
    assert df.height == len(series) * H
    assert sorted(set(df["series"])) == sorted(set(series))
    values = df.select(["mean", *quantiles]).to_numpy()
    assert np.isfinite(values).all()
    q = df.select(list(quantiles)).to_numpy()
    assert (np.diff(q, axis=1) >= 0).all(), "quantile columns must be ordered"


def _wide_csv(path, start="2024-03-01 00:30:00", steps=160):
    """Hourly wide CSV with a grid anchored at :30, rows missing (gaps in time), empty and NaN cells, and column
    names with odd characters."""
    t = np.datetime64(start) + np.arange(steps) * np.timedelta64(1, "h")
    k = np.arange(steps)
    df = pl.DataFrame({
        "timestamp": [str(x).replace("T", " ") for x in t],
        ODD: [f"{20 + 3 * np.sin(2 * np.pi * i / 24):.3f}" for i in k],
        REPLACEMENT: [f"{100 + 10 * np.cos(2 * np.pi * i / 24) + 0.1 * i:.3f}" for i in k],
        "plain": [f"{np.sin(i / 5):.3f}" for i in k],
    })
    df = df.with_columns(
        pl.when(pl.int_range(steps) % 17 == 3).then(pl.lit("")).otherwise(pl.col(ODD)).alias(ODD),
        pl.when(pl.int_range(steps) % 23 == 5).then(pl.lit("NaN")).otherwise(pl.col("plain")).alias("plain"),
    )
    gaps = np.isin(k, [40, 41, 42, 90])  # whole rows missing: steps the reader masks
    df.filter(pl.Series(~gaps)).write_csv(path)
    return t[-1]


def test_help_is_clear(capsys):
    for argv in (["--help"], ["forecast", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "forecast" in text
    assert all(opt in text for opt in ("--horizon", "--model", "--save-model", "--quantiles", "--plot", "--id"))
    # `python -m armt_ts` is the same command
    res = subprocess.run([sys.executable, "-m", "armt_ts", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "forecast" in res.stdout


def test_wide_csv_end_to_end(tmp_path, capsys):
    src = tmp_path / "wide.csv"
    last = _wide_csv(src)
    out, png = tmp_path / "out" / "forecast.csv", tmp_path / "forecast.png"
    code, stdout, err = _run(capsys, "forecast", src, *TINY, "--out", out, "--plot", png)
    assert code == 0, err
    assert "3 series" in stdout and str(out) in stdout
    df = _read_forecast(out)
    _check_forecast(df, [ODD, REPLACEMENT, "plain"])
    # the future continues the file's grid (anchored at :30), the same steps for every series
    want = [str(last + (i + 1) * np.timedelta64(1, "h")).replace("T", " ") for i in range(H)]
    for name in (ODD, REPLACEMENT, "plain"):
        assert df.filter(pl.col("series") == name)["timestamp"].to_list() == want
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_context_longer_than_the_data_trains_with_a_note(tmp_path, capsys):
    """A context longer than the series leaves most of every training window as masked padding: it still trains and
    forecasts, and says how much of the context the data can fill."""
    src = tmp_path / "short.csv"
    _wide_csv(src, steps=40)  # 36 rows (4 are gaps) on a grid of 40 steps
    code, stdout, err = _run(capsys, "forecast", src, *TINY[:-2], "--context", 96, "--out", tmp_path / "f.csv",
                             "--no-plot")
    assert code == 0, err
    assert "the series have 40 steps, so a training window holds at most 34 of the 96 context steps" in err
    _check_forecast(_read_forecast(tmp_path / "f.csv"), [ODD, REPLACEMENT, "plain"])
    code, stdout, err = _run(capsys, "forecast", src, *TINY, "--out", tmp_path / "g.csv", "--no-plot")
    assert code == 0 and "note:" not in err  # context 24 fits


def test_long_csv_with_channels_and_explicit_columns(tmp_path, capsys):
    t = np.datetime64("2024-01-01 00:00") + np.arange(120) * np.timedelta64(10, "m")
    rows = [(str(x).replace("T", " "), sid, ch, f"{j + 5 * np.sin(i / 6 + j):.3f}")
            for i, x in enumerate(t) for j, sid in enumerate(["pump-a", "pump-b"]) for ch in ("flow", "temp")
            if not (sid == "pump-b" and 30 <= i < 40)]  # pump-b is silent for a while
    long = pl.DataFrame(rows, schema=["timestamp", "series_id", "channel", "value"], orient="row")
    src = tmp_path / "long.csv"
    long.write_csv(src)
    out = tmp_path / "f.csv"
    code, stdout, err = _run(capsys, "forecast", src, *TINY, "--out", out, "--no-plot",
                             "--quantiles", "0.95", "0.05", "0.5")
    assert code == 0, err
    df = _read_forecast(out)
    _check_forecast(df, ["pump-a", "pump-a", "pump-b", "pump-b"], ("q0.05", "q0.5", "q0.95"), channel=True)
    assert df.select("series", "channel").unique().height == 4
    assert df["timestamp"][0] == "2024-01-01 20:00:00"  # 120 steps of 10 minutes, then the future

    # Non-standard names: --id selects the long layout, --target names the value column.
    renamed = long.filter(pl.col("channel") == "flow").drop("channel").rename({"series_id": "machine",
                                                                               "value": "reading"})
    src2 = tmp_path / "long2.parquet"
    renamed.write_parquet(src2)
    code, _, err = _run(capsys, "forecast", src2, *TINY, "--id", "machine", "--target", "reading", "--out", out,
                        "--no-plot")
    assert code == 0, err
    _check_forecast(_read_forecast(out), ["pump-a", "pump-b"])


def test_embedded_default_writes_csv_and_png(tmp_path, capsys):
    out, png = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    code, stdout, err = _run(capsys, "forecast", *TINY, "--out", out, "--plot", png, "--plot-series", "2")
    assert code == 0, err
    assert "32 series" in stdout and "synthetic" in stdout
    df = _read_forecast(out)
    _check_forecast(df, [f"entity_{i:03d}" for i in range(8) for _ in range(4)], channel=True)
    assert df["timestamp"][0] == "2024-02-26 00:00:00"  # eight weeks of hourly steps from 2024-01-01
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_saved_model_is_safetensors_and_json_and_forecasts_identically(tmp_path, capsys):
    src = tmp_path / "wide.csv"
    _wide_csv(src)
    model = tmp_path / "model"
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    code, _, err = _run(capsys, "forecast", src, *TINY, "--save-model", model, "--out", first, "--no-plot")
    assert code == 0, err
    files = sorted(p.name for p in model.iterdir())
    assert files and all(name.endswith((".json", ".safetensors")) for name in files), files
    assert not any(name.endswith((".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".bin")) for name in files)
    code, stdout, err = _run(capsys, "forecast", src, "--model", model, "--out", second, "--no-plot")
    assert code == 0, err
    assert "loaded" in stdout
    assert first.read_bytes() == second.read_bytes()
    # the model fixes the horizon: asking for another one is an error, not a silent change
    code, _, err = _run(capsys, "forecast", src, "--model", model, "--horizon", "7", "--out", second)
    assert code == 2 and "--horizon" in err


def test_linear_skip_option_reaches_the_saved_model(tmp_path, capsys):
    """--linear-skip N: the model's least-squares skip reads min(N, --context) steps, fitted before training (the
    default, 512, reads the whole 24-step context here); 0 trains the network alone; a negative N is a usage error."""
    from armt_ts.gluonts import ARMTPredictor

    src = tmp_path / "wide.csv"
    _wide_csv(src)
    for option, steps in (([], 24), (["--linear-skip", "0"], 0), (["--linear-skip", "10"], 10)):
        model = tmp_path / f"model{steps}"
        code, _, err = _run(capsys, "forecast", src, *TINY, *option, "--save-model", model, "--out",
                            tmp_path / "f.csv", "--no-plot")
        assert code == 0, err
        f = ARMTPredictor.deserialize(model).prediction_net.model.forecaster
        assert f.config.linear_skip == steps
        assert (f.skip_weight.abs().max() > 0) if steps else not hasattr(f, "skip_weight")
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", str(src), "--linear-skip", "-1"])
    assert exit_info.value.code == 2 and "--linear-skip: expected an int >= 0, got -1" in capsys.readouterr().err


def test_read_norm_cap_vbar_floor_and_random_start_reach_the_model(tmp_path, capsys, monkeypatch):
    """--read-norm-cap X: ARMTConfig.read_norm_cap (default 0.1; 0: None); --vbar-floor F: ARMTConfig.vbar_floor
    (default 0.1; 0: None); --random-start: the estimator's flag; bad values are usage errors."""
    from armt_ts.gluonts import ARMTEstimator, ARMTPredictor

    seen = []
    real_init = ARMTEstimator.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("random_start"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ARMTEstimator, "__init__", spy)
    src = tmp_path / "wide.csv"
    _wide_csv(src)
    for option, cap, floor, start in (([], 0.1, 0.1, False), (["--read-norm-cap", "0", "--vbar-floor", "0"], None,
                                                                None, False),
                                      (["--read-norm-cap", "0.25", "--random-start", "--vbar-floor", "0.5"], 0.25,
                                       0.5, True)):
        model = tmp_path / f"model{cap}"
        code, _, err = _run(capsys, "forecast", src, *TINY, *option, "--save-model", model, "--out",
                            tmp_path / "f.csv", "--no-plot")
        assert code == 0, err
        armt = ARMTPredictor.deserialize(model).prediction_net.model.config.armt
        assert armt.read_norm_cap == cap and armt.vbar_floor == floor
        assert seen[-1] is start
    for bad, message in ((["--read-norm-cap", "-1"], "expected a finite number >= 0, got -1"),
                         (["--vbar-floor", "-0.5"], "expected a finite number >= 0, got -0.5"),
                         (["--read-norm-cap", "nan"], "expected a finite number >= 0, got nan"),
                         (["--read-norm-cap", "x"], "expected a number >= 0, got 'x'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["forecast", str(src), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("case", ["non_numeric", "bad_timestamp", "missing_file"])
def test_bad_file_is_one_line_and_exit_2(tmp_path, capsys, case):
    src = tmp_path / "bad.csv"
    if case == "non_numeric":
        src.write_text("timestamp,temp\n2024-01-01 00:00,1.0\n2024-01-01 01:00,2.0\n2024-01-01 02:00,abc\n")
        where = ["row 3", "'temp'", "'abc'"]
    elif case == "bad_timestamp":
        src.write_text("timestamp,temp\n2024-01-01 00:00,1.0\nyesterday,2.0\n")
        where = ["row 2", "'timestamp'"]
    else:
        src = tmp_path / "absent.csv"
        where = []
    code, _, err = _run(capsys, "forecast", src, *TINY, "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert line.startswith("armt-ts: error:") and str(src) in line
    assert all(w in line for w in where), line
    assert not (tmp_path / "f.csv").exists()


def test_missing_model_dir_is_exit_2(tmp_path, capsys):
    code, _, err = _run(capsys, "forecast", "--model", tmp_path / "nowhere", "--out", tmp_path / "f.csv")
    assert code == 2
    assert "--model" in err and "nowhere" in err and "Traceback" not in err


def test_future_timestamps_continue_a_calendar_grid():
    month_ends = ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"]
    frame = read_wide(pl.DataFrame({"date": month_ends, "x": [1.0, 2.0, 3.0, 4.0]}), freq="1mo")
    got = future_timestamps(frame, 3).astype("datetime64[D]").astype(str).tolist()
    assert got == ["2024-05-31", "2024-06-30", "2024-07-31"]


def _hourly(path, steps=60, fmt="%Y-%m-%d %H:%M", column="temp"):
    t = [(np.datetime64("2024-01-01T00:00") + np.timedelta64(i, "h")).astype(object).strftime(fmt)
         for i in range(steps)]
    path.write_text("timestamp," + column + "\n" + "".join(f"{s},{np.sin(i / 4):.4f}\n" for i, s in enumerate(t)))
    return path


def test_option_and_data_errors_speak_the_command_line(tmp_path, capsys):
    """What the Python readers raise as ValueErrors or advise as keyword arguments reaches a command-line user as
    a one-line error (exit 2) naming the option to use."""
    src = _hourly(tmp_path / "h.csv")
    out = ["--out", tmp_path / "f.csv", "--no-plot"]
    for freq, why in (("1x", "is not a polars duration"), ("0h", "must be positive"), ("2", "is not a polars")):
        code, _, err = _run(capsys, "forecast", src, *TINY, "--freq", freq, *out)
        assert code == 2 and f"--freq: freq='{freq}' {why}" in err and "Traceback" not in err
    code, _, err = _run(capsys, "evaluate", src, *TINY, "--freq", "1x")
    assert code == 2 and "--freq" in err
    rows = src.read_text().splitlines()
    unsorted = tmp_path / "u.csv"
    unsorted.write_text("\n".join([rows[0], rows[2], rows[1], *rows[3:]]) + "\n")
    code, _, err = _run(capsys, "forecast", unsorted, *TINY, *out)
    assert code == 2 and "row 2" in err and "(armt-ts: --sort)" in err
    dup = tmp_path / "d.csv"
    dup.write_text("\n".join([*rows[:3], rows[2], *rows[3:]]) + "\n")
    code, _, err = _run(capsys, "forecast", dup, *TINY, *out)
    assert code == 2 and "(armt-ts: --aggregate mean|last|first|sum)" in err
    # day.month.year: not ISO; --time-format reads it
    dmy = _hourly(tmp_path / "dmy.csv", fmt="%d.%m.%Y %H:%M")
    code, _, err = _run(capsys, "forecast", dmy, *TINY, *out)
    assert code == 2 and "(armt-ts: --time-format FMT)" in err
    code, _, err = _run(capsys, "forecast", dmy, *TINY, "--time-format", "%d.%m.%Y %H:%M", *out)
    assert code == 0, err
    iso = tmp_path / "iso.csv"
    assert _run(capsys, "forecast", src, *TINY, "--out", iso, "--no-plot")[0] == 0
    assert _read_forecast(tmp_path / "f.csv").equals(_read_forecast(iso))
    # epoch numbers in a unit their magnitude does not show
    epoch = tmp_path / "epoch.csv"
    epoch.write_text("timestamp,temp\n" + "".join(f"{3_600_000 * i},{np.sin(i / 4):.4f}\n" for i in range(60)))
    code, _, err = _run(capsys, "forecast", epoch, *TINY, *out)  # by magnitude: seconds, a 1000-hour grid
    assert code == 0, err
    assert _read_forecast(tmp_path / "f.csv")["timestamp"][0] == "1976-11-05 00:00:00"
    code, _, err = _run(capsys, "forecast", epoch, *TINY, "--time-unit", "ms", *out)
    assert code == 0, err
    assert _read_forecast(tmp_path / "f.csv")["timestamp"][0] == "1970-01-03 12:00:00"  # hourly, from 1970
    # a wide file whose columns are named like a long file's id and value is read as long: the error says so
    odd = tmp_path / "odd.csv"
    odd.write_text("timestamp,id,value\n" + "".join(f"2024-01-01 {h:02d}:00,{h}.5,{h}.25\n" for h in range(5)))
    code, _, err = _run(capsys, "forecast", odd, *TINY, *out)
    assert code == 2 and "read as the long layout" in err and "--target" in err


def test_too_short_for_the_linear_skip_is_exit_2_with_the_fix(tmp_path, capsys):
    src = _hourly(tmp_path / "short.csv", steps=7)
    code, _, err = _run(capsys, "forecast", src, *TINY, "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 2 and "Traceback" not in err
    assert "the series have 7 steps" in err and "--linear-skip 0" in err and "lower --horizon" in err
    code, _, err = _run(capsys, "forecast", src, *TINY, "--linear-skip", "0", "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 0, err


def test_a_training_failure_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from armt_ts.gluonts import ARMTEstimator

    def diverge(self, *args, **kwargs):
        raise FloatingPointError("train loss is nan at global step 3 (epoch 0, batch index 3)")

    monkeypatch.setattr(ARMTEstimator, "train", diverge)
    out = tmp_path / "f.csv"
    code, _, err = _run(capsys, "forecast", _hourly(tmp_path / "a.csv"), *TINY, "--out", out, "--no-plot")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2  # the training note, the error
    assert "training failed, nothing was written: train loss is nan at global step 3" in err and "--seed" in err
    assert not out.exists()


def test_values_of_magnitude_1e20_train_and_forecast(tmp_path, capsys):
    """Windows at a series' start have empty contexts (scale sqrt(1e-5)): at 1e20 their normalised loss overflowed
    float32 until the loss clipped its targets (armt_ts.forecaster.LOSS_TARGET_BOUND)."""
    src = tmp_path / "big.csv"
    values = (2 + np.sin(np.arange(120) / 5)) * 1e20
    src.write_text("timestamp,x\n" + "".join(f"2024-01-{1 + h // 24:02d} {h % 24:02d}:00,{float(v)!r}\n"
                                            for h, v in enumerate(values)))
    out = tmp_path / "f.csv"
    code, _, err = _run(capsys, "forecast", src, "--epochs", "1", "--batches-per-epoch", "20", "--batch-size", "32",
                        "--horizon", "6", "--context", "48", "--out", out, "--no-plot")
    assert code == 0, err
    mean = _read_forecast(out)["mean"].to_numpy()
    assert np.isfinite(mean).all() and (np.abs(mean) > 1e19).all()


def test_context_1_trains_without_the_linear_skip_with_a_note(tmp_path, capsys):
    """--context 1 capped the default skip at one step, which the fit refused with advice that did not help."""
    out = tmp_path / "f.csv"
    code, _, err = _run(capsys, "forecast", _hourly(tmp_path / "a.csv"), "--epochs", "1", "--batches-per-epoch", "2",
                        "--batch-size", "8", "--horizon", "2", "--context", "1", "--out", out, "--no-plot")
    assert code == 0, err
    assert "--context 1 leaves the linear skip a single step" in err
    assert np.isfinite(_read_forecast(out)["mean"].to_numpy()).all()


def test_series_too_small_or_too_offset_for_float32_are_warned_about(tmp_path, capsys):
    """The std scaler's floor (scale >= 0.0032) flattens a series varying by 1e-6; float32 rounds 1e9 + sin to steps
    of 64. Both still forecast, with one warning line each saying what to do."""
    k = np.arange(60)
    src = tmp_path / "odd.csv"
    src.write_text("timestamp,tiny,offset,plain\n" + "".join(
        f"2024-01-{1 + i // 24:02d} {i % 24:02d}:00,{1e-6 * (10 + np.sin(i / 4)):.6e},{1e9 + np.sin(i / 4):.6f},"
        f"{10 + np.sin(i / 4):.4f}\n" for i in k))
    out = tmp_path / "f.csv"
    code, _, err = _run(capsys, "forecast", src, *TINY, "--out", out, "--no-plot")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning:" in line]
    assert len(warned) == 2, err
    assert "1 series varies by a standard deviation below 0.01 (the first, 'tiny': 7" in err and "1e7" in err
    assert "column 'offset': values of magnitude up to 1e+09" in err and "subtract an offset" in err


def test_long_ids_are_names_without_surrounding_space(tmp_path, capsys):
    rows = ["timestamp,id,value"] + [f"2024-01-01 {h:02d}:00,{name},{h}" for h in range(24)
                                      for name in (("a " if h == 5 else "a"), " b")]
    src = tmp_path / "long.csv"
    src.write_text("\n".join(rows) + "\n")
    code, _, err = _run(capsys, "forecast", src, *TINY, "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 0, err
    assert sorted(set(_read_forecast(tmp_path / "f.csv")["series"])) == ["a", "b"]


def test_a_multivariate_model_is_refused_by_forecast_and_evaluate(tmp_path, capsys):
    from armt_ts.testing import tiny_multichannel_model

    tiny_multichannel_model(tmp_path / "mv", H)
    src = _hourly(tmp_path / "two.csv")
    for command in ("forecast", "evaluate"):
        code, _, err = _run(capsys, command, src, "--model", tmp_path / "mv", "--out", tmp_path / "o.csv",
                            *(["--no-plot"] if command == "forecast" else []))
        assert code == 2 and "Traceback" not in err, err
        assert "forecasts 2-channel series (ARMTEstimator(target_dim=2))" in err and f"armt-ts {command}" in err


def test_a_series_that_ended_early_is_forecast_from_its_own_last_observation(tmp_path, capsys):
    """In a long file a series whose last context holds no observed value (it ended 100 steps before the others)
    is forecast from its own last row, dated from there, at its own level, with a note; the others from the end."""
    t = np.datetime64("2024-01-01T00:00") + np.arange(200) * np.timedelta64(1, "h")
    rows = ["timestamp,id,value"]
    for i, ts in enumerate(t):
        stamp = str(ts).replace("T", " ")
        rows.append(f"{stamp},live,{10 + np.sin(i / 4):.3f}")
        if i < 100:
            rows.append(f"{stamp},gone,{500 + np.cos(i / 4):.3f}")
    src = tmp_path / "long.csv"
    src.write_text("\n".join(rows) + "\n")
    code, _, err = _run(capsys, "forecast", src, *TINY, "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 0, err
    assert "1 series have no observed value in their last 24 steps" in err and "'gone'" in err
    df = _read_forecast(tmp_path / "f.csv")
    gone, live = (df.filter(pl.col("series") == s) for s in ("gone", "live"))
    assert gone["timestamp"].to_list()[0] == "2024-01-05 04:00:00"  # the step after its row 99
    assert live["timestamp"].to_list()[0] == "2024-01-09 08:00:00"  # the step after the file's end
    assert 400 < gone["mean"].mean() < 600, "forecast at its own level, not from an empty context"


def test_quantile_levels_that_would_share_a_column_are_refused(tmp_path, capsys):
    src = _hourly(tmp_path / "h.csv")
    code, _, err = _run(capsys, "forecast", src, *TINY, "--quantiles", "0.1234567", "0.1234568",
                        "--out", tmp_path / "f.csv", "--no-plot")
    assert code == 2 and "would all be written as column q0.123457" in err


def test_bench_runs_a_benchmark_script_with_its_own_options(capsys, monkeypatch):
    """``armt-ts bench NAME ...`` is ``python -m benchmarks.NAME ...`` (DESIGN section 1's fourth command)."""
    from pathlib import Path

    import benchmarks.ops
    from armt_ts.cli import BENCHMARKS

    scripts = {p.stem for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
               if "def main(" in p.read_text()}
    assert set(BENCHMARKS) == scripts  # every benchmark script, and nothing else
    seen = []
    monkeypatch.setattr(benchmarks.ops, "main", lambda argv: seen.append(argv))
    assert main(["bench", "ops", "--repeats", "3", "--threads", "1"]) == 0
    assert seen == [["--repeats", "3", "--threads", "1"]]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exit_info:  # the benchmark's own usage error, named as this command
        main(["bench", "ops", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert "armt-ts bench ops: error: argument --repeats: expected an integer >= 1" in capsys.readouterr().err

"""``armt-ts stream`` (armt_ts/cli.py): rows pushed as they arrive (file or stdin), forecasts at a cadence equal to
the StreamingForecaster API's, restarts with --state that continue exactly, the long layout with entities joining,
and one-line errors naming file, row and column (exit 2) that keep the state of the rows before."""

import io
import sys
import warnings

import numpy as np
import polars as pl
import pytest
import torch

from armt_ts.cli import main
from armt_ts.stream import StreamingForecaster

H = 6
TINY = ["--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--horizon", str(H), "--context", "24"]


def _wide_rows(steps=300, start="2024-01-01T00:00"):
    t = np.datetime64(start) + np.arange(steps) * np.timedelta64(1, "h")
    lines = ["timestamp,a,b"]
    for i in range(steps):
        b = "" if i % 17 == 3 else f"{5 + np.cos(i / 5):.3f}"
        lines.append(f"{str(t[i]).replace('T', ' ')},{np.sin(i / 4) * 3 + 10:.3f},{b}")
    return lines


@pytest.fixture(scope="module", params=[0, 24], ids=["network", "skip"])
def saved_model(tmp_path_factory, request):
    """The CLI's model, the network alone and with a linear skip over its 24-step context (a ring in the stream)."""
    d = tmp_path_factory.mktemp("model")
    data = d / "train.csv"
    data.write_text("\n".join(_wide_rows()) + "\n")
    code = main(["forecast", str(data), *TINY, "--linear-skip", str(request.param), "--save-model", str(d / "m"),
                 "--no-plot", "--out", str(d / "f.csv")])
    assert code == 0
    return d / "m"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _blocks(text):
    df = pl.read_csv(io.StringIO(text), schema_overrides={"as_of": pl.String, "entity": pl.String})
    return df


def test_stream_matches_the_api_and_writes_at_the_cadence(saved_model, tmp_path, capsys):
    rows = _wide_rows(260)
    f = tmp_path / "live.csv"
    f.write_text("\n".join(rows) + "\n")
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 100)
    assert code == 0, err
    df = _blocks(out)
    assert df.columns == ["entity", "as_of", "step", "mean", "q0.1", "q0.5", "q0.9"]
    # forecasts after rows 100 and 200, and at the end (260): 3 blocks x 2 entities x H steps
    assert df.height == 3 * 2 * H
    assert df["as_of"].unique().sort().to_list() == ["2024-01-05 03:00:00", "2024-01-09 07:00:00",
                                                     "2024-01-11 19:00:00"]
    # the same rows through the Python API
    from armt_ts.cli import load_model

    predictor = load_model(str(saved_model), "cpu")
    # the CLI's stream is from_predictor's: the scaler statistics forget with the model's context as time constant
    sf = StreamingForecaster.from_predictor(predictor, entities=["a", "b"])
    assert sf.scaler_window == predictor.prediction_net.model.context_length
    vals = np.array([[float(x) if x else np.nan for x in r.split(",")[1:]] for r in rows[1:]])
    sf.push(vals.T[:, :, None], entities=["a", "b"])
    fc = sf.forecast(H, [0.1, 0.5, 0.9])
    last = df.filter(pl.col("as_of") == "2024-01-11 19:00:00")
    for i, e in enumerate(["a", "b"]):
        got = last.filter(pl.col("entity") == e).sort("step")
        np.testing.assert_allclose(got["mean"].to_numpy(), fc.point[i, :, 0].numpy(), rtol=1e-5)
        np.testing.assert_allclose(got["q0.9"].to_numpy(), fc.quantiles[i, :, 0, 2].numpy(), rtol=1e-5)
    assert "260 row(s)" in err


def test_stdin_and_restart_with_state_continue_exactly(saved_model, tmp_path, capsys, monkeypatch):
    rows = _wide_rows(300)
    state = tmp_path / "s.state"
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(rows[:150]) + "\n"))
    code, out, err = _run(capsys, "stream", "--model", saved_model, "-", "--state", state, "--every", 0)
    assert code == 0, err
    assert state.exists() and "149 row(s) from <stdin>" in err
    from armt_ts.cli import load_model
    from armt_ts.state import load_safetensors

    context = load_model(str(saved_model), "cpu").prediction_net.model.context_length
    assert load_safetensors(state, "armt_ts.StreamState")[1]["scaler_window"] == context
    # restart, replaying the whole file: the rows already in the state are skipped
    f = tmp_path / "all.csv"
    f.write_text("\n".join(rows) + "\n")
    code, resumed, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0)
    assert code == 0, err
    assert "skipped 149 row(s)" in err and "151 row(s)" in err
    code, straight, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
    assert code == 0, err
    assert resumed == straight  # the restarted stream's forecast is the uninterrupted one, digit for digit


def _default_and_flagged(capsys, saved_model, tmp_path, flag):
    """The forecasts of one 260-row wide file streamed with the defaults and with ``flag``: (rows, file, default
    output, flagged output), each output's forecast blocks checked for their size."""
    rows = _wide_rows(260)
    f = tmp_path / "live.csv"
    f.write_text("\n".join(rows) + "\n")
    outs = []
    for extra in ((), (flag,)):
        code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0, *extra)
        assert code == 0, err
        assert _blocks(out).height == 2 * H
        outs.append(out)
    return rows, f, *outs


def test_bf16_stream_is_close_to_fp32_and_restarts_exactly(saved_model, tmp_path, capsys):
    rows, f, fp32, bf16 = _default_and_flagged(capsys, saved_model, tmp_path, "--bf16")
    a, b = _blocks(fp32), _blocks(bf16)
    np.testing.assert_allclose(b["mean"].to_numpy(), a["mean"].to_numpy(), rtol=0.05)
    # a bf16 stream restarted from its --state file continues as the uninterrupted bf16 stream, digit for digit
    state = tmp_path / "s.state"
    head = tmp_path / "head.csv"
    head.write_text("\n".join(rows[:140]) + "\n")
    code, _, err = _run(capsys, "stream", "--model", saved_model, head, "--state", state, "--every", 0, "--bf16")
    assert code == 0, err
    code, resumed, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0, "--bf16")
    assert code == 0, err
    assert resumed == bf16


def test_compiled_stream_is_within_rounding_of_the_default(saved_model, tmp_path, capsys):
    _, _, eager, compiled = _default_and_flagged(capsys, saved_model, tmp_path, "--compile")
    a, b = _blocks(eager), _blocks(compiled)
    np.testing.assert_allclose(b["mean"].to_numpy(), a["mean"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_long_layout_entities_join_as_they_appear(saved_model, tmp_path, capsys):
    lines = ["time,machine,reading"]
    for i in range(200):
        lines.append(f"{1000 + i},m1,{np.sin(i / 3):.4f}")
        if i >= 50:  # m2 joins later
            lines.append(f"{1000 + i},m2,{2 + np.cos(i / 7):.4f}")
    f = tmp_path / "long.csv"
    f.write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--id", "machine", "--target", "reading",
                          "--every", 0, "--quantiles", 0.25, 0.75)
    assert code == 0, err
    df = _blocks(out)
    assert sorted(df["entity"].unique().to_list()) == ["m1", "m2"]
    assert df.columns[-2:] == ["q0.25", "q0.75"] and df.height == 2 * H
    assert df["as_of"].unique().to_list() == ["1199"]
    assert np.isfinite(df.select(["mean", "q0.25", "q0.75"]).to_numpy()).all()


def _long_lines(steps=120, late=50):
    """A long file: m1 every step, m2 from step ``late`` on, m3 on every 10th step only."""
    lines = ["time,machine,value"]
    for i in range(steps):
        lines.append(f"{1000 + i},m1,{np.sin(i / 3):.4f}")
        if i >= late:
            lines.append(f"{1000 + i},m2,{2 + np.cos(i / 7):.4f}")
        if i % 10 == 0:
            lines.append(f"{1000 + i},m3,{np.cos(i / 9):.4f}")
    return lines


def test_a_block_forecasts_only_the_entities_pushed_since_the_last(saved_model, tmp_path, capsys):
    """Every block used to forecast the whole fleet, so a long file's output grew as rows x entities (2000 rows of a
    4000-entity file gave 2 million forecast rows). A block now holds the entities pushed since the one before:
    an entity's forecast is written each time it changes, and the last forecast written for each entity is the one
    a run that forecasts only at the end gives."""
    lines = _long_lines()
    f = tmp_path / "long.csv"
    f.write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--id", "machine", "--every", 5)
    assert code == 0, err
    df = _blocks(out)
    # which entities each block of 5 rows pushed, computed from the file itself
    machines = [line.split(",")[1] for line in lines[1:]]
    blocks = [machines[i:i + 5] for i in range(0, len(machines), 5)]
    expected_rows = sum(len(set(b)) for b in blocks) * H
    assert df.height == expected_rows, (df.height, expected_rows)
    assert f"{expected_rows} forecast row(s)" in err
    # at most one forecast per entity per as_of (no entity repeated in a block, none rewritten unchanged)
    assert df.group_by(["entity", "as_of"]).len()["len"].max() == H
    code, end_only, err = _run(capsys, "stream", "--model", saved_model, f, "--id", "machine", "--every", 0)
    assert code == 0, err
    last = df.group_by("entity", maintain_order=True).tail(H).sort(["entity", "step"])
    end_only = _blocks(end_only).sort(["entity", "step"])
    assert last.select(["entity", "as_of", "step"]).equals(end_only.select(["entity", "as_of", "step"]))
    # to float rounding: a forecast of a few entities batches them differently from one of the whole fleet
    np.testing.assert_allclose(last.drop(["entity", "as_of", "step"]).to_numpy(),
                               end_only.drop(["entity", "as_of", "step"]).to_numpy(), rtol=1e-5, atol=1e-6)


def test_save_every_sets_how_often_the_state_is_saved(saved_model, tmp_path, capsys, monkeypatch):
    f = tmp_path / "long.csv"
    f.write_text("\n".join(_long_lines(60)) + "\n")  # 60 + 10 + 6 = 76 rows
    saves = []
    real = StreamingForecaster.save
    monkeypatch.setattr(StreamingForecaster, "save", lambda self, path: saves.append(path) or real(self, path))
    state = tmp_path / "s.state"
    # (options, saves): at every block of 4 rows; at blocks 30+ rows after the last save, then at the end; only at the
    # end; every 3 rows between blocks too, then at the end
    cases = (((), 76 // 4), (("--save-every", 30), 2 + 1), (("--save-every", 0), 1), (("--save-every", 3), 25 + 1))
    for extra, n in cases:
        saves.clear()
        state.unlink(missing_ok=True)
        code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--id", "machine", "--every", 4,
                              "--state", state, *extra)
        assert code == 0, err
        assert len(saves) == n, (extra, len(saves))
        # whatever the saving cadence, the forecasts are the same and the saved state is the one at the end
        if not extra:
            reference = out
        assert out == reference
        resumed = StreamingForecaster.load(state, StreamingForecaster.from_directory(saved_model).model)
        assert resumed.state.steps.sum().item() == 76
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--save-every", -1)
    assert code == 2 and "--save-every must be >= 0" in err


def test_entities_saved_before_their_block_are_forecast_after_a_restart(saved_model, tmp_path, capsys):
    """A state saved between two blocks (a bad row, a stop, --save-every) holds rows whose entities no block has
    forecast yet; a restart skips those rows, so the state's notes carry the entities and the restart's first block
    forecasts them (b's forecast was lost: run 1 stopped at a bad row before its block, run 2 never pushed b)."""
    state = tmp_path / "s.state"
    bad, fixed = tmp_path / "bad.csv", tmp_path / "fixed.csv"
    bad.write_text("time,machine,value\n1,a,1.0\n2,a,2.0\n1,b,1.0\n3,a,x\n")
    fixed.write_text("time,machine,value\n1,a,1.0\n2,a,2.0\n1,b,1.0\n3,a,3.0\n4,a,4.0\n")
    code, first, err = _run(capsys, "stream", "--model", saved_model, bad, "--id", "machine",
                            "--every", 2, "--state", state)
    assert code == 2 and "row 4" in err
    assert _blocks(first)["entity"].unique().to_list() == ["a"]  # the block after row 2; b came after it
    code, second, err = _run(capsys, "stream", "--model", saved_model, fixed, "--id", "machine", "--every", 2,
                             "--state", state)
    assert code == 0, err
    assert "skipped 3 row(s)" in err
    assert sorted(_blocks(second)["entity"].unique().to_list()) == ["a", "b"]
    # and with --save-every between blocks: every entity pushed is forecast once the runs are done
    state.unlink()
    code, first, err = _run(capsys, "stream", "--model", saved_model, bad, "--id", "machine", "--every", 0,
                            "--state", state, "--save-every", 1)
    assert code == 2 and first.splitlines() == ["entity,as_of,step,mean,q0.1,q0.5,q0.9"]  # no block yet
    code, second, err = _run(capsys, "stream", "--model", saved_model, fixed, "--id", "machine", "--every", 1,
                             "--state", state)
    assert code == 0, err
    assert sorted(_blocks(second)["entity"].unique().to_list()) == ["a", "b"]
    code, _, err = _run(capsys, "stream", "--model", saved_model, fixed, "--id", "machine", "--save-every", 5)
    assert code == 2 and "--save-every sets how often the --state file is saved" in err


@pytest.mark.parametrize("bad_cell,column,message", [
    ("abc", "'a'", "not a number"),
    ("inf", "'a'", "not a finite number"),
])
def test_bad_value_exits_2_and_keeps_the_rows_before(saved_model, tmp_path, capsys, bad_cell, column, message):
    rows = _wide_rows(140)
    ts, _, b = rows[131].split(",")
    rows[131] = f"{ts},{bad_cell},{b}"
    f = tmp_path / "bad.csv"
    f.write_text("\n".join(rows) + "\n")
    state = tmp_path / "s.state"
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0)
    assert code == 2
    # rows numbered as the file readers number them: rows[131] is the 131st row after the header
    assert f"row 131, column {column}" in err and message in err and str(f) in err
    from armt_ts.cli import load_model

    model = load_model(str(saved_model), "cpu").prediction_net.model.forecaster
    sf = StreamingForecaster.load(state, model)
    assert sf.state.steps.tolist() == [130, 130]  # the 130 rows before the bad one


def test_a_failed_compile_exits_2_and_keeps_the_rows_before(saved_model, tmp_path, capsys, monkeypatch):
    from armt_ts.stream import CompileError

    def no_compiler(self, kind, *args):
        raise CompileError(f"StreamingForecaster(compile=True): torch.compile could not compile the segment {kind} "
                           "(InvalidCxxCompiler: no working C++ compiler found); use compile=False")

    monkeypatch.setattr(StreamingForecaster, "_run_compiled", no_compiler)
    rows = _wide_rows(300)  # segments of 128 steps: the first update (at 128) runs eagerly, the second is compiled
    f = tmp_path / "live.csv"
    f.write_text("\n".join(rows) + "\n")
    state = tmp_path / "s.state"
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0, "--compile")
    assert code == 2 and "--compile:" in err and "segment update" in err and "no working C++ compiler" in err, err
    from armt_ts.cli import load_model

    model = load_model(str(saved_model), "cpu").prediction_net.model.forecaster
    steps = StreamingForecaster.load(state, model).state.steps.tolist()
    assert steps == [255, 255]  # the rows before the one that completes the second segment are kept
    monkeypatch.undo()  # without --compile the restarted stream goes on from there, as an uninterrupted one does
    code, resumed, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0)
    assert code == 0 and f"skipped {steps[0]} row(s)" in err, err
    code, straight, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
    assert code == 0 and resumed == straight


def test_time_going_backwards_and_bad_options(saved_model, tmp_path, capsys):
    rows = _wide_rows(20)
    rows[10], rows[11] = rows[11], rows[10]
    f = tmp_path / "back.csv"
    f.write_text("\n".join(rows) + "\n")
    code, _, err = _run(capsys, "stream", "--model", saved_model, f)
    # the times as the file writes them (not int64 nanoseconds), the entity, and the rule
    assert code == 2 and "row 11" in err and "entity 'a'" in err
    assert "timestamp 2024-01-01 09:00:00 is not after its previous one, 2024-01-01 10:00:00" in err
    assert "must increase per entity" in err
    ints = tmp_path / "ints.csv"
    ints.write_text("t,a,b\n5,1,2\n3,1,2\n")
    code, _, err = _run(capsys, "stream", "--model", saved_model, ints)
    assert code == 2 and "row 2" in err and "timestamp 3 is not after its previous one, 5" in err
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--horizon", 99)
    assert code == 2 and "at most 6 steps" in err
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--id", "nope")
    assert code == 2 and "no id column 'nope'" in err
    code, _, err = _run(capsys, "stream", "--model", tmp_path / "missing", f)
    assert code == 2 and "no such folder" in err
    bad_state = tmp_path / "junk.state"
    bad_state.write_bytes(b"not a safetensors file")
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--state", bad_state)
    assert code == 2 and "--state" in err


def test_entities_without_an_observed_value_get_no_forecast(saved_model, tmp_path, capsys):
    """A header alone, or a column whose cells are all empty so far, has nothing to forecast from: no rows for it
    (not the model's prior dressed as a forecast), and the summary says how many wait."""
    f = tmp_path / "header.csv"
    f.write_text("timestamp,a,b\n")
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
    assert code == 0, err
    assert out.splitlines() == ["entity,as_of,step,mean,q0.1,q0.5,q0.9"]
    assert "0 forecast row(s)" in err and "2 without an observed value yet" in err
    f = tmp_path / "half.csv"
    header, *rows = _wide_rows(30)
    f.write_text("\n".join([header] + [r.rsplit(",", 1)[0] + "," for r in rows]) + "\n")  # b: every cell empty
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 10)
    assert code == 0, err
    df = _blocks(out)
    assert df["entity"].unique().to_list() == ["a"] and df.height == 3 * H  # rows 10, 20, 30
    assert "1 without an observed value yet" in err


def test_utc_offsets_are_converted_to_utc_without_a_warning(saved_model, tmp_path, capsys):
    header, *rows = _wide_rows(40)
    zoned = [header] + [f"{r.split(',')[0].replace(' ', 'T')}+02:00,{r.split(',', 1)[1]}" for r in rows]
    naive = [header] + [f"{np.datetime64(r.split(',')[0].replace(' ', 'T')) - np.timedelta64(2, 'h')},"
                        f"{r.split(',', 1)[1]}" for r in rows]
    outs = []
    for name, lines in (("zoned", zoned), ("naive", naive)):
        f = tmp_path / f"{name}.csv"
        f.write_text("\n".join(lines) + "\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # numpy's warning about the offset it drops, as an error
            code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]  # the same instants, the same forecasts and as_of (in UTC)
    assert "2024-01-02 13:00:00" in outs[0]  # the last row, 15:00 at +02:00


def test_readme_python_snippet_from_directory(saved_model):
    # README "Streaming": sf = StreamingForecaster.from_directory(dir); sf.push(values, timestamps=t); sf.forecast(h)
    sf = StreamingForecaster.from_directory(saved_model)
    C = sf.C
    g = np.random.default_rng(0)
    values = g.normal(10, 2, size=(40, C))
    t = np.datetime64("2024-02-01T00:00") + np.arange(40) * np.timedelta64(1, "h")
    sf.push(values, timestamps=t)
    fc = sf.forecast(H)
    assert fc.point.shape == (1, H, C) and torch.isfinite(fc.point).all()
    assert sf.state.steps.tolist() == [40]


def _state_steps(saved_model, state):
    from armt_ts.cli import load_model

    model = load_model(str(saved_model), "cpu").prediction_net.model.forecaster
    return StreamingForecaster.load(state, model).state.steps.tolist()


def test_cells_follow_the_file_readers_rules(saved_model, tmp_path, capsys):
    """The cells that `forecast` reads as missing (N/A, -nan, ...) are missing here too; what it rejects (1_000,
    infinities, magnitudes beyond float32) is rejected naming row and column; a likely fill value (1e30) is kept
    with one warning per column; a UTF-8 byte-order mark before the header is no part of the first name."""
    rows = _wide_rows(40)
    missing = ["N/A", "-nan", "NULL", " none ", "NaN"]
    for k, cell in enumerate(missing):
        ts, _, b = rows[5 + k].split(",")
        rows[5 + k] = f"{ts},{cell},{b}"
    plain = [r for r in rows]
    for k in range(len(missing)):
        ts, _, b = plain[5 + k].split(",")
        plain[5 + k] = f"{ts},,{b}"
    a, b_ = tmp_path / "cells.csv", tmp_path / "plain.csv"
    a.write_bytes(("\ufeff" + "\n".join(rows) + "\n").encode("utf-8"))
    b_.write_text("\n".join(plain) + "\n")
    code, out_a, err = _run(capsys, "stream", "--model", saved_model, a, "--timestamp", "timestamp", "--every", 0)
    assert code == 0, err
    code, out_b, err = _run(capsys, "stream", "--model", saved_model, b_, "--every", 0)
    assert code == 0 and out_a == out_b
    for cell, message in (("1_000", "'1_000' is not a number"), ("Infinity", "'Infinity' is not a finite number"),
                          ("-1e39", "'-1e39' is beyond float32's range")):
        bad = list(rows[:20])
        ts, _, b = bad[12].split(",")
        bad[12] = f"{ts},{cell},{b}"
        f = tmp_path / "bad.csv"
        f.write_text("\n".join(bad) + "\n")
        state = tmp_path / f"{cell}.state"
        code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0)
        assert code == 2 and f"row 12, column 'a': {message}" in err, err
        assert "Traceback" not in err and "RuntimeWarning" not in err
        assert _state_steps(saved_model, state) == [11, 11]  # the 11 rows before are kept
    fill = list(rows[:20])
    for k in (3, 4):
        ts, _, b = fill[k].split(",")
        fill[k] = f"{ts},1e30,{b}"
    f = tmp_path / "fill.csv"
    f.write_text("\n".join(fill) + "\n")
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
    assert code == 0 and err.count("warning") == 1 and "row 3, column 'a': the value '1e30'" in err, err


def test_timestamps_are_checked_and_bad_bytes_named_keeping_the_rows_before(saved_model, tmp_path, capsys):
    rows = _wide_rows(30)
    cases = [
        # an integer beyond int64 (numpy would overflow), a date past 2262 (it would wrap into the past)
        (lambda ts: "99999999999999999999", "column 'timestamp': timestamp 99999999999999999999 is outside the int64"),
        (lambda ts: "2300-01-01 00:00", "timestamp '2300-01-01 00:00' is outside the years 1677..2262"),
        # one kind of timestamp per input: the same instant with a UTC offset after naive rows
        (lambda ts: ts.replace(" ", "T") + "+00:00", "is a date/time with a UTC offset, but row 1's is a date/time "
                                                     "without a UTC offset"),
    ]
    for k, (cell, message) in enumerate(cases):
        bad = list(rows)
        ts, a, b = bad[21].split(",")
        bad[21] = f"{cell(ts)},{a},{b}"
        f = tmp_path / f"t{k}.csv"
        f.write_text("\n".join(bad) + "\n")
        state = tmp_path / f"t{k}.state"
        code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--state", state, "--every", 0)
        assert code == 2 and f"row 21, column 'timestamp': " in err and message in err, err
        assert _state_steps(saved_model, state) == [20, 20]
    latin1 = tmp_path / "latin1.csv"
    text = "\n".join(rows) + "\n"
    latin1.write_bytes(text.replace(rows[16], rows[16].replace(",", ",caf\xe9", 1)).encode("latin-1"))
    state = tmp_path / "l.state"
    code, _, err = _run(capsys, "stream", "--model", saved_model, latin1, "--state", state, "--every", 0)
    assert code == 2 and "row 16: bytes that are not UTF-8 (b'\\xe9'" in err, err
    assert _state_steps(saved_model, state) == [15, 15]
    # the spellings the file readers accept, converted to UTC alike
    from armt_ts.cli import _parse_time
    from armt_ts.data.timegrid import parse_timestamps

    for text in ("2020/01/01 02:00", "2020-1-5 3:04", "2020-01-01T13", "2020-01-01 02:00:00 +0100",
                 "2020-01-01T02:00:00Z", "2020-01-01T02:00:00.123456-05:30", "2262-04-11"):
        want = int(parse_timestamps(pl.Series("t", [text]), file="f", column="t")[0])
        assert _parse_time(text, "w")[0] == want, text


def test_output_keeps_float32_precision_and_appends_only_under_the_same_columns(saved_model, tmp_path, capsys):
    rows = _wide_rows(40)
    big = ["timestamp,a,b"] + [f"{r.split(',')[0]},{1234567 + i % 7},{7654321 + i % 5}" for i, r in enumerate(rows[1:])]
    f = tmp_path / "big.csv"
    f.write_text("\n".join(big) + "\n")
    code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0)
    assert code == 0, err
    df = _blocks(out)
    assert (df["q0.9"] - df["q0.1"]).min() > 0, "the band survives the output's rounding"
    assert all(len(v.split(",")[3].replace(".", "").lstrip("-")) > 6 for v in out.splitlines()[1:3])
    target = tmp_path / "out.csv"
    assert _run(capsys, "stream", "--model", saved_model, f, "--every", 0, "--out", target)[0] == 0
    assert _run(capsys, "stream", "--model", saved_model, f, "--every", 0, "--out", target)[0] == 0  # appends
    assert target.read_text().count("entity,as_of") == 1
    code, _, err = _run(capsys, "stream", "--model", saved_model, f, "--every", 0, "--out", target,
                        "--quantiles", "0.5")
    assert code == 2 and "exists with the header" in err and "same columns" in err


def test_a_multichannel_model_names_its_channels_by_column_and_keeps_their_order(tmp_path, capsys):
    from armt_ts.testing import tiny_multichannel_model

    tiny_multichannel_model(tmp_path / "mc", H)
    t = np.arange(200)
    stamps = np.datetime64("2024-01-01T00:00") + t * np.timedelta64(1, "h")
    lines = ["timestamp,x,y"] + [f"{str(s).replace('T', ' ')},{10 + np.sin(i / 4):.3f},{100 + np.cos(i / 4):.3f}"
                                 for i, s in enumerate(stamps)]
    half, whole = tmp_path / "half.csv", tmp_path / "whole.csv"
    half.write_text("\n".join(lines[:101]) + "\n")
    whole.write_text("\n".join(lines) + "\n")
    state = tmp_path / "s.state"
    code, out, err = _run(capsys, "stream", "--model", tmp_path / "mc", half, "--every", 0, "--state", state)
    assert code == 0, err
    assert set(_blocks(out)["entity"]) == {"series/x", "series/y"}
    # resuming with the columns in another order would feed y's values to x's channel: refused
    code, _, err = _run(capsys, "stream", "--model", tmp_path / "mc", whole, "--every", 0, "--state", state,
                        "--target", "y", "x")
    assert code == 2 and "not the state's channels ['x', 'y'] in that order" in err
    code, out, err = _run(capsys, "stream", "--model", tmp_path / "mc", whole, "--every", 0, "--state", state)
    assert code == 0 and "skipped 100 row(s)" in err


def test_times_are_written_as_the_input_spells_them_and_a_resume_keeps_their_kind(saved_model, tmp_path, capsys):
    """as_of and the time-order error used to guess a time's kind from its size: 1970-01-01 01:00 came out as
    3600000000000, the integer 1700000000000000 as 1970-01-20 16:13:20, and fractions of a second were cut."""
    cases = {"1970-01-01 01:00": "1970-01-01 01:00:00", "1700000000000001": "1700000000000001",
             "2020-01-01 00:00:00.25": "2020-01-01 00:00:00.25", "1677-09-22": "1677-09-22 00:00:00"}
    for i, (cell, shown) in enumerate(cases.items()):
        f = tmp_path / f"t{i}.csv"
        f.write_text(f"time,v\n{cell},1\n")
        code, out, err = _run(capsys, "stream", "--model", saved_model, f, "--horizon", 1)
        assert code == 0, err
        assert _blocks(out)["as_of"].to_list() == [shown]
    f = tmp_path / "back.csv"
    f.write_text("time,v\n2020-01-01 00:00:00.5,1\n2020-01-01 00:00:00.25,2\n")
    code, _, err = _run(capsys, "stream", "--model", saved_model, f)
    assert code == 2 and "timestamp 2020-01-01 00:00:00.25 is not after its previous one, 2020-01-01 00:00:00.5" in err
    # a state made from dates, resumed with integers (or the reverse), used to skip every row as "already seen"
    state, dates, ints = tmp_path / "s.state", tmp_path / "dates.csv", tmp_path / "ints.csv"
    dates.write_text("time,v\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n")
    ints.write_text("time,v\n13,1\n14,2\n")
    assert _run(capsys, "stream", "--model", saved_model, dates, "--state", state)[0] == 0
    code, out, err = _run(capsys, "stream", "--model", saved_model, ints, "--state", state)
    assert code == 2 and "row 1" in err and "was made from rows whose timestamps are a date/time" in err, err
    code, out, err = _run(capsys, "stream", "--model", saved_model, dates, "--state", state, "--horizon", 1)
    assert code == 0 and "skipped 2 row(s)" in err and _blocks(out)["as_of"].to_list() == ["2024-01-01 01:00:00"]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupted_stream_saves_its_state_and_exits_quietly(saved_model, tmp_path, capsys, monkeypatch, signum):
    """Ctrl-C (or a service manager's SIGTERM) is how a `tail -f` stream stops: it printed a traceback and lost the
    rows since the last forecast. A signal during a push waits for the push, so the saved state is a real one."""
    import os
    import signal

    from armt_ts.cli import load_model

    model = load_model(str(saved_model), "cpu").prediction_net.model.forecaster
    rows = _wide_rows(120)
    sig = getattr(signal, signum)

    class Feed(io.StringIO):  # the signal arrives while the stream waits for row 40
        def readline(self, *a):
            line = super().readline(*a)
            if line.startswith(rows[40].split(",")[0]):
                os.kill(os.getpid(), sig)
            return line

    real = StreamingForecaster._advance

    def advance(self, *a):  # the signal arrives while row 10 updates the state
        if int(self.state.steps.max()) == 9:
            os.kill(os.getpid(), sig)
        return real(self, *a)

    state = tmp_path / "s.state"
    previous = signal.signal(sig, _interrupt)  # (SIGTERM's default action would end pytest itself)
    try:
        for feed, rows_done in ((Feed, 39), (io.StringIO, 10)):
            if rows_done == 10:
                monkeypatch.setattr(StreamingForecaster, "_advance", advance)
                state.unlink()
            monkeypatch.setattr(sys, "stdin", feed("\n".join(rows) + "\n"))
            try:
                code, out, err = _run(capsys, "stream", "--model", saved_model, "--state", state, "--every", 100)
            except KeyboardInterrupt:
                code, err = "KeyboardInterrupt", ""
            assert code == 128 + sig and f"stopped by {signum} after {rows_done} row(s)" in err, (code, err)
            assert "Traceback" not in err and signal.getsignal(sig) is _interrupt  # the handler is restored
            assert StreamingForecaster.load(state, model).state.steps.tolist() == [rows_done, rows_done]
    finally:
        signal.signal(sig, previous)

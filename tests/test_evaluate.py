"""``armt-ts evaluate`` and armt_ts/evaluate.py: origins, the naive peers, the scores computed by hand, a backtest
whose forecasts never read past their origin, and one-line errors."""

import dataclasses

import numpy as np
import polars as pl
import pytest

from armt_ts import evaluate as ev
from armt_ts.cli import _backtest_forecasts, _panel, main, train

TINY = ["--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--horizon", "6", "--context", "24"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_origins_and_default_seasons():
    assert ev.origins(100, 80, 6, 6).tolist() == [80, 86, 92]  # 92 + 6 = 98 <= 100; 98 + 6 > 100
    assert ev.origins(100, 94, 6, 1).tolist() == [94]
    assert ev.origins(100, 95, 6, 1).tolist() == []
    with pytest.raises(ValueError, match="cut"):
        ev.origins(100, 100, 6, 1)
    hour, day = 3600 * 10**9, 86_400 * 10**9
    assert ev.default_season(hour, None) == 24 and ev.default_season(600 * 10**9, None) == 144
    assert ev.default_season(day, None) == 7 and ev.default_season(7 * 3600 * 10**9, None) == 1
    assert ev.default_season(None, 1) == 12 and ev.default_season(None, 3) == 4 and ev.default_season(None, 12) == 1


def test_naive_forecasts_read_only_the_past():
    nan = np.nan
    target = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
                       [1.0, nan, 3.0, nan, nan, 99.0, 99.0]])
    assert ev.last_observed(target, 5).tolist() == [5.0, 3.0]
    assert np.isnan(ev.last_observed(np.array([[nan, nan, 1.0]]), 2)).all()
    # season 3 at t = 5: steps 2, 3, 4 repeated; the missing ones (series 1) fall back to its last value, 3
    sn = ev.seasonal_naive(target, 5, 4, 3)
    assert sn.tolist() == [[3.0, 4.0, 5.0, 3.0], [3.0, 3.0, 3.0, 3.0]]


def test_scores_match_a_hand_computation():
    point = np.array([[1.0, 2.0, 3.0]])
    actual = np.array([[2.0, np.nan, 5.0]])  # the NaN step is not scored
    loc, scale = np.array([10.0]), np.array([2.0])
    q = np.array([[[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]])  # [S, Q, H] at levels 0.25, 0.75
    sc = ev.Scores.zeros(1, 2)
    sc.add(point, actual, loc, scale, q, np.array([0.25, 0.75]))
    r = sc.summary()
    assert r["points"] == 2
    assert r["mse"] == pytest.approx(((1 / 2) ** 2 + (2 / 2) ** 2) / 2)
    assert r["mae"] == pytest.approx((0.5 + 1.0) / 2) and r["mae_units"] == pytest.approx(1.5)
    # pinball (z units): y=2: q0 -> 0.25 * 1 = 0.25, q4 -> 0.25 * 1 = 0.25; y=5: q0 -> 0.25 * 2.5, q4 -> 0.75 * 0.5
    pin = 0.25 + 0.25 + 0.625 + 0.375
    assert r["crps"] == pytest.approx(2 * pin / (2 * 2))
    assert ev.Scores.zeros(1, 0).summary()["crps"] is None


def _periodic_csv(path, steps=400, period=24):
    t = np.datetime64("2024-01-01T00:00") + np.arange(steps) * np.timedelta64(1, "h")
    k = np.arange(steps)
    pl.DataFrame({"timestamp": [str(x).replace("T", " ") for x in t],
                  "cycle": [f"{np.sin(2 * np.pi * (i % period) / period):.6f}" for i in k],
                  "walk": [f"{v:.4f}" for v in np.cumsum(np.random.default_rng(0).normal(size=steps))]}
                 ).write_csv(path)


def test_evaluate_scores_armt_and_the_naive_peers_per_series(tmp_path, capsys):
    src, out = tmp_path / "p.csv", tmp_path / "scores.csv"
    _periodic_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--out", out)
    assert code == 0, err
    assert "2 series" in stdout and "13 origin(s) every 6 steps in [320, 400)" in stdout
    assert "SeasonalNaive (24)" in stdout and "Naive (last value)" in stdout
    df = pl.read_csv(out)
    assert df.columns == ["series", "channel", "model", "mse_z", "mae_z", "crps_z", "mae", "points"]
    assert df.height == 2 * 3 and set(df["points"]) == {13 * 6}
    naive = df.filter(pl.col("model") == "SeasonalNaive (24)")
    # an exactly periodic series: the last season repeated is exact
    assert naive.filter(pl.col("series") == "cycle")["mse_z"][0] == pytest.approx(0.0, abs=1e-10)
    armt = df.filter(pl.col("model") == "ARMT")
    assert (armt["crps_z"] > 0).all() and armt["crps_z"].is_not_null().all()
    assert naive["crps_z"].is_null().all()


def test_backtest_forecasts_never_read_past_their_origin(tmp_path, capsys):
    src = tmp_path / "p.csv"
    _periodic_csv(src, steps=200)
    from armt_ts.cli import build_parser, load_panel

    args = build_parser().parse_args(["evaluate", str(src), *TINY])
    panel = load_panel(args)
    predictor = train(_panel(panel.frame.slice(0, 150), ""), 6, 24, args)
    t = 170
    changed = panel.frame.values.copy()
    changed[t:] += 50.0  # everything from the origin on
    other = _panel(dataclasses.replace(panel.frame, values=changed), "")
    starts = np.array([160, t])
    a = list(_backtest_forecasts(predictor, panel, starts, 24, (0.1, 0.9)))
    b = list(_backtest_forecasts(predictor, other, starts, 24, (0.1, 0.9)))
    for (ma, qa), (mb, qb) in zip(a, b):
        assert np.array_equal(ma, mb) and np.array_equal(qa, qb)
    assert a[0][0].shape == (2, 6) and a[0][1].shape == (2, 2, 6)


@pytest.mark.parametrize("extra,message", [
    (["--test-fraction", "1.5"], "--test-fraction must lie strictly between 0 and 1"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--test-fraction", "0.99"], "leaves 4 for training"),
])
def test_bad_backtest_options_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    src = tmp_path / "p.csv"
    _periodic_csv(src)
    code, _, err = _run(capsys, "evaluate", src, *TINY, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_help_lists_evaluate(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "evaluate" in capsys.readouterr().out


def test_each_series_is_scored_in_its_own_training_z_units(tmp_path, capsys):
    """Long layout, series-major with channels inside: each score row is divided by its own training std."""
    steps, rows = 300, []
    t = np.datetime64("2024-01-01T00:00") + np.arange(steps) * np.timedelta64(1, "h")
    rng = np.random.default_rng(1)
    scales = {("a", "x"): 1.0, ("a", "y"): 100.0, ("b", "x"): 10.0, ("b", "y"): 0.1}
    series = {k: v * (np.sin(np.arange(steps) / 4) + rng.normal(size=steps)) for k, v in scales.items()}
    for (sid, ch), values in series.items():
        rows += [(str(t[i]).replace("T", " "), sid, ch, f"{values[i]:.6f}") for i in range(steps)]
    src, out = tmp_path / "long.csv", tmp_path / "scores.csv"
    pl.DataFrame(rows, schema=["timestamp", "series_id", "channel", "value"], orient="row").write_csv(src)
    code, _, err = _run(capsys, "evaluate", src, *TINY, "--out", out)
    assert code == 0, err
    df = pl.read_csv(out).filter(pl.col("model") == "Naive (last value)")
    cut = steps - 60
    for r in df.iter_rows(named=True):
        train = np.array([float(f"{v:.6f}") for v in series[(r["series"], r["channel"])][:cut]])
        assert r["mae"] / r["mae_z"] == pytest.approx(train.std(), rel=1e-3)


def test_a_series_with_nothing_in_the_test_part_gets_no_scores(tmp_path, capsys):
    """A series whose test part is all missing has no scored point: its scores are empty cells (NaN in
    Scores.summary), not zeros that read as a perfect forecast."""
    src, out = tmp_path / "p.csv", tmp_path / "scores.csv"
    _periodic_csv(src)
    df = pl.read_csv(src, infer_schema=False)
    df = df.with_columns(pl.when(pl.int_range(df.height) >= 300).then(pl.lit("")).otherwise(pl.col("walk"))
                         .alias("walk"))
    df.write_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--out", out)
    assert code == 0, err
    scores = pl.read_csv(out)
    walk = scores.filter(pl.col("series") == "walk")
    assert walk.height == 3 and (walk["points"] == 0).all()
    assert walk.select(["mse_z", "mae_z", "mae"]).null_count().row(0) == (3, 3, 3)
    cycle = scores.filter(pl.col("series") == "cycle")
    assert (cycle["points"] == 13 * 6).all() and cycle["mse_z"].is_not_null().all()
    # the table's totals are the scored series' alone
    armt_line = next(line for line in stdout.splitlines() if line.strip().startswith("ARMT"))
    assert armt_line.split()[-1] == str(13 * 6)
    sc = ev.Scores.zeros(1, 0)
    r = sc.summary()
    assert r["points"] == 0 and np.isnan(r["mse"]) and np.isnan(r["mae"]) and np.isnan(r["mae_units"])


def test_evaluate_says_what_it_did_not_score_and_checks_out_first(tmp_path, capsys):
    src = tmp_path / "p.csv"
    _periodic_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--season", "1000", "--stride", "7")
    assert code == 0, err
    assert "note: the season (1000 steps) reaches before the first step from every origin" in stdout
    assert "note: origins every 7 steps score steps [320, 396) of the test part [320, 400)" in stdout
    # an --out that cannot be written fails before the training, not after it
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--out", blocker / "scores.csv")
    assert code == 2 and "cannot write" in err and "trained" not in stdout
    empty = tmp_path / "empty_test.csv"
    df = pl.read_csv(src, infer_schema=False)
    df.with_columns([pl.when(pl.int_range(df.height) >= 320).then(pl.lit("")).otherwise(pl.col(c)).alias(c)
                     for c in ("cycle", "walk")]).write_csv(empty)
    code, _, err = _run(capsys, "evaluate", empty, *TINY)
    assert code == 2 and "no series has an observed value in the test part [320, 400)" in err


def test_a_forecast_from_an_empty_context_is_scored_for_no_model(tmp_path, capsys):
    """A series silent for at least the context before an origin: the model's forecast from there reads nothing (a
    constant near 0, whatever the series' level), so that (series, origin) is left out of all three models' scores
    instead of charging ARMT for a forecast ``armt-ts forecast`` never makes."""
    nan = np.nan
    target = np.array([[1.0, nan, nan, nan, 5.0], [nan, 2.0, nan, nan, nan]])
    assert ev.blind(target, 4, 3).tolist() == [True, False] and ev.blind(target, 5, 3).tolist() == [False, True]
    assert ev.blind(target, 2, 10).tolist() == [False, False]  # a context longer than the history: [0, t)
    src, out = tmp_path / "p.csv", tmp_path / "scores.csv"
    _periodic_csv(src)
    df = pl.read_csv(src, infer_schema=False)
    gap = (pl.int_range(df.height) >= 280) & (pl.int_range(df.height) < 320)  # origin 320 reads [296, 320): empty
    df.with_columns(pl.when(gap).then(pl.lit("")).otherwise(pl.col("walk")).alias("walk")).write_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--out", out)
    assert code == 0, err
    scores = pl.read_csv(out)
    assert (scores.filter(pl.col("series") == "walk")["points"] == 12 * 6).all()  # origin 320's 6 steps left out
    assert (scores.filter(pl.col("series") == "cycle")["points"] == 13 * 6).all()
    assert ("note: 1 forecast(s) of 1 series read no observed value in their 24 context steps" in stdout
            and "left out of every model's scores: 'walk'" in stdout)


def test_a_series_constant_in_its_training_part_is_named(tmp_path, capsys):
    """Standard deviation 0 in the training part: the series is divided by 1, so its "z" scores are in its own
    units and can outweigh every other series; the command says so instead of printing them silently."""
    src, out = tmp_path / "p.csv", tmp_path / "scores.csv"
    _periodic_csv(src)
    df = pl.read_csv(src, infer_schema=False)
    df.with_columns(pl.when(pl.int_range(df.height) < 320).then(pl.lit("1000.0")).otherwise(pl.col("cycle"))
                    .alias("cycle")).write_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY, "--out", out)
    assert code == 0, err
    assert ("note: 1 series are constant over the training part [0, 320) (standard deviation 0): their z-scores "
            "divide by 1, so they are in the series' own units: 'cycle'") in stdout
    cycle = pl.read_csv(out).filter(pl.col("series") == "cycle")
    assert cycle["mae_z"].to_list() == pytest.approx(cycle["mae"].to_list())


def test_a_series_with_few_training_values_is_named(tmp_path, capsys):
    """Four observed values in the training part: the std that z-scores the series rests on them (two training
    points gave MSE(z) 1137, which outweighed every other series); the command names it."""
    src = tmp_path / "p.csv"
    _periodic_csv(src)
    df = pl.read_csv(src, infer_schema=False)
    rows = pl.int_range(df.height)
    df.with_columns(pl.when((rows < 320) & (rows % 80 != 0)).then(pl.lit("")).otherwise(pl.col("cycle"))
                    .alias("cycle")).write_csv(src)
    code, stdout, err = _run(capsys, "evaluate", src, *TINY)
    assert code == 0, err
    assert "note: 1 series have fewer than 10 observed values in the training part" in stdout
    assert stdout.count("fewer than 10 observed values") == 1 and "'cycle'" in stdout.split("fewer than 10")[1]


def test_a_failed_run_leaves_no_empty_out_file(tmp_path, capsys):
    """--out is created before the work (to fail early when it cannot be written); a run that then fails removes
    it again instead of leaving an empty scores file behind. A file that was there already is left alone."""
    src, out = tmp_path / "p.csv", tmp_path / "new" / "scores.csv"
    _periodic_csv(src)
    code, _, err = _run(capsys, "evaluate", src, *TINY, "--test-fraction", "0.99", "--out", out)
    assert code == 2 and "leaves 4 for training" in err and not out.exists()
    old = tmp_path / "old.csv"
    old.write_text("kept\n")
    code, _, err = _run(capsys, "evaluate", src, *TINY, "--test-fraction", "0.99", "--out", old)
    assert code == 2 and old.read_text() == "kept\n"

"""Bad inputs (issue 7, item 1): the corpus in tests/corpus/ plus generated inputs (a 100000-column header, Parquet
files, pandas frames) through every reader, the ``armt-ts forecast`` command and ``StreamingForecaster.push``.

Each input gets a typed error naming its place (file, row, column) or a documented repair; never a traceback from
inside a library, never a silently wrong number. The case tables live in ``benchmarks/reliability.py``, which also
writes ``benchmarks/results/reliability.md`` from them; these tests assert that each outcome is the expected one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from armt_ts.data import (DataError, FormatError, NonFiniteValueError, SchemaError, SuspiciousValueWarning,
                          read_events, read_long, read_wide)
from benchmarks.reliability import (CORPUS, INPUT_CASES, PUSH_CASES, cli_cases, prepared_stream, run_input_case,
                                    run_push_case)


def test_every_corpus_file_has_a_case():
    """A file added to tests/corpus/ without an expected outcome would never be checked."""
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.csv")}
    in_table = {c.name for c in INPUT_CASES if c.make is None}
    assert on_disk == in_table, (sorted(on_disk - in_table), sorted(in_table - on_disk))
    assert sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()) < 20_000, "keep the corpus small"


@pytest.mark.parametrize("case", INPUT_CASES, ids=lambda c: c.name)
def test_input_case(case, tmp_path):
    out = run_input_case(case, tmp_path)
    assert out["outcome"] == case.expect, out["message"]
    assert (out["row"], out["column"]) == (case.row, case.column), out["message"]
    assert out["warning"] == case.warns, out["message"]
    assert out["check"] in ("ok", "-"), out["check"]
    if case.max_seconds is not None:
        assert out["seconds"] <= case.max_seconds, f"{out['seconds']} s"
    if case.expect not in ("accepted", "FileNotFoundError"):
        # a typed DataError whose message says where and what was expected
        assert out["is_data_error"], out["outcome"]
        msg = out["message"]
        assert repr(out["source"]) in msg and "expected" in msg, msg
        if case.row is not None:
            assert f"row {case.row}" in msg, msg
        if case.column is not None:
            assert repr(case.column) in msg, msg
    if case.expect == "FileNotFoundError":
        assert out["source"] in out["message"]


def test_cli_reports_every_bad_file_in_one_line(tmp_path):
    """`armt-ts forecast` on every wide / long corpus file: exit 2, messages one line each (`armt-ts: ...`), the
    last one the error; an all-empty channel is refused by name; a 1e30 cell is a warning and the forecast runs;
    a damaged --model folder is one line naming it."""
    rows = cli_cases(tmp_path)
    bad = [(r["case"], r["exit"], r["message"]) for r in rows if not r["as_expected"]]
    assert not bad, bad
    assert len(rows) == len(list((CORPUS / "wide").glob("*.csv"))) + len(list((CORPUS / "long").glob("*.csv"))) + 3


@pytest.mark.parametrize("case", PUSH_CASES, ids=lambda c: c.name)
def test_push_case(case):
    out = run_push_case(case)
    assert out["outcome"] == case.expect, out["message"]
    assert case.says in out["message"]
    if case.expect != "accepted":
        assert out["state_bit_identical"], "a rejected push changed the state"


def test_rejected_push_then_valid_push_equals_valid_push_alone():
    """A rejected push has no after-effect: the next valid push gives the same state as without the rejection."""
    a, b = prepared_stream(), prepared_stream()
    t = np.datetime64("2024-01-01T05:00", "ns")
    with pytest.raises(ValueError):
        a.push(np.ones((2, 4)), entities=["pump1", "pump2"], timestamps=[t, t])
    for sf in (a, b):
        sf.push(np.full((2, 3), 0.5), entities=["pump1", "pump2"], timestamps=[t, t])
    assert a.state.equal(b.state)


# ---------------------------------------------------------------------------------------------------
# Details the case table does not show


def test_1e30_warning_names_the_cell_and_keeps_the_number(tmp_path):
    path = CORPUS / "wide" / "value_1e30.csv"
    with pytest.warns(SuspiciousValueWarning) as record:
        frame = read_wide(path)
    w = record[0].message
    assert (w.file, w.row, w.column) == (str(path), 2, "pressure")
    assert frame.values[1, 1] == np.float32(1e30)
    # below the threshold: no warning
    small = tmp_path / "small.csv"
    small.write_text("timestamp,x\n2024-01-01 00:00,9.9e19\n2024-01-01 01:00,-1e19\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SuspiciousValueWarning)
        read_wide(small)


@pytest.mark.parametrize("cell", ["3.5e38", "-1e39", "1e308"])
def test_beyond_float32_is_rejected_everywhere(tmp_path, cell):
    """A finite float64 that float32 turns into inf never reaches the model: wide, long and event readers."""
    wide = tmp_path / "w.csv"
    wide.write_text(f"timestamp,x\n2024-01-01 00:00,1\n2024-01-01 01:00,{cell}\n")
    long = tmp_path / "l.csv"
    long.write_text(f"timestamp,series_id,value\n2024-01-01 00:00,a,{cell}\n")
    events = tmp_path / "e.csv"
    events.write_text(f"timestamp,entity,event_type,value\n2024-01-01 00:00,a,set,{cell}\n")
    for reader, path, row, column in ((read_wide, wide, 2, "x"), (read_long, long, 1, "value"),
                                      (read_events, events, 1, "value")):
        with pytest.raises(NonFiniteValueError) as err:
            reader(path)
        assert (err.value.row, err.value.column) == (row, column)
    # the largest float32 itself is a number
    wide.write_text("timestamp,x\n2024-01-01 00:00,1\n2024-01-01 01:00,3.4e38\n")
    with pytest.warns(SuspiciousValueWarning):
        assert np.isfinite(read_wide(wide).values).all()


def test_wide_header_of_100000_columns_reports_its_first_bad_column_in_order(tmp_path):
    """Two bad columns: the error names the first one in column order (same rule as the column-by-column path)."""
    n = 100_000
    path = tmp_path / "wide.csv"
    cells = ["1"] * n
    cells[90_000], cells[12_345] = "inf", "x"
    path.write_text("timestamp," + ",".join(f"c{j}" for j in range(n)) + "\n2024-01-01 00:00," + ",".join(cells)
                    + "\n")
    with pytest.raises(DataError) as err:
        read_wide(path)
    assert (type(err.value), err.value.row, err.value.column) == (type(err.value), 1, "c12345")


def test_a_long_list_of_unexpected_columns_is_cut_in_the_message(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("timestamp,series_id,value," + ",".join(f"extra{j}" for j in range(100_000)) + "\n"
                    + "2024-01-01 00:00,a,1" + "," * 100_000 + "\n")
    with pytest.raises(SchemaError) as err:
        read_long(path)
    msg = str(err.value)
    assert err.value.column == "extra0" and "and 99,992 more" in msg and len(msg) < 600, msg


def test_bare_cr_inside_a_quoted_name_is_not_a_line_end(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b'timestamp,"a\rb"\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n')
    assert read_wide(path).channels == ["a\rb"]
    path.write_bytes(b"timestamp,a\r2024-01-01 00:00,1\r")
    with pytest.raises(FormatError, match="bare CR"):
        read_wide(path)

"""Property-based tests (issue 7, item 2; hypothesis) over generated CSVs and generated push sequences.

- Generated wide and long CSVs (odd names with commas, quotes and line breaks, BOM, CRLF, gaps, every spelling of a
  missing value, numbers in many formats, bad cells, +-inf and values beyond float32): the reader either returns a
  frame whose mask is exactly "the cell held a number" and whose values are those numbers in float32 (0.0 where
  missing, never NaN or inf), or raises the DataError an independent oracle predicts, at the row and column the
  oracle predicts. No other exception type.
- Generated push sequences (valid pushes mixed with wrong shapes, unknown entities and channels, time going
  backwards, non-finite values): every rejected push raises a StreamError and leaves the state bit-identical, and
  the final state equals the one from replaying only the accepted pushes on a fresh forecaster.
"""

from __future__ import annotations

import csv
import io
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armt_ts.data import DataError, NonFiniteValueError, ValueParseError, read_long, read_wide

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])
F32_MAX = float(np.finfo(np.float32).max)
MISSING_TOKENS = ["", "NaN", "nan", "NA", "n/a", "N/A", "null", "NULL", "None", " ", "-nan"]
BAD_TOKENS = ["abc", "1,5", "0x10", "1_000", "--1", "1e", "12 3", "\u00e9"]
INF_TOKENS = ["inf", "-inf", "Infinity", "-INF", "1e400"]
OVER_TOKENS = ["1e39", "-3.5e38"]
TIME_NAMES = {"timestamp", "datetime", "date", "time"}


def _number_token(x: float, style: int) -> str:
    if style == 0:
        return repr(x)
    if style == 1:
        return f"{x:.6e}"
    if style == 2:
        return f" {x:.3f} "  # surrounding blanks are stripped
    return f"+{abs(x):g}" if x >= 0 else f"{x:g}"


@st.composite
def cells(draw):
    """(token as written, kind, value): kind in number / missing / bad / inf / over."""
    kind = draw(st.sampled_from(["number"] * 6 + ["missing"] * 2 + ["bad", "inf", "over"]))
    if kind == "number":
        x = draw(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-10**6, 10**6).map(float),
                           st.floats(-1e19, 1e19, allow_nan=False)))
        token = _number_token(x, draw(st.integers(0, 3)))
        return token, kind, float(token)
    if kind == "missing":
        return draw(st.sampled_from(MISSING_TOKENS)), kind, math.nan
    return draw(st.sampled_from({"bad": BAD_TOKENS, "inf": INF_TOKENS, "over": OVER_TOKENS}[kind])), kind, math.nan


names = st.text(alphabet=st.sampled_from(list("abcXYZ ,;\"\n\u00b0\u00e9_-1")), min_size=1, max_size=8).filter(
    lambda s: s.strip().lower() not in TIME_NAMES and s.strip() == s and "\n" not in s[:1])


def _write(rows: list[list[str]], bom: bool, crlf: bool) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8")


def _expected_error(columns: list[list[tuple]], chan_names: list[str]):
    """The oracle: the first column (in order) with a bad / inf / beyond-float32 cell; within it a parse error
    wins over inf, and inf over beyond-float32, each at its first row."""
    for name, col in zip(chan_names, columns):
        kinds = [k for _, k, _ in col]
        for kind, error in (("bad", ValueParseError), ("inf", NonFiniteValueError), ("over", NonFiniteValueError)):
            if kind in kinds:
                return error, kinds.index(kind) + 1, name
    return None


@SETTINGS
@given(data=st.data())
def test_generated_wide_csv(tmp_path, data):
    n_chan = data.draw(st.integers(1, 4))
    chan_names = data.draw(st.lists(names, min_size=n_chan, max_size=n_chan, unique=True))
    n_rows = data.draw(st.integers(2, 12))
    steps = sorted(data.draw(st.sets(st.integers(0, 20), min_size=n_rows, max_size=n_rows)))
    columns = [[data.draw(cells()) for _ in range(n_rows)] for _ in range(n_chan)]
    time_fmt = data.draw(st.sampled_from(["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y/%m/%d %H:%M"]))
    base = np.datetime64("2024-01-01T00:00")
    stamps = [(base + np.timedelta64(s, "h")).astype(object).strftime(time_fmt) for s in steps]
    rows = [["timestamp", *chan_names]] + [[stamps[i], *(columns[j][i][0] for j in range(n_chan))]
                                           for i in range(n_rows)]
    path = tmp_path / "gen.csv"
    path.write_bytes(_write(rows, data.draw(st.booleans()), data.draw(st.booleans())))

    want = _expected_error(columns, chan_names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = read_wide(path, freq="1h")  # gaps may make another step the most common
    except DataError as err:
        assert want is not None, f"unexpected {err!r}"
        assert (type(err), err.row, err.column) == want, str(err)
        assert str(path) in str(err)
        return
    assert want is None, f"expected {want}, the reader accepted the file"
    assert frame.channels == chan_names
    grid = np.arange(steps[0], steps[-1] + 1)
    assert frame.values.shape == (grid.size, n_chan)
    assert np.isfinite(frame.values).all() and set(np.unique(frame.observed)) <= {0.0, 1.0}
    pos = np.searchsorted(grid, steps)
    expected_obs = np.zeros((grid.size, n_chan), dtype=np.float32)
    expected_val = np.zeros((grid.size, n_chan), dtype=np.float32)
    for j, col in enumerate(columns):
        for i, (_, kind, x) in enumerate(col):
            if kind == "number":
                expected_obs[pos[i], j] = 1.0
                expected_val[pos[i], j] = np.float32(x)
    np.testing.assert_array_equal(frame.observed, expected_obs)
    np.testing.assert_array_equal(frame.values, expected_val)


@SETTINGS
@given(data=st.data())
def test_generated_long_csv(tmp_path, data):
    series = data.draw(st.lists(names, min_size=1, max_size=3, unique=True))
    chans = data.draw(st.lists(names, min_size=1, max_size=3, unique=True))
    keys = [(s, c, t) for s in series for c in chans for t in range(6)]
    present = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
    present.sort(key=lambda k: k[2])  # time non-decreasing in file order (so within every series and channel)
    cell = {k: data.draw(cells()) for k in present}
    base = np.datetime64("2024-01-01T00:00")
    rows = [["timestamp", "series_id", "channel", "value"]] + [
        [str(base + np.timedelta64(t, "h")).replace("T", " "), s, c, cell[(s, c, t)][0]] for s, c, t in present]
    path = tmp_path / "gen_long.csv"
    path.write_bytes(_write(rows, data.draw(st.booleans()), data.draw(st.booleans())))

    kinds = [cell[k][1] for k in present]
    want = None
    for kind, error in (("bad", ValueParseError), ("inf", NonFiniteValueError), ("over", NonFiniteValueError)):
        if kind in kinds:
            want = (error, kinds.index(kind) + 1, "value")
            break
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = read_long(path, freq="1h")
    except DataError as err:
        assert want is not None, f"unexpected {err!r}"
        assert (type(err), err.row, err.column) == want, str(err)
        return
    assert want is None, f"expected {want}, the reader accepted the file"
    order_s = list(dict.fromkeys(s for s, _, _ in present))
    order_c = list(dict.fromkeys(c for _, c, _ in present))
    assert frame.series_ids == order_s and frame.channels == order_c
    t_min, t_max = min(t for *_, t in present), max(t for *_, t in present)
    expected_obs = np.zeros((len(order_s), t_max - t_min + 1, len(order_c)), dtype=np.float32)
    expected_val = np.zeros_like(expected_obs)
    for (s, c, t), (_, kind, x) in cell.items():
        if kind == "number":
            expected_obs[order_s.index(s), t - t_min, order_c.index(c)] = 1.0
            expected_val[order_s.index(s), t - t_min, order_c.index(c)] = np.float32(x)
    np.testing.assert_array_equal(frame.observed, expected_obs)
    np.testing.assert_array_equal(frame.values, expected_val)
    assert np.isfinite(frame.values).all()


# ---------------------------------------------------------------------------------------------------
# Push sequences

ENTITIES = ["pump1", "pump2", "pump3"]
CHANNELS = ["temp", "pressure", "flow"]


@pytest.fixture(scope="module")
def stream_model():
    from benchmarks.reliability import stream_forecaster

    return stream_forecaster(entities=ENTITIES, channels=CHANNELS).model


def _fresh(model):
    """A forecaster whose entities all hold one step at hour 0 (so each has a last timestamp to go back from)."""
    from armt_ts.stream import StreamingForecaster

    sf = StreamingForecaster(model, entities=list(ENTITIES), channels=list(CHANNELS))
    sf.push(np.arange(9.0).reshape(3, 3), entities=list(ENTITIES),
            timestamps=np.full(3, np.datetime64("2024-01-01T00:00", "ns")))
    return sf


@st.composite
def push_ops(draw):
    """A push: (kind, kwargs); kinds 'ok' and 'subset' must be accepted, anything else must be rejected. Timestamps are drawn
    relative to a per-entity clock that the test advances only on accepted pushes."""
    kind = draw(st.sampled_from(["ok"] * 4 + ["subset"] * 2 + ["wrong_channels", "unknown_entity", "unknown_channel", "backwards",
                                              "inf", "duplicate", "mask_shape", "nan_observed"]))
    ents = draw(st.lists(st.sampled_from(ENTITIES), min_size=1, max_size=3, unique=True))
    length = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    values = rng.normal(size=(len(ents), length, 3))
    values[rng.random(values.shape) < 0.2] = np.nan  # NaN without a mask: missing
    gaps = draw(st.lists(st.integers(1, 3), min_size=length, max_size=length))
    return kind, ents, values, gaps, draw(st.integers(0, length - 1)), draw(st.integers(0, 2))


def _build(kind, ents, values, gaps, k, j, clock):
    """The push call's kwargs for the op, given each entity's last accepted time step (clock)."""
    steps = np.array([[clock[e] + sum(gaps[: i + 1]) for i in range(len(gaps))] for e in ents])
    kw = dict(values=values.copy(), entities=list(ents),
              timestamps=np.datetime64("2024-01-01T00:00", "ns") + steps * np.timedelta64(1, "h"))
    if kind == "subset":  # two of the three channels, in another order: the third is unobserved
        kw["values"], kw["channels"] = values[..., :2], [CHANNELS[(j + 1) % 3], CHANNELS[j]]
    elif kind == "wrong_channels":
        kw["values"] = np.concatenate([values, values[..., :1]], axis=-1)
    elif kind == "unknown_entity":
        kw["entities"] = [*ents[:-1], "pump99"]
    elif kind == "unknown_channel":
        kw["values"], kw["channels"] = values[..., :1], ["humidity"]
    elif kind == "backwards":
        back = steps.copy()
        back[0, k] = clock[ents[0]] if k == 0 else back[0, k - 1]  # not after the previous step
        kw["timestamps"] = np.datetime64("2024-01-01T00:00", "ns") + back * np.timedelta64(1, "h")
    elif kind == "inf":
        kw["values"][0, k, j] = np.inf
    elif kind == "duplicate":
        kw["entities"] = [ents[0], *ents]
        kw["values"] = np.concatenate([values[:1], values], axis=0)
        kw["timestamps"] = np.concatenate([kw["timestamps"][:1], kw["timestamps"]], axis=0)
    elif kind == "mask_shape":
        kw["observed"] = np.ones(values.shape[:-1] + (2,))
    elif kind == "nan_observed":
        kw["values"][0, k, j] = np.nan
        kw["observed"] = np.ones(values.shape)
    return kw, steps


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=st.lists(push_ops(), min_size=1, max_size=8))
def test_generated_push_sequences(stream_model, ops):
    from armt_ts.stream import StreamError

    sf = _fresh(stream_model)
    accepted = []
    clock = {e: 0 for e in ENTITIES}
    for kind, ents, values, gaps, k, j in ops:
        kw, steps = _build(kind, ents, values, gaps, k, j, clock)
        before = sf.state.clone()
        if kind in ("ok", "subset"):
            sf.push(**kw)
            accepted.append(kw)
            for e, s in zip(ents, steps[:, -1]):
                clock[e] = int(s)
        else:
            with pytest.raises(StreamError):
                sf.push(**kw)
            assert sf.state.equal(before), f"rejected push ({kind}) changed the state"
    replay = _fresh(stream_model)
    for kw in accepted:
        replay.push(**kw)
    assert sf.state.equal(replay.state), "rejected pushes left a trace"
    fc = sf.forecast()
    assert np.isfinite(np.asarray(fc.point)).all()

"""The streaming contract (DESIGN.md section 4) and the StreamingForecaster's API.

- full-sequence forward (an independent reference written here from the model's parts and gluonts' scaler)
  == one block push == segment-sized pushes == point-by-point pushes, for lengths that do not divide the segment;
- at patch-aligned lengths the stream's forecast equals ``ARMTForecaster.forward`` on the current segment's
  steps with the memory of the earlier ones;
- a fleet with ragged arrival (joins, leaves, uneven blocks) equals one stream per entity;
- rejected pushes leave the state bit-identical; save / load is bit-exact; memory does not grow with length.
"""


import numpy as np
import pytest
import torch

from armt_ts.config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.forecaster import ARMTForecaster
from armt_ts.stream import (ArgumentError, CompileError, DuplicateEntityError, ModelMismatchError, NonFiniteValueError,
                            ShapeError, StreamError, StreamFileError, StreamingForecaster, TimeOrderError,
                            UnknownChannelError, UnknownEntityError)
from armt_ts.state import StateFileError
from armt_ts.testing import assert_close, pushed

SCHEDULES = ("sequential", "auto")


def make_model(mode="independent", C=2, P=4, S=3, kind="quantile", scaling="std", schedule="sequential", seed=0):
    torch.manual_seed(seed)
    tpp = C if mode == "independent" else 1
    armt = ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=3 * tpp, num_mem_tokens=2, d_mem=8)
    if "schedule" in {f for f in ARMTConfig.__dataclass_fields__}:
        armt = armt.replace(schedule=schedule)
    cfg = ForecasterConfig.build(horizon=5, n_channels=C, armt=armt,
                                 patch=PatchConfig(patch_len=P, stride=S, mode=mode), head=HeadConfig(kind=kind),
                                 scaling=scaling)
    model = ARMTForecaster(cfg).eval()
    # W_v = 0 (the init) would make every read add exactly 0; a briefly trained W_v has std ~0.004
    with torch.no_grad():
        for mem in model.backbone.memories:
            mem.W_v.weight.normal_(std=0.05)
    return model


def series(T, C=2, B=1, seed=1, p_missing=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g) * 3 + 10 + torch.linspace(0, 5, T)[None, :, None]
    m = torch.rand(B, T, C, generator=g) > p_missing
    return x, m


def reference(model, x, m, window=None):
    """The streaming recurrence written directly: segment s covers steps [s*G*S, s*G*S + W); it is normalised with
    gluonts' scaler over every step up to its end; all segments' tokens go through the backbone at once.

    window (a stream's ``scaler_window`` w): the "std" statistics instead weigh channel c's observed steps of segment
    j's new part (from segment j - 1's end to segment j's) by exp(-(channel c's observed steps in the new parts of
    segments j + 1 .. s) / w), computed directly in float64."""
    c = model.config
    P, S = c.patch.patch_len, c.patch.stride
    tpp = c.patch.n_channels if c.patch.mode == "independent" else 1
    G = c.armt.segment_length // tpp
    W = G * S + P - S
    T = x.shape[1]
    n_seg = 0 if T < W else 1 + (T - W) // (G * S)
    obs = m.float()
    xz = torch.where(m, x, torch.zeros(()))
    tokens = []
    for s in range(n_seg):
        a, end = s * G * S, s * G * S + W
        # gluonts' scaler on float64 data: the stream keeps its statistics in float64 (a float32 sum over a long
        # stream would drift), then normalises in float32
        if window is None:
            _, loc, scale = model.scaler(xz[:, :end].double(), obs[:, :end].double())
        else:  # the weighted mean and variance of every observed step so far
            seg_of = ((torch.arange(end) - W).clamp_min(-1) // (G * S) + 1).clamp_max(s)  # the segment a step is new in
            new = torch.stack([obs[:, :end][:, seg_of == j].double().sum(1) for j in range(s + 1)], 1)  # [B, s+1, C]
            later = new.flip(1).cumsum(1).flip(1) - new  # observed steps in the segments after each
            w = torch.exp(-later / window)[:, seg_of] * obs[:, :end].double()
            n = w.sum(1, keepdim=True)
            loc = (w * xz[:, :end].double()).sum(1, keepdim=True) / n
            scale = torch.sqrt((w * (xz[:, :end].double() - loc) ** 2).sum(1, keepdim=True) / n + 1e-5)
        loc, scale = loc.float(), scale.float()
        tok, _ = model.embed((xz[:, a:end] - loc) / scale, m[:, a:end])
        tokens.append(tok)
    memory = None
    if n_seg:
        _, memory = model.backbone(torch.cat(tokens, dim=1), None)
    return memory, n_seg


@pytest.mark.parametrize("mode,P,S", [("independent", 4, 3), ("independent", 4, 4), ("mixing", 5, 2)])
@pytest.mark.parametrize("T", [1, 7, 23, 50])
def test_contract_push_granularity_bit_exact(mode, P, S, T):
    model = make_model(mode, P=P, S=S)
    x, m = series(T)
    block = pushed(model, x, m, [T])
    seg = pushed(model, x, m, [block.G * S])
    point = pushed(model, x, m, [1])
    ragged = pushed(model, x, m, [3, 1, 8, 2])
    for name, other in (("segment", seg), ("point", point), ("ragged", ragged)):
        assert block.state.equal(other.state), f"{name}-wise push differs from one block push"
        assert torch.equal(block.forecast().quantiles, other.forecast().quantiles), name
    assert int(block.state.steps[0]) == T


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("mode,P,S", [("independent", 4, 3), ("mixing", 5, 2)])
@pytest.mark.parametrize("T", [22, 61, 100])
def test_contract_full_forward_equals_push(schedule, mode, P, S, T):
    model = make_model(mode, P=P, S=S, schedule=schedule)
    x, m = series(T, seed=T)
    memory, n_seg = reference(model, x, m)
    assert n_seg >= 1 and T % (model.config.armt.segment_length) != 0
    for chunks in ([T], [1]):
        sf = pushed(model, x, m, chunks)
        assert int(sf.state.segments[0]) == n_seg
        for l in range(memory.num_layers):
            assert_close(f"A[{l}] chunks={chunks}", memory.A[l], sf.state.memory.A[l], 1e-5)
            assert_close(f"z[{l}] chunks={chunks}", memory.z[l], sf.state.memory.z[l], 1e-5)


@pytest.mark.parametrize("mode,P,S", [("independent", 4, 3), ("independent", 4, 4), ("mixing", 5, 2)])
@pytest.mark.parametrize("kind", ["quantile", "student_t"])
def test_forecast_equals_forecaster_at_patch_boundaries(mode, P, S, kind):
    """Where the last patch ends on the stream's patch grid, the stream's forecast is the trained forecaster's
    forward over the current segment's steps, with the memory of the segments before and the stream's statistics."""
    model = make_model(mode, P=P, S=S, kind=kind)
    sf = StreamingForecaster(model)
    G, W = sf.G, sf.window
    x, m = series(4 * W)
    checked = 0
    for T in range(1, x.shape[1] + 1):
        sf.push(x[0, T - 1].numpy(), m[0, T - 1].numpy())
        if T < P or (T - P) % S:
            continue
        n_done = 0 if T < W else 1 + (T - W) // (G * S)
        cached = n_done > 0 and T == W + (n_done - 1) * G * S  # a segment just completed: its last patch
        s = n_done - 1 if cached else n_done
        a = s * G * S
        # the memory after segments 0 .. s-1, which end at step (s - 1) * G * S + W
        memory = reference(model, x[:, :a - G * S + W], m[:, :a - G * S + W])[0] if s else None
        _, loc, scale = model.scaler(torch.where(m[:, :T], x[:, :T], torch.zeros(())).double(), m[:, :T].double())
        loc, scale = loc.float(), scale.float()
        with torch.no_grad():
            params, _, _, _ = model(x[:, a:T], m[:, a:T], memory, loc, scale)
            ref_q = model.head.quantiles(params, [0.1, 0.5, 0.9], loc, scale)
        fc = sf.forecast()
        assert_close(f"quantiles at T={T}", ref_q, fc.quantiles, 1e-4)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fleet_ragged_arrival_equals_one_stream_per_entity(schedule):
    model = make_model(schedule=schedule)
    rng = np.random.default_rng(0)
    lengths = {"a": 57, "b": 40, 7: 23, "d": 64}
    data = {e: series(n, seed=i) for i, (e, n) in enumerate(lengths.items())}
    fleet = StreamingForecaster(model, entities=["a", "b"])
    pos = {e: 0 for e in lengths}
    joined = {"a", "b"}
    for step in range(200):
        if step == 3:
            fleet.join([7])
            joined.add(7)
        if step == 6:
            fleet.join(["d"])
            joined.add("d")
        active = [e for e in lengths if e in joined and pos[e] < lengths[e]]
        if not active:
            break
        sub = [e for e in active if rng.random() < 0.7] or active[:1]
        L = int(rng.integers(1, 6))
        if all(pos[e] + L <= lengths[e] for e in sub) and len(sub) > 1:
            xs = np.stack([data[e][0][0, pos[e]:pos[e] + L].numpy() for e in sub])
            ms = np.stack([data[e][1][0, pos[e]:pos[e] + L].numpy() for e in sub])
            fleet.push(xs, ms, entities=sub)
            for e in sub:
                pos[e] += L
        else:
            for e in sub:
                k = min(L, lengths[e] - pos[e])
                fleet.push(data[e][0][0, pos[e]:pos[e] + k].numpy(), data[e][1][0, pos[e]:pos[e] + k].numpy(),
                           entities=e)
                pos[e] += k
    assert all(pos[e] == lengths[e] for e in lengths)
    fleet.leave(["b"])
    fc = fleet.forecast()
    assert fc.entities == ("a", 7, "d")
    for i, e in enumerate(fc.entities):
        solo = pushed(model, *data[e], [lengths[e]])
        row = fleet.state.select(torch.tensor([i]))
        # batch rows of different fleets go through matmuls of different shapes: equal to rounding, not bit-exact
        for k, v in solo.state.tensors().items():
            assert_close(f"entity {e!r}: {k}", v.double(), row.tensors()[k].double(), 1e-5)
        assert_close(f"entity {e!r} forecast", solo.forecast().quantiles[0], fc.quantiles[i], 1e-5)


def _assert_each_entity_equals_its_own_stream(model, fleet, x, m):
    """Entity e of ``fleet`` (row e) has the state of a one-entity stream fed x[e], m[e] point by point."""
    for e in range(x.shape[0]):
        solo = pushed(model, x[e:e + 1], m[e:e + 1], [1])
        for k, v in solo.state.tensors().items():
            assert_close(f"entity {e}: {k}", v.double(), fleet.state.select(torch.tensor([e])).tensors()[k].double(),
                         1e-5)


def test_lockstep_fleet_one_call_equals_separate_streams():
    model = make_model()
    N, T = 5, 30
    x, m = series(T, B=N)
    fleet = StreamingForecaster(model, entities=list(range(N)))
    for t in range(T):
        fleet.push(x[:, t].numpy(), m[:, t].numpy(), entities=list(range(N)))
    _assert_each_entity_equals_its_own_stream(model, fleet, x, m)


def test_forecast_writes_nothing_and_has_the_right_shapes():
    model = make_model()
    sf = StreamingForecaster(model, entities=["x", "y"])
    x, m = series(17, B=2)
    sf.push(x.numpy(), m.numpy(), entities=["x", "y"])
    before = sf.state.clone()
    fc = sf.forecast(3, quantiles=[0.1, 0.3, 0.9])
    assert sf.state.equal(before)
    assert fc.point.shape == (2, 3, 2) and fc.quantiles.shape == (2, 3, 2, 3)
    assert torch.isfinite(fc.quantiles).all()
    assert (fc.quantiles.diff(dim=-1) >= 0).all()
    one = sf.forecast(3, quantiles=[0.1, 0.3, 0.9], entities=["y"])
    assert_close("forecast of a subset", fc.quantiles[1:], one.quantiles, 1e-6)


def _rejections(sf):
    """(description, call, error class) for pushes that must be rejected; the stream has entities "a", "b" and the
    model's channels "0", "1"."""
    ok = np.ones((2, 2), np.float32)
    return [
        ("3 channels", lambda: sf.push(np.ones((2, 3)), entities=["a", "b"]), ShapeError),
        ("4-D values", lambda: sf.push(np.ones((2, 1, 1, 2)), entities=["a", "b"]), ShapeError),
        ("rows != entities", lambda: sf.push(np.ones((3, 2)), entities=["a", "b"]), ShapeError),
        ("string values", lambda: sf.push(np.array([["x", "y"], ["z", "w"]]), entities=["a", "b"]), ShapeError),
        ("mask shape", lambda: sf.push(ok, np.ones((2, 3)), entities=["a", "b"]), ShapeError),
        ("mask NaN", lambda: sf.push(ok, np.full((2, 2), np.nan), entities=["a", "b"]), ShapeError),
        ("no entities for a fleet", lambda: sf.push(np.ones(2)), ShapeError),
        ("unknown channel", lambda: sf.push(np.ones((2, 1)), entities=["a", "b"], channels=["nope"]),
         UnknownChannelError),
        ("repeated channel", lambda: sf.push(np.ones((2, 2)), entities=["a", "b"], channels=["0", "0"]),
         UnknownChannelError),
        ("unknown entity", lambda: sf.push(ok, entities=["a", "zzz"]), UnknownEntityError),
        ("repeated entity", lambda: sf.push(ok, entities=["a", "a"]), DuplicateEntityError),
        ("time backwards", lambda: sf.push(ok, timestamps=[100, 5], entities=["a", "b"]), TimeOrderError),
        ("time repeats", lambda: sf.push(ok, timestamps=[100, 50], entities=["a", "b"]), TimeOrderError),
        ("time backwards in a block", lambda: sf.push(np.ones((2, 2, 2)), timestamps=[[200, 300], [300, 250]],
                                                      entities=["a", "b"]), TimeOrderError),
        ("float timestamps", lambda: sf.push(ok, timestamps=[1.5, 2.5], entities=["a", "b"]), ShapeError),
        ("NaT timestamp", lambda: sf.push(ok, timestamps=np.array(["NaT", "NaT"], dtype="datetime64[s]"),
                                          entities=["a", "b"]), ShapeError),
        # int64's minimum is the state's "no timestamp yet": outside the range a timestamp may take
        ("min-int timestamp", lambda: sf.push(ok, timestamps=[np.iinfo(np.int64).min] * 2, entities=["a", "b"]),
         ShapeError),
        ("NaN where observed", lambda: sf.push(np.array([[1.0, np.nan], [1.0, 1.0]]), np.ones((2, 2)),
                                               entities=["a", "b"]), NonFiniteValueError),
        ("inf without a mask", lambda: sf.push(np.array([[1.0, np.inf], [1.0, 1.0]]), entities=["a", "b"]),
         NonFiniteValueError),
        ("overflows float32", lambda: sf.push(np.array([[1e300, 1.0], [1.0, 1.0]]), entities=["a", "b"]),
         NonFiniteValueError),
        ("h too long", lambda: sf.forecast(99), ArgumentError),
        ("level outside the quantile head's range", lambda: sf.forecast(quantiles=[0.01]), ArgumentError),
        ("leave unknown", lambda: sf.leave(["zzz"]), UnknownEntityError),
        ("join twice", lambda: sf.join(["a"]), DuplicateEntityError),
    ]


def test_rejected_pushes_leave_the_state_bit_identical():
    model = make_model()
    sf = StreamingForecaster(model, entities=["a", "b"])
    x, m = series(20, B=2)
    sf.push(x.numpy(), m.numpy(), timestamps=np.tile(np.arange(20) * 10, (2, 1)), entities=["a", "b"])
    sf.push(np.ones((2, 2)), timestamps=[100 * 10, 100 * 10], entities=["a", "b"])
    before = sf.state.clone()
    for name, call, err in _rejections(sf):
        with pytest.raises(err) as info:
            call()
        assert isinstance(info.value, StreamError), name
        assert sf.state.equal(before), f"{name}: the rejected call changed the state"
    # NaN with no mask is a missing value, not an error; masked-out NaN / inf are fine too
    sf.push(np.array([[np.nan, 1.0], [2.0, 3.0]]), entities=["a", "b"])
    sf.push(np.array([[np.inf, 1.0], [2.0, 3.0]]), np.array([[0, 1], [1, 1]]), entities=["a", "b"])
    assert int(sf.state.steps[0]) == 23


def test_channel_subset_and_timestamps():
    model = make_model()
    a, b = StreamingForecaster(model, channels=["temp", "load"]), StreamingForecaster(model, channels=["temp", "load"])
    t0 = np.datetime64("2024-01-01T00:00")
    for i in range(15):
        ts = t0 + np.timedelta64(i, "h")
        a.push(np.array([float(i)]), timestamps=ts, channels=["load"])
        b.push(np.array([np.nan, float(i)]), timestamps=ts)
    assert a.state.equal(b.state)
    assert int(a.state.last_time[0]) == (t0 + np.timedelta64(14, "h")).astype("datetime64[ns]").astype(np.int64)
    with pytest.raises(TimeOrderError) as err:
        a.push(np.array([1.0, 2.0]), timestamps=t0)
    # datetimes pushed as datetimes are named as datetimes; the error carries the int64 values too
    assert "2024-01-01T00:00:00 is not after the previous timestamp 2024-01-01T14:00:00" in str(err.value)
    assert err.value.entity == 0 and err.value.previous == int(a.state.last_time[0])
    assert err.value.time == t0.astype("datetime64[ns]").astype(np.int64)
    half = r"2024-01-01T00:00:00\.500000000 is not after the previous timestamp 2024-01-01T00:00:01$"
    with pytest.raises(TimeOrderError, match=half):
        sf = StreamingForecaster(model)
        sf.push(np.zeros((2, 2)), timestamps=t0 + np.array([1000, 500], dtype="timedelta64[ms]"))
    with pytest.raises(TimeOrderError, match="step 1 of the push: 7 is not after the previous timestamp 9"):
        StreamingForecaster(model).push(np.zeros((2, 2)), timestamps=[9, 7])


def test_entities_with_data_counts_buffered_and_segment_values():
    model = make_model()  # P=4, S=3: a segment is 12 steps
    sf = StreamingForecaster(model, entities=["quiet", "early", "late"])
    assert sf.entities_with_data() == []
    nan = np.full(2, np.nan)
    for i in range(14):  # "early": one value in its first step (a segment completes at 12); "late": at step 13
        vals = np.stack([nan, np.array([1.0, np.nan]) if i == 0 else nan, np.array([np.nan, 2.0]) if i == 13 else nan])
        sf.push(vals, timestamps=np.full(3, i), entities=["quiet", "early", "late"])
        assert sf.entities_with_data() == (["early"] if i < 13 else ["early", "late"])
        # a subset: the same answer for those entities, in row order whatever order they are asked in
        assert sf.entities_with_data(["late", "quiet", "early"]) == sf.entities_with_data()
        assert sf.entities_with_data(["late"]) == ([] if i < 13 else ["late"])
    assert sf.entities_with_data([]) == []
    assert int(sf.state.segments[0]) == 1


def test_save_load_bit_identical_and_atomic(tmp_path):
    model = make_model()
    x, m = series(80, B=3)
    ids = ["p1", "p2", 3]
    live = StreamingForecaster(model, entities=ids)
    live.push(x[:, :41].numpy(), m[:, :41].numpy(), timestamps=np.tile(np.arange(41), (3, 1)), entities=ids)
    path = tmp_path / "sub" / "fleet.safetensors"
    live.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["fleet.safetensors"], "temp file left behind"
    restored = StreamingForecaster.load(path, model)
    assert restored.entities == tuple(ids) and restored.state.equal(live.state)
    for sf in (live, restored):
        sf.push(x[:, 41:].numpy(), m[:, 41:].numpy(), timestamps=np.tile(np.arange(41, 80), (3, 1)), entities=ids)
    assert restored.state.equal(live.state)
    assert torch.equal(restored.forecast().quantiles, live.forecast().quantiles)
    # another model, a truncated file, a foreign file: typed errors
    with pytest.raises(ModelMismatchError):
        StreamingForecaster.load(path, make_model(seed=5))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StreamFileError) as info:
        StreamingForecaster.load(bad, model)
    assert isinstance(info.value, StateFileError)
    live.state.memory.save(tmp_path / "mem.safetensors")
    with pytest.raises(StreamFileError):
        StreamingForecaster.load(tmp_path / "mem.safetensors", model)
    with pytest.raises(StreamFileError):
        StreamingForecaster.load(tmp_path / "missing.safetensors", model)


def test_bf16_stream_keeps_the_contract_and_stays_near_fp32(tmp_path):
    # bf16 autocast for the embedder and the backbone: push granularity and save / load stay bit-exact, the state
    # stays fp32, and the forecasts stay within bf16 rounding of the fp32 stream's
    model = make_model(kind="student_t")
    T = 50
    x, m = series(T, B=3)
    ids = [0, 1, 2]

    def fleet(bf16, chunks):
        sf = StreamingForecaster(model, entities=ids, bf16=bf16)
        t, i = 0, 0
        while t < T:
            L = chunks[i % len(chunks)]
            sf.push(x[:, t:t + L].numpy(), m[:, t:t + L].numpy(), entities=ids)
            t, i = t + L, i + 1
        return sf

    block, point, ragged = fleet(True, [T]), fleet(True, [1]), fleet(True, [3, 1, 8, 2])
    for name, other in (("point", point), ("ragged", ragged)):
        assert block.state.equal(other.state), f"bf16: {name}-wise push differs from one block push"
        assert torch.equal(block.forecast().quantiles, other.forecast().quantiles), name
    assert all(a.dtype == torch.float32 for a in (*block.state.memory.A, *block.state.memory.z, block.state.rep))
    ref = fleet(False, [1])
    assert not ref.state.equal(block.state)  # bf16 did run: its rounding reaches the state
    assert_close("bf16 memory A", ref.state.memory.A[-1], block.state.memory.A[-1], 0.05)
    assert_close("bf16 forecast", ref.forecast().quantiles, block.forecast().quantiles, 0.05)
    # save with bf16, load with bf16: the restored stream continues bit for bit
    path = tmp_path / "bf16.safetensors"
    head = fleet(True, [23])
    head.save(path)
    restored = StreamingForecaster.load(path, model, bf16=True)
    y, mm = series(17, B=3, seed=4)
    for sf in (head, restored):
        sf.push(y.numpy(), mm.numpy(), entities=ids)
    assert restored.state.equal(head.state)
    assert torch.equal(restored.forecast().quantiles, head.forecast().quantiles)
    with pytest.raises(TypeError):
        StreamingForecaster(model, bf16="yes")


def test_compiled_stream_stays_within_rounding_of_the_eager_one(tmp_path):
    # compile=True: a lockstep fleet's segment updates and the forecasts' memory reads run through torch.compile;
    # their values agree with the eager stream's to float rounding (not bit for bit), and save / load works
    model = make_model(kind="student_t")
    T = 50
    x, m = series(T, B=3)
    ids = [0, 1, 2]

    def fleet(compile, upto=T, sf=None):
        sf = sf or StreamingForecaster(model, entities=ids, compile=compile)
        forecasts = []
        for t in range(int(sf.state.steps[0]), upto):  # point pushes: every segment end is a lockstep update
            sf.push(x[:, t].numpy(), m[:, t].numpy(), entities=ids)
            if t % 7 == 3:  # mostly between segment ends: the forecast reads the memory
                forecasts.append(sf.forecast().quantiles)
        return sf, forecasts

    eager, want = fleet(False)
    validate = torch.distributions.Distribution._validate_args
    compiled, got = fleet(True)
    assert set(compiled._compiled) == {"update", "read"}, "the compiled paths did not run"
    # dynamo switches torch.distributions' argument checks off process-wide when it first compiles: restored
    assert torch.distributions.Distribution._validate_args is validate
    assert len(got) == len(want) > 3
    for i, (a, b) in enumerate(zip(want, got)):
        assert_close(f"forecast {i}", a, b, 1e-5)
    for name in ("A", "z"):
        for layer, (a, b) in enumerate(zip(getattr(eager.state.memory, name), getattr(compiled.state.memory, name))):
            assert_close(f"memory {name}[{layer}]", a, b, 1e-5)
    assert_close("cached representation", eager.state.rep, compiled.state.rep, 1e-5)
    assert torch.equal(eager.state.stat_mean, compiled.state.stat_mean)  # the scaler never goes through compile
    # a state saved by a compiled stream loads into either kind and continues
    head, _ = fleet(True, upto=29)
    path = tmp_path / "compiled.safetensors"
    head.save(path)
    for flag in (True, False):
        restored, _ = fleet(flag, sf=StreamingForecaster.load(path, model, compile=flag))
        assert_close(f"restored (compile={flag}) forecast", eager.forecast().quantiles, restored.forecast().quantiles,
                     1e-5)
    with pytest.raises(TypeError):
        StreamingForecaster(model, compile=1)


def test_a_failed_compile_names_its_cause_and_leaves_the_state_bit_identical():
    model = make_model()
    x, m = series(40, B=2)
    sf = StreamingForecaster(model, entities=["a", "b"], compile=True)
    for t in range(39):
        sf.push(x[:, t].numpy(), m[:, t].numpy(), entities=["a", "b"])
    from torch._dynamo.exc import TorchDynamoException

    def broken(*args):
        raise TorchDynamoException("no C++ compiler found")

    sf._compiled["update"] = broken
    before = sf.state.clone()
    pushes = 0
    with pytest.raises(CompileError, match="torch.compile could not compile the segment update.*no C\\+\\+ compiler"):
        for t in range(39, 40 + sf.G * sf.S):  # up to the next segment end (a lockstep update)
            sf.push(x[:, t % 40].numpy(), m[:, t % 40].numpy(), entities=["a", "b"])
            before = sf.state.clone()
            pushes += 1
    assert pushes < sf.G * sf.S
    assert sf.state.equal(before)


@pytest.mark.parametrize("window", [None, 7])
def test_merging_an_empty_block_changes_no_bit_of_the_statistics(window):
    # what forecast's shortcut right after a segment end relies on: the stored statistics are the merged ones
    from armt_ts.stream import _block_stats, _forget, _merge_stats

    g = torch.Generator().manual_seed(0)
    n = torch.randint(0, 50, (4, 3), generator=g).double()
    stats = (n, torch.randn(4, 3, generator=g, dtype=torch.float64) * 10,
             torch.rand(4, 3, generator=g, dtype=torch.float64) * n, torch.rand(4, 3, generator=g, dtype=torch.float64))
    empty = torch.zeros(4, 5, 3, dtype=torch.float64)
    block = _block_stats(empty, empty)
    merged = _merge_stats(_forget(stats, block[0], window), block)
    for name, a, b in zip(("count", "mean", "M2", "sum|x|"), stats, merged):
        assert torch.equal(a, b), name


def test_state_size_does_not_grow_with_stream_length():
    model = make_model()
    sf = StreamingForecaster(model)
    sizes = []
    for n in (10, 100, 1000):
        x, m = series(n, seed=n)
        sf.push(x[0].numpy(), m[0].numpy())
        sizes.append(sf.state.nbytes())
    assert len(set(sizes)) == 1
    assert torch.isfinite(sf.forecast().quantiles).all()


@pytest.mark.parametrize("scaling", ["mean", "none"])
def test_other_scalers_follow_the_contract(scaling):
    model = make_model(scaling=scaling)
    x, m = series(45)
    memory, _ = reference(model, x, m)
    sf = pushed(model, x, m, [1])
    assert sf.state.equal(pushed(model, x, m, [45]).state)
    assert_close("A[1]", memory.A[1], sf.state.memory.A[1], 1e-5)


def test_empty_pushes_and_new_entities_forecast():
    model = make_model()
    sf = StreamingForecaster(model, entities=["a"])
    before = sf.state.clone()
    assert sf.push(np.zeros((0, 2)), entities="a") == 0
    assert sf.push(np.zeros((0, 2)), entities=[]) == 0
    assert sf.state.equal(before)
    fc = sf.forecast()  # nothing pushed yet: a forecast from an all-missing patch, still finite
    assert torch.isfinite(fc.quantiles).all()


def test_staleness_counts_steps_since_the_last_memory_write():
    model = make_model()
    sf = StreamingForecaster(model, entities=["a", "b"])
    x, m = series(40, B=1)
    seen, completions = [], []
    for t in range(40):
        done = sf.push(x[0, t].numpy(), m[0, t].numpy(), entities="a")
        before = sf.state.clone()
        stale = sf.staleness()
        assert sf.state.equal(before)  # a pure read
        assert stale["b"] == -1  # nothing pushed, nothing written
        seen.append(stale["a"])
        if done:
            completions.append(t)
    assert completions, "40 steps should complete at least one segment"
    assert all(s == -1 for s in seen[: completions[0]])  # before the first write
    for t in range(completions[0], 40):
        last = max(c for c in completions if c <= t)
        assert seen[t] == t - last  # 0 right after a write, then one more per buffered step
    assert sf.staleness(["a"]) == {"a": seen[-1]}
    with pytest.raises(UnknownEntityError):
        sf.staleness(["nobody"])


def test_lockstep_fleet_in_chunks_with_deferred_writes_equals_separate_streams(monkeypatch):
    # the lockstep update defers its writes chunk by chunk and the commit applies them to the state in place (no
    # second memory); with chunks of 2 rows a fleet of 5 runs three chunks, and joins / leaves come between updates
    import armt_ts.stream as stream_mod

    monkeypatch.setattr(stream_mod, "FLEET_CHUNK", 2)
    model = make_model()
    N, T = 5, 40
    x, m = series(T, B=N)
    fleet = StreamingForecaster(model, entities=list(range(N)))
    ptrs = None
    for t in range(T):
        fleet.push(x[:, t].numpy(), m[:, t].numpy(), entities=list(range(N)))
        if t == 5:
            ptrs = [a.data_ptr() for a in (*fleet.state.memory.A, *fleet.state.memory.z)]
    assert int(fleet.state.segments.min()) >= 3
    assert ptrs == [a.data_ptr() for a in (*fleet.state.memory.A, *fleet.state.memory.z)]  # updated in place
    _assert_each_entity_equals_its_own_stream(model, fleet, x, m)
    # leave and join between updates: the survivors keep their state
    kept = fleet.state.select(torch.tensor([0, 2, 4])).clone()
    fleet.leave([1, 3])
    for k, v in kept.tensors().items():
        assert torch.equal(v, fleet.state.tensors()[k]), k
    y, mm = series(12, B=4, seed=5)
    for t in range(12):  # the three survivors are still in lockstep: deferred writes on the 3-row state
        fleet.push(y[:3, t].numpy(), mm[:3, t].numpy(), entities=[0, 2, 4])
    for e, row in zip([0, 2, 4], range(3)):
        solo = pushed(model, torch.cat([x[e:e + 1], y[row:row + 1]], 1),
                      torch.cat([m[e:e + 1], mm[row:row + 1]], 1), [1])
        assert_close(f"entity {e} after leave: A", solo.state.memory.A[1], fleet.state.memory.A[1][row:row + 1], 1e-5)
    fleet.join(["new"])  # a newcomer is out of step: its groups take the allocating path
    for t in range(12):
        fleet.push(y[:, t].numpy(), mm[:, t].numpy(), entities=[0, 2, 4, "new"])
    assert all(bool(torch.isfinite(a).all()) for a in fleet.state.memory.A)


# --- scaler_window: statistics that forget, segment by segment ---------------------------------------------------


@pytest.mark.parametrize("mode,P,S", [("independent", 4, 3), ("mixing", 5, 2)])
@pytest.mark.parametrize("T", [23, 100])
def test_scaler_window_keeps_the_contract(mode, P, S, T):
    """With scaler_window, block / segment / point / ragged pushes are bit-identical, and the state equals the
    recurrence computed directly with weighted statistics."""
    model = make_model(mode, P=P, S=S)
    x, m = series(T, seed=T)
    window = 20
    block = pushed(model, x, m, [T], scaler_window=window)
    for chunks in ([block.G * S], [1], [3, 1, 8, 2]):
        other = pushed(model, x, m, chunks, scaler_window=window)
        assert block.state.equal(other.state), chunks
        assert torch.equal(block.forecast().quantiles, other.forecast().quantiles), chunks
    memory, n_seg = reference(model, x, m, window=window)
    assert int(block.state.segments[0]) == n_seg >= 1
    for l in range(memory.num_layers):
        assert_close(f"A[{l}]", memory.A[l], block.state.memory.A[l], 1e-5)
        assert_close(f"z[{l}]", memory.z[l], block.state.memory.z[l], 1e-5)
    # forgetting changes the statistics, hence the state: the test above is not the whole-history one
    whole = pushed(model, x, m, [T])
    assert not torch.allclose(whole.state.memory.A[-1], block.state.memory.A[-1], atol=1e-6)


def test_scaler_window_follows_a_level_shift_that_the_whole_history_averages_away():
    model = make_model()
    T = 600
    x = torch.zeros(1, T, 2)
    x[:, T // 2:] = 100.0  # a step change halfway
    x += torch.randn(1, T, 2, generator=torch.Generator().manual_seed(0))
    m = torch.ones(1, T, 2, dtype=torch.bool)
    window = 30
    forgets = pushed(model, x, m, [T], scaler_window=window)
    whole = pushed(model, x, m, [T])
    assert float(whole.state.stat_mean.min()) < 60  # the mean of both halves
    assert float(forgets.state.stat_mean.min()) > 99  # the recent level: 300 steps ago weighs ~exp(-10)
    # the effective count stays bounded (a segment's steps / (1 - keep)) while the whole history's grows
    GS = forgets.G * forgets.S
    assert float(forgets.state.stat_n.max()) < (GS + model.config.patch.patch_len) / (1 - np.exp(-GS / window))
    assert float(whole.state.stat_n.min()) > 550


def test_scaler_window_keeps_a_channels_statistics_through_an_outage():
    """The statistics forget as new values arrive, not as time passes: 2000 steps with one channel missing leave
    that channel's statistics (and so its forecast's spread) as they were; the other channel's move on."""
    model = make_model()
    x, m = series(2600, seed=3, p_missing=0.0)
    T0 = 604  # a segment end (10 + 66 * 9 steps): every value before it is in the statistics
    m[:, T0:, 1] = False  # channel 1 goes dark
    sf = pushed(model, x[:, :T0], m[:, :T0], [T0], scaler_window=30)
    before = {k: getattr(sf.state, k).clone() for k in ("stat_n", "stat_mean", "stat_m2")}
    spread = sf.forecast().quantiles[0, :, 1, -1] - sf.forecast().quantiles[0, :, 1, 0]
    sf.push(x[0, T0:].numpy(), m[0, T0:].numpy())
    for k, old in before.items():
        assert torch.equal(getattr(sf.state, k)[:, 1], old[:, 1]), k
        assert not torch.equal(getattr(sf.state, k)[:, 0], old[:, 0]), k
    after = sf.forecast().quantiles[0, :, 1, -1] - sf.forecast().quantiles[0, :, 1, 0]
    assert float(after.min()) > 0.2 * float(spread.min())  # no collapse toward the scaler's minimum scale


def test_scaler_window_is_validated_saved_and_restored(tmp_path):
    model = make_model()
    for bad in (0, -3, 2.5, True, "30"):
        with pytest.raises(ValueError, match="scaler_window"):
            StreamingForecaster(model, scaler_window=bad)
    x, m = series(60)
    live = pushed(model, x[:, :37], m[:, :37], [37], scaler_window=25)
    path = tmp_path / "s.safetensors"
    live.save(path)
    restored = StreamingForecaster.load(path, model)
    assert restored.scaler_window == 25 and restored.state.equal(live.state)
    for sf in (live, restored):
        sf.push(x[0, 37:].numpy(), m[0, 37:].numpy())
    assert restored.state.equal(live.state)
    assert torch.equal(restored.forecast().quantiles, live.forecast().quantiles)
    # a file written before scaler_window existed has no such key: the whole history, as it was made
    from armt_ts.state import atomic_save_safetensors, load_safetensors
    tensors, meta = load_safetensors(path, "armt_ts.StreamState")
    for value, ok in ((None, True), (-1, False), ("x", False)):
        edited = {k: v for k, v in meta.items() if k != "scaler_window"}
        if value is not None:
            edited["scaler_window"] = value
        atomic_save_safetensors(tensors, tmp_path / "e.safetensors", edited)
        if ok:
            assert StreamingForecaster.load(tmp_path / "e.safetensors", model).scaler_window is None
        else:
            with pytest.raises(StreamFileError, match="scaler_window"):
                StreamingForecaster.load(tmp_path / "e.safetensors", model)


def test_timestamps_outside_int64_nanoseconds_are_rejected_not_wrapped():
    """numpy converts datetime64 to nanoseconds and uint64 to int64 by wrapping around: a date after 2262 or a
    uint64 >= 2**63 would become a time far in the past. Both are rejected, the state unchanged."""
    model = make_model()
    sf = StreamingForecaster(model)
    sf.push(np.ones(2), timestamps=np.datetime64("2262-01-01", "D"))  # inside the range: kept exactly
    assert int(sf.state.last_time[0]) == np.datetime64("2262-01-01", "D").astype("datetime64[ns]").astype(np.int64)
    before = sf.state.clone()
    cases = [(np.array(["2300-01-01"], "datetime64[D]"), r"2300-01-01 is not a whole nanosecond between 1677"),
             (np.array(["1600-01-01"], "datetime64[D]"), r"1600-01-01 is not a whole nanosecond"),
             (np.array(1, "datetime64[as]"), r"is not a whole nanosecond"),
             (np.uint64(2**63 + 5), r"9223372036854775813 is outside the stored int64 range"),
             (np.int64(-2**63), r"-9223372036854775808 is outside the stored int64 range")]
    for ts, match in cases:
        with pytest.raises(ShapeError, match=match):
            sf.push(np.ones(2), timestamps=ts)
        assert sf.state.equal(before)
    assert int(sf.state.steps[0]) == 1
    sf.push(np.ones(2), timestamps=np.datetime64("2262-01-02", "D"))  # the next day is still accepted
    assert int(sf.state.steps[0]) == 2


def test_bfloat16_tensors_are_pushed_as_their_float32_values():
    model = make_model()
    x = torch.tensor([[0.5, -1.25], [2.0, 3.0]])
    a, b = StreamingForecaster(model), StreamingForecaster(model)
    a.push(x.to(torch.bfloat16), torch.ones(2, 2, dtype=torch.bfloat16), timestamps=torch.tensor([1, 2]))
    b.push(x.numpy(), timestamps=[1, 2])  # these values are exact in bfloat16
    assert a.state.equal(b.state)
    with pytest.raises(ShapeError, match="values: tensor of dtype torch.float8_e4m3fn"):
        a.push(x.to(torch.float8_e4m3fn))


def test_forecast_quantiles_of_the_wrong_type_raise_argument_error():
    sf = StreamingForecaster(make_model())
    for bad in (0.5, None, ["x"], [object()]):
        with pytest.raises(ArgumentError, match="quantiles: expected a sequence of levels"):
            sf.forecast(quantiles=bad)


def test_load_names_the_file_for_another_channel_count_or_a_duplicated_entity(tmp_path):
    from armt_ts.state import atomic_save_safetensors, load_safetensors
    model = make_model()
    sf = StreamingForecaster(model, entities=["a", "b"])
    sf.push(np.ones((2, 2)), entities=["a", "b"])
    path = tmp_path / "s.safetensors"
    sf.save(path)
    for C in (1, 3):
        with pytest.raises(ModelMismatchError, match=f"s.safetensors: the state has 2 channels, the model {C}"):
            StreamingForecaster.load(path, make_model(C=C))
    tensors, meta = load_safetensors(path, "armt_ts.StreamState")
    atomic_save_safetensors(tensors, tmp_path / "dup.safetensors", {**meta, "entities": ["a", "a"]})
    with pytest.raises(StreamFileError, match="dup.safetensors: entity 'a' is listed twice"):
        StreamingForecaster.load(tmp_path / "dup.safetensors", model)
    atomic_save_safetensors(tensors, tmp_path / "ch.safetensors", {**meta, "channels": ["x", "x"]})
    with pytest.raises(StreamFileError, match="ch.safetensors: channels: need 2 distinct names"):
        StreamingForecaster.load(tmp_path / "ch.safetensors", model)


def test_datetimes_within_a_unit_of_the_earliest_nanosecond_are_accepted():
    """numpy's conversion of nanoseconds back to days (hours, seconds, ...) overflows within one unit of int64's
    minimum, so 1677-09-22 (inside the documented range) was refused as "not a whole nanosecond"."""
    sf = StreamingForecaster(make_model())
    for ts in (np.datetime64("1677-09-21T00:12:44", "s"), np.datetime64("1677-09-21T01", "h"),
               np.datetime64("1677-09-22", "D"), np.datetime64("1677-09-23", "D")):
        sf.push(np.ones(2), timestamps=ts)
        assert int(sf.state.last_time[0]) == int(ts.astype("datetime64[ns]").astype(np.int64)), ts
    for ts in (np.datetime64("1677-09-21", "D"), np.datetime64("1677-09-21T00:12:43", "s")):  # before the range
        with pytest.raises(ShapeError, match="is not a whole nanosecond"):
            StreamingForecaster(make_model()).push(np.ones(2), timestamps=ts)


def test_entities_joining_one_at_a_time_do_not_copy_the_fleet_at_every_join(tmp_path):
    """A long-layout file's ids join as they appear, one per join: each join used to copy the whole fleet's state
    (2000 entities of the CLI's model: 89 s). The rows now grow in place, so the state moves O(log N) times."""
    model = make_model()
    rng = np.random.default_rng(0)
    sf = StreamingForecaster(model, entities=[])
    moves, ptr = 0, None
    for e in range(300):
        sf.join([e])
        sf.push(rng.normal(size=(int(rng.integers(1, 12)), 2)), entities=e)
        moves += sf.state.memory.A[0].data_ptr() != ptr
        ptr = sf.state.memory.A[0].data_ptr()
    assert moves <= 40, f"the fleet's memory moved {moves} times in 300 joins"
    ref = StreamingForecaster(model, entities=list(range(300)))
    rng = np.random.default_rng(0)
    for e in range(300):
        ref.push(rng.normal(size=(int(rng.integers(1, 12)), 2)), entities=e)
    assert sf.state.equal(ref.state)
    sf.leave([3, 150])
    sf.join(["x", 3])
    ref.leave([3, 150])
    ref.join(["x", 3])
    assert sf.state.equal(ref.state) and torch.equal(sf.forecast().quantiles, ref.forecast().quantiles)
    sf.save(tmp_path / "s.safetensors")
    assert StreamingForecaster.load(tmp_path / "s.safetensors", model).state.equal(ref.state)

"""Diagonal batching (armt_ts/schedule.py) against the sequential schedule, for every supported config option, segment
counts that do not divide evenly, with and without an initial state:

- outputs, final state and gradients within 1e-5 (fp32). One configuration with random weights is ill-conditioned
  (beta_per_channel: a 1-ulp change of the input moves the sequential schedule's own state by ~1e-4); there the
  bound is the sequential schedule's own 1-ulp sensitivity (the largest over several perturbations), measured in
  the test;
- exactness whatever the conditioning: with the blocks in float64 the schedules agree to 1e-12 for every option over
  ten random weight draws (float32 alone cannot show it: some draws amplify the blocks' rounding past 1e-5);
- ARMT.forward's "auto" choice; refusals where the diagonal schedule cannot run.
"""

import pytest
import torch

from armt_ts import ARMT, ARMTConfig, MemoryState
from armt_ts.schedule import diagonal_supported, prefer_diagonal, run_diagonal, run_sequential
from armt_ts.testing import assert_close, relative_error

TOL = 1e-5


def make(seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(d_model=32, n_heads=2, d_ff=64, segment_length=6, num_mem_tokens=3, d_mem=8) | kw
    cfg = ARMTConfig(**kw)
    model = ARMT(cfg).eval()
    with torch.no_grad():  # W_v = 0 (the init) would make every read add 0 and hide schedule errors
        for mem in model.memories:
            mem.W_v.weight.normal_(std=0.05)
    return model


def sensitivity(model, x, draws=4):
    """Relative change of the sequential schedule's output and state under 1-ulp changes of the input: x scaled by
    1 +- 2^-23, and ``draws`` seeded patterns of +-1 ulp per element; the largest. One draw is too few for a noise
    floor: for beta_per_channel and 20 random inputs, the diagonal schedule's difference exceeded the single scaling's
    estimate for 2 inputs before ops.fused computed its normalisers by product and sum, and for 3 after."""
    g = torch.Generator().manual_seed(0)
    out = 0.0
    with torch.no_grad():
        y1, s1 = run_sequential(model, x, None)
        for i in range(draws + 2):
            if i < 2:
                f = 1 + (-1) ** i * 2**-23
            else:
                f = 1 + (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * 2**-23
            y2, s2 = run_sequential(model, x * f, None)
            out = max([out, relative_error(y1, y2)] + [relative_error(a, b) for a, b in zip(s1.A + s1.z, s2.A + s2.z)])
    return out


def check(model, x, state=None, grads=False, tol=TOL):
    params = [p for p in model.parameters()]
    x1 = x.clone().requires_grad_(grads)
    x2 = x.clone().requires_grad_(grads)
    s1 = None if state is None else MemoryState(tuple(a.clone().requires_grad_(grads) for a in state.A), state.z)
    s2 = None if state is None else MemoryState(tuple(a.clone().requires_grad_(grads) for a in state.A), state.z)
    y1, f1 = run_sequential(model, x1, s1)
    y2, f2 = run_diagonal(model, x2, s2)
    assert_close("y", y1, y2, tol)
    for l in range(model.config.n_layers):
        assert_close(f"A[{l}]", f1.A[l], f2.A[l], tol)
        assert_close(f"z[{l}]", f1.z[l], f2.z[l], tol)
    if not grads:
        return
    g = torch.Generator().manual_seed(1)
    w = torch.randn(y1.shape, generator=g)
    loss1 = (y1 * w).sum() + sum((a * a).sum() for a in f1.A)
    loss2 = (y2 * w).sum() + sum((a * a).sum() for a in f2.A)
    g1 = torch.autograd.grad(loss1, [x1] + params + ([] if state is None else list(s1.A)), allow_unused=True)
    g2 = torch.autograd.grad(loss2, [x2] + params + ([] if state is None else list(s2.A)), allow_unused=True)
    names = ["x"] + [n for n, _ in model.named_parameters()] + ([] if state is None else ["A0", "A1", "A2"][:len(s1.A)])
    for name, a, b in zip(names, g1, g2):
        if a is None or b is None:
            assert a is None and b is None, f"grad {name}: present in one schedule only"
            continue
        assert_close(f"grad {name}", a, b, 1e-4)


@pytest.mark.parametrize("length", [6, 7, 6 * 5, 6 * 16 + 1])
@pytest.mark.parametrize("B", [1, 3])
def test_diagonal_equals_sequential(length, B):
    model = make()
    check(model, torch.randn(B, length, 32))


# every option the diagonal schedule supports ({} is the default configuration)
OPTIONS = [dict(), dict(n_layers=1), dict(n_layers=3), dict(n_layers=4), dict(memory_heads=2), dict(phi_l2norm=True),
           dict(beta_per_channel=True), dict(positional=False), dict(ops_backend="naive"), dict(segment_length=5),
           dict(read_norm_cap=0.05), dict(vbar_floor=1.0)]


def test_the_read_cap_binds_in_the_options_test():
    # read_norm_cap=0.05 above must change the outputs, or its schedule test would test nothing new
    x = torch.randn(2, 6 * 7 + 2, 32)
    with torch.no_grad():
        assert not torch.allclose(run_sequential(make(), x, None)[0], run_sequential(make(read_norm_cap=0.05), x,
                                                                                     None)[0], atol=1e-4)


def test_the_write_floor_binds_in_the_options_test():
    # vbar_floor=1.0 above must change the outputs too
    x = torch.randn(2, 6 * 7 + 2, 32)
    with torch.no_grad():
        assert not torch.allclose(run_sequential(make(), x, None)[0], run_sequential(make(vbar_floor=1.0), x,
                                                                                     None)[0], atol=1e-4)


@pytest.mark.parametrize("kw", OPTIONS[1:])
def test_diagonal_equals_sequential_options(kw):
    model = make(**kw)
    x = torch.randn(2, 6 * 7 + 2, 32)
    check(model, x, tol=max(TOL, sensitivity(model, x)) if kw.get("beta_per_channel") else TOL)


@pytest.mark.parametrize("kw", OPTIONS)
def test_the_schedules_differ_only_by_the_blocks_float32_rounding(kw):
    """Exactness, whatever the conditioning: with the transformer blocks in float64 (``model.double()``; the memory
    math casts to float32 either way) the schedules agree to float64 rounding for every option and ten random weight
    draws and inputs, so the memory's float32 arithmetic is the same, operation for operation, in both. In float32
    the same draws differ by up to ~3e-4 relative (beta_per_channel; ~1e-5-6e-5 elsewhere, on this CPU): the
    blocks' rounding, amplified by the read's division, not a schedule error. The float32 tests above use seeds
    where 1e-5 holds (or the measured sensitivity, for beta_per_channel)."""
    for seed in range(10):
        model = make(seed=seed, **kw).double()
        x = torch.randn(2, 6 * 7 + 2, 32, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        with torch.no_grad():
            y1, s1 = run_sequential(model, x, None)
            y2, s2 = run_diagonal(model, x, None)
        assert y1.dtype == torch.float64 and s1.A[0].dtype == torch.float32  # the memory math stays fp32
        for name, a, b in [("y", y1, y2)] + [(f"state {i}", a, b) for i, (a, b) in enumerate(zip(s1.A + s1.z,
                                                                                                  s2.A + s2.z))]:
            assert relative_error(a, b) <= 1e-12, f"{kw} seed {seed} {name}: {relative_error(a, b):.2e}"


def test_diagonal_continues_from_a_state_and_gradients_match():
    model = make(n_layers=3)
    x = torch.randn(2, 6 * 4 + 3, 32)
    with torch.no_grad():
        _, state = run_sequential(model, torch.randn(2, 20, 32), None)
    check(model, x, state, grads=True)
    check(make(seed=3), torch.randn(2, 6 * 5, 32), None, grads=True)


def test_tbptt_gradients_match():
    model = make(tbptt_segments=2)
    check(model, torch.randn(2, 6 * 6 + 1, 32), grads=True)


def test_forward_dispatch_and_auto_rule():
    model = make()
    x = torch.randn(1, 6 * 8, 32)
    assert not prefer_diagonal(model, x)  # autograd recording (training): sequential
    with torch.no_grad():
        assert prefer_diagonal(model, x)
        assert not prefer_diagonal(model, x[:, :6])  # one segment: nothing to overlap
        assert not prefer_diagonal(model, torch.randn(64, 6 * 8, 32))  # large batch: sequential is faster
        assert not prefer_diagonal(make(n_layers=1), x)
    with torch.no_grad():
        y_auto, s_auto = model(x)
        y_diag, _ = run_diagonal(model, x, None)
        seq = ARMT(model.config.replace(schedule="sequential"))
        seq.load_state_dict(model.state_dict())
        y_seq, _ = seq(x)
    assert torch.equal(y_auto, y_diag)  # auto took the diagonal path
    assert_close("auto vs sequential", y_seq, y_auto, TOL)
    for s in (model.segment_step(x[:, :6], None)[1], s_auto):
        assert isinstance(s, MemoryState)


def test_diagonal_refuses_what_it_cannot_run():
    model = make(dropout=0.1).train()
    assert "dropout" in diagonal_supported(model)
    with torch.no_grad():
        assert not prefer_diagonal(model, torch.randn(1, 6 * 4, 32))
    with pytest.raises(ValueError, match="dropout"):
        run_diagonal(model, torch.randn(1, 6 * 4, 32), None)
    forced = make(schedule="diagonal", dropout=0.1).train()
    with pytest.raises(ValueError, match="dropout"):
        forced(torch.randn(1, 6 * 4, 32))
    assert diagonal_supported(make(dropout=0.1).eval()) is None  # eval: dropout is off


def test_keyed_memory_stays_sequential():
    model = make(key_mode="identity", key_buckets=8)
    assert "key_mode" in diagonal_supported(model)
    x = torch.randn(2, 6 * 3, 32)
    with torch.no_grad():
        assert not prefer_diagonal(model, x, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("schedule", [run_sequential, run_diagonal])
@pytest.mark.parametrize("length", [6 * 4, 6 * 3 + 2])
def test_outputs_keeps_the_last_rows_of_every_segment(schedule, length):
    model = make(n_layers=3)
    T = model.config.segment_length
    x = torch.randn(2, length, 32, generator=torch.Generator().manual_seed(5))
    n_seg = -(-length // T)
    with torch.no_grad():
        y_full, s_full = run_sequential(model, x, None)
        k = min(T, length - (n_seg - 1) * T)  # at most the last segment's rows
        for kk in sorted({0, 1, k}):
            y, s = schedule(model, x, None, outputs=kk)
            ends = [min((i + 1) * T, length) for i in range(n_seg)]
            want = torch.cat([y_full[:, e - kk:e] for e in ends], dim=1)
            assert_close(f"y outputs={kk}", want, y, TOL)
            for l in range(3):
                assert_close(f"A[{l}]", s_full.A[l], s.A[l], TOL)
                assert_close(f"z[{l}]", s_full.z[l], s.z[l], TOL)
            y_fwd, _ = model(x, None, outputs=kk)  # ARMT.forward passes it on, whichever schedule it picks
            assert_close("forward", want, y_fwd, TOL)
        with pytest.raises(ValueError, match="outputs"):
            schedule(model, x, None, outputs=k + 1 if length % T else T + 1)

"""ARMT backbone: the paper's invariants, state as a value, config flags, and the peers."""

import dataclasses

import pytest
import torch

from armt_ts import ARMT, ARMTConfig, ConfigError, MemoryState, StateFileError
from armt_ts.peers import RMT, GRUPeer, gru_params
from armt_ts.testing import assert_close

SMALL = ARMTConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, segment_length=5, num_mem_tokens=3, d_mem=8)
FLAGS = {
    "paper": {},
    "multi_head": {"memory_heads": 4},
    "l2norm_phi": {"phi_l2norm": True},
    "beta_per_channel": {"beta_per_channel": True},
    "all": {"memory_heads": 2, "phi_l2norm": True, "beta_per_channel": True},
}


def _model(seed=0, **flags) -> ARMT:
    """A model whose memory is live: W_v random instead of zero (the untrained default reads 0)."""
    torch.manual_seed(seed)
    model = ARMT(SMALL.replace(**flags))
    for memory in model.memories:
        torch.nn.init.normal_(memory.W_v.weight, std=0.3)
    return model


def test_untrained_model_equals_transformer_without_memory():
    # a: W_v = 0 -> every write stores zero values -> every read adds exactly 0 to the content rows
    torch.manual_seed(0)
    model = ARMT(SMALL)
    x = torch.randn(2, 23, SMALL.d_model)
    y, state = model(x)
    assert_close("content outputs", model.forward_without_memory(x), y, 1e-5)
    assert all(a.abs().max() == 0 for a in state.A)
    assert all(zz.abs().max() > 0 for zz in state.z)


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
@pytest.mark.parametrize("length", [1, 5, 13, 23])
def test_whole_sequence_equals_segment_by_segment(flags, length):
    # d: lengths that do not divide segment_length (5) included
    model = _model(**flags)
    x = torch.randn(2, length, SMALL.d_model)
    y_full, state_full = model(x)
    ys, state = [], None
    for start in range(0, length, SMALL.segment_length):
        y, state = model(x[:, start : start + SMALL.segment_length], state)
        ys.append(y)
    assert_close("outputs", y_full, torch.cat(ys, dim=1), 1e-6)
    for l in range(SMALL.n_layers):
        assert_close(f"A[{l}]", state_full.A[l], state.A[l], 1e-6)
        assert_close(f"z[{l}]", state_full.z[l], state.z[l], 1e-6)
    # and splitting at arbitrary segment-aligned points with a carried state is the same again
    if length > SMALL.segment_length:
        y1, s1 = model(x[:, :5], None)
        y2, s2 = model(x[:, 5:], s1)
        assert_close("two calls", y_full, torch.cat([y1, y2], dim=1), 1e-6)


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_naive_backend_equals_fused_backend(flags):
    fused_model = _model(**flags)
    naive_model = ARMT(fused_model.config.replace(ops_backend="naive"))
    naive_model.load_state_dict(fused_model.state_dict())
    x = torch.randn(2, 12, SMALL.d_model, requires_grad=True)
    y_f, s_f = fused_model(x)
    (y_f.square().mean() + sum(a.sum() for a in s_f.A)).backward()
    g_f = x.grad.clone()
    x.grad = None
    y_n, s_n = naive_model(x)
    (y_n.square().mean() + sum(a.sum() for a in s_n.A)).backward()
    assert_close("outputs", y_n, y_f, 1e-5)
    assert_close("A[-1]", s_n.A[-1], s_f.A[-1], 1e-5)
    assert_close("grad x", x.grad, g_f, 1e-4)
    for (name, p_f), p_n in zip(fused_model.named_parameters(), naive_model.parameters()):
        assert_close(f"grad {name}", p_n.grad, p_f.grad, 1e-4)


def test_loss_on_last_segment_reaches_first_segment_inputs():
    # e: gradients flow through (A, z) across all segments
    model = _model()
    x = torch.randn(2, 4 * SMALL.segment_length, SMALL.d_model, requires_grad=True)
    y, _ = model(x)
    y[:, -SMALL.segment_length :].square().sum().backward()
    first = x.grad[:, : SMALL.segment_length]
    assert first.abs().max() > 1e-6, "no gradient reached the first segment through the memory"


def test_gradient_with_respect_to_initial_state():
    model = _model()
    init = MemoryState.zeros(SMALL, 2)
    init = MemoryState(tuple(a.normal_().requires_grad_() for a in init.A), tuple(z.uniform_(0.5, 1).requires_grad_() for z in init.z))
    y, _ = model(torch.randn(2, 7, SMALL.d_model), init)
    y.square().sum().backward()
    assert all(a.grad is not None and a.grad.abs().max() > 0 for a in init.A)
    assert all(z.grad is not None and z.grad.abs().max() > 0 for z in init.z)


def test_truncated_backprop_cuts_gradient_but_not_values():
    model = _model()
    tbptt = ARMT(SMALL.replace(tbptt_segments=2))
    tbptt.load_state_dict(model.state_dict())
    x = torch.randn(2, 4 * SMALL.segment_length, SMALL.d_model, requires_grad=True)
    y_full, _ = model(x)
    y_tb, _ = tbptt(x)
    assert torch.equal(y_full, y_tb)
    y_tb[:, -SMALL.segment_length :].sum().backward()
    T = SMALL.segment_length
    # the state is detached before segment 2: segments 0-1 get no gradient from segment 3, segment 2 does
    assert x.grad[:, : 2 * T].abs().max() == 0
    assert x.grad[:, 2 * T : 3 * T].abs().max() > 0


def test_multi_head_memory_has_separate_heads():
    model = _model(memory_heads=4)
    _, state = model(torch.randn(2, 11, SMALL.d_model))
    assert state.A[0].shape == (2, 4, SMALL.d_key, SMALL.d_model // 4)
    assert state.z[0].shape == (2, 4, SMALL.d_key)
    assert not torch.equal(state.z[0][:, 0], state.z[0][:, 1])


def test_memory_state_save_load_is_bit_exact(tmp_path):
    # f: safetensors round trip, atomic write leaves no temp files
    _, state = _model()(torch.randn(3, 17, SMALL.d_model))
    path = tmp_path / "sub" / "state.safetensors"
    state.save(path, extra={"note": "test"})
    loaded = MemoryState.load(path)
    assert loaded.equal(state)
    assert [p.name for p in path.parent.iterdir()] == ["state.safetensors"]
    # and the restored state continues exactly like the original
    model = _model()
    x = torch.randn(3, 8, SMALL.d_model)
    assert torch.equal(model(x, state)[0], model(x, loaded)[0])


def test_memory_state_bad_files_fail_clearly(tmp_path):
    _, state = _model()(torch.randn(1, 6, SMALL.d_model))
    path = tmp_path / "state.safetensors"
    state.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateFileError, match="truncated.safetensors"):
        MemoryState.load(tmp_path / "truncated.safetensors")
    with pytest.raises(StateFileError, match="no such file"):
        MemoryState.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"A.0": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(StateFileError, match="meta"):
        MemoryState.load(tmp_path / "foreign.safetensors")


def test_state_detach_and_to_return_new_values():
    _, state = _model()(torch.randn(1, 6, SMALL.d_model))
    assert state.A[0].requires_grad
    detached = state.detach()
    assert not detached.A[0].requires_grad and state.A[0].requires_grad
    doubled = state.to(torch.float64)
    assert doubled.A[0].dtype == torch.float64 and state.A[0].dtype == torch.float32
    assert state.nbytes() == sum(t.numel() * 4 for t in (*state.A, *state.z))


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="n_heads"):
        ARMTConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="num_mem_tokens"):
        ARMTConfig(num_mem_tokens=0)
    with pytest.raises(ConfigError, match="tbptt_segments"):
        ARMTConfig(tbptt_segments=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.d_model = 8  # type: ignore[misc]
    assert ARMTConfig.from_dict(SMALL.to_dict()) == SMALL


def test_segment_longer_than_segment_length_is_rejected():
    with pytest.raises(ValueError, match="segment_length"):
        _model().segment_step(torch.randn(1, SMALL.segment_length + 1, SMALL.d_model), None)


def test_rmt_peer_segment_by_segment_and_memory_flow():
    torch.manual_seed(0)
    model = RMT(SMALL)
    x = torch.randn(2, 13, SMALL.d_model, requires_grad=True)
    y_full, mem_full = model(x)
    y1, m1 = model(x[:, :5])
    y2, m2 = model(x[:, 5:], m1)
    assert_close("rmt outputs", y_full, torch.cat([y1, y2], 1), 1e-6)
    assert_close("rmt memory", mem_full, m2, 1e-6)
    assert mem_full.shape == (2, SMALL.num_mem_tokens, SMALL.d_model)
    y_full[:, -3:].sum().backward()
    assert x.grad[:, :5].abs().max() > 0


def test_gru_peer_matches_parameter_budget_and_carries_state():
    target = sum(p.numel() for p in ARMT(SMALL).parameters())
    gru = GRUPeer.matched(SMALL, target)
    n = sum(p.numel() for p in gru.parameters())
    assert n == gru_params(SMALL.d_model, gru.gru.hidden_size, SMALL.n_layers)
    assert abs(n - target) / target < 0.02
    x = torch.randn(2, 9, SMALL.d_model)
    y, h = gru(x)
    y1, h1 = gru(x[:, :4])
    y2, h2 = gru(x[:, 4:], h1)
    assert_close("gru outputs", y, torch.cat([y1, y2], 1), 1e-5)
    assert_close("gru state", h, h2, 1e-5)


def test_bf16_autocast_keeps_the_memory_state_fp32():
    model = _model()
    x = torch.randn(2, 12, SMALL.d_model)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y, state = model(x)
    assert all(a.dtype == torch.float32 for a in state.A) and all(z.dtype == torch.float32 for z in state.z)
    y_ref, state_ref = model(x)
    assert torch.isfinite(y).all()
    # bf16 has ~3 significant digits; the fp32 run is the reference
    assert_close("bf16 outputs", y_ref, y.float(), 0.1)
    assert_close("bf16 A[-1]", state_ref.A[-1], state.A[-1], 0.1)


@pytest.mark.parametrize("q_from", [0, 3])
def test_attention_under_cpu_autocast_runs_in_fp32(q_from):
    # CPU flash attention is slower in bf16 than in fp32 at these sizes: under CPU autocast causal_attention casts
    # its inputs up and computes exactly what fp32 attention computes on them
    import torch.nn.functional as F

    from armt_ts.backbone import causal_attention

    q, k, v = (torch.randn(3, 2, 7, 8).bfloat16() for _ in range(3))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        att = causal_attention(q, k, v, q_from)
    assert att.dtype == torch.float32 and att.shape == (3, 2, 7 - q_from, 8)
    mask = torch.ones(7 - q_from, 7, dtype=torch.bool).tril(diagonal=q_from)
    ref = F.scaled_dot_product_attention(q.float()[:, :, q_from:], k.float(), v.float(), attn_mask=mask)
    assert torch.equal(att, ref)
    # outside autocast nothing changes: the fp32 inputs' own attention, the causal kernel where q_from = 0
    qf, kf, vf = q.float(), k.float(), v.float()
    ref32 = (F.scaled_dot_product_attention(qf, kf, vf, is_causal=True) if not q_from else
             F.scaled_dot_product_attention(qf[:, :, q_from:], kf, vf, attn_mask=mask))
    assert torch.equal(causal_attention(qf, kf, vf, q_from), ref32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    model = _model()
    x = torch.randn(2, 12, SMALL.d_model)
    y_cpu, s_cpu = model(x)
    y_gpu, s_gpu = model.to("cuda")(x.cuda())
    assert_close("cuda outputs", y_cpu, y_gpu.cpu(), 1e-4)
    assert_close("cuda A[-1]", s_cpu.A[-1], s_gpu.A[-1].cpu(), 1e-4)


def test_read_norm_cap_bounds_what_a_read_adds():
    from armt_ts.memory import AssociativeMemory

    torch.manual_seed(0)
    config = ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=4, num_mem_tokens=2, d_mem=8)
    memory = AssociativeMemory(config)
    with torch.no_grad():
        memory.W_v.weight.normal_(0, 1.0)
    m, h = torch.randn(3, 2, 32), torch.randn(3, 5, 32)
    A0, z0 = torch.zeros(3, 1, config.d_key, 32), torch.zeros(3, 1, config.d_key)
    A, z = memory.write(m, A0, z0, first=True)
    plain = memory.read(h, A, z) - h
    assert plain.norm(dim=-1).max() > 0.5  # the cap below binds
    memory.config = config.replace(read_norm_cap=0.5)
    capped = memory.read(h, A, z) - h
    assert capped.norm(dim=-1).max() <= 0.5 + 1e-5
    # rows under the cap are unchanged; rows over it keep their direction
    small = plain.norm(dim=-1) <= 0.5
    assert torch.allclose(capped[small], plain[small])
    cos = torch.nn.functional.cosine_similarity(capped[~small], plain[~small], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    memory.config = config.replace(read_norm_cap=1e9)
    assert torch.equal(memory.read(h, A, z) - h, plain)
    with pytest.raises(ValueError, match="read_norm_cap"):
        ARMTConfig(read_norm_cap=0)
    # the diagonal schedule applies the same cap (tests/test_schedule.py compares the schedules with it)
    from armt_ts.schedule import diagonal_supported

    assert diagonal_supported(ARMT(config.replace(read_norm_cap=0.5))) is None


def test_vbar_floor_is_validated_and_reaches_the_write():
    for bad in (0, -1.0, True, "0.1"):
        with pytest.raises(ValueError, match="vbar_floor"):
            ARMTConfig(vbar_floor=bad)
    from armt_ts.memory import AssociativeMemory

    torch.manual_seed(0)
    config = ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=4, num_mem_tokens=2, d_mem=8)
    memory = AssociativeMemory(config)
    with torch.no_grad():
        memory.W_v.weight.normal_(0, 1.0)
    A, z = memory.write(torch.randn(3, 2, 32), torch.zeros(3, 1, config.d_key, 32), torch.zeros(3, 1, config.d_key),
                        first=True)
    m = torch.randn(3, 2, 32)
    paper = memory.write(m, A, z, first=False)
    memory.config = config.replace(vbar_floor=2.0)  # above every key's z^T k / |k|^2 here: every write floored
    floored = memory.write(m, A, z, first=False)
    assert not torch.allclose(paper[0], floored[0]) and torch.equal(paper[1], floored[1])  # z: gamma unchanged


@pytest.mark.parametrize("first", [True, False])
def test_read_only_segment_step_is_exact(first):
    model = _model().eval()
    x = torch.randn(3, SMALL.segment_length, SMALL.d_model)
    with torch.no_grad():
        state = None if first else model(torch.randn(3, 12, SMALL.d_model))[1]
        y_ref, _ = model.segment_step(x, state)
        y_ro, s_ro = model.segment_step(x, state, write=False)  # a forecast: the same outputs, no write
        assert torch.equal(y_ro, y_ref) and s_ro is state


@pytest.mark.parametrize("t", [SMALL.segment_length, 2])
@pytest.mark.parametrize("carried", [False, True])
def test_segment_step_outputs_keeps_the_last_rows_and_the_state(t, carried):
    # the streaming shortcut: the last layer computes only the last k content rows and the memory rows
    model = _model(n_layers=3).eval()
    g = torch.Generator().manual_seed(3)
    state = model(torch.randn(2, 11, SMALL.d_model, generator=g))[1] if carried else None
    x = torch.randn(2, t, SMALL.d_model, generator=g)
    with torch.no_grad():
        y_full, s_full = model.segment_step(x, state)
        for k in range(t + 1):
            y, s = model.segment_step(x, state, outputs=k)
            assert y.shape == (2, k, SMALL.d_model)
            assert_close(f"y k={k}", y_full[:, t - k:], y, 1e-6)
            for l in range(3):
                assert_close(f"A[{l}] k={k}", s_full.A[l], s.A[l], 1e-6)
                assert_close(f"z[{l}] k={k}", s_full.z[l], s.z[l], 1e-6)
            y_read, s_read = model.segment_step(x, state, write=False, outputs=k)
            assert torch.equal(y_read, y) and s_read is state
        # the block alone: rows q_from.. of the full block, keys and values from every row
        block, h = model.blocks[0], torch.randn(2, 7, SMALL.d_model, generator=g)
        for q_from in range(7):
            assert_close(f"block q_from={q_from}", block(h)[:, q_from:], block(h, q_from), 1e-6)


def test_segment_step_outputs_is_checked():
    model = _model()
    x = torch.randn(1, 4, SMALL.d_model)
    with torch.no_grad():
        for bad in (-1, 5, True, 1.0, "2"):
            with pytest.raises(ValueError, match="outputs: expected an int in \\[0, 4\\]"):
                model.segment_step(x, None, outputs=bad)


@pytest.mark.parametrize("carried", [False, True])
def test_segment_step_defer_applies_the_same_state_in_place(carried):
    model = _model().eval()
    g = torch.Generator().manual_seed(4)
    state = model(torch.randn(3, 9, SMALL.d_model, generator=g))[1] if carried else None
    x = torch.randn(3, SMALL.segment_length, SMALL.d_model, generator=g)
    with torch.no_grad():
        y_ref, ref = model.segment_step(x, state, outputs=2)
        target = MemoryState.zeros(model.config, 3) if state is None else MemoryState(
            tuple(a.clone() for a in state.A), tuple(z.clone() for z in state.z))
        y, pending = model.segment_step(x, state, outputs=2, defer=True)
        assert torch.equal(y, y_ref)
        if state is not None:  # nothing written yet
            assert all(torch.equal(a, b) for a, b in zip(state.A, target.A))
        pending.apply_(target)
    for l in range(SMALL.n_layers):
        assert torch.equal(target.A[l], ref.A[l]) and torch.equal(target.z[l], ref.z[l])  # bit for bit
    with torch.no_grad():
        with pytest.raises(ValueError, match="defer"):
            model.segment_step(x, state, defer=True, write=False)
        with pytest.raises(ValueError, match="layers of writes"):
            pending.apply_(MemoryState.zeros(SMALL.replace(n_layers=3), 3))
    with pytest.raises(ValueError, match="defer"):
        model.segment_step(x, state, defer=True)


def test_inputs_and_states_of_another_model_are_named_before_any_work():
    """A state of another model (layers, batch, d_mem, dtype) or an empty / float64 input: a ValueError naming
    what is wrong, from forward and segment_step alike, instead of an error deep inside the memory ops."""
    model = ARMT(SMALL).eval()
    x = torch.randn(2, 12, SMALL.d_model)
    _, state = model(x)
    cases = [
        (x, MemoryState(state.A + state.A[:1], state.z + state.z[:1]), "3 layers of memory for a model of 2"),
        (x[:1], state, r"layer 0's A is \(2, 1, 48, 32\), this model and batch need \[1, 1, 48, 32\]"),
        (x, MemoryState.zeros(dataclasses.replace(SMALL, d_mem=4), 2), r"need \[2, 1, 48, 32\]"),
        (x, state.to(torch.bfloat16), "the memory state is fp32"),
        (x[:0], None, "an empty batch or sequence"),
        (x[:, :0], None, "an empty batch or sequence"),
        (x.double(), None, "dtype torch.float64, the model's weights are torch.float32"),
    ]
    for inputs, st, message in cases:
        with pytest.raises(ValueError, match=message):
            model(inputs, st)
        with pytest.raises(ValueError, match=message):
            model.segment_step(inputs[:, :SMALL.segment_length], st)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 0"):
        MemoryState.zeros(SMALL, -1)
    with pytest.raises(ValueError, match="batch size 1, layer 0's is 2"):
        MemoryState((state.A[0], state.A[1][:1]), (state.z[0], state.z[1][:1]))


def test_config_fields_of_the_wrong_type_are_config_errors():
    for field, value, message in (("eps", float("inf"), "must be a finite number"), ("eps", "0.1", "finite number"),
                                  ("dropout", None, "finite number"), ("n_layers", True, "must be a positive int"),
                                  ("positional", "no", "must be True or False"),
                                  ("read_norm_cap", float("nan"), "finite number > 0")):
        with pytest.raises(ConfigError, match=f"ARMTConfig.{field}: .*{message}"):
            dataclasses.replace(SMALL, **{field: value})


def test_rmt_segment_step_refuses_a_segment_longer_than_its_length():
    rmt = RMT(SMALL)
    with pytest.raises(ValueError, match="segment has 6 tokens; expected 1 to segment_length=5"):
        rmt.segment_step(torch.randn(1, 6, SMALL.d_model), None)
    with pytest.raises(ValueError, match=r"mem: expected \[B, M, D\]"):
        rmt.segment_step(torch.randn(2, 5, SMALL.d_model), torch.zeros(1, SMALL.num_mem_tokens, SMALL.d_model))

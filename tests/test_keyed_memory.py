"""Entity-keyed associative memory (DESIGN.md section 3): identity / mixed keys, exact rewrites, forget,
per-key last-write steps. The content-keyed default must stay exactly the paper's memory."""

import pytest
import torch

from armt_ts import ARMT, ARMTConfig, MemoryState
from armt_ts.config import ConfigError
from armt_ts.memory import AssociativeMemory, KeyWriteLog, orthogonal_codes
from armt_ts.ops import fused, naive

D = 16


def keyed_memory(mode="identity", buckets=64, d_mem=4, **kw) -> AssociativeMemory:
    cfg = ARMTConfig(d_model=D, n_layers=1, n_heads=2, d_ff=32, segment_length=1, num_mem_tokens=1, d_mem=d_mem,
                     key_mode=mode, key_buckets=buckets, **kw)
    mem = AssociativeMemory(cfg)
    with torch.no_grad():  # v = m exactly, beta = sigmoid(40) = 1: the write stores the token itself
        mem.W_v.weight.copy_(torch.eye(D))
        mem.W_beta.weight.zero_()
        mem.W_beta.bias.fill_(40.0)
    return mem


def read_value(mem, A, z, ids):
    h = torch.zeros(ids.shape[0], 1, D)
    return mem.read(h, A, z, ids)[:, 0]


@pytest.mark.parametrize("r,nu", [(4, 3), (5, 2), (8, 3)])
def test_orthogonal_codes_give_one_hot_features(r, nu):
    K = 2 * nu * r
    codes = orthogonal_codes(2 * K + 3, r, nu)
    for ops in (fused, naive):
        feat = ops.dpfp(codes, nu)
        assert torch.equal(feat[:K], torch.eye(K)), "phi(code(e)) must be the e-th unit vector"
        assert torch.equal(feat[K : 2 * K], torch.eye(K)), "ids beyond K reuse the features (e mod K)"
    with pytest.raises(ValueError):
        orthogonal_codes(4, nu, nu)


def test_content_mode_is_unchanged_and_ignores_key_ids():
    cfg = ARMTConfig(d_model=D, n_layers=1, n_heads=2, d_ff=32, segment_length=4, num_mem_tokens=2, d_mem=4)
    mem = AssociativeMemory(cfg)
    assert sorted(mem.state_dict()) == ["W_beta.bias", "W_beta.weight", "W_k.weight", "W_q.weight", "W_v.weight"]
    torch.nn.init.normal_(mem.W_v.weight)
    m, h = torch.randn(3, 2, D), torch.randn(3, 5, D)
    A, z = mem.write(m, torch.zeros(3, 1, cfg.d_key, D), torch.zeros(3, 1, cfg.d_key), True)
    A2, z2 = mem.write(m, torch.zeros(3, 1, cfg.d_key, D), torch.zeros(3, 1, cfg.d_key), True, torch.tensor([0, 1, 2]))
    assert torch.equal(A, A2) and torch.equal(z, z2)
    assert torch.equal(mem.read(h, A, z), mem.read(h, A, z, torch.tensor([5, 6, 7])))


def test_identity_rewrite_replaces_value_and_keeps_z():
    mem = keyed_memory()
    K = mem.config.d_key
    A, z = torch.zeros(2, 1, K, D), torch.zeros(2, 1, K)
    ids_a, ids_b = torch.tensor([3, 3]), torch.tensor([7, 9])
    v_a, v_b = torch.randn(2, 1, D), torch.randn(2, 1, D)
    A, z = mem.write(v_a, A, z, True, ids_a)
    A, z = mem.write(v_b, A, z, False, ids_b)
    torch.testing.assert_close(read_value(mem, A, z, ids_a), v_a[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(read_value(mem, A, z, ids_b), v_b[:, 0], rtol=1e-4, atol=1e-4)
    z_before = z.clone()
    for _ in range(1000):  # the stale-key test: one entity rewritten 1000 times
        v_new = torch.randn(2, 1, D)
        A, z = mem.write(v_new, A, z, False, ids_a)
    torch.testing.assert_close(read_value(mem, A, z, ids_a), v_new[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(read_value(mem, A, z, ids_b), v_b[:, 0], rtol=1e-4, atol=1e-4)
    assert torch.equal(z, z_before), "gamma = 0 on a rewrite: z must not grow"
    assert A.abs().max() < 10 * max(v_a.abs().max(), v_b.abs().max(), v_new.abs().max())


def test_forget_erases_one_entity_and_restores_z():
    mem = keyed_memory()
    K = mem.config.d_key
    A, z = torch.zeros(2, 1, K, D), torch.zeros(2, 1, K)
    keep, gone = torch.tensor([1, 2]), torch.tensor([5, 6])
    v_keep = torch.randn(2, 1, D)
    A, z = mem.write(v_keep, A, z, True, keep)
    z_without = z.clone()
    A, z = mem.write(torch.randn(2, 1, D), A, z, False, gone)
    A, z = mem.write(torch.randn(2, 1, D), A, z, False, gone)  # a rewrite too
    A2, z2 = mem.forget(A, z, gone)
    assert read_value(mem, A2, z2, gone).abs().max() < 1e-5, "a forgotten entity reads the empty value 0"
    torch.testing.assert_close(z2, z_without, rtol=0, atol=1e-6)
    torch.testing.assert_close(read_value(mem, A2, z2, keep), v_keep[:, 0], rtol=1e-4, atol=1e-4)
    # forgetting a key that was never written changes nothing
    A3, z3 = mem.forget(A2, z2, torch.tensor([11, 12]))
    torch.testing.assert_close(A3, A2, rtol=0, atol=0)
    torch.testing.assert_close(z3, z2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="identity"):
        keyed_memory("mixed").forget(A, z, gone)


def test_identity_read_and_write_need_valid_key_ids():
    mem = keyed_memory()
    K = mem.config.d_key
    A, z = torch.zeros(2, 1, K, D), torch.zeros(2, 1, K)
    with pytest.raises(ValueError, match="key_ids"):
        mem.write(torch.randn(2, 1, D), A, z, True)
    with pytest.raises(ValueError, match="key_buckets"):
        mem.write(torch.randn(2, 1, D), A, z, True, torch.tensor([0, 64]))
    with pytest.raises(ValueError, match="one entity id per batch row"):
        mem.read(torch.randn(2, 1, D), A, z, torch.tensor([[0], [1]]))


@pytest.mark.parametrize("mode,identity_keys", [("mixed", "orthogonal"), ("mixed", "learned"), ("identity", "learned")])
def test_mixed_and_learned_keys_train(mode, identity_keys):
    mem = keyed_memory(mode, identity_keys=identity_keys)
    K = mem.config.d_key
    ids = torch.tensor([0, 3])
    A, z = mem.write(torch.randn(2, 1, D), torch.zeros(2, 1, K, D), torch.zeros(2, 1, K), True, ids)
    A, z = mem.write(torch.randn(2, 1, D), A, z, False, torch.tensor([1, 3]))
    out = mem.read(torch.randn(2, 3, D), A, z, ids)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    learned = mem.W_e.weight if identity_keys == "learned" else None
    if learned is not None:
        assert learned.grad is not None and learned.grad.abs().sum() > 0
    if mode == "mixed":
        assert mem.W_k.weight.grad is not None and mem.W_k.weight.grad.abs().sum() > 0


def test_keyed_backbone_forward_equals_segment_steps_and_forget():
    cfg = ARMTConfig(d_model=D, n_layers=2, n_heads=2, d_ff=32, segment_length=2, num_mem_tokens=1, d_mem=4,
                     key_mode="identity", key_buckets=32)
    model = ARMT(cfg)
    for m in model.memories:
        torch.nn.init.normal_(m.W_v.weight, std=0.3)
    x, ids = torch.randn(3, 7, D), torch.randint(0, 32, (3, 4))
    y, state = model(x, None, ids)
    st, ys = None, []
    for s in range(4):
        yy, st = model.segment_step(x[:, 2 * s : 2 * s + 2], st, ids[:, s])
        ys.append(yy)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=0, atol=0)
    assert st.equal(state)
    with pytest.raises(ValueError, match="key_ids"):
        model(x)
    forgotten = model.forget(state, ids[:, -1])
    assert isinstance(forgotten, MemoryState) and forgotten.batch_size == 3
    for l, memory in enumerate(model.memories):
        k = memory.key_features(ids[:, -1])
        kA = torch.einsum("bhk,bhkd->bhd", k, forgotten.A[l])
        assert kA.abs().max() < 1e-5


def test_key_write_log_records_staleness_and_forget():
    log = KeyWriteLog.empty(2, 8)
    log = log.record(torch.tensor([1, 2]), 5)
    log = log.record(torch.tensor([1, 3]), torch.tensor([9, 9]), mask=torch.tensor([True, False]))
    assert log.staleness(torch.tensor([1, 2]), 10).tolist() == [1, 5]
    assert log.staleness(torch.tensor([3, 3]), 10).tolist() == [-1, -1], "masked write is not recorded"
    log = log.forget(torch.tensor([1, 0]))
    assert log.staleness(torch.tensor([1, 2]), 10).tolist() == [-1, 5]
    with pytest.raises(ValueError, match="key_ids"):
        log.record(torch.tensor([8, 0]), 1)


def test_config_rejects_inconsistent_key_settings():
    with pytest.raises(ConfigError, match="key_buckets"):
        ARMTConfig(key_mode="identity")
    with pytest.raises(ConfigError, match="key_mode"):
        ARMTConfig(key_mode="entity", key_buckets=4)
    with pytest.raises(ConfigError, match="d_mem"):
        ARMTConfig(key_mode="identity", key_buckets=4, d_mem=3)
    with pytest.raises(ConfigError, match="identity_keys"):
        ARMTConfig(key_mode="identity", key_buckets=4, identity_keys="random")
    assert ARMTConfig.from_dict(ARMTConfig(key_mode="mixed", key_buckets=8).to_dict()).key_mode == "mixed"


def test_one_id_is_not_broadcast_over_a_batch():
    mem = keyed_memory()
    K = mem.config.d_key
    A, z = torch.zeros(2, 1, K, D), torch.zeros(2, 1, K)
    A, z = mem.write(torch.randn(2, 1, D), A, z, True, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"key_ids: expected one entity id per batch row, shape \[2\], got \(1,\)"):
        mem.forget(A, z, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"key_ids: expected one entity id per batch row, shape \[2\], got \(1,\)"):
        mem.write(torch.randn(2, 1, D), A, z, False, torch.tensor([1]))
    cfg = ARMTConfig(d_model=D, n_layers=1, n_heads=1, d_ff=16, segment_length=2, d_mem=4, key_mode="identity",
                     key_buckets=8, schedule="sequential")
    model = ARMT(cfg)
    with pytest.raises(ValueError, match=r"key_ids: expected \[B, n_segments\] = \[2, 2\]"):
        model(torch.randn(2, 4, D), key_ids=torch.tensor([[3, 4]]))


def test_write_log_masks_and_times_are_checked():
    from armt_ts.memory import KeyWriteLog

    log = KeyWriteLog.empty(2, 8).record(torch.tensor([1, 2]), 5)
    for mask in (torch.tensor([True]), torch.tensor([1, 0])):
        with pytest.raises(ValueError, match="mask: expected a bool tensor of shape \\[2\\]"):
            log.record(torch.tensor([1, 2]), 6, mask)
    assert log.staleness(torch.tensor([1, 3]), 9).tolist() == [4, -1]
    with pytest.raises(ValueError, match="now: step 4 is before a recorded write"):
        log.staleness(torch.tensor([1, 2]), 4)

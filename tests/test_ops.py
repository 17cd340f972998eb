"""ops/fused.py against the specification ops/naive.py, and the memory rules by hand."""

import pytest
import torch

from armt_ts.ops import fused, naive
from armt_ts.testing import assert_close

EPS = 1e-5


def _phi_inputs(B, N, H, r, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, H, r, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("l2norm", [False, True])
def test_dpfp_matches_reference_and_definition(l2norm):
    x = _phi_inputs(2, 3, 2, 5, 0)
    ref = naive.dpfp(x, 3, l2norm)
    assert ref.shape == (2, 3, 2, 2 * 3 * 5)
    assert_close("dpfp", ref, fused.dpfp(x, 3, l2norm), 1e-12)
    # the definition, element by element, for one row
    u = torch.cat([x[0, 0, 0].relu(), (-x[0, 0, 0]).relu()])
    manual = torch.cat([torch.stack([u[i] * u[(i - j) % 10] for i in range(10)]) for j in (1, 2, 3)])
    if l2norm:
        manual = manual / (manual.norm() + 1e-6)
        assert torch.allclose(ref.norm(dim=-1), torch.ones(2, 3, 2, dtype=ref.dtype), atol=1e-5)
    assert_close("dpfp row 0", manual, ref[0, 0, 0], 1e-12)
    assert (ref >= 0).all()


def _write_inputs(B=3, M=4, H=2, K=12, Dv=5, per_channel=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    k = naive.dpfp(torch.randn(B, M, H, K // 6, generator=g, dtype=dtype))
    v = torch.randn(B, M, H, Dv, generator=g, dtype=dtype)
    beta = torch.rand(B, M, H, Dv if per_channel else 1, generator=g, dtype=dtype)
    A = torch.randn(B, H, K, Dv, generator=g, dtype=dtype) * 0.1
    z = torch.rand(B, H, K, generator=g, dtype=dtype) * 2.0
    return k, v, beta, A, z


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_write_fused_equals_naive_values_and_gradients(first, per_channel):
    inputs = [t.requires_grad_() for t in _write_inputs(per_channel=per_channel)]
    A_n, z_n = naive.delta_write(*inputs, first=first, eps=EPS)
    (A_n.sin().sum() + z_n.cos().sum()).backward()
    grads_n = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    A_f, z_f = fused.delta_write(*inputs, first=first, eps=EPS)
    (A_f.sin().sum() + z_f.cos().sum()).backward()
    assert_close("A", A_n, A_f, 1e-12)
    assert_close("z", z_n, z_f, 1e-12)
    for name, gn, t in zip(["k", "v", "beta", "A0", "z0"], grads_n, inputs):
        assert_close(f"grad {name}", gn, t.grad, 1e-10)
    # the initial state gets a gradient (needed to backprop across segments)
    assert inputs[3].grad.abs().sum() > 0 and inputs[4].grad.abs().sum() > 0


def test_read_fused_equals_naive_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    q = naive.dpfp(torch.randn(2, 7, 2, 2, generator=g, dtype=torch.float64)).requires_grad_()
    A = torch.randn(2, 2, 12, 5, generator=g, dtype=torch.float64).requires_grad_()
    z = (torch.rand(2, 2, 12, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    out_n = naive.associative_read(q, A, z, EPS)
    out_n.tanh().sum().backward()
    grads_n = [t.grad.clone() for t in (q, A, z)]
    for t in (q, A, z):
        t.grad = None
    out_f = fused.associative_read(q, A, z, EPS)
    out_f.tanh().sum().backward()
    assert_close("read", out_n, out_f, 1e-12)
    for name, gn, t in zip("qAz", grads_n, (q, A, z)):
        assert_close(f"grad {name}", gn, t.grad, 1e-10)


def test_one_write_matches_hand_computed_einsum():
    # b: a single write on a non-empty memory, written out from the paper's equations with einsum
    k, v, beta, A, z = _write_inputs(B=1, M=2, H=1, K=6, Dv=3, seed=3)
    A_new, z_new = fused.delta_write(k, v, beta, A, z, first=False, eps=EPS)
    k0, v0, b0, A0, z0 = k[0, :, 0], v[0, :, 0], beta[0, :, 0], A[0, 0], z[0, 0]  # [M,K] [M,Dv] [M,1] [K,Dv] [K]
    zk = k0 @ z0 + EPS  # [M]
    vbar = (k0 @ A0) / zk[:, None]
    gamma = ((1 - zk / ((k0**2).sum(1) + EPS))).clamp(0, 1)
    A_hand = A0 + torch.einsum("mk,md->kd", k0, b0 * (v0 - vbar))
    z_hand = z0 + torch.einsum("m,mk->k", gamma, k0)
    assert_close("A", A_hand, A_new[0, 0], 1e-12)
    assert_close("z", z_hand, z_new[0, 0], 1e-12)
    # first segment: vbar = 0, gamma = 1
    A_first, z_first = fused.delta_write(k, v, beta, A, z, first=True, eps=EPS)
    assert_close("A first", A0 + torch.einsum("mk,md->kd", k0, b0 * v0), A_first[0, 0], 1e-12)
    assert_close("z first", z0 + k0.sum(0), z_first[0, 0], 1e-12)


@pytest.mark.parametrize("ops", [naive, fused], ids=["naive", "fused"])
def test_rewriting_a_key_replaces_its_value(ops):
    # c: write key k with v1, then again with v2: gamma ~ 0 the second time, z unchanged, read -> v2
    g = torch.Generator().manual_seed(4)
    k = ops.dpfp(torch.randn(1, 1, 1, 4, generator=g, dtype=torch.float64))  # [1, 1, 1, 24]
    v1 = torch.randn(1, 1, 1, 6, generator=g, dtype=torch.float64)
    v2 = torch.randn(1, 1, 1, 6, generator=g, dtype=torch.float64)
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    A0 = torch.zeros(1, 1, 24, 6, dtype=torch.float64)
    z0 = torch.zeros(1, 1, 24, dtype=torch.float64)
    A1, z1 = ops.delta_write(k, v1, one, A0, z0, first=True, eps=EPS)
    assert_close("read after first write", v1[0, 0], ops.associative_read(k, A1, z1, EPS)[0, 0], 1e-4)
    zk = (z1[0, 0] @ k[0, 0, 0]) + EPS
    gamma = (1 - zk / (k[0, 0, 0] @ k[0, 0, 0] + EPS)).clamp(0, 1)
    assert gamma.item() < 1e-6
    A2, z2 = ops.delta_write(k, v2, one, A1, z1, first=False, eps=EPS)
    assert torch.equal(z2, z1), "z must not grow when an already-stored key is rewritten"
    assert_close("read after rewrite", v2[0, 0], ops.associative_read(k, A2, z2, EPS)[0, 0], 1e-4)
    # the stale value is gone, not averaged in
    assert (ops.associative_read(k, A2, z2, EPS) - v1).abs().max() > 0.1


@pytest.mark.parametrize("nu", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_dpfp_slices_equal_rolls_for_any_order(nu, r):
    # the fused feature map takes shifted slices of a padded copy; orders nu >= 2r wrap around like torch.roll
    x = _phi_inputs(2, 3, 1, r, nu)
    assert torch.equal(naive.dpfp(x, nu), fused.dpfp(x, nu))


@pytest.mark.parametrize("nu", [1, 3, 5, 9])
@pytest.mark.parametrize("r", [1, 2, 4, 32])
def test_dpfp_without_autograd_equals_the_autograd_path(nu, r):
    # without autograd the products go straight into the output's blocks (no cat): the same values, bit for bit,
    # and the autograd path still carries gradients
    x = _phi_inputs(3, 4, 2, r, nu).float()
    with torch.no_grad():
        fast = fused.dpfp(x, nu)
    xg = x.clone().requires_grad_()
    slow = fused.dpfp(xg, nu)
    assert slow.requires_grad and not fast.requires_grad
    assert torch.equal(fast, slow.detach())
    assert torch.equal(fast, naive.dpfp(x, nu))
    slow.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_normaliser_products_equal_the_bmm_they_replace():
    # ops.fused computes q . z (the read's denominator, the write's z_k) and kT @ g (the z update) as product and sum;
    # equal to the bmm to float rounding, and the same for a row alone as inside a batch (a bmm is not, for K = 192)
    g = torch.Generator().manual_seed(3)
    q, z = torch.randn(64, 12, 192, generator=g), torch.rand(64, 1, 192, generator=g)
    kT, gam = torch.randn(64, 4, 192, generator=g).transpose(1, 2), torch.rand(64, 4, 1, generator=g)
    den = fused._dot_z(q, z)
    assert_close("q . z", torch.bmm(q, z.transpose(1, 2)), den, 1e-6)
    assert torch.equal(den[5:6], fused._dot_z(q[5:6], z[5:6]))
    zt = fused._z_terms(kT, gam)
    assert_close("kT @ g", torch.bmm(kT, gam), zt, 1e-6)
    assert torch.equal(zt[7:9], fused._z_terms(kT[7:9], gam[7:9]))


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("vbar_floor", [None, 1.0])
def test_deferred_write_applied_in_place_equals_the_write(first, per_channel, vbar_floor):
    # delta_terms + apply_delta_ (a streaming fleet's update): fused bit for bit with delta_write; naive the same
    # equations row by row
    k, v, beta, A, z = _write_inputs(dtype=torch.float32, per_channel=per_channel)
    for ops in (naive, fused):
        ref_A, ref_z = ops.delta_write(k, v, beta, A, z, first=first, eps=EPS, vbar_floor=vbar_floor)
        A1, z1 = A.clone(), z.clone()
        with torch.no_grad():
            terms = ops.delta_terms(k, v, beta, A1, z1, first, EPS, vbar_floor)
            assert torch.equal(A1, A) and torch.equal(z1, z)  # computing the terms changes nothing
            ops.apply_delta_(A1, z1, terms)
        if ops is fused:
            assert torch.equal(A1, ref_A) and torch.equal(z1, ref_z)
        else:
            assert_close("naive A", ref_A, A1, 1e-6)
            assert_close("naive z", ref_z, z1, 1e-6)
    n_terms = naive.delta_terms(k, v, beta, A, z, first, EPS, vbar_floor)
    f_terms = fused.delta_terms(k, v, beta, A, z, first, EPS, vbar_floor)
    for name, a, b in zip(("kT", "u", "g"), n_terms, f_terms):
        assert_close(f"terms {name}", a, b, 1e-6)


def test_apply_delta_is_checked():
    k, v, beta, A, z = _write_inputs(dtype=torch.float32)
    terms = fused.delta_terms(k, v, beta, A, z, False, EPS)
    with pytest.raises(ValueError, match="no gradient"):
        fused.apply_delta_(A.clone().requires_grad_(), z.clone(), terms)
    with torch.no_grad(), pytest.raises(ValueError, match="contiguous"):
        fused.apply_delta_(A.transpose(2, 3).contiguous().transpose(2, 3), z.clone(), terms)


def test_floored_write_fused_equals_naive_and_floors_only_the_small_denominators():
    # ARMTConfig.vbar_floor: a floor at the median of z^T k / |k|^2 changes half the writes' vbar and no gamma
    inputs = [t.requires_grad_() for t in _write_inputs()]
    k, _, _, _, z = inputs
    with torch.no_grad():
        ratio = ((k * z[:, None]).sum(-1) + EPS) / ((k * k).sum(-1) + EPS)  # [B, M, H]
    floor = float(ratio.median())
    outs = {}
    for ops in (naive, fused):
        A_new, z_new = ops.delta_write(*inputs, first=False, eps=EPS, vbar_floor=floor)
        (A_new.sin().sum() + z_new.cos().sum()).backward()
        outs[ops] = (A_new, z_new, [t.grad.clone() for t in inputs])
        for t in inputs:
            t.grad = None
    (A_n, z_n, g_n), (A_f, z_f, g_f) = outs[naive], outs[fused]
    assert_close("A", A_n, A_f, 1e-12)
    assert_close("z", z_n, z_f, 1e-12)
    for name, a, b in zip(["k", "v", "beta", "A0", "z0"], g_n, g_f):
        assert_close(f"grad {name}", a, b, 1e-10)
    A_paper, z_paper = fused.delta_write(*inputs, first=False, eps=EPS)
    assert torch.equal(z_paper, z_f)  # gamma does not see the floor
    with torch.no_grad():  # per row and head: the rows with a key below the floor changed, the others did not
        changed = (A_paper - A_f).abs().amax(-1).amax(-1) > 0  # [B, H]
        floored = (ratio < floor).any(1)  # [B, H]
    assert torch.equal(changed, floored) and 0 < int(floored.sum()) < floored.numel()


@pytest.mark.parametrize("ops", [naive, fused], ids=["naive", "fused"])
def test_a_floored_write_stays_bounded_where_z_never_covered_the_key(ops):
    # A holds mass on DPFP features where z has none (the gamma rule stops z's growth for known keys while A keeps
    # taking writes); a key on those features has z^T k = 0, so the paper's vbar = k^T A / eps is enormous and the
    # write stores it. With the floor, vbar = k^T A / (f (|k|^2 + eps)).
    K, Dv = 12, 3
    A = torch.zeros(1, 1, K, Dv, dtype=torch.float64)
    A[0, 0, 6:] = 0.1
    z = torch.zeros(1, 1, K, dtype=torch.float64)
    z[0, 0, :6] = 1.0
    k = torch.zeros(1, 1, 1, K, dtype=torch.float64)
    k[0, 0, 0, 6:] = 0.5
    v = torch.ones(1, 1, 1, Dv, dtype=torch.float64)
    beta = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    paper_A, paper_z = ops.delta_write(k, v, beta, A, z, False, EPS)
    assert paper_A.abs().max() > 1e3  # k^T A = 0.3, divided by eps
    floored_A, floored_z = ops.delta_write(k, v, beta, A, z, False, EPS, vbar_floor=0.1)
    vbar = 6 * 0.5 * 0.1 / (0.1 * (6 * 0.25 + EPS))  # k^T A / (f (|k|^2 + eps)), by hand: 2.0 per channel
    expected = A + k[0, 0, 0][None, None, :, None] * (1.0 - vbar)
    assert_close("floored A", expected, floored_A, 1e-12)
    assert torch.equal(floored_z, paper_z)  # gamma = 1 either way: z takes the new key

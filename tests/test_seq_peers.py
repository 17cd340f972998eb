"""Sequence peers (armt_ts/seq_peers.py): the streaming contract (whole == chunked), the gated delta rule
against its published matrix form, the window of the sliding-window transformer, kNN retrieval."""

import pytest
import torch
import torch.nn.functional as F

from armt_ts.seq_peers import GatedDeltaNet, KNNRetrieval, MambaPeer, SlidingWindowTransformer

D = 16


def peers():
    return {
        "mamba": lambda: MambaPeer(D, n_layers=2, d_state=4),
        "gdn": lambda: GatedDeltaNet(D, n_layers=2, n_heads=2, d_key=4, d_value=8, d_ff=32),
        "swa": lambda: SlidingWindowTransformer(D, n_layers=2, n_heads=2, d_ff=32, window=5),
        "knn": lambda: KNNRetrieval(D, k=3, capacity=6, d_ff=32),
    }


@pytest.mark.parametrize("name", list(peers()))
def test_chunked_stream_equals_whole_sequence(name):
    model = peers()[name]().eval()
    x = torch.randn(2, 13, D)
    with torch.no_grad():
        y_full, _ = model(x, None)
        ys, state = [], None
        for start, stop in [(0, 1), (1, 5), (5, 6), (6, 13)]:
            y, state = model(x[:, start:stop], state)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=1e-4, atol=1e-5)


def test_mamba_parallel_scan_equals_step_recurrence_and_trains():
    model = MambaPeer(D, n_layers=2, d_state=4)
    x = torch.randn(2, 9, D)
    y_par, none_state = model(x)  # grad enabled, empty state: the parallel scan
    assert none_state is None
    with torch.no_grad():
        y_step, state = model(x, model.empty_state(2))
    torch.testing.assert_close(y_par.detach(), y_step, rtol=1e-4, atol=1e-5)
    y_par.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.state_numel() == sum(h.numel() + c.numel() for h, c in state) // 2


def test_gated_delta_rule_matches_the_published_matrix_update():
    model = GatedDeltaNet(D, n_layers=1, n_heads=2, d_key=4, d_value=8)
    layer = model.mixers[0]
    x = torch.randn(3, 6, D)
    out, S = layer(x, None)
    B, H, dk, dv = 3, 2, 4, 8
    q = F.normalize(layer.W_q(x).view(B, 6, H, dk), dim=-1) / dk**0.5
    k = F.normalize(layer.W_k(x).view(B, 6, H, dk), dim=-1)
    v = layer.W_v(x).view(B, 6, H, dv)
    a = torch.exp(-torch.exp(layer.A_log) * F.softplus(layer.W_a(x) + layer.dt_bias))
    b = torch.sigmoid(layer.W_b(x))
    S_ref = torch.zeros(B, H, dv, dk)
    eye = torch.eye(dk)
    for t in range(6):
        kk = k[:, t]
        outer = torch.einsum("bhi,bhj->bhij", kk, kk)
        S_ref = (a[:, t, :, None, None] * S_ref) @ (eye - b[:, t, :, None, None] * outer) \
            + b[:, t, :, None, None] * torch.einsum("bhv,bhk->bhvk", v[:, t], kk)
        o = torch.einsum("bhvk,bhk->bhv", S_ref, q[:, t])
    torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-6)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
    ref_last = layer.W_o(o.reshape(B, H * dv) * F.silu(layer.W_g(x[:, -1])))
    torch.testing.assert_close(out[:, -1], ref_last, rtol=1e-5, atol=1e-6)
    assert model.state_numel() == H * dv * dk


def test_sliding_window_sees_only_the_last_w_tokens():
    model = SlidingWindowTransformer(D, n_layers=1, n_heads=2, window=4).eval()
    x = torch.randn(1, 10, D)
    x2 = x.clone()
    x2[0, 2] = torch.randn(D)  # token 2 is outside the window of token 9 (which sees 6..9) but inside token 5's
    with torch.no_grad():
        y, state = model(x)
        y2, _ = model(x2)
    torch.testing.assert_close(y[0, 6:], y2[0, 6:], rtol=0, atol=0)
    assert not torch.allclose(y[0, 5], y2[0, 5])
    assert state[0].shape == (1, 3, D) and model.state_numel() == 3 * D


def test_knn_keeps_at_most_capacity_embeddings_and_reads_neighbours():
    model = KNNRetrieval(D, k=2, capacity=5)
    x = torch.randn(2, 8, D, requires_grad=True)
    y, state = model(x)
    assert state.shape == (2, 5, D)
    torch.testing.assert_close(state, x[:, -5:].detach())
    y[:, -1].square().sum().backward()  # (a plain sum of a layer-normed vector is constant)
    assert x.grad[:, :-1].abs().sum() > 0, "the last token reads earlier tokens"
    assert model.state_numel() == 5 * D


def test_peer_inputs_and_sizes_are_checked_by_name():
    from armt_ts.peers import GRUPeer
    from armt_ts.seq_peers import GatedDeltaNet, KNNRetrieval, SlidingWindowTransformer

    for make, message in ((lambda: KNNRetrieval(8, capacity=0), "KNNRetrieval.capacity: must be an int >= 1"),
                          (lambda: KNNRetrieval(8, k=0), "KNNRetrieval.k"),
                          (lambda: GatedDeltaNet(8, n_heads=0), "GatedDeltaNet.n_heads"),
                          (lambda: SlidingWindowTransformer(8, window=True), "SlidingWindowTransformer.window"),
                          (lambda: SlidingWindowTransformer(8, n_heads=3), "not divisible")):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match=r"x: expected \[B, S, 8\]"):
        GRUPeer(8, 5, 2)(torch.randn(3, 8))  # nn.GRU would read it as one sequence of 3 steps


def test_mamba_carries_its_state_between_training_chunks_when_asked():
    torch.manual_seed(0)
    m = MambaPeer(8, n_layers=1, d_state=4)
    x = torch.randn(2, 6, 8)
    whole, _ = m(x, return_state=True)
    first, state = m(x[:, :3], return_state=True)
    assert state is not None
    second, _ = m(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-4, atol=1e-5)
    assert m(x[:, :3])[1] is None  # the parallel scan: no final state unless asked


def test_empty_sequences_pass_through_and_rmt_wants_float_embeddings():
    from armt_ts import ARMTConfig
    from armt_ts.peers import RMT

    empty = torch.randn(2, 0, 8)
    for peer in (GatedDeltaNet(8), MambaPeer(8, n_layers=1, d_state=4), SlidingWindowTransformer(8, window=4),
                 KNNRetrieval(8)):
        assert peer(empty)[0].shape == (2, 0, 8), type(peer).__name__
    rmt = RMT(ARMTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, segment_length=4))
    with pytest.raises(ValueError, match="x: expected float token embeddings"):
        rmt(torch.ones(1, 4, 8, dtype=torch.long))

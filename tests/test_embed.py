"""PatchEmbedder, EventEmbedder, entity hashing and time gaps (armt_ts/embed.py)."""

import math

import pytest
import torch

from armt_ts.config import ConfigError, EventConfig, PatchConfig
from armt_ts.embed import EventEmbedder, PatchEmbedder, hash_entities, hash_entity, time_gaps
from armt_ts.testing import assert_close

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds wake-up latency (tens of ms per op on a busy
    2-core machine), so run single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


D = 8


def _patch(mode="independent", C=3, P=4, S=4, seed=0, **kw):
    torch.manual_seed(seed)
    return PatchEmbedder(PatchConfig(n_channels=C, d_model=D, patch_len=P, stride=S, mode=mode, **kw))


def _series(B, T, C, seed=0, p_missing=0.3):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(B, T, C, generator=g)
    observed = (torch.rand(B, T, C, generator=g) > p_missing).float()
    return values, observed


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize(
    "mode,P,S,T",
    [("independent", 4, 4, 16), ("independent", 4, 2, 11), ("independent", 4, 4, 3),
     ("mixing", 4, 4, 16), ("mixing", 4, 2, 11), ("mixing", 5, 3, 1)],
)
def test_patch_shapes_every_configuration(mode, P, S, T):
    emb = _patch(mode, C=3, P=P, S=S)
    inputs = emb.describe_inputs(batch_size=2, length=T).zeros()
    tokens, token_observed = emb(**inputs)
    n = emb.num_patches(T)
    expected_tokens = n * 3 if mode == "independent" else n
    assert emb.num_tokens(T) == expected_tokens
    assert tokens.shape == (2, expected_tokens, D)
    assert token_observed.shape == (2, expected_tokens)
    assert torch.isfinite(tokens).all()
    assert (token_observed == 0).all()  # describe_inputs().zeros() observes nothing


def test_num_patches_and_left_padding_rule():
    emb = _patch(P=16, S=16)
    assert [emb.num_patches(t) for t in (1, 16, 17, 32, 33)] == [1, 1, 2, 2, 3]
    assert [emb.left_padding(t) for t in (1, 16, 17, 32, 33)] == [15, 0, 15, 0, 15]
    overlapping = _patch(P=8, S=4)
    assert [overlapping.num_patches(t) for t in (8, 9, 12, 13)] == [1, 2, 2, 3]
    # the last patch always ends exactly at the last step
    for t in range(1, 40):
        assert overlapping.left_padding(t) + t == 8 + (overlapping.num_patches(t) - 1) * 4
        assert 0 <= overlapping.left_padding(t) < 8
    with pytest.raises(ValueError, match="length"):
        emb.num_patches(0)


@pytest.mark.parametrize("mode", ["independent", "mixing"])
def test_length_not_multiple_of_stride_left_pads_unobserved(mode):
    C, P = 2, 4
    emb = _patch(mode, C=C, P=P, S=P)
    values, observed = _series(2, 10, C, p_missing=0.0)  # N = 3, left padding 2
    tokens, frac = emb(values, observed)
    assert emb.left_padding(10) == 2
    # explicit left padding with unobserved steps gives the same tokens: that is the rule
    padded_v = torch.cat([torch.full((2, 2, C), float("nan")), values], dim=1)
    padded_m = torch.cat([torch.zeros(2, 2, C), observed], dim=1)
    ref_tokens, ref_frac = emb(padded_v, padded_m)
    assert_close("tokens", ref_tokens, tokens, 1e-6)
    assert torch.equal(ref_frac, frac)
    # the last patch holds the most recent P steps: it equals the embedding of the last P steps alone
    last, _ = emb(values[:, -P:], observed[:, -P:])
    per_patch = C if mode == "independent" else 1
    assert_close("last patch", last, tokens[:, -per_patch:], 1e-6)
    # the first patch has 2 real steps out of 4
    assert torch.allclose(frac[:, 0], torch.full((2,), 0.5))
    assert torch.allclose(frac[:, -1], torch.ones(2))


@pytest.mark.parametrize("mode", ["independent", "mixing"])
def test_masked_values_do_not_influence_tokens_and_nan_gradients_stay_finite(mode):
    emb = _patch(mode, C=3, P=4, S=2)
    values, observed = _series(2, 13, 3, seed=1)
    tokens, frac = emb(values, observed)

    junk = values.clone()
    junk[observed == 0] = torch.randn(int((observed == 0).sum())) * 1e6
    tokens_junk, _ = emb(junk, observed)
    assert torch.equal(tokens, tokens_junk)

    nan_values = values.clone()
    nan_values[observed == 0] = float("nan")
    nan_values.requires_grad_(True)
    tokens_nan, frac_nan = emb(nan_values, observed)
    assert torch.equal(tokens, tokens_nan) and torch.equal(frac, frac_nan)
    tokens_nan.square().sum().backward()
    assert torch.isfinite(nan_values.grad).all()
    assert (nan_values.grad[observed == 0] == 0).all()
    for name, p in emb.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_mask_is_an_input_missing_differs_from_observed_zero():
    emb = _patch(C=1, P=4, S=4)
    zeros = torch.zeros(1, 4, 1)
    observed_zero, _ = emb(zeros, torch.ones(1, 4, 1))
    missing, _ = emb(zeros, torch.zeros(1, 4, 1))
    assert not torch.allclose(observed_zero, missing)


@pytest.mark.parametrize("mode", ["independent", "mixing"])
def test_nan_at_observed_position_raises_naming_the_tensor(mode):
    emb = _patch(mode)
    values, observed = _series(1, 8, 3, p_missing=0.0)
    values[0, 5, 1] = float("inf")
    with pytest.raises(ValueError, match=r"values: 1 non-finite .* \(0, 5, 1\)"):
        emb(values, observed)
    with pytest.raises(ValueError, match="observed"):
        emb(torch.zeros(1, 8, 3), torch.ones(1, 7, 3))
    with pytest.raises(ValueError, match="values"):
        emb(torch.zeros(1, 8, 2), torch.ones(1, 8, 2))


def test_independent_tokens_are_time_major_and_local():
    C, P = 3, 4
    emb = _patch(C=C, P=P, S=P)
    values, observed = _series(1, 3 * P, C, p_missing=0.0)
    tokens, _ = emb(values, observed)
    n, c = 1, 2  # patch 1 of channel 2 -> token n * C + c
    changed = values.clone()
    changed[0, n * P : (n + 1) * P, c] += 1.0
    tokens2, _ = emb(changed, observed)
    moved = (tokens2 - tokens).abs().amax(-1)[0] > 0
    assert moved.nonzero().flatten().tolist() == [n * C + c]


def test_mixing_tokens_are_one_per_patch_and_local():
    C, P = 3, 4
    emb = _patch("mixing", C=C, P=P, S=P)
    values, observed = _series(1, 3 * P, C, p_missing=0.0)
    tokens, _ = emb(values, observed)
    changed = values.clone()
    changed[0, P : 2 * P, 2] += 1.0  # any channel of patch 1 moves token 1 only
    tokens2, _ = emb(changed, observed)
    moved = (tokens2 - tokens).abs().amax(-1)[0] > 0
    assert moved.nonzero().flatten().tolist() == [1]


def test_channel_embedding_distinguishes_channels():
    values = torch.randn(1, 8, 1).expand(1, 8, 2).contiguous()  # two identical channels
    observed = torch.ones(1, 8, 2)
    with_emb, _ = _patch(C=2)(values, observed)
    assert not torch.allclose(with_emb[:, 0::2], with_emb[:, 1::2])
    without, _ = _patch(C=2, channel_embedding=False)(values, observed)
    assert torch.equal(without[:, 0::2], without[:, 1::2])


def test_patch_config_validation_names_the_field():
    assert PatchConfig().embeds_channels is True
    assert PatchConfig(mode="mixing").embeds_channels is False
    # the default follows the mode, also through replace (an explicit True with "mixing" is still refused)
    assert PatchConfig(n_channels=3).replace(mode="mixing").embeds_channels is False
    assert PatchConfig(n_channels=3, mode="mixing").replace(mode="independent").embeds_channels is True
    assert PatchConfig(channel_embedding=False).embeds_channels is False
    with pytest.raises(ConfigError, match="PatchConfig.channel_embedding"):
        PatchConfig(channel_embedding=True).replace(mode="mixing")
    cfg = PatchConfig(n_channels=3, mode="mixing")
    assert PatchConfig.from_dict(cfg.to_dict()) == cfg
    for kwargs, field in [
        ({"patch_len": 0}, "patch_len"),
        ({"stride": 17}, "stride"),
        ({"n_channels": -1}, "n_channels"),
        ({"d_model": 2.5}, "d_model"),
        ({"mode": "both"}, "mode"),
        ({"mode": "mixing", "channel_embedding": True}, "channel_embedding"),
    ]:
        with pytest.raises(ConfigError, match=f"PatchConfig.{field}"):
            PatchConfig(**kwargs)
    with pytest.raises(ConfigError, match="unknown fields"):
        PatchConfig.from_dict({"patch_length": 4})


# ---------------------------------------------------------------- events


def test_entity_hash_is_stable_and_in_range():
    # Computed once from hashlib.blake2b(name, digest_size=8), little-endian, modulo buckets. Python's hash()
    # of a str is salted per process, so matching hard-coded values shows the hash does not use it.
    assert hash_entity("sensor-42", 4096) == 4095  # digest ff5f6ba6804e206e
    assert hash_entity("pump/7", 1000) == 340  # digest 04e6911cdd919378
    assert hash_entity("", 4096) == 1764
    names = [f"entity-{i}" for i in range(500)] + ["Zürich/ü"]
    ids = hash_entities(names, 97)
    assert ids.dtype == torch.long and ids.shape == (501,)
    assert ids.min() >= 0 and ids.max() < 97
    assert ids.tolist() == [hash_entity(n, 97) for n in names]
    assert len(set(ids.tolist())) > 80  # spread over the buckets
    with pytest.raises(ValueError, match="buckets"):
        hash_entity("x", 0)


def test_time_gaps_per_entity_and_per_stream():
    time = torch.tensor([[0.0, 1.0, 3.0, 6.0, 10.0]])
    entity = torch.tensor([[7, 2, 7, 7, 2]])
    gap, known = time_gaps(time, entity)
    assert gap.tolist() == [[0.0, 0.0, 3.0, 3.0, 9.0]]
    assert known.tolist() == [[False, False, True, True, True]]
    gap, known = time_gaps(time)
    assert gap.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]
    assert known.tolist() == [[False, True, True, True, True]]
    with pytest.raises(ValueError, match="time: goes backwards in row 0 at position 2"):
        time_gaps(torch.tensor([[0.0, 2.0, 1.0]]))


def _events(B=2, S=6, n_types=5, buckets=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "event_type": torch.randint(0, n_types, (B, S), generator=g),
        "entity": torch.randint(0, buckets, (B, S), generator=g),
        "value": torch.randn(B, S, generator=g),
        "value_observed": (torch.rand(B, S, generator=g) > 0.3).float(),
        "time_gap": torch.rand(B, S, generator=g) * 1e5,
        "gap_observed": (torch.rand(B, S, generator=g) > 0.2).float(),
    }


def _event_embedder(seed=0):
    torch.manual_seed(seed)
    return EventEmbedder(EventConfig(n_types=5, entity_buckets=11, d_model=D))


def test_event_shapes_and_describe_inputs():
    emb = _event_embedder()
    out = emb(**emb.describe_inputs(batch_size=3, length=4).zeros())
    assert out.shape == (3, 4, D) and torch.isfinite(out).all()
    ev = _events()
    del ev["gap_observed"]  # optional: every gap known
    assert emb(**ev).shape == (2, 6, D)


def test_event_missing_values_and_unknown_gaps():
    emb = _event_embedder()
    ev = _events()
    base = emb(**ev)
    # anything at a masked value or gap, NaN included, gives the same token and finite gradients
    junk = dict(ev)
    junk["value"] = ev["value"].masked_fill(ev["value_observed"] == 0, float("nan")).requires_grad_(True)
    junk["time_gap"] = ev["time_gap"].masked_fill(ev["gap_observed"] == 0, float("nan")).requires_grad_(True)
    out = emb(**junk)
    assert torch.equal(base, out)
    out.sum().backward()
    assert torch.isfinite(junk["value"].grad).all() and torch.isfinite(junk["time_gap"].grad).all()
    assert all(torch.isfinite(p.grad).all() for p in emb.parameters())
    # a missing value is not an observed zero
    one = {k: v[:1, :1].clone() for k, v in ev.items()}
    one["value"].zero_()
    one["value_observed"].fill_(1.0)
    observed_zero = emb(**one)
    one["value_observed"].fill_(0.0)
    assert not torch.allclose(observed_zero, emb(**one))


def test_event_time_gap_encoding():
    emb = _event_embedder()
    ev = {k: v[:1, :1].clone() for k, v in _events().items()}
    ev["gap_observed"].fill_(1.0)
    tokens = []
    for seconds in (0.0, 1.0, 60.0, 86400.0, 86400.0 * 365):
        ev["time_gap"].fill_(seconds)
        tokens.append(emb(**ev))
    for a, b in zip(tokens, tokens[1:]):
        assert not torch.allclose(a, b)
    feats = emb.gap_features(torch.tensor([0.0, math.expm1(20.0)]))
    assert feats.shape == (2, 2 * 8 + 1)
    assert feats[0, 0] == 0.0 and abs(float(feats[1, 0]) - 1.0) < 1e-5  # log1p(gap) / max_log_gap
    with pytest.raises(ValueError, match="time_gap: must be >= 0"):
        ev["time_gap"].fill_(-1.0)
        emb(**ev)


def test_event_input_errors_name_the_tensor():
    emb = _event_embedder()
    for name, bad in [("event_type", 5), ("entity", 11), ("entity", -1)]:
        ev = _events()
        ev[name][1, 2] = bad
        with pytest.raises(ValueError, match=rf"{name}: ids must be in .*the first outside is {bad} at \[1, 2\]"):
            emb(**ev)
    ev = _events()
    ev["value"][0, 0], ev["value_observed"][0, 0] = float("nan"), 1.0
    with pytest.raises(ValueError, match="value: 1 non-finite"):
        emb(**ev)
    ev = _events()
    ev["time_gap"] = ev["time_gap"][:, :3]
    with pytest.raises(ValueError, match="time_gap: expected shape"):
        emb(**ev)
    ev = _events()
    ev["entity"] = ev["entity"].float()
    with pytest.raises(ValueError, match="entity: expected an integer tensor"):
        emb(**ev)


def test_event_config_validation_names_the_field():
    for kwargs, field in [
        ({"n_types": 0}, "n_types"),
        ({"entity_buckets": -3}, "entity_buckets"),
        ({"d_model": 0}, "d_model"),
        ({"gap_frequencies": 0}, "gap_frequencies"),
        ({"max_log_gap": 0.0}, "max_log_gap"),
    ]:
        with pytest.raises(ConfigError, match=f"EventConfig.{field}"):
            EventConfig(**kwargs)
    cfg = EventConfig(n_types=3)
    assert EventConfig.from_dict(cfg.to_dict()) == cfg


def test_time_gaps_of_one_event_and_of_float32_epoch_times():
    gap, known = time_gaps(torch.zeros(3, 1))
    assert gap.shape == (3, 1) and not known.any()
    with pytest.raises(ValueError, match="float32 holds times this large .* pass float64"):
        time_gaps(torch.tensor([[1.7e9, 1.7e9 + 1]]))
    gap, _ = time_gaps(torch.tensor([[1.7e9, 1.7e9 + 1, 1.7e9 + 61]], dtype=torch.float64))
    assert gap.tolist() == [[0.0, 1.0, 60.0]]
    with pytest.raises(ValueError, match="name: an entity name is a str"):
        hash_entity(3, 10)
    with pytest.raises(ValueError, match="buckets: must be an int >= 1"):
        hash_entity("a", 2.5)


def test_patch_values_must_be_floating_point():
    emb = _patch("independent")
    for dtype in (torch.int64, torch.bool, torch.complex64):
        values = torch.ones(2, 12, emb.config.n_channels, dtype=dtype)
        with pytest.raises(ValueError, match=f"values: expected a floating-point tensor, got {dtype}"):
            emb(values, torch.ones(values.shape))

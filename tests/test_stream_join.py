"""Joining entities one at a time (``armt-ts stream`` on a long-layout file joins each id as it first appears) must
cost the same per join however large the fleet already is: the entity index was rebuilt from every entity at each
join, O(N^2) over a fleet (57 s of joins for 32000 entities, 13 s for 16000)."""

import torch

from armt_ts.config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.forecaster import ARMTForecaster
from armt_ts.stream import StreamingForecaster


class _CountingId(str):
    """An entity id that counts how often it is hashed (every dict insert or lookup hashes it once)."""

    hashes = 0

    def __hash__(self) -> int:
        type(self).hashes += 1
        return str.__hash__(self)


def _model() -> ARMTForecaster:
    torch.manual_seed(0)
    armt = ARMTConfig(d_model=16, n_heads=2, d_ff=32, segment_length=2, num_mem_tokens=2, d_mem=4)
    cfg = ForecasterConfig.build(horizon=3, n_channels=1, armt=armt, patch=PatchConfig(patch_len=4, stride=4),
                                 head=HeadConfig(kind="quantile"))
    return ARMTForecaster(cfg).eval()


def test_one_at_a_time_joins_touch_only_the_new_ids():
    sf = StreamingForecaster(_model(), entities=[])
    n = 1500
    ids = [_CountingId(f"e{i}") for i in range(n)]
    _CountingId.hashes = 0
    for e in ids:
        sf.join([e])
    # a few hashes per join (the duplicate checks and the index insert); rebuilding the index hashed every entity
    # at every join: n * (n + 1) / 2 = 1.1 million here
    assert _CountingId.hashes < 20 * n, _CountingId.hashes
    assert sf.entities == tuple(ids)
    assert sf._rows == {e: i for i, e in enumerate(ids)}
    # the rows are the right ones: a push to a few entities lands on theirs only
    sf.push([[1.0], [2.0]], timestamps=[1, 1], entities=["e7", "e1400"])
    assert sf.state.steps.nonzero().flatten().tolist() == [7, 1400]
    assert sf.state.last_time[[7, 1400]].tolist() == [1, 1]
    sf.leave(["e7"])
    sf.join(["late"])
    assert sf._rows["late"] == n - 1 and sf._rows["e1400"] == 1399 and sf._rows["e8"] == 7

"""Helpers for tests that compare a fast path with its reference."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_error(ref: Tensor, out: Tensor) -> float:
    """max |out - ref| / max(max |ref|, tiny): one number that reads the same at every scale."""
    ref, out = ref.detach().double(), out.detach().double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_close(name: str, ref: Tensor, out: Tensor, tol: float = 1e-5) -> None:
    """Assert ``out`` matches ``ref`` in shape and to relative error ``tol``; the message names the tensor."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    if ref.numel() == 0:
        return
    err = relative_error(ref, out)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def pushed(model, x: Tensor, m: Tensor, chunks: list[int], **kwargs):
    """A single-entity ``StreamingForecaster(model, **kwargs)`` fed ``x[0]`` / ``m[0]`` ([T, C]) in blocks of the
    given sizes, cycled (the streaming contract's push granularities)."""
    from .stream import StreamingForecaster

    sf = StreamingForecaster(model, **kwargs)
    t, i = 0, 0
    while t < x.shape[1]:
        L = chunks[i % len(chunks)]
        sf.push(x[0, t:t + L].numpy(), m[0, t:t + L].numpy())
        t, i = t + L, i + 1
    return sf


def tiny_multichannel_model(directory, horizon: int, context: int = 24, steps: int = 200) -> None:
    """Train a tiny two-channel ``ARMTEstimator(target_dim=2)`` on sine and cosine (one batch) and serialise it to
    ``directory``: the model a test of multivariate paths needs, in a second or two."""
    import numpy as np
    from gluonts.dataset.common import ListDataset

    from armt_ts.config import ARMTConfig, PatchConfig
    from armt_ts.gluonts import ARMTEstimator

    t = np.arange(steps)
    data = ListDataset([{"start": "2024-01-01", "target": np.stack([10 + np.sin(t / 4), 100 + 5 * np.cos(t / 4)])}],
                       freq="h", one_dim_target=False)
    est = ARMTEstimator(prediction_length=horizon, context_length=context, target_dim=2,
                        armt=ARMTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, segment_length=4),
                        patch=PatchConfig(patch_len=8, stride=8), batch_size=4, num_batches_per_epoch=1,
                        trainer_kwargs=dict(max_epochs=1, default_root_dir=str(directory) + "-lightning",
                                            enable_progress_bar=False, enable_model_summary=False, logger=False))
    est.train(data).serialize(directory)

"""benchmarks/channels.py: its synthetic telemetry, the mixing-patch ARMT it measures, one child process end to end,
and how an allocation failure is reported. Seconds each; no real data."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from benchmarks import channels
from benchmarks.forecast import ARMTBench, ARMTHyper


def test_synthetic_channels_share_factors_and_are_seeded():
    x = channels.synthetic_channels(40, 2000, seed=3)
    assert x.shape == (2000, 40) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, channels.synthetic_channels(40, 2000, seed=3))
    assert not np.array_equal(x, channels.synthetic_channels(40, 2000, seed=4))
    # six shared factors: the channels' correlation matrix has most of its mass in six directions
    eig = np.sort(np.linalg.eigvalsh(np.corrcoef(x.T)))[::-1]
    assert eig[:6].sum() / eig.sum() > 0.8 and eig[6] < 0.2 * eig[5]


def test_mixing_patches_one_token_per_patch_for_every_channel():
    joint, mixing = ARMTHyper(), ARMTHyper(patch_mode="mixing")
    assert mixing.name() == joint.name() + "-mix"
    a, b = ARMTBench(joint, 21, 24, 96, seed=0), ARMTBench(mixing, 21, 24, 96, seed=0)
    assert a.forecaster.config.armt.segment_length == 21 * 8 and b.forecaster.config.armt.segment_length == 8
    x = torch.randn(3, 96, 21)
    assert b(x, torch.ones_like(x)).shape == (3, 24, 21)
    with pytest.raises(ValueError, match="patch_mode"):
        ARMTHyper(patch_mode="mixing", channel_independent=True)
    with pytest.raises(ValueError, match="patch_mode"):
        ARMTHyper(patch_mode="both")


def test_one_child_measures_a_model_in_its_own_process():
    args = argparse.Namespace(steps=1, windows=2, seed=0, device="cpu", mem_limit_gb=6.0, child_timeout=600)
    row = channels.run_child("ARMT (mixing)", 3, args)
    assert row["status"] == "ok", row
    assert row["params"] > 0 and row["segment_tokens"] == 12
    assert row["step_seconds"] > 0 and row["predict_ms_per_window"] > 0 and row["peak_rss_mb"] > 100


def test_a_child_past_its_time_limit_is_a_row_that_says_so():
    args = argparse.Namespace(steps=1, windows=2, seed=0, device="cpu", mem_limit_gb=6.0, child_timeout=0.5)
    row = channels.run_child("ARMT (mixing)", 3, args)
    assert row["status"] == "stopped at the 0.5 s limit" and row["model"] == "ARMT (mixing)"


def test_an_allocation_failure_is_a_status_and_other_errors_are_not():
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory")
    assert channels.out_of_memory(oom, 6.0) == "out of memory at the 6 GB limit"
    assert channels.out_of_memory(MemoryError(), 2.5) == "out of memory at the 2.5 GB limit"
    assert channels.out_of_memory(RuntimeError("shape mismatch"), 6.0) is None
    assert channels.out_of_memory(ValueError("alloc"), 6.0) is None


def test_the_summary_table_names_why_a_cell_has_no_time():
    rows = [{"channels": 7, "model": "A", "status": "ok", "predict_ms_per_window": 1.234},
            {"channels": 1000, "model": "A", "status": "out of memory at the 6 GB limit"},
            {"channels": 7, "model": "B", "status": "ok", "predict_ms_per_window": 20.0}]
    payload = {"rows": rows, "models": ["A", "B"], "command": "x", "git_commit": "abc", "wall_seconds": 1.0, "seed": 0,
               "machine": {}, "device": "cpu", "mem_limit_gb": 6.0, "steps": 1, "windows": 2}
    text = channels.render(payload)
    summary = text[text.index("Prediction milliseconds per window"):]
    assert "| A | 1.23 | out of memory at the 6 GB limit |" in summary
    assert "| B | 20 | not run |" in summary

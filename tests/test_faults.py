"""Injected faults (issue 7, items 3 and 4): SIGKILL during ``save()`` (a real subprocess), a save that fails half
way, truncated / altered / foreign / wrong-version state and model files, no pickle in our code, NaN and inf in
training, gradient clipping on by default, and same seed -> identical weights.

The fault tables live in ``benchmarks/reliability.py`` (which records the outcomes in
``benchmarks/results/reliability.md``); these tests assert them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from armt_ts.gluonts import ARMTPredictor
from armt_ts.state import MemoryState, load_safetensors
from benchmarks.reliability import (MEMORY_FAULTS, MODEL_FAULTS, _memory_state, checkpoint_is_weights_only,
                                    determinism, fault_nonfinite_gradient, fault_nonfinite_loss, gradient_clipping,
                                    run_file_fault, scan_for_pickle, sigkill_during_save, stream_file_faults,
                                    tiny_predictor, unclipped_gradient_norm)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        yield


# ---------------------------------------------------------------------------------------------------
# Saving


def test_sigkill_during_save_leaves_a_loadable_state(tmp_path):
    """A child process saves a 12.6 MB MemoryState in a loop; it is killed with SIGKILL at random moments. After
    every kill the file loads and holds exactly the last completed (or the just-renamed) save."""
    result = sigkill_during_save(tmp_path, kills=3, seed=1)
    assert result["failures"] == [], result
    assert result["loaded_ok"] == 3


def test_a_save_that_fails_half_way_keeps_the_old_file(tmp_path, monkeypatch):
    """Deterministic version of the crash: the write raises after the temp file is half written."""
    import safetensors.torch

    path = tmp_path / "state.safetensors"
    old = _memory_state(1.0)
    old.save(path)

    def torn_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # half a file in the temp path ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    monkeypatch.setattr("armt_ts.state.save_file", torn_write)
    with pytest.raises(OSError, match="No space"):
        _memory_state(2.0).save(path)
    assert MemoryState.load(path).equal(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"], "the temp file was left behind"


def test_a_save_removes_the_temp_files_of_killed_saves(tmp_path):
    """A save killed before its rename leaves a temp file as large as the state (a 10000-entity stream's is a GB);
    the next save of the same path removes those whose writer process is gone, and nothing else."""
    import subprocess
    import sys

    path = tmp_path / "state.safetensors"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    orphan = tmp_path / f".state.safetensors.{gone}.abc123.tmp"
    alive = tmp_path / f".state.safetensors.{os.getppid()}.def456.tmp"  # a running process's (a live save)
    old_style = tmp_path / ".state.safetensors.xyz789.tmp"  # no pid in the name: not ours to judge
    other = tmp_path / f".other.safetensors.{gone}.abc123.tmp"  # another file's
    for f in (orphan, alive, old_style, other):
        f.write_bytes(b"\x00" * 64)
    _memory_state(1.0).save(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in (alive, old_style, other, path)), left
    assert MemoryState.load(path).equal(_memory_state(1.0))


def test_state_files_record_version_and_checksum(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "s.safetensors"
    _memory_state().save(path, extra={"note": "x"})
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert set(header) == {"meta", "armt_ts", "sha256"}
    assert header["armt_ts"] == __import__("armt_ts").__version__ and len(header["sha256"]) == 64
    assert json.loads(header["meta"])["version"] == 1
    assert MemoryState.load(path).equal(_memory_state())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "saved files get the usual permissions, not 0600"


@pytest.mark.parametrize("fault", MEMORY_FAULTS + MODEL_FAULTS, ids=lambda f: f.name)
def test_damaged_file_fails_with_a_clear_error(fault, tmp_path):
    out = run_file_fault(fault, tmp_path)
    assert out["outcome"] == fault.expect, out["message"]
    assert fault.says in out["message"], out["message"]


def test_damaged_stream_state_files(tmp_path):
    rows = stream_file_faults(tmp_path)
    assert [r["case"] for r in rows if not r["as_expected"]] == [], rows


def test_model_files_record_version_and_config(tmp_path):
    predictor = tiny_predictor()
    predictor.serialize(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gluonts-config.json", "prediction-net.safetensors",
                                                          "predictor.json"]
    _, meta = load_safetensors(tmp_path / "prediction-net.safetensors", "armt_ts.ARMTPredictor")
    assert meta["armt_ts_version"] == __import__("armt_ts").__version__ and meta["version"] == 2
    assert meta["config"] == json.loads(json.dumps(predictor.prediction_net.model.config.to_dict()))
    assert meta["context_length"] == 24 and meta["prediction_length"] == 6
    loaded = ARMTPredictor.deserialize(tmp_path)
    for (k, a), (k2, b) in zip(predictor.prediction_net.state_dict().items(),
                               loaded.prediction_net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # saving again over the folder works and leaves no temp folder
    loaded.serialize(tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


# ---------------------------------------------------------------------------------------------------
# No pickle


def test_no_pickle_in_our_code():
    assert scan_for_pickle() == []


def test_the_pickle_scan_finds_what_it_looks_for(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle\nfrom joblib import dump\nimport torch, numpy as np\n"
        "torch.save({}, 'x')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
        "torch.load('x', weights_only=True)\nnp.load('x', allow_pickle=True)\nnp.load('x')\n"
        "import pandas as pd\npd.read_pickle('x')\n")
    found = scan_for_pickle(tmp_path, ("pkg",))
    assert [f.split(":")[1] for f in found] == ["1", "2", "4", "5", "6", "8", "11"], found


def test_lightning_checkpoints_hold_weights_only(tmp_path):
    out = checkpoint_is_weights_only(tmp_path)
    assert out["checkpoints"] and out["weights_only_loads"], out


# ---------------------------------------------------------------------------------------------------
# Training


def test_nan_loss_stops_training_naming_step_and_batch(tmp_path):
    out = fault_nonfinite_loss(tmp_path, math.nan, 0)
    assert out["outcome"] == "FloatingPointError"
    assert out["message"] == "train loss is nan at global step 0 (epoch 0, batch index 0)"
    assert out["weights_finite"]


def test_inf_loss_later_in_the_epoch(tmp_path):
    out = fault_nonfinite_loss(tmp_path, math.inf, 3)
    assert (out["outcome"], out["message"]) == ("FloatingPointError",
                                                "train loss is inf at global step 3 (epoch 0, batch index 3)")


def test_nan_loss_after_a_checkpoint_returns_the_checkpoint(tmp_path):
    """gluonts' train_model catches the error once a checkpoint exists: training stops, the error is logged with
    its step, and the best checkpoint's (finite) weights are returned."""
    out = fault_nonfinite_loss(tmp_path, math.nan, 5, epochs=2, batches=4)
    assert out["outcome"] == "stopped; best checkpoint returned"
    assert "train loss is nan at global step 5 (epoch 1, batch index 1)" in out["message"]
    assert out["weights_finite"]


def test_nan_gradient_behind_a_finite_loss_stops_training(tmp_path):
    out = fault_nonfinite_gradient(tmp_path)
    assert out["outcome"] == "FloatingPointError"
    assert "non-finite gradient" in out["message"] and "global step 2 (epoch 0, batch index 2)" in out["message"]
    assert out["weights_finite"]


def test_gradient_clipping_is_on_by_default(tmp_path):
    unclipped = unclipped_gradient_norm()
    out = gradient_clipping(tmp_path)
    assert out["gradient_clip_val"] == 10.0
    assert unclipped > 1e3, unclipped  # the scaled loss gives clipping work to do
    assert out["max_norm_after_clipping"] <= 10.0 * (1 + 1e-5), out


def test_same_seed_same_machine_identical_weights(tmp_path):
    out = determinism(tmp_path)
    assert out["same_seed_identical"] and out["other_seed_differs"], out


def test_weights_of_the_wrong_shape_name_the_tensor_and_shapes(tmp_path):
    """The full list of what does not fit (torch names each tensor and both shapes), and a prediction_length that
    disagrees with the weights' header or the model's horizon, are refused naming the file."""
    from armt_ts.state import StateFileError, atomic_save_safetensors

    predictor = tiny_predictor()
    predictor.serialize(tmp_path)
    weights = tmp_path / "prediction-net.safetensors"
    tensors, meta = load_safetensors(weights, "armt_ts.ARMTPredictor")
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    grown = dict(tensors, **{name: torch.cat([tensors[name], tensors[name][:1]])})
    atomic_save_safetensors(grown, weights, meta)
    with pytest.raises(StateFileError) as err:
        ARMTPredictor.deserialize(tmp_path)
    message = str(err.value)
    assert str(weights) in message and name in message and str(tuple(grown[name].shape))[1:-1] in message, message
    atomic_save_safetensors(tensors, weights, dict(meta, prediction_length=99))
    with pytest.raises(StateFileError, match=r"prediction_length 6 \(predictor.json\) / 99"):
        ARMTPredictor.deserialize(tmp_path)
    atomic_save_safetensors(tensors, weights, meta)
    assert ARMTPredictor.deserialize(tmp_path).prediction_length == 6
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        predictor.serialize(target)

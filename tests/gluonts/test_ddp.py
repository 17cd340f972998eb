"""MULTI-PROCESS TEST: data-parallel training with Lightning's DDP on 2 CPU processes (gloo, localhost only).

The test runs this file as a script in a subprocess (so pytest's own process never joins a process group);
Lightning's "ddp" strategy then re-runs the same script as rank 1. Each rank trains the same tiny ARMTEstimator for
a few steps and, at the end of training (before gluonts reloads the best checkpoint, which would make the ranks
equal whatever happened), writes its weights and its first training batch to <out>/rank<r>.safetensors.
The test checks that the ranks end with bit-identical weights that differ from the initial ones (gradients were
all-reduced, not skipped) and that they trained on different windows (``_RankShard``).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    from safetensors.torch import load_file

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    if sys.platform == "linux":
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise pick the interface the host name resolves to
    env.pop("LOCAL_RANK", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=150, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, f"DDP run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    elapsed = time.monotonic() - started

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    initial = load_file(str(tmp_path / "initial.safetensors"))
    weights = [{k[len("w."):]: v for k, v in r.items() if k.startswith("w.")} for r in ranks]
    assert weights[0].keys() == weights[1].keys() == initial.keys() and initial
    unequal = [k for k in initial if not torch.equal(weights[0][k], weights[1][k])]
    assert not unequal, f"ranks differ after DDP training in {unequal}"
    assert any(not torch.equal(weights[0][k], initial[k]) for k in initial), "training did not change the weights"
    assert ranks[0]["steps"].item() == ranks[1]["steps"].item() == STEPS
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"]), "both ranks trained on the same windows"
    assert elapsed < 120, f"DDP test took {elapsed:.0f} s"


def _worker(out: Path) -> None:
    """Run by each rank (rank 0 is the test's subprocess; Lightning starts rank 1 with the same command line)."""
    import warnings

    warnings.filterwarnings("ignore")
    import lightning.pytorch as pl
    import numpy as np
    import torch
    from gluonts.dataset.common import ListDataset
    from safetensors.torch import save_file

    from armt_ts.config import ARMTConfig, HeadConfig, PatchConfig
    from armt_ts.gluonts import ARMTEstimator

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)

    class DumpPerRank(pl.Callback):
        def __init__(self):
            self.first_batch = None

        def on_train_start(self, trainer, module):
            if trainer.global_rank == 0:  # DDP has already broadcast rank 0's initial weights
                save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()},
                          str(out / "initial.safetensors"))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.first_batch is None:
                self.first_batch = batch["past_target"].detach().clone()

        def on_train_end(self, trainer, module):
            tensors = {f"w.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}
            tensors |= {"first_batch": self.first_batch, "steps": torch.tensor(trainer.global_step)}
            save_file(tensors, str(out / f"rank{trainer.global_rank}.safetensors"))
            trainer.strategy.barrier("armt_ts_test_ddp")  # both files exist before either process moves on

    t = np.arange(200)
    data = ListDataset(
        [{"start": "2024-01-01 00:00", "target": ((k + 1) * np.sin(2 * np.pi * t / 24 + k)).astype(np.float32)}
         for k in range(6)],
        freq="h",
    )
    armt = ARMTConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, segment_length=4, num_mem_tokens=2, d_mem=4)
    estimator = ARMTEstimator(
        prediction_length=12,
        context_length=48,  # 6 patches = 2 segments: every parameter is on the gradient path, as plain DDP needs
        armt=armt,
        patch=PatchConfig(patch_len=8, stride=8),
        head=HeadConfig(kind="student_t"),
        batch_size=4,
        num_batches_per_epoch=STEPS,
        trainer_kwargs=dict(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, default_root_dir=str(out),
                            callbacks=[DumpPerRank()], enable_progress_bar=False, enable_model_summary=False,
                            logger=False),
    )
    estimator.train(data)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

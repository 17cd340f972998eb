"""ARMTLightningModule: trains an ``ARMTModel`` with Lightning (as gluonts.torch's ``patch_tst/lightning_module.py``).

Lightning supplies the rest: progress bar, checkpoints (gluonts' estimator adds a ModelCheckpoint), CPU / CUDA,
mixed precision (``precision="bf16-mixed"``; the associative memory itself stays fp32, see memory.py) and
data-parallel training (``strategy="ddp"``). Gradient clipping is a Trainer argument (``gradient_clip_val``;
``ARMTEstimator`` sets 10.0 unless told otherwise).

A non-finite training or validation loss, or a non-finite gradient behind a finite loss, raises
FloatingPointError naming the global step, epoch and batch index. (gluonts' ``train_model`` then re-raises it
when no checkpoint exists yet, and otherwise logs it as a warning and returns the best checkpoint's weights.)
"""

# No `from __future__ import annotations`: gluonts' @validated reads the annotations with pydantic v1, which
# cannot resolve them as strings.
import lightning.pytorch as pl
import torch
from gluonts.core.component import validated
from gluonts.itertools import select
from torch import Tensor

from ..config import ForecasterConfig
from .module import ARMTModel


class ARMTLightningModule(pl.LightningModule):
    """Training and validation loss of an ``ARMTModel``; Adam optimiser.

    Args:
        config: ``ForecasterConfig.to_dict()`` (a plain dict, so that gluonts can serialise the predictor as JSON).
        context_length: steps of context the model reads.
        lr, weight_decay: Adam's.
        random_start: each training batch drops k patches' steps (k uniform in 0 .. G - 1, G patches per segment)
            from the start of its contexts, so the last patch, whose output the head reads, takes every position
            in its segment, as a stream's forecasts do (``StreamingForecaster`` forecasts at any step; right after a
            segment completes, from that segment's last patch). Validation keeps the whole context.
    """

    @validated()
    def __init__(self, config: dict, context_length: int, lr: float = 1e-3, weight_decay: float = 1e-8,
                 random_start: bool = False):
        super().__init__()
        self.model = ARMTModel(ForecasterConfig.from_dict(config), context_length)
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_start = random_start
        self.inputs = self.model.describe_inputs()

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _loss(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        where = f"global step {self.global_step} (epoch {self.current_epoch}, batch index {batch_idx})"
        try:
            loss = self.model.loss(
                **select(self.inputs, batch),
                future_target=batch["future_target"],
                future_observed_values=batch["future_observed_values"],
            )
        except Exception as e:
            # e.g. torch.distributions rejecting NaN parameters before any loss exists: keep the error, say where
            e.add_note(f"raised by the {stage} loss at {where}")
            raise
        # Fail loudly and say where: a NaN loss would otherwise silently turn every weight into NaN.
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at {where}")
        # sync_dist: under DDP the logged epoch value (and so the checkpoint's choice) is the mean over ranks,
        # one all-reduce per epoch; a no-op in a single process.
        self.log(f"{stage}_loss", loss, on_epoch=True, on_step=False, prog_bar=True, sync_dist=True,
                 batch_size=batch["past_target"].shape[0])
        return loss

    def training_step(self, batch, batch_idx: int):  # type: ignore[override]
        self._train_batch_idx = batch_idx
        if self.random_start:
            batch = self._drop_start(batch)
        return self._loss(batch, batch_idx, "train")

    def _drop_start(self, batch: dict) -> dict:
        """``random_start``: the batch with its contexts' first k * stride steps dropped (torch's global generator,
        which ``lightning.seed_everything`` seeds; k = 0 keeps the batch as it is)."""
        c = self.model.config
        per_patch = c.patch.n_channels if c.patch.mode == "independent" else 1
        G = max(1, c.armt.segment_length // per_patch)
        T = batch["past_target"].shape[1]
        k = int(torch.randint(0, G, ()))
        while k and T - k * c.patch.stride < c.patch.patch_len:  # keep at least one whole patch
            k -= 1
        if not k:
            return batch
        cut = k * c.patch.stride
        return dict(batch, past_target=batch["past_target"][:, cut:],
                    past_observed_values=batch["past_observed_values"][:, cut:])

    def on_before_optimizer_step(self, optimizer) -> None:
        # A finite loss can still give a non-finite gradient (an overflow in backward); clipping would then spread
        # the NaN into every weight. fp16 runs are exempt: their GradScaler skips such steps by design.
        if str(self.trainer.precision).startswith("16"):
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):  # one device sync
            return
        bad = [n for n, p in self.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise FloatingPointError(
                f"non-finite gradient in {bad[0]} ({len(bad)} parameter(s)) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch index {getattr(self, '_train_batch_idx', '?')})")

    def validation_step(self, batch, batch_idx: int):  # type: ignore[override]
        return self._loss(batch, batch_idx, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

"""ARMTEstimator and ARMTPredictor: the GluonTS interface (DESIGN.md section 5), following gluonts.torch's
``patch_tst/estimator.py``: transformation, instance splitters, data loaders, lightning module, predictor.

    predictor = ARMTEstimator(prediction_length=24, trainer_kwargs={"max_epochs": 5}).train(dataset)
    gluonts.model.evaluate_model(predictor, test_data=..., metrics=[MSE(), MAE(), MeanWeightedSumQuantileLoss(...)])
    predictor.serialize(path); Predictor.deserialize(path)

Training runs on a Lightning Trainer built from ``trainer_kwargs`` (defaults ``max_epochs=100`` and
``gradient_clip_val=10.0``, as gluonts'): ``accelerator`` ("cpu", "gpu", "auto"), ``precision="bf16-mixed"``,
``strategy="ddp"`` with ``devices`` / ``num_nodes`` for data parallelism. Under DDP every rank draws from the same
instance stream and keeps every world_size-th window (``_RankShard``), so the ranks train on different windows.
Use ``strategy="ddp"`` (Lightning re-runs the script per rank), not "ddp_spawn", which must pickle the data loader
(gluonts' streaming loaders are generators). With a context of a single segment the memory projections get no
gradient; DDP then needs ``strategy="ddp_find_unused_parameters_true"``.

The serialised predictor is JSON (``predictor.json``, gluonts' serde) plus the weights as safetensors
(``prediction-net.safetensors``); no pickle, unlike gluonts' ``PyTorchPredictor``, which writes ``torch.save``.
"""

# No `from __future__ import annotations`: gluonts' @validated reads the annotations with pydantic v1, which
# cannot resolve them as strings.
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from gluonts.core.component import validated
from gluonts.dataset.common import Dataset
from gluonts.dataset.field_names import FieldName
from gluonts.dataset.loader import as_stacked_batches
from gluonts.itertools import Cyclic, select
from gluonts.model.forecast import SampleForecast
from gluonts.model.forecast_generator import (DistributionForecastGenerator, ForecastGenerator,
                                              QuantileForecastGenerator, make_predictions, to_numpy)
from gluonts.model.predictor import RepresentablePredictor
from gluonts.torch.model.estimator import PyTorchLightningEstimator
from gluonts.torch.model.predictor import PyTorchPredictor
from gluonts.torch.util import resolve_device
from gluonts.transform import (AddObservedValuesIndicator, AsNumpyArray, ExpectedNumInstanceSampler,
                               InstanceSampler, InstanceSplitter, SelectFields, TestSplitSampler, Transformation,
                               ValidationSplitSampler)

from ..config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
from ..state import StateFileError, atomic_save_safetensors, load_safetensors
from .lightning_module import ARMTLightningModule
from .module import DISTRIBUTION_KINDS

PREDICTION_INPUT_NAMES = ["past_target", "past_observed_values"]
TRAINING_INPUT_NAMES = PREDICTION_INPUT_NAMES + ["future_target", "future_observed_values"]

_WEIGHTS_FILE = "prediction-net.safetensors"
_WEIGHTS_FORMAT = "armt_ts.ARMTPredictor"
_WEIGHTS_VERSION = 1


class PointForecastGenerator(ForecastGenerator):
    """Point forecasts as one-sample ``SampleForecast`` objects: mean, median and every quantile are the point.

    ``num_samples`` is ignored: gluonts' ``SampleForecastGenerator`` would call a deterministic network again for
    every requested sample and get copies of the same path.
    """

    @validated()
    def __init__(self) -> None:
        pass

    def __call__(self, inference_data_loader, prediction_net, input_names, output_transform, num_samples, **kwargs):
        for batch in inference_data_loader:
            points = to_numpy(make_predictions(prediction_net, select(input_names, batch, ignore_missing=True)))
            if output_transform is not None:
                points = output_transform(batch, points)
            starts = batch[FieldName.FORECAST_START]
            for i, point in enumerate(points):  # point [H] or [H, C]
                yield SampleForecast(
                    point[None],
                    start_date=starts[i],
                    item_id=batch[FieldName.ITEM_ID][i] if FieldName.ITEM_ID in batch else None,
                    info=batch["info"][i] if "info" in batch else None,
                )


def forecast_generator(head: HeadConfig, module: ARMTLightningModule) -> ForecastGenerator:
    """The gluonts forecast generator matching ``ARMTModel.forward``'s output for ``head.kind``."""
    if head.kind == "point":
        return PointForecastGenerator()
    if head.kind == "quantile":
        return QuantileForecastGenerator(quantiles=[str(q) for q in head.quantiles])
    assert head.kind in DISTRIBUTION_KINDS
    return DistributionForecastGenerator(module.model.forecaster.head.output)


class ARMTPredictor(PyTorchPredictor):
    """gluonts' ``PyTorchPredictor`` whose weights are stored as safetensors instead of ``torch.save`` (pickle)."""

    def serialize(self, path: Path) -> None:
        path = Path(path)
        RepresentablePredictor.serialize(self, path)  # gluonts-config.json + predictor.json (JSON, gluonts serde)
        meta = {"format": _WEIGHTS_FORMAT, "version": _WEIGHTS_VERSION}
        atomic_save_safetensors(self.prediction_net.state_dict(), path / _WEIGHTS_FILE, meta)

    @classmethod
    def deserialize(cls, path: Path, device: Optional[Union[str, torch.device]] = None) -> "ARMTPredictor":
        path = Path(path)
        predictor = RepresentablePredictor.deserialize.__func__(cls, path)  # rebuilds the network from JSON
        if not isinstance(predictor, cls):
            raise StateFileError(f"{path}: predictor.json holds a {type(predictor).__name__}, not an {cls.__name__}")
        tensors, meta = load_safetensors(path / _WEIGHTS_FILE, _WEIGHTS_FORMAT)
        if meta.get("version") != _WEIGHTS_VERSION:
            raise StateFileError(f"{path / _WEIGHTS_FILE}: version {meta.get('version')!r}, "
                                 f"this armt_ts reads {_WEIGHTS_VERSION}")
        predictor.prediction_net.load_state_dict(tensors)  # strict: a missing or extra tensor raises
        if device is not None:
            predictor.to(resolve_device(device))
        return predictor


class _RankShard:
    """Keep the items ``i`` with ``i % world_size == rank`` of an iterable (all of them in a single process).

    The rank is looked up when iteration starts, i.e. inside the DDP worker after Lightning has set up the process
    group, not when the loader is built.
    """

    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            yield from self.iterable
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        for i, item in enumerate(self.iterable):
            if i % world == rank:
                yield item


class ARMTEstimator(PyTorchLightningEstimator):
    """Trains an ARMT forecaster on a gluonts dataset; ``train(dataset)`` returns an ``ARMTPredictor``.

    Args:
        prediction_length: H, forecast steps.
        context_length: steps of history the model reads (default ``4 * prediction_length``); it may span many
            segments (``armt.segment_length`` tokens each): the associative memory carries the earlier ones.
        target_dim: C; 1 for univariate series (target [T]), > 1 for multivariate ones (target [C, T]).
        armt, patch, head: the parts of the model (``ForecasterConfig.build`` sets their shared fields: D from
            ``armt.d_model``, C from ``target_dim``, H from ``prediction_length``). The default head is
            ``HeadConfig(kind="student_t")``, a probabilistic forecast as gluonts' estimators give.
        scaling: "std", "mean" or "none" (``ForecasterConfig.scaling``).
        lr, weight_decay: Adam's.
        batch_size: windows per batch (training, validation and prediction).
        num_batches_per_epoch: training batches per epoch (per rank under DDP).
        trainer_kwargs: extra ``lightning.pytorch.Trainer`` arguments, merged over the defaults.
        train_sampler, validation_sampler: where windows are cut (gluonts' defaults as PatchTST's).
    """

    @validated()
    def __init__(
        self,
        prediction_length: int,
        context_length: Optional[int] = None,
        target_dim: int = 1,
        armt: Optional[ARMTConfig] = None,
        patch: Optional[PatchConfig] = None,
        head: Optional[HeadConfig] = None,
        scaling: str = "std",
        lr: float = 1e-3,
        weight_decay: float = 1e-8,
        batch_size: int = 32,
        num_batches_per_epoch: int = 50,
        trainer_kwargs: Optional[dict[str, Any]] = None,
        train_sampler: Optional[InstanceSampler] = None,
        validation_sampler: Optional[InstanceSampler] = None,
    ) -> None:
        default_trainer_kwargs = {"max_epochs": 100, "gradient_clip_val": 10.0}
        if trainer_kwargs is not None:
            default_trainer_kwargs.update(trainer_kwargs)
        super().__init__(trainer_kwargs=default_trainer_kwargs)
        self.prediction_length = prediction_length
        self.context_length = context_length or 4 * prediction_length
        self.target_dim = target_dim
        self.config = ForecasterConfig.build(
            prediction_length, target_dim, armt=armt, patch=patch,
            head=head or HeadConfig(kind="student_t"), scaling=scaling,  # type: ignore[arg-type]
        )
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.num_batches_per_epoch = num_batches_per_epoch
        self.train_sampler = train_sampler or ExpectedNumInstanceSampler(num_instances=1.0,
                                                                         min_future=prediction_length)
        self.validation_sampler = validation_sampler or ValidationSplitSampler(min_future=prediction_length)

    def create_transformation(self) -> Transformation:
        return (
            SelectFields([FieldName.ITEM_ID, FieldName.INFO, FieldName.START, FieldName.TARGET], allow_missing=True)
            # float32: float64 targets meet float32 weights otherwise (NOTES.md)
            + AsNumpyArray(field=FieldName.TARGET, expected_ndim=1 if self.target_dim == 1 else 2, dtype=np.float32)
            # NaN -> observed 0 (and the value imputed with 0): the mask reaches the embedder
            + AddObservedValuesIndicator(target_field=FieldName.TARGET, output_field=FieldName.OBSERVED_VALUES)
        )

    def create_lightning_module(self) -> pl.LightningModule:
        return ARMTLightningModule(config=self.config.to_dict(), context_length=self.context_length,
                                   lr=self.lr, weight_decay=self.weight_decay)

    def _create_instance_splitter(self, module: ARMTLightningModule, mode: str) -> InstanceSplitter:
        assert mode in ("training", "validation", "test")
        sampler = {"training": self.train_sampler, "validation": self.validation_sampler,
                   "test": TestSplitSampler()}[mode]
        return InstanceSplitter(
            target_field=FieldName.TARGET,
            is_pad_field=FieldName.IS_PAD,
            start_field=FieldName.START,
            forecast_start_field=FieldName.FORECAST_START,
            instance_sampler=sampler,
            past_length=self.context_length,
            future_length=self.prediction_length,
            time_series_fields=[FieldName.OBSERVED_VALUES],
            dummy_value=0.0,  # padding before a short series' start; observed_values marks it 0
        )

    def create_training_data_loader(
        self, data: Dataset, module: ARMTLightningModule, shuffle_buffer_length: Optional[int] = None, **kwargs
    ) -> Iterable:
        instances = self._create_instance_splitter(module, "training").apply(Cyclic(data).stream(), is_train=True)
        return as_stacked_batches(
            _RankShard(instances),
            batch_size=self.batch_size,
            shuffle_buffer_length=shuffle_buffer_length,
            field_names=TRAINING_INPUT_NAMES,
            output_type=torch.tensor,
            num_batches_per_epoch=self.num_batches_per_epoch,
        )

    def create_validation_data_loader(self, data: Dataset, module: ARMTLightningModule, **kwargs) -> Iterable:
        # Not sharded: every rank scores the whole validation set, so the synced val_loss is that set's loss.
        instances = self._create_instance_splitter(module, "validation").apply(data, is_train=True)
        return as_stacked_batches(instances, batch_size=self.batch_size, field_names=TRAINING_INPUT_NAMES,
                                  output_type=torch.tensor)

    def create_predictor(self, transformation: Transformation, module: ARMTLightningModule) -> ARMTPredictor:
        return ARMTPredictor(
            input_transform=transformation + self._create_instance_splitter(module, "test"),
            input_names=PREDICTION_INPUT_NAMES,
            prediction_net=module,
            forecast_generator=forecast_generator(self.config.head, module),
            batch_size=self.batch_size,
            prediction_length=self.prediction_length,
            device="auto",
        )

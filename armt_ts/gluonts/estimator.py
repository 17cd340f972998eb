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
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from gluonts.core import fqname_for, serde
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
from gluonts.torch.model.forecast import DistributionForecast
from gluonts.torch.model.predictor import PyTorchPredictor
from gluonts.torch.util import resolve_device
from gluonts.transform import (AddObservedValuesIndicator, AsNumpyArray, ExpectedNumInstanceSampler,
                               InstanceSampler, InstanceSplitter, SelectFields, TestSplitSampler, Transformation,
                               ValidationSplitSampler)

from .. import __version__ as armt_ts_version
from ..config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
from ..state import StateFileError, atomic_save_safetensors, load_safetensors
from .lightning_module import ARMTLightningModule
from .module import DISTRIBUTION_KINDS

PREDICTION_INPUT_NAMES = ["past_target", "past_observed_values"]
TRAINING_INPUT_NAMES = PREDICTION_INPUT_NAMES + ["future_target", "future_observed_values"]

_WEIGHTS_FILE = "prediction-net.safetensors"
_PREDICTOR_FILE = "predictor.json"
_WEIGHTS_FORMAT = "armt_ts.ARMTPredictor"
# 2: the header records armt_ts_version, config, context_length, prediction_length and predictor.json's SHA-256
_WEIGHTS_VERSION = 2


class DatasetError(ValueError):
    """A gluonts dataset entry this model cannot read; the message names the entry (index and item_id) and field."""


def check_entry(entry: dict, index: int, target_dim: int, where: str) -> tuple[int, bool]:
    """Check one gluonts dataset entry for this model; return its length T and whether any value is observed.
    Raises DatasetError naming the entry (``where`` and its index, and its item_id) and the field: no target; a
    target that is not numbers or has the wrong shape ([T] for target_dim 1, [target_dim, T] otherwise); +-inf in
    the target (NaN marks a missing value and is fine); a ``start`` that is not a pandas Period (gluonts' instance
    splitter computes forecast dates from it; ``ListDataset(..., freq=...)`` converts strings and Timestamps)."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} entry {index}: expected a dict with 'start' and 'target', got "
                           f"{type(entry).__name__}")
    item = entry.get(FieldName.ITEM_ID)
    name = f"{where} entry {index}" + (f" (item_id {item!r})" if item is not None else "")
    if FieldName.TARGET not in entry:
        raise DatasetError(f"{name}: no 'target' field")
    try:
        target = np.asarray(entry[FieldName.TARGET], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{name}: field 'target' is not an array of numbers ({e})") from None
    shape = "[T]" if target_dim == 1 else f"[{target_dim}, T]"
    if target.ndim != (1 if target_dim == 1 else 2) or (target_dim > 1 and target.shape[0] != target_dim):
        raise DatasetError(f"{name}: field 'target' has shape {target.shape}; this model (target_dim={target_dim}) "
                           f"reads {shape}")
    bad = np.isinf(target)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f"step {pos[-1]}" + (f", channel {pos[0]}" if target_dim > 1 else "")
        raise DatasetError(f"{name}: field 'target' at {at} is {float(target[pos]):g}; expected finite values (NaN "
                           f"marks a missing value)")
    start = entry.get(FieldName.START)
    if not isinstance(start, pd.Period):
        raise DatasetError(f"{name}: field 'start' is a {type(start).__name__} ({start!r}); gluonts needs a pandas "
                           f"Period, e.g. pd.Period('2024-01-01', freq='h'), as ListDataset(..., freq=...) makes")
    return int(target.shape[-1]), bool(np.isfinite(target).any())


class _CheckedEntries:
    """A dataset whose entries are checked (``check_entry``) as they are read."""

    def __init__(self, data: Iterable[dict], target_dim: int, where: str):
        self.data, self.target_dim, self.where = data, target_dim, where

    def __iter__(self) -> Iterator[dict]:
        for i, entry in enumerate(self.data):
            check_entry(entry, i, self.target_dim, self.where)
            yield entry

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


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


class ChannelDistributionForecast(DistributionForecast):
    """gluonts' ``DistributionForecast`` with the ``dim`` / ``copy_dim`` / ``copy_aggregate`` that gluonts'
    ``MultivariateEvaluator`` reads (a plain DistributionForecast raises NotImplementedError there).

    Built from the distribution head's arguments for one series: ``distr_args`` [H] or [H, C], ``loc`` / ``scale``
    [1] or [1, C]. The channels are independent, so ``copy_dim(c)`` is the forecast [H] of channel c's marginals,
    exactly; ``copy_aggregate`` (e.g. the sum over channels) has no closed form and is computed from 200 sample
    paths (``to_sample_forecast``, torch's global generator).
    """

    def __init__(self, distr_output: Any, distr_args: tuple, loc: torch.Tensor, scale: torch.Tensor,
                 start_date: pd.Period, item_id: Optional[str] = None, info: Optional[dict] = None) -> None:
        super().__init__(distr_output.distribution(distr_args, loc, scale), start_date, item_id=item_id, info=info)
        self._parts = (distr_output, tuple(distr_args), loc, scale)

    def dim(self) -> int:
        return 1 if len(self.shape) == 1 else int(self.shape[1])

    def copy_dim(self, dim: int) -> "ChannelDistributionForecast":
        if len(self.shape) == 1:  # univariate: itself, as gluonts' SampleForecast.copy_dim
            return self
        if not 0 <= dim < self.dim():
            raise IndexError(f"copy_dim: dim must be in 0 .. {self.dim() - 1}, got {dim}")
        out, args, loc, scale = self._parts
        return ChannelDistributionForecast(out, tuple(a[..., dim] for a in args), loc[..., dim], scale[..., dim],
                                           self.start_date, item_id=self.item_id, info=self.info)

    def copy_aggregate(self, agg_fun) -> SampleForecast:
        return self.to_sample_forecast().copy_aggregate(agg_fun)


class ChannelDistributionForecastGenerator(DistributionForecastGenerator):
    """gluonts' ``DistributionForecastGenerator`` yielding ``ChannelDistributionForecast`` objects."""

    def __call__(self, inference_data_loader, prediction_net, input_names, output_transform, num_samples, **kwargs):
        for batch in inference_data_loader:
            distr_args, loc, scale = make_predictions(prediction_net, select(input_names, batch, ignore_missing=True))
            starts = batch[FieldName.FORECAST_START]
            for i, start in enumerate(starts):
                yield ChannelDistributionForecast(
                    self.distr_output, tuple(a[i] for a in distr_args), loc[i], scale[i], start,
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
    # gluonts' own class, so predictor.json stays readable by an armt_ts without ChannelDistributionForecastGenerator;
    # ARMTPredictor.predict uses that subclass in its place
    return DistributionForecastGenerator(module.model.forecaster.head.output)


class ARMTPredictor(PyTorchPredictor):
    """gluonts' ``PyTorchPredictor`` whose weights are stored as safetensors instead of ``torch.save`` (pickle).

    A saved folder holds ``gluonts-config.json`` and ``predictor.json`` (gluonts' JSON serde) and
    ``prediction-net.safetensors``, whose header records the file format version, the armt_ts version that wrote
    it, the forecaster config, the context length, a SHA-256 of ``predictor.json`` and one of the weights
    (``armt_ts.state``). ``deserialize`` checks all of that before it builds anything and raises
    ``StateFileError`` with a message naming the file and both armt_ts versions for: a missing, truncated or
    altered file; a ``predictor.json`` from another save; another format version; a config this armt_ts
    cannot build; a class outside armt_ts / gluonts / numpy named in ``predictor.json``; non-finite weights;
    weights that do not fit the network.
    """

    # predictor.json may only name classes from these packages (gluonts' serde instantiates what it names)
    _ALLOWED_CLASS_PREFIXES = ("armt_ts.", "gluonts.", "numpy.")
    _ALLOWED_BUILTINS = ("builtins.tuple", "builtins.list", "builtins.dict", "builtins.set", "builtins.frozenset")

    def predict(self, dataset: Dataset, num_samples: Optional[int] = None) -> Iterator:  # type: ignore[override]
        """gluonts' ``predict``, with every entry checked as it is read (``check_entry``): a bad one raises a
        DatasetError naming it, instead of an error about a position in a batch."""
        channels = self.prediction_net.model.config.patch.n_channels
        gen = self.forecast_generator
        if type(gen) is DistributionForecastGenerator:  # forecasts gluonts' MultivariateEvaluator can read; the
            # saved predictor.json keeps naming gluonts' class (serde records the constructor's arguments)
            self.forecast_generator = ChannelDistributionForecastGenerator(gen.distr_output)
        yield from super().predict(_CheckedEntries(dataset, channels, "dataset"), num_samples=num_samples)

    def serialize(self, path: Path) -> None:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not a folder (ARMTPredictor.serialize writes a folder)")
        path.mkdir(parents=True, exist_ok=True)
        # The JSON files are written next to the target and renamed into place (never half-written); the weights,
        # which record predictor.json's checksum, go last, so a crash in between is detected at load.
        with tempfile.TemporaryDirectory(prefix=".armt-ts-serialize-", dir=path) as tmp:
            RepresentablePredictor.serialize(self, Path(tmp))  # gluonts-config.json + predictor.json
            for name in sorted(p.name for p in Path(tmp).iterdir()):
                os.replace(Path(tmp) / name, path / name)
        model = self.prediction_net.model
        meta = {"format": _WEIGHTS_FORMAT, "version": _WEIGHTS_VERSION, "armt_ts_version": armt_ts_version,
                "config": model.config.to_dict(), "context_length": model.context_length,
                "prediction_length": self.prediction_length,
                "predictor_json_sha256": hashlib.sha256((path / _PREDICTOR_FILE).read_bytes()).hexdigest()}
        atomic_save_safetensors(self.prediction_net.state_dict(), path / _WEIGHTS_FILE, meta)

    @classmethod
    def deserialize(cls, path: Path, device: Optional[Union[str, torch.device]] = None) -> "ARMTPredictor":
        path = Path(path)
        spec, weights = path / _PREDICTOR_FILE, path / _WEIGHTS_FILE
        for f in (spec, weights):
            if not f.is_file():
                raise StateFileError(f"{f}: no such file (expected a folder written by ARMTPredictor.serialize)")
        tensors, meta = load_safetensors(weights, _WEIGHTS_FORMAT)  # format tag and checksum
        writer = meta.get("armt_ts_version", "unknown")
        versions = f"written by armt_ts {writer}, read by armt_ts {armt_ts_version}"
        if meta.get("version") != _WEIGHTS_VERSION:
            raise StateFileError(f"{weights}: model file format version {meta.get('version')!r} ({versions}), but "
                                 f"this armt_ts reads version {_WEIGHTS_VERSION}: retrain the model, or load it with "
                                 f"armt_ts {writer}")
        try:
            config = ForecasterConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError
            raise StateFileError(f"{weights}: the recorded model config cannot be built ({versions}): "
                                 f"{type(e).__name__}: {e}") from None
        text = spec.read_bytes()
        if hashlib.sha256(text).hexdigest() != meta.get("predictor_json_sha256"):
            raise StateFileError(f"{spec}: does not belong to the weights in {weights.name} (edited after saving, "
                                 f"or copied from another save)")
        try:
            cls._check_classes(json.loads(text), spec)
            predictor = RepresentablePredictor.deserialize.__func__(cls, path)  # rebuilds the network from JSON
        except StateFileError:
            raise
        except Exception as e:  # gluonts' serde raises many types; all mean "this armt_ts cannot rebuild it"
            text_e = str(e).strip().splitlines()
            raise StateFileError(f"{spec}: cannot rebuild the predictor ({versions}): {type(e).__name__}: "
                                 f"{text_e[0] if text_e else ''}") from None
        if not isinstance(predictor, cls):
            raise StateFileError(f"{path}: predictor.json holds a {type(predictor).__name__}, not an {cls.__name__}")
        model = predictor.prediction_net.model
        if model.config != config or model.context_length != meta.get("context_length"):
            raise StateFileError(f"{path}: predictor.json and {weights.name} describe different models (config or "
                                 f"context length differ)")
        horizon = model.config.head.horizon
        if predictor.prediction_length != horizon or meta.get("prediction_length") != horizon:
            raise StateFileError(f"{path}: prediction_length {predictor.prediction_length} (predictor.json) / "
                                 f"{meta.get('prediction_length')!r} ({weights.name}) differ from the model's "
                                 f"horizon {horizon}")
        for name in sorted(tensors):
            t = tensors[name]
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise StateFileError(f"{weights}: weight {name} holds non-finite values (NaN / inf)")
        try:
            predictor.prediction_net.load_state_dict(tensors)  # strict: a missing or extra tensor raises
        except RuntimeError as e:  # torch names every missing, unexpected and misshapen tensor, one per line
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            detail = " ".join(lines[1:9]) + (f" ... ({len(lines) - 9} more)" if len(lines) > 9 else "")
            raise StateFileError(f"{weights}: the weights do not fit the network ({versions}): {detail or lines[0]}") \
                from None
        if device is not None:
            predictor.to(resolve_device(device))
        return predictor

    @classmethod
    def _check_classes(cls, node: Any, spec: Path) -> None:
        """Refuse a predictor.json that names a class outside armt_ts / gluonts / numpy (or plain containers)."""
        if isinstance(node, dict):
            name = node.get("class")
            if "__kind__" in node and not (isinstance(name, str) and (
                    name.startswith(cls._ALLOWED_CLASS_PREFIXES) or name in cls._ALLOWED_BUILTINS)):
                raise StateFileError(f"{spec}: names the class {name!r}; a predictor file may only name classes "
                                     f"from {', '.join(p.rstrip('.') for p in cls._ALLOWED_CLASS_PREFIXES)}")
            for value in node.values():
                cls._check_classes(value, spec)
        elif isinstance(node, list):
            for value in node:
                cls._check_classes(value, spec)


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


class SkipWindows:
    """The linear skip's training windows (``ARMTForecaster.fit_skip``, which reads them once per pass) from
    transformed training entries (a ``target`` [T] or [C, T] with ``observed_values``): every forecast origin with
    a whole context and a whole future inside its series; a series too short for one context gets every origin
    with a whole future (the context left-padded with unobserved zeros, as the instance splitter pads). Iterating
    yields batches of ``chunk`` windows (past_values [b, L, C], past_observed, future_values [b, H, C],
    future_observed), the same ones each time. Over ``max_windows`` windows in all, every k-th origin of each
    series is taken instead, evenly."""

    def __init__(self, data: Iterable[dict], context_length: int, horizon: int, target_dim: int, chunk: int = 4096,
                 max_windows: int = 500_000):
        entries = [(np.asarray(e[FieldName.TARGET], np.float32),
                    np.asarray(e[FieldName.OBSERVED_VALUES], np.float32)) for e in data]
        self.entries = [(t[None], o[None]) for t, o in entries] if target_dim == 1 else entries
        self.L, self.H, self.chunk = context_length, horizon, chunk
        total = sum(T - horizon - self._first(T) + 1 for T in (t.shape[-1] for t, _ in self.entries) if T > horizon)
        self.every = max(1, -(-total // max_windows))

    def _first(self, T: int) -> int:
        """The earliest origin of a series of T steps: a whole context where it holds one, else its first step."""
        return self.L if T - self.H >= self.L else 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for target, observed in self.entries:
            yield from self._series(target, observed)

    def _series(self, target: np.ndarray, observed: np.ndarray) -> Iterator[tuple[torch.Tensor, ...]]:
        L, H, T = self.L, self.H, target.shape[-1]
        if T <= H:
            return
        # [C, T] -> [L + T, C], L unobserved steps first; origin t (1 .. T - H) reads padded rows t .. t + L
        v = np.concatenate([np.zeros((L, target.shape[0]), np.float32), target.T])
        o = np.concatenate([np.zeros((L, target.shape[0]), np.float32), observed.T])
        origins = slice(self._first(T), T - H + 1, self.every)
        windows_v = np.lib.stride_tricks.sliding_window_view(v, L + H, axis=0)[origins]  # [n, C, L + H]
        windows_o = np.lib.stride_tricks.sliding_window_view(o, L + H, axis=0)[origins]
        for i in range(0, len(windows_v), self.chunk):
            # copies (np.array): a lone window of one channel is already contiguous, and ascontiguousarray would
            # hand torch the read-only window view itself (a warning, and a tensor that must not be written)
            wv = torch.from_numpy(np.array(windows_v[i:i + self.chunk].transpose(0, 2, 1), order="C"))  # [b, L+H, C]
            wo = torch.from_numpy(np.array(windows_o[i:i + self.chunk].transpose(0, 2, 1), order="C"))
            yield wv[:, :L], wo[:, :L], wv[:, L:], wo[:, L:]


@serde.encode.register(ARMTConfig)
@serde.encode.register(PatchConfig)
@serde.encode.register(HeadConfig)
def _encode_config(config: Any) -> Any:
    """gluonts' serde (``serde.encode`` / ``dump_json``) records a @validated component such as ``ARMTEstimator`` by
    its arguments; a config among them is recorded as its class and fields, which ``serde.decode`` passes back."""
    return {"__kind__": serde.Kind.Instance, "class": fqname_for(type(config)),
            "kwargs": serde.encode({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})}


_INTEGER_ARGUMENTS = ("prediction_length", "context_length", "target_dim", "linear_skip", "batch_size",
                      "num_batches_per_epoch")


def _whole_numbers(init):
    """Refuse a fraction or a bool where ``ARMTEstimator`` takes a count, before gluonts' ``@validated`` sees it:
    its pydantic v1 model would truncate ``context_length=2.5`` to 2 and read ``batch_size=True`` as 1."""
    signature = inspect.signature(init)

    @functools.wraps(init)  # keeps @validated's ``Model`` attribute, which gluonts' serde reads
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs).arguments
        for name in _INTEGER_ARGUMENTS:
            value = bound.get(name)
            if isinstance(value, (bool, np.bool_)) or (isinstance(value, (float, np.floating))
                                                        and not float(value).is_integer()):
                raise ValueError(f"ARMTEstimator: {name} must be a whole number, got {value!r}")
        init(self, *args, **kwargs)

    return wrapper


def _check_arguments(**kwargs: Any) -> None:
    """ARMTEstimator's numeric arguments, each named in the error (before any config is built from them)."""
    for name in ("prediction_length", "target_dim", "batch_size", "num_batches_per_epoch"):
        if kwargs[name] < 1:
            raise ValueError(f"ARMTEstimator: {name} must be >= 1, got {kwargs[name]!r}")
    if kwargs["context_length"] is not None and kwargs["context_length"] < 1:
        raise ValueError(f"ARMTEstimator: context_length must be >= 1 (or None: 4 * prediction_length), got "
                         f"{kwargs['context_length']!r}")
    if kwargs["linear_skip"] < 0:
        raise ValueError(f"ARMTEstimator: linear_skip must be >= 0 (0: no skip), got {kwargs['linear_skip']!r}")
    if not (np.isfinite(kwargs["lr"]) and kwargs["lr"] > 0):
        raise ValueError(f"ARMTEstimator: lr must be a finite number > 0, got {kwargs['lr']!r}")
    for name in ("weight_decay", "linear_skip_ridge"):
        if not (np.isfinite(kwargs[name]) and kwargs[name] >= 0):
            raise ValueError(f"ARMTEstimator: {name} must be a finite number >= 0, got {kwargs[name]!r}")


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
        linear_skip, linear_skip_ridge: ``ForecasterConfig.linear_skip`` / ``linear_skip_ridge``. With
            ``linear_skip`` = n > 0 the skip is fitted by least squares on every training window (``SkipWindows``)
            before the first optimiser step, and the network then trains on its residual.
        lr, weight_decay: Adam's.
        random_start: ``ARMTLightningModule``'s: each training batch starts its contexts a random number of patches
            later, so the head learns to forecast from every position in a segment, as a stream does.
        batch_size: windows per batch (training, validation and prediction).
        num_batches_per_epoch: training batches per epoch (per rank under DDP).
        trainer_kwargs: extra ``lightning.pytorch.Trainer`` arguments, merged over the defaults.
        train_sampler, validation_sampler: where windows are cut (gluonts' defaults as PatchTST's).
    """

    @_whole_numbers
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
        linear_skip: int = 0,
        linear_skip_ridge: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-8,
        random_start: bool = False,
        batch_size: int = 32,
        num_batches_per_epoch: int = 50,
        trainer_kwargs: Optional[dict[str, Any]] = None,
        train_sampler: Optional[InstanceSampler] = None,
        validation_sampler: Optional[InstanceSampler] = None,
    ) -> None:
        _check_arguments(prediction_length=prediction_length, context_length=context_length, target_dim=target_dim,
                         linear_skip=linear_skip, linear_skip_ridge=linear_skip_ridge, lr=lr,
                         weight_decay=weight_decay, batch_size=batch_size, num_batches_per_epoch=num_batches_per_epoch)
        default_trainer_kwargs = {"max_epochs": 100, "gradient_clip_val": 10.0}
        if trainer_kwargs is not None:
            default_trainer_kwargs.update(trainer_kwargs)
        super().__init__(trainer_kwargs=default_trainer_kwargs)
        self.prediction_length = prediction_length
        self.context_length = 4 * prediction_length if context_length is None else context_length
        self.target_dim = target_dim
        self.config = ForecasterConfig.build(
            prediction_length, target_dim, armt=armt, patch=patch,
            head=head or HeadConfig(kind="student_t"), scaling=scaling,  # type: ignore[arg-type]
            linear_skip=linear_skip, linear_skip_ridge=linear_skip_ridge,
        )
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_start = random_start
        self.batch_size = batch_size
        self.num_batches_per_epoch = num_batches_per_epoch
        self.train_sampler = train_sampler or ExpectedNumInstanceSampler(num_instances=1.0,
                                                                         min_future=prediction_length)
        self.validation_sampler = validation_sampler or ValidationSplitSampler(min_future=prediction_length)

    def train_model(self, training_data: Dataset, validation_data: Optional[Dataset] = None, *args, **kwargs):
        """gluonts' ``train_model`` after a pass over the data (``check_entry`` on every entry): a bad entry raises a
        DatasetError naming it, and so does data with nothing to train on (no entry, no observed value, or no series
        longer than ``prediction_length``, which gluonts' instance splitter would wait on forever)."""
        self._check_data(training_data, "training_data")
        if validation_data is not None:
            self._check_data(validation_data, "validation_data")
        return super().train_model(training_data, validation_data, *args, **kwargs)

    def _check_data(self, data: Dataset, where: str) -> None:
        n, longest, observed = 0, 0, False
        for i, entry in enumerate(data):
            length, seen = check_entry(entry, i, self.target_dim, where)
            longest, observed, n = max(longest, length), observed or seen, n + 1
        if n == 0:
            raise DatasetError(f"{where}: no entries")
        if not observed:
            raise DatasetError(f"{where}: every target value of its {n} entries is missing (NaN): nothing to train on")
        if longest <= self.prediction_length:
            raise DatasetError(f"{where}: the longest of its {n} series has {longest} steps; training needs a series "
                               f"longer than prediction_length ({self.prediction_length}), to have a future to learn")

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
                                   lr=self.lr, weight_decay=self.weight_decay, random_start=self.random_start)

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
        if self.config.linear_skip:  # the least-squares skip first (on every rank alike: each sees all the data)
            module.model.forecaster.fit_skip(SkipWindows(data, self.context_length, self.prediction_length,
                                                         self.target_dim))
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

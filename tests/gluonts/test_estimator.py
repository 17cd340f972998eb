"""The GluonTS interface (armt_ts/gluonts/): module inputs and outputs, training with Lightning, evaluation with
gluonts.ev metrics, predictor serialisation, seeding, NaN-loss reporting, bf16 and multivariate targets.

Every model here is tiny and trains for a handful of batches: these tests check the plumbing, not accuracy."""

import math
import re
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from gluonts.dataset.common import ListDataset
from gluonts.dataset.split import split
from gluonts.ev.metrics import MAE, MSE, MeanWeightedSumQuantileLoss
from gluonts.model import Predictor, evaluate_model
from gluonts.model.forecast import QuantileForecast, SampleForecast
from gluonts.torch.model.forecast import DistributionForecast

from armt_ts.config import ARMTConfig, ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.gluonts import ARMTEstimator, ARMTLightningModule, ARMTModel, ARMTPredictor

H = 12
ARMT = ARMTConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, segment_length=4, num_mem_tokens=2, d_mem=4)
CONTEXT = 96  # 12 patches of 8 steps = 3 segments: the memory is on the path
FORECAST_TYPE = {"student_t": DistributionForecast, "quantile": QuantileForecast, "point": SampleForecast}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        yield


def _sines(n=4, length=240, target_dim=1, missing=True):
    t = np.arange(length)
    entries = []
    for k in range(n):
        rows = [(k + 1) * np.sin(2 * np.pi * t / 24 + k + c) + 10 * k + c for c in range(target_dim)]
        target = np.stack(rows).astype(np.float32)
        if missing:
            target[:, 40 + 7 * k: 50 + 7 * k] = np.nan  # gaps become observed_values 0
        entries.append({"start": "2024-01-01 00:00", "target": target[0] if target_dim == 1 else target})
    return ListDataset(entries, freq="h", one_dim_target=target_dim == 1)


def _split(ds):
    train, template = split(ds, offset=-2 * H)
    return train, template.generate_instances(prediction_length=H, windows=2, distance=H)


def _estimator(tmp_path, kind="student_t", target_dim=1, mode="independent", batches=4, **trainer):
    kwargs = dict(max_epochs=1, default_root_dir=str(tmp_path), enable_progress_bar=False,
                  enable_model_summary=False, logger=False, **trainer)
    return ARMTEstimator(prediction_length=H, context_length=CONTEXT, target_dim=target_dim, armt=ARMT,
                         patch=PatchConfig(patch_len=8, stride=8, mode=mode), head=HeadConfig(kind=kind), batch_size=8,
                         num_batches_per_epoch=batches, trainer_kwargs=kwargs)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _metrics(predictor, test):
    res = evaluate_model(predictor, test_data=test,
                         metrics=[MSE(), MAE(), MeanWeightedSumQuantileLoss(quantile_levels=[0.1, 0.5, 0.9])])
    return res.iloc[0].to_dict()


@pytest.mark.parametrize("kind", ["student_t", "quantile", "point", "normal"])
@pytest.mark.parametrize("target_dim", [1, 3])
def test_module_describes_its_inputs(kind, target_dim):
    mode = "mixing" if kind == "normal" else "independent"
    cfg = ForecasterConfig.build(H, target_dim, armt=ARMT.replace(segment_length=6),
                                 patch=PatchConfig(patch_len=8, stride=8, mode=mode), head=HeadConfig(kind=kind))
    model = ARMTModel(cfg, context_length=40)
    out = model(**model.describe_inputs(batch_size=2).zeros())
    lead = (2, H) if target_dim == 1 else (2, H, target_dim)
    stat = (2, 1) if target_dim == 1 else (2, 1, target_dim)
    if kind == "point":
        assert out.shape == lead
    elif kind == "quantile":
        (q,), loc, scale = out
        assert q.shape == lead + (3,) and loc.shape == scale.shape == stat
    else:
        args, loc, scale = out
        assert all(a.shape == lead for a in args) and loc.shape == scale.shape == stat


def test_estimator_defaults():
    est = ARMTEstimator(prediction_length=H, armt=ARMT)
    assert est.context_length == 4 * H
    assert est.trainer_kwargs == {"max_epochs": 100, "gradient_clip_val": 10.0}
    assert est.config.head.kind == "student_t" and est.config.head.horizon == H and est.config.patch.d_model == 16
    est = ARMTEstimator(prediction_length=H, armt=ARMT, trainer_kwargs={"max_epochs": 3, "precision": "bf16-mixed"})
    assert est.trainer_kwargs == {"max_epochs": 3, "gradient_clip_val": 10.0, "precision": "bf16-mixed"}


@pytest.mark.parametrize("kind", ["student_t", "quantile", "point"])
def test_train_evaluate_and_round_trip(kind, tmp_path):
    """Trains in well under a second, evaluates with gluonts.ev metrics, and serialises to JSON + safetensors."""
    train, test = _split(_sines())
    predictor = _estimator(tmp_path, kind).train(train, validation_data=train if kind == "point" else None)
    assert isinstance(predictor, ARMTPredictor)
    forecasts = list(predictor.predict(test.input))
    assert len(forecasts) == 8 and all(isinstance(f, FORECAST_TYPE[kind]) for f in forecasts)
    assert forecasts[0].mean.shape == (H,)
    metrics = _metrics(predictor, test)
    assert set(metrics) == {"MSE[mean]", "MAE[0.5]", "mean_weighted_sum_quantile_loss"}
    assert all(math.isfinite(v) for v in metrics.values()), metrics

    path = tmp_path / "predictor"
    path.mkdir()
    predictor.serialize(path)
    assert sorted(p.name for p in path.iterdir()) == ["gluonts-config.json", "prediction-net.safetensors",
                                                      "predictor.json"]  # no pickle
    loaded = Predictor.deserialize(path)
    assert isinstance(loaded, ARMTPredictor)
    for a, b in zip(forecasts, loaded.predict(test.input)):
        for level in (0.1, 0.5, 0.9):
            np.testing.assert_array_equal(a.quantile(level), b.quantile(level))
        np.testing.assert_array_equal(a.mean, b.mean)


def test_same_seed_gives_identical_weights(tmp_path):
    ds = _sines(missing=False)

    def train(seed):
        pl.seed_everything(seed, verbose=False)
        return _weights(_estimator(tmp_path / str(seed), batches=3).train(ds).prediction_net)

    first, again, other = train(0), train(0), train(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("kind", ["point", "student_t"])
def test_nan_loss_raises_with_the_step(kind, tmp_path, monkeypatch):
    """A NaN loss raises FloatingPointError naming the step; a distribution head's NaN parameters are rejected by
    torch.distributions (ValueError) before a loss exists, and that error gets a note naming the step."""
    est = _estimator(tmp_path, kind)
    module = est.create_lightning_module()
    with torch.no_grad():
        next(module.model.forecaster.head.parameters()).fill_(float("nan"))
    monkeypatch.setattr(est, "create_lightning_module", lambda: module)
    where = "global step 0 (epoch 0, batch index 0)"
    if kind == "point":
        with pytest.raises(FloatingPointError, match=re.escape(f"train loss is nan at {where}")):
            est.train(_sines())
    else:
        with pytest.raises(ValueError) as info:
            est.train(_sines())
        assert f"raised by the train loss at {where}" in info.value.__notes__


def test_bf16_mixed_precision(tmp_path):
    """precision="bf16-mixed" passes through to Lightning; the predictor then runs in fp32."""
    out = _estimator(tmp_path, batches=2, precision="bf16-mixed").train_model(_sines())
    assert out.trainer.precision == "bf16-mixed"
    assert math.isfinite(out.trainer.callback_metrics["train_loss"].item())
    forecast = next(iter(out.predictor.predict(_sines(n=1))))
    assert forecast.mean.dtype == np.float32 and np.isfinite(forecast.mean).all()


@pytest.mark.parametrize("kind, mode", [("student_t", "independent"), ("quantile", "mixing")])
def test_multivariate_target(kind, mode, tmp_path):
    """target [C, T] (gluonts' multivariate layout): forecasts are [H, C] and the metrics are finite."""
    train, test = _split(_sines(n=2, target_dim=2))
    predictor = _estimator(tmp_path, kind, target_dim=2, mode=mode, batches=2).train(train)
    forecast = next(iter(predictor.predict(test.input)))
    assert forecast.mean.shape == (H, 2)
    assert all(math.isfinite(v) for v in _metrics(predictor, test).values())


def test_lightning_module_is_rebuilt_from_its_arguments():
    """gluonts serialises the predictor's network as its constructor arguments (JSON); they must rebuild it."""
    cfg = ForecasterConfig.build(H, armt=ARMT, patch=PatchConfig(patch_len=8, stride=8),
                                 head=HeadConfig(kind="quantile"))
    module = ARMTLightningModule(config=cfg.to_dict(), context_length=CONTEXT, lr=3e-3)
    args, kwargs = module.__getnewargs_ex__()
    rebuilt = ARMTLightningModule(*args, **kwargs)
    assert rebuilt.model.config == cfg and rebuilt.lr == 3e-3
    assert rebuilt.state_dict().keys() == module.state_dict().keys()


def test_random_start_drops_whole_patches_from_training_contexts_only(tmp_path):
    """random_start: each training batch's contexts lose k * stride steps, k uniform in 0 .. G - 1 (G = patches per
    segment), never below one patch; the validation loss reads the whole context; the seed fixes the draws."""
    cfg = ForecasterConfig.build(H, armt=ARMT, patch=PatchConfig(patch_len=8, stride=8))
    module = ARMTLightningModule(config=cfg.to_dict(), context_length=CONTEXT, random_start=True)
    G = ARMT.segment_length  # "independent" with one channel: one token per patch
    batch = {"past_target": torch.randn(3, CONTEXT), "past_observed_values": torch.ones(3, CONTEXT),
             "future_target": torch.randn(3, H), "future_observed_values": torch.ones(3, H)}
    torch.manual_seed(0)
    lengths = [module._drop_start(batch)["past_target"].shape[1] for _ in range(200)]
    assert sorted(set(lengths)) == [CONTEXT - 8 * k for k in range(G - 1, -1, -1)]
    cut = module._drop_start(batch)
    T = cut["past_target"].shape[1]
    assert torch.equal(cut["past_target"], batch["past_target"][:, CONTEXT - T:])
    assert torch.equal(cut["past_observed_values"], batch["past_observed_values"][:, CONTEXT - T:])
    assert cut["future_target"] is batch["future_target"]
    # a context of one patch and a bit: nothing to drop beyond it
    short = {k: v[:, -10:] if k.startswith("past") else v for k, v in batch.items()}
    assert all(module._drop_start(short)["past_target"].shape[1] >= 8 for _ in range(50))
    torch.manual_seed(1)
    first = [module._drop_start(batch)["past_target"].shape[1] for _ in range(20)]
    torch.manual_seed(1)
    assert first == [module._drop_start(batch)["past_target"].shape[1] for _ in range(20)]
    # off (the default): the batch as it is; and the estimator passes the flag to its module
    assert ARMTLightningModule(config=cfg.to_dict(), context_length=CONTEXT).random_start is False
    est = ARMTEstimator(prediction_length=H, context_length=CONTEXT, armt=ARMT, random_start=True)
    assert est.create_lightning_module().random_start is True
    train, test = _split(_sines())
    kwargs = dict(max_epochs=1, default_root_dir=str(tmp_path), enable_progress_bar=False,
                  enable_model_summary=False, logger=False)
    predictor = ARMTEstimator(prediction_length=H, context_length=CONTEXT, armt=ARMT,
                              patch=PatchConfig(patch_len=8, stride=8), batch_size=8, num_batches_per_epoch=4,
                              random_start=True, trainer_kwargs=kwargs).train(train)
    assert all(math.isfinite(v) for v in _metrics(predictor, test).values())


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(num_batches_per_epoch=0), "num_batches_per_epoch must be >= 1, got 0"),
    (dict(context_length=0), r"context_length must be >= 1 \(or None"),
    (dict(context_length=-5), "context_length must be >= 1"),
    (dict(prediction_length=0), "prediction_length must be >= 1, got 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (dict(lr=-1.0), "lr must be a finite number > 0"),
    (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
    (dict(linear_skip=-2), "linear_skip must be >= 0"),
    # gluonts' pydantic model would truncate these to 2 / read them as 1
    (dict(context_length=2.5), r"context_length must be a whole number, got 2.5"),
    (dict(batch_size=True), "batch_size must be a whole number, got True"),
    (dict(prediction_length=np.float32(24.5)), "prediction_length must be a whole number"),
])
def test_bad_arguments_are_refused_at_construction_by_name(kwargs, message):
    with pytest.raises(ValueError, match=f"ARMTEstimator: {message}"):
        ARMTEstimator(**{"prediction_length": H, **kwargs})


def test_whole_floats_and_numpy_integers_are_counts_as_before():
    est = ARMTEstimator(prediction_length=np.int64(H), context_length=4.0 * H, batch_size=np.int32(8))
    assert (est.prediction_length, est.context_length, est.batch_size) == (H, 4 * H, 8)
    assert type(est).__init__.Model is not None  # gluonts' serde still finds the validated model


def test_datasets_it_cannot_train_on_or_read_are_named(tmp_path):
    from armt_ts.gluonts import DatasetError

    est = _estimator(tmp_path)
    t = np.sin(np.arange(200) / 5).astype(np.float32)
    cases = [
        ([], "training_data: no entries"),
        (ListDataset([{"start": "2024-01-01", "target": np.full(200, np.nan)}], freq="h"),
         "every target value of its 1 entries is missing"),
        (ListDataset([{"start": "2024-01-01", "target": t[:H]}], freq="h"),
         f"the longest of its 1 series has {H} steps; training needs a series longer than prediction_length"),
        (ListDataset([{"start": "2024-01-01", "target": t}, {"start": "2024-01-01", "item_id": "pump-2",
                                                              "target": np.r_[t[:150], np.inf, t[151:]]}], freq="h"),
         "training_data entry 1 (item_id 'pump-2'): field 'target' at step 150 is inf"),
        ([{"start": "2024-01-01 00:00", "target": t}], "training_data entry 0: field 'start' is a str"),
        (ListDataset([{"start": "2024-01-01", "target": np.stack([t, t])}], freq="h", one_dim_target=False),
         r"training_data entry 0: field 'target' has shape \(2, 200\); this model \(target_dim=1\) reads \[T\]"),
    ]
    for data, message in cases:
        with pytest.raises(DatasetError, match=re.escape(message) if "\\" not in message else message):
            est.train(data)
    predictor = est.train(_sines(2))
    bad = [{"start": e["start"], "target": e["target"].copy(), "item_id": f"s{i}"} for i, e in enumerate(_sines(5))]
    bad[4]["target"][-3] = -np.inf
    with pytest.raises(DatasetError, match=r"dataset entry 4 \(item_id 's4'\): field 'target' at step 237 is -inf"):
        list(predictor.predict(bad))
    assert len(list(predictor.predict(bad[:4]))) == 4


@pytest.mark.parametrize("kind", ["student_t", "laplace"])
def test_multivariate_distribution_forecasts_work_with_the_multivariate_evaluator(kind, tmp_path):
    """gluonts' MultivariateEvaluator reads forecast.dim() and copy_dim(c); a plain DistributionForecast raised
    NotImplementedError. Channel c's forecast is the c-th marginal of the [H, C] forecast."""
    from gluonts.evaluation import MultivariateEvaluator, make_evaluation_predictions

    ds = _sines(n=2, target_dim=2)
    predictor = _estimator(tmp_path, kind, target_dim=2, batches=2).train(ds)
    forecasts, series = make_evaluation_predictions(ds, predictor)
    forecasts, series = list(forecasts), list(series)
    f = forecasts[0]
    assert f.dim() == 2
    for c in range(2):
        one = f.copy_dim(c)
        assert one.start_date == f.start_date and one.item_id == f.item_id and one.mean.shape == (H,)
        np.testing.assert_allclose(one.mean, f.mean[:, c], rtol=1e-6)
        np.testing.assert_allclose(one.quantile(0.9), f.quantile(0.9)[:, c], rtol=1e-6)
    agg, _ = MultivariateEvaluator(quantiles=[0.1, 0.5, 0.9], num_workers=0)(series, forecasts)
    assert all(math.isfinite(agg[k]) for k in ("MSE", "0_MSE", "1_MSE", "mean_wQuantileLoss")), agg
    # the saved predictor names gluonts' own generator (an older armt_ts reads it); a loaded one still gives these
    predictor.serialize(tmp_path / "saved")
    assert "armt_ts.gluonts.estimator.ChannelDistributionForecastGenerator" not in (
        tmp_path / "saved" / "predictor.json").read_text()
    loaded = next(iter(ARMTPredictor.deserialize(tmp_path / "saved").predict(ds)))
    assert loaded.dim() == 2 and np.array_equal(loaded.mean, next(iter(predictor.predict(ds))).mean)
    univariate = next(iter(_estimator(tmp_path / "u", kind, batches=1).train(_sines(n=1)).predict(_sines(n=1))))
    assert univariate.dim() == 1


def test_the_estimator_round_trips_through_gluonts_serde(tmp_path):
    """serde.encode / decode (gluonts' way of recording a @validated component) rebuilds the estimator."""
    from gluonts.core import serde

    est = _estimator(tmp_path, "quantile")
    again = serde.decode(serde.encode(est))
    assert isinstance(again, ARMTEstimator) and again.config == est.config
    assert again.context_length == CONTEXT and again.trainer_kwargs == est.trainer_kwargs
    assert serde.decode(serde.encode(est.config.armt)) == ARMT

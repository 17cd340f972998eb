"""The GluonTS interface (DESIGN.md section 5), split as gluonts.torch's models are: module (the network with
gluonts' input names), lightning_module (training), estimator (data pipeline, Trainer, predictor)."""

from .estimator import (ARMTEstimator, ARMTPredictor, ChannelDistributionForecast, ChannelDistributionForecastGenerator,
                        DatasetError, PointForecastGenerator)
from .lightning_module import ARMTLightningModule
from .module import ARMTModel

__all__ = ["ARMTEstimator", "ARMTLightningModule", "ARMTModel", "ARMTPredictor", "ChannelDistributionForecast",
           "ChannelDistributionForecastGenerator", "DatasetError", "PointForecastGenerator"]

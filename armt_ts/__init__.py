"""armt_ts: the Associative Recurrent Memory Transformer (ARMT, arXiv 2407.04841) for telemetry.

The backbone, its configs and memory state import eagerly; the forecaster, the streaming runtime and the GluonTS
interface (which pull in gluonts and lightning) on first use: ``from armt_ts import StreamingForecaster`` works.
"""

from .backbone import ARMT
from .config import ARMTConfig, ConfigError, ForecasterConfig, HeadConfig, PatchConfig
from .state import MemoryState, StateFileError

__version__ = "0.1.0"

_LAZY = {"ARMTForecaster": "forecaster", "StreamingForecaster": "stream", "ARMTEstimator": "gluonts",
         "ARMTPredictor": "gluonts", "GaussianChannelImputer": "impute"}

__all__ = ["ARMT", "ARMTConfig", "ConfigError", "ForecasterConfig", "HeadConfig", "MemoryState", "PatchConfig",
           "StateFileError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""armt_ts: the Associative Recurrent Memory Transformer (ARMT, arXiv 2407.04841) for telemetry."""

from .backbone import ARMT
from .config import ARMTConfig, ConfigError
from .state import MemoryState, StateFileError

__version__ = "0.1.0"

__all__ = ["ARMT", "ARMTConfig", "ConfigError", "MemoryState", "StateFileError", "__version__"]

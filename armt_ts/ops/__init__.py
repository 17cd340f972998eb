"""Memory operations: ``naive`` is the specification, ``fused`` the batched implementation.

Both modules expose ``dpfp``, ``associative_read``, ``delta_write`` and its split form ``delta_terms`` /
``apply_delta_`` (a write applied in place later) with the same signatures.
"""

from types import ModuleType

from . import fused, naive

__all__ = ["fused", "naive", "get_ops"]


def get_ops(backend: str) -> ModuleType:
    """The ops module for a backend name ('fused' or 'naive'); unknown names raise."""
    if backend == "fused":
        return fused
    if backend == "naive":
        return naive
    raise ValueError(f"unknown ops backend {backend!r}; expected 'fused' or 'naive'")

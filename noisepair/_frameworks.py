"""TEMPORARY SHIM, remove when loader.py and distributed.py import noisepair.backend.

Only the four names those two modules still import; everything else uses noisepair.backend.
"""
from __future__ import annotations

from typing import Any

from noisepair.backend import backend_of, get_backend, to_numpy

__all__ = ["concat", "is_torch", "to_device", "to_numpy"]


def is_torch(x: Any) -> bool:
    b = backend_of(x)
    return b is not None and b.name == "torch"


def concat(parts: list) -> Any:
    return get_backend(*parts).concat(parts)


def to_device(x: Any, device: Any) -> Any:
    return get_backend(x).to_device(x, device)

"""The few operations noisepair needs, for numpy arrays and torch tensors alike.

torch is optional: it is only imported when a tensor is already in play, so the numpy path runs
on a machine without torch.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_index(idx: np.ndarray, like: Any) -> Any:
    """An int64 index in the framework (and on the device) of ``like``."""
    if is_torch(like):
        import torch

        return torch.as_tensor(np.asarray(idx), dtype=torch.long, device=like.device)
    return np.asarray(idx, dtype=np.int64)


def to_numpy(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def flat(x: Any) -> Any:
    """(B, ...) -> (B, D), no copy when possible."""
    return x.reshape(x.shape[0], -1)


def concat(parts: list) -> Any:
    if is_torch(parts[0]):
        import torch

        return torch.cat(parts)
    return np.concatenate(parts)


def all_finite(x: Any) -> bool:
    if is_torch(x):
        import torch

        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def is_floating(x: Any) -> bool:
    if is_torch(x):
        return x.is_floating_point()
    return np.issubdtype(x.dtype, np.floating)


def to_device(x: Any, device: Any) -> Any:
    if device is None:
        return x
    if is_torch(x):
        return x.to(device, non_blocking=True)
    import torch

    return torch.as_tensor(x, device=device)

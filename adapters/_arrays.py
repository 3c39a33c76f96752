"""What every adapter needs from a batch: (x, z) checked, per-sample times, seeded draws.

The adapters compute in the sample's own framework (numpy in, numpy out; torch in, torch out)
and on the sample's device, so a trainer never pays for a host round trip. Random draws use the
caller's generator (``numpy.random.Generator`` or ``torch.Generator``) so that a seeded training
loop is reproducible; a torch generator may live on another device than the sample (a CPU
generator with a CUDA batch): the draw is made where the generator is, then moved.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from noisepair._frameworks import is_torch


def sample_and_noise(pb: Any) -> tuple[Any, Any]:
    """``(pb.sample, pb.noise)``, after checking they can be paired elementwise."""
    try:
        x, z = pb.sample, pb.noise
    except AttributeError:
        raise TypeError(
            f"expected a PairedBatch (an object with .sample and .noise), got {type(pb).__name__}."
        ) from None
    if is_torch(x) != is_torch(z):
        raise TypeError(
            f"sample and noise must be both torch tensors or both numpy arrays, got "
            f"{type(x).__name__} and {type(z).__name__}."
        )
    if tuple(x.shape) != tuple(z.shape):
        raise ValueError(f"sample shape {tuple(x.shape)} != noise shape {tuple(z.shape)}.")
    if len(x.shape) < 2:
        raise ValueError(
            f"expected a batch of shape (B, ...) with at least one feature dimension, got "
            f"shape {tuple(x.shape)}."
        )
    if not _is_float(x) or not _is_float(z):
        raise TypeError(f"sample and noise must be floating point, got {x.dtype} and {z.dtype}.")
    if is_torch(x) and x.device != z.device:
        raise ValueError(f"sample is on {x.device} but noise is on {z.device}.")
    return x, z


def expand(t: Any, x: Any) -> Any:
    """Per-sample values ``(B,)`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x``."""
    return t.reshape((-1,) + (1,) * (len(x.shape) - 1))


def given(t: Any, x: Any, *, dtype: Any = None, name: str = "t") -> Any:
    """A user's ``t`` (a scalar or one value per sample) as a ``(B,)`` array like ``x``."""
    n = x.shape[0]
    if is_torch(x):
        import torch

        t = torch.as_tensor(t, device=x.device, dtype=dtype or x.dtype)
        t = t.expand(n) if t.ndim == 0 else t
    else:
        t = np.asarray(t, dtype=dtype or x.dtype)
        t = np.broadcast_to(t, (n,)) if t.ndim == 0 else t
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name} must be a scalar or hold one value per sample ({n},), got "
                         f"shape {tuple(t.shape)}.")
    return t


def uniform(x: Any, generator: Any = None) -> Any:
    """One U[0, 1) draw per sample, in the framework, device and dtype of ``x``."""
    if is_torch(x):
        import torch

        return _torch_draw(torch.rand, (x.shape[0],), x, generator)
    return _rng(generator).random(x.shape[0]).astype(x.dtype)


def normal(x: Any, shape: tuple, generator: Any = None) -> Any:
    """Standard normal draws of ``shape``, in the framework, device and dtype of ``x``."""
    if is_torch(x):
        import torch

        return _torch_draw(torch.randn, shape, x, generator)
    return _rng(generator).standard_normal(shape).astype(x.dtype)


def integers(x: Any, high: int, generator: Any = None) -> Any:
    """One integer in ``[0, high)`` per sample (int64), on the device of ``x``."""
    n = x.shape[0]
    if is_torch(x):
        import torch

        device = _torch_device(generator, x)
        return torch.randint(0, high, (n,), generator=generator, device=device).to(x.device)
    return _rng(generator).integers(0, high, n, dtype=np.int64)


def categorical(x: Any, probs: np.ndarray, generator: Any = None) -> Any:
    """One index drawn from ``probs`` per sample (int64), on the device of ``x``."""
    n = x.shape[0]
    if is_torch(x):
        import torch

        device = _torch_device(generator, x)
        p = torch.as_tensor(probs, dtype=torch.float32, device=device)
        return torch.multinomial(p, n, replacement=True, generator=generator).to(x.device)
    return _rng(generator).choice(len(probs), size=n, p=probs).astype(np.int64)


def take(table: np.ndarray, index: Any, x: Any) -> Any:
    """``table[index]`` in the framework, device and dtype of ``x`` (a schedule lookup)."""
    if is_torch(x):
        import torch

        return torch.as_tensor(table, dtype=x.dtype).to(x.device)[index]
    return table[index].astype(x.dtype)


def sqrt(a: Any) -> Any:
    return a.sqrt() if is_torch(a) else np.sqrt(a)


def exp(a: Any) -> Any:
    return a.exp() if is_torch(a) else np.exp(a)


def clip(a: Any, low: float, high: float) -> Any:
    return a.clamp(low, high) if is_torch(a) else np.clip(a, low, high)


def sigmoid(a: Any) -> Any:
    return a.sigmoid() if is_torch(a) else 1.0 / (1.0 + np.exp(-a))


def _is_float(a: Any) -> bool:
    return a.is_floating_point() if is_torch(a) else np.issubdtype(a.dtype, np.floating)


def _torch_draw(fn: Any, shape: tuple, x: Any, generator: Any) -> Any:
    device = _torch_device(generator, x)
    return fn(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _torch_device(generator: Any, x: Any) -> Any:
    """Where to draw: on the generator's device if there is one, else on the sample's."""
    import torch

    if generator is None:
        return x.device
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"a torch batch needs a torch.Generator, got {type(generator).__name__}.")
    return generator.device


def _rng(generator: Any) -> np.random.Generator:
    if generator is None:
        return np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"a numpy batch needs a numpy.random.Generator, got {type(generator).__name__}."
        )
    return generator

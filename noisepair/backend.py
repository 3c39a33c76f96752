"""One class per array framework, holding every operation noisepair needs (POT's ``ot.backend``
is the model).

The rest of the library is written once against :class:`Backend` and asks ``get_backend(*arrays)``
which one applies; nothing else tests which framework an array comes from. Rules that keep a new
framework (JAX) to one more class:

- shared code never writes into an array: operations that fill one (``set_rows``, ``put``)
  return the result, and may do so in place only where the framework allows it;
- randomness is explicit: draws take a seed tuple or the caller's generator/key, never a global
  state;
- a framework is imported only when one of its arrays is already in play (``sys.modules``), so
  the numpy path runs on a machine without torch.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


class Backend:
    """The operations on one framework's arrays. Subclasses fill them in; the docstrings here
    are the contract."""

    name = "backend"

    def owns(self, x: Any) -> bool:
        """Whether ``x`` is an array of this framework."""
        raise NotImplementedError

    # -- conversion, placement, types ------------------------------------------------------
    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def as_index(self, idx: Any, like: Any) -> Any:
        """An int64 index in this framework, on the device of ``like``."""
        raise NotImplementedError

    def to_device(self, x: Any, device: Any) -> Any:
        raise NotImplementedError

    def device(self, x: Any) -> str:
        """The kind of device ``x`` lives on: ``"cpu"``, ``"cuda"``, ..."""
        return "cpu"

    def same_device(self, x: Any, y: Any) -> bool:
        return True

    def is_floating(self, x: Any) -> bool:
        raise NotImplementedError

    def int64(self) -> Any:
        raise NotImplementedError

    def float32(self, x: Any) -> Any:
        """``x`` as float32 (no copy when it already is)."""
        raise NotImplementedError

    def float64(self, x: Any) -> Any:
        raise NotImplementedError

    # -- building and combining --------------------------------------------------------------
    def arange(self, n: int, like: Any) -> Any:
        raise NotImplementedError

    def concat(self, parts: list) -> Any:
        raise NotImplementedError

    def stack(self, parts: list) -> Any:
        raise NotImplementedError

    def empty_rows(self, rows: int, like: Any) -> Any:
        """An uninitialised ``(rows, like.shape[1])`` array of ``like``'s dtype and device, to be
        filled entirely with :meth:`set_rows`."""
        raise NotImplementedError

    def set_rows(self, out: Any, start: int, part: Any) -> Any:
        """``out`` with rows ``start:start + len(part)`` replaced by ``part`` (returned)."""
        out[start:start + part.shape[0]] = part
        return out

    def put(self, out: Any, index: Any, values: Any) -> Any:
        """``out`` with ``out[index] = values`` (returned)."""
        out[index] = values
        return out

    def full(self, n: int, value: Any, like: Any, dtype: Any = None) -> Any:
        raise NotImplementedError

    def values(self, t: Any, like: Any, dtype: Any = None, name: str = "t") -> Any:
        """A user's ``t`` (a scalar or one value per row of ``like``) as a ``(B,)`` array of this
        framework on ``like``'s device, of ``dtype`` (default ``like``'s)."""
        t = self._values(t, like, dtype)
        n = like.shape[0]
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be a scalar or hold one value per sample ({n},), got "
                             f"shape {tuple(t.shape)}.")
        return t

    def _values(self, t: Any, like: Any, dtype: Any) -> Any:
        raise NotImplementedError

    def lookup(self, table: np.ndarray, index: Any, like: Any) -> Any:
        """``table[index]`` (a numpy table, e.g. a noise schedule) in ``like``'s dtype and on its
        device."""
        raise NotImplementedError

    # -- reductions and predicates ------------------------------------------------------------
    def all_finite(self, x: Any) -> bool:
        raise NotImplementedError

    def count_nonfinite(self, x: Any) -> int:
        return int((~np.isfinite(self.to_numpy(x))).sum())

    def median(self, x: Any) -> Any:
        raise NotImplementedError

    # -- elementwise -------------------------------------------------------------------------
    def sqrt(self, x: Any) -> Any:
        raise NotImplementedError

    def exp(self, x: Any) -> Any:
        raise NotImplementedError

    def clip(self, x: Any, low: float, high: float) -> Any:
        raise NotImplementedError

    def sigmoid(self, x: Any) -> Any:
        return 1.0 / (1.0 + self.exp(-x))

    # -- cost pieces -------------------------------------------------------------------------
    def sqeuclidean(self, x: Any, z: Any, precision: str) -> Any:
        """``(B, M)`` squared distances ``|x|^2 + |z|^2 - 2 x z^T`` between rows of 2-D ``x``
        and ``z``, computed in ``precision``, returned in float32 (float64 if asked), >= 0."""
        raise NotImplementedError

    # -- randomness --------------------------------------------------------------------------
    def normal_from_seed(self, seed: np.random.SeedSequence, shape: tuple, like: Any,
                         device: Any = None) -> Any:
        """Standard normal draws of ``shape`` and ``like``'s dtype, from a stream that depends
        on ``seed`` only, on ``device`` (default: ``like``'s)."""
        raise NotImplementedError

    def uniform(self, x: Any, generator: Any = None) -> Any:
        """One U[0, 1) draw per sample of ``x``, in its dtype and on its device."""
        raise NotImplementedError

    def normal(self, x: Any, shape: tuple, generator: Any = None) -> Any:
        """Standard normal draws of ``shape``, in ``x``'s dtype and on its device."""
        raise NotImplementedError

    def integers(self, x: Any, high: int, generator: Any = None) -> Any:
        """One int64 in ``[0, high)`` per sample of ``x``, on its device."""
        raise NotImplementedError

    def categorical(self, x: Any, probs: np.ndarray, generator: Any = None) -> Any:
        """One int64 index drawn from ``probs`` per sample of ``x``, on its device."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NumpyBackend(Backend):
    name = "numpy"

    def owns(self, x):
        return isinstance(x, np.ndarray)

    def to_numpy(self, x):
        return np.asarray(x)

    def as_index(self, idx, like):
        return np.asarray(idx, dtype=np.int64)

    def to_device(self, x, device):
        if device is None:
            return x
        return _torch().as_tensor(x, device=device)  # a device asks for tensors

    def is_floating(self, x):
        return np.issubdtype(x.dtype, np.floating)

    def int64(self):
        return np.int64

    def float32(self, x):
        return x.astype(np.float32, copy=False)

    def float64(self, x):
        return x.astype(np.float64, copy=False)

    def arange(self, n, like):
        return np.arange(n)

    def concat(self, parts):
        return np.concatenate(parts)

    def stack(self, parts):
        return np.stack(parts)

    def empty_rows(self, rows, like):
        return np.empty((rows, like.shape[1]), dtype=like.dtype)

    def full(self, n, value, like, dtype=None):
        return np.full(n, value, dtype=dtype)

    def _values(self, t, like, dtype):
        t = np.asarray(t, dtype=dtype or like.dtype)
        return np.broadcast_to(t, (like.shape[0],)) if t.ndim == 0 else t

    def lookup(self, table, index, like):
        return table[index].astype(like.dtype)

    def all_finite(self, x):
        return bool(np.isfinite(x).all())

    def median(self, x):
        return np.median(x)

    def sqrt(self, x):
        return np.sqrt(x)

    def exp(self, x):
        return np.exp(x)

    def clip(self, x, low, high):
        return np.clip(x, low, high)

    def sqeuclidean(self, x, z, precision):
        if precision == "bfloat16":
            raise ValueError("bfloat16 costs need torch tensors; numpy has no bfloat16 (use float32).")
        dtype = np.dtype(precision)
        out = np.float64 if precision == "float64" else np.float32
        x, z = np.asarray(x, dtype=dtype), np.asarray(z, dtype=dtype)
        xx = np.einsum("ij,ij->i", x, x, dtype=out)
        zz = np.einsum("ij,ij->i", z, z, dtype=out)
        c = (x @ z.T).astype(out, copy=False)
        c *= -2.0
        c += xx[:, None]
        c += zz[None, :]
        return np.maximum(c, 0.0, out=c)

    def normal_from_seed(self, seed, shape, like, device=None):
        draw = like.dtype if like.dtype in (np.float32, np.float64) else np.float32
        z = np.random.default_rng(seed).standard_normal(shape, dtype=draw)
        return z.astype(like.dtype, copy=False)

    def uniform(self, x, generator=None):
        return _rng(generator).random(x.shape[0]).astype(x.dtype)

    def normal(self, x, shape, generator=None):
        return _rng(generator).standard_normal(shape).astype(x.dtype)

    def integers(self, x, high, generator=None):
        return _rng(generator).integers(0, high, x.shape[0], dtype=np.int64)

    def categorical(self, x, probs, generator=None):
        return _rng(generator).choice(len(probs), size=x.shape[0], p=probs).astype(np.int64)


class TorchBackend(Backend):
    """torch tensors, on any device. Random draws are made where the generator lives (a CPU
    generator with a CUDA batch is common) and then moved to the sample's device."""

    name = "torch"

    def __init__(self):
        self.torch = _torch()

    def owns(self, x):
        return isinstance(x, self.torch.Tensor)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def as_index(self, idx, like):
        if self.owns(idx):
            return idx.to(device=like.device, dtype=self.torch.long)
        return self.torch.as_tensor(np.asarray(idx), dtype=self.torch.long, device=like.device)

    def to_device(self, x, device):
        return x if device is None else x.to(device, non_blocking=True)

    def device(self, x):
        return x.device.type

    def same_device(self, x, y):
        return x.device == y.device

    def is_floating(self, x):
        return x.is_floating_point()

    def int64(self):
        return self.torch.int64

    def float32(self, x):
        return x.float()

    def float64(self, x):
        return x.double()

    def arange(self, n, like):
        return self.torch.arange(n, device=like.device)

    def concat(self, parts):
        return self.torch.cat(parts)

    def stack(self, parts):
        return self.torch.stack(parts)

    def empty_rows(self, rows, like):
        return self.torch.empty((rows, like.shape[1]), dtype=like.dtype, device=like.device)

    def full(self, n, value, like, dtype=None):
        return self.torch.full((n,), value, dtype=dtype, device=like.device)

    def _values(self, t, like, dtype):
        t = self.torch.as_tensor(t, device=like.device, dtype=dtype or like.dtype)
        return t.expand(like.shape[0]) if t.ndim == 0 else t

    def lookup(self, table, index, like):
        return self.torch.as_tensor(table, dtype=like.dtype).to(like.device)[index]

    def all_finite(self, x):
        return bool(self.torch.isfinite(x).all())

    def median(self, x):
        return x.median()

    def sqrt(self, x):
        return x.sqrt()

    def exp(self, x):
        return x.exp()

    def clip(self, x, low, high):
        return x.clamp(low, high)

    def sigmoid(self, x):
        return x.sigmoid()

    def sqeuclidean(self, x, z, precision):
        torch = self.torch
        dtype = getattr(torch, precision)
        out = torch.float64 if precision == "float64" else torch.float32
        x, z = x.to(dtype), z.to(dtype)
        xx, zz = _sqnorms(x.to(out)), _sqnorms(z.to(out))
        if x.dtype == out:  # one fused product: c = |z|^2 - 2 x z^T, then + |x|^2, all in place
            c = torch.addmm(zz[None, :], x, z.T, beta=1.0, alpha=-2.0)
        else:
            c = (x @ z.T).to(out).mul_(-2.0).add_(zz[None, :])
        return c.add_(xx[:, None]).clamp_(min=0.0)

    def normal_from_seed(self, seed, shape, like, device=None):
        torch = self.torch
        device = like.device if device is None else torch.device(device)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        draw = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.randn(shape, generator=gen, device=device, dtype=draw).to(like.dtype)

    def uniform(self, x, generator=None):
        return self._draw(self.torch.rand, (x.shape[0],), x, generator)

    def normal(self, x, shape, generator=None):
        return self._draw(self.torch.randn, shape, x, generator)

    def integers(self, x, high, generator=None):
        device = self._where(generator, x)
        return self.torch.randint(0, high, (x.shape[0],), generator=generator,
                                  device=device).to(x.device)

    def categorical(self, x, probs, generator=None):
        p = self.torch.as_tensor(probs, dtype=self.torch.float32, device=self._where(generator, x))
        return self.torch.multinomial(p, x.shape[0], replacement=True,
                                      generator=generator).to(x.device)

    def _draw(self, fn, shape, x, generator):
        device = self._where(generator, x)
        return fn(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def _where(self, generator, x):
        """Where to draw: on the generator's device if there is one, else on the sample's."""
        if generator is None:
            return x.device
        if not isinstance(generator, self.torch.Generator):
            raise TypeError(
                f"a torch batch needs a torch.Generator, got {type(generator).__name__}.")
        return generator.device


_NUMPY = NumpyBackend()
_CACHE: dict[str, Backend] = {}


def _frameworks() -> list[Backend]:
    """The backends whose framework is imported in this process (none is imported here)."""
    found = []
    if sys.modules.get("torch") is not None:
        found.append(_CACHE.get("torch") or _CACHE.setdefault("torch", TorchBackend()))
    return found


def backend_of(x: Any) -> Backend | None:
    """The backend of one array, or None when ``x`` is not an array of a known framework."""
    if isinstance(x, np.ndarray):
        return _NUMPY
    for b in _frameworks():
        if b.owns(x):
            return b
    return None


def is_array(x: Any) -> bool:
    return backend_of(x) is not None


def get_backend(*arrays: Any) -> Backend:
    """The one backend of ``arrays`` (``None`` entries and python scalars are skipped).

    Raises TypeError when the arrays come from different frameworks: noisepair never converts
    between frameworks behind the caller's back.
    """
    found = {}
    for a in arrays:
        b = backend_of(a)
        if b is not None:
            found.setdefault(b.name, (b, type(a).__name__))
    if len(found) > 1:
        kinds = " and ".join(f"{name} ({t})" for name, (_, t) in found.items())
        raise TypeError(f"arrays from different frameworks: {kinds}; convert them to one "
                        "framework (e.g. all torch tensors or all numpy arrays).")
    return next(iter(found.values()))[0] if found else _NUMPY


def to_numpy(x: Any) -> np.ndarray:
    return get_backend(x).to_numpy(x)


def flat(x: Any) -> Any:
    """(B, ...) -> (B, D), no copy when possible."""
    return x.reshape(x.shape[0], -1)


def expand(t: Any, x: Any) -> Any:
    """Per-sample values ``(B,)`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x``."""
    return t.reshape((-1,) + (1,) * (len(x.shape) - 1))


def _torch():
    import torch

    return torch


def _sqnorms(x):
    """Row squared norms without a (B, D) temporary (a batched dot product)."""
    return (x.unsqueeze(1) @ x.unsqueeze(2)).reshape(-1)


def _rng(generator: Any) -> np.random.Generator:
    if generator is None:
        return np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"a numpy batch needs a numpy.random.Generator, got {type(generator).__name__}.")
    return generator

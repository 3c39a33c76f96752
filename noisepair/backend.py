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
  the numpy path runs on a machine without torch or JAX.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np


class Backend:
    """The operations on one framework's arrays. Subclasses fill them in; the docstrings here
    are the contract."""

    name = "backend"
    #: whether loops whose arrays change shape each step run well here; where not (XLA compiles
    #: every new shape), such loops run on the host instead.
    dynamic_shapes = True

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
        out[start : start + part.shape[0]] = part
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
            raise ValueError(
                f"{name} must be a scalar or hold one value per sample ({n},), got "
                f"shape {tuple(t.shape)}."
            )
        return t

    def _values(self, t: Any, like: Any, dtype: Any) -> Any:
        raise NotImplementedError

    def lookup(self, table: np.ndarray, index: Any, like: Any) -> Any:
        """``table[index]`` (a numpy table, e.g. a noise schedule) in ``like``'s dtype and on its
        device."""
        raise NotImplementedError

    # -- reductions and predicates ------------------------------------------------------------
    def all_finite(self, x: Any) -> bool:
        """Every value finite. Each backend first checks the sum: NaN and inf propagate through
        it, so a finite sum proves every value finite at a fraction of an elementwise check's
        cost; only a sum that is not finite (or finite values that overflow it) is checked value
        by value."""
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
    def normal_from_seed(
        self, seed: tuple[int, ...], shape: tuple, like: Any, device: Any = None
    ) -> Any:
        """Standard normal draws of ``shape`` and ``like``'s dtype, on ``device`` (default:
        ``like``'s), from a stream that depends on the non-negative integers ``seed`` only."""
        raise NotImplementedError

    def normal_from_seeds(
        self, seeds: np.ndarray, shape: tuple, like: Any, device: Any = None
    ) -> Any:
        """One standard normal draw of ``shape`` per seed in ``seeds`` (non-negative ints below
        2**32), stacked: row i depends on ``seeds[i]`` alone, the same in every run."""
        draws = [self.normal_from_seed((int(v),), shape, like, device) for v in seeds]
        return self.stack(draws)

    def streams(self, generator: Any, count: int) -> list:
        """``count`` sources of randomness from the caller's ``generator``, one per draw. A
        stateful generator (numpy, torch) advances with each draw and serves them all; an
        explicit key (JAX) is split, so that no two draws share a key."""
        return [generator] * count

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
        return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())

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
            raise ValueError(
                "bfloat16 costs need torch tensors; numpy has no bfloat16 (use float32)."
            )
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
        z = np.random.default_rng(np.random.SeedSequence(seed)).standard_normal(shape, dtype=draw)
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
        if x.dtype == self.torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
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
        return bool(self.torch.isfinite(x.sum())) or bool(self.torch.isfinite(x).all())

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
        state = np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
        gen.manual_seed(int(state >> np.uint64(1)))
        draw = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.randn(shape, generator=gen, device=device, dtype=draw).to(like.dtype)

    def normal_from_seeds(self, seeds, shape, like, device=None):
        torch = self.torch
        device = like.device if device is None else torch.device(device)
        draw = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        out = torch.empty((len(seeds), *shape), dtype=draw, device=device)
        gen = torch.Generator(device=device)  # one generator, reseeded per row: cheap
        for i, seed in enumerate(np.asarray(seeds, dtype=np.uint64).tolist()):
            gen.manual_seed(seed)
            torch.randn(shape, generator=gen, out=out[i])
        return out.to(like.dtype)

    def uniform(self, x, generator=None):
        return self._draw(self.torch.rand, (x.shape[0],), x, generator)

    def normal(self, x, shape, generator=None):
        return self._draw(self.torch.randn, shape, x, generator)

    def integers(self, x, high, generator=None):
        device = self._where(generator, x)
        return self.torch.randint(0, high, (x.shape[0],), generator=generator, device=device).to(
            x.device
        )

    def categorical(self, x, probs, generator=None):
        p = self.torch.as_tensor(probs, dtype=self.torch.float32, device=self._where(generator, x))
        return self.torch.multinomial(p, x.shape[0], replacement=True, generator=generator).to(
            x.device
        )

    def _draw(self, fn, shape, x, generator):
        device = self._where(generator, x)
        return fn(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def _where(self, generator, x):
        """Where to draw: on the generator's device if there is one, else on the sample's."""
        if generator is None:
            return x.device
        if not isinstance(generator, self.torch.Generator):
            raise TypeError(
                f"a torch batch needs a torch.Generator, got {type(generator).__name__}."
            )
        return generator.device


class JaxBackend(Backend):
    """jax.Array, on any device. Arrays are immutable: fill operations return new arrays.
    Randomness takes explicit keys: the noise key is ``fold_in`` of the seed's parts, and a
    caller's key is split into one key per draw (:meth:`streams`)."""

    name = "jax"
    dynamic_shapes = False

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self._sqeuclidean = jax.jit(_jax_sqeuclidean, static_argnames=("dtype", "out"))

    def owns(self, x):
        return isinstance(x, self.jax.Array)

    def to_numpy(self, x):
        return np.asarray(self.jax.device_get(x))

    def as_index(self, idx, like):
        return self._put(self.jnp.asarray(np.asarray(self._host(idx)), dtype=self.int64()), like)

    def to_device(self, x, device):
        if device is None:
            return x
        if isinstance(device, str):
            device = self.jax.devices(device)[0]
        return self.jax.device_put(x, device)

    def device(self, x):
        return _first_device(x).platform

    def same_device(self, x, y):
        return x.devices() == y.devices()

    def is_floating(self, x):
        return self.jnp.issubdtype(x.dtype, self.jnp.floating)

    def int64(self):
        """int64 where JAX's 64-bit mode is on, else int32 (JAX's own index type)."""
        return self.jax.dtypes.canonicalize_dtype(self.jnp.int64)

    def float32(self, x):
        return x.astype(self.jnp.float32)

    def float64(self, x):
        return x.astype(self.jax.dtypes.canonicalize_dtype(self.jnp.float64))

    def arange(self, n, like):
        return self._put(self.jnp.arange(n), like)

    def concat(self, parts):
        return self.jnp.concatenate(parts)

    def stack(self, parts):
        return self.jnp.stack(parts)

    def empty_rows(self, rows, like):
        return self._put(self.jnp.zeros((rows, like.shape[1]), dtype=like.dtype), like)

    def set_rows(self, out, start, part):
        return out.at[start : start + part.shape[0]].set(part)

    def put(self, out, index, values):
        return out.at[index].set(values)

    def full(self, n, value, like, dtype=None):
        return self._put(self.jnp.full((n,), value, dtype=dtype), like)

    def _values(self, t, like, dtype):
        t = self._put(self.jnp.asarray(t, dtype=dtype or like.dtype), like)
        return self.jnp.broadcast_to(t, (like.shape[0],)) if t.ndim == 0 else t

    def lookup(self, table, index, like):
        return self._put(self.jnp.asarray(table, dtype=like.dtype), like)[index]

    def all_finite(self, x):
        return bool(self.jnp.isfinite(x.sum())) or bool(self.jnp.isfinite(x).all())

    def median(self, x):
        return self.jnp.median(x)

    def sqrt(self, x):
        return self.jnp.sqrt(x)

    def exp(self, x):
        return self.jnp.exp(x)

    def clip(self, x, low, high):
        return self.jnp.clip(x, low, high)

    def sigmoid(self, x):
        return self.jax.nn.sigmoid(x)

    def sqeuclidean(self, x, z, precision):
        jnp = self.jnp
        if precision == "float64" and not self.jax.config.jax_enable_x64:
            raise ValueError(
                "precision='float64' on JAX arrays needs 64-bit mode: "
                "jax.config.update('jax_enable_x64', True)."
            )
        out = jnp.float64 if precision == "float64" else jnp.float32
        return self._sqeuclidean(x, z, dtype=jnp.dtype(precision), out=jnp.dtype(out))

    def normal_from_seed(self, seed, shape, like, device=None):
        jax, jnp = self.jax, self.jnp
        first, *rest = (int(v) for v in seed)
        key = jax.random.key(first % 2**32)
        if first >= 2**32:
            key = jax.random.fold_in(key, first >> 32)
        for part in rest:
            key = jax.random.fold_in(key, part % 2**32)
        draw = like.dtype if like.dtype in (jnp.float32, jnp.float64) else jnp.float32
        z = jax.random.normal(key, shape, dtype=draw).astype(like.dtype)
        if device is not None:
            return self.to_device(z, device)
        if tuple(shape) == tuple(like.shape):  # the noise is laid out like its sample
            return jax.device_put(z, like.sharding)
        return self._put(z, like)

    def normal_from_seeds(self, seeds, shape, like, device=None):
        jax, jnp = self.jax, self.jnp
        draw = like.dtype if like.dtype in (jnp.float32, jnp.float64) else jnp.float32
        keys = jax.vmap(jax.random.key)(
            jnp.asarray(np.asarray(seeds, dtype=np.uint64) % 2**32, dtype=jnp.uint32)
        )
        z = jax.vmap(lambda key: jax.random.normal(key, shape, dtype=draw))(keys)
        z = z.astype(like.dtype)
        if device is not None:
            return self.to_device(z, device)
        if tuple(z.shape) == tuple(like.shape):
            return jax.device_put(z, like.sharding)
        return self._put(z, like)

    def streams(self, generator, count):
        if generator is None:  # no draw may need one: the draw that does raises
            return [None] * count
        return list(self.jax.random.split(self._key(generator), count))

    def uniform(self, x, generator=None):
        return self._put(self.jax.random.uniform(self._key(generator), (x.shape[0],), x.dtype), x)

    def normal(self, x, shape, generator=None):
        return self._put(self.jax.random.normal(self._key(generator), shape, x.dtype), x)

    def integers(self, x, high, generator=None):
        r = self.jax.random.randint(self._key(generator), (x.shape[0],), 0, high, self.int64())
        return self._put(r, x)

    def categorical(self, x, probs, generator=None):
        p = self.jnp.asarray(probs, dtype=self.jnp.float32)
        r = self.jax.random.choice(self._key(generator), len(probs), (x.shape[0],), p=p)
        return self._put(r.astype(self.int64()), x)

    def _key(self, generator):
        if generator is None:
            raise TypeError(
                "a JAX batch needs an explicit jax.random key for its draws: pass "
                "generator=jax.random.key(seed) (JAX has no global random state)."
            )
        dtype = getattr(generator, "dtype", None)
        if not (
            isinstance(generator, self.jax.Array)
            and (self.jnp.issubdtype(dtype, self.jax.dtypes.prng_key) or dtype == self.jnp.uint32)
        ):
            raise TypeError(f"a JAX batch needs a jax.random key, got {type(generator).__name__}.")
        return generator

    def _host(self, a):
        return self.to_numpy(a) if self.owns(a) else a

    def _put(self, a, like):
        """``a`` on the device of ``like`` (its first, for an array sharded over several)."""
        return self.jax.device_put(a, _first_device(like))


_NUMPY = NumpyBackend()
_CACHE: dict[str, Backend] = {}
_BY_TYPE: dict[type, Backend | None] = {}


def _frameworks() -> list[Backend]:
    """The backends whose framework is imported in this process (none is imported here)."""
    found = []
    for name, cls in (("torch", TorchBackend), ("jax", JaxBackend)):
        if sys.modules.get(name) is not None:
            found.append(_CACHE.get(name) or _CACHE.setdefault(name, cls()))
    return found


class DeviceStreams:
    """The prefetch thread's CUDA work on a stream of its own.

    On the training thread's stream, the pairing's kernels would queue behind the step's, and its
    copy of the cost to the host would wait for them: pairing and step would take turns instead
    of overlapping. On a side stream they run beside the step; the training thread then waits
    for each batch's work (an event) before it touches the batch, and the batch's tensors are
    marked as used on its stream, so that their memory is not reused under it. Without CUDA
    (numpy, JAX, torch on CPU) every method does nothing. Create it in the training thread: the
    current CUDA device is per thread.
    """

    def __init__(self, device: Any = None):
        torch = sys.modules.get("torch")
        self.torch = torch if torch is not None and torch.cuda.is_available() else None
        self.device = None
        if self.torch is not None and (device is not None or self.torch.cuda.is_initialized()):
            dev = (
                self.torch.device(device)
                if device is not None
                else self.torch.device("cuda", self.torch.cuda.current_device())
            )
            if dev.type == "cuda":
                self.device = (
                    dev
                    if dev.index is not None
                    else self.torch.device("cuda", self.torch.cuda.current_device())
                )
        self._stream = None

    @contextlib.contextmanager
    def worker(self):
        """Make a side stream current for the calling (prefetch) thread."""
        if self.device is None:
            yield
            return
        self._stream = self.torch.cuda.Stream(self.device)
        with self.torch.cuda.device(self.device), self.torch.cuda.stream(self._stream):
            yield

    def mark(self) -> Any:
        """An event after the work queued so far on the side stream (None without CUDA)."""
        if self._stream is None:
            return None
        event = self.torch.cuda.Event()
        event.record(self._stream)
        return event

    def hand_over(self, ready: Any, obj: Any) -> None:
        """In the training thread: wait for ``ready``, and mark every CUDA tensor in ``obj``
        (nested in tuples, lists, dicts, dataclasses' fields) as used on this thread's stream."""
        if ready is None:
            return
        current = self.torch.cuda.current_stream(self.device)
        current.wait_event(ready)
        for t in _tensors(obj, self.torch.Tensor):
            if t.is_cuda:
                t.record_stream(current)


def _tensors(obj: Any, tensor_type: type, depth: int = 0):
    if isinstance(obj, tensor_type):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, tensor_type, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, tensor_type, depth + 1)
    elif depth < 4 and hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _tensors(getattr(obj, name), tensor_type, depth + 1)


def backend_of(x: Any) -> Backend | None:
    """The backend of one array, or None when ``x`` is not an array of a known framework.
    Remembered per type: the pairing asks it several times per batch."""
    t = type(x)
    if t in _BY_TYPE:
        return _BY_TYPE[t]
    if isinstance(x, np.ndarray):
        b = _NUMPY
    else:  # a framework's array types exist only once it is imported: None stays right too
        b = next((f for f in _frameworks() if f.owns(x)), None)
    _BY_TYPE[t] = b
    return b


def is_array(x: Any) -> bool:
    return backend_of(x) is not None


def get_backend(*arrays: Any) -> Backend:
    """The one backend of ``arrays`` (``None`` entries and python scalars are skipped).

    Raises TypeError when the arrays come from different frameworks: noisepair never converts
    between frameworks behind the caller's back.
    """
    if len(arrays) == 1:
        return backend_of(arrays[0]) or _NUMPY
    found = {}
    for a in arrays:
        b = backend_of(a)
        if b is not None:
            found.setdefault(b.name, (b, type(a).__name__))
    if len(found) > 1:
        kinds = " and ".join(f"{name} ({t})" for name, (_, t) in found.items())
        raise TypeError(
            f"arrays from different frameworks: {kinds}; convert them to one "
            "framework (e.g. all torch tensors or all numpy arrays)."
        )
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
    """Row squared norms without a (B, D) temporary: a row-wise dot product (a batched
    (1, D) x (D, 1) matrix product is several times slower on CPU)."""
    return _torch().linalg.vecdot(x, x)


def _jax_sqeuclidean(x, z, dtype, out):
    """The squared-distance product as one XLA computation (jitted by JaxBackend)."""
    import jax

    x, z = x.astype(dtype), z.astype(dtype)
    xx = (x.astype(out) ** 2).sum(1)
    zz = (z.astype(out) ** 2).sum(1)
    xz = jax.numpy.matmul(x, z.T, precision=jax.lax.Precision.HIGHEST).astype(out)
    return jax.numpy.maximum(xx[:, None] + zz[None, :] - 2.0 * xz, 0.0)


def _first_device(x):
    return min(x.devices(), key=lambda d: d.id)


def _rng(generator: Any) -> np.random.Generator:
    if generator is None:
        return np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"a numpy batch needs a numpy.random.Generator, got {type(generator).__name__}."
        )
    return generator

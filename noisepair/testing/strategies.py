"""Hypothesis strategies: batches of hard data, shapes, dtypes, frameworks, and loaders of them.

The array values come from :mod:`noisepair.testing.families` seeded by a drawn integer, so
hypothesis searches (and shrinks) over the family, the sizes, the dtype, the framework and the
seed, never over millions of floats. A framework is one entry of :data:`FRAMEWORKS` (a
converter from numpy and the dtypes it holds): adding one (JAX) is adding an entry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import note
from hypothesis import strategies as st

from noisepair.testing.families import FAMILIES, TOY_2D, make_batch


@dataclass(frozen=True)
class Framework:
    name: str
    module: str  #: the import that must succeed for the framework to be offered
    dtypes: tuple[str, ...]
    convert: Callable[[np.ndarray, str], Any]  #: (float64 array, dtype name) -> array


def _to_torch(x: np.ndarray, dtype: str) -> Any:
    import torch

    return torch.from_numpy(x).to(getattr(torch, dtype))


FRAMEWORKS: dict[str, Framework] = {
    "numpy": Framework(
        "numpy", "numpy", ("float32", "float64", "float16"), lambda x, dtype: x.astype(dtype)
    ),
    "torch": Framework("torch", "torch", ("float32", "float64", "float16", "bfloat16"), _to_torch),
}

#: default sizes: batches of 2-48 items, streams of 1-6 batches
BATCH_SIZES = st.integers(2, 48)
N_BATCHES = st.integers(1, 6)
ONE_SCOPE = st.just(1)

#: item shapes by kind: feature vectors, images (C, H, W), VAE-style latents (4, h, w).
SHAPE_KINDS = ("vector", "image", "latent")


def available_frameworks() -> tuple[str, ...]:
    """The frameworks of :data:`FRAMEWORKS` importable here."""
    return tuple(n for n, f in FRAMEWORKS.items() if importlib.util.find_spec(f.module) is not None)


def framework_names(names: tuple[str, ...] | None = None) -> st.SearchStrategy[str]:
    names = available_frameworks() if names is None else tuple(names)
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        raise ValueError(f"unknown framework(s) {unknown}; known: {list(FRAMEWORKS)}.")
    return st.sampled_from(names)


def item_shapes(
    kinds: tuple[str, ...] = SHAPE_KINDS, max_side: int = 8, max_dim: int = 16
) -> st.SearchStrategy[tuple]:
    """Shapes of one item: ``(D,)``, ``(C, H, W)`` with C in {1, 3}, or ``(4, h, w)``."""
    options = {
        "vector": st.integers(1, max_dim).map(lambda d: (d,)),
        "image": st.tuples(st.sampled_from([1, 3]), st.integers(2, max_side)).map(
            lambda c_s: (c_s[0], c_s[1], c_s[1])
        ),
        "latent": st.integers(2, max_side).map(lambda s: (4, s, s)),
    }
    unknown = [k for k in kinds if k not in options]
    if unknown:
        raise ValueError(f"unknown shape kind(s) {unknown}; known: {list(options)}.")
    return st.one_of(*(options[k] for k in kinds))


@dataclass(frozen=True)
class DataSpec:
    """What a drawn stream is made of (shown by hypothesis when a property fails)."""

    family: str
    batch_size: int
    shape: tuple
    dtype: str
    framework: str
    seed: int

    def batch(self, index: int = 0) -> Any:
        rng = np.random.default_rng([self.seed, index])
        x = make_batch(self.family, self.batch_size, self.shape, rng)
        return FRAMEWORKS[self.framework].convert(x, self.dtype)


@st.composite
def data_specs(
    draw,
    families: tuple[str, ...] = FAMILIES + TOY_2D,
    batch_sizes: st.SearchStrategy[int] = BATCH_SIZES,
    shapes: st.SearchStrategy[tuple] | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64", "float16"),
    frameworks: tuple[str, ...] | None = None,
) -> DataSpec:
    """A :class:`DataSpec`; toy 2-D families always get shape ``(2,)``, and a dtype is only
    drawn for a framework that holds it (bfloat16: torch)."""
    family = draw(st.sampled_from(families))
    shape = (2,) if family in TOY_2D else draw(shapes if shapes is not None else item_shapes())
    framework = draw(framework_names(frameworks))
    held = [d for d in dtypes if d in FRAMEWORKS[framework].dtypes]
    if not held:
        raise ValueError(f"none of the dtypes {dtypes} is held by {framework}.")
    return DataSpec(
        family,
        draw(batch_sizes),
        shape,
        draw(st.sampled_from(held)),
        framework,
        draw(st.integers(0, 2**32 - 1)),
    )


def data_batches(**spec_options) -> st.SearchStrategy[Any]:
    """One batch (an array or tensor) of a hard family; options as :func:`data_specs`."""
    return data_specs(**spec_options).map(lambda spec: spec.batch())


def data_streams(
    n_batches: st.SearchStrategy[int] = N_BATCHES, **spec_options
) -> st.SearchStrategy[list]:
    """A list of batches of one family, shape, dtype and framework: an inner loader."""
    return st.tuples(data_specs(**spec_options), n_batches).map(
        lambda s_n: [s_n[0].batch(i) for i in range(s_n[1])]
    )


@st.composite
def matched_loaders(
    draw,
    methods: st.SearchStrategy[Any] | None = None,
    scopes: st.SearchStrategy[int] = ONE_SCOPE,
    n_batches: st.SearchStrategy[int] = N_BATCHES,
    **spec_options,
):
    """A :class:`~noisepair.MatchedNoiseLoader` (no prefetch thread) over a drawn stream;
    ``methods`` defaults to every permutation matcher."""
    from noisepair import MatchedNoiseLoader
    from noisepair.matchers import MATCHERS

    if methods is None:
        methods = st.sampled_from(sorted(n for n, cls in MATCHERS.items() if cls.permutation))
    spec, count = draw(data_specs(**spec_options)), draw(n_batches)
    method, scope, seed = draw(methods), draw(scopes), draw(st.integers(0, 2**16))
    note(
        f"matched_loaders: {count} batches of {spec}, method={method!r}, scope={scope}, seed={seed}"
    )
    return MatchedNoiseLoader(
        [spec.batch(i) for i in range(count)], method=method, scope=scope, seed=seed, prefetch=0
    )

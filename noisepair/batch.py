"""PairedBatch, and finding the sample inside whatever a loader yields.

A batch may be a tensor, an ndarray, a tuple/list (sample at an index) or a dict (sample at a
key). The batch object itself is never modified: only the noise is new.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from noisepair.backend import Backend, backend_of, get_backend
from noisepair.pairing import as_labels

#: dict keys tried, in order, when ``key`` is not given.
SAMPLE_KEYS = ("image", "images", "x", "sample", "samples", "pixel_values", "latents", "input")


@dataclass
class PairedBatch:
    """One batch with its matched noise: ``noise[i]`` is the noise assigned to ``sample[i]``.

    ``batch`` is the object the inner loader yielded, untouched and in its original order, so
    labels, captions and every other field stay aligned with ``sample``.
    """

    sample: Any
    noise: Any
    batch: Any
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample)


def sample_and_noise(pb: Any) -> tuple[Any, Any, Backend]:
    """``(pb.sample, pb.noise, their backend)``, after checking they can be paired elementwise
    (what every trainer adapter needs first)."""
    try:
        x, z = pb.sample, pb.noise
    except AttributeError:
        raise TypeError(
            f"expected a PairedBatch (an object with .sample and .noise), got {type(pb).__name__}."
        ) from None
    b = get_backend(x, z)
    if tuple(x.shape) != tuple(z.shape):
        raise ValueError(f"sample shape {tuple(x.shape)} != noise shape {tuple(z.shape)}.")
    if len(x.shape) < 2:
        raise ValueError(
            f"expected a batch of shape (B, ...) with at least one feature dimension, got "
            f"shape {tuple(x.shape)}."
        )
    if not b.is_floating(x) or not b.is_floating(z):
        raise TypeError(f"sample and noise must be floating point, got {x.dtype} and {z.dtype}.")
    if not b.same_device(x, z):
        raise ValueError(f"sample is on {x.device} but noise is on {z.device}.")
    return x, z, b


def find_sample(batch: Any, key: Any = None) -> Any:
    """Return the sample array/tensor held by ``batch`` (see module docstring for the forms)."""
    if backend_of(batch) is not None:
        if key is not None:
            raise TypeError(
                f"key={key!r} was given but the batch is a bare {type(batch).__name__}; "
                "drop key= or yield dicts/tuples from the loader."
            )
        return batch
    if isinstance(batch, dict) or _is_mapping(batch):
        keys = list(batch.keys())
        if key is not None:
            if key not in batch:
                raise KeyError(
                    f"sample key {key!r} not in batch; the batch has keys {keys}. "
                    f"Pass key=<one of these> to MatchedNoiseLoader."
                )
            return batch[key]
        found = [k for k in SAMPLE_KEYS if k in batch]
        if len(found) == 1:
            return batch[found[0]]
        arrays = [k for k in keys if _is_float_array(batch[k])]
        if len(found) == 0 and len(arrays) == 1:
            return batch[arrays[0]]
        raise KeyError(
            f"cannot tell which field of the batch is the sample (keys: {keys}); "
            f"pass key=<name>, e.g. key={(found or arrays or keys)[0]!r}."
        )
    if isinstance(batch, (tuple, list)):
        index = 0 if key is None else key
        if not isinstance(index, int):
            raise TypeError(
                f"the batch is a {type(batch).__name__}; key must be an integer index, got {key!r}."
            )
        if not -len(batch) <= index < len(batch):
            raise IndexError(
                f"sample index {index} out of range for a batch of {len(batch)} fields; "
                "pass key=<index of the sample field>."
            )
        return batch[index]
    raise TypeError(
        f"unsupported batch type {type(batch).__name__}: the loader must yield a tensor, an "
        "ndarray, a tuple/list or a dict holding the sample."
    )


def sample_of(batch: Any, key: Any = None) -> Any:
    """The sample of ``batch`` as one array: a list/tuple of per-item arrays (webdataset 0.2
    collation, say) or of nested lists is stacked."""
    sample = find_sample(batch, key)
    if not isinstance(sample, (list, tuple)):
        return sample
    if len(sample) == 0:
        raise ValueError("the sample field holds an empty list: the batch has no items.")
    fix = "resize or crop them to one shape in the dataset transform before matching."
    try:
        shapes = {tuple(s.shape) if backend_of(s) else np.shape(s) for s in sample}
    except ValueError:  # np.shape of an item that is itself a ragged nested list
        raise ValueError(f"ragged batch: an item is a ragged nested list; {fix}") from None
    if len(shapes) > 1:
        raise ValueError(f"ragged batch: items have shapes {sorted(shapes)}; {fix}")
    if backend_of(sample[0]) is not None:
        return get_backend(*sample).stack(list(sample))
    return np.stack([np.asarray(s) for s in sample])


def field_of(batch: Any, field: Any, option: str) -> Any:
    """``batch[field]``, with an error naming ``option`` (the setting that asked for it)."""
    if backend_of(batch) is not None:
        raise TypeError(
            f"{option}={field!r} names a field of the batch, but the batch is a bare "
            f"{type(batch).__name__} with no fields; yield tuples or dicts with that field."
        )
    try:
        return batch[field]
    except (KeyError, IndexError, TypeError):
        keys = list(batch.keys()) if hasattr(batch, "keys") else f"{len(batch)} fields"
        raise KeyError(f"{option}={field!r} is not a field of the batch ({keys}).") from None


def labels_of(batch: Any, field: Any, n: int) -> np.ndarray:
    """The ``group_by`` labels of ``batch`` (field ``field``), one per sample."""
    labels = field_of(batch, field, "group_by")
    try:
        return as_labels(labels, n)
    except ValueError as exc:
        raise ValueError(f"group_by={field!r}: {exc}") from None


def _is_mapping(obj: Any) -> bool:
    return hasattr(obj, "keys") and hasattr(obj, "__getitem__")


def _is_float_array(obj: Any) -> bool:
    b = backend_of(obj)
    return b is not None and b.is_floating(obj)


def with_noise(batch: Any, key: Any, sample: Any, noise: Any, noise_key: str = "noise") -> Any:
    """The batch in its own form with the noise added (``output="batch"``): a tuple/list gets it
    as its last field, a dict under ``noise_key``, a bare array becomes ``(sample, noise)``; the
    sample field holds ``sample`` (encoded and moved, when the loader did either)."""
    if backend_of(batch) is not None:
        return sample, noise
    if isinstance(batch, dict) or _is_mapping(batch):
        if noise_key in batch:
            raise KeyError(
                f"the batch already has a field {noise_key!r}; pass noise_key=<another name>."
            )
        found = find_sample(batch, key)
        field = next(k for k in batch.keys() if batch[k] is found)
        return {**dict(batch), field: sample, noise_key: noise}
    fields = list(batch)
    fields[0 if key is None else key] = sample
    if type(batch) in (tuple, list):
        return type(batch)([*fields, noise])
    if hasattr(batch, "_fields"):  # a namedtuple: the same fields and names, noise_key added
        return _with_noise_field(type(batch), noise_key)(*fields, noise)
    return (*fields, noise)


_NAMEDTUPLES: dict = {}


def _with_noise_field(cls: type, noise_key: str) -> type:
    """``cls``, a namedtuple type, with one more field ``noise_key`` (made once per type)."""
    if noise_key in cls._fields:
        raise KeyError(
            f"the batch already has a field {noise_key!r}; pass noise_key=<another name>."
        )
    made = _NAMEDTUPLES.get((cls, noise_key))
    if made is None:
        made = collections.namedtuple(cls.__name__, [*cls._fields, noise_key])
        _NAMEDTUPLES[(cls, noise_key)] = made
    return made

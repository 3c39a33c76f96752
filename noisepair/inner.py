"""What MatchedNoiseLoader needs to know about the loader it wraps, and nothing else.

Loaders differ in four ways that change what the wrapper must do:

- **one-shot or re-iterable.** A generator (anything with ``__next__``) continues where it
  stopped, so batches the prefetch thread pulled but never delivered are handed back to the
  next pass; a DataLoader starts a fresh pass at every ``iter()``.
- **native state.** A loader with a working ``state_dict()``/``load_state_dict()`` (torchdata's
  ``StatefulDataLoader``), or whose iterators have ``get_state()``/``set_state()`` (grain's), is
  snapshotted after every batch pulled, so a resume restores it directly instead of replaying
  the epoch.
- **epochs.** ``set_epoch`` goes to the loader, else its sampler or batch sampler's sampler, and
  every ``wds.detshuffle`` stage inside it is set to the epoch at the start of a pass.
- **accelerate.** A prepared loader tells accelerate's ``GradientState`` when it yields its last
  batch. The prefetch thread pulls ahead, so that signal would fire early; instead the state of
  the inner loader at each pull travels with its batch, and :class:`GradientMirror` shows it to
  accelerate when the batch is *delivered*.
"""

from __future__ import annotations

import collections
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from noisepair.streaming import set_webdataset_epoch


class InnerLoader:
    def __init__(self, loader: Any):
        self.loader = loader
        self.one_shot = hasattr(loader, "__next__")
        self.loader_state = _has_native_state(loader)
        self.iterator_state = False  # grain: the iterator has get_state/set_state (known at start)
        self.accelerate = _is_prepared_by_accelerate(loader)
        self._iterator: Any = None

    @property
    def name(self) -> str:
        return type(self.loader).__name__

    @property
    def stateful(self) -> bool:
        return self.loader_state or self.iterator_state

    def set_epoch(self, epoch: int) -> None:
        for obj in (
            self.loader,
            getattr(self.loader, "sampler", None),
            getattr(getattr(self.loader, "batch_sampler", None), "sampler", None),
        ):
            if obj is not None and callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
                return

    def start(self, epoch: int, state: Any, pushback: collections.deque) -> tuple[Iterator, bool]:
        """An iterator over the pass of ``epoch``, and whether native ``state`` was restored
        (False: the pass starts at the beginning of the epoch, or where a one-shot loader is)."""
        set_webdataset_epoch(self.loader, epoch)  # wds.detshuffle: same order on resume
        restored = state is not None and self.loader_state
        if restored:
            self.loader.load_state_dict(state)
        self._iterator = iter(self.loader)
        self.iterator_state = not self.loader_state and all(
            callable(getattr(self._iterator, m, None)) for m in ("get_state", "set_state")
        )
        if state is not None and self.iterator_state:
            self._iterator.set_state(state)
            restored = True
        return itertools.chain(_drain(pushback), self._iterator), restored

    def snapshot(self) -> dict:
        """What must travel with the batch just pulled: native state, accelerate's flags."""
        snap = {}
        if self.loader_state:
            snap["state"] = self.loader.state_dict()
        elif self.iterator_state:
            snap["state"] = self._iterator.get_state()
        if self.accelerate:
            snap["end_of_dataloader"] = bool(self.loader.end_of_dataloader)
            snap["remainder"] = int(self.loader.remainder)
        return snap


class GradientMirror:
    """Stands in for a prepared loader in accelerate's ``GradientState`` (the last registered
    loader is the one accelerate reads), showing the flags of the batch the loop holds now."""

    def __init__(self, inner: InnerLoader):
        self.gradient_state = inner.loader.gradient_state if inner.accelerate else None
        self.end_of_dataloader = False
        self.remainder = -1

    def show(self, snap: dict) -> None:
        if self.gradient_state is None:
            return
        self.end_of_dataloader = snap["end_of_dataloader"]
        self.remainder = snap["remainder"]
        self.gradient_state._remove_dataloader(self)  # and back on top
        self.gradient_state._add_dataloader(self)

    def hide(self) -> None:
        if self.gradient_state is not None:
            self.gradient_state._remove_dataloader(self)


def accelerator_active() -> bool:
    """True when an ``accelerate.Accelerator`` exists in this process (it creates the shared
    ``GradientState``; a bare ``PartialState``, which other libraries create, does not)."""
    state = sys.modules.get("accelerate.state")
    return state is not None and bool(getattr(state.GradientState, "_shared_state", None))


def unprepared_map_loader(loader: Any) -> bool:
    """A torch DataLoader over a map-style dataset that accelerate has not prepared."""
    data = sys.modules.get("torch.utils.data")
    return (
        data is not None
        and isinstance(loader, data.DataLoader)
        and not isinstance(loader.dataset, data.IterableDataset)
        and not _is_prepared_by_accelerate(loader)
    )


def _drain(batches: collections.deque) -> Iterator:
    """Yield and remove from the left, so that what was not reached stays in ``batches``."""
    while batches:
        yield batches.popleft()


def _has_native_state(loader: Any) -> bool:
    if not (
        callable(getattr(loader, "state_dict", None))
        and callable(getattr(loader, "load_state_dict", None))
    ):
        return False
    try:  # accelerate's wrappers have the methods even when the loader inside has no state
        loader.state_dict()
    except (AttributeError, NotImplementedError, TypeError):
        return False
    return True


def _is_prepared_by_accelerate(loader: Any) -> bool:
    return hasattr(loader, "gradient_state") and hasattr(loader, "end_of_dataloader")

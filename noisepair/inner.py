"""What MatchedNoiseLoader needs to know about the loader it wraps, one class per kind.

A kind answers four questions for a pass (the model is torch's ``_DatasetKind``):

- ``open(epoch, group, seed)``: an iterator over the epoch from the match group ``group`` on,
  and the index of the batch it yields first. A loader without state of its own starts at the
  epoch's beginning (the pass then reads up to the group and skips); one with state is restored
  to the group's start.
- ``token()``: the inner loader's state between the last batch pulled and the next, taken at
  every match group's start (None where it has none).
- ``next_epoch(token)``: the state that starts the next epoch, given the state at the end of
  this one.
- ``flags()``: what travels with each batch pulled (accelerate's end-of-data flags).

Kinds: :class:`Replayed` (a torch DataLoader, a list, a WebDataset pipeline),
:class:`LoaderState` (``state_dict``/``load_state_dict`` on the loader: torchdata's
``StatefulDataLoader``), :class:`IteratorState` (``get_state``/``set_state`` on the iterator:
grain), the streaming datasets' own states (:class:`LitDataState` for litdata,
:class:`SamplesSeenState` for MosaicML streaming, :class:`DatasetEpochState` for Hugging Face
``datasets``) and :class:`OneShot` (a generator: it continues where it stopped, and owns the
batches a broken pass pulled but never delivered). Adding a loader with its own kind of state is
one class here and a line in :func:`inner_loader`.

accelerate: a prepared loader tells accelerate's ``GradientState`` when it yields its last batch.
The prefetch thread pulls ahead, so that signal would fire early; instead the flags at each pull
travel with their batch, and :class:`GradientMirror` shows them to accelerate when the batch is
*delivered*.
"""

from __future__ import annotations

import collections
import copy
import itertools
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from noisepair.distributed import rank_and_world
from noisepair.position import Checkpoint
from noisepair.streaming import set_webdataset_epoch

#: the stream of a random sampler's generator (the noise uses (seed, rank, epoch, index))
ORDER_STREAM = 0x5EED0


class Replayed:
    """A re-iterable loader without state of its own: a resume replays the epoch up to its
    match group. A torch DataLoader's random sampler (``shuffle=True``) draws each epoch's order
    from torch's global generator, which a resumed process has not advanced the same way; it is
    given a generator seeded from (seed, epoch) instead, as accelerate's seedable sampler does,
    so epoch e has one order in every run."""

    one_shot = False
    native = False

    def __init__(self, loader: Any):
        self.loader = loader
        self.accelerate = _is_prepared_by_accelerate(loader)
        self.recorder: IndexRecorder | None = None
        self._iterator: Any = None
        self._order_seeds: dict[int, int | None] = {}  # sampler id -> the user's own seed

    def record_indices(self) -> None:
        """Note the dataset indices of every batch (for ``persistent=`` without ``index_key``):
        only a plain torch DataLoader over a map-style dataset hands them out in order."""
        data = sys.modules.get("torch.utils.data")
        plain = (
            data is not None
            and type(self.loader) is data.DataLoader
            and not isinstance(self.loader.dataset, data.IterableDataset)
            and self.loader.batch_sampler is not None
            and getattr(self.loader, "in_order", True)
        )
        if not plain:
            raise ValueError(
                f"persistent= needs to know which data point each sample is: the wrapped "
                f"{self.name} does not say, so pass index_key=<the batch field that holds each "
                "item's index or key> (webdataset's '__key__', an 'idx' column). Only a plain "
                "torch DataLoader over a map-style dataset (in order) is read without it."
            )
        self.recorder = IndexRecorder(self.loader.batch_sampler)
        object.__setattr__(self.loader, "batch_sampler", self.recorder)  # DataLoader forbids it

    def indices(self) -> Any:
        """The dataset indices of the batch pulled last (None when not recorded)."""
        return None if self.recorder is None else self.recorder.take()

    @property
    def name(self) -> str:
        return type(self.loader).__name__

    def set_epoch(self, epoch: int) -> None:
        for obj in (
            self.loader,
            getattr(self.loader, "sampler", None),
            getattr(getattr(self.loader, "batch_sampler", None), "sampler", None),
        ):
            if obj is not None and callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
                return

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        self._seed_order(epoch, seed)
        self._iterator = iter(self.loader)
        return self._iterator, 0

    def _prepare(self, epoch: int, seed: int) -> None:
        self.set_epoch(epoch)
        set_webdataset_epoch(self.loader, epoch)  # wds.detshuffle: same order on resume

    def _seed_order(self, epoch: int, seed: int) -> None:
        for sampler in _random_samplers(self.loader):
            own = self._order_seeds.setdefault(
                id(sampler), None if sampler.generator is None else sampler.generator.initial_seed()
            )
            base = seed if own is None else own
            order = np.random.SeedSequence([base, epoch, ORDER_STREAM]).generate_state(1, np.uint64)
            sampler.generator = _torch().Generator().manual_seed(int(order[0]))

    def token(self) -> Any:
        return None

    def next_epoch(self, token: Any) -> Any:
        return None

    def flags(self) -> dict | None:
        if not self.accelerate:
            return None
        return {
            "end_of_dataloader": bool(self.loader.end_of_dataloader),
            "remainder": int(self.loader.remainder),
        }


class LoaderState(Replayed):
    """A loader with ``state_dict``/``load_state_dict`` (torchdata's StatefulDataLoader, with
    workers too): restored to the group's start; its state at an epoch's end starts the next."""

    native = True

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        if group.inner is not None:
            self.loader.load_state_dict(group.inner)
        self._iterator = iter(self.loader)
        return self._iterator, group.index if group.inner is not None else 0

    def token(self) -> Any:
        return self.loader.state_dict()

    def next_epoch(self, token: Any) -> Any:
        return token


class IteratorState(Replayed):
    """A loader whose iterators have ``get_state``/``set_state`` (grain): each ``iter()`` starts
    an epoch over; a resume sets the new iterator to the group's start."""

    native = True

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        self._iterator = iter(self.loader)
        if group.inner is None:
            return self._iterator, 0
        self._iterator.set_state(group.inner)
        return self._iterator, group.index

    def token(self) -> Any:
        return self._iterator.get_state()


class SamplerPosition(Replayed):
    """A torch DataLoader whose batch sampler makes batch i of epoch e from (e, i) alone (the
    semi-discrete coupling's, :meth:`noisepair.SemiDiscrete.batch_sampler`): a pass sets it to
    its group's start, so a resume reads one group, as a loader with state of its own does."""

    native = True

    def __init__(self, loader: Any, sampler: Any):
        super().__init__(loader)
        self.sampler = sampler

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        self.sampler.load_state_dict({"epoch": epoch, "index": group.index})
        self._iterator = iter(self.loader)
        return self._iterator, group.index


class PulledState(LoaderState):
    """A loader with ``state_dict``/``load_state_dict`` whose iteration starts (and tells its
    state) only when the first batch is pulled: until then its ``state_dict`` is the last pass's,
    so the state the pass opened with stands for it. Each pass's order comes from the epoch the
    wrapper sets, not from the state at the last epoch's end. States go in and out as copies
    (litdata keeps the dict it loaded, updates it as it reads and hands it out again)."""

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        self._opened, self._pulled = group.inner, False
        self._iterator = self._pulls(self._start(epoch, copy.deepcopy(group.inner)))
        return self._iterator, 0 if group.inner is None else group.index

    def _start(self, epoch: int, state: Any) -> Iterator:
        """The pass's batches, from ``state`` (None: the epoch's start)."""
        raise NotImplementedError

    def _pulls(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._pulled = True
            yield batch

    def token(self) -> Any:
        return copy.deepcopy(self.loader.state_dict()) if self._pulled else self._opened

    def next_epoch(self, token: Any) -> Any:
        return None


class LitDataState(PulledState):
    """litdata's ``StreamingDataLoader``. Its ``__iter__`` counts an epoch of its own, and a state
    with every sample read makes it start the next epoch; so each pass sets litdata's epoch from
    the wrapper's (litdata's e + 1 is the wrapper's e, where its own count would put it), and a
    state at the epoch's end yields nothing."""

    loader_class = "litdata.streaming.dataloader.StreamingDataLoader"

    def _start(self, epoch: int, state: Any) -> Iterator:
        loader = self.loader
        loader.restore = False  # a resumed pass broken off early leaves it set
        loader.current_epoch = epoch  # __iter__ adds one
        if state is None:
            return iter(loader)
        loader.load_state_dict(state)
        # litdata resumes a state inside its epoch; one with every sample read restarts it
        return iter(loader) if loader.restore else iter(())


class SamplesSeenState(Replayed):
    """A torch DataLoader over MosaicML streaming's ``StreamingDataset``, whose state lives on
    the dataset and is computed from the samples seen (``state_dict(num_samples,
    from_beginning)``). The kind counts the samples it pulls, as mosaic's own
    ``StreamingDataLoader`` does (times the ranks: ``sample_in_epoch`` counts the global batch),
    and tells the dataset its epoch at each pass (``next_epoch``), so set_epoch(e) gives epoch
    e's order and an epoch broken off can be read again (mosaic's own count only moves on).

    The dataset keeps a loaded state until an epoch after it begins, in memory shared by the
    ranks of a node, where a rank that reads it while another creates it reads nothing; so a
    state is written only where one must be (a resume; an epoch again, before the loaded
    state's end), all ranks alike, and never read back."""

    native = True
    dataset_class = "streaming.base.dataset.StreamingDataset"

    def __init__(self, loader: Any):
        super().__init__(loader)
        self.dataset = loader.dataset
        self._loaded: dict | None = None  # the state this kind last gave the dataset
        self._settings: dict | None = None  # a state's other fields (canonical nodes, seed)
        self._epoch = self._offset = self._seen = 0  # _seen: samples this rank pulled

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        state = None
        if group.inner is not None:
            state = dict(group.inner, epoch=epoch)
        elif self._loaded is not None and self._loaded["epoch"] >= epoch:  # it would resume it
            state = dict(self._loaded, epoch=epoch, sample_in_epoch=0)
        self.dataset.next_epoch = epoch
        if state is not None:
            self.dataset.load_state_dict(state)
            self._loaded = self._settings = state
        self._epoch, self._seen = epoch, 0
        self._offset = 0 if state is None else state["sample_in_epoch"]
        self._iterator = self._count(iter(self.loader))
        return self._iterator, group.index if group.inner is not None else 0

    def _count(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._seen += _batch_length(batch)
            yield batch

    def token(self) -> Any:
        if self._settings is None:  # no state given: the dataset's own, read once
            self._settings = self.dataset.state_dict(0, True)
        _, world = rank_and_world()
        seen = self._seen * world // (getattr(self.dataset, "replication", None) or 1)
        return dict(self._settings, epoch=self._epoch, sample_in_epoch=self._offset + seen)

    def next_epoch(self, token: Any) -> Any:
        return dict(token, epoch=token["epoch"] + 1, sample_in_epoch=0)


class DatasetEpochState(PulledState):
    """A Hugging Face ``IterableDataset`` (streaming), batched by itself or under torchdata's
    ``StatefulDataLoader``. The dataset shuffles by its own epoch (``set_epoch``), ignores a saved
    state of another epoch and keeps a loaded one for every later pass of its epoch; so a pass
    from the epoch's start makes it forget the state it loaded."""

    dataset_class = "datasets.iterable_dataset.IterableDataset"

    def __init__(self, loader: Any):
        super().__init__(loader)
        self.dataset = loader if _is_a(loader, self.dataset_class) else loader.dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _start(self, epoch: int, state: Any) -> Iterator:
        if state is None:
            self.dataset.load_state_dict(None)  # it keeps what it is given: now none
        else:
            self.loader.load_state_dict(state)
        return iter(self.loader)


def _is_a(obj: Any, name: str) -> bool:
    """``obj`` is an instance of the class ``module.Name`` (or of a subclass)."""
    return any(f"{c.__module__}.{c.__qualname__}" == name for c in type(obj).__mro__)


def _batch_length(batch: Any) -> int:
    """The samples in a collated batch, as mosaic's StreamingDataLoader counts them: a dict's
    first field, a tensor's rows, a tuple's first field."""
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values())))
    if hasattr(batch, "shape"):
        return len(batch)
    return len(batch[0])


class OneShot(Replayed):
    """A generator (anything with ``__next__``): it cannot restart, so a pass broken off early is
    continued by the next one. The batches the broken pass pulled from its match group's start
    on, delivered or not, are handed back here and read first, so the group is paired again with
    the same noise; batches are never lost or repeated. A new process has no such batches: it
    reads the rebuilt generator from its start and skips (resume only what you can rebuild)."""

    one_shot = True

    def __init__(self, loader: Any):
        super().__init__(loader)
        self._handed: tuple | None = None
        self.unread: collections.deque = collections.deque()  # handed back, not yet read again

    def hand_back(
        self,
        epoch: int,
        index: int,
        pulled: collections.deque,
        unread: collections.deque,
    ) -> None:
        """What a broken pass took: ``pulled`` holds ``(index, batch)`` of the batches it pulled
        (from its group's start, batch ``index`` of ``epoch``, on), ``unread`` those handed to
        it that it never reached. Read them only once its thread has stopped."""
        self._handed = (epoch, index, pulled, unread)

    def open(self, epoch: int, group: Checkpoint, seed: int) -> tuple[Iterator, int]:
        self._prepare(epoch, seed)
        handed, self._handed = self._handed, None
        self.unread = collections.deque()
        if handed is None or handed[:2] != (epoch, group.index):
            return iter(self.loader), 0
        _, index, pulled, unread = handed
        batches = collections.deque(batch for i, batch in pulled if i >= index)
        batches.extend(unread)
        self.unread = batches
        return itertools.chain(_drain(batches), self.loader), index


class IndexRecorder:
    """Stands in for a torch DataLoader's batch sampler and notes each list of indices it hands
    out: the DataLoader yields its batches in that order (``in_order=True``, the default), also
    with workers that were handed several lists ahead."""

    def __init__(self, batch_sampler: Any):
        self.batch_sampler = batch_sampler
        self.handed: collections.deque = collections.deque()

    def __iter__(self):
        self.handed.clear()  # the DataLoader starts a new iteration
        for indices in self.batch_sampler:
            self.handed.append(np.asarray(indices, dtype=np.int64))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batch_sampler, name)

    def take(self) -> np.ndarray:
        return self.handed.popleft()


def inner_loader(loader: Any) -> Replayed:
    """The kind of ``loader``."""
    dataset = getattr(loader, "dataset", None)
    if _is_a(dataset, SamplesSeenState.dataset_class):
        return SamplesSeenState(loader)
    if _is_a(loader, LitDataState.loader_class):
        return LitDataState(loader)
    if _is_a(loader, DatasetEpochState.dataset_class) or (
        _is_a(dataset, DatasetEpochState.dataset_class) and _has_native_state(loader)
    ):
        return DatasetEpochState(loader)
    if _has_native_state(loader):
        return LoaderState(loader)
    if hasattr(loader, "__next__"):
        return OneShot(loader)
    if type(loader).__module__.split(".")[0] == "grain":
        return IteratorState(loader)
    return Replayed(loader)


class GradientMirror:
    """Stands in for a prepared loader in accelerate's ``GradientState`` (the last registered
    loader is the one accelerate reads), showing the flags of the batch the loop holds now."""

    def __init__(self, inner: Replayed):
        self.gradient_state = inner.loader.gradient_state if inner.accelerate else None
        self.end_of_dataloader = False
        self.remainder = -1

    def show(self, flags: dict | None) -> None:
        if self.gradient_state is None:
            return
        self.end_of_dataloader = flags["end_of_dataloader"]
        self.remainder = flags["remainder"]
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


def _random_samplers(loader: Any) -> list:
    """The samplers of a plain torch DataLoader that shuffle with a generator and have no
    ``set_epoch`` of their own (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)."""
    data = sys.modules.get("torch.utils.data")
    if (
        data is None
        or not isinstance(loader, data.DataLoader)
        or _is_prepared_by_accelerate(loader)
    ):
        return []
    found = []
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if (
            sampler is not None
            and hasattr(sampler, "generator")
            and not callable(getattr(sampler, "set_epoch", None))
            and all(sampler is not s for s in found)
        ):
            found.append(sampler)
    return found


def _torch() -> Any:
    return sys.modules["torch"]


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

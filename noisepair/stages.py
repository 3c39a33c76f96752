"""The producer of a pass: small generator stages, chained in the prefetch thread.

    read groups -> pair -> skip what was delivered

Each stage is a plain iterator transform (webdataset's pipeline stages are the model). What
reaches the consumer is a :class:`Delivery` per batch, with the position the pass is at once
that batch is delivered, and finally an :class:`End` with the position where the next epoch
starts. Nothing here touches the loader or the pass: settings come in, positions go out.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisepair.backend import get_backend, to_numpy
from noisepair.batch import PairedBatch, field_of, labels_of, sample_of
from noisepair.couplings import Group
from noisepair.pairing import require_array, require_data
from noisepair.position import Checkpoint, Position


@dataclass(frozen=True)
class Read:
    """The batches of one match group as pulled (``flags``: what travels with each), the inner
    loader's state after the last of them, and whether the epoch ended inside the group."""

    index: int
    batches: list
    flags: list
    token: Any
    ended: bool = False
    start_token: Any = None  # the state before the first of them (read for the first group)
    ids: list | None = None  # the dataset indices of each batch, where the inner loader notes them


@dataclass(frozen=True)
class Delivery:
    """A paired batch, the flags of its pull, the position once it is delivered, and the event
    its device work ends with (None off CUDA)."""

    pb: PairedBatch
    flags: dict | None
    after: Position
    ready: Any = None


@dataclass(frozen=True)
class End:
    """The epoch's data ran out: the next pass starts at ``position``."""

    position: Position


@dataclass
class Settings:
    """What the stages need to know of the loader's settings."""

    key: Any
    scope: int
    group_by: Any
    encode: Any
    device: Any
    skip_counter: Any
    source: str
    index_key: Any = None
    warned_single: bool = False


def produce(
    settings: Settings,
    inner: Any,
    coupling: Any,
    start: Position,
    *,
    seed: int,
    rank: int,
    exchange: Any,
    streams: Any,
    pulled: Any,
) -> Iterator[Delivery | End]:
    """The whole producer: ``Delivery`` per batch from ``start`` on, then ``End``."""
    with streams.worker():
        try:
            if start.group.ended:  # the epoch's data had all been read: nothing to deliver
                yield End(_next_epoch(start, start.group.inner, coupling.mark()))
                return
            coupling.rewind(start.group.coupling, seed, rank)
            reads = read_groups(inner, start, seed, settings, pulled)
            deliveries = pair_groups(
                reads, settings, inner, coupling, start, seed, rank, exchange, streams
            )
            for item in skip(deliveries, start.drop):
                if isinstance(item, End) and exchange is not None:
                    exchange.finish()  # raises if another rank still has batches
                yield item
        except GeneratorExit:
            raise
        except BaseException:
            if exchange is not None:
                exchange.fail()  # the other ranks raise too instead of waiting for this one
            raise


def read_groups(
    inner: Any, start: Position, seed: int, settings: Settings, pulled: Any
) -> Iterator[Read]:
    """The epoch's batches from ``start``'s group on, ``scope`` at a time. A loader without
    state of its own is read from the epoch's start up to the group (decoded, not paired).
    ``pulled`` (a one-shot loader's) collects ``(index, batch)`` of every batch pulled."""
    batches, at = inner.open(start.epoch, start.group, seed)
    index = start.group.index
    for i in range(at, index):
        batch = next(batches, _END)
        if batch is _END:
            raise past_the_end(start, inner.name, i)
        inner.indices()  # replayed: its indices are not needed
        if i == 0:
            _check_batch_size(start, settings, batch, ended=False)
    start_token = inner.token() if index == 0 else None
    recorded = inner.recorder is not None
    while True:
        group, flags, ids = [], [], []
        for batch in itertools.islice(batches, settings.scope):
            if pulled is not None:
                pulled.append((index + len(group), batch))
            group.append(batch)
            flags.append(inner.flags())
            ids.append(inner.indices())
        ended = len(group) < settings.scope
        token = inner.next_epoch(inner.token()) if ended else inner.token()
        yield Read(index, group, flags, token, ended, start_token, ids if recorded else None)
        if ended:
            return
        index += len(group)
        start_token = None


def pair_groups(
    reads: Iterator[Read],
    settings: Settings,
    inner: Any,
    coupling: Any,
    start: Position,
    seed: int,
    rank: int,
    exchange: Any,
    streams: Any,
) -> Iterator[Delivery | End]:
    """Pair each group; each batch leaves with the position after it. After a group's last
    batch the position is the next group's start: its index, the inner loader's state there and
    the coupling's marker after this group."""
    epoch = start.epoch
    here = start.group
    epoch_start = start.epoch_start
    size = start.batch_size
    first = True
    for read in reads:
        if epoch_start is None and read.index == 0:
            epoch_start = read.start_token
        if not read.batches:
            if first and read.index == 0:
                raise ValueError(
                    f"the wrapped {inner.name} yielded no batches: check the dataset "
                    "path/size and the batch size (drop_last with fewer samples than a batch "
                    "yields none)."
                )
            if first and start.drop:
                raise past_the_end(start, inner.name, read.index)
            yield End(_next_epoch(start, read.token, coupling.mark()))
            return
        if first and len(read.batches) < start.drop:
            raise past_the_end(start, inner.name, read.index + len(read.batches))
        began = time.perf_counter()
        x, samples, labels = prepare_group(read.batches, settings)
        if first and (start.delivered or start.group.index):
            for j, s in enumerate(samples):
                last = read.ended and j == len(samples) - 1
                _check_size(start, inner.name, len(s), last)
        size = len(samples[0]) if size is None and read.index == 0 else size
        ids = _identities(read, samples, settings)
        group = Group(seed, rank, epoch, read.index, exchange, ids)
        noise, info = coupling.pair(x, [len(s) for s in samples], labels, group)
        info["seconds"] = time.perf_counter() - began  # encode + draw + cost + solve
        ready = streams.mark()
        after = Checkpoint(read.index + len(samples), read.token, coupling.mark(), read.ended)
        offset = 0
        for j, (batch, s) in enumerate(zip(read.batches, samples)):
            n = len(s)
            meta = dict(
                info, epoch=epoch, batch_index=read.index + j, rank=rank, scope=len(samples)
            )
            if settings.skip_counter is not None:
                meta["skipped"] = int(settings.skip_counter.count)
            pb = PairedBatch(sample=s, noise=noise[offset : offset + n], batch=batch, info=meta)
            offset += n
            last = j == len(samples) - 1
            position = Position(
                epoch, read.index + j + 1, after if last else here, epoch_start, size
            )
            yield Delivery(pb, read.flags[j], position, ready)
        here, first = after, False
        if read.ended:
            yield End(_next_epoch(start, read.token, after.coupling))
            return


def skip(deliveries: Iterator, count: int) -> Iterator:
    """Drop the first ``count`` deliveries: a resumed group's batches delivered before."""
    for item in deliveries:
        if count and isinstance(item, Delivery):
            count -= 1
            continue
        yield item


def prepare_group(batches: list, settings: Settings) -> tuple[Any, list, Any]:
    """The samples of a match group as one array (and per batch), and their labels or None."""
    samples = [prepare_sample(b, settings) for b in batches]
    kinds = {_kind(s) for s in samples}
    if len(kinds) > 1:
        raise ValueError(
            f"batches in one match scope differ in array type, dtype or device {sorted(kinds)}; "
            "the noise takes the sample's, so make them agree in the transform, or use scope=1."
        )
    item_shapes = {tuple(s.shape[1:]) for s in samples}
    if len(item_shapes) > 1:
        raise ValueError(
            f"batches in one match scope have different item shapes {sorted(item_shapes)}; "
            "resize/crop to one shape in the transform, or use scope=1."
        )
    labels = None
    if settings.group_by is not None:
        labels = np.concatenate(
            [labels_of(b, settings.group_by, len(s)) for b, s in zip(batches, samples)]
        )
    x = samples[0] if len(samples) == 1 else get_backend(*samples).concat(samples)
    return x, samples, labels


def prepare_sample(batch: Any, settings: Settings) -> Any:
    """The batch's sample, encoded (checked to keep its batch dimension) and moved."""
    sample = sample_of(batch, settings.key)
    if settings.encode is not None:
        require_array(sample)
        n = len(sample)
        sample = settings.encode(sample)
        require_array(sample, "encode= returned")
        if sample.ndim == 0 or len(sample) != n:
            raise ValueError(
                f"encode= turned a batch of {n} samples into shape {tuple(sample.shape)}: it must "
                f"map each sample to one encoded sample, (B, ...) -> (B, ...) with B={n}, so "
                "that noise, labels and the rest of the batch stay aligned."
            )
    require_array(sample)
    require_data(sample)
    sample = get_backend(sample).to_device(sample, settings.device)
    if len(sample) == 1 and not settings.warned_single:
        settings.warned_single = True
        warnings.warn(
            "a batch of one sample: matching cannot reassign noise within it, so it is paired "
            "as drawn. Use a larger batch or scope>1 to match across batches.",
            stacklevel=2,
        )
    return sample


def _identities(read: Read, samples: list, settings: Settings) -> np.ndarray | None:
    """Which data point each sample of the group is (``persistent=``): the batches'
    ``index_key`` field, or the indices the inner loader noted; None when neither is asked."""
    if settings.index_key is None:
        return None if read.ids is None else np.concatenate(read.ids)
    parts = []
    for batch, s in zip(read.batches, samples):
        ids = np.asarray(to_numpy(field_of(batch, settings.index_key, "index_key"))).reshape(-1)
        if len(ids) != len(s):
            raise ValueError(
                f"index_key={settings.index_key!r} gave {len(ids)} identities for a batch of "
                f"{len(s)} samples: it must name one index or key per sample."
            )
        if ids.dtype.kind == "f":
            raise TypeError(
                f"index_key={settings.index_key!r} holds {ids.dtype} values; item identities are "
                "integers (dataset indices) or strings (keys)."
            )
        parts.append(ids)
    return np.concatenate(parts)


def past_the_end(start: Position, source: str, available: int) -> ValueError:
    return ValueError(
        f"the resumed state says {start.delivered} batches of epoch {start.epoch} were "
        f"delivered, but the wrapped {source} has only {available} this epoch: the state belongs "
        "to another loader, data set or batch size."
    )


def _check_batch_size(start: Position, settings: Settings, batch: Any, ended: bool) -> None:
    if start.batch_size is not None and start.delivered:
        _check_size(start, settings.source, len(sample_of(batch, settings.key)), ended)


def _check_size(start: Position, source: str, size: int, last: bool) -> None:
    """A resume counts batches, so it needs the batch size the state was saved with (the
    epoch's last batch may be smaller)."""
    saved = start.batch_size
    if saved is None or size == saved or (last and size < saved):
        return
    raise ValueError(
        f"the state was saved with batches of {saved} samples, but the wrapped {source} now "
        f"yields batches of {size}: resuming after {start.delivered} batches would deliver the "
        f"wrong samples. Resume with batch size {saved}, or start the epoch afresh (do not load "
        "the state; call set_epoch)."
    )


def _next_epoch(start: Position, token: Any, marker: Any) -> Position:
    return Position(start.epoch + 1, 0, Checkpoint(0, token, marker), token)


def _kind(sample: Any) -> tuple[str, str, str]:
    return (type(sample).__name__, str(sample.dtype), str(getattr(sample, "device", "cpu")))


_END = object()

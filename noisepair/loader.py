"""MatchedNoiseLoader: wrap any loader and get batches whose noise is matched to the samples.

inner loader -> sample found -> (encoded) -> noise drawn per (seed, rank, epoch, batch index)
-> cost -> matcher -> PairedBatch, in a prefetch thread so a training step never waits on it.
"""
from __future__ import annotations

import itertools
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterator

import numpy as np

from noisepair._frameworks import concat, is_torch, to_device, to_numpy
from noisepair.batch import PairedBatch, find_sample
from noisepair.distributed import rank_and_world
from noisepair.matchers import get_matcher
from noisepair.noise import draw_like
from noisepair.pairing import pair, require_array
from noisepair.pool import NoisePool
from noisepair.prefetch import Prefetcher
from noisepair.streaming import set_webdataset_epoch


class MatchedNoiseLoader:
    """Yields :class:`PairedBatch` es: ``pb.noise[i]`` is the Gaussian noise matched to
    ``pb.sample[i]``; ``pb.batch`` is the inner loader's batch, untouched.

    Args:
        loader: any iterable of batches (tensor, ndarray, tuple/list or dict).
        key: where the sample is in a batch: a dict key or a tuple index (default: index 0, or
            the one obvious dict key such as ``"image"``).
        method: matcher name (``hungarian``, ``emd``, ``sinkhorn``, ``greedy``, ``knn``,
            ``random``), a :class:`~noisepair.matchers.Matcher`, or a callable ``cost -> cols``.
        cost: ``"sqeuclidean"`` (default) or ``"euclidean"``.
        seed: noise seed; the draws depend only on (seed, rank, epoch, batch index).
        prefetch: batches paired ahead in a background thread (0: pair in the caller).
        scope: DANSM's match scope: pair k consecutive batches together, emit them in order.
        pool: DANSM's noise pool: P noises drawn ahead; each batch takes its noise from the
            pool's unused part, the pool is redrawn when used up (:mod:`noisepair.pool`: every
            draw of a cycle is emitted once; early batches of a cycle get nearer noise).
            ``method="greedy"`` is DANSM's rule (each sample in order takes its nearest unused
            noise); ``hungarian``/``emd``/``auto`` solve the batch against the unused noises
            exactly. Replaces ``scope``; one pool per label with ``group_by``.
        group_by: a batch field (dict key or tuple index) of labels; noise is exchanged only
            among samples with the same label (conditional training).
        encode: a function applied to the sample before matching (a VAE encoder, say);
            ``pb.sample`` is then the encoded batch.
        device: where the sample is moved, the noise drawn and the cost computed (torch).
        precision: cost precision, ``float32`` (default), ``float16``, ``bfloat16``.
        method_options: options for a matcher given by name, e.g. ``{"k": 8}`` for knn.
        across_ranks: match the global batch of all torch.distributed ranks in one assignment
            (Immiscible Diffusion's Stable Diffusion setting): samples go to rank 0, which solves
            for ``world * B`` and sends each rank the noise for its own samples. Needs an
            initialised process group and the same number of batches on every rank; see
            :mod:`noisepair.distributed` for the cost. Default: each rank matches its own batch.
        timeout: seconds an across-rank exchange waits for the other ranks before raising.
        skip_counter: a :class:`noisepair.streaming.SkipCounter` given as webdataset
            ``handler=``; :attr:`skipped` and ``pb.info["skipped"]`` then report the samples and
            shards dropped by it so far.
        monitor: a :class:`~noisepair.checks.NoiseMonitor` (or any object with
            ``update(pb)``) that sees every paired batch: Gaussianity and path gain on the fly.
    """

    def __init__(
        self,
        loader: Any,
        *,
        key: Any = None,
        method: Any = "hungarian",
        cost: str = "sqeuclidean",
        seed: int = 0,
        prefetch: int = 2,
        scope: int = 1,
        pool: int | None = None,
        group_by: Any = None,
        encode: Callable | None = None,
        device: Any = None,
        precision: str = "float32",
        method_options: dict | None = None,
        across_ranks: bool = False,
        timeout: float = 300.0,
        skip_counter: Any = None,
        monitor: Any = None,
    ):
        if int(scope) < 1:
            raise ValueError(f"scope must be >= 1 batch, got {scope}.")
        if int(prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0 batches, got {prefetch}.")
        self.loader = loader
        self.key = key
        self.matcher = get_matcher(method, **(method_options or {}))
        self.cost = cost
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.scope = int(scope)
        self.group_by = group_by
        self.encode = encode
        self.device = device
        self.precision = precision
        self.monitor = monitor
        self._epoch = 0
        self._delivered = 0  # batches handed to the consumer in the current epoch
        self._current: Any = None  # weak reference to the live iteration
        self._warned_single = False
        self.across_ranks = bool(across_ranks)
        self.timeout = float(timeout)
        self.skip_counter = skip_counter
        self._pool, self._pool_states = None, {}  # pool state before each (epoch, batch index)
        if pool is not None:
            rule = {"greedy": "greedy", "hungarian": "exact", "emd": "exact", "auto": "exact"}.get(self.matcher.name)
            if rule is None or self.scope > 1 or self.across_ranks:
                raise ValueError(
                    f"pool={pool} works with method='greedy' (DANSM's rule) or an exact method "
                    f"('hungarian', 'emd', 'auto'), scope=1 and across_ranks=False; got "
                    f"method={self.matcher.name!r}, scope={self.scope}, across_ranks={self.across_ranks}."
                )
            self._pool = NoisePool(pool, rule=rule, seed=self.seed, metric=cost, precision=precision)
        if self.across_ranks and not self.matcher.permutation:
            raise ValueError(
                f"across_ranks=True needs a permutation matcher; {self.matcher.name!r} picks noise "
                "per sample, so matching across ranks changes nothing: use across_ranks=False."
            )

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[PairedBatch]:
        self.close()
        set_webdataset_epoch(self.loader, self._epoch)  # wds.detshuffle: same order on resume
        it = _Iteration(self, self._epoch, self._delivered)
        self._current = weakref.ref(it)
        return it

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise TypeError(
                f"the wrapped {type(self.loader).__name__} has no length, so neither has "
                "MatchedNoiseLoader; count batches yourself or give the inner loader a length."
            ) from None

    @property
    def skipped(self) -> int:
        """Faults (corrupt samples, unreadable shards) the ``skip_counter`` skipped so far."""
        return 0 if self.skip_counter is None else int(self.skip_counter.count)

    def close(self) -> None:
        """Stop the prefetch thread of the live iteration, if any."""
        it = self._current() if self._current is not None else None
        if it is not None:
            it.close()
        self._current = None

    def __enter__(self) -> "MatchedNoiseLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- epochs and resume ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Reseed the noise for ``epoch`` and forward it to the inner loader or its sampler."""
        self._epoch, self._delivered = int(epoch), 0
        _forward_set_epoch(self.loader, int(epoch))

    def state_dict(self) -> dict:
        """Batches delivered to the consumer (not prefetched) in this epoch, and the seed."""
        state = {"epoch": self._epoch, "delivered": self._delivered, "seed": self.seed,
                 "scope": self.scope}
        if self._pool is not None:  # as the consumer saw it, not as far as the prefetch got
            state["pool"] = self._pool_states.get((self._epoch, self._delivered)) or self._pool.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration skips the delivered batches and draws the same noise."""
        if state.get("seed", self.seed) != self.seed or state.get("scope", self.scope) != self.scope:
            raise ValueError(
                f"state was saved with seed={state.get('seed')}, scope={state.get('scope')} but this "
                f"loader has seed={self.seed}, scope={self.scope}; build it with the same settings."
            )
        if (self._pool is None) != ("pool" not in state):
            raise ValueError("state and loader disagree on pool=: build the loader with the pool "
                             "setting the state was saved with.")
        if self._pool is not None:
            self._pool.rank = rank_and_world()[0]
            self._pool.load_state_dict(state["pool"])
            self._pool_states = {}
        self.set_epoch(state["epoch"])
        self._delivered = int(state["delivered"])

    # -- the pairing work (runs in the prefetch thread) ----------------------------------
    def _generate(self, epoch: int, skip: int, exchange: Any = None) -> Iterator[PairedBatch]:
        if exchange is None:
            yield from self._generate_local(epoch, skip)
            return
        try:
            yield from self._generate_local(epoch, skip, exchange)
        except GeneratorExit:
            raise
        except BaseException:
            exchange.fail()  # the other ranks raise too instead of waiting for this one
            raise

    def _generate_local(self, epoch: int, skip: int, exchange: Any = None) -> Iterator[PairedBatch]:
        rank, _ = rank_and_world()
        batches = iter(self.loader)
        start = (skip // self.scope) * self.scope  # resume at the start of skip's match group
        for _ in itertools.islice(batches, start):
            pass
        index, drop, seen = start, skip - start, start
        while True:
            group = list(itertools.islice(batches, self.scope))
            if not group:
                break
            seen += len(group)
            paired = self._pair_group(group, epoch, rank, index, exchange)
            index += len(group)
            yield from paired[drop:]
            drop = 0
        if exchange is not None:
            exchange.finish()  # raises if another rank still has batches
        if seen == 0:
            raise ValueError(
                f"the wrapped {type(self.loader).__name__} yielded no batches: check the dataset "
                "path/size and the batch size (drop_last with fewer samples than a batch yields none)."
            )

    def _pair_group(self, group: list, epoch: int, rank: int, first_index: int,
                    exchange: Any = None) -> list[PairedBatch]:
        start = time.perf_counter()
        samples = [self._prepare_sample(b) for b in group]
        item_shapes = {tuple(s.shape[1:]) for s in samples}
        if len(item_shapes) > 1:
            raise ValueError(
                f"batches in one match scope have different item shapes {sorted(item_shapes)}; "
                "resize/crop to one shape in the transform, or use scope=1."
            )
        groups = None
        if self.group_by is not None:
            groups = np.concatenate([_labels(b, self.group_by, len(s)) for b, s in zip(group, samples)])
        x = samples[0] if len(samples) == 1 else concat(samples)

        def draw(r: int, sizes: list[int]) -> Any:  # rank r's noise for batches of these sizes
            d = [draw_like(x, n * self.matcher.candidates, seed=self.seed, rank=r, epoch=epoch,
                           index=first_index + j) for j, n in enumerate(sizes)]
            return d[0] if len(d) == 1 else concat(d)

        if exchange is not None:  # one assignment for the global batch of all ranks
            noise, info = exchange.pair(x, [len(s) for s in samples], draw, self.matcher,
                                        metric=self.cost, precision=self.precision,
                                        groups=groups, pair_fn=pair)
        elif self._pool is not None:  # scope is 1: one batch
            states, key = self._pool_states, (epoch, first_index)
            self._pool.rank = rank
            if key in states:  # paired before by an abandoned iteration: start from the same pool
                self._pool.load_state_dict(states[key])
            states[key] = self._pool.state_dict()
            noise, info = self._pool.take(x, groups)
            states[(epoch, first_index + 1)] = self._pool.state_dict()
            while len(states) > 2 * self.prefetch + 8:  # the consumer is at most prefetch+1 behind
                states.pop(next(iter(states)))
        else:
            z = draw(rank, [len(s) for s in samples])
            idx, info = pair(x, z, self.matcher, metric=self.cost, precision=self.precision,
                             groups=groups)
            noise = z[idx]
        info["seconds"] = time.perf_counter() - start  # encode + draw + cost + solve
        out, offset = [], 0
        for j, (batch, s) in enumerate(zip(group, samples)):
            n = len(s)
            meta = dict(info, epoch=epoch, batch_index=first_index + j, rank=rank, scope=len(group))
            if self.skip_counter is not None:
                meta["skipped"] = int(self.skip_counter.count)
            out.append(PairedBatch(sample=s, noise=noise[offset:offset + n], batch=batch, info=meta))
            offset += n
            if self.monitor is not None:
                self.monitor.update(out[-1])
        return out

    def _prepare_sample(self, batch: Any) -> Any:
        sample = _stacked(find_sample(batch, self.key))
        if self.encode is not None:
            sample = self.encode(sample)
        require_array(sample)
        sample = to_device(sample, self.device)
        if len(sample) == 1 and not self._warned_single:
            self._warned_single = True
            warnings.warn(
                "a batch of one sample: matching cannot reassign noise within it, so it is paired "
                "as drawn. Use a larger batch or scope>1 to match across batches.",
                stacklevel=2,
            )
        return sample


class _Iteration:
    """One pass over the inner loader. Dropping it (an early ``break``) stops its thread."""

    def __init__(self, owner: MatchedNoiseLoader, epoch: int, skip: int):
        self._owner = weakref.ref(owner)
        self._epoch = epoch
        self._cancel = threading.Event()
        self._exchange = _open_exchange(owner, self._cancel)
        gen = owner._generate(epoch, skip, self._exchange)
        self._source = Prefetcher(gen, owner.prefetch) if owner.prefetch > 0 else gen
        self._finished = False

    def __iter__(self):
        return self

    def __next__(self) -> PairedBatch:
        if self._finished:
            raise StopIteration
        try:
            pb = next(self._source)
        except StopIteration:
            self._finished = True
            self._close_exchange()
            owner = self._owner()
            if owner is not None and owner._epoch == self._epoch:
                owner._epoch, owner._delivered = self._epoch + 1, 0
            raise
        except BaseException:
            self.close()
            raise
        owner = self._owner()
        if owner is not None:
            owner._delivered += 1
        return pb

    def close(self) -> None:
        self._finished = True
        if hasattr(self, "_cancel"):
            self._cancel.set()  # an across-rank wait in the thread gives up at once
        close = getattr(getattr(self, "_source", None), "close", None)
        if close is not None:
            close()
        self._close_exchange()

    def _close_exchange(self) -> None:
        exchange, self._exchange = getattr(self, "_exchange", None), None
        if exchange is not None:
            exchange.close()

    def __del__(self):
        self.close()


def _open_exchange(owner: MatchedNoiseLoader, cancel: threading.Event) -> Any:
    """The across-rank exchange of one pass, or None (per-rank matching, or a single rank)."""
    if not owner.across_ranks or rank_and_world()[1] <= 1:
        return None
    from noisepair.distributed import RankExchange

    return RankExchange(timeout=owner.timeout, scope=owner.scope, cancelled=cancel.is_set)


def _stacked(sample: Any) -> Any:
    """A list/tuple of per-item arrays (webdataset 0.2 collation, say) becomes one array."""
    if not isinstance(sample, (list, tuple)):
        return sample
    if len(sample) == 0:
        raise ValueError("the sample field holds an empty list: the batch has no items.")
    fix = "resize or crop them to one shape in the dataset transform before matching."
    try:
        shapes = {tuple(s.shape) if is_torch(s) else np.shape(s) for s in sample}
    except ValueError:  # np.shape of an item that is itself a ragged nested list
        raise ValueError(f"ragged batch: an item is a ragged nested list; {fix}") from None
    if len(shapes) > 1:
        raise ValueError(f"ragged batch: items have shapes {sorted(shapes)}; {fix}")
    if is_torch(sample[0]):
        import torch

        return torch.stack(list(sample))
    return np.stack([np.asarray(s) for s in sample])


def _labels(batch: Any, field: Any, n: int) -> np.ndarray:
    try:
        labels = batch[field]
    except (KeyError, IndexError, TypeError):
        keys = list(batch.keys()) if hasattr(batch, "keys") else f"{len(batch)} fields"
        raise KeyError(f"group_by={field!r} is not a field of the batch ({keys}).") from None
    labels = to_numpy(labels).reshape(-1) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if labels.shape[0] != n:
        raise ValueError(f"group_by={field!r} holds {labels.shape[0]} labels for {n} samples.")
    return labels


def _forward_set_epoch(loader: Any, epoch: int) -> None:
    for obj in (loader, getattr(loader, "sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
            return

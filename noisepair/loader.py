"""MatchedNoiseLoader: wrap any loader and get batches whose noise is matched to the samples.

inner loader -> sample found -> (encoded) -> noise drawn per (seed, rank, epoch, batch index)
-> cost -> matcher -> PairedBatch, in a prefetch thread so a training step never waits on it.

Iteration follows torch's rules. Each ``iter()`` is a pass over the inner loader for the
current epoch; a pass that runs to its end advances the epoch (and forwards it, like
``set_epoch``). A pass broken off early leaves the epoch where it was: the next ``iter()`` starts
that epoch afresh (a one-shot generator continues instead, from the first batch it had not
delivered). ``load_state_dict`` arms a resume for the next pass only. Only delivered batches
count as seen: batches the thread paired ahead are never. One live pass at a time.
"""

from __future__ import annotations

import collections
import operator
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from noisepair.backend import DeviceStreams, backend_of, get_backend
from noisepair.batch import PairedBatch, find_sample, with_noise
from noisepair.distributed import pair_across_ranks, rank_and_world
from noisepair.inner import GradientMirror, InnerLoader, accelerator_active, unprepared_map_loader
from noisepair.matchers import get_matcher
from noisepair.noise import draw_like
from noisepair.pairing import as_labels, pair, require_array
from noisepair.pool import NoisePool
from noisepair.prefetch import Prefetcher

OUTPUTS = ("paired", "batch")


@dataclass(frozen=True)
class _Start:
    """Where a pass begins (or a resume would): ``delivered`` batches of ``epoch`` are done;
    the inner iterator, restored to native ``state`` (or fresh when None), yields batch ``at``
    first."""

    epoch: int
    delivered: int = 0
    state: Any = None
    at: int = 0
    pool: Any = None  # the noise pool's state (pool=), restored as the pass starts


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
        seed: noise seed; the draws depend only on (seed, rank, epoch, batch index). None (the
            default) takes the run's seed: ``torch.initial_seed()`` (what ``torch.manual_seed``,
            accelerate's ``set_seed`` and Lightning's ``seed_everything`` set) when torch is in
            use, else numpy's global seed. It is recorded in ``state_dict`` and a resume adopts
            it; an explicit seed must match the saved one.
        prefetch: batches paired ahead in a background thread (0: pair in the caller).
        scope: DANSM's match scope: pair k consecutive batches together, emit them in order.
        pool: DANSM's noise pool: P noises drawn ahead; each batch takes its noise from the
            pool's unused part, the pool is redrawn when used up (:mod:`noisepair.pool`: every
            draw of a cycle is emitted once; early batches of a cycle get nearer noise).
            ``method="greedy"`` is DANSM's rule (each sample in order takes its nearest unused
            noise); ``hungarian``/``emd``/``auto`` solve the batch against the unused noises
            exactly. Needs scope=1; one pool per label with ``group_by``. The pool carries on
            across passes and epochs; ``state_dict`` holds it as of the last delivered batch.
        group_by: a batch field (dict key or tuple index) of labels; noise is exchanged only
            among samples with the same label (conditional training).
        encode: a function applied to the sample before matching (a VAE encoder, say);
            ``pb.sample`` is then the encoded batch.
        device: where the sample is moved, the noise drawn and the cost computed (torch).
        precision: cost precision, ``float32`` (default), ``float16``, ``bfloat16``.
        method_options: options for a matcher given by name, e.g. ``{"k": 8}`` for knn.
        across_ranks: match the global batch of all torch.distributed ranks in one assignment
            (Immiscible Diffusion's Stable Diffusion setting); see :mod:`noisepair.distributed`
            for what moves and what it costs. Needs an initialised process group and the same
            number of batches on every rank. Default: each rank matches its own batch.
        timeout: seconds an across-rank exchange waits for the other ranks before raising.
        skip_counter: a :class:`noisepair.streaming.SkipCounter` given as webdataset
            ``handler=``; :attr:`skipped` and ``pb.info["skipped"]`` then report the samples and
            shards dropped by it so far.
        monitor: a :class:`~noisepair.checks.NoiseMonitor` (or any object with
            ``update(pb)``) that sees every delivered batch: Gaussianity and path gain on the fly.
        output: ``"paired"`` (default) yields PairedBatch; ``"batch"`` yields the inner loader's
            own batch form with the noise added (a drop-in for scripts that unpack batches): a
            tuple/list gets the noise as its last field, a dict under ``noise_key``, a bare array
            becomes ``(sample, noise)``; the sample field holds the (encoded, moved) sample.
            :attr:`last_info` has the info of the batch delivered last.
        noise_key: the dict key of the noise with ``output="batch"``.
    """

    def __init__(
        self,
        loader: Any,
        *,
        key: Any = None,
        method: Any = "hungarian",
        cost: str = "sqeuclidean",
        seed: int | None = None,
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
        output: str = "paired",
        noise_key: str = "noise",
    ):
        self.scope = _integer(
            "scope", scope, minimum=1, fix="the number of consecutive batches matched together"
        )
        self.prefetch = _integer(
            "prefetch", prefetch, minimum=0, fix="the number of batches paired ahead"
        )
        self._seed_explicit = seed is not None
        self.seed = (
            _integer("seed", seed, minimum=0, fix="a non-negative integer")
            if seed is not None
            else run_seed()
        )
        _require_hashable("key", key)
        _require_hashable("group_by", group_by)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        self.loader = loader
        self.key = key
        self.matcher = get_matcher(method, **(method_options or {}))
        self.cost = cost
        self.group_by = group_by
        self.encode = encode
        self.device = device
        self.precision = precision
        self.monitor = monitor
        self.output = output
        self.noise_key = noise_key
        self.across_ranks = bool(across_ranks)
        self.timeout = float(timeout)
        self.skip_counter = skip_counter
        self.last_info: dict | None = None
        if self.across_ranks and not self.matcher.permutation:
            raise ValueError(
                f"across_ranks=True needs a permutation matcher; {self.matcher.name!r} picks noise "
                "per sample, so matching across ranks changes nothing: use across_ranks=False."
            )
        self._pool = None if pool is None else self._noise_pool(pool)
        self._inner = InnerLoader(loader)
        self._epoch = 0
        self._position = _Start(0)  # where a resume would start: what state_dict() reports
        self._resume: _Start | None = None  # armed by load_state_dict for the next pass
        self._leftover: Any = None  # a one-shot loader's batches pulled, never delivered
        self._live: Any = None  # weak reference to the live pass
        self._warned_single = False
        self._checked_accelerate = False

    def _noise_pool(self, size: Any) -> NoisePool:
        size = _integer("pool", size, minimum=1, fix="the number of noises drawn ahead")
        rule = {"greedy": "greedy", "hungarian": "exact", "emd": "exact", "auto": "exact"}.get(
            self.matcher.name
        )
        if rule is None or self.scope > 1 or self.across_ranks:
            raise ValueError(
                f"pool={size} works with method='greedy' (DANSM's rule) or an exact method "
                f"('hungarian', 'emd', 'auto'), scope=1 and across_ranks=False; got "
                f"method={self.matcher.name!r}, scope={self.scope}, across_ranks={self.across_ranks}."
            )
        return NoisePool(
            size, rule=rule, seed=self.seed, metric=self.cost, precision=self.precision
        )

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        live = self._live() if self._live is not None else None
        if live is not None and not live.finished:
            raise RuntimeError(
                "this MatchedNoiseLoader is already being iterated: finish or close() the first "
                "iterator before starting another (each pass draws from the inner loader, so two "
                "at once would split its batches), or wrap the inner loader twice."
            )
        self._check_accelerate()
        start = self._next_start()
        pushback = self._take_leftover()
        live = _Pass(self, start, pushback)
        self._live = weakref.ref(live)
        return live

    def _take_leftover(self) -> collections.deque:
        """The batches a one-shot loader's last pass took from it but never delivered, in
        order: pulled ones, then those it was handed back and had not reached yet. Its thread
        is waited for first: until it has stopped it may still be pulling."""
        if self._leftover is None:
            return collections.deque()
        pulled, pushback, source = self._leftover
        self._leftover = None
        if isinstance(source, Prefetcher):
            source.wait()
        return collections.deque([*pulled, *pushback])

    def _next_start(self) -> _Start:
        if self._resume is not None:
            start, self._resume = self._resume, None
            return start
        here = self._position
        if self._inner.one_shot and here.epoch == self._epoch:  # a generator goes on from here
            return replace(here, state=None, at=here.delivered)
        self._position = _Start(self._epoch, pool=here.pool)  # a fresh pass: none delivered yet
        return self._position

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
        """Stop the live pass and its prefetch thread, if any."""
        live = self._live() if self._live is not None else None
        if live is not None:
            live.close()
        self._live = None

    def __enter__(self) -> MatchedNoiseLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- epochs and resume ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Reseed the noise of the next pass for ``epoch``; forward it to the inner loader or
        its sampler. A resume armed by ``load_state_dict`` for this same epoch is kept."""
        epoch = _integer("epoch", epoch, minimum=0, fix="a non-negative integer")
        if self._resume is not None and self._resume.epoch != epoch:
            warnings.warn(
                f"set_epoch({epoch}) drops the resume at epoch {self._resume.epoch}, batch "
                f"{self._resume.delivered} armed by load_state_dict; call set_epoch("
                f"{self._resume.epoch}) to keep it.",
                stacklevel=2,
            )
            self._resume = None
        self._epoch = epoch
        if self._resume is None and self._position.epoch != epoch:
            self._position = _Start(epoch, pool=self._position.pool)
        self._inner.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Batches delivered to the consumer (not prefetched) in this epoch, the seed, and the
        inner loader's own state as of the last delivered batch when it has one."""
        start = self._position
        rank, world = rank_and_world()
        state = {
            "epoch": start.epoch,
            "delivered": start.delivered,
            "seed": self.seed,
            "scope": self.scope,
            "rank": rank,
            "world": world,
            "inner_state": start.state,
            "inner_at": start.at,
        }
        if self._pool is not None:
            state["pool"] = start.pool
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass starts after the delivered batches, with the same noise.

        With the inner loader's own state it is restored directly (reading at most one match
        group again); without, the epoch is replayed up to that group and the delivered batches
        are skipped before matching (reading cost only)."""
        missing = [k for k in ("epoch", "delivered") if k not in state]
        if missing:
            raise KeyError(
                f"not a MatchedNoiseLoader state: {missing} missing (got {sorted(state)})."
            )
        epoch = _integer("state['epoch']", state["epoch"], minimum=0, fix="a saved state_dict()")
        delivered = _integer(
            "state['delivered']", state["delivered"], minimum=0, fix="a saved state_dict()"
        )
        saved_seed = state.get("seed", self.seed)
        if self._seed_explicit and saved_seed != self.seed:
            raise ValueError(
                f"state was saved with seed={saved_seed} but this loader has seed={self.seed}; "
                "build it with the same seed (or seed=None to adopt the saved one)."
            )
        if state.get("scope", self.scope) != self.scope:
            raise ValueError(
                f"state was saved with scope={state.get('scope')} but this loader has "
                f"scope={self.scope}; build it with the same scope."
            )
        rank, world = rank_and_world()
        saved = (state.get("rank", rank), state.get("world", world))
        if saved != (rank, world):
            raise ValueError(
                f"state was saved on rank {saved[0]} of {saved[1]} but this is rank {rank} of "
                f"{world}: load each rank's own state, with the same world size."
            )
        length = _length(self.loader)
        if length is not None and delivered > length:
            raise ValueError(
                f"state says {delivered} batches of epoch {epoch} were delivered, but the wrapped "
                f"{type(self.loader).__name__} has {length} per epoch: it belongs to another loader."
            )
        if (self._pool is None) != ("pool" not in state):
            raise ValueError(
                "state and loader disagree on pool=: build the loader with the pool "
                "setting the state was saved with."
            )
        native = state.get("inner_state")
        self.seed = int(saved_seed)
        at = int(state.get("inner_at", 0)) if native is not None else 0
        self._resume = _Start(epoch, delivered, native, at, state.get("pool"))
        self._epoch = epoch
        self._position = self._resume
        self._leftover = None
        self._inner.set_epoch(epoch)

    def _finished(self, done: _Pass) -> None:
        """A pass ran to its end: the next epoch begins (and its sampler hears of it)."""
        if self._epoch == done.epoch:
            self._epoch += 1
            self._inner.set_epoch(self._epoch)
        self._position = _Start(self._epoch, pool=self._position.pool)

    def _delivered(self, done: _Pass, resume: _Start) -> None:
        self._position = replace(resume, delivered=done.delivered)

    def _agree_seed(self, exchange: Any) -> None:
        """Across ranks every rank regenerates the others' noise, so all need rank 0's seed."""
        seed = exchange.broadcast_object(self.seed)
        if seed != self.seed and self._seed_explicit:
            raise ValueError(
                f"across_ranks=True needs one seed on every rank: rank 0 has seed={seed}, this "
                f"rank seed={self.seed}; pass the same seed= everywhere (or seed=None)."
            )
        self.seed = seed

    def _check_accelerate(self) -> None:
        if self._checked_accelerate:
            return
        self._checked_accelerate = True
        if accelerator_active() and unprepared_map_loader(self.loader):
            warnings.warn(
                "MatchedNoiseLoader wraps a DataLoader that accelerate has not prepared, while an "
                "Accelerator is active: it gets no sharding, no device placement and no "
                "end-of-epoch gradient sync. accelerator.prepare(MatchedNoiseLoader(dl)) returns "
                "the wrapper unchanged: wrap after prepare, "
                "MatchedNoiseLoader(accelerator.prepare(dl)).",
                stacklevel=3,
            )

    # -- the pairing work (runs in the prefetch thread) ----------------------------------
    def _generate(
        self,
        start: _Start,
        pushback: collections.deque,
        pulled: collections.deque,
        streams: DeviceStreams,
        exchange: Any = None,
    ) -> Iterator[tuple]:
        with streams.worker():
            try:
                yield from self._generate_local(start, pushback, pulled, streams, exchange)
            except GeneratorExit:
                raise
            except BaseException:
                if exchange is not None:
                    exchange.fail()  # the other ranks raise too instead of waiting for this one
                raise

    def _generate_local(
        self,
        start: _Start,
        pushback: collections.deque,
        pulled: collections.deque,
        streams: DeviceStreams,
        exchange: Any = None,
    ) -> Iterator[tuple]:
        """Yields ``(pb, snapshot, resume, ready)``: the paired batch, the inner loader's flags
        when it was pulled, where a resume starts if it is the last batch delivered, and the
        event its device work ends with (None off CUDA)."""
        rank, _ = rank_and_world()
        inner, epoch = self._inner, start.epoch
        batches, restored = inner.start(epoch, start.state, pushback)
        at = start.at if restored or start.state is None else 0  # not restorable: replay
        index = max(at, (start.delivered // self.scope) * self.scope)  # its match group
        for _ in range(index - at):  # replay: read up to the group, pair nothing
            if next(batches, _END) is _END:
                raise self._past_the_end(start)
        drop = start.delivered - index
        if self._pool is not None:  # as of the last delivered batch, not as far as a thread got
            self._pool.seed, self._pool.rank = self.seed, rank
            self._pool.load_state_dict(start.pool or self._pool.empty_state())
        before = _Start(
            epoch, 0, start.state if restored else None, at if restored else 0, start.pool
        )
        seen = 0
        while True:
            group, snaps = [], []
            while len(group) < self.scope:
                batch = next(batches, _END)
                if batch is _END:
                    break
                pulled.append(batch)
                group.append(batch)
                snaps.append(inner.snapshot())
            if not group:
                break
            seen += len(group)
            if drop >= len(group):
                raise self._past_the_end(start)
            paired = self._pair_group(group, epoch, rank, index, exchange)
            ready = streams.mark()
            index += len(group)
            pool = None if self._pool is None else self._pool.state_dict()
            after = (
                _Start(epoch, 0, snaps[-1]["state"], index, pool)
                if inner.stateful
                else _Start(epoch, pool=pool)
            )
            for j, pb in enumerate(paired):
                if j < drop:
                    pulled.popleft()  # delivered before the resume
                    continue
                yield pb, snaps[j], after if j == len(paired) - 1 else before, ready
            drop, before = 0, after
        if drop:
            raise self._past_the_end(start)
        if exchange is not None:
            exchange.finish()  # raises if another rank still has batches
        if seen == 0 and start.delivered == 0:
            raise ValueError(
                f"the wrapped {inner.name} yielded no batches: check the dataset "
                "path/size and the batch size (drop_last with fewer samples than a batch yields none)."
            )

    def _past_the_end(self, start: _Start) -> ValueError:
        return ValueError(
            f"the resumed state says {start.delivered} batches of epoch {start.epoch} were "
            f"delivered, but the wrapped {self._inner.name} ran out before that: the state belongs "
            "to another loader, data set or batch size."
        )

    def _pair_group(
        self, group: list, epoch: int, rank: int, first_index: int, exchange: Any = None
    ) -> list[PairedBatch]:
        start = time.perf_counter()
        samples = [self._prepare_sample(b) for b in group]
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
        groups = None
        if self.group_by is not None:
            groups = np.concatenate(
                [_labels(b, self.group_by, len(s)) for b, s in zip(group, samples)]
            )
        x = samples[0] if len(samples) == 1 else get_backend(*samples).concat(samples)

        def draw(r: int, sizes: list[int]) -> Any:  # rank r's noise for batches of these sizes
            d = [
                draw_like(
                    x,
                    n * self.matcher.candidates,
                    seed=self.seed,
                    rank=r,
                    epoch=epoch,
                    index=first_index + j,
                )
                for j, n in enumerate(sizes)
            ]
            return d[0] if len(d) == 1 else get_backend(*d).concat(d)

        if self._pool is not None:  # scope is 1: one batch
            noise, info = self._pool.take(x, groups)
        elif exchange is not None:  # one assignment for the global batch of all ranks
            noise, info = pair_across_ranks(
                exchange,
                x,
                [len(s) for s in samples],
                draw,
                self.matcher,
                metric=self.cost,
                precision=self.precision,
                groups=groups,
            )
        else:
            z = draw(rank, [len(s) for s in samples])
            idx, info = pair(
                x, z, self.matcher, metric=self.cost, precision=self.precision, groups=groups
            )
            noise = z[idx]
        info["seconds"] = time.perf_counter() - start  # encode + draw + cost + solve
        out, offset = [], 0
        for j, (batch, s) in enumerate(zip(group, samples)):
            n = len(s)
            meta = dict(info, epoch=epoch, batch_index=first_index + j, rank=rank, scope=len(group))
            if self.skip_counter is not None:
                meta["skipped"] = int(self.skip_counter.count)
            out.append(
                PairedBatch(sample=s, noise=noise[offset : offset + n], batch=batch, info=meta)
            )
            offset += n
        return out

    def _prepare_sample(self, batch: Any) -> Any:
        sample = _stacked(find_sample(batch, self.key))
        if self.encode is not None:
            sample = self.encode(sample)
        require_array(sample)
        _require_data(sample)
        sample = get_backend(sample).to_device(sample, self.device)
        if len(sample) == 1 and not self._warned_single:
            self._warned_single = True
            warnings.warn(
                "a batch of one sample: matching cannot reassign noise within it, so it is paired "
                "as drawn. Use a larger batch or scope>1 to match across batches.",
                stacklevel=2,
            )
        return sample


class _Pass:
    """One pass over the inner loader. Dropping it (an early ``break``) stops its thread."""

    def __init__(self, owner: MatchedNoiseLoader, start: _Start, pushback: collections.deque):
        self._owner = owner  # as a DataLoader's iterator holds its loader (no cycle: see _live)
        self.epoch, self.delivered = start.epoch, start.delivered
        self.finished = False
        self._one_shot = owner._inner.one_shot
        self._pulled: collections.deque = collections.deque()  # pulled, not yet delivered
        self._pushback = pushback  # handed back by the last pass, emptied as they are pulled
        self._mirror = GradientMirror(owner._inner)
        self._skips = _SkipWatch(start.delivered)
        self._cancel = threading.Event()
        self._exchange = _open_exchange(owner, self._cancel)
        if self._exchange is not None:
            try:
                owner._agree_seed(self._exchange)
            except BaseException:
                self._exchange.fail()  # the other ranks raise at their first step, not time out
                raise
        self._streams = DeviceStreams(owner.device)
        gen = owner._generate(start, pushback, self._pulled, self._streams, self._exchange)
        self._source = (
            Prefetcher(gen, owner.prefetch, source=owner._inner.name) if owner.prefetch > 0 else gen
        )

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        if self.finished:
            raise StopIteration
        self._skips.requested()
        try:
            pb, snap, resume, ready = next(self._source)
        except StopIteration:
            self._end()
            self._owner._finished(self)
            raise
        except BaseException:
            self.close()
            raise
        self._streams.hand_over(ready, pb)
        self._pulled.popleft()
        self.delivered += 1
        self._mirror.show(snap)
        owner = self._owner
        owner._delivered(self, resume)
        owner.last_info = pb.info
        if owner.monitor is not None:
            owner.monitor.update(pb)
        self._skips.delivered()
        if owner.output == "batch":
            return with_noise(pb.batch, owner.key, pb.sample, pb.noise, owner.noise_key)
        return pb

    def close(self) -> None:
        """Stop the thread; a one-shot loader gets its undelivered batches back."""
        if self.finished:
            return
        self._cancel.set()  # an across-rank wait in the thread gives up at once
        source = getattr(self, "_source", None)
        if source is not None:
            source.close()
        self._end()
        if self._one_shot:
            self._owner._leftover = (self._pulled, self._pushback, source)

    def _end(self) -> None:
        self.finished = True
        self._mirror.hide()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit there is nobody to tell
            pass


class _SkipWatch:
    """Warns when, after a resume at batch d, the caller's loop body takes next to no time for
    exactly the first d batches and then real steps begin: the script skips the batches it
    trained before (diffusers' ``step < resume_step: continue``) although the loader already
    did, so d batches of the epoch go untrained."""

    FACTOR = 20.0

    def __init__(self, resumed_at: int):
        self.d = resumed_at if resumed_at >= 2 else 0
        self.gaps: list[float] = []
        self.t: float | None = None

    def requested(self) -> None:
        if not self.d or self.t is None:
            return
        self.gaps.append(time.perf_counter() - self.t)
        if len(self.gaps) == self.d + 1:
            skipped, step = max(self.gaps[:-1]), self.gaps[-1]
            if skipped * self.FACTOR < step:
                warnings.warn(
                    f"the loader resumed at batch {self.d} of its epoch and the loop then went "
                    f"through the first {self.d} batches without working on them: it looks like "
                    "the script skips the batches trained before the checkpoint itself, which the "
                    "restored loader already skipped (those batches go untrained). Delete the "
                    "script's skip, or do not restore the loader and call set_epoch instead "
                    "(README: 'In your training script').",
                    stacklevel=3,
                )
            self.d = 0

    def delivered(self) -> None:
        if self.d:
            self.t = time.perf_counter()


_END = object()


def run_seed() -> int:
    """The seed this run was started with: torch's initial seed when torch is in use, else the
    one numpy's global generator was seeded with."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.initial_seed())
    return int(np.random.get_state()[1][0])


def _integer(name: str, value: Any, *, minimum: int, fix: str) -> int:
    """``value`` as an int, refusing floats and bools (``scope=2.5`` is a mistake, not 2)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer ({fix}), got {value!r}.") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({fix}), got {number}.")
    return number


def _require_hashable(name: str, value: Any) -> None:
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a dict key or a tuple index, got the {type(value).__name__} "
            f"{value!r}; e.g. {name}={value[0]!r}."
            if isinstance(value, (list, tuple)) and value
            else f"{name} must be a dict key or a tuple index, got {value!r}."
        ) from None


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _open_exchange(owner: MatchedNoiseLoader, cancel: threading.Event) -> Any:
    """The across-rank exchange of one pass, or None (per-rank matching, or a single rank)."""
    if not owner.across_ranks or rank_and_world()[1] <= 1:
        return None
    from noisepair.distributed import RankExchange

    return RankExchange(
        timeout=owner.timeout, scope=owner.scope, cancelled=cancel.is_set, device=owner.device
    )


def _stacked(sample: Any) -> Any:
    """A list/tuple of per-item arrays (webdataset 0.2 collation, say) becomes one array."""
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


def _labels(batch: Any, field: Any, n: int) -> np.ndarray:
    try:
        labels = batch[field]
    except (KeyError, IndexError, TypeError):
        keys = list(batch.keys()) if hasattr(batch, "keys") else f"{len(batch)} fields"
        raise KeyError(f"group_by={field!r} is not a field of the batch ({keys}).") from None
    try:
        return as_labels(labels, n)
    except ValueError as exc:
        raise ValueError(f"group_by={field!r}: {exc}") from None


def _kind(sample: Any) -> tuple[str, str, str]:
    return (type(sample).__name__, str(sample.dtype), str(getattr(sample, "device", "cpu")))


def _require_data(sample: Any) -> None:
    """A batch holds data: not a 0-d value, a meta tensor (no storage) or a sparse tensor."""
    if sample.ndim == 0:
        raise ValueError(
            f"the sample is a 0-d {type(sample).__name__} (a single number): the loader must yield "
            "batches of shape (B, ...); batch it (e.g. DataLoader(batch_size=...))."
        )
    if getattr(sample, "is_meta", False):
        raise ValueError(
            "the sample is a meta tensor (a shape with no data); materialise it before the loader "
            "(e.g. load real values or use torch.empty on a real device)."
        )
    if str(getattr(sample, "layout", "torch.strided")) != "torch.strided":
        raise ValueError(
            f"the sample is a {sample.layout} tensor; matching needs dense data: call "
            ".to_dense() in the dataset transform."
        )

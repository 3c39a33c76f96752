"""MatchedNoiseLoader: wrap any loader and get batches whose noise is matched to the samples.

inner loader -> sample found -> (encoded) -> noise drawn per (seed, rank, epoch, batch index)
-> cost -> matcher -> PairedBatch, in a background thread so a training step never waits on it.

The loader is settings and dispatch. Each ``iter()`` is a :class:`~noisepair.passes.Pass`
that owns where it stands; the loader keeps the progress of the last pass and, when
``load_state_dict`` or ``set_epoch`` says so, the position the next pass starts from (torchdata's
``next_iter_state``). Iteration follows torch's rules: a pass that runs to its end advances the
epoch (and forwards it, like ``set_epoch``); a pass broken off early leaves the epoch where it
was, so the next ``iter()`` starts that epoch afresh (a one-shot generator continues instead,
from the match group it was in); ``load_state_dict`` arms a resume for the next pass only. Only
delivered batches count as seen. One live pass at a time.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from noisepair.couplings import BatchMatching, PoolMatching, RankMatching, SemiDiscreteNoise
from noisepair.distributed import rank_and_world
from noisepair.inner import (
    SamplerPosition,
    accelerator_active,
    inner_loader,
    unprepared_map_loader,
)
from noisepair.matchers import get_matcher
from noisepair.pacing import AHEAD, pacing
from noisepair.passes import Flag, Pass, Progress, ResumeWatch
from noisepair.persistent import PersistentMatching
from noisepair.pool import NoisePool
from noisepair.position import (
    BATCH_SIZE,
    COUPLING,
    RANK,
    SCOPE,
    SEED,
    WORLD,
    Position,
    from_state,
    integer,
    to_state,
)
from noisepair.stages import Settings

OUTPUTS = ("paired", "batch")
HANDOVER_S = 60.0  # how long a new pass waits for the last pass's thread to stop


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
        prefetch: batches paired ahead by the background thread; 0 pairs only while the loop
            waits. ``"auto"`` (the default) measures the loop both ways in its first batches
            and keeps the faster (:mod:`noisepair.pacing`).
        scope: DANSM's match scope: pair k consecutive batches together, emit them in order.
        pool: DANSM's noise pool: P noises drawn ahead; each batch takes its noise from the
            pool's unused part, the pool is redrawn when used up (:mod:`noisepair.pool`: every
            draw of a cycle is emitted once; early batches of a cycle get nearer noise).
            ``method="greedy"`` is DANSM's rule (each sample in order takes its nearest unused
            noise); ``hungarian``/``emd``/``auto`` solve the batch against the unused noises
            exactly. Needs scope=1; one pool per label with ``group_by``. The pool carries on
            across passes and epochs; ``state_dict`` holds it as of the last delivered batch.
        persistent: LOOM-CFM's persistent coupling: k noise seeds kept per data point; each
            batch's items pick one each, the noise regenerated from them is matched to the
            batch, and each item keeps the seed of the noise it got (:mod:`noisepair.persistent`).
            The seed table (N x k 32-bit seeds) is part of ``state_dict``.
        index_key: the batch field naming each item's data point for ``persistent=`` (an index
            or a key such as webdataset's ``"__key__"``); not needed for a plain torch
            DataLoader over a map-style dataset, whose sampler's indices are read.
        coupling: a fitted :class:`noisepair.SemiDiscrete` (SD-FM's semi-discrete coupling) whose
            ``batch_sampler`` the wrapped DataLoader draws its batches with: each batch comes
            with the noise that chose its samples (drawn with replacement: see
            :mod:`noisepair.semidiscrete`).
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
        prefetch: int | str = "auto",
        scope: int = 1,
        pool: int | None = None,
        persistent: int | None = None,
        index_key: Any = None,
        coupling: Any = None,
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
        self.scope = integer(
            "scope", scope, minimum=1, fix="the number of consecutive batches matched together"
        )
        if prefetch != "auto":
            prefetch = integer(
                "prefetch", prefetch, minimum=0, fix='the number of batches paired ahead, or "auto"'
            )
        self.prefetch = prefetch
        self._pacing = pacing(prefetch)  # kept across passes: a trial's choice holds for them
        self._seed_explicit = seed is not None
        self.seed = (
            integer("seed", seed, minimum=0, fix="a non-negative integer")
            if seed is not None
            else run_seed()
        )
        _require_hashable("key", key)
        _require_hashable("group_by", group_by)
        _require_hashable("index_key", index_key)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        _require_device(device)
        if monitor is not None and not callable(getattr(monitor, "update", None)):
            raise TypeError(
                f"monitor must have an update(paired_batch) method (a noisepair.NoiseMonitor), "
                f"got {monitor!r}."
            )
        if skip_counter is not None and not hasattr(skip_counter, "count"):
            raise TypeError(
                f"skip_counter must be a noisepair.streaming.SkipCounter (the handler given to "
                f"webdataset), got {skip_counter!r}."
            )
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
        if self.across_ranks and not self.matcher.permutation:
            raise ValueError(
                f"across_ranks=True needs a permutation matcher; {self.matcher.name!r} picks noise "
                "per sample, so matching across ranks changes nothing: use across_ranks=False."
            )
        self.pool = None if pool is None else self._noise_pool(pool)
        self.persistent = None if persistent is None else self._seed_count(persistent)
        self.index_key = index_key
        self.semidiscrete = coupling
        self._inner = inner_loader(loader) if coupling is None else self._sampled_by(coupling)
        if self.persistent is not None and index_key is None:
            self._inner.record_indices()
        self._coupling = self._choose_coupling()
        self._settings = Settings(
            key, self.scope, group_by, encode, device, skip_counter, self._inner.name, index_key
        )
        self._armed: Position | None = None  # where the next pass starts, when not the default
        self._progress = Progress(Position())  # the last pass's (a first pass starts at its end)
        self._live: Any = None  # weak reference to the live pass
        self._watch: ResumeWatch | None = None
        self._checked_accelerate = False

    def _noise_pool(self, size: Any) -> NoisePool:
        size = integer("pool", size, minimum=1, fix="the number of noises drawn ahead")
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

    def _seed_count(self, k: Any) -> int:
        k = integer("persistent", k, minimum=1, fix="noise seeds kept per data point; LOOM-CFM: 6")
        if self.pool is not None or self.across_ranks:
            raise ValueError(
                f"persistent={k} keeps noise seeds per data point and matches within the batch "
                f"(or scope); it does not combine with pool= or across_ranks=True."
            )
        return k

    def _sampled_by(self, coupling: Any) -> SamplerPosition:
        """The inner loader of ``coupling=sd``: a DataLoader whose batch sampler is ``sd``'s."""
        from noisepair.semidiscrete import SemiDiscrete, SemiDiscreteBatchSampler

        if not isinstance(coupling, SemiDiscrete):
            raise TypeError(
                f"coupling= takes a noisepair.SemiDiscrete (fitted), got {type(coupling).__name__}."
            )
        sampler = getattr(self.loader, "batch_sampler", None)
        if not isinstance(sampler, SemiDiscreteBatchSampler) or sampler.coupling is not coupling:
            raise ValueError(
                "coupling=sd needs the DataLoader to draw its batches with sd's own sampler: "
                "DataLoader(dataset, batch_sampler=sd.batch_sampler(batch_size, seed=...)); "
                "each batch's noise is the noise that chose its samples."
            )
        shared = {
            "pool=": self.pool is not None,
            "persistent=": self.persistent is not None,
            "across_ranks=True": self.across_ranks,
            "scope>1": self.scope > 1,
            "group_by=": self.group_by is not None,
        }
        clash = [name for name, used in shared.items() if used]
        if clash:
            raise ValueError(
                f"coupling=sd picks the data by the noise, which leaves nothing to match: it does "
                f"not combine with {', '.join(clash)}."
            )
        return SamplerPosition(self.loader, sampler)

    def _choose_coupling(self) -> Any:
        if self.semidiscrete is not None:
            return SemiDiscreteNoise(self._inner.sampler)
        if self.pool is not None:
            return PoolMatching(self.pool)
        if self.persistent is not None:
            ahead = AHEAD if self.prefetch == "auto" else self.prefetch
            keep = ahead + 3  # groups the consumer can stand behind the thread, and more
            return PersistentMatching(
                self.persistent, self.matcher, self.cost, self.precision, self.seed, keep
            )
        kind = RankMatching if self.across_ranks else BatchMatching
        return kind(self.matcher, self.cost, self.precision)

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        live = self._live() if self._live is not None else None
        if live is not None and not (live.progress.finished or live.progress.closed):
            raise RuntimeError(
                "this MatchedNoiseLoader is already being iterated: finish or close() the first "
                "iterator before starting another (each pass draws from the inner loader, so two "
                "at once would split its batches), or wrap the inner loader twice."
            )
        self._check_accelerate()
        self._wait_for_last_thread()
        start = self._upcoming()
        self._armed = None
        cancel = Flag()
        exchange = _open_exchange(self, cancel)
        if exchange is not None:
            try:
                self._agree_seed(exchange)
            except BaseException:
                exchange.fail()  # the other ranks raise at their first step, not time out
                raise
        rank, _ = rank_and_world()
        live = Pass(
            self,
            start,
            seed=self.seed,
            rank=rank,
            exchange=exchange,
            cancel=cancel,
            watch=self._watch,
        )
        self._progress = live.progress
        self._live = weakref.ref(live)
        return live

    def _wait_for_last_thread(self) -> None:
        """A new pass must not share the inner loader or the coupling's state with the thread
        of a pass closed a moment ago (it stops after the batch in hand)."""
        producer = self._progress.producer
        if producer is None or producer.wait(HANDOVER_S):
            return
        raise RuntimeError(
            f"the thread of the last pass is still inside the wrapped {self._inner.name} "
            f"{HANDOVER_S:g} s after it was closed (a hung read?); a new pass cannot start on the "
            "same loader. Rebuild the inner loader and wrap it again."
        )

    def _upcoming(self) -> Position:
        """Where the next pass starts."""
        if self._armed is not None:
            return self._armed
        last = self._progress
        if last.finished or self._inner.one_shot:  # the next epoch; a generator goes on
            return last.position
        return last.position.afresh()

    def _current(self) -> Position:
        """What state_dict reports: the live or last pass's position, or the armed one."""
        live = self._live() if self._live is not None else None
        if live is not None and not (live.progress.finished or live.progress.closed):
            return live.progress.position
        return self._armed if self._armed is not None else self._progress.position

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise TypeError(
                f"the wrapped {type(self.loader).__name__} has no length, so neither has "
                "MatchedNoiseLoader; count batches yourself or give the inner loader a length."
            ) from None

    @property
    def last_info(self) -> dict | None:
        """The info of the batch delivered last (with ``output="batch"`` it is not in the batch)."""
        return self._progress.last_info

    @property
    def skipped(self) -> int:
        """Faults (corrupt samples, unreadable shards) the ``skip_counter`` skipped so far."""
        return 0 if self.skip_counter is None else int(self.skip_counter.count)

    def close(self) -> None:
        """Stop the live pass and its thread, if any. Safe from any thread or a signal handler:
        a loop waiting for its next batch raises :class:`noisepair.prefetch.Closed`."""
        live = self._live() if self._live is not None else None
        if live is not None:
            live.close()

    def __enter__(self) -> MatchedNoiseLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- epochs and resume ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Reseed the noise of the next pass for ``epoch``; forward it to the inner loader or
        its sampler. A resume armed by ``load_state_dict`` for this same epoch is kept."""
        epoch = integer("epoch", epoch, minimum=0, fix="a non-negative integer")
        upcoming = self._upcoming()
        if upcoming.epoch != epoch and self._armed is not None and self._armed.delivered:
            warnings.warn(
                f"set_epoch({epoch}) drops the resume at epoch {upcoming.epoch}, batch "
                f"{upcoming.delivered} armed by load_state_dict; call set_epoch("
                f"{upcoming.epoch}) to keep it.",
                stacklevel=2,
            )
            self._watch = None
        if upcoming.epoch != epoch:
            self._armed = upcoming.at_epoch(epoch)
        self._inner.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the live or last pass stands: its epoch, the batches delivered to the consumer
        (not prefetched), the match group they are in, the inner loader's own state there when
        it has one, the coupling's state (pool), the seed. Plain Python: a checkpoint holding it
        loads with ``torch.load(weights_only=True)``."""
        position = self._current()
        rank, world = rank_and_world()
        coupling = self._coupling.export(position.group.coupling)
        return to_state(
            position, coupling, **{SEED: self.seed, SCOPE: self.scope, RANK: rank, WORLD: world}
        )

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass starts after the delivered batches, with the same noise.

        The match group of the resume point is read again and paired again (so its noise is
        what it was) and its delivered batches skipped. An inner loader with its own state is
        restored to the group's start; one without is read from the epoch's start up to it
        (decoded, not paired)."""
        position = from_state(state)
        saved_seed = state.get(SEED, self.seed)
        if self._seed_explicit and saved_seed != self.seed:
            raise ValueError(
                f"state was saved with seed={saved_seed} but this loader has seed={self.seed}; "
                "build it with the same seed (or seed=None to adopt the saved one)."
            )
        if state.get(SCOPE, self.scope) != self.scope:
            raise ValueError(
                f"state was saved with scope={state.get(SCOPE)} but this loader has "
                f"scope={self.scope}; build it with the same scope."
            )
        rank, world = rank_and_world()
        saved = (state.get(RANK, rank), state.get(WORLD, world))
        if saved != (rank, world):
            raise ValueError(
                f"state was saved on rank {saved[0]} of {saved[1]} but this is rank {rank} of "
                f"{world}: load each rank's own state, with the same world size."
            )
        length = _length(self.loader)
        if length is not None and position.delivered > length:
            raise ValueError(
                f"state says {position.delivered} batches of epoch {position.epoch} were "
                f"delivered, but the wrapped {self._inner.name} has {length} per epoch: it "
                "belongs to another loader, or to another batch size."
            )
        size = getattr(self.loader, "batch_size", None)
        saved_size = state.get(BATCH_SIZE)
        if isinstance(size, int) and saved_size is not None and saved_size > size:
            raise ValueError(
                f"state was saved with batches of {saved_size} samples, but the wrapped "
                f"{self._inner.name} has batch_size={size}: resuming after "
                f"{position.delivered} batches would deliver the wrong samples. Resume with "
                f"batch size {saved_size}, or start the epoch afresh (set_epoch)."
            )
        marker = self._coupling.restore(state.get(COUPLING))
        self.seed = int(saved_seed)
        self._armed = position.with_coupling(marker)
        self._watch = ResumeWatch(position.delivered) if position.delivered else None
        self._inner.set_epoch(position.epoch)

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


def run_seed() -> int:
    """The seed this run was started with: torch's initial seed when torch is in use, else the
    one numpy's global generator was seeded with."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.initial_seed())
    return int(np.random.get_state()[1][0])


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


def _require_device(device: Any) -> None:
    if device is None:
        return
    torch = sys.modules.get("torch")
    kind = str(torch.device(device).type) if torch is not None else str(device).split(":")[0]
    if kind == "meta":
        raise ValueError(
            "device='meta' holds no data: noise drawn there has no values. Pass a real device "
            "('cpu', 'cuda', 'cuda:1', ...) or None to keep the samples where they are."
        )


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _open_exchange(owner: MatchedNoiseLoader, cancel: Flag) -> Any:
    """The across-rank exchange of one pass (the global batch; the seed table's updates), or
    None (per-rank matching without shared state, or a single rank)."""
    shared = owner.across_ranks or owner.persistent is not None
    if not shared or rank_and_world()[1] <= 1:
        return None
    from noisepair.distributed import RankExchange

    return RankExchange(
        timeout=owner.timeout, scope=owner.scope, cancelled=lambda: cancel.up, device=owner.device
    )

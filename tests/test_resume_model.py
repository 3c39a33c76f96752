"""Resume, proved against a model: random sequences of take k batches, break off, iter() again,
state_dict, a new loader restored from it, set_epoch and finish the epoch, over every kind of
inner loader and the options that change what a pass is (scope, pool, group_by, prefetch,
"auto" included: its trial changes the depth inside a pass).

Every delivered batch is compared, item ids and noise bit for bit, with what the model says
comes next: the batch at (epoch, index) of an uninterrupted reference run, and for a noise pool
the noise a pool fed the same delivered batches hands out (the pool's state is "as of the last
delivered batch", so its noise depends on what was delivered, not on the epoch and index). The
model's position is what the loader's ``state_dict`` must report. Each state is passed through
``torch.save``/``torch.load(weights_only=True)``, as a checkpoint would be, and a restored loader
is built as a new process would build it (fresh inner loader, torch's global seed moved).

CI runs a bounded, derandomized number of sequences (no flakes); ``benchmarks/resume_model.py``
runs many more and records how many passed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import grain
import numpy as np
import pytest
import torch
from absl import flags
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from test_stream_kinds import KINDS as STREAM_KINDS
from test_stream_kinds import make_inner as make_stream
from test_stream_kinds import release_mosaic
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from noisepair import MatchedNoiseLoader
from noisepair.pool import NoisePool

if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
    flags.FLAGS.mark_as_parsed()

D, B, SEED, EPOCHS, POOL = 6, 4, 5, 3, 10
LOADERS = (
    "list",
    "dl",
    "dl_shuffle",
    "dl_shuffle_gen",
    "dl_dist",
    "sdl",
    "sdl_workers",
    "grain",
    "gen",
)
# and litdata, mosaic streaming, Hugging Face streaming (also under torchdata), which
# StreamResumeModel draws alone; benchmarks/resume_model.py draws from all
KINDS = (*LOADERS, *STREAM_KINDS)


@dataclass(frozen=True)
class Setup:
    kind: str
    batches: int  # per epoch
    scope: int
    pool: bool
    group_by: bool
    prefetch: int | str
    method: str

    @property
    def items(self) -> int:
        return self.batches * B

    @property
    def epoch_decides_order(self) -> bool:
        """set_epoch(e) gives epoch e's order (a StatefulDataLoader's order follows its own
        state: its epochs come in turn; a generator has one)."""
        return self.kind not in ("sdl", "sdl_workers", "gen")


def item(i: int) -> dict:
    x = np.random.default_rng(i).normal(size=D).astype(np.float32) + 1
    return {"x": x, "id": np.int64(i), "label": np.int64(i % 3)}


class Items(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: torch.as_tensor(v) for k, v in item(int(i)).items()}


class GrainSource:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __repr__(self):  # grain checks a restored state against repr(data_source)
        return f"GrainSource({self.n})"

    def __getitem__(self, i):
        return item(int(i))


def numpy_batches(setup: Setup) -> list:
    return [
        {k: np.stack([item(i)[k] for i in range(j * B, (j + 1) * B)]) for k in ("x", "id", "label")}
        for j in range(setup.batches)
    ]


def make_inner(setup: Setup):
    """The inner loader, built as a fresh process would build it."""
    n, kind = setup.items, setup.kind
    if kind in STREAM_KINDS:  # over shards written once per size
        return make_stream(kind, n)
    if kind == "list":
        return numpy_batches(setup)
    if kind == "gen":
        return iter(numpy_batches(setup))
    if kind == "grain":
        no_read_ahead = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        return (
            grain.MapDataset.source(GrainSource(n))
            .shuffle(seed=3)
            .batch(B)
            .to_iter_dataset(no_read_ahead)
        )
    data = Items(n)
    if kind == "dl":
        return DataLoader(data, batch_size=B)
    if kind == "dl_shuffle":  # order from torch's global generator, unless the loader seeds it
        return DataLoader(data, batch_size=B, shuffle=True)
    if kind == "dl_shuffle_gen":
        return DataLoader(
            data, batch_size=B, shuffle=True, generator=torch.Generator().manual_seed(7)
        )
    if kind == "dl_dist":
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
        return DataLoader(data, batch_size=B, sampler=sampler)
    workers = 2 if kind == "sdl_workers" else 0
    order = torch.Generator().manual_seed(11)  # its state is in the loader's: no global seed
    return StatefulDataLoader(
        data, batch_size=B, shuffle=True, generator=order, num_workers=workers
    )


def make_loader(setup: Setup) -> MatchedNoiseLoader:
    return MatchedNoiseLoader(
        make_inner(setup),
        key="x",
        seed=SEED,
        scope=setup.scope,
        pool=POOL if setup.pool else None,
        group_by="label" if setup.group_by else None,
        prefetch=setup.prefetch,
        method=setup.method,
    )


def as_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def reference(setup: Setup) -> dict:
    """(epoch, index) -> item ids, noise: an uninterrupted run of every epoch."""
    loader, out = make_loader(setup), {}
    for epoch in range(1 if setup.kind == "gen" else EPOCHS):
        loader.set_epoch(epoch)
        for pb in loader:
            key = (pb.info["epoch"], pb.info["batch_index"])
            out[key] = (as_numpy(pb.batch["id"]).tolist(), as_numpy(pb.noise))
    return out


def through_a_checkpoint(state: dict) -> dict:
    """The state as a checkpoint returns it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save({"loader": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["loader"]


@st.composite
def setups(draw, kinds=KINDS, scopes=(1, 2, 3), pools=(False, True)) -> Setup:
    kind = draw(st.sampled_from(kinds))
    scope = draw(st.sampled_from(scopes))
    pool = scope == 1 and kind != "gen" and draw(st.sampled_from(pools))
    method = draw(st.sampled_from(["greedy", "hungarian"])) if pool else "hungarian"
    return Setup(
        kind=kind,
        batches=draw(st.integers(2, 6)),
        scope=scope,
        pool=pool,
        group_by=draw(st.booleans()),
        prefetch=draw(st.sampled_from([0, 2, 8, "auto"])),
        method=method,
    )


class ResumeModel(RuleBasedStateMachine):
    """The model: ``epoch``/``delivered`` is what state_dict must say; ``fresh`` says the next
    pass starts the epoch afresh (after a pass broken off early, except for a generator)."""

    other_batch_sizes = True  # also try to restore states into another batch size

    @initialize(setup=setups(kinds=LOADERS))
    def start(self, setup):
        self.begin(setup)

    def begin(self, setup):
        self.setup = setup
        self.ref = reference(setup)
        self.loader = make_loader(setup)
        self.it = None
        self.epoch = self.delivered = 0
        self.fresh = False
        self.saved: list = []
        self.pool = self._pool() if setup.pool else None

    def _pool(self) -> NoisePool:
        rule = "greedy" if self.setup.method == "greedy" else "exact"
        return NoisePool(POOL, rule=rule, seed=SEED)

    # -- the loop ----------------------------------------------------------------------------
    def _check(self, pb):
        ids, noise = self.ref[(self.epoch, self.delivered)]
        assert (pb.info["epoch"], pb.info["batch_index"]) == (self.epoch, self.delivered)
        assert as_numpy(pb.batch["id"]).tolist() == ids, "another batch than the model's"
        if self.pool is not None:
            labels = pb.batch["label"] if self.setup.group_by else None
            noise, _ = self.pool.take(pb.sample, labels)
            noise = as_numpy(noise)
        assert np.array_equal(as_numpy(pb.noise), noise), "other noise than the model's"
        self.delivered += 1

    def _next(self):
        if self.it is None:
            if self.fresh:
                self.delivered, self.fresh = 0, False
            self.it = iter(self.loader)
        try:
            pb = next(self.it)
        except StopIteration:
            assert self.delivered == self.setup.batches, "the epoch ended early or late"
            self.epoch, self.delivered, self.it = self.epoch + 1, 0, None
            return False
        self._check(pb)
        return True

    def _can_take(self) -> bool:
        return self.epoch < (1 if self.setup.kind == "gen" else EPOCHS)

    @precondition(lambda self: self._can_take())
    @rule(k=st.integers(1, 4))
    def take(self, k):
        for _ in range(k):
            if not self._next():
                return

    @precondition(lambda self: self._can_take() and self.delivered < self.setup.batches)
    @rule()
    def take_to_the_last_batch(self):
        """Up to the epoch's last batch, not past it (a trainer that checkpoints at its last step
        saves there, before the loop sees the epoch end)."""
        while self.delivered < self.setup.batches:
            self._next()

    @precondition(lambda self: self._can_take())
    @rule()
    def finish_epoch(self):
        while self._next():
            pass

    @precondition(lambda self: self.it is not None)
    @rule()
    def break_off(self):
        self.it.close()
        self.it = None
        self.fresh = self.setup.kind != "gen"  # a generator continues where it stopped

    @precondition(lambda self: self.setup.kind != "gen" and self.it is None)
    @rule(ahead=st.integers(0, 1))
    def set_epoch(self, ahead):
        upcoming = self.epoch
        epoch = min(upcoming + ahead, EPOCHS - 1) if self.setup.epoch_decides_order else upcoming
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "set_epoch drops the resume": the model knows
            self.loader.set_epoch(epoch)
        if epoch != upcoming:
            self.epoch, self.delivered, self.fresh = epoch, 0, False

    # -- checkpoints -------------------------------------------------------------------------
    @rule()
    def save(self):
        state = through_a_checkpoint(self.loader.state_dict())
        pool = None if self.pool is None else self.pool.state_dict()
        self.saved.append((state, self.epoch, self.delivered, pool))

    @precondition(lambda self: self.saved)
    @rule(data=st.data())
    def restore(self, data):
        state, epoch, delivered, pool = data.draw(st.sampled_from(self.saved))
        if self.setup.kind == "gen" and epoch > 0:
            return  # a rebuilt generator holds no second epoch
        if self.it is not None:
            self.it.close()
        torch.manual_seed(1234)  # a new process: torch's global generator is elsewhere
        self.loader = make_loader(self.setup)
        self.loader.load_state_dict(state)
        self.it, self.fresh = None, False
        self.epoch, self.delivered = epoch, delivered
        if self.pool is not None:
            self.pool = self._pool()
            self.pool.load_state_dict(pool)

    @precondition(
        lambda self: (
            self.other_batch_sizes and any(s[2] for s in self.saved) and self.setup.kind != "grain"
        )
    )
    @rule(data=st.data(), factor=st.sampled_from([0.5, 2]))
    def restore_into_another_batch_size(self, data, factor):
        state = data.draw(st.sampled_from([s[0] for s in self.saved if s[2]]))
        other = MatchedNoiseLoader(
            DataLoader(Items(self.setup.items), batch_size=int(B * factor)),
            key="x",
            seed=SEED,
            scope=self.setup.scope,
            pool=POOL if self.setup.pool else None,
            method=self.setup.method,
        )
        with pytest.raises((ValueError, KeyError)):
            other.load_state_dict(state)
            for _ in other:
                pass

    @invariant()
    def state_dict_says_where_the_model_is(self):
        if not hasattr(self, "loader"):
            return
        state = self.loader.state_dict()
        assert (state["epoch"], state["delivered"]) == (self.epoch, self.delivered)

    def teardown(self):
        if getattr(self, "it", None) is not None:
            self.it.close()
        release_mosaic()


ResumeModel.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,  # the same sequences every run: no flaky verdicts
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestResumeModel = ResumeModel.TestCase


class StreamResumeModel(ResumeModel):
    """The same model over the streaming loaders alone (drawn among all the kinds, a bounded
    run would reach them too seldom)."""

    @initialize(setup=setups(kinds=STREAM_KINDS))
    def start(self, setup):
        self.begin(setup)


StreamResumeModel.TestCase.settings = settings(ResumeModel.TestCase.settings, max_examples=16)
TestStreamResumeModel = StreamResumeModel.TestCase

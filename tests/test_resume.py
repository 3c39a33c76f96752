"""Regression tests of the defects the pass redesign removed (issue 19, A to L): each is the
reproducer as it was reported, with what must happen instead."""

import collections
import io
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from noisepair import MatchedNoiseLoader
from noisepair.prefetch import Closed
from noisepair.testing import assert_permutation_of_draws


def items(n=40, d=16):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, d, generator=g), torch.arange(n), torch.arange(n) % 3)


def record(loader, limit=None):
    out = []
    for pb in loader:
        out.append((pb.batch[1].tolist(), pb.noise.clone(), pb.info["epoch"]))
        if limit is not None and len(out) == limit:
            break
    return out


def same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b)
    )


def checkpointed(state):
    buffer = io.BytesIO()
    torch.save({"loader": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["loader"]


@pytest.mark.parametrize("scope, group_by", [(3, None), (2, 2)])
def test_a_state_at_the_epochs_last_batch_resumes_into_the_next_epoch(scope, group_by):
    """A: 5 batches, scope 3 (or 2 with group_by): saved after the last batch."""

    def make():
        return MatchedNoiseLoader(
            DataLoader(items(), batch_size=8), seed=0, scope=scope, group_by=group_by
        )

    full = make()
    epochs = [record(full), record(full)]
    first = make()
    record(first, limit=5)  # the last batch, before the loop sees the epoch end
    state = checkpointed(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])
    assert record(resumed) == []  # epoch 0 was all delivered
    assert same(record(resumed), epochs[1])


@pytest.mark.parametrize("kind", ["shuffle", "distributed", "workers"])
def test_b_a_stateful_loader_resumed_in_the_first_group_of_a_later_epoch(kind):
    """B: StatefulDataLoader, scope 3, state inside the first match group of epoch 1."""

    def make():
        torch.manual_seed(0)
        data = items()
        if kind == "distributed":
            sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=1)
            inner = StatefulDataLoader(data, batch_size=8, sampler=sampler)
        else:
            inner = StatefulDataLoader(
                data, batch_size=8, shuffle=True, num_workers=2 if kind == "workers" else 0
            )
        return MatchedNoiseLoader(inner, seed=0, scope=3)

    full = make()
    record(full)
    epoch1 = record(full)
    first = make()
    record(first)
    head = record(first, limit=1)
    resumed = make()
    resumed.load_state_dict(checkpointed(first.state_dict()))
    rest = record(resumed)
    assert same(head + rest, epoch1)
    assert sorted(sum((ids for ids, *_ in head + rest), [])) == list(range(40))


def hung_then(seconds):
    yield np.ones((4, 2), np.float32)
    time.sleep(seconds)
    yield np.ones((4, 2), np.float32)


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("hang", [1e9, 3.0], ids=["hung", "slow"])
def test_c_close_from_another_thread_wakes_the_waiting_loop(prefetch, hang):
    """C: a watchdog thread closes the loader while the loop waits on the inner loader."""
    loader = MatchedNoiseLoader(hung_then(hang), seed=0, prefetch=prefetch)
    it = iter(loader)
    next(it)
    watchdog = threading.Timer(0.2, loader.close)
    watchdog.start()
    began = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the hung thread is abandoned
        with pytest.raises(Closed, match="closed while the training loop waited"):
            next(it)
        woke = time.monotonic() - began
        watchdog.join()
    assert woke < 0.2 + 1.0  # the close, then a poll
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_c_a_sigterm_handler_that_closes_the_loader_wakes_the_loop(prefetch):
    script = textwrap.dedent(
        f"""
        import os, signal, threading, time, warnings
        import numpy as np
        from noisepair import MatchedNoiseLoader
        from noisepair.prefetch import Closed

        def hung():
            yield np.ones((4, 2), np.float32)
            time.sleep(1e9)

        loader = MatchedNoiseLoader(hung(), seed=0, prefetch={prefetch})
        signal.signal(signal.SIGTERM, lambda *_: loader.close())
        it = iter(loader)
        next(it)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        warnings.simplefilter("ignore")
        try:
            next(it)
        except Closed:
            print("closed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed"


@pytest.mark.parametrize("prefetch", [0, 2, 8])
def test_d_a_generator_broken_mid_group_continues_with_fresh_noise(prefetch):
    """D: one-shot generator, scope 3, 9 batches of 8, broken after 4, then continued."""

    def batches():
        for i in range(9):
            g = torch.Generator().manual_seed(i)
            yield torch.randn(8, 4, generator=g), torch.arange(8 * i, 8 * i + 8)

    full = record(MatchedNoiseLoader(batches(), seed=1, scope=3))
    loader = MatchedNoiseLoader(batches(), seed=1, scope=3, prefetch=prefetch)
    got = record(loader, limit=4) + record(loader)
    noise = torch.cat([z for _, z, _ in got])
    assert len(noise) == 72 and len(torch.unique(noise, dim=0)) == 72
    assert same(got, full)


def test_e_a_shuffled_dataloader_resumed_in_a_later_epoch_sees_that_epochs_order():
    """E: DataLoader(shuffle=True) without a generator, the same torch.manual_seed in both
    processes, resumed after 2 batches of epoch 1."""

    def make():
        torch.manual_seed(0)
        return MatchedNoiseLoader(DataLoader(items(), batch_size=8, shuffle=True))

    full = make()
    epochs = [record(full), record(full)]
    first = make()
    record(first)
    head = record(first, limit=2)
    resumed = make()
    resumed.load_state_dict(checkpointed(first.state_dict()))
    resumed.set_epoch(1)
    assert same(head + record(resumed), epochs[1])
    assert epochs[0][0][0] != epochs[1][0][0]  # still a new order each epoch


@pytest.mark.parametrize(
    "encode",
    [lambda x: x[:4], lambda x: torch.cat([x, x]), lambda x: x.T],
    ids=["drops rows", "doubles rows", "transposes"],
)
def test_f_an_encode_that_changes_the_batch_dimension_is_an_error(encode):
    loader = MatchedNoiseLoader(DataLoader(items(), batch_size=8), encode=encode, prefetch=0)
    with pytest.raises(ValueError, match=r"encode= turned a batch of 8 samples into shape"):
        next(iter(loader))


@pytest.mark.parametrize("method", ["greedy", "hungarian"])
def test_g_a_pool_state_loads_with_weights_only(method):
    def make():
        return MatchedNoiseLoader(DataLoader(items(), batch_size=8), seed=0, pool=12, method=method)

    full = record(make())
    first = make()
    record(first, limit=2)
    resumed = make()
    resumed.load_state_dict(checkpointed(first.state_dict()))
    assert same(record(resumed), full[2:])


def test_h_assert_permutation_of_draws_takes_a_pool_loader():
    def make():
        return MatchedNoiseLoader(DataLoader(items(), batch_size=8), seed=0, pool=12)

    assert assert_permutation_of_draws(make()) == 40
    loader = make()
    record(loader, limit=2)  # the pool is now inside its second cycle
    assert assert_permutation_of_draws(loader, batches=3) == 24
    with pytest.raises(ValueError, match="each label has a pool of its own"):
        assert_permutation_of_draws(
            MatchedNoiseLoader(DataLoader(items(), batch_size=8), pool=12, group_by=2)
        )


@pytest.mark.parametrize("size", [4, 16])
def test_j_a_state_of_another_batch_size_is_an_error(size):
    first = MatchedNoiseLoader(DataLoader(items(), batch_size=8), seed=0)
    record(first, limit=2)
    state = first.state_dict()
    other = MatchedNoiseLoader(DataLoader(items(), batch_size=size), seed=0)
    with pytest.raises(ValueError, match="saved with batches of 8 samples"):
        other.load_state_dict(state)
        list(other)
    batched = MatchedNoiseLoader(  # no batch_size attribute: caught when the batches are read
        DataLoader(items(), batch_sampler=[list(range(i, i + size)) for i in range(0, 40, size)]),
        seed=0,
    )
    batched.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with batches of 8 samples"):
        list(batched)


@pytest.mark.parametrize("resume_at", [1, 2, 3])
def test_k_both_resume_recipes_at_once_warn_near_the_epochs_end(resume_at):
    """K: the loader restored at batch 1-3 of a 4-batch epoch AND the script skipping them."""

    def make():
        return MatchedNoiseLoader(DataLoader(items(32), batch_size=8), seed=0)

    first = make()
    record(first, limit=resume_at)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="skips the batches trained before the checkpoint"):
        for epoch in (0, 1):
            for step, _ in enumerate(resumed):
                if epoch == 0 and step < resume_at:  # diffusers' own skip
                    continue
                time.sleep(0.3)  # a training step (20x the loop body of a skip, under any load)


def test_k_the_restored_loader_alone_does_not_warn():
    def make():
        return MatchedNoiseLoader(DataLoader(items(32), batch_size=8), seed=0)

    first = make()
    record(first, limit=3)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            for _ in resumed:
                time.sleep(0.02)


def test_l_unclear_errors_are_clear():
    data = DataLoader(items(), batch_size=8)
    with pytest.raises(ValueError, match="group_by gave None labels"):
        batches = [{"x": torch.randn(4, 2), "y": [1, None, 2, None]}]
        list(MatchedNoiseLoader(batches, key="x", group_by="y", prefetch=0))
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        MatchedNoiseLoader(data, device="meta")
    with pytest.raises(TypeError, match="load_state_dict needs the dict"):
        MatchedNoiseLoader(data).load_state_dict(None)
    with pytest.raises(TypeError, match="monitor must have an update"):
        MatchedNoiseLoader(data, monitor=5)
    with pytest.raises(TypeError, match="skip_counter must be a noisepair.streaming.SkipCounter"):
        MatchedNoiseLoader(data, skip_counter=5)
    with pytest.raises(TypeError, match="the batch is a bare Tensor"):
        list(MatchedNoiseLoader([torch.randn(4, 2)], group_by=0, prefetch=0))
    with pytest.raises(ValueError, match="sinkhorn needs reg > 0"):
        MatchedNoiseLoader(data, method="sinkhorn", method_options={"reg": 0})
    with pytest.raises(TypeError, match="returned float64 indices"):
        list(MatchedNoiseLoader(data, method=lambda c: np.arange(len(c), dtype=float)))


def test_l_a_namedtuple_batch_keeps_its_type_and_names():
    Batch = collections.namedtuple("Batch", ["image", "label"])
    batches = [Batch(torch.randn(4, 3), torch.arange(4)) for _ in range(2)]
    out = list(MatchedNoiseLoader(batches, seed=0, output="batch"))
    assert all(
        type(b).__name__ == "Batch" and b._fields == ("image", "label", "noise") for b in out
    )
    image, label, noise = out[0]
    assert torch.equal(label, batches[0].label) and noise.shape == image.shape
    assert torch.equal(out[0].noise, noise)


def test_close_from_a_signal_handler_keeps_sigterm_working():
    """After the handler closed the loader, a second SIGTERM with the default action still
    ends the process (the process does not ignore SIGTERM)."""
    script = textwrap.dedent(
        """
        import os, signal, threading, time, warnings
        import numpy as np
        from noisepair import MatchedNoiseLoader
        from noisepair.prefetch import Closed

        def hung():
            yield np.ones((4, 2), np.float32)
            time.sleep(1e9)

        loader = MatchedNoiseLoader(hung(), seed=0, prefetch=0)
        def stop(*_):
            loader.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, stop)
        it = iter(loader)
        next(it)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        warnings.simplefilter("ignore")
        try:
            next(it)
        except Closed:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr

"""The loader's promise in ordinary loops: every batch once per epoch, the same noise after a
resume (replayed or restored natively), one live pass at a time, and a clean exit."""

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
from test_loader import prefetch_threads, wait_no_threads
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

import noisepair.prefetch
from noisepair import MatchedNoiseLoader


def ids_dataset(n=32):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 6, generator=g) + 1, torch.arange(n))


def record(loader, limit=None):
    out = []
    for pb in loader:
        out.append(
            (pb.batch[1].tolist(), pb.noise.clone(), pb.info["epoch"], pb.info["batch_index"])
        )
        if limit is not None and len(out) == limit:
            break
    return out


def same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and x[2:] == y[2:] for x, y in zip(a, b)
    )


def readme_epochs(loader, first_epoch, epochs):
    """The README's loop, as written."""
    out = []
    for epoch in range(first_epoch, epochs):
        loader.set_epoch(epoch)
        out += record(loader)
    return out


@pytest.mark.parametrize("prefetch", [0, 2])
def test_readme_epoch_loop_after_a_resume_sees_each_batch_once(prefetch):
    def make():
        return MatchedNoiseLoader(
            DataLoader(ids_dataset(), batch_size=8), seed=1, prefetch=prefetch
        )

    full = readme_epochs(make(), 0, 2)
    assert len(full) == 8
    first = make()
    first.set_epoch(0)
    record(first, limit=2)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = readme_epochs(resumed, state["epoch"], 2)
    assert same(rest, full[2:])  # 6 batches, not 8


def test_an_epoch_the_loader_advances_itself_reaches_the_sampler():
    data = ids_dataset(64)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = MatchedNoiseLoader(DataLoader(data, batch_size=16, sampler=sampler), seed=0)
    orders = [sum((ids for ids, *_ in record(loader)), []) for _ in range(3)]
    assert sampler.epoch == 3
    assert len({tuple(o) for o in orders}) == 3 and all(
        sorted(o) == list(range(64)) for o in orders
    )


def test_a_broken_pass_is_followed_by_a_fresh_pass_of_the_same_epoch():
    loader = MatchedNoiseLoader(DataLoader(ids_dataset(64), batch_size=8, shuffle=True), seed=0)
    record(loader, limit=3)
    assert loader.state_dict()["delivered"] == 3  # where the broken pass stopped ...
    iter(loader).close()
    assert loader.state_dict()["delivered"] == 0  # ... until a fresh pass starts
    again = record(loader)
    assert sorted(sum((ids for ids, *_ in again), [])) == list(range(64))
    assert [b[3] for b in again] == list(range(8)) and {b[2] for b in again} == {0}


@pytest.mark.parametrize("prefetch", [0, 1, 2, 8])
@pytest.mark.parametrize("scope", [1, 2])
def test_a_one_shot_generator_loses_no_batch_across_broken_passes(prefetch, scope):
    def batches():
        for i in range(12):
            yield torch.full((4, 3), float(i)), torch.full((4,), i)

    full = record(MatchedNoiseLoader(batches(), seed=2, prefetch=prefetch))
    for _ in range(5):  # the thread's progress at each break differs from run to run
        loader = MatchedNoiseLoader(batches(), seed=2, prefetch=prefetch, scope=scope)
        got = record(loader, limit=3) + record(loader, limit=4) + record(loader)
        assert [ids[0] for ids, *_ in got] == list(range(12))  # nothing lost or repeated
        assert [b[3] for b in got] == list(range(12))  # batch_index follows the stream
        if scope == 1:
            assert same(got, full)
    assert not wait_no_threads()


def test_set_epoch_during_a_pass_applies_to_the_next_one():
    loader = MatchedNoiseLoader(DataLoader(ids_dataset(80), batch_size=8), seed=0)
    it = iter(loader)
    for _ in range(7):
        next(it)
    loader.set_epoch(1)
    assert len(list(it)) == 3  # the live pass of epoch 0 runs to its end
    epoch1 = record(loader)
    assert len(epoch1) == 10 and {b[2] for b in epoch1} == {1}
    assert loader.state_dict()["epoch"] == 2


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from noisepair import MatchedNoiseLoader

    if sys.argv[1] == "torch":
        inner = DataLoader(TensorDataset(torch.randn(640, 8)), batch_size=16)
    else:
        inner = (np.random.default_rng(i).normal(size=(16, 8)).astype(np.float32) for i in range(40))
    it = iter(MatchedNoiseLoader(inner, prefetch=4))
    for _ in range(5):
        next(it)
    print("done")
""")


@pytest.mark.parametrize("inner", ["torch", "generator"])
def test_exit_with_a_live_iterator_is_silent(inner):
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, inner], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done" and result.stderr == ""


class Hung:
    """A loader whose second batch never comes (a stalled network read)."""

    def __init__(self):
        self.release = threading.Event()

    def __iter__(self):
        yield np.ones((4, 2), np.float32)
        self.release.wait(60)
        yield np.ones((4, 2), np.float32)


def test_close_does_not_wait_for_a_hung_inner_loader():
    hung = Hung()
    it = iter(MatchedNoiseLoader(hung, prefetch=2))
    next(it)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="blocked inside the wrapped Hung"):
        it.close()
    assert time.monotonic() - start < 5  # not the 60 s the read hangs
    hung.release.set()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_pass_stops_its_thread_at_once_when_it_ends_or_breaks(monkeypatch, prefetch):
    # A thread that noticed the stop only at its next poll would outlive the join and warn.
    monkeypatch.setattr(noisepair.prefetch, "POLL_S", 60.0)
    monkeypatch.setattr(noisepair.prefetch, "JOIN_S", 5.0)
    loader = MatchedNoiseLoader(DataLoader(ids_dataset(), batch_size=8), prefetch=prefetch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(loader)) == 4  # ran to its end
        it = iter(loader)
        next(it)
        it.close()  # broken off
    assert not prefetch_threads()


CTRL_C_SCRIPT = textwrap.dedent("""
    import threading, time
    import numpy as np
    from noisepair import MatchedNoiseLoader

    def hung():
        yield np.ones((4, 2), np.float32)
        threading.Event().wait(120)

    try:
        for pb in MatchedNoiseLoader(hung()):
            print("batch", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def test_ctrl_c_reaches_a_loop_waiting_on_a_hung_loader():
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", CTRL_C_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "batch"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)  # not the 120 s of the hung read
    assert out.strip() == "interrupted"


class Counted(Dataset):
    def __init__(self, n=96):
        self.data = ids_dataset(n)
        self.reads = 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        return self.data[i]


@pytest.mark.parametrize("scope", [1, 3])
def test_a_stateful_inner_loader_is_restored_not_replayed(scope):
    def make(data):
        inner = StatefulDataLoader(
            data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        return MatchedNoiseLoader(inner, seed=0, scope=scope, prefetch=2)

    full = record(make(Counted()))
    loader = make(Counted())
    record(loader, limit=17)
    state = loader.state_dict()
    assert state["inner_state"] is not None and state["delivered"] == 17
    data = Counted()
    resumed = make(data)
    resumed.load_state_dict(state)
    rest = record(resumed)
    assert same(rest, full[17:])
    group_start = (17 // scope) * scope
    assert data.reads == (24 - group_start) * 4  # the rest of the epoch and one match group


def test_a_stateful_inner_loader_with_workers_resumes_exactly():
    def make():
        inner = StatefulDataLoader(
            ids_dataset(96),
            batch_size=4,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(3),
        )
        return MatchedNoiseLoader(inner, seed=0)

    full = record(make())
    loader = make()
    record(loader, limit=10)
    state = loader.state_dict()
    loader.close()
    resumed = make()
    resumed.load_state_dict(state)
    assert same(record(resumed), full[10:])


def test_bad_arguments_and_states_get_clear_errors():
    data = [np.ones((4, 2), np.float32)] * 4
    for kw, message in [
        ({"seed": 1.7}, "seed must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"scope": 2.5}, "scope must be an integer"),
        ({"prefetch": -1}, "prefetch must be >= 0"),
        ({"key": [1]}, r"key must be a dict key or a tuple index.*key=1"),
        ({"output": "dict"}, "output must be one of"),
    ]:
        with pytest.raises((TypeError, ValueError), match=message):
            MatchedNoiseLoader(data, **kw)
    loader = MatchedNoiseLoader(DataLoader(ids_dataset(), batch_size=8), seed=0)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="rank 1 of 2"):
        loader.load_state_dict(state | {"rank": 1, "world": 2})
    with pytest.raises(ValueError, match="9 batches of epoch 0.*has 4 per epoch"):
        loader.load_state_dict(state | {"delivered": 9})
    with pytest.raises(KeyError, match="delivered"):
        loader.load_state_dict({"epoch": 0})
    generator = MatchedNoiseLoader(iter(data), seed=0)
    generator.load_state_dict({"epoch": 0, "delivered": 6, "seed": 0})
    with pytest.raises(ValueError, match="6 batches of epoch 0.*has only 4 this epoch"):
        list(generator)


def test_samples_that_hold_no_batch_of_data_get_clear_errors():
    cases = [
        (torch.tensor(1.0), "0-d"),
        (torch.empty(4, 3, device="meta"), "meta tensor"),
        (torch.eye(4).to_sparse(), "to_dense"),
    ]
    for sample, message in cases:
        with pytest.raises(ValueError, match=message):
            list(MatchedNoiseLoader([sample], prefetch=0))
    mixed = [np.ones((4, 2), np.float32), np.ones((4, 2), np.float64)]
    with pytest.raises(ValueError, match="differ in array type, dtype or device"):
        list(MatchedNoiseLoader(mixed, scope=2, prefetch=0))
    mixed = [np.ones((4, 2), np.float32), torch.ones(4, 2)]
    with pytest.raises(ValueError, match="differ in array type"):
        list(MatchedNoiseLoader(mixed, scope=2, prefetch=0))


def test_batch_output_is_a_drop_in_for_scripts_that_unpack():
    inner = DataLoader(ids_dataset(), batch_size=8)
    paired = list(MatchedNoiseLoader(inner, seed=0))
    loader = MatchedNoiseLoader(inner, seed=0, output="batch")
    for (x, ids, z), pb in zip(loader, paired, strict=True):
        assert (
            torch.equal(x, pb.sample) and torch.equal(z, pb.noise) and torch.equal(ids, pb.batch[1])
        )
    assert loader.last_info["batch_index"] == 3 and loader.last_info["method"] == "hungarian"
    dicts = [{"image": np.ones((4, 2), np.float32) * i, "label": np.arange(4)} for i in range(2)]
    out = list(MatchedNoiseLoader(dicts, output="batch", noise_key="eps", encode=lambda x: x * 2))
    assert set(out[1]) == {"image", "label", "eps"} and np.array_equal(
        out[1]["image"], dicts[1]["image"] * 2
    )
    (bare,) = MatchedNoiseLoader([np.ones((4, 2), np.float32)], output="batch")
    # a loader nobody else holds still delivers its form (its iterator holds it)
    assert isinstance(
        next(iter(MatchedNoiseLoader([np.ones((4, 2), np.float32)], output="batch"))), tuple
    )
    assert isinstance(bare, tuple) and len(bare) == 2 and bare[1].shape == (4, 2)
    with pytest.raises(KeyError, match="already has a field 'label'"):
        list(MatchedNoiseLoader(dicts, output="batch", noise_key="label"))


def test_the_seed_follows_the_run_unless_given():
    data = [np.random.default_rng(i).normal(size=(8, 3)).astype(np.float32) for i in range(3)]
    torch.manual_seed(5)
    a = MatchedNoiseLoader(data)
    assert a.seed == 5 and a.state_dict()["seed"] == 5
    torch.manual_seed(6)
    b = MatchedNoiseLoader(data)
    assert not np.array_equal(next(iter(a)).noise, next(iter(b)).noise)
    assert MatchedNoiseLoader(data, seed=9).seed == 9  # an explicit seed wins
    it = iter(a)
    next(it)
    state = a.state_dict()
    it.close()
    torch.manual_seed(7)
    resumed = MatchedNoiseLoader(data)  # another run's seed: the saved one is adopted
    resumed.load_state_dict(state)
    assert resumed.seed == 5
    np.testing.assert_array_equal(
        next(iter(resumed)).noise, list(MatchedNoiseLoader(data, seed=5))[1].noise
    )
    with pytest.raises(ValueError, match="seed=5 but this loader has seed=9"):
        MatchedNoiseLoader(data, seed=9).load_state_dict(state)


def test_numpy_seed_is_the_run_seed_without_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    np.random.seed(1234)
    assert MatchedNoiseLoader([np.ones((4, 2), np.float32)]).seed == 1234


def test_prefetched_batches_are_not_counted_or_monitored():
    seen = []

    class Monitor:
        def update(self, pb):
            seen.append(pb.info["batch_index"])

    loader = MatchedNoiseLoader(
        [np.ones((4, 2), np.float32) * i for i in range(10)], prefetch=8, monitor=Monitor()
    )
    it = iter(loader)
    next(it), next(it)
    time.sleep(0.2)  # the thread pairs ahead meanwhile
    assert loader.state_dict()["delivered"] == 2 and seen == [0, 1]
    it.close()


def test_warnings_are_quiet_in_ordinary_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = MatchedNoiseLoader(DataLoader(ids_dataset(), batch_size=8), seed=0)
        for _ in range(2):
            record(loader)

"""MatchedNoiseLoader: batch forms, seeding, prefetch thread, epochs, resume, scope, groups."""

import gc
import os
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

from noisepair import MatchedNoiseLoader
from noisepair.noise import draw_like


def prefetch_threads():
    return [
        t for t in threading.enumerate() if t.name.startswith("noisepair-prefetch") and t.is_alive()
    ]


def wait_no_threads(timeout=5.0):
    end = time.time() + timeout
    while prefetch_threads() and time.time() < end:
        time.sleep(0.02)
    return prefetch_threads()


def numpy_dicts(n_batches=5, b=16, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        yield {
            "image": rng.normal(size=(b, 3, 4, 4)).astype(np.float32) + 1,
            "label": np.arange(b) % 3,
            "id": np.arange(i * b, (i + 1) * b),
        }


def torch_loader(n=96, batch_size=16, **kw):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 2, 4, 4, generator=g) + 1, torch.arange(n))
    return DataLoader(data, batch_size=batch_size, **kw)


def noise_list(loader):
    return [np.asarray(pb.noise).copy() for pb in loader]


def test_wraps_a_torch_dataloader_in_one_line():
    loader = torch_loader()
    seen = []
    for pb in MatchedNoiseLoader(loader):
        x, z = pb.sample, pb.noise
        assert isinstance(z, torch.Tensor) and z.shape == x.shape and z.dtype == x.dtype
        assert pb.batch[0] is x  # the original batch object, sample untouched
        assert pb.info["cost"] < pb.info["cost_random"]
        assert pb.info["method"] == "hungarian" and pb.info["exact_permutation"]
        seen.extend(pb.batch[1].tolist())
    assert seen == list(range(96))  # nothing dropped, nothing duplicated, order kept


def test_wraps_a_generator_of_numpy_dicts():
    out = list(MatchedNoiseLoader(numpy_dicts(), key="image"))
    assert len(out) == 5
    for i, pb in enumerate(out):
        assert isinstance(pb.noise, np.ndarray) and pb.noise.dtype == np.float32
        assert pb.sample is pb.batch["image"]
        np.testing.assert_array_equal(pb.batch["id"], np.arange(i * 16, (i + 1) * 16))


@pytest.mark.parametrize("form", ["tensor", "ndarray", "tuple", "list", "dict"])
def test_batch_forms(form):
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    batch = {
        "tensor": torch.from_numpy(x),
        "ndarray": x,
        "tuple": ("meta", x),
        "list": ["m", x],
        "dict": {"pixels": x, "caption": ["a"] * 8},
    }[form]
    key = {"tuple": 1, "list": 1, "dict": "pixels"}.get(form)
    (pb,) = MatchedNoiseLoader([batch], key=key, prefetch=0)
    np.testing.assert_array_equal(np.asarray(pb.sample), x)
    assert pb.noise.shape == (8, 5)


def test_missing_or_ambiguous_key_lists_the_keys():
    batch = {"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 2), np.float32)}
    with pytest.raises(KeyError, match=r"\['a', 'b'\]"):
        list(MatchedNoiseLoader([batch], prefetch=0))
    with pytest.raises(KeyError, match="'image' not in batch.*\\['a', 'b'\\]"):
        list(MatchedNoiseLoader([batch], key="image"))


def test_bad_samples_get_clear_errors():
    ints = np.zeros((4, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="dtype uint8.*float"):
        list(MatchedNoiseLoader([ints], prefetch=0))
    nan = np.ones((4, 3), np.float32)
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        list(MatchedNoiseLoader([nan]))
    ragged = {"x": [np.zeros(3, np.float32), np.zeros(4, np.float32)]}
    with pytest.raises(ValueError, match="ragged"):
        list(MatchedNoiseLoader([ragged], key="x"))
    with pytest.raises(ValueError, match="ragged"):  # nested lists, as Hugging Face yields them
        list(MatchedNoiseLoader([{"x": [[0.1, 0.2], [0.3]]}], key="x"))
    for not_an_array in ("a caption", None):
        with pytest.raises(
            TypeError, match=f"sample is a {type(not_an_array).__name__}, not an array"
        ):
            list(MatchedNoiseLoader([{"x": not_an_array}], key="x", prefetch=0))
    with pytest.raises(ValueError, match="yielded no batches"):
        list(MatchedNoiseLoader([]))
    with pytest.raises(ValueError, match="scope"):
        MatchedNoiseLoader([], scope=0)


def test_nested_lists_of_floats_are_stacked():
    rows = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    pb = next(iter(MatchedNoiseLoader([{"x": rows}], key="x", prefetch=0)))
    np.testing.assert_array_equal(pb.sample, np.asarray(rows))
    assert pb.noise.shape == (3, 2) and pb.batch["x"] is rows


def test_batch_of_one_warns_once_and_pairs_as_drawn():
    batches = [np.ones((1, 3), np.float32)] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(MatchedNoiseLoader(batches, prefetch=0))
    assert sum("batch of one" in str(w.message) for w in caught) == 1
    assert len(out) == 3 and all(pb.noise.shape == (1, 3) for pb in out)


@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_same_seed_same_noise_whatever_the_prefetch(prefetch):
    ref = noise_list(MatchedNoiseLoader(list(numpy_dicts()), seed=3, prefetch=2))
    got = noise_list(MatchedNoiseLoader(list(numpy_dicts()), seed=3, prefetch=prefetch))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    other = noise_list(MatchedNoiseLoader(list(numpy_dicts()), seed=4))
    assert not np.array_equal(ref[0], other[0])


def test_draws_depend_on_seed_rank_epoch_index_only():
    x = np.zeros((4, 3), np.float32)
    base = draw_like(x, 4, seed=1, rank=0, epoch=0, index=0)
    np.testing.assert_array_equal(base, draw_like(x, 4, seed=1, rank=0, epoch=0, index=0))
    for changed in ({"seed": 2}, {"rank": 1}, {"epoch": 1}, {"index": 1}):
        kw = dict(seed=1, rank=0, epoch=0, index=0) | changed
        assert not np.array_equal(base, draw_like(x, 4, **kw))


def test_inner_loader_exception_reraises_with_its_traceback():
    def broken():
        yield np.ones((4, 2), np.float32)
        raise OSError("disk on fire")

    it = iter(MatchedNoiseLoader(broken()))
    next(it)
    with pytest.raises(OSError, match="disk on fire") as err:
        next(it)
    assert any(entry.name == "broken" for entry in err.traceback)
    assert not wait_no_threads()


@pytest.mark.parametrize("how", ["close", "with", "break", "gc"])
def test_thread_stops_on_close_with_break_and_gc(how):
    def endless():
        while True:
            yield np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)

    loader = MatchedNoiseLoader(endless(), prefetch=2)
    if how == "close":
        it = iter(loader)
        next(it)
        loader.close()
    elif how == "with":
        with loader:
            next(iter(loader))
    elif how == "break":
        for _ in loader:
            break
    else:
        it = iter(loader)
        next(it)
        del it
        gc.collect()
    assert not wait_no_threads()


def test_a_second_live_iterator_is_an_error_and_close_frees_the_loader():
    loader = MatchedNoiseLoader(list(numpy_dicts(20)))
    first = iter(loader)
    next(first)
    with pytest.raises(RuntimeError, match="already being iterated"):
        iter(loader)
    with pytest.raises(RuntimeError, match="already being iterated"):
        list(zip(loader, loader))
    loader.close()
    assert not wait_no_threads()
    assert len(list(loader)) == 20  # a fresh pass of the same epoch


def test_len_is_forwarded_only_when_the_inner_loader_has_one():
    assert len(MatchedNoiseLoader(torch_loader())) == 6
    with pytest.raises(TypeError, match="has no length"):
        len(MatchedNoiseLoader(numpy_dicts()))


def test_set_epoch_forwards_to_the_sampler_and_reseeds():
    data = TensorDataset(torch.randn(32, 3) + 1)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = MatchedNoiseLoader(DataLoader(data, batch_size=8, sampler=sampler))
    loader.set_epoch(3)
    assert sampler.epoch == 3
    e3 = noise_list(loader)
    loader.set_epoch(3)
    np.testing.assert_array_equal(noise_list(loader)[0], e3[0])
    loader.set_epoch(4)
    assert not np.array_equal(noise_list(loader)[0], e3[0])


def test_epoch_advances_after_a_full_pass():
    loader = MatchedNoiseLoader([np.ones((4, 2), np.float32) * i for i in range(3)], seed=0)
    first, second = noise_list(loader), noise_list(loader)
    assert loader.state_dict()["epoch"] == 2
    assert not np.array_equal(first[0], second[0])


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from noisepair import MatchedNoiseLoader
    data = [np.random.default_rng(i).normal(size=(8, 6)).astype(np.float32) for i in range(10)]
    loader = MatchedNoiseLoader(data, seed=11, scope=int(sys.argv[2]))
    loader.load_state_dict(json.loads(sys.argv[1]))
    out = [[float(pb.sample[0, 0]), pb.noise.tolist()] for pb in loader]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("scope", [1, 3])
def test_resume_mid_epoch_in_a_new_process(scope):
    import json

    data = [np.random.default_rng(i).normal(size=(8, 6)).astype(np.float32) for i in range(10)]
    loader = MatchedNoiseLoader(data, seed=11, scope=scope, prefetch=3)
    full = [
        [float(pb.sample[0, 0]), pb.noise.tolist()]
        for pb in MatchedNoiseLoader(data, seed=11, scope=scope)
    ]
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    assert state["delivered"] == 4  # delivered, not prefetched
    it.close()
    result = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, json.dumps(state), str(scope)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resumed = json.loads(result.stdout)
    assert resumed == full[4:]


def test_scope_matches_consecutive_batches_together():
    rng = np.random.default_rng(0)
    data = [
        rng.normal(size=(8, 4)).astype(np.float32) * 0.3 + rng.normal(size=4) * 3 for _ in range(6)
    ]
    scoped = list(MatchedNoiseLoader(data, seed=1, scope=3, prefetch=0))
    drawn = list(MatchedNoiseLoader(data, seed=1, method="random", prefetch=0))
    per_batch = list(MatchedNoiseLoader(data, seed=1, prefetch=0))
    for g in (0, 3):
        emitted = np.concatenate([pb.noise for pb in scoped[g : g + 3]])
        original = np.concatenate([pb.noise for pb in drawn[g : g + 3]])
        np.testing.assert_array_equal(np.sort(emitted, 0), np.sort(original, 0))
        assert all(pb.info["scope"] == 3 for pb in scoped[g : g + 3])
        scoped_cost = sum(((pb.sample - pb.noise) ** 2).sum() for pb in scoped[g : g + 3])
        batch_cost = sum(((pb.sample - pb.noise) ** 2).sum() for pb in per_batch[g : g + 3])
        assert scoped_cost <= batch_cost + 1e-3
    for pb, d in zip(scoped, data):
        assert pb.sample is d


def test_group_by_exchanges_noise_only_within_a_label():
    batches = list(numpy_dicts(3, b=30))
    matched = list(MatchedNoiseLoader(batches, group_by="label", seed=5, prefetch=0))
    drawn = list(MatchedNoiseLoader(batches, method="random", seed=5, prefetch=0))
    for pm, pr in zip(matched, drawn):
        labels = pm.batch["label"]
        for label in np.unique(labels):
            rows = labels == label
            np.testing.assert_array_equal(
                np.sort(pm.noise[rows].reshape(rows.sum(), -1), 0),
                np.sort(pr.noise[rows].reshape(rows.sum(), -1), 0),
            )
    with pytest.raises(KeyError, match="group_by='class'"):
        list(MatchedNoiseLoader(batches, group_by="class"))


def test_encode_runs_before_matching_and_sample_is_encoded():
    calls = []

    def encode(x):
        calls.append(threading.current_thread().name)
        return x.reshape(len(x), -1)[:, :5] * 2.0

    batches = list(numpy_dicts(2))
    out = list(MatchedNoiseLoader(batches, encode=encode))
    assert all(pb.sample.shape == (16, 5) and pb.noise.shape == (16, 5) for pb in out)
    assert all(name.startswith("noisepair-prefetch") for name in calls)
    np.testing.assert_array_equal(out[0].sample, batches[0]["image"].reshape(16, -1)[:, :5] * 2)


def test_device_moves_sample_and_draws_noise_there():
    (pb,) = MatchedNoiseLoader([np.ones((4, 3), np.float32)], device="cpu", prefetch=0)
    assert isinstance(pb.sample, torch.Tensor) and pb.noise.device == pb.sample.device


#: the start of a script in which any `import torch` raises ImportError (a machine without it)
WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc
    import sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "torch":
                raise ImportError("torch is absent on this machine")

    sys.meta_path.insert(0, NoTorch())
""")


def test_numpy_path_runs_with_torch_unimportable(tmp_path):
    script = WITHOUT_TORCH + textwrap.dedent("""
        import numpy as np
        import noisepair
        data = [{"image": np.random.default_rng(i).normal(size=(16, 8)).astype(np.float32)}
                for i in range(4)]
        out = list(noisepair.MatchedNoiseLoader(data, method="hungarian"))
        assert len(out) == 4 and isinstance(out[0].noise, np.ndarray)
        perm = noisepair.match(data[0]["image"], out[0].noise, "greedy")
        report, gain = noisepair.check_loader(noisepair.MatchedNoiseLoader(data), batches=4)
        assert report.passed and gain.ratio < 1
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

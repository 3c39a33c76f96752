"""MatchedNoiseLoader on real WebDataset tar shards and DataLoader workers, in one process."""

from __future__ import annotations

import io
import os
import tarfile
import time

import numpy as np
import pytest
import torch
import webdataset as wds

from noisepair import MatchedNoiseLoader  # noqa: E402
from noisepair.streaming import SkipCounter  # noqa: E402

SHARDS, PER_SHARD, BATCH, SHAPE = 4, 16, 8, (2, 3, 3)
N = SHARDS * PER_SHARD


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(1)
    with wds.ShardWriter(str(folder / "s-%03d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
        for i in range(N):
            sink.write(
                {
                    "__key__": f"k{i:04d}",
                    "x.npy": rng.standard_normal(SHAPE).astype(np.float32),
                    "cls": i % 4,
                }
            )
    return str(folder / f"s-{{000..{SHARDS - 1:03d}}}.tar")


def dataset(urls, *, dicts=False, handler=wds.reraise_exception, collation_fn=None, partial=False):
    ds = wds.WebDataset(urls, shardshuffle=False, handler=handler, empty_check=False).decode(
        handler=handler
    )
    if dicts:
        ds = ds.map(
            lambda s: {"image": s["x.npy"], "label": s["cls"], "key": s["__key__"]}, handler=handler
        )
    else:
        ds = ds.to_tuple("x.npy", "cls", "__key__", handler=handler)
    kw = {} if collation_fn is None else {"collation_fn": collation_fn}
    return ds.batched(BATCH, partial=partial, **kw)


def keys_of(pb):
    return list(pb.batch["key"] if isinstance(pb.batch, dict) else pb.batch[2])


@pytest.mark.parametrize("dicts", [False, True])
def test_webloader_with_workers_tuples_and_dicts(shards, dicts):
    inner = wds.WebLoader(dataset(shards, dicts=dicts), batch_size=None, num_workers=2)
    loader = MatchedNoiseLoader(inner, seed=3)
    keys, n_batches = [], 0
    for pb in loader:
        n_batches += 1
        assert isinstance(pb.sample, torch.Tensor) and pb.sample.shape == (BATCH, *SHAPE)
        assert pb.noise.shape == pb.sample.shape and pb.noise.dtype == torch.float32
        assert pb.info["cost"] <= pb.info["cost_random"] + 1e-4
        keys += keys_of(pb)
    assert n_batches == N // BATCH
    assert sorted(keys) == [f"k{i:04d}" for i in range(N)]  # each sample once, both workers


def test_pipeline_without_loader_yields_numpy(shards):
    loader = MatchedNoiseLoader(dataset(shards), seed=3, prefetch=0)
    pbs = list(loader)
    assert len(pbs) == N // BATCH
    assert all(isinstance(pb.noise, np.ndarray) and pb.noise.shape == (BATCH, *SHAPE) for pb in pbs)


def test_webdataset_02_list_collation(shards):
    # webdataset 0.2 collated into lists; without combining, the sample field is a list of arrays
    def collate_02(samples):
        fields = list(zip(*samples))
        return [list(fields[0]), np.array(fields[1]), list(fields[2])]

    loader = MatchedNoiseLoader(dataset(shards, collation_fn=collate_02), seed=3, prefetch=1)
    pb = next(iter(loader))
    assert isinstance(pb.batch, list) and isinstance(pb.batch[0], list)
    assert pb.sample.shape == (BATCH, *SHAPE) and pb.noise.shape == (BATCH, *SHAPE)
    np.testing.assert_array_equal(pb.sample[0], pb.batch[0][0])
    loader.close()


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i)), "i": i}


def test_torch_dataloader_with_workers():
    inner = torch.utils.data.DataLoader(_Squares(), batch_size=8, num_workers=2)
    loader = MatchedNoiseLoader(inner, key="x", seed=0)
    assert len(loader) == 5
    seen = sorted(int(i) for pb in loader for i in pb.batch["i"])
    assert seen == list(range(40))


def test_resume_mid_epoch_with_workers(shards):
    def make():
        return MatchedNoiseLoader(
            wds.WebLoader(dataset(shards), batch_size=None, num_workers=2), seed=5
        )

    full = [(keys_of(pb), pb.noise.clone()) for pb in make()]
    first = make()
    head = []
    for pb in first:
        head.append((keys_of(pb), pb.noise.clone()))
        if len(head) == 3:
            break
    state = first.state_dict()
    first.close()
    second = make()
    second.load_state_dict(state)
    tail = [(keys_of(pb), pb.noise.clone()) for pb in second]
    assert [k for k, _ in head + tail] == [k for k, _ in full]
    for (_, a), (_, b) in zip(head + tail, full):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scope", [1, 3])
def test_a_webdataset_resume_reads_the_epoch_up_to_the_match_group(shards, scope):
    """WebDataset has no iterator state: a resume replays (reads and decodes) every sample up
    to the resume point's match group, then reads on. What it reads is exactly that."""
    decoded = []

    def make():
        ds = dataset(shards).map(lambda batch: decoded.append(1) or batch)
        return MatchedNoiseLoader(ds, seed=5, scope=scope, prefetch=0)

    first = make()
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    it.close()
    decoded.clear()
    resumed = make()
    resumed.load_state_dict(state)
    pb = next(iter(resumed))
    assert pb.info["batch_index"] == 5
    group_end = (5 // scope + 1) * scope  # the group holding batch 5 is read whole
    assert len(decoded) == group_end  # batches 0 .. group_end - 1, each decoded once


def _corrupt(urls_folder_pattern, tmp_path):
    """Copy the shards, break one sample's .npy bytes in shard 1 and truncate shard 2."""
    src = os.path.dirname(urls_folder_pattern)
    for j in range(SHARDS):
        data = open(os.path.join(src, f"s-{j:03d}.tar"), "rb").read()
        if j == 1:
            with tarfile.open(fileobj=io.BytesIO(data)) as tin:
                members = [(m, tin.extractfile(m).read()) for m in tin.getmembers()]
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w") as tout:
                for m, payload in members:
                    if m.name == "k0020.x.npy":
                        payload = b"not a numpy file" + payload[:10]
                        m.size = len(payload)
                    tout.addfile(m, io.BytesIO(payload))
            data = out.getvalue()
        if j == 2:
            data = data[: len(data) // 2 + 100]
        (tmp_path / f"s-{j:03d}.tar").write_bytes(data)
    return str(tmp_path / f"s-{{000..{SHARDS - 1:03d}}}.tar")


def test_corrupt_and_truncated_shards_warn_count_and_continue(shards, tmp_path):
    urls = _corrupt(shards, tmp_path)
    faults = SkipCounter("warn")
    inner = wds.WebLoader(
        dataset(urls, handler=faults, partial=True), batch_size=None, num_workers=2
    )
    loader = MatchedNoiseLoader(inner, seed=0, skip_counter=faults)
    keys, last = [], None
    for pb in loader:
        keys += keys_of(pb)
        last = pb
    # faults, counted in the worker processes: the bad sample; the truncated shard's torn last
    # member and its unreadable tail (webdataset reports them separately)
    assert 2 <= loader.skipped <= 3
    assert last.info["skipped"] <= loader.skipped
    assert "k0020" not in keys and len(set(keys)) == len(keys)
    lost = N - len(keys)
    assert 1 + 1 <= lost < 1 + PER_SHARD  # the bad sample and the unreadable tail of shard 2
    assert set(f"k{i:04d}" for i in range(16)) <= set(keys)  # shard 0 intact


def test_corrupt_shard_raise_policy_surfaces_the_error(shards, tmp_path):
    urls = _corrupt(shards, tmp_path)
    inner = wds.WebLoader(
        dataset(urls, handler=SkipCounter("raise")), batch_size=None, num_workers=2
    )
    with pytest.raises(Exception) as info:
        for _ in MatchedNoiseLoader(inner, seed=0):
            pass
    assert (
        "pickle" in str(info.value).lower()
        or "numpy" in str(info.value).lower()
        or "truncated" in str(info.value).lower()
        or "load" in str(info.value).lower()
    )


def _crash_on_k0030(sample):
    if sample[2] == "k0030":
        os._exit(3)  # the worker process dies, no exception, no message
    return sample


def test_worker_crash_is_an_error_not_a_hang(shards):
    ds = (
        wds.WebDataset(shards, shardshuffle=False, empty_check=False)
        .decode()
        .to_tuple("x.npy", "cls", "__key__")
        .map(_crash_on_k0030)
        .batched(BATCH)
    )
    # DataLoader(timeout=0) polls its workers every 5 s and raises on a dead one; a timeout > 0
    # only bounds the wait for a batch (a hung worker), it does not check for dead ones
    inner = wds.WebLoader(ds, batch_size=None, num_workers=2)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="worker"):
        for _ in MatchedNoiseLoader(inner, seed=0):
            pass
    assert time.monotonic() - start < 25


def test_across_ranks_in_one_process_is_plain_matching(shards):
    a = [pb.noise for pb in MatchedNoiseLoader(dataset(shards), seed=2, prefetch=0)]
    b = [
        pb.noise
        for pb in MatchedNoiseLoader(dataset(shards), seed=2, prefetch=0, across_ranks=True)
    ]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    with pytest.raises(ValueError, match="permutation"):
        MatchedNoiseLoader(dataset(shards), method="knn", across_ranks=True)


def test_skip_counter_rejects_unknown_action():
    with pytest.raises(ValueError):
        SkipCounter("retry")


def test_detshuffle_order_is_a_function_of_the_epoch_and_survives_resume(shards):
    def make():
        ds = (
            wds.WebDataset(shards, shardshuffle=SHARDS, detshuffle=True, seed=1, empty_check=False)
            .compose(wds.detshuffle(32, seed=2))
            .decode()
            .to_tuple("x.npy", "cls", "__key__")
            .batched(BATCH)
        )
        return MatchedNoiseLoader(wds.WebLoader(ds, batch_size=None, num_workers=2), seed=0)

    loader = make()
    epoch0 = [keys_of(pb) for pb in loader]
    epoch1 = [keys_of(pb) for pb in loader]  # the next pass is epoch 1: another order
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == sorted(sum(epoch1, []))
    resumed = make()
    resumed.load_state_dict({"epoch": 1, "delivered": 2, "seed": 0, "scope": 1})
    assert [keys_of(pb) for pb in resumed] == epoch1[2:]

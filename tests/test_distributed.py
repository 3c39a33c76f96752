"""Two real ranks (gloo, file store) streaming WebDataset shards through 2 DataLoader workers each.

One spawn runs the per-rank and the across-rank epoch and breaks off a third pass mid-epoch with
its state saved; a second spawn (a fresh process group) resumes from that state; a third kills
a rank mid-epoch. The parent checks coverage, equal batch counts, per-rank noise, global
optimality, resume and the failure mode against single-process computations.
"""
from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
wds = pytest.importorskip("webdataset")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from noisepair import MatchedNoiseLoader  # noqa: E402
from noisepair.noise import draw_like  # noqa: E402
from noisepair.pairing import match  # noqa: E402

WORLD, WORKERS, SHARDS, PER_SHARD, BATCH, SHAPE = 2, 2, 8, 24, 8, (3, 4, 4)
BATCHES_PER_RANK = SHARDS * PER_SHARD // (WORLD * BATCH)  # 12
SEED, BREAK_AT = 7, 5


def write_shards(folder: str) -> str:
    rng = np.random.default_rng(0)
    pattern = os.path.join(folder, "shard-%03d.tar")
    with wds.ShardWriter(pattern, maxcount=PER_SHARD, verbose=0) as sink:
        for i in range(SHARDS * PER_SHARD):
            x = (rng.standard_normal(SHAPE) * 0.5 + (i % 3)).astype(np.float32)
            sink.write({"__key__": f"s{i:05d}", "x.npy": x, "cls": i % 3})
    return os.path.join(folder, "shard-{000..%03d}.tar" % (SHARDS - 1))


def make_loader(urls: str, **kw) -> MatchedNoiseLoader:
    """The recipe of the README: split_by_node, explicit shardshuffle, partial=False, with_epoch."""
    ds = (wds.WebDataset(urls, nodesplitter=wds.split_by_node, shardshuffle=False, empty_check=False)
          .decode().to_tuple("x.npy", "__key__").batched(BATCH, partial=False))
    inner = wds.WebLoader(ds, batch_size=None, num_workers=WORKERS).with_epoch(BATCHES_PER_RANK)
    return MatchedNoiseLoader(inner, seed=SEED, **kw)


def record(loader, limit=None):
    out = []
    for pb in loader:
        assert isinstance(pb.sample, torch.Tensor)  # WebLoader's DataLoader converts ndarrays
        out.append({"keys": list(pb.batch[1]), "x": pb.sample.numpy(), "z": pb.noise.numpy(),
                    "info": pb.info})
        if limit is not None and len(out) == limit:
            break
    return out


def _worker(rank: int, folder: str, urls: str, phase: str) -> None:
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store-{phase}", rank=rank,
                            world_size=WORLD, timeout=__import__("datetime").timedelta(seconds=60))
    result = {}
    try:
        if phase == "run":
            result["per_rank"] = record(make_loader(urls))
            result["across"] = record(make_loader(urls, across_ranks=True, timeout=30))
            loader = make_loader(urls, across_ranks=True, timeout=30)
            result["head"] = record(loader, limit=BREAK_AT)  # early break with prefetch running
            result["state"] = loader.state_dict()
            loader.close()
        elif phase == "resume":
            with open(os.path.join(folder, "run-%d.pkl" % rank), "rb") as f:
                state = pickle.load(f)["state"]
            loader = make_loader(urls, across_ranks=True, timeout=30)
            loader.load_state_dict(state)
            result["tail"] = record(loader)
        elif phase == "die":
            loader = make_loader(urls, across_ranks=True, timeout=20)
            start = time.monotonic()
            try:
                for i, _ in enumerate(loader):
                    if rank == 1 and i == 2:
                        with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
                            pickle.dump({"died": True}, f)
                        os._exit(0)  # a rank vanishes mid-epoch, without a word
                result["error"] = None
            except Exception as exc:  # what rank 0 must see: an error, not a hang
                result["error"] = f"{type(exc).__name__}: {exc}"
            result["seconds"] = time.monotonic() - start
            with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
                pickle.dump(result, f)
            os._exit(0)
    finally:
        with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    dist.destroy_process_group()


def spawn(folder: str, urls: str, phase: str) -> list[dict]:
    ctx = mp.start_processes(_worker, args=(folder, urls, phase), nprocs=WORLD, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"phase {phase!r} hung")
    out = []
    for r in range(WORLD):
        with open(os.path.join(folder, f"{phase}-{r}.pkl"), "rb") as f:
            out.append(pickle.load(f))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dist"))
    urls = write_shards(folder)
    run = spawn(folder, urls, "run")
    resume = spawn(folder, urls, "resume")
    return {"run": run, "resume": resume, "folder": folder, "urls": urls}


def _sqdist(x, z):
    return float(((x.reshape(len(x), -1) - z.reshape(len(z), -1)) ** 2).sum())


def test_every_sample_once_per_epoch_and_equal_batch_counts(runs):
    for mode in ("per_rank", "across"):
        per_rank = [r[mode] for r in runs["run"]]
        assert [len(b) for b in per_rank] == [BATCHES_PER_RANK] * WORLD
        keys = [k for batches in per_rank for b in batches for k in b["keys"]]
        assert len(keys) == SHARDS * PER_SHARD
        assert sorted(keys) == [f"s{i:05d}" for i in range(SHARDS * PER_SHARD)]
        assert all(len(b["keys"]) == BATCH for batches in per_rank for b in batches)


def test_each_rank_draws_its_own_noise(runs):
    z0 = np.stack([b["z"] for b in runs["run"][0]["per_rank"]])
    z1 = np.stack([b["z"] for b in runs["run"][1]["per_rank"]])
    assert not np.allclose(z0, z1)
    assert [b["info"]["rank"] for b in runs["run"][1]["per_rank"]] == [1] * BATCHES_PER_RANK
    # rank r's noise is a permutation of rank r's own seed stream
    for r in range(WORLD):
        b = runs["run"][r]["per_rank"][3]
        drawn = draw_like(torch.from_numpy(b["x"]), BATCH, seed=SEED, rank=r, epoch=0, index=3)
        assert np.array_equal(np.sort(drawn.numpy().ravel()), np.sort(b["z"].ravel()))


def test_across_ranks_equals_single_process_matching_of_the_global_batch(runs):
    across = [r["across"] for r in runs["run"]]
    per_rank = [r["per_rank"] for r in runs["run"]]
    gain = []
    for i in range(BATCHES_PER_RANK):
        xg = torch.from_numpy(np.concatenate([across[r][i]["x"] for r in range(WORLD)]))
        zg = torch.cat([draw_like(xg, BATCH, seed=SEED, rank=r, epoch=0, index=i) for r in range(WORLD)])
        expected = zg[match(xg, zg, "hungarian")].numpy()
        xg = xg.numpy()
        got = np.concatenate([across[r][i]["z"] for r in range(WORLD)])
        np.testing.assert_array_equal(got, expected)
        # the per-rank solution is one feasible global permutation: global is never worse
        same_x = np.concatenate([per_rank[r][i]["x"] for r in range(WORLD)])
        np.testing.assert_array_equal(same_x, xg)
        c_global = _sqdist(xg, got)
        c_local = _sqdist(xg, np.concatenate([per_rank[r][i]["z"] for r in range(WORLD)]))
        assert c_global <= c_local * (1 + 1e-6)
        gain.append(c_local - c_global)
        # one info format for every path: the keys of single-process pairing, the global batch
        for r in range(WORLD):
            assert across[r][i]["info"].keys() == per_rank[r][i]["info"].keys()
            assert across[r][i]["info"]["batch_size"] == WORLD * BATCH
            assert across[r][i]["info"]["gap_bound"] == 0.0
    assert sum(gain) > 0  # and strictly better somewhere


def test_resume_in_a_fresh_process_group_loses_and_repeats_nothing(runs):
    for r in range(WORLD):
        head, tail = runs["run"][r]["head"], runs["resume"][r]["tail"]
        full = runs["run"][r]["across"]
        assert runs["run"][r]["state"]["delivered"] == BREAK_AT
        assert len(head) + len(tail) == len(full)
        for got, want in zip(head + tail, full):
            assert got["keys"] == want["keys"]
            np.testing.assert_array_equal(got["z"], want["z"])


def test_a_rank_that_dies_is_an_error_not_a_hang(runs):
    out = spawn(runs["folder"], runs["urls"], "die")
    assert out[1] == {"died": True}
    assert out[0]["error"] is not None, "rank 0 finished an epoch its peer never saw"
    assert out[0]["seconds"] < 60

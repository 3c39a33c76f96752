"""persistent=k under torch.distributed: two real ranks (gloo), a DistributedSampler each,
matching per rank; every rank applies every rank's seed updates, so the seed tables stay one.
A second spawn resumes each rank from its state mid-epoch."""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import torch.distributed as dist
from ranks import join_gloo, spawn_ranks
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from noisepair import MatchedNoiseLoader

WORLD, N, B, K, EPOCHS, BREAK_AT = 2, 64, 8, 3, 3, 2


def make_loader(rank: int) -> MatchedNoiseLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(N, 6, generator=g) + torch.arange(N)[:, None] % 4, torch.arange(N)
    )
    sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=1)
    return MatchedNoiseLoader(DataLoader(data, batch_size=B, sampler=sampler), seed=3, persistent=K)


def run(rank: int, folder: str, phase: str) -> dict:
    loader, out = make_loader(rank), {}
    if phase == "resume":
        with open(os.path.join(folder, f"state-{rank}.pkl"), "rb") as f:
            loader.load_state_dict(pickle.load(f))
        out["rest"] = [pb.noise.numpy() for pb in loader]
        return out
    out["tables"], out["noise"], out["ids"] = [], [], []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for i, pb in enumerate(loader):
            out["noise"].append(pb.noise.numpy())
            out["ids"].append(pb.batch[1].tolist())
            if epoch == 1 and i == BREAK_AT - 1:
                state = loader.state_dict()
        out["tables"].append(loader.state_dict()["coupling"])
    with open(os.path.join(folder, f"state-{rank}.pkl"), "wb") as f:
        pickle.dump(state, f)
    return out


def _worker(rank: int, folder: str, phase: str) -> None:
    join_gloo(rank, WORLD, f"{folder}/store-{phase}")
    try:
        out = run(rank, folder, phase)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
        pickle.dump(out, f)


def spawn(folder: str, phase: str) -> list[dict]:
    return spawn_ranks(
        _worker, (folder, phase), WORLD, lambda r: os.path.join(folder, f"{phase}-{r}.pkl")
    )


def test_ranks_share_one_seed_table_and_resume_each_from_its_state(tmp_path):
    folder = str(tmp_path)
    ranks = spawn(folder, "train")
    for epoch in range(EPOCHS):  # one table on every rank, whatever items each rank saw
        assert ranks[0]["tables"][epoch] == ranks[1]["tables"][epoch]
    first = np.frombuffer(ranks[0]["tables"][0]["seeds"], dtype=np.uint32)
    last = np.frombuffer(ranks[0]["tables"][-1]["seeds"], dtype=np.uint32)
    assert not np.array_equal(first, last) and np.array_equal(np.sort(first), np.sort(last))
    for epoch in range(EPOCHS):  # each epoch every item once, over both ranks
        per_epoch = len(ranks[0]["ids"]) // EPOCHS
        seen = sum((r["ids"][epoch * per_epoch : (epoch + 1) * per_epoch] for r in ranks), [])
        assert sorted(sum(seen, [])) == list(range(N))
    resumed = spawn(folder, "resume")
    per_epoch = N // (WORLD * B)
    for r in range(WORLD):
        expected = ranks[r]["noise"][per_epoch + BREAK_AT : 2 * per_epoch]
        got = resumed[r]["rest"]
        assert len(got) == len(expected) and all(
            np.array_equal(a, b) for a, b in zip(got, expected)
        )

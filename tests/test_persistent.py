"""LOOM-CFM's persistent coupling through MatchedNoiseLoader(persistent=k): the rule (each item
picks one of its k seeds, the regenerated noise is matched, the matched seeds go back), the
item identities (sampler indices, index_key, webdataset keys), the invariants, resume."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from noisepair import MatchedNoiseLoader
from noisepair.backend import get_backend
from noisepair.persistent import SeedTable
from noisepair.testing import assert_gaussian

N, B, D = 64, 16, 8


def clustered(n=N, d=D):
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, d, generator=g)
    return centres[torch.arange(n) % 4] + 0.3 * torch.randn(n, d, generator=g)


def loader(persistent=3, shuffle=True, **kw):
    data = TensorDataset(clustered(), torch.arange(N))
    order = torch.Generator().manual_seed(1)
    inner = DataLoader(data, batch_size=B, shuffle=shuffle, generator=order)
    return MatchedNoiseLoader(inner, seed=0, persistent=persistent, **kw)


def squared_paths(loader, epochs):
    """Mean squared noise-to-sample distance of the pairs delivered, per epoch."""
    return [
        float(np.mean([((pb.sample - pb.noise) ** 2).sum(1).mean().item() for pb in loader]))
        for _ in range(epochs)
    ]


def test_the_noise_is_the_held_seeds_matched_and_the_matched_seeds_go_back():
    matched = loader(prefetch=0)
    coupling = matched._coupling
    for _ in range(3):  # a few epochs: seeds have moved
        list(matched)
    before = coupling.table.seeds[:N].copy()
    pb = next(iter(matched))
    _, rows, slots, held = coupling._undo[-1]  # the update this batch made
    after = coupling.table.seeds[:N]
    assert rows.tolist() == pb.batch[1].tolist() and np.array_equal(before[rows, slots], held)
    changed = np.zeros_like(before, dtype=bool)
    changed[rows, slots] = True
    assert np.array_equal(after[~changed], before[~changed])  # one slot per item, nothing else
    assert sorted(after[rows, slots].tolist()) == sorted(held.tolist())  # the seeds permuted
    regenerated = get_backend(pb.sample).normal_from_seeds(after[rows, slots], (D,), pb.sample)
    assert torch.equal(regenerated, pb.noise)  # each item now holds the seed of its noise
    assert sorted(after.ravel().tolist()) == sorted(before.ravel().tolist())


def test_the_coupling_improves_across_epochs_beyond_per_batch_matching():
    persistent = squared_paths(loader(persistent=3), 25)
    per_batch = squared_paths(loader(persistent=None), 3)
    drawn = squared_paths(loader(persistent=None, method="random"), 3)
    assert persistent[0] < np.mean(drawn)  # matched from the first batch on
    assert np.mean(persistent[-5:]) < 0.97 * np.mean(per_batch)  # then better than per batch


def test_the_noise_is_drawn_from_the_tables_gaussian_set():
    """The N x k seeds are independent draws, so the noise they make is N(0, I); every vector
    delivered, epoch after epoch, is one of them (seeds move, none is made or lost)."""
    matched = loader(persistent=6)
    delivered = torch.cat([pb.noise for _ in range(10) for pb in matched])
    table = matched._coupling.table
    noise_set = get_backend(delivered).normal_from_seeds(
        table.seeds[: len(table)].ravel(), (D,), delivered
    )
    assert_gaussian(noise_set)
    known = {bytes(row.numpy()) for row in noise_set}
    assert all(bytes(row.numpy()) in known for row in delivered)


def test_the_info_compares_with_random_pairing():
    pb = next(iter(loader()))
    x, z = pb.sample.double(), pb.noise.double()
    expected = ((x[:, None] - z[None]) ** 2).sum(-1).mean().item()  # over all pairs
    assert pb.info["cost_random"] == pytest.approx(expected, rel=1e-9)
    assert pb.info["cost_ratio"] < 1 and "cost_held" in pb.info


@pytest.mark.parametrize("prefetch", [0, 2, 8])
@pytest.mark.parametrize("scope", [1, 2])
def test_resume_gives_identical_noise_and_the_table_loads_with_weights_only(prefetch, scope):
    def make():
        return loader(prefetch=prefetch, scope=scope)

    full = make()
    list(full)
    reference = [pb.noise.clone() for pb in full]
    first = make()
    list(first)
    it = iter(first)
    got = [next(it).noise.clone() for _ in range(3)]
    buffer = io.BytesIO()
    torch.save({"loader": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["loader"]
    assert len(state["coupling"]["seeds"]) == N * 3 * 4  # N x k 32-bit seeds
    it.close()
    resumed = make()
    resumed.load_state_dict(state)
    got += [pb.noise.clone() for pb in resumed]
    assert len(got) == len(reference) and all(torch.equal(a, b) for a, b in zip(got, reference))


def test_a_broken_pass_restarts_its_epoch_with_the_table_of_its_position():
    matched = loader(prefetch=8)
    it = iter(matched)
    next(it)
    it.close()  # the thread had paired ahead: those updates are taken back
    again = loader(prefetch=0)
    it = iter(again)
    next(it)
    it.close()
    assert matched.state_dict()["coupling"] == again.state_dict()["coupling"]
    assert all(torch.equal(a.noise, b.noise) for a, b in zip(matched, again, strict=True))


class Indexed(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": clustered()[i], "idx": i}


def test_item_identities_from_the_sampler_with_workers_or_from_index_key():
    by_sampler = MatchedNoiseLoader(
        DataLoader(Indexed(), batch_size=B, shuffle=True, num_workers=2),
        seed=0,
        persistent=2,
        prefetch=0,
    )
    by_key = MatchedNoiseLoader(
        DataLoader(Indexed(), batch_size=B, shuffle=True, num_workers=2),
        seed=0,
        persistent=2,
        prefetch=0,
        index_key="idx",
    )
    for matched in (by_sampler, by_key):
        for _ in range(2):
            for pb in matched:  # the rows updated for a batch are its own items'
                assert matched._coupling._undo[-1][1].tolist() == pb.batch["idx"].tolist()
    stateful = StatefulDataLoader(Indexed(), batch_size=B)
    with pytest.raises(ValueError, match="pass index_key="):
        MatchedNoiseLoader(stateful, persistent=2)
    assert next(iter(MatchedNoiseLoader(stateful, persistent=2, index_key="idx"))) is not None


def test_bad_identities_get_clear_errors():
    def batches(ids):
        yield {"x": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "i": ids}

    cases = [
        (np.array([0, 1, 1, 2]), ValueError, "appear twice in one match group"),
        (np.array([0.0, 1.0, 2.0, 3.0]), TypeError, "integers .* or strings"),
        (np.array([0, 1, 2]), ValueError, "gave 3 identities for a batch of 4"),
        (np.array([0, -1, 2, 3]), ValueError, "non-negative item indices"),
    ]
    for ids, kind, message in cases:
        with pytest.raises(kind, match=message):
            list(MatchedNoiseLoader(batches(ids), persistent=2, index_key="i", prefetch=0))
    with pytest.raises(KeyError, match="index_key='j' is not a field"):
        list(MatchedNoiseLoader(batches(np.arange(4)), persistent=2, index_key="j", prefetch=0))
    with pytest.raises(ValueError, match="pass index_key="):
        MatchedNoiseLoader(batches(np.arange(4)), persistent=2)
    with pytest.raises(ValueError, match="does not combine with pool="):
        MatchedNoiseLoader([], persistent=2, pool=10)
    with pytest.raises(ValueError, match="needs a permutation matcher"):
        MatchedNoiseLoader([], persistent=2, method="knn", index_key="i")


def test_webdataset_items_by_their_keys(tmp_path):
    rng = np.random.default_rng(1)
    with wds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=16, verbose=0) as sink:
        for i in range(48):
            sink.write({"__key__": f"k{i:04d}", "x.npy": rng.normal(size=5).astype(np.float32)})
    urls = str(tmp_path / "s-{000..002}.tar")

    def make():
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
        ds = ds.to_tuple("x.npy", "__key__").batched(8)
        return MatchedNoiseLoader(ds, seed=0, persistent=3, index_key=1)

    matched = make()
    for _ in range(3):
        list(matched)
    table = matched._coupling.table
    assert len(table) == 48 and sorted(table.keys) == [f"k{i:04d}" for i in range(48)]
    it = iter(matched)
    next(it)
    state = matched.state_dict()
    rest = [pb.noise for pb in it]
    resumed = make()
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, b.noise) for a, b in zip(rest, resumed, strict=True))


def test_jax_arrays_keep_their_framework():
    def batches():
        for j in range(4):
            x = jnp.asarray(clustered()[j * B : (j + 1) * B].numpy())
            yield {"x": x, "idx": np.arange(j * B, (j + 1) * B)}

    out = list(MatchedNoiseLoader(batches(), seed=0, persistent=2, index_key="idx"))
    assert len(out) == 4 and all(isinstance(pb.noise, type(pb.sample)) for pb in out)


def test_the_seed_table_grows_by_index_and_by_key():
    table = SeedTable(k=2, seed=3)
    rows = table.rows(np.array([5, 0]))
    assert rows.tolist() == [5, 0] and len(table) == 6
    fresh = SeedTable(k=2, seed=3, rows=6)
    assert np.array_equal(table.seeds[:6], fresh.seeds[:6])  # a row's seeds: (seed, row, slot)
    named = SeedTable(k=2, seed=3)
    assert named.rows(np.array(["b", "a", "b"])).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="keep one kind of item identity"):
        named.rows(np.array([1]))
    state = named.state_dict()
    again = SeedTable(k=2, seed=0)
    again.load_state_dict(state)
    assert again.keys == named.keys and np.array_equal(again.seeds, named.seeds[:2])
    with pytest.raises(ValueError, match="persistent=2, this loader has persistent=3"):
        SeedTable(k=3, seed=0).load_state_dict(state)

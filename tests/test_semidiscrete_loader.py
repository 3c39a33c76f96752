"""MatchedNoiseLoader(loader, coupling=sd): SD-FM's semi-discrete coupling through the loader.
Each batch comes with the very noise that chose its samples; a pass positions the sampler at
its match group, so a resume reads one batch, workers or not; JAX arrays keep their framework."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from noisepair import MatchedNoiseLoader, SemiDiscrete

N, B = 256, 32


@pytest.fixture(scope="module")
def fitted():
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(N, 4, generator=g) + torch.randn(N, 1, generator=g).sign()
    return x, SemiDiscrete.fit(x, tol=0.05, seed=0)


def make(fitted, workers=0, **kw):
    x, sd = fitted
    sampler = sd.batch_sampler(B, seed=1)
    data = TensorDataset(x, torch.arange(N))
    inner = DataLoader(data, batch_sampler=sampler, num_workers=workers)
    return MatchedNoiseLoader(inner, coupling=sd, **kw)


def test_each_batch_comes_with_the_noise_that_chose_its_samples(fitted):
    x, sd = fitted
    for pb in make(fitted):
        assert torch.equal(torch.as_tensor(sd.assign(pb.noise)), pb.batch[1])
        assert pb.info["method"] == "semidiscrete" and pb.info["cost_ratio"] < 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reads_from_the_group_and_gives_the_same_batches(fitted, workers):
    full = make(fitted, workers)
    list(full)
    epoch1 = list(full)
    first = make(fitted, workers)
    list(first)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    it.close()
    resumed = make(fitted, workers)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    got = head + list(resumed)
    assert len(got) == len(epoch1) == N // B
    for a, b in zip(got, epoch1):
        assert torch.equal(a.noise, b.noise) and torch.equal(a.batch[1], b.batch[1])


def test_a_broken_pass_restarts_its_epoch(fitted):
    loader = make(fitted)
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    it.close()
    again = list(loader)
    assert all(torch.equal(a.noise, b.noise) for a, b in zip(first, again))
    assert {pb.info["epoch"] for pb in again} == {0}


def test_jax_arrays_keep_their_framework(fitted):
    x, sd = fitted
    data = x.numpy()
    inner = DataLoader(
        list(range(N)),
        batch_sampler=sd.batch_sampler(B, seed=2),
        collate_fn=lambda ids: {"x": jnp.asarray(data[ids]), "id": np.asarray(ids)},
    )
    for pb in MatchedNoiseLoader(inner, coupling=sd, key="x"):
        assert isinstance(pb.noise, type(pb.sample)) and pb.noise.dtype == pb.sample.dtype
        chose = sd.assign(torch.as_tensor(np.asarray(pb.noise)))  # sd was fitted on torch
        assert np.array_equal(chose.numpy(), pb.batch["id"])


def test_coupling_errors_name_the_fix(fitted):
    x, sd = fitted
    plain = DataLoader(TensorDataset(x), batch_size=B)
    with pytest.raises(ValueError, match="batch_sampler=sd.batch_sampler"):
        MatchedNoiseLoader(plain, coupling=sd)
    with pytest.raises(TypeError, match="takes a noisepair.SemiDiscrete"):
        MatchedNoiseLoader(plain, coupling="sd")
    with pytest.raises(ValueError, match="does not combine with scope>1, group_by="):
        make(fitted, scope=2, group_by=1)

"""SemiDiscrete: the search is the argmin of cost minus potential, the fit makes the frequencies
uniform (a chi-square test) and agrees with ott-jax's, and the batch sampler's noise, indices,
ranks and resume are exact."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from noisepair import SemiDiscrete
from noisepair.semidiscrete import SemiDiscreteBatchSampler

ALPHA = 1e-3  # false-alarm rate of the uniformity test for one seed (the seed is fixed)


def mixture(n, d, seed=0, scale=1.0):
    """The regime map's 10-mode Gaussian mixture (coordinate variance about 1)."""
    centres = np.random.default_rng([4321, d]).uniform(-1.7, 1.7, (10, d))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 10, n)] + 0.1 * rng.standard_normal((n, d))
    return (scale * x).astype(np.float32)


def objective(x, g, z):
    """(B, N) |z - x_j|^2 - g_j in float64."""
    x, z = x.reshape(len(x), -1).astype(np.float64), z.reshape(len(z), -1).astype(np.float64)
    return ((z[:, None, :] - x[None]) ** 2).sum(-1) - np.asarray(g, np.float64)[None]


@pytest.fixture(scope="module")
def fitted():
    x = mixture(64, 4)
    return x, SemiDiscrete.fit(x, tol=1e-3, seed=1)


# -- the search --------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    b=st.integers(1, 30),
    d=st.integers(1, 6),
    block=st.sampled_from([4, 64, 4096, 2**26]),
    seed=st.integers(0, 2**16),
)
def test_assign_is_the_argmin_of_cost_minus_potential(n, b, d, block, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    g = rng.standard_normal(n)
    z = rng.standard_normal((b, d)).astype(np.float32)
    sd = SemiDiscrete(x, g, block_bytes=block)  # tiny blocks: one data column at a time
    idx = sd.assign(z)
    assert idx.dtype == np.int64 and idx.shape == (b,)
    obj = objective(x, sd.potentials, z)
    chosen = obj[np.arange(b), idx]
    np.testing.assert_allclose(chosen, obj.min(1), rtol=0, atol=1e-4 * (1 + np.abs(obj).max()))


def test_item_shapes_torch_and_its_device():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2, 3, 2)).astype(np.float32)
    g = rng.standard_normal(50)
    z = rng.standard_normal((20, 2, 3, 2)).astype(np.float32)
    sd = SemiDiscrete(x, g)
    idx = sd.assign(z)
    sdt = SemiDiscrete(torch.from_numpy(x), torch.from_numpy(g))
    idx_t = sdt.assign(torch.from_numpy(z))
    assert isinstance(idx_t, torch.Tensor) and idx_t.dtype == torch.int64
    assert idx_t.device == torch.from_numpy(x).device
    assert isinstance(sdt.potentials, torch.Tensor)
    np.testing.assert_array_equal(idx_t.numpy(), idx)
    assert sd.item_shape == (2, 3, 2)


def test_numpy_path_runs_with_torch_unimportable():
    script = textwrap.dedent("""
        import importlib.abc, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch is absent on this machine")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from noisepair import SemiDiscrete
        x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
        sd = SemiDiscrete.fit(x, tol=0.05)
        batches = list(sd.batch_sampler(8, seed=1))
        assert sd.report.converged and len(batches) == 5 and "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_bad_input_is_named():
    x = mixture(20, 3)
    sd = SemiDiscrete(x, np.zeros(20))
    with pytest.raises(ValueError, match="items of 3 values"):
        sd.assign(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="numpy array like the data"):
        sd.assign(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"one value per data point \(20,\)"):
        SemiDiscrete(x, np.zeros(19))
    with pytest.raises(ValueError, match="finite"):
        SemiDiscrete(x, np.full(20, np.nan))
    with pytest.raises(TypeError, match="floating-point"):
        SemiDiscrete(x.astype(np.int64), np.zeros(20))
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        SemiDiscrete(x[:, 0], np.zeros(20))
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        SemiDiscrete(bad, np.zeros(20))
    twice = np.concatenate([x, x[7:8]])
    with pytest.raises(ValueError, match="rows 7 and 20 are equal"):
        SemiDiscrete.fit(twice)
    with pytest.raises(ValueError, match="tol"):
        SemiDiscrete.fit(x, tol=0)
    with pytest.raises(ValueError, match="batch_size"):
        SemiDiscrete.fit(x, batch_size=0)


# -- the fit -----------------------------------------------------------------------------------
def test_fitted_frequencies_are_uniform_by_a_chi_square_test(fitted):
    """Pearson's test of the counts of 100 N fresh draws against 1/N each: a fitted coupling
    passes at ALPHA, the map it started from (no fit) fails, so the test can tell them apart."""
    x, sd = fitted
    assert sd.report.converged and sd.report.chi2 <= 1e-3
    n, draws = len(x), 100 * len(x)
    z = np.random.default_rng(12345).standard_normal((draws, x.shape[1])).astype(np.float32)
    counts = np.bincount(sd.assign(z), minlength=n)
    assert stats.chisquare(counts).pvalue > ALPHA
    unfitted = SemiDiscrete(x)  # each noise to its nearest point
    assert stats.chisquare(np.bincount(unfitted.assign(z), minlength=n)).pvalue < ALPHA
    chi2, se = sd.marginal_error(2**16)
    assert chi2 < 2e-3 + 4 * se
    assert unfitted.marginal_error(2**14)[0] > 0.1


def test_fit_on_data_far_from_the_noise_scale():
    """Data 10 times wider than the noise and 3 times narrower converge by the same defaults."""
    for scale in (10.0, 0.3):
        sd = SemiDiscrete.fit(mixture(100, 8, seed=2, scale=scale), tol=1e-2)
        assert sd.report.converged, scale
        assert sd.marginal_error(2**15)[0] < 2e-2


def test_fit_in_torch():
    x = torch.from_numpy(mixture(40, 6, seed=3))
    sd = SemiDiscrete.fit(x, tol=3e-2)
    assert sd.report.converged
    assert isinstance(sd.potentials, torch.Tensor) and sd.potentials.dtype == torch.float64
    assert abs(float(sd.potentials.mean())) < 1e-9
    assert sd.marginal_error(2**15)[0] < 5e-2


def test_fit_that_runs_out_of_draws_warns_and_says_so():
    with pytest.warns(RuntimeWarning, match="raise max_draws"):
        sd = SemiDiscrete.fit(mixture(100, 4), tol=1e-4, max_draws=5000)
    assert not sd.report.converged and sd.report.draws >= 5000
    assert sd.report.history[-1][2] == sd.report.chi2 > 1e-4


def test_potentials_agree_with_ott_jax():
    """ott-jax 0.6.0's SemidiscreteSolver (epsilon = 0, Adam with a cosine decay) on the same
    data: the potentials correlate (after removing the constant) and fresh noise goes to the
    same point."""
    jax = pytest.importorskip("jax")
    jnp, jr = jax.numpy, jax.random
    optax = pytest.importorskip("optax")
    pytest.importorskip("ott")
    from ott.geometry import semidiscrete_pointcloud as sdpc
    from ott.problems.linear import semidiscrete_linear_problem as sdlp
    from ott.solvers.linear import semidiscrete

    x = mixture(32, 3, seed=4)
    ours = SemiDiscrete.fit(x, tol=1e-3)
    iters = 2000
    solver = semidiscrete.SemidiscreteSolver(
        num_iterations=iters,
        batch_size=128,
        optimizer=optax.adam(optax.cosine_decay_schedule(0.01, iters, alpha=0.01)),
        threshold=0.0,
        error_eval_every=iters,
        error_batch_size=4096,
    )
    geom = sdpc.SemidiscretePointCloud(jr.normal, jnp.asarray(x), epsilon=0.0)
    g_ott = np.asarray(jax.jit(solver)(jr.key(0), sdlp.SemidiscreteLinearProblem(geom)).g)
    g = np.asarray(ours.potentials)
    corr = np.corrcoef(g - g.mean(), g_ott - g_ott.mean())[0, 1]
    z = np.random.default_rng(7).standard_normal((20000, 3)).astype(np.float32)
    agree = np.mean(ours.assign(z) == objective(x, g_ott, z).argmin(1))
    assert corr > 0.99 and agree > 0.95, (corr, agree)


# -- the batch sampler -------------------------------------------------------------------------
def test_sampler_batches_are_the_assignment_of_their_noise(fitted):
    x, sd = fitted
    sampler = sd.batch_sampler(16, seed=3, rank=0, world_size=1)
    assert len(sampler) == math.ceil(64 / 16)
    batches = list(sampler)
    assert len(batches) == 4 and all(len(b) == 16 for b in batches)
    assert all(isinstance(i, int) for b in batches for i in b)
    for k, batch in enumerate(batches):
        z = sampler.noise(0, k)
        assert z.shape == (16, 4) and z.dtype == np.float32
        np.testing.assert_array_equal(batch, sd.assign(z))
        obj = objective(x, sd.potentials, z)
        np.testing.assert_allclose(obj[np.arange(16), batch], obj.min(1), atol=1e-3)


def test_sampler_noise_in_another_framework_is_the_same_values(fitted):
    x, sd = fitted
    sampler = sd.batch_sampler(8, seed=5)
    z = sampler.noise(2, 1)
    like = torch.zeros(8, 2, 2, dtype=torch.float32)
    zt = sampler.noise(2, 1, like=like)
    assert isinstance(zt, torch.Tensor) and zt.shape == (8, 2, 2) and zt.dtype == torch.float32
    np.testing.assert_array_equal(zt.reshape(8, 4).numpy(), z)
    assert sampler.noise(2, 1, like=torch.zeros(8, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="hold 5 values"):
        sampler.noise(2, 1, like=np.zeros((8, 5), np.float32))


def test_with_a_torch_dataloader(fitted):
    x, sd = fitted
    sampler = sd.batch_sampler(10, seed=9)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.arange(len(x))),
        batch_sampler=sampler,
    )
    assert len(loader) == math.ceil(64 / 10)
    for k, (xb, ib) in enumerate(loader):
        np.testing.assert_array_equal(ib.numpy(), sampler.indices(0, k))
        np.testing.assert_array_equal(xb.numpy(), x[sampler.indices(0, k)])
    assert k == len(loader) - 1


def test_epochs_ranks_and_seeds_draw_their_own_noise(fitted):
    _, sd = fitted
    first = sd.batch_sampler(8, seed=1, rank=0, world_size=2)
    assert len(first) == math.ceil(64 / 16)
    same = sd.batch_sampler(8, seed=1, rank=0, world_size=2)
    other_rank = sd.batch_sampler(8, seed=1, rank=1, world_size=2)
    other_seed = sd.batch_sampler(8, seed=2, rank=0, world_size=2)
    z = first.noise(0, 0)
    np.testing.assert_array_equal(same.noise(0, 0), z)
    for different in (other_rank.noise(0, 0), other_seed.noise(0, 0), first.noise(1, 0)):
        assert not np.array_equal(different, z)
    epoch0 = list(first)
    assert first.state_dict() == {"epoch": 0, "index": 4}
    it = iter(first)  # after a complete pass: the next epoch, from the moment iter() returns
    assert first.state_dict() == {"epoch": 1, "index": 0}
    assert list(it) == [first.indices(1, k).tolist() for k in range(4)]
    first.set_epoch(0)
    assert list(first) == epoch0
    with pytest.raises(ValueError, match="rank"):
        sd.batch_sampler(8, rank=2, world_size=2)


@settings(max_examples=25, deadline=None)
@given(stop=st.integers(0, 9), epoch=st.integers(0, 3))
def test_resume_from_state_dict_yields_the_same_batches(fitted, stop, epoch):
    _, sd = fitted
    run = SemiDiscreteBatchSampler(sd, 7, seed=4, num_batches=5)
    run.set_epoch(epoch)
    whole = list(run) + list(run)  # two epochs
    interrupted = SemiDiscreteBatchSampler(sd, 7, seed=4, num_batches=5)
    interrupted.set_epoch(epoch)
    seen = []  # the first `stop` batches handed out, across the epoch's end
    while len(seen) < stop:
        for batch in interrupted:
            seen.append(batch)
            if len(seen) == stop:
                break
    state = interrupted.state_dict()
    assert set(state) == {"epoch", "index"}
    resumed = SemiDiscreteBatchSampler(sd, 7, seed=4, num_batches=5)
    resumed.load_state_dict(state)
    rest = []
    while len(seen) + len(rest) < len(whole):
        rest.extend(resumed)
    assert seen + rest == whole


def test_an_interrupted_pass_goes_on_where_it_stopped(fitted):
    _, sd = fitted
    sampler = sd.batch_sampler(8, seed=0)
    it = iter(sampler)
    head = [next(it), next(it)]
    del it
    tail = list(sampler)
    assert head + tail == [sampler.indices(0, k).tolist() for k in range(len(sampler))]
    with pytest.raises(ValueError, match="index"):
        sampler.load_state_dict({"epoch": 0, "index": 99})


def test_constructor_restores_a_saved_fit(fitted, tmp_path):
    x, sd = fitted
    np.save(tmp_path / "g.npy", np.asarray(sd.potentials))
    again = SemiDiscrete(x, np.load(tmp_path / "g.npy"))
    z = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    np.testing.assert_array_equal(again.assign(z), sd.assign(z))
    assert again.report is None
    shifted = SemiDiscrete(x, np.asarray(sd.potentials) + 5.0)  # defined up to a constant
    assert abs(float(np.asarray(shifted.potentials).mean())) < 1e-9

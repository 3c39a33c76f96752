"""JAX arrays through the backend layer, on JAX's CPU backend (the code path a GPU/TPU runs too):
noise from fold_in keys, the jitted cost, host solves, JAX index arrays out, the adapters against
the numpy path, and the checks. (Loading JAX batches and grain pipelines: the loader's tests.)"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noisepair.adapters import DDPM, Consistency, RectifiedFlow  # noqa: E402

import noisepair  # noqa: E402
from noisepair.batch import PairedBatch  # noqa: E402
from noisepair.matchers import get_matcher, is_permutation  # noqa: E402
from noisepair.noise import draw_like  # noqa: E402
from noisepair.pairing import pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PERMUTATION_METHODS = ["hungarian", "emd", "sinkhorn", "greedy", "random", "auction", "auto"]


def _data(b=48, shape=(3, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1.0, 1.0], size=(b,) + (1,) * len(shape))
    x = (rng.normal(size=(b, *shape)) * 0.5 + centres).astype(np.float32)
    z = rng.normal(size=(b, *shape)).astype(np.float32)
    return x, z


# -- noise ----------------------------------------------------------------------------------------
def test_noise_is_a_jax_array_like_the_sample_and_a_pure_function_of_the_seed_parts():
    x = jnp.zeros((16, 3, 8, 8), dtype=jnp.bfloat16)
    z = draw_like(x, 16, seed=7, rank=1, epoch=2, index=3)
    assert isinstance(z, jax.Array) and z.shape == x.shape and z.dtype == jnp.bfloat16
    assert z.sharding == x.sharding
    again = draw_like(x, 16, seed=7, rank=1, epoch=2, index=3)
    np.testing.assert_array_equal(np.asarray(z, np.float32), np.asarray(again, np.float32))
    for other in ({"seed": 8}, {"rank": 0}, {"epoch": 1}, {"index": 4}):
        parts = dict(seed=7, rank=1, epoch=2, index=3) | other
        assert not np.array_equal(
            np.asarray(draw_like(x, 16, **parts), np.float32), np.asarray(z, np.float32)
        )
    big = draw_like(jnp.zeros((4, 2)), 4, seed=2**40 + 5)  # seeds beyond 32 bits are not truncated
    assert not np.array_equal(np.asarray(big), np.asarray(draw_like(jnp.zeros((4, 2)), 4, seed=5)))
    report = noisepair.gaussianity_report(draw_like(jnp.zeros((4000, 32)), 4000, seed=0))
    assert report.passed


# -- pairing --------------------------------------------------------------------------------------
def test_cost_matrix_is_jitted_jax_and_equals_numpy():
    x, z = _data(40, (24,))
    for precision in ("float32", "float16", "bfloat16"):
        c = noisepair.cost_matrix(jnp.asarray(x), jnp.asarray(z), precision=precision)
        assert isinstance(c, jax.Array) and c.dtype == jnp.float32
        ref = noisepair.cost_matrix(x, z, precision="float64")
        rtol = 1e-5 if precision == "float32" else 2e-2
        np.testing.assert_allclose(np.asarray(c), ref, rtol=rtol, atol=rtol * ref.mean())
    chunked = noisepair.cost_matrix(jnp.asarray(x), jnp.asarray(z), chunk=7)
    np.testing.assert_allclose(
        np.asarray(chunked),
        np.asarray(noisepair.cost_matrix(jnp.asarray(x), jnp.asarray(z))),
        rtol=1e-6,
    )
    euclid = noisepair.cost_matrix(jnp.asarray(x), jnp.asarray(z), metric="euclidean")
    np.testing.assert_allclose(np.asarray(euclid), np.sqrt(ref), rtol=1e-4)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        noisepair.cost_matrix(jnp.asarray(x), jnp.asarray(z), precision="float64")


@pytest.mark.parametrize("method", PERMUTATION_METHODS)
def test_match_on_jax_returns_a_jax_permutation_equal_to_numpy(method):
    x, z = _data()
    perm = noisepair.match(jnp.asarray(x), jnp.asarray(z), method)
    assert isinstance(perm, jax.Array) and jnp.issubdtype(perm.dtype, jnp.integer)
    assert is_permutation(np.asarray(perm), len(x))
    if method in ("hungarian", "emd", "auto", "random"):
        np.testing.assert_array_equal(np.asarray(perm), noisepair.match(x, z, method))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 24),
    d=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["hungarian", "greedy", "auction"]),
)
def test_jax_matching_is_a_permutation_that_keeps_the_noise(b, d, seed, method):
    """The invariant: the noise emitted is the noise drawn, reordered, and exact is optimal."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32) * rng.uniform(0.1, 4))
    z = draw_like(x, b, seed=seed)
    idx, info = pair(x, z, get_matcher(method))
    assert isinstance(idx, jax.Array) and is_permutation(np.asarray(idx), b)
    emitted = np.sort(np.asarray(z[idx]).reshape(-1))
    np.testing.assert_array_equal(emitted, np.sort(np.asarray(z).reshape(-1)))
    if method == "hungarian":
        _, ref = pair(np.asarray(x), np.asarray(z), get_matcher(method))
        assert info["cost"] == pytest.approx(ref["cost"], rel=1e-5, abs=1e-6)


def test_jax_groups_knn_and_overflow():
    x, z = _data(60, (6,))
    labels = jnp.asarray(np.arange(60) % 3)
    perm = noisepair.match(jnp.asarray(x), jnp.asarray(z), groups=labels)
    np.testing.assert_array_equal(np.asarray(perm), noisepair.match(x, z, groups=np.arange(60) % 3))
    zk = np.random.default_rng(1).normal(size=(180, 6)).astype(np.float32)
    knn = noisepair.match(jnp.asarray(x), jnp.asarray(zk), "knn", k=3)
    assert isinstance(knn, jax.Array)
    np.testing.assert_array_equal(np.asarray(knn), noisepair.match(x, zk, "knn", k=3))
    with pytest.raises(ValueError, match="NaN labels"):
        noisepair.match(jnp.asarray(x), jnp.asarray(z), groups=jnp.where(labels == 1, jnp.nan, 0.0))
    with pytest.raises(ValueError, match="overflows float32"):
        noisepair.match(jnp.asarray(x) * 3e19, jnp.asarray(z))


def test_mixed_frameworks_are_refused():
    x, z = _data(8, (4,))
    with pytest.raises(TypeError, match="different frameworks: jax .* and numpy"):
        noisepair.match(jnp.asarray(x), z)


# -- adapters -------------------------------------------------------------------------------------
def _pbs(shape=(3, 4, 4)):
    x, z = _data(24, shape, seed=3)
    return PairedBatch(x, z, None), PairedBatch(jnp.asarray(x), jnp.asarray(z), None)


def _close(a, b, rtol=1e-5):
    assert isinstance(a, jax.Array)
    np.testing.assert_allclose(np.asarray(a), b, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("convention", ["rf", "sd3"])
def test_rectified_flow_on_jax_equals_numpy(convention):
    pb_np, pb_jax = _pbs()
    t = np.random.default_rng(0).random(24).astype(np.float32)
    rf = RectifiedFlow(convention, shift=3.0)
    ref, got = rf(pb_np, t=t), rf(pb_jax, t=jnp.asarray(t))
    for name in ("x_t", "t", "target"):
        _close(getattr(got, name), getattr(ref, name))
    for sampler in ("uniform", "logit_normal"):  # drawn times: from the key, reproducibly
        rf = RectifiedFlow(convention, sampler, shift=3.0)
        a, b = rf(pb_jax, generator=jax.random.key(1)), rf(pb_jax, generator=jax.random.key(1))
        np.testing.assert_array_equal(np.asarray(a.t), np.asarray(b.t))
        assert a.t.shape == (24,) and bool(((a.t >= 0) & (a.t <= 1)).all())
        t = np.asarray(a.t)
        _close(a.x_t, rf(pb_np, t=t).x_t, rtol=1e-4)
    with pytest.raises(TypeError, match=r"jax.random.key"):
        RectifiedFlow()(pb_jax)
    with pytest.raises(TypeError, match="jax.random key"):
        RectifiedFlow()(pb_jax, generator=np.random.default_rng(0))


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddpm_on_jax_equals_numpy(schedule, prediction):
    pb_np, pb_jax = _pbs()
    steps = np.random.default_rng(1).integers(0, 1000, 24)
    ddpm = DDPM(beta_schedule=schedule, prediction_type=prediction)
    ref, got = ddpm(pb_np, timesteps=steps), ddpm(pb_jax, timesteps=jnp.asarray(steps))
    for name in ("x_t", "target"):
        _close(getattr(got, name), getattr(ref, name))
    np.testing.assert_array_equal(np.asarray(got.t), steps)


def test_ddpm_on_jax_splits_the_key_between_its_draws():
    pb_np, pb_jax = _pbs()
    key = jax.random.key(4)
    plain = DDPM()(pb_jax, generator=key)
    assert bool(((plain.t >= 0) & (plain.t < 1000)).all())
    offset = DDPM(noise_offset=0.1)(pb_jax, generator=key)
    both = DDPM(noise_offset=0.1, input_perturbation=0.1)(pb_jax, generator=key)
    np.testing.assert_array_equal(np.asarray(plain.t), np.asarray(both.t))  # same key, same t
    extra = np.asarray(offset.target) - np.asarray(pb_jax.noise)
    # offset noise: one value per (sample, channel), constant over the spatial dims
    np.testing.assert_allclose(extra, np.broadcast_to(extra[:, :, :1, :1], extra.shape), atol=1e-6)
    perturbation = np.asarray(both.x_t) - np.asarray(offset.x_t)
    assert np.abs(perturbation).max() > 0 and not np.allclose(
        perturbation / np.abs(perturbation).max(), extra / np.abs(extra).max(), atol=0.1
    )


def test_consistency_on_jax_equals_numpy():
    pb_np, pb_jax = _pbs()
    ct = Consistency(total_steps=1000)
    got = ct(pb_jax, step=500, generator=jax.random.key(2))
    sigmas = ct.sigmas(500)
    t, s = np.asarray(got.t), np.asarray(got.s)
    i = np.searchsorted(sigmas.astype(np.float32), s)  # the drawn interval (sigma_i, sigma_i+1)
    np.testing.assert_allclose(t, sigmas[i + 1].astype(np.float32), rtol=1e-6)
    x, z = pb_np.sample, pb_np.noise
    _close(got.x_t, x + t[:, None, None, None] * z, rtol=1e-5)
    _close(got.x_s, x + s[:, None, None, None] * z, rtol=1e-5)
    _close(got.weight, 1 / (t - s), rtol=1e-4)
    _close(ct.c_out(got.t), ct.c_out(t), rtol=1e-5)
    _close(ct.pseudo_huber(pb_jax.sample, pb_jax.noise), ct.pseudo_huber(x, z), rtol=1e-5)


# -- checks and environments ----------------------------------------------------------------------
def test_checks_accept_jax_noise():
    z = draw_like(jnp.zeros((500, 16)), 500, seed=3)
    report = noisepair.gaussianity_report(z)
    assert report.passed and report.n == 500 and report.dim == 16
    monitor = noisepair.NoiseMonitor()
    info = {"batch_size": 500, "cost": 1.0, "cost_random": 2.0}
    monitor.update(PairedBatch(jnp.zeros((500, 16)), z, None, info=info))
    report, gain = monitor.report()
    assert report.passed and gain.ratio == 0.5


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is absent on this machine")
sys.meta_path.insert(0, Block())
"""


def _run(blocked, body):
    script = _BLOCK.format(blocked=set(blocked)) + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_jax_only_environment_without_torch():
    _run(
        {"torch"},
        """
        import jax, jax.numpy as jnp, numpy as np
        import noisepair
        from noisepair.adapters import DDPM, Consistency, RectifiedFlow
        from noisepair.batch import PairedBatch
        from noisepair.noise import draw_like
        x = jax.random.normal(jax.random.key(0), (32, 3, 4, 4))
        z = draw_like(x, 32, seed=0)
        for method in ("hungarian", "emd", "sinkhorn", "greedy", "random", "auto", "auction"):
            assert isinstance(noisepair.match(x, z, method), jax.Array)
        pb = PairedBatch(x, z, None)
        key = jax.random.key(1)
        for adapter in (RectifiedFlow(), RectifiedFlow("sd3", "logit_normal"), DDPM(),
                        Consistency()):
            adapter(pb, generator=key)
        assert noisepair.gaussianity_report(draw_like(x, 2000, seed=1)).passed
        assert "torch" not in sys.modules
        print("ok")
    """,
    )


def test_numpy_path_runs_with_neither_torch_nor_jax():
    _run(
        {"torch", "jax", "jaxlib"},
        """
        import numpy as np
        import noisepair
        x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
        for method in ("hungarian", "greedy", "random", "auto"):
            assert isinstance(noisepair.match(x, x[::-1].copy(), method), np.ndarray)
        pbs = list(noisepair.MatchedNoiseLoader([x, x], seed=1))
        assert isinstance(pbs[0].noise, np.ndarray)
        assert "torch" not in sys.modules and "jax" not in sys.modules
        print("ok")
    """,
    )

"""noisepair.testing: its assertions fail for the right reason, its strategies draw what they
say, its pytest plugin fails a test whose noise is not N(0, I), and the test file of
docs/testing-your-noise.md behaves as that page shows."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import noisepair
from noisepair.testing import (
    assert_gaussian,
    assert_independent_of_order,
    assert_paths_shorter,
    assert_permutation_of_draws,
    assert_same_distribution,
    vectors,
)
from noisepair.testing.families import FAMILIES, TOY_2D, make_batch
from noisepair.testing.strategies import (
    FRAMEWORKS,
    data_specs,
    framework_names,
    item_shapes,
)

ROOT = Path(__file__).resolve().parents[1]


def data(batches=6, b=32, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(b, d)) + 1.5).astype(np.float32) for _ in range(batches)]


# -- assert_gaussian ---------------------------------------------------------------------------
def test_gaussian_noise_passes_in_every_form_it_comes_in():
    z = np.random.default_rng(0).standard_normal((600, 3, 4, 4)).astype(np.float32)
    batches = np.split(z, 6)
    for form in (
        z,
        torch.from_numpy(z),
        batches,
        [torch.from_numpy(b) for b in batches],
        iter(batches),
    ):
        report = assert_gaussian(form)
        assert (report.n, report.dim) == (600, 48)
    assert assert_gaussian(batches, batches=2).n == 200


def test_gaussian_failure_says_which_test_rejected_and_by_how_much():
    z = np.random.default_rng(1).standard_normal((4096, 64)) * 0.97
    with pytest.raises(AssertionError) as err:
        assert_gaussian(z)
    message = str(err.value)
    assert "is not N(0, I) at alpha=0.001 (4096 vectors, D=64" in message
    ratio = re.search(
        r"squared-norm KS vs chi2\(D\): REJECTED, p=\S+ mean \|z\|\^2/D = (\S+)", message
    )
    assert abs(float(ratio.group(1)) - 0.97**2) < 0.01
    assert "mean n|mean|^2 vs chi2(D): passed" in message


def test_known_gaussian_is_tested_after_whitening():
    rng = np.random.default_rng(2)
    d = 12
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    cov = a @ a.T + 0.5 * np.eye(d)
    mean = rng.normal(size=d)
    z = rng.multivariate_normal(mean, cov, size=3000)
    assert_gaussian(z, mean=mean, cov=cov)
    e = rng.standard_normal((3000, d))
    assert_gaussian(e * 2 + 1, mean=1.0, cov=4.0)  # one variance
    assert_gaussian(e[:, :3] * [1, 2, 3], cov=[1, 4, 9])  # variances
    with pytest.raises(AssertionError, match=r"N\(mean, cov\) \(tested after whitening\)"):
        assert_gaussian(z, mean=mean, cov=np.eye(d))
    with pytest.raises(AssertionError, match="is not N"):
        assert_gaussian(z)
    with pytest.raises(ValueError, match="not positive definite"):
        assert_gaussian(z, cov=-np.eye(d))
    with pytest.raises(ValueError, match="12 x 12 matrix"):
        assert_gaussian(z, cov=np.eye(3))


def test_noise_in_an_unknown_form_is_named():
    with pytest.raises(TypeError, match="got str"):
        vectors(["not noise"])
    with pytest.raises(ValueError, match="yielded no batches"):
        vectors([])


# -- assert_same_distribution -----------------------------------------------------------------
def offset_noise(n, rng, offset=0.1, shape=(3, 8, 8)):
    return rng.standard_normal((n, *shape)) + offset * rng.standard_normal((n, shape[0], 1, 1))


def test_two_sample_test_accepts_the_same_sampler_and_rejects_another():
    rng = np.random.default_rng(3)
    z = offset_noise(3000, rng, offset=0.3)
    pvalues = assert_same_distribution(z, lambda n: offset_noise(n, rng, offset=0.3))
    assert set(pvalues) >= {"squared norm / D", "coordinate mean"}
    with pytest.raises(AssertionError, match=r"coordinate mean: REJECTED, two-sample KS p="):
        assert_same_distribution(z, lambda n: rng.standard_normal((n, 3, 8, 8)))
    with pytest.raises(ValueError, match="D=4"):
        assert_same_distribution(z, rng.standard_normal((10, 4)))


def test_two_sample_false_alarm_rate_is_at_most_alpha():
    rng = np.random.default_rng(4)
    rejected = 0
    for _ in range(100):
        try:
            assert_same_distribution(
                offset_noise(200, rng, shape=(2, 4, 4)),
                lambda n: offset_noise(n, rng, shape=(2, 4, 4)),
                alpha=0.05,
            )
        except AssertionError:
            rejected += 1
    assert rejected <= 12  # P(Binomial(100, 0.05) > 12) < 0.3% (Bonferroni is conservative)


# -- assert_permutation_of_draws ---------------------------------------------------------------
@pytest.mark.parametrize(
    "method, scope, prefetch", [("hungarian", 1, 2), ("greedy", 3, 0), ("sinkhorn", 2, 1)]
)
def test_matched_loader_emits_its_draws(method, scope, prefetch):
    loader = noisepair.MatchedNoiseLoader(data(), method=method, scope=scope, prefetch=prefetch)
    assert assert_permutation_of_draws(loader) == 6 * 32
    assert assert_permutation_of_draws(loader, batches=2) == 2 * 32  # ends inside a match group


def test_sampling_with_replacement_is_caught_as_repeats():
    """torchcfm's default OT sampler draws pairs from the plan with replacement."""
    rng = np.random.default_rng(5)
    drawn = [pb.noise for pb in noisepair.MatchedNoiseLoader(data(), method="random", prefetch=0)]
    emitted = [z[rng.integers(0, len(z), len(z))] for z in drawn]
    with pytest.raises(
        AssertionError,
        match=r"0 emitted vectors were never drawn, \d+ were emitted "
        r"more often than drawn, \d+ draws were never emitted",
    ):
        assert_permutation_of_draws(emitted, reference=drawn)


def test_other_noise_and_surplus_noise_are_caught():
    loader = noisepair.MatchedNoiseLoader(data(), prefetch=0)
    other_seed = noisepair.MatchedNoiseLoader(data(), seed=1, prefetch=0)
    drawn = [pb.noise for pb in noisepair.MatchedNoiseLoader(data(), method="random", prefetch=0)]
    with pytest.raises(AssertionError, match="32 emitted vectors were never drawn"):
        assert_permutation_of_draws(other_seed, reference=drawn)
    with pytest.raises(AssertionError, match="emitted 32 noise vectors beyond the 160"):
        assert_permutation_of_draws(loader, reference=drawn[:5])
    with pytest.raises(TypeError, match="reference= is needed"):
        assert_permutation_of_draws(drawn)
    with pytest.raises(ValueError, match="across_ranks=True"):
        assert_permutation_of_draws(noisepair.MatchedNoiseLoader(data(), across_ranks=True))


def test_a_pool_is_checked_per_refill_not_per_batch():
    """DANSM's rule: each sample in stream order takes its nearest unused noise of a pool that
    is redrawn when used up. Exact per refill (48 draws), not per batch of 16."""
    rng = np.random.default_rng(6)
    pools, emitted, unused = [], [], []
    for x in data(batches=6, b=16):
        picked = []
        for xi in x:
            if not unused:
                pools.append(rng.standard_normal((48, 8)).astype(np.float32))
                unused = list(range(48))
            j = min(unused, key=lambda k: ((pools[-1][k] - xi) ** 2).sum())
            unused.remove(j)
            picked.append(pools[-1][j])
        emitted.append(np.stack(picked))
    assert assert_permutation_of_draws(emitted, reference=pools) == 96
    with pytest.raises(AssertionError, match="not a permutation"):
        assert_permutation_of_draws(
            emitted, reference=[p[i : i + 16] for p in pools for i in (0, 16, 32)]
        )


# -- assert_independent_of_order, assert_paths_shorter -----------------------------------------
def test_order_dependence_is_reported_and_knn_is_refused():
    x = torch.from_numpy(data()[0])
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    assert_independent_of_order("hungarian", x, z)
    with pytest.raises(
        AssertionError,
        match=r"'random' depends on the order of the batch: after "
        r"shuffle 0, \d+ of 32 samples got a different noise",
    ):
        assert_independent_of_order("random", x, z)
    with pytest.raises(ValueError, match="KNN"):
        assert_independent_of_order("knn", x, torch.cat([z, z]), k=2)


def test_paths_shorter_reads_the_batches_costs():
    gain = assert_paths_shorter(noisepair.MatchedNoiseLoader(data(), prefetch=0), ratio=0.9)
    assert gain.batches == 6 and gain.ratio < 0.9
    with pytest.raises(
        AssertionError,
        match=r"matched paths are 1\.0000 x the as-drawn ones over 3 "
        r"batches .* required below 1",
    ):
        assert_paths_shorter(noisepair.MatchedNoiseLoader(data(), method="random"), batches=3)


# -- families and strategies -------------------------------------------------------------------
def test_families_reject_what_they_cannot_draw():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown family 'spiral'"):
        make_batch("spiral", 4, (2,), rng)
    with pytest.raises(ValueError, match=r"items have shape \(2,\)"):
        make_batch("moons", 4, (3,), rng)
    with pytest.raises(ValueError, match="unknown framework"):
        framework_names(("jax-not-yet",))
    with pytest.raises(ValueError, match="unknown shape kind"):
        item_shapes(("video",))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(spec=data_specs(dtypes=("float32", "float16", "bfloat16")), data=st.data())
def test_strategies_draw_what_the_spec_says(spec, data):
    x = spec.batch(0)
    assert tuple(x.shape) == (spec.batch_size, *spec.shape)
    assert str(x.dtype).replace("torch.", "") == spec.dtype
    assert isinstance(x, torch.Tensor) == (spec.framework == "torch")
    assert spec.dtype != "bfloat16" or spec.framework == "torch"
    assert spec.family in FAMILIES + TOY_2D and (spec.family not in TOY_2D or spec.shape == (2,))
    assert np.isfinite(np.asarray(x.float() if spec.framework == "torch" else x)).all()
    np.testing.assert_array_equal(
        np.asarray(spec.batch(1).float() if spec.framework == "torch" else spec.batch(1)).shape,
        np.asarray(x.shape),
    )
    assert set(FRAMEWORKS) >= {"numpy", "torch"}


def test_assertions_import_without_hypothesis():
    code = (
        "import sys; import noisepair.testing, noisepair.testing.plugin; "
        "assert 'hypothesis' not in sys.modules, 'hypothesis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- the pytest plugin -------------------------------------------------------------------------
def pytest_in(folder, *args, timeout=300):
    """pytest run in a fresh process in ``folder``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        # pytest shortens the summary's lines except under CI: the same output everywhere
        env={k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")},
        check=False,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_pytest(tmp_path, name, source):
    (tmp_path / name).write_text(textwrap.dedent(source))
    out = pytest_in(tmp_path, name)
    code, text = out.returncode, out.stdout + out.stderr
    assert "fixture 'noise_monitor' not found" not in text, (
        "the pytest11 entry point is not installed: run `pip install -e .` after pulling"
    )
    return code, text


PASSING = """
    import numpy as np
    from noisepair import MatchedNoiseLoader

    def test_matched_loader(noise_monitor):
        rng = np.random.default_rng(0)
        data = [rng.normal(size=(64, 8)).astype(np.float32) + 2 for _ in range(8)]
        for pb in noise_monitor(MatchedNoiseLoader(data, method="hungarian")):
            assert pb.noise.shape == pb.sample.shape

    def test_raw_noise_and_a_custom_batch(noise_monitor):
        rng = np.random.default_rng(1)
        for z in noise_monitor(rng.standard_normal((64, 16)) for _ in range(10)):
            assert z.shape == (64, 16)
        batches = [{"noise": rng.standard_normal((32, 4))} for _ in range(10)]
        assert len(list(noise_monitor(batches, noise=lambda b: b["noise"]))) == 10
"""

FAILING = """
    import numpy as np
    from noisepair import MatchedNoiseLoader

    def test_knn_noise(noise_monitor):
        rng = np.random.default_rng(0)
        data = [rng.normal(size=(256, 16)).astype(np.float32) * 0.3 + 1.5 for _ in range(8)]
        loader = MatchedNoiseLoader(data, method="knn", method_options={"k": 64})
        for pb in noise_monitor(loader):
            pass

    def test_shrunk_noise(noise_monitor):
        rng = np.random.default_rng(1)
        for z in noise_monitor(0.9 * rng.standard_normal((64, 16)) for _ in range(10)):
            pass

    def test_never_iterated(noise_monitor):
        noise_monitor([np.zeros((4, 2))])

    def test_own_failure_wins(noise_monitor):
        noise_monitor([np.zeros((4, 2))])
        assert 1 == 2, "the test's own failure"
"""


def test_plugin_passes_gaussian_noise(tmp_path):
    code, text = run_pytest(tmp_path, "test_passing.py", PASSING)
    assert code == 0, text
    assert "2 passed" in text


def test_plugin_fails_a_test_whose_noise_is_not_gaussian(tmp_path):
    code, text = run_pytest(tmp_path, "test_failing.py", FAILING)
    assert code == 1, text
    assert "4 failed" in text
    assert re.search(
        r"noise_monitor loader 0 \(MatchedNoiseLoader\): noise is not N\(0, I\) at "
        r"alpha=0\.001 \(2048 vectors, D=16",
        text,
    )
    assert re.search(
        r"noise_monitor loader 0 \(generator\): noise is not N\(0, I\).*\n.*"
        r"squared-norm KS vs chi2\(D\): REJECTED",
        text,
    )
    assert "noise_monitor loader 0 (list) was never iterated" in text
    assert "the test's own failure" in text
    assert text.count("was never iterated") == 1  # the body's failure is the one reported


def test_plugin_can_be_turned_off(tmp_path):
    (tmp_path / "test_off.py").write_text("def test_x(noise_monitor):\n    pass\n")
    out = pytest_in(tmp_path, "-p", "no:noisepair", "test_off.py")
    assert out.returncode == 1 and "fixture 'noise_monitor' not found" in out.stdout


# -- the docs' test file and the offset-noise example --------------------------------------
def test_docs_test_file_behaves_as_the_docs_show(tmp_path):
    section = (ROOT / "docs" / "testing-your-noise.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.DOTALL)
    source = next(code for lang, code in blocks if lang == "python" and "test_my_noise.py" in code)
    shown = next(code for lang, code in blocks if lang == "" and "AssertionError" in code)
    code, text = run_pytest(tmp_path, "test_my_noise.py", source)
    assert code == 1 and "1 failed, 2 passed" in text, text
    assert "FAILED test_my_noise.py::test_noise_on_the_sphere_is_gaussian" in text
    for line in shown.strip().splitlines():
        assert line.strip() in text, f"the docs show a line pytest did not print: {line!r}"


def test_offset_noise_example_passes():
    out = pytest_in(ROOT, "examples/offset_noise_test.py", timeout=600)
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout + out.stderr

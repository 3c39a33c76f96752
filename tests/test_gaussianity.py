"""The invariant: permutation matchers emit exactly the noise drawn, so it stays N(0, I).

Written on noisepair.testing (the strategies and assertions users get). Fixed seeds throughout
(hypothesis derandomised): every statistical verdict is deterministic, and the report's
false-alarm rate is checked separately against its nominal level.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import noisepair
from noisepair.checks import gaussianity_report
from noisepair.testing import (
    assert_gaussian,
    assert_paths_shorter,
    assert_permutation_of_draws,
)
from noisepair.testing.strategies import matched_loaders


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    loader=matched_loaders(
        scopes=st.sampled_from([1, 1, 3]),
        n_batches=st.integers(2, 6),
        dtypes=("float32", "float64", "float16", "bfloat16"),
    )
)
def test_loader_emits_a_permutation_of_the_draws_and_stays_gaussian(loader):
    paired = list(loader)
    for pb in paired:
        assert pb.info["exact_permutation"]
        assert pb.noise.dtype == pb.sample.dtype and pb.noise.shape == pb.sample.shape
        assert type(pb.noise) is type(pb.sample)
    assert assert_permutation_of_draws(loader) == sum(len(pb) for pb in paired)
    assert_gaussian(paired, alpha=1e-3)


def test_false_alarm_rate_is_at_most_alpha():
    """200 independent N(0, I) sets at alpha=0.05: rejections stay near 5% (binomial bound)."""
    rng = np.random.default_rng(12345)
    rejections = sum(
        not gaussianity_report(rng.standard_normal((64, 32)), alpha=0.05).passed for _ in range(200)
    )
    assert rejections <= 20  # P(Binomial(200, 0.05) > 20) < 0.3%, and the draws are fixed


def matched_loader(method, k=4, batches=8, b=256, d=16, seed=0):
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(b, d)) * 0.3 + 1.5).astype(np.float32) for _ in range(batches)]
    return noisepair.MatchedNoiseLoader(
        data,
        method=method,
        method_options={"k": k} if method == "knn" else None,
        seed=seed,
        prefetch=0,
    )


def test_power_report_rejects_knn_at_large_k_and_flags_it():
    loader = matched_loader("knn", k=64)
    with pytest.raises(AssertionError, match=r"squared-norm KS vs chi2\(D\): REJECTED") as err:
        assert_gaussian(loader)
    ratio = float(str(err.value).split("mean |z|^2/D = ")[1].split()[0])
    assert ratio < 1.0  # KNN's nearest-of-k shrinks the norms
    with pytest.raises(AssertionError, match="not a permutation"):
        assert_permutation_of_draws(loader, batches=1)
    assert assert_paths_shorter(loader, ratio=1.0, batches=8).ratio < 1.0


def test_power_report_accepts_exact_matching_on_the_same_data():
    loader = matched_loader("hungarian")
    report = assert_gaussian(loader)
    assert report.n == 8 * 256
    assert_paths_shorter(loader, ratio=0.9, batches=8)


@pytest.mark.parametrize(
    "bias, rejects",
    [
        ("shift", "mean n|mean|^2 vs chi2(D): REJECTED"),
        ("scale", "squared-norm KS vs chi2(D): REJECTED"),
    ],
)
def test_power_report_rejects_deliberately_biased_noise(bias, rejects):
    z = np.random.default_rng(7).standard_normal((2048, 64))
    z = z + 0.05 if bias == "shift" else z * 0.97
    with pytest.raises(AssertionError) as err:
        assert_gaussian(z)
    assert rejects in str(err.value)


def test_report_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        gaussianity_report(np.zeros((1, 3)))


def test_loader_side_monitor_reports_as_the_run_goes():
    rng = np.random.default_rng(9)
    data = [(rng.normal(size=(64, 8)) + 2).astype(np.float32) for _ in range(5)]
    monitor = noisepair.NoiseMonitor(max_vectors=200)
    consumed = list(noisepair.MatchedNoiseLoader(data, monitor=monitor))
    assert monitor.batches == len(consumed) == 5
    report, gain = monitor.report()
    assert report.n == 200 and report.passed
    expected = sum(pb.info["cost"] for pb in consumed) / sum(
        pb.info["cost_random"] for pb in consumed
    )
    assert gain.ratio == pytest.approx(expected)
    with pytest.raises(ValueError, match="no batches"):
        noisepair.NoiseMonitor().report()

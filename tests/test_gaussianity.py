"""The invariant: permutation matchers emit exactly the noise drawn, so it stays N(0, I).

Fixed seeds throughout (hypothesis derandomised): every statistical verdict is deterministic,
and the report's false-alarm rate is checked separately against its nominal level.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import noisepair
from noisepair.checks import gaussianity_report
from noisepair.matchers import MATCHERS

PERMUTATION_METHODS = sorted(name for name, cls in MATCHERS.items() if cls.permutation)


def make_data(kind, b, shape, rng):
    d = int(np.prod(shape))
    if kind == "shifted":
        x = rng.normal(size=(b, d)) + 3.0
    elif kind == "scaled":
        x = rng.normal(size=(b, d)) * 10.0
    elif kind == "clustered":
        centres = rng.uniform(-2, 2, size=(4, d))
        x = centres[rng.integers(0, 4, b)] + 0.05 * rng.normal(size=(b, d))
    elif kind == "low_rank":
        x = rng.normal(size=(b, 2)) @ rng.normal(size=(2, d))
    else:  # heavy-tailed
        x = rng.standard_cauchy(size=(b, d)).clip(-1e3, 1e3)
    return x.reshape(b, *shape)


def sorted_rows(a):
    a = np.asarray(a).reshape(len(a), -1)
    return a[np.lexsort(a.T[::-1])]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["shifted", "scaled", "clustered", "low_rank", "heavy_tailed"]),
    method=st.sampled_from(PERMUTATION_METHODS),
    b=st.integers(2, 48),
    shape=st.sampled_from([(2,), (7,), (3, 4, 4)]),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    framework=st.sampled_from(["numpy", "torch"]),
    seed=st.integers(0, 1000),
)
def test_loader_emits_a_permutation_of_the_draws_and_stays_gaussian(
    kind, method, b, shape, dtype, framework, seed
):
    rng = np.random.default_rng(seed)
    batches = [make_data(kind, b, shape, rng).astype(dtype) for _ in range(6)]
    if framework == "torch":
        batches = [torch.from_numpy(x) for x in batches]
    matched = list(noisepair.MatchedNoiseLoader(batches, method=method, seed=seed, prefetch=0))
    drawn = list(noisepair.MatchedNoiseLoader(batches, method="random", seed=seed, prefetch=0))
    noise = []
    for pm, pr in zip(matched, drawn):
        assert pm.info["exact_permutation"]
        assert pm.noise.dtype == pm.sample.dtype and pm.noise.shape == pm.sample.shape
        np.testing.assert_array_equal(sorted_rows(pm.noise), sorted_rows(pr.noise))
        noise.append(np.asarray(pm.noise, dtype=np.float64).reshape(b, -1))
    report = gaussianity_report(np.concatenate(noise), alpha=1e-3)
    assert report.passed, report


def test_false_alarm_rate_is_at_most_alpha():
    """200 independent N(0, I) sets at alpha=0.05: rejections stay near 5% (binomial bound)."""
    rng = np.random.default_rng(12345)
    rejections = sum(
        not gaussianity_report(rng.standard_normal((64, 32)), alpha=0.05).passed for _ in range(200)
    )
    assert rejections <= 20  # P(Binomial(200, 0.05) > 20) < 0.3%, and the draws are fixed


def matched_loader_noise(method, k=4, batches=8, b=256, d=16, seed=0):
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(b, d)) * 0.3 + 1.5).astype(np.float32) for _ in range(batches)]
    loader = noisepair.MatchedNoiseLoader(data, method=method, method_options={"k": k}
                                          if method == "knn" else None, seed=seed, prefetch=0)
    return noisepair.check_loader(loader, batches=batches)


def test_power_report_rejects_knn_at_large_k_and_flags_it():
    report, gain = matched_loader_noise("knn", k=64)
    assert not report.passed
    assert "squared-norm KS" in report.failures() or "mean chi2" in report.failures()
    assert report.norm2_mean_ratio < 1.0
    assert gain.ratio < 1.0


def test_power_report_accepts_exact_matching_on_the_same_data():
    report, gain = matched_loader_noise("hungarian")
    assert report.passed, report
    assert gain.ratio < 0.9


@pytest.mark.parametrize("bias", ["shift", "scale"])
def test_power_report_rejects_deliberately_biased_noise(bias):
    z = np.random.default_rng(7).standard_normal((2048, 64))
    z = z + 0.05 if bias == "shift" else z * 0.97
    assert not gaussianity_report(z).passed


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
    expected = sum(pb.info["cost"] for pb in consumed) / sum(pb.info["cost_random"] for pb in consumed)
    assert gain.ratio == pytest.approx(expected)
    with pytest.raises(ValueError, match="no batches"):
        noisepair.NoiseMonitor().report()

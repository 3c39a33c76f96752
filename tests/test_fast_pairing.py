"""Fast pairing: the auction's certified bound, auto's exact picks, the torch (GPU) code path on
CPU, chunked costs, and the benchmark's plumbing. No test asserts a time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from noisepair.cost import cost_matrix  # noqa: E402
from noisepair.matchers import get_matcher, is_permutation  # noqa: E402
from noisepair.matchers.auction import Auction  # noqa: E402
from noisepair.matchers.auction.device import device_auction  # noqa: E402
from noisepair.matchers.auto import EMD_MIN_BATCH, NEAR_TIE_DIM, Auto  # noqa: E402
from noisepair.pairing import match, pair  # noqa: E402


def _data(b, d, seed):
    rng = np.random.default_rng(seed)
    protos = rng.uniform(-1, 1, (4, d))
    x = protos[rng.integers(0, 4, b)] + 0.3 * rng.standard_normal((b, d))
    return x.astype(np.float32), rng.standard_normal((b, d)).astype(np.float32)


def _total(c, cols):
    c = np.asarray(c, dtype=np.float64)
    return float(c[np.arange(len(c)), np.asarray(cols)].sum())


BACKENDS = [
    "candidates",
    "device",
]  # compiled candidate auction (CPU), the device auction (the GPU path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "b,d,seed", [(2, 3, 0), (17, 2, 1), (64, 8, 2), (128, 64, 3), (200, 512, 4)]
)
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_auction_permutation_within_its_bound(b, d, seed, tol, backend):
    x, z = _data(b, d, seed)
    c = cost_matrix(x, z)
    m = Auction(tol=tol, backend=backend)
    cols, info = m.solve(c)
    assert isinstance(cols, np.ndarray) and is_permutation(cols, b)
    opt = _total(c, linear_sum_assignment(c.astype(np.float64))[1])
    got = _total(c, cols)
    assert info["gap_bound"] <= tol * (1 + 1e-9) or info["auction_eps"] > 0
    # the certified bound really bounds the distance to the optimum (float32 slack)
    assert got - opt <= info["gap"] + 1e-5 * abs(opt) + 1e-6
    assert (got - opt) / opt <= max(info["gap_bound"], 0) + 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_auction_hits_tolerance_and_reports_it_in_info(backend):
    x, z = _data(256, 64, 7)
    _, info = pair(x, z, get_matcher("auction", tol=1e-3, backend=backend))
    assert 0 <= info["gap_bound"] <= 1e-3
    assert 0 <= info["gap_bound_gain"] and info["auction_rounds"] > 0
    assert info["exact_permutation"] is True and info["backend"] == backend


def test_auction_picks_the_compiled_backend_on_cpu():
    x, z = _data(64, 16, 1)
    m = Auction()
    _, info = m.solve(cost_matrix(x, z))
    assert info["backend"] == "candidates"
    xt, zt = torch.from_numpy(x), torch.from_numpy(z)
    idx = match(xt, zt, method="auction")
    assert torch.is_tensor(idx) and idx.device == xt.device and is_permutation(idx, 64)


@pytest.mark.parametrize("neighbors", [1, 3])
def test_candidate_auction_refreshes_candidates_or_falls_back_to_exact(neighbors):
    """Too few candidates per sample: rows bid again on fresh candidates, and when the bound still
    misses tol the result is lapjv's exact one. Either way the bound holds."""
    x, z = _data(150, 32, 11)
    c = cost_matrix(x, z)
    m = Auction(tol=1e-4, neighbors=neighbors)
    cols, info = m.solve(c)
    opt = _total(c, linear_sum_assignment(c.astype(np.float64))[1])
    assert is_permutation(cols, 150)
    assert info["refreshes"] > 0 or info.get("fallback") == "hungarian"
    assert (_total(c, cols) - opt) / opt <= info["gap_bound"] + 1e-6 <= 1e-4 + 1e-6
    if info.get("fallback"):
        assert _total(c, cols) == pytest.approx(opt, rel=1e-9)


def test_candidate_auction_on_near_duplicate_samples_stays_within_tol():
    """Tight clusters: hundreds of rows want the same few noises, a price war the candidates
    cannot settle (today it is cut short and lapjv answers). The result stays within tol."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 2, (4, 8))[rng.integers(0, 4, 600)] + 0.01 * rng.standard_normal((600, 8))
    z = rng.standard_normal((600, 8))
    c = cost_matrix(x.astype(np.float32), z.astype(np.float32))
    m = Auction(backend="candidates")
    cols, info = m.solve(c)
    opt = _total(c, linear_sum_assignment(c.astype(np.float64))[1])
    assert is_permutation(cols, 600)
    assert (_total(c, cols) - opt) / opt <= max(info["gap_bound"], 0) + 1e-6 <= 1e-3 + 1e-6


def test_auction_without_numba_runs_the_torch_auction(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # numba made unimportable
        import numpy as np
        from noisepair.matchers.auction import Auction
        from noisepair.matchers.base import is_permutation
        c = np.random.default_rng(0).random((50, 50)).astype(np.float32)
        m = Auction()
        cols, info = m.solve(c)
        assert is_permutation(cols, 50) and info["backend"] == "device"
        try:
            Auction(backend="candidates").solve(c)
        except ImportError as e:
            assert "pip install numba" in str(e) and 'backend="device"' in str(e)
        else:
            raise SystemExit("no ImportError")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_auction_torch_path_stays_torch_on_cpu_device():
    """The GPU code path, run with device='cpu': tensors in, tensor index out, same device."""
    x, z = _data(96, 32, 5)
    xt, zt = torch.from_numpy(x).to("cpu"), torch.from_numpy(z).to("cpu")
    c = cost_matrix(xt, zt)
    cols, info = device_auction(c, tol=1e-3)
    assert torch.is_tensor(cols) and cols.device == c.device and cols.dtype == torch.long
    assert is_permutation(cols, 96)
    idx = match(xt, zt, method="auction")
    assert torch.is_tensor(idx) and idx.device == xt.device
    opt = _total(c.numpy(), linear_sum_assignment(c.double().numpy())[1])
    assert (_total(c.numpy(), cols.numpy()) - opt) / opt <= info["gap_bound"] + 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_auction_degenerate_inputs(backend):
    assert Auction(backend=backend).solve(np.zeros((1, 1), np.float32))[0].tolist() == [0]
    cols, _ = Auction(backend=backend).solve(np.zeros((9, 9), np.float32))  # all ties
    assert is_permutation(cols, 9)
    c = np.tile(np.arange(6, dtype=np.float32), (6, 1))  # identical rows
    assert is_permutation(Auction(backend=backend).solve(c)[0], 6)
    with pytest.raises(ValueError):
        Auction(backend="gpu")
    with pytest.raises(ValueError, match="neighbors"):
        Auction(neighbors=0)
    with pytest.raises(ValueError):
        Auction(tol=0)
    with pytest.raises(ValueError):
        device_auction(torch.zeros(3, 4))


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 40),
    d=st.integers(1, 16),
    seed=st.integers(0, 2**16),
    tol=st.sampled_from([1e-1, 1e-2, 1e-3]),
    backend=st.sampled_from(BACKENDS),
    neighbors=st.sampled_from([2, 8, 32]),
)
def test_auction_property(b, d, seed, tol, backend, neighbors):
    x, z = _data(b, d, seed)
    c = cost_matrix(x, z)
    m = Auction(tol=tol, backend=backend, neighbors=neighbors)
    cols, info = m.solve(c)
    assert is_permutation(cols, b)
    opt = _total(c, linear_sum_assignment(c.astype(np.float64))[1])
    assert _total(c, cols) - opt <= info["gap"] + 1e-5 * abs(opt) + 1e-6


@pytest.mark.parametrize(
    "b,d",
    [(8, 2), (100, 2), (EMD_MIN_BATCH, 2), (300, 3), (300, 16), (64, 64), (300, 64), (128, 3072)],
)
def test_auto_is_exact(b, d):
    x, z = _data(b, d, b + d)
    c = cost_matrix(x, z)
    idx, info = pair(x, z, get_matcher("auto"))
    assert is_permutation(idx, b)
    opt = _total(c, linear_sum_assignment(c.astype(np.float64))[1])
    assert _total(c, idx) == pytest.approx(opt, rel=1e-6, abs=1e-4)
    assert info["method"] == "auto" and info["gap_bound"] == 0.0
    expected = ("emd" if b >= EMD_MIN_BATCH else "hungarian") if d <= NEAR_TIE_DIM else "hungarian"
    assert info["solver"] == expected


def test_auto_choices():
    auto = Auto()
    assert auto.choose(1024, 2).name == "emd"
    assert auto.choose(100, 2).name == "hungarian" and auto.choose(100, 2).solver == "scipy"
    assert auto.choose(1024, 3072).name == "hungarian"
    assert auto.choose(1024, 8).name == "hungarian" and auto.choose(1024, 8).solver == "lapjv"
    assert (
        auto.choose(4096, 3072, "cuda").name == "hungarian"
    )  # exact unless approximation is asked
    approx = Auto(approximate=True)
    assert approx.choose(4096, 3072, "cuda").name == "auction"
    assert approx.choose(4096, 3072, "cpu").name == "auction"  # compiled backend (numba)
    assert approx.choose(512, 3072, "cpu").name == "hungarian"  # lapjv is faster at small B
    assert approx.choose(4096, 2, "cpu").name == "emd"  # near-ties defeat the candidates
    assert approx.choose(4096, 16, "cpu").solver == "lapjv"  # so do tight low-dimensional clusters
    assert Auto().exact and not approx.exact


def test_auto_without_numba_is_exact_until_the_device_auction_is_measured(monkeypatch):
    import noisepair.matchers.auto as auto_module

    monkeypatch.setattr(auto_module, "has_numba", lambda: False)
    approx = Auto(approximate=True)
    assert approx.choose(4096, 16384, "cuda").name == "hungarian"
    assert approx.choose(4096, 3072, "cpu").name == "hungarian"


def test_auto_with_groups_and_torch():
    x, z = _data(120, 16, 3)
    labels = np.arange(120) % 3
    xt, zt = torch.from_numpy(x), torch.from_numpy(z)
    idx, info = pair(xt, zt, get_matcher("auto"), groups=labels)
    assert torch.is_tensor(idx) and is_permutation(idx, 120)
    assert np.array_equal(labels[idx.numpy()], labels)
    assert info["gap_bound"] == 0.0


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cost_equals_unchunked(framework, metric, chunk):
    x, z = _data(150, 40, 11)
    if framework == "torch":
        x, z = torch.from_numpy(x), torch.from_numpy(z)
    full = cost_matrix(x, z, metric)
    part = cost_matrix(x, z, metric, chunk=chunk)
    assert type(part) is type(full) and part.shape == full.shape and part.dtype == full.dtype
    # equal up to float32 rounding (BLAS may use another kernel for a thin block)
    assert np.allclose(np.asarray(part), np.asarray(full), rtol=1e-5, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 30),
    m=st.integers(1, 30),
    d=st.integers(1, 20),
    chunk=st.integers(1, 40),
    precision=st.sampled_from(["float32", "float64", "bfloat16"]),
)
def test_chunked_cost_property(b, m, d, chunk, precision):
    rng = np.random.default_rng(b * 1000 + m * 10 + d)
    x = torch.from_numpy(rng.standard_normal((b, d)).astype(np.float32))
    z = torch.from_numpy(rng.standard_normal((m, d)).astype(np.float32))
    full = cost_matrix(x, z, precision=precision)
    part = cost_matrix(x, z, precision=precision, chunk=chunk)
    assert part.shape == full.shape and part.dtype == full.dtype
    assert torch.allclose(part, full, rtol=1e-5, atol=1e-3 if precision == "bfloat16" else 1e-4)
    ref = torch.cdist(x.double(), z.double()) ** 2
    if precision != "bfloat16":
        assert torch.allclose(full.double(), ref, atol=1e-3 * max(1.0, float(ref.max())))


def test_torch_cost_matches_numpy_cost():
    x, z = _data(100, 300, 2)
    a = cost_matrix(x, z)
    b = cost_matrix(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    assert np.allclose(a, b, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("k", [9, 40])  # rows of 19 blocks of 16: selected on block minima / values
@pytest.mark.parametrize("kind", ["gaussian", "ties", "integers"])
def test_candidate_scan_keeps_each_rows_cheapest_columns_and_its_diagonal(kind, k):
    from noisepair.matchers.auction.candidates import _scan

    rng = np.random.default_rng(3)
    n = 300
    c = {
        "gaussian": rng.standard_normal((n, n)),
        "ties": np.zeros((n, n)),
        "integers": rng.integers(0, 4, (n, n)),
    }[kind].astype(np.float32)
    p = rng.standard_normal(n) if kind == "gaussian" else np.zeros(n)
    cand, cval = np.zeros((n, 2 * k + 1), np.int64), np.zeros((n, 2 * k + 1))
    deg, mins = np.zeros(n, np.int64), np.empty(n)
    assert _scan(c, p, np.full(n, np.inf), k, cand, cval, deg, mins) == n
    values = c + p
    np.testing.assert_allclose(mins, values.min(1))
    for i in range(n):
        kept = cand[i, : deg[i]]
        assert len(set(kept)) == deg[i] and i in kept
        np.testing.assert_array_equal(cval[i, : deg[i]], c[i, kept])
        assert k <= deg[i] <= 2 * k + 1  # k to 2k selected, the diagonal appended if missing
        others = kept[kept != i]
        # a selection below a threshold: no column left out is cheaper than one kept
        left_out = np.setdiff1d(np.arange(n), kept)
        assert values[i, left_out].min() >= values[i, others].max()
    # limit: only rows whose minimum lies below it get new candidates
    before = cand.copy()
    limit = np.where(np.arange(n) % 2 == 0, np.inf, -np.inf)
    assert _scan(c, p + 0.5, limit, k, cand, cval, deg, mins) == (n + 1) // 2
    assert np.array_equal(cand[1::2], before[1::2])

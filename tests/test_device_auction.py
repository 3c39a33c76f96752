"""The device auction (``method="auction"``, ``backend="device"``), run on CPU tensors: the code
path a GPU runs, minus the CUDA graph that replays its blocks. No test asserts a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import noisepair
from noisepair import MatchedNoiseLoader
from noisepair.cost import cost_matrix
from noisepair.matchers import get_matcher, is_permutation
from noisepair.matchers.auction import Auction
from noisepair.matchers.auction.device import _Bidding, bidding_rounds, device_auction
from noisepair.pairing import pair


def _optimum(c) -> float:
    c = np.asarray(c, dtype=np.float64)
    return float(c[np.arange(len(c)), linear_sum_assignment(c)[1]].sum())


def _total(c, cols) -> float:
    c = np.asarray(c, dtype=np.float64)
    return float(c[np.arange(len(c)), np.asarray(cols)].sum())


def _costs(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    """Squared distances of samples to N(0, I) noise: uniform points, or tight clusters (four
    prototypes: near-tied rows, the auction's hard case)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.uniform(-1, 1, (n, d))
    else:
        x = rng.uniform(-1, 1, (4, d))[rng.integers(0, 4, n)] + 0.05 * rng.standard_normal((n, d))
    z = rng.standard_normal((n, d))
    return torch.from_numpy(cost_matrix(x.astype(np.float32), z.astype(np.float32)))


def _assert_certified(c, cols, info, tol):
    """A permutation whose total cost is within the certified gap of the optimum, below tol."""
    n = c.shape[0]
    assert torch.is_tensor(cols) and cols.dtype == torch.long and is_permutation(cols, n)
    opt, got = _optimum(c), _total(c, cols)
    assert got - opt <= info["gap"] + 1e-6 * abs(opt) + 1e-9  # float32 slack
    assert info["gap_bound"] <= tol * (1 + 1e-6)
    assert (got - opt) / max(abs(got), 1e-30) <= info["gap_bound"] + 1e-6


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["uniform", "clustered"]),
    n=st.integers(1, 48),
    d=st.integers(2, 24),  # D=1 is solved too, in thousands of rounds: seconds each on a CPU
    seed=st.integers(0, 2**16),
    tol=st.sampled_from([1e-1, 1e-2, 1e-3]),
    warm_start=st.sampled_from([0, 32]),
    block=st.sampled_from([3, 8]),
)
def test_permutation_within_the_certified_bound(kind, n, d, seed, tol, warm_start, block):
    c = _costs(kind, n, d, seed)
    cols, info = device_auction(c, tol=tol, warm_start=warm_start, block=block)
    _assert_certified(c, cols, info, tol)
    assert "stopped" not in info and info["backend"] == "device"


@pytest.mark.parametrize(
    "kind, n, d, warm_start",
    [
        ("clustered", 300, 64, 32),
        ("uniform", 256, 512, 32),
        ("clustered", 200, 8, 0),
        ("uniform", 40, 1, 32),  # near-ties: the auction's slowest case
    ],
)
def test_larger_batches_bid_and_finish_within_tol(kind, n, d, warm_start):
    c = _costs(kind, n, d, n + d)
    cols, info = device_auction(c, tol=1e-3, warm_start=warm_start)
    _assert_certified(c, cols, info, 1e-3)
    assert info["auction_rounds"] > 0 and info["blocks"] >= 1
    assert info["device_loop"] == "eager"  # a CPU tensor: no CUDA graph
    if warm_start == 0:  # epsilon-scaling from the top: several phases
        assert info["auction_phases"] > 1


def test_rows_left_free_are_finished_exactly_and_the_bound_stays_honest():
    """Stopped after one round, most rows are still free: the remainder is solved exactly, the
    result is a permutation, and the bound reported (above tol here) still bounds the gap."""
    c = _costs("clustered", 120, 16, 3)
    cols, info = device_auction(c, tol=1e-6, warm_start=0, block=1, max_rounds=1)
    assert is_permutation(cols, 120) and info["finished_rows"] > 0
    assert info["stopped"] == "max_rounds" and info["gap_bound"] > 1e-6
    assert _total(c, cols) - _optimum(c) <= info["gap"] + 1e-3
    # through the matcher, a bound that misses tol hands over to the exact solver
    m = Auction(tol=1e-6, backend="device", warm_start=0, block=1, max_rounds=1)
    cols, info = m.solve(c)
    assert info["fallback"] == "hungarian" and info["gap_bound"] == 0.0
    assert _total(c, cols) == pytest.approx(_optimum(c), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 40),
    m=st.integers(1, 64),
    rounds=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    eps=st.sampled_from([1e-3, 0.1, 1.0]),
)
def test_a_block_keeps_the_auction_invariants(n, m, rounds, seed, eps):
    """Whatever the bucket (even smaller than the free rows: those wait), a block leaves a
    consistent partial assignment, prices that only rose, more rows assigned, and every
    assigned row within eps of its best column (epsilon complementary slackness)."""
    c = torch.from_numpy(np.random.default_rng(seed).random((n, n)).astype(np.float32))
    s = _Bidding(c, rounds)
    s.p.zero_()
    s.eps.fill_(eps)
    held = 0
    for _ in range(3):
        before = s.p.clone()
        s.rounds(m)
        r2c, owner = s.r2c[:n], s.owner[:n]
        assigned = (r2c >= 0).nonzero().squeeze(1)
        assert torch.equal(owner[r2c[assigned]], assigned)
        assert int((owner >= 0).sum()) == assigned.numel() >= held
        held = assigned.numel()
        assert bool((s.p >= before).all())
        values = c + s.p
        mine = values[assigned, r2c[assigned]]
        assert bool((mine <= values[assigned].min(1).values + eps * (1 + 1e-4) + 1e-5).all())
    assert held > 0


def test_a_block_reads_nothing_back_and_keeps_its_shapes():
    """What a CUDA graph needs: on the meta device no value exists, so any host read
    (``.item()``, ``bool()``) or data-dependent shape (``nonzero``, boolean masks) raises."""
    n, meta = 50, "meta"
    c = torch.empty(n, n, device=meta)
    p, eps = torch.empty(n, device=meta), torch.empty((), device=meta)
    r2c = torch.empty(n + 1, dtype=torch.long, device=meta)
    owner = torch.empty(n + 1, dtype=torch.long, device=meta)
    bidding_rounds(c, p, r2c, owner, eps, 64, 3)
    assert p.shape == (n,) and r2c.shape == (n + 1,)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the check can fail
        c[c > 0]


@pytest.mark.parametrize(
    "c",
    [
        np.zeros((9, 9)),  # every permutation optimal
        np.tile(np.arange(6.0), (6, 1)),  # identical rows
        np.tile(np.arange(7.0)[:, None], (1, 7)),  # identical columns
        np.random.default_rng(0).integers(0, 3, (40, 40)).astype(float),  # many exact ties
        np.full((5, 5), 1e4) + np.eye(5),  # a large offset, ties but the diagonal
    ],
    ids=["zeros", "same-rows", "same-columns", "integers", "offset"],
)
def test_ties(c):
    ct = torch.from_numpy(c.astype(np.float32))
    cols, info = device_auction(ct, tol=1e-3)
    _assert_certified(ct, cols, info, 1e-3)


def test_tiny_batches():
    cols, info = device_auction(torch.tensor([[3.0]]))
    assert cols.tolist() == [0] and info["gap"] == 0.0
    for c in ([[0.0, 1.0], [1.0, 0.0]], [[5.0, 1.0], [1.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]):
        ct = torch.tensor(c)
        cols, info = device_auction(ct, tol=1e-6)
        assert _total(ct, cols) == _optimum(ct)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_other_dtypes(dtype):
    """Half precisions are solved in float32 (prices must move by eps), float64 as it is."""
    c = (_costs("uniform", 48, 8, 1) * 4).to(dtype)
    cols, info = device_auction(c, tol=1e-3)
    _assert_certified(c.double(), cols, info, 1e-3)


@pytest.mark.parametrize(
    "c, error, message",
    [
        (torch.zeros(3, 4), ValueError, "square"),
        (torch.zeros(0, 0), ValueError, "non-empty"),
        (torch.zeros(3), ValueError, "square"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), ValueError, "NaN or inf"),
        (torch.tensor([[0.0, float("inf")], [1.0, 0.0]]), ValueError, "NaN or inf"),
        (np.zeros((3, 3)), TypeError, "torch tensor"),
    ],
)
def test_bad_input_is_named(c, error, message):
    with pytest.raises(error, match=message):
        device_auction(c)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="warm_start"):
        Auction(backend="device", warm_start=-1)
    with pytest.raises(ValueError, match="block"):
        Auction(backend="device", block=0)
    with pytest.raises(ValueError, match="'device'"):
        Auction(backend="gpu")


@pytest.mark.parametrize("backend", ["device", "torch"])  # "torch": its former name
def test_the_matcher_keeps_the_costs_framework(backend):
    c = _costs("clustered", 64, 16, 2)
    m = get_matcher("auction", backend=backend)
    cols, info = m.solve(c.numpy())
    assert isinstance(cols, np.ndarray) and is_permutation(cols, 64)
    assert info["backend"] == "device" and info["gap_bound"] <= 1e-3
    cols, _ = m.solve(c)
    assert torch.is_tensor(cols) and cols.device == c.device


def test_through_match_and_pair():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (96, 3, 4, 4)).astype(np.float32)
    z = rng.standard_normal((96, 3, 4, 4)).astype(np.float32)
    idx = noisepair.match(x, z, method="auction", backend="device")
    assert isinstance(idx, np.ndarray) and is_permutation(idx, 96)
    xt, zt = torch.from_numpy(x), torch.from_numpy(z)
    idx = noisepair.match(xt, zt, method="auction", backend="device")
    assert torch.is_tensor(idx) and is_permutation(idx, 96)
    _, info = pair(xt, zt, get_matcher("auction", backend="device"))
    assert info["backend"] == "device" and 0 <= info["gap_bound"] <= 1e-3
    c = cost_matrix(x, z)
    assert (_total(c, idx) - _optimum(c)) / _optimum(c) <= info["gap_bound"] + 1e-6


def test_through_the_loader():
    """MatchedNoiseLoader with the device auction: the noise of each batch is a permutation of
    the noise drawn for it, paired within the certified bound of the exact pairing."""
    batches = [torch.rand(64, 2, 4, 4) * 2 - 1 for _ in range(3)]
    kw = dict(seed=7, prefetch=2)
    drawn = list(MatchedNoiseLoader(batches, method="random", **kw))
    exact = list(MatchedNoiseLoader(batches, method="hungarian", **kw))
    with MatchedNoiseLoader(
        batches, method="auction", method_options={"backend": "device"}, **kw
    ) as loader:
        got = list(loader)
    for pb, ref, opt in zip(got, drawn, exact):
        assert pb.info["backend"] == "device" and 0 <= pb.info["gap_bound"] <= 1e-3
        key = lambda t: torch.sort(t.flatten(1)[:, 0]).values  # noqa: E731
        assert torch.equal(key(pb.noise), key(ref.noise))  # the same draws, permuted
        assert torch.equal(pb.sample, ref.sample)
        assert pb.info["cost"] <= opt.info["cost"] * (1 + pb.info["gap_bound"]) + 1e-6


def test_the_cpu_benchmark_puts_its_section_into_the_report(tmp_path):
    """benchmarks/matching.py --device-auction: the device auction beside the dense auction it
    replaced and lapjv, spliced into an existing report in place of its last version."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "matching.py"
    spec = importlib.util.spec_from_file_location("matching_bench", script)
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))  # its harness
    spec.loader.exec_module(bench)
    out = tmp_path / "matching.md"
    out.write_text(
        f"# Report\n\n## D = 8\n\nrows\n\n{bench.DEVICE_TITLE}\n\nold\n\n## Memory\n\nm\n"
    )
    argv = ["--device-auction", "--sizes", "24", "--dims", "8", "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert text.count(bench.DEVICE_TITLE) == 1 and "old" not in text
    assert text.index("## D = 8") < text.index(bench.DEVICE_TITLE) < text.index("## Memory")
    row = next(line for line in text.splitlines() if line.startswith("| 8 | 24 |"))
    assert "(" in row and "GPU times of the device auction: not measured" in text

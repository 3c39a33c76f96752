"""noisepair demo: data, metric, speedup rule, samplers, figures and report (tiny settings)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from noisepair.cli import DEMO_NEEDS, build_parser, main
from noisepair.demo import data as demo_data
from noisepair.demo.metrics import compare, smooth, speedup, steps_to_target, w2
from noisepair.demo.model import TimeMLP
from noisepair.demo.objectives import get_objective
from noisepair.demo.plots import count_crossings
from noisepair.demo.run import data_report, headline
from noisepair.demo.train import ArmResult, train_arm

PNG = b"\x89PNG\r\n\x1a\n"


# -- data ------------------------------------------------------------------------------------
def test_digits_are_embedded_scaled_and_split_the_same_way_every_time():
    train, held = demo_data.load("digits")
    assert train.shape == (1297, 64) and held.shape == (500, 64)
    assert train.dtype == np.float32 and train.min() >= -1 and train.max() <= 1
    train2, held2 = demo_data.load("digits")
    np.testing.assert_array_equal(held, held2)
    # no digit is both trained on and held out
    rows = {r.tobytes() for r in train}
    assert sum(r.tobytes() in rows for r in held) < 25  # the digits set has a few exact duplicates


def test_digits_projected_keep_the_split_and_have_unit_coordinate_variance():
    train, held = demo_data.load("digits-d2")
    assert train.shape == (1297, 2) and held.shape == (500, 2) and train.dtype == np.float32
    assert train.var(0).mean() == pytest.approx(1.0, rel=1e-4)
    assert demo_data.load("digits-d8")[0].shape == (1297, 8)
    for bad in ("digits-d64", "digits-d0", "digits-dx"):
        with pytest.raises(ValueError, match="digits-dK takes a dimension K from 1 to 63"):
            demo_data.load(bad)


@pytest.mark.parametrize("name", ["8gaussians", "moons", "checkerboard"])
def test_toy_sets_are_2d(name):
    train, held = demo_data.load(name)
    assert train.shape[1] == held.shape[1] == 2 and len(train) > len(held)
    assert np.abs(train).max() < 3.5


def test_unknown_data_set_names_the_choices():
    with pytest.raises(ValueError, match="digits"):
        demo_data.load("cifar")


def test_shuffled_batches_depend_on_seed_and_epoch_only():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    a, b = demo_data.ShuffledBatches(x, 8, seed=3), demo_data.ShuffledBatches(x, 8, seed=3)
    assert len(a) == 2
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    first = [t.clone() for t in a]
    a.set_epoch(1)
    assert not all(torch.equal(p, q) for p, q in zip(first, a, strict=True))
    with pytest.raises(ValueError, match="batch size"):
        demo_data.ShuffledBatches(x, 21)


# -- metric and speedup rule -----------------------------------------------------------------
def test_w2_is_exact_on_translated_clouds():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 3))
    assert w2(a, a) == pytest.approx(0.0, abs=1e-6)
    assert w2(a, a + np.array([3.0, 4.0, 0.0])) == pytest.approx(5.0, rel=1e-9)
    assert w2(a, a[::-1]) == pytest.approx(0.0, abs=1e-6)  # order does not matter


@pytest.mark.parametrize("sizes", [(200, 200), (120, 200)])
def test_w2_agrees_with_the_network_simplex(sizes):
    import ot

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((sizes[0], 5)), rng.standard_normal((sizes[1], 5)) + 0.5
    cost = ot.dist(a, b)
    exact = np.sqrt(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost))
    assert w2(a, b) == pytest.approx(exact, rel=1e-9)


def test_smooth_is_a_trailing_mean():
    assert smooth([3, 1, 2, 6], window=2) == [3, 2, 1.5, 4]


def test_speedup_counts_steps_to_the_random_arms_final_quality():
    steps = [100, 200, 300, 400, 500, 600]
    random = [9, 7, 5, 4, 3, 3]
    faster = [8, 5, 3, 3, 3, 3]
    sp = speedup(steps, random, faster, window=1)
    assert sp["target"] == 3 and sp["steps_baseline"] == 500 and sp["steps_other"] == 300
    assert sp["speedup"] == pytest.approx(500 / 300) and sp["reached"]
    # with a window the target is the mean of the last checkpoints
    assert speedup(steps, random, faster, window=3)["target"] == pytest.approx(10 / 3)


def test_speedup_reports_an_upper_bound_when_matched_never_gets_there():
    steps = [1, 2, 3, 4]
    sp = speedup(steps, [4, 3, 2, 1], [4, 4, 4, 4], window=1)
    assert not sp["reached"] and sp["steps_other"] is None
    assert sp["speedup"] == pytest.approx(1.0)  # random's 4 steps / last step 4: "< 1x"
    assert steps_to_target(steps, [4, 4, 4, 4], 1.0, window=1) is None


def test_compare_calls_a_gap_within_noise_when_the_curves_still_move_more():
    random = [5.0, 4.0, 3.0, 2.8, 2.6, 2.5]
    # moves of 0.2 and 0.1 per checkpoint at the end: band 2 * RMS(0.2, 0.1, 0.2, 0.1) ~ 0.32
    close = [5.0, 4.0, 3.1, 2.9, 2.7, 2.6]
    c = compare(random, close)
    assert c["final"]["random"] == pytest.approx(2.6333, abs=1e-4)
    assert c["noise"] == pytest.approx(2 * np.sqrt(np.mean([0.04, 0.01, 0.04, 0.01])))
    assert c["within_noise"] and c["change"] == pytest.approx(0.1 / 2.6333, rel=1e-3)
    far = [4.0, 3.0, 2.0, 1.9, 1.8, 1.7]
    c = compare(random, far)
    assert not c["within_noise"] and c["change"] < -0.3


def _arm(curve: list[float], cost_ratio: float) -> ArmResult:
    """A finished arm with the given 50-step curve (and flat 1- and 4-step ones)."""
    model = TimeMLP(2, hidden=8)
    for p in model.parameters():
        p.data.zero_()  # a zero field: the straightness metrics run in a few evaluations
    return ArmResult(
        method="m",
        steps=[100, 200, 300, 400],
        curves={"w2_euler1": [2.0] * 4, "w2_euler4": [1.0] * 4, "w2_euler50": curve},
        cost_ratio=cost_ratio,
        seconds=0.0,
        model=model,
        eval_noise=torch.randn(8, 2, generator=torch.Generator().manual_seed(0)),
    )


def test_speedup_is_null_with_an_upper_bound_when_matched_never_gets_there():
    x = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    never = {"random": _arm([4, 3, 2, 1], 1.0), "matched": _arm([4, 4, 4, 4], 0.2)}
    run = data_report("toy", never, "rf", x, x)
    assert run["speedup"] is None and run["speedup_upper_bound"] == pytest.approx(1.0)
    assert not run["speedup_reached"] and run["steps_to_target"]["matched"] is None
    sooner = {"random": _arm([4, 3, 2.1, 2], 1.0), "matched": _arm([1, 1, 1, 1], 0.2)}
    run = data_report("toy", sooner, "rf", x, x)
    assert run["speedup_reached"] and run["speedup"] == pytest.approx(4.0)
    assert run["speedup_upper_bound"] is None
    line = headline(run)  # what got better and what did not, and the path gain
    assert "1-step W2 unchanged (+0%, within noise)" in line and "50-step W2 -58%" in line
    assert line.endswith("squared paths 80% shorter")


# -- samplers ----------------------------------------------------------------------------------
class _PointMassRF(torch.nn.Module):
    """The exact rectified-flow velocity for data that is one point x0: (x0 - x_t) / (1 - t)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        return (self.x0 - x) / (1 - t[:, None])


class _PointMassEps(torch.nn.Module):
    """The exact DDPM epsilon for data that is one point x0, on the objective's schedule."""

    def __init__(self, x0, alphas_cumprod, T):
        super().__init__()
        self.x0, self.ac, self.T = x0, torch.as_tensor(alphas_cumprod), T

    def forward(self, x, t):
        a = self.ac[(t * self.T).round().long()].to(x.dtype)[:, None]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_euler_sampler_lands_on_the_data_with_the_exact_velocity(steps):
    x0 = torch.tensor([[1.5, -2.0, 0.5]])
    obj = get_objective("rf")
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    out = obj.sample(_PointMassRF(x0), z, steps)
    torch.testing.assert_close(out, x0.expand(16, 3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_ddim_sampler_lands_on_the_data_with_the_exact_epsilon(steps):
    x0 = torch.tensor([[1.5, -2.0, 0.5]], dtype=torch.float64)
    obj = get_objective("ddpm")
    model = _PointMassEps(x0, obj.alphas_cumprod, obj.num_train_timesteps)
    z = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(obj.sample(model, z, steps), x0.expand(16, 3), atol=1e-6, rtol=0)


def test_objectives_use_the_library_adapters_formulas():
    from noisepair.batch import PairedBatch

    x = torch.randn(8, 4)
    z = torch.randn(8, 4)
    pb = PairedBatch(sample=x, noise=z, batch=x, info={})
    x_t, t, target = get_objective("rf").inputs(pb, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_t, t[:, None] * x + (1 - t[:, None]) * z)
    torch.testing.assert_close(target, x - z)
    obj = get_objective("ddpm")
    x_t, t, target = obj.inputs(pb, torch.Generator().manual_seed(0))
    a = torch.as_tensor(obj.alphas_cumprod)[(t * 1000).round().long()].float()[:, None]
    torch.testing.assert_close(x_t, a.sqrt() * x + (1 - a).sqrt() * z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target, z)
    assert 0 <= float(t.min()) and float(t.max()) < 1


# -- crossings ---------------------------------------------------------------------------------
def test_count_crossings():
    z = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert count_crossings(z, np.array([[1.0, 1.0], [1.0, 0.0]])) == 1  # an X
    assert count_crossings(z, np.array([[1.0, 0.0], [1.0, 1.0]])) == 0  # parallel
    assert count_crossings(z, np.array([[0.4, 0.4], [1.0, 0.0]])) == 0  # stops short


# -- the A/B -----------------------------------------------------------------------------------
def test_training_arms_are_reproducible_and_differ_only_in_pairing():
    train, held = demo_data.load("8gaussians")
    kw = dict(steps=6, batch_size=32, eval_every=3, sample_steps=(1, 2), hidden=16, progress=False)
    a = train_arm(train, held[:100], method="random", **kw)
    b = train_arm(train, held[:100], method="random", **kw)
    m = train_arm(train, held[:100], method="hungarian", **kw)
    assert a.steps == b.steps == m.steps == [3, 6]
    assert a.curves == b.curves
    torch.testing.assert_close(a.eval_noise, m.eval_noise)
    assert a.cost_ratio == 1.0 and m.cost_ratio < 0.6  # 2-d: matching shortens paths a lot
    assert a.curves != m.curves


def test_demo_runs_the_digits_and_their_2d_projection_and_leads_with_the_headline(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "20", "--eval-every", "5", "--batch-size", "64", "--seed", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["digits", "digits-d2"] and len(report["headline"]) == 2
    for name, dim in (("digits", 64), ("digits-d2", 2)):
        run = report["runs"][name]
        assert run["dim"] == dim and run["metric"] == "w2_euler50"
        assert run["checkpoints"] == [5, 10, 15, 20]
        for arm in ("random", "matched"):
            assert set(run["curves"][arm]) == {"w2_euler1", "w2_euler4", "w2_euler50"}
            assert all(len(v) == 4 and all(np.isfinite(v)) for v in run["curves"][arm].values())
        # never a bare 1.0: a speedup when reached, otherwise null and an explicit upper bound
        if run["speedup_reached"]:
            assert run["speedup"] > 0 and run["speedup_upper_bound"] is None
        else:
            assert run["speedup"] is None and run["speedup_upper_bound"] > 0
        assert run["path_cost_ratio"]["random"] == 1.0 > run["path_cost_ratio"]["matched"]
        for c in run["by_sampler"].values():
            assert c["noise"] >= 0 and isinstance(c["within_noise"], bool)
    # the 2-D projection shortens paths far more: the regime map's point, in one run
    low, high = (report["runs"][n]["path_cost_ratio"]["matched"] for n in ("digits-d2", "digits"))
    assert low < 0.2 < 0.7 < high
    crossings = report["runs"]["digits-d2"]["paths_2d"]["mean_over_batches"]
    assert crossings["matched"]["crossings_mean"] < crossings["random"]["crossings_mean"] / 10
    assert report["settings"]["steps"] == 20 and report["settings"]["seed"] == 1
    assert report["figures"] == ["quality_vs_step.png", "samples.png", "paths_2d.png"]
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    result = printed[printed.index("Result") :].splitlines()
    assert result[1].strip() == report["headline"][0] and result[2].strip() == report["headline"][1]
    assert result[1].strip().startswith("digits (64-d pixels): 1-step W2 ")
    assert "squared paths" in result[1] and "within noise:" in printed


def test_demo_on_a_set_without_2d_data_draws_no_paths(tmp_path):
    argv = ["demo", "--data", "digits-d8", "--steps", "6", "--eval-every", "3"]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["runs"]["digits-d8"]["dim"] == 8 and "paths_2d" not in report["runs"]["digits-d8"]
    assert report["figures"] == ["quality_vs_step.png", "samples.png"]
    assert not (tmp_path / "paths_2d.png").exists()


def test_the_demo_writes_where_gitignore_says():
    from pathlib import Path

    ignored = (Path(__file__).parent.parent / ".gitignore").read_text().split()
    default = build_parser().parse_args(["demo"]).out
    assert f"{default}/" in ignored


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "cifar"], "unknown data set"),
        (["--data", "digits", "digits-d99"], "digits-dK takes a dimension K"),
        (["--steps", "1"], "--steps must be at least 3"),
        (["--batch-size", "5000", "--steps", "3"], "batch size 5000 is larger"),
    ],
)
def test_demo_errors_say_what_to_do(tmp_path, capsys, argv, message):
    assert main(["demo", "--out", str(tmp_path), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["sklearn", "matplotlib", "tqdm", "ot", "torch"])
def test_demo_without_its_extra_names_the_install_command(monkeypatch, tmp_path, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # as if the package were not installed
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'noisepair[demo]'" in err and DEMO_NEEDS[missing] in err
    assert not list(tmp_path.iterdir())  # stopped before training anything


def test_ddim_clips_its_x0_prediction_to_the_data_range():
    class Wild(torch.nn.Module):
        def forward(self, x, t):
            return 50 * torch.ones_like(x)

    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    out = get_objective("ddpm", clip_sample=1.0).sample(Wild(), z, 1)
    assert float(out.abs().max()) <= 1.0 + 1e-6
    assert float(get_objective("ddpm").sample(Wild(), z, 1).abs().max()) > 100  # unclipped

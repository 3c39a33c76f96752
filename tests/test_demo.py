"""noisepair demo: data, metric, speedup rule, samplers, figures and report (tiny settings)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from noisepair.cli import DEMO_NEEDS, main
from noisepair.demo import data as demo_data
from noisepair.demo.metrics import smooth, speedup, steps_to_target, w2
from noisepair.demo.objectives import get_objective
from noisepair.demo.plots import count_crossings
from noisepair.demo.train import train_arm

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


def test_demo_command_writes_report_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--steps",
            "20",
            "--eval-every",
            "5",
            "--batch-size",
            "64",
            "--out",
            str(out),
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for key in (
        "speedup",
        "steps_to_target",
        "metric",
        "curves",
        "checkpoints",
        "settings",
        "speedup_by_sampler",
        "w2_floor",
        "path_cost_ratio",
        "paths_2d",
    ):
        assert key in report
    assert report["metric"] == "w2_euler50"
    assert set(report["steps_to_target"]) == {"random", "matched"}
    assert isinstance(report["steps_to_target"]["random"], int)
    assert isinstance(report["speedup"], float) and report["speedup"] > 0
    assert report["checkpoints"] == [5, 10, 15, 20]
    for arm in ("random", "matched"):
        assert set(report["curves"][arm]) == {"w2_euler1", "w2_euler4", "w2_euler50"}
        assert all(len(v) == 4 and all(np.isfinite(v)) for v in report["curves"][arm].values())
    assert report["settings"]["steps"] == 20 and report["settings"]["seed"] == 1
    assert report["settings"]["data"] == "digits"
    assert report["path_cost_ratio"]["random"] == 1.0 > report["path_cost_ratio"]["matched"]
    crossings = report["paths_2d"]["mean_over_batches"][0]
    assert crossings["matched"]["crossings_mean"] < crossings["random"]["crossings_mean"]
    for name in ("quality_vs_step.png", "samples.png", "paths_2d.png"):
        assert (out / name).read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert "speedup (w2_euler50)" in printed


def test_demo_on_a_2d_set(tmp_path):
    rc = main(
        [
            "demo",
            "--data",
            "moons",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["dim"] == 2 and (tmp_path / "samples.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "cifar"], "unknown data set"),
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

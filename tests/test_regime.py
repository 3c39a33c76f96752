"""benchmarks/regime.py --quick: the whole pipeline runs and writes a consistent map."""

import importlib.util
import json
from pathlib import Path

import numpy as np


def load_benchmark():
    path = Path(__file__).parent.parent / "benchmarks" / "regime.py"
    spec = importlib.util.spec_from_file_location("regime_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_map_runs_and_reports_every_arm(tmp_path):
    regime = load_benchmark()
    out = tmp_path / "regime.md"
    assert regime.main(["--quick", "--workers", "0", "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["kind"], r["data"], r["arm"], r["objective"]): r for r in saved["rows"]}
    arms = regime.arm_names(regime.QUICK)
    for data in ("gmm-d2", "digits-d8"):
        for arm in arms:
            row = rows["map", data, arm, "rf"]
            assert row["seeds"] == 2
            assert np.isfinite(row["absolute"]["nfe"]) and row["absolute"]["nfe"] > 0
        for arm in arms[1:]:  # every matched arm shortens the paths; the change is reported
            assert rows["map", data, arm, "rf"]["path_ratio"] < 1
            assert rows["map", data, arm, "rf"]["change"]["disc1"]["n"] == 2
    assert ("map", "8g-moons", "pool300", "rf") not in rows  # the pool draws N(0, I) only
    assert rows["map", "gmm-d2", "batch", "ddpm"]["change"]["w2_50"] is not None
    cond = {r[2]: v for r, v in rows.items() if r[0] == "conditional"}
    # matching within a label shortens the paths less than matching across labels
    assert cond["batch"]["path_ratio"] < cond["batch+group_by"]["path_ratio"] < 1
    assert cond["pool300"]["path_ratio"] < cond["pool300+group_by"]["path_ratio"] < 1
    text = out.read_text()
    assert "complete" in text and "| gmm-d2 | scope512 |" in text and "Pool rule" in text
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_demo_reports_straightness_with_a_pool(tmp_path):
    from noisepair.cli import main

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--data",
                "8gaussians",
                "--steps",
                "40",
                "--eval-every",
                "20",
                "--pool",
                "300",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["pool"] == 300 and report["settings"]["matched_method"] == "greedy"
    run = report["runs"]["8gaussians"]
    st = run["straightness"]
    assert set(st["nfe_rk45"]) == {"random", "matched"} and min(st["nfe_rk45"].values()) > 0
    assert set(st["discretisation_error"]["matched"]) == {"1", "2", "4"}
    assert run["path_cost_ratio"]["matched"] < 1 and run["metric"] == "w2_euler50"


def test_demo_refuses_scope_and_pool_together(tmp_path, capsys):
    from noisepair.cli import main

    out = tmp_path / "never"
    assert (
        main(
            [
                "demo",
                "--steps",
                "10",
                "--scope",
                "4",
                "--pool",
                "100",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        != 0
    )
    assert "--scope or --pool" in capsys.readouterr().err and not out.exists()


def test_demo_trains_the_matched_arm_with_persistent_seeds(tmp_path):
    from noisepair.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--data", "8gaussians", "--steps", "40", "--eval-every", "20"]
    assert main([*argv, "--persistent", "3", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["persistent"] == 3
    assert report["runs"]["8gaussians"]["path_cost_ratio"]["matched"] < 1


def test_the_regime_map_runs_the_dataset_scale_couplings(tmp_path):
    regime = load_benchmark()
    data = regime.load_data("digits-d8")
    batch = regime.build_stream(data, "batch", 40)
    for arm in ("persistent1", "persistent6"):
        stream = regime.build_stream(data, arm, 40)
        assert stream["path_ratio"] < 1 and stream["x"].shape == batch["x"].shape
        assert np.array_equal(stream["x"], batch["x"])  # the same samples, other noise
    sd = regime.build_stream(data, "semidiscrete", 40)
    assert sd["path_ratio"] < 1 and np.array_equal(
        sd["z"], regime.build_stream(data, "random", 40)["z"]
    )
    rows = {r.tobytes() for r in data["train"]}
    assert all(r.tobytes() in rows for r in sd["x"])  # the noise picked training points
    jobs = regime.make_jobs(regime.FULL, quick=False)
    arms = {(j["data"], j["arm"]) for j in jobs}
    for d in (8, 16, 64):
        assert {(f"gmm-d{d}", a) for a in regime.COUPLINGS} <= arms
    assert {(regime.HIGH_D, a) for a in ("random", "batch", *regime.COUPLINGS)} <= arms


def test_demo_trains_the_matched_arm_on_semidiscrete_batches(tmp_path, monkeypatch):
    from noisepair.demo import run

    monkeypatch.setattr(run, "SD_TOL", 0.5)  # a loose fit: this checks the plumbing
    report = run.run_demo(
        tmp_path, data="digits-d2", steps=40, eval_every=20, semidiscrete=True, progress=False
    )
    assert report["settings"]["semidiscrete"] and "paths_2d.png" not in report["figures"]
    assert report["runs"]["digits-d2"]["path_cost_ratio"]["matched"] < 1

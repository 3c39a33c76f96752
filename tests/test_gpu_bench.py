"""benchmarks/gpu.py, run in its quick CPU mode: the code path the GPU run takes, small sizes."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(gpu_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpuq")
    # limits far above the quick run's length: a loaded machine must not skip cells here
    args = [
        "--device",
        "cpu",
        "--quick",
        "--rounds",
        "1",
        "--budget-s",
        "900",
        "--cell-limit-s",
        "900",
        "--out",
        str(out),
    ]
    assert gpu_bench.main(args) == 0
    return out, json.loads((out / "gpu_quick.json").read_text())


def test_quick_run_measures_every_cell_and_writes_the_report(quick_run, gpu_bench):
    out, raw = quick_run
    cells = {(r["B"], r["D"]) for r in raw["rows"]}
    assert cells == {(b, d) for b in gpu_bench.QUICK_B for d in gpu_bench.QUICK_D}
    for row in raw["rows"]:
        assert not row["skip"], row  # nothing skipped or failed
        assert all(row["t"][method] > 0 for method in gpu_bench.METHODS), row
    head = [
        r
        for r in raw["rows"]
        if (r["B"], r["D"]) == (max(gpu_bench.QUICK_B), max(gpu_bench.QUICK_D))
    ]
    assert all(head[0]["t"][m] > 0 for m in gpu_bench.HOST)  # the host baseline, headline only
    assert all(head[0]["t"][m] > 0 for m in gpu_bench.VARIANTS)  # the device auction's variants
    text = (out / "gpu_quick.md").read_text()
    assert "python benchmarks/gpu.py --device cpu --quick --rounds 1 --budget-s 900" in text
    assert "## Matching" in text and "## Loader overhead" in text
    assert raw["complete"] and "Partial" not in text
    assert "**Headline (B=128, D=512" in text
    assert "device auction's variants (B=128, D=512)" in text


def test_device_auction_gap_is_within_its_certified_bound_and_exact_paths_agree(quick_run):
    _, raw = quick_run
    for row in raw["rows"]:
        assert row["exact_disagreement"] <= 1e-6, row
        for name in ("device", *gpu_variants(row)):
            info = row["info"][name]
            assert info["backend"] == "device" and info["auction_rounds"] >= 0
            assert 0 <= info["gap_bound"] <= 1e-3  # the tol asked for
            # (primal - opt) / opt <= (primal - dual) / dual = bound / (1 - bound)
            assert info["measured_gap"] <= info["gap_bound"] / (1 - info["gap_bound"]) + 1e-7


def gpu_variants(row) -> list[str]:
    return [name for name in row["info"] if name.startswith("device_") and name != "device_solve"]


def test_loader_rows_report_both_loops(quick_run):
    _, raw = quick_run
    assert {r["method"] for r in raw["loader"]} == {"device", "hungarian", "auto"}
    for r in raw["loader"]:
        assert r["plain"] > 0 and r["matched"] > 0
        assert r["ratio"] == pytest.approx(r["matched"] / r["plain"])
        assert r["batches"] >= 6 and r["repeats"] >= 1


def test_an_exhausted_budget_skips_cleanly_and_says_so(gpu_bench, tmp_path):
    assert (
        gpu_bench.main(["--device", "cpu", "--quick", "--budget-s", "0", "--out", str(tmp_path)])
        == 0
    )
    raw = json.loads((tmp_path / "gpu_quick.json").read_text())
    assert all(v == "budget" for r in raw["rows"] for v in r["skip"].values())
    assert all(r["skip"] == "pairing not measured" for r in raw["loader"])
    text = (tmp_path / "gpu_quick.md").read_text()
    assert "matching measurements skipped for the budget" in text
    assert "Headline cell not measured" in text


def test_cuda_without_a_gpu_names_the_fix(gpu_bench):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the message is for machines without it")
    with pytest.raises(SystemExit, match="--device cpu --quick"):
        gpu_bench.main(["--device", "cuda"])


def test_a_run_cut_off_midway_leaves_a_partial_report(gpu_bench, tmp_path, monkeypatch):
    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill from outside looks like to the loop

    monkeypatch.setattr(gpu_bench, "loader_case", cut_off)
    with pytest.raises(KeyboardInterrupt):
        gpu_bench.main(
            [
                "--device",
                "cpu",
                "--quick",
                "--rounds",
                "0",
                "--budget-s",
                "900",
                "--cell-limit-s",
                "900",
                "--out",
                str(tmp_path),
            ]
        )
    raw = json.loads((tmp_path / "gpu_quick.json").read_text())
    assert not raw["complete"] and len(raw["rows"]) == len(gpu_bench.QUICK_B) * len(
        gpu_bench.QUICK_D
    )
    assert all(r["t"]["device"] > 0 for r in raw["rows"])  # the matching numbers survived
    assert "Partial" in (tmp_path / "gpu_quick.md").read_text()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--rounds", "-1"], "--rounds must be >= 0"),
        (["--budget-s", "-3"], "--budget-s must be >= 0"),
    ],
)
def test_bad_arguments_are_named(gpu_bench, capsys, bad, message):
    with pytest.raises(SystemExit):
        gpu_bench.main(["--device", "cpu", *bad])
    assert message in capsys.readouterr().err

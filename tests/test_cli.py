"""The noisepair command: check (exit codes as a CI guard), bench, missing extras, python -m."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from noisepair import cli
from noisepair.cli import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    argv = ["check", "builtin:8gaussians", "--batches", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "noisepair", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["gaussianity"]["dim"] == 2


# -- check -------------------------------------------------------------------------------------
def test_check_builtin_passes_and_prints_the_table(capsys):
    assert main(["check", "builtin:digits", "--batches", "5"]) == 0
    out = capsys.readouterr().out
    for text in ("coordinates KS", "squared norms KS", "ratio matched / random", "PASS"):
        assert text in out
    assert "sample: the batch itself (the loader yields bare ndarrays)" in out


def test_check_fails_knn_at_large_k(capsys):
    assert main(["check", "builtin:digits", "--method", "knn", "--k", "64", "--batches", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "not N(0, I)" in out


def test_check_json_output(capsys):
    assert main(["check", "builtin:moons", "--batches", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["method"] == "hungarian" and report["wrapped"]
    assert report["sample"].startswith("the batch itself")
    assert report["path_gain"]["ratio"] < 0.5  # 2-d: much shorter paths
    assert report["gaussianity"]["dim"] == 2


def test_check_max_cost_ratio_can_fail_the_run(capsys):
    assert main(["check", "builtin:digits", "--batches", "3", "--max-cost-ratio", "0.01"]) == 1
    assert "shorter" in capsys.readouterr().out


USER_LOADERS = textwrap.dedent("""
    import numpy as np
    from noisepair import MatchedNoiseLoader

    def plain():
        rng = np.random.default_rng(0)
        return [{"image": rng.uniform(-1, 1, (64, 3, 4, 4)).astype(np.float32),
                 "label": np.arange(64)} for _ in range(8)]

    def biased():
        # a loader that already matches, with a method that breaks N(0, I): used as it is
        return MatchedNoiseLoader(plain(), key="image", method="knn", method_options={"k": 32})

    def needs_args(path):
        return []

    def not_a_loader():
        return 42

    def integers():
        return [np.arange(64).reshape(16, 4)]

    def two_arrays():
        # no field with a sample name and two floating-point fields: which one is the sample?
        rng = np.random.default_rng(0)
        return [{"a": rng.standard_normal((32, 4)), "b": rng.standard_normal((32, 4))}]

    def pairs():
        rng = np.random.default_rng(0)
        return [(rng.standard_normal((32, 4)).astype(np.float32), np.arange(32)) for _ in range(3)]

    def latent_only():
        rng = np.random.default_rng(0)
        return [{"z0": rng.standard_normal((32, 4)), "label": np.arange(32)} for _ in range(3)]

    LOADER = plain()
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_loaders.py").write_text(USER_LOADERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_loaders", None)


def test_check_a_user_module_callable(user_module, capsys):
    assert main(["check", "my_loaders:plain", "--key", "image", "--batches", "4"]) == 0
    out = capsys.readouterr().out
    assert "wrapped in MatchedNoiseLoader" in out and "sample: batch['image'] (from --key)" in out


@pytest.mark.parametrize(
    "spec, picked",
    [
        ("my_loaders:plain", "batch['image'] (the only field with a sample name (image, images"),
        ("my_loaders:latent_only", "batch['z0'] (the only floating-point field; --key NAME"),
        ("my_loaders:pairs", "field 0 of each tuple (the first, by default; --key N picks"),
    ],
)
def test_check_says_which_field_it_took_as_the_sample_and_why(user_module, capsys, spec, picked):
    assert main(["check", spec, "--batches", "3"]) == 0
    assert f"sample: {picked}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spec, extra, message",
    [
        ("my_loaders:two_arrays", [], "pass --key <name>, e.g. --key 'a'"),
        ("my_loaders:plain", ["--key", "img"], "Pass --key <one of these>."),
        ("builtin:digits", ["--key", "image"], "--key 'image' was given but the batch is a bare"),
    ],
)
def test_check_key_errors_name_the_cli_flag(user_module, capsys, spec, extra, message):
    assert main(["check", spec, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "key=" not in err


def test_check_a_file_path_spec_and_a_loader_object(user_module, capsys):
    path = user_module / "my_loaders.py"
    assert main(["check", f"{path}:LOADER", "--key", "image", "--method", "greedy"]) == 0
    assert "Greedy" in capsys.readouterr().out


def test_check_uses_a_matched_loader_as_is_and_fails_a_biased_one(user_module, capsys):
    assert main(["check", "my_loaders:biased", "--batches", "8"]) == 1
    out = capsys.readouterr().out
    assert "used as is" in out and "FAIL" in out


@pytest.mark.parametrize(
    "spec, extra, message",
    [
        ("nocolon", [], "must look like module:callable"),
        ("no_such_module_xyz:f", [], "cannot import"),
        ("my_loaders:missing", [], "has no attribute"),
        ("my_loaders:needs_args", [], "with no arguments"),
        ("my_loaders:not_a_loader", [], "not iterable"),
        ("my_loaders:integers", [], "Convert it"),
        ("missing_file.py:f", [], "no such file"),
        ("builtin:cifar", [], "unknown built-in loader"),
        ("builtin:digits", ["--k", "4"], "--method knn"),
        ("builtin:digits", ["--method", "nope"], "unknown method"),
        ("builtin:digits", ["--batches", "0"], "--batches must be >= 1"),
    ],
)
def test_check_errors_exit_2_and_say_what_to_do(user_module, capsys, spec, extra, message):
    assert main(["check", spec, *extra]) == 2
    assert message in capsys.readouterr().err


def test_check_builtin_digits_without_scikit_learn_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed
    assert main(["check", "builtin:digits"]) == 2
    err = capsys.readouterr().err
    assert "needs scikit-learn" in err and "noisepair[demo]" in err
    assert main(["check", "builtin:8gaussians", "--batches", "2"]) == 0  # numpy only


# -- bench -------------------------------------------------------------------------------------
def test_bench_runs_the_checkouts_matching_benchmark(tmp_path, capsys):
    out = tmp_path / "sub" / "m.md"
    argv = ["bench", "--sizes", "16", "32", "--dims", "2", "8", "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert "python benchmarks/matching.py --sizes 16 32 --dims 2 8" in text
    assert "| 16 |" in text and "| 32 |" in text and "## D = 8" in text
    assert "agree: worst relative gap 0.0e+00" in text
    assert "Auction: worst measured gap" in text and "## Memory" not in text


def test_bench_out_must_be_a_file(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_bench_sizes_must_be_positive(capsys):
    assert main(["bench", "--sizes", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_bench_without_a_source_checkout_says_where_it_runs(monkeypatch, tmp_path, capsys):
    # an installed wheel: the package's parent folder holds no benchmarks/
    monkeypatch.setattr(cli, "CHECKOUT", tmp_path)
    monkeypatch.setattr(cli, "BENCHMARK", tmp_path / "benchmarks" / "matching.py")
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install -e" in err


def test_builtin_loader_batches():
    loader = cli.builtin_loader("8gaussians", batch_size=100)
    batches = list(loader)
    assert len(batches) == len(loader) == 40 and batches[0].shape == (100, 2)

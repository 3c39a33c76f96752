"""noisepair.advise and `noisepair advise`: measurements, the shipped regime map, the advice."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from noisepair import advise as adv
from noisepair.advise import (
    Budget,
    Measurement,
    Persistent,
    Scope,
    SemiDiscreteArm,
    advise,
    map_rows,
    place,
    regime_table,
)
from noisepair.cli import builtin_loader, main

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _batches(n: int, b: int, d: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (b, d)).astype(np.float32) for _ in range(n)]


# -- the shipped regime map ---------------------------------------------------------------------
def test_the_shipped_table_is_what_the_generator_makes_of_regime_json():
    spec = importlib.util.spec_from_file_location(
        "regime_table", ROOT / "benchmarks" / "regime_table.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    regime = json.loads((ROOT / "benchmarks" / "results" / "regime.json").read_text())
    table = regime_table()
    assert table == generator.condense(regime)
    assert (ROOT / "noisepair" / "regime_map.json").read_text() == generator.dumps(table)
    assert table["date"] == regime["meta"]["date"] and table["source"].endswith("regime.json")
    # every rectified-flow map row of a matched arm, with its numbers
    expected = {
        (r["data"], r["arm"]): r
        for r in regime["rows"]
        if r["kind"] == "map" and r["objective"] == "rf" and r["arm"] != "random"
    }
    assert {(r["data"], r["arm"]) for r in table["rows"]} == set(expected)
    for row in table["rows"]:
        source = expected[row["data"], row["arm"]]
        assert row["path_ratio"] == pytest.approx(source["path_ratio"], abs=1e-4)
        assert row["w2_50"][0] == pytest.approx(source["change"]["w2_50"]["mean"], abs=1e-4)


def test_place_reads_the_rows_with_the_nearest_ratio():
    low = place(0.05)
    assert {r["data"] for r in low.rows} == {"digits-d2"} and low.verdict == "gain"
    assert low.w2_50[0] < low.w2_50[1] < 0 and not low.beyond
    high = place(0.97)
    assert high.beyond and high.verdict == "none"
    assert all(r["d"] >= 64 for r in high.rows)  # the map's highest-dimensional rows
    # only assignment arms with N(0, I) noise: no pool, KNN or 8-gaussians source rows
    arms = {r["arm"] for p in (low, high, place(0.3), place(0.6)) for r in p.rows}
    assert arms <= {"batch", "scope1024", "scope4096"}


def test_the_verdict_follows_the_intervals_of_the_nearest_rows():
    def row(ratio, w2):
        interval = [w2, w2 - 0.02, w2 + 0.02]
        return {"data": "x", "d": 8, "source": "N(0, I)", "arm": "batch", "path_ratio": ratio,
                "w2_50": interval, "w2_2": interval, "disc1": interval, "nfe": interval}  # fmt: skip

    table = {
        "rows": [row(0.1, -0.2), row(0.2, -0.1), row(0.3, -0.05), row(0.7, 0.0), row(0.8, 0.01)]
    }
    assert place(0.2, table).verdict == "gain"  # every interval below 0
    assert place(0.65, table).verdict == "some"  # one of three
    assert place(0.8, table, nearest=2).verdict == "none"
    assert place(0.9, table).beyond  # above 0.8 + BEYOND


# -- measurements -------------------------------------------------------------------------------
def test_budget_forecasts_from_the_largest_solve():
    budget = Budget(10.0)
    assert budget.forecast(1000) == 0.0  # nothing timed yet
    budget.record(100, 0.5)
    budget.record(50, 9.0)  # a smaller solve does not replace the largest
    assert budget.forecast(200) == pytest.approx(0.5 * 2**adv.GROWTH)


def test_scopes_are_capped_to_the_batches_read_and_the_time_left():
    data = _batches(10, 16, 4)
    m = Scope(64).measure(data, Budget(30.0), seed=0)
    assert m.arm == "scope=10" and m.matched_set == 160 and "loader gave 10 batches" in m.note
    budget = Budget(1.0)
    budget.record(16, 0.01)  # 64 x 16 samples would take 0.01 * 64**2.5 = 328 s
    m = Scope(64).measure(_batches(64, 16, 4), budget, seed=0)
    assert m.matched_set < 64 * 16 and "time budget" in m.note
    assert Scope(8).measure(data[:1], Budget(30.0), seed=0) is None  # one batch: no scope


def test_a_larger_scope_shortens_paths_more_and_ratios_are_exact_assignments():
    from noisepair import match

    data = _batches(16, 32, 2)
    ratios = [Scope(k).measure(data, Budget(30.0), seed=0).ratio for k in (1, 8)]
    assert ratios[1] < ratios[0] < 0.5  # 2-d: strong gains, more with more samples
    # the per-batch ratio is the library's own exact assignment of fresh noise
    rng = np.random.default_rng([0, 1])
    matched = drawn = 0.0
    for x in data:
        z = rng.standard_normal(x.shape, dtype=np.float32)
        matched += ((x - z[match(x, z)]) ** 2).sum()
        drawn += ((x - z) ** 2).sum()
    assert ratios[0] == pytest.approx(matched / drawn, rel=1e-5)


class Identity:
    """An extra arm, as a dataset-scale coupling would be added: here, noise kept as drawn."""

    name, option, batches = "as drawn", "method='random'", 1

    def measure(self, data, budget, seed):
        return Measurement(self.name, self.option, len(data[0]), 1.0, 0.0, len(data), "random")


def test_an_arm_is_one_entry_in_the_list():
    advice = advise(_batches(4, 32, 8), arms=(Scope(1), Identity()), budget=10)
    assert [m.arm for m in advice.measurements] == ["batch", "as drawn"]
    assert advice.placements[1].rows and advice.measurements[1].ratio == 1.0


def test_the_dataset_scale_couplings_are_measured_on_the_same_batches():
    data = _batches(16, 32, 4)
    per_batch = Scope(1).measure(data, Budget(30.0), seed=0)
    seeds = Persistent(6).measure(data, Budget(30.0), seed=0)
    sd = SemiDiscreteArm().measure(data, Budget(30.0), seed=0)
    assert seeds.arm == "persistent=6" and "epochs" in seeds.note
    assert seeds.ratio < 1 and sd.ratio < per_batch.ratio  # the whole set beats a batch
    assert sd.matched_set == 16 * 32 and sd.solver == "semidiscrete"
    assert Persistent(6).measure(data, Budget(1e-9), seed=0) is None  # no time: not measured


# -- the advice ---------------------------------------------------------------------------------
def test_low_dimensional_digits_are_told_that_matching_pays():
    advice = advise(builtin_loader("digits-d2", batch_size=128), budget=10, step_ms=50)
    assert advice.dim == 2 and advice.batch_size == 128 and advice.batches == 10
    assert [m.arm for m in advice.measurements][:2] == ["batch", "scope=8"]
    assert advice.measurements[0].ratio < 0.1
    line = advice.recommendation
    assert line.startswith("d=2, per-batch ratio 0.0") and "matching pays here" in line
    assert "MatchedNoiseLoader(loader, method='auto'" in line and "of your 50 ms step" in line
    assert "\n" not in line


def test_64d_digits_are_told_to_expect_a_smaller_few_step_error_only():
    advice = advise(builtin_loader("digits", batch_size=128), budget=10)
    assert advice.dim == 64 and 0.75 < advice.measurements[0].ratio < 0.9
    line = advice.recommendation
    assert "matching will not change 50-step quality" in line
    assert "few-step" in line and "give --step-ms" in line


def test_image_sized_data_is_beyond_the_map():
    advice = advise(iter(_batches(8, 64, 3072)), budget=10)
    assert advice.measurements[0].ratio > 0.9 and advice.placements[0].beyond
    top = max(r["path_ratio"] for r in map_rows(regime_table()))
    assert f"beyond the map (its ratios reach {top:.2f})" in advice.recommendation


def test_advise_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="nothing to reassign"):
        advise(_batches(3, 1, 4))
    with pytest.raises(ValueError, match="no batches"):
        advise([])
    with pytest.raises(ValueError, match="step time must be positive"):
        advise(_batches(3, 8, 4), step_ms=0)
    with pytest.raises(ValueError, match="time budget must be positive"):
        advise(_batches(3, 8, 4), budget=0)
    with pytest.raises(ValueError, match="values per sample"):
        advise([np.zeros((8, 4), np.float32), np.zeros((8, 5), np.float32)])
    with pytest.raises(TypeError, match="Convert it"):
        advise([np.arange(32).reshape(8, 4)])


# -- the command --------------------------------------------------------------------------------
def test_advise_command_prints_one_recommendation_and_writes_the_png(tmp_path, capsys):
    assert main(["advise", "builtin:digits-d2", "--budget", "10", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("recommendation:") == 1 and "sample: the batch itself" in out
    assert "scope=8" in out and "nearest rows" in out and "regime.json of 2026-" in out
    assert (tmp_path / "advice.png").read_bytes()[:8] == PNG


def test_advise_json(capsys):
    assert main(["advise", "builtin:8gaussians", "--budget", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dim"] == 2 and report["item_shape"] == [2] and report["figure"] is None
    assert report["measurements"][0]["arm"] == "batch" and report["recommendation"]
    assert "rows" not in report["regime"] and report["regime"]["date"]


USER_LOADERS = textwrap.dedent("""
    import numpy as np
    from noisepair import MatchedNoiseLoader

    def images():
        rng = np.random.default_rng(0)
        return [{"image": rng.uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32),
                 "label": np.arange(32)} for _ in range(4)]

    def two_arrays():
        rng = np.random.default_rng(0)
        return [{"a": rng.standard_normal((32, 4)), "b": rng.standard_normal((32, 4))}]

    def wrapped():
        return MatchedNoiseLoader(images(), key="image")

    def singles():
        return [np.zeros((1, 4), np.float32)] * 3
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "advise_loaders.py").write_text(USER_LOADERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("advise_loaders", None)


@pytest.mark.parametrize(
    "spec, picked",
    [
        ("advise_loaders:images", "batch['image'] (the only field with a sample name"),
        ("advise_loaders:wrapped", "batch['image'] (from the loader's key=)"),  # its inner loader
    ],
)
def test_advise_a_user_loader(user_module, capsys, spec, picked):
    assert main(["advise", spec, "--budget", "5"]) == 0
    out = capsys.readouterr().out
    assert "192 values per sample (shape (3, 8, 8))" in out and f"sample: {picked}" in out


@pytest.mark.parametrize(
    "spec, extra, message",
    [
        ("nocolon", [], "must look like module:callable"),
        ("builtin:cifar", [], "unknown built-in loader"),
        ("builtin:digits-d99", [], "digits-dK takes a dimension K"),
        ("advise_loaders:missing", [], "has no attribute"),
        ("advise_loaders:two_arrays", [], "pass --key <name>, e.g. --key 'a'"),
        ("advise_loaders:images", ["--key", "img"], "Pass --key <one of these>."),
        ("advise_loaders:singles", [], "nothing to reassign"),
        ("builtin:digits", ["--step-ms", "-1"], "step time must be positive"),
    ],
)
def test_advise_errors_exit_2_and_say_what_to_do(user_module, capsys, spec, extra, message):
    assert main(["advise", spec, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "key=" not in err

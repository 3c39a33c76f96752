"""``noisepair demo``: train the same small model twice, random vs matched pairing, and compare.

The two arms differ only in the pairing (see :mod:`noisepair.demo.train`). Quality is the exact
W2 distance to held-out data (:mod:`noisepair.demo.metrics`), measured along training with 1, 4
and 50 sampler steps. By default the A/B runs on two data sets: the 64-d digits, and the same
digits projected to 2-d, where matching shortens the squared paths far more; side by side they
show the regime map's point, that the dimension decides what matching buys.

Per data set the report gives, for each sampler step count, the matched arm's final W2 change
against random and whether it is within noise (:func:`noisepair.demo.metrics.compare`); the
steps-to-target ``speedup`` on one number fixed in advance, the 50-step W2 (null when the
matched arm never reaches random's final quality, with ``speedup_upper_bound`` instead); the
straightness of each arm's final model: the evaluations an adaptive solver needs (RK45,
rectified flow) and the discretisation error of 1, 2 and 4 sampler steps against 100.

``scope`` matches several batches together; ``pool`` gives the matched arm DANSM's noise pool
with its greedy rule (:mod:`noisepair.pool`).
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from noisepair.demo.data import load
from noisepair.demo.metrics import compare, speedup, w2_floor
from noisepair.demo.train import ArmResult, sampler_label, train_arm

#: settings of ``--quick`` and of the default run (``--steps`` overrides ``steps``).
PRESETS = {
    "quick": {"steps": 2000, "eval_every": 200, "batch_size": 128},
    "default": {"steps": 10000, "eval_every": 500, "batch_size": 128},
}
#: the data sets of a default run: where matching does little, and where it does most.
DEFAULT_DATA = ("digits", "digits-d2")
SAMPLE_STEPS = (1, 4, 50)
HEADLINE_SAMPLE_STEPS = 50
SMOOTH_WINDOW = 3
#: the marginal error the demo fits the semi-discrete potentials to (--semidiscrete)
SD_TOL = 0.05
NOISE_RULE = (
    "a change is within noise when the gap between the arms' final W2 (mean of the last "
    f"{SMOOTH_WINDOW} checkpoints) is at most twice the RMS change from one checkpoint to the "
    "next over the second half of training, both arms pooled: the curves still move that much, "
    "so the order could reverse if training stopped a checkpoint earlier or later"
)
STRUCTURAL_NOTE = (
    "with random pairing the rectified-flow velocity at t=0 is E[x] - z, so one Euler step lands "
    "near the data mean: part of any 1-step gain is structural; the discretisation error and "
    "the adaptive solver's evaluations measure straightness directly"
)


def run_demo(
    out: str | Path = "noisepair-demo",
    *,
    data: str | tuple[str, ...] = DEFAULT_DATA,
    quick: bool = False,
    steps: int | None = None,
    eval_every: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    objective: str = "rf",
    hidden: int = 256,
    progress: bool = True,
    threads: int | None = 1,
    scope: int = 1,
    pool: int | None = None,
    persistent: int | None = None,
    semidiscrete: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run the A/B on each data set of ``data`` and write ``report.json`` and the figures to
    ``out``; return the report."""
    import torch

    started = time.perf_counter()
    names = (data,) if isinstance(data, str) else tuple(data)
    datasets = {name: load(name) for name in names}  # an unknown name fails before training
    preset = dict(PRESETS["quick" if quick else "default"])
    if steps is not None:
        preset["steps"] = int(steps)
        if eval_every is None:
            preset["eval_every"] = max(1, int(steps) // 10)
    if eval_every is not None:
        preset["eval_every"] = int(eval_every)
    if batch_size is not None:
        preset["batch_size"] = int(batch_size)
    if preset["steps"] < 1:
        raise ValueError(f"steps must be >= 1, got {preset['steps']}.")
    method, options = matched_method(scope, pool, persistent)
    if semidiscrete and (scope > 1 or pool is not None or persistent is not None):
        raise ValueError(
            "--semidiscrete lets the noise pick the data: it replaces --scope, --pool and "
            "--persistent."
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(
        preset,
        data=list(names),
        seed=seed,
        objective=objective,
        model=f"MLP {hidden}x3",
        scope=scope,
        pool=pool,
        persistent=persistent,
        semidiscrete=semidiscrete,
        matched_method="semidiscrete" if semidiscrete else method,
        method_options=options,
        optimizer="Adam lr=1e-3",
        ema=0.99,
        sample_steps=list(SAMPLE_STEPS),
        smooth_window=SMOOTH_WINDOW,
        quick=quick,
    )
    matched_label = (
        f"{method}{f', scope {scope}' if scope > 1 else ''}{f', pool {pool}' if pool else ''}"
        f"{f', persistent {persistent}' if persistent else ''}"
    )
    if semidiscrete:
        matched_label = f"semi-discrete OT fitted to tol {SD_TOL}: the noise picks the data"
    log(
        f"noisepair demo: {' and '.join(names)}; {objective}, {preset['steps']} steps x batch "
        f"{preset['batch_size']}, each twice: noise as drawn (random) vs matched ({matched_label})"
    )
    previous_threads = torch.get_num_threads()
    if threads:
        # A small MLP runs best on one thread; more only fight the prefetch thread for cores.
        torch.set_num_threads(int(threads))
    try:
        runs, arms_of = {}, {}
        for name, (train, held_out) in datasets.items():
            arms = {}
            sd = None
            if semidiscrete:
                from noisepair.semidiscrete import SemiDiscrete

                began = time.perf_counter()
                sd = SemiDiscrete.fit(train, tol=SD_TOL, seed=seed)
                log(
                    f"{name}: semi-discrete potentials fitted in {time.perf_counter() - began:.1f} s "
                    f"(marginal chi-square {sd.report.chi2:.3g})"
                )
            for arm, m in (("random", "random"), ("matched", method)):
                matched = arm == "matched"
                arms[arm] = train_arm(
                    train,
                    held_out,
                    method=m,
                    objective=objective,
                    steps=preset["steps"],
                    batch_size=preset["batch_size"],
                    eval_every=preset["eval_every"],
                    sample_steps=SAMPLE_STEPS,
                    seed=seed,
                    hidden=hidden,
                    progress=progress,
                    desc=f"{name} {arm:>7}",
                    scope=scope if matched else 1,
                    pool=pool if matched else None,
                    persistent=persistent if matched else None,
                    semidiscrete=sd if matched else None,
                    method_options=options if matched else None,
                )
            runs[name] = data_report(name, arms, objective, train, held_out)
            arms_of[name] = arms
        report = {
            "headline": [headline(r) for r in runs.values()],
            "noise_rule": NOISE_RULE,
            "runs": runs,
            "settings": settings,
        }
        log("writing figures ...")
        report["figures"] = _figures(out, runs, arms_of, datasets, objective, preset, settings)
        report["seconds"] = {
            "total": round(time.perf_counter() - started, 1),
            **{
                f"{n} {a}": round(r.seconds, 1)
                for n, arms in arms_of.items()
                for a, r in arms.items()
            },
        }
        report["versions"] = _versions()
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        log(summary(report, out))
        return report
    finally:
        torch.set_num_threads(previous_threads)


def matched_method(
    scope: int, pool: int | None, persistent: int | None = None
) -> tuple[str, dict | None]:
    """The matched arm's method: exact per batch (``auto`` picks the fastest exact solver for
    the dimension); the auction where it pays for a large scope; DANSM's greedy rule for a pool;
    exact per batch with LOOM-CFM's persistent seeds."""
    if int(scope) < 1 or (pool is not None and int(pool) < 1):
        raise ValueError(f"scope and pool must be >= 1, got scope={scope}, pool={pool}.")
    if persistent is not None and (int(persistent) < 1 or pool is not None):
        raise ValueError(
            f"--persistent K keeps K >= 1 seeds per training point and replaces a pool; got "
            f"persistent={persistent}, pool={pool}."
        )
    if pool is not None and scope > 1:
        raise ValueError("choose --scope or --pool: a pool replaces the match scope.")
    if pool is not None:
        return "greedy", None
    if scope > 1:
        return "auto", {"approximate": True}
    return "auto", None


def describe(name: str, dim: int) -> str:
    """What a data set is, for headlines and figure titles."""
    if name == "digits":
        return "digits (64-d pixels)"
    if name.startswith("digits-d"):
        return f"digits projected to {dim}-d (PCA)"
    return f"{name} ({dim}-d)"


def data_report(
    name: str, arms: dict[str, ArmResult], objective: str, train: np.ndarray, held: np.ndarray
) -> dict[str, Any]:
    """One data set's results: per-sampler comparison, the 50-step speedup, straightness."""
    steps = arms["random"].steps
    headline_metric = "w2_" + sampler_label(objective, HEADLINE_SAMPLE_STEPS)
    by_sampler = {
        metric: compare(
            arms["random"].curves[metric], arms["matched"].curves[metric], SMOOTH_WINDOW
        )
        for metric in arms["random"].curves
    }
    sp = speedup(
        steps,
        arms["random"].curves[headline_metric],
        arms["matched"].curves[headline_metric],
        SMOOTH_WINDOW,
    )
    return {
        "data": name,
        "description": describe(name, train.shape[1]),
        "dim": int(train.shape[1]),
        "train_size": len(train),
        "held_out_size": len(held),
        "w2_floor": w2_floor(train, held),
        "by_sampler": by_sampler,
        "metric": headline_metric,
        "metric_description": (
            f"exact W2 (squared-Euclidean cost, sqrt) between {len(held)} generated samples and "
            f"the {len(held)} held-out samples, in data space ({train.shape[1]}-d); samples "
            "from the same fixed noise for every checkpoint and arm, "
            f"{HEADLINE_SAMPLE_STEPS} {'Euler' if objective == 'rf' else 'DDIM'} steps. "
            "Lower is better."
        ),
        "speedup": sp["speedup"] if sp["reached"] else None,
        "speedup_upper_bound": None if sp["reached"] else sp["speedup"],
        "speedup_reached": sp["reached"],
        "steps_to_target": {"random": sp["steps_baseline"], "matched": sp["steps_other"]},
        "target": sp["target"],
        "speedup_definition": (
            f"target = the random arm's final {headline_metric} (mean of its last "
            f"{SMOOTH_WINDOW} checkpoints); an arm reaches it at the first checkpoint where its "
            f"trailing mean of {SMOOTH_WINDOW} checkpoints is <= target; speedup = random's "
            "steps / matched's steps. If matched never reaches it, speedup is null and "
            "speedup_upper_bound = random's steps / the last step (matched would need more)."
        ),
        "checkpoints": steps,
        "curves": {arm: r.curves for arm, r in arms.items()},
        "path_cost_ratio": {arm: round(r.cost_ratio, 4) for arm, r in arms.items()},
        "straightness": _straightness(arms, objective, train),
    }


def headline(run: dict) -> str:
    """What got better and what did not, per sampler step count, and the path gain."""
    parts = []
    for metric, c in run["by_sampler"].items():
        n = int(re.search(r"\d+$", metric)[0])
        pct = f"{c['change'] * 100:+.0f}%"
        name = f"{n}-step W2"
        parts.append(
            f"{name} unchanged ({pct}, within noise)" if c["within_noise"] else f"{name} {pct}"
        )
    ratio = run["path_cost_ratio"]["matched"]
    return (
        f"{run['description']}: "
        + ", ".join(parts)
        + f"; squared paths {(1 - ratio) * 100:.0f}% shorter"
    )


def _straightness(arms: dict, objective: str, train: np.ndarray) -> dict[str, Any]:
    """Adaptive-solver evaluations (rectified flow) and K-step discretisation error per arm."""
    from noisepair.demo.metrics import adaptive_nfe, discretisation_error
    from noisepair.demo.objectives import get_objective

    obj = get_objective(objective, clip_sample=float(np.ceil(np.abs(train).max())))
    out: dict[str, Any] = {"discretisation_error": {}, "reference_steps": 100, "eval_points": None}
    for arm, r in arms.items():
        r.model.eval()
        z = r.eval_noise
        out["eval_points"] = len(z)
        disc = discretisation_error(
            lambda z_, k, m=r.model: obj.sample(m, z_, k).numpy(), z, (1, 2, 4)
        )
        out["discretisation_error"][arm] = {str(k): v for k, v in disc.items()}
        if objective == "rf":
            out.setdefault("nfe_rk45", {})[arm] = adaptive_nfe(r.model, z)
    return out


def _figures(
    out: Path,
    runs: dict,
    arms_of: dict,
    datasets: dict,
    objective: str,
    preset: dict,
    settings: dict,
) -> list[str]:
    import torch

    from noisepair.demo.objectives import get_objective
    from noisepair.demo.plots import plot_paths_2d, plot_quality, plot_samples

    trained = (
        f"{settings['model']}, {preset['steps']} steps x batch {preset['batch_size']}, "
        f"{'rectified flow' if objective == 'rf' else 'DDPM'}"
    )
    plot_quality(out / "quality_vs_step.png", runs, trained)
    samples: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, arms in arms_of.items():
        train = datasets[name][0]
        obj = get_objective(objective, clip_sample=float(np.ceil(np.abs(train).max())))
        samples[name] = {}
        for arm, r in arms.items():
            r.model.eval()
            samples[name][arm] = {}
            for n in SAMPLE_STEPS:
                with torch.no_grad():
                    samples[name][arm][n] = obj.sample(r.model, r.eval_noise, n).numpy()
    held = {name: held_out for name, (_, held_out) in datasets.items()}
    plot_samples(out / "samples.png", runs, samples, held, trained)
    figures = ["quality_vs_step.png", "samples.png"]
    flat = [n for n, r in runs.items() if r["dim"] == 2]
    if flat and not settings["semidiscrete"]:  # SD-FM's batches are no shuffled pass to redraw
        name = flat[0]
        runs[name]["paths_2d"] = plot_paths_2d(
            out / "paths_2d.png",
            datasets[name][0],
            runs[name]["description"],
            batch_size=preset["batch_size"],
            seed=settings["seed"],
            method=settings["matched_method"],
            scope=settings["scope"],
            pool=settings["pool"],
            persistent=settings["persistent"],
            method_options=settings["method_options"],
        )
        figures.append("paths_2d.png")
    return figures


def _versions() -> dict[str, str]:
    import torch

    import noisepair

    return {
        "noisepair": noisepair.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def summary(report: dict, out: Path | str) -> str:
    """For the terminal: the headline first, then how to read it, per data set."""
    lines = [
        "",
        "Result (matched vs random pairing, one seed, all else equal; W2 to held-out data, "
        "lower is better):",
    ]
    lines += [f"  {h}" for h in report["headline"]]
    for run in report["runs"].values():
        lines += ["", f"{run['description']} (real-data floor W2 {run['w2_floor']:.3f}):"]
        for metric, c in run["by_sampler"].items():
            f = c["final"]
            verdict = "within noise" if c["within_noise"] else "beyond noise"
            lines.append(
                f"  {metric:>12}: random {f['random']:.3f}, matched {f['matched']:.3f} "
                f"({c['change'] * 100:+.1f}%; noise band {c['noise']:.3f}: {verdict})"
            )
        s = run["steps_to_target"]
        if run["speedup_reached"]:
            reach = (
                f"matched at step {s['matched']}, random at step {s['random']}: "
                f"{run['speedup']:.2f}x"
            )
        else:
            reach = (
                f"random at step {s['random']}, matched not within {run['checkpoints'][-1]} "
                f"steps: no speedup (at most {run['speedup_upper_bound']:.2f}x)"
            )
        lines.append(f"  steps to random's final {run['metric']}: {reach}")
        st = run["straightness"]
        d = st["discretisation_error"]
        straight = "; ".join(
            f"K={k} {d['random'][k]:.3g} -> {d['matched'][k]:.3g}" for k in ("1", "2", "4")
        )
        lines.append(f"  discretisation error |Phi_K - Phi_100|^2, random -> matched: {straight}")
        if "nfe_rk45" in st:
            n = st["nfe_rk45"]
            lines.append(
                f"  adaptive RK45 (rtol=atol=1e-5) evaluations: random {n['random']}, "
                f"matched {n['matched']}"
            )
        if "paths_2d" in run:
            p = run["paths_2d"]["mean_over_batches"]
            lines.append(
                f"  crossing noise-to-sample paths per batch of {p['batch_size']}: random "
                f"{p['random']['crossings_mean']:.0f}, matched {p['matched']['crossings_mean']:.0f}"
            )
    lines += [
        "",
        f"within noise: {NOISE_RULE}.",
        f"1 step: {STRUCTURAL_NOTE}.",
        f"report and figures: {Path(out) / 'report.json'}, " + ", ".join(report.get("figures", [])),
    ]
    return "\n".join(lines)

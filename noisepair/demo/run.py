"""``noisepair demo``: train the same small model twice, random vs matched pairing, and compare.

The two arms differ only in the pairing (see :mod:`noisepair.demo.train`). Quality is the exact
W2 distance to held-out data (:mod:`noisepair.demo.metrics`), measured along training with 1, 4
and 50 sampler steps. The headline ``speedup`` is computed from one number fixed in advance, the
50-step W2 (``w2_euler50`` for rectified flow): it measures how fast the model learns the data
distribution, not how straight its paths are. Few-step numbers, where straighter paths show
most, are reported next to it in ``speedup_by_sampler``, and so is the straightness of each
arm's final model: the evaluations an adaptive solver needs (RK45, rectified flow) and the
discretisation error of 1, 2 and 4 sampler steps against 100.

``scope`` matches several batches together (the auction where it pays, see ``method="auto"``);
``pool`` gives the matched arm DANSM's noise pool with its greedy rule (:mod:`noisepair.pool`).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from noisepair.demo.data import load
from noisepair.demo.metrics import speedup, w2_floor
from noisepair.demo.train import sampler_label, train_arm

#: settings of ``--quick`` and of the default run (``--steps`` overrides ``steps``).
PRESETS = {
    "quick": {"steps": 2000, "eval_every": 100, "batch_size": 128},
    "default": {"steps": 10000, "eval_every": 400, "batch_size": 128},
}
SAMPLE_STEPS = (1, 4, 50)
HEADLINE_SAMPLE_STEPS = 50
SMOOTH_WINDOW = 3


def run_demo(
    out: str | Path = "noisepair-demo",
    *,
    data: str = "digits",
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
    log=print,
) -> dict[str, Any]:
    """Run the A/B and write ``report.json`` and the figures to ``out``; return the report."""
    import torch

    started = time.perf_counter()
    preset = dict(PRESETS["quick" if quick else "default"])
    if steps is not None:
        preset["steps"] = int(steps)
        if eval_every is None:
            preset["eval_every"] = max(1, int(steps) // 20)
    if eval_every is not None:
        preset["eval_every"] = int(eval_every)
    if batch_size is not None:
        preset["batch_size"] = int(batch_size)
    if preset["steps"] < 1:
        raise ValueError(f"steps must be >= 1, got {preset['steps']}.")
    method, options = matched_method(scope, pool)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if threads:
        # A small MLP runs best on one thread; more only fight the prefetch thread for cores.
        torch.set_num_threads(int(threads))
    try:
        train, held_out = load(data)
        floor = w2_floor(train, held_out)
        settings = dict(
            preset,
            data=data,
            seed=seed,
            objective=objective,
            model=f"MLP {hidden}x3",
            scope=scope,
            pool=pool,
            matched_method=method,
            method_options=options,
            optimizer="Adam lr=1e-3",
            ema=0.99,
            train_size=len(train),
            held_out_size=len(held_out),
            dim=int(train.shape[1]),
            sample_steps=list(SAMPLE_STEPS),
            smooth_window=SMOOTH_WINDOW,
            quick=quick,
        )
        log(
            f"noisepair demo: {data} ({len(train)} train / {len(held_out)} held out, "
            f"{train.shape[1]}-d), {objective}, {preset['steps']} steps x batch "
            f"{preset['batch_size']}, twice: random vs matched ({method}"
            f"{f', scope {scope}' if scope > 1 else ''}{f', pool {pool}' if pool else ''}) pairing"
        )
        arms = {}
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
                desc=f"{arm:>7} ({m})",
                scope=scope if matched else 1,
                pool=pool if matched else None,
                method_options=options if matched else None,
            )
        report = _report(arms, objective, floor, settings)
        report["straightness"] = _straightness(arms, objective, train)
        log("writing figures ...")
        report["figures"] = _figures(out, arms, report, objective, train, held_out, seed)
        report["seconds"] = {
            "total": round(time.perf_counter() - started, 1),
            **{arm: round(r.seconds, 1) for arm, r in arms.items()},
        }
        report["versions"] = _versions()
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        log(summary(report, out))
        return report
    finally:
        torch.set_num_threads(previous_threads)


def matched_method(scope: int, pool: int | None) -> tuple[str, dict | None]:
    """The matched arm's method: exact per batch; the auction where it pays for a large scope;
    DANSM's greedy rule for a pool."""
    if int(scope) < 1 or (pool is not None and int(pool) < 1):
        raise ValueError(f"scope and pool must be >= 1, got scope={scope}, pool={pool}.")
    if pool is not None and scope > 1:
        raise ValueError("choose --scope or --pool: a pool replaces the match scope.")
    if pool is not None:
        return "greedy", None
    if scope > 1:
        return "auto", {"approximate": True}
    return "hungarian", None


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


def _report(arms: dict, objective: str, floor: float, settings: dict) -> dict[str, Any]:
    steps = arms["random"].steps
    headline = "w2_" + sampler_label(objective, HEADLINE_SAMPLE_STEPS)
    by_sampler = {}
    for name in arms["random"].curves:
        sp = speedup(
            steps, arms["random"].curves[name], arms["matched"].curves[name], SMOOTH_WINDOW
        )
        by_sampler[name] = {
            "speedup": round(sp["speedup"], 3),
            "reached": sp["reached"],
            "target": sp["target"],
            "steps_to_target": {"random": sp["steps_baseline"], "matched": sp["steps_other"]},
            "final": {arm: r.curves[name][-1] for arm, r in arms.items()},
        }
    head = by_sampler[headline]
    return {
        "speedup": head["speedup"],
        "speedup_reached": head["reached"],
        "steps_to_target": head["steps_to_target"],
        "metric": headline,
        "metric_description": (
            f"exact W2 (POT ot.emd2, squared-Euclidean cost, sqrt) between {settings['held_out_size']} "
            f"generated samples and the {settings['held_out_size']} held-out samples, in data space "
            f"({settings['dim']}-d); samples from the same fixed noise for every checkpoint and arm, "
            f"{HEADLINE_SAMPLE_STEPS} {'Euler' if objective == 'rf' else 'DDIM'} steps. Lower is better."
        ),
        "speedup_definition": (
            f"target = the random arm's final quality (mean of its last {SMOOTH_WINDOW} checkpoints); "
            f"an arm reaches it at the first checkpoint where the trailing mean of {SMOOTH_WINDOW} "
            "checkpoints is <= target; speedup = random's steps / matched's steps. If the matched "
            "arm never reaches it, speedup_reached is false and speedup is an upper bound "
            "(random's steps / last step)."
        ),
        "target": head["target"],
        "w2_floor": floor,
        "speedup_by_sampler": by_sampler,
        "checkpoints": steps,
        "curves": {arm: r.curves for arm, r in arms.items()},
        "path_cost_ratio": {arm: round(r.cost_ratio, 4) for arm, r in arms.items()},
        "settings": settings,
    }


def _figures(
    out: Path,
    arms: dict,
    report: dict,
    objective: str,
    train: np.ndarray,
    held_out: np.ndarray,
    seed: int,
) -> list[str]:
    import torch

    from noisepair.demo.objectives import get_objective
    from noisepair.demo.plots import crossing_stats, plot_paths_2d, plot_quality, plot_samples

    plot_quality(
        out / "quality_vs_step.png",
        report["checkpoints"],
        report["curves"],
        report["metric"],
        report["target"],
        report["steps_to_target"],
        report["w2_floor"],
    )
    obj = get_objective(objective, clip_sample=float(np.ceil(np.abs(train).max())))
    samples: dict[str, dict[str, np.ndarray]] = {}
    for arm, r in arms.items():
        r.model.eval()
        samples[arm] = {}
        for n in SAMPLE_STEPS:
            with torch.no_grad():
                samples[arm][f"{n} step{'s' if n > 1 else ''}"] = obj.sample(
                    r.model, r.eval_noise, n
                ).numpy()
    image_shape = (8, 8) if train.shape[1] == 64 else None
    plot_samples(out / "samples.png", samples, held_out, image_shape)
    report["paths_2d"] = {
        "one_batch": plot_paths_2d(out / "paths_2d.png", seed=seed),
        "mean_over_batches": [crossing_stats(name, seed=seed) for name in ("8gaussians", "moons")],
    }
    return ["quality_vs_step.png", "samples.png", "paths_2d.png"]


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
    """A few lines for the terminal: the headline and how to read it."""
    s = report["steps_to_target"]
    lines = [
        f"\nmetric: {report['metric']} (exact W2 to held-out data, lower is better; "
        f"real-data floor {report['w2_floor']:.3f})"
    ]
    for name, v in report["speedup_by_sampler"].items():
        r, m = v["final"]["random"], v["final"]["matched"]
        better = "matched" if m < r else "random"
        sp = (
            f"{v['speedup']:.2f}x" if v["reached"] else f"<{v['speedup']:.2f}x (target not reached)"
        )
        lines.append(
            f"  {name:>12}: final W2 random {r:.3f}, matched {m:.3f} ({better} better "
            f"by {abs(r - m) / max(r, m) * 100:.1f}%); steps-to-target speedup {sp}"
        )
    head = (
        f"{report['speedup']:.2f}x" if report["speedup_reached"] else f"<{report['speedup']:.2f}x"
    )
    matched_at = (
        f"at step {s['matched']}"
        if s["matched"] is not None
        else f"not within {report['checkpoints'][-1]} steps"
    )
    lines.append(
        f"speedup ({report['metric']}): {head} -- random reaches its final quality at step "
        f"{s['random']}, matched {matched_at}"
    )
    st = report.get("straightness")
    if st:
        d = st["discretisation_error"]
        if "nfe_rk45" in st:
            n = st["nfe_rk45"]
            lines.append(
                f"adaptive RK45 (rtol=atol=1e-5) evaluations: random {n['random']}, "
                f"matched {n['matched']}"
            )
        lines.append(
            "discretisation error |Phi_K - Phi_100|^2: "
            + "; ".join(
                f"K={k} random {d['random'][k]:.3g}, matched {d['matched'][k]:.3g}"
                for k in ("1", "2", "4")
            )
        )
    ratio = report["path_cost_ratio"]["matched"]
    lines.append(
        f"matched squared path length: {ratio:.2f} of random's ({(1 - ratio) * 100:.0f}% shorter)"
    )
    lines.append(
        f"report and figures: {Path(out) / 'report.json'}, " + ", ".join(report.get("figures", []))
    )
    return "\n".join(lines)

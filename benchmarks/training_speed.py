"""Does matched noise train faster? Steps-to-target ratios over seeds, methods, objectives and
batch sizes, on the demo's 8x8 digits (64-d), on CPU.

For every (objective, batch size, seed) the ``random`` arm (noise paired as drawn) sets the
target: its final quality, the mean of its last 3 checkpoints. Each other method trains from
the same initial weights on the same batches, with the same time draws and (for the permutation
methods) the same noise draws, and its speedup is random's steps to the target / its own steps
(the demo's definition, :func:`noisepair.demo.metrics.speedup`). Quality: exact W2 (POT) between
500 generated and the 500 held-out digits, 50 sampler steps (Euler for rf, DDIM for ddpm); the
4- and 1-step numbers are reported too.

    python benchmarks/training_speed.py                 # the full grid, ~15-25 min on 2 cores
    python benchmarks/training_speed.py --quick         # a smoke run (tiny, not a result)

Writes benchmarks/results/training_speed.md (and .json with every curve).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, machine_info, machine_line, table

METHODS = ("random", "hungarian", "greedy", "knn")
KNN_K = 4  # Improved Immiscible Diffusion's k for flow matching
OBJECTIVES = ("rf", "ddpm")
BATCH_SIZES = (64, 256)
SAMPLE_STEPS = (1, 4, 50)
HEADLINE = 50


def _run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from noisepair.demo.data import load
    from noisepair.demo.train import train_arm

    train, held_out = load("digits")
    options = {"k": KNN_K} if job["method"] == "knn" else None
    res = train_arm(
        train,
        held_out,
        method=job["method"],
        objective=job["objective"],
        steps=job["steps"],
        batch_size=job["batch_size"],
        eval_every=job["eval_every"],
        sample_steps=SAMPLE_STEPS,
        seed=job["seed"],
        method_options=options,
        progress=False,
    )
    return dict(
        job,
        checkpoints=res.steps,
        curves=res.curves,
        cost_ratio=res.cost_ratio,
        seconds=res.seconds,
    )


def _label(objective: str, n: int) -> str:
    return f"w2_{'euler' if objective == 'rf' else 'ddim'}{n}"


def summarize(runs: list[dict]) -> list[dict]:
    from noisepair.demo.metrics import speedup

    by_key = {(r["objective"], r["batch_size"], r["method"], r["seed"]): r for r in runs}
    rows = []
    for objective, bs, method in itertools.product(OBJECTIVES, BATCH_SIZES, METHODS):
        seeds = sorted(s for (o, b, m, s) in by_key if (o, b, m) == (objective, bs, method))
        if not seeds:
            continue
        row = {
            "objective": objective,
            "batch_size": bs,
            "method": method,
            "seeds": len(seeds),
            "cost_ratio": float(
                np.mean([by_key[objective, bs, method, s]["cost_ratio"] for s in seeds])
            ),
        }
        for n in SAMPLE_STEPS:
            name = _label(objective, n)
            ratios, reached, finals = [], 0, []
            for s in seeds:
                base, other = by_key[objective, bs, "random", s], by_key[objective, bs, method, s]
                sp = speedup(base["checkpoints"], base["curves"][name], other["curves"][name])
                ratios.append(sp["speedup"])
                reached += sp["reached"]
                finals.append(other["curves"][name][-1])
            row[f"{n}"] = {
                "ratios": ratios,
                "mean": float(np.mean(ratios)),
                "sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else 0.0,
                "min": float(np.min(ratios)),
                "max": float(np.max(ratios)),
                "reached": reached,
                "final_w2": float(np.mean(finals)),
                "final_w2_sd": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
            }
        rows.append(row)
    return rows


def _cell(stats: dict) -> str:
    """mean ± sd [min, max] of a speedup over seeds, and how many seeds never got there."""
    missed = len(stats["ratios"]) - stats["reached"]
    return f"{stats['mean']:.2f} ± {stats['sd']:.2f} [{stats['min']:.2f}, {stats['max']:.2f}]" + (
        f" ({missed} not reached)" if missed else ""
    )


def _setup(settings: dict) -> list[str]:
    return [
        "## Setup",
        "",
        f"- Data: scikit-learn's 8x8 digits (64-d, scaled to [-1, 1]), {settings['train_size']} "
        f"train / {settings['held_out_size']} held out (fixed split).",
        f"- Model: MLP 256x3 with a sinusoidal time embedding; Adam lr 1e-3; EMA 0.99 of the "
        f"weights is evaluated. {settings['steps']} steps per run, a checkpoint every "
        f"{settings['eval_every']} steps.",
        "- Objectives: `rf` rectified flow (t=0 noise, x_t = t x + (1-t) z, target x - z; "
        "Euler sampling); `ddpm` epsilon prediction, linear betas 1e-4..0.02, 1000 steps (DDIM "
        "sampling, eta=0, trailing spacing). Inputs from `noisepair.adapters`.",
        f"- Methods: `hungarian` (exact assignment per batch), `greedy` (DANSM's greedy, per "
        f"batch), `knn` (k={KNN_K}: each sample keeps the nearest of {KNN_K} fresh draws; not a "
        "permutation, its noise is not exactly N(0, I)), against `random` (noise as drawn). "
        "Scope: one batch.",
        f"- Seeds: {settings['seeds']} per arm; for a given seed all arms share initial weights, "
        "batch order and time draws, and the permutation methods share the noise draws.",
        "- Metric: exact W2 (POT `ot.emd2`, squared-Euclidean cost, square root) between 500 "
        "samples generated from fixed noise and the 500 held-out digits. Lower is better; two "
        f"real samples of the data are {settings['w2_floor']:.3f} apart (the floor).",
        "- Speedup (per seed): the random arm's steps to reach its own final quality (mean of its "
        "last 3 checkpoints; first checkpoint whose trailing 3-mean is at or below it) divided "
        "by the method's steps to reach the same value. When the method never reaches it, the "
        "upper bound random's steps / last step is used and the cell says so. Cells: mean ± sd "
        "[min, max] over seeds; > 1 means faster than random.",
        "",
    ]


def _headline(rows: list[dict]) -> list[str]:
    def row(r):
        random = r["method"] == "random"
        final = f"{r['50']['final_w2']:.3f} ± {r['50']['final_w2_sd']:.3f}"
        ratio = "1.000" if random else f"{r['cost_ratio']:.3f}"
        speed = "1 (reference)" if random else _cell(r["50"])
        return [r["objective"], r["batch_size"], r["method"], ratio, speed, final]

    header = [
        "objective",
        "batch",
        "method",
        "path² ratio",
        "speedup (50 steps)",
        "final W2 (50 steps)",
    ]
    return [f"## Headline: speedup at {HEADLINE} sampler steps", "", *table(header, map(row, rows))]


def _few_steps(rows: list[dict]) -> list[str]:
    def row(r):
        random = r["method"] == "random"
        return [
            r["objective"],
            r["batch_size"],
            r["method"],
            "1" if random else _cell(r["1"]),
            f"{r['1']['final_w2']:.3f}",
            "1" if random else _cell(r["4"]),
            f"{r['4']['final_w2']:.3f}",
        ]

    header = [
        "objective",
        "batch",
        "method",
        "speedup (1 step)",
        "final W2 (1)",
        "speedup (4 steps)",
        "final W2 (4)",
    ]
    return ["## Few-step sampling (1 and 4 sampler steps)", "", *table(header, map(row, rows))]


def write_markdown(path: Path, rows: list[dict], settings: dict, seconds: float) -> None:
    quick = " --quick" if settings["quick"] else ""
    lines = [
        "# Training speed: matched vs random noise pairing",
        "",
        f"Generated by `python benchmarks/training_speed.py{quick}` on {settings['date']}, "
        f"in {seconds / 60:.1f} min.",
        "",
        f"{machine_line(settings['machine'])} No timing is reported here, only steps, which do "
        "not depend on load; each run uses 1 torch thread, on the CPU.",
        "",
        *_setup(settings),
        *_headline(rows),
        "",
        *_few_steps(rows),
        "",
        "path² ratio: mean squared noise-to-sample distance of the method's pairs / of "
        "the pairs as drawn, over the training batches.",
        "",
    ]
    if settings.get("notes"):
        lines += ["## What we see", "", settings["notes"], ""]
    path.write_text("\n".join(lines))


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, 200 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 3000)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (default 2)")
    parser.add_argument("--out", default=str(RESULTS / "training_speed.md"))
    parser.add_argument("--notes", default=None, help="a file whose text goes under 'What we see'")
    parser.add_argument(
        "--objectives",
        nargs="+",
        choices=OBJECTIVES,
        default=list(OBJECTIVES),
        help="objectives to run (default: both)",
    )
    parser.add_argument(
        "--merge",
        default=None,
        metavar="JSON",
        help="take the runs of the other objectives from this earlier .json",
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or (200 if args.quick else 3000)
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.eval_every = max(1, args.steps // 20)
    return args


def _train_all(args: argparse.Namespace) -> list[dict]:
    """Every (objective, batch size, seed, method) run, in ``args.workers`` processes."""
    jobs = [
        dict(
            objective=o,
            batch_size=b,
            method=m,
            seed=s,
            steps=args.steps,
            eval_every=args.eval_every,
        )
        for o, b, s, m in itertools.product(
            args.objectives, BATCH_SIZES, range(args.seeds), METHODS
        )
    ]
    jobs.sort(key=lambda j: -j["batch_size"])  # big batches first: the workers finish together
    runs = []
    with mp.get_context("spawn").Pool(max(1, args.workers)) as pool:
        for i, run in enumerate(pool.imap_unordered(_run_one, jobs), 1):
            runs.append(run)
            final = run["curves"][_label(run["objective"], 50)][-1]
            print(
                f"[{i}/{len(jobs)}] {run['objective']} bs={run['batch_size']} {run['method']:>9} "
                f"seed={run['seed']}: final W2(50) {final:.3f}, "
                f"path² ratio {run['cost_ratio']:.3f}, {run['seconds']:.0f}s",
                flush=True,
            )
    return runs


def _merge(args: argparse.Namespace, runs: list[dict], seconds: float) -> tuple[list, float]:
    """Add the other objectives' runs of an earlier .json (and their share of its time)."""
    earlier = json.loads(Path(args.merge).read_text())
    kept = [r for r in earlier["runs"] if r["objective"] not in args.objectives]
    if any(r["steps"] != args.steps for r in kept):
        raise SystemExit(f"{args.merge} was run with other settings; rerun everything.")
    seconds += earlier["seconds"] * len(kept) / max(1, len(earlier["runs"]))
    return runs + kept, seconds


def main(argv=None) -> int:
    from noisepair.demo.data import load
    from noisepair.demo.metrics import w2_floor

    args = _parse(argv)
    info = machine_info()
    start = time.perf_counter()
    runs = _train_all(args)
    seconds = time.perf_counter() - start
    if args.merge:
        runs, seconds = _merge(args, runs, seconds)
    train, held_out = load("digits")
    settings = {
        "quick": args.quick,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "seeds": args.seeds,
        "train_size": len(train),
        "held_out_size": len(held_out),
        "w2_floor": w2_floor(train, held_out),
        "machine": info,
        "date": _dt.date.today().isoformat(),
        "knn_k": KNN_K,
        "notes": Path(args.notes).read_text().strip() if args.notes else None,
    }
    rows = summarize(runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(out, rows, settings, seconds)
    order = sorted(runs, key=lambda r: (r["objective"], r["batch_size"], r["method"], r["seed"]))
    record = {"settings": settings, "seconds": seconds, "summary": rows, "runs": order}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""torchcfm's exact OT sampler beside noisepair.torchcfm's, on the same batches.

    python benchmarks/torchcfm_sampler.py [--quick]   -> benchmarks/results/torchcfm_sampler.md

For every batch size B and dimension D, on harness.make_data's batches (x1 the data, x0 its
N(0, I) noise; float32 torch tensors on the CPU), both samplers' ``sample_plan(x0, x1)`` as a
torchcfm training step calls it:

- ``torchcfm``: ``torchcfm.optimal_transport.OTPlanSampler("exact")``, its default
  ``replace=True``: torch.cdist, POT's ``emd`` on the host (its default numItermax), then B
  pairs drawn from the plan with replacement;
- ``noisepair``: ``noisepair.torchcfm.OTPlanSampler()`` (method "exact": noisepair's auto).

Columns: time per call (harness.best_times, so compare within a row), rows of x0 and of x1
missing from a batch's pairs (torchcfm: the mean over DRAWS draws from its plan, where a pair
drawn fixes both rows, so x0 and x1 miss alike; noisepair: counted on its output; B rows are
drawn, so a batch repeats as many rows as it misses), and
the total squared cost of the pairs over the exact optimum (POT's emd, numItermax 1e7, float64
cost). For torchcfm the cost of its plan itself is shown too: the plan is optimal, its
sampling is what drops and repeats rows (a sampled batch may even cost less than the optimum:
it holds other pairs).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import ot
import torch
from harness import best_times, machine_info, machine_line, make_data, ratio, table, write_results
from torchcfm.optimal_transport import OTPlanSampler as TorchcfmSampler

from noisepair.torchcfm import OTPlanSampler

FULL_B = (64, 128, 256, 512, 1024)
FULL_D = (2, 64, 3072)
QUICK_B = (64, 256)
QUICK_D = (2, 64)
DRAWS = 20  # torchcfm's samplings of one plan, for its mean missing rows and cost


def optimum_and_cost(x0: torch.Tensor, x1: torch.Tensor) -> tuple[float, np.ndarray]:
    """The exact total squared cost (float64, POT's network simplex) and the float64 cost."""
    c = ot.dist(x0.double().numpy(), x1.double().numpy())
    w = np.full(len(c), 1.0 / len(c))
    return float(ot.emd2(w, w, c, numItermax=10_000_000)) * len(c), c


def missing_rows(rows: torch.Tensor) -> int:
    return len(rows) - len(np.unique(rows.numpy(), axis=0))


def measure(b: int, d: int) -> dict:
    x, z = make_data(b, d)
    x1, x0 = torch.from_numpy(x), torch.from_numpy(z)
    theirs, ours = TorchcfmSampler("exact"), OTPlanSampler()
    best, c = optimum_and_cost(x0, x1)
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT's numItermax warning: the plan-cost column shows it
        pi = theirs.get_map(x0, x1)
        draws = [theirs.sample_map(pi, b, replace=True) for _ in range(DRAWS)]
        times = best_times(
            {
                "torchcfm": lambda: theirs.sample_plan(x0, x1),
                "noisepair": lambda: ours.sample_plan(x0, x1),
            }
        )
    ours_x0, ours_x1 = ours.sample_plan(x0, x1)
    return {
        "times": times,
        "solver": ours.last_info.get("solver", ours.last_info["method"]),
        "theirs_missing": (
            float(np.mean([b - len(np.unique(i)) for i, _ in draws])),
            float(np.mean([b - len(np.unique(j)) for _, j in draws])),
        ),  # equal: the plan is a permutation, so a drawn i fixes its j
        "ours_missing": (missing_rows(ours_x0), missing_rows(ours_x1)),
        "theirs_cost": float(np.mean([c[i, j].sum() for i, j in draws])) / best,
        "theirs_plan_cost": float((pi * c).sum()) * b / best,
        "ours_cost": float(((ours_x0.double() - ours_x1.double()) ** 2).sum()) / best,
    }


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (smoke test)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's intra-op threads (default: torch's); 1 on a loaded machine, where a "
        "thread pool waiting for a descheduled thread swamps millisecond calls",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes, dims = (QUICK_B, QUICK_D) if args.quick else (FULL_B, FULL_D)
    info = machine_info()
    started = time.perf_counter()
    measure(32, 8)  # imports, thread pools and first calls outside the timings
    rows = []
    for d in dims:
        for b in sizes:
            m = measure(b, d)
            t = m["times"]
            rows.append(
                [
                    d,
                    b,
                    _ms(t["torchcfm"]),
                    f"{_ms(t['noisepair'])} ({m['solver']})",
                    ratio(t["noisepair"], t["torchcfm"]),
                    "{:.1f} / {:.1f}".format(*m["theirs_missing"]),
                    "{} / {}".format(*m["ours_missing"]),
                    f"{m['theirs_cost']:.4f} (plan {m['theirs_plan_cost']:.6f})",
                    f"{m['ours_cost']:.6f}",
                ]
            )
            print(rows[-1], flush=True)
    flags = (" --quick" if args.quick else "") + (
        f" --threads {args.threads}" if args.threads else ""
    )
    command = f"python benchmarks/torchcfm_sampler.py{flags}"
    lines = [
        "# torchcfm's exact OT sampler and noisepair.torchcfm's, on the same batches",
        "",
        f"Generated by `{command}` in {time.perf_counter() - started:.0f} s. {machine_line(info)}",
        "",
        "Per call of `sample_plan(x0, x1)` on float32 CPU tensors (harness.make_data: x1 = 8 "
        "gaussians at D=2, noisy prototype images above; x0 = N(0, I)). torchcfm = "
        "`torchcfm.optimal_transport.OTPlanSampler('exact')` with its default replace=True; "
        "noisepair = `noisepair.torchcfm.OTPlanSampler()` (the solver auto chose in brackets). "
        "Times in ms, the fastest of 5 interleaved rounds. Missing = rows of x0 / of x1 absent "
        f"from the batch's pairs (torchcfm: mean over {DRAWS} draws from one plan; B rows are "
        "drawn, so as many others repeat; its plan is a permutation, so a pair drawn fixes both "
        "rows and x0 and x1 miss alike). Cost = total squared distance of the pairs / the "
        "exact optimum (POT emd, numItermax 1e7, float64); torchcfm's plan: the cost of the plan "
        "it samples from. GPU: not measured (no GPU on this machine).",
        "",
        *table(
            [
                "D",
                "B",
                "torchcfm ms",
                "noisepair ms",
                "noisepair/torchcfm",
                "torchcfm missing x0 / x1",
                "noisepair missing x0 / x1",
                "torchcfm cost / optimum",
                "noisepair cost / optimum",
            ],
            rows,
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(write_results("torchcfm_sampler", text, quick=args.quick))


if __name__ == "__main__":
    main()

"""The model-based resume test of tests/test_resume_model.py, with many more sequences than CI
runs: how many random sequences of take / break off / iter() again / state_dict / restore in a
new loader / set_epoch / finish the epoch held, over every inner-loader kind and option.

``python benchmarks/resume_model.py [--examples N] [--steps K] [--kinds a,b] [--scopes 1,3]
[--pools 0,1] [--no-batch-size] [--name NAME]`` -> benchmarks/results/NAME.md (default resume_model). The kinds,
scopes and pools restrict the setups drawn (to aim at one part of the code); every run is
derandomized, so the same arguments replay the same sequences.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import pytest
from harness import machine_info, machine_line, table, write_results
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import initialize, run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_resume_model import KINDS, ResumeModel, setups  # noqa: E402


def machine(kinds, scopes, pools, other_batch_sizes: bool, seen: list):
    class Sequences(ResumeModel):
        @initialize(setup=setups(kinds, scopes, pools))
        def start(self, setup):
            seen.append(setup.kind)
            self.begin(setup)

    Sequences.other_batch_sizes = other_batch_sizes
    return Sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="sequences to run")
    parser.add_argument("--steps", type=int, default=20, help="steps per sequence at most")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--scopes", default="1,2,3")
    parser.add_argument("--pools", default="0,1")
    parser.add_argument(
        "--no-batch-size", action="store_true", help="never restore into another batch size"
    )
    parser.add_argument("--name", default="resume_model")
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    scopes = tuple(int(s) for s in args.scopes.split(","))
    pools = tuple(bool(int(p)) for p in args.pools.split(","))
    info, seen = machine_info(), []
    began = time.perf_counter()
    failure = None
    try:
        run_state_machine_as_test(
            machine(kinds, scopes, pools, not args.no_batch_size, seen),
            settings=settings(
                max_examples=args.examples,
                stateful_step_count=args.steps,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.generate],  # no shrinking: the sequence as found is reported
                suppress_health_check=list(HealthCheck),
            ),
        )
    except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - the failure is the result
        failure = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    seconds = time.perf_counter() - began
    counts = {k: seen.count(k) for k in kinds}
    lines = [
        "# Model-based resume test, long run",
        "",
        f"`python benchmarks/resume_model.py --examples {args.examples} --steps {args.steps} "
        f"--kinds {args.kinds} --scopes {args.scopes} --pools {args.pools}`",
        "",
        f"Sequences run: {len(seen)}, up to {args.steps} steps each; "
        + (
            "**all held**."
            if failure is None
            else f"**the last one failed** (the {len(seen) - 1} before it held)."
        ),
        f"Wall time {seconds:.0f} s.",
        "",
        *table(["inner loader", "sequences"], [(k, counts[k]) for k in kinds]),
        "",
    ]
    if failure is not None:
        lines += ["Failure:", "", "```", failure[:4000], "```", ""]
    lines += [machine_line(info), ""]
    text = "\n".join(lines)
    print(text)
    write_results(args.name, text)


if __name__ == "__main__":
    main()

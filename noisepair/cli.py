"""The ``noisepair`` command: ``demo``, ``advise``, ``check`` and ``bench``.

noisepair demo --quick                      # what does matched noise change, and where?
noisepair advise mypkg.data:make_loader     # does it pay for my data?
noisepair check mypkg.data:make_loader      # is my loader's noise still N(0, I)? (CI guard)
noisepair bench --quick                     # matcher speed on this machine
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: exit codes: the check failed / the command was used wrongly or could not run.
EXIT_FAILED, EXIT_USAGE = 1, 2


class CommandError(Exception):
    """An error the user can fix; printed without a traceback, exit code 2."""


# -- demo -----------------------------------------------------------------------------------
DEMO_EPILOG = """\
examples:
  noisepair demo --quick                 about 1 minute on 2 CPU cores
  noisepair demo                         the full run, about 6 minutes
  noisepair demo --data 8gaussians       one 2-D set only
  noisepair demo --data digits digits-d8 --steps 4000 --seed 1 --out runs/demo-seed1

It trains the same small rectified-flow MLP twice per data set, with the same weights, batches,
noise draws and time draws: once with noise paired as drawn (random), once with the batch's
noise reassigned by exact assignment (matched). By default on two data sets: the 64-d digits,
and the same digits projected to 2-d, where matching shortens paths far more. Quality along
training is the exact W2 distance between generated and held-out samples, for 1, 4 and 50
Euler steps; a change is "within noise" when it is no larger than twice what the curves still
move from one checkpoint to the next at the end of training.

writes DIR/report.json (headline, per data set: changes, speedup, curves, straightness),
DIR/quality_vs_step.png, DIR/samples.png and, when a 2-D set was trained, DIR/paths_2d.png.
"""


#: what the demo imports beyond the library (module: its package), the ``demo`` extra.
DEMO_NEEDS = {
    "torch": "torch",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "ot": "pot",
}
DEMO_INSTALL = "pip install 'noisepair[demo]' (in a source checkout: pip install -e '.[demo]')"


def require_demo_extra(what: str, modules: Sequence[str] = tuple(DEMO_NEEDS)) -> None:
    """Raise a CommandError naming the install command when the demo extra is missing.

    Checked before importing the demo, so that the user sees one line, not a traceback.
    """
    missing = [DEMO_NEEDS[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"{what} needs {', '.join(missing)}, not installed: {DEMO_INSTALL}.")


def _cmd_demo(args: argparse.Namespace) -> int:
    require_demo_extra("noisepair demo")
    from noisepair.demo.run import run_demo

    if args.steps is not None and args.steps < 3:
        raise CommandError(
            f"--steps must be at least 3 (got {args.steps}); try --quick for a short run."
        )
    if args.eval_every is not None and args.eval_every < 1:
        raise CommandError(f"--eval-every must be >= 1, got {args.eval_every}.")
    try:
        run_demo(
            args.out,
            data=args.data,
            quick=args.quick,
            steps=args.steps,
            eval_every=args.eval_every,
            batch_size=args.batch_size,
            seed=args.seed,
            objective=args.objective,
            progress=not args.no_progress,
            scope=args.scope,
            pool=args.pool,
            persistent=args.persistent,
            semidiscrete=args.semidiscrete,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    return 0


# -- check ----------------------------------------------------------------------------------
CHECK_EPILOG = """\
LOADER_SPEC is one of
  module:callable        e.g. mypkg.data:make_loader  (called with no arguments; the current
                         directory is on the import path)
  path/to/file.py:name   a function (or a loader object) defined in a file
  builtin:NAME           a built-in numpy loader: builtin:digits, builtin:digits-d2 (the
                         digits projected to 2-d; any digits-dK), builtin:8gaussians,
                         builtin:moons, builtin:checkerboard (--batch-size sets its batch size)
The callable returns a loader: any iterable of batches. A MatchedNoiseLoader is used as it is
(its own method and seed; --method/--key/--k/--scope/--seed are then ignored); anything else
is wrapped in MatchedNoiseLoader(loader, key=..., method=..., seed=..., scope=...).

examples:
  noisepair check builtin:digits
  noisepair check builtin:digits --method knn --k 64       # fails: KNN's noise is not N(0, I)
  noisepair check mypkg.data:train_loader --key image --batches 50
  noisepair check mypkg.data:train_loader --max-cost-ratio 0.95   # also demand 5% shorter paths

exit status: 0 the noise passes, 1 it fails (or the path gain is below --max-cost-ratio),
2 the command could not run (bad spec, loader error).
"""


def _cmd_check(args: argparse.Namespace) -> int:
    from noisepair.checks import check_loader
    from noisepair.loader import MatchedNoiseLoader

    if args.batches < 1:
        raise CommandError(f"--batches must be >= 1, got {args.batches}.")
    obj = load_loader_spec(args.spec, batch_size=args.batch_size, seed=args.seed)
    if isinstance(obj, MatchedNoiseLoader):
        loader, wrapped = obj, False
    else:
        if not hasattr(obj, "__iter__"):
            raise CommandError(
                f"{args.spec} returned a {type(obj).__name__}, which is not iterable; it must "
                "return a loader (an iterable of batches) or a MatchedNoiseLoader."
            )
        options = {"k": args.k} if args.k is not None else None
        if options and args.method != "knn":
            raise CommandError("--k is the number of candidates of --method knn; add --method knn.")
        try:
            loader = MatchedNoiseLoader(
                obj,
                key=_parse_key(args.key),
                method=args.method,
                seed=args.seed,
                scope=args.scope,
                method_options=options,
            )
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        wrapped = True
    seen = FirstBatch(loader.monitor)
    loader.monitor = seen
    try:
        gauss, gain = check_loader(loader, batches=args.batches, alpha=args.alpha)
    except Exception as exc:  # the user's loader: "could not run" (exit 2), not a failed check
        raise CommandError(f"running the loader failed: {_message(exc, wrapped)}") from exc
    finally:
        loader.close()
    field = sample_field(seen.first.batch, loader.key, "--key" if wrapped else "the loader's key=")
    matcher = loader.matcher
    failures = gauss.failures()
    gain_ok = args.max_cost_ratio is None or gain.ratio <= args.max_cost_ratio
    passed = gauss.passed and gain_ok
    if args.json:
        print(
            json.dumps(
                {
                    "spec": args.spec,
                    "sample": field,
                    "method": matcher.name,
                    "wrapped": wrapped,
                    "passed": passed,
                    "gaussianity": gauss.as_dict(),
                    "path_gain": gain.as_dict(),
                    "failures": failures,
                    "max_cost_ratio": args.max_cost_ratio,
                },
                indent=2,
            )
        )
    else:
        print(_check_table(args.spec, field, matcher, wrapped, gauss, gain, args.max_cost_ratio))
    return 0 if passed else EXIT_FAILED


def _check_table(spec, field, matcher, wrapped, g, gain, max_ratio) -> str:
    level = g.alpha / 3
    perm = (
        "a permutation of the drawn noise"
        if matcher.permutation
        else "NOT a permutation: selects among extra draws"
    )
    src = "wrapped in MatchedNoiseLoader" if wrapped else "a MatchedNoiseLoader, used as is"
    rows = [
        ("coordinates KS vs N(0,1)", f"{g.ks_stat:.4f}", g.ks_pvalue),
        ("squared norms KS vs chi2(D)", f"{g.norm_ks_stat:.4f}", g.norm_ks_pvalue),
        ("mean: n|m|^2 vs chi2(D)", "", g.mean_chi2_pvalue),
    ]
    out = [
        f"noisepair check {spec}",
        f"  loader: {src}; method {matcher!r} ({perm})",
        f"  sample: {field}",
        f"  {gain.batches} batches, {g.n} noise vectors of dimension {g.dim}",
        "",
        f"Gaussianity of the emitted noise (each test at {level:.2g} = alpha {g.alpha:g} / 3)",
        f"  {'test':<30}{'statistic':>10}{'p-value':>12}  result",
    ]
    for name, stat, p in rows:
        out.append(f"  {name:<30}{stat:>10}{p:>12.3g}  {'ok' if p >= level else 'FAIL'}")
    out += [
        f"  {'mean |z|^2 / D (1 expected)':<30}{g.norm2_mean_ratio:>10.4f}",
        f"  {'max |mean coordinate|':<30}{g.mean_abs_max:>10.4f}",
        f"  {'covariance deviation':<30}{g.cov_deviation:>10.4f}  (descriptive, no test)",
        "",
        "Path length: mean squared |x - z| per sample",
        f"  {'as drawn (random)':<30}{gain.cost_random / max(g.n, 1):>10.4g}",
        f"  {'matched':<30}{gain.cost_matched / max(g.n, 1):>10.4g}",
        f"  {'ratio matched / random':<30}{gain.ratio:>10.4f}  "
        f"({(1 - gain.ratio) * 100:.1f}% shorter)",
    ]
    if max_ratio is not None:
        out.append(
            f"  {'required ratio <=':<30}{max_ratio:>10.4f}  "
            f"{'ok' if gain.ratio <= max_ratio else 'FAIL'}"
        )
    out.append("")
    problems = []
    if not g.passed:
        knn = (
            "; KNN selection shifts the noise, use a permutation method (hungarian, greedy, "
            "...) or a smaller k"
        )
        problems.append(
            "the noise is not N(0, I) ("
            + ", ".join(g.failures())
            + " rejected)"
            + ("" if matcher.permutation else knn)
        )
    if max_ratio is not None and gain.ratio > max_ratio:
        problems.append(
            f"paths are only {(1 - gain.ratio) * 100:.1f}% shorter (ratio "
            f"{gain.ratio:.3f} > {max_ratio}); larger batches or scope= help, high "
            "dimension hurts"
        )
    out.append("FAIL: " + "; ".join(problems) if problems else "PASS")
    return "\n".join(out)


class FirstBatch:
    """A loader monitor that keeps the first PairedBatch (to say where the sample was found)
    and hands every batch on to the loader's own monitor, if it has one."""

    def __init__(self, inner: Any = None):
        self.inner, self.first = inner, None

    def update(self, pb: Any) -> None:
        if self.first is None:
            self.first = pb
        if self.inner is not None:
            self.inner.update(pb)


def sample_field(batch: Any, key: Any, flag: str) -> str:
    """Which field of ``batch`` is the sample, and why that one (``flag``: how the user sets
    the key, ``--key`` or ``key=``)."""
    from noisepair.backend import backend_of
    from noisepair.batch import SAMPLE_KEYS, find_sample

    if backend_of(batch) is not None:
        return f"the batch itself (the loader yields bare {type(batch).__name__}s)"
    if isinstance(batch, (tuple, list)):
        if key is not None:
            return f"field {key} of each {type(batch).__name__} (from {flag})"
        return f"field 0 of each {type(batch).__name__} (the first, by default; {flag} N picks another)"
    if key is not None:
        return f"batch[{key!r}] (from {flag})"
    found = find_sample(batch, None)
    name = next(k for k in batch.keys() if batch[k] is found)
    why = (
        f"the only field with a sample name ({', '.join(SAMPLE_KEYS)})"
        if name in SAMPLE_KEYS
        else "the only floating-point field"
    )
    return f"batch[{name!r}] ({why}; {flag} NAME picks another)"


def _message(exc: Exception, cli_key: bool) -> str:
    """An exception as one line; ``cli_key``: the key came from --key, so say --key, not key=."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if cli_key:
        text = re.sub(
            r"(?<![\w-])key=(\S?)", lambda m: "--key" + (" " + m[1] if m[1] else ""), text
        )
        text = text.replace(" to MatchedNoiseLoader", "").replace("; key must", "; --key must")
    return f"{type(exc).__name__}: {text}"


def _parse_key(key: str | None) -> Any:
    if key is None:
        return None
    return int(key) if key.lstrip("-").isdigit() else key


def load_loader_spec(spec: str, *, batch_size: int = 128, seed: int = 0) -> Any:
    """The object a ``module:callable``, ``file.py:name`` or ``builtin:NAME`` spec stands for."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CommandError(
            f"LOADER_SPEC {spec!r} must look like module:callable (e.g. mypkg.data:make_loader), "
            "path/to/file.py:callable, or builtin:digits."
        )
    if module_name == "builtin":
        return builtin_loader(attr, batch_size=batch_size, seed=seed)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise CommandError(f"no such file {module_name!r} (from LOADER_SPEC {spec!r}).")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            mod_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise CommandError(
                f"cannot import {module_name!r} ({exc}); run from the directory that contains it, "
                "install its package, or give a file path (path/to/file.py:callable)."
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(
                f"{module_name} has no attribute {attr!r} (from LOADER_SPEC {spec!r})."
            ) from None
    if callable(obj) and not hasattr(obj, "__iter__"):
        try:
            obj = obj()
        except TypeError as exc:
            raise CommandError(
                f"calling {spec} with no arguments failed ({exc}); the callable must build the "
                "loader without arguments (wrap it in a small function)."
            ) from exc
    return obj


def builtin_loader(name: str, *, batch_size: int = 128, seed: int = 0):
    """A numpy loader over one of the demo's data sets (one epoch, shuffled)."""
    import numpy as np

    from noisepair.demo.data import DATASETS, TOY_SETS, load

    if name not in DATASETS and not name.startswith("digits-d"):
        raise CommandError(
            f"unknown built-in loader {name!r}; choose one of "
            + ", ".join("builtin:" + b for b in DATASETS)
            + " (or builtin:digits-dK, the digits projected to K dimensions)."
        )
    if name not in TOY_SETS or name == "moons":
        require_demo_extra(f"builtin:{name}", ["sklearn"])
    try:
        train, _ = load(name)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if batch_size < 1 or batch_size > len(train):
        raise CommandError(f"--batch-size must be between 1 and {len(train)} for builtin:{name}.")

    class _Loader:
        def __len__(self):
            return len(train) // batch_size

        def __iter__(self):
            order = np.random.default_rng(seed).permutation(len(train))
            for i in range(len(self)):
                yield train[order[i * batch_size : (i + 1) * batch_size]]

    return _Loader()


# -- advise ---------------------------------------------------------------------------------
ADVISE_EPILOG = """\
LOADER_SPEC is one of the forms `noisepair check` takes: module:callable, path/to/file.py:name,
builtin:NAME (builtin:digits, builtin:digits-d2, builtin:8gaussians, ...). A MatchedNoiseLoader
is read through its inner loader and its key.

It reads up to 64 batches of your loader (the sample field only) and, for each arm, matches
fresh N(0, I) noise to them by exact assignment (method='auto'): per batch, and 8 and 64
consecutive batches together (scope=8, scope=64; capped to the batches read, to 8,192 samples
and to --budget). It measures the squared-path ratio matched / as drawn and the pairing time
per batch, and places each ratio on the regime map shipped with noisepair (the rows of
benchmarks/results/regime.json with the nearest ratio: what rectified-flow training gained
there, 600 steps, 5 seeds). Then one recommendation line; every number in it is measured here
or read from that map.

examples:
  noisepair advise builtin:digits-d2                  # 2-d: matching pays
  noisepair advise builtin:digits --step-ms 40        # 64-d: a smaller few-step error only
  noisepair advise mypkg.data:train_loader --key image --out advice/

exit status: 0 advice given, 2 the command could not run (bad spec, loader error).
"""


def _cmd_advise(args: argparse.Namespace) -> int:
    from noisepair.advise import advise, plot, table
    from noisepair.batch import find_sample
    from noisepair.loader import MatchedNoiseLoader

    if args.out is not None:
        require_demo_extra("noisepair advise --out", ["matplotlib"])
    obj = load_loader_spec(args.spec, batch_size=args.batch_size, seed=args.seed)
    if isinstance(obj, MatchedNoiseLoader):
        loader, key, flag = obj.loader, obj.key, "the loader's key="
    else:
        loader, key, flag = obj, _parse_key(args.key), "--key"
    if not hasattr(loader, "__iter__"):
        raise CommandError(
            f"{args.spec} returned a {type(obj).__name__}, which is not iterable; it must "
            "return a loader (an iterable of batches)."
        )
    first: list = []

    def samples():
        for batch in loader:
            if not first:
                first.append(batch)
            yield find_sample(batch, key)

    try:
        advice = advise(samples(), step_ms=args.step_ms, budget=args.budget, seed=args.seed)
    except Exception as exc:  # the user's loader or data: "could not run" (exit 2)
        raise CommandError(
            f"measuring the loader failed: {_message(exc, flag == '--key')}"
        ) from exc
    field = sample_field(first[0], key, flag)
    figure = None
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figure = str(plot(advice, out / "advice.png"))
    if args.json:
        print(
            json.dumps(
                dict(spec=args.spec, sample=field, figure=figure, **advice.as_dict()), indent=2
            )
        )
        return 0
    m = advice.regime
    print(
        "\n".join(
            [
                f"noisepair advise {args.spec}",
                f"  sample: {field}",
                f"  {advice.batches} batches of {advice.batch_size} read in "
                f"{advice.read_seconds:.2g} s; {advice.dim} values per sample (shape "
                f"{advice.item_shape})",
                "",
                table(advice),
                "",
                f"recommendation: {advice.recommendation}",
                "",
                "ratio: mean squared |x - z| matched / as drawn (lower: shorter paths); "
                "ms/batch: pairing time per batch on this machine (median solve, a scope's solve "
                "shared by its batches).",
                f"map: {m['source']} of {m['date']} ({m['setup']}); the {len(advice.placements[0].rows)} "
                "rows (per batch or scope, N(0, I) noise) whose ratio is nearest each measured one.",
            ]
            + ([f"figure: {figure}"] if figure else [])
        )
    )
    return 0


# -- bench ----------------------------------------------------------------------------------
#: the matching benchmark of a source checkout; an installed wheel ships the library only.
CHECKOUT = Path(__file__).resolve().parent.parent
BENCHMARK = CHECKOUT / "benchmarks" / "matching.py"

BENCH_EPILOG = """\
examples:
  noisepair bench --quick                    a short run of the matcher benchmark
  noisepair bench --sizes 4096 --dims 3072   your batch size and dimension only
  noisepair bench --out bench.md             the full grid (about 10 minutes on 2 cores)

It runs benchmarks/matching.py of a source checkout (the library, as installed from a wheel,
ships without it). The report goes to benchmarks/results/matching.md (matching_quick.md for
--quick or a grid of your own) unless --out says otherwise.

The training-speed comparison is `noisepair demo` (one machine, minutes) and
benchmarks/training_speed.py in the repository (seeds, methods, objectives, batch sizes).
"""


def _cmd_bench(args: argparse.Namespace) -> int:
    if not (BENCHMARK.is_file() and (CHECKOUT / "pyproject.toml").is_file()):
        raise CommandError(
            "noisepair bench runs benchmarks/matching.py of a source checkout and this noisepair "
            'is installed without one: clone the noisepair repository, pip install -e ".[test]" '
            "in it, and run noisepair bench there."
        )
    argv = [sys.executable, str(BENCHMARK)] + (["--quick"] if args.quick else [])
    for flag, values in (("--sizes", args.sizes), ("--dims", args.dims)):
        if values:
            if min(values) < 1:
                raise CommandError(f"{flag} takes positive integers, got {values}.")
            argv += [flag, *map(str, values)]
    if args.out is not None:
        out = Path(args.out)
        if out.is_dir():
            raise CommandError(
                f"--out {args.out} is a directory; give a file name, e.g. {out / 'bench.md'}."
            )
        argv += ["--out", str(out.resolve())]
    return subprocess.call(argv)


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="noisepair",
        formatter_class=fmt,
        description="Pair Gaussian noise with data by optimal assignment (Immiscible Diffusion, "
        "DANSM): see whether it pays on your machine, and guard your loader's noise.",
        epilog="examples:\n  noisepair demo --quick\n  noisepair advise builtin:digits\n"
        "  noisepair check builtin:digits\n"
        "  noisepair check mypkg.data:make_loader --key image\n  noisepair bench --quick\n\n"
        "Run `noisepair COMMAND --help` for a command's options.",
    )
    from noisepair import __version__

    parser.add_argument("--version", action="version", version=f"noisepair {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (_add_demo, _add_advise, _add_check, _add_bench):
        add_command(sub, fmt)
    return parser


def _add_demo(sub, fmt) -> None:
    demo = sub.add_parser(
        "demo",
        formatter_class=fmt,
        epilog=DEMO_EPILOG,
        help="train a small model with random vs matched noise and compare",
        description="Does matched noise train faster? A/B on a small "
        "rectified-flow model, on this machine, in minutes.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="short run (2,000 steps per arm instead of 10,000)"
    )
    demo.add_argument(
        "--out",
        default="noisepair-demo",
        metavar="DIR",
        help="where report.json and the figures go (default: ./noisepair-demo)",
    )
    demo.add_argument(
        "--data",
        nargs="+",
        default=["digits", "digits-d2"],
        metavar="NAME",
        help="data sets, each trained random vs matched (default: digits digits-d2): digits "
        "(scikit-learn's 8x8 digits, 64-d), digits-dK (the digits projected to K dimensions by "
        "PCA), 8gaussians, moons, checkerboard (2-d)",
    )
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="training steps per arm (default: 10000; 2000 with --quick)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of weights, batches, noise and times (default: 0)",
    )
    demo.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="batch size, the match scope (default: 128)",
    )
    demo.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="N",
        help="steps between quality checkpoints (default: steps / 10 or so)",
    )
    demo.add_argument(
        "--objective",
        choices=("rf", "ddpm"),
        default="rf",
        help="rf: rectified flow, Euler sampling (default); ddpm: epsilon "
        "prediction, DDIM sampling",
    )
    demo.add_argument(
        "--scope",
        type=int,
        default=1,
        metavar="K",
        help="matched arm: match K batches together (default 1)",
    )
    demo.add_argument(
        "--pool",
        type=int,
        default=None,
        metavar="P",
        help="matched arm: DANSM's noise pool of P noises, greedy rule (default: none)",
    )
    demo.add_argument(
        "--persistent",
        type=int,
        default=None,
        metavar="K",
        help="matched arm: LOOM-CFM's K noise seeds per training point (default: none)",
    )
    demo.add_argument(
        "--semidiscrete",
        action="store_true",
        help="matched arm: SD-FM's semi-discrete coupling, the noise picks the data (with "
        "replacement)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)


def _add_advise(sub, fmt) -> None:
    adv = sub.add_parser(
        "advise",
        formatter_class=fmt,
        epilog=ADVISE_EPILOG,
        help="measure your data and say whether matching pays for it",
        description="Measure what matching does to your loader's batches (path ratio, pairing "
        "time), place it on the regime map, and recommend.",
    )
    adv.add_argument(
        "spec",
        metavar="LOADER_SPEC",
        help="module:callable, path/to/file.py:callable, or builtin:NAME",
    )
    adv.add_argument(
        "--key", default=None, help="where the sample is in a batch: a dict key or a tuple index"
    )
    adv.add_argument(
        "--step-ms",
        type=float,
        default=None,
        metavar="MS",
        help="your training step in milliseconds, to compare the pairing time with",
    )
    adv.add_argument(
        "--budget",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for reading and measuring; larger scopes are capped to fit (default 30)",
    )
    adv.add_argument("--out", default=None, metavar="DIR", help="write DIR/advice.png")
    adv.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    adv.add_argument(
        "--batch-size", type=int, default=128, help="batch size of a builtin: loader (default 128)"
    )
    adv.add_argument("--json", action="store_true", help="print the advice as JSON")
    adv.set_defaults(func=_cmd_advise)


def _add_check(sub, fmt) -> None:
    check = sub.add_parser(
        "check",
        formatter_class=fmt,
        epilog=CHECK_EPILOG,
        help="check a loader's noise is N(0, I) and measure the path gain",
        description="Run MatchedNoiseLoader over a few batches of your loader; "
        "print the Gaussianity report and the path-length gain; "
        "exit 1 when the noise fails.",
    )
    check.add_argument(
        "spec",
        metavar="LOADER_SPEC",
        help="module:callable, path/to/file.py:callable, or builtin:NAME",
    )
    check.add_argument(
        "--batches", type=int, default=10, metavar="N", help="batches to check (default: 10)"
    )
    check.add_argument(
        "--method",
        default="hungarian",
        help="matcher when wrapping: hungarian (default), auto, emd, sinkhorn, "
        "greedy, auction, knn, random",
    )
    check.add_argument("--k", type=int, default=None, help="candidates per sample for --method knn")
    check.add_argument(
        "--key", default=None, help="where the sample is in a batch: a dict key or a tuple index"
    )
    check.add_argument("--scope", type=int, default=1, help="batches matched together (default 1)")
    check.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    check.add_argument(
        "--alpha",
        type=float,
        default=1e-3,
        help="false-alarm rate of the Gaussianity check (default 1e-3)",
    )
    check.add_argument(
        "--max-cost-ratio",
        type=float,
        default=None,
        metavar="R",
        help="also fail unless matched / random squared path length <= R",
    )
    check.add_argument(
        "--batch-size", type=int, default=128, help="batch size of a builtin: loader (default 128)"
    )
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.set_defaults(func=_cmd_check)


def _add_bench(sub, fmt) -> None:
    bench = sub.add_parser(
        "bench",
        formatter_class=fmt,
        epilog=BENCH_EPILOG,
        help="benchmark the matchers on this machine",
        description="Time the matchers on this machine against the baselines "
        "(scipy on torch.cdist, POT, torchcfm).",
    )
    bench.add_argument("--quick", action="store_true", help="a short run")
    bench.add_argument("--sizes", type=int, nargs="+", metavar="B", help="batch sizes to time")
    bench.add_argument("--dims", type=int, nargs="+", metavar="D", help="dimensions to time")
    bench.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the markdown report to FILE (default: benchmarks/results/)",
    )
    bench.set_defaults(func=_cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"noisepair {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"noisepair {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

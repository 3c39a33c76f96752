"""Where matching pays: a regime map over dimension, matched-set size and objective, on CPU.

Data: the shipped 8x8 digits projected by PCA to d in {2, 8, 16, 64}; a 10-mode Gaussian
mixture at the same d; 2-D 8 gaussians -> moons (the source is 8 gaussians, not N(0, I)).
Arms: random (noise as drawn), exact per batch (B=128), scope 1,024 and 4,096 (consecutive
batches matched together, ``method="auto", approximate=True``), pool 1,000 and 10,000
(:class:`noisepair.pool.NoisePool`, DANSM's greedy rule), and KNN k=4 (Improved Immiscible).
Dataset-scale couplings, at d = 8, 16, 64 and on a 10-mode mixture at d = 256 (beside random
and per batch there): LOOM-CFM's persistent seeds with k = 1 and 6 (the loader's own
:class:`noisepair.persistent.PersistentMatching`, items named by their training index, so the
seeds move across the stream's epochs), and SD-FM's semi-discrete coupling
(:class:`noisepair.SemiDiscrete` fitted on the training set; each batch's noise draws pick the
training points, with replacement).
Objective: rectified flow everywhere, DDPM on one data set, and one conditional run
(unconditional matching vs ``group_by`` the mixture mode).

Per (data, arm) the stream of (sample, noise) pairs is built once, from one fixed batch order
and one set of noise draws shared by every arm, and trained on by every seed: the seeds vary
the initial weights, time draws and evaluation noise (shared by the arms of a seed). The
stream crosses epoch boundaries, so a scope or pool larger than the training set matches
repeats of it (the digits have 1,297 training samples).

Metrics at the end of training (EMA weights, 512 evaluation points): the function evaluations
of scipy's adaptive RK45 (rtol = atol = 1e-5) to integrate the learned ODE; the discretisation
error E|Phi_K(z) - Phi_100(z)|^2 for K = 1, 2, 4 Euler steps (straightness); exact W2 (POT) to
500 held-out points at 2, 4, 8 and 50 Euler steps; steps to reach random's final 50-step W2
(W2 checked at 5 checkpoints); the squared-path ratio of the stream; the mean distance of
generated points to their nearest training point over the same for held-out points
(memorisation guard: below 1 means nearer the training set than fresh data is). Each arm is
compared with random seed by seed; cells give the mean paired change with a 95% t interval.

    python benchmarks/regime.py                # the full map (~20-30 min on 2 idle cores)
    python benchmarks/regime.py --quick        # a smoke run (seconds; not a result)
    python benchmarks/regime.py --arms persistent1,persistent6 --data gmm-d64
                                               # re-run those jobs, merged into the saved map

Writes benchmarks/results/regime.md, regime.json and regime.png after every finished job, so
an interrupted run leaves its completed part behind, labelled as such.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

DIMS = (2, 8, 16, 64)
BATCH = 128
KNN_K = 4
EULER = (2, 4, 8, 50)
DISC = (1, 2, 4)
REFERENCE_STEPS = 100
N_EVAL, N_W2 = 512, 500
CHECKPOINTS = 5
STREAM_SEED = 20261127
DDPM_DATA = "gmm-d2"
COND_DATA = "gmm-d16"
FULL = {"steps": 600, "seeds": 5, "scopes": (1024, 4096), "pools": (1000, 10000), "hidden": 128}
QUICK = {"steps": 20, "seeds": 2, "scopes": (512,), "pools": (300,), "hidden": 32}
COUPLINGS = ("persistent1", "persistent6", "semidiscrete")  # dataset-scale couplings
COUPLING_DIMS = (8, 16, 64)
HIGH_D = "gmm-d256"  # where per-batch matching gains least
SD_TOL = {False: 0.03, True: 0.2}  # the semi-discrete fit's marginal error (full, quick)


def dataset_names(quick: bool) -> list[str]:
    if quick:
        return ["gmm-d2", "digits-d8", "8g-moons"]
    # the most telling ends of the map first, so that a cut-off run still says something
    order = [
        ("gmm", 2),
        ("digits", 64),
        ("gmm", 64),
        ("digits", 2),
        ("gmm", 16),
        ("digits", 16),
        ("gmm", 8),
        ("digits", 8),
    ]
    return [f"{k}-d{d}" for k, d in order] + ["8g-moons", HIGH_D]


def arm_names(cfg: dict) -> list[str]:
    return (
        ["random", "batch"]
        + [f"scope{s}" for s in cfg["scopes"]]
        + [f"pool{p}" for p in cfg["pools"]]
        + ["knn"]
    )


# -- data --------------------------------------------------------------------------------------
def load_data(name: str) -> dict:
    """train/held-out points (float32), their labels (or None), and the source ('gauss'/'8g')."""
    from noisepair.demo.data import digits, load

    if name == "8g-moons":
        train, held = load("moons")
        return {"train": train, "held": held[:N_W2], "y": None, "y_held": None, "source": "8g"}
    kind, d = name.split("-d")
    d = int(d)
    if kind == "digits":
        from sklearn.decomposition import PCA

        train, held = digits()
        pca = PCA(n_components=d, random_state=0).fit(train)
        train, held = pca.transform(train), pca.transform(held)
        scale = np.sqrt(train.var(0).mean())  # one scalar: mean coordinate variance 1, like N(0, I)
        return {
            "train": (train / scale).astype(np.float32),
            "held": (held / scale).astype(np.float32),
            "y": None,
            "y_held": None,
            "source": "gauss",
        }
    rng = np.random.default_rng([4321, d])
    centers = rng.uniform(-1.7, 1.7, (10, d))  # coordinate variance about 1
    labels = rng.integers(0, 10, 20000 + N_W2)
    pts = (centers[labels] + 0.1 * rng.standard_normal((len(labels), d))).astype(np.float32)
    return {
        "train": pts[N_W2:],
        "held": pts[:N_W2],
        "y": labels[N_W2:],
        "y_held": labels[:N_W2],
        "source": "gauss",
    }


def source_draws(kind: str, n: int, d: int, seed) -> np.ndarray:
    """n source points: N(0, I), or the 8 gaussians of OT-CFM's 8gaussians -> moons."""
    rng = np.random.default_rng(seed)
    if kind == "8g":
        from noisepair.demo.data import toy_2d

        return toy_2d("8gaussians", n, rng)
    return rng.standard_normal((n, d), dtype=np.float32)


# -- the (sample, noise) stream of one arm -------------------------------------------------------
def build_stream(data: dict, arm: str, steps: int, group_by: bool = False) -> dict:
    from noisepair.matchers import get_matcher
    from noisepair.pairing import pair
    from noisepair.pool import NoisePool

    train, n = data["train"], steps * BATCH
    epochs = -(-n // len(train))
    order = np.concatenate(
        [np.random.default_rng([STREAM_SEED, e]).permutation(len(train)) for e in range(epochs)]
    )[:n]
    x = train[order]
    y = data["y"][order] if data["y"] is not None else None
    d = x.shape[1]
    drawn = source_draws(data["source"], n, d, [STREAM_SEED, 1])
    start = time.perf_counter()
    solvers: dict[str, int] = {}
    z = np.empty_like(x)

    def solve(lo: int, hi: int, matcher) -> None:
        groups = y[lo:hi] if group_by else None
        idx, info = pair(x[lo:hi], drawn[lo:hi], matcher, groups=groups)
        z[lo:hi] = drawn[lo:hi][idx]
        key = info.get("solver", info["method"])
        if info.get(
            "fallback"
        ):  # the auction gave up (tight clusters, duplicates) and solved exactly
            key += f" -> {info['fallback']}"
        solvers[key] = solvers.get(key, 0) + 1

    if arm == "random":
        z[:] = drawn
    elif arm == "batch" or arm.startswith("scope"):
        size = BATCH if arm == "batch" else int(arm[5:])
        matcher = get_matcher("auto", approximate=arm != "batch")
        for lo in range(0, n, size):
            solve(lo, min(n, lo + size), matcher)
    elif arm.startswith("pool"):
        if data["source"] != "gauss":
            raise ValueError(
                "the pool draws N(0, I) noise; this data set's source is not Gaussian."
            )
        pool = NoisePool(int(arm[4:]), seed=STREAM_SEED)
        for lo in range(0, n, BATCH):
            z[lo : lo + BATCH], info = pool.take(
                x[lo : lo + BATCH], y[lo : lo + BATCH] if group_by else None
            )
        solvers[info["solver"]] = n // BATCH
    elif arm.startswith("persistent"):
        from noisepair.couplings import Group
        from noisepair.persistent import PersistentMatching

        coupling = PersistentMatching(
            int(arm[10:]), get_matcher("auto"), "sqeuclidean", "float32", STREAM_SEED, 1
        )
        for lo in range(0, n, BATCH):
            end = min(n, lo + BATCH)
            cut = min(end, (lo // len(train) + 1) * len(train))  # a batch across two epochs
            for a, b in ((lo, cut), (cut, end)):  # holds an item twice: pair each part
                if a < b:
                    ids = order[a:b]
                    group = Group(STREAM_SEED, 0, a // len(train), a, None, ids)
                    z[a:b], info = coupling.pair(x[a:b], [b - a], None, group)
        solvers[info["solver"]] = n // BATCH
    elif arm == "semidiscrete":
        from noisepair import SemiDiscrete

        sd = SemiDiscrete.fit(train, tol=SD_TOL[steps < FULL["steps"]], seed=STREAM_SEED)
        for lo in range(0, n, BATCH):  # the draws pick the data: x follows the noise
            x[lo : lo + BATCH] = train[np.asarray(sd.assign(drawn[lo : lo + BATCH]))]
        z[:] = drawn
        solvers["semidiscrete"] = n // BATCH
    elif arm == "knn":
        many = source_draws(data["source"], n * KNN_K, d, [STREAM_SEED, 2])
        knn = get_matcher("knn", k=KNN_K)
        for lo in range(0, n, BATCH):
            idx, info = pair(x[lo : lo + BATCH], many[lo * KNN_K : (lo + BATCH) * KNN_K], knn)
            z[lo : lo + BATCH] = many[lo * KNN_K : (lo + BATCH) * KNN_K][idx]
        solvers["knn"] = n // BATCH
    else:
        raise ValueError(f"unknown arm {arm!r}")
    seconds = time.perf_counter() - start
    as_drawn = train[order] if arm == "semidiscrete" else x  # the random arm's pairs
    ratio = float(((x - z) ** 2).sum() / ((as_drawn - drawn) ** 2).sum())
    return {"x": x, "z": z, "y": y, "path_ratio": ratio, "solvers": solvers, "seconds": seconds}


# -- training and evaluation ---------------------------------------------------------------------
def train_and_evaluate(
    data: dict, stream: dict, objective: str, seed: int, cfg: dict, conditional: bool = False
) -> dict:
    import copy

    import torch

    from noisepair.batch import PairedBatch
    from noisepair.demo.metrics import adaptive_nfe, discretisation_error
    from noisepair.demo.model import TimeMLP
    from noisepair.demo.objectives import get_objective

    obj = get_objective(objective, clip_sample=float(np.ceil(np.abs(data["train"]).max())))
    d, steps = data["train"].shape[1], cfg["steps"]
    torch.manual_seed(seed)
    model = TimeMLP(d, hidden=cfg["hidden"], depth=3, classes=10 if conditional else 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    avg = copy.deepcopy(model).requires_grad_(False)
    t_gen = torch.Generator().manual_seed(seed + 1)
    n_eval = cfg.get("n_eval", N_EVAL)
    z_eval = torch.from_numpy(source_draws(data["source"], n_eval, d, [seed, 2]))
    y_eval = torch.arange(n_eval) % 10 if conditional else None
    x_all, z_all = torch.from_numpy(stream["x"]), torch.from_numpy(stream["z"])
    y_all = torch.from_numpy(stream["y"]).long() if conditional else None

    def field(m):
        return (lambda x, t: m(x, t, y_eval)) if conditional else m

    every = max(1, steps // CHECKPOINTS)
    checkpoints, w2_50 = [], []
    for step in range(steps):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        pb = PairedBatch(sample=x_all[sl], noise=z_all[sl], batch=None)
        x_t, t, target = obj.inputs(pb, t_gen)
        out = model(x_t, t, y_all[sl]) if conditional else model(x_t, t)
        loss = ((out - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(0.99, step / (step + 10))
            for pa, p in zip(avg.parameters(), model.parameters()):
                pa.lerp_(p, 1 - decay)
        if (step + 1) % every == 0 or step + 1 == steps:
            checkpoints.append(step + 1)
            w2_50.append(quality(data, obj.sample(field(avg), z_eval, 50).numpy(), y_eval))
    res = {"checkpoints": checkpoints, "w2_50_curve": w2_50}
    runs = {k: obj.sample(field(avg), z_eval, k).numpy() for k in (*DISC, *EULER, REFERENCE_STEPS)}
    disc = discretisation_error(lambda z, k: runs[k], z_eval, DISC, REFERENCE_STEPS)
    res.update({f"disc{k}": v for k, v in disc.items()})
    for k in EULER:
        res[f"w2_{k}"] = quality(data, runs[k], y_eval)
    if objective == "rf":
        res["nfe"] = adaptive_nfe(field(avg), z_eval)
    res["memorisation"] = nearest_ratio(runs[50][:N_W2], data["train"], data["held"])
    return res


def quality(data: dict, gen: np.ndarray, y_gen) -> float:
    """W2 to the held-out points; for a conditional model the mean W2 per class."""
    from noisepair.demo.metrics import w2

    if y_gen is None:
        return w2(gen[:N_W2], data["held"][:N_W2])
    y_gen = np.asarray(y_gen)
    return float(
        np.mean([w2(gen[y_gen == c], data["held"][data["y_held"] == c]) for c in np.unique(y_gen)])
    )


def nearest_ratio(gen: np.ndarray, train: np.ndarray, held: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    tree = cKDTree(train)
    return float(tree.query(gen)[0].mean() / tree.query(held[: len(gen)])[0].mean())


# -- jobs ----------------------------------------------------------------------------------------
def run_job(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = job["cfg"]
    data = load_data(job["data"])
    stream = build_stream(data, job["arm"], cfg["steps"], group_by=job.get("group_by", False))
    results = []
    for objective in job["objectives"]:
        for seed in range(cfg["seeds"]):
            r = train_and_evaluate(
                data, stream, objective, seed, cfg, conditional=job.get("conditional", False)
            )
            results.append(dict(r, objective=objective, seed=seed))
    return {
        "data": job["data"],
        "arm": job["label"],
        "kind": job["kind"],
        "path_ratio": stream["path_ratio"],
        "solvers": stream["solvers"],
        "stream_seconds": stream["seconds"],
        "results": results,
    }


def coupling_data(quick: bool) -> list[str]:
    """The data sets the dataset-scale couplings run on."""
    if quick:
        return ["digits-d8"]
    return [f"{k}-d{d}" for d in COUPLING_DIMS for k in ("gmm", "digits")] + [HIGH_D]


def make_jobs(cfg: dict, quick: bool) -> list[dict]:
    jobs = []
    for name in dataset_names(quick):
        arms = [a for a in arm_names(cfg) if not (name == "8g-moons" and a.startswith("pool"))]
        if name == HIGH_D:  # the map's own arms there: only the references of the couplings
            arms = ["random", "batch"]
        if name in coupling_data(quick):
            arms += list(COUPLINGS)
        for arm in sorted(arms, key=lambda a: a != f"scope{cfg['scopes'][-1]}"):  # slowest first
            objectives = ["rf", "ddpm"] if name == DDPM_DATA else ["rf"]
            jobs.append(
                {
                    "data": name,
                    "arm": arm,
                    "label": arm,
                    "kind": "map",
                    "objectives": objectives,
                    "cfg": cfg,
                }
            )
    cond = "gmm-d2" if quick else COND_DATA
    pool = f"pool{cfg['pools'][0]}"
    for arm, grouped in (
        ("random", False),
        ("batch", False),
        ("batch", True),
        (pool, False),
        (pool, True),
    ):
        jobs.append(
            {
                "data": cond,
                "arm": arm,
                "label": arm + ("+group_by" if grouped else ""),
                "kind": "conditional",
                "objectives": ["rf"],
                "group_by": grouped,
                "conditional": True,
                "cfg": cfg,
            }
        )
    return jobs


# -- summary -------------------------------------------------------------------------------------
METRICS = ["nfe", "disc1", "disc2", "disc4", "w2_2", "w2_4", "w2_8", "w2_50", "memorisation"]


def paired(base: list[dict], other: list[dict], key: str) -> dict | None:
    """Relative change other/random - 1, per seed; mean and 95% t interval over seeds."""
    from scipy import stats

    b = {r["seed"]: r[key] for r in base if key in r}
    o = {r["seed"]: r[key] for r in other if key in r}
    seeds = sorted(set(b) & set(o))
    if not seeds:
        return None
    rel = np.array([o[s] / b[s] - 1 for s in seeds])
    half = (
        float(stats.t.ppf(0.975, len(rel) - 1) * rel.std(ddof=1) / np.sqrt(len(rel)))
        if len(rel) > 1
        else float("nan")
    )
    return {
        "mean": float(rel.mean()),
        "lo": float(rel.mean() - half),
        "hi": float(rel.mean() + half),
        "n": len(rel),
    }


def speedups(base: list[dict], other: list[dict]) -> list[float]:
    from noisepair.demo.metrics import speedup

    b = {r["seed"]: r for r in base}
    return [
        speedup(
            b[r["seed"]]["checkpoints"], b[r["seed"]]["w2_50_curve"], r["w2_50_curve"], window=1
        )["speedup"]
        for r in other
        if r["seed"] in b
    ]


def summarize(jobs: list[dict]) -> list[dict]:
    rows = []
    by = {(j["kind"], j["data"], j["arm"]): j for j in jobs}
    for (kind, data, arm), j in by.items():
        for objective in sorted({r["objective"] for r in j["results"]}):
            mine = [r for r in j["results"] if r["objective"] == objective]
            base_job = by.get((kind, data, "random"))
            base = (
                [r for r in base_job["results"] if r["objective"] == objective] if base_job else []
            )
            row = {
                "kind": kind,
                "data": data,
                "arm": arm,
                "objective": objective,
                "seeds": len(mine),
                "path_ratio": j["path_ratio"],
                "solvers": j["solvers"],
                "stream_seconds": j["stream_seconds"],
                "absolute": {
                    k: float(np.mean([r[k] for r in mine])) for k in METRICS if k in mine[0]
                },
            }
            if base and arm != "random":
                row["change"] = {k: paired(base, mine, k) for k in METRICS if k in mine[0]}
                row["speedup50"] = speedups(base, mine)
            rows.append(row)
    return rows


def fmt(c: dict | None) -> str:
    if c is None:
        return "-"
    mark = "**" if c["lo"] > 0 or c["hi"] < 0 else ""  # the interval excludes 0
    return f"{mark}{100 * c['mean']:+.1f}%{mark} [{100 * c['lo']:+.0f}, {100 * c['hi']:+.0f}]"


def write_results(out: Path, jobs: list[dict], meta: dict, cfg: dict, expected: int) -> None:
    rows = summarize(jobs)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": rows, "jobs": jobs}, indent=1) + "\n"
    )
    done = len(jobs) == expected
    lines = [
        "# Regime map: where matching pays",
        "",
        (
            f"Generated by `python benchmarks/regime.py{' --quick' if meta['quick'] else ''}` on "
            f"{meta['date']}; {'complete' if done else f'PARTIAL: {len(jobs)} of {expected} jobs finished'}, "
            f"{meta['seconds'] / 60:.1f} min of wall time."
            + "".join(
                f" Re-run and merged on {p['date']}: {p['jobs']} jobs (arms {p['arms'] or 'all'}, "
                f"data {p['data'] or 'all'})."
                for p in meta.get("parts", [])
            )
        ),
        "",
        (
            f"Machine: {meta['machine']}. The machine was shared with other jobs (load average "
            f"{meta['load_start']} at the start, {meta['load_now']} at the last write); nothing "
            "below is a timing except the pool-rule table and the stream seconds."
        ),
        "",
        (
            f"Setup: B={BATCH}, {cfg['steps']} Adam steps (lr 1e-3, EMA 0.99) of a 3-layer MLP "
            f"(width {cfg['hidden']}), {cfg['seeds']} seeds; scope {cfg['scopes']}, pool {cfg['pools']} "
            f"(greedy rule), KNN k={KNN_K}; persistent seeds k = 1 and 6 and the semi-discrete "
            f"coupling (fitted to a marginal error of {SD_TOL[meta['quick']]}) at d = "
            f"{', '.join(map(str, COUPLING_DIMS))} and on {HIGH_D}. See the docstring of "
            "benchmarks/regime.py for the metrics."
        ),
        "",
        (
            "Cells: mean relative change against random over seeds (paired by seed) with its 95% t "
            "interval; **bold** when the interval excludes 0. Negative is better for every column "
            "(fewer evaluations, smaller error, nearer the held-out data); memorisation below 0 would "
            "mean generated points sit nearer the training set than before."
        ),
        "",
        "## Rectified flow",
        "",
        "| data | arm | path² ratio | NFE (RK45) | disc. err. K=1 | K=4 | W2 2 steps | W2 8 steps | W2 50 steps | speedup to random's W2(50) | nearest-train dist. |",
        "|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    map_rows = [r for r in rows if r["kind"] == "map" and r["objective"] == "rf"]
    order = {n: i for i, n in enumerate(dataset_names(meta["quick"]))}
    arms = {a: i for i, a in enumerate([*arm_names(cfg), *COUPLINGS])}
    map_rows.sort(key=lambda r: (order.get(r["data"], 99), arms.get(r["arm"], 99)))
    for r in map_rows:
        a = r["absolute"]
        if r["arm"] == "random":
            floor = meta.get("floors", {}).get(r["data"])
            floor = f" (floor {floor:.3f})" if floor is not None else ""
            lines.append(
                f"| {r['data']} | random | 1 | {a['nfe']:.0f} | {a['disc1']:.3g} | {a['disc4']:.3g} "
                f"| {a['w2_2']:.3f} | {a['w2_8']:.3f} | {a['w2_50']:.3f}{floor} | 1 | {a['memorisation']:.3f} |"
            )
            continue
        c = r.get("change") or {}
        sp = r.get("speedup50") or []
        spc = f"{np.mean(sp):.2f} [{min(sp):.2f}, {max(sp):.2f}]" if sp else "-"
        lines.append(
            f"| {r['data']} | {r['arm']} | {r['path_ratio']:.3f} | {fmt(c.get('nfe'))} | "
            f"{fmt(c.get('disc1'))} | {fmt(c.get('disc4'))} | {fmt(c.get('w2_2'))} | "
            f"{fmt(c.get('w2_8'))} | {fmt(c.get('w2_50'))} | {spc} | {fmt(c.get('memorisation'))} |"
        )
    lines += [
        "",
        (
            "Random rows give absolute values: NFE, squared error, W2 (the floor is the W2 "
            "between 500 training and the 500 held-out points), and the mean distance of "
            "generated points to their nearest training point over the same for held-out "
            "points. That last ratio also falls as samples get nearer the data, so read its "
            "change next to the W2 change: a fall well beyond the W2 gain would flag copying."
        ),
        "",
    ]
    ddpm = [r for r in rows if r["objective"] == "ddpm"]
    if ddpm:
        lines += [
            f"## DDPM on {ddpm[0]['data']} (DDIM sampling; no adaptive-solver NFE)",
            "",
            "| arm | disc. err. K=1 | K=4 | W2 2 steps | W2 8 steps | W2 50 steps |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(ddpm, key=lambda r: arms.get(r["arm"], 99)):
            a, c = r["absolute"], r.get("change") or {}
            if r["arm"] == "random":
                lines.append(
                    f"| random | {a['disc1']:.3g} | {a['disc4']:.3g} | {a['w2_2']:.3f} | {a['w2_8']:.3f} | {a['w2_50']:.3f} |"
                )
            else:
                lines.append(
                    f"| {r['arm']} | {fmt(c.get('disc1'))} | {fmt(c.get('disc4'))} | "
                    f"{fmt(c.get('w2_2'))} | {fmt(c.get('w2_8'))} | {fmt(c.get('w2_50'))} |"
                )
        lines.append("")
    cond = [r for r in rows if r["kind"] == "conditional"]
    if cond:
        lines += [
            f"## Conditional: {cond[0]['data']}, label = mixture mode (W2 is the mean per-class W2)",
            "",
            "| arm | path² ratio | NFE | disc. err. K=1 | W2 2 steps | W2 50 steps |",
            "|---|---:|---|---|---|---|",
        ]
        for r in cond:
            a, c = r["absolute"], r.get("change") or {}
            if r["arm"] == "random":
                lines.append(
                    f"| random | 1 | {a['nfe']:.0f} | {a['disc1']:.3g} | {a['w2_2']:.3f} | {a['w2_50']:.3f} |"
                )
            else:
                lines.append(
                    f"| {r['arm']} | {r['path_ratio']:.3f} | {fmt(c.get('nfe'))} | {fmt(c.get('disc1'))} | "
                    f"{fmt(c.get('w2_2'))} | {fmt(c.get('w2_50'))} |"
                )
        lines.append("")
    lines += [
        "## Solvers used and the cost of building each stream",
        "",
        (
            "Pairing cost per training step of the stream (one core, while other jobs ran: "
            "compare within a data set); the semi-discrete arm's includes fitting its potentials."
        ),
        "",
        "| data | arm | solver (calls) | stream seconds | ms per step |",
        "|---|---|---|---:|---:|",
    ]
    for r in map_rows:
        if r["arm"] != "random":
            lines.append(
                f"| {r['data']} | {r['arm']} | {', '.join(f'{k} ({v})' for k, v in r['solvers'].items())} "
                f"| {r['stream_seconds']:.1f} | {1000 * r['stream_seconds'] / cfg['steps']:.1f} |"
            )
    lines.append("")
    if meta.get("pool_rules"):
        lines += [
            "## Pool rule: DANSM's greedy vs an exact rectangular assignment",
            "",
            (
                f"One pool cycle of batches of {BATCH} on the Gaussian mixture; seconds per batch "
                "(median) and the squared-path ratio over the cycle."
            ),
            "",
            "| d | pool | greedy s/batch | exact s/batch | greedy path² | exact path² |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for p in meta["pool_rules"]:
            lines.append(
                f"| {p['d']} | {p['pool']} | {p['greedy_s']:.4f} | {p['exact_s']:.4f} | "
                f"{p['greedy_ratio']:.3f} | {p['exact_ratio']:.3f} |"
            )
        lines.append("")
    if meta.get("notes"):
        lines += ["## What we see", "", meta["notes"], ""]
    out.write_text("\n".join(lines))
    plot(out.with_suffix(".png"), rows, cfg, meta["quick"])


def plot(path: Path, rows: list[dict], cfg: dict, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in arm_names(cfg) if a != "random"]
    kinds = ["digits", "gmm"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4), constrained_layout=True)
    get = {(r["data"], r["arm"]): r for r in rows if r["kind"] == "map" and r["objective"] == "rf"}
    for ax, kind in zip(axes, kinds):
        grid = np.full((len(DIMS), len(arms)), np.nan)
        for i, d in enumerate(DIMS):
            for j, arm in enumerate(arms):
                r = get.get((f"{kind}-d{d}", arm))
                c = (r or {}).get("change") or {}
                if c.get("nfe"):
                    grid[i, j] = -100 * c["nfe"]["mean"]  # positive: fewer evaluations than random
                    ax.text(
                        j,
                        i,
                        f"W2 {pct(c['w2_50'])}\nerr {pct(c['disc1'])}",
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="white" if abs(grid[i, j]) > 30 else "black",
                    )
        im = ax.imshow(grid, cmap="RdBu", vmin=-45, vmax=45, aspect="auto")
        ax.set_xticks(
            range(len(arms)),
            [a.replace("scope", "scope ").replace("pool", "pool ") for a in arms],
            fontsize=8,
        )
        ax.set_yticks(range(len(DIMS)), [f"d={d}" for d in DIMS])
        ax.set_title({"digits": "digits (PCA)", "gmm": "10-mode Gaussian mixture"}[kind])
    fig.colorbar(im, ax=axes, label="adaptive RK45 evaluations, % fewer than random")
    fig.suptitle(
        "Rectified flow, matched vs random noise"
        + (" (quick smoke run)" if quick else "")
        + ". Colour: fewer solver evaluations (blue). Text: change in 50-step W2 (W2) and in "
        "1-step discretisation error (err); negative is better, *: 95% interval excludes 0",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(c: dict) -> str:
    star = "*" if c["lo"] > 0 or c["hi"] < 0 else ""
    return (
        f"{100 * c['mean']:+.0f}%{star}"
        if abs(c["mean"]) >= 0.1
        else f"{100 * c['mean']:+.1f}%{star}"
    )


def pool_rules(quick: bool) -> list[dict]:
    """Time one cycle of DANSM's greedy rule and of the exact rectangular assignment."""
    from noisepair.pool import NoisePool

    out = []
    for d in (2,) if quick else (2, 16, 64):
        x = load_data(f"gmm-d{d}")["train"]
        for size in (200,) if quick else (1000, 10000):
            row = {"d": d, "pool": size}
            for rule in ("greedy", "exact"):
                pool, secs, m, u = NoisePool(size, rule=rule, seed=1), [], 0.0, 0.0
                for lo in range(0, size - size % BATCH, BATCH):
                    _, info = pool.take(x[lo : lo + BATCH])
                    secs.append(info["seconds"])
                    m, u = m + info["cost"], u + info["cost_random"]
                row[f"{rule}_s"], row[f"{rule}_ratio"] = float(np.median(secs)), m / u
            out.append(row)
    return out


def machine() -> str:
    import platform

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, 1 torch thread per worker"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run in seconds (not a result)"
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel jobs (0: in this process)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "regime.md"))
    parser.add_argument("--notes", default=None, help="a file whose text goes under 'What we see'")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="only rewrite the .md/.png from the .json next to --out (with --notes)",
    )
    parser.add_argument("--arms", default=None, help="run only these arms (comma-separated) ...")
    parser.add_argument(
        "--data", default=None, help="... on these data sets; merged into the saved map"
    )
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.quick:
        cfg["n_eval"] = 64
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    expected = len(make_jobs(cfg, args.quick))
    from noisepair.demo.metrics import w2_floor

    floors = {
        n: w2_floor(d["train"], d["held"])
        for n in dataset_names(args.quick)
        for d in [load_data(n)]
    }
    if args.rewrite:
        saved = json.loads(out.with_suffix(".json").read_text())
        meta = dict(
            saved["meta"],
            floors=floors,
            notes=Path(args.notes).read_text().strip() if args.notes else None,
        )
        write_results(out, saved["jobs"], meta, cfg, expected)
        return 0
    start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    jobs = make_jobs(cfg, args.quick)
    done: list[dict] = []
    if args.arms or args.data:  # re-run a part: the rest of the saved map stays as it was
        arms = set(args.arms.split(",")) if args.arms else None
        names = set(args.data.split(",")) if args.data else None
        jobs = [
            j
            for j in jobs
            if (arms is None or j["label"] in arms) and (names is None or j["data"] in names)
        ]
        saved = json.loads(out.with_suffix(".json").read_text())
        rerun = {(j["kind"], j["data"], j["label"]) for j in jobs}
        done = [j for j in saved["jobs"] if (j["kind"], j["data"], j["arm"]) not in rerun]
        meta = dict(saved["meta"], floors=floors)
        meta["parts"] = [
            *meta.get("parts", []),
            {"date": now, "jobs": len(jobs), "arms": args.arms, "data": args.data},
        ]
        seconds_before = meta.get("seconds", 0.0)
    else:
        meta = {
            "quick": args.quick,
            "date": now,
            "machine": machine(),
            "load_start": [round(v, 2) for v in os.getloadavg()],
            "floors": floors,
            "notes": Path(args.notes).read_text().strip() if args.notes else None,
        }
        meta["pool_rules"] = pool_rules(args.quick)
        seconds_before = 0.0

    kept = len(done)  # jobs of the saved map this run leaves as they are

    def finished(res: dict) -> None:
        done.append(res)
        meta.update(
            seconds=seconds_before + time.perf_counter() - start,
            load_now=[round(v, 2) for v in os.getloadavg()],
        )
        write_results(out, done, meta, cfg, expected)
        rf = [r for r in res["results"] if r["objective"] == "rf"]
        print(
            f"[{len(done) - kept}/{len(jobs)}] {res['kind']} {res['data']} {res['arm']}: path² "
            f"{res['path_ratio']:.3f}, NFE {np.mean([r['nfe'] for r in rf]):.0f}, W2(50) "
            f"{np.mean([r['w2_50'] for r in rf]):.3f}, stream {res['stream_seconds']:.1f}s, "
            f"{meta['seconds'] / 60:.1f} min",
            flush=True,
        )

    if args.workers <= 0:
        for job in jobs:
            finished(run_job(job))
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for res in pool.imap_unordered(run_job, jobs):
                finished(res)
    print(f"wrote {out} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

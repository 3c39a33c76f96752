"""Train one arm of the A/B: a small network on one data set, with noise paired by ``method``.

Both arms share everything but the pairing: the same initial weights, the same batches in the
same order, the same noise draws (MatchedNoiseLoader seeds them by (seed, epoch, batch); the
``random`` matcher keeps them as drawn, the matched arm's permutes them), the same time draws and
the same evaluation noise. The arms differ only in which noise goes with which sample.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from noisepair.demo.data import ShuffledBatches
from noisepair.demo.metrics import w2
from noisepair.demo.model import TimeMLP
from noisepair.demo.objectives import get_objective
from noisepair.loader import MatchedNoiseLoader


@dataclass
class ArmResult:
    method: str
    steps: list[int]
    #: metric name (e.g. "w2_euler4") -> value at each checkpoint step
    curves: dict[str, list[float]]
    cost_ratio: float  # mean matched / as-drawn squared path length over the training batches
    seconds: float
    model: torch.nn.Module = field(repr=False)  # the weight average that was evaluated
    eval_noise: torch.Tensor = field(repr=False)


def _adam(params: list, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch has a fused CPU kernel (2.4 on), the plain one before."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def sampler_label(objective: str, n: int) -> str:
    return f"{'euler' if objective == 'rf' else 'ddim'}{n}"


def arm_loader(
    train: np.ndarray,
    batch_size: int,
    *,
    method: str,
    seed: int = 0,
    scope: int = 1,
    pool: int | None = None,
    persistent: int | None = None,
    semidiscrete: Any = None,
    method_options: dict | None = None,
    prefetch: int = 2,
) -> MatchedNoiseLoader:
    """The loader an arm trains on: shuffled batches of ``train``, noise paired by ``method``
    (with ``persistent``, LOOM-CFM's seeds per training point, named by their index; with a
    fitted ``semidiscrete``, batches whose noise chose their samples, with replacement)."""
    if semidiscrete is not None:
        sampler = semidiscrete.batch_sampler(batch_size, seed=seed)
        data = torch.utils.data.TensorDataset(torch.from_numpy(train))
        inner = torch.utils.data.DataLoader(data, batch_sampler=sampler)
        return MatchedNoiseLoader(inner, seed=seed, prefetch=prefetch, coupling=semidiscrete)
    return MatchedNoiseLoader(
        ShuffledBatches(train, batch_size, seed=seed, with_index=persistent is not None),
        method=method,
        seed=seed,
        prefetch=prefetch,
        scope=scope,
        pool=pool,
        persistent=persistent,
        index_key=None if persistent is None else 1,
        method_options=method_options,
    )


def train_arm(
    train: np.ndarray,
    held_out: np.ndarray,
    *,
    method: str = "auto",
    objective: str = "rf",
    steps: int = 2000,
    batch_size: int = 128,
    eval_every: int = 100,
    sample_steps: tuple[int, ...] = (1, 4, 50),
    seed: int = 0,
    lr: float = 1e-3,
    hidden: int = 256,
    depth: int = 3,
    ema: float = 0.99,
    method_options: dict | None = None,
    scope: int = 1,
    pool: int | None = None,
    persistent: int | None = None,
    semidiscrete: Any = None,
    progress: bool = True,
    desc: str | None = None,
) -> ArmResult:
    """Train for ``steps`` optimizer steps; every ``eval_every`` steps, W2 of samples made with
    each of ``sample_steps`` sampler steps against ``held_out``.

    Samples come from an exponential moving average of the weights (decay ``ema``; 0 turns it
    off), as in diffusion training practice: it removes step-to-step optimizer noise from the
    curves at a lag of about 1 / (1 - ema) steps, the same for both arms. ``scope``, ``pool``,
    ``persistent`` and ``semidiscrete`` are MatchedNoiseLoader's (a match scope of several
    batches; DANSM's noise pool; LOOM-CFM's seeds per training point; SD-FM's coupling)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    # DDIM clips x0 to the data's range (1 for the digits in [-1, 1], as diffusers' clip_sample)
    obj = get_objective(objective, clip_sample=float(np.ceil(np.abs(train).max())))
    dim = train.shape[1]
    torch.manual_seed(seed)
    model = TimeMLP(dim, hidden=hidden, depth=depth)
    opt = _adam(list(model.parameters()), lr)
    averaged = copy.deepcopy(model).requires_grad_(False)
    pairs = list(zip(averaged.parameters(), model.parameters()))  # walked once, not per step
    t_gen = torch.Generator().manual_seed(seed + 1)
    eval_noise = torch.randn(len(held_out), dim, generator=torch.Generator().manual_seed(seed + 2))

    loader = arm_loader(
        train,
        batch_size,
        method=method,
        seed=seed,
        scope=scope,
        pool=pool,
        persistent=persistent,
        semidiscrete=semidiscrete,
        method_options=method_options,
    )
    labels = {n: "w2_" + sampler_label(objective, n) for n in sample_steps}
    curves: dict[str, list[float]] = {name: [] for name in labels.values()}
    checkpoints: list[int] = []
    ratios: list[float] = []

    def evaluate(step: int) -> None:
        averaged.eval()
        for n, name in labels.items():
            curves[name].append(w2(obj.sample(averaged, eval_noise, n).numpy(), held_out))
        checkpoints.append(step)

    bar = tqdm(
        total=steps, desc=desc or method, disable=not progress, leave=True, dynamic_ncols=True
    )
    step, epoch = 0, 0
    try:
        while step < steps:
            loader.set_epoch(epoch)
            for pb in loader:
                x_t, t, target = obj.inputs(pb, t_gen)
                loss = ((model(x_t, t) - target) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    decay = min(ema, step / (step + 10))  # a short warm-up, then ``ema``
                    for p_avg, p in pairs:
                        p_avg.lerp_(p, 1 - decay)
                ratios.append(pb.info["cost_ratio"])
                step += 1
                bar.update(1)
                if step % eval_every == 0 or step == steps:
                    evaluate(step)
                    last = {k: round(v[-1], 3) for k, v in curves.items()}
                    bar.set_postfix(last, refresh=False)
                if step >= steps:
                    break
            epoch += 1
    finally:
        loader.close()
        bar.close()
    return ArmResult(
        method=method,
        steps=checkpoints,
        curves=curves,
        cost_ratio=float(np.mean(ratios)),
        seconds=time.perf_counter() - start,
        model=averaged,
        eval_noise=eval_noise,
    )

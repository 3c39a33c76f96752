"""Training objectives of the demo and their samplers.

``rf``: rectified flow (t=0 noise, t=1 data, x_t = t x + (1-t) z, target x - z), sampled with
Euler steps from t=0 to t=1. ``ddpm``: DDPM epsilon prediction on the linear beta schedule
(1e-4 .. 0.02, 1000 steps; diffusers' defaults), sampled with deterministic DDIM steps, x0
clipped to the data's range like diffusers' ``clip_sample``.

The training inputs come from ``noisepair.adapters``, so the demo exercises the library's own
formulas.
"""

from __future__ import annotations

from typing import Any

import torch

from noisepair.adapters import DDPM, RectifiedFlow

OBJECTIVES = ("rf", "ddpm")


def get_objective(name: str, clip_sample: float | None = None) -> Objective:
    """``clip_sample``: DDIM clips its x0 prediction to [-c, c] (diffusers' ``clip_sample``,
    on by default there with c=1 for images in [-1, 1]); rectified flow ignores it."""
    if name == "rf":
        return RectifiedFlowObjective()
    if name == "ddpm":
        return DDPMObjective(clip_sample=clip_sample)
    raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")


class Objective:
    name = "objective"

    def inputs(
        self, pb: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t in [0, 1] for the network, regression target) of a PairedBatch."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, z: torch.Tensor, steps: int) -> torch.Tensor:
        raise NotImplementedError


class RectifiedFlowObjective(Objective):
    name = "rf"

    def __init__(self):
        self.adapter = RectifiedFlow(convention="rf")

    def inputs(self, pb, generator):
        out = self.adapter(pb, generator=generator)
        return out.x_t, out.t.reshape(-1), out.target

    @torch.no_grad()
    def sample(self, model, z, steps):
        x, dt = z.clone(), 1.0 / steps
        for i in range(steps):
            t = torch.full((x.shape[0],), i * dt, dtype=x.dtype)
            x = x + dt * model(x, t)
        return x


class DDPMObjective(Objective):
    name = "ddpm"
    num_train_timesteps = 1000

    def __init__(self, clip_sample: float | None = None):
        self.clip_sample = clip_sample
        betas = torch.linspace(1e-4, 0.02, self.num_train_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.adapter = DDPM(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule="linear",
            prediction_type="epsilon",
        )

    def inputs(self, pb, generator):
        out = self.adapter(pb, generator=generator)
        return out.x_t, out.t.reshape(-1).float() / self.num_train_timesteps, out.target

    @torch.no_grad()
    def sample(self, model, z, steps):
        """Deterministic DDIM (eta=0) on ``steps`` evenly spaced timesteps, "trailing" spacing
        (the first step starts at t = T-1, so even one step starts from pure noise)."""
        T = self.num_train_timesteps
        ts = [round(T - i * T / steps) - 1 for i in range(steps)]
        x = z.clone()
        for j, t in enumerate(ts):
            a_t = self.alphas_cumprod[t].item()
            a_prev = self.alphas_cumprod[ts[j + 1]].item() if j + 1 < len(ts) else 1.0
            eps = model(x, torch.full((x.shape[0],), t / self.num_train_timesteps, dtype=x.dtype))
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            if self.clip_sample is not None:
                # without it the first step divides eps's error by sqrt(alpha_bar_999) ~ 0.006
                x0 = x0.clamp(-self.clip_sample, self.clip_sample)
                eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return x

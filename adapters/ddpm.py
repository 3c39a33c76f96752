"""DDPM / DDIM training inputs from matched pairs, with diffusers' formulas.

With alpha_bar_t the cumulative product of (1 - beta) up to the integer timestep t
(t = 0 almost clean, t = T - 1 almost pure noise):

    x_t    = sqrt(alpha_bar_t) * x + sqrt(1 - alpha_bar_t) * z          (scheduler.add_noise)
    target = z                                          prediction_type "epsilon"
             x                                          prediction_type "sample"
             sqrt(alpha_bar_t) * z - sqrt(1 - alpha_bar_t) * x   "v_prediction" (get_velocity)

Offset noise and input perturbation (diffusers' train_text_to_image) are added *after*
matching: the matcher permutes pure N(0, I) draws, which is what keeps the noise marginal
exactly Gaussian; the extra terms are fresh, independent noise on top, as in the script:

    noise   = z + noise_offset * n_bc           n_bc ~ N(0, 1) of shape (B, C, 1, ..., 1)
    x_t     = add_noise(x, noise + input_perturbation * n, t)     n ~ N(0, I)
    target  = noise (epsilon) or get_velocity(x, noise, t)      (the unperturbed noise)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisepair.backend import expand, get_backend
from noisepair.batch import sample_and_noise

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class DDPMInputs:
    """``model(x_t, t)`` is regressed onto ``target``; ``t`` holds integer timesteps."""

    x_t: Any
    t: Any
    target: Any


def betas(
    schedule: str, num_train_timesteps: int, beta_start: float = 0.0001, beta_end: float = 0.02
) -> np.ndarray:
    """The beta schedules of diffusers' DDPMScheduler (float64; the scheduler keeps float32)."""
    n = num_train_timesteps
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, n)
    if schedule == "scaled_linear":  # latent diffusion / Stable Diffusion
        return np.linspace(beta_start**0.5, beta_end**0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":  # improved DDPM's cosine alpha_bar, betas capped at 0.999
        alpha_bar = np.cos((np.arange(n + 1) / n + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(
        f"unknown beta_schedule {schedule!r}; choose one of {BETA_SCHEDULES} or pass "
        "a diffusers scheduler."
    )


class DDPM:
    """Turns a paired batch into DDPM/DDIM inputs: ``ddpm(pb, timesteps=None, generator=None)``.

    Args:
        scheduler: a diffusers scheduler with ``alphas_cumprod`` (DDPMScheduler, DDIMScheduler,
            ...); its schedule, number of timesteps and prediction type are used. Without one,
            the schedule is built from the arguments below exactly as diffusers builds it.
        num_train_timesteps, beta_schedule, beta_start, beta_end: the schedule when no
            scheduler is given (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``; default: the scheduler's,
            else ``epsilon``.
        noise_offset: offset noise (crosslabs), one extra N(0, noise_offset^2) value per sample
            and channel (dim 1), constant over the remaining dims.
        input_perturbation: extra noise in x_t only, not in the target (Ning et al. 2023).
    """

    def __init__(
        self,
        scheduler: Any = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str | None = None,
        noise_offset: float = 0.0,
        input_perturbation: float = 0.0,
        *,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ):
        if scheduler is not None:
            if not hasattr(scheduler, "alphas_cumprod"):
                raise TypeError(
                    f"{type(scheduler).__name__} has no alphas_cumprod: DDPM needs a DDPM-style "
                    "scheduler (DDPMScheduler, DDIMScheduler); for flow-matching schedulers use "
                    "RectifiedFlow('sd3')."
                )
            alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
            prediction_type = prediction_type or scheduler.config.get("prediction_type")
        else:
            alphas_cumprod = np.cumprod(
                1 - betas(beta_schedule, int(num_train_timesteps), beta_start, beta_end)
            )
        prediction_type = prediction_type or "epsilon"
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}."
            )
        if noise_offset < 0 or input_perturbation < 0:
            raise ValueError(
                f"noise_offset and input_perturbation must be >= 0, got "
                f"{noise_offset} and {input_perturbation}."
            )
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = len(alphas_cumprod)
        self.prediction_type = prediction_type
        self.noise_offset = float(noise_offset)
        self.input_perturbation = float(input_perturbation)

    def __call__(self, pb: Any, timesteps: Any = None, generator: Any = None) -> DDPMInputs:
        x, noise, b = sample_and_noise(pb)
        for_t, for_offset, for_perturbation = b.streams(generator, 3)
        t = self._timesteps(x, timesteps, for_t)
        if self.noise_offset:
            if len(x.shape) < 3:
                raise ValueError(
                    f"noise_offset needs samples with channels and spatial dims (B, C, ...), got "
                    f"shape {tuple(x.shape)}."
                )
            offset_shape = tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2)
            noise = noise + self.noise_offset * b.normal(x, offset_shape, for_offset)
        noised = noise
        if self.input_perturbation:
            noised = noise + self.input_perturbation * b.normal(x, tuple(x.shape), for_perturbation)
        alpha_bar = expand(b.lookup(self.alphas_cumprod, t, x), x)
        sqrt_alpha_bar, sqrt_one_minus = b.sqrt(alpha_bar), b.sqrt(1 - alpha_bar)
        x_t = sqrt_alpha_bar * x + sqrt_one_minus * noised
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "sample":
            target = x
        else:
            target = sqrt_alpha_bar * noise - sqrt_one_minus * x
        return DDPMInputs(x_t=x_t, t=t, target=target)

    def _timesteps(self, x: Any, timesteps: Any, generator: Any) -> Any:
        b = get_backend(x)
        if timesteps is None:
            return b.integers(x, self.num_train_timesteps, generator)
        t = b.values(timesteps, x, dtype=b.int64(), name="timesteps")
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps}), got "
                f"[{int(t.min())}, {int(t.max())}]."
            )
        return t

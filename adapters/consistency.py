"""Consistency training (Song et al. 2023) with the improved recipe (Song & Dhariwal 2023, iCT).

One matched noise z is placed at two adjacent Karras noise levels s < t of the current
discretisation; the online network sees the larger, the (stop-gradient) target network the
smaller, and their consistency functions are pulled together:

    sigma_i  = (sigma_min^(1/rho) + i/(N-1) * (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho
    x_t = x + t * z,    x_s = x + s * z,    (s, t) = (sigma_i, sigma_{i+1})
    f(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, sigma)
    loss = weight(t, s) * pseudo_huber(f_online(x_t, t), f_target(x_s, s))

iCT's choices: N doubles over training, N(k) = min(s0 * 2^floor(k / K'), s1) + 1 with
K' = floor(K / (log2(s1 / s0) + 1)); the index i is drawn from a discretised lognormal over
sigma, p(i) ~ erf((log sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((log sigma_i - P_mean) /
(sqrt(2) P_std)); weight(t, s) = 1 / (t - s); pseudo-Huber with c = 0.00054 * sqrt(dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from noisepair.backend import expand, get_backend
from noisepair.batch import sample_and_noise


@dataclass
class ConsistencyInputs:
    """Online network input ``(x_t, t)``, target network input ``(x_s, s)``, with s < t."""

    x_t: Any
    t: Any
    x_s: Any
    s: Any
    weight: Any


class Consistency:
    """Turns a paired batch into consistency-training inputs: ``ct(pb, step=None, generator=None)``.

    Args:
        sigma_min, sigma_max, rho: the Karras noise levels (EDM defaults).
        sigma_data: the data's standard deviation, for the boundary-condition scalings.
        total_steps: training steps K of the discretisation curriculum; ``None`` keeps the final
            discretisation N = s1 + 1 throughout.
        s0, s1: initial and final number of discretisation intervals (iCT: 10 and 1280).
        p_mean, p_std: the lognormal over sigma from which the noise-level index is drawn.
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        *,
        sigma_data: float = 0.5,
        total_steps: int | None = None,
        s0: int = 10,
        s1: int = 1280,
        p_mean: float = -1.1,
        p_std: float = 2.0,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}.")
        if not 1 <= s0 <= s1:
            raise ValueError(f"need 1 <= s0 <= s1, got s0={s0}, s1={s1}.")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.sigma_data = float(sigma_data)
        self.total_steps = total_steps
        self.s0, self.s1 = int(s0), int(s1)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __call__(
        self, pb: Any, step: int | None = None, generator: Any = None
    ) -> ConsistencyInputs:
        x, z, b = sample_and_noise(pb)
        sigmas = self.sigmas(step)
        i = b.categorical(x, self.index_probs(step), generator)
        t, s = b.lookup(sigmas, i + 1, x), b.lookup(sigmas, i, x)
        return ConsistencyInputs(
            x_t=x + expand(t, x) * z, t=t, x_s=x + expand(s, x) * z, s=s, weight=self.weight(t, s)
        )

    # -- the discretisation --------------------------------------------------------------
    def num_scales(self, step: int | None = None) -> int:
        """N(k): the number of noise levels at training step k (iCT's exponential curriculum)."""
        if step is None:
            return self.s1 + 1
        if self.total_steps is None:
            raise ValueError(
                "step= was given but total_steps is None; build Consistency("
                "total_steps=K) to follow the discretisation curriculum."
            )
        per_stage = max(1, math.floor(self.total_steps / (math.log2(self.s1 // self.s0) + 1)))
        return min(self.s0 * 2 ** (int(step) // per_stage), self.s1) + 1

    def sigmas(self, step: int | None = None) -> np.ndarray:
        """The N(k) Karras noise levels, increasing from sigma_min to sigma_max (float64)."""
        ramp = np.linspace(0.0, 1.0, self.num_scales(step))
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + ramp * (hi - lo)) ** self.rho

    def index_probs(self, step: int | None = None) -> np.ndarray:
        """P(i) for the interval (sigma_i, sigma_{i+1}): the lognormal's mass between them."""
        cdf = erf((np.log(self.sigmas(step)) - self.p_mean) / (math.sqrt(2) * self.p_std))
        mass = np.diff(cdf)
        return mass / mass.sum()

    # -- the parameterisation and the loss -----------------------------------------------
    def c_skip(self, sigma: Any) -> Any:
        """Weight of the input in f(x, sigma); 1 at sigma_min, so f(x, sigma_min) = x."""
        return self.sigma_data**2 / ((sigma - self.sigma_min) ** 2 + self.sigma_data**2)

    def c_out(self, sigma: Any) -> Any:
        """Weight of the network output in f(x, sigma); 0 at sigma_min."""
        scale = get_backend(sigma).sqrt(sigma**2 + self.sigma_data**2)
        return (sigma - self.sigma_min) * self.sigma_data / scale

    def c_in(self, sigma: Any) -> Any:
        """EDM's input scaling: the network sees x / sqrt(sigma^2 + sigma_data^2), unit variance."""
        return 1 / get_backend(sigma).sqrt(sigma**2 + self.sigma_data**2)

    def weight(self, t: Any, s: Any) -> Any:
        """iCT's lambda = 1 / (t - s): equalises the loss across noise levels."""
        return 1 / (t - s)

    def pseudo_huber(self, pred: Any, target: Any) -> Any:
        """Per-sample sqrt(||pred - target||^2 + c^2) - c with iCT's c = 0.00054 * sqrt(dim)."""
        diff = pred - target
        dim = math.prod(diff.shape[1:])
        c = 0.00054 * math.sqrt(dim)
        sq = (diff**2).reshape(diff.shape[0], -1).sum(1)
        return get_backend(sq).sqrt(sq + c**2) - c

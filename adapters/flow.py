"""Rectified flow / flow matching on matched pairs, in torchcfm's or SD3's time convention.

The two conventions describe the same straight path between noise z and data x and differ only
in which end is time 0 and in the sign of the velocity:

    "rf"  (rectified flow, torchcfm):  t=0 noise, t=1 data
          x_t = t * x + (1 - t) * z,        target = x - z
    "sd3" (diffusers' FlowMatchEulerDiscreteScheduler): sigma=1 noise, sigma=0 data
          x_sigma = (1 - sigma) * x + sigma * z,   target = z - x

so ``sd3`` at sigma is ``rf`` at t = 1 - sigma with the target negated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from noisepair.backend import expand, get_backend
from noisepair.batch import sample_and_noise

CONVENTIONS = ("rf", "sd3")
T_SAMPLERS = ("uniform", "logit_normal")


@dataclass
class FlowInputs:
    """``model(x_t, t)`` is regressed onto ``target``; ``t`` has one value per sample."""

    x_t: Any
    t: Any
    target: Any


class RectifiedFlow:
    """Turns a paired batch into flow-matching inputs: ``rf(pb, t=None, generator=None)``.

    Args:
        convention: ``"rf"`` (t=0 noise, t=1 data, target x - z; torchcfm) or ``"sd3"``
            (sigma=1 noise, target z - x; diffusers' SD3 training).
        t_sampler: how ``t`` is drawn when not given: ``"uniform"`` on [0, 1),
            ``"logit_normal"`` (SD3: t = sigmoid(logit_mean + logit_std * n), n ~ N(0, 1)),
            or a callable ``(batch_size, generator) -> t`` with values in [0, 1].
        logit_mean, logit_std: the logit-normal's parameters (SD3 paper: 0 and 1).
        shift: SD3's resolution shift of the noise level, sigma -> shift * sigma /
            (1 + (shift - 1) * sigma) (3.0 for SD3 at 1024px); 1.0 leaves t as drawn. It applies
            to drawn times only; a ``t`` passed to the call is used as given.
    """

    def __init__(
        self,
        convention: str = "rf",
        t_sampler: str | Callable = "uniform",
        *,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
    ):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}.")
        if not callable(t_sampler) and t_sampler not in T_SAMPLERS:
            raise ValueError(
                f"unknown t_sampler {t_sampler!r}; choose one of {T_SAMPLERS} or pass a callable "
                "(batch_size, generator) -> t."
            )
        if logit_std <= 0 or shift <= 0:
            raise ValueError(f"logit_std and shift must be > 0, got {logit_std} and {shift}.")
        self.convention = convention
        self.t_sampler = t_sampler
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.shift = float(shift)

    def __call__(self, pb: Any, t: Any = None, generator: Any = None) -> FlowInputs:
        x, z, b = sample_and_noise(pb)
        t = b.values(t, x) if t is not None else self.sample_t(x, generator)
        tb = expand(t, x)
        if self.convention == "rf":
            return FlowInputs(x_t=tb * x + (1 - tb) * z, t=t, target=x - z)
        return FlowInputs(x_t=(1 - tb) * x + tb * z, t=t, target=z - x)

    def sample_t(self, x: Any, generator: Any = None) -> Any:
        """One time per sample of ``x``, in the convention's own variable (t or sigma)."""
        b = get_backend(x)
        if callable(self.t_sampler):
            t = b.values(self.t_sampler(x.shape[0], generator), x)
        elif self.t_sampler == "uniform":
            t = b.uniform(x, generator)
        else:
            t = b.sigmoid(self.logit_mean + self.logit_std * b.normal(x, (x.shape[0],), generator))
        if self.shift == 1.0:
            return t
        noise_level = t if self.convention == "sd3" else 1 - t
        shifted = self.shift * noise_level / (1 + (self.shift - 1) * noise_level)
        return shifted if self.convention == "sd3" else 1 - shifted

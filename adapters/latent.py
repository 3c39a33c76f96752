"""Latent diffusion: match the noise to VAE latents, not to pixels.

Stable Diffusion's noise lives in the VAE's latent space, so that is where the matching must
happen. These functions build the ``encode=`` hook of ``MatchedNoiseLoader``, which runs in the
prefetch thread before the matcher; ``pb.sample`` is then the latent batch, while ``pb.batch``
(captions, text embeddings, every other field) stays untouched and in order. The latents are
normalised as the diffusers training scripts do it, shift first, then scale:

    latents = (vae.encode(pixels).latent_dist.sample() - shift_factor) * scaling_factor

(SD1/2: shift 0, scale 0.18215; SD3: shift 0.0609, scale 1.5305). Train on them with
``DDPM(scheduler)`` (SD1/2) or ``RectifiedFlow("sd3")`` (SD3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from noisepair.backend import get_backend


def vae_encoder(
    vae: Any,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    generator: Any = None,
) -> Callable:
    """``pixels -> latents`` with a diffusers ``AutoencoderKL``, without gradients, on the VAE's
    device and dtype. Factors not given come from ``vae.config``. A ``torch.Generator`` makes
    the latent sampling reproducible (batches are encoded in order, in one thread)."""
    config = vae.config
    scale = config.scaling_factor if scaling_factor is None else scaling_factor
    shift = (config.get("shift_factor") or 0.0) if shift_factor is None else shift_factor

    def encode(pixels: Any) -> Any:
        import torch

        x = torch.as_tensor(pixels).to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=generator)
        return (latents - shift) * scale

    return encode


def precomputed_latents(
    scaling_factor: float,
    shift_factor: float = 0.0,
    *,
    moments: bool = False,
    generator: Any = None,
) -> Callable:
    """``cached -> latents`` for latents encoded ahead of time (numpy or torch).

    ``moments=False``: the cache holds raw VAE samples; they are only shifted and scaled.
    ``moments=True``: it holds the latent distribution's parameters, mean and log-variance
    concatenated on dim 1 (diffusers' ``latent_dist.parameters``), and a fresh latent is
    sampled each time, as a script that caches ``latent_dist`` does.
    """

    def encode(cached: Any) -> Any:
        latents = _sample_moments(cached, generator) if moments else cached
        return (latents - shift_factor) * scaling_factor

    return encode


def _sample_moments(parameters: Any, generator: Any) -> Any:
    if len(parameters.shape) < 2 or parameters.shape[1] % 2:
        raise ValueError(
            f"moments=True expects (B, 2C, ...) mean and log-variance, got shape "
            f"{tuple(parameters.shape)}."
        )
    c = parameters.shape[1] // 2
    mean, logvar = parameters[:, :c], parameters[:, c:]
    b = get_backend(parameters)
    std = b.exp(0.5 * b.clip(logvar, -30.0, 20.0))
    return mean + std * b.normal(mean, tuple(mean.shape), generator)

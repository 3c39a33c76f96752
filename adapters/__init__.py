"""Trainer adapters: turn a PairedBatch into a trainer's inputs, with each ecosystem's formulas.

They only read ``pb.sample`` and ``pb.noise`` (any object with those works) and never import the
loader. They compute in the sample's framework and on its device (numpy, torch or JAX). Random
draws come from the caller's ``generator``: a ``numpy.random.Generator``, a ``torch.Generator``,
or a ``jax.random`` key (required for JAX, which has no global random state; an adapter splits
it into one key per draw). See the README's "Adapters" section for the time conventions.
"""

from .consistency import Consistency, ConsistencyInputs
from .ddpm import DDPM, DDPMInputs
from .flow import FlowInputs, RectifiedFlow
from .latent import precomputed_latents, vae_encoder

__all__ = [
    "RectifiedFlow",
    "FlowInputs",
    "DDPM",
    "DDPMInputs",
    "Consistency",
    "ConsistencyInputs",
    "vae_encoder",
    "precomputed_latents",
]

"""Trainer adapters: turn a PairedBatch into a trainer's inputs, with each ecosystem's formulas.

They only read ``pb.sample`` and ``pb.noise`` (any object with those works) and never import the
loader. See the README's "Adapters" section for the time conventions side by side.
"""
from .consistency import Consistency, ConsistencyInputs
from .ddpm import DDPM, DDPMInputs
from .flow import FlowInputs, RectifiedFlow
from .latent import precomputed_latents, vae_encoder

__all__ = ["RectifiedFlow", "FlowInputs", "DDPM", "DDPMInputs", "Consistency",
           "ConsistencyInputs", "vae_encoder", "precomputed_latents"]

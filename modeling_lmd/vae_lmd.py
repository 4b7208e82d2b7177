"""The frozen diffusers VAE under LMD: built from an `LMDConfig` or loaded from the Hub, and the one place that knows
how each VAE class encodes and decodes.

LMD works on unit-scaled latents: `(z - shift_factor) * scaling_factor`, as diffusers pipelines scale them, where
`z` is the posterior mode of an `AutoencoderKL` (not a sample), the quantized latents of a `VQModel` or the latents
of an `AutoencoderTiny`. `vae_decode` undoes the scaling before the VAE decoder.

Shipped as remote code next to every checkpoint: it imports only torch, diffusers and the sibling config.
"""

import os

import diffusers
import torch
from torch import nn

from .configuration_lmd import VAE_TYPES, LMDConfig


VAE_CLASSES = {name: getattr(diffusers, name) for name in VAE_TYPES}


def build_vae(config: LMDConfig) -> nn.Module:
    """The diffusers VAE described by `config.vae_type` / `config.vae_config`, frozen and in eval mode."""
    vae = VAE_CLASSES[config.vae_type].from_config(config.vae_config)
    vae.requires_grad_(False)
    vae.eval()
    for module in vae.modules():
        # Marks modules whose initialisation is the VAE's own, not the ViT's (see `LMDPreTrainedModel._init_weights`).
        module._lmd_vae_module = True
    return vae


def read_vae_config(name_or_path: str, subfolder: str | None = None, **kwargs) -> tuple[str, dict]:
    """The class name and config of a diffusers VAE in a local folder or Hub repo, without reading its weights."""
    config = diffusers.AutoencoderKL.load_config(name_or_path, subfolder=subfolder, **kwargs)
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name not in VAE_CLASSES:
        raise ValueError(f"{name_or_path} holds a {class_name}; expected one of {', '.join(VAE_CLASSES)}.")
    return class_name, dict(config)


def load_pretrained_vae(name_or_path: str, subfolder: str | None = None, **kwargs) -> nn.Module:
    """Load a diffusers VAE of any supported class from a local folder or Hub id, reading `_class_name`."""
    class_name, _ = read_vae_config(name_or_path, subfolder, **kwargs)
    return VAE_CLASSES[class_name].from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


def vae_reference(name_or_path, subfolder: str | None = None) -> dict:
    """The `LMDConfig` fields that let a checkpoint load its VAE again: a Hub id (and subfolder); nothing for a
    local folder, which would only mean something on this machine (set `vae_name_or_path` yourself for one)."""
    name_or_path = os.fspath(name_or_path)
    if os.path.exists(name_or_path):
        return {}
    return {"vae_name_or_path": name_or_path, "vae_subfolder": subfolder}


def shift_factor(vae: nn.Module) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def vae_encode(vae: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] `(B, 3, H, W)` -> unit-scaled latents `(B, C, h, w)`."""
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    if isinstance(vae, diffusers.VQModel):
        latents, _, _ = vae.quantize(vae.encode(pixel_values).latents)
    elif isinstance(vae, diffusers.AutoencoderKL):
        latents = vae.encode(pixel_values).latent_dist.mode()
    else:
        latents = vae.encode(pixel_values).latents
    return (latents - shift_factor(vae)) * vae.config.scaling_factor


@torch.no_grad()
def vae_decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Unit-scaled latents `(B, C, h, w)` -> pixels `(B, 3, H, W)`, nominally in [-1, 1] (not clamped)."""
    latents = latents.to(dtype=vae.dtype) / vae.config.scaling_factor + shift_factor(vae)
    if isinstance(vae, diffusers.VQModel):
        # The latents are already quantized (or predicted); decode them as they are.
        return vae.decode(latents, force_not_quantize=True).sample
    return vae.decode(latents).sample


__all__ = ["VAE_CLASSES", "build_vae", "load_pretrained_vae", "read_vae_config", "vae_decode", "vae_encode",
           "vae_reference"]

"""The frozen diffusers VAE under LMD: built from an `LMDConfig` or loaded from the Hub, and the one place that knows
how each VAE class encodes and decodes.

LMD works on unit-scaled latents: `(z - shift_factor) * scaling_factor`, as diffusers pipelines scale them, where
`z` is the posterior mode of an `AutoencoderKL` (not a sample), the quantized latents of a `VQModel` or the latents
of an `AutoencoderTiny`. `vae_decode` undoes the scaling before the VAE decoder.

Shipped as remote code next to every checkpoint: it imports only torch, diffusers and the sibling config.
"""

import hashlib
import json
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


def vae_reference(name_or_path, subfolder: str | None = None, local: bool = False) -> dict:
    """The `LMDConfig` fields that say where a checkpoint's VAE loads from again: a Hub id with its subfolder and the
    commit it resolves to now. A local folder is recorded (as an absolute path) only with `local=True`, for
    checkpoints that leave the VAE out: inside a shared checkpoint it would name a folder of this machine."""
    name_or_path = os.fspath(name_or_path)
    if os.path.exists(name_or_path):
        if not local:
            return {}
        return {"vae_name_or_path": os.path.abspath(name_or_path), "vae_subfolder": subfolder, "vae_revision": None}
    _, commit = diffusers.AutoencoderKL.load_config(name_or_path, subfolder=subfolder, return_commit_hash=True)
    return {"vae_name_or_path": name_or_path, "vae_subfolder": subfolder, "vae_revision": commit}


def vae_weights_sha256(vae: nn.Module) -> str:
    """A sha256 of every weight (names, dtypes and bytes): what makes two VAEs of one config encode alike."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_referenced_vae(config: LMDConfig, **kwargs) -> nn.Module:
    """The VAE of a checkpoint saved without it, from `config.vae_name_or_path` (at `config.vae_revision` for a Hub
    id), refused unless it is the VAE the checkpoint was trained with: same class and config, same weights
    (`config.vae_sha256`). `kwargs` (`cache_dir`, `token`, `local_files_only`) go to diffusers."""
    subfolder = f", subfolder `{config.vae_subfolder}`" if config.vae_subfolder else ""
    revision = f", revision {config.vae_revision}" if config.vae_revision else ""
    where = f"`{config.vae_name_or_path}`{subfolder}{revision}"
    fix = ("Pass `vae_name_or_path=` (a from_pretrained keyword) naming a copy of the VAE it was trained with, or load "
           "it once where the Hub can be reached (the VAE is then cached).")
    if config.vae_revision:
        kwargs["revision"] = config.vae_revision
    try:
        vae_type, found = read_vae_config(config.vae_name_or_path, config.vae_subfolder, **kwargs)
    except (OSError, ValueError) as error:
        raise OSError(f"This checkpoint was saved without its VAE, which it loads from {where}; that could not be "
                      f"read ({type(error).__name__}: {error}). {fix}") from error
    differences = [f"class: expected {config.vae_type}, found {vae_type}"] if vae_type != config.vae_type else []
    differences += [f"{key}: expected {value!r}, found {found[key]!r}" for key, value in sorted(config.vae_config.items())
                    if key in found and json.dumps(found[key]) != json.dumps(value)]
    if differences:
        raise ValueError(f"The VAE at {where} is not the one this checkpoint was trained with ("
                         f"{'; '.join(differences)}). {fix}")
    vae = VAE_CLASSES[vae_type].from_pretrained(config.vae_name_or_path, subfolder=config.vae_subfolder, **kwargs)
    if config.vae_sha256 and vae_weights_sha256(vae) != config.vae_sha256:
        raise ValueError(f"The VAE at {where} has other weights than the one this checkpoint was trained with "
                         f"(sha256 {vae_weights_sha256(vae)}, expected {config.vae_sha256}): its reconstructions would "
                         f"be wrong. {fix}")
    return vae


def shift_factor(vae: nn.Module) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def vae_encode(vae: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] `(B, 3, H, W)` -> unit-scaled latents `(B, C, h, w)`.

    diffusers' `retrieve_latents(..., sample_mode="argmax")` does the KL / Tiny part, but it lives in its pipeline
    modules, whose import pulls in every pipeline (many seconds, and warnings about processors); these lines are its
    rule, plus the VQ quantization it leaves out."""
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


__all__ = ["VAE_CLASSES", "build_vae", "load_pretrained_vae", "load_referenced_vae", "read_vae_config", "vae_decode",
           "vae_encode", "vae_reference", "vae_weights_sha256"]

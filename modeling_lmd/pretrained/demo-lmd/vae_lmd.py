"""The frozen diffusers VAE under LMD: built from an `LMDConfig` or loaded from the Hub, and the one place that knows
how each VAE class encodes and decodes.

LMD works on unit-scaled latents: `(z - shift_factor) * scaling_factor`, as diffusers pipelines scale them, where
`z` is the posterior mode of an `AutoencoderKL` (not a sample), the quantized latents of a `VQModel` or the latents
of an `AutoencoderTiny`. `vae_decode` undoes the scaling before the VAE decoder.

Shipped as remote code next to every checkpoint: it imports only torch, diffusers, transformers, safetensors and the
sibling config.
"""

import hashlib
import json
import os
from collections.abc import Mapping

import diffusers
import torch
from safetensors import safe_open
from torch import nn
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file, logging

from .configuration_lmd import VAE_TYPES, LMDConfig


logger = logging.get_logger(__name__)

VAE_CLASSES = {name: getattr(diffusers, name) for name in VAE_TYPES}

#: The float dtypes a VAE can be stored or loaded in with less precision than it was hashed in. A copy rounded to one
#: of them is the same VAE to within rounding (the shipped checkpoint holds its float32 VAE in float16), but cannot
#: be compared with the hash of the weights it was rounded from.
REDUCED_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


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


def weights_sha256(weights: Mapping[str, torch.Tensor]) -> str:
    """A sha256 of named tensors: their names, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vae_weights_sha256(vae: nn.Module) -> str:
    """A sha256 of every weight of `vae` (`weights_sha256`): what makes two VAEs of one config encode alike."""
    return weights_sha256(vae.state_dict())


def narrowed_exactly(weights: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """`weights` with every float tensor wider than `dtype` cast to it; None where that would change a value, or
    where no tensor is wider."""
    wider = [name for name, tensor in weights.items()
             if tensor.is_floating_point() and tensor.element_size() > dtype.itemsize]
    narrowed = dict(weights)
    for name in wider:
        narrowed[name] = weights[name].to(dtype)
        if not torch.equal(narrowed[name].to(weights[name].dtype), weights[name]):
            return None
    return narrowed if wider else None


def exact_copies(weights: Mapping[str, torch.Tensor]) -> list[Mapping[str, torch.Tensor]]:
    """`weights` as they are, and in each reduced-precision dtype that holds them exactly: what a hash of them may
    have been taken of. A float16 VAE copied into a float32 model (`from_vae`) and saved with it is still that
    float16 VAE."""
    narrowings = (narrowed_exactly(weights, dtype) for dtype in REDUCED_PRECISION_DTYPES)
    return [weights, *(narrowed for narrowed in narrowings if narrowed is not None)]


def weights_match_sha256(weights: Mapping[str, torch.Tensor], sha256: str) -> bool:
    """Whether `sha256` (`weights_sha256`) was taken of `weights`, as they are or exactly narrowed (`exact_copies`)."""
    return any(weights_sha256(copy) == sha256 for copy in exact_copies(weights))


def holds_reduced_precision(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether `weights` are no more precise than a 16-bit float: stored in one, or cast to one exactly."""
    floats = [tensor for tensor in weights.values() if tensor.is_floating_point()]
    return all(tensor.dtype in REDUCED_PRECISION_DTYPES for tensor in floats) or len(exact_copies(weights)) > 1


def checkpoint_vae_weights(name_or_path, vae_prefixes: tuple[str, ...], subfolder: str | None = None,
                           variant: str | None = None, **download_kwargs) -> dict[str, torch.Tensor] | None:
    """The VAE's weights as an LMD checkpoint stores them (one safetensors file or its shards), in the dtype they
    were stored in and named as in the VAE; None for a checkpoint without safetensors files.

    `vae_prefixes`: how the checkpoint's keys of the VAE begin (`lmd.vae.` saved by a head, `vae.` by the base
    model). `download_kwargs` (`revision`, `cache_dir`, `token`, `local_files_only`) find the files `from_pretrained`
    has just fetched."""

    def resolve(filename: str) -> str | None:
        if variant:  # transformers' naming: model.safetensors -> model.fp16.safetensors
            stem, extension = filename.rsplit(".", 1)
            filename = f"{stem}.{variant}.{extension}"
        return cached_file(name_or_path, filename, subfolder=subfolder or "",
                           _raise_exceptions_for_missing_entries=False, **download_kwargs)

    files = [resolve(SAFE_WEIGHTS_NAME)]
    if files[0] is None:
        index = resolve(SAFE_WEIGHTS_INDEX_NAME)
        if index is None:
            return None
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        files = [resolve(shard) for shard in sorted({shard for key, shard in weight_map.items()
                                                     if key.startswith(vae_prefixes)})]
    weights = {}
    for path in files:
        with safe_open(path, framework="pt") as stored:
            for key in stored.keys():
                prefix = next((prefix for prefix in vae_prefixes if key.startswith(prefix)), None)
                if prefix is not None:
                    weights[key[len(prefix):]] = stored.get_tensor(key)
    return weights


def check_vae_weights_loaded(loading_info: dict, vae_prefix: str, num_vae_weights: int, checkpoint) -> None:
    """Refuse a checkpoint whose config says it holds its VAE (`vae_in_checkpoint=True`) but that lacks some of the
    VAE's weights or holds them in other shapes (`from_pretrained(..., output_loading_info=True)`'s `loading_info`;
    the model names its VAE's weights `vae_prefix` + name): transformers would leave those random and only report
    them."""
    mismatched = {key for key, *_ in loading_info["mismatched_keys"]}
    unloaded = sorted(key for key in loading_info["missing_keys"] | mismatched if key.startswith(vae_prefix))
    if unloaded:
        shown = ", ".join(unloaded[:3]) + (f" and {len(unloaded) - 3} more" if len(unloaded) > 3 else "")
        raise ValueError(
            f"The checkpoint {checkpoint} lacks {len(unloaded)} of the VAE's {num_vae_weights} weights ({shown}), but "
            "its config says it holds its VAE (`vae_in_checkpoint=True`): those would stay random. A checkpoint saved "
            "without its VAE must say so in its config.json, `vae_in_checkpoint: false` with `vae_name_or_path` "
            "naming the VAE (a Hub id or a folder); `from_pretrained(..., vae_in_checkpoint=False, "
            "vae_name_or_path=...)` loads this one that way.")


def check_stored_vae_sha256(weights: Mapping[str, torch.Tensor], sha256: str, checkpoint) -> None:
    """Refuse the VAE weights a checkpoint stores (`checkpoint_vae_weights`) unless they are the VAE its config's
    `vae_sha256` names. Weights rounded to a 16-bit float since the hash was taken cannot be compared with it: they
    pass, with an info log."""
    if weights_match_sha256(weights, sha256):
        return
    if holds_reduced_precision(weights):
        logger.info(f"The checkpoint {checkpoint} stores its VAE in 16-bit floats, not in the precision its "
                    f"`vae_sha256` ({sha256}) was taken in, so the two were not compared: a rounded copy of a VAE "
                    "cannot match the hash of the VAE.")
        return
    raise ValueError(f"The VAE weights stored in the checkpoint {checkpoint} are not the VAE its config names (sha256 "
                     f"{weights_sha256(weights)}, expected `vae_sha256` {sha256}): the file was changed or damaged "
                     "after it was saved, and its reconstructions would be wrong. Save the checkpoint again from "
                     "its model, or load a copy of it that is intact.")


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
    if config.vae_sha256 and not weights_match_sha256(vae.state_dict(), config.vae_sha256):
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


__all__ = ["VAE_CLASSES", "build_vae", "check_stored_vae_sha256", "check_vae_weights_loaded", "checkpoint_vae_weights",
           "load_pretrained_vae", "load_referenced_vae", "read_vae_config", "vae_decode", "vae_encode", "vae_reference",
           "vae_weights_sha256", "weights_match_sha256", "weights_sha256"]

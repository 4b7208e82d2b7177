"""Reconstruction metrics for LMD: pixel-space PSNR of the masked region, and a mean-latent baseline.

Everything here works from *latents* (so it also runs on cached latents, without the VAE encoder) plus the
original pixels the PSNR is measured against:

- `masked_reconstruction(model, latents, noise=...)`: hide patches, predict them, composite (visible patches
  from the input, hidden ones from the model), decode.
- `mean_latent_fill(model, latents, mask)`: the trivial baseline that fills every hidden patch with the mean
  of the *visible* latents of the same image (per channel), the best constant guess the context allows.
- `masked_psnr(reconstruction, pixel_values, pixel_mask)`: PSNR in [0, 1] pixel space, inside the hidden
  region only, one value per image.
- `save_reconstruction_grid(...)`: an `original | masked | reconstruction` PNG.

Not shipped as remote code (it is a training/evaluation helper); it imports only torch, numpy and PIL.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def masked_psnr(
    reconstruction: torch.Tensor, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, eps: float = 1e-10
) -> torch.Tensor:
    """Per-image PSNR (dB) inside `pixel_mask`.

    Args:
        reconstruction, pixel_values: `(B, 3, H, W)` images in [-1, 1] (clamped, then mapped to [0, 1]).
        pixel_mask: `(B, 1, H, W)` or `(B, 3, H, W)`, 1 where a pixel was hidden (scored), 0 elsewhere.

    Returns:
        `(B,)` float tensor: `10 * log10(1 / MSE)` over the hidden pixels of each image (all three channels).
        An image without hidden pixels gets `nan`.
    """
    if reconstruction.shape != pixel_values.shape:
        raise ValueError(f"Shapes differ: reconstruction {tuple(reconstruction.shape)}, pixels {tuple(pixel_values.shape)}.")
    prediction = (reconstruction.float().clamp(-1, 1) + 1) / 2
    target = (pixel_values.float().to(prediction.device).clamp(-1, 1) + 1) / 2
    mask = pixel_mask.float().to(prediction.device).expand_as(prediction)
    squared_error = ((prediction - target) ** 2 * mask).flatten(1).sum(dim=1)
    count = mask.flatten(1).sum(dim=1)
    mse = squared_error / count.clamp(min=1.0)
    psnr = 10.0 * torch.log10(1.0 / mse.clamp(min=eps))
    return torch.where(count > 0, psnr, torch.full_like(psnr, float("nan")))


def mean_latent_fill(model, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: every hidden patch becomes the per-channel mean of the image's visible latents."""
    patches = model.patchify(latents)  # (B, L, p*p*C), each patch flattened as (p, p, C)
    batch, num_patches, width = patches.shape
    channels = model.config.latent_channels
    per_pixel = patches.reshape(batch, num_patches, width // channels, channels)
    visible = (1 - mask).to(patches.dtype).reshape(batch, num_patches, 1, 1)
    channel_mean = (per_pixel * visible).sum(dim=(1, 2)) / (visible.sum(dim=(1, 2)) * (width // channels)).clamp(min=1)
    filled = channel_mean.reshape(batch, 1, 1, channels).expand_as(per_pixel).reshape(batch, num_patches, width)
    mask_3d = mask.unsqueeze(-1).to(patches.dtype)
    return model.unpatchify(patches * (1 - mask_3d) + filled * mask_3d)


@torch.no_grad()
def masked_reconstruction(
    model,
    latents: torch.Tensor,
    mask_ratio: float | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    with_baseline: bool = False,
) -> dict:
    """Hide patches of `latents`, reconstruct them with `model`, decode.

    Args:
        latents: unit-scaled VAE latents `(B, C, h, w)` (e.g. `model.encode_images(pixels)` or cached ones).
        mask_ratio: defaults to `model.config.mask_ratio`.
        noise: `(B, L)` masking noise (lowest noise stays visible); drawn from `generator` when absent.
        with_baseline: also decode the mean-latent fill of the same mask.

    Returns a dict with `reconstruction` (`(B, 3, H, W)` in [-1, 1]), `mask` (`(B, L)`), `pixel_mask`
    (`(B, 1, H, W)`), `loss` (the model's masked latent MSE), `predictions`, and, with `with_baseline`,
    `baseline` (the decoded mean-latent fill).
    """
    mask_ratio = model.config.mask_ratio if mask_ratio is None else float(mask_ratio)
    latents = latents.to(device=model.device, dtype=model.encoder.patch_embed.weight.dtype)
    if noise is None:
        noise = torch.rand(latents.shape[0], model.config.num_patches, generator=generator)
    outputs = model(latents=latents, mask_ratio=mask_ratio, noise=noise.to(latents.device))
    composite = model.composite_latents(latents, outputs.logits, outputs.mask)
    result = {
        "reconstruction": model.decode_latents(composite).clamp(-1, 1),
        "mask": outputs.mask,
        "pixel_mask": model.pixel_mask(outputs.mask),
        "loss": outputs.loss,
        "predictions": outputs.logits,
    }
    if with_baseline:
        result["baseline"] = model.decode_latents(mean_latent_fill(model, latents, outputs.mask)).clamp(-1, 1)
    return result


def per_sample_masked_mse(model, latents: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's training loss, one value per sample `(B,)` (mean over hidden patches; same target as the model)."""
    target = model.patchify(latents)
    if model.config.norm_latent_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((predictions.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """`(3, H, W)` in [-1, 1] -> `(H, W, 3)` uint8."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(1, 2, 0).numpy()


def save_reconstruction_grid(
    path: str,
    originals: torch.Tensor,
    masked: torch.Tensor,
    reconstructions: torch.Tensor,
    min_cell: int = 96,
    padding: int = 2,
) -> Image.Image:
    """One row per image, columns `original | masked | reconstruction`; images `(B, 3, H, W)` in [-1, 1].

    Small images are enlarged (nearest neighbour, integer factor) so that each cell is at least `min_cell` pixels.
    """
    batch, _, height, width = originals.shape
    scale = max(1, math.ceil(min_cell / max(height, width)))
    cell_h, cell_w = height * scale, width * scale
    grid = Image.new("RGB", (3 * cell_w + 4 * padding, batch * cell_h + (batch + 1) * padding), (255, 255, 255))
    for row in range(batch):
        for col, images in enumerate((originals, masked, reconstructions)):
            cell = Image.fromarray(to_uint8_image(images[row]))
            if scale > 1:
                cell = cell.resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(cell, (padding + col * (cell_w + padding), padding + row * (cell_h + padding)))
    grid.save(path)
    return grid


__all__ = [
    "masked_psnr",
    "masked_reconstruction",
    "mean_latent_fill",
    "per_sample_masked_mse",
    "save_reconstruction_grid",
]

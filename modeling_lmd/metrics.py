"""How well LMD fills hidden regions, next to the references a sceptic asks for.

`reconstruction_metrics` scores a batch on fixed masks, one value per image, pixel space ([0, 1]), hidden region,
through the calls a user makes (`reconstruct` once per setting, the baselines' own functions):

- `masked_psnr`: the model in the leak-free setting (`reconstruct` from pixels: hidden pixels are painted over
  before the VAE sees the image, so nothing under the mask reaches the output);
- `masked_psnr_latent_masking`: the model in the paper's setting (`reconstruct` from the whole image's latents,
  latent patches hidden afterwards; the VAE's receptive field lets visible latents carry some hidden pixels, so
  this flatters);
- `pixel_mean_fill_psnr`: hidden pixels painted with the mean colour of the visible ones (the trivial baseline);
- `latent_mean_fill_psnr`: hidden latent patches set to the mean visible latent, decoded;
- `vae_psnr`: the VAE's own reconstruction (the ceiling: the model decodes through the same VAE);
- `visible_psnr` / `vae_visible_psnr`: the visible region of the model's output and of the VAE alone;
- `loss`: the training objective, the masked latent MSE.

Not shipped as remote code (a training / evaluation helper).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from .image_processing_lmd import LMDImageProcessor
from .modeling_lmd import num_visible_patches, paint_hidden_pixels, random_patch_mask
from .reconstruction_lmd import reconstruct, uniform_noise


#: The per-image metrics of `reconstruction_metrics`, in the order `LMDTrainer.prediction_step` stacks them.
METRIC_NAMES = (
    "loss",
    "masked_psnr",
    "masked_psnr_latent_masking",
    "pixel_mean_fill_psnr",
    "latent_mean_fill_psnr",
    "vae_psnr",
    "visible_psnr",
    "vae_visible_psnr",
)


def psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] `(B, 3, H, W)`, measured in [0, 1] pixel space.

    With `mask` (`(B, 1, H, W)` or `(B, 3, H, W)`, 1 = scored) only those pixels count; an image with none gets
    `nan`. Identical pixels give 100 dB (the MSE is floored at 1e-10).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"Shapes differ: prediction {tuple(prediction.shape)}, target {tuple(target.shape)}.")
    prediction = (prediction.float().clamp(-1, 1) + 1) / 2
    target = (target.float().to(prediction.device).clamp(-1, 1) + 1) / 2
    weights = torch.ones_like(prediction) if mask is None else mask.float().to(prediction.device).expand_as(prediction)
    squared_error = ((prediction - target) ** 2 * weights).flatten(1).sum(dim=1)
    count = weights.flatten(1).sum(dim=1)
    value = 10.0 * torch.log10(1.0 / (squared_error / count.clamp(min=1.0)).clamp(min=1e-10))
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def latent_mean_fill(model, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: every hidden patch becomes the per-channel mean of the image's visible latents."""
    patches = model.patchify(latents)  # (B, L, p*p*C), each patch flattened as (p, p, C)
    batch, num_patches, width = patches.shape
    channels = model.config.latent_channels
    per_position = patches.reshape(batch, num_patches, width // channels, channels)
    visible = (1 - mask).to(patches.dtype).reshape(batch, num_patches, 1, 1)
    count = (visible.sum(dim=(1, 2)) * (width // channels)).clamp(min=1)
    channel_mean = (per_position * visible).sum(dim=(1, 2)) / count  # (B, C)
    filled = channel_mean.reshape(batch, 1, 1, channels).expand_as(per_position).reshape(batch, num_patches, width)
    mask_3d = mask.unsqueeze(-1).to(patches.dtype)
    return model.unpatchify(patches * (1 - mask_3d) + filled * mask_3d, model.patch_grid(latents))


def seeded_generators(mask_seeds) -> list[torch.Generator]:
    """One generator per image, from its own seed: what it draws depends on the sample, not on the batch or the
    process it is evaluated in (first its mask, then, for progressive un-masking, its reveal order)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in mask_seeds]


def mask_noise(mask_seeds, num_patches: int, device) -> torch.Tensor:
    """`(B, L)` masking noise, image `i` drawn from its own seed (the first draw of `seeded_generators`)."""
    return uniform_noise(len(mask_seeds), num_patches, seeded_generators(mask_seeds), device)


@torch.no_grad()
def reconstruction_metrics(
    model, pixel_values: torch.Tensor | None, mask_seeds, latents: torch.Tensor | None = None,
    mask_ratio: float | None = None, **reconstruct_kwargs,
) -> dict[str, torch.Tensor]:
    """Every metric of `METRIC_NAMES` for one batch, `(B,)` each (see the module docstring).

    Args:
        model: an `LMDForPreTraining`.
        pixel_values: `(B, 3, H, W)` in [-1, 1]; without them the pixel metrics are `nan`.
        mask_seeds: `(B,)` one seed per image (`seeded_generators`): the same masks for every setting and
            baseline.
        latents: the whole image's latents, when cached (else encoded from `pixel_values`).
        mask_ratio: defaults to `model.config.mask_ratio`.
        reconstruct_kwargs: passed to both `reconstruct` calls (e.g. `num_inference_steps`, `reveal_order`);
            `mask_dilation`, `blend_radius` and `colour_correction` to the leak-free one only (they need pixels).
    """
    ratio = model.config.mask_ratio if mask_ratio is None else mask_ratio
    if latents is None:
        latents = model.lmd.encode_images(pixel_values)
    latents = latents.to(device=model.device, dtype=model.dtype)
    num_patches = model.config.num_patches
    # The masks `reconstruct` draws first from each image's generator, so every setting hides the same patches.
    patch_mask = random_patch_mask(mask_noise(mask_seeds, num_patches, model.device),
                                   num_visible_patches(ratio, num_patches))
    forward = model(latents=latents, patch_mask=patch_mask)
    metrics = {"loss": model.forward_loss(latents, forward.logits, forward.mask, per_sample=True)}
    nan = torch.full_like(metrics["loss"], float("nan"))
    if pixel_values is None:
        return {name: metrics.get(name, nan) for name in METRIC_NAMES}

    pixel_values = pixel_values.to(model.device)
    leak_free = reconstruct(model, pixel_values, mask_ratio=ratio, generator=seeded_generators(mask_seeds),
                            **reconstruct_kwargs)
    pixel_only = ("mask_dilation", "blend_radius", "colour_correction")
    latent_kwargs = {k: v for k, v in reconstruct_kwargs.items() if k not in pixel_only}
    latent_masking = reconstruct(model, latents=latents, mask_ratio=ratio, generator=seeded_generators(mask_seeds),
                                 **latent_kwargs)
    hidden, visible = leak_free.pixel_mask, 1 - leak_free.pixel_mask
    vae_alone = model.lmd.decode_latents(latents)
    latent_fill = model.lmd.decode_latents(latent_mean_fill(model, latents, leak_free.mask))
    metrics.update(
        masked_psnr=psnr(leak_free.reconstruction, pixel_values, hidden),
        masked_psnr_latent_masking=psnr(latent_masking.reconstruction, pixel_values, hidden),
        pixel_mean_fill_psnr=psnr(paint_hidden_pixels(pixel_values, hidden), pixel_values, hidden),
        latent_mean_fill_psnr=psnr(latent_fill, pixel_values, hidden),
        vae_psnr=psnr(vae_alone, pixel_values, hidden),
        visible_psnr=psnr(leak_free.reconstruction, pixel_values, visible),
        vae_visible_psnr=psnr(vae_alone, pixel_values, visible),
    )
    return metrics


def summarize_reconstruction_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for `LMDTrainer`: the mean over images of each per-image metric (`predictions` holds
    them as columns, in `METRIC_NAMES` order)."""
    values = np.asarray(eval_prediction.predictions, dtype=np.float64).reshape(-1, len(METRIC_NAMES))
    return {name: float(np.nanmean(values[:, i])) if np.isfinite(values[:, i]).any() else float("nan")
            for i, name in enumerate(METRIC_NAMES)}


def to_pil(images: torch.Tensor, min_side: int = 96) -> list[Image.Image]:
    """`(B, 3, H, W)` in [-1, 1] -> PIL images, enlarged (nearest neighbour, integer factor) to at least `min_side`."""
    scale = max(1, math.ceil(min_side / max(images.shape[-2:])))
    return [p.resize((p.width * scale, p.height * scale), Image.NEAREST)
            for p in LMDImageProcessor().postprocess(images)]


def save_reconstruction_grid(path: str, model, pixel_values: torch.Tensor, mask_seeds, **kwargs) -> Image.Image:
    """MAE's four panels per row: original | masked | reconstruction (the raw decode) | reconstruction with the
    visible pixels pasted back. `kwargs` go to `reconstruct` (e.g. `mask_ratio`, `num_inference_steps`)."""
    out = reconstruct(model, pixel_values.to(model.device), generator=seeded_generators(mask_seeds), **kwargs)
    rows = [to_pil(images) for images in (pixel_values, out.masked_images, out.decoded, out.reconstruction)]
    cells = [cell for row in zip(*rows) for cell in row]  # row-major: one image per row
    grid = make_image_grid(cells, rows=len(pixel_values), cols=4)
    grid.save(path)
    return grid


__all__ = [
    "METRIC_NAMES",
    "latent_mean_fill",
    "mask_noise",
    "psnr",
    "reconstruction_metrics",
    "save_reconstruction_grid",
    "seeded_generators",
    "summarize_reconstruction_metrics",
    "to_pil",
]

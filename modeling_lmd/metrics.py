"""How well LMD fills hidden regions, next to its references: the floor, classical inpainting and the ceiling.

`reconstruction_metrics` scores a batch on fixed masks, one value per image, pixel space ([0, 1]), hidden region,
through the calls a user makes (`reconstruct` once per setting, the references' own functions):

- `masked_psnr`: the model in the leak-free setting (`reconstruct` from pixels: hidden pixels are painted over
  before the VAE sees the image, so nothing under the mask reaches the output);
- `masked_psnr_latent_masking`: the model in the paper's setting (`reconstruct` from the whole image's latents,
  latent patches hidden afterwards; the VAE's receptive field lets visible latents carry some hidden pixels, so
  this flatters);
- `pixel_mean_fill_psnr`: hidden pixels painted with the mean colour of the visible ones (the floor);
- `latent_mean_fill_psnr`: hidden latent patches set to the mean visible latent, decoded;
- `telea_psnr`, `navier_stokes_psnr`, `biharmonic_psnr`: classical inpainting, one line and no training: OpenCV's
  `cv2.inpaint` (Telea; Navier-Stokes), radius 3, and scikit-image's `inpaint_biharmonic`, each on the uint8 image
  with the hidden pixels as its mask (the `eval` extra; `nan` without it);
- `vae_psnr`: the VAE's own reconstruction (the ceiling: the model decodes through the same VAE);
- `visible_psnr` / `vae_visible_psnr`: the visible region of the model's output and of the VAE alone;
- `*_ssim`: SSIM (Gaussian window 11, sigma 1.5, as Wang et al.) averaged over the hidden pixels, for the model and
  each reference;
- `loss`: the training objective, the masked latent MSE.

Not shipped as remote code (a training / evaluation helper).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageDraw
from transformers.utils import logging

from .image_processing_lmd import LMDImageProcessor
from .modeling_lmd import num_visible_patches, paint_hidden_pixels, random_patch_mask
from .reconstruction_lmd import reconstruct, uniform_noise


logger = logging.get_logger(__name__)

#: The per-image metrics of `reconstruction_metrics`, in the order `LMDTrainer.prediction_step` stacks them.
METRIC_NAMES = (
    "loss",
    "masked_psnr",
    "masked_psnr_latent_masking",
    "pixel_mean_fill_psnr",
    "latent_mean_fill_psnr",
    "telea_psnr",
    "navier_stokes_psnr",
    "biharmonic_psnr",
    "vae_psnr",
    "visible_psnr",
    "vae_visible_psnr",
    "masked_ssim",
    "pixel_mean_fill_ssim",
    "telea_ssim",
    "navier_stokes_ssim",
    "biharmonic_ssim",
    "vae_ssim",
)

#: The classical inpainting references, by metric prefix.
CLASSICAL_FILLS = ("telea", "navier_stokes", "biharmonic")


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


def ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image SSIM of images in [-1, 1] `(B, 3, H, W)`, measured in [0, 1] pixel space: Wang et al.'s index with
    an 11-tap Gaussian window (sigma 1.5), reflect-padded so every pixel has a value, averaged over the channels and
    over `mask`'s pixels (`(B, 1, H, W)`, 1 = scored; `nan` for an image with none)."""
    x = (prediction.float().clamp(-1, 1) + 1) / 2
    y = (target.float().to(x.device).clamp(-1, 1) + 1) / 2
    taps = torch.exp(-((torch.arange(11, dtype=torch.float32, device=x.device) - 5) ** 2) / (2 * 1.5**2))
    window = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(x.shape[1], 1, 11, 11)

    def blur(values):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(values, (5,) * 4, mode="reflect"), window,
                                          groups=x.shape[1])

    mean_x, mean_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mean_x**2, blur(y * y) - mean_y**2
    covariance = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    weights = torch.ones_like(index[:, :1]) if mask is None else mask.float().to(x.device)
    count = weights.flatten(1).sum(dim=1)
    value = (index.mean(dim=1, keepdim=True) * weights).flatten(1).sum(dim=1) / count.clamp(min=1.0)
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def classical_fills(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Each image `(B, 3, H, W)` in [-1, 1] inpainted by `CLASSICAL_FILLS` where `pixel_mask` `(B, 1, H, W)` is 1, as
    a user would run them (uint8 in, uint8 out); `None` without OpenCV and scikit-image (the `eval` extra)."""
    try:
        import cv2
        from skimage.restoration import inpaint_biharmonic
    except ImportError:
        logger.warning_once("The classical inpainting references need the eval extra: pip install 'modeling-lmd[eval]'.")
        return None
    images = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    masks = pixel_mask[:, 0].bool().cpu().numpy()
    fills = {name: [] for name in CLASSICAL_FILLS}
    for image, mask in zip(images.numpy(), masks):
        holes = mask.astype(np.uint8) * 255
        fills["telea"].append(cv2.inpaint(image, holes, 3, cv2.INPAINT_TELEA))
        fills["navier_stokes"].append(cv2.inpaint(image, holes, 3, cv2.INPAINT_NS))
        biharmonic = inpaint_biharmonic(image, mask, channel_axis=-1)  # floats in [0, 1]
        fills["biharmonic"].append(np.clip(biharmonic * 255 + 0.5, 0, 255).astype(np.uint8))
    return {name: torch.from_numpy(np.stack(values)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(
        pixel_values.device) for name, values in fills.items()}


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
    num_visible = num_visible_patches(ratio, num_patches)
    hidden = random_patch_mask(mask_noise(mask_seeds, num_patches, model.device), num_visible)
    forward = model(latents=latents, bool_masked_pos=hidden, num_visible=num_visible)
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
    filled = {"masked": leak_free.reconstruction, "pixel_mean_fill": paint_hidden_pixels(pixel_values, hidden),
              "vae": vae_alone, **(classical_fills(pixel_values, hidden) or {})}
    for name, images in filled.items():
        metrics[f"{name}_psnr"] = psnr(images, pixel_values, hidden)
        metrics[f"{name}_ssim"] = ssim(images, pixel_values, hidden)
    metrics.update(
        masked_psnr_latent_masking=psnr(latent_masking.reconstruction, pixel_values, hidden),
        latent_mean_fill_psnr=psnr(latent_fill, pixel_values, hidden),
        visible_psnr=psnr(leak_free.reconstruction, pixel_values, visible),
        vae_visible_psnr=psnr(vae_alone, pixel_values, visible),
    )
    return {name: metrics.get(name, nan) for name in METRIC_NAMES}


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


def labelled_grid(columns: dict[str, list[Image.Image]], header: int = 18) -> Image.Image:
    """One row per image, one labelled column per entry of `columns` (all cells of one size)."""
    width, height = next(iter(columns.values()))[0].size
    rows = len(next(iter(columns.values())))
    grid = make_image_grid([cell for row in zip(*columns.values()) for cell in row], rows=rows, cols=len(columns))
    canvas = Image.new("RGB", (grid.width, grid.height + header), "white")
    canvas.paste(grid, (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(columns):
        draw.text((i * width + width // 2, header // 2), label, fill="black", anchor="mm")
    return canvas


def save_reconstruction_grid(path: str, model, pixel_values: torch.Tensor, mask_seeds, **kwargs) -> Image.Image:
    """MAE's four panels per row, labelled: original | masked | LMD's raw decode | LMD with the visible pixels
    pasted back; then the classical references on the same masks (biharmonic, Telea) when the `eval` extra is
    installed. `kwargs` go to `reconstruct` (e.g. `mask_ratio`, `num_inference_steps`)."""
    out = reconstruct(model, pixel_values.to(model.device), generator=seeded_generators(mask_seeds), **kwargs)
    columns = {"original": pixel_values, "masked": out.masked_images, "LMD decode": out.decoded,
               "LMD + visible": out.reconstruction}
    classical = classical_fills(pixel_values.to(model.device), out.pixel_mask)
    if classical is not None:
        columns.update({"biharmonic": classical["biharmonic"], "Telea": classical["telea"]})
    grid = labelled_grid({label: to_pil(images, min_side=128) for label, images in columns.items()})
    grid.save(path)
    return grid


__all__ = [
    "CLASSICAL_FILLS",
    "METRIC_NAMES",
    "classical_fills",
    "labelled_grid",
    "latent_mean_fill",
    "mask_noise",
    "psnr",
    "reconstruction_metrics",
    "save_reconstruction_grid",
    "seeded_generators",
    "ssim",
    "summarize_reconstruction_metrics",
    "to_pil",
]

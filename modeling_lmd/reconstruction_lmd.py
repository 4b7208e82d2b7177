"""Inference with an LMD pre-training model: hide latent patches, let the model fill them in, decode, and blend the
fill into the input. The `"lmd-reconstruction"` pipeline, the evaluation and the grids all call `reconstruct`.

The stages, in the order `reconstruct` runs them:

1. `choose_hidden_patches`: a random share (`mask_ratio`) or an explicit `bool_masked_pos`, optionally dilated.
2. `LMDForPreTraining.encode_leak_free`: the hidden pixels are painted with the visible mean colour (with
   `config.harmonic_fill`, a smooth fill from the visible pixels, which the decoder also reads) *before* the
   VAE encodes the image, so nothing under the mask reaches the output (the VAE's receptive field and its mid-block
   attention would otherwise carry hidden pixels into visible latents). With latents only, the paper's setting:
   the whole image was encoded, and latent patches are hidden afterwards.
3. `fill_hidden_latents`: the masking diffusion run backwards, one or several un-masking steps.
4. The VAE decodes (for a `harmonic_fill` model given pixels, only the change its correction makes is added to the
   pixel fill), and `blend_into_input` keeps the input's own pixels outside the hidden region, fading the
   model's fill in over a narrow band on the visible side, after `colour_correct`.

The pipeline then pastes the fill into the user's photo at its own size (`LMDImageProcessor.paste_fill`).

Shipped as remote code next to every checkpoint (the pipeline imports it): it imports only torch, transformers and
the sibling modules.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .configuration_lmd import REVEAL_ORDERS, check_choice
from .modeling_lmd import (
    LMDForPreTraining,
    check_input_values,
    check_inputs,
    harmonic_fill,
    num_visible_patches,
    random_patch_mask,
)


@dataclass
class LMDReconstructionOutput(ModelOutput):
    r"""
    Output of [`reconstruct`]. Images are in [-1, 1], shape `(B, 3, H, W)`.

    Args:
        reconstruction (`torch.FloatTensor`):
            What a user wants back: the model's fill inside the hidden region and the input's own pixels outside
            it, blended across a band on the visible side of the border. Without input pixels (`latents=` only),
            the decoded image.
        decoded (`torch.FloatTensor`):
            The raw decode of the composite latents (visible latents from the input, hidden from the model); for a
            `harmonic_fill` model given pixels, the harmonic fill plus what the model's correction changes in it.
        masked_images (`torch.FloatTensor`): the input with the hidden regions mid-grey (what a user hid).
        mask (`torch.FloatTensor` of shape `(B, L)`): 1 = hidden patch.
        pixel_mask (`torch.FloatTensor` of shape `(B, 1, H, W)`): the same mask at pixel resolution.
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`): the composite latents that were decoded.
    """

    reconstruction: torch.FloatTensor | None = None
    decoded: torch.FloatTensor | None = None
    masked_images: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    pixel_mask: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


# --- which patches to hide -------------------------------------------------------------------------------------


def uniform_noise(batch: int, length: int, generator, device) -> torch.Tensor:
    """`(batch, length)` uniform noise from one generator, or from a list of them (one per image, as diffusers
    pipelines take it), so that an image's draw does not depend on the batch it is in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch}.")
        return torch.stack([torch.rand(length, generator=g) for g in generator]).to(device)
    return torch.rand(batch, length, generator=generator).to(device)


def choose_hidden_patches(model: LMDForPreTraining, batch: int, grid: tuple[int, int], mask_ratio: float | None,
                          bool_masked_pos: torch.Tensor | None, generator, device) -> torch.Tensor:
    """`(B, L)` bool, True = hidden: `bool_masked_pos` as given, or a random `mask_ratio` share (default
    `config.mask_ratio`) drawn from `generator` (the first draw; the reveal order comes next)."""
    num_patches = grid[0] * grid[1]
    if bool_masked_pos is None:
        ratio = model.config.mask_ratio if mask_ratio is None else float(mask_ratio)
        noise = uniform_noise(batch, num_patches, generator, device)
        return random_patch_mask(noise, num_visible_patches(ratio, num_patches))
    if tuple(bool_masked_pos.shape) != (batch, num_patches):
        raise ValueError(f"Expected bool_masked_pos of shape ({batch}, {num_patches}), got "
                         f"{tuple(bool_masked_pos.shape)}.")
    hidden = bool_masked_pos.to(device).bool()
    if bool(hidden.all(dim=1).any()):
        cell = model.config.patch_pixels
        raise ValueError(f"The mask touches every latent patch of an image, so nothing of it would stay visible; leave "
                         f"at least one {cell}x{cell}-pixel cell (at the model's resolution) unmasked.")
    return hidden


def check_hidden_pixels(model: LMDForPreTraining, hidden_pixels: torch.Tensor, hidden: torch.Tensor,
                        pixel_values: torch.Tensor | None) -> None:
    """`reconstruct`'s `hidden_pixels`: with pixel values, of their `(B, 1, H, W)` shape, and inside the hidden
    patches (a hidden pixel of a visible patch would reach the encoder)."""
    if pixel_values is None:
        raise ValueError("hidden_pixels needs pixel_values: with latents only, whole patches are hidden.")
    expected = (pixel_values.shape[0], 1, *pixel_values.shape[-2:])
    if tuple(hidden_pixels.shape) != expected:
        raise ValueError(f"Expected hidden_pixels of shape {expected}, got {tuple(hidden_pixels.shape)}.")
    patches = model.pixels_of_patches(hidden.to(torch.uint8), pixel_values.shape[-2:]).bool()
    if bool((hidden_pixels.to(patches.device).bool() & ~patches).any()):
        raise ValueError("hidden_pixels must lie inside the hidden patches (bool_masked_pos): a hidden pixel of a "
                         "visible patch would reach the encoder.")


def dilate(hidden: torch.Tensor, grid: tuple[int, int], rings: int) -> torch.Tensor:
    """`hidden` grown by `rings` rings of patches (MAGE's advice for one contiguous hole), never to every patch: an
    image that would lose them all keeps its undilated mask."""
    if rings <= 0:
        return hidden
    grown = F.max_pool2d(hidden.float().reshape(-1, 1, *grid), 2 * rings + 1, 1, rings).reshape(hidden.shape).bool()
    return torch.where(grown.all(dim=1, keepdim=True), hidden, grown)


# --- the sampler -----------------------------------------------------------------------------------------------


def predict_hidden(model: LMDForPreTraining, latents: torch.Tensor, hidden: torch.Tensor, num_visible: int,
                   interpolate_pos_encoding: bool = False, fill: torch.Tensor | None = None) -> torch.Tensor:
    """One pass: latents `(B, C, h, w)` with `hidden` `(B, L)` (`num_visible` patches visible in every image) ->
    predicted patches `(B, L, p*p*C)` in latent units. `fill` `(B, L, p*p*C)`, for a `harmonic_fill` model: the
    painted image's latent patches (never the real latents under the mask: they would leak); without it, the
    visible latents filled in latent space (`latent_fill`).

    With `norm_latent_loss` the model predicts each patch's shape, not its level or scale; those are taken from what
    the encoder saw, the mean and standard deviation of the image's *visible* patches (never the hidden patches' own
    statistics, which would leak the answer).
    """
    encoded = model.lmd(latents=latents, bool_masked_pos=hidden, num_visible=num_visible,
                        interpolate_pos_encoding=interpolate_pos_encoding)
    if model.config.harmonic_fill and fill is None:  # given latents: filled in latent space from the visible ones
        fill = model.latent_fill(latents, hidden)
    predictions = model.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, model.patch_grid(latents),
                                        fill)
    if not model.config.norm_latent_loss:
        return predictions
    patches = model.patchify(latents)
    visible = (~hidden).unsqueeze(-1).to(patches.dtype)  # (B, L, 1)
    count = visible.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (patches.mean(dim=-1, keepdim=True) * visible).sum(dim=1, keepdim=True) / count
    std = ((patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 * visible).sum(dim=1, keepdim=True) / count
    return predictions * std + mean


def remaining_hidden_counts(num_hidden: int, num_steps: int) -> list[int]:
    """How many patches stay hidden after each of `num_steps` un-masking steps: MaskGIT's cosine,
    `floor(N cos(pi/2 (t + 1) / T))`, so few are revealed early and many late; at least one per step, none at the
    end. More steps than hidden patches are cut to one reveal per step."""
    steps = max(1, min(num_steps, num_hidden))
    counts, previous = [], num_hidden
    for step in range(steps):
        remaining = math.floor(num_hidden * math.cos(math.pi / 2 * (step + 1) / steps))
        remaining = max(0, min(remaining, previous - 1))
        counts.append(remaining)
        previous = remaining
    counts[-1] = 0
    return counts


def fill_hidden_latents(
    model: LMDForPreTraining,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    num_inference_steps: int = 1,
    reveal_order: str = "random",
    generator: torch.Generator | list[torch.Generator] | None = None,
    interpolate_pos_encoding: bool = False,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """The masking diffusion run backwards: latents `(B, C, h, w)` whose `hidden` `(B, L)` patches are replaced
    by the model's predictions (`fill`: see `predict_hidden`; it stays the painted image's at every step).

    Each of `num_inference_steps` steps predicts every still-hidden patch, reveals a share of them and feeds the
    revealed predictions back as visible context for the next step; the share follows `remaining_hidden_counts`
    (few early, many late). `reveal_order` picks which ones: `"random"` (one random order per image, drawn from
    `generator`, as MAR does) or `"nearest"` (closest to the visible context first, random among equals). With one
    step this is a single prediction of all hidden patches.
    """
    check_choice("reveal_order", reveal_order, REVEAL_ORDERS)
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
    hidden = hidden.bool().to(latents.device)
    counts = hidden.sum(dim=1)
    if not bool((counts == counts[0]).all()):  # unequal sequences: one image at a time
        per_image = generator if isinstance(generator, (list, tuple)) else [generator] * latents.shape[0]
        return torch.cat([
            fill_hidden_latents(model, latents[i : i + 1], hidden[i : i + 1], num_inference_steps, reveal_order,
                                per_image[i] if per_image[i] is None else [per_image[i]], interpolate_pos_encoding,
                                None if fill is None else fill[i : i + 1])
            for i in range(latents.shape[0])
        ])
    num_hidden = int(counts[0])
    if num_hidden == 0:
        return latents
    grid = model.patch_grid(latents)
    patches = model.patchify(latents)
    # One random priority per patch and image; lower is revealed first.
    tie_break = uniform_noise(*hidden.shape, generator, latents.device)
    if reveal_order == "nearest":
        rows = torch.arange(grid[0], device=latents.device).repeat_interleave(grid[1])
        cols = torch.arange(grid[1], device=latents.device).repeat(grid[0])
        distances = torch.cdist(torch.stack([rows, cols], dim=1).float(), torch.stack([rows, cols], dim=1).float())
    for remaining in remaining_hidden_counts(num_hidden, num_inference_steps):
        predicted = predict_hidden(model, model.unpatchify(patches, grid), hidden, hidden.shape[1] - num_hidden,
                                   interpolate_pos_encoding, fill)
        priority = tie_break
        if reveal_order == "nearest":
            # Distance of every patch to its nearest visible patch, plus a tie-break below one cell.
            to_visible = distances.masked_fill(hidden[:, None, :], float("inf")).amin(dim=-1)  # (B, L)
            priority = to_visible + 0.5 * tie_break
        priority = priority.masked_fill(~hidden, float("inf"))
        reveal = torch.zeros_like(hidden).scatter(
            1, priority.topk(num_hidden - remaining, dim=1, largest=False).indices, True)
        patches = torch.where(reveal.unsqueeze(-1), predicted.to(patches.dtype), patches)
        hidden, num_hidden = hidden & ~reveal, remaining
    return model.unpatchify(patches, grid)


# --- back to pixels --------------------------------------------------------------------------------------------


def feather_mask(pixel_mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Blend weights of the model's output: 1 on hidden pixels, falling linearly to 0 over `radius` pixels of the
    *visible* side (Chebyshev distance), 0 beyond. Hidden pixels keep weight 1, so none of their input survives."""
    weights = pixel_mask.float()
    grown = weights
    for step in range(1, radius + 1):
        grown = F.max_pool2d(grown, kernel_size=3, stride=1, padding=1)
        weights = torch.maximum(weights, grown * (1.0 - step / (radius + 1)))
    return weights.to(pixel_mask.dtype)


def colour_correct(decoded: torch.Tensor, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """The decode shifted, per image and channel, by the mean difference between the input and the decode over the
    *visible* pixels: the VAE decoder's mid-block attention can tint the whole image when predicted latents are off,
    and the visible pixels show by how much. No hidden pixel is used."""
    visible = 1.0 - pixel_mask
    offset = ((pixel_values - decoded) * visible).sum(dim=(2, 3), keepdim=True)
    return (decoded + offset / visible.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)).clamp(-1, 1)


def blend_into_input(decoded: torch.Tensor, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, radius: int,
                     colour_correction: bool = True) -> torch.Tensor:
    """The model's fill inside the hidden region, the input's own pixels outside it, faded across `radius` pixels
    on the visible side of the border (`feather_mask`)."""
    weights = feather_mask(pixel_mask, radius)
    fill = colour_correct(decoded, pixel_values, pixel_mask) if colour_correction else decoded
    return weights * fill + (1.0 - weights) * pixel_values


@torch.no_grad()
def reconstruct(
    model: LMDForPreTraining,
    pixel_values: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    *,
    mask_ratio: float | None = None,
    bool_masked_pos: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    num_inference_steps: int = 1,
    reveal_order: str = "random",
    mask_dilation: int = 0,
    hidden_pixels: torch.Tensor | None = None,
    blend_radius: int | None = None,
    colour_correction: bool = True,
    interpolate_pos_encoding: bool = False,
) -> LMDReconstructionOutput:
    """Hide latent patches, let `model` fill them in, decode (see the module docstring for the stages).

    Args:
        model: an [`LMDForPreTraining`].
        pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one. Pixels are encoded
            leak-free and the output keeps their visible pixels; latents give the paper's setting.
        mask_ratio: share of random patches to hide (default `config.mask_ratio`), drawn from `generator`.
        bool_masked_pos (`(B, L)` bool, True = hide): an explicit mask (inpainting) instead of a random one.
        generator: a `torch.Generator`, or a list of one per image (each image's draws then do not depend on the
            batch it is in); it draws the random mask, then the reveal order.
        num_inference_steps, reveal_order: progressive un-masking (`fill_hidden_latents`); 1 = one shot.
        mask_dilation: also hide this many rings of latent patches around the hidden region from the encoder
            (their latents saw the painted fill); their pixels stay the input's.
        hidden_pixels (`(B, 1, H, W)` bool, True = to fill in), with pixel values: the pixels under the mask when
            it is finer than whole patches (the pipeline's mask over a photo), all inside the hidden patches. A
            `harmonic_fill` model's fill then starts from the harmonic fill of exactly those pixels, which meets the
            mask's own border, not the hidden patches' (without it, the visible pixels of a hidden patch are
            refilled too, and the fill steps where the mask ends). Default: every pixel of the hidden patches.
        blend_radius: width in pixels of the band, on the visible side, over which the model's output fades into
            the input (default: the VAE's downsampling factor).
        colour_correction: `colour_correct` the fill before blending; `decoded` stays the raw decode.
        interpolate_pos_encoding: run at a resolution other than `config.image_size`.
    """
    config = model.config
    check_inputs(config, pixel_values, latents, interpolate_pos_encoding)
    # The door of inference: values are checked here, never inside the model's forward (a host sync).
    check_input_values(*(("pixel_values", pixel_values) if latents is None else ("latents", latents)),
                       pixel_range=latents is None)
    images = pixel_values if pixel_values is not None else latents
    unit = config.patch_pixels if pixel_values is not None else config.patch_size
    grid = (images.shape[-2] // unit, images.shape[-1] // unit)
    hidden = choose_hidden_patches(model, images.shape[0], grid, mask_ratio, bool_masked_pos, generator,
                                   model.device)
    if hidden_pixels is not None:
        check_hidden_pixels(model, hidden_pixels, hidden, pixel_values)
    if pixel_values is not None:
        pixel_values = pixel_values.to(device=model.device, dtype=model.lmd.vae.dtype)
        latents = model.encode_leak_free(pixel_values, hidden, interpolate_pos_encoding)
    latents = latents.to(device=model.device, dtype=model.lmd.embeddings.patch_embeddings.weight.dtype)
    # Only painted latents are a fill the decoder may read; given latents hold the real content under the mask.
    fill = model.patchify(latents) if pixel_values is not None and config.harmonic_fill else None

    composite = fill_hidden_latents(model, latents, dilate(hidden, grid, mask_dilation), num_inference_steps,
                                    reveal_order, generator, interpolate_pos_encoding, fill)
    decoded = model.lmd.decode_latents(composite).clamp(-1, 1)
    mask = hidden.to(decoded.dtype)
    pixel_mask = model.pixels_of_patches(mask, decoded.shape[-2:])
    if pixel_values is None:
        return LMDReconstructionOutput(reconstruction=decoded, decoded=decoded, mask=mask, pixel_mask=pixel_mask,
                                       latents=composite)
    pixel_values = pixel_values.to(decoded.dtype)
    if fill is not None:
        # A harmonic-fill model corrects the painted tile: keep the paint's own pixels and add only what the
        # correction changes in the decode, so that the VAE's loss on a smooth paint (up to 1.6 dB on close-ups)
        # stays out of the fill. With a zero correction this is the harmonic fill itself.
        fill_mask = pixel_mask if hidden_pixels is None else hidden_pixels.to(device=mask.device, dtype=mask.dtype)
        painted = harmonic_fill(pixel_values, fill_mask)
        decoded = (painted + decoded - model.lmd.decode_latents(latents).clamp(-1, 1)).clamp(-1, 1)
    radius = config.vae_downsampling_factor if blend_radius is None else int(blend_radius)
    return LMDReconstructionOutput(
        reconstruction=blend_into_input(decoded, pixel_values, pixel_mask, radius, colour_correction),
        decoded=decoded,
        masked_images=pixel_values * (1 - pixel_mask),  # hidden regions -> mid grey (0)
        mask=mask,
        pixel_mask=pixel_mask,
        latents=composite,
    )


__all__ = [
    "LMDReconstructionOutput",
    "blend_into_input",
    "check_hidden_pixels",
    "choose_hidden_patches",
    "colour_correct",
    "dilate",
    "feather_mask",
    "fill_hidden_latents",
    "predict_hidden",
    "reconstruct",
    "remaining_hidden_counts",
    "uniform_noise",
]

"""The two mask promises, as properties over random inputs (hypothesis):

- nothing under the mask reaches the model: changing only the hidden pixels (or hidden latents) leaves the model's
  fill, and everything else it computes, identical;
- nothing under the mask reaches the output unless blending is asked for, and then only through the blend band,
  weighted as `LMDImageProcessor.blend_weights` says.

Both are checked on the shipped checkpoint (a harmonic-fill model, 64 px) and on a tiny mean-paint model, over photo
sizes and aspect ratios, box and free-form masks, random-patch mode, `padding_mask_crop`, `blend_width` and
`num_inference_steps`.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_lmd import LMDConfig, LMDForPreTraining, LMDImageProcessor, LMDModel, LMDReconstructionPipeline, reconstruct
from modeling_lmd.modeling_lmd import random_patch_mask
from modeling_lmd.pretrained import DEMO_LMD

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pipes():
    """The shipped harmonic-fill checkpoint, and a tiny model that paints the hidden pixels with the mean colour."""
    torch.manual_seed(0)
    tiny = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    return {"shipped": LMDReconstructionPipeline(model=LMDForPreTraining.from_pretrained(DEMO_LMD), device="cpu"),
            "tiny": LMDReconstructionPipeline(model=tiny, device="cpu")}


@st.composite
def photo_and_mask(draw):
    """A random photo from 16 to 320 px a side (aspect ratios up to 20:1), and a box, free-form or no mask (None:
    random patches)."""
    height, width = draw(st.integers(16, 320)), draw(st.integers(16, 320))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    photo = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    kind = draw(st.sampled_from(["box", "free-form", "random patches"]))
    if kind == "random patches":
        return photo, None
    canvas = PIL.Image.new("1", (width, height))
    pen = PIL.ImageDraw.Draw(canvas)
    for _ in range(draw(st.integers(1, 3))):
        x0, x1 = sorted(draw(st.integers(0, width - 1)) for _ in range(2))
        y0, y1 = sorted(draw(st.integers(0, height - 1)) for _ in range(2))
        if kind == "box":
            pen.rectangle((x0, y0, x1, y1), fill=1)
        else:  # strokes and blobs, as a brush in an app draws them
            pen.line((x0, y1, x1, y0), fill=1, width=draw(st.integers(1, 12)))
            pen.ellipse((x0, y0, x1, y1), fill=1)
    mask = np.asarray(canvas)
    if mask.all():
        mask = mask.copy()
        mask[0, 0] = False
    return photo, mask


def with_other_pixels_under(photo: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """`photo` with every pixel under `mask` replaced by random ones, and nothing else changed."""
    changed = photo.copy()
    changed[mask] = np.random.default_rng(seed).integers(0, 256, size=(int(mask.sum()), 3), dtype=np.uint8)
    return changed


MODEL_OUTPUTS = ("model_reconstruction", "model_decoded", "model_masked_image", "model_mask", "patch_mask")


@given(case=photo_and_mask(), model=st.sampled_from(["shipped", "tiny"]), seed=st.integers(0, 2**16),
       padding=st.one_of(st.none(), st.integers(0, 64)), blend_width=st.integers(0, 6), steps=st.integers(1, 3))
@PROPERTY
def test_pixels_under_the_mask_never_reach_the_fill_and_only_the_blend_band_reaches_the_output(
        pipes, case, model, seed, padding, blend_width, steps):
    photo, mask = case
    pipe = pipes[model]
    options = {"seed": seed, "blend_width": blend_width, "num_inference_steps": steps, "output_type": "np"}
    if mask is not None:
        options.update(mask=mask, padding_mask_crop=padding)
    try:
        first = pipe(PIL.Image.fromarray(photo), **options)
    except ValueError as error:  # a padding that leaves no context is refused, for either photo alike
        assert "nothing is left to fill it from" in str(error) or "touches every latent patch" in str(error)
        return
    hidden = first["mask"]  # the user's mask, or the random patches mapped onto the photo
    assert mask is None or np.array_equal(hidden, mask)
    other = with_other_pixels_under(photo, hidden, seed)
    second = pipe(PIL.Image.fromarray(other), **options)
    assert np.array_equal(second["mask"], hidden) and second["crop_box"] == first["crop_box"]
    for name in MODEL_OUTPUTS:  # what the model saw and made, the fill among them
        assert np.array_equal(np.asarray(first[name]), np.asarray(second[name])), name
    # The output: the photo's own pixels reach it only where the blend band gives them a weight below the full one.
    fill_weight = np.asarray(LMDImageProcessor.blend_weights(hidden, (0, 0, photo.shape[1], photo.shape[0]),
                                                             blend_width)).astype(float)[..., None] / 255
    through_band = (1 - fill_weight) * (photo.astype(float) - other.astype(float))
    difference = (first["reconstruction"] - second["reconstruction"]) * 255
    assert np.abs(difference - through_band).max() <= 1.0 + 1e-4  # the paste rounds to whole levels
    if blend_width == 0:
        assert np.array_equal(first["reconstruction"], second["reconstruction"])


@given(size=st.tuples(st.integers(16, 2000), st.integers(16, 2000)), seed=st.integers(0, 2**16))
@PROPERTY
def test_with_nothing_hidden_the_models_view_is_close_to_the_plain_bicubic_resize(size, seed):
    """The view is reduced by whole blocks before its bicubic resize (no copy at the photo's size), which PIL says
    is indistinguishable from the full resize: within 6 levels anywhere and one on average, on a smooth photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)  # detail coarser than the view
    photo = PIL.Image.fromarray(coarse).resize(size[::-1], PIL.Image.Resampling.BICUBIC)  # smooth, like a photo
    processor = LMDImageProcessor(size={"height": 64, "width": 64})
    box = processor.center_square_box(*size)
    view = np.asarray(processor.model_view(photo, np.zeros(size, dtype=bool), box)).astype(int)
    plain = np.asarray(photo.resize((64, 64), PIL.Image.Resampling.BICUBIC, box=box)).astype(int)
    assert np.abs(view - plain).max() <= 6 and np.abs(view - plain).mean() <= 1.0


# --- the model: hidden content never reaches the encoder ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LMDForPreTraining(LMDConfig.from_preset("lmd-tiny", harmonic_fill=True)).eval()


@st.composite
def equal_masks(draw, batch_sizes=st.integers(1, 4), num_patches: int = 16):
    """`(B, L)` masks hiding as many patches (1 to L - 1) in every sample, at random places."""
    batch, hide = draw(batch_sizes), draw(st.integers(1, num_patches - 1))
    noise = torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return random_patch_mask(noise, num_patches - hide)


def change_hidden_latents(latents: torch.Tensor, hidden: torch.Tensor, model, seed: int) -> torch.Tensor:
    """`latents` with the content of every hidden patch replaced by random values."""
    patches = model.patchify(latents)
    other = torch.randn(patches.shape, generator=torch.Generator().manual_seed(seed)) * 3
    return model.unpatchify(torch.where(hidden[..., None], other, patches))


@given(hidden=equal_masks(), seed=st.integers(0, 2**16), pass_count=st.booleans())
@PROPERTY
def test_hidden_latents_never_reach_the_encoder_or_the_decoder(tiny, hidden, seed, pass_count):
    latents = torch.randn(hidden.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    other = change_hidden_latents(latents, hidden, tiny, seed + 1)
    count = {"num_visible": int((~hidden[0]).sum())} if pass_count else {}
    with torch.no_grad():
        first = tiny(latents=latents, bool_masked_pos=hidden, **count)
        second = tiny(latents=other, bool_masked_pos=hidden, **count)
        assert torch.equal(first.logits, second.logits)
        assert torch.equal(tiny.lmd(latents=latents, bool_masked_pos=hidden).last_hidden_state,
                           tiny.lmd(latents=other, bool_masked_pos=hidden).last_hidden_state)


@given(batch=st.integers(1, 4), seed=st.integers(0, 2**16))
@PROPERTY
def test_hidden_latents_never_reach_the_encoder_under_vitmae_noise(tiny, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    latents, noise = torch.randn(batch, 4, 8, 8, generator=generator), torch.rand(batch, 16, generator=generator)
    with torch.no_grad():
        first = tiny.lmd(latents=latents, noise=noise)
        other = change_hidden_latents(latents, first.mask.bool(), tiny, seed + 1)
        assert torch.equal(first.last_hidden_state, tiny.lmd(latents=other, noise=noise).last_hidden_state)


@given(hidden=equal_masks(batch_sizes=st.integers(2, 4)), seed=st.integers(0, 2**16))
@PROPERTY
def test_masks_hiding_different_counts_are_refused_before_a_hidden_patch_reaches_the_encoder(tiny, hidden, seed):
    uneven = hidden.clone()
    row, patch = seed % hidden.shape[0], seed % 16
    uneven[row, patch] = ~uneven[row, patch]  # one sample hides one patch more or less than the others
    latents = torch.randn(hidden.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    with pytest.raises(ValueError, match="must hide as many patches in every sample"):
        tiny(latents=latents, bool_masked_pos=uneven)
    with pytest.raises(ValueError, match="must hide as many patches in every sample"):
        LMDModel(tiny.config)(latents=latents, bool_masked_pos=uneven)
    # With the count passed (the Trainer's way), the check runs on the device: no host read, same refusal.
    with pytest.raises(RuntimeError, match="must hide as many patches in every sample"):
        tiny(latents=latents, bool_masked_pos=uneven, num_visible=16 - int(hidden[0].sum()))


@given(hidden=equal_masks(batch_sizes=st.integers(1, 3)), seed=st.integers(0, 2**16))
@PROPERTY
def test_hidden_pixels_never_reach_a_leak_free_forward_or_reconstruct(tiny, hidden, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(hidden.shape[0], 3, 32, 32, generator=generator) * 2 - 1
    pixel_mask = tiny.pixels_of_patches(hidden.float(), (32, 32)).bool()
    other = torch.where(pixel_mask, torch.rand(images.shape, generator=generator) * 2 - 1, images)
    tiny.config.leak_free_training = True
    try:
        with torch.no_grad():
            assert torch.equal(tiny(pixel_values=images, bool_masked_pos=hidden).logits,
                               tiny(pixel_values=other, bool_masked_pos=hidden).logits)
    finally:
        tiny.config.leak_free_training = False
    # reconstruct takes masks of any sizes, one image at a time where they differ.
    uneven = hidden.clone()
    uneven[0, :] = False
    uneven[0, seed % 16] = True
    first, second = (reconstruct(tiny, values, bool_masked_pos=uneven, generator=torch.Generator().manual_seed(seed))
                     for values in (images, torch.where(tiny.pixels_of_patches(uneven.float(), (32, 32)).bool(),
                                                        -images, images)))
    for name in ("reconstruction", "decoded", "masked_images", "latents"):
        assert torch.equal(first[name], second[name]), name

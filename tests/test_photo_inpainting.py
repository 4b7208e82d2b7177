"""The pipeline's promises at a photo's own size, as properties over random masks, photo sizes and aspect ratios:
outside the mask the photo comes back bit for bit, blending stays inside the mask's outer `blend_width` pixels
whatever the photo's size, and the region the model sees holds the whole mask."""

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from modeling_lmd import LMDConfig, LMDForPreTraining, LMDImageProcessor, LMDReconstructionPipeline
from modeling_lmd.image_processing_lmd import bounding_box

CASES = range(12)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return LMDReconstructionPipeline(model=LMDForPreTraining(LMDConfig.from_preset("lmd-tiny")), device="cpu")


def random_photo(rng) -> PIL.Image.Image:
    """Photos from 20 to 400 px a side, aspect ratios from 1:8 to 8:1."""
    height, width = (int(side) for side in rng.integers(20, 400, size=2))
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def random_mask(rng, height: int, width: int) -> np.ndarray:
    """A few boxes and scattered pixels, anywhere (edges included), never the whole photo."""
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        rows, cols = int(rng.integers(1, max(2, height // 3))), int(rng.integers(1, max(2, width // 3)))
        mask[top : top + rows, left : left + cols] = True
    mask[rng.integers(0, height, size=3), rng.integers(0, width, size=3)] = True
    return mask


def deep_inside(mask: np.ndarray, width: int) -> np.ndarray:
    """Mask pixels farther than `width` (Chebyshev) from every unmasked pixel, the photo's edge not counting."""
    if width == 0:
        return mask  # (PIL's MaxFilter(1) crashes the interpreter)
    unmasked = PIL.Image.fromarray((~mask).astype(np.uint8) * 255).filter(PIL.ImageFilter.MaxFilter(2 * width + 1))
    return mask & (np.asarray(unmasked) == 0)


@pytest.mark.parametrize("case", CASES)
def test_outside_the_mask_the_photo_comes_back_bit_for_bit(pipe, case):
    rng = np.random.default_rng(case)
    photo = random_photo(rng)
    mask = random_mask(rng, photo.height, photo.width)
    original = np.asarray(photo)
    blend_width = int(rng.integers(0, 9))
    out = pipe(photo, mask=mask, blend_width=blend_width, seed=case)
    result = np.asarray(out["reconstruction"])
    assert out["reconstruction"].size == photo.size and np.array_equal(out["mask"], mask)
    assert np.array_equal(result[~mask], original[~mask])
    as_np = pipe(photo, mask=mask, blend_width=blend_width, seed=case, output_type="np")["reconstruction"]
    assert np.array_equal(as_np[~mask], original[~mask] / np.float32(255))
    # Random patches: outside the hidden patches the reconstruction reports, the photo's own pixels too.
    random = pipe(photo, mask_ratio=float(rng.uniform(0.1, 0.9)), seed=case, blend_width=blend_width)
    assert np.array_equal(np.asarray(random["reconstruction"])[~random["mask"]], original[~random["mask"]])
    assert random["mask"].any()


@pytest.mark.parametrize("case", CASES)
def test_blending_stays_within_blend_width_of_the_mask_border_at_any_photo_size(pipe, case):
    rng = np.random.default_rng(100 + case)
    photo = random_photo(rng)
    mask = random_mask(rng, photo.height, photo.width)
    blend_width = int(rng.integers(1, 9))
    hard = np.asarray(pipe(photo, mask=mask, blend_width=0)["reconstruction"])
    soft = np.asarray(pipe(photo, mask=mask, blend_width=blend_width)["reconstruction"])
    changed = (hard != soft).any(axis=-1)
    assert not (changed & ~mask).any()  # only inside the mask...
    assert not (changed & deep_inside(mask, blend_width)).any()  # ...and only within blend_width of its border
    # With blend_width=0 the fill is pasted hard: no input pixel under the mask survives where the fill differs.
    filled = (hard != np.asarray(photo)).any(axis=-1)
    assert filled[mask].mean() > 0.9


@pytest.mark.parametrize("case", range(40))
def test_the_region_the_model_sees_holds_the_whole_mask(case):
    rng = np.random.default_rng(200 + case)
    height, width = (int(side) for side in rng.integers(8, 3000, size=2))
    processor = LMDImageProcessor(size={"height": 64, "width": 64})
    mask = np.zeros((height, width), dtype=bool)
    top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
    mask[top : top + int(rng.integers(1, height + 1)), left : left + int(rng.integers(1, width + 1))] = True
    padding = None if case % 3 == 0 else int(rng.integers(0, 200))
    crop = processor.mask_crop_box(mask, padding)
    mask_left, mask_top, mask_right, mask_bottom = bounding_box(mask)
    assert 0 <= crop[0] <= mask_left and 0 <= crop[1] <= mask_top  # the whole mask, inside the photo
    assert mask_right <= crop[2] <= width and mask_bottom <= crop[3] <= height
    crop_width, crop_height = crop[2] - crop[0], crop[3] - crop[1]
    if crop_width < width and crop_height < height:  # square wherever a square fits
        assert crop_width == crop_height
    # diffusers' get_crop_region, with the padding raised where the crop would be smaller than the model's input.
    extent = max(mask_right - mask_left, mask_bottom - mask_top)
    pad = max(extent // 2 if padding is None else padding, -(-(64 - extent) // 2))
    assert crop == VaeImageProcessor.get_crop_region(PIL.Image.fromarray(mask), 64, 64, pad=pad)


@pytest.mark.parametrize("blend_width", [0, 1, 2, 4, 7, 16, 32])
def test_blend_weights_are_zero_outside_the_mask_and_full_past_blend_width(blend_width):
    rng = np.random.default_rng(blend_width)
    mask = np.zeros((90, 120), dtype=bool)
    for _ in range(4):
        top, left = rng.integers(0, 90), rng.integers(0, 120)
        mask[top : top + rng.integers(1, 60), left : left + rng.integers(1, 60)] = True
    box = bounding_box(mask)
    weights = np.asarray(LMDImageProcessor.blend_weights(mask, box, blend_width)).astype(int)
    inside = mask[box[1] : box[3], box[0] : box[2]]
    assert (weights[~inside] == 0).all()
    deep = deep_inside(mask, blend_width)[box[1] : box[3], box[0] : box[2]]
    assert (weights[deep] == 255).all() and (weights[inside] > 0).all()
    if blend_width:
        assert (weights[inside & ~deep] < 255).any()  # a fade, not a hard edge


def test_pasting_in_strips_gives_what_one_paste_gives(monkeypatch):
    """`paste_fill` works in strips of rows to bound its memory: the strips must not show."""
    from modeling_lmd import image_processing_lmd

    rng = np.random.default_rng(7)
    photo = PIL.Image.fromarray(rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8))
    fill = PIL.Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    mask = random_mask(rng, 300, 200)
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    crop = processor.mask_crop_box(mask)
    whole = np.asarray(processor.paste_fill(photo, fill, crop, mask, 4))
    monkeypatch.setattr(image_processing_lmd, "PASTE_STRIP_PIXELS", 7 * 200)
    strips = processor.paste_fill(photo, fill, crop, mask, 4)
    assert np.array_equal(np.asarray(strips), whole) and not np.array_equal(whole, np.asarray(photo))
    assert processor.paste_fill(photo, fill, crop, mask, 4, copy=False) is photo
    assert np.array_equal(np.asarray(photo), whole)  # pasted in place

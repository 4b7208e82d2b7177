"""reconstruct: leak-free inputs, output that keeps the visible pixels, and the progressive un-masking sampler."""

import math

import pytest
import torch
from conftest import random_images

from modeling_lmd import reconstruction_lmd
from modeling_lmd.modeling_lmd import paint_hidden_pixels
from modeling_lmd.reconstruction_lmd import (
    feather_mask,
    fill_hidden_latents,
    predict_hidden,
    reconstruct,
    remaining_hidden_counts,
)


def scramble_hidden(images: torch.Tensor, pixel_mask: torch.Tensor, seed: int = 5) -> torch.Tensor:
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return images * (1 - pixel_mask) + noise * pixel_mask


@pytest.mark.parametrize("steps, dilation", [(1, 0), (3, 0), (1, 1)])
def test_hidden_input_pixels_never_reach_the_output(tiny_model, steps, dilation):
    images = random_images(2)
    patch_mask = torch.zeros(2, 16, dtype=torch.bool)
    patch_mask[0, [1, 2, 6]] = True
    patch_mask[1, [9, 10, 13, 14]] = True
    kwargs = dict(bool_masked_pos=patch_mask, num_inference_steps=steps, mask_dilation=dilation)
    first = reconstruct(tiny_model, images, generator=torch.Generator().manual_seed(0), **kwargs)
    changed = scramble_hidden(images, first.pixel_mask)
    assert not torch.equal(changed, images)
    second = reconstruct(tiny_model, changed, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(first.reconstruction, second.reconstruction)
    assert torch.equal(first.decoded, second.decoded)
    # Random masks too: the same seed hides the same patches, whatever is under them.
    random_first = reconstruct(tiny_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(1))
    random_second = reconstruct(tiny_model, scramble_hidden(images, random_first.pixel_mask), mask_ratio=0.5,
                                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(random_first.reconstruction, random_second.reconstruction)


def test_visible_pixels_are_the_inputs_outside_the_feathering_band(tiny_model):
    images = random_images(2)
    radius = 3
    out = reconstruct(tiny_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0),
                                 blend_radius=radius, colour_correction=False)
    hidden = out.pixel_mask.bool().expand_as(images)
    # The band: visible pixels within `radius` (Chebyshev) of a hidden one.
    near = torch.nn.functional.max_pool2d(out.pixel_mask, 2 * radius + 1, 1, radius).bool().expand_as(images)
    far = ~near
    assert far.any() and torch.equal(out.reconstruction[far], images[far])
    assert torch.equal(out.reconstruction[hidden], out.decoded[hidden])  # the model's fill, untouched
    band = near & ~hidden
    assert not torch.equal(out.reconstruction[band], images[band])  # blended there
    # blend_radius=0 pastes every visible pixel back exactly.
    sharp = reconstruct(tiny_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0), blend_radius=0)
    assert torch.equal(sharp.reconstruction[~hidden], images[~hidden])


def test_feather_weights_fall_linearly_on_the_visible_side():
    mask = torch.zeros(1, 1, 1, 9)
    mask[..., 4] = 1
    weights = feather_mask(mask, radius=3)
    assert weights[0, 0, 0].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25, 0])


def test_paint_hidden_pixels_uses_only_visible_pixels():
    images = random_images(1)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    painted = paint_hidden_pixels(images, mask)
    expected = images[..., 16:, :].mean(dim=(2, 3))  # (1, 3)
    assert torch.allclose(painted[..., :16, :], expected[:, :, None, None].expand(1, 3, 16, 32), atol=1e-6)
    assert torch.equal(painted[..., 16:, :], images[..., 16:, :])


def test_remaining_counts_follow_the_cosine_and_reveal_everything():
    assert remaining_hidden_counts(12, 1) == [0]
    expected = [math.floor(12 * math.cos(math.pi / 2 * t / 4)) for t in (1, 2, 3)] + [0]
    assert remaining_hidden_counts(12, 4) == expected == [11, 8, 4, 0]  # few revealed early, many late
    assert remaining_hidden_counts(3, 8) == [2, 1, 0]  # never more steps than hidden patches
    for hidden, steps in ((16, 8), (5, 4), (60, 16)):
        counts = remaining_hidden_counts(hidden, steps)
        assert counts[-1] == 0 and all(a > b for a, b in zip([hidden] + counts, counts))


def test_one_step_equals_the_one_shot_prediction(tiny_model):
    latents = tiny_model.lmd.encode_images(random_images(2))
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, [0, 3, 5, 8, 12]] = True
    filled = fill_hidden_latents(tiny_model, latents, hidden, num_inference_steps=1)
    predicted = predict_hidden(tiny_model, latents, hidden, num_visible=11)
    patches = tiny_model.patchify(latents)
    expected = torch.where(hidden.unsqueeze(-1), predicted, patches)
    assert torch.equal(tiny_model.patchify(filled), expected)
    # And it is what one forward pass with those patches hidden predicts.
    logits = tiny_model(latents=latents, bool_masked_pos=hidden).logits
    torch.testing.assert_close(predicted[hidden], logits[hidden], rtol=0, atol=1e-5)


@pytest.mark.parametrize("order", ["random", "nearest"])
def test_each_step_reveals_the_scheduled_count_and_the_last_reveals_all(tiny_model, order, monkeypatch):
    latents = tiny_model.lmd.encode_images(random_images(2))
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, 4:16] = True  # 12 hidden, rows 1-3 of the 4 x 4 grid
    seen = []
    predict = reconstruction_lmd.predict_hidden

    def spy(model, step_latents, step_hidden, *args):
        seen.append(step_hidden.clone())
        return predict(model, step_latents, step_hidden, *args)

    monkeypatch.setattr(reconstruction_lmd, "predict_hidden", spy)
    filled = fill_hidden_latents(tiny_model, latents, hidden, num_inference_steps=4, reveal_order=order,
                                 generator=torch.Generator().manual_seed(0))
    assert [int(h[0].sum()) for h in seen] == [12, 11, 8, 4]  # hidden before each step: 12, then the schedule
    for before, after in zip(seen, seen[1:]):
        assert bool((after <= before).all())  # revealed patches stay revealed
    if order == "nearest":  # the first reveal is a patch of row 1, next to the visible row 0
        first = (seen[0] & ~seen[1]).nonzero()[:, 1]
        assert bool(((first >= 4) & (first < 8)).all())
    patches, original = tiny_model.patchify(filled), tiny_model.patchify(latents)
    assert torch.equal(patches[~hidden], original[~hidden])  # visible latents untouched
    assert not torch.isclose(patches[hidden], original[hidden]).all(dim=-1).any()  # every hidden one predicted


def test_progressive_sampling_is_seeded_and_batch_independent(tiny_model):
    images = random_images(3)
    kwargs = dict(mask_ratio=0.75, num_inference_steps=4)
    batched = reconstruct(tiny_model, images, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], **kwargs)
    for i, seed in enumerate((1, 2, 3)):
        alone = reconstruct(tiny_model, images[i : i + 1], generator=[torch.Generator().manual_seed(seed)], **kwargs)
        assert torch.equal(alone.mask, batched.mask[i : i + 1])
        torch.testing.assert_close(alone.reconstruction, batched.reconstruction[i : i + 1], rtol=0, atol=1e-5)


def test_leak_free_training_never_sees_the_hidden_pixels_but_learns_the_real_latents(tiny_config):
    from modeling_lmd import LMDForPreTraining

    tiny_config.leak_free_training = True
    torch.manual_seed(0)
    model = LMDForPreTraining(tiny_config)
    images, noise = random_images(2), torch.rand(2, 16)
    first = model(pixel_values=images, noise=noise, num_visible=8)
    changed = scramble_hidden(images, model.pixels_of_patches(first.mask, (32, 32)))
    second = model(pixel_values=changed, noise=noise, num_visible=8)
    assert torch.equal(first.logits, second.logits)  # the encoder input hides those pixels
    assert torch.equal(first.latents, model.lmd.encode_images(images))  # the target is the real image's latents
    assert first.loss != second.loss


def test_visible_loss_weight_adds_the_visible_patches_mean(tiny_config):
    from modeling_lmd import LMDForPreTraining

    torch.manual_seed(0)
    model = LMDForPreTraining(tiny_config)
    latents, noise = torch.randn(2, 4, 8, 8), torch.rand(2, 16)
    hidden_only = model(latents=latents, noise=noise, num_visible=8)
    per_patch = ((hidden_only.logits - model.patchify(latents)) ** 2).mean(-1)
    model.config.visible_loss_weight = 0.5
    both = model(latents=latents, noise=noise, num_visible=8).loss
    mask = hidden_only.mask.bool()
    torch.testing.assert_close(both, per_patch[mask].mean() + 0.5 * per_patch[~mask].mean())


def test_colour_correction_removes_a_tint_measured_on_the_visible_pixels_only(tiny_model, monkeypatch):
    images = random_images(2) * 0.5
    tint = torch.tensor([0.2, -0.1, 0.05]).reshape(1, 3, 1, 1)
    monkeypatch.setattr(tiny_model.lmd, "decode_latents", lambda latents: images + tint)  # a decoder that tints
    kwargs = dict(mask_ratio=0.5, generator=torch.Generator().manual_seed(0), blend_radius=0)
    corrected = reconstruct(tiny_model, images, **kwargs)
    hidden = corrected.pixel_mask.bool().expand_as(images)
    torch.testing.assert_close(corrected.reconstruction[hidden], images[hidden])  # the tint is gone
    torch.testing.assert_close(corrected.decoded, images + tint)  # the raw decode stays raw
    kwargs["generator"] = torch.Generator().manual_seed(0)
    raw = reconstruct(tiny_model, images, colour_correction=False, **kwargs)
    torch.testing.assert_close(raw.reconstruction[hidden], (images + tint)[hidden])

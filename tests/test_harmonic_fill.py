"""harmonic_fill: the smooth fill behind `config.harmonic_fill`, and the decoder that reads its latents."""

import copy

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from conftest import random_images
from test_reconstruction import scramble_hidden

from modeling_lmd import LMDConfig, LMDForPreTraining
from modeling_lmd.modeling_lmd import harmonic_fill, neighbour_mean, paint_hidden_pixels, spread_patch_mask
from modeling_lmd.reconstruction_lmd import reconstruct


def square_hole(size: int = 64, start: int = 16, stop: int = 48) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., start:stop, start:stop] = 1
    return mask


def test_visible_pixels_stay_and_hidden_ones_are_never_read():
    images, mask = random_images(2, size=64), square_hole().expand(2, -1, -1, -1)
    filled = harmonic_fill(images, mask)
    assert torch.equal(filled * (1 - mask), images * (1 - mask))
    assert torch.equal(harmonic_fill(scramble_hidden(images, mask), mask), filled)


def test_a_linear_ramp_is_continued_across_the_hole():
    # A linear function is harmonic: the fill must reproduce it; the mean colour is off by up to half the ramp.
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    hole = square_hole()
    assert (harmonic_fill(ramp, hole) - ramp).abs().max() < 1e-3
    assert (paint_hidden_pixels(ramp, hole) - ramp).abs().max() > 0.4


def test_the_default_sweeps_solve_laplaces_equation_on_random_patch_masks():
    # 3 of 4 latent patches (8 px) hidden, as at mask ratio 0.75: each hidden pixel must be the mean of its four
    # neighbours, and the fill close to one relaxed a hundred times longer.
    images = random_images(4, size=64)
    hidden = (torch.rand(4, 64, generator=torch.Generator().manual_seed(0)) < 0.75).float()
    mask = spread_patch_mask(hidden, (64, 64), 8)
    filled = harmonic_fill(images, mask)
    hidden_values = mask.expand_as(filled).bool()
    assert (neighbour_mean(filled) - filled)[hidden_values].abs().mean() < 1e-3
    assert (harmonic_fill(images, mask, sweeps=2500) - filled)[hidden_values].abs().mean() < 0.015


def test_odd_sizes_and_a_fully_hidden_image():
    images = random_images(1, size=64)[..., :37, :53]
    mask = torch.zeros(1, 1, 37, 53)
    mask[..., 5:30, 10:40] = 1
    filled = harmonic_fill(images, mask)
    assert filled.shape == images.shape and torch.isfinite(filled).all()
    # Nothing visible: mid grey, like the mean-colour paint of an empty visible set.
    assert torch.equal(harmonic_fill(images, torch.ones(1, 1, 37, 53)), torch.zeros_like(images))


@pytest.fixture
def harmonic_model(tiny_config) -> LMDForPreTraining:
    config = copy.deepcopy(tiny_config)  # tiny_model shares tiny_config
    config.leak_free_training = config.harmonic_fill = True
    torch.manual_seed(0)
    return LMDForPreTraining(config)


def test_a_new_harmonic_decoder_predicts_the_fill_itself_also_from_an_older_checkpoint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "plain")
    config = LMDConfig.from_pretrained(tmp_path / "plain", harmonic_fill=True)
    loaded = LMDForPreTraining.from_pretrained(tmp_path / "plain", config=config)
    decoder = loaded.decoder
    assert decoder.decoder_pred is None and tiny_model.decoder.fill_correction is None
    for head in (decoder.fill_embed, decoder.fill_correction):  # new, so zero: not the old head's weights
        assert not head.weight.any() and not head.bias.any()
    latents, noise = torch.randn(2, 4, 8, 8), torch.rand(2, 16)
    encoded = loaded.lmd(latents=latents, noise=noise, num_visible=8)
    fill = loaded.patchify(torch.randn(2, 4, 8, 8))
    assert torch.equal(loaded.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, (4, 4), fill), fill)
    with pytest.raises(ValueError, match="pass `fill`"):
        loaded.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, (4, 4))


def test_the_fill_is_read_at_hidden_patches_and_corrected_everywhere(harmonic_model):
    decoder = harmonic_model.decoder
    torch.nn.init.normal_(decoder.fill_embed.weight)
    torch.nn.init.normal_(decoder.fill_correction.weight)
    latents, noise = torch.randn(2, 4, 8, 8), torch.rand(2, 16)
    encoded = harmonic_model.lmd(latents=latents, noise=noise, num_visible=8)
    fill = harmonic_model.patchify(torch.randn(2, 4, 8, 8))
    hidden = encoded.mask.bool()
    moved = fill.clone()
    moved[~hidden] += 7.0  # at visible patches the fill is not read, only corrected
    first, second = (harmonic_model.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, (4, 4), f)
                     for f in (fill, moved))
    torch.testing.assert_close(second - moved, first - fill, rtol=0, atol=1e-5)
    moved[hidden] += 7.0  # at hidden patches it is read too: the correction changes
    third = harmonic_model.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, (4, 4), moved)
    assert not torch.allclose(third - moved, first - fill)


def test_given_latents_the_fill_comes_from_the_visible_latents(harmonic_model):
    latents, noise = torch.randn(2, 4, 8, 8), torch.rand(2, 16)
    out = harmonic_model(latents=latents, noise=noise, num_visible=8)
    # At zero the prediction is the latent-space fill: visible latents kept, hidden ones smooth from the visible.
    torch.testing.assert_close(out.logits, harmonic_model.latent_fill(latents, out.mask), rtol=0, atol=0)
    visible = ~out.mask.bool()
    torch.testing.assert_close(out.logits[visible], harmonic_model.patchify(latents)[visible], rtol=0, atol=0)


def test_norm_latent_loss_is_refused_with_it():
    with pytest.raises(StrictDataclassClassValidationError, match="norm_latent_loss"):
        LMDConfig.from_preset("lmd-tiny", harmonic_fill=True, norm_latent_loss=True)


def test_training_and_inference_never_see_the_hidden_pixels(harmonic_model):
    torch.nn.init.normal_(harmonic_model.decoder.fill_embed.weight, std=0.1)
    torch.nn.init.normal_(harmonic_model.decoder.fill_correction.weight, std=0.1)
    images, noise = random_images(2), torch.rand(2, 16)
    first = harmonic_model(pixel_values=images, noise=noise, num_visible=8)
    changed = scramble_hidden(images, harmonic_model.pixels_of_patches(first.mask, (32, 32)))
    assert torch.equal(first.logits, harmonic_model(pixel_values=changed, noise=noise, num_visible=8).logits)
    kwargs = dict(mask_ratio=0.5, num_inference_steps=2)
    out = reconstruct(harmonic_model, images, generator=torch.Generator().manual_seed(0), **kwargs)
    again = reconstruct(harmonic_model, scramble_hidden(images, out.pixel_mask),
                        generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(out.reconstruction, again.reconstruction)


def test_latents_given_directly_are_never_read_as_a_fill(harmonic_model):
    # Given latents hold the real content under the mask: the decoder must not read it as the fill.
    torch.nn.init.normal_(harmonic_model.decoder.fill_embed.weight)
    torch.nn.init.normal_(harmonic_model.decoder.fill_correction.weight, std=0.1)
    latents = torch.randn(1, 4, 8, 8)
    hidden = torch.zeros(1, 16, dtype=torch.bool)
    hidden[0, :6] = True
    first = reconstruct(harmonic_model, latents=latents, bool_masked_pos=hidden)
    patches = harmonic_model.patchify(latents)
    changed = harmonic_model.unpatchify(torch.where(hidden.unsqueeze(-1), torch.full_like(patches, 5.0), patches),
                                        (4, 4))
    second = reconstruct(harmonic_model, latents=changed, bool_masked_pos=hidden)
    torch.testing.assert_close(first.latents, second.latents, rtol=0, atol=0)


def test_with_no_correction_the_reconstruction_is_the_harmonic_fill_itself(harmonic_model):
    # The VAE adds only what the correction changes: its loss on the smooth paint stays out of the fill.
    images = random_images(2)
    out = reconstruct(harmonic_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    expected = harmonic_fill(images, out.pixel_mask)
    torch.testing.assert_close(out.reconstruction, expected, rtol=0, atol=1e-5)  # blend arithmetic
    assert (out.pixel_mask.sum() > 0) and not torch.equal(expected, images)


def test_a_mask_finer_than_patches_is_filled_from_its_own_border(harmonic_model):
    """A photo's mask covers part of its hidden patches: the fill starts from the harmonic fill of exactly its
    pixels, so the visible pixels of a hidden patch are the input's (with no correction) and the fill meets the
    mask's border, not the patches'. Before, the patches' visible pixels were refilled and the fill stepped where
    the mask ended (at photo size, a seam 5 times the photo's own step: docs/RESULTS.md, 'Pasting hard')."""
    images = random_images(2)
    hole = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    hole[:, :, 9:19, 5:22] = True  # not on the 8 px patch grid
    hidden = harmonic_model.patches_of_pixels(hole[:, 0])
    out = reconstruct(harmonic_model, images, bool_masked_pos=hidden, hidden_pixels=hole)
    torch.testing.assert_close(out.decoded, harmonic_fill(images, hole.float()), rtol=0, atol=1e-5)
    in_patches = out.pixel_mask.bool() & ~hole
    assert in_patches.any() and torch.allclose(out.decoded[in_patches.expand_as(images)],
                                               images[in_patches.expand_as(images)], atol=1e-5)
    with pytest.raises(ValueError, match="must lie inside the hidden patches"):
        reconstruct(harmonic_model, images, bool_masked_pos=hidden & (torch.arange(16) != 4), hidden_pixels=hole)
    with pytest.raises(ValueError, match=r"Expected hidden_pixels of shape \(2, 1, 32, 32\)"):
        reconstruct(harmonic_model, images, bool_masked_pos=hidden, hidden_pixels=hole[:, 0])

"""LMDConfig / LMDModel / LMDForPreTraining: configuration, masking, loss, attention, resolution, the frozen VAE,
save/load and remote code."""

import json

import pytest
import torch
from conftest import random_images
from diffusers import AutoencoderKL, VQModel
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from subprocess_helpers import FLOAT_ATOL, run_without_package
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDModel
from modeling_lmd.configuration_lmd import TINY_KL_F4_VAE_CONFIG
from modeling_lmd.modeling_lmd import num_visible_patches, random_patch_mask
from modeling_lmd.reconstruction_lmd import reconstruct


TINY_VQ_F4_VAE_CONFIG = {
    "block_out_channels": [8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "latent_channels": 3,
    "num_vq_embeddings": 32,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "sample_size": 32,
    "scaling_factor": 1.0,
}
TINY_TAESD_F4_VAE_CONFIG = {
    "encoder_block_out_channels": [8, 8, 8],
    "decoder_block_out_channels": [8, 8, 8],
    "num_encoder_blocks": [1, 1, 1],
    "num_decoder_blocks": [1, 1, 1],
    "latent_channels": 4,
}
TINY_VAES = {
    "AutoencoderKL": TINY_KL_F4_VAE_CONFIG,
    "VQModel": TINY_VQ_F4_VAE_CONFIG,
    "AutoencoderTiny": TINY_TAESD_F4_VAE_CONFIG,
}


def tiny_model_with(vae_type: str, **overrides) -> LMDForPreTraining:
    torch.manual_seed(0)
    config = LMDConfig.from_preset("lmd-tiny", vae_type=vae_type, vae_config=TINY_VAES[vae_type], **overrides)
    return LMDForPreTraining(config)


def assert_state_dicts_equal(first: dict, second: dict) -> None:
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# --- configuration ---------------------------------------------------------------------------------


def test_default_config_is_the_papers_setting():
    config = LMDConfig()
    assert (config.latent_channels, config.latent_size, config.patch_size, config.num_patches) == (4, 28, 4, 49)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        512,
        8,
        16,
    )
    assert config.layer_norm_eps == 1e-6 and config.qkv_bias and config.mask_schedule == "cosine"
    assert config.vae_config["scaling_factor"] == 0.18215


def test_presets_and_overrides():
    assert LMDConfig.from_preset("lmd-base").to_dict() == LMDConfig().to_dict()
    large = LMDConfig.from_preset("lmd-large", mask_schedule="piecewise")
    assert (large.hidden_size, large.num_hidden_layers, large.mask_schedule) == (1024, 24, "piecewise")
    small = LMDConfig.from_preset("lmd-small")
    assert (small.latent_size, small.num_patches) == (16, 64)
    with pytest.raises(ValueError, match="lmd-base, lmd-large, lmd-small, lmd-tiny"):
        LMDConfig.from_preset("lmd-huge")


@pytest.mark.parametrize(
    "vae_type, channels, latent_size", [("AutoencoderKL", 4, 8), ("VQModel", 3, 8), ("AutoencoderTiny", 4, 8)]
)
def test_latent_shape_is_derived_from_the_vae_config_and_matches_the_vae(vae_type, channels, latent_size):
    model = tiny_model_with(vae_type)
    assert (model.config.latent_channels, model.config.latent_size) == (channels, latent_size)
    latents = model.lmd.encode_images(random_images(1))
    assert latents.shape == (1, channels, latent_size, latent_size)
    assert model.lmd.decode_latents(latents).shape == (1, 3, 32, 32)


def test_config_round_trips_through_dict_and_drops_diffusers_bookkeeping(tmp_path):
    config = LMDConfig.from_preset("lmd-tiny", vae_config={**TINY_KL_F4_VAE_CONFIG, "_class_name": "AutoencoderKL"})
    assert "_class_name" not in config.vae_config
    config.save_pretrained(tmp_path)
    assert LMDConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_a_saved_checkpoint_config_reloads_equal_to_itself(tiny_model, tiny_checkpoint):
    """custom_pipelines and auto_map included: nothing is stamped on save and dropped on load."""
    saved = json.loads((tiny_checkpoint / "config.json").read_text())
    assert saved["custom_pipelines"]["lmd-reconstruction"]["pt"] == ["AutoModelForPreTraining"]
    reloaded = LMDConfig.from_pretrained(tiny_checkpoint)
    assert reloaded.to_json_string() == tiny_model.config.to_json_string()
    assert reloaded.custom_pipelines == saved["custom_pipelines"] and reloaded.auto_map == saved["auto_map"]


def test_config_overrides_use_update_from_string_and_are_validated():
    config = LMDConfig.from_preset("lmd-tiny")
    config.update_from_string("hidden_size=64,norm_latent_loss=true,mask_schedule=uniform")
    assert (config.hidden_size, config.norm_latent_loss, config.mask_schedule) == (64, True, "uniform")
    config.update_from_string("patch_size=3")
    with pytest.raises(StrictDataclassClassValidationError, match=r"patch_size` \(3\) must divide"):
        config.validate()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": 3}, r"patch_size` \(3\) must divide the latent size \(8"),
        ({"image_size": 30}, r"image_size` \(30\) must be a multiple"),
        ({"mask_ratio": 1.0}, r"mask_ratio` must be in \[0, 1\), got 1.0"),
        ({"mask_ratio_start": -0.1}, r"mask_ratio_start` must be in \[0, 1\)"),
        ({"mask_ratio_start": 0.8, "mask_ratio_end": 0.5}, "must not exceed"),
        ({"mask_schedule": "linear"}, "expected one of uniform, piecewise, cosine, constant"),
        ({"vae_type": "AutoencoderXL"}, "`vae_type` must be one of 'AutoencoderKL', 'VQModel', 'AutoencoderTiny', got 'AutoencoderXL'"),
        ({"num_attention_heads": 3}, r"hidden_size` \(32\) must be divisible by `num_attention_heads` \(3\)"),
        ({"hidden_size": 0}, "positive"),
        ({"classifier_pooling": "max"}, "must be one of 'mean', 'cls', got 'max'"),
    ],
)
def test_bad_config_values_raise_naming_what_was_expected(overrides, message):
    # transformers 5 configs validate with `@strict` class validators; the error carries the ValueError's text.
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        LMDConfig.from_preset("lmd-tiny", **overrides)


# --- masking and loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.5, 0.75, 0.9, 0.99])
def test_each_sample_keeps_exactly_int_L_times_one_minus_r_visible(tiny_model, ratio):
    num_patches = tiny_model.config.num_patches
    expected_visible = max(1, int(num_patches * (1 - ratio)))
    noise = torch.rand(3, num_patches, generator=torch.Generator().manual_seed(1))
    out = tiny_model.lmd(pixel_values=random_images(3), noise=noise, num_visible=num_visible_patches(ratio, 16))
    assert out.mask.shape == (3, num_patches)
    assert ((1 - out.mask).sum(dim=1) == expected_visible).all()
    assert out.last_hidden_state.shape == (3, 1 + expected_visible, tiny_model.config.hidden_size)
    # mask and ids_restore agree: a patch is visible iff its place in the shuffled order is among the first K.
    assert torch.equal(out.mask.bool(), out.ids_restore >= expected_visible)
    # the lowest-noise patches are the visible ones
    kept = noise.argsort(dim=1)[:, :expected_visible]
    assert (out.mask.gather(1, kept) == 0).all()


def test_samples_share_the_ratio_but_hide_different_patches(tiny_model):
    out = tiny_model(pixel_values=random_images(4), num_visible=8)
    assert len({tuple(row.tolist()) for row in out.mask}) > 1


def test_same_noise_gives_same_loss_and_num_visible_overrides_the_config(tiny_model):
    images = random_images(2)
    noise = torch.rand(2, tiny_model.config.num_patches)
    first = tiny_model(pixel_values=images, noise=noise)
    second = tiny_model(pixel_values=images, noise=noise)
    assert tiny_model.config.mask_ratio == 0.75 and first.mask.sum() == 2 * 12
    assert torch.equal(first.loss, second.loss) and torch.equal(first.mask, second.mask)
    assert tiny_model(pixel_values=images, noise=noise, num_visible=12).mask.sum() == 2 * 4


def test_loss_is_mse_over_masked_patches_only(tiny_model):
    images = random_images(2)
    out = tiny_model(pixel_values=images, num_visible=8)
    target = tiny_model.patchify(out.latents)
    per_patch = ((out.logits - target) ** 2).mean(-1)
    assert torch.allclose(out.loss, per_patch[out.mask.bool()].mean())
    assert out.logits.shape == (2, 16, 2 * 2 * 4)


def test_per_sample_loss_averages_to_the_batch_loss_with_equal_counts(tiny_model):
    out = tiny_model(pixel_values=random_images(3), num_visible=8)
    per_sample = tiny_model.forward_loss(out.latents, out.logits, out.mask, per_sample=True)
    assert per_sample.shape == (3,) and torch.allclose(per_sample.mean(), out.loss)


def test_normalised_target_loss(tiny_config):
    tiny_config.norm_latent_loss = True
    model = LMDForPreTraining(tiny_config)
    out = model(pixel_values=random_images(2), num_visible=8)
    target = model.patchify(out.latents)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    expected = ((out.logits - target) ** 2).mean(-1)[out.mask.bool()].mean()
    assert torch.allclose(out.loss, expected)


def test_images_and_precomputed_latents_give_the_same_result(tiny_model):
    images = random_images(2)
    noise = torch.rand(2, 16)
    latents = tiny_model.lmd.encode_images(images)
    assert torch.equal(tiny_model(pixel_values=images, noise=noise).loss, tiny_model(latents=latents, noise=noise).loss)


def test_patchify_round_trip(tiny_model):
    latents = torch.randn(2, 4, 8, 8)
    patches = tiny_model.patchify(latents)
    assert patches.shape == (2, 16, 16)
    assert torch.equal(patches[0, 1], latents[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    assert torch.equal(tiny_model.unpatchify(patches), latents)


def test_kl_latents_are_the_scaled_posterior_mode(tiny_config):
    tiny_config.vae_config = {**tiny_config.vae_config, "scaling_factor": 0.5, "shift_factor": 0.1}
    model = LMDModel(tiny_config)
    images = random_images(2)
    mean = model.vae.encode(images).latent_dist.mean
    assert torch.allclose(model.encode_images(images), (mean - 0.1) * 0.5)
    assert torch.equal(model.encode_images(images), model.encode_images(images))  # no sampling
    # decode_latents undoes the scaling before the VAE decoder
    assert torch.allclose(model.decode_latents(model.encode_images(images)), model.vae.decode(mean).sample, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model):
    images, noise = random_images(2), torch.rand(2, 16)
    tiny_model.train()
    reference = tiny_model(pixel_values=images, noise=noise).loss
    reference.backward()
    grads = [p.grad.clone() for p in tiny_model.parameters() if p.requires_grad]
    tiny_model.zero_grad()
    tiny_model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in tiny_model.lmd.layers)
    checkpointed = tiny_model(pixel_values=images, noise=noise).loss
    checkpointed.backward()
    assert torch.allclose(reference, checkpointed)
    for before, param in zip(grads, (p for p in tiny_model.parameters() if p.requires_grad)):
        assert torch.allclose(before, param.grad, atol=1e-6)


def test_tiny_model_overfits_while_the_vae_stays_frozen(tiny_model):
    torch.manual_seed(0)
    images = random_images(4, seed=3)
    vae = tiny_model.lmd.vae
    vae_before = {k: v.clone() for k, v in vae.state_dict().items()}
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in vae.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    tiny_model.train()
    losses = []
    for _ in range(60):
        loss = tiny_model(pixel_values=images, num_visible=8).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert tiny_model.training and not vae.training
    assert all(p.grad is None for p in vae.parameters())
    assert_state_dicts_equal(vae_before, vae.state_dict())


def test_reconstruct_from_latents_keeps_visible_latents_and_fills_hidden_ones(tiny_model):
    """The paper's setting (latents only): composite latents = input where visible, prediction where hidden."""
    latents = tiny_model.lmd.encode_images(random_images(2))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    patch_mask = random_patch_mask(noise, num_visible_patches(0.5, 16))
    out = reconstruct(tiny_model, latents=latents, bool_masked_pos=patch_mask)
    assert out.reconstruction.shape == (2, 3, 32, 32) and out.reconstruction.abs().max() <= 1
    assert torch.equal(out.mask, tiny_model(latents=latents, num_visible=8, noise=noise).mask)
    visible = ~out.mask.bool()
    assert torch.equal(tiny_model.patchify(out.latents)[visible], tiny_model.patchify(latents)[visible])
    assert not torch.allclose(tiny_model.patchify(out.latents)[~visible], tiny_model.patchify(latents)[~visible])
    # each latent patch covers (patch 2 x VAE factor 4) = 8 pixels a side
    assert torch.equal(out.pixel_mask[:, 0, ::8, ::8], out.mask.reshape(2, 4, 4))


def test_reconstruct_from_pixels_is_seeded_and_greys_the_hidden_region(tiny_model):
    images = random_images(2)
    out = reconstruct(tiny_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert out.mask.sum(dim=1).tolist() == [8, 8]
    assert torch.equal(out.masked_images, images * (1 - out.pixel_mask))
    again = reconstruct(tiny_model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.reconstruction, again.reconstruction)


def test_reconstruct_with_explicit_patch_masks_of_different_sizes(tiny_model):
    patch_mask = torch.zeros(2, 16, dtype=torch.bool)
    patch_mask[0, [0, 5, 15]] = True
    patch_mask[1, 3] = True
    images = random_images(2)
    together = reconstruct(tiny_model, images, bool_masked_pos=patch_mask)
    assert torch.equal(together.mask.bool(), patch_mask)
    for i in range(2):  # batched inpainting with unequal hidden counts equals one image at a time
        alone = reconstruct(tiny_model, images[i : i + 1], bool_masked_pos=patch_mask[i : i + 1])
        torch.testing.assert_close(together.reconstruction[i : i + 1], alone.reconstruction, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="touches every latent patch"):
        reconstruct(tiny_model, images[:1], bool_masked_pos=torch.ones(1, 16, dtype=torch.bool))


# --- the base model, attention, other resolutions --------------------------------------------------


def test_base_model_encodes_every_patch_unless_asked_to_mask(tiny_model):
    images = random_images(2)
    base = tiny_model.lmd
    out = base(pixel_values=images)
    assert out.last_hidden_state.shape == (2, 17, 32) and not out.mask.any()
    assert torch.equal(out.ids_restore, torch.arange(16).expand(2, -1))
    masked = base(pixel_values=images, num_visible=4)
    assert masked.last_hidden_state.shape == (2, 5, 32) and masked.mask.sum() == 24
    assert base(pixel_values=images, noise=torch.rand(2, 16)).mask.sum() == 24  # noise alone: config.mask_ratio
    features = base.get_image_features(pixel_values=images).pooler_output
    assert torch.allclose(features, out.last_hidden_state[:, 1:].mean(1), atol=1e-6)


def test_eager_and_sdpa_attention_agree_and_eager_returns_the_weights(tiny_checkpoint):
    images, noise = random_images(2), torch.rand(2, 16)
    eager = LMDForPreTraining.from_pretrained(tiny_checkpoint, attn_implementation="eager")
    sdpa = LMDForPreTraining.from_pretrained(tiny_checkpoint, attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    out = eager(pixel_values=images, noise=noise, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, sdpa(pixel_values=images, noise=noise).logits, rtol=0, atol=1e-5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 5, 5)  # 2 layers, 4 heads, cls + 4 visible
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 5))
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 5, 32)
    # As ViTMAE: SDPA computes no weights, so it returns none (transformers logs why) instead of refusing.
    assert sdpa(pixel_values=images, output_attentions=True).attentions == ()


def test_a_32px_model_runs_at_64px_with_interpolated_position_embeddings(tiny_checkpoint):
    images = random_images(2, size=64)
    pretraining = LMDForPreTraining.from_pretrained(tiny_checkpoint)
    out = pretraining(pixel_values=images, num_visible=32, interpolate_pos_encoding=True)
    assert out.logits.shape == (2, 64, 16) and out.mask.sum() == 64 and torch.isfinite(out.loss)
    rec = reconstruct(pretraining, images, mask_ratio=0.5, interpolate_pos_encoding=True)
    assert rec.reconstruction.shape == (2, 3, 64, 64) and rec.pixel_mask.shape == (2, 1, 64, 64)
    classifier = LMDForImageClassification.from_pretrained(tiny_checkpoint, num_labels=3)
    assert classifier(pixel_values=images, interpolate_pos_encoding=True).logits.shape == (2, 3)
    features = pretraining.lmd(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
    assert features.shape == (2, 65, 32)
    # At the trained size, interpolation changes nothing.
    same = random_images(2)
    torch.testing.assert_close(pretraining.lmd(pixel_values=same).last_hidden_state,
                               pretraining.lmd(pixel_values=same, interpolate_pos_encoding=True).last_hidden_state)
    for model in (pretraining, pretraining.lmd, classifier):  # without the flag, a clear error
        with pytest.raises(ValueError, match=r"Expected pixel_values of shape \(batch, 3, 32, 32\), got \(2, 3, 64, 64\)"):
            model(pixel_values=images)


# --- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pixel_values": torch.zeros(2, 3, 64, 64)}, r"Expected pixel_values of shape \(batch, 3, 32, 32\), got \(2, 3, 64, 64\); resize"),
        ({"pixel_values": torch.zeros(3, 32, 32)}, r"Expected pixel_values of shape \(batch, 3, 32, 32\).*got \(3, 32, 32\)"),
        ({"latents": torch.zeros(2, 3, 8, 8)}, r"Expected latents of shape \(batch, 4, 8, 8\), got \(2, 3, 8, 8\)"),
        ({}, "exactly one of"),
        ({"pixel_values": torch.zeros(1, 3, 32, 32), "latents": torch.zeros(1, 4, 8, 8)}, "exactly one of"),
        ({"latents": torch.zeros(2, 4, 8, 8), "noise": torch.zeros(2, 15)}, r"Expected noise of shape \(2, 16\), got \(2, 15\)"),
        ({"latents": torch.zeros(2, 4, 8, 8), "bool_masked_pos": torch.zeros(2, 15, dtype=torch.bool)},
         r"Expected bool_masked_pos of shape \(2, 16\), got \(2, 15\)"),
        ({"latents": torch.zeros(2, 4, 8, 8), "mask_ratio": 0.5}, r"The masking input is `bool_masked_pos`"),
    ],
)
def test_wrong_inputs_raise_naming_expected_and_received(tiny_model, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model(**kwargs)


# --- the frozen VAE, save / load, from_vae ----------------------------------------------------------


def test_vae_stays_frozen_and_in_eval_mode_after_train(tiny_model):
    tiny_model.train()
    vae = tiny_model.lmd.vae
    assert tiny_model.training and tiny_model.lmd.layers.training and tiny_model.decoder.training
    assert not vae.training and not any(m.training for m in vae.modules())
    assert not any(p.requires_grad for p in vae.parameters())
    assert all(p.requires_grad for n, p in tiny_model.named_parameters() if not n.startswith("lmd.vae."))


@pytest.mark.parametrize("vae_type", ["AutoencoderKL", "VQModel", "AutoencoderTiny"])
def test_save_and_load_round_trip_bit_exact_through_one_safetensors_file(vae_type, tmp_path):
    model = tiny_model_with(vae_type)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert {key.split(".")[0] for key in weights} == {"lmd", "decoder"}
    assert any(k.startswith("lmd.vae.") for k in weights) and any(k.startswith("lmd.layers.") for k in weights)
    assert not list(tmp_path.glob("*.bin")) and len(list(tmp_path.glob("*.safetensors"))) == 1
    loaded = LMDForPreTraining.from_pretrained(tmp_path)
    assert_state_dicts_equal(model.state_dict(), loaded.state_dict())
    assert torch.equal(model.lmd.embeddings.position_embeddings.table, loaded.lmd.embeddings.position_embeddings.table)
    assert torch.equal(model.decoder.position_embeddings.table, loaded.decoder.position_embeddings.table)
    assert not any(p.requires_grad for p in loaded.lmd.vae.parameters()) and not loaded.lmd.vae.training
    images, noise = random_images(2), torch.rand(2, 16)
    assert torch.equal(model(pixel_values=images, noise=noise).logits, loaded(pixel_values=images, noise=noise).logits)


def test_each_head_loads_from_a_pretraining_checkpoint_with_only_its_own_parts_new(tiny_model, tiny_checkpoint):
    base, info = LMDModel.from_pretrained(tiny_checkpoint, output_loading_info=True)
    assert not info["missing_keys"]  # decoder ignored, nothing missing
    assert_state_dicts_equal(base.state_dict(), tiny_model.lmd.state_dict())
    classifier, info = LMDForImageClassification.from_pretrained(tiny_checkpoint, num_labels=3,
                                                                 output_loading_info=True)
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"fc_norm", "classifier"}
    assert_state_dicts_equal(classifier.lmd.state_dict(), tiny_model.lmd.state_dict())
    # And back: a base-model checkpoint gives a pre-training model whose only new part is the decoder.
    base.save_pretrained(tiny_checkpoint.parent / "base")
    pretraining, info = LMDForPreTraining.from_pretrained(tiny_checkpoint.parent / "base", output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("decoder.") for key in info["missing_keys"])


def test_from_vae_keeps_the_pretrained_vae_weights_bit_exact(tmp_path):
    torch.manual_seed(1)
    vae = AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG)
    with torch.no_grad():
        for param in vae.parameters():  # not what a fresh init would give
            param.add_(torch.randn_like(param))
    vae.save_pretrained(tmp_path / "vae")
    for source in (vae, tmp_path / "vae", str(tmp_path / "vae")):
        model = LMDForPreTraining.from_vae(source, preset="lmd-tiny", mask_schedule="uniform")
        assert model.config.mask_schedule == "uniform" and model.config.vae_type == "AutoencoderKL"
        assert_state_dicts_equal(vae.state_dict(), model.lmd.vae.state_dict())
    model = LMDModel.from_vae(vae, config=LMDConfig.from_preset("lmd-tiny", hidden_size=64))
    assert model.config.hidden_size == 64
    assert_state_dicts_equal(vae.state_dict(), model.vae.state_dict())
    model.save_pretrained(tmp_path / "lmd")
    assert_state_dicts_equal(vae.state_dict(), LMDModel.from_pretrained(tmp_path / "lmd").vae.state_dict())


def test_from_vae_with_a_subfolder_and_a_vq_model(tmp_path):
    vae = VQModel.from_config(TINY_VQ_F4_VAE_CONFIG)
    vae.save_pretrained(tmp_path / "repo" / "vqvae")
    model = LMDForPreTraining.from_vae(str(tmp_path / "repo"), subfolder="vqvae", preset="lmd-tiny")
    assert model.config.vae_type == "VQModel" and model.config.latent_channels == 3
    assert_state_dicts_equal(vae.state_dict(), model.lmd.vae.state_dict())


def test_checkpoint_carries_auto_map_and_loads_with_auto_classes(tiny_checkpoint):
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    assert config.auto_map["AutoModel"] == "modeling_lmd.LMDModel"
    assert config.auto_map["AutoModelForPreTraining"] == "modeling_lmd.LMDForPreTraining"
    assert {"modeling_lmd.py", "configuration_lmd.py", "mask_schedulers.py"} <= {p.name for p in tiny_checkpoint.iterdir()}
    assert type(AutoModel.from_pretrained(tiny_checkpoint)) is LMDModel
    assert type(AutoModelForPreTraining.from_pretrained(tiny_checkpoint)) is LMDForPreTraining
    assert type(AutoModelForImageClassification.from_pretrained(tiny_checkpoint, num_labels=2)) is LMDForImageClassification


def test_remote_code_loads_where_the_package_cannot_be_imported(tiny_model, tiny_checkpoint, tmp_path):
    images, noise = random_images(2), torch.rand(2, 16)
    torch.save({"images": images, "noise": noise}, tmp_path / "inputs.pt")
    expected = tiny_model(pixel_values=images, noise=noise).logits
    expected_features = tiny_model.lmd(pixel_values=images).last_hidden_state
    run_without_package(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForPreTraining
        pretraining = AutoModelForPreTraining.from_pretrained({str(tiny_checkpoint)!r}, trust_remote_code=True)
        base = AutoModel.from_pretrained({str(tiny_checkpoint)!r}, trust_remote_code=True)
        for model in (pretraining, base):
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert (type(pretraining).__name__, type(base).__name__) == ("LMDForPreTraining", "LMDModel")
        inputs = torch.load("inputs.pt")
        torch.save({{"logits": pretraining(pixel_values=inputs["images"], noise=inputs["noise"]).logits,
                    "features": base(pixel_values=inputs["images"]).last_hidden_state}}, "out.pt")
        """,
        cwd=tmp_path,
    )
    # Same weights and masks; only the summation order may differ in another process.
    remote = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(remote["logits"], expected, rtol=0, atol=FLOAT_ATOL)
    torch.testing.assert_close(remote["features"], expected_features, rtol=0, atol=FLOAT_ATOL)

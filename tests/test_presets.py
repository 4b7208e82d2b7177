"""A preset that does not fit its VAE is caught before any compute, with the fix in the message."""

import logging

import pytest
import torch
from diffusers import AutoencoderKL

from modeling_lmd import LMDConfig, LMDForPreTraining
from modeling_lmd import modeling_lmd as modeling
from conftest import TINY_KL_F8_VAE_CONFIG
from modeling_lmd.configuration_lmd import SD_KL_F8_VAE_CONFIG, TINY_KL_F4_VAE_CONFIG



def test_a_preset_on_a_vae_of_another_factor_names_the_image_size_that_fits():
    with pytest.raises(ValueError, match=r"8 x 8 latents and 16 tokens.*--image_size 128.*'lmd-base'"):
        LMDConfig.from_preset("lmd-small", vae_config=SD_KL_F8_VAE_CONFIG)
    with pytest.raises(ValueError, match=r"56 x 56 latents and 196 tokens.*--image_size 112"):
        LMDConfig.from_preset("lmd-base", vae_config=TINY_KL_F4_VAE_CONFIG)
    fitted = LMDConfig.from_preset("lmd-small", vae_config=SD_KL_F8_VAE_CONFIG, image_size=128)
    assert (fitted.latent_size, fitted.num_patches) == (16, 64)
    assert LMDConfig.from_preset("lmd-base").num_patches == 49  # the paper's setting is the preset's own


def test_fewer_tokens_than_the_preset_warns(caplog):
    with caplog.at_level(logging.WARNING):
        config = LMDConfig.from_preset("lmd-small", image_size=32)
    assert config.num_patches == 16
    assert "16 tokens, fewer than the 64 the preset 'lmd-small' was made for; image_size=64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LMDConfig.from_preset("lmd-base", image_size=256)  # more tokens than the preset's: nothing to say
    assert not caplog.text


def test_from_vae_refuses_a_mismatched_preset_before_reading_weights(tmp_path, monkeypatch):
    AutoencoderKL.from_config(TINY_KL_F8_VAE_CONFIG).save_pretrained(tmp_path / "vae-f8")

    def no_weights(*args, **kwargs):
        raise AssertionError("the VAE's weights were read before the configuration was checked")

    monkeypatch.setattr(modeling, "load_pretrained_vae", no_weights)
    with pytest.raises(ValueError, match="--image_size 64"):
        LMDForPreTraining.from_vae(tmp_path / "vae-f8", preset="lmd-tiny")


def test_train_lmd_refuses_a_mismatched_preset_before_any_compute(train_lmd, tmp_path, monkeypatch):
    """The SD-VAE trap: a Hub VAE with the default preset used to build a 64 px model with 16 tokens, silently."""
    AutoencoderKL.from_config(TINY_KL_F8_VAE_CONFIG).save_pretrained(tmp_path / "vae-f8")
    monkeypatch.setattr(train_lmd, "build_datasets", lambda *args: pytest.fail("data was read"))
    with pytest.raises(ValueError, match=r"--image_size 128"):
        train_lmd.main(["--train_dir", str(tmp_path), "--vae_name_or_path", str(tmp_path / "vae-f8"),
                        "--output_dir", str(tmp_path / "out"), "--max_steps", "1"])
    # With the image size that fits, the model is the preset's grid on this VAE.
    model, _ = train_lmd.build_model(*train_lmd.parse_arguments(
        ["--vae_name_or_path", str(tmp_path / "vae-f8"), "--image_size", "128", "--output_dir", str(tmp_path)])[:2])
    assert model.config.num_patches == 64 and model.config.vae_downsampling_factor == 8
    assert torch.equal(model.lmd.vae.state_dict()["encoder.conv_in.weight"],
                       AutoencoderKL.from_pretrained(tmp_path / "vae-f8").state_dict()["encoder.conv_in.weight"])

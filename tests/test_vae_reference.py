"""Checkpoints that name their VAE instead of carrying it, and getting the VAE back out of one that carries it."""

import os

import pytest
import torch
from conftest import random_images
from diffusers import AutoencoderKL
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from subprocess_helpers import run_without_package

from modeling_lmd import LMDForPreTraining, LMDModel, LMDReconstructionPipeline
from modeling_lmd.configuration_lmd import TINY_KL_F4_VAE_CONFIG


@pytest.fixture
def vae_repo(tmp_path):
    """A saved tiny VAE with non-default weights: where a lean checkpoint finds its VAE (a folder stands in for a
    Hub id; the tests never reach the Hub)."""
    torch.manual_seed(3)
    vae = AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG)
    with torch.no_grad():
        for param in vae.parameters():
            param.add_(0.1 * torch.randn_like(param))
    vae.save_pretrained(tmp_path / "vae-repo")
    return str(tmp_path / "vae-repo")


def test_a_lean_checkpoint_holds_only_the_vit_and_loads_its_vae_from_the_reference(vae_repo, tmp_path):
    model = LMDForPreTraining.from_vae(vae_repo, preset="lmd-tiny", vae_name_or_path=vae_repo, vae_in_checkpoint=False)
    model.save_pretrained(tmp_path / "full-then-lean")
    weights = load_file(tmp_path / "full-then-lean" / "model.safetensors")
    assert weights and not any(".vae." in key or key.startswith("vae.") for key in weights)
    assert any(key.startswith("lmd.layers.") for key in weights) and any(key.startswith("decoder.") for key in weights)

    loaded, info = LMDForPreTraining.from_pretrained(tmp_path / "full-then-lean", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    images, noise = random_images(2), torch.rand(2, 16)
    assert torch.equal(model(pixel_values=images, noise=noise).logits, loaded(pixel_values=images, noise=noise).logits)
    # Each head loads its VAE the same way.
    assert torch.equal(LMDModel.from_pretrained(tmp_path / "full-then-lean").vae.encoder.conv_in.weight,
                       AutoencoderKL.from_pretrained(vae_repo).encoder.conv_in.weight)


def test_a_self_contained_checkpoint_converts_to_a_lean_one_and_gives_its_vae_back(vae_repo, tiny_checkpoint,
                                                                                   tmp_path):
    # The VAE out of a self-contained checkpoint, as a diffusers folder:
    LMDModel.from_pretrained(tiny_checkpoint).vae.save_pretrained(tmp_path / "extracted")
    extracted = AutoencoderKL.from_pretrained(tmp_path / "extracted")
    full = load_file(tiny_checkpoint / "model.safetensors")
    for name, tensor in extracted.state_dict().items():
        assert torch.equal(full[f"lmd.vae.{name}"], tensor), name
    # The same checkpoint saved lean, naming that folder: the same model, a fraction of the file.
    lean = LMDForPreTraining.from_pretrained(tiny_checkpoint, vae_in_checkpoint=False,
                                             vae_name_or_path=str(tmp_path / "extracted"))
    lean.save_pretrained(tmp_path / "lean")
    assert os.path.getsize(tmp_path / "lean" / "model.safetensors") < os.path.getsize(
        tiny_checkpoint / "model.safetensors")
    again = LMDForPreTraining.from_pretrained(tmp_path / "lean")
    for name, tensor in LMDForPreTraining.from_pretrained(tiny_checkpoint).state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_a_lean_checkpoint_needs_its_reference(tmp_path):
    with pytest.raises(StrictDataclassClassValidationError, match="vae_in_checkpoint=False` needs `vae_name_or_path"):
        LMDForPreTraining.from_vae(AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG), preset="lmd-tiny",
                                   vae_in_checkpoint=False)


def test_a_lean_checkpoint_loads_as_remote_code_without_the_package(vae_repo, tmp_path):
    model = LMDForPreTraining.from_vae(vae_repo, preset="lmd-tiny", vae_name_or_path=vae_repo, vae_in_checkpoint=False)
    LMDReconstructionPipeline(model=model, device="cpu").save_pretrained(tmp_path / "lean")
    expected = model.lmd.vae.decoder.conv_out.weight.sum().item()
    run_without_package(
        f"""
        from transformers import AutoModelForPreTraining
        model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "lean")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules")
        assert abs(model.lmd.vae.decoder.conv_out.weight.sum().item() - {expected!r}) < 1e-6
        """,
        cwd=tmp_path,
    )

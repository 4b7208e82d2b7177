"""What a transformers maintainer checks: no host sync inside a forward, one masking input with transformers' name,
ViT's attention names (and older checkpoints converted on load, exactly), PEFT's LoRA on them."""

import json

import pytest
import torch
from conftest import random_images
from safetensors.torch import load_file, save_file

from modeling_lmd import LMDForImageClassification, LMDForPreTraining, reconstruct
from modeling_lmd.modeling_lmd import random_patch_mask

#: What makes the host wait for the device: reading a tensor's value.
SYNCING_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every read of a tensor's value on the host (a CPU stand-in for the GPU's synchronisations)."""
    reads = []
    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("leak_free", [False, True])
def test_no_forward_reads_a_tensor_on_the_host(tiny_model, host_reads, leak_free):
    tiny_model.config.leak_free_training = leak_free
    images = random_images(3)
    latents = tiny_model.lmd.encode_images(images)
    hidden = random_patch_mask(torch.rand(3, 16), 6)
    host_reads.clear()
    # What the Trainer runs (its mask and count), from pixels and from cached latents; ViTMAE's noise; no masking.
    tiny_model(pixel_values=images, bool_masked_pos=hidden, num_visible=6).loss.backward()
    tiny_model(latents=latents, bool_masked_pos=hidden, num_visible=6).loss.backward()
    tiny_model(latents=latents, noise=torch.rand(3, 16))
    tiny_model.lmd(pixel_values=images)
    tiny_model.lmd.get_image_features(latents=latents)
    LMDForImageClassification(tiny_model.config)(latents=latents, labels=torch.tensor([0, 1, 0]))
    assert host_reads == []
    # The stand-in sees what it is meant to: a mask without its count costs one read (the counts, which it checks).
    tiny_model(latents=latents, bool_masked_pos=hidden)
    assert host_reads == ["tolist"]


def test_value_checks_are_at_the_door(tiny_model):
    images = random_images(2)
    images[0, 0, 0, 0] = float("nan")
    tiny_model(pixel_values=images)  # the model itself does not look
    with pytest.raises(ValueError, match=r"pixel_values holds 1 non-finite value"):
        reconstruct(tiny_model, images)
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]"):
        reconstruct(tiny_model, random_images(2) * 255)


def test_bool_masked_pos_hides_what_it_says(tiny_model):
    images = random_images(2)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, :10] = True
    out = tiny_model(pixel_values=images, bool_masked_pos=hidden)
    assert torch.equal(out.mask.bool(), hidden) and out.ids_restore.shape == (2, 16)
    assert torch.equal(out.loss, tiny_model(pixel_values=images, bool_masked_pos=hidden, num_visible=6).loss)


def fused(state: dict) -> dict:
    """A state dict in the format saved before the attention took ViT's names: one `qkv`, one `proj`."""
    old = {}
    for name, tensor in state.items():
        if ".attention.attention.query." in name:
            stem, kind = name.split(".attention.attention.query.")
            parts = [state[f"{stem}.attention.attention.{p}.{kind}"] for p in ("query", "key", "value")]
            old[f"{stem}.attention.qkv.{kind}"] = torch.cat(parts)
        elif ".attention.attention." in name:
            continue
        else:
            old[name.replace(".attention.output.dense.", ".attention.proj.")] = tensor
    return old


def test_a_checkpoint_with_fused_qkv_loads_exactly_and_saves_with_vit_names(tiny_model, tiny_checkpoint, tmp_path):
    state = load_file(tiny_checkpoint / "model.safetensors")
    assert any(".attention.attention.query.weight" in name for name in state)
    old = tmp_path / "old-format"
    old.mkdir()
    (old / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    save_file(fused(state), old / "model.safetensors", metadata={"format": "pt"})
    converted = LMDForPreTraining.from_pretrained(old)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    images, noise = random_images(2), torch.rand(2, 16)
    assert torch.equal(converted(pixel_values=images, noise=noise).logits,
                       tiny_model(pixel_values=images, noise=noise).logits)
    converted.save_pretrained(tmp_path / "converted")
    saved = load_file(tmp_path / "converted" / "model.safetensors")
    assert set(saved) == set(state) and not any(".qkv." in name or ".proj." in name for name in saved)
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["model_type"] == "lmd"

"""The VAE a config or checkpoint brings: bounded before anything is built (issue 42, item 10), and loaded whole and
unchanged, or refused (item 11)."""

import inspect
import json
import re
import time

import diffusers
import pytest
import torch
from conftest import TINY_KL_F8_VAE_CONFIG
from diffusers import AutoencoderKL
from huggingface_hub.errors import StrictDataclassClassValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDModel
from modeling_lmd import modeling_lmd as modeling
from modeling_lmd import vae_lmd
from modeling_lmd.configuration_lmd import (
    MAX_VAE_BLOCKS,
    MAX_VAE_CHANNELS,
    MAX_VAE_LAYERS_PER_BLOCK,
    MAX_VAE_PARAMETERS,
    MAX_VQ_EMBEDDINGS,
    SD_KL_F8_VAE_CONFIG,
    TINY_KL_F4_VAE_CONFIG,
    VAE_DEFAULTS,
    estimated_vae_parameters,
)
from modeling_lmd.pretrained import DEMO_LMD


# --- item 10: the VAE's sizes are bounded ------------------------------------------------------------------

TINY_VAE_CONFIGS = {
    "AutoencoderKL": TINY_KL_F4_VAE_CONFIG,
    "VQModel": {**TINY_KL_F4_VAE_CONFIG, "latent_channels": 3, "num_vq_embeddings": 32},
    "AutoencoderTiny": {"encoder_block_out_channels": [8, 8, 8], "decoder_block_out_channels": [8, 8, 8],
                        "num_encoder_blocks": [1, 1, 1], "num_decoder_blocks": [1, 1, 1]},
}

# The configs diffusers stores for real VAEs (their config.json, the keys that size them), and the parameters
# diffusers builds for each (counted once with `sum(p.numel() for p in vae.parameters())`).
SD_VAE = {**SD_KL_F8_VAE_CONFIG, "force_upcast": True, "latents_mean": None, "latents_std": None,
          "mid_block_add_attention": True, "shift_factor": None, "use_post_quant_conv": True, "use_quant_conv": True}
REAL_VAES = {
    "stabilityai/sd-vae-ft-mse": ("AutoencoderKL", SD_VAE, 83_653_863),
    "stabilityai/sdxl-vae": ("AutoencoderKL", {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025}, 83_653_863),
    "black-forest-labs/FLUX.1-dev (vae)": ("AutoencoderKL", {
        **SD_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "use_post_quant_conv": False, "use_quant_conv": False}, 83_819_683),
    "kandinsky-community/kandinsky-2-2-decoder (movq)": ("VQModel", {
        "act_fn": "silu", "block_out_channels": [128, 256, 256, 512], "down_block_types": [
            "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
        "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215, "up_block_types": [
            "AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"], "vq_embed_dim": 4},
        67_832_495),
    "madebyollin/taesd": ("AutoencoderTiny", {
        "act_fn": "relu", "decoder_block_out_channels": [64, 64, 64, 64],
        "encoder_block_out_channels": [64, 64, 64, 64],
        "force_upcast": False, "in_channels": 3, "latent_channels": 4, "latent_magnitude": 3, "latent_shift": 0.5,
        "num_decoder_blocks": [3, 3, 3, 1], "num_encoder_blocks": [1, 3, 3, 3], "out_channels": 3,
        "scaling_factor": 1.0, "upsampling_scaling_factor": 2}, 2_445_063),
}


def past_limit(field: str, limit: int):
    """A value of `field` past `limit`, with the refusal that must name it."""
    return st.integers(limit + 1, 10**12).map(
        lambda value: (value, rf"`vae_config` {field} is {value}; the limit is {limit}\."))


def entry_past_limit(field: str, values: list, limit: int):
    """The per-block list `values` with one entry past `limit`, with the refusal that must name it."""
    return st.tuples(st.integers(0, len(values) - 1), st.integers(limit + 1, 10**12)).map(
        lambda spot: ([*values[:spot[0]], spot[1], *values[spot[0] + 1:]],
                      rf"`vae_config` {field}\[{spot[0]}\] is {spot[1]}; the limit is {limit}\."))


def blocks_past_limit(field: str):
    return st.integers(MAX_VAE_BLOCKS + 1, 64).map(
        lambda count: ([8] * count, rf"`vae_config` {field} has {count} blocks; the limit is {MAX_VAE_BLOCKS}\."))


def oversized_cases() -> list:
    """(vae_type, field, strategy of (value, refusal)): every bounded field of every VAE class."""
    widths = TINY_VAE_CONFIGS["AutoencoderKL"]["block_out_channels"]
    tiny = TINY_VAE_CONFIGS["AutoencoderTiny"]
    cases = [(vae_type, field, past_limit(field, MAX_VAE_CHANNELS))
             for vae_type in TINY_VAE_CONFIGS for field in ("in_channels", "out_channels", "latent_channels")]
    for vae_type in ("AutoencoderKL", "VQModel"):
        cases += [(vae_type, "layers_per_block", past_limit("layers_per_block", MAX_VAE_LAYERS_PER_BLOCK)),
                  (vae_type, "block_out_channels", blocks_past_limit("block_out_channels")),
                  (vae_type, "block_out_channels", entry_past_limit("block_out_channels", widths, MAX_VAE_CHANNELS))]
    cases += [("VQModel", "num_vq_embeddings", past_limit("num_vq_embeddings", MAX_VQ_EMBEDDINGS)),
              ("VQModel", "vq_embed_dim", past_limit("vq_embed_dim", MAX_VAE_CHANNELS))]
    for stack in ("encoder", "decoder"):
        for field, limit in ((f"{stack}_block_out_channels", MAX_VAE_CHANNELS),
                             (f"num_{stack}_blocks", MAX_VAE_LAYERS_PER_BLOCK)):
            cases += [("AutoencoderTiny", field, entry_past_limit(field, tiny[field], limit)),
                      ("AutoencoderTiny", field, blocks_past_limit(field))]
    return cases


OVERSIZED_VAE_FIELDS = st.sampled_from(oversized_cases()).flatmap(
    lambda case: case[2].map(lambda value_and_refusal: (case[0], case[1], *value_and_refusal)))


def forbid_building(monkeypatch) -> None:
    """Building a VAE fails the test: a refusal must come before."""
    def built(*args, **kwargs):
        raise AssertionError("a VAE was built before its config was refused")

    monkeypatch.setattr(modeling, "build_vae", built)
    for vae_class in vae_lmd.VAE_CLASSES.values():
        monkeypatch.setattr(vae_class, "from_config", built)
        monkeypatch.setattr(vae_class, "from_pretrained", built)


@settings(max_examples=80, deadline=None)
@given(case=OVERSIZED_VAE_FIELDS)
def test_each_oversized_vae_field_is_refused_at_once_naming_the_field_value_and_limit(case):
    vae_type, field, value, refusal = case
    with pytest.MonkeyPatch.context() as monkeypatch:
        forbid_building(monkeypatch)
        start = time.perf_counter()
        with pytest.raises(StrictDataclassClassValidationError, match=refusal):
            LMDConfig(vae_type=vae_type, vae_config={**TINY_VAE_CONFIGS[vae_type], field: value}, image_size=64,
                      patch_size=2)
        assert time.perf_counter() - start < 1.0


@settings(max_examples=30, deadline=None)
@given(widths=st.lists(st.sampled_from([1536, 2048]), min_size=4, max_size=MAX_VAE_BLOCKS),
       layers=st.integers(4, MAX_VAE_LAYERS_PER_BLOCK))
def test_widths_and_depths_within_their_bounds_are_refused_by_the_parameters_they_make(widths, layers):
    vae_config = {**SD_VAE, "block_out_channels": widths, "layers_per_block": layers,
                  "down_block_types": ["DownEncoderBlock2D"] * len(widths),
                  "up_block_types": ["UpDecoderBlock2D"] * len(widths)}
    assert estimated_vae_parameters("AutoencoderKL", vae_config) > MAX_VAE_PARAMETERS
    with pytest.raises(StrictDataclassClassValidationError,
                       match=rf"block_out_channels {re.escape(str(widths))}, layers_per_block {layers}\) makes "
                             r"about .* VAE parameters; the limit is 1e\+09"):
        LMDConfig(vae_type="AutoencoderKL", vae_config=vae_config, image_size=2 ** (len(widths) + 2), patch_size=1)


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 64).filter(lambda groups: 16 % groups or 8 % groups))
def test_group_norms_must_divide_every_block_width(groups):
    with pytest.raises(StrictDataclassClassValidationError,
                       match=rf"norm_num_groups \({groups}\) must divide every width of block_out_channels, got "
                             r"\[8, 16, 16\]"):
        LMDConfig.from_preset("lmd-tiny", vae_config={**TINY_KL_F4_VAE_CONFIG, "norm_num_groups": groups})


@pytest.mark.parametrize("field, value, message", [
    ("layers_per_block", "2", "layers_per_block must be an integer >= 1, got '2'"),
    ("layers_per_block", 0, "layers_per_block must be an integer >= 1, got 0"),
    ("block_out_channels", 16, "block_out_channels must be a list of one entry per block, got 16"),
    ("latent_channels", True, "latent_channels must be an integer >= 1, got True"),
])
def test_mistyped_vae_sizes_are_refused_naming_what_was_expected(field, value, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        LMDConfig.from_preset("lmd-tiny", vae_config={**TINY_KL_F4_VAE_CONFIG, field: value})


def test_the_issues_configs_are_refused_by_from_pretrained_and_from_vae_before_building(tmp_path, monkeypatch):
    forbid_building(monkeypatch)
    # The issue's two: 200,000 layers per block in a checkpoint's config.json, and 4,096-channel blocks in a VAE's.
    LMDConfig.from_preset("lmd-tiny").save_pretrained(tmp_path / "lmd")
    config = json.loads((tmp_path / "lmd" / "config.json").read_text())
    config["vae_config"]["layers_per_block"] = 200_000
    (tmp_path / "lmd" / "config.json").write_text(json.dumps(config))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(
        {"_class_name": "AutoencoderKL", **TINY_KL_F8_VAE_CONFIG, "block_out_channels": [4096] * 4}))
    start = time.perf_counter()
    with pytest.raises(StrictDataclassClassValidationError, match="layers_per_block is 200000; the limit is 64"):
        LMDForPreTraining.from_pretrained(tmp_path / "lmd")
    with pytest.raises(StrictDataclassClassValidationError,
                       match=r"block_out_channels\[0\] is 4096; the limit is 2048"):
        LMDForPreTraining.from_vae(tmp_path / "vae", preset="lmd-tiny", image_size=64)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("name", list(REAL_VAES))
def test_real_vae_configs_pass_and_their_parameters_are_estimated_within_ten_percent(name):
    vae_type, vae_config, parameters = REAL_VAES[name]
    config = LMDConfig(vae_type=vae_type, vae_config=vae_config)
    assert config.num_patches > 0
    assert abs(estimated_vae_parameters(vae_type, vae_config) / parameters - 1) < 0.1
    assert estimated_vae_parameters(vae_type, vae_config) < MAX_VAE_PARAMETERS / 10


@pytest.mark.parametrize("vae_type, vae_config", [
    *TINY_VAE_CONFIGS.items(),
    ("AutoencoderKL", {**SD_VAE, "block_out_channels": [16, 32, 64, 64], "norm_num_groups": 16}),  # SD's shape
    ("VQModel", {**REAL_VAES["kandinsky-community/kandinsky-2-2-decoder (movq)"][1],
                 "block_out_channels": [32, 32, 64, 64], "num_vq_embeddings": 64}),
    ("AutoencoderTiny", {**REAL_VAES["madebyollin/taesd"][1], "encoder_block_out_channels": [8, 16, 16, 16],
                         "decoder_block_out_channels": [16, 16, 16, 8]}),
])
def test_the_parameter_estimate_is_within_ten_percent_of_what_diffusers_builds(vae_type, vae_config):
    built = sum(parameter.numel() for parameter in getattr(diffusers, vae_type).from_config(vae_config).parameters())
    assert abs(estimated_vae_parameters(vae_type, vae_config) / built - 1) < 0.1


@pytest.mark.parametrize("vae_type", list(VAE_DEFAULTS))
def test_the_vae_defaults_are_the_installed_diffusers_defaults(vae_type):
    parameters = inspect.signature(getattr(diffusers, vae_type).__init__).parameters
    for name, default in VAE_DEFAULTS[vae_type].items():
        assert parameters[name].default == default, name


# --- item 11: a checkpoint that stores its VAE loads that VAE, or fails --------------------------------------

HEADS = [LMDForPreTraining, LMDModel, LMDForImageClassification]


@pytest.fixture
def hashed_checkpoint(tmp_path):
    """A tiny pre-training checkpoint made `from_vae`, so its config carries `vae_sha256`."""
    torch.manual_seed(0)
    LMDForPreTraining.from_vae(AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG), preset="lmd-tiny").save_pretrained(
        tmp_path / "lmd")
    return tmp_path / "lmd"


def rewrite_weights(checkpoint, change) -> None:
    """Replace `model.safetensors` by `change(its tensors)`, as a hand-edited file would be."""
    weights = load_file(checkpoint / "model.safetensors")
    save_file(change(weights), checkpoint / "model.safetensors", metadata={"format": "pt"})


def without_vae(weights):
    return {key: tensor for key, tensor in weights.items() if ".vae." not in f".{key}"}


def without_one_vae_weight(weights):
    return {key: tensor for key, tensor in weights.items() if not key.endswith("vae.encoder.conv_in.bias")}


def with_one_vae_weight_changed(weights):
    name = next(key for key in weights if key.endswith("vae.decoder.conv_out.weight"))
    return {**weights, name: weights[name] + 1e-3}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("change, lacking", [(without_vae, "lacks 152 of the VAE's 152 weights"),
                                             (without_one_vae_weight, r"lacks 1 of the VAE's 152 weights \(")])
def test_a_checkpoint_lacking_vae_weights_is_refused_naming_them_and_the_fix(hashed_checkpoint, head, change,
                                                                             lacking):
    rewrite_weights(hashed_checkpoint, change)
    with pytest.raises(ValueError, match=rf"{lacking}.*vae_in_checkpoint: false` with `vae_name_or_path`"):
        head.from_pretrained(hashed_checkpoint)


def test_a_base_model_checkpoint_lacking_vae_weights_is_refused_by_every_head(hashed_checkpoint, tmp_path):
    # An `LMDModel` checkpoint names the VAE's weights `vae.*`, a head's `lmd.vae.*`.
    LMDModel.from_pretrained(hashed_checkpoint).save_pretrained(tmp_path / "base")
    assert "vae.encoder.conv_in.bias" in load_file(tmp_path / "base" / "model.safetensors")
    rewrite_weights(tmp_path / "base", without_one_vae_weight)
    for head in HEADS:
        with pytest.raises(ValueError, match=r"lacks 1 of the VAE's 152 weights \(\S*vae.encoder.conv_in.bias\)"):
            head.from_pretrained(tmp_path / "base")


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_a_changed_vae_weight_is_refused_by_its_hash_in_any_loading_dtype(hashed_checkpoint, tmp_path, dtype):
    LMDModel.from_pretrained(hashed_checkpoint).save_pretrained(tmp_path / "base")
    for checkpoint in (hashed_checkpoint, tmp_path / "base"):
        rewrite_weights(checkpoint, with_one_vae_weight_changed)
        for head in HEADS:
            with pytest.raises(ValueError, match=r"are not the VAE its config names \(sha256 [0-9a-f]{64}, "
                                                 r"expected `vae_sha256` [0-9a-f]{64}\)"):
                head.from_pretrained(checkpoint, dtype=dtype)


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_an_intact_checkpoint_loads_its_vae_in_any_dtype(hashed_checkpoint, dtype):
    stored = load_file(hashed_checkpoint / "model.safetensors")
    assert not LMDForPreTraining(LMDConfig.from_pretrained(hashed_checkpoint)).lmd.vae_is_pretrained
    for head in HEADS:
        model = head.from_pretrained(hashed_checkpoint, dtype=dtype)
        assert model.base_model.vae_is_pretrained
        for name, tensor in model.base_model.vae.state_dict().items():
            assert torch.equal(tensor, stored[f"lmd.vae.{name}"].to(tensor.dtype)), name
    # The loading info comes back only when asked for, as transformers gives it.
    model, info = LMDModel.from_pretrained(hashed_checkpoint, dtype=dtype, output_loading_info=True)
    assert isinstance(model, LMDModel) and not info["missing_keys"]


def test_a_float16_vae_saved_in_a_float32_model_is_still_its_hash(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG).half()
    LMDForPreTraining.from_vae(vae, preset="lmd-tiny").save_pretrained(tmp_path / "lmd")
    assert load_file(tmp_path / "lmd" / "model.safetensors")["lmd.vae.encoder.conv_in.weight"].dtype == torch.float32
    assert LMDForPreTraining.from_pretrained(tmp_path / "lmd").lmd.vae_is_pretrained
    rewrite_weights(tmp_path / "lmd", with_one_vae_weight_changed)
    with pytest.raises(ValueError, match="are not the VAE its config names"):
        LMDForPreTraining.from_pretrained(tmp_path / "lmd")


def test_a_lean_checkpoint_loaded_as_if_it_held_its_vae_is_refused(tmp_path):
    AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG).save_pretrained(tmp_path / "vae")
    LMDForPreTraining.from_vae(tmp_path / "vae", preset="lmd-tiny", vae_name_or_path=str(tmp_path / "vae"),
                               vae_in_checkpoint=False).save_pretrained(tmp_path / "lean")
    with pytest.raises(ValueError, match="lacks 152 of the VAE's 152 weights"):
        LMDForPreTraining.from_pretrained(tmp_path / "lean", vae_in_checkpoint=True)


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_the_shipped_checkpoint_loads_in_every_dtype(dtype):
    # Its VAE is stored in float16, rounded from the float32 VAE its `vae_sha256` names: nothing to compare, no error.
    stored = vae_lmd.checkpoint_vae_weights(DEMO_LMD, ("lmd.vae.", "vae."))
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    model = LMDForPreTraining.from_pretrained(DEMO_LMD, dtype=dtype)
    assert model.lmd.vae_is_pretrained and model.lmd.vae.dtype == (dtype or torch.float32)
    for name, tensor in model.lmd.vae.state_dict().items():
        assert torch.equal(tensor, stored[name].to(tensor.dtype)), name


def test_checking_the_shipped_checkpoints_vae_takes_little_time():
    config = LMDConfig.from_pretrained(DEMO_LMD)
    start = time.perf_counter()
    stored = vae_lmd.checkpoint_vae_weights(DEMO_LMD, ("lmd.vae.", "vae."))
    vae_lmd.check_stored_vae_sha256(stored, config.vae_sha256, DEMO_LMD)
    assert time.perf_counter() - start < 0.2


def test_a_sharded_checkpoint_is_checked_in_the_shard_that_holds_the_weight(tmp_path):
    torch.manual_seed(0)
    model = LMDForPreTraining.from_vae(AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG), preset="lmd-tiny")
    model.save_pretrained(tmp_path / "lmd", max_shard_size="100KB")
    weight_map = json.loads((tmp_path / "lmd" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    assert LMDForPreTraining.from_pretrained(tmp_path / "lmd").lmd.vae_is_pretrained
    shard = tmp_path / "lmd" / weight_map["lmd.vae.decoder.conv_out.weight"]
    save_file(with_one_vae_weight_changed(load_file(shard)), shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="are not the VAE its config names"):
        LMDForPreTraining.from_pretrained(tmp_path / "lmd")

"""LMD model configuration."""

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging

from .mask_schedulers import check_mask_ratio, check_mask_schedule


logger = logging.get_logger(__name__)


#: The diffusers VAE classes LMD works on (`vae_lmd.VAE_CLASSES` maps them to the classes).
VAE_TYPES = ("AutoencoderKL", "VQModel", "AutoencoderTiny")

_KL_VQ_DEFAULTS = {"in_channels": 3, "out_channels": 3, "block_out_channels": (64,), "layers_per_block": 1,
                   "norm_num_groups": 32}
#: diffusers' defaults for the `vae_config` fields LMD reads, per class: what `from_config` builds where a saved
#: config leaves a field out (`tests/test_vae_safety.py` holds them to the installed diffusers).
VAE_DEFAULTS = {
    "AutoencoderKL": {**_KL_VQ_DEFAULTS, "latent_channels": 4},
    "VQModel": {**_KL_VQ_DEFAULTS, "latent_channels": 3, "num_vq_embeddings": 256, "vq_embed_dim": None},
    "AutoencoderTiny": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                        "encoder_block_out_channels": (64, 64, 64, 64), "decoder_block_out_channels": (64, 64, 64, 64),
                        "num_encoder_blocks": (1, 3, 3, 3), "num_decoder_blocks": (3, 3, 3, 1)},
}

#: The order in which progressive un-masking reveals hidden patches (`reconstruction_lmd`).
REVEAL_ORDERS = ("random", "nearest")

#: Bounds that refuse an absurd (tampered or mistyped) config at once, before any memory is taken: layers per stack,
#: patch tokens, and the ViT's parameters as estimated from widths and depths (1e10 is about 40 GB in fp32).
MAX_LAYERS = 1024
MAX_TOKENS = 256 * 256
MAX_PARAMETERS = 10**10

#: The same for the VAE that `vae_config` describes, generous: the VAEs of Stable Diffusion, SDXL and FLUX have 4
#: blocks of at most 512 channels, 2 layers per block and about 84M parameters, taesd 4 blocks of 64 channels and
#: 2.4M. Blocks per stack (8: a 128x VAE), layers per block, channels of any convolution, VQ codebook entries, and
#: the parameters as estimated from those (`estimated_vae_parameters`; 1e9 is about 4 GB in fp32).
MAX_VAE_BLOCKS = 8
MAX_VAE_LAYERS_PER_BLOCK = 64
MAX_VAE_CHANNELS = 2048
MAX_VQ_EMBEDDINGS = 2**20
MAX_VAE_PARAMETERS = 10**9

#: How `LMDForImageClassification` pools the encoder output.
CLASSIFIER_POOLINGS = ("mean", "cls")

#: What every saved LMD config maps the Auto classes to, so that each head loads from any LMD checkpoint with
#: `trust_remote_code=True` where this package is not installed (the code files travel with the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_lmd.LMDConfig",
    "AutoModel": "modeling_lmd.LMDModel",
    "AutoModelForPreTraining": "modeling_lmd.LMDForPreTraining",
    "AutoModelForImageClassification": "modeling_lmd.LMDForImageClassification",
}

# Stable Diffusion v1's KL-f8 autoencoder (the VAE of the paper, also stabilityai/sd-vae-ft-mse):
# 4 latent channels, 8x downsampling, so 224 px images become 4 x 28 x 28 latents.
SD_KL_F8_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

# A few-kilobyte KL-f4 autoencoder for tests and smoke runs: random weights, 4 latent channels.
TINY_KL_F4_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 1.0,
}

_VIT_BASE_ENCODER = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
_MAE_DECODER = {
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 2048,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's setting: ViT-B on 4 x 28 x 28 SD latents, latent patch 4 -> 49 tokens.
    "lmd-base": {
        "vae_type": "AutoencoderKL",
        "vae_config": SD_KL_F8_VAE_CONFIG,
        "image_size": 224,
        "patch_size": 4,
        **_VIT_BASE_ENCODER,
        **_MAE_DECODER,
    },
    # ViT-L encoder with the same decoder.
    "lmd-large": {
        "vae_type": "AutoencoderKL",
        "vae_config": SD_KL_F8_VAE_CONFIG,
        "image_size": 224,
        "patch_size": 4,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        **_MAE_DECODER,
    },
    # CPU-sized: a ViT-S-like encoder for 64 px images on an f4 VAE (16 x 16 latents, patch 2 -> 64 tokens).
    "lmd-small": {
        "vae_type": "AutoencoderKL",
        "vae_config": TINY_KL_F4_VAE_CONFIG,
        "image_size": 64,
        "patch_size": 2,
        "hidden_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "intermediate_size": 768,
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
        "decoder_intermediate_size": 512,
    },
    # Tests: 32 px images, 8 x 8 latents, patch 2 -> 16 tokens; a few thousand parameters.
    "lmd-tiny": {
        "vae_type": "AutoencoderKL",
        "vae_config": TINY_KL_F4_VAE_CONFIG,
        "image_size": 32,
        "patch_size": 2,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 4,
        "decoder_intermediate_size": 64,
    },
}


def vae_settings(vae_type: str, vae_config: dict) -> dict:
    """`vae_config` over diffusers' defaults (`VAE_DEFAULTS`): the sizes of the VAE that `from_config` builds."""
    return {**VAE_DEFAULTS[vae_type], **vae_config}


def vae_downsampling_factor(vae_type: str, vae_config: dict) -> int:
    """Spatial reduction of a diffusers VAE: one stride-2 stage between consecutive blocks."""
    widths = "encoder_block_out_channels" if vae_type == "AutoencoderTiny" else "block_out_channels"
    return 2 ** (len(vae_settings(vae_type, vae_config)[widths]) - 1)


def vae_latent_channels(vae_type: str, vae_config: dict) -> int:
    """Channels of the latents LMD works on (VQModel: the quantized embedding width)."""
    settings = vae_settings(vae_type, vae_config)
    if settings.get("vq_embed_dim") is not None:
        return int(settings["vq_embed_dim"])
    return int(settings["latent_channels"])


def check_vae_count(name: str, value, limit: int, minimum: int = 1) -> None:
    """Refuse a size in `vae_config` that is not an integer from `minimum` to `limit`, naming the field, the value
    that came and the limit."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`vae_config` {name} must be an integer >= {minimum}, got {value!r}.")
    if value > limit:
        raise ValueError(f"`vae_config` {name} is {value}; the limit is {limit}.")


def check_vae_block_counts(name: str, values, limit: int, minimum: int = 1) -> None:
    """Refuse a per-block list of `vae_config` (widths, depths) of no or more than `MAX_VAE_BLOCKS` blocks, or with
    an entry `check_vae_count` refuses."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"`vae_config` {name} must be a list of one entry per block, got {values!r}.")
    if len(values) > MAX_VAE_BLOCKS:
        raise ValueError(f"`vae_config` {name} has {len(values)} blocks; the limit is {MAX_VAE_BLOCKS}.")
    for index, value in enumerate(values):
        check_vae_count(f"{name}[{index}]", value, limit, minimum)


def check_vae_sizes(vae_type: str, vae_config: dict) -> None:
    """Refuse a VAE too large to build (tampered or mistyped) before anything is built: every size field within
    its `MAX_VAE_*` bound, group norms that divide the widths, and at most `MAX_VAE_PARAMETERS` parameters."""
    settings = vae_settings(vae_type, vae_config)
    for name in ("in_channels", "out_channels", "latent_channels"):
        check_vae_count(name, settings[name], MAX_VAE_CHANNELS)
    if vae_type == "AutoencoderTiny":
        sizing = ("encoder_block_out_channels", "num_encoder_blocks",
                  "decoder_block_out_channels", "num_decoder_blocks")
        for widths, depths in (sizing[:2], sizing[2:]):
            check_vae_block_counts(widths, settings[widths], MAX_VAE_CHANNELS)
            check_vae_block_counts(depths, settings[depths], MAX_VAE_LAYERS_PER_BLOCK, minimum=0)
    else:
        sizing = ("block_out_channels", "layers_per_block")
        check_vae_block_counts("block_out_channels", settings["block_out_channels"], MAX_VAE_CHANNELS)
        check_vae_count("layers_per_block", settings["layers_per_block"], MAX_VAE_LAYERS_PER_BLOCK)
        groups = settings["norm_num_groups"]
        check_vae_count("norm_num_groups", groups, MAX_VAE_CHANNELS)
        # Every block's GroupNorms split its channels into `norm_num_groups` groups.
        if any(width % groups for width in settings["block_out_channels"]):
            raise ValueError(f"`vae_config` norm_num_groups ({groups}) must divide every width of "
                             f"block_out_channels, got {list(settings['block_out_channels'])}.")
    if vae_type == "VQModel":
        check_vae_count("num_vq_embeddings", settings["num_vq_embeddings"], MAX_VQ_EMBEDDINGS)
        if settings["vq_embed_dim"] is not None:
            check_vae_count("vq_embed_dim", settings["vq_embed_dim"], MAX_VAE_CHANNELS)
    parameters = estimated_vae_parameters(vae_type, vae_config)
    if parameters > MAX_VAE_PARAMETERS:
        sizes = ", ".join(f"{name} {settings[name]}" for name in sizing)
        raise ValueError(f"This `vae_config` ({sizes}) makes about {parameters:.2g} VAE parameters; the limit is "
                         f"{MAX_VAE_PARAMETERS:.0e} (about {4 * MAX_VAE_PARAMETERS / 1e9:.0f} GB in fp32).")


def estimated_vae_parameters(vae_type: str, vae_config: dict) -> int:
    """About how many parameters the VAE of `vae_config` has (within about 10%), from its widths and depths:
    the 3x3 convolutions, the mid blocks' attention and a VQ codebook; norms, biases and 1x1 convolutions are left
    out. Call it on sizes `check_vae_sizes` has bounded."""
    settings = vae_settings(vae_type, vae_config)
    conv = 9  # a 3x3 convolution's weights per input and output channel
    latents = settings["latent_channels"]
    if vae_type == "AutoencoderTiny":
        encoder, decoder = settings["encoder_block_out_channels"], settings["decoder_block_out_channels"]
        # Per block of each stack: a convolution and `num_*_blocks` residual blocks of three.
        blocks = sum(width**2 * (1 + 3 * depth)
                     for widths, depths in ((encoder, settings["num_encoder_blocks"]),
                                            (decoder, settings["num_decoder_blocks"]))
                     for width, depth in zip(widths, depths))
        ends = (settings["in_channels"] * encoder[0] + settings["out_channels"] * decoder[-1]
                + latents * (encoder[-1] + decoder[0]))
        return conv * (blocks + ends)
    widths, layers = settings["block_out_channels"], settings["layers_per_block"]
    # Per block, the encoder has `layers` resnets of two convolutions and the decoder `layers + 1`, and each a
    # resampler; each stack has a mid block of two resnets and an attention (four width x width projections).
    blocks = conv * sum(width**2 * (4 * layers + 4) for width in widths)
    mid_blocks = 2 * (4 * conv + 4) * widths[-1] ** 2
    pixel_ends = conv * (settings["in_channels"] + settings["out_channels"]) * widths[0]
    # The KL encoder outputs a mean and a log-variance per latent channel, the VQ encoder the latents.
    latent_ends = conv * latents * widths[-1] * (3 if vae_type == "AutoencoderKL" else 2)
    codebook = settings["num_vq_embeddings"] * vae_latent_channels(vae_type, vae_config) if vae_type == "VQModel" else 0
    return blocks + mid_blocks + pixel_ends + latent_ends + codebook


@strict
class LMDConfig(PreTrainedConfig):
    r"""
    Configuration of the LMD models ([`LMDModel`], [`LMDForPreTraining`], [`LMDForImageClassification`]): a frozen
    diffusers VAE that maps images to latents, and an MAE-style masked ViT (encoder + decoder) on latent patches.

    Args:
        vae_type (`str`, defaults to `"AutoencoderKL"`):
            Diffusers class of the VAE: `"AutoencoderKL"`, `"VQModel"` or `"AutoencoderTiny"`.
        vae_config (`dict`, *optional*):
            The config diffusers stores for that VAE (its `config.json`). Defaults to Stable Diffusion's KL-f8. Its
            sizes are bounded (`MAX_VAE_*`, `check_vae_sizes`), so that an absurd one is refused before it is built.
        image_size (`int`, defaults to 224):
            Side of the (square) input images in pixels. Other sizes need `interpolate_pos_encoding=True`.
        patch_size (`int`, defaults to 4):
            Side of a patch on the latent grid; it must divide the latent size.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size:
            Width, depth, heads and MLP width of the ViT encoder (ViT-B by default).
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            The same for the lightweight decoder (512 / 8 / 16 / 2048 by default).
        layer_norm_eps (`float`, defaults to 1e-6), qkv_bias (`bool`, defaults to `True`),
        hidden_act (`str`, defaults to `"gelu"`), initializer_range (`float`, defaults to 0.02).
        norm_latent_loss (`bool`, defaults to `False`):
            Normalise each target patch by its own mean and variance (MAE's `norm_pix_loss`). Off by default so
            predictions stay in absolute latent units and can be decoded.
        visible_loss_weight (`float`, defaults to 0.0):
            Weight of the loss on *visible* patches next to the hidden ones (MAE and LMD: 0, hidden patches only);
            with `w > 0` the loss is `mean_hidden + w * mean_visible`.
        leak_free_training (`bool`, defaults to `False`):
            Pre-train the way `reconstruct` infers: hide patches in pixel space (painted with the visible mean
            colour) before the VAE encodes the image, so the visible latents carry nothing of the hidden pixels;
            the target stays the unmasked image's latents. Costs a second VAE encode per step and needs images
            (latents-only inputs use the paper's setting: encode everything, then hide latent patches).
        harmonic_fill (`bool`, defaults to `False`):
            Start every prediction from a smooth fill of the hidden region and learn only its correction: leak-free,
            the hidden pixels are painted by `harmonic_fill` (Laplace's equation from the visible pixels, about what
            classical inpainting does) instead of their mean colour, and the decoder outputs the painted image's
            latents plus a learned correction (`LMDFillCorrection`), reading the fill at hidden patches too
            (`LMDFillEmbedding`). Given latents instead of pixels, the hidden latent patches are filled the same way
            in latent space. Both start at zero, so a new model starts at the classical fill, not at noise.
        mask_ratio (`float`, defaults to 0.75):
            Ratio of hidden patches at evaluation and inference.
        mask_schedule (`str`, defaults to `"cosine"`):
            Training schedule of the ratio: `"uniform"`, `"piecewise"`, `"cosine"` or `"constant"`.
        mask_ratio_start (`float`, defaults to 0.15), mask_ratio_end (`float`, defaults to 0.75):
            The ratios the schedule starts from and ends at.
        classifier_pooling (`str`, defaults to `"mean"`):
            How [`LMDForImageClassification`] pools the encoder output: `"mean"` over patch tokens or `"cls"`.
        vae_name_or_path (`str`, *optional*), vae_subfolder (`str`, *optional*), vae_revision (`str`, *optional*):
            Where the VAE's weights can be loaded from: a Hub id (with the commit it resolved to) or a folder, and
            the subfolder inside it; `from_vae` records a Hub id.
        vae_sha256 (`str`, *optional*):
            A sha256 of the VAE's weights (`vae_lmd.vae_weights_sha256`), recorded by `from_vae`: a VAE loaded by
            reference must match it, so must the VAE a checkpoint stores (unless stored rounded to 16-bit floats,
            which cannot be compared), and a resumed run must use the same VAE.
        vae_in_checkpoint (`bool`, defaults to `True`):
            Save the VAE's weights in every checkpoint (self-contained, works offline). With `False` checkpoints
            hold only the ViT, and `from_pretrained` loads the VAE from `vae_name_or_path`, checked against
            `vae_config` and `vae_sha256`.

    Derived (read-only) properties: `latent_channels`, `latent_size`, `vae_downsampling_factor`, and the patch
    geometry: `patch_pixels` (pixels per latent patch side), `grid_size` (patches per side), `num_patches`.
    Every field is checked when the config is built (`@strict` validators): a bad value raises an error that names
    the field, what was expected and what came.

    Example:

    ```python
    >>> from modeling_lmd import LMDConfig, LMDForPreTraining
    >>> config = LMDConfig.from_preset("lmd-tiny", mask_schedule="uniform")
    >>> model = LMDForPreTraining(config)
    ```
    """

    model_type = "lmd"

    vae_type: str = "AutoencoderKL"
    vae_config: dict | None = None
    image_size: int = 224
    patch_size: int = 4
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    norm_latent_loss: bool = False
    visible_loss_weight: float | int = 0.0
    leak_free_training: bool = False
    harmonic_fill: bool = False
    mask_ratio: float | int = 0.75
    mask_schedule: str = "cosine"
    mask_ratio_start: float | int = 0.15
    mask_ratio_end: float | int = 0.75
    classifier_pooling: str = "mean"
    vae_name_or_path: str | None = None
    vae_subfolder: str | None = None
    vae_revision: str | None = None
    vae_sha256: str | None = None
    vae_in_checkpoint: bool = True

    def __post_init__(self, **kwargs):
        if self.vae_config is None:
            self.vae_config = copy.deepcopy(SD_KL_F8_VAE_CONFIG)
        else:
            # Keep only what the VAE constructor takes; diffusers' bookkeeping keys ("_class_name", ...) go.
            self.vae_config = {k: v for k, v in dict(self.vae_config).items() if not k.startswith("_")}
        super().__post_init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    def validate_vae(self):
        """Part of `@strict` validation: a supported VAE of bounded size whose latent grid the patches tile."""
        check_choice("vae_type", self.vae_type, VAE_TYPES)
        check_vae_sizes(self.vae_type, self.vae_config)
        if self.image_size <= 0 or self.patch_size <= 0:
            raise ValueError(
                f"`image_size` and `patch_size` must be positive, got {self.image_size} and {self.patch_size}."
            )
        factor = self.vae_downsampling_factor
        if self.image_size % factor != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of the VAE's downsampling factor ({factor})."
            )
        if self.latent_size % self.patch_size != 0:
            raise ValueError(
                f"`patch_size` ({self.patch_size}) must divide the latent size ({self.latent_size} = image_size "
                f"{self.image_size} / VAE factor {factor})."
            )
        if self.num_patches > MAX_TOKENS:
            raise ValueError(f"image_size {self.image_size} with latent patch {self.patch_size} gives {self.num_patches} "
                             f"tokens; the limit is {MAX_TOKENS}. Use a larger `patch_size` or a smaller `image_size`.")
        if not self.vae_in_checkpoint and not self.vae_name_or_path:
            raise ValueError("`vae_in_checkpoint=False` needs `vae_name_or_path` (a Hub id or folder) to load the VAE "
                             "from; without it a checkpoint would lose its VAE.")

    def validate_masking(self):
        """Part of `@strict` validation: a known schedule and ratios in [0, 1) with start <= end."""
        check_mask_schedule(self.mask_schedule)
        for name in ("mask_ratio", "mask_ratio_start", "mask_ratio_end"):
            check_mask_ratio(getattr(self, name), f"`{name}`")
        if self.visible_loss_weight < 0:
            raise ValueError(f"`visible_loss_weight` must be >= 0, got {self.visible_loss_weight}.")
        if self.harmonic_fill and self.norm_latent_loss:
            raise ValueError("`harmonic_fill` predicts a correction to the fill's latents, which `norm_latent_loss` "
                             "(per-patch normalised targets) has no place for: set one of them only.")
        if self.mask_ratio_start > self.mask_ratio_end:
            raise ValueError(
                f"`mask_ratio_start` ({self.mask_ratio_start}) must not exceed `mask_ratio_end` ({self.mask_ratio_end})."
            )

    def validate_architecture(self):
        """Part of `@strict` validation: positive sizes, heads that divide the widths, sin-cos-friendly widths."""
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.decoder_num_hidden_layers < 0:
            raise ValueError(f"`decoder_num_hidden_layers` must be >= 0, got {self.decoder_num_hidden_layers}.")
        for name in ("num_hidden_layers", "decoder_num_hidden_layers"):
            if getattr(self, name) > MAX_LAYERS:
                raise ValueError(f"`{name}` is {getattr(self, name)}; the limit is {MAX_LAYERS}.")
        parameters = (self.num_hidden_layers * (4 * self.hidden_size**2 + 2 * self.hidden_size * self.intermediate_size)
                      + self.decoder_num_hidden_layers * (4 * self.decoder_hidden_size**2
                                                          + 2 * self.decoder_hidden_size * self.decoder_intermediate_size))
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"These widths and depths make about {parameters:.2g} ViT parameters; the limit is "
                             f"{MAX_PARAMETERS:.0e} (about {4 * MAX_PARAMETERS / 1e9:.0f} GB in fp32).")
        for width, heads, prefix in (
            (self.hidden_size, self.num_attention_heads, ""),
            (self.decoder_hidden_size, self.decoder_num_attention_heads, "decoder_"),
        ):
            if width % heads != 0:
                raise ValueError(
                    f"`{prefix}hidden_size` ({width}) must be divisible by `{prefix}num_attention_heads` ({heads})."
                )
        if self.hidden_size % 4 != 0 or self.decoder_hidden_size % 4 != 0:
            raise ValueError(
                "2D sin-cos position embeddings need widths divisible by 4, got "
                f"hidden_size={self.hidden_size}, decoder_hidden_size={self.decoder_hidden_size}."
            )
        check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)

    @property
    def vae_downsampling_factor(self) -> int:
        return vae_downsampling_factor(self.vae_type, self.vae_config)

    @property
    def latent_channels(self) -> int:
        return vae_latent_channels(self.vae_type, self.vae_config)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_downsampling_factor

    @property
    def patch_pixels(self) -> int:
        """Pixels per side of one latent patch: the latent patch times the VAE's downsampling factor."""
        return self.patch_size * self.vae_downsampling_factor

    @property
    def grid_size(self) -> int:
        """Patches per side at `image_size`."""
        return self.latent_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LMDConfig":
        """Build a named configuration (`lmd-base`, `lmd-large`, `lmd-small`, `lmd-tiny`), with `overrides` on top.

        A preset fixes a token grid for the VAE it was made for; see `check_preset_fits_vae` for what happens when
        `overrides` bring another VAE or image size.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {', '.join(PRESETS)}.")
        config = cls(**{**copy.deepcopy(PRESETS[name]), **overrides})
        check_preset_fits_vae(name, config)
        return config


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise `ValueError` naming `name`, the allowed `choices` and the `value` that came."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def check_preset_fits_vae(name: str, config: LMDConfig) -> None:
    """Catch a preset / VAE mismatch before any compute.

    A preset is made for one VAE downsampling factor at one image size (`lmd-small`: 4x at 64 px, 64 tokens;
    `lmd-base`: 8x at 224 px, 49 tokens). A VAE with another factor at the preset's image size silently changes the
    token grid (Stable Diffusion's 8x VAE under `lmd-small` gives 8 x 8 latents and 16 tokens): that raises, naming
    the image size that keeps the preset's grid. Any other configuration with fewer tokens than its preset gets a
    warning.
    """
    preset = PRESETS[name]
    preset_factor = vae_downsampling_factor(preset["vae_type"], preset["vae_config"])
    preset_tokens = (preset["image_size"] // preset_factor // preset["patch_size"]) ** 2
    factor, tokens = config.vae_downsampling_factor, config.num_patches
    grid = f"{config.latent_size} x {config.latent_size} latents and {tokens} tokens"
    keep = preset["image_size"] * factor // preset_factor
    if factor != preset_factor and config.image_size == preset["image_size"] and tokens != preset_tokens:
        other = "; or the preset 'lmd-base' (224 px, 49 tokens), made for 8x VAEs such as Stable Diffusion's" if (
            factor == 8 and name != "lmd-base") else ""
        raise ValueError(
            f"The preset {name!r} is made for a VAE that downsamples {preset_factor}x at {preset['image_size']} px "
            f"({preset_tokens} tokens). This VAE downsamples {factor}x, so {config.image_size} px images would give "
            f"{grid}. Pass image_size={keep} (train_lmd.py: --image_size {keep}) to keep {preset_tokens} tokens"
            f"{other}."
        )
    if tokens < preset_tokens:
        logger.warning(
            f"{config.image_size} px images with this VAE ({factor}x) and latent patch {config.patch_size} give "
            f"{grid}, fewer than the {preset_tokens} the preset {name!r} was made for; image_size={keep} keeps them."
        )

"""LMD: an MAE-style masked ViT that reconstructs masked patches of a frozen diffusers VAE's latents.

The classes follow transformers' ViTMAE:

- [`LMDModel`]: the frozen VAE and the ViT encoder. It hides patches only when asked (`bool_masked_pos`, or
  ViTMAE's `noise`); by default it encodes every patch, which is what features and fine-tuning want.
- [`LMDForPreTraining`]: `self.lmd` + the decoder + the masked latent loss: what the Trainer and `train_lmd.py`
  train. Inference (inpainting, progressive un-masking) lives in `reconstruction_lmd`, which calls these stages.
- [`LMDForImageClassification`]: `self.lmd` + a pooled linear head.

Reading order: outputs -> position embeddings -> attention, MLP, layer -> masking and embeddings -> decoder ->
input checks -> `LMDPreTrainedModel` -> the three models.

Shapes: B batch, C latent channels, h x w latent grid, p latent patch side, gh x gw = (h / p) x (w / p) patch grid,
L = gh * gw patches, K visible patches, D encoder width, E decoder width, H x W pixels. Masks are booleans `(B, L)`,
True where a patch is hidden.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Chunk, WeightConverter, WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_lmd import CLASSIFIER_POOLINGS, LMDConfig, check_choice
from .mask_schedulers import check_mask_ratio
from .vae_lmd import (
    VAE_CLASSES,
    build_vae,
    check_stored_vae_sha256,
    check_vae_weights_loaded,
    checkpoint_vae_weights,
    load_pretrained_vae,
    load_referenced_vae,
    read_vae_config,
    vae_decode,
    vae_encode,
    vae_reference,
    vae_weights_sha256,
)


logger = logging.get_logger(__name__)


# --- outputs -----------------------------------------------------------------------------------------------------


@dataclass
class LMDModelOutput(ModelOutput):
    r"""
    Output of [`LMDModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, 1 + K, D)`):
            Encoder output for the cls token and the visible patches (all `L` patches when nothing is hidden), the
            visible patches in row-major order.
        mask (`torch.FloatTensor` of shape `(B, L)`):
            1 where a patch was hidden from the encoder, 0 where it was visible (all zeros without masking).
        ids_restore (`torch.LongTensor` of shape `(B, L)`):
            Position of each patch in the encoder's sequence followed by the hidden patches (undoes the ordering).
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`):
            The unit-scaled VAE latents the encoder worked on.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and the output of every encoder layer, each `(B, 1 + K, D)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Attention weights of every encoder layer, each `(B, heads, 1 + K, 1 + K)`. Only eager attention computes
            them: with "sdpa" or flash kernels the tuple is empty and transformers warns, as for ViTMAE.
    """

    last_hidden_state: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LMDForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`LMDForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            MSE between predicted and target latent patches over the hidden patches (plus
            `config.visible_loss_weight` x the MSE over the visible ones).
        logits (`torch.FloatTensor` of shape `(B, L, p * p * C)`):
            Predicted latent patches (all of them).
        mask (`torch.FloatTensor` of shape `(B, L)`): 1 = hidden, 0 = visible.
        ids_restore (`torch.LongTensor` of shape `(B, L)`): as in [`LMDModelOutput`].
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`): the unit-scaled latents (the loss target).
        hidden_states, attentions: the encoder's, as in [`LMDModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# --- position embeddings ---------------------------------------------------------------------------------------


def sincos_position_embedding_2d(
    embed_dim: int, grid_size: tuple[int, int], base_grid_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings with a zero cls row first: `(1 + gh * gw, embed_dim)`, row-major.

    Half of the channels encode the row, half the column; each half is `[sin(pos * w), cos(pos * w)]` with
    frequencies `w_k = 10000^(-k / (embed_dim / 4))`. With `base_grid_size` (the grid the model was trained on),
    positions are stretched onto that grid: cell `i` of `n` sits at `(i + 0.5) * base / n - 0.5`. That is the exact,
    continuous version of resampling the trained embeddings (`interpolate_pos_encoding`), free for sin-cos.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for 2D sin-cos embeddings, got {embed_dim}.")
    base_grid_size = grid_size if base_grid_size is None else base_grid_size
    quarter = embed_dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(count: int, base: int) -> torch.Tensor:
        return (torch.arange(count, dtype=torch.float64) + 0.5) * (base / count) - 0.5

    rows, cols = torch.meshgrid(axis(grid_size[0], base_grid_size[0]), axis(grid_size[1], base_grid_size[1]),
                                indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, embed_dim / 2)
        angles = positions.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(rows), encode(cols)], dim=1)
    return torch.cat([torch.zeros(1, embed_dim, dtype=embedding.dtype), embedding], dim=0).float()


class LMDPositionEmbeddings(nn.Module):
    """The fixed sin-cos embeddings of one width on the trained patch grid, resampled for any other grid."""

    def __init__(self, width: int, grid_size: tuple[int, int]):
        super().__init__()
        self.width, self.grid_size = width, tuple(grid_size)
        # Fixed, not learned: recomputed from the config rather than stored in checkpoints.
        self.register_buffer("table", self.trained_table(), persistent=False)

    def trained_table(self) -> torch.Tensor:
        return sincos_position_embedding_2d(self.width, self.grid_size)[None]

    def forward(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """`(1, 1 + gh * gw, width)`: the stored table, or one resampled onto the trained grid. The table is float32
        however the model is loaded (`from_pretrained(dtype=...)` leaves buffers as they were built), so callers
        cast it to their tokens' dtype: bfloat16 or float16 LayerNorms refuse a float32 sum."""
        if tuple(grid_size) == self.grid_size:
            return self.table
        return sincos_position_embedding_2d(self.width, tuple(grid_size), self.grid_size)[None].to(self.table)


# --- transformer layers ----------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention: `(B, heads, N, d)` x 3 -> output `(B, N, heads, d)` and weights `(B, heads, N, N)`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class LMDSelfAttention(nn.Module):
    """Multi-head self-attention with transformers' ViT names (`query`, `key`, `value`: what PEFT's LoRA targets
    by default); the kernel is `config._attn_implementation` ("eager", "sdpa", flash, ...)."""

    def __init__(self, config: LMDConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.query = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)

    def forward(self, hidden_states: torch.Tensor,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        heads = (batch, length, self.num_heads, self.head_dim)
        # (B, N, D) -> (B, heads, N, head_dim) each
        query, key, value = (projection(hidden_states).view(heads).transpose(1, 2)
                             for projection in (self.query, self.key, self.value))
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        # The kwargs reach the kernel as in ViTMAE: "sdpa" warns on `output_attentions` and returns no weights.
        attended, weights = attention_interface(self, query, key, value, None, scaling=self.scaling, dropout=0.0,
                                                **kwargs)
        return attended.reshape(batch, length, width), weights


class LMDSelfOutput(nn.Module):
    """The attention's output projection (transformers' ViT: `attention.output.dense`)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


class LMDAttention(nn.Module):
    def __init__(self, config: LMDConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.attention = LMDSelfAttention(config, hidden_size, num_heads)
        self.output = LMDSelfOutput(hidden_size)

    def forward(self, hidden_states: torch.Tensor,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(hidden_states, **kwargs)
        return self.output(attended), weights


#: Checkpoints saved before the attention took ViT's names hold one fused `qkv` projection and a `proj`: loading
#: splits the first (exactly: its rows are the three projections, in order) and renames the second.
register_checkpoint_conversion_mapping("lmd", [
    WeightConverter(source_patterns="attention.qkv",
                    target_patterns=["attention.attention.query", "attention.attention.key", "attention.attention.value"],
                    operations=[Chunk(dim=0)]),
    WeightRenaming("attention.proj", "attention.output.dense"),
], overwrite=True)


class LMDMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class LMDLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LMDConfig, hidden_size: int, num_heads: int, intermediate_size: int):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = LMDAttention(config, hidden_size, num_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = LMDMLP(hidden_size, intermediate_size, config.hidden_act)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attended, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layernorm_after(hidden_states))


# --- masking and embeddings ------------------------------------------------------------------------------------


def num_visible_patches(mask_ratio: float, num_patches: int) -> int:
    """`int(L * (1 - mask_ratio))`, but at least one patch stays visible.

    The product is nudged by 1e-6 before truncation so that float rounding never drops a patch: a ratio of 0.55
    over 20 patches keeps 9 (20 * (1 - 0.55) is 8.999999999999998 in floating point).
    """
    check_mask_ratio(mask_ratio)
    return max(1, int(num_patches * (1 - mask_ratio) + 1e-6))


def random_patch_mask(noise: torch.Tensor, num_visible: int) -> torch.Tensor:
    """`(B, L)` bool, True where hidden: every patch but the `num_visible` with the lowest `noise` in each sample
    (MAE's per-sample random masking)."""
    return torch.argsort(torch.argsort(noise, dim=1), dim=1) >= num_visible


class LMDEmbeddings(nn.Module):
    """Latent patch embedding, cls token, fixed sin-cos position embeddings, and dropping the hidden patches."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = nn.Conv2d(
            config.latent_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = LMDPositionEmbeddings(config.hidden_size, (config.grid_size,) * 2)

    def forward(self, latents: torch.Tensor, hidden: torch.Tensor | None = None, num_visible: int | None = None):
        """`(B, C, h, w)` -> embeddings `(B, 1 + K, D)` (cls first, then the visible patches in row-major order) and
        ids_restore `(B, L)`. `hidden` `(B, L)` bool hides as many patches in every sample, `num_visible` = K
        staying (see `resolve_hidden_patches`); `None` keeps every patch."""
        tokens = self.patch_embeddings(latents)  # (B, D, gh, gw)
        positions = self.position_embeddings(tokens.shape[-2:]).to(tokens.dtype)
        tokens = tokens.flatten(2).transpose(1, 2) + positions[:, 1:, :]  # (B, L, D)
        batch, num_patches, width = tokens.shape
        if hidden is None:
            ids_restore = torch.arange(num_patches, device=tokens.device).expand(batch, -1)
        else:
            # Visible patches first, each group in row-major order; ids_restore puts every patch back in place.
            ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            ids_keep = ids_shuffle[:, :num_visible]
            tokens = torch.gather(tokens, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, width))
        cls_tokens = (self.cls_token + positions[:, :1, :]).expand(batch, -1, -1)
        return torch.cat([cls_tokens, tokens], dim=1), ids_restore


UNEQUAL_MASKS_MESSAGE = ("bool_masked_pos must hide as many patches in every sample of a batch (the encoder keeps "
                         "as many visible patches of each), and with `num_visible` exactly L - num_visible; for "
                         "masks of different sizes, use `modeling_lmd.reconstruct`, which runs them one by one.")


def resolve_hidden_patches(
    batch: int, num_patches: int, device, bool_masked_pos: torch.Tensor | None = None,
    noise: torch.Tensor | None = None, num_visible: int | None = None, mask_ratio: float | None = None,
) -> tuple[torch.Tensor | None, int | None]:
    """The one place the masking inputs meet: `(B, L)` bool, True where a patch is hidden, and K, how many stay.

    - `bool_masked_pos` (transformers' name and meaning): as given. Every sample must hide as many, or a hidden
      patch would reach the encoder (K patches are kept from every sample); K is `num_visible` when given (the
      Trainer and `reconstruct` pass it: then the counts are checked on the device, `torch._assert_async`, so the
      step never waits for the host), else counted (one host read, which also checks the counts).
    - `noise` `(B, L)` (ViTMAE's): random masking, the K lowest stay visible, K = `num_visible` or
      `int(L * (1 - mask_ratio))`. A visible count passed as an int keeps one compiled graph across a schedule.
    - neither: with a `mask_ratio` (pre-training masks by `config.mask_ratio`), noise drawn afresh; without, no
      masking (`(None, None)`).
    """
    for name, given in (("bool_masked_pos", bool_masked_pos), ("noise", noise)):
        if given is not None and tuple(given.shape) != (batch, num_patches):
            raise ValueError(f"Expected {name} of shape ({batch}, {num_patches}), got {tuple(given.shape)}.")
    if bool_masked_pos is not None:
        hidden = bool_masked_pos.to(device=device, dtype=torch.bool)
        counts = hidden.sum(dim=1)  # (B,) hidden patches of each sample
        if num_visible is not None:
            torch._assert_async(torch.all(counts == num_patches - num_visible), UNEQUAL_MASKS_MESSAGE)
            return hidden, num_visible
        fewest, most = torch.stack([counts.min(), counts.max()]).tolist()
        if fewest != most:
            raise ValueError(f"{UNEQUAL_MASKS_MESSAGE} Got between {fewest} and {most} hidden patches per sample.")
        return hidden, num_patches - fewest
    if noise is None and num_visible is None and mask_ratio is None:
        return None, None
    num_visible = num_visible_patches(mask_ratio, num_patches) if num_visible is None else num_visible
    noise = torch.rand(batch, num_patches, device=device) if noise is None else noise.to(device)
    return random_patch_mask(noise, num_visible), num_visible


class LMDFillEmbedding(nn.Linear):
    """With `config.harmonic_fill`: what the decoder reads from the fill's latent at a hidden patch, added to the
    mask token there. Starts at zero."""


class LMDFillCorrection(nn.Linear):
    """With `config.harmonic_fill`, the decoder's output head: the correction added to the fill's latent patches.
    Starts at zero, so a new model predicts the fill itself (about classical inpainting) and learns what to change."""


class LMDDecoder(nn.Module):
    """Lightweight decoder: fills hidden positions with a learned mask token and predicts every latent patch; with
    `config.harmonic_fill`, as a correction to the fill's latents, which it also reads at the hidden positions."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        self.config = config
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        patch = config.patch_size**2 * config.latent_channels
        harmonic = config.harmonic_fill
        self.fill_embed = LMDFillEmbedding(patch, config.decoder_hidden_size) if harmonic else None
        self.position_embeddings = LMDPositionEmbeddings(config.decoder_hidden_size, (config.grid_size,) * 2)
        self.decoder_layers = nn.ModuleList(
            LMDLayer(config, config.decoder_hidden_size, config.decoder_num_attention_heads,
                     config.decoder_intermediate_size)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = None if harmonic else nn.Linear(config.decoder_hidden_size, patch)
        self.fill_correction = LMDFillCorrection(config.decoder_hidden_size, patch) if harmonic else None

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor, grid_size: tuple[int, int],
                fill: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output `(B, 1 + K, D)` -> predicted patches `(B, L, p * p * C)` on a `grid_size` patch grid.
        `fill` `(B, L, p * p * C)`, needed with `config.harmonic_fill`: the filled image's latent patches."""
        tokens = self.decoder_embed(encoded)  # (B, 1 + K, E)
        batch, num_patches = ids_restore.shape
        num_visible = tokens.shape[1] - 1
        mask_tokens = self.mask_token.expand(batch, num_patches - num_visible, -1)
        ordered = torch.cat([tokens[:, 1:, :], mask_tokens], dim=1)  # (B, L, E), visible first
        index = ids_restore.unsqueeze(-1).expand(-1, -1, ordered.shape[-1])
        restored = torch.gather(ordered, dim=1, index=index)  # (B, L, E), original patch order
        if self.fill_embed is not None:
            if fill is None:
                raise ValueError("A `harmonic_fill` decoder predicts a correction to a fill: pass `fill`.")
            fill = fill.to(restored.dtype)
            hidden = (ids_restore >= num_visible).unsqueeze(-1).to(restored.dtype)  # (B, L, 1)
            restored = restored + hidden * self.fill_embed(fill)
        hidden_states = torch.cat([tokens[:, :1, :], restored], dim=1)
        hidden_states = hidden_states + self.position_embeddings(grid_size).to(hidden_states.dtype)
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.decoder_norm(hidden_states)[:, 1:, :]  # drop the cls token
        if self.fill_correction is None:
            return self.decoder_pred(hidden_states)
        return fill + self.fill_correction(hidden_states)


# --- input checks ----------------------------------------------------------------------------------------------


def check_input_values(name: str, values: torch.Tensor, pixel_range: bool) -> None:
    """Refuse non-finite inputs (naming the count) and, for images, values outside about [-1, 1]: the two silent
    ways to a useless loss (uint8 or [0, 255] pixels give a loss about 5x too high; one NaN makes a batch's NaN).
    A host sync, so it runs at the door, never inside a model's forward: `reconstruct` (and so the pipeline) checks
    what it is given, the Trainer its first batches, and `LMDImageProcessor` makes values in range."""
    if values.is_floating_point():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf) in a tensor of shape "
                             f"{tuple(values.shape)}.")
    if pixel_range:
        low, high = float(values.min()), float(values.max())
        if low < -1.05 or high > 1.05:
            raise ValueError(f"images must be in [-1, 1]; use LMDImageProcessor (got pixel_values in "
                             f"[{low:g}, {high:g}]).")


def check_inputs(config: LMDConfig, pixel_values: torch.Tensor | None, latents: torch.Tensor | None,
                 interpolate_pos_encoding: bool = False) -> None:
    """Exactly one of images `(B, 3, H, W)` (floats) or latents `(B, C, h, w)`, of a shape the model takes (its own
    size, or any multiple of a patch with `interpolate_pos_encoding`). Shapes and dtypes only, which the host knows
    without waiting for the device (values: `check_input_values`). Every error says what was expected and what
    came."""
    if (pixel_values is None) == (latents is None):
        raise ValueError("Pass exactly one of `pixel_values` (images in [-1, 1]) or `latents` (precomputed).")
    if pixel_values is not None:
        name, values, channels = "pixel_values", pixel_values, config.vae_config.get("in_channels", 3)
        size, cell, unit = config.image_size, config.patch_pixels, "Image"
        if not values.is_floating_point():
            raise ValueError(f"images must be in [-1, 1]; use LMDImageProcessor (got pixel_values of dtype "
                             f"{values.dtype}).")
    else:
        name, values, channels = "latents", latents, config.latent_channels
        size, cell, unit = config.latent_size, config.patch_size, "Latent"
    expected = f"Expected {name} of shape (batch, {channels}, {size}, {size})"
    if values.ndim != 4 or values.shape[1] != channels:
        raise ValueError(f"{expected}, got {tuple(values.shape)}.")
    height, width = values.shape[-2:]
    if not interpolate_pos_encoding and (height, width) != (size, size):
        raise ValueError(f"{expected}, got {tuple(values.shape)}; resize images with LMDImageProcessor, or pass "
                         "interpolate_pos_encoding=True to run at another resolution.")
    if height % cell or width % cell:
        raise ValueError(f"{unit} sides must be multiples of {cell} (the latent patch"
                         f"{' in pixels' if unit == 'Image' else ''}), got {height}x{width}.")


# --- the models ------------------------------------------------------------------------------------------------


class LMDPreTrainedModel(PreTrainedModel):
    """Weight initialisation, a constructor around a pretrained VAE, and checkpoints with or without their VAE."""

    config_class = LMDConfig
    config: LMDConfig
    base_model_prefix = "lmd"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["LMDLayer"]
    _can_record_outputs = {"hidden_states": LMDLayer, "attentions": LMDSelfAttention}
    # `get_input_embeddings()` is `embeddings.patch_embeddings`, as ViTMAE's: what PEFT's and gradient checkpointing's
    # `enable_input_require_grads` hooks, so that gradients reach adapters behind frozen layers.
    _input_embed_layer = "patch_embeddings"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # A design choice, not an oversight: every Linear and the patch Conv2d get Xavier-uniform weights and zero
        # biases, as the original MAE initialises its Linears (after the JAX ViT), since this is MAE's pre-training
        # recipe on latents, rather than transformers' normal(0, initializer_range) (which ViTMAE keeps for all but
        # its patch projection). `initializer_range` keeps MAE's one use of it: the std of the cls and mask tokens.
        if getattr(module, "_lmd_vae_module", False):
            # A VAE built from a config keeps PyTorch's default init; pretrained VAEs are loaded over it.
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        elif isinstance(module, (LMDFillEmbedding, LMDFillCorrection)):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LMDPositionEmbeddings):
            init.copy_(module.table, module.trained_table())
        elif isinstance(module, LMDEmbeddings):
            init.normal_(module.cls_token, std=self.config.initializer_range)
        elif isinstance(module, LMDDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)

    @classmethod
    def from_vae(cls, vae, subfolder: str | None = None, config: LMDConfig | None = None, **config_kwargs):
        """A fresh model around a pretrained diffusers VAE, whose weights are copied in bit-exact.

        Args:
            vae: an `AutoencoderKL` / `VQModel` / `AutoencoderTiny` instance, a local diffusers folder, or a Hub id
                (recorded as `config.vae_name_or_path`, for checkpoints that leave the VAE out).
            subfolder: where the VAE sits inside the folder or repo (e.g. `"vae"` in a Stable Diffusion repo).
            config: an `LMDConfig` for everything but the VAE; or
            config_kwargs: `LMDConfig` fields (and `preset="lmd-small"` to start from a named preset; a preset that
                does not fit the VAE is refused before any weight is read, see `check_preset_fits_vae`).
        """
        is_path = isinstance(vae, (str, bytes)) or hasattr(vae, "__fspath__")
        if is_path:
            vae_type, vae_config = read_vae_config(os.fspath(vae), subfolder=subfolder)
        else:
            vae_type, vae_config = type(vae).__name__, dict(vae.config)
        check_choice("vae_type", vae_type, tuple(VAE_CLASSES))
        vae_fields = {"vae_type": vae_type, "vae_config": vae_config, **(vae_reference(vae, subfolder) if is_path else {})}
        if config is not None:
            config = LMDConfig.from_dict({**config.to_dict(), **vae_fields, **config_kwargs})
        else:
            preset = config_kwargs.pop("preset", None)
            config_kwargs = {**vae_fields, **config_kwargs}
            config = LMDConfig.from_preset(preset, **config_kwargs) if preset else LMDConfig(**config_kwargs)
        # The config is settled (and a preset that does not fit refused) before any weight is read.
        if is_path:
            vae = load_pretrained_vae(os.fspath(vae), subfolder=subfolder)
        config.vae_sha256 = vae_weights_sha256(vae)
        model = cls(config)
        # Copy after construction: `post_init` would otherwise re-initialise the VAE's weights.
        model.base_model.vae.load_state_dict(vae.state_dict())
        model.base_model.vae_is_pretrained = True
        return model

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained` in this code's format: the conversion mapping above only reads older
        checkpoints (transformers would otherwise write the fused `qkv` back)."""
        # A design choice: transformers defaults to `save_original_format=True`, which runs the conversion mapping
        # backwards and writes the format of the oldest checkpoints (one fused `qkv`, a `proj`). That format exists
        # only for those checkpoints; this code, PEFT adapters (which name `query` / `value`) and anyone reading the
        # safetensors expect the names of the modules, so checkpoints are written with them. `True` is still
        # accepted, for a checkpoint an older copy of this code must read.
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, which loads the VAE's weights or fails: a checkpoint that holds its VAE
        (`config.vae_in_checkpoint`) must hold all of it, as `config.vae_sha256` names it where the config has one
        (`vae_lmd.check_stored_vae_sha256`); one saved without it gets them from `config.vae_name_or_path`."""
        # The loading info says which of the VAE's weights the checkpoint lacked; the caller gets it only if asked.
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *args,
                                                      **{**kwargs, "output_loading_info": True})
        download = {key: kwargs[key] for key in ("cache_dir", "token", "local_files_only") if key in kwargs}
        vae = model.base_model.vae
        if model.config.vae_in_checkpoint:
            vae_prefix = next(name for name, module in model.named_modules() if module is vae) + "."
            check_vae_weights_loaded(loading_info, vae_prefix, len(vae.state_dict()),
                                     pretrained_model_name_or_path)
            if model.config.vae_sha256:
                # The hash is of the weights as stored, whatever dtype they are loaded in; a `state_dict=` is what
                # was loaded instead of the files.
                stored = None if kwargs.get("state_dict") is not None else checkpoint_vae_weights(
                    pretrained_model_name_or_path, (f"{cls.base_model_prefix}.vae.", "vae."), **download,
                    **{key: kwargs[key] for key in ("subfolder", "revision", "variant") if key in kwargs})
                check_stored_vae_sha256(vae.state_dict() if stored is None else stored, model.config.vae_sha256,
                                        pretrained_model_name_or_path)
        else:
            vae.load_state_dict(load_referenced_vae(model.config, **download).state_dict())
        model.base_model.vae_is_pretrained = True
        return (model, loading_info) if kwargs.get("output_loading_info") else model


def none_return_dict_follows_config(forward):
    """`return_dict=None` means `config.return_dict`, as `can_return_tuple` (the other classes') reads it; transformers
    5.25's `capture_outputs` alone takes a passed `None` for True, so it is dropped before it gets there."""

    @wraps(forward)
    def wrapper(self, *args, **kwargs):
        if "return_dict" in kwargs and kwargs["return_dict"] is None:
            del kwargs["return_dict"]
        return forward(self, *args, **kwargs)

    return wrapper


class LMDModel(LMDPreTrainedModel):
    """The frozen VAE and the LMD ViT encoder: images (or latents) -> latent patch tokens.

    Without a mask every patch is encoded in order; with `bool_masked_pos` or `noise`, patches are hidden
    first, as in pre-training.

    Example:

    ```python
    >>> import torch
    >>> from modeling_lmd import LMDConfig, LMDModel
    >>> model = LMDModel(LMDConfig.from_preset("lmd-tiny"))
    >>> out = model(pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1)
    >>> out.last_hidden_state.shape  # cls token + 16 patch tokens
    torch.Size([2, 17, 32])
    ```
    """

    # A pre-training checkpoint holds a decoder too; the base model does not need it.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: LMDConfig):
        super().__init__(config)
        self.vae = build_vae(config)
        self.vae_is_pretrained = False  # set by `from_vae` / `from_pretrained`, which load its weights
        self.embeddings = LMDEmbeddings(config)
        self.layers = nn.ModuleList(
            LMDLayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size)
            for _ in range(config.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if not config.vae_in_checkpoint:  # the VAE's weights come from `config.vae_name_or_path` instead
            self._keys_to_ignore_on_save = {f"vae.{name}" for name in self.vae.state_dict()}
            self._keys_to_ignore_on_load_missing = [r"(^|\.)vae\."]
        self.post_init()

    def train(self, mode: bool = True):
        """Switch the ViT to train/eval mode; the VAE always stays frozen and in eval mode."""
        super().train(mode)
        self.vae.eval()
        # Loading replaces parameters with fresh (trainable) ones, so freezing is re-applied here:
        # `from_pretrained` ends with `model.eval()`.
        self.vae.requires_grad_(False)
        return self

    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1] `(B, 3, H, W)` -> unit-scaled latents `(B, C, h, w)` (see `vae_lmd.vae_encode`)."""
        check_inputs(self.config, pixel_values, None, interpolate_pos_encoding)
        self.warn_if_random_vae()
        return vae_encode(self.vae, pixel_values)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-scaled latents `(B, C, h, w)` -> pixels `(B, 3, H, W)`, nominally in [-1, 1] (not clamped)."""
        check_inputs(self.config, None, latents, interpolate_pos_encoding=True)
        self.warn_if_random_vae()
        return vae_decode(self.vae, latents)

    def warn_if_random_vae(self) -> None:
        # Eager calls only: a warning inside a compiled graph would break it in two.
        if not self.vae_is_pretrained and not torch.compiler.is_compiling():
            logger.warning_once(
                "The VAE of this LMD model has random weights: it was built from `config.vae_config` and never "
                "loaded. Build models with `from_vae(...)` or `from_pretrained(...)`; latents of a random VAE mean "
                "nothing.")

    @none_return_dict_follows_config
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        num_visible: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LMDModelOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]): images, encoded by the frozen VAE on the fly.
            latents (`(B, C, h, w)`): precomputed unit-scaled latents instead of images (skips the VAE).
            bool_masked_pos (`(B, L)` bool, *optional*): True where a patch is hidden from the encoder; every sample
                hides as many.
            noise (`(B, L)`, *optional*): instead, hide `config.mask_ratio` of the patches at random, the lowest-noise
                ones staying visible (ViTMAE's masking). Without either, every patch is encoded.
            num_visible (`int`, *optional*): how many patches stay visible, when the caller knows it (the Trainer and
                `reconstruct`; see `resolve_hidden_patches`).
            interpolate_pos_encoding (`bool`, defaults to `False`): run at a resolution other than
                `config.image_size`, with the position embeddings resampled onto the trained grid.
            kwargs ([`~utils.TransformersKwargs`]): transformers' forward arguments, passed on to every layer, e.g.
                `output_hidden_states` (the embeddings and every layer's output), `output_attentions` (every
                layer's attention weights; eager attention computes them, "sdpa" warns and gives none, as in
                ViTMAE); and `return_dict`, which the decorators read (`None`: `config.return_dict`).
        """
        if "mask_ratio" in kwargs or "patch_mask" in kwargs:
            raise TypeError("The masking input is `bool_masked_pos` (True = hidden), or `noise` with "
                            "`config.mask_ratio` (or `num_visible`); for a ratio per call, use "
                            "`modeling_lmd.reconstruct(model, images, mask_ratio=...)`.")
        check_inputs(self.config, pixel_values, latents, interpolate_pos_encoding)
        if latents is None:
            self.warn_if_random_vae()
            latents = vae_encode(self.vae, pixel_values)
        latents = latents.to(self.embeddings.patch_embeddings.weight.dtype)
        grid = (latents.shape[-2] // self.config.patch_size, latents.shape[-1] // self.config.patch_size)
        hidden, num_visible = resolve_hidden_patches(
            latents.shape[0], grid[0] * grid[1], latents.device, bool_masked_pos, noise, num_visible,
            self.config.mask_ratio if noise is not None else None)
        hidden_states, ids_restore = self.embeddings(latents, hidden, num_visible)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        mask = torch.zeros_like(ids_restore, dtype=latents.dtype) if hidden is None else hidden.to(latents.dtype)
        return LMDModelOutput(last_hidden_state=self.layernorm(hidden_states), mask=mask, ids_restore=ids_restore,
                              latents=latents)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        pooling: str = "mean",
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """Image embeddings from the unmasked encoder, for retrieval or a linear probe, in transformers 5's form
        (CLIP's, SigLIP's): `pooler_output` `(B, D)` holds the features, `last_hidden_state` `(B, 1 + L, D)` the
        encoder output they pool; a tuple in that order with `return_dict=False` (or `config.return_dict=False`).

        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            pooling: `"mean"` over the patch tokens (default) or `"cls"` (the cls token).
            kwargs: as in `forward` (`output_hidden_states`, `output_attentions`, `return_dict`).

        Example:

        ```python
        >>> features = model.get_image_features(pixel_values=images).pooler_output  # (B, D)
        ```
        """
        check_choice("pooling", pooling, CLASSIFIER_POOLINGS)
        encoded = self(pixel_values=pixel_values, latents=latents, interpolate_pos_encoding=interpolate_pos_encoding,
                       return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=encoded.last_hidden_state,
            pooler_output=pool_tokens(encoded.last_hidden_state, pooling),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


def pool_tokens(encoded: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Encoder output `(B, 1 + L, D)` (cls token first) -> `(B, D)`: mean over patch tokens, or the cls token."""
    check_choice("pooling", pooling, CLASSIFIER_POOLINGS)
    return encoded[:, 1:, :].mean(dim=1) if pooling == "mean" else encoded[:, 0, :]


class LMDForPreTraining(LMDPreTrainedModel):
    """LMD pre-training: hide a share of latent patches, encode the rest, and reconstruct the hidden ones.

    Stages, each a method: `self.lmd` (VAE encode, masking, encoder) -> `forward_decoder` -> `forward_loss`.
    `reconstruction_lmd.reconstruct` runs them for inference and decodes the result.

    Example:

    ```python
    >>> import torch
    >>> from modeling_lmd import LMDConfig, LMDForPreTraining
    >>> model = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    >>> out = model(pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1)  # hides config.mask_ratio of the patches
    >>> out.loss.backward()
    ```
    """

    def __init__(self, config: LMDConfig):
        super().__init__(config)
        self.lmd = LMDModel(config)
        self.decoder = LMDDecoder(config)
        self.post_init()

    # --- patches and their pixels ----------------------------------------------------------------------

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, p * p * C), patches in row-major order, each flattened as (p, p, C)."""
        p = self.config.patch_size
        batch, channels, height, width = latents.shape
        patches = latents.reshape(batch, channels, height // p, p, width // p, p)
        patches = torch.einsum("bchpwq->bhwpqc", patches)
        return patches.reshape(batch, (height // p) * (width // p), p * p * channels)

    def unpatchify(self, patches: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, L, p * p * C) -> (B, C, h, w) on a `grid_size` patch grid (default: the config's); inverts `patchify`."""
        p, channels = self.config.patch_size, self.config.latent_channels
        grid_h, grid_w = grid_size if grid_size is not None else (self.config.grid_size,) * 2
        patches = patches.reshape(patches.shape[0], grid_h, grid_w, p, p, channels)
        latents = torch.einsum("bhwpqc->bchpwq", patches)
        return latents.reshape(patches.shape[0], channels, grid_h * p, grid_w * p)

    def patch_grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2] // self.config.patch_size, latents.shape[-1] // self.config.patch_size

    def pixels_of_patches(self, mask: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """`(B, L)` patch mask -> `(B, 1, H, W)` pixel mask of its dtype: a latent patch covers `patch_pixels` a side."""
        return spread_patch_mask(mask, image_size, self.config.patch_pixels)

    def patches_of_pixels(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """`(B, H, W)` bool pixel mask -> `(B, L)` bool: a patch is hidden if any of its pixels is (the inverse of
        `pixels_of_patches` on whole patches)."""
        cell = self.config.patch_pixels
        batch, height, width = pixel_mask.shape
        if height % cell or width % cell:
            raise ValueError(f"A pixel mask must have sides that are multiples of {cell}, got {height}x{width}.")
        cells = pixel_mask.reshape(batch, height // cell, cell, width // cell, cell).any(dim=4).any(dim=2)
        return cells.reshape(batch, -1)

    def encode_leak_free(self, pixel_values: torch.Tensor, hidden: torch.Tensor,
                         interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Latents of the images with their `hidden` `(B, L)` patches painted over in pixel space (the visible mean
        colour, or with `config.harmonic_fill` a smooth fill from the visible pixels), so that no visible latent
        carries anything of a hidden pixel through the VAE's receptive field."""
        pixel_mask = self.pixels_of_patches(hidden.to(pixel_values.dtype), pixel_values.shape[-2:])
        paint = harmonic_fill if self.config.harmonic_fill else paint_hidden_pixels
        return self.lmd.encode_images(paint(pixel_values, pixel_mask), interpolate_pos_encoding)

    # --- the stages ------------------------------------------------------------------------------------

    def forward_decoder(self, encoded: torch.Tensor, ids_restore: torch.Tensor, grid_size,
                        fill: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + K, D) -> predicted patches (B, L, p * p * C); `fill` (B, L, p * p * C), for a `harmonic_fill`
        decoder: the filled image's latent patches (`encode_leak_free`'s, or `latent_fill`'s)."""
        return self.decoder(encoded, ids_restore, grid_size, fill)

    def latent_fill(self, latents: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents with `hidden` (B, L) patches -> (B, L, p * p * C): the hidden patches filled by
        `harmonic_fill` in latent space from the visible ones, for a `harmonic_fill` model given latents, not pixels."""
        latent_mask = spread_patch_mask(hidden.to(latents.dtype), latents.shape[-2:], self.config.patch_size)
        return self.patchify(harmonic_fill(latents, latent_mask))

    def loss_target(self, latents: torch.Tensor) -> torch.Tensor:
        """The patches the decoder learns to predict: latents, per-patch normalised with `norm_latent_loss`."""
        target = self.patchify(latents)
        if self.config.norm_latent_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(
        self, latents: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor, per_sample: bool = False
    ) -> torch.Tensor:
        """Mean squared error over hidden patches (plus `config.visible_loss_weight` x the mean over visible ones):
        `()`, or `(B,)` with `per_sample` (0 where none is hidden)."""
        per_patch = ((predictions.float() - self.loss_target(latents).float()) ** 2).mean(dim=-1)  # (B, L)
        dims = 1 if per_sample else (0, 1)

        def masked_mean(weights):
            return (per_patch * weights).sum(dim=dims) / weights.sum(dim=dims).clamp(min=1.0)

        loss = masked_mean(mask)
        if self.config.visible_loss_weight:
            loss = loss + self.config.visible_loss_weight * masked_mean(1 - mask)
        return loss

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        num_visible: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LMDForPreTrainingOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            bool_masked_pos, noise, num_visible: which patches to hide, as in [`LMDModel`]; without either mask
                input, a random `config.mask_ratio` of them (the Trainer passes the scheduled mask every step).
            interpolate_pos_encoding, kwargs (`output_attentions`, `output_hidden_states`, ...): as in [`LMDModel`].
        """
        check_inputs(self.config, pixel_values, latents, interpolate_pos_encoding)
        reference = pixel_values if latents is None else latents
        cell = self.config.patch_pixels if latents is None else self.config.patch_size
        hidden, num_visible = resolve_hidden_patches(
            reference.shape[0], (reference.shape[-2] // cell) * (reference.shape[-1] // cell), reference.device,
            bool_masked_pos, noise, num_visible, self.config.mask_ratio)
        target = fill = None
        if self.config.leak_free_training and pixel_values is not None:
            # Hide the patches in pixel space first: the encoder gets the latents of the painted image, the loss
            # compares with the latents of the real one.
            target = self.lmd.encode_images(pixel_values, interpolate_pos_encoding)
            latents, pixel_values = self.encode_leak_free(pixel_values, hidden, interpolate_pos_encoding), None
            fill = self.patchify(latents)
        encoded = self.lmd(pixel_values=pixel_values, latents=latents, bool_masked_pos=hidden, num_visible=num_visible,
                           interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs)
        if self.config.harmonic_fill and fill is None:
            fill = self.latent_fill(encoded.latents, encoded.mask)
        logits = self.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, self.patch_grid(encoded.latents),
                                      fill)
        target = encoded.latents if target is None else target.to(encoded.latents.dtype)
        return LMDForPreTrainingOutput(
            loss=self.forward_loss(target, logits, encoded.mask),
            logits=logits,
            mask=encoded.mask,
            ids_restore=encoded.ids_restore,
            latents=target,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


def spread_patch_mask(mask: torch.Tensor, size: tuple[int, int], cell: int) -> torch.Tensor:
    """`(B, L)` patch mask -> `(B, 1, H, W)` of its dtype on a grid of `size`, each patch covering `cell` a side."""
    mask = mask.reshape(-1, 1, size[0] // cell, size[1] // cell)
    return mask.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


#: Red-black sweeps of `harmonic_fill` at each level of its pyramid, over-relaxed by `HARMONIC_OVERRELAXATION`: within
#: 0.02 dB of the converged fill on 64 px tiles with 8 px patches hidden. 50 plain Jacobi sweeps take 0.7x the time
#: but stay 0.14 dB under it at mask ratio 0.75 on the unseen photographs (0.27 dB on the validation tiles), and a
#: model decodes its correction on top of this fill, so the fill's own error stays in its output.
HARMONIC_SWEEPS = 25
HARMONIC_OVERRELAXATION = 1.85


def neighbour_mean(image: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` -> the mean of each pixel's four neighbours, the border mirroring its neighbours (replicate
    padding): Laplace's equation holds where a pixel equals it."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return 0.25 * (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:])


def relax_laplace(image: torch.Tensor, unknown: torch.Tensor, sweeps: int) -> torch.Tensor:
    """`sweeps` steps of successive over-relaxation for Laplace's equation on `image` `(B, 3, H, W)`: each `unknown`
    pixel (mask 1) moves `HARMONIC_OVERRELAXATION` times the way to the mean of its four neighbours, the pixels of
    one checkerboard colour first and then the other, which reads their fresh values (red-black Gauss-Seidel);
    the other pixels keep their values."""
    rows = torch.arange(image.shape[-2], device=image.device).view(-1, 1)
    cols = torch.arange(image.shape[-1], device=image.device).view(1, -1)
    red = ((rows + cols) % 2 == 0).to(image.dtype)
    steps = (HARMONIC_OVERRELAXATION * unknown * red, HARMONIC_OVERRELAXATION * unknown * (1.0 - red))
    for _ in range(sweeps):
        for step in steps:
            image = image + step * (neighbour_mean(image) - image)
    return image


def harmonic_fill(pixel_values: torch.Tensor, pixel_mask: torch.Tensor, sweeps: int = HARMONIC_SWEEPS) -> torch.Tensor:
    """Hidden pixels (mask 1) filled smoothly from the visible ones, `(B, 3, H, W)`: Laplace's equation (each hidden
    pixel the mean of its neighbours) solved coarse to fine, about what OpenCV's Navier-Stokes or scikit-image's
    biharmonic inpainting give, in tensor ops on the model's device. Nothing under the mask is read.

    The image is halved until one pixel is left; at each level, from the coarsest up, the cells that are wholly
    visible are kept, the others start from the coarser level's solution and relax for `sweeps` steps. The coarse
    levels carry colour across large holes, which sweeps at full resolution alone would take thousands of steps to.
    """
    visible = 1.0 - pixel_mask.to(pixel_values.dtype)  # (B, 1, H, W)
    levels = [(pixel_values * visible, visible)]  # (visible-weighted sum / cell, visible share / cell)
    while min(levels[-1][1].shape[-2:]) > 1:
        values, weights = levels[-1]
        levels.append((F.avg_pool2d(values, 2, ceil_mode=True), F.avg_pool2d(weights, 2, ceil_mode=True)))
    values, weights = levels[-1]
    filled = values.sum(dim=(2, 3), keepdim=True) / weights.sum(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    for values, weights in reversed(levels[:-1]):
        start = F.interpolate(filled, size=values.shape[-2:], mode="bilinear", align_corners=False)
        unknown = (weights < 1.0 - 1e-3).to(values.dtype)
        known = values / weights.clamp(min=1e-6) * (1.0 - unknown)
        filled = relax_laplace(known + start * unknown, unknown, sweeps)
    return filled


def paint_hidden_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Hidden pixels (mask 1) painted with the mean colour of the image's visible pixels; `(B, 3, H, W)`.

    This is both the floor every fill is compared with and what leak-free encoding feeds the VAE, so that
    nothing under the mask can reach the output. An image with no visible pixel gets mid-grey (0).
    """
    visible = 1.0 - pixel_mask.to(pixel_values.dtype)  # (B, 1, H, W)
    count = visible.sum(dim=(2, 3), keepdim=True)
    mean_colour = (pixel_values * visible).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1.0)
    return pixel_values * visible + mean_colour * (1.0 - visible)


class LMDForImageClassification(LMDPreTrainedModel):
    """The LMD encoder, without masking, on the frozen VAE's latents, with a pooled linear classification head.

    `LMDForImageClassification.from_pretrained(lmd_checkpoint, num_labels=10)` loads the pre-trained encoder and
    VAE (`lmd.*`) and initialises only the head (`fc_norm`, `classifier`); a pre-training decoder is ignored. The
    pooling is `config.classifier_pooling` (`"mean"` over patch tokens, or `"cls"`).

    Example:

    ```python
    >>> from modeling_lmd import LMDForImageClassification
    >>> model = LMDForImageClassification.from_pretrained("path/to/lmd-checkpoint", num_labels=10)
    >>> out = model(pixel_values=images, labels=labels)  # out.loss, out.logits (B, 10)
    ```
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: LMDConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.lmd = LMDModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            labels (`(B,)` or `(B, num_labels)`): the loss follows `config.problem_type`, as in ViT: mean squared
                error for `"regression"`, cross-entropy over class indices `(B,)` for
                `"single_label_classification"`, binary cross-entropy over `(B, num_labels)` 0/1 targets for
                `"multi_label_classification"`. Unset, it is chosen on the first batch (regression when
                `num_labels == 1`, single-label for integer labels, multi-label otherwise) and recorded in the config.
            interpolate_pos_encoding, kwargs (`output_attentions`, `output_hidden_states`, ...): as in [`LMDModel`].
        """
        encoded = self.lmd(pixel_values=pixel_values, latents=latents,
                           interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs)
        logits = self.classifier(self.fc_norm(pool_tokens(encoded.last_hidden_state, self.config.classifier_pooling)))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            problem_type = self.config.problem_type
            if labels.is_floating_point() or problem_type == "regression" or (
                    problem_type is None and self.num_labels == 1):
                # Regression and multi-label targets in the logits' dtype: integer regression targets, or float32
                # targets of a half-precision model, are otherwise refused by the MSE and BCE losses.
                labels = labels.to(logits.dtype)
            # transformers' `ForSequenceClassificationLoss` (ViT's, by the class name's "ForImageClassification").
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                     attentions=encoded.attentions)


__all__ = [
    "LMDForImageClassification",
    "LMDForPreTraining",
    "LMDForPreTrainingOutput",
    "LMDModel",
    "LMDModelOutput",
    "LMDPreTrainedModel",
    "check_input_values",
    "check_inputs",
    "harmonic_fill",
    "num_visible_patches",
    "paint_hidden_pixels",
    "pool_tokens",
    "random_patch_mask",
    "resolve_hidden_patches",
]

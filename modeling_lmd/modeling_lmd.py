"""LMD: an MAE-style masked ViT that reconstructs masked patches of a frozen diffusers VAE's latents.

The classes follow transformers' ViTMAE:

- [`LMDModel`]: the frozen VAE and the ViT encoder. It masks only when asked (`mask_ratio` or `noise`); by default
  it encodes every patch, which is what features and fine-tuning want.
- [`LMDForPreTraining`]: `self.lmd` + the decoder + the masked latent loss + `reconstruct` (inpainting, progressive
  un-masking). What the Trainer, `train_lmd.py` and the `"lmd-reconstruction"` pipeline use.
- [`LMDForImageClassification`]: `self.lmd` + a pooled linear head.

Reading order: outputs -> position embeddings -> attention, MLP, layer -> embeddings (patches, masking) -> decoder
-> pixel helpers (mean-colour fill, feathering) -> `LMDPreTrainedModel` -> the three models.

Shapes: B batch, C latent channels, h x w latent grid, p latent patch side, gh x gw = (h / p) x (w / p) patch grid,
L = gh * gw patches, K visible patches, D encoder width, E decoder width, H x W pixels.
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny, VQModel
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_lmd import LMDConfig


VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel, "AutoencoderTiny": AutoencoderTiny}
REVEAL_ORDERS = ("random", "nearest")


# --- outputs -----------------------------------------------------------------------------------------------------


@dataclass
class LMDModelOutput(ModelOutput):
    r"""
    Output of [`LMDModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, 1 + K, D)`):
            Encoder output for the cls token and the visible patches (all `L` patches when nothing is masked).
        mask (`torch.FloatTensor` of shape `(B, L)`):
            1 where a patch was hidden from the encoder, 0 where it was visible (all zeros without masking).
        ids_restore (`torch.LongTensor` of shape `(B, L)`):
            Position of each original patch in the shuffled sequence (undoes the masking shuffle).
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`):
            The unit-scaled VAE latents the encoder worked on.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and the output of every encoder layer, each `(B, 1 + K, D)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Attention weights of every encoder layer, each `(B, heads, 1 + K, 1 + K)` (eager attention only).
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
            MSE between predicted and target latent patches, averaged over hidden patches only.
        logits (`torch.FloatTensor` of shape `(B, L, p * p * C)`):
            Predicted latent patches (all of them; only the hidden ones are trained).
        mask (`torch.FloatTensor` of shape `(B, L)`): 1 = hidden, 0 = visible.
        ids_restore (`torch.LongTensor` of shape `(B, L)`): undoes the masking shuffle.
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


@dataclass
class LMDReconstructionOutput(ModelOutput):
    r"""
    Output of [`LMDForPreTraining.reconstruct`]. Images are in [-1, 1], shape `(B, 3, H, W)`.

    Args:
        reconstruction (`torch.FloatTensor`):
            What a user wants back: the model's fill inside the hidden region and the input's own pixels outside
            it, blended across a band on the visible side of the border. Without input pixels (`latents=` only),
            the decoded image.
        decoded (`torch.FloatTensor`):
            The raw decode of the composite latents (visible latents from the input, hidden from the model).
        masked_images (`torch.FloatTensor`): the input with the hidden regions mid-grey (what a user hid).
        mask (`torch.FloatTensor` of shape `(B, L)`): 1 = hidden patch.
        pixel_mask (`torch.FloatTensor` of shape `(B, 1, H, W)`): the same mask at pixel resolution.
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`): the composite latents that were decoded.
    """

    reconstruction: torch.FloatTensor | None = None
    decoded: torch.FloatTensor | None = None
    masked_images: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    pixel_mask: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


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


# --- transformer layers ----------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention: `(B, heads, N, d)` x 3 -> output `(B, N, heads, d)` and weights `(B, heads, N, N)`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class LMDSelfAttention(nn.Module):
    """Multi-head self-attention; the kernel is `config._attn_implementation` ("eager", "sdpa", flash, ...)."""

    def __init__(self, config: LMDConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        # (B, N, 3D) -> 3 x (B, heads, N, head_dim)
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attended, weights = attention_interface(self, query, key, value, None, scaling=self.scaling, dropout=0.0)
        return self.proj(attended.reshape(batch, length, width)), weights


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
        self.attention = LMDSelfAttention(config, hidden_size, num_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = LMDMLP(hidden_size, intermediate_size, config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(self.layernorm_before(hidden_states))
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layernorm_after(hidden_states)), weights


def run_layers(layers: nn.ModuleList, hidden_states: torch.Tensor, output_hidden_states: bool, output_attentions: bool):
    """Run `layers` in order, collecting the input and every output, and the attention weights, when asked."""
    all_hidden_states = (hidden_states,) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for layer in layers:
        hidden_states, weights = layer(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states + (hidden_states,)
        if output_attentions:
            all_attentions = all_attentions + (weights,)
    return hidden_states, all_hidden_states, all_attentions


# --- embeddings and masking ------------------------------------------------------------------------------------


class LMDEmbeddings(nn.Module):
    """Latent patch embedding, cls token, fixed sin-cos position embeddings and per-sample random masking."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        self.config = config
        self.grid_size = (config.latent_size // config.patch_size,) * 2
        self.patch_embeddings = nn.Conv2d(
            config.latent_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Fixed, not learned: recomputed from the config rather than stored in checkpoints.
        self.register_buffer(
            "position_embeddings",
            sincos_position_embedding_2d(config.hidden_size, self.grid_size)[None],
            persistent=False,
        )

    def positions_for(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """`(1, 1 + gh * gw, D)`: the stored embeddings, or ones resampled for another grid."""
        if tuple(grid_size) == self.grid_size:
            return self.position_embeddings
        resampled = sincos_position_embedding_2d(self.config.hidden_size, grid_size, self.grid_size)
        return resampled[None].to(self.position_embeddings)

    def random_masking(self, tokens: torch.Tensor, num_visible: int, noise: torch.Tensor):
        """Keep the `num_visible` patches with the lowest `noise` in each sample.

        Args:
            tokens: `(B, L, D)` embedded patches.
            noise: `(B, L)`; argsort decides which patches stay visible (lowest first).

        Returns:
            visible `(B, K, D)`, mask `(B, L)` with 1 = hidden, ids_restore `(B, L)`.
        """
        batch, num_patches, width = tokens.shape
        if tuple(noise.shape) != (batch, num_patches):
            raise ValueError(f"Expected noise of shape ({batch}, {num_patches}), got {tuple(noise.shape)}.")
        ids_shuffle = torch.argsort(noise.to(tokens.device), dim=1)  # ascending: lowest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_visible]
        visible = torch.gather(tokens, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, width))
        mask = torch.ones(batch, num_patches, device=tokens.device, dtype=tokens.dtype)
        mask[:, :num_visible] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)  # back to the original patch order
        return visible, mask, ids_restore

    def forward(self, latents: torch.Tensor, num_visible: int | None = None, noise: torch.Tensor | None = None):
        """`(B, C, h, w)` -> embeddings `(B, 1 + K, D)` (cls first), mask `(B, L)`, ids_restore `(B, L)`.

        With `num_visible=None` every patch is kept in order (mask all zeros).
        """
        tokens = self.patch_embeddings(latents)  # (B, D, gh, gw)
        positions = self.positions_for(tokens.shape[-2:])
        tokens = tokens.flatten(2).transpose(1, 2) + positions[:, 1:, :]  # (B, L, D)
        batch, num_patches, _ = tokens.shape
        if num_visible is None:
            mask = tokens.new_zeros(batch, num_patches)
            ids_restore = torch.arange(num_patches, device=tokens.device).expand(batch, -1)
        else:
            if noise is None:
                noise = torch.rand(batch, num_patches, device=tokens.device)
            tokens, mask, ids_restore = self.random_masking(tokens, num_visible, noise)
        cls_tokens = (self.cls_token + positions[:, :1, :]).expand(batch, -1, -1)
        return torch.cat([cls_tokens, tokens], dim=1), mask, ids_restore


class LMDDecoder(nn.Module):
    """Lightweight decoder: fills hidden positions with a learned mask token and predicts every latent patch."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        self.config = config
        self.grid_size = (config.latent_size // config.patch_size,) * 2
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.register_buffer(
            "position_embeddings",
            sincos_position_embedding_2d(config.decoder_hidden_size, self.grid_size)[None],
            persistent=False,
        )
        self.decoder_layers = nn.ModuleList(
            LMDLayer(config, config.decoder_hidden_size, config.decoder_num_attention_heads,
                     config.decoder_intermediate_size)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.latent_channels)

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Encoder output `(B, 1 + K, D)` -> predicted patches `(B, L, p * p * C)` on a `grid_size` patch grid."""
        tokens = self.decoder_embed(encoded)  # (B, 1 + K, E)
        batch, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, num_patches - (tokens.shape[1] - 1), -1)
        shuffled = torch.cat([tokens[:, 1:, :], mask_tokens], dim=1)  # (B, L, E), visible first
        index = ids_restore.unsqueeze(-1).expand(-1, -1, shuffled.shape[-1])
        unshuffled = torch.gather(shuffled, dim=1, index=index)  # (B, L, E), original patch order
        if tuple(grid_size) == self.grid_size:
            positions = self.position_embeddings
        else:
            positions = sincos_position_embedding_2d(self.config.decoder_hidden_size, grid_size, self.grid_size)
            positions = positions[None].to(self.position_embeddings)
        hidden_states = torch.cat([tokens[:, :1, :], unshuffled], dim=1) + positions
        hidden_states, _, _ = run_layers(self.decoder_layers, hidden_states, False, False)
        return self.decoder_pred(self.decoder_norm(hidden_states))[:, 1:, :]  # drop the cls token


# --- pixel-space helpers for reconstruction --------------------------------------------------------------------


def paint_hidden_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Hidden pixels (mask 1) painted with the mean colour of the image's visible pixels; `(B, 3, H, W)`.

    This is both the trivial baseline a sceptic tries first and what `reconstruct` feeds the VAE, so that nothing
    under the mask can reach the output. An image with no visible pixel gets mid-grey (0).
    """
    visible = 1.0 - pixel_mask.to(pixel_values.dtype)  # (B, 1, H, W)
    count = visible.sum(dim=(2, 3), keepdim=True)
    mean_colour = (pixel_values * visible).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1.0)
    return pixel_values * visible + mean_colour * (1.0 - visible)


def feather_mask(pixel_mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Blend weights of the model's output: 1 on hidden pixels, falling linearly to 0 over `radius` pixels of the
    *visible* side (Chebyshev distance), 0 beyond. Hidden pixels keep weight 1, so none of their input survives."""
    weights = pixel_mask.float()
    grown = weights
    for step in range(1, radius + 1):
        grown = F.max_pool2d(grown, kernel_size=3, stride=1, padding=1)
        weights = torch.maximum(weights, grown * (1.0 - step / (radius + 1)))
    return weights.to(pixel_mask.dtype)


def uniform_noise(batch: int, length: int, generator, device) -> torch.Tensor:
    """`(batch, length)` uniform noise from one generator, or from a list of them (one per image, as diffusers
    pipelines take it), so that an image's draw does not depend on the batch it is in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch}.")
        return torch.stack([torch.rand(length, generator=g) for g in generator]).to(device)
    return torch.rand(batch, length, generator=generator).to(device)


def hidden_from_noise(noise: torch.Tensor, num_visible: int) -> torch.Tensor:
    """`(B, L)` bool, True where hidden: every patch except the `num_visible` with the lowest noise (the patches
    `LMDEmbeddings.random_masking` keeps)."""
    return torch.argsort(torch.argsort(noise, dim=1), dim=1) >= num_visible


def check_input_values(name: str, values: torch.Tensor, pixel_range: bool) -> None:
    """Refuse non-finite inputs (naming the count) and, for images, values outside about [-1, 1]: the two silent
    ways to a useless loss (uint8 or [0, 255] pixels give a loss about 5x too high; one NaN makes a batch's NaN).
    Costs a host sync: eval and inference check every call, training its first batches (`LMDTrainer`)."""
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


def remaining_hidden_counts(num_hidden: int, num_steps: int) -> list[int]:
    """How many patches stay hidden after each of `num_steps` un-masking steps: MaskGIT's cosine,
    `floor(N cos(pi/2 (t + 1) / T))`, so few are revealed early and many late; at least one per step, none at the
    end. More steps than hidden patches are cut to one reveal per step."""
    steps = max(1, min(num_steps, num_hidden))
    counts, previous = [], num_hidden
    for step in range(steps):
        remaining = math.floor(num_hidden * math.cos(math.pi / 2 * (step + 1) / steps))
        remaining = max(0, min(remaining, previous - 1))
        counts.append(remaining)
        previous = remaining
    counts[-1] = 0
    return counts


# --- the models ------------------------------------------------------------------------------------------------


def build_vae(config: LMDConfig) -> nn.Module:
    """The diffusers VAE described by `config.vae_type` / `config.vae_config`, frozen."""
    vae = VAE_CLASSES[config.vae_type].from_config(config.vae_config)
    vae.requires_grad_(False)
    vae.eval()
    for module in vae.modules():
        # Marks modules whose initialisation is the VAE's own, not the ViT's (see `_init_weights`).
        module._lmd_vae_module = True
    return vae


def read_vae_config(name_or_path: str, subfolder: str | None = None, **kwargs) -> tuple[str, dict]:
    """The class name and config of a diffusers VAE in a local folder or Hub repo, without reading its weights."""
    config = AutoencoderKL.load_config(name_or_path, subfolder=subfolder, **kwargs)
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name not in VAE_CLASSES:
        raise ValueError(f"{name_or_path} holds a {class_name}; expected one of {', '.join(VAE_CLASSES)}.")
    return class_name, dict(config)


def load_pretrained_vae(name_or_path: str, subfolder: str | None = None, **kwargs) -> nn.Module:
    """Load a diffusers VAE of any supported class from a local folder or Hub id, reading `_class_name`."""
    class_name, _ = read_vae_config(name_or_path, subfolder, **kwargs)
    return VAE_CLASSES[class_name].from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


class LMDPreTrainedModel(PreTrainedModel):
    """Weight initialisation and complete checkpoints, shared by every LMD model."""

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

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_lmd_vae_module", False):
            # A VAE built from a config keeps PyTorch's default init; pretrained VAEs are loaded over it.
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LMDEmbeddings):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.copy_(module.position_embeddings, sincos_position_embedding_2d(self.config.hidden_size,
                                                                                module.grid_size)[None])
        elif isinstance(module, LMDDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            init.copy_(module.position_embeddings, sincos_position_embedding_2d(self.config.decoder_hidden_size,
                                                                                module.grid_size)[None])

    @classmethod
    def from_vae(cls, vae, subfolder: str | None = None, config: LMDConfig | None = None, **config_kwargs):
        """A fresh model around a pretrained diffusers VAE, whose weights are copied in bit-exact.

        Args:
            vae: an `AutoencoderKL` / `VQModel` / `AutoencoderTiny` instance, a local diffusers folder, or a Hub id.
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
        if vae_type not in VAE_CLASSES:
            raise ValueError(f"Unsupported VAE class {vae_type}; expected one of {', '.join(VAE_CLASSES)}.")
        vae_fields = {"vae_type": vae_type, "vae_config": vae_config}
        if config is not None:
            config = LMDConfig.from_dict({**config.to_dict(), **vae_fields, **config_kwargs})
        else:
            preset = config_kwargs.pop("preset", None)
            config_kwargs.update(vae_fields)
            config = LMDConfig.from_preset(preset, **config_kwargs) if preset else LMDConfig(**config_kwargs)
        if is_path:
            vae = load_pretrained_vae(os.fspath(vae), subfolder=subfolder)
        model = cls(config)
        # Copy after construction: `post_init` would otherwise re-initialise the VAE's weights.
        model.base_model.vae.load_state_dict(vae.state_dict())
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus what a user without this package needs to use the folder:

        - `auto_map` entries for every LMD Auto class, so `AutoModel`, `AutoModelForPreTraining` and
          `AutoModelForImageClassification` all load it with `trust_remote_code=True`;
        - the image processor (`preprocessor_config.json` + its code), a default one for `config.image_size`
          unless the folder already has one (save your own processor to override it);
        - for [`LMDForPreTraining`], the `"lmd-reconstruction"` pipeline, the way transformers' own
          `Pipeline.save_pretrained` shares a registered pipeline: its code, and `custom_pipelines` in the config
          (set on the model's config itself, so a saved config reloads equal to it).
        """
        from transformers.dynamic_module_utils import custom_object_save

        from .image_processing_lmd import LMDImageProcessor
        from .pipeline_lmd import CUSTOM_PIPELINE_ENTRY, TASK, LMDReconstructionPipeline

        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        # Only a pre-training model can reconstruct: a base or classifier config built from a pre-training
        # checkpoint loses the entry (otherwise `pipeline(model=..., trust_remote_code=True)` would pick it).
        custom_pipelines = dict(getattr(self.config, "custom_pipelines", None) or {})
        custom_pipelines.pop(TASK, None)
        if isinstance(self, LMDForPreTraining):
            custom_pipelines[TASK] = dict(CUSTOM_PIPELINE_ENTRY)
        if custom_pipelines:
            self.config.custom_pipelines = custom_pipelines
        elif "custom_pipelines" in self.config.__dict__:
            del self.config.custom_pipelines
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        if isinstance(self, LMDForPreTraining):
            custom_object_save(LMDReconstructionPipeline, save_directory)
        if not os.path.isfile(os.path.join(save_directory, "preprocessor_config.json")):
            LMDImageProcessor.register_for_auto_class()
            LMDImageProcessor.from_model_config(self.config).save_pretrained(save_directory)


class LMDModel(LMDPreTrainedModel):
    """The frozen VAE and the LMD ViT encoder: images (or latents) -> latent patch tokens.

    Without `mask_ratio` or `noise` every patch is encoded in order; with either, patches are hidden first (a
    random `mask_ratio` share, or the ones `noise` ranks highest), as in pre-training.

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
        self.embeddings = LMDEmbeddings(config)
        self.layers = nn.ModuleList(
            LMDLayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size)
            for _ in range(config.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def train(self, mode: bool = True):
        """Switch the ViT to train/eval mode; the VAE always stays frozen and in eval mode."""
        super().train(mode)
        self.vae.eval()
        # Loading replaces parameters with fresh (trainable) ones, so freezing is re-applied here:
        # `from_pretrained` ends with `model.eval()`.
        self.vae.requires_grad_(False)
        return self

    # --- image <-> latents ---------------------------------------------------------------------------

    def check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> None:
        """Shape and dtype always; values (range, finiteness) outside training, see `check_input_values`."""
        if not pixel_values.is_floating_point():
            raise ValueError(f"images must be in [-1, 1]; use LMDImageProcessor (got pixel_values of dtype "
                             f"{pixel_values.dtype}).")
        if not self.training:
            check_input_values("pixel_values", pixel_values, pixel_range=True)
        channels, size = self.vae.config.in_channels, self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"Expected pixel_values of shape (batch, {channels}, {size}, {size}) in [-1, 1], "
                f"got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match the model ({size}*{size}); resize with "
                "LMDImageProcessor, or pass interpolate_pos_encoding=True to run at another resolution."
            )
        cell = self.config.vae_downsampling_factor * self.config.patch_size
        if height % cell or width % cell:
            raise ValueError(
                f"Image sides must be multiples of {cell} pixels (VAE factor {self.config.vae_downsampling_factor} x "
                f"latent patch {self.config.patch_size}), got {height}x{width}."
            )

    def check_latents(self, latents: torch.Tensor, interpolate_pos_encoding: bool = False) -> None:
        if not self.training:
            check_input_values("latents", latents, pixel_range=False)
        config = self.config
        channels, size = config.latent_channels, config.latent_size
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(f"Expected latents of shape (batch, {channels}, {size}, {size}), got {tuple(latents.shape)}.")
        height, width = latents.shape[-2:]
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(
                f"Expected latents of shape (batch, {channels}, {size}, {size}), got {tuple(latents.shape)}; pass "
                "interpolate_pos_encoding=True to run at another resolution."
            )
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(f"Latent sides must be multiples of patch_size {config.patch_size}, got {height}x{width}.")

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1], `(B, 3, H, W)` -> unit-scaled latents `(B, C, h, w)`.

        KL: the posterior mode (mean), not a sample. VQ: the quantized latents. Tiny: its latents.
        Then `(z - shift_factor) * scaling_factor`, as diffusers pipelines do.
        """
        self.check_pixel_values(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(device=self.vae.device, dtype=self.vae.dtype)
        if self.config.vae_type == "AutoencoderKL":
            latents = self.vae.encode(pixel_values).latent_dist.mode()
        elif self.config.vae_type == "VQModel":
            latents, _, _ = self.vae.quantize(self.vae.encode(pixel_values).latents)
        else:
            latents = self.vae.encode(pixel_values).latents
        return (latents - self._vae_shift_factor) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-scaled latents `(B, C, h, w)` -> pixels `(B, 3, H, W)`, nominally in [-1, 1] (not clamped)."""
        self.check_latents(latents, interpolate_pos_encoding=True)
        latents = latents.to(dtype=self.vae.dtype) / self.vae.config.scaling_factor + self._vae_shift_factor
        if self.config.vae_type == "VQModel":
            # The latents are already quantized (or predicted); decode them as they are.
            return self.vae.decode(latents, force_not_quantize=True).sample
        return self.vae.decode(latents).sample

    @property
    def _vae_shift_factor(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    def latents_from_inputs(
        self, pixel_values: torch.Tensor | None, latents: torch.Tensor | None, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Exactly one of images (encoded on the fly) or precomputed latents -> latents in the ViT's dtype."""
        if (pixel_values is None) == (latents is None):
            raise ValueError("Pass exactly one of `pixel_values` (images in [-1, 1]) or `latents` (precomputed).")
        if latents is None:
            latents = self.encode_images(pixel_values, interpolate_pos_encoding)
        else:
            self.check_latents(latents, interpolate_pos_encoding)
        return latents.to(self.embeddings.patch_embeddings.weight.dtype)

    def num_visible_patches(self, mask_ratio: float, num_patches: int | None = None) -> int:
        """`int(L * (1 - mask_ratio))`, but at least one patch stays visible.

        The product is nudged by 1e-6 before truncation so that float rounding never drops a patch: a ratio of
        0.55 over 20 patches keeps 9 (20 * (1 - 0.55) is 8.999999999999998 in floating point).
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        num_patches = self.config.num_patches if num_patches is None else num_patches
        return max(1, int(num_patches * (1 - mask_ratio) + 1e-6))

    # --- forward ---------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> LMDModelOutput | tuple:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]): images, encoded by the frozen VAE on the fly.
            latents (`(B, C, h, w)`): precomputed unit-scaled latents instead of images (skips the VAE).
            mask_ratio (`float`, *optional*): hide this share of patches (`int(L * (1 - ratio))` stay visible).
            noise (`(B, L)`, *optional*): which patches to hide (argsort; the lowest stay visible). Alone, it
                hides `config.mask_ratio`.
            output_attentions (`bool`, *optional*): return every layer's attention weights (eager attention).
            output_hidden_states (`bool`, *optional*): return the embeddings and every layer's output.
            interpolate_pos_encoding (`bool`, defaults to `False`): run at a resolution other than
                `config.image_size`, with the position embeddings resampled onto the trained grid.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        if output_attentions and config._attn_implementation != "eager":
            raise ValueError(
                "output_attentions=True needs eager attention; load the model with attn_implementation='eager' "
                f"(it uses {config._attn_implementation!r})."
            )
        latents = self.latents_from_inputs(pixel_values, latents, interpolate_pos_encoding)

        num_visible = None
        if mask_ratio is not None or noise is not None:
            num_patches = (latents.shape[-2] // config.patch_size) * (latents.shape[-1] // config.patch_size)
            num_visible = self.num_visible_patches(config.mask_ratio if mask_ratio is None else float(mask_ratio),
                                                   num_patches)
        embeddings, mask, ids_restore = self.embeddings(latents, num_visible, noise)
        hidden_states, all_hidden_states, all_attentions = run_layers(
            self.layers, embeddings, output_hidden_states, output_attentions
        )
        output = LMDModelOutput(
            last_hidden_state=self.layernorm(hidden_states),
            mask=mask,
            ids_restore=ids_restore,
            latents=latents,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        pooling: str = "mean",
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Image embeddings `(B, D)` from the unmasked encoder, for retrieval or a linear probe.

        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            pooling: `"mean"` over the patch tokens (default) or `"cls"` (the cls token).
        """
        encoded = self(pixel_values=pixel_values, latents=latents, interpolate_pos_encoding=interpolate_pos_encoding)
        return pool_tokens(encoded.last_hidden_state, pooling)


def pool_tokens(encoded: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Encoder output `(B, 1 + L, D)` (cls token first) -> `(B, D)`: mean over patch tokens, or the cls token."""
    if pooling == "mean":
        return encoded[:, 1:, :].mean(dim=1)
    if pooling == "cls":
        return encoded[:, 0, :]
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}.")


class LMDForPreTraining(LMDPreTrainedModel):
    """LMD pre-training: hide a share of latent patches, encode the rest, and reconstruct the hidden ones.

    Stages, each a method: `self.lmd` (VAE encode, masking, encoder) -> `forward_decoder` -> `forward_loss`;
    `reconstruct` runs them for inference (inpainting, progressive un-masking) and decodes the result.

    Example:

    ```python
    >>> import torch
    >>> from modeling_lmd import LMDConfig, LMDForPreTraining
    >>> model = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    >>> out = model(pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1, mask_ratio=0.5)
    >>> out.loss.backward()
    ```
    """

    def __init__(self, config: LMDConfig):
        super().__init__(config)
        self.lmd = LMDModel(config)
        self.decoder = LMDDecoder(config)
        self.post_init()

    # --- patches -------------------------------------------------------------------------------------

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
        grid_h, grid_w = grid_size if grid_size is not None else (self.config.latent_size // p,) * 2
        patches = patches.reshape(patches.shape[0], grid_h, grid_w, p, p, channels)
        latents = torch.einsum("bhwpqc->bchpwq", patches)
        return latents.reshape(patches.shape[0], channels, grid_h * p, grid_w * p)

    def patch_grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2] // self.config.patch_size, latents.shape[-1] // self.config.patch_size

    # --- the stages ------------------------------------------------------------------------------------

    def forward_decoder(self, encoded: torch.Tensor, ids_restore: torch.Tensor, grid_size) -> torch.Tensor:
        """(B, 1 + K, D) -> predicted patches (B, L, p * p * C)."""
        return self.decoder(encoded, ids_restore, grid_size)

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

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> LMDForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            mask_ratio (`float`, *optional*): defaults to `config.mask_ratio` (the Trainer sets it every step).
            noise (`(B, L)`, *optional*): fixes which patches are hidden (argsort; lowest noise stays visible).
            output_attentions, output_hidden_states, interpolate_pos_encoding: as in [`LMDModel`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        mask_ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
        target = None
        if self.config.leak_free_training and pixel_values is not None:
            # Hide the patches in pixel space first: the encoder gets the latents of the painted image, the loss
            # compares with the latents of the real one.
            target = self.lmd.latents_from_inputs(pixel_values, None, interpolate_pos_encoding)
            grid = self.patch_grid(target)
            if noise is None:
                noise = torch.rand(target.shape[0], grid[0] * grid[1], device=target.device)
            hidden = hidden_from_noise(noise.to(target.device), self.lmd.num_visible_patches(mask_ratio, noise.shape[1]))
            pixel_mask = self.pixel_mask(hidden.to(pixel_values.dtype), pixel_values.shape[-2:])
            latents, pixel_values = self.lmd.encode_images(paint_hidden_pixels(pixel_values, pixel_mask),
                                                           interpolate_pos_encoding), None
        encoded = self.lmd(
            pixel_values=pixel_values,
            latents=latents,
            mask_ratio=mask_ratio,
            noise=noise,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        logits = self.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, self.patch_grid(encoded.latents))
        target = encoded.latents if target is None else target.to(encoded.latents.dtype)
        output = LMDForPreTrainingOutput(
            loss=self.forward_loss(target, logits, encoded.mask).to(logits.dtype),
            logits=logits,
            mask=encoded.mask,
            ids_restore=encoded.ids_restore,
            latents=target,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()

    # --- inference -------------------------------------------------------------------------------------

    def predictions_to_latents(self, predictions: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor):
        """Predicted patches `(B, L, p*p*C)` in latent units.

        With `norm_latent_loss` the model predicts each patch's shape, not its level or scale. Those are taken
        from what the encoder saw: the mean and standard deviation of the image's *visible* patches (never the
        hidden patches' own statistics, which would leak the answer).
        """
        if not self.config.norm_latent_loss:
            return predictions
        patches = self.patchify(latents)
        visible = (1.0 - mask).unsqueeze(-1).to(patches.dtype)  # (B, L, 1)
        count = visible.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (patches.mean(dim=-1, keepdim=True) * visible).sum(dim=1, keepdim=True) / count
        std = ((patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 * visible).sum(dim=1, keepdim=True) / count
        return predictions * std + mean

    def predict_hidden(self, latents: torch.Tensor, hidden: torch.Tensor, interpolate_pos_encoding=False):
        """One pass: latents `(B, C, h, w)` with `hidden` `(B, L)` bool -> predicted patches `(B, L, p*p*C)` in latent
        units. Every sample must hide the same number of patches (the encoder takes equal-length sequences)."""
        num_patches = hidden.shape[1]
        # Visible patches get noise in [0, 1), hidden ones in [2, 3): argsort keeps exactly the visible ones, in
        # row-major order, so the result does not depend on any random draw.
        order = torch.arange(num_patches, device=hidden.device) / num_patches
        noise = hidden.float() * 2.0 + order
        num_visible = num_patches - int(hidden[0].sum())
        encoded = self.lmd(latents=latents, mask_ratio=1.0 - num_visible / num_patches, noise=noise,
                           interpolate_pos_encoding=interpolate_pos_encoding)
        predictions = self.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, self.patch_grid(latents))
        return self.predictions_to_latents(predictions, latents, encoded.mask)

    def fill_hidden_latents(
        self,
        latents: torch.Tensor,
        hidden: torch.Tensor,
        num_inference_steps: int = 1,
        reveal_order: str = "random",
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """The masking diffusion run backwards: latents `(B, C, h, w)` whose `hidden` `(B, L)` patches are replaced
        by the model's predictions.

        Each of `num_inference_steps` steps predicts every still-hidden patch, reveals a share of them and feeds
        the revealed predictions back as visible context for the next step; the share follows
        `remaining_hidden_counts` (few early, many late). `reveal_order` picks which ones: `"random"` (one random
        order per image, drawn from `generator`, as MAR does) or `"nearest"` (closest to the visible context
        first, random among equals). With one step this is a single prediction of all hidden patches.
        """
        if reveal_order not in REVEAL_ORDERS:
            raise ValueError(f"reveal_order must be one of {', '.join(REVEAL_ORDERS)}, got {reveal_order!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        hidden = hidden.bool().to(latents.device)
        counts = hidden.sum(dim=1)
        if not bool((counts == counts[0]).all()):  # unequal sequences: one image at a time
            per_image = generator if isinstance(generator, (list, tuple)) else [generator] * latents.shape[0]
            return torch.cat([
                self.fill_hidden_latents(latents[i : i + 1], hidden[i : i + 1], num_inference_steps, reveal_order,
                                         per_image[i] if per_image[i] is None else [per_image[i]],
                                         interpolate_pos_encoding)
                for i in range(latents.shape[0])
            ])
        if int(counts[0]) == 0:
            return latents
        grid = self.patch_grid(latents)
        patches = self.patchify(latents)
        # One random priority per patch and image; lower is revealed first.
        tie_break = uniform_noise(*hidden.shape, generator, latents.device)
        if reveal_order == "nearest":
            rows = torch.arange(grid[0], device=latents.device).repeat_interleave(grid[1])
            cols = torch.arange(grid[1], device=latents.device).repeat(grid[0])
            coords = torch.stack([rows, cols], dim=1).float()  # (L, 2)
            distances = torch.cdist(coords, coords)  # (L, L)
        for remaining in remaining_hidden_counts(int(counts[0]), num_inference_steps):
            predicted = self.predict_hidden(self.unpatchify(patches, grid), hidden, interpolate_pos_encoding)
            priority = tie_break
            if reveal_order == "nearest":
                # Distance of every patch to its nearest visible patch, plus a tie-break below one cell.
                to_visible = distances.masked_fill(hidden[:, None, :], float("inf")).amin(dim=-1)  # (B, L)
                priority = to_visible + 0.5 * tie_break
            priority = priority.masked_fill(~hidden, float("inf"))
            num_reveal = int(hidden[0].sum()) - remaining
            reveal = torch.zeros_like(hidden).scatter(1, priority.topk(num_reveal, dim=1, largest=False).indices, True)
            patches = torch.where(reveal.unsqueeze(-1), predicted.to(patches.dtype), patches)
            hidden = hidden & ~reveal
        return self.unpatchify(patches, grid)

    def pixel_mask(self, mask: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, L) patch mask -> (B, 1, H, W) pixel mask: each latent patch covers p * f pixels a side."""
        cell = self.config.patch_size * self.config.vae_downsampling_factor
        grid_h, grid_w = image_size[0] // cell, image_size[1] // cell
        mask = mask.reshape(-1, 1, grid_h, grid_w)
        return mask.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)

    @torch.no_grad()
    def reconstruct(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        patch_mask: torch.Tensor | None = None,
        num_inference_steps: int = 1,
        reveal_order: str = "random",
        mask_dilation: int = 0,
        mask_pixels_before_encoding: bool = True,
        blend_radius: int | None = None,
        colour_correction: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> LMDReconstructionOutput:
        """Hide latent patches, let the model fill them, decode; the one reconstruction path (pipeline, evaluation,
        grids).

        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one. With pixels, hidden
                pixels are painted with the visible mean colour before the VAE encodes the image (so nothing under
                the mask reaches the output: the VAE's receptive field and its mid-block attention would otherwise
                carry hidden pixels into visible latents), and the output keeps the input's visible pixels. With
                latents only, the paper's setting: the whole image was encoded, then latent patches are hidden.
            mask_ratio: share of random patches to hide (default `config.mask_ratio`), chosen by `noise` `(B, L)`
                (lowest stays visible) or drawn from `generator`.
            generator: a `torch.Generator`, or a list of one per image (each image's draws then do not depend on
                the batch it is in); it draws the random mask, then the reveal order.
            patch_mask (`(B, L)` bool, 1 = hide): an explicit mask (inpainting) instead of a random one.
            num_inference_steps, reveal_order: progressive un-masking (see `fill_hidden_latents`); 1 = one shot.
            mask_dilation: also hide this many rings of latent patches around the hidden region from the encoder
                (their latents saw the painted fill); their pixels stay the input's.
            mask_pixels_before_encoding: `False` encodes the unmasked image (the paper's setting) even when pixels
                are given.
            blend_radius: width in pixels of the band, on the visible side, over which the model's output fades
                into the input (default: the VAE's downsampling factor).
            colour_correction: shift the decode, per image and channel, by the mean difference between the input
                and the decode over the *visible* pixels before blending (the VAE decoder's mid-block attention
                can tint the whole image when predicted latents are off; the visible pixels show by how much).
                `decoded` stays the raw decode.
            interpolate_pos_encoding: run at a resolution other than `config.image_size`.
        """
        lmd = self.lmd
        if (pixel_values is None) == (latents is None):
            raise ValueError("Pass exactly one of `pixel_values` (images in [-1, 1]) or `latents` (precomputed).")
        if pixel_values is not None:
            lmd.check_pixel_values(pixel_values, interpolate_pos_encoding)
            cell = self.config.vae_downsampling_factor * self.config.patch_size
            batch, grid = pixel_values.shape[0], (pixel_values.shape[-2] // cell, pixel_values.shape[-1] // cell)
        else:
            lmd.check_latents(latents, interpolate_pos_encoding)
            batch, grid = latents.shape[0], self.patch_grid(latents)
        num_patches = grid[0] * grid[1]
        device = self.device

        if patch_mask is not None:
            if tuple(patch_mask.shape) != (batch, num_patches):
                raise ValueError(f"Expected patch_mask of shape ({batch}, {num_patches}), got {tuple(patch_mask.shape)}.")
            hidden = patch_mask.to(device).bool()
            if bool(hidden.all(dim=1).any()):
                raise ValueError("patch_mask hides every patch of an image; leave at least one patch visible.")
        else:
            ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
            num_visible = lmd.num_visible_patches(ratio, num_patches)
            if noise is None:
                noise = uniform_noise(batch, num_patches, generator, device)
            elif tuple(noise.shape) != (batch, num_patches):
                raise ValueError(f"Expected noise of shape ({batch}, {num_patches}), got {tuple(noise.shape)}.")
            hidden = hidden_from_noise(noise.to(device), num_visible)

        encoder_hidden = hidden
        if mask_dilation > 0:
            grown = F.max_pool2d(hidden.float().reshape(batch, 1, *grid), 2 * mask_dilation + 1, 1, mask_dilation)
            encoder_hidden = grown.reshape(batch, num_patches).bool()
            # Never hide everything: fall back to the undilated mask for such an image.
            encoder_hidden = torch.where(encoder_hidden.all(dim=1, keepdim=True), hidden, encoder_hidden)

        if pixel_values is not None:
            pixel_values = pixel_values.to(device=device, dtype=lmd.vae.dtype)
            pixel_mask = self.pixel_mask(hidden.to(pixel_values.dtype), pixel_values.shape[-2:])
            to_encode = paint_hidden_pixels(pixel_values, pixel_mask) if mask_pixels_before_encoding else pixel_values
            latents = lmd.encode_images(to_encode, interpolate_pos_encoding)
        latents = latents.to(device=device, dtype=lmd.embeddings.patch_embeddings.weight.dtype)

        composite = self.fill_hidden_latents(
            latents, encoder_hidden, num_inference_steps, reveal_order, generator, interpolate_pos_encoding
        )
        decoded = lmd.decode_latents(composite).clamp(-1, 1)
        if pixel_values is None:
            pixel_mask = self.pixel_mask(hidden.to(decoded.dtype), decoded.shape[-2:])
            return LMDReconstructionOutput(reconstruction=decoded, decoded=decoded, mask=hidden.to(decoded.dtype),
                                           pixel_mask=pixel_mask, latents=composite)
        radius = self.config.vae_downsampling_factor if blend_radius is None else int(blend_radius)
        weights = feather_mask(pixel_mask, radius).to(decoded.dtype)
        fill = decoded
        if colour_correction:
            visible = (1.0 - pixel_mask).to(decoded.dtype)
            offset = ((pixel_values.to(decoded.dtype) - decoded) * visible).sum(dim=(2, 3), keepdim=True)
            fill = (decoded + offset / visible.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)).clamp(-1, 1)
        return LMDReconstructionOutput(
            reconstruction=weights * fill + (1.0 - weights) * pixel_values.to(decoded.dtype),
            decoded=decoded,
            masked_images=pixel_values.to(decoded.dtype) * (1 - pixel_mask),  # hidden regions -> mid grey (0)
            mask=hidden.to(decoded.dtype),
            pixel_mask=pixel_mask,
            latents=composite,
        )


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

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            labels (`(B,)` class indices): cross-entropy loss (mean squared error when `num_labels == 1`).
            output_attentions, output_hidden_states, interpolate_pos_encoding: as in [`LMDModel`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.lmd(
            pixel_values=pixel_values,
            latents=latents,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        logits = self.classifier(self.fc_norm(pool_tokens(encoded.last_hidden_state, self.config.classifier_pooling)))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))

        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return output if return_dict else output.to_tuple()


# What every saved checkpoint maps its Auto classes to (all classes live in this file), so each head loads from
# any LMD checkpoint with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_lmd.LMDConfig",
    "AutoModel": "modeling_lmd.LMDModel",
    "AutoModelForPreTraining": "modeling_lmd.LMDForPreTraining",
    "AutoModelForImageClassification": "modeling_lmd.LMDForImageClassification",
}


__all__ = [
    "LMDForImageClassification",
    "LMDForPreTraining",
    "LMDForPreTrainingOutput",
    "LMDModel",
    "LMDModelOutput",
    "LMDPreTrainedModel",
    "LMDReconstructionOutput",
    "check_input_values",
    "feather_mask",
    "load_pretrained_vae",
    "paint_hidden_pixels",
    "pool_tokens",
    "read_vae_config",
    "hidden_from_noise",
    "remaining_hidden_counts",
    "uniform_noise",
]

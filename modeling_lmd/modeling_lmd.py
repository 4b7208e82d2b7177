"""LMD: an MAE-style masked ViT that reconstructs masked patches of a frozen diffusers VAE's latents.

Reading order: position embeddings -> ViT block -> encoder / decoder -> `LMDPreTrainedModel`
(the frozen VAE, image <-> latent) -> `LMDModel` (patchify, random_masking, forward_encoder,
forward_decoder, forward_loss, reconstruct).

Shapes: B batch, C latent channels, h = w = latent side, p latent patch side,
L = (h / p)^2 patches, K visible patches, D encoder width, E decoder width.
"""

import math
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
from transformers.utils import ModelOutput

from .configuration_lmd import LMDConfig


VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel, "AutoencoderTiny": AutoencoderTiny}


@dataclass
class LMDOutput(ModelOutput):
    """
    Output of [`LMDModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            MSE between predicted and target latent patches, averaged over masked patches only.
        logits (`torch.FloatTensor` of shape `(B, L, p * p * C)`):
            Predicted latent patches (all of them; only the masked ones are trained).
        mask (`torch.FloatTensor` of shape `(B, L)`):
            1 where a patch was hidden from the encoder, 0 where it was visible.
        ids_restore (`torch.LongTensor` of shape `(B, L)`):
            Position of each original patch in the shuffled sequence (undoes the masking shuffle).
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`):
            The (scaled) VAE latents the model worked on.
        last_hidden_state (`torch.FloatTensor` of shape `(B, 1 + K, D)`):
            Encoder output for the cls token and the visible patches.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input and every encoder block's output, when `output_hidden_states=True`.
        mask_ratio (`float`): the ratio this call used.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    mask_ratio: float | None = None


@dataclass
class LMDReconstructionOutput(ModelOutput):
    """
    Output of [`LMDModel.reconstruct`]. Images are in [-1, 1], shape `(B, 3, H, W)`.

    Args:
        reconstruction: decoded latents in which visible patches come from the input and masked ones from the model.
        masked_images: the input with the hidden regions greyed out (what the encoder saw).
        mask (`(B, L)`): 1 = hidden patch.
        pixel_mask (`(B, 1, H, W)`): the same mask at pixel resolution.
        latents (`(B, C, h, w)`): the composited latents that were decoded.
    """

    reconstruction: torch.FloatTensor | None = None
    masked_images: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    pixel_mask: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


def sincos_position_embedding_2d(embed_dim: int, grid_size: int, add_cls_token: bool = True) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings, shape `(grid_size**2 [+ 1], embed_dim)`, row-major patch order.

    Half of the channels encode the row, half the column; each half is `[sin(pos * w), cos(pos * w)]` with
    frequencies `w_k = 10000^(-k / (embed_dim / 4))`. The cls token, if any, gets zeros.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for 2D sin-cos embeddings, got {embed_dim}.")
    quarter = embed_dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, embed_dim / 2)
        angles = positions.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(rows), encode(cols)], dim=1)
    if add_cls_token:
        embedding = torch.cat([torch.zeros(1, embed_dim, dtype=embedding.dtype), embedding], dim=0)
    return embedding.float()


class LMDAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash / memory-efficient kernels)."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        # (B, N, 3D) -> 3 x (B, heads, N, head_dim)
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class LMDMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class LMDBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, config: LMDConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = LMDAttention(hidden_size, num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = LMDMLP(hidden_size, intermediate_size, config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.mlp(self.norm2(hidden_states))


class LMDEncoder(nn.Module):
    """Latent patch embedding, cls token, fixed position embeddings and the ViT encoder blocks."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        grid = config.latent_size // config.patch_size
        self.patch_embed = nn.Conv2d(
            config.latent_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Fixed, not learned: recomputed from the config rather than stored in checkpoints.
        self.register_buffer(
            "position_embeddings", sincos_position_embedding_2d(config.hidden_size, grid).unsqueeze(0), persistent=False
        )
        self.layers = nn.ModuleList(
            LMDBlock(config.hidden_size, config.num_attention_heads, config.intermediate_size, config)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, D), position embeddings added."""
        tokens = self.patch_embed(latents).flatten(2).transpose(1, 2)
        return tokens + self.position_embeddings[:, 1:, :]

    def run_blocks(self, tokens: torch.Tensor, output_hidden_states: bool = False):
        """Prepend the cls token, run the blocks and the final norm: (B, K, D) -> (B, 1 + K, D)."""
        cls_token = (self.cls_token + self.position_embeddings[:, :1, :]).expand(tokens.shape[0], -1, -1)
        hidden_states = torch.cat([cls_token, tokens], dim=1)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        return self.norm(hidden_states), all_hidden_states


class LMDDecoder(nn.Module):
    """Lightweight decoder: fills hidden positions with a learned mask token and predicts every latent patch."""

    def __init__(self, config: LMDConfig):
        super().__init__()
        grid = config.latent_size // config.patch_size
        self.embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.register_buffer(
            "position_embeddings",
            sincos_position_embedding_2d(config.decoder_hidden_size, grid).unsqueeze(0),
            persistent=False,
        )
        self.layers = nn.ModuleList(
            LMDBlock(
                config.decoder_hidden_size,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
                config,
            )
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.latent_channels)

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) encoder output -> (B, L, p * p * C) predicted patches."""
        tokens = self.embed(encoded)  # (B, 1 + K, E)
        batch, num_patches = ids_restore.shape
        num_hidden = num_patches - (tokens.shape[1] - 1)
        mask_tokens = self.mask_token.expand(batch, num_hidden, -1)
        shuffled = torch.cat([tokens[:, 1:, :], mask_tokens], dim=1)  # (B, L, E), visible first
        index = ids_restore.unsqueeze(-1).expand(-1, -1, shuffled.shape[-1])
        unshuffled = torch.gather(shuffled, dim=1, index=index)  # (B, L, E), original patch order
        hidden_states = torch.cat([tokens[:, :1, :], unshuffled], dim=1) + self.position_embeddings
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.pred(self.norm(hidden_states))[:, 1:, :]  # drop the cls token


def build_vae(config: LMDConfig) -> nn.Module:
    """The diffusers VAE described by `config.vae_type` / `config.vae_config`, frozen."""
    vae = VAE_CLASSES[config.vae_type].from_config(config.vae_config)
    vae.requires_grad_(False)
    vae.eval()
    for module in vae.modules():
        # Marks modules whose initialisation is the VAE's own, not the ViT's (see `_init_weights`).
        module._lmd_vae_module = True
    return vae


class LMDPreTrainedModel(PreTrainedModel):
    """Weight init, the frozen VAE and the image <-> latent maps shared by every LMD head."""

    config_class = LMDConfig
    config: LMDConfig
    base_model_prefix = "lmd"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LMDBlock"]

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
        elif isinstance(module, LMDEncoder):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            grid = self.config.latent_size // self.config.patch_size
            init.copy_(module.position_embeddings, sincos_position_embedding_2d(self.config.hidden_size, grid)[None])
        elif isinstance(module, LMDDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            grid = self.config.latent_size // self.config.patch_size
            embedding = sincos_position_embedding_2d(self.config.decoder_hidden_size, grid)[None]
            init.copy_(module.position_embeddings, embedding)

    def train(self, mode: bool = True):
        """Switch the ViT to train/eval mode; the VAE always stays frozen and in eval mode."""
        super().train(mode)
        self.vae.eval()
        # Loading replaces parameters with fresh (trainable) ones, so freezing is re-applied here:
        # `from_pretrained` ends with `model.eval()`.
        self.vae.requires_grad_(False)
        return self

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        expected = (self.vae.config.in_channels, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"Expected pixel_values of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) in [-1, 1], "
                f"got {tuple(pixel_values.shape)}."
            )

    def check_latents(self, latents: torch.Tensor) -> None:
        config = self.config
        expected = (config.latent_channels, config.latent_size, config.latent_size)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"Expected latents of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(latents.shape)}."
            )

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], `(B, 3, H, W)` -> unit-scaled latents `(B, C, h, w)`.

        KL: the posterior mode (mean), not a sample. VQ: the quantized latents. Tiny: its latents.
        Then `(z - shift_factor) * scaling_factor`, as diffusers pipelines do.
        """
        self.check_pixel_values(pixel_values)
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
        self.check_latents(latents)
        latents = latents.to(dtype=self.vae.dtype) / self.vae.config.scaling_factor + self._vae_shift_factor
        if self.config.vae_type == "VQModel":
            # The latents are already quantized (or predicted); decode them as they are.
            return self.vae.decode(latents, force_not_quantize=True).sample
        return self.vae.decode(latents).sample

    @property
    def _vae_shift_factor(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    def latents_from_inputs(self, pixel_values: torch.Tensor | None, latents: torch.Tensor | None) -> torch.Tensor:
        """Exactly one of images (encoded on the fly) or precomputed latents."""
        if (pixel_values is None) == (latents is None):
            raise ValueError("Pass exactly one of `pixel_values` (images in [-1, 1]) or `latents` (precomputed).")
        if latents is None:
            return self.encode_images(pixel_values)
        self.check_latents(latents)
        return latents

    # --- features without masking --------------------------------------------------------------

    def encode_unmasked(self, latents: torch.Tensor, output_hidden_states: bool = False):
        """Every patch, in order, through the encoder (no masking): `(B, C, h, w)` -> `(B, 1 + L, D)`, hidden states."""
        latents = latents.to(self.encoder.patch_embed.weight.dtype)
        return self.encoder.run_blocks(self.encoder.embed_patches(latents), output_hidden_states)

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, latents: torch.Tensor | None = None, pooling: str = "mean"
    ) -> torch.Tensor:
        """Image embeddings `(B, D)` from the unmasked encoder, for retrieval or a linear probe.

        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]) or latents (`(B, C, h, w)`): exactly one.
            pooling: `"mean"` over the patch tokens (default) or `"cls"` (the cls token).
        """
        encoded, _ = self.encode_unmasked(self.latents_from_inputs(pixel_values, latents))
        return pool_tokens(encoded, pooling)

    # --- complete checkpoints ------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus what a user without this package needs to use the folder:

        - the image processor (`preprocessor_config.json` + its code), a default one for `config.image_size`
          unless the folder already has one (save your own processor to override it);
        - for `LMDModel`, the `"lmd-reconstruction"` pipeline: its code and config.json's `custom_pipelines`, so
          `pipeline("lmd-reconstruction", model=folder, trust_remote_code=True)` works.
        """
        import os

        from transformers.dynamic_module_utils import custom_object_save

        from .image_processing_lmd import LMDImageProcessor
        from .pipeline_lmd import CUSTOM_PIPELINE_ENTRY, TASK, LMDReconstructionPipeline

        offers_pipeline = isinstance(self, LMDModel)
        previous = self.config.__dict__.get("custom_pipelines")
        custom_pipelines = {task: info for task, info in (previous or {}).items() if task != TASK}
        if offers_pipeline:
            custom_pipelines[TASK] = dict(CUSTOM_PIPELINE_ENTRY)
        if custom_pipelines:
            self.config.custom_pipelines = custom_pipelines
        elif previous is not None:
            del self.config.custom_pipelines
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if previous is not None:
                self.config.custom_pipelines = previous
            elif "custom_pipelines" in self.config.__dict__:
                del self.config.custom_pipelines
        if not kwargs.get("is_main_process", True):
            return
        if offers_pipeline:
            custom_object_save(LMDReconstructionPipeline, save_directory)
        if not os.path.isfile(os.path.join(save_directory, "preprocessor_config.json")):
            LMDImageProcessor.register_for_auto_class()
            LMDImageProcessor.from_model_config(self.config).save_pretrained(save_directory)


class LMDModel(LMDPreTrainedModel):
    """Masked latent modelling: hide a ratio of latent patches, encode the rest, reconstruct the hidden ones.

    Example:

    ```python
    >>> import torch
    >>> from modeling_lmd import LMDConfig, LMDModel
    >>> model = LMDModel(LMDConfig.from_preset("lmd-tiny"))
    >>> out = model(pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1, mask_ratio=0.5)
    >>> out.loss.backward()
    ```
    """

    def __init__(self, config: LMDConfig):
        super().__init__(config)
        self.vae = build_vae(config)
        self.encoder = LMDEncoder(config)
        self.decoder = LMDDecoder(config)
        self.post_init()

    # --- building a model around an existing VAE -------------------------------------------------

    @classmethod
    def from_vae(cls, vae, subfolder: str | None = None, **config_kwargs) -> "LMDModel":
        """A fresh LMD model around a pretrained diffusers VAE, whose weights are copied in bit-exact.

        Args:
            vae: an `AutoencoderKL` / `VQModel` / `AutoencoderTiny` instance, a local diffusers folder, or a Hub id.
            subfolder: where the VAE sits inside the folder or repo (e.g. `"vae"` in a Stable Diffusion repo).
            config_kwargs: `LMDConfig` fields (and `preset="lmd-small"` to start from a named preset).
        """
        if isinstance(vae, (str, bytes)) or hasattr(vae, "__fspath__"):
            vae = load_pretrained_vae(str(vae), subfolder=subfolder)
        vae_type = type(vae).__name__
        if vae_type not in VAE_CLASSES:
            raise ValueError(f"Unsupported VAE class {vae_type}; expected one of {', '.join(VAE_CLASSES)}.")
        preset = config_kwargs.pop("preset", None)
        config_kwargs.update(vae_type=vae_type, vae_config=dict(vae.config))
        config = LMDConfig.from_preset(preset, **config_kwargs) if preset else LMDConfig(**config_kwargs)
        model = cls(config)
        # Copy after construction: `post_init` would otherwise re-initialise the VAE's weights.
        model.vae.load_state_dict(vae.state_dict())
        return model

    # --- masking ---------------------------------------------------------------------------------

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, p * p * C), patches in row-major order, each flattened as (p, p, C)."""
        p = self.config.patch_size
        batch, channels, height, width = latents.shape
        patches = latents.reshape(batch, channels, height // p, p, width // p, p)
        patches = torch.einsum("bchpwq->bhwpqc", patches)
        return patches.reshape(batch, (height // p) * (width // p), p * p * channels)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p * p * C) -> (B, C, h, w); the inverse of `patchify`."""
        p, channels = self.config.patch_size, self.config.latent_channels
        grid = int(math.isqrt(patches.shape[1]))
        patches = patches.reshape(patches.shape[0], grid, grid, p, p, channels)
        latents = torch.einsum("bhwpqc->bchpwq", patches)
        return latents.reshape(patches.shape[0], channels, grid * p, grid * p)

    def num_visible_patches(self, mask_ratio: float) -> int:
        """`int(L * (1 - mask_ratio))`, but at least one patch stays visible."""
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        return max(1, int(self.config.num_patches * (1 - mask_ratio)))

    def random_masking(self, tokens: torch.Tensor, num_visible: int, noise: torch.Tensor | None = None):
        """Keep the `num_visible` patches with the lowest noise in each sample.

        Args:
            tokens: `(B, L, D)` embedded patches.
            noise: `(B, L)`; uniform noise is drawn if absent. Fixing it makes masking reproducible.

        Returns:
            visible `(B, K, D)`, mask `(B, L)` with 1 = hidden, ids_restore `(B, L)`.
        """
        batch, num_patches, width = tokens.shape
        if noise is None:
            noise = torch.rand(batch, num_patches, device=tokens.device)
        elif tuple(noise.shape) != (batch, num_patches):
            raise ValueError(f"Expected noise of shape ({batch}, {num_patches}), got {tuple(noise.shape)}.")
        ids_shuffle = torch.argsort(noise.to(tokens.device), dim=1)  # ascending: lowest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_visible]
        visible = torch.gather(tokens, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, width))
        mask = torch.ones(batch, num_patches, device=tokens.device, dtype=tokens.dtype)
        mask[:, :num_visible] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)  # back to the original patch order
        return visible, mask, ids_restore

    # --- the three stages ------------------------------------------------------------------------

    def forward_encoder(
        self, latents: torch.Tensor, num_visible: int, noise: torch.Tensor | None = None, output_hidden_states=False
    ):
        """(B, C, h, w) -> encoded `(B, 1 + K, D)`, mask, ids_restore, hidden states."""
        tokens = self.encoder.embed_patches(latents)  # (B, L, D)
        visible, mask, ids_restore = self.random_masking(tokens, num_visible, noise)
        encoded, hidden_states = self.encoder.run_blocks(visible, output_hidden_states)
        return encoded, mask, ids_restore, hidden_states

    def forward_decoder(self, encoded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) -> predicted patches (B, L, p * p * C)."""
        return self.decoder(encoded, ids_restore)

    def forward_loss(self, latents: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over hidden patches only (0 when nothing is hidden)."""
        target = self.patchify(latents)
        if self.config.norm_latent_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((predictions - target) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> LMDOutput | tuple:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]): images, encoded by the frozen VAE on the fly.
            latents (`(B, C, h, w)`): precomputed unit-scaled latents, instead of images (skips the VAE).
            mask_ratio (`float`, *optional*): overrides `config.mask_ratio` (the trainer sets it every step).
            noise (`(B, L)`, *optional*): fixes which patches are hidden (argsort; lowest noise stays visible).
            return_loss (`bool`): compute the masked MSE.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = bool(output_hidden_states or self.config.output_hidden_states)
        latents = self.latents_from_inputs(pixel_values, latents)
        mask_ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
        latents = latents.to(self.encoder.patch_embed.weight.dtype)

        encoded, mask, ids_restore, hidden_states = self.forward_encoder(
            latents, self.num_visible_patches(mask_ratio), noise, output_hidden_states
        )
        predictions = self.forward_decoder(encoded, ids_restore)
        loss = self.forward_loss(latents, predictions, mask) if return_loss else None

        output = LMDOutput(
            loss=loss,
            logits=predictions,
            mask=mask,
            ids_restore=ids_restore,
            latents=latents,
            last_hidden_state=encoded,
            hidden_states=hidden_states,
            mask_ratio=mask_ratio,
        )
        return output if return_dict else output.to_tuple()

    # --- inference -------------------------------------------------------------------------------

    def predictions_to_latents(self, predictions: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Undo the per-patch normalisation of `norm_latent_loss` with the statistics of the true patches.

        A normalised-target model predicts each patch's shape, not its level; the visible context cannot
        tell the level of a hidden patch, so the input's own patch statistics are used. With
        `norm_latent_loss=False` predictions are latents already.
        """
        if not self.config.norm_latent_loss:
            return predictions
        target = self.patchify(latents)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        return predictions * std + mean

    def composite_latents(self, latents: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visible patches from `latents`, hidden ones (mask 1) from `predictions` `(B, L, p*p*C)` -> `(B, C, h, w)`."""
        predicted = self.predictions_to_latents(predictions, latents)
        mask_3d = mask.unsqueeze(-1).to(predicted.dtype)
        return self.unpatchify(self.patchify(latents) * (1 - mask_3d) + predicted * mask_3d)

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) patch mask -> (B, 1, H, W) pixel mask: each latent patch covers p * f pixels a side."""
        grid = self.config.latent_size // self.config.patch_size
        side = self.config.image_size // grid
        mask = mask.reshape(-1, 1, grid, grid)
        return mask.repeat_interleave(side, dim=2).repeat_interleave(side, dim=3)

    @torch.no_grad()
    def reconstruct(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> LMDReconstructionOutput:
        """Hide patches, predict them, and decode: visible patches from the input latents, hidden from the model.

        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]).
            mask_ratio: ratio of random patches to hide (default `config.mask_ratio`).
            generator: seeds the random mask.
            patch_mask (`(B, L)` bool, 1 = hide): an explicit mask (inpainting) instead of a random one. Every
                sample must hide the same number of patches, at least one patch must stay visible.
        """
        latents = self.encode_images(pixel_values).to(self.encoder.patch_embed.weight.dtype)
        batch, num_patches = latents.shape[0], self.config.num_patches
        if patch_mask is not None:
            if tuple(patch_mask.shape) != (batch, num_patches):
                raise ValueError(f"Expected patch_mask of shape ({batch}, {num_patches}), got {tuple(patch_mask.shape)}.")
            hidden_counts = patch_mask.bool().sum(dim=1)
            if not bool((hidden_counts == hidden_counts[0]).all()) or int(hidden_counts[0]) >= num_patches:
                raise ValueError(
                    "Every sample of patch_mask must hide the same number of patches and leave at least one "
                    f"visible; got hidden counts {hidden_counts.tolist()} of {num_patches}."
                )
            num_visible = num_patches - int(hidden_counts[0])
            # Hidden patches get noise in [1, 2), visible ones in [0, 1): argsort keeps exactly the visible ones.
            noise = patch_mask.to(latents.device).float() + torch.rand(batch, num_patches, generator=generator)
        else:
            ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
            num_visible = self.num_visible_patches(ratio)
            noise = torch.rand(batch, num_patches, generator=generator).to(latents.device)

        encoded, mask, ids_restore, _ = self.forward_encoder(latents, num_visible, noise)
        composite_latents = self.composite_latents(latents, self.forward_decoder(encoded, ids_restore), mask)

        reconstruction = self.decode_latents(composite_latents).clamp(-1, 1)
        pixel_mask = self.pixel_mask(mask).to(reconstruction.dtype)
        masked_images = pixel_values.to(reconstruction) * (1 - pixel_mask)  # hidden regions -> mid grey (0)
        return LMDReconstructionOutput(
            reconstruction=reconstruction,
            masked_images=masked_images,
            mask=mask,
            pixel_mask=pixel_mask,
            latents=composite_latents,
        )


def load_pretrained_vae(name_or_path: str, subfolder: str | None = None, **kwargs) -> nn.Module:
    """Load a diffusers VAE of any supported class from a local folder or Hub id, reading `_class_name`."""
    config = AutoencoderKL.load_config(name_or_path, subfolder=subfolder, **kwargs)
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name not in VAE_CLASSES:
        raise ValueError(
            f"{name_or_path} holds a {class_name}; expected one of {', '.join(VAE_CLASSES)}."
        )
    return VAE_CLASSES[class_name].from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


# --- downstream: features and image classification ------------------------------------------------------------


def pool_tokens(encoded: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Encoder output `(B, 1 + L, D)` (cls token first) -> `(B, D)`: mean over patch tokens, or the cls token."""
    if pooling == "mean":
        return encoded[:, 1:, :].mean(dim=1)
    if pooling == "cls":
        return encoded[:, 0, :]
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}.")


class LMDForImageClassification(LMDPreTrainedModel):
    """The LMD encoder, without masking, on the frozen VAE's latents, with a linear classification head.

    Parameter names match [`LMDModel`] (`vae.*`, `encoder.*`), so
    `LMDForImageClassification.from_pretrained(lmd_checkpoint, num_labels=10)` loads the pre-trained encoder and
    VAE and initialises only the head (`fc_norm`, `classifier`); the LMD decoder is ignored. The pooling is
    `config.classifier_pooling` (`"mean"` over patch tokens by default, or `"cls"`; also accepted as a keyword).

    Example:

    ```python
    >>> from modeling_lmd import LMDForImageClassification
    >>> model = LMDForImageClassification.from_pretrained("path/to/lmd-checkpoint", num_labels=10)
    >>> out = model(pixel_values=images, labels=labels)  # out.loss, out.logits (B, 10)
    ```
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: LMDConfig, classifier_pooling: str | None = None):
        super().__init__(config)
        if classifier_pooling is not None:  # also reachable as `from_pretrained(..., classifier_pooling="cls")`
            config.classifier_pooling = classifier_pooling
        self.num_labels = config.num_labels
        self.pooling = getattr(config, "classifier_pooling", "mean")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"config.classifier_pooling must be 'mean' or 'cls', got {self.pooling!r}.")
        self.vae = build_vae(config)
        self.encoder = LMDEncoder(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)` in [-1, 1]): images, encoded by the frozen VAE.
            latents (`(B, C, h, w)`): precomputed unit-scaled latents instead of images.
            labels (`(B,)` class indices): cross-entropy loss (mean squared error when `num_labels == 1`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = bool(output_hidden_states or self.config.output_hidden_states)
        latents = self.latents_from_inputs(pixel_values, latents)
        encoded, hidden_states = self.encode_unmasked(latents, output_hidden_states)
        logits = self.classifier(self.fc_norm(pool_tokens(encoded, self.pooling)))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))

        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = [
    "LMDForImageClassification",
    "LMDModel",
    "LMDPreTrainedModel",
    "LMDOutput",
    "LMDReconstructionOutput",
    "load_pretrained_vae",
    "pool_tokens",
]

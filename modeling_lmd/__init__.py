"""modeling_lmd: LMD (Latent Masking Diffusion) for Hugging Face transformers and diffusers.

Importing the package registers `LMDConfig` / `LMDModel` with the transformers Auto classes, and marks them
so that every saved checkpoint carries `auto_map` and the modeling code (loadable with `trust_remote_code=True`
where this package is not installed).
"""

from transformers import AutoConfig, AutoModel

from .configuration_lmd import PRESETS, LMDConfig
from .mask_schedulers import MASK_SCHEDULES, mask_ratio_at
from .modeling_lmd import LMDModel, LMDOutput, LMDPreTrainedModel, LMDReconstructionOutput, load_pretrained_vae


AutoConfig.register(LMDConfig.model_type, LMDConfig, exist_ok=True)
AutoModel.register(LMDConfig, LMDModel, exist_ok=True)
LMDConfig.register_for_auto_class()
LMDModel.register_for_auto_class("AutoModel")

__version__ = "0.1.0"

__all__ = [
    "LMDConfig",
    "LMDModel",
    "LMDOutput",
    "LMDPreTrainedModel",
    "LMDReconstructionOutput",
    "MASK_SCHEDULES",
    "PRESETS",
    "load_pretrained_vae",
    "mask_ratio_at",
]

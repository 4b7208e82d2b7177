"""modeling_lmd: LMD (Latent Masking Diffusion) for Hugging Face transformers and diffusers.

Importing the package registers `LMDConfig` / `LMDModel` with the transformers Auto classes, and marks them
so that every saved checkpoint carries `auto_map` and the modeling code (loadable with `trust_remote_code=True`
where this package is not installed).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_lmd import PRESETS, LMDConfig
from .image_processing_lmd import LMDImageProcessor
from .mask_schedulers import MASK_SCHEDULES, mask_ratio_at
from .modeling_lmd import (
    LMDForImageClassification,
    LMDModel,
    LMDOutput,
    LMDPreTrainedModel,
    LMDReconstructionOutput,
    load_pretrained_vae,
)
from .pipeline_lmd import LMDReconstructionPipeline, register_pipeline


AutoConfig.register(LMDConfig.model_type, LMDConfig, exist_ok=True)
AutoModel.register(LMDConfig, LMDModel, exist_ok=True)
LMDConfig.register_for_auto_class()
LMDModel.register_for_auto_class("AutoModel")

# Downstream: classifier, image processor and the "lmd-reconstruction" pipeline (issue 5).
AutoModelForImageClassification.register(LMDConfig, LMDForImageClassification, exist_ok=True)
LMDForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AutoImageProcessor.register(LMDConfig, image_processor_classes={"pil": LMDImageProcessor}, exist_ok=True)
LMDImageProcessor.register_for_auto_class()
register_pipeline(LMDConfig)  # in-process: the local pipeline, not the checkpoint's remote copy

__version__ = "0.1.0"

__all__ = [
    "LMDConfig",
    "LMDForImageClassification",
    "LMDImageProcessor",
    "LMDModel",
    "LMDOutput",
    "LMDPreTrainedModel",
    "LMDReconstructionOutput",
    "LMDReconstructionPipeline",
    "MASK_SCHEDULES",
    "PRESETS",
    "load_pretrained_vae",
    "mask_ratio_at",
]

"""modeling_lmd: LMD (Latent Masking Diffusion) for Hugging Face transformers and diffusers.

Importing the package registers the LMD classes with the transformers Auto classes (`AutoModel` -> `LMDModel`,
`AutoModelForPreTraining` -> `LMDForPreTraining`, `AutoModelForImageClassification`, `AutoImageProcessor`) and the
`"lmd-reconstruction"` task with `PIPELINE_REGISTRY`, and marks the classes so that every saved model, processor and
pipeline carries its code (every `LMDConfig` carries `auto_map`), loadable with `trust_remote_code=True` where this
package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_lmd import PRESETS, LMDConfig
from .image_processing_lmd import LMDImageProcessor
from .mask_schedulers import MASK_SCHEDULES, mask_ratio_at
from .modeling_lmd import (
    LMDForImageClassification,
    LMDForPreTraining,
    LMDForPreTrainingOutput,
    LMDModel,
    LMDModelOutput,
    LMDPreTrainedModel,
)
from .pipeline_lmd import TASK, LMDReconstructionPipeline
from .reconstruction_lmd import LMDReconstructionOutput, reconstruct
from .vae_lmd import load_pretrained_vae


AutoConfig.register(LMDConfig.model_type, LMDConfig, exist_ok=True)
AutoModel.register(LMDConfig, LMDModel, exist_ok=True)
AutoModelForPreTraining.register(LMDConfig, LMDForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(LMDConfig, LMDForImageClassification, exist_ok=True)
AutoImageProcessor.register(LMDConfig, image_processor_classes={"pil": LMDImageProcessor}, exist_ok=True)

LMDConfig.register_for_auto_class()
LMDModel.register_for_auto_class("AutoModel")
LMDForPreTraining.register_for_auto_class("AutoModelForPreTraining")
LMDForImageClassification.register_for_auto_class("AutoModelForImageClassification")
LMDImageProcessor.register_for_auto_class()

PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=LMDReconstructionPipeline, pt_model=AutoModelForPreTraining, type="image"
)

__version__ = "0.2.0"

__all__ = [
    "LMDConfig",
    "LMDForImageClassification",
    "LMDForPreTraining",
    "LMDForPreTrainingOutput",
    "LMDImageProcessor",
    "LMDModel",
    "LMDModelOutput",
    "LMDPreTrainedModel",
    "LMDReconstructionOutput",
    "LMDReconstructionPipeline",
    "MASK_SCHEDULES",
    "PRESETS",
    "load_pretrained_vae",
    "mask_ratio_at",
    "reconstruct",
]

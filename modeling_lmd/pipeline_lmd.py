"""The `"lmd-reconstruction"` pipeline: masked reconstruction and inpainting with an LMD model.

Shipped as remote code next to every `LMDModel` checkpoint (config.json's `custom_pipelines` points here), so it
imports only numpy, PIL, torch, transformers and the sibling image processor.
"""

from typing import Any

import torch
from transformers import Pipeline

from .image_processing_lmd import LMDImageProcessor, to_rgb_image


TASK = "lmd-reconstruction"
# What config.json's `custom_pipelines` holds for the task: the pipeline file and the Auto class of its model.
CUSTOM_PIPELINE_ENTRY = {"impl": "pipeline_lmd.LMDReconstructionPipeline", "pt": ["AutoModel"], "type": "image"}


class LMDReconstructionPipeline(Pipeline):
    r"""
    Hides latent patches of each image and lets an LMD model fill them in.

    Without `mask`, a random `mask_ratio` of patches is hidden (seeded by `seed`). With `mask` (inpainting), the
    latent patches that the mask touches are hidden and filled by the model; the others come from the image.

    Inputs: a path, PIL image, numpy array or tensor, a `{"image": ..., "mask": ...}` dict, or a list of those.

    Returns, per image, a dict with `reconstruction` (PIL), `masked_image` (PIL: the input with the hidden
    patches greyed out), `mask` (boolean numpy array `(H, W)` at the model's resolution, True = filled in by the
    model) and `patch_mask` (boolean `(L,)` over latent patches).

    Example:

    ```python
    >>> import modeling_lmd  # registers the task (or pass trust_remote_code=True without the package)
    >>> from transformers import pipeline
    >>> pipe = pipeline("lmd-reconstruction", model="path/to/lmd-checkpoint")
    >>> out = pipe("photo.png", mask_ratio=0.5, seed=0)
    >>> out["reconstruction"].save("reconstruction.png")
    >>> filled = pipe("photo.png", mask=hole)  # inpainting: hole is a bool array over the photo's pixels
    ```
    """

    _load_image_processor = None  # optional: built from the model config when the checkpoint has none
    _load_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            self.image_processor = LMDImageProcessor.from_model_config(self.model.config)

    def _sanitize_parameters(self, mask_ratio=None, seed=None, mask=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {TASK}: {', '.join(sorted(kwargs))}.")
        if mask_ratio is not None and not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        if mask is not None and mask_ratio is not None:
            raise ValueError("Pass either `mask` (inpainting) or `mask_ratio` (random masking), not both.")
        preprocess_params = {} if mask is None else {"mask": mask}
        forward_params = {}
        if mask_ratio is not None:
            forward_params["mask_ratio"] = float(mask_ratio)
        if seed is not None:
            forward_params["seed"] = int(seed)
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs: Any, mask: Any = None) -> dict[str, Any]:
        if isinstance(inputs, dict):
            if "image" not in inputs:
                raise ValueError("A dict input needs an 'image' key (and optionally 'mask').")
            mask = inputs.get("mask", mask)
            inputs = inputs["image"]
        image = to_rgb_image(inputs)
        pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"]
        model_inputs = {"pixel_values": pixel_values.to(self.dtype or torch.float32)}
        if mask is not None:
            pixel_mask = self.image_processor.preprocess_mask(mask, (image.height, image.width))
            model_inputs["patch_mask"] = self.patch_mask_from_pixels(torch.from_numpy(pixel_mask))[None]
        return model_inputs

    def patch_mask_from_pixels(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """`(H, W)` boolean at the model's resolution -> `(L,)` boolean: a patch is hidden if any pixel is."""
        config = self.model.config
        grid = config.latent_size // config.patch_size
        height, width = pixel_mask.shape
        if height != config.image_size or width != config.image_size or height % grid != 0:
            raise ValueError(
                f"The processed mask is {height}x{width}; the model works on {config.image_size}x{config.image_size}."
            )
        side = height // grid  # pixels per latent patch side: patch_size * VAE factor
        cells = pixel_mask.reshape(grid, side, grid, side).any(dim=3).any(dim=1)
        patch_mask = cells.reshape(-1)
        if bool(patch_mask.all()):
            raise ValueError(
                "The mask touches every latent patch, so nothing of the image would stay visible; "
                f"leave at least one {side}x{side}-pixel cell (at {height}x{width}) unmasked."
            )
        return patch_mask

    def _forward(self, model_inputs: dict[str, Any], mask_ratio: float | None = None, seed: int | None = None):
        patch_mask = model_inputs.get("patch_mask")
        if seed is None and patch_mask is not None:
            seed = 0  # inpainting is deterministic: the seed only orders tokens (float rounding), fix it anyway
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        output = self.model.reconstruct(
            model_inputs["pixel_values"], mask_ratio=mask_ratio, generator=generator, patch_mask=patch_mask
        )
        return {
            "reconstruction": output.reconstruction,
            "masked_images": output.masked_images,
            "mask": output.mask,
            "pixel_mask": output.pixel_mask,
        }

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        processor = self.image_processor
        return {
            "reconstruction": processor.postprocess(model_outputs["reconstruction"])[0],
            "masked_image": processor.postprocess(model_outputs["masked_images"])[0],
            "mask": model_outputs["pixel_mask"][0, 0].bool().numpy(),
            "patch_mask": model_outputs["mask"][0].bool().numpy(),
        }


def register_pipeline(config_class=None) -> None:
    """Register the task with transformers' `pipeline()` for this process (done by `import modeling_lmd`).

    Checkpoints list the task in config.json's `custom_pipelines` for users without the package; transformers
    treats such a task as remote code and refuses it without `trust_remote_code=True`, even where the task is
    registered locally. So configs of `config_class` loaded in this process drop that entry (saving an
    `LMDModel` writes it again).
    """
    import functools

    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=LMDReconstructionPipeline, pt_model=AutoModel, type="image")
    if config_class is None or getattr(config_class, "_lmd_local_pipeline", False):
        return
    post_init = config_class.__post_init__

    @functools.wraps(post_init)
    def __post_init__(self, **kwargs):
        post_init(self, **kwargs)
        custom_pipelines = self.__dict__.get("custom_pipelines")
        if custom_pipelines and TASK in custom_pipelines:
            remaining = {task: info for task, info in custom_pipelines.items() if task != TASK}
            if remaining:
                self.custom_pipelines = remaining
            else:
                del self.custom_pipelines

    config_class.__post_init__ = __post_init__
    config_class._lmd_local_pipeline = True


__all__ = ["CUSTOM_PIPELINE_ENTRY", "LMDReconstructionPipeline", "TASK", "register_pipeline"]

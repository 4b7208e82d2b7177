"""The `"lmd-reconstruction"` pipeline: masked reconstruction and inpainting with an LMD pre-training model.

Shipped as remote code next to every `LMDForPreTraining` checkpoint (config.json's `custom_pipelines` points here),
so it imports only numpy, torch, transformers and its sibling modules. The reconstruction itself is
`reconstruction_lmd.reconstruct`; this file turns user inputs into its arguments and its outputs into images.
"""

from typing import Any

import torch
from transformers import Pipeline

from .image_processing_lmd import LMDImageProcessor, to_rgb_image
from .mask_schedulers import check_mask_ratio
from .reconstruction_lmd import reconstruct


TASK = "lmd-reconstruction"


class LMDReconstructionPipeline(Pipeline):
    r"""
    Hides latent patches of each image and lets an LMD model fill them in.

    Without `mask`, a random `mask_ratio` of patches is hidden; with `seed`, image `i` of a call gets the mask drawn
    from `(seed, i)`, so batching (`batch_size`) changes nothing. With `mask` (inpainting), the latent patches that
    the mask touches are hidden and filled by the model. Either way nothing under the mask reaches the output, and
    the visible pixels are the input's own (see `reconstruction_lmd.reconstruct`).

    Inputs: a path, PIL image, numpy array or tensor, a `{"image": ..., "mask": ...}` dict, or a list of those.
    Options: `mask_ratio`, `seed`, `mask`, `num_inference_steps` (progressive un-masking), `reveal_order`.

    Returns, per image, a dict with `reconstruction` (PIL: the fill inside the hidden region, the input outside),
    `decoded` (PIL: the raw decode of the composite latents), `masked_image` (PIL: the input with the hidden
    patches greyed out), `mask` (boolean numpy array `(H, W)` at the model's resolution, True = filled in by the
    model) and `patch_mask` (boolean `(L,)` over latent patches).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("lmd-reconstruction", model="path/to/lmd-checkpoint", trust_remote_code=True)
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

    def __call__(self, inputs, **kwargs):
        # Number the images of this call, so that each one's random mask depends on (seed, index) only.
        if isinstance(inputs, (list, tuple)):
            inputs = [{**self._as_dict(item), "index": index} for index, item in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)

    @staticmethod
    def _as_dict(item: Any) -> dict:
        if isinstance(item, dict):
            if "image" not in item:
                raise ValueError("A dict input needs an 'image' key (and optionally 'mask').")
            return dict(item)
        return {"image": item}

    def _sanitize_parameters(self, mask_ratio=None, seed=None, mask=None, num_inference_steps=None,
                             reveal_order=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {TASK}: {', '.join(sorted(kwargs))}.")
        if mask_ratio is not None:
            check_mask_ratio(mask_ratio)
        if mask is not None and mask_ratio is not None:
            raise ValueError("Pass either `mask` (inpainting) or `mask_ratio` (random masking), not both.")
        preprocess_params = {}
        if mask is not None:
            preprocess_params["mask"] = mask
        if seed is not None:
            preprocess_params["seed"] = int(seed)
        forward_params = {}
        if mask_ratio is not None:
            forward_params["mask_ratio"] = float(mask_ratio)
        if num_inference_steps is not None:
            forward_params["num_inference_steps"] = int(num_inference_steps)
        if reveal_order is not None:
            forward_params["reveal_order"] = reveal_order
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs: Any, mask: Any = None, seed: int | None = None) -> dict[str, Any]:
        item = self._as_dict(inputs)
        mask = item.get("mask", mask)
        image = to_rgb_image(item["image"])
        pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"]
        # Image `index` of a seeded call draws its mask (and reveal order) from `seed * 1_000_003 + index` only.
        image_seed = int(torch.randint(0, 2**62, ())) if seed is None else seed * 1_000_003 + item.get("index", 0)
        model_inputs = {"pixel_values": pixel_values.to(self.dtype or torch.float32), "seed": torch.tensor([image_seed])}
        if mask is not None:
            pixel_mask = self.image_processor.preprocess_mask(mask, (image.height, image.width))
            model_inputs["patch_mask"] = self.model.patch_mask(torch.from_numpy(pixel_mask)[None])
        return model_inputs

    def _forward(self, model_inputs: dict[str, Any], mask_ratio: float | None = None, num_inference_steps: int = 1,
                 reveal_order: str = "random") -> dict[str, torch.Tensor]:
        generators = [torch.Generator().manual_seed(int(seed)) for seed in model_inputs["seed"]]
        output = reconstruct(
            self.model, model_inputs["pixel_values"], mask_ratio=mask_ratio, patch_mask=model_inputs.get("patch_mask"),
            generator=generators, num_inference_steps=num_inference_steps, reveal_order=reveal_order,
        )
        return {key: output[key] for key in ("reconstruction", "decoded", "masked_images", "mask", "pixel_mask")}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        processor = self.image_processor
        return {
            "reconstruction": processor.postprocess(model_outputs["reconstruction"])[0],
            "decoded": processor.postprocess(model_outputs["decoded"])[0],
            "masked_image": processor.postprocess(model_outputs["masked_images"])[0],
            "mask": model_outputs["pixel_mask"][0, 0].bool().numpy(),
            "patch_mask": model_outputs["mask"][0].bool().numpy(),
        }


__all__ = ["LMDReconstructionPipeline", "TASK"]

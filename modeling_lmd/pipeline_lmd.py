"""The `"lmd-reconstruction"` pipeline: masked reconstruction and inpainting of photos at their own size with an LMD
pre-training model.

Shipped as remote code next to every checkpoint it saves (`pipe.save_pretrained(folder)` adds config.json's
`custom_pipelines` entry), so it imports only numpy, torch, transformers and its sibling modules. The reconstruction
itself is `reconstruction_lmd.reconstruct`; this file turns user inputs into its arguments and its outputs into
images.
"""

from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from .image_processing_lmd import LMDImageProcessor, to_rgb_image
from .mask_schedulers import check_mask_ratio
from .reconstruction_lmd import colour_correct, paste_into_photo, reconstruct


TASK = "lmd-reconstruction"


class LMDReconstructionPipeline(Pipeline):
    r"""
    Hides part of each photo and lets an LMD model fill it in; returns the photo at its own size.

    The model sees a square region of the photo at its own resolution (`config.image_size`): with `mask`
    (inpainting), a square around the masked area with `padding_mask_crop` pixels of context (default: half the
    mask's extent; see `LMDImageProcessor.mask_crop_box`); without, the photo's centred square, where a random
    `mask_ratio` of latent patches is hidden. Either way the hidden pixels are painted over before the VAE sees them
    (nothing under the mask reaches the output), and the model's fill is resized back and pasted into the photo:
    outside the filled region the result is the photo's own pixels, blended over a narrow band at the border.

    Inputs: a path, PIL image, numpy array or tensor, a `{"image": ..., "mask": ...}` dict, or a list of those.
    Options: `mask` (a boolean array or PIL image over the photo's pixels; for a list of photos, one mask for all or a
    list of one per photo), `mask_ratio`, `seed` (image `i` of a
    call draws its mask and reveal order from `(seed, i)`, so batching changes nothing) or `generator` (a
    `torch.Generator`, as in diffusers), `padding_mask_crop`, `num_inference_steps` (progressive un-masking),
    `reveal_order`, `output_type` (`"pil"`, `"np"` float in [0, 1] `(H, W, 3)`, `"pt"` `(3, H, W)`).

    Returns, per image, a dict:

    - `reconstruction`: the photo at its own size, filled in;
    - `mask`: boolean `(H, W)` over the photo, True where the model's fill was used (the user's mask, or the
      hidden latent patches mapped onto the photo);
    - `crop_box`: `(left, top, right, bottom)`, the photo region the model saw;
    - at the model's resolution: `model_reconstruction` (fill inside, input outside), `model_decoded` (the raw
      decode), `model_masked_image` (hidden patches grey), `model_mask` (boolean `(S, S)`) and `patch_mask`
      (boolean `(L,)` over latent patches).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("lmd-reconstruction", model="path/to/lmd-checkpoint", trust_remote_code=True)
    >>> out = pipe("photo.png", mask_ratio=0.5, seed=0)
    >>> out["reconstruction"].save("reconstruction.png")
    >>> hole = np.zeros((photo_height, photo_width), dtype=bool); hole[40:90, 60:120] = True
    >>> pipe("photo.png", mask=hole)["reconstruction"]  # inpainting, at the photo's size
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
        if isinstance(inputs, (list, tuple)):
            masks = kwargs.get("mask")
            if isinstance(masks, (list, tuple)):  # one mask per image, as diffusers' pipelines take a list
                if len(masks) != len(inputs):
                    raise ValueError(f"Got {len(masks)} masks for {len(inputs)} images; pass one mask per image.")
                del kwargs["mask"]
                inputs = [{**self._as_dict(item), "mask": mask} for item, mask in zip(inputs, masks)]
            # Number the images of this call, so that each one's random mask depends on (seed, index) only.
            inputs = [{**self._as_dict(item), "index": index} for index, item in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)

    @staticmethod
    def _as_dict(item: Any) -> dict:
        if isinstance(item, dict):
            if "image" not in item:
                raise ValueError("A dict input needs an 'image' key (and optionally 'mask').")
            return dict(item)
        return {"image": item}

    def _sanitize_parameters(self, mask_ratio=None, seed=None, generator=None, mask=None, padding_mask_crop=None,
                             num_inference_steps=None, reveal_order=None, output_type=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {TASK}: {', '.join(sorted(kwargs))}.")
        if mask_ratio is not None:
            check_mask_ratio(mask_ratio)
        if mask is not None and mask_ratio is not None:
            raise ValueError("Pass either `mask` (inpainting) or `mask_ratio` (random masking), not both.")
        if seed is not None and generator is not None:
            raise ValueError("Pass either `seed` or `generator`, not both.")
        preprocess_params = {"mask": mask, "seed": seed, "padding_mask_crop": padding_mask_crop}
        forward_params = {"mask_ratio": mask_ratio, "generator": generator,
                          "num_inference_steps": num_inference_steps, "reveal_order": reveal_order}
        postprocess_params = {"output_type": output_type}
        return tuple({k: v for k, v in params.items() if v is not None}
                     for params in (preprocess_params, forward_params, postprocess_params))

    def preprocess(self, inputs: Any, mask: Any = None, seed: int | None = None,
                   padding_mask_crop: int | None = None) -> dict[str, Any]:
        item = self._as_dict(inputs)
        mask = item.get("mask", mask)
        image = to_rgb_image(item["image"])
        processor = self.image_processor
        photo_mask = None if mask is None else processor.mask_array(mask, (image.height, image.width))
        box = (processor.center_square_box(image.height, image.width) if photo_mask is None
               else processor.mask_crop_box(photo_mask, padding_mask_crop))
        crop = image.crop(box)
        dtype = self.dtype or torch.float32
        # Image `index` of a seeded call draws its mask (and reveal order) from `seed * 1_000_003 + index` only.
        image_seed = int(torch.randint(0, 2**62, ())) if seed is None else int(seed) * 1_000_003 + item.get("index", 0)
        # The photo, its crop box and its mask travel as PIL images and tuples: batching leaves those untouched.
        model_inputs = {
            "pixel_values": processor(crop, do_center_crop=False, return_tensors="pt")["pixel_values"].to(dtype),
            "seed": torch.tensor([image_seed]),
            "photo": image,
            "box": box,
        }
        if photo_mask is not None:
            left, top, right, bottom = box
            model_mask = processor.preprocess_mask(photo_mask[top:bottom, left:right], (bottom - top, right - left),
                                                   do_center_crop=False)
            model_inputs["patch_mask"] = self.model.patch_mask(torch.from_numpy(model_mask)[None])
            model_inputs["photo_mask"] = processor.mask_to_pil(photo_mask)
        return model_inputs

    def _forward(self, model_inputs: dict[str, Any], mask_ratio: float | None = None, generator=None,
                 num_inference_steps: int = 1, reveal_order: str = "random") -> dict[str, torch.Tensor]:
        if generator is None:
            generator = [torch.Generator().manual_seed(int(seed)) for seed in model_inputs["seed"]]
        pixel_values = model_inputs["pixel_values"]
        output = reconstruct(self.model, pixel_values, mask_ratio=mask_ratio, patch_mask=model_inputs.get("patch_mask"),
                             generator=generator, num_inference_steps=num_inference_steps, reveal_order=reveal_order)
        return {**output, "fill": colour_correct(output.decoded, pixel_values.to(output.decoded.dtype),
                                                 output.pixel_mask),
                **{key: model_inputs[key] for key in ("photo", "box", "photo_mask") if key in model_inputs}}

    def postprocess(self, model_outputs: dict[str, Any], output_type: str = "pil") -> dict[str, Any]:
        processor, box = self.image_processor, model_outputs["box"]
        photo = processor(model_outputs["photo"], do_resize=False, return_tensors="pt")["pixel_values"]
        if "photo_mask" in model_outputs:
            region = torch.from_numpy(np.array(model_outputs["photo_mask"]) > 0)[None, None].float()
        else:  # the hidden latent patches, mapped from the model's square onto the photo
            region = torch.zeros_like(photo[:, :1])
            left, top, right, bottom = box
            region[..., top:bottom, left:right] = torch.nn.functional.interpolate(
                model_outputs["pixel_mask"].float(), size=(bottom - top, right - left), mode="nearest")
        # The feathering band, measured at the model's resolution, scaled to the photo's pixels.
        config = self.model.config
        radius = round(config.vae_downsampling_factor * (box[2] - box[0]) / config.image_size)
        reconstruction = paste_into_photo(model_outputs["fill"].float(), photo, box, region, radius)

        def image(values: torch.Tensor):
            return processor.postprocess(values, output_type=output_type)[0]

        return {
            "reconstruction": image(reconstruction),
            "mask": region[0, 0].bool().numpy(),
            "crop_box": box,
            "model_reconstruction": image(model_outputs["reconstruction"]),
            "model_decoded": image(model_outputs["decoded"]),
            "model_masked_image": image(model_outputs["masked_images"]),
            "model_mask": model_outputs["pixel_mask"][0, 0].bool().numpy(),
            "patch_mask": model_outputs["mask"][0].bool().numpy(),
        }


__all__ = ["LMDReconstructionPipeline", "TASK"]

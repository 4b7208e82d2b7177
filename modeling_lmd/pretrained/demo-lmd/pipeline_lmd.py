"""The `"lmd-reconstruction"` pipeline: masked reconstruction and inpainting of photos at their own size with an LMD
pre-training model.

Shipped as remote code next to every checkpoint it saves (`pipe.save_pretrained(folder)` adds config.json's
`custom_pipelines` entry), so it imports only numpy, PIL, torch, transformers and its sibling modules. The
reconstruction itself is `reconstruction_lmd.reconstruct`; this file turns user inputs into its arguments and its
outputs into images.
"""

import numbers
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import Pipeline

from .configuration_lmd import REVEAL_ORDERS, check_choice
from .image_processing_lmd import LMDImageProcessor, check_output_type, naming_list_item, open_image, to_rgb_image
from .mask_schedulers import check_mask_ratio
from .reconstruction_lmd import choose_hidden_patches, colour_correct, reconstruct


TASK = "lmd-reconstruction"
#: Photo pixels, inside the mask, over which the model's fill fades into the photo (`blend_width`): none, as
#: diffusers blurs a mask only when asked, so that by default nothing under the mask reaches the output.
DEFAULT_BLEND_WIDTH = 0
SEED_BITS = 64  # what `torch.Generator.manual_seed` takes


def whole_number(name: str, value: Any, minimum: int) -> int:
    """`value` as an int, or a `ValueError` saying what came: bools, floats (even 2.0) and strings are refused, so
    that 1.9 is never silently read as 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    return int(value)


def fold_seed(seed: Any) -> int:
    """A seed as diffusers users pass one: any int >= 0 (numpy ints too). Seeds of 2**64 and above are folded into
    64 bits by XOR of their 64-bit words, so `time.time_ns()` or a hash works and every bit counts."""
    seed, folded = whole_number("seed", seed, 0), 0
    while seed:
        folded ^= seed & (2**SEED_BITS - 1)
        seed >>= SEED_BITS
    return folded


def image_generator(seed: int | None, generator, index: int) -> torch.Generator:
    """Image `index` of a call's own random stream (its mask, then its reveal order), so that neither the batch
    size nor the other images change what it draws: `generator[index]` for one generator per image; from `seed`,
    `torch.Generator().manual_seed(seed + index)` (diffusers' idiom for a batch); from one `generator`, a seed drawn
    from it in image order; else a seed from torch's global RNG."""
    if isinstance(generator, (list, tuple)):
        return generator[index]
    if seed is None:
        source = {} if generator is None else {"generator": generator, "device": generator.device}
        seed, index = int(torch.randint(0, 2**63 - 1, (), **source)), 0
    return torch.Generator().manual_seed((seed + index) % 2**SEED_BITS)


def no_context_message(crop_box: tuple[int, int, int, int], image_size: tuple[int, int], padding: int | None) -> str:
    """Why a mask that covers every latent patch of the crop cannot be filled, and what to change."""
    left, top, right, bottom = crop_box
    seen = f"the {right - left}x{bottom - top} region {crop_box}"
    if (right - left, bottom - top) == (image_size[1], image_size[0]):
        return (f"The mask touches every latent patch of the region the model sees ({seen}: the whole photo), so "
                "nothing is left to fill it from; leave more of the photo unmasked.")
    given = "the default padding_mask_crop" if padding is None else f"padding_mask_crop={padding}"
    return (f"With {given} the mask touches every latent patch of the region the model sees ({seen}), so nothing "
            "is left to fill it from; pass a larger padding_mask_crop (pixels of context around the mask), or leave "
            "it unset (half the mask's extent).")


class LMDReconstructionPipeline(Pipeline):
    r"""
    Hides part of each photo and lets an LMD model fill it in; returns the photo at its own size.

    The model sees a region of the photo at its own resolution (`config.image_size`): with `mask` (inpainting), a
    square around the whole mask with `padding_mask_crop` pixels of context (diffusers' `get_crop_region`; default
    half the mask's extent; see `LMDImageProcessor.mask_crop_box`); without, the photo's centred square, where a
    random `mask_ratio` of latent patches is hidden. Either way nothing under the mask reaches the model: the
    hidden photo pixels are painted over before the photo is resized to the model's view
    (`LMDImageProcessor.model_view`), and the hidden patches again before the VAE sees them. The model's fill is
    pasted back into the photo inside the mask only (diffusers' `apply_overlay`): outside the mask, the user's or
    the hidden patches, the result is the photo bit for bit, and inside it the fill, unless `blend_width` asks
    for a band where the photo's own pixels fade in.

    Images are read by `image_processing_lmd.to_rgb_image`: upright by their EXIF orientation (paths, PIL images
    and mask images alike), 16-bit scaled by 255 / 65535, floats in [0, 1], transparency onto white with a warning.

    Inputs: a path, PIL image, numpy array or tensor, a `{"image": ..., "mask": ...}` dict, or a list of those
    (diffusers' names work too: `image=`, `mask_image=`). Options, all checked before any compute:

    - `mask`: a boolean array, PIL image or file over the photo's pixels; for a list of photos, one for all or a
      list of one per photo.
    - `mask_ratio`: the share of latent patches to hide at random (default `config.mask_ratio`).
    - `seed` (any int >= 0; image `i` of a call draws from `torch.Generator().manual_seed(seed + i)`, seeds of
      2**64 and above folded into 64 bits) or `generator` (a `torch.Generator`, from which each image draws a seed
      of its own, or a list of one per image).
    - `padding_mask_crop` (int >= 0), `blend_width` (int >= 0, default 0: the fill pasted hard, so no pixel under
      the mask reaches the output; `n` fades the fill in over the mask's outer `n` pixels, where the photo's own
      pixels then show with weight `1 - LMDImageProcessor.blend_weights`).
    - `num_inference_steps` (progressive un-masking), `reveal_order`, `output_type` (`"pil"`, `"np"` float in
      [0, 1] `(H, W, 3)`, `"pt"` `(3, H, W)`).

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
    >>> pipe(image="photo.png", mask_image="mask.png")["reconstruction"]  # inpainting, at the photo's size
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

    def __call__(self, inputs=None, **kwargs):
        inputs = self._take_diffusers_names(inputs, kwargs)
        count = len(inputs) if isinstance(inputs, (list, tuple)) else 1
        generator = kwargs.get("generator")
        if isinstance(generator, (list, tuple)) and len(generator) != count:
            raise ValueError(f"Got {len(generator)} generators for {count} image(s); pass one per image, or one "
                             "torch.Generator for all.")
        if isinstance(inputs, (list, tuple)):
            masks = kwargs.get("mask")
            if isinstance(masks, (list, tuple)):  # one mask per image, as diffusers' pipelines take a list
                if len(masks) != len(inputs):
                    raise ValueError(f"Got {len(masks)} masks for {len(inputs)} images; pass one mask per image.")
                del kwargs["mask"]
                inputs = [{**self._as_dict(item), "mask": mask} for item, mask in zip(inputs, masks)]
            # Number the images of this call: each one's random stream depends on its index only.
            inputs = [{**self._as_dict(item), "index": index} for index, item in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)

    @staticmethod
    def _take_diffusers_names(inputs, kwargs: dict):
        """diffusers' call names as aliases: `image=` for the inputs, `mask_image=` for `mask` (`kwargs` edited)."""
        if "image" in kwargs:
            if inputs is not None:
                raise TypeError("Pass the image(s) once: as the first argument or as `image=`, not both.")
            inputs = kwargs.pop("image")
        if "mask_image" in kwargs:
            if "mask" in kwargs:
                raise TypeError("Pass `mask` or its diffusers name `mask_image`, not both.")
            kwargs["mask"] = kwargs.pop("mask_image")
        if inputs is None:
            raise TypeError("No image given: pass a path, PIL image, array or tensor (or a list), or `image=`.")
        return inputs

    @staticmethod
    def _as_dict(item: Any) -> dict:
        if isinstance(item, dict):
            if "image" not in item:
                raise ValueError("A dict input needs an 'image' key (and optionally 'mask').")
            return dict(item)
        return {"image": item}

    def _sanitize_parameters(self, mask_ratio=None, seed=None, generator=None, mask=None, padding_mask_crop=None,
                             blend_width=None, num_inference_steps=None, reveal_order=None, output_type=None,
                             **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {TASK}: {', '.join(sorted(kwargs))}.")
        if mask_ratio is not None:
            check_mask_ratio(mask_ratio)
        if mask is not None and mask_ratio is not None:
            raise ValueError("Pass either `mask` (inpainting) or `mask_ratio` (random masking), not both.")
        if seed is not None and generator is not None:
            raise ValueError("Pass either `seed` or `generator`, not both.")
        seed = None if seed is None else fold_seed(seed)
        generators = generator if isinstance(generator, (list, tuple)) else [generator]
        if generator is not None and not all(isinstance(item, torch.Generator) for item in generators):
            raise ValueError(f"`generator` must be a torch.Generator or a list of one per image, got {generator!r}.")
        for name, value, minimum in (("padding_mask_crop", padding_mask_crop, 0), ("blend_width", blend_width, 0),
                                     ("num_inference_steps", num_inference_steps, 1)):
            if value is not None:
                whole_number(name, value, minimum)
        if reveal_order is not None:
            check_choice("reveal_order", reveal_order, REVEAL_ORDERS)
        if output_type is not None:
            check_output_type(output_type)
        preprocess_params = {"mask": mask, "mask_ratio": mask_ratio, "seed": seed, "generator": generator,
                             "padding_mask_crop": padding_mask_crop}
        forward_params = {"num_inference_steps": num_inference_steps, "reveal_order": reveal_order}
        postprocess_params = {"output_type": output_type, "blend_width": blend_width}
        return tuple({k: v for k, v in params.items() if v is not None}
                     for params in (preprocess_params, forward_params, postprocess_params))

    def preprocess(self, inputs: Any, mask: Any = None, mask_ratio: float | None = None, seed: int | None = None,
                   generator=None, padding_mask_crop: int | None = None) -> dict[str, Any]:
        item = self._as_dict(inputs)
        mask = item.get("mask", mask)
        with naming_list_item(item.get("index")):
            source = open_image(item["image"])
            image = to_rgb_image(source)
            user_mask = None if mask is None else self.image_processor.photo_mask(mask, source, image)
        processor, side = self.image_processor, self.model.config.image_size
        stream = image_generator(seed, generator, item.get("index", 0))
        # The hidden patches are chosen before the model's view is made, so that the view can leave their pixels out.
        if user_mask is None:
            box = processor.center_square_box(image.height, image.width)
            grid = (side // self.model.config.patch_pixels,) * 2
            patch_mask = choose_hidden_patches(self.model, 1, grid, mask_ratio, None, [stream], "cpu")
            model_mask = self.model.pixels_of_patches(patch_mask, (side, side))[0, 0].numpy()
            hidden = self.photo_region(model_mask, box, (image.height, image.width))
        else:
            box, hidden = processor.mask_crop_box(user_mask, padding_mask_crop), user_mask
            left, top, right, bottom = box
            model_mask = processor.preprocess_mask(user_mask[top:bottom, left:right], (bottom - top, right - left),
                                                   do_center_crop=False)
            patch_mask = self.model.patches_of_pixels(torch.from_numpy(model_mask)[None])
            if bool(patch_mask.all()):
                raise ValueError(no_context_message(box, user_mask.shape, padding_mask_crop))
        view = processor.model_view(image, hidden, box)
        # The photo, its crop box and its mask travel as PIL images and tuples: batching leaves those untouched.
        return {
            "pixel_values": processor(view, do_resize=False, return_tensors="pt")["pixel_values"].to(
                self.dtype or torch.float32),
            "patch_mask": patch_mask,
            "hidden_pixels": torch.from_numpy(model_mask)[None, None],  # the mask at the model's size
            "generator": stream,  # the mask was its first draw; the reveal order comes next
            "photo": image,
            "owns_photo": image is not item["image"],  # decoded or converted here: pasted into in place
            "box": box,
            "photo_mask": PIL.Image.fromarray(hidden),  # mode "1": as small as the array
        }

    @staticmethod
    def photo_region(model_mask: np.ndarray, box: tuple[int, int, int, int],
                     photo_size: tuple[int, int]) -> np.ndarray:
        """The hidden pixels of the model's view of `box` (boolean `(S, S)`) -> boolean `(H, W)` over the photo:
        each photo pixel takes the model pixel its centre falls in (nearest)."""
        left, top, right, bottom = box
        region = np.zeros(photo_size, dtype=bool)
        region[top:bottom, left:right] = np.asarray(PIL.Image.fromarray(model_mask).resize(
            (right - left, bottom - top), PIL.Image.Resampling.NEAREST))
        return region

    def _forward(self, model_inputs: dict[str, Any], num_inference_steps: int = 1,
                 reveal_order: str = "random") -> dict[str, torch.Tensor]:
        generators = model_inputs["generator"]  # one per image, a list when batched
        pixel_values = model_inputs["pixel_values"]
        output = reconstruct(self.model, pixel_values, bool_masked_pos=model_inputs["patch_mask"],
                             hidden_pixels=model_inputs["hidden_pixels"],
                             generator=generators if isinstance(generators, list) else [generators],
                             num_inference_steps=num_inference_steps, reveal_order=reveal_order)
        return {**output, "fill": colour_correct(output.decoded, pixel_values.to(output.decoded.dtype),
                                                 output.pixel_mask),
                **{key: model_inputs[key] for key in ("photo", "owns_photo", "box", "photo_mask")}}

    def postprocess(self, model_outputs: dict[str, Any], output_type: str = "pil",
                    blend_width: int = DEFAULT_BLEND_WIDTH) -> dict[str, Any]:
        processor, photo, box = self.image_processor, model_outputs["photo"], model_outputs["box"]
        region = np.asarray(model_outputs["photo_mask"])
        fill = processor.postprocess(model_outputs["fill"])[0]
        reconstruction = processor.paste_fill(photo, fill, box, region, blend_width,
                                              copy=not model_outputs["owns_photo"])

        def image(values: torch.Tensor):
            return processor.postprocess(values, output_type=output_type)[0]

        return {
            "reconstruction": processor.photo_output(reconstruction, output_type),
            "mask": region,
            "crop_box": box,
            "model_reconstruction": image(model_outputs["reconstruction"]),
            "model_decoded": image(model_outputs["decoded"]),
            "model_masked_image": image(model_outputs["masked_images"]),
            "model_mask": model_outputs["pixel_mask"][0, 0].bool().cpu().numpy(),
            "patch_mask": model_outputs["mask"][0].bool().cpu().numpy(),
        }


__all__ = ["DEFAULT_BLEND_WIDTH", "LMDReconstructionPipeline", "TASK", "fold_seed", "image_generator"]

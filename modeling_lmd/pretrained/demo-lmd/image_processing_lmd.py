"""Image processor for LMD: any image -> RGB, resized to cover and centre-cropped, pixels in [-1, 1]; and back to PIL.
It also holds what inpainting at a photo's own size needs: the square the model sees around a mask
(`mask_crop_box`) and the fill pasted back inside the mask only (`paste_fill`).

Reading images (`to_rgb_image`, the one reader of the pipeline, the app and training), by what their values mean:

- 8-bit images are taken as they are; 16-bit ones (`I;16` PIL images, `uint16` arrays, `I` PIL images, which is how
  PIL holds some 16-bit files) scale by 255 / 65535, so 65535 is white; float images (`F`, float arrays) must be in
  [0, 1] and are refused otherwise. Nothing is stretched to an image's own range.
- Grayscale, palette, CMYK and the rest convert as PIL converts them. Transparent pixels (RGBA, LA, palette with a
  transparent colour) are composited onto white, with a warning, as a viewer on a white page shows them; opaque
  alpha is dropped silently, as it loses nothing.
- EXIF orientation is applied to paths and PIL images alike (as transformers' and diffusers' `load_image` do), and
  to mask images and mask files. Arrays and tensors carry no EXIF: a mask array is over the upright photo.

Shipped as remote code next to every checkpoint, so it imports only numpy, PIL, torch, transformers and diffusers.
"""

import contextlib
import io
import math
import os
import warnings
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageChops
import PIL.ImageOps
import PIL.ImageStat
import torch
from diffusers.image_processor import VaeImageProcessor
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict


#: The EXIF tag that says how the camera was held (1 = upright as stored).
EXIF_ORIENTATION = 0x0112
#: How far a float image may stray outside [0, 1] (rounding in a resize, say) before it is refused: half a level.
FLOAT_TOLERANCE = 0.5 / 255
TRANSPARENCY_WARNING = ("The image has transparent pixels: they were composited onto white and the alpha channel "
                        "dropped (LMD models see RGB). To choose another background, composite the image yourself, "
                        "e.g. PIL.Image.alpha_composite(background, image.convert('RGBA')).convert('RGB').")


def _decode(source, name: str, max_pixels: int | None) -> PIL.Image.Image:
    """Open and decode an image (a path or a file object), or a `ValueError` that says why not: not an image, more
    than `max_pixels` (or PIL's decompression-bomb limit) by its header before any pixel is decoded, or damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(source)  # reads the header only
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise ValueError(f"{name} is far too large (over {PIL.Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels).") from None
    except Exception as error:  # noqa: BLE001 - PIL raises several unrelated types for non-image files
        raise ValueError(f"{name} is not an image file that can be read (PNG, JPEG, WebP, TIFF, BMP, GIF, ...): "
                         f"{error}") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ValueError(f"{name} is {image.width}x{image.height} pixels ({image.width * image.height / 1e6:.1f} "
                         f"megapixels): too large. The limit is {max_pixels / 1e6:.0f} megapixels; please downscale it.")
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt pixel data, several types
        raise ValueError(f"{name} looks like an image but could not be decoded (damaged file?): {error}") from None
    return image


def load_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> PIL.Image.Image:
    """An image file decoded as stored (`to_rgb_image` turns it upright and RGB), or `FileNotFoundError` /
    `ValueError` saying which way it failed (see `_decode`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file at {path!r}.")
    return _decode(path, f"'{os.path.basename(path)}'", max_pixels)


def load_image_url(url: str) -> PIL.Image.Image:
    """An image from a URL, decoded as stored; refused, clearly, when offline. Fetched here rather than with
    transformers' `load_image`, which converts to RGB itself (16-bit clipped, alpha dropped without a word)."""
    import httpx
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():
        raise ValueError(f"{url!r} is a URL, and URLs are not fetched offline (HF_HUB_OFFLINE is set); download the "
                         "image and pass its path.")
    try:
        response = httpx.get(url, timeout=30, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ValueError(f"Could not fetch an image from {url!r}: {error}") from error
    return _decode(io.BytesIO(response.content), repr(url), None)


def _eight_bit(array: np.ndarray) -> np.ndarray:
    """A numeric image array -> uint8, by what its dtype means: uint8 and bool as they are, uint16 scaled by
    255 / 65535, other integers in [0, 255], floats finite and in [0, 1] (diffusers' convention). Anything else is
    refused with what came and how to convert it: a float image in [0, 255] or [-1, 1] is a common slip that would
    otherwise come back white or clipped."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)
    if np.issubdtype(array.dtype, np.floating):
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ValueError(f"The image holds {bad} NaN or infinite value(s); expected finite floats in [0, 1].")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ValueError(f"Float images must be in [0, 1], got values in [{low:g}, {high:g}]: divide [0, 255] "
                             "values by 255, 16-bit values by 65535, map [-1, 1] values with (x + 1) / 2, or pass "
                             "uint8.")
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Expected an image array of uint8, uint16, other integers in [0, 255], bool or floats in "
                         f"[0, 1], got dtype {array.dtype}.")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise ValueError(f"Integer images other than uint16 must be in [0, 255], got values in [{low}, {high}]; pass "
                         "16-bit images as uint16.")
    return array.astype(np.uint8)


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """(H, W), (H, W, 1|2|3|4) or (1|3|4, H, W) -> an 8-bit PIL image (L, LA, RGB or RGBA; see `_eight_bit`)."""
    if array.size == 0:
        raise ValueError(f"The image array is empty (shape {tuple(array.shape)}).")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(
            f"Expected an image array of shape (H, W), (H, W, 1|2|3|4) or (1|3|4, H, W), got {tuple(array.shape)}."
        )
    return PIL.Image.fromarray(_eight_bit(array))


def _high_depth_to_eight_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A 16-bit, 32-bit integer or float PIL image -> L, by `_eight_bit`'s rules (PIL's own convert would clip every
    value above 255 to white). PIL holds some 16-bit files as 32-bit `I`, so `I` is read as 16-bit."""
    array = np.asarray(image)
    if image.mode == "I":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(f"A 32-bit integer ({image.mode}) image must hold 16-bit values in [0, 65535], got "
                             f"values in [{low}, {high}]; scale it to 16 or 8 bits first.")
        array = array.astype(np.uint16)
    return PIL.Image.fromarray(_eight_bit(array))


def _composite_onto_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image with alpha -> RGB: transparent pixels onto white, with `TRANSPARENCY_WARNING`; opaque ones as they
    are."""
    rgba = image.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")  # fully opaque: dropping alpha loses nothing
    warnings.warn(TRANSPARENCY_WARNING, UserWarning, stacklevel=3)
    return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation of a PIL image (1 = upright as stored, also when it has no EXIF)."""
    return image.getexif().get(EXIF_ORIENTATION, 1)


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` turned as its EXIF orientation says, or itself (not a copy, as `exif_transpose` would make) when it
    is upright already."""
    return image if exif_orientation(image) == 1 else PIL.ImageOps.exif_transpose(image)


def open_image(image: Any) -> PIL.Image.Image:
    """A path, URL, PIL image, numpy array or torch tensor -> a PIL image in its own mode, as stored."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return load_image_url(image)
    if isinstance(image, (str, os.PathLike)):
        return load_image_file(image)
    if isinstance(image, torch.Tensor):
        return _array_to_pil(image.detach().cpu().numpy())
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if isinstance(image, PIL.Image.Image):
        return image
    raise TypeError(f"Unsupported image type {type(image).__name__}; expected a path, a PIL image, a numpy array or a "
                    "tensor.")


@contextlib.contextmanager
def naming_list_item(index: int | None):
    """Errors reading item `index` of a list of images say which item it was (nothing added for a single image)."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError) as error:
        if index is None:
            raise
        raise type(error)(f"Image {index} of the list (counting from 0): {error}") from error


def to_rgb_image(image: Any) -> PIL.Image.Image:
    """A path, URL, PIL image, numpy array or torch tensor -> an upright RGB PIL image, read by the rules in this
    module's docstring. An upright RGB PIL image comes back as itself, not a copy."""
    image = upright(open_image(image))
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_eight_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite_onto_white(image)
    return image if image.mode == "RGB" else image.convert("RGB")


OUTPUT_TYPES = ("pil", "np", "pt")
#: How far PIL's bicubic filter reaches, in source pixels at 1:1 (times the factor when downscaling).
BICUBIC_SUPPORT = 2.0
#: The model's view is reduced by whole blocks to about this many times its size before the bicubic resize (PIL's
#: `reducing_gap`: 2 is, by PIL's account, indistinguishable from a full bicubic resize).
REDUCING_GAP = 2.0
#: `paste_fill` works on strips of about this many pixels (a megapixel: 3 MB of fill, 1 MB of weights).
PASTE_STRIP_PIXELS = 2**20


def check_output_type(output_type: str) -> None:
    """Refuse an `output_type` other than diffusers' "pil", "np" and "pt", before any compute."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """`(left, top, right, bottom)` of the True pixels of a boolean `(H, W)` mask, or None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cover_and_crop(in_height: int, in_width: int, out_height: int, out_width: int) -> tuple[int, int, int, int]:
    """Geometry of "resize to cover, then centre-crop": the resized (height, width) and the crop's (top, left)."""
    scale = max(out_height / in_height, out_width / in_width)
    resized_height = max(out_height, int(round(in_height * scale)))
    resized_width = max(out_width, int(round(in_width * scale)))
    return resized_height, resized_width, (resized_height - out_height) // 2, (resized_width - out_width) // 2


def _is_batch(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return images.ndim == 4
    return False


class LMDImageProcessor(PilBackend):
    r"""
    Prepares images for LMD models: converts any input to RGB, resizes it (keeping its aspect ratio) so that it
    covers `size`, centre-crops to `size`, and maps pixels to [-1, 1] (the range the VAE was trained on).
    [`~LMDImageProcessor.postprocess`] turns model outputs in [-1, 1] back into PIL images.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output size; use the model's `config.image_size` for both sides.
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Keep the aspect ratio and crop the centre; with `False` images are stretched to `size`.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`).

    Example:

    ```python
    >>> from modeling_lmd import LMDImageProcessor
    >>> processor = LMDImageProcessor(size={"height": 64, "width": 64})
    >>> batch = processor(images, return_tensors="pt")  # batch["pixel_values"]: (B, 3, 64, 64) in [-1, 1]
    >>> pil_images = processor.postprocess(batch["pixel_values"])
    ```
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_convert_rgb = True

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "LMDImageProcessor":
        """The processor matching an `LMDConfig` (square images of `config.image_size`)."""
        return cls(size={"height": config.image_size, "width": config.image_size}, **kwargs)

    def _standardize_kwargs(self, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        # The crop is always to `size` (resize to cover, then crop); `crop_size` just mirrors it.
        kwargs["crop_size"] = kwargs.get("size")
        return kwargs

    def preprocess(self, images, *args, **kwargs) -> BatchFeature:
        """One image or a list (paths, PIL, numpy, tensors) -> `BatchFeature` with `pixel_values` in [-1, 1]."""
        items = list(images) if _is_batch(images) else [images]
        if not items:
            raise ValueError("No images given.")
        # Convert everything to RGB PIL first: grayscale, RGBA, palette and odd array layouts all end up alike.
        rgb = []
        for index, image in enumerate(items):
            with naming_list_item(index if len(items) > 1 else None):
                rgb.append(to_rgb_image(image))
        return super().preprocess(rgb, *args, **kwargs)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for image in images:  # (C, H, W) uint8
            if do_resize:
                if do_center_crop:
                    height, width = image.shape[-2:]
                    new_height, new_width, _, _ = cover_and_crop(height, width, size.height, size.width)
                    image = self.resize(image, SizeDict(height=new_height, width=new_width), resample=resample)
                    image = self.center_crop(image, size)
                else:
                    image = self.resize(image, size, resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image.astype(np.float32))
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    def mask_array(self, mask: Any, image_size: tuple[int, int]) -> np.ndarray:
        """A user's mask over an image's pixels -> boolean `(H, W)`, True = to fill in (a boolean array comes back
        as itself).

        Args:
            mask: a boolean or 0 / 1 array or tensor `(H, W)` (0 / 255 in uint8) over the upright image, or a mask
                image (a PIL image or a file path; non-black = masked), turned upright by its EXIF orientation as
                the image is.
            image_size: `(H, W)` of the upright image.
        """
        if isinstance(mask, (str, os.PathLike)):
            mask = load_image_file(mask)
        if isinstance(mask, PIL.Image.Image):
            mask = np.array(upright(mask).convert("L")) > 0  # a mask image: white (any non-black) = fill in
        elif isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"Expected a 2-D mask (height, width) of booleans or 0 / 1, got shape {tuple(mask.shape)}; "
                             "pass an RGB mask image as a PIL image (white = fill in), or reduce it first, e.g. "
                             "mask.any(axis=-1).")
        if mask.dtype != bool:
            values = set(np.unique(mask).tolist())
            allowed = {0, 1, 255} if mask.dtype == np.uint8 else {0, 1}
            if not values <= allowed:
                shown = ", ".join(f"{value:g}" for value in sorted(values, key=str)[:5])
                raise ValueError(f"Expected a mask of booleans or 0 / 1 (or 0 / 255 in uint8), got values {shown}"
                                 f"{', ...' if len(values) > 5 else ''}; threshold it first, e.g. mask > 0.5.")
        if tuple(mask.shape) != tuple(image_size):
            turned = tuple(mask.shape) == tuple(image_size)[::-1]
            raise ValueError(
                f"The mask is {mask.shape[0]}x{mask.shape[1]} (height x width) but the image is "
                f"{image_size[0]}x{image_size[1]}; they must match."
                + (" Images are read upright (their EXIF orientation applied): a mask drawn on a photo as stored "
                   "must be drawn on PIL.ImageOps.exif_transpose(photo) instead, or passed as a mask image with "
                   "the photo's EXIF." if turned else "")
            )
        return mask if mask.dtype == bool else mask != 0

    def photo_mask(self, mask: Any, photo: PIL.Image.Image, image: PIL.Image.Image) -> np.ndarray:
        """`mask_array` of a user's mask over `image`, the upright RGB of `photo` (the image as given), with a
        warning where the two were turned differently by their EXIF orientations (a mask array carries none): the
        mask is then taken over the upright photo, and one drawn on the photo as stored lands elsewhere. A turn by
        90 degrees shows in the mask's shape, and `mask_array` refuses it."""
        if isinstance(mask, (str, os.PathLike)):
            mask = load_image_file(mask)
        array = self.mask_array(mask, (image.height, image.width))
        photo_turn = exif_orientation(photo)
        mask_turn = exif_orientation(mask) if isinstance(mask, PIL.Image.Image) else 1  # arrays: as they are
        if mask_turn != photo_turn:
            given = (f"EXIF orientation {mask_turn}" if mask_turn != 1 else
                     "no EXIF orientation" if isinstance(mask, PIL.Image.Image) else "no EXIF (an array)")
            warnings.warn(f"The photo has EXIF orientation {photo_turn} and the mask {given}, so they were turned "
                          "differently and the mask is taken over the upright photo: a mask drawn on the photo as "
                          "stored lands elsewhere. Draw it on PIL.ImageOps.exif_transpose(photo), or give the mask "
                          "image the photo's EXIF.", UserWarning, stacklevel=3)
        return array

    def preprocess_mask(self, mask: Any, image_size: tuple[int, int], do_center_crop: bool | None = None) -> np.ndarray:
        """A mask over an input image's pixels (see `mask_array`) -> a boolean `(height, width)` mask over the
        processed image.

        Applies the same resize / crop as the image. A processed pixel counts as masked if any input pixel
        under it was masked (nothing the user marked is lost by the resize).
        """
        coverage = PIL.Image.fromarray(self.mask_array(mask, image_size)).convert("F")  # via "1": no float array
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        out_height, out_width = self.size["height"], self.size["width"]
        if do_center_crop:
            new_height, new_width, top, left = cover_and_crop(*image_size, out_height, out_width)
        else:
            new_height, new_width, top, left = out_height, out_width, 0, 0
        # BOX averages every input pixel a target pixel covers: any coverage > 0 means "touched".
        coverage = coverage.resize((new_width, new_height), resample=PIL.Image.Resampling.BOX)
        coverage = np.array(coverage)[top : top + out_height, left : left + out_width]
        return coverage > 1e-6

    def center_square_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """`(left, top, right, bottom)` of the largest centred square of an image: what the model sees of it."""
        side = min(height, width)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def mask_crop_box(self, mask: np.ndarray, padding: int | None = None) -> tuple[int, int, int, int]:
        """`(left, top, right, bottom)` of the region of an image that the model sees to fill `mask` (boolean
        `(H, W)`), what diffusers calls `padding_mask_crop`: `VaeImageProcessor.get_crop_region` with `padding`
        pixels of context (default: half the mask's longer side, so the hole spans at most half the crop), so it
        holds the whole mask and has the model's aspect ratio (square) wherever that fits in the image (a mask as wide
        as a panorama gets the image's full height, which the model sees stretched). The padding grows where the
        crop would otherwise be smaller than the model's input, which would see the photo enlarged. A mask with
        nothing in it gives `center_square_box`."""
        box = bounding_box(mask)
        if box is None:
            return self.center_square_box(*mask.shape)
        extent = max(box[2] - box[0], box[3] - box[1])
        padding = extent // 2 if padding is None else padding
        padding = max(padding, -(-(max(self.size["height"], self.size["width"]) - extent) // 2))
        crop = VaeImageProcessor.get_crop_region(PIL.Image.fromarray(mask), self.size["width"], self.size["height"],
                                                 pad=padding)
        return tuple(int(side) for side in crop)

    def model_view(self, photo: PIL.Image.Image, hidden: np.ndarray, box: tuple[int, int, int, int]) -> PIL.Image.Image:
        """What the model sees of `photo`: its `box` resized to `size`, with the `hidden` pixels (boolean over the
        photo) painted over first with the mean colour of the visible ones around it.

        The resize's filter reaches past each output pixel's own footprint (bicubic: `BICUBIC_SUPPORT` source pixels,
        times the downscaling factor), so without the paint a model pixel counted as visible would mix in photo
        pixels from under the mask, and they would reach the fill. The paint goes on a reduced copy: the box and the
        filter's reach are first averaged over whole blocks of pixels down to about `REDUCING_GAP` times the model's
        size (PIL's `reduce`, which reads only each block's own pixels; `resize(reducing_gap=...)` does the same),
        a block counting as hidden when any of its pixels is, then resized bicubic. So no copy is made at the photo's
        resolution, and with nothing hidden the view is the plain reduce-then-resize.
        """
        left, top, right, bottom = box
        width, height = self.size["width"], self.size["height"]
        factor_x = max(1, int((right - left) / width / REDUCING_GAP))
        factor_y = max(1, int((bottom - top) / height / REDUCING_GAP))
        reach = math.ceil(BICUBIC_SUPPORT * REDUCING_GAP) + 1  # in reduced pixels (the reduced box is <= 2x `size`)
        outer = (max(left - reach * factor_x, 0), max(top - reach * factor_y, 0),
                 min(right + reach * factor_x, photo.width), min(bottom + reach * factor_y, photo.height))
        reduced = photo.reduce((factor_x, factor_y), box=outer)  # a new image, however small the factors
        hidden_blocks = np.logical_or.reduceat(
            np.logical_or.reduceat(hidden[outer[1] : outer[3], outer[0] : outer[2]],
                                   np.arange(0, outer[3] - outer[1], factor_y), axis=0),
            np.arange(0, outer[2] - outer[0], factor_x), axis=1)
        if hidden_blocks.any():
            paint_mask = PIL.Image.fromarray(hidden_blocks)  # mode "1"
            visible = PIL.ImageChops.invert(paint_mask.convert("L"))
            reduced.paste(tuple(round(value) for value in PIL.ImageStat.Stat(reduced, mask=visible).mean),
                          mask=paint_mask)
        inner = ((left - outer[0]) / factor_x, (top - outer[1]) / factor_y,
                 (right - outer[0]) / factor_x, (bottom - outer[1]) / factor_y)
        return reduced.resize((width, height), PIL.Image.Resampling.BICUBIC, box=inner)

    @staticmethod
    def blend_weights(mask: np.ndarray, box: tuple[int, int, int, int], blend_width: int) -> PIL.Image.Image:
        """How much of the model's fill each pixel of `box` takes, as an L image (255 = all of it): `mask` (boolean
        over the photo) blurred by `VaeImageProcessor.blur` with sigma `blend_width / 3` (PIL's blur then reaches
        `blend_width` pixels) and cut back to the mask, so the fill fades in over the mask's outer `blend_width`
        pixels and no pixel outside the mask takes any. The blur sees `blend_width` pixels around the box, so it
        fades towards the mask's true border, not the box's, and not towards the photo's edge."""
        left, top, right, bottom = box
        if blend_width == 0:
            return PIL.Image.fromarray(mask[top:bottom, left:right]).convert("L")
        height, width = mask.shape
        outer_left, outer_top = max(left - blend_width, 0), max(top - blend_width, 0)
        window = mask[outer_top : min(bottom + blend_width, height), outer_left : min(right + blend_width, width)]
        window = PIL.Image.fromarray(window).convert("L")
        weights = PIL.ImageChops.darker(VaeImageProcessor.blur(window, blend_width / 3), window)
        return weights.crop((left - outer_left, top - outer_top, right - outer_left, bottom - outer_top))

    def paste_fill(self, photo: PIL.Image.Image, fill: PIL.Image.Image, crop_box: tuple[int, int, int, int],
                   mask: np.ndarray, blend_width: int, copy: bool = True) -> PIL.Image.Image:
        """`photo` (a copy, or itself with `copy=False`) with the model's `fill` (its output for the region
        `crop_box`, which holds all of `mask`) inside `mask` (boolean over the photo), faded in over the mask's outer
        `blend_width` pixels (`blend_weights`). That is diffusers' `apply_overlay` composite, the photo where the mask
        is 0 and the fill where it is 1, so outside the mask the result is the photo bit for bit. Done here on the
        mask's bounding box only, in strips of `PASTE_STRIP_PIXELS`, so that past the copy of the photo the time
        grows with the mask's box and the memory with a strip (`apply_overlay` converts the whole photo to RGBA
        several times)."""
        left, top, right, bottom = crop_box
        result = photo.copy() if copy else photo
        inside = bounding_box(mask[top:bottom, left:right])
        if inside is None:
            return result
        box_left, box_top, box_right, box_bottom = left + inside[0], top + inside[1], left + inside[2], top + inside[3]
        scale_x, scale_y = fill.width / (right - left), fill.height / (bottom - top)
        rows = max(1, PASTE_STRIP_PIXELS // (box_right - box_left))
        for strip_top in range(box_top, box_bottom, rows):
            strip = (box_left, strip_top, box_right, min(strip_top + rows, box_bottom))
            # The fill resized to the crop and cut to the strip in one step: `box=` reads its source pixels only.
            source = ((strip[0] - left) * scale_x, (strip[1] - top) * scale_y,
                      (strip[2] - left) * scale_x, (strip[3] - top) * scale_y)
            patch = fill.resize((strip[2] - strip[0], strip[3] - strip[1]), PIL.Image.Resampling.BICUBIC, box=source)
            result.paste(patch, strip[:2], self.blend_weights(mask, strip, blend_width))
        return result

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray, output_type: str = "pil"):
        """Images in [-1, 1], `(B, 3, H, W)` or `(3, H, W)` -> what diffusers pipelines return for `output_type`:
        `"pil"`: a list of RGB PIL images; `"np"`: float32 `(B, H, W, 3)` in [0, 1]; `"pt"`: `(B, 3, H, W)` in
        [0, 1]."""
        check_output_type(output_type)
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().float().cpu().numpy()
        pixel_values = np.asarray(pixel_values)
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        mean = np.asarray(self.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
        unit = np.clip(pixel_values * std + mean, 0.0, 1.0).astype(np.float32)
        if output_type == "pt":
            return torch.from_numpy(unit)
        if output_type == "np":
            return np.moveaxis(unit, 1, -1)
        pixels = (unit * 255.0).round().astype(np.uint8)
        return [PIL.Image.fromarray(np.moveaxis(image, 0, -1)) for image in pixels]

    @staticmethod
    def photo_output(image: PIL.Image.Image, output_type: str = "pil"):
        """An RGB PIL image -> `output_type`, as `postprocess` gives one image: itself, float32 `(H, W, 3)` in
        [0, 1], or a `(3, H, W)` tensor of those. One float allocation, where diffusers' `pil_to_numpy` makes three
        float copies of the photo."""
        check_output_type(output_type)
        if output_type == "pil":
            return image
        unit = np.divide(np.asarray(image), 255, dtype=np.float32)
        return unit if output_type == "np" else torch.from_numpy(unit).permute(2, 0, 1)


__all__ = ["OUTPUT_TYPES", "LMDImageProcessor", "bounding_box", "check_output_type", "cover_and_crop",
           "exif_orientation", "load_image_file", "naming_list_item", "open_image", "to_rgb_image", "upright"]

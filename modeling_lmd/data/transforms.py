"""Image transforms for LMD pre-training, without torchvision: the paper's RandomResizedCrop + flip for training,
and the model's image processor for evaluation, both called as `transform(image, generator) -> (3, S, S)` in [-1, 1].

Every random choice (crop box, flip) is drawn from the `torch.Generator` the caller passes, seeded by where training
is (see `datasets.py`), never from the global RNG: a resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..image_processing_lmd import to_rgb_image


DEFAULT_CROP_SCALE = (0.2, 1.0)
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> `(3, H, W)` float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """Box `(left, top, right, bottom)` covering a random area fraction in `scale` with aspect ratio in `ratio`.

    Ten tries at a box that fits; otherwise the largest centred box whose aspect ratio is clamped into `ratio`.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_low + (log_high - log_low) * u[1])
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return left, top, left + crop_w, top + crop_h
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


class RandomResizedCropFlip:
    """The paper's augmentation: RandomResizedCrop(size, scale 0.2-1, bicubic) + horizontal flip (p = 0.5)."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = DEFAULT_CROP_SCALE,
        ratio: tuple[float, float] = DEFAULT_CROP_RATIO,
        flip_probability: float = 0.5,
    ):
        self.size, self.scale, self.ratio, self.flip_probability = int(size), tuple(scale), tuple(ratio), flip_probability

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = to_rgb_image(image)
        box = random_resized_crop_box(image.width, image.height, self.scale, self.ratio, generator)
        image = image.resize((self.size, self.size), Image.BICUBIC, box=box)
        if float(torch.rand(1, generator=generator)) < self.flip_probability:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image_to_tensor(image)

    def describe(self) -> dict:
        return {"name": "random_resized_crop_flip", "size": self.size, "scale": self.scale, "ratio": self.ratio,
                "flip_probability": self.flip_probability}


class ProcessorTransform:
    """Deterministic evaluation transform: the model's `LMDImageProcessor` (resize to cover, centre-crop, [-1, 1]),
    with the `(image, generator)` call signature of the training transform."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def describe(self) -> dict:
        return {"name": "image_processor", **self.image_processor.to_dict()}


__all__ = ["DEFAULT_CROP_RATIO", "DEFAULT_CROP_SCALE", "ProcessorTransform", "RandomResizedCropFlip", "image_to_tensor",
           "random_resized_crop_box"]

"""Torch datasets over `datasets` splits: images (read, augmented), a stream of images, and cached latents; and the
collate function. Evaluation samples carry `mask_seed`, the seed of their evaluation mask.

Randomness. Every random choice (crop box, flip, cached view) is drawn from a `torch.Generator` seeded by
`(seed, epoch, sample index)` (`derive_seed`), never from the global RNG. Which augmentation a sample gets is
therefore a pure function of where training is, so a run resumed mid-epoch sees exactly the images the
uninterrupted run saw, and the result does not depend on the number of dataloader workers.

Streaming (`train_lmd.py --streaming`). For image sets that do not fit on disk twice, `StreamingImageDataset`
reads the training split as a `datasets` stream and the images are encoded on the fly: no cache, no up-front
scan (an unreadable image is skipped with a warning when it arrives).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from typing import Any, Callable

import numpy as np
import torch

from .images import decode_image_value, readable_image


logger = logging.getLogger(__name__)

#: With `--streaming`, the validation split is cut to its first rows (unless `--max_eval_samples` says otherwise).
STREAMED_EVAL_SAMPLES = 1000


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def mask_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s evaluation mask: a function of the sample, not of the batch or the process."""
    return derive_seed("mask", seed, index)


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` -> `{"pixel_values": (3, S, S)` in [-1, 1]}, and for an `evaluation` set the
    `"mask_seed"` of the sample's evaluation mask (`LMDTrainer.prediction_step`; training draws its masks per step,
    so its batches carry nothing else to the device).

    `transform(image, generator)` gets a generator seeded by `(seed, epoch, index)` (see `set_epoch`).
    """

    def __init__(self, dataset, image_column: str, transform: Callable, seed: int = 0, evaluation: bool = False):
        self.dataset, self.image_column, self.transform, self.seed = dataset, image_column, transform, int(seed)
        self.evaluation = evaluation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        generator = torch.Generator().manual_seed(derive_seed("augment", self.seed, self.epoch, index))
        item = {"pixel_values": self.transform(readable_image(self.dataset, self.image_column, index), generator)}
        return {**item, "mask_seed": mask_seed(self.seed, index)} if self.evaluation else item


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """A streamed split (a `datasets.IterableDataset`) -> the items of `ImageDataset`, as the images arrive, epoch
    after epoch without end (a streamed run is bounded by `--max_steps`).

    Each epoch reshuffles the rows through a shuffle buffer (`datasets`' `set_epoch`), and the k-th image of epoch e
    is augmented with a generator seeded by `(seed, e, k)`. The epochs live inside this one iterator, so the
    Trainer sees a single endless epoch: a resume, which the Trainer does by reading past the batches already
    trained on, lands on the very batch the uninterrupted run trained next, in whichever epoch of the stream it
    falls. An image that cannot be read is skipped with a warning.
    """

    def __init__(self, stream, image_column: str, transform: Callable, seed: int = 0, buffer_size: int = 1000):
        import datasets

        if isinstance((stream.features or {}).get(image_column), datasets.Image):
            stream = stream.cast_column(image_column, datasets.Image(decode=False))  # decoded here, errors caught
        self.stream = stream.shuffle(seed=int(seed), buffer_size=buffer_size)
        self.image_column, self.transform, self.seed = image_column, transform, int(seed)

    def __iter__(self):
        for epoch in itertools.count():
            self.stream.set_epoch(epoch)
            readable = 0
            for position, row in enumerate(self.stream):
                value = row[self.image_column]
                try:
                    image = decode_image_value(value)
                except Exception as error:  # noqa: BLE001 - PIL raises many unrelated types for bad files
                    where = value.get("path") if isinstance(value, dict) else None
                    logger.warning(f"Skipping an unreadable streamed image ({where or f'row {position}'}): {error}")
                    continue
                readable += 1
                generator = torch.Generator().manual_seed(derive_seed("augment", self.seed, epoch, position))
                yield {"pixel_values": self.transform(image, generator)}
            if not readable:
                raise ValueError("The stream holds no readable image.")


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents (`latents` column of shape `(K, C, h, w)`) -> `{"latents": (C, h, w)}`.

    Each `(epoch, index)` picks one of the K views (and, with `latent_flip`, flips it with probability 1/2).
    With `pixels` (an evaluation `ImageDataset`), items also carry its `pixel_values` and `mask_seed`: evaluation
    scores PSNR against them.
    """

    def __init__(self, latents, seed: int = 0, latent_flip: bool = False, pixels: ImageDataset | None = None):
        self.latents = latents.with_format("numpy", columns=["latents"])
        self.seed, self.latent_flip, self.pixels = int(seed), bool(latent_flip), pixels
        self.num_views = int(self.latents[0]["latents"].shape[0]) if len(self.latents) else 1
        self.epoch = 0
        if pixels is not None and len(pixels) != len(self.latents):
            raise ValueError(f"{len(self.latents)} cached latents but {len(pixels)} images.")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.pixels is not None:
            self.pixels.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        views = self.latents[index]["latents"]
        generator = torch.Generator().manual_seed(derive_seed("view", self.seed, self.epoch, index))
        view = int(torch.randint(0, views.shape[0], (1,), generator=generator)) if views.shape[0] > 1 else 0
        latents = torch.from_numpy(np.ascontiguousarray(views[view])).float()
        if self.latent_flip and float(torch.rand(1, generator=generator)) < 0.5:
            latents = latents.flip(-1)
        return {"latents": latents, **(self.pixels[index] if self.pixels is not None else {})}


def collate_fn(examples: list[dict]) -> dict:
    """Stack `pixel_values` and/or `latents` (whichever the examples carry), and the `mask_seed`s."""
    batch = {}
    for key in ("pixel_values", "latents"):
        if key in examples[0]:
            batch[key] = torch.stack([example[key] for example in examples])
    if not batch:
        raise ValueError(f"Examples carry neither pixel_values nor latents: {sorted(examples[0])}.")
    if "mask_seed" in examples[0]:
        batch["mask_seed"] = torch.tensor([example["mask_seed"] for example in examples], dtype=torch.int64)
    return batch


__all__ = ["STREAMED_EVAL_SAMPLES", "ImageDataset", "LatentDataset", "StreamingImageDataset", "collate_fn", "derive_seed",
           "mask_seed"]

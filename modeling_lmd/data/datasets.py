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
import warnings
from typing import Any, Callable

import datasets
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


def counter_random(key: int, indices: torch.Tensor) -> torch.Tensor:
    """A random non-negative int64 per index, a pure function of `(key, index)` (splitmix64's mixer on int64, its
    logical shifts as masked arithmetic ones): per-sample randomness for a whole batch in a few tensor ops, the same
    whatever the batch, the worker or the process."""
    x = indices.to(torch.int64) + key
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * -7723592293110705685  # 0x94D049BB133111EB
    return (x ^ ((x >> 31) & 0x1FFFFFFFF)) & 0x7FFFFFFFFFFFFFFF


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents (`latents` column of shape `(K, C, h, w)`) -> `{"latents": (C, h, w)}` float32.

    Read a batch at a time (`__getitems__`, which torch's DataLoader calls with a batch's indices): one read of the
    batch's rows from the memory-mapped cache (or from one tensor in memory with `in_memory=True`), then each
    sample's view (one of K) and, with `latent_flip`, its horizontal flip (probability 1/2) drawn by
    `counter_random` from `(seed, epoch, index)` as tensor ops. A resumed run reads exactly what the uninterrupted
    one did. `storage_dtype` is the cache's (`"float32"`, or `"bfloat16"` kept as its bits). With `pixels` (an
    evaluation `ImageDataset`), items also carry its `pixel_values` and `mask_seed`.
    """

    def __init__(self, latents, seed: int = 0, latent_flip: bool = False, pixels: ImageDataset | None = None,
                 storage_dtype: str = "float32", in_memory: bool = False):
        self.storage_dtype = storage_dtype
        self.latents = latents.with_format("numpy", columns=["latents"])
        if in_memory:  # one tensor, pinned for fast copies when there is a GPU to copy to
            # Through Arrow: its numpy view keeps the stored dtype, where `datasets`' numpy format widens int16 (the
            # bfloat16 bits) to int64, four times the memory.
            column = latents.with_format("arrow")[:]["latents"].combine_chunks().to_numpy()
            with warnings.catch_warnings():  # Arrow's buffers are read-only; the latents are only ever read
                warnings.simplefilter("ignore", UserWarning)
                self.latents = self.stored(torch.from_numpy(column))
            self.latents = self.latents.pin_memory() if torch.cuda.is_available() else self.latents
        self.seed, self.latent_flip, self.pixels = int(seed), bool(latent_flip), pixels
        self.epoch = 0
        if pixels is not None and len(pixels) != len(self.latents):
            raise ValueError(f"{len(self.latents)} cached latents but {len(pixels)} images.")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.pixels is not None:
            self.pixels.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.latents)

    def stored(self, rows) -> torch.Tensor:
        """Rows as the cache holds them: float32, or bfloat16 from its bits (which `datasets` hands out widened)."""
        rows = torch.as_tensor(rows)
        return rows.to(torch.int16).view(torch.bfloat16) if self.storage_dtype == "bfloat16" else rows

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = self.latents[indices]
        rows = rows if isinstance(rows, torch.Tensor) else self.stored(rows["latents"])  # (B, K, C, h, w)
        index = torch.as_tensor(indices, dtype=torch.int64)
        views = counter_random(derive_seed("view", self.seed, self.epoch), index) % rows.shape[1]
        latents = rows[torch.arange(len(indices)), views].float()
        if self.latent_flip:
            flips = counter_random(derive_seed("flip", self.seed, self.epoch), index) % 2 == 1
            latents = torch.where(flips[:, None, None, None], latents.flip(-1), latents)
        items = [{"latents": sample} for sample in latents]
        if self.pixels is not None:
            items = [{**item, **self.pixels[i]} for item, i in zip(items, indices)]
        return items

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([int(index)])[0]


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


__all__ = ["STREAMED_EVAL_SAMPLES", "ImageDataset", "LatentDataset", "StreamingImageDataset", "collate_fn",
           "counter_random", "derive_seed", "mask_seed"]

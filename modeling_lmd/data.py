"""Data for LMD pre-training: image transforms (no torchvision), datasets, and the on-disk latent cache.

Randomness. Every random choice (crop box, flip, cached view) is drawn from a `torch.Generator` seeded by
`(seed, epoch, sample index)`, never from the global RNG. Which augmentation a sample gets is therefore a pure
function of where training is, so a run resumed mid-epoch sees exactly the images the uninterrupted run saw,
and the result does not depend on the number of dataloader workers.

Latent caching (`train_lmd.py --cache_latents`). Encoding with the VAE dominates a CPU training step, so every
training image can be encoded once and the latents stored with `datasets` on disk. Augmentation cannot then
be drawn afresh every epoch; the trade-off taken here:

- `num_views` (K) augmented views are cached per image, each with its own RandomResizedCrop (scale 0.2-1,
  bicubic) and horizontal flip, applied in pixel space *before* encoding, so each view is an exact latent of an
  augmented image. Each epoch, each sample picks one of its K views at random. Cost: K encodings and K times the
  storage; diversity: K crops per image instead of a fresh one every epoch. K = 1 gives one fixed random crop.
- `latent_flip=True` additionally flips the chosen view horizontally *in latent space* with probability 1/2.
  This doubles the diversity for free, but a KL VAE is only approximately flip-equivariant, so it is off by
  default.

The cache key hashes the VAE (class, config and a sha256 of its weights), the image size, the images' *content*
(a sha256 of every image file's bytes, from `scan_images`: a file changed under the same name and date builds a
new cache), the number of views, the seed and the augmentation parameters. Sharing a cache is safe:

- A finished cache is never deleted or rewritten (a run reading it through a memory map cannot be hurt). It is
  built in `<key>.partial/` and renamed into place with `cache_info.json` inside: a folder `<key>/` is complete.
- A file lock per key (`<key>.lock`) makes a second run with the same key wait for the first and reuse its cache.
- Under N processes (`torchrun` / `accelerate launch`) each process encodes its contiguous 1/N of the images into
  `part-<rank>`; the main process joins the parts in order, so the cache equals a one-process one.

Bad images. `scan_images` opens every image once before training (headers, or full decoding for small sets or on
request): unreadable files are dropped with one warning that counts and names them (or refused with
`strict=True`), so one corrupt JPEG cannot stop a run at step 3 or lose the final evaluation.

Streaming (`train_lmd.py --streaming`). For image sets that do not fit on disk twice, `StreamingImageDataset`
reads the training split as a `datasets` stream and the images are encoded on the fly: no cache, no up-front
scan (an unreadable image is skipped with a warning when it arrives). The validation split, small, is
materialised (`first_rows`) and scanned like any other.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .image_processing_lmd import to_rgb_image


logger = logging.getLogger(__name__)

#: Bump when the cached content changes meaning (transform, layout, key), to invalidate existing caches.
LATENT_CACHE_VERSION = "2"

#: `scan_images` fully decodes every image of sets up to this size (headers only above it, unless asked).
FULL_DECODE_LIMIT = 5000

#: With `--streaming`, the validation split is cut to its first rows (unless `--max_eval_samples` says otherwise).
STREAMED_EVAL_SAMPLES = 1000

DEFAULT_CROP_SCALE = (0.2, 1.0)
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def default_latent_cache_dir() -> str:
    """`<HF datasets cache>/modeling_lmd_latents` (follows `HF_DATASETS_CACHE` / `HF_HOME`)."""
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "modeling_lmd_latents")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --- images ----------------------------------------------------------------------------------------------


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


# --- datasets --------------------------------------------------------------------------------------------


def find_image_column(dataset, requested: str | None = None) -> str:
    """`requested` if given (checked), else the first `datasets.Image` column, else `image` / `img`."""
    import datasets

    columns = list(dataset.column_names or [])  # a stream may not know its columns or features
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"--image_column_name {requested!r} not found; the dataset has columns {columns}.")
        return requested
    for name, feature in (dataset.features or {}).items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img", "pixel_values", "images"):
        if name in columns:
            return name
    raise ValueError(f"Could not find an image column among {columns}; pass --image_column_name.")


@dataclass
class ImageScan:
    """What `scan_images` found: the readable rows, the unreadable ones `(row, where, error)`, and a sha256 of
    every readable image's bytes (their content, whatever the file names or dates)."""

    good: list[int] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """One sha256 over the readable images' contents, in order: the latent cache's key for the images."""
        return hashlib.sha256("".join(self.digests).encode()).hexdigest()


def scan_images(dataset, image_column: str, decode: str = "auto") -> ImageScan:
    """Open every image of `dataset` once: `decode="header"` reads headers, `"full"` decodes the pixels (and
    converts to RGB, as training will), `"auto"` is full up to `FULL_DECODE_LIMIT` images, headers above."""
    import datasets

    if decode not in ("auto", "header", "full"):
        raise ValueError(f"decode must be 'auto', 'header' or 'full', got {decode!r}.")
    full = decode == "full" or (decode == "auto" and len(dataset) <= FULL_DECODE_LIMIT)
    raw = dataset
    if isinstance(dataset.features.get(image_column), datasets.Image):
        raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    scan = ImageScan()
    for index, item in enumerate(raw.select_columns([image_column])):
        value = item[image_column]
        where = value.get("path") or f"row {index}" if isinstance(value, dict) else f"row {index}"
        try:
            if isinstance(value, dict):
                data = _encoded_image_bytes(value)
                if full:
                    decode_image_value({"bytes": data})
                else:
                    Image.open(io.BytesIO(data)).close()  # PIL reads the header on open
                digest = hashlib.sha256(data).hexdigest()
            else:  # an already decoded image (PIL or array): its pixels are its content
                digest = hashlib.sha256(np.asarray(decode_image_value(value)).tobytes()).hexdigest()
        except Exception as error:  # noqa: BLE001 - PIL raises many unrelated types for bad files
            scan.bad.append((index, str(where), f"{type(error).__name__}: {error}"))
            continue
        scan.good.append(index)
        scan.digests.append(digest)
    return scan


def decode_image_value(value) -> Image.Image:
    """An image as a `datasets` column holds it (undecoded `{"bytes", "path"}`, PIL image or array) as an RGB PIL
    image with every pixel read: PIL opens files lazily, so a truncated file fails here, not in a transform."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(_encoded_image_bytes(value)))
        value.load()
    return to_rgb_image(value)


def _encoded_image_bytes(value: dict) -> bytes:
    """The file bytes of an undecoded `datasets.Image` value (`{"bytes", "path"}`)."""
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as handle:
        return handle.read()


def drop_unreadable_images(dataset, image_column: str, split: str, decode: str = "auto", strict: bool = False):
    """`dataset` without its unreadable images, and its content fingerprint. One warning counts them and names
    the first few; with `strict` they are an error instead."""
    scan = scan_images(dataset, image_column, decode)
    if scan.bad:
        listing = "; ".join(f"{where} ({error})" for _, where, error in scan.bad[:5])
        more = f" and {len(scan.bad) - 5} more" if len(scan.bad) > 5 else ""
        message = f"{len(scan.bad)} of {len(dataset)} {split} images cannot be read: {listing}{more}"
        if strict:
            raise ValueError(f"{message}. Remove or fix them, or drop --strict_images to skip them.")
        logger.warning(f"{message}. They are skipped (--strict_images makes this an error).")
        dataset = dataset.select(scan.good)
    if len(dataset) == 0:
        raise ValueError(f"No readable {split} images are left.")
    return dataset, scan.fingerprint


def _read_image(dataset, image_column: str, index: int) -> Image.Image:
    """The image of row `index` as RGB, or a `ValueError` naming the row and, where known, the file."""
    try:
        return to_rgb_image(dataset[index][image_column])
    except Exception as error:  # noqa: BLE001 - re-raised with the file that caused it
        where = f"row {index} of the dataset"
        try:
            import datasets

            raw = dataset.cast_column(image_column, datasets.Image(decode=False))[index][image_column]
            if isinstance(raw, dict) and raw.get("path"):
                where += f" (file {raw['path']})"
        except Exception:  # noqa: BLE001 - best effort only
            pass
        raise ValueError(f"Could not read the image at {where}: {error}") from error


def mask_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s evaluation mask: a function of the sample, not of the batch or the process."""
    return derive_seed("mask", seed, index)


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` -> `{"pixel_values": (3, S, S)` in [-1, 1], `"mask_seed"`}.

    `transform(image, generator)` gets a generator seeded by `(seed, epoch, index)` (see `set_epoch`);
    `mask_seed` seeds the sample's evaluation mask (`LMDTrainer.prediction_step`).
    """

    def __init__(self, dataset, image_column: str, transform: Callable, seed: int = 0):
        self.dataset, self.image_column, self.transform, self.seed = dataset, image_column, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> Image.Image:
        return _read_image(self.dataset, self.image_column, index)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        generator = torch.Generator().manual_seed(derive_seed("augment", self.seed, self.epoch, index))
        return {"pixel_values": self.transform(self.readable_image(index), generator),
                "mask_seed": mask_seed(self.seed, index)}

    def readable_image(self, index: int) -> Image.Image:
        """The image of row `index`, or, if it cannot be read (a file `scan_images` only checked the header of),
        the next readable one, with a warning: one bad file does not stop a run."""
        for offset in range(len(self)):
            try:
                return self.image((index + offset) % len(self))
            except ValueError as error:
                logger.warning(f"Skipping an unreadable image: {error}")
        raise ValueError("None of the images can be read.")


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """A streamed split (a `datasets.IterableDataset`) -> the items of `ImageDataset`, as the images arrive.

    Rows pass through a shuffle buffer (`datasets` reshuffles it every epoch, see `set_epoch`). The k-th image of
    an epoch is augmented with a generator seeded by `(seed, epoch, k)`, so a rerun (or a resume, which the
    Trainer does by reading past the batches already trained on) sees the same batches. An image that cannot be
    read is skipped with a warning.
    """

    def __init__(self, stream, image_column: str, transform: Callable, seed: int = 0, buffer_size: int = 1000):
        import datasets

        if isinstance((stream.features or {}).get(image_column), datasets.Image):
            stream = stream.cast_column(image_column, datasets.Image(decode=False))  # decoded here, errors caught
        self.stream = stream.shuffle(seed=int(seed), buffer_size=buffer_size)
        self.image_column, self.transform, self.seed = image_column, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.stream.set_epoch(self.epoch)

    def __iter__(self):
        for position, row in enumerate(self.stream):
            value = row[self.image_column]
            try:
                image = decode_image_value(value)
            except Exception as error:  # noqa: BLE001 - PIL raises many unrelated types for bad files
                where = value.get("path") if isinstance(value, dict) else None
                logger.warning(f"Skipping an unreadable streamed image ({where or f'row {position}'}): {error}")
                continue
            generator = torch.Generator().manual_seed(derive_seed("augment", self.seed, self.epoch, position))
            yield {"pixel_values": self.transform(image, generator), "mask_seed": mask_seed(self.seed, position)}


def first_rows(stream, count: int):
    """The first `count` rows of a stream as a `datasets.Dataset` (images kept as their encoded bytes)."""
    import datasets

    features = stream.features
    if features is not None:
        features = datasets.Features({name: datasets.Image(decode=False) if isinstance(feature, datasets.Image)
                                      else feature for name, feature in features.items()})
        stream = stream.cast(features)
    rows = list(stream.take(count))
    dataset = datasets.Dataset.from_list(rows, features=features)
    for name, feature in (features or {}).items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(name, datasets.Image())
    return dataset


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents (`latents` column of shape `(K, C, h, w)`) -> `{"latents": (C, h, w)}`.

    Each `(epoch, index)` picks one of the K views (and, with `latent_flip`, flips it with probability 1/2).
    With `pixels` (an `ImageDataset`), items also carry `pixel_values`: evaluation scores PSNR against them.
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
        item = {"latents": latents, "mask_seed": mask_seed(self.seed, index)}
        if self.pixels is not None:
            item.update(self.pixels[index])
        return item


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


def load_image_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    train_val_split: float | None = 0.15,
    cache_dir: str | None = None,
    seed: int = 0,
    streaming: bool = False,
):
    """A `DatasetDict` with `train` and (when available or split off) `validation`.

    `dataset_name`: a Hub dataset or a local folder `datasets` can read (e.g. an image folder with `train/` and
    `validation/`); else `train_dir` / `validation_dir` are read with the `imagefolder` builder. Without a
    validation split, `train_val_split` of the training images are held out (seeded). With `streaming`, the
    splits are `datasets` streams (`IterableDatasetDict`) and nothing is split off.
    """
    import datasets

    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming)
    elif train_dir is not None:
        folders = {"train": train_dir, "validation": validation_dir}
        for split, folder in folders.items():
            if folder is not None and not any(files for _, _, files in os.walk(folder)):
                raise ValueError(f"The {split} folder {folder!r} holds no files (expected images, e.g. PNG or JPEG).")
        data_files = {split: os.path.join(folder, "**") for split, folder in folders.items() if folder is not None}
        dataset = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir, streaming=streaming)
    else:
        raise ValueError("Pass --dataset_name or --train_dir (with optional --validation_dir).")
    if not isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)({"train": dataset})
    if "train" not in dataset:
        raise ValueError(f"The dataset has no `train` split (splits: {list(dataset)}).")
    if "validation" not in dataset:
        for alias in ("val", "valid", "test"):
            if alias in dataset:
                dataset["validation"] = dataset.pop(alias)
                break
    if "validation" not in dataset and train_val_split and train_val_split > 0 and not streaming:
        size = len(dataset["train"])
        held_out = math.ceil(train_val_split * size) if train_val_split < 1 else int(train_val_split)
        if not 0 < held_out < size:
            raise ValueError(
                f"--train_val_split {train_val_split} of {size} training image(s) leaves no image for training or "
                "none for validation; pass --validation_dir (or a dataset with a validation split), or "
                "--train_val_split 0 to train without validation."
            )
        split = dataset["train"].train_test_split(test_size=train_val_split, seed=seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


# --- latent cache ----------------------------------------------------------------------------------------


def vae_identity(vae) -> dict:
    """What makes two VAEs encode alike: class, config and a sha256 of every weight."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    config = {k: v for k, v in dict(vae.config).items() if not str(k).startswith("_")}
    return {"class": type(vae).__name__, "config": config, "weights_sha256": digest.hexdigest()}


def latent_cache_key(
    vae_id: dict, image_size: int, content_fingerprint: str, num_views: int, seed: int, transform: dict
) -> str:
    payload = {
        "version": LATENT_CACHE_VERSION,
        "vae": vae_id,
        "image_size": int(image_size),
        "content_fingerprint": content_fingerprint,
        "num_views": int(num_views),
        "seed": int(seed),
        "transform": transform,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _load_cache(path: str):
    import datasets

    with open(os.path.join(path, "cache_info.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    parts = [datasets.load_from_disk(os.path.join(path, name)) for name in info["parts"]]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0], info


def _encode_rows(model, dataset, image_column, transform, rows: range, num_views, seed, batch_size, progress):
    """`(len(rows), K, C, h, w)` float32: view `v` of row `i` is `transform(image_i)` seeded by `(seed, v, i)`."""
    config = model.config
    out = np.empty((len(rows), num_views, config.latent_channels, config.latent_size, config.latent_size),
                   dtype=np.float32)
    for view in range(num_views):
        for start in range(0, len(rows), batch_size):
            indices = rows[start : start + batch_size]
            pixels = torch.stack([
                transform(_read_image(dataset, image_column, i),
                          torch.Generator().manual_seed(derive_seed("cache-view", seed, view, i)))
                for i in indices
            ])
            out[start : start + len(indices), view] = model.encode_images(pixels.to(model.device)).float().cpu().numpy()
            progress.update(len(indices))
    return out


def cache_latents(
    model,
    dataset,
    image_column: str,
    transform: Callable,
    cache_dir: str,
    num_views: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    description: str = "train",
    content_fingerprint: str | None = None,
):
    """Encode every image of `dataset` `num_views` times with the frozen VAE of `model`, or reuse the cache.

    Safe to share between runs and across processes (see the module docstring): a lock per key, a build in
    `<key>.partial` renamed into place, and under N processes a contiguous 1/N of the images per process. Every
    process must call it (it synchronises them). `content_fingerprint` is the images' content hash
    (`ImageScan.fingerprint`); it is computed when not given.

    Returns `(latents_dataset, info)`: a `datasets.Dataset` with a `latents` column of shape `(K, C, h, w)`
    (float32, memory-mapped from disk), and the cache's `cache_info.json` content (`info["path"]`,
    `info["reused"]`).
    """
    import datasets
    from accelerate import PartialState
    from filelock import FileLock
    from tqdm.auto import tqdm

    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}.")
    state = PartialState()
    model = model.base_model  # the LMDModel that holds the VAE
    config = model.config
    fingerprint = content_fingerprint or scan_images(dataset, image_column, decode="header").fingerprint
    key = latent_cache_key(
        vae_identity(model.vae), config.image_size, fingerprint, num_views, seed,
        transform.describe() if hasattr(transform, "describe") else repr(transform),
    )
    path = os.path.join(cache_dir, key)
    staging = path + ".partial"
    os.makedirs(cache_dir, exist_ok=True)
    lock = FileLock(path + ".lock")
    if state.is_main_process:
        lock.acquire()  # another run building this key: wait for it, then reuse its cache
    try:
        state.wait_for_everyone()
        reused = os.path.isfile(os.path.join(path, "cache_info.json"))
        if not reused:
            if state.is_main_process:  # leftovers of a killed build (this key is ours while we hold the lock)
                shutil.rmtree(staging, ignore_errors=True)
                if os.path.isdir(path):
                    shutil.rmtree(path)  # a folder without cache_info.json was never a finished cache
                os.makedirs(staging)
            state.wait_for_everyone()
            per_process = math.ceil(len(dataset) / state.num_processes)
            rows = range(min(len(dataset), state.process_index * per_process),
                         min(len(dataset), (state.process_index + 1) * per_process))
            shape = (num_views, config.latent_channels, config.latent_size, config.latent_size)
            features = datasets.Features({"latents": datasets.Array4D(shape=shape, dtype="float32")})
            was_training = model.training
            model.eval()
            encode_started = time.perf_counter()
            progress = tqdm(total=len(rows) * num_views, desc=f"Encoding {description} images with the VAE",
                            unit="img", disable=not state.is_local_main_process)
            with torch.no_grad():
                latents = _encode_rows(model, dataset, image_column, transform, rows, num_views, seed, batch_size,
                                       progress)
            progress.close()
            model.train(was_training)
            datasets.Dataset.from_dict({"latents": latents}, features=features).save_to_disk(
                os.path.join(staging, f"part-{state.process_index:05d}"))
            state.wait_for_everyone()
            if state.is_main_process:
                # encode_seconds: what building this cache cost, for whoever reuses it and must account for it
                info = {"key": key, "encode_seconds": time.perf_counter() - encode_started,
                        "num_rows": len(dataset), "num_views": num_views, "latent_shape": list(shape[1:]),
                        "image_size": config.image_size, "content_fingerprint": fingerprint,
                        "vae_class": type(model.vae).__name__, "seed": seed, "version": LATENT_CACHE_VERSION,
                        "parts": [f"part-{rank:05d}" for rank in range(state.num_processes)]}
                with open(os.path.join(staging, "cache_info.json"), "w", encoding="utf-8") as handle:
                    json.dump(info, handle, indent=2)
                os.replace(staging, path)
                logger.info(f"Cached {len(dataset)} x {num_views} {description} latents in {path}.")
        state.wait_for_everyone()
    finally:
        if state.is_main_process:
            lock.release()
    latents, info = _load_cache(path)
    if reused:
        logger.info(f"Reusing {len(latents)} cached {description} latents from {path} (the VAE is not run).")
    return latents, {**info, "path": path, "reused": reused}


__all__ = [
    "ImageDataset",
    "LatentDataset",
    "RandomResizedCropFlip",
    "ProcessorTransform",
    "cache_latents",
    "collate_fn",
    "default_latent_cache_dir",
    "derive_seed",
    "drop_unreadable_images",
    "find_image_column",
    "image_to_tensor",
    "latent_cache_key",
    "load_image_datasets",
    "mask_seed",
    "random_resized_crop_box",
    "scan_images",
    "vae_identity",
]

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

The cache key hashes the VAE (class, config and a sha256 of its weights), the image size, the dataset's
`datasets` fingerprint, the number of views, the seed and the augmentation parameters; a change to any of them
builds a new cache. Layout: `<cache_dir>/<key>/shard-00000/ ...` (each `Dataset.save_to_disk`) plus
`cache_info.json`, written last: a cache without it is incomplete and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .image_processing_lmd import to_rgb_image


logger = logging.getLogger(__name__)

#: Bump when the cached content changes meaning (transform, layout), to invalidate existing caches.
LATENT_CACHE_VERSION = "1"

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

    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"--image_column_name {requested!r} not found; the dataset has columns {columns}.")
        return requested
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img", "pixel_values", "images"):
        if name in columns:
            return name
    raise ValueError(f"Could not find an image column among {columns}; pass --image_column_name.")


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
        return {"pixel_values": self.transform(self.image(index), generator), "mask_seed": mask_seed(self.seed, index)}


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
    trust_remote_code: bool = False,
):
    """A `DatasetDict` with `train` and (when available or split off) `validation`.

    `dataset_name`: a Hub dataset or a local folder `datasets` can read (e.g. an image folder with `train/` and
    `validation/`); else `train_dir` / `validation_dir` are read with the `imagefolder` builder. Without a
    validation split, `train_val_split` of the training images are held out (seeded).
    """
    import datasets

    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_dir is not None:
        data_files = {"train": os.path.join(train_dir, "**")}
        if validation_dir is not None:
            data_files["validation"] = os.path.join(validation_dir, "**")
        dataset = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    else:
        raise ValueError("Pass --dataset_name or --train_dir (with optional --validation_dir).")
    if not isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.DatasetDict({"train": dataset})
    if "train" not in dataset:
        raise ValueError(f"The dataset has no `train` split (splits: {list(dataset)}).")
    if "validation" not in dataset:
        for alias in ("val", "valid", "test"):
            if alias in dataset:
                dataset["validation"] = dataset.pop(alias)
                break
    if "validation" not in dataset and train_val_split and train_val_split > 0:
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
    vae_id: dict, image_size: int, dataset_fingerprint: str, num_views: int, seed: int, transform: dict
) -> str:
    payload = {
        "version": LATENT_CACHE_VERSION,
        "vae": vae_id,
        "image_size": int(image_size),
        "dataset_fingerprint": dataset_fingerprint,
        "num_views": int(num_views),
        "seed": int(seed),
        "transform": transform,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _load_cache(path: str):
    import datasets

    with open(os.path.join(path, "cache_info.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    shards = [datasets.load_from_disk(os.path.join(path, name)) for name in info["shards"]]
    return datasets.concatenate_datasets(shards) if len(shards) > 1 else shards[0], info


def cache_latents(
    model,
    dataset,
    image_column: str,
    transform: Callable,
    cache_dir: str,
    num_views: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    shard_size: int = 4096,
    description: str = "train",
    dataset_fingerprint: str | None = None,
):
    """Encode every image of `dataset` `num_views` times with the frozen VAE of `model`, or reuse the cache.

    View `v` of row `i` is `transform(image_i, generator)` with a generator seeded by `(seed, v, i)`.
    Encoding is batched, runs under `torch.no_grad`, on `model`'s device, with a progress bar.

    Returns `(latents_dataset, info)`: a `datasets.Dataset` with a `latents` column of shape `(K, C, h, w)`
    (float32, memory-mapped from disk), and the cache's `cache_info.json` content (`info["path"]`,
    `info["reused"]`).
    """
    import datasets
    from tqdm.auto import tqdm

    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}.")
    fingerprint = dataset_fingerprint or getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        raise ValueError("The dataset has no fingerprint; pass dataset_fingerprint.")
    model = model.base_model  # the LMDModel that holds the VAE
    config = model.config
    key = latent_cache_key(
        vae_identity(model.vae), config.image_size, fingerprint, num_views, seed,
        transform.describe() if hasattr(transform, "describe") else repr(transform),
    )
    path = os.path.join(cache_dir, key)
    if os.path.isfile(os.path.join(path, "cache_info.json")):
        latents, info = _load_cache(path)
        logger.info(f"Reusing {len(latents)} cached {description} latents from {path} (the VAE is not run).")
        return latents, {**info, "path": path, "reused": True}

    shutil.rmtree(path, ignore_errors=True)  # an incomplete earlier attempt
    os.makedirs(path, exist_ok=True)
    shape = (num_views, config.latent_channels, config.latent_size, config.latent_size)
    features = datasets.Features({"latents": datasets.Array4D(shape=shape, dtype="float32")})
    total = len(dataset)
    shard_names = []
    was_training = model.training
    model.eval()
    progress = tqdm(total=total * num_views, desc=f"Encoding {description} images with the VAE", unit="img")
    with torch.no_grad():
        for shard_index, shard_start in enumerate(range(0, total, shard_size)):
            shard_end = min(total, shard_start + shard_size)
            shard = np.empty((shard_end - shard_start, *shape), dtype=np.float32)
            for view in range(num_views):
                for start in range(shard_start, shard_end, batch_size):
                    indices = range(start, min(shard_end, start + batch_size))
                    pixels = torch.stack([
                        transform(
                            _read_image(dataset, image_column, i),
                            torch.Generator().manual_seed(derive_seed("cache-view", seed, view, i)),
                        )
                        for i in indices
                    ])
                    encoded = model.encode_images(pixels.to(model.device)).float().cpu().numpy()
                    shard[start - shard_start: start - shard_start + len(indices), view] = encoded
                    progress.update(len(indices))
            name = f"shard-{shard_index:05d}"
            datasets.Dataset.from_dict({"latents": shard}, features=features).save_to_disk(os.path.join(path, name))
            shard_names.append(name)
    progress.close()
    model.train(was_training)
    info = {
        "key": key,
        "num_rows": total,
        "num_views": num_views,
        "latent_shape": list(shape[1:]),
        "image_size": config.image_size,
        "dataset_fingerprint": fingerprint,
        "vae_class": type(model.vae).__name__,
        "seed": seed,
        "shards": shard_names,
        "version": LATENT_CACHE_VERSION,
    }
    with open(os.path.join(path, "cache_info.json.tmp"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    os.replace(os.path.join(path, "cache_info.json.tmp"), os.path.join(path, "cache_info.json"))
    latents, _ = _load_cache(path)
    logger.info(f"Cached {total} x {num_views} {description} latents in {path}.")
    return latents, {**info, "path": path, "reused": False}


__all__ = [
    "ImageDataset",
    "LatentDataset",
    "RandomResizedCropFlip",
    "ProcessorTransform",
    "cache_latents",
    "collate_fn",
    "default_latent_cache_dir",
    "derive_seed",
    "find_image_column",
    "image_to_tensor",
    "latent_cache_key",
    "load_image_datasets",
    "mask_seed",
    "random_resized_crop_box",
    "vae_identity",
]

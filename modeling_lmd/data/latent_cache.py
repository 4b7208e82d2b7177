"""The on-disk latent cache (`train_lmd.py --cache_latents`).

Encoding with the VAE dominates a CPU training step, so every training image can be encoded once and the latents
stored with `datasets` on disk. Augmentation cannot then be drawn afresh every epoch; the trade-off taken here:

- `num_views` (K) augmented views are cached per image, each with its own RandomResizedCrop (scale 0.2-1,
  bicubic) and horizontal flip, applied in pixel space *before* encoding, so each view is an exact latent of an
  augmented image. Each epoch, each sample picks one of its K views at random (`LatentDataset`). Cost: K encodings
  and K times the storage; diversity: K crops per image instead of a fresh one every epoch. K = 1 gives one fixed
  random crop.
- `latent_flip=True` (in `LatentDataset`) additionally flips the chosen view horizontally *in latent space* with
  probability 1/2. This doubles the diversity for free, but a KL VAE is only approximately flip-equivariant, so it
  is off by default.

The cache key hashes the VAE (class, config and a sha256 of its weights), the image size, the images' *content*
(a sha256 of every image file's bytes, from `scan_images`: a file changed under the same name and date builds a
new cache), the number of views, the seed and the augmentation parameters. Sharing a cache is safe:

- A finished cache is never deleted or rewritten (a run reading it through a memory map cannot be hurt). It is
  built in `<key>.partial/` and renamed into place with `cache_info.json` inside: a folder `<key>/` is complete.
- A file lock per key (`<key>.lock`) makes a second run with the same key wait for the first and reuse its cache.
- Under N processes (`torchrun` / `accelerate launch`) each process encodes its contiguous 1/N of the images into
  `part-<rank>`; the main process joins the parts in order, so the cache equals a one-process one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from typing import Callable

import datasets
import numpy as np
import torch

from ..vae_lmd import vae_weights_sha256
from .datasets import derive_seed
from .images import readable_image, scan_images


logger = logging.getLogger(__name__)

#: What a cache can be stored as, and the Arrow type that holds it (bfloat16 as its bits).
CACHE_DTYPES = {"float32": "float32", "bfloat16": "int16"}

#: Bump when the cached content changes meaning (transform, layout, key), to invalidate existing caches.
LATENT_CACHE_VERSION = "2"


def default_latent_cache_dir() -> str:
    """`<HF datasets cache>/modeling_lmd_latents` (follows `HF_DATASETS_CACHE` / `HF_HOME`)."""
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "modeling_lmd_latents")


def vae_identity(vae) -> dict:
    """What makes two VAEs encode alike: class, config and a sha256 of every weight."""
    config = {k: v for k, v in dict(vae.config).items() if not str(k).startswith("_")}
    return {"class": type(vae).__name__, "config": config, "weights_sha256": vae_weights_sha256(vae)}


def latent_cache_key(
    vae_id: dict, image_size: int, content_fingerprint: str, num_views: int, seed: int, transform: dict,
    dtype: str = "float32",
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
    if dtype != "float32":  # float32 caches keep the keys they had before the option existed
        payload["dtype"] = dtype
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _load_cache(path: str):
    """A finished cache and its `cache_info.json`; a cache damaged on disk since (it is never rewritten) is an
    error that names its folder, checked here rather than at some later step's read of a row."""
    try:
        with open(os.path.join(path, "cache_info.json"), encoding="utf-8") as handle:
            info = json.load(handle)
        parts = [datasets.load_from_disk(os.path.join(path, name)) for name in info["parts"]]
        latents = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if len(latents) != info["num_rows"]:
            raise ValueError(f"{len(latents)} rows where cache_info.json says {info['num_rows']}")
    except Exception as error:  # noqa: BLE001 - any unreadable part: the same advice
        raise ValueError(f"The latent cache at {path} is damaged ({type(error).__name__}: {error}); delete that folder "
                         "and the run builds it again.") from error
    return latents, info


def _encode_rows(model, dataset, image_column, transform, rows: range, num_views, seed, batch_size, progress):
    """`(len(rows), K, C, h, w)` float32: view `v` of row `i` is `transform(image_i)` seeded by `(seed, v, i)`."""
    config = model.config
    out = np.empty((len(rows), num_views, config.latent_channels, config.latent_size, config.latent_size),
                   dtype=np.float32)
    for view in range(num_views):
        for start in range(0, len(rows), batch_size):
            indices = rows[start : start + batch_size]
            pixels = torch.stack([
                transform(readable_image(dataset, image_column, i),
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
    dtype: str = "float32",
):
    """Encode every image of `dataset` `num_views` times with the frozen VAE of `model`, or reuse the cache.

    Safe to share between runs and across processes (see the module docstring): a lock per key, a build in
    `<key>.partial` renamed into place, and under N processes a contiguous 1/N of the images per process. Every
    process must call it (it synchronises them). `content_fingerprint` is the images' content hash
    (`ImageScan.fingerprint`); it is computed when not given. `dtype="bfloat16"` stores the latents in half the
    disk, as their bfloat16 bits (Arrow has no bfloat16); `LatentDataset(storage_dtype=info["dtype"])` reads them.

    Returns `(latents_dataset, info)`: a `datasets.Dataset` with a `latents` column of shape `(K, C, h, w)`
    (memory-mapped from disk), and the cache's `cache_info.json` content (`info["path"]`, `info["reused"]`,
    `info["dtype"]`).
    """
    from accelerate import PartialState
    from filelock import FileLock

    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}.")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}.")
    state = PartialState()
    model = model.base_model  # the LMDModel that holds the VAE
    fingerprint = content_fingerprint or scan_images(dataset, image_column, decode="header").fingerprint
    key = latent_cache_key(
        vae_identity(model.vae), model.config.image_size, fingerprint, num_views, seed,
        transform.describe() if hasattr(transform, "describe") else repr(transform), dtype,
    )
    path = os.path.join(cache_dir, key)
    os.makedirs(cache_dir, exist_ok=True)
    lock = FileLock(path + ".lock")
    if state.is_main_process:
        lock.acquire()  # another run building this key: wait for it, then reuse its cache
    try:
        state.wait_for_everyone()
        reused = os.path.isfile(os.path.join(path, "cache_info.json"))
        if not reused:
            build = {"key": key, "num_views": num_views, "seed": seed, "content_fingerprint": fingerprint,
                     "dtype": dtype}
            _build_cache(state, model, dataset, image_column, transform, path, build, batch_size, description)
        state.wait_for_everyone()
    finally:
        if state.is_main_process:
            lock.release()
    latents, info = _load_cache(path)
    if reused:
        logger.info(f"Reusing {len(latents)} cached {description} latents from {path} (the VAE is not run).")
    return latents, {**info, "path": path, "reused": reused}


def _build_cache(state, model, dataset, image_column: str, transform: Callable, path: str, build: dict,
                 batch_size: int, description: str) -> None:
    """Encode this process's contiguous share of the images into `<path>.partial/part-<rank>`; the main process
    then writes `cache_info.json` and renames the folder into place (a reader only ever sees a finished cache).
    `build` holds the key's settings (`key`, `num_views`, `seed`, `content_fingerprint`, `dtype`)."""
    from tqdm.auto import tqdm

    config, staging, num_views = model.config, path + ".partial", build["num_views"]
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
    features = datasets.Features({"latents": datasets.Array4D(shape=shape, dtype=CACHE_DTYPES[build["dtype"]])})
    was_training = model.training
    model.eval()
    encode_started = time.perf_counter()
    progress = tqdm(total=len(rows) * num_views, desc=f"Encoding {description} images with the VAE", unit="img",
                    disable=not state.is_local_main_process)
    with torch.no_grad():
        latents = _encode_rows(model, dataset, image_column, transform, rows, num_views, build["seed"], batch_size,
                               progress)
    if build["dtype"] == "bfloat16":
        latents = torch.from_numpy(latents).to(torch.bfloat16).view(torch.int16).numpy()
    progress.close()
    model.train(was_training)
    datasets.Dataset.from_dict({"latents": latents}, features=features).save_to_disk(
        os.path.join(staging, f"part-{state.process_index:05d}"))
    state.wait_for_everyone()
    if state.is_main_process:
        # encode_seconds: what building this cache cost, for whoever reuses it and must account for it
        info = {**build, "encode_seconds": time.perf_counter() - encode_started, "num_rows": len(dataset),
                "latent_shape": list(shape[1:]), "image_size": config.image_size,
                "vae_class": type(model.vae).__name__, "version": LATENT_CACHE_VERSION,
                "parts": [f"part-{rank:05d}" for rank in range(state.num_processes)]}
        with open(os.path.join(staging, "cache_info.json"), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
        os.replace(staging, path)
        logger.info(f"Cached {len(dataset)} x {num_views} {description} latents in {path}.")


__all__ = ["LATENT_CACHE_VERSION", "cache_latents", "default_latent_cache_dir", "latent_cache_key", "vae_identity"]

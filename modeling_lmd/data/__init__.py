"""Data for LMD pre-training, one concern a module:

- `transforms`: the paper's RandomResizedCrop + flip, and the evaluation transform (no torchvision);
- `images`: loading `datasets` image sets and scanning them for unreadable files;
- `datasets`: torch datasets over images, image streams and cached latents, seeded for exact resume;
- `latent_cache`: the on-disk cache of VAE latents, safe to share between runs and processes.
"""

from .datasets import (
    STREAMED_EVAL_SAMPLES,
    ImageDataset,
    LatentDataset,
    StreamingImageDataset,
    collate_fn,
    derive_seed,
    mask_seed,
)
from .images import (
    FULL_DECODE_LIMIT,
    ImageScan,
    decode_image_value,
    drop_unreadable_images,
    find_image_column,
    first_rows,
    load_image_datasets,
    scan_images,
)
from .latent_cache import LATENT_CACHE_VERSION, cache_latents, default_latent_cache_dir, latent_cache_key, vae_identity
from .transforms import ProcessorTransform, RandomResizedCropFlip, image_to_tensor, random_resized_crop_box


__all__ = [
    "FULL_DECODE_LIMIT",
    "LATENT_CACHE_VERSION",
    "STREAMED_EVAL_SAMPLES",
    "ImageDataset",
    "ImageScan",
    "LatentDataset",
    "ProcessorTransform",
    "RandomResizedCropFlip",
    "StreamingImageDataset",
    "cache_latents",
    "collate_fn",
    "decode_image_value",
    "default_latent_cache_dir",
    "derive_seed",
    "drop_unreadable_images",
    "find_image_column",
    "first_rows",
    "image_to_tensor",
    "latent_cache_key",
    "load_image_datasets",
    "mask_seed",
    "random_resized_crop_box",
    "scan_images",
    "vae_identity",
]

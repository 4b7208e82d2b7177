"""Where training images come from and whether they can be read: `datasets` image sets (a Hub dataset or image
folders, a validation split carved off when there is none), their image column, and a scan that drops unreadable
files before any step.

Bad images. `scan_images` opens every image once before training (headers, or full decoding for small sets or on
request): unreadable files are dropped with one warning that counts and names them (or refused with
`strict=True`), so one corrupt JPEG cannot stop a run at step 3 or lose the final evaluation. The scan also hashes
every image's bytes: the latent cache's key for the images' content.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
from PIL import Image

from ..image_processing_lmd import to_rgb_image


logger = logging.getLogger(__name__)

#: `scan_images` fully decodes every image of sets up to this size (headers only above it, unless asked).
FULL_DECODE_LIMIT = 5000


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
    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming)
    elif train_dir is not None:
        folders = {"train": train_dir, "validation": validation_dir}
        data_files = {split: folder_files(folder, split) for split, folder in folders.items() if folder is not None}
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


def folder_files(folder: str, split: str) -> list[str]:
    """Every file under `folder`, sorted. A name that is not valid UTF-8 (which `datasets` cannot hold) is skipped
    with a warning that shows its bytes; a folder with no other file is an error."""
    files, skipped = [], []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append(os.fsencode(path))
                continue
            files.append(path)
    if skipped:
        logger.warning(f"Skipping {len(skipped)} {split} file(s) whose names are not valid UTF-8: "
                       + ", ".join(repr(name) for name in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not files:
        raise ValueError(f"The {split} folder {folder!r} holds no files (expected images, e.g. PNG or JPEG).")
    return sorted(files)


def first_rows(stream, count: int):
    """The first `count` rows of a stream as a `datasets.Dataset` (images kept as their encoded bytes)."""
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


def find_image_column(dataset, requested: str | None = None) -> str:
    """`requested` if given (checked), else the first `datasets.Image` column, else `image` / `img`."""
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


def readable_image(dataset, image_column: str, index: int) -> Image.Image:
    """The image of row `index`, or, if it cannot be read (a file `scan_images` only checked the header of), the next
    readable one, with a warning. Training, evaluation and the latent cache read images through this, so one bad
    file stops none of them, and a row and its cached latents are always the same image."""
    for offset in range(len(dataset)):
        try:
            return _read_image(dataset, image_column, (index + offset) % len(dataset))
        except ValueError as error:
            logger.warning(f"Skipping an unreadable image: {error}")
    raise ValueError("None of the images can be read.")


def _read_image(dataset, image_column: str, index: int) -> Image.Image:
    """The image of row `index` as RGB, or a `ValueError` naming the row and, where known, the file."""
    try:
        return to_rgb_image(dataset[index][image_column])
    except Exception as error:  # noqa: BLE001 - re-raised with the file that caused it
        where = f"row {index} of the dataset"
        try:
            raw = dataset.cast_column(image_column, datasets.Image(decode=False))[index][image_column]
            if isinstance(raw, dict) and raw.get("path"):
                where += f" (file {raw['path']})"
        except Exception:  # noqa: BLE001 - best effort only
            pass
        raise ValueError(f"Could not read the image at {where}: {error}") from error


__all__ = ["FULL_DECODE_LIMIT", "ImageScan", "decode_image_value", "drop_unreadable_images", "find_image_column",
           "first_rows", "load_image_datasets", "readable_image", "scan_images"]

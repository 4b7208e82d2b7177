"""Tests of the offline demo dataset builder and of the shipped demo VAE."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_lmd import demo_data
from modeling_lmd.pretrained import DEMO_VAE as SHIPPED_VAE


pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def demo_dir_32(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo32")
    meta = demo_data.build_demo_dataset(str(out), resolution=32)
    return str(out), meta


def test_counts_and_metadata(demo_dir_32):
    out, meta = demo_dir_32
    assert meta["resolution"] == 32
    assert meta["counts"]["train"] > 1000
    assert meta["counts"]["validation"] > 50
    with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk["counts"] == meta["counts"]
    assert sum(meta["counts_per_photo"].values()) == meta["counts"]["train"] + meta["counts"]["validation"]
    for split in ("train", "validation"):
        files = sorted(os.listdir(os.path.join(out, split)))
        assert len(files) == meta["counts"][split]
        with Image.open(os.path.join(out, split, files[0])) as img:
            assert img.size == (32, 32) and img.mode == "RGB"


def test_load_tiles_reads_a_split_in_file_order(demo_dir_32):
    out, meta = demo_dir_32
    names, tiles = demo_data.load_tiles(os.path.join(out, "validation"))
    assert names == sorted(names) and len(names) == meta["counts"]["validation"]
    assert tiles.shape == (len(names), 32, 32, 3) and tiles.dtype == np.uint8
    with Image.open(os.path.join(out, "validation", names[-1])) as img:
        np.testing.assert_array_equal(tiles[-1], np.asarray(img.convert("RGB")))


def test_split_by_source_photo(demo_dir_32):
    out, meta = demo_dir_32
    photos = {}
    for split in ("train", "validation"):
        photos[split] = {name.rsplit("_s", 1)[0] for name in os.listdir(os.path.join(out, split))}
    assert photos["train"] and photos["validation"]
    assert not photos["train"] & photos["validation"]
    assert photos["validation"] == set(demo_data.VALIDATION_PHOTOS)
    for src in meta["sources"]:
        assert src["split"] == ("validation" if src["name"] in demo_data.VALIDATION_PHOTOS else "train")


def test_deterministic_and_idempotent(demo_dir_32, tmp_path):
    out, meta = demo_dir_32
    before = _hashes(out)
    mtime = os.path.getmtime(os.path.join(out, "metadata.json"))
    # Re-running on a complete folder is a no-op.
    again = demo_data.build_demo_dataset(out, resolution=32)
    assert again["counts"] == meta["counts"]
    assert os.path.getmtime(os.path.join(out, "metadata.json")) == mtime
    # A fresh build elsewhere gives byte-identical files.
    other = tmp_path / "again"
    demo_data.build_demo_dataset(str(other), resolution=32)
    assert _hashes(str(other)) == before


def test_incomplete_folder_is_rebuilt(tmp_path):
    out = str(tmp_path / "demo")
    meta = demo_data.build_demo_dataset(out, resolution=16, scales=(4,))
    victim = os.path.join(out, "train", meta["files"]["train"][0])
    os.remove(victim)
    demo_data.build_demo_dataset(out, resolution=16, scales=(4,))
    assert os.path.isfile(victim)


def test_imagefolder_loads_both_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = str(tmp_path / "demo16")
    meta = demo_data.build_demo_dataset(out, resolution=16, scales=(4,))
    ds = datasets.load_dataset("imagefolder", data_dir=out, cache_dir=str(tmp_path / "cache"))
    assert set(ds.keys()) == {"train", "validation"}
    for split in ("train", "validation"):
        assert "image" in ds[split].column_names
        assert ds[split].num_rows == meta["counts"][split]
    assert ds["validation"][0]["image"].size == (16, 16)


def test_cli_prints_counts(tmp_path, capsys):
    out = str(tmp_path / "cli")
    meta = demo_data.main(["--output_dir", out, "--resolution", "16", "--scales", "4"])
    printed = capsys.readouterr().out
    assert f"train: {meta['counts']['train']} tiles" in printed
    assert f"validation: {meta['counts']['validation']} tiles" in printed


# ----------------------------------------------------------------------------------------------- demo VAE


@pytest.mark.skipif(not os.path.isdir(SHIPPED_VAE), reason="shipped demo VAE not present")
def test_shipped_vae_loads_and_reconstructs(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(SHIPPED_VAE).eval()
    assert vae.config.latent_channels == 4
    assert vae.config.scaling_factor > 0

    # One validation tile at 64 px, built straight from its source photograph (no full dataset build).
    photo = next(p for p in demo_data.list_demo_photos() if p["name"] == demo_data.VALIDATION_PHOTOS[0])
    img = demo_data._load_rgb(photo["path"])
    tiles = demo_data.tiles_of_photo(img, 64, (4,), 64, demo_data.MIN_TILE_STD)
    batch = np.stack([np.asarray(t) for _, t in tiles[:8]])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        rec = vae.decode(z).sample
    assert z.shape == (len(batch), 4, 16, 16)
    a = (x + 1) / 2
    b = ((rec + 1) / 2).clamp(0, 1)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    psnr = float((-10 * torch.log10(mse)).mean())
    print(f"demo VAE PSNR on {len(batch)} {photo['name']} tiles: {psnr:.2f} dB")
    assert psnr > PSNR_THRESHOLD, psnr


# Held-out chelsea tiles: 34.19 dB for the shipped VAE (28.22 dB over the whole validation split, see its
# card); the threshold also held for the two weaker VAEs before it (32.55 and 29.09 dB), so it catches a broken VAE,
# not a retrain.
PSNR_THRESHOLD = 27.5

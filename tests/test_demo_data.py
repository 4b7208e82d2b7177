"""Tests of the offline demo dataset builder and of the shipped demo VAE."""

import hashlib
import json
import os
import re
import subprocess
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


# ------------------------------------------------------------------- build folders: only a build's own files go


def _contents(folder):
    """{path relative to `folder`: bytes} of every file below it."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def _write(folder, files):
    for path, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
        with open(os.path.join(folder, path), "wb") as handle:
            handle.write(content)


def _files(folders):
    paths = st.builds(os.path.join, st.sampled_from(folders), st.from_regex(r"[a-z][a-z0-9_]{0,5}\.(png|txt)",
                                                                            fullmatch=True))
    return st.dictionaries(paths, st.binary(max_size=8), max_size=5)


_FOLDERS = ["", "train", "validation", "train/3", "notes/deep"]


@settings(max_examples=25, deadline=None)
@given(present=_files(_FOLDERS + ["cache"]), staged=_files(_FOLDERS),
       record=st.sampled_from(["none", "list", "by folder", "outside", "not json"]), data=st.data())
def test_claim_and_install_keep_every_file_the_record_does_not_list(tmp_path_factory, present, staged, record, data):
    """Any folder, any record: the claim refuses exactly when a file outside the spared `cache/` is not listed, and
    then changes nothing; otherwise the install replaces the listed files by the staged ones and keeps all others
    (those in `cache/` even when listed)."""
    out = str(tmp_path_factory.mktemp("out"))
    _write(out, present)
    listed = data.draw(st.sets(st.sampled_from(sorted(present))) if present else st.just(set()))
    if record == "list":
        _write(out, {"metadata.json": json.dumps({"files": sorted(listed)}).encode()})
    elif record == "by folder":
        by_folder = {}
        for path in listed:
            by_folder.setdefault(os.path.dirname(path) or ".", []).append(os.path.basename(path))
        _write(out, {"metadata.json": json.dumps({"files": by_folder}).encode()})
    elif record == "outside":  # one path outside the folder: the record proves nothing
        _write(out, {"metadata.json": json.dumps({"files": sorted(listed) + ["../x.png"]}).encode()})
    elif record == "not json":
        _write(out, {"metadata.json": b"{"})
    owned = {"metadata.json", *listed} if record in ("list", "by folder") else set()
    before = _contents(out)
    replaced = {path for path in owned if not path.startswith("cache/")}
    unlisted = sorted(path for path in before if path not in replaced and not path.startswith("cache/"))
    if unlisted:
        with pytest.raises(FileExistsError, match=re.escape(unlisted[0])):
            demo_data.claim_build_dir(out, "metadata.json", "files", spared=["cache"])
        assert _contents(out) == before
        return
    previous = demo_data.claim_build_dir(out, "metadata.json", "files", spared=["cache"])
    assert sorted(previous) == sorted(replaced - {"metadata.json"})
    new_record = {"files": sorted(staged), "settings": "new"}
    with demo_data.staging_folder(out, ".build_") as staging:
        _write(staging, staged)
        demo_data.install_build(staging, out, "metadata.json", "files", previous, new_record)
    after = _contents(out)
    kept = {path: content for path, content in before.items() if path not in replaced}  # the spared cache/ only
    assert after == {**kept, **staged, "metadata.json": after["metadata.json"]}
    assert json.loads(after["metadata.json"]) == new_record


def _build(out, files, renames_before_crash=None):
    """Claim `out` and install `files` there as a build whose record lists them; with `renames_before_crash`, the
    install is interrupted (Ctrl-C) at the rename after that many."""
    previous = demo_data.claim_build_dir(out, "metadata.json", "files")
    with demo_data.staging_folder(out, ".build_") as staging, pytest.MonkeyPatch.context() as patch:
        _write(staging, files)
        if renames_before_crash is not None:
            renames, real_replace = iter(range(renames_before_crash)), os.replace

            def replace(source, destination):
                if next(renames, None) is None:
                    raise KeyboardInterrupt
                real_replace(source, destination)

            patch.setattr(demo_data.os, "replace", replace)
        demo_data.install_build(staging, out, "metadata.json", "files", previous, {"files": sorted(files)})


@settings(max_examples=10, deadline=None)
@given(renames_before_crash=st.integers(0, 5))  # the interim record, 4 files, the final record: each is one rename
def test_an_interrupted_install_leaves_only_files_the_next_build_knows_as_its_own(tmp_path_factory,
                                                                                renames_before_crash):
    out = str(tmp_path_factory.mktemp("out"))
    old = {"train/a.png": b"a", "train/b.png": b"b", "validation/c.png": b"c"}
    new = {"train/b.png": b"B", "train/d.png": b"D", "validation/e.png": b"E", "validation/f.png": b"F"}
    _build(out, old)
    with pytest.raises(KeyboardInterrupt):
        _build(out, new, renames_before_crash)
    _build(out, new)  # not refused: whatever the interrupted install left, its record listed
    after = _contents(out)
    assert after == {**new, "metadata.json": after["metadata.json"]}
    assert json.loads(after["metadata.json"]) == {"files": sorted(new)}


def test_a_rebuild_with_other_settings_leaves_no_tile_of_the_previous_build(tmp_path):
    out = str(tmp_path / "demo")
    demo_data.build_demo_dataset(out, resolution=16, scales=(4,))
    meta = demo_data.build_demo_dataset(out, resolution=16, scales=(5,))
    for split in ("train", "validation"):
        assert sorted(os.listdir(os.path.join(out, split))) == meta["files"][split]
        assert all("_s5_" in name for name in meta["files"][split])


@pytest.mark.parametrize("build", [
    lambda out: demo_data.build_demo_dataset(out, resolution=16, scales=(4,)),
    lambda out: demo_data.build_digits_folder(out),
    lambda out: demo_data.build_unseen_photos(out),
], ids=["demo", "digits", "unseen"])
def test_every_builder_refuses_a_folder_holding_a_users_file_and_keeps_it(tmp_path, monkeypatch, build):
    def no_download(command, *args, **kwargs):
        raise AssertionError(f"ran {command} for a folder it must refuse")

    monkeypatch.setattr(subprocess, "run", no_download)
    out = str(tmp_path / "data")
    _write(out, {"train/mine.jpg": b"my photo", "notes.txt": b"mine"})
    with pytest.raises(FileExistsError, match=r"already holds files and no metadata\.json of a previous build that "
                                              r"lists them: notes\.txt, train/mine\.jpg\. A build replaces only"):
        build(out)
    assert _contents(out) == {"train/mine.jpg": b"my photo", "notes.txt": b"mine"}


def test_a_file_given_as_the_output_folder_is_refused(tmp_path):
    (tmp_path / "data").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"The output folder .*data is a file; expected a folder"):
        demo_data.build_demo_dataset(str(tmp_path / "data"), resolution=16, scales=(4,))
    assert (tmp_path / "data").read_text() == "mine"


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

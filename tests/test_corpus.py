"""The photo corpus recipe on a package built here (`dpkg-deb --build`): photographs read out of the .deb, whole
scenes to one split, transparent tiles dropped, per-scene cap, a manifest of every image file, and reuse."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from modeling_lmd import corpus

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A .deb `photos-test` holding two photographs of one place, one panorama strip with a transparent sky, one
    illustration and one documentation figure; the corpus lists its scenes instead of the real ones."""
    root = tmp_path / "pkg"
    share = root / "usr" / "share" / "photos"
    share.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("place_a.jpg", "place_b.jpg", "lake.png", "drawing.png", "figure.png"):
        Image.fromarray((rng.random((160, 200, 3)) * 255).astype(np.uint8)).save(share / name)
    strip = np.concatenate([(rng.random((128, 256, 3)) * 255).astype(np.uint8),
                            np.full((128, 256, 1), 255, np.uint8)], axis=-1)
    strip[:64, :, 3] = 0  # the sky
    Image.fromarray(strip, "RGBA").save(share / "strip.png")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: photos-test\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: tests <t@example.org>\nDescription: test photos\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(debs / "photos-test_1.0_all.deb")],
                   check=True, capture_output=True)
    monkeypatch.setattr(corpus, "DEBIAN_PACKAGES", {"photos-test": "1.0"})
    monkeypatch.setattr(corpus, "DEBIAN_SCENES", (
        ("place", "photos-test", ("usr/share/photos/place_?.jpg",)),
        ("lake", "photos-test", ("usr/share/photos/lake.png",)),
        ("panorama", "photos-test", ("usr/share/photos/strip.png",)),
    ))
    monkeypatch.setattr(corpus, "VALIDATION_SCENES", ("lake", "coffee"))
    monkeypatch.setattr(corpus, "MAX_TILES_PER_SCENE", {"train": 40, "validation": 5})
    return str(debs)


def test_the_corpus_holds_the_listed_photographs_split_by_scene(fake_package, tmp_path):
    manifest = corpus.build_corpus(str(tmp_path / "corpus"), download_dir=fake_package, resolution=32)
    scenes = {row["scene"]: row for row in manifest["scenes"]}
    assert {"place", "lake", "panorama", "coffee", "astronaut"} <= set(scenes)  # the demo set's photos too
    assert scenes["lake"]["split"] == "validation" and scenes["place"]["split"] == "train"
    train = os.listdir(tmp_path / "corpus" / "train")
    validation = os.listdir(tmp_path / "corpus" / "validation")
    assert not any(name.startswith("lake__") for name in train)  # a held-out scene is held out whole
    assert {name.split("__")[1].split("_s")[0] for name in train if name.startswith("place__")} == {"place_a", "place_b"}
    assert scenes["place"]["tiles"] == 40 < scenes["place"]["tiles_before_cap"]  # capped, evenly sampled
    assert 0 < scenes["lake"]["tiles"] <= 5
    # Only the strip's fully opaque tiles: its lower half, at scales whose tiles fit there.
    for name in (n for n in train if n.startswith("panorama__")):
        assert np.asarray(Image.open(tmp_path / "corpus" / "train" / name)).shape == (32, 32, 3)
    assert scenes["panorama"]["tiles"] < scenes["place"]["tiles_before_cap"]
    # Every image file of the package is accounted for, with why it was left out.
    rows = {row["file"]: row for row in manifest["files"] if row["package"] == "photos-test"}
    assert rows["usr/share/photos/drawing.png"]["scene"] is None and "left_out" in rows["usr/share/photos/drawing.png"]
    assert rows["usr/share/photos/place_a.jpg"]["scene"] == "place"
    assert manifest["counts"] == {"train": len(train), "validation": len(validation)}
    on_disk = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"]


def test_a_complete_corpus_is_reused_and_the_same_build_gives_the_same_tiles(fake_package, tmp_path):
    first = corpus.build_corpus(str(tmp_path / "a"), download_dir=fake_package, resolution=32)
    stamp = os.path.getmtime(tmp_path / "a" / "manifest.json")
    assert corpus.build_corpus(str(tmp_path / "a"), download_dir=fake_package, resolution=32) == first
    assert os.path.getmtime(tmp_path / "a" / "manifest.json") == stamp
    corpus.build_corpus(str(tmp_path / "b"), download_dir=fake_package, resolution=32)
    for split in ("train", "validation"):
        names = sorted(os.listdir(tmp_path / "a" / split))
        assert names == sorted(os.listdir(tmp_path / "b" / split))
        for name in names[:20]:
            assert (tmp_path / "a" / split / name).read_bytes() == (tmp_path / "b" / split / name).read_bytes()


def test_a_scene_missing_from_its_package_is_an_error(fake_package, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "DEBIAN_SCENES", (("gone", "photos-test", ("usr/share/photos/none.png",)),))
    with pytest.raises(FileNotFoundError, match=r"No photograph found for scenes \['gone'\]"):
        corpus.build_corpus(str(tmp_path / "corpus"), download_dir=fake_package, resolution=32)

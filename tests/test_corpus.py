"""The photo corpus recipe on a package built here (`dpkg-deb --build`): photographs read out of the .deb, whole
scenes to one split, transparent tiles dropped, per-scene cap, a manifest of every image file, and reuse; downloads
checked against the package index, arguments checked before any download, and a user's files never replaced.
`apt-get` is answered from a folder here (see `FakeApt`): nothing is downloaded."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modeling_lmd import corpus

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None,
                                reason="needs Debian's dpkg-deb and apt-get")


class FakeApt:
    """`apt-get download [--print-uris] PACKAGE=VERSION` answered from the .deb files of `mirror`, every call recorded
    in `calls`. `download(data, path)` writes a fetched package (whole, unless a test makes it fail)."""

    def __init__(self, mirror, real_run):
        self.mirror, self.real_run, self.calls = mirror, real_run, []
        self.download = self.whole

    @staticmethod
    def whole(data, path):
        with open(path, "wb") as handle:
            handle.write(data)

    def __call__(self, command, *args, cwd=None, **kwargs):
        if list(command[:2]) != ["apt-get", "download"]:
            return self.real_run(command, *args, cwd=cwd, **kwargs)
        self.calls.append(command[2:])
        package, version = command[-1].split("=")
        name = f"{package}_{version}_all.deb"
        data = (self.mirror / name).read_bytes()
        if "--print-uris" in command:
            line = f"'http://deb.example.org/{name}' {name} {len(data)} SHA256:{hashlib.sha256(data).hexdigest()}\n"
            return subprocess.CompletedProcess(command, 0, line, "")
        self.download(data, os.path.join(cwd, name))
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """A .deb `photos-test` holding two photographs of one place, one panorama strip with a transparent sky, one
    illustration and one documentation figure, which the fake apt serves; the corpus lists its scenes instead of the
    real ones."""
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
    apt = FakeApt(debs, subprocess.run)
    monkeypatch.setattr(corpus.subprocess, "run", apt)
    return apt


@pytest.fixture
def few_scales(monkeypatch):
    """A few tiles per photograph: a build in a fraction of a second."""
    monkeypatch.setattr(corpus, "CORPUS_SCALES", (1, 2))


@pytest.fixture
def fake_package(fake_apt):
    """The folder holding the fake package: a download folder where it is already fetched."""
    return str(fake_apt.mirror)


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


# --- downloads: a package takes its name only once it is whole and matches the index ---------------------------------


def _interrupted(data, path):
    """A download cut short by Ctrl-C: half the file, then the interrupt."""
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    raise KeyboardInterrupt


def test_an_interrupted_download_leaves_nothing_and_the_rerun_fetches_the_package_whole(fake_apt, few_scales,
                                                                                         tmp_path):
    downloads = tmp_path / "downloads"
    fake_apt.download = _interrupted
    with pytest.raises(KeyboardInterrupt):
        corpus.build_corpus(str(tmp_path / "corpus"), download_dir=str(downloads), resolution=32)
    assert os.listdir(downloads) == []  # neither the cut-short file under the package's name nor a temporary folder
    fake_apt.download = fake_apt.whole
    manifest = corpus.build_corpus(str(tmp_path / "corpus"), download_dir=str(downloads), resolution=32)
    deb = "photos-test_1.0_all.deb"
    assert os.listdir(downloads) == [deb] and (downloads / deb).read_bytes() == (fake_apt.mirror / deb).read_bytes()
    assert manifest["counts"]["train"] > 0


def test_a_download_that_does_not_match_the_package_index_is_discarded(fake_apt, tmp_path):
    def corrupted(data, path):  # whole, one byte changed: only the hash can tell
        with open(path, "wb") as handle:
            handle.write(data[:-1] + bytes([data[-1] ^ 1]))

    fake_apt.download = corrupted
    downloads = tmp_path / "downloads"
    with pytest.raises(RuntimeError, match=r"download of photos-test=1\.0 is sha256 [0-9a-f]{64}, where the package "
                                           r"index lists [0-9a-f]{64}; it was discarded"):
        corpus.build_corpus(str(tmp_path / "corpus"), download_dir=str(downloads), resolution=32)
    assert os.listdir(downloads) == []


def test_a_cut_short_package_under_its_final_name_is_refused_and_kept(fake_apt, tmp_path):
    """What older versions left after an interrupt: a truncated file under the package's name. Not deleted (the builder
    cannot tell it from a file someone put there), not read (it would fail deep in tarfile): refused, saying what to
    do."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    whole = (fake_apt.mirror / "photos-test_1.0_all.deb").read_bytes()
    (downloads / "photos-test_1.0_all.deb").write_bytes(whole[:1000])
    with pytest.raises(RuntimeError, match=rf"photos-test_1\.0_all\.deb is not photos-test=1\.0 as the package index "
                                           rf"lists it: it is 1000 bytes, where the package index lists {len(whole)}\. "
                                           r"Delete it"):
        corpus.build_corpus(str(tmp_path / "corpus"), download_dir=str(downloads), resolution=32)
    assert (downloads / "photos-test_1.0_all.deb").read_bytes() == whole[:1000]
    assert all("--print-uris" in call for call in fake_apt.calls)  # looked up, never downloaded


@pytest.mark.parametrize("argv, error, message", [
    (["--resolution", "0"], ValueError, r"resolution must be a whole number of pixels from 8 to 300 \(the shorter "
                                        r"side of chelsea.*\); got 0\."),
    (["--resolution", "301"], ValueError, r"from 8 to 300 .*got 301\."),
    (["--download_dir", "{out}"], ValueError, r"download_dir .* must be a folder of its own, not output_dir"),
    (["--download_dir", "{out}/train/debs"], ValueError, r"nor inside its train/ or validation/"),
    (["--download_dir", "{file}"], NotADirectoryError, r"download_dir .*a_file is a file; expected a folder"),
    (["--output_dir", "{file}"], NotADirectoryError, r"The output folder .*a_file is a file; expected a folder"),
])
def test_arguments_are_checked_before_anything_is_fetched(fake_apt, tmp_path, argv, error, message):
    (tmp_path / "a_file").write_text("mine")
    out = str(tmp_path / "corpus")
    with pytest.raises(error, match=message):
        corpus.main(["--output_dir", out, *(arg.format(out=out, file=tmp_path / "a_file") for arg in argv)])
    assert fake_apt.calls == [] and not os.path.exists(out) and (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("resolution", [7, 64.0, True, "64"])
def test_a_resolution_that_is_not_a_whole_number_in_range_is_refused(fake_apt, tmp_path, resolution):
    with pytest.raises(ValueError, match=rf"from 8 to 300 .*got {resolution!r}\."):
        corpus.build_corpus(str(tmp_path / "corpus"), resolution=resolution)
    assert fake_apt.calls == []


# --- the output folder: a build replaces only the tiles a previous build wrote --------------------------------------


def _contents(folder):
    """{path relative to `folder`: bytes} of every file below it."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_a_users_file_in_the_output_folder_is_kept_and_the_build_refused_before_anything_is_fetched(fake_apt, tmp_path):
    """Issue 42, item 6: `--output_dir d` with `d/train/mine.jpg` there."""
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "mine.jpg").write_bytes(b"my photo")
    with pytest.raises(FileExistsError, match=r"already holds files and no manifest\.json of a previous build that "
                                              r"lists them: train/mine\.jpg\. A build replaces only the files it "
                                              r"wrote itself: move those files elsewhere, or choose a new or empty"):
        corpus.main(["--output_dir", str(tmp_path / "d"), "--resolution", "32"])
    assert _contents(tmp_path / "d") == {"train/mine.jpg": b"my photo"}
    assert fake_apt.calls == []


def test_a_rebuild_replaces_the_previous_builds_tiles_and_no_other_file(fake_apt, few_scales, tmp_path):
    out = tmp_path / "corpus"
    corpus.build_corpus(str(out), resolution=32)  # downloads into corpus/debs, which a rebuild keeps
    (out / "debs" / "notes.txt").write_text("mine")
    manifest = corpus.build_corpus(str(out), resolution=48)
    for split in corpus.SPLITS:
        assert sorted(os.listdir(out / split)) == manifest["tiles"][split]  # no 32 px tile left behind
        assert Image.open(out / split / manifest["tiles"][split][0]).size == (48, 48)
    assert (out / "debs" / "notes.txt").read_text() == "mine"
    (out / "validation" / "mine.png").write_bytes(b"my tile")
    before = _contents(out)
    with pytest.raises(FileExistsError, match=r"files its manifest\.json does not list \(this builder did not write "
                                              r"them\): validation/mine\.png\."):
        corpus.build_corpus(str(out), resolution=32)
    assert _contents(out) == before


def test_an_old_manifest_that_lists_no_tiles_is_no_proof_and_the_folder_is_refused(fake_apt, few_scales, tmp_path):
    out = tmp_path / "corpus"
    corpus.build_corpus(str(out), resolution=32)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["tiles"]  # as versions before the tile list wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=r"no manifest\.json of a previous build that lists them: manifest\.json, "
                                              r"train/"):
        corpus.build_corpus(str(out), resolution=48)


_USER_FOLDERS = ("", "train", "validation", "train/mine", "debs", "notes/deep")
_USER_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}\.(jpg|png|txt)", fullmatch=True)  # never a tile's or a .deb's name
_USER_FILES = st.lists(st.tuples(st.sampled_from(_USER_FOLDERS), _USER_NAMES, st.binary(max_size=8)),
                       max_size=4, unique_by=lambda file: os.path.join(file[0], file[1]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user_files=_USER_FILES, record=st.sampled_from(["none", "previous build", "lists some", "lists outside"]),
       data=st.data())
def test_every_file_the_manifest_does_not_list_survives_and_the_build_refuses_or_replaces_only_its_own(
        fake_apt, few_scales, tmp_path, user_files, record, data):
    out = tempfile.mkdtemp(dir=tmp_path)
    listed = set()
    if record == "previous build":
        previous = corpus.build_corpus(out, resolution=16)
        listed = {"manifest.json"} | {os.path.join(split, name) for split, names in previous["tiles"].items()
                                      for name in names}
    for folder, name, content in user_files:
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        with open(os.path.join(out, folder, name), "wb") as handle:
            handle.write(content)
    if record in ("lists some", "lists outside"):
        claimed = data.draw(st.sets(st.sampled_from([os.path.join(*file[:2]) for file in user_files]))
                            if user_files else st.just(set()))
        with open(os.path.join(out, "manifest.json"), "w") as handle:
            json.dump({"tiles": sorted(claimed) + (["../outside.txt"] if record == "lists outside" else [])}, handle)
        listed = {"manifest.json", *claimed} if record == "lists some" else set()  # one path outside: no proof at all
    before = _contents(out)
    unlisted = sorted(path for path in before if path not in listed and not path.startswith("debs/"))
    if unlisted:
        with pytest.raises(FileExistsError, match=re.escape(unlisted[0])):
            corpus.build_corpus(out, resolution=32)
        assert _contents(out) == before
        return
    manifest = corpus.build_corpus(out, resolution=32)
    after = _contents(out)
    assert all(after[path] == content for path, content in before.items() if path not in listed)
    tiles = {os.path.join(split, name) for split, names in manifest["tiles"].items() for name in names}
    assert {path for path in after if not path.startswith("debs/")} == {"manifest.json", *tiles}

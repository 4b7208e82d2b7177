"""examples/inpaint.py with files it cannot use: a one-line error naming the file, never a traceback."""

import numpy as np
import PIL.Image
import pytest
from conftest import load_script

inpaint = load_script("examples/inpaint.py")


@pytest.fixture
def photo_path(tmp_path):
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(path)
    return str(path)


def run(tiny_checkpoint, photo_path, tmp_path, *flags):
    return inpaint.main(["--model", str(tiny_checkpoint), "--image", photo_path, "--output", str(tmp_path / "out.png"),
                         *flags])


def test_a_missing_or_unreadable_mask_file_is_a_one_line_error(tiny_checkpoint, photo_path, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    PIL.Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    for mask, message in ((tmp_path / "missing.png", r"^error: No file at '.*missing.png'\.$"),
                          (tmp_path / "notes.png", r"^error: 'notes.png' is not an image file"),
                          (tmp_path / "small.png", r"^error: The mask is 10x10 \(height x width\) but the image is "
                                                   r"40x50; they must match\.$")):
        with pytest.raises(SystemExit, match=message):
            run(tiny_checkpoint, photo_path, tmp_path, "--mask", str(mask))
    with pytest.raises(SystemExit, match=r"^error: No file at"):
        run(tiny_checkpoint, str(tmp_path / "no-photo.png"), tmp_path, "--box", "0", "0", "5", "5")
    assert not (tmp_path / "out.png").exists()


def test_a_mask_file_fills_exactly_its_region(tiny_checkpoint, photo_path, tmp_path):
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 20:30] = True
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    run(tiny_checkpoint, photo_path, tmp_path, "--mask", str(tmp_path / "mask.png"))
    result = np.asarray(PIL.Image.open(tmp_path / "out.png"))
    assert (result[~mask] == 0).all() and (result[mask] != 0).any()

"""LMDImageProcessor: input kinds, RGB conversion, resize + centre crop, [-1, 1], postprocessing, saving."""

import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from modeling_lmd import LMDImageProcessor
from modeling_lmd.image_processing_lmd import cover_and_crop, to_rgb_image


@pytest.fixture
def processor():
    return LMDImageProcessor(size={"height": 32, "width": 32})


def test_size_dict_and_defaults(processor):
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    assert LMDImageProcessor().size["height"] == 224
    rect = LMDImageProcessor(size={"height": 16, "width": 24})
    assert rect(PIL.Image.new("RGB", (50, 50)), return_tensors="pt")["pixel_values"].shape == (1, 3, 16, 24)


@pytest.mark.parametrize(
    "image",
    [
        PIL.Image.new("RGB", (40, 30), (10, 20, 30)),
        PIL.Image.new("L", (30, 40), 128),
        PIL.Image.new("RGBA", (33, 33), (255, 0, 0, 128)),
        PIL.Image.new("P", (33, 33), 3),
        PIL.Image.new("LA", (20, 20), (50, 255)),
        np.full((20, 24), 200, dtype=np.uint8),  # grayscale array
        np.random.default_rng(0).random((20, 24, 3)),  # floats in [0, 1]
        np.zeros((3, 16, 16), dtype=np.uint8),  # channels first
        np.full((16, 16, 4), 255, dtype=np.uint8),  # RGBA array
        torch.rand(3, 20, 20),
    ],
    ids=["rgb", "gray", "rgba", "palette", "la", "np-gray", "np-float", "np-chw", "np-rgba", "torch"],
)
@pytest.mark.filterwarnings("ignore:The image has transparent pixels")
def test_every_input_kind_becomes_rgb_in_range(processor, image):
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    assert pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1.0 and pixel_values.max() <= 1.0


def test_gray_is_replicated_and_transparency_is_white(processor):
    gray = processor(PIL.Image.new("L", (32, 32), 255), return_tensors="pt")["pixel_values"]
    assert torch.allclose(gray, torch.ones_like(gray))
    with pytest.warns(UserWarning, match="transparent pixels: they were composited onto white"):
        transparent = processor(PIL.Image.new("RGBA", (32, 32), (0, 0, 0, 0)), return_tensors="pt")["pixel_values"]
    assert torch.allclose(transparent, torch.ones_like(transparent))
    black = processor(PIL.Image.new("RGB", (32, 32), (0, 0, 0)), return_tensors="pt")["pixel_values"]
    assert torch.allclose(black, -torch.ones_like(black))


def test_batches_and_paths(processor, tmp_path):
    path = tmp_path / "a.png"
    PIL.Image.new("RGB", (64, 48), (0, 255, 0)).save(path)
    batch = processor([str(path), PIL.Image.new("RGB", (10, 10)), np.zeros((8, 8, 3), np.uint8)], return_tensors="pt")
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert torch.allclose(batch["pixel_values"][0, 1], torch.ones(32, 32))  # green channel
    with pytest.raises(FileNotFoundError, match="No file at"):
        processor(str(tmp_path / "missing.png"))
    (tmp_path / "not-an-image.png").write_text("hello")
    with pytest.raises(ValueError, match="is not an image file"):
        processor(str(tmp_path / "not-an-image.png"))


def test_resize_keeps_aspect_and_crops_the_centre(processor):
    # 96 x 32 image: left third red, middle green, right blue -> covering 32 px high keeps only the green middle.
    array = np.zeros((32, 96, 3), dtype=np.uint8)
    array[:, :32, 0] = array[:, 32:64, 1] = array[:, 64:, 2] = 255
    pixel_values = processor(PIL.Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(pixel_values[1], torch.ones(32, 32), atol=1e-3)
    assert torch.allclose(pixel_values[0], -torch.ones(32, 32), atol=1e-3)
    stretched = processor(PIL.Image.fromarray(array), do_center_crop=False, return_tensors="pt")["pixel_values"][0]
    assert stretched[0, :, :5].mean() > 0.9  # the red third survives when stretching
    assert cover_and_crop(32, 96, 32, 32) == (32, 96, 0, 32)


def test_postprocess_round_trip(processor):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pixel_values = processor(PIL.Image.fromarray(array), return_tensors="pt")["pixel_values"]
    (back,) = processor.postprocess(pixel_values)
    assert back.mode == "RGB" and back.size == (32, 32)
    assert np.array_equal(np.array(back), array)
    assert processor.postprocess(torch.full((3, 8, 8), 5.0))[0].getpixel((0, 0)) == (255, 255, 255)  # clipped


def test_mask_follows_the_image_geometry(processor):
    mask = np.zeros((32, 96), dtype=bool)
    mask[0, 40] = True  # inside the kept centre: touches exactly one output pixel
    mask[5, 5] = True  # in the cropped-away left third
    processed = processor.preprocess_mask(mask, (32, 96))
    assert processed.shape == (32, 32) and processed.sum() == 1 and processed[0, 8]
    halved = LMDImageProcessor(size={"height": 16, "width": 16}).preprocess_mask(np.eye(32, dtype=bool), (32, 32))
    assert halved.sum() == 16  # a thin line still marks every pixel it touches
    assert processor.preprocess_mask(PIL.Image.new("L", (96, 32), 255), (32, 96)).all()
    with pytest.raises(ValueError, match="must match"):
        processor.preprocess_mask(np.zeros((10, 10), bool), (32, 96))


def test_save_load_and_auto_class(processor, tmp_path):
    from transformers import AutoImageProcessor

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 32, "width": 32}
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_lmd.LMDImageProcessor"
    assert (tmp_path / "image_processing_lmd.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, LMDImageProcessor) and loaded.size["width"] == 32


def test_every_checkpoint_carries_a_matching_processor(tiny_checkpoint):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(processor, LMDImageProcessor)
    assert (processor.size["height"], processor.size["width"]) == (32, 32)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8, 3), 200.0), r"Float images must be in \[0, 1\], got values in \[200, 200\]: divide"),
        (np.linspace(-1, 1, 192).reshape(8, 8, 3), r"got values in \[-1, 1\].*\(x \+ 1\) / 2"),
        (np.full((8, 8, 3), np.nan), r"holds 192 NaN or infinite value\(s\)"),
        (np.where(np.eye(8)[..., None] > 0, np.inf, 0.5) * np.ones((1, 1, 3)), r"holds 24 NaN or infinite"),
        (np.full((8, 8), 4095, dtype=np.int32), r"other than uint16 must be in \[0, 255\], got values in \[4095, 4"),
        (np.full((8, 8), -3, dtype=np.int32), r"other than uint16 must be in \[0, 255\], got values in \[-3, -3\]"),
        (np.zeros((0, 8, 3), dtype=np.uint8), r"The image array is empty \(shape \(0, 8, 3\)\)"),
        (torch.rand(3, 8, 8) * 2 - 1, r"Float images must be in \[0, 1\]"),  # model pixels, not an image
    ],
    ids=["float-0-255", "float-minus-one-one", "nan", "inf", "int32", "negative-int", "empty", "tensor-minus-one-one"],
)
def test_arrays_the_processor_would_misread_are_refused_saying_what_came(processor, array, message):
    with pytest.raises(ValueError, match=message):
        processor(array, return_tensors="pt")


def test_floats_a_hair_outside_zero_one_and_small_ints_are_documented_conversions(processor):
    nearly = np.clip(np.random.default_rng(0).random((8, 8, 3)), 0, 1)
    nearly[0, 0] = (1.0 + 1e-4, -1e-4, 0.5)  # resize rounding: clipped, not refused
    pixels = processor(nearly, return_tensors="pt")["pixel_values"]
    assert pixels.max() <= 1 and pixels.min() >= -1
    small = processor(np.full((8, 8), 255, dtype=np.int64), return_tensors="pt")["pixel_values"]
    assert torch.allclose(small, torch.ones_like(small))


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.ones((32, 96, 3), dtype=bool), r"Expected a 2-D mask .* got shape \(32, 96, 3\)"),
        (np.full((32, 96), np.nan), r"got values nan; threshold it first"),
        (np.full((32, 96), 0.5), r"got values 0.5; threshold it first, e.g. mask > 0.5"),
        (np.zeros((0, 96), dtype=bool), r"Expected a 2-D mask .* got shape \(0, 96\)"),
    ],
    ids=["3-d", "nan", "fractions", "empty"],
)
def test_masks_that_are_not_2d_booleans_or_zero_one_are_refused(mask, message):
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match=message):
        processor.mask_array(mask, (32, 96))


def test_mask_conventions_that_are_accepted():
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    expected = np.zeros((4, 6), dtype=bool)
    expected[1, 2] = True
    for mask in (expected, expected.astype(np.float32), expected.astype(np.uint8) * 255,
                 PIL.Image.fromarray(expected.astype(np.uint8) * 255), torch.from_numpy(expected)):
        assert np.array_equal(processor.mask_array(mask, (4, 6)), expected)


# --- the reader: every common format by what its values mean ---------------------------------------------------


def read(image) -> np.ndarray:
    return np.asarray(to_rgb_image(image)).astype(int)


def saved(image: PIL.Image.Image, path, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def test_16_bit_images_scale_by_255_over_65535_not_per_image(tmp_path):
    """A white 16-bit PNG came back black, a dark 16-bit scan (mean 7.8 of 255) at mean 128."""
    white = saved(PIL.Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), tmp_path / "white.png")
    assert PIL.Image.open(white).mode == "I;16" and (read(white) == 255).all()
    scan = (np.random.default_rng(0).random((16, 16)) * 4000).astype(np.uint16)  # dark: 0 to 4000 of 65535
    read_scan = read(saved(PIL.Image.fromarray(scan), tmp_path / "scan.png"))
    assert np.array_equal(read_scan[..., 0], np.round(scan / 257).astype(int))
    assert abs(read_scan.mean() - scan.mean() / 257) < 0.5
    assert np.array_equal(read(scan), read_scan)  # a uint16 array means the same
    assert (read(PIL.Image.new("I;16B", (4, 4), 65535)) == 255).all()
    assert (read(PIL.Image.new("I", (4, 4), 257 * 100)) == 100).all()  # PIL holds some 16-bit files as I
    with pytest.raises(ValueError, match=r"must hold 16-bit values in \[0, 65535\], got values in \[70000, 70000\]"):
        to_rgb_image(PIL.Image.new("I", (4, 4), 70000))


def test_float_images_are_taken_as_zero_to_one_or_refused(tmp_path):
    """A float TIFF of 0.25 came back black."""
    quarter = saved(PIL.Image.fromarray(np.full((8, 8), 0.25, dtype=np.float32)), tmp_path / "quarter.tif")
    assert PIL.Image.open(quarter).mode == "F" and (read(quarter) == 64).all()
    with pytest.raises(ValueError, match=r"Float images must be in \[0, 1\], got values in \[200, 200\]"):
        to_rgb_image(PIL.Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32)))


def test_palette_cmyk_la_and_gray_convert_to_what_they_show():
    palette = PIL.Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    assert (read(palette) == (200, 30, 10)).all()
    for cmyk, rgb in (((0, 255, 255, 0), (255, 0, 0)), ((0, 0, 0, 255), (0, 0, 0)), ((128, 0, 0, 128), (63, 127, 127))):
        assert (read(PIL.Image.new("CMYK", (2, 2), cmyk)) == rgb).all()
    assert (read(PIL.Image.new("LA", (2, 2), (50, 255))) == 50).all()
    assert (read(np.full((2, 2, 2), (50, 255), dtype=np.uint8)) == 50).all()  # an LA array
    assert (read(PIL.Image.new("1", (2, 2), 1)) == 255).all()


def test_transparency_is_composited_onto_white_with_a_warning_and_opaque_alpha_is_dropped_silently():
    """RGBA was composited onto white without a word."""
    half = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    with pytest.warns(UserWarning, match="composited onto white and the alpha channel dropped"):
        assert (read(half) == 127).all()  # half black over white
    transparent_palette = PIL.Image.new("P", (2, 2), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    transparent_palette.info["transparency"] = 0
    with pytest.warns(UserWarning, match="transparent pixels"):
        assert (read(transparent_palette) == 255).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (read(PIL.Image.new("RGBA", (2, 2), (10, 20, 30, 255))) == (10, 20, 30)).all()


def test_exif_orientation_is_applied_to_paths_and_pil_images_alike(tmp_path):
    stored = PIL.Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3))
    exif = PIL.Image.Exif()
    exif[0x0112] = 3  # turned 180 degrees
    path = saved(stored, tmp_path / "turned.png", exif=exif)
    upright = np.asarray(stored.transpose(PIL.Image.Transpose.ROTATE_180)).astype(int)
    assert np.array_equal(read(path), upright) and np.array_equal(read(PIL.Image.open(path)), upright)
    assert np.array_equal(read(np.asarray(PIL.Image.open(path))), np.asarray(stored))  # arrays have no EXIF
    plain = PIL.Image.new("RGB", (4, 4))
    assert to_rgb_image(plain) is plain  # upright RGB: no copy
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 0] = True
    mask_path = saved(PIL.Image.fromarray(mask).convert("L"), tmp_path / "mask.png", exif=exif)
    assert processor.mask_array(mask_path, (4, 6))[3, 5] and processor.mask_array(mask_path, (4, 6)).sum() == 1
    with pytest.raises(FileNotFoundError, match="No file at"):
        processor.mask_array(str(tmp_path / "missing.png"), (4, 6))


def test_training_reads_images_through_the_same_reader(tmp_path):
    """The 16-bit stretch happened in training too: its transforms and datasets read through `to_rgb_image`."""
    from modeling_lmd.data.images import decode_image_value
    from modeling_lmd.data.transforms import RandomResizedCropFlip

    path = saved(PIL.Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)), tmp_path / "white.png")
    with open(path, "rb") as handle:
        assert (np.asarray(decode_image_value({"bytes": handle.read(), "path": None})) == 255).all()
    view = RandomResizedCropFlip(8)(PIL.Image.open(path), torch.Generator().manual_seed(0))
    assert torch.allclose(view, torch.ones_like(view))

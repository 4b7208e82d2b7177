"""The "lmd-reconstruction" pipeline: random masking, inpainting, errors, in-process and as remote code."""

import json
import time
import warnings

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest
import torch
from transformers import pipeline

from modeling_lmd import LMDConfig, LMDForPreTraining, LMDReconstructionPipeline
from modeling_lmd.modeling_lmd import paint_hidden_pixels
from subprocess_helpers import assert_images_close, run_without_package
from modeling_lmd.reconstruction_lmd import reconstruct


def make_image(height=40, width=50, seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture
def pipe(tiny_checkpoint):
    """The package's own pipeline class on a saved checkpoint (model and processor loaded by transformers)."""
    return pipeline("lmd-reconstruction", model=str(tiny_checkpoint), pipeline_class=LMDReconstructionPipeline)


def test_checkpoint_declares_the_pipeline(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    entry = config["custom_pipelines"]["lmd-reconstruction"]
    assert entry["impl"] == "pipeline_lmd.LMDReconstructionPipeline" and entry["pt"] == ["AutoModelForPreTraining"]
    assert {"pipeline_lmd.py", "image_processing_lmd.py", "preprocessor_config.json"} <= {
        p.name for p in tiny_checkpoint.iterdir()
    }


def test_the_ways_to_build_the_pipeline_in_process(tiny_checkpoint, pipe):
    """No class is patched: the task is registered with PIPELINE_REGISTRY, and checkpoints declare it the way
    transformers documents for custom pipelines, so a checkpoint path needs `trust_remote_code=True` (it then runs
    the checkpoint's copy of this code) or `pipeline_class`."""
    image = make_image()
    expected = np.array(pipe(image, mask_ratio=0.5, seed=0)["reconstruction"])
    remote_copy = pipeline("lmd-reconstruction", model=str(tiny_checkpoint), trust_remote_code=True)
    assert type(remote_copy).__module__.startswith("transformers_modules")
    assert np.array_equal(np.array(remote_copy(image, mask_ratio=0.5, seed=0)["reconstruction"]), expected)
    # A model object whose config declares no custom pipeline goes through the registry.
    torch.manual_seed(0)
    fresh = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    assert isinstance(pipeline("lmd-reconstruction", model=fresh), LMDReconstructionPipeline)
    direct = LMDReconstructionPipeline(model=LMDForPreTraining.from_pretrained(tiny_checkpoint))
    assert np.array_equal(np.array(direct(image, mask_ratio=0.5, seed=0)["reconstruction"]), expected)


def test_in_process_outputs(pipe, tiny_model):
    assert isinstance(pipe, LMDReconstructionPipeline)
    out = pipe(make_image(), mask_ratio=0.5, seed=0)  # a 50 x 40 photo
    assert set(out) == {"reconstruction", "mask", "crop_box", "model_reconstruction", "model_decoded",
                        "model_masked_image", "model_mask", "patch_mask"}
    assert isinstance(out["reconstruction"], PIL.Image.Image) and out["reconstruction"].size == (50, 40)
    assert out["mask"].shape == (40, 50) and out["mask"].dtype == bool
    assert out["crop_box"] == (5, 0, 45, 40)  # the photo's centred square
    for key in ("model_reconstruction", "model_decoded", "model_masked_image"):
        assert isinstance(out[key], PIL.Image.Image) and out[key].size == (32, 32) and out[key].mode == "RGB"
    assert out["model_mask"].shape == (32, 32) and out["patch_mask"].sum() == 8  # half of the 16 latent patches
    assert out["model_mask"].mean() == 0.5
    # Hidden regions of the masked image are mid grey.
    masked = np.array(out["model_masked_image"]).astype(int)
    assert np.all(np.abs(masked[out["model_mask"]] - 128) <= 1)
    # The photo-size mask is the model's hidden patches, stretched from its 32 px square onto the photo's 40 px one.
    expected = np.zeros((40, 50), dtype=bool)
    expected[:, 5:45] = np.array(PIL.Image.fromarray(out["model_mask"]).resize((40, 40), PIL.Image.NEAREST))
    assert np.array_equal(out["mask"], expected)


def test_a_photo_comes_back_at_its_own_size_identical_outside_the_mask(pipe):
    photo = make_image(100, 150)  # 150 x 100, not square, larger than the model's 32 px
    original = np.array(photo).astype(int)
    hole = np.zeros((100, 150), dtype=bool)
    hole[30:50, 100:130] = True
    for kwargs in ({"mask_ratio": 0.5, "seed": 1}, {"mask": hole}):
        out = pipe(photo, **kwargs)
        result = np.array(out["reconstruction"]).astype(int)
        assert out["reconstruction"].size == (150, 100)
        assert np.array_equal(result[~out["mask"]], original[~out["mask"]])  # the photo's own pixels, exactly
        assert np.abs(result[out["mask"]] - original[out["mask"]]).mean() > 5  # the region was filled in
    # Inpainting fills exactly the user's mask, seen in a square around it (here 20 x 30 + half of 30 each side).
    assert np.array_equal(out["mask"], hole)
    assert out["crop_box"] == (85, 10, 145, 70) and out["patch_mask"].any()
    # diffusers' get_crop_region: the padding is cut at the photo's edge, and the square grows on the other sides.
    wider = pipe(photo, mask=hole, padding_mask_crop=30)
    assert wider["crop_box"] == (70, 0, 150, 80) and np.array_equal(wider["mask"], hole)


def test_the_blend_width_is_photo_pixels_inside_the_mask_whatever_the_photo_size(pipe):
    """The band was the VAE factor scaled to the photo, so on 3000 x 2000 pixels up to 88 px outside the mask
    changed. Now a photo 8 times larger blends the same border: inside the mask, its outer 4 px at most."""
    depths = []
    for scale in (1, 8):
        photo = make_image(40 * scale, 60 * scale, seed=scale)
        hole = np.zeros((40 * scale, 60 * scale), dtype=bool)
        hole[10 * scale : 30 * scale, 20 * scale : 40 * scale] = True
        hard = np.array(pipe(photo, mask=hole)["reconstruction"]).astype(int)  # the default: pasted hard
        assert np.array_equal(hard, np.array(pipe(photo, mask=hole, blend_width=0)["reconstruction"]))
        soft = np.array(pipe(photo, mask=hole, blend_width=4)["reconstruction"]).astype(int)
        changed = np.nonzero((hard != soft).any(axis=-1))
        assert hole[changed].all()
        depth = np.minimum.reduce([changed[0] - 10 * scale, 30 * scale - 1 - changed[0],
                                   changed[1] - 20 * scale, 40 * scale - 1 - changed[1]])
        depths.append(int(depth.max()))
        assert np.array_equal(soft[~hole], np.array(photo).astype(int)[~hole])
    assert depths[0] == depths[1] < 4


def test_output_types_and_generators_follow_diffusers(pipe):
    photo = make_image(100, 150)
    pil = pipe(photo, mask_ratio=0.5, seed=2)
    as_np = pipe(photo, mask_ratio=0.5, seed=2, output_type="np")
    as_pt = pipe(photo, mask_ratio=0.5, seed=2, output_type="pt")
    assert as_np["reconstruction"].shape == (100, 150, 3) and as_np["reconstruction"].dtype == np.float32
    assert as_pt["reconstruction"].shape == (3, 100, 150) and 0 <= as_pt["reconstruction"].min()
    assert np.array_equal((as_np["reconstruction"] * 255).round().astype(np.uint8), np.array(pil["reconstruction"]))
    torch.testing.assert_close(as_pt["reconstruction"], torch.from_numpy(as_np["reconstruction"]).permute(2, 0, 1))
    assert as_np["model_decoded"].shape == (32, 32, 3)
    # A torch.Generator, as diffusers pipelines take it: the same seed, the same mask and output.
    first = pipe(photo, mask_ratio=0.5, generator=torch.Generator().manual_seed(9))
    second = pipe(photo, mask_ratio=0.5, generator=torch.Generator().manual_seed(9))
    assert np.array_equal(first["patch_mask"], second["patch_mask"])
    assert np.array_equal(np.array(first["reconstruction"]), np.array(second["reconstruction"]))
    with pytest.raises(ValueError, match="either `seed` or `generator`"):
        pipe(photo, seed=1, generator=torch.Generator())


def test_same_seed_same_output(pipe):
    image = make_image()
    first, second = pipe(image, mask_ratio=0.5, seed=7), pipe(image, mask_ratio=0.5, seed=7)
    assert np.array_equal(np.array(first["reconstruction"]), np.array(second["reconstruction"]))
    assert np.array_equal(first["mask"], second["mask"])
    masks = {pipe(image, mask_ratio=0.5, seed=seed)["patch_mask"].tobytes() for seed in range(5)}
    assert len(masks) > 1


def test_batching_changes_nothing(pipe):
    images = [make_image(seed=i) for i in range(3)]
    one_by_one = pipe(images, mask_ratio=0.5, seed=4, batch_size=1)
    batched = pipe(images, mask_ratio=0.5, seed=4, batch_size=2)
    for single, batch in zip(one_by_one, batched):
        assert np.array_equal(single["patch_mask"], batch["patch_mask"])
        assert np.abs(np.array(single["reconstruction"]).astype(int) - np.array(batch["reconstruction"])).max() <= 1
    assert len({o["patch_mask"].tobytes() for o in one_by_one}) == 3  # each image its own mask
    # Inpainting several images whose masks hide different numbers of patches, in one batch.
    small, large = np.zeros((40, 50), dtype=bool), np.zeros((40, 50), dtype=bool)
    small[18:20, 26:28], large[:, :25] = True, True
    inputs = [{"image": images[0], "mask": small}, {"image": images[1], "mask": large}]
    filled, alone = pipe(inputs, batch_size=2), pipe(inputs, batch_size=1)
    assert len({int(o["patch_mask"].sum()) for o in filled}) == 2
    for single, batch in zip(alone, filled):
        assert np.array_equal(single["patch_mask"], batch["patch_mask"]) and single["crop_box"] == batch["crop_box"]
        assert np.abs(np.array(single["reconstruction"]).astype(int) - np.array(batch["reconstruction"])).max() <= 1


def test_inputs_paths_arrays_lists(pipe, tmp_path):
    path = tmp_path / "image.png"
    make_image().save(path)
    outputs = pipe([str(path), np.array(make_image(seed=1)), make_image(seed=2).convert("L")], mask_ratio=0.25, seed=0)
    assert len(outputs) == 3 and all(o["patch_mask"].sum() == 4 for o in outputs)
    assert pipe(path, seed=0)["patch_mask"].sum() == 12  # config.mask_ratio = 0.75 by default


def test_inpainting_hides_exactly_the_touched_patches(pipe, tiny_model):
    image = make_image(64, 64)  # 64 -> 32 px: each latent patch (8 px at 32) is 16 input pixels a side
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:16, 0:16] = True  # exactly patch (0, 0)
    mask[40, 40] = True  # one pixel in patch (2, 2)
    whole = {"padding_mask_crop": 64}  # enough context that the model sees the whole image
    out = pipe(image, mask=mask, **whole)
    assert out["crop_box"] == (0, 0, 64, 64)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = expected[2, 2] = True
    assert np.array_equal(out["patch_mask"].reshape(4, 4), expected)

    # The composited latents keep the (painted) image's latents where nothing was hidden; the model fills the rest.
    inputs = pipe.preprocess(image, mask=mask, **whole)
    result = reconstruct(tiny_model, inputs["pixel_values"], bool_masked_pos=inputs["patch_mask"])
    painted = paint_hidden_pixels(inputs["pixel_values"], result.pixel_mask)
    latents = tiny_model.lmd.encode_images(painted)
    visible = ~torch.from_numpy(expected).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(result.latents[0][:, visible], latents[0][:, visible])
    assert not torch.allclose(result.latents[0][:, ~visible], latents[0][:, ~visible])

    # A PIL mask works too, and per-image masks go in dicts.
    pil_mask = PIL.Image.fromarray(mask.astype(np.uint8) * 255)
    assert np.array_equal(pipe(image, mask=pil_mask, **whole)["patch_mask"], out["patch_mask"])
    right_column = np.zeros((64, 64), dtype=bool)
    right_column[:, 60:] = True
    both = pipe([{"image": image, "mask": mask}, {"image": image, "mask": right_column}], **whole)
    assert [o["patch_mask"].sum() for o in both] == [2, 4]


def test_empty_mask_is_a_vae_round_trip(pipe):
    out = pipe(make_image(), mask=np.zeros((40, 50), dtype=bool))
    assert not out["mask"].any()


def test_clear_errors(pipe, tmp_path):
    image = make_image()
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        pipe(image, mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        pipe(image, mask_ratio=-0.1)
    with pytest.raises(ValueError, match="must match"):
        pipe(image, mask=np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="every latent patch"):
        pipe(image, mask=np.ones((40, 50), dtype=bool))
    with pytest.raises(FileNotFoundError, match="No file at"):
        pipe(str(tmp_path / "missing.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="'broken.png' is not an image file"):
        pipe(str(tmp_path / "broken.png"))
    with pytest.raises(ValueError, match="not both"):
        pipe(image, mask=np.zeros((40, 50), dtype=bool), mask_ratio=0.5)


def test_pipeline_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    again = pipeline("lmd-reconstruction", model=str(tmp_path / "saved"), trust_remote_code=True)
    image = make_image()
    assert np.array_equal(
        np.array(pipe(image, seed=1)["reconstruction"]), np.array(again(image, seed=1)["reconstruction"])
    )


def test_remote_code_pipeline_without_the_package(pipe, tiny_checkpoint, tmp_path):
    image = make_image()
    image.save(tmp_path / "image.png")
    mask = np.zeros((40, 50), dtype=bool)
    mask[:10, :10] = True
    np.save(tmp_path / "mask.npy", mask)
    expected = pipe(image, mask_ratio=0.5, seed=3)
    expected_inpaint = pipe(image, mask=mask)
    run_without_package(
        f"""
        import numpy as np
        from transformers import pipeline
        pipe = pipeline("lmd-reconstruction", model={str(tiny_checkpoint)!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        out = pipe("image.png", mask_ratio=0.5, seed=3)
        out["reconstruction"].save("reconstruction.png")
        np.save("patch_mask.npy", out["patch_mask"])
        inpaint = pipe("image.png", mask=np.load("mask.npy"))
        inpaint["reconstruction"].save("inpaint.png")
        """,
        cwd=tmp_path,
    )
    # Masks are exact; decoded pixels may differ by one level between processes (see subprocess_helpers).
    assert np.array_equal(np.load(tmp_path / "patch_mask.npy"), expected["patch_mask"])
    assert_images_close(PIL.Image.open(tmp_path / "reconstruction.png"), expected["reconstruction"])
    assert_images_close(PIL.Image.open(tmp_path / "inpaint.png"), expected_inpaint["reconstruction"])


def test_the_shipped_folders_are_hub_ready_as_they_are(tmp_path):
    """Copied as an upload copies them, demo-lmd loads and reconstructs from its own code alone (its code files are
    real files: tests/test_shipped_checkpoint.py), and demo-vae is a plain diffusers folder."""
    import shutil

    from modeling_lmd.pretrained import DEMO_LMD, DEMO_VAE, EXAMPLE_PHOTO

    shutil.copytree(DEMO_LMD, tmp_path / "demo-lmd")
    shutil.copytree(DEMO_VAE, tmp_path / "demo-vae")
    code = {"configuration_lmd.py", "modeling_lmd.py", "vae_lmd.py", "mask_schedulers.py", "image_processing_lmd.py",
            "pipeline_lmd.py", "reconstruction_lmd.py"}
    assert all((tmp_path / "demo-lmd" / name).is_file() and not (tmp_path / "demo-lmd" / name).is_symlink()
               for name in code)
    expected = pipeline("lmd-reconstruction", model=DEMO_LMD, pipeline_class=LMDReconstructionPipeline)(
        EXAMPLE_PHOTO, mask_ratio=0.5, seed=0)
    run_without_package(
        f"""
        import numpy as np
        from diffusers import AutoencoderKL
        from transformers import AutoModelForPreTraining, pipeline
        model = AutoModelForPreTraining.from_pretrained("demo-lmd", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules") and model.dtype.is_floating_point
        pipe = pipeline("lmd-reconstruction", model="demo-lmd", trust_remote_code=True)
        out = pipe({EXAMPLE_PHOTO!r}, mask_ratio=0.5, seed=0)
        out["reconstruction"].save("reconstruction.png")
        np.save("patch_mask.npy", out["patch_mask"])
        assert AutoencoderKL.from_pretrained("demo-vae").config.latent_channels == 4
        """,
        cwd=tmp_path,
    )
    assert np.array_equal(np.load(tmp_path / "patch_mask.npy"), expected["patch_mask"])
    assert_images_close(PIL.Image.open(tmp_path / "reconstruction.png"), expected["reconstruction"])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_mixed_sizes_with_a_mask_each(pipe, batch_size):
    photos = [make_image(40, 50), make_image(64, 30, seed=1)]
    masks = [np.zeros((40, 50), dtype=bool), np.zeros((64, 30), dtype=bool)]
    masks[0][5:15, 5:15] = True
    masks[1][40:60, 10:20] = True
    outputs = pipe(photos, mask=masks, batch_size=batch_size)
    assert [o["reconstruction"].size for o in outputs] == [(50, 40), (30, 64)]
    assert all(np.array_equal(o["mask"], m) for o, m in zip(outputs, masks))
    with pytest.raises(ValueError, match="Got 1 masks for 2 images"):
        pipe(photos, mask=masks[:1])


# --- seeds and generators, as diffusers users pass them ---------------------------------------------------------


def test_any_non_negative_int_is_a_seed_and_large_ones_fold_into_64_bits(pipe):
    image = make_image()
    masks = {seed: pipe(image, mask_ratio=0.5, seed=seed)["patch_mask"] for seed in (4, 2**64 + 5, 2**63 + 1)}
    assert np.array_equal(masks[4], masks[2**64 + 5])  # 2**64 + 5 folds to 1 XOR 5 = 4
    assert len({mask.tobytes() for mask in masks.values()}) == 2
    pipe(image, seed=time.time_ns() * 10**30)  # refused with "Overflow when unpacking long long" before
    assert np.array_equal(pipe(image, seed=np.int64(4), mask_ratio=0.5)["patch_mask"], masks[4])
    # A seed is diffusers' generator idiom: image i draws from torch.Generator().manual_seed(seed + i).
    assert np.array_equal(pipe(image, mask_ratio=0.5, generator=[torch.Generator().manual_seed(4)])["patch_mask"],
                          masks[4])


@pytest.mark.parametrize("seed", [1.9, 2.0, "3", True, -1])
def test_seeds_that_are_not_non_negative_ints_are_refused(pipe, seed):
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0, got"):
        pipe(make_image(), seed=seed)


def test_generators_one_per_image_or_one_for_all(pipe):
    images = [make_image(seed=i) for i in range(3)]
    seeded = pipe(images, mask_ratio=0.5, seed=11)
    per_image = pipe(images, mask_ratio=0.5, generator=[torch.Generator().manual_seed(11 + i) for i in range(3)])
    for a, b in zip(seeded, per_image):
        assert np.array_equal(a["patch_mask"], b["patch_mask"])
        assert np.array_equal(np.array(a["reconstruction"]), np.array(b["reconstruction"]))
    # One generator for a list: each image its own stream, drawn in image order, whatever the batch size.
    one = [pipe(images, mask_ratio=0.5, generator=torch.Generator().manual_seed(5), batch_size=size)
           for size in (1, 2)]
    assert len({o["patch_mask"].tobytes() for o in one[0]}) == 3
    assert all(np.array_equal(a["patch_mask"], b["patch_mask"]) for a, b in zip(*one))
    with pytest.raises(ValueError, match="Got 2 generators for 3 image"):
        pipe(images, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="Got 2 generators for 1 image"):
        pipe(images[0], generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="must be a torch.Generator or a list of one per image"):
        pipe(images[0], generator=5)


# --- diffusers' call names, and every argument checked before any compute ---------------------------------------


def test_diffusers_call_names_are_aliases(pipe):
    image, hole = make_image(), np.zeros((40, 50), dtype=bool)
    hole[10:20, 10:30] = True
    expected = np.array(pipe(image, mask=hole, seed=0)["reconstruction"])
    aliased = pipe(image=image, mask_image=hole, seed=0, padding_mask_crop=None, output_type="pil")
    assert np.array_equal(np.array(aliased["reconstruction"]), expected)
    with pytest.raises(TypeError, match="not both"):
        pipe(image, image=image)
    with pytest.raises(TypeError, match="`mask` or its diffusers name `mask_image`, not both"):
        pipe(image, mask=hole, mask_image=hole)
    with pytest.raises(TypeError, match="No image given"):
        pipe(mask=hole)


@pytest.mark.parametrize("kwargs, message", [
    ({"output_type": "latent"}, "output_type must be 'pil', 'np' or 'pt', got 'latent'"),
    ({"seed": 1.5}, "`seed` must be an int >= 0"),
    ({"padding_mask_crop": -70}, r"`padding_mask_crop` must be an int >= 0, got int -70"),
    ({"padding_mask_crop": 2.5}, r"`padding_mask_crop` must be an int >= 0, got float 2.5"),
    ({"blend_width": -1}, r"`blend_width` must be an int >= 0"),
    ({"num_inference_steps": 0}, r"`num_inference_steps` must be an int >= 1"),
    ({"reveal_order": "spiral"}, "`reveal_order` must be one of"),
    ({"generator": [torch.Generator()] * 2}, "Got 2 generators for 1 image"),
])
def test_every_argument_is_checked_before_any_compute(pipe, monkeypatch, kwargs, message):
    """A bad `output_type` was refused only after the whole reconstruction (22 s at 6 MP): nothing may be read or
    computed before the arguments are checked."""
    def computed(*args, **kwargs):
        raise AssertionError("an image was read or computed before the arguments were checked")

    monkeypatch.setattr(pipe, "preprocess", computed)
    monkeypatch.setattr(pipe, "_forward", computed)
    with pytest.raises(ValueError, match=message):
        pipe(make_image(), **kwargs)


def test_padding_mask_crop_that_leaves_no_context_says_so(pipe):
    """padding_mask_crop=0 around a square hole failed with 'mask touches every latent patch', naming no padding;
    -70 returned most masked pixels unchanged."""
    photo, hole = make_image(150, 150), np.zeros((150, 150), dtype=bool)
    hole[20:80, 40:100] = True
    with pytest.raises(ValueError, match=r"With padding_mask_crop=0 the mask touches every latent patch of the "
                                         r"region the model sees \(the 60x60 region \(40, 20, 100, 80\)\).*pass a "
                                         r"larger padding_mask_crop"):
        pipe(photo, mask=hole, padding_mask_crop=0)
    out = pipe(photo, mask=hole, padding_mask_crop=30)
    assert out["crop_box"] == (10, 0, 130, 120)  # cut at the photo's top edge, grown downwards instead
    changed = (np.array(out["reconstruction"]) != np.array(photo)).any(axis=-1)
    assert changed[hole].mean() > 0.95  # every masked pixel filled, none returned as it was
    with pytest.raises(ValueError, match=r"the whole photo\), so nothing is left to fill it from"):
        pipe(photo, mask=np.ones((150, 150), dtype=bool))


# --- EXIF orientation: the same for paths, PIL images and masks -------------------------------------------------


def save_with_orientation(image: PIL.Image.Image, path, orientation: int):
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


@pytest.mark.filterwarnings("ignore:The photo has EXIF orientation")
def test_exif_orientation_is_applied_alike_to_paths_pil_images_and_mask_images(pipe, tmp_path):
    """A path was turned upright but a PIL image opened from the same file was not, so a mask drawn for one landed
    elsewhere in the other (961 of 1,024 masked pixels left unchanged, no error)."""
    stored = make_image(40, 60)  # stored 60 wide, 40 high; orientation 6: shown turned 90 degrees clockwise
    save_with_orientation(stored, tmp_path / "photo.png", 6)
    upright = stored.transpose(PIL.Image.Transpose.ROTATE_270)
    assert upright.size == (40, 60)
    hole = np.zeros((60, 40), dtype=bool)  # over the upright photo
    hole[30:50, 5:25] = True
    stored_hole = PIL.Image.fromarray(hole).transpose(PIL.Image.Transpose.ROTATE_90)  # the same hole, as stored
    save_with_orientation(stored_hole.convert("L"), tmp_path / "mask.png", 6)
    results = [np.array(pipe(image, mask=mask, seed=0)["reconstruction"]) for image, mask in (
        (str(tmp_path / "photo.png"), hole),
        (PIL.Image.open(tmp_path / "photo.png"), hole),
        (upright, hole),
        (str(tmp_path / "photo.png"), str(tmp_path / "mask.png")),  # a mask file, turned like the photo
        (PIL.Image.open(tmp_path / "photo.png"), PIL.Image.open(tmp_path / "mask.png")),
    )]
    assert all(np.array_equal(result, results[0]) for result in results)
    assert results[0].shape == (60, 40, 3) and np.array_equal(results[0][~hole], np.array(upright)[~hole])
    with pytest.raises(ValueError, match="must match. Images are read upright"):
        pipe(str(tmp_path / "photo.png"), mask=hole.T)  # drawn on the photo as stored
    with pytest.warns(UserWarning, match=r"EXIF orientation 6 and the mask no EXIF \(an array\)"):
        pipe(str(tmp_path / "photo.png"), mask=hole)  # an array mask with a turned photo: said


def test_a_mask_image_turned_otherwise_than_its_photo_is_said(pipe, tmp_path):
    """A mask file without EXIF on a photo turned by half a turn (the same shape either way) was used as if drawn
    on the upright photo, with no word."""
    save_with_orientation(make_image(40, 60), tmp_path / "photo.png", 3)
    hole = np.zeros((40, 60), dtype=bool)
    hole[5:15, 10:30] = True
    PIL.Image.fromarray(hole).save(tmp_path / "plain-mask.png")
    save_with_orientation(PIL.Image.fromarray(hole).convert("L"), tmp_path / "turned-mask.png", 3)
    for mask in (str(tmp_path / "plain-mask.png"), PIL.Image.open(tmp_path / "plain-mask.png")):
        with pytest.warns(UserWarning, match="EXIF orientation 3 and the mask no EXIF orientation"):
            pipe(str(tmp_path / "photo.png"), mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # turned as the photo is: nothing to say
        pipe(str(tmp_path / "photo.png"), mask=str(tmp_path / "turned-mask.png"))
        save_with_orientation(make_image(40, 60), tmp_path / "upright.png", 1)
        pipe(str(tmp_path / "upright.png"), mask=hole)


def test_a_bad_image_in_a_list_is_named_by_its_index(pipe):
    good = make_image(40, 60)
    bad = np.full((40, 60, 3), 300.0)  # floats outside [0, 1]
    with pytest.raises(ValueError, match=r"Image 1 of the list \(counting from 0\): Float images must be in \[0, 1\]"):
        pipe([good, bad, good], seed=0)
    with pytest.raises(ValueError, match=r"Image 2 of the list .*: Expected an image array of shape"):
        pipe.image_processor([good, good, np.zeros((2, 3, 4, 5))])
    with pytest.raises(ValueError, match=r"^Float images must be in \[0, 1\]"):  # one image: nothing to number
        pipe(bad)


def test_the_shipped_pipeline_inpaints_in_half_precision_as_in_float32():
    """`pipeline(..., dtype=torch.bfloat16)`, the first thing a GPU user does, failed on its first forward ('mixed
    dtype'): the position table stayed float32. The quickstart's box, in the checkpoint's own code."""
    from modeling_lmd.pretrained import DEMO_LMD, EXAMPLE_PHOTO

    photo = PIL.Image.open(EXAMPLE_PHOTO).convert("RGB")
    box = np.zeros((photo.height, photo.width), dtype=bool)
    box[110:190, 240:330] = True
    scores = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pipe = pipeline("lmd-reconstruction", model=DEMO_LMD, trust_remote_code=True, dtype=dtype, device="cpu")
        assert pipe.model.dtype == dtype
        out = np.asarray(pipe(photo, mask=box)["reconstruction"]).astype(float)
        assert np.array_equal(out[~box], np.asarray(photo)[~box])
        scores[dtype] = 10 * np.log10(255**2 / ((out - np.asarray(photo))[box] ** 2).mean())
    assert all(abs(score - scores[torch.float32]) < 0.2 for score in scores.values()), scores

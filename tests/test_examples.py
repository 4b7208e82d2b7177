"""Every example runs offline on a tiny checkpoint, called in-process through its `main(argv)`."""

import os

import numpy as np
import PIL.Image
import pytest
from conftest import load_script


def load_example(name):
    return load_script(f"examples/{name}.py")


@pytest.fixture
def image_paths(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(48, 40), (32, 32)]):
        path = tmp_path / f"image{i}.png"
        PIL.Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_reconstruct(tiny_checkpoint, image_paths, tmp_path):
    output = tmp_path / "grid" / "grid.png"
    load_example("reconstruct").main(
        ["--model", str(tiny_checkpoint), "--images", *image_paths, "--mask_ratio", "0.5", "--output", str(output)]
    )
    grid = PIL.Image.open(output)
    assert grid.size == (4 * 32, 2 * 32)  # 2 rows x (input, masked, reconstruction, reconstruction + visible)


def test_inpaint_with_box_and_mask_file(tiny_checkpoint, image_paths, tmp_path):
    inpaint = load_example("inpaint")
    inpaint.main(
        ["--model", str(tiny_checkpoint), "--image", image_paths[0], "--box", "0", "0", "10", "10",
         "--output", str(tmp_path / "a.png"), "--grid", str(tmp_path / "grid.png")]
    )
    assert PIL.Image.open(tmp_path / "a.png").size == (40, 48)  # the photo's own size
    assert PIL.Image.open(tmp_path / "grid.png").size == (3 * 40, 48)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[20:, 20:] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    inpaint.main(
        ["--model", str(tiny_checkpoint), "--image", image_paths[1], "--mask", str(tmp_path / "mask.png"),
         "--output", str(tmp_path / "b.png")]
    )
    assert (tmp_path / "b.png").is_file()


def test_features_and_digits_probe(tiny_checkpoint, image_paths, tmp_path):
    results = load_example("features").main(
        ["--model", str(tiny_checkpoint), "--images", *image_paths, "--output", str(tmp_path / "f.npy"),
         "--digits_probe", "--max_samples", "60"]
    )
    features = np.load(tmp_path / "f.npy")
    assert features.shape == (2, 32) and np.allclose(features, results["features"])
    assert 0.0 <= results["probe_accuracy"] <= 1.0


def test_train_vae_goes_on_from_a_saved_vae(vae_folder, tmp_path, monkeypatch):
    """`--init_from` starts from the saved weights (0 steps: the very same weights) and trains on from there."""
    import torch
    from diffusers import AutoencoderKL

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 4)):  # a few 16 px tiles stand in for the demo photographs
        folder = tmp_path / "demo" / split
        folder.mkdir(parents=True)
        for i in range(count):
            PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train_vae = load_example("train_vae")
    monkeypatch.setattr(train_vae, "build_demo_dataset", lambda *args, **kwargs: None)
    common = ["--data_dir", str(tmp_path / "demo"), "--resolution", "16", "--crop_size", "8", "--batch_size", "4",
              "--init_from", vae_folder]
    validation = str(tmp_path / "demo" / "validation")
    info = train_vae.main([*common, "--max_steps", "0", "--output_dir", str(tmp_path / "same"),
                           "--eval_dirs", validation])
    start = AutoencoderKL.from_pretrained(vae_folder).state_dict()
    same = AutoencoderKL.from_pretrained(tmp_path / "same").state_dict()
    assert info["steps"] == 0 and all(torch.equal(start[name], same[name]) for name in start)
    assert info["init_val_psnr"] == info["val_psnr"]  # no step taken: the starting PSNR is the final one
    assert info["eval_psnr"] == {validation: round(info["val_psnr"], 3)}  # a named folder is scored the same way

    train_vae.main([*common, "--max_steps", "2", "--output_dir", str(tmp_path / "on")])
    trained = AutoencoderKL.from_pretrained(tmp_path / "on")
    assert trained.config.block_out_channels == AutoencoderKL.from_pretrained(vae_folder).config.block_out_channels
    assert not torch.equal(trained.state_dict()["encoder.conv_in.weight"], start["encoder.conv_in.weight"])


def test_train_vae_killed_and_resumed_ends_with_the_uninterrupted_weights(vae_folder, tmp_path, monkeypatch):
    import torch
    from diffusers import AutoencoderKL

    rng = np.random.default_rng(1)
    for split, count in (("train", 10), ("validation", 2)):
        folder = tmp_path / "tiles" / split
        folder.mkdir(parents=True)
        for i in range(count):
            PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train_vae = load_example("train_vae")
    common = ["--data_dir", str(tmp_path / "tiles"), "--resolution", "16", "--crop_size", "8", "--batch_size", "4",
              "--init_from", vae_folder, "--max_steps", "6", "--warmup_steps", "2", "--full_res_fraction", "0.34",
              "--num_threads", "1"]
    train_vae.main([*common, "--output_dir", str(tmp_path / "whole")])

    save_state = train_vae.save_state

    def killed_after_the_second_save(path, state, vae, opt):
        save_state(path, state, vae, opt)
        if state["step"] == 4:
            raise KeyboardInterrupt  # the kill, right after a resume state was written
    monkeypatch.setattr(train_vae, "save_state", killed_after_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_vae.main([*common, "--output_dir", str(tmp_path / "killed"), "--save_every", "2"])
    monkeypatch.setattr(train_vae, "save_state", save_state)
    info = train_vae.main([*common, "--output_dir", str(tmp_path / "killed"), "--save_every", "2", "--resume"])
    whole = AutoencoderKL.from_pretrained(tmp_path / "whole").state_dict()
    resumed = AutoencoderKL.from_pretrained(tmp_path / "killed").state_dict()
    assert info["steps"] == 6 and all(torch.equal(whole[name], resumed[name]) for name in whole)
    with pytest.raises(SystemExit, match="other arguments"):
        train_vae.main([*common[:-2], "--learning_rate", "1e-2", "--output_dir", str(tmp_path / "killed"), "--resume"])


def test_blend_seams_measures_every_fill_on_the_same_masks(tiny_checkpoint, tmp_path):
    photo = tmp_path / "photo.png"
    rows, cols = np.mgrid[0:90, 0:120]
    PIL.Image.fromarray(np.stack([rows * 2, cols * 2, rows + cols], axis=-1).astype(np.uint8)).save(photo)
    result = load_example("blend_seams").main(
        ["--model", str(tiny_checkpoint), "--photos", str(photo), "--seeds", "0", "--output_dir", str(tmp_path),
         "--grid", str(tmp_path / "grid.png")])
    assert result["cases"] == 2  # a box and brush strokes
    fills = result["fills"]
    assert list(fills) == ["LMD, blend_width=0", "LMD, blend_width=2", "LMD, blend_width=4", "LMD, blend_width=8",
                           "Telea", "Navier-Stokes"]
    for fill in fills.values():
        assert set(fill) == {"all", "box", "brush"}
        assert all(np.isfinite(part["seam_over_photo"]) for part in fill.values())
    # On a smooth ramp the classical fills continue the border's pixels: they step less than a 64 px model's fill.
    assert fills["Telea"]["all"]["seam_over_photo"] < fills["LMD, blend_width=0"]["all"]["seam_over_photo"]
    assert (tmp_path / "blend-seams.md").exists() and PIL.Image.open(tmp_path / "grid.png").width == 7 * 48 * 4


def test_evaluate_reconstruction_loads_the_model_in_the_dtype_asked(tiny_checkpoint, image_paths, tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for path in image_paths:
        PIL.Image.open(path).save(folder / os.path.basename(path))
    scores = {}
    for dtype in ("float32", "bfloat16"):
        results = load_example("evaluate_reconstruction").main(
            ["--model", str(tiny_checkpoint), "--data_dir", str(folder), "--mask_ratios", "0.5", "--seeds", "0",
             "--dtype", dtype, "--output_dir", str(tmp_path / dtype)])
        scores[dtype] = results[0]["mean"]["masked_psnr"]
        assert '"dtype": "%s"' % dtype in (tmp_path / dtype / "results.json").read_text()
    assert abs(scores["bfloat16"] - scores["float32"]) < 0.5, scores  # the same fill, in 8 bits of mantissa

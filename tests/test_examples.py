"""Every example runs offline on a tiny checkpoint, called in-process through its `main(argv)`."""

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

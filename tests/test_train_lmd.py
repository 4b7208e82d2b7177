"""train_lmd.py end to end on tiny images (in-process `main([...])`), latent caching, data helpers."""

import json
import os

import datasets
import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from modeling_lmd import LMDForPreTraining, LMDImageProcessor, mask_ratio_at
from modeling_lmd.data import (
    ImageDataset,
    ProcessorTransform,
    RandomResizedCropFlip,
    image_to_tensor,
    random_resized_crop_box,
)
from modeling_lmd.image_processing_lmd import to_rgb_image

from conftest import write_image_folder


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(str(tmp_path / "images"))


def base_args(image_folder, vae_folder, output_dir, *extra):
    return [
        "--train_dir", os.path.join(image_folder, "train"),
        "--validation_dir", os.path.join(image_folder, "validation"),
        "--vae_name_or_path", vae_folder,
        "--model_preset", "lmd-tiny",
        "--output_dir", str(output_dir),
        "--max_steps", "4",
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "4",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--dataloader_pin_memory", "false",
        "--disable_tqdm", "true",
        "--log_level", "warning",
        "--seed", "0",
        *extra,
    ]


def test_train_lmd_end_to_end_from_a_json_file(train_lmd, image_folder, vae_folder, tmp_path):
    output_dir = tmp_path / "run"
    # Every argument in one JSON file (typed values, as HfArgumentParser.parse_json_file expects).
    config = {
        "train_dir": os.path.join(image_folder, "train"),
        "validation_dir": os.path.join(image_folder, "validation"),
        "vae_name_or_path": vae_folder,
        "model_preset": "lmd-tiny",
        "mask_schedule": "piecewise",
        "config_overrides": "mask_ratio=0.6",
        "dataset_tag": "toy-images",
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        "log_level": "warning",
        "seed": 0,
    }
    json_path = tmp_path / "args.json"
    json_path.write_text(json.dumps(config))
    metrics = train_lmd.main(str(json_path))

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_lmd.py",
                 "configuration_lmd.py", "mask_schedulers.py", "reconstructions.png", "metrics.json", "README.md",
                 "trainer_state.json"):
        assert (output_dir / name).is_file(), name
    written = json.loads((output_dir / "metrics.json").read_text())
    assert written["global_step"] == 4 and written["mask_schedule"] == "piecewise"
    for key in ("eval_loss", "eval_masked_psnr", "eval_masked_psnr_latent_masking", "eval_pixel_mean_fill_psnr",
                "eval_latent_mean_fill_psnr", "eval_vae_psnr", "train_loss"):
        assert np.isfinite(written[key]), key
    assert metrics["eval_masked_psnr"] == written["eval_masked_psnr"]

    # mask_ratio logged at every step, equal to the schedule at step k - 1.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    logged = [(entry["step"], entry["mask_ratio"]) for entry in history if "loss" in entry]
    assert logged == [(k, pytest.approx(mask_ratio_at("piecewise", k - 1, 4))) for k in range(1, 5)]

    # The saved config keeps the evaluation ratio; the VAE is the one we started from, bit for bit.
    model = LMDForPreTraining.from_pretrained(output_dir)
    assert model.config.mask_ratio == 0.6 and model.config.mask_schedule == "piecewise"
    saved = load_file(str(output_dir / "model.safetensors"))
    original = load_file(os.path.join(vae_folder, "diffusion_pytorch_model.safetensors"))
    for name, tensor in original.items():
        assert torch.equal(saved[f"lmd.vae.{name}"], tensor), name

    grid = Image.open(output_dir / "reconstructions.png")
    # Six labelled columns per validation image (MAE's four, biharmonic, Telea), each enlarged to 128 px, under an
    # 18 px header of labels.
    assert grid.size == (6 * 128, 18 + 3 * 128)
    curves = Image.open(output_dir / "training_curves.png")
    assert curves.width > 3 * curves.height  # four panels side by side: loss, mask ratio, lr, held-out PSNR

    card = (output_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert set(metadata["tags"]) >= {"lmd", "masked-image-modeling", "image-to-image"}
    assert "pipeline_tag" not in metadata and metadata["datasets"] == ["toy-images"]
    assert "piecewise" in card and 'pipeline("lmd-reconstruction"' in card and "{{" not in card
    assert "mean colour" in card and "VAE's own reconstruction" in card
    assert "| Loss | MSE on the hidden patches |" in card  # visible_loss_weight 0: hidden patches only
    assert "](reconstructions.png)" in card and "](training_curves.png)" in card
    assert "arxiv:2312.07971" in metadata["tags"]
    assert metadata["license"] == "apache-2.0" and "@inproceedings{ma2024lmd" in card
    # model-index: the held-out PSNR of LMD, classical inpainting, the mean-colour fill and the VAE alone.
    (entry,) = metadata["model-index"]
    (result,) = entry["results"]  # one task on one dataset: LMD and its four references
    psnrs = {metric["name"].split(", ")[1]: metric["value"] for metric in result["metrics"]}
    assert psnrs == {"LMD": round(written["eval_masked_psnr"], 2),
                     "classical: biharmonic inpainting": round(written["eval_biharmonic_psnr"], 2),
                     "classical: Telea inpainting": round(written["eval_telea_psnr"], 2),
                     "baseline: mean-colour fill": round(written["eval_pixel_mean_fill_psnr"], 2),
                     "ceiling: the VAE alone": round(written["eval_vae_psnr"], 2)}
    assert result["dataset"]["type"] == "toy-images" and result["task"]["type"] == "image-to-image"


def test_cache_latents_second_run_does_not_run_the_vae_encoder(
    train_lmd, image_folder, vae_folder, tmp_path, monkeypatch
):
    cache_dir = tmp_path / "latent-cache"
    calls = {"n": 0}
    encode = AutoencoderKL.encode

    def counting_encode(self, *args, **kwargs):
        calls["n"] += 1
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting_encode)
    extra = ("--cache_latents", "--latent_cache_dir", str(cache_dir), "--latent_cache_views", "2")
    first = train_lmd.main(base_args(image_folder, vae_folder, tmp_path / "first", *extra))
    assert calls["n"] > 0
    entries = sorted(e for e in os.listdir(cache_dir) if os.path.isdir(cache_dir / e))
    assert len(entries) == 2  # train (2 views) and validation (1 view); beside them, one lock file each
    info = [json.loads((cache_dir / e / "cache_info.json").read_text()) for e in entries]
    assert sorted(i["num_views"] for i in info) == [1, 2]
    assert all(i["encode_seconds"] > 0 for i in info)  # what building it cost, for the benchmarks that reuse it

    def forbidden(self, *args, **kwargs):
        raise AssertionError("the VAE encoder ran although the latents are cached")

    # Training alone (evaluation and the grid encode their masked images, leak-free, so they are left out here).
    monkeypatch.setattr(AutoencoderKL, "encode", forbidden)
    second = train_lmd.main(base_args(image_folder, vae_folder, tmp_path / "second", *extra, "--do_train",
                                      "--num_reconstructions", "0"))
    assert second["global_step"] == 4 and np.isfinite(second["train_loss"])
    assert second["train_loss"] == pytest.approx(first["train_loss"], abs=1e-6)  # same data, same seed
    assert sorted(e for e in os.listdir(cache_dir) if os.path.isdir(cache_dir / e)) == entries


def test_continue_from_a_checkpoint_with_overrides(train_lmd, image_folder, vae_folder, tmp_path, tiny_checkpoint):
    metrics = train_lmd.main([
        *base_args(image_folder, vae_folder, tmp_path / "continued", "--max_steps", "2"),
        "--model_name_or_path", str(tiny_checkpoint), "--mask_schedule", "constant", "--visible_loss_weight", "0.5",
        "--do_train",
    ])
    assert metrics["global_step"] == 2 and "eval_loss" not in metrics
    config = LMDForPreTraining.from_pretrained(tmp_path / "continued").config
    assert (config.mask_schedule, config.visible_loss_weight) == ("constant", 0.5)


def test_config_overrides_reach_the_model_and_bad_ones_are_refused(train_lmd, image_folder, vae_folder, tmp_path):
    args = base_args(image_folder, vae_folder, tmp_path / "run", "--max_steps", "1", "--do_train",
                     "--config_overrides", "hidden_size=64,num_attention_heads=8,norm_latent_loss=true")
    train_lmd.main(args)
    config = LMDForPreTraining.from_pretrained(tmp_path / "run").config
    assert (config.hidden_size, config.num_attention_heads, config.norm_latent_loss) == (64, 8, True)
    with pytest.raises(ValueError, match="isn't in the original config"):
        train_lmd.main(["--overwrite_output_dir", *args[:-1], "nonsense=1"])
    with pytest.raises(Exception, match=r"hidden_size` \(62\) must be divisible"):
        train_lmd.main(["--overwrite_output_dir", *args[:-1], "hidden_size=62"])


def test_images_become_rgb_in_minus_one_one():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8))
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("CMYK"),
                  Image.fromarray((rng.random((10, 12)) * 65535).astype(np.uint16))):
        converted = to_rgb_image(image)
        assert converted.mode == "RGB" and converted.size == (12, 10)
        tensor = image_to_tensor(converted)
        assert tensor.shape == (3, 10, 12) and tensor.min() >= -1 and tensor.max() <= 1
    assert torch.allclose(image_to_tensor(Image.new("RGB", (2, 2), (255, 0, 128)))[:, 0, 0],
                          torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_augmentation_is_seeded_and_follows_the_paper():
    image = Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8))
    transform = RandomResizedCropFlip(32)
    a = transform(image, torch.Generator().manual_seed(1))
    b = transform(image, torch.Generator().manual_seed(1))
    c = transform(image, torch.Generator().manual_seed(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(50):
        left, top, right, bottom = random_resized_crop_box(70, 50, (0.2, 1.0), (3 / 4, 4 / 3),
                                                           torch.Generator().manual_seed(seed))
        area = (right - left) * (bottom - top) / (70 * 50)
        assert 0 <= left < right <= 70 and 0 <= top < bottom <= 50
        assert 0.18 <= area <= 1.0
    assert ProcessorTransform(LMDImageProcessor(size={"height": 32, "width": 32}))(image).shape == (3, 32, 32)

    dataset = datasets.Dataset.from_dict({"image": [image] * 3}, features=datasets.Features({"image": datasets.Image()}))
    items = ImageDataset(dataset, "image", transform, seed=0)
    first = items[0]["pixel_values"]
    assert torch.equal(first, items[0]["pixel_values"])  # a pure function of (seed, epoch, index)
    items.set_epoch(1)
    assert not torch.equal(first, items[0]["pixel_values"])


def test_an_unreadable_image_is_named_and_skipped(tmp_path, caplog):
    folder = write_image_folder(str(tmp_path / "images"), counts=(("train", 2),))
    with open(os.path.join(folder, "train", "broken.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really a png")
    dataset = datasets.load_dataset("imagefolder", data_dir=os.path.join(folder, "train"), split="train")
    items = ImageDataset(dataset, "image", ProcessorTransform(LMDImageProcessor(size={"height": 32, "width": 32})))
    paths = [str(p["path"]) for p in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
    broken = next(i for i, path in enumerate(paths) if "broken" in path)
    with caplog.at_level("WARNING"):
        item = items[broken]  # the next readable image instead, with a warning naming the file
    assert torch.equal(item["pixel_values"], items[(broken + 1) % len(items)]["pixel_values"])
    assert "broken.png" in caplog.text


def test_bf16_training_runs_on_the_cpu_and_saves_a_model_that_loads_in_bf16(train_lmd, image_folder, vae_folder,
                                                                           tmp_path):
    """`--bf16` (with `--use_cpu` where there is no GPU: the Trainer's bfloat16 autocast) runs the main job's
    setting, cached latents included, and what it saves runs in bfloat16."""
    metrics = train_lmd.main(base_args(image_folder, vae_folder, tmp_path / "run", "--bf16", "--use_cpu",
                                       "--cache_latents", "--mask_schedule", "cosine", "--visible_loss_weight", "1"))
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_masked_psnr"])
    model = LMDForPreTraining.from_pretrained(tmp_path / "run", dtype=torch.bfloat16)
    out = model(pixel_values=torch.rand(2, 3, 32, 32, dtype=torch.bfloat16) * 2 - 1, noise=torch.rand(2, 16))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)

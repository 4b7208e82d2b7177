"""Nothing lost at scale: bad images, a shared and content-keyed latent cache, sharded caching, resume past a broken
checkpoint, inputs checked at the door, and clear errors (tiny models, subprocess runs of a few steps)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from conftest import REPO_ROOT
from subprocess_helpers import child_env, run_python

from modeling_lmd import LMDForPreTraining, LMDImageProcessor
from modeling_lmd.data import RandomResizedCropFlip, cache_latents, load_image_datasets
from modeling_lmd.trainer import last_complete_checkpoint
from modeling_lmd.reconstruction_lmd import reconstruct




def photo(seed: int, size=(40, 44)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8))


def write_folder(root, split: str, count: int, bad: bool, seed: int = 0) -> list[str]:
    """`count` good RGB images, and with `bad` the readable oddities (CMYK, 16-bit, palette) and the unreadable
    files (truncated PNG and JPEG, zero bytes, not an image). Returns the unreadable names."""
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        photo(seed + i).save(os.path.join(folder, f"good{i}.png"))
    if not bad:
        return []
    photo(seed + 50).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"))
    Image.fromarray((np.random.default_rng(seed).random((40, 44)) * 65535).astype(np.uint16)).save(
        os.path.join(folder, "sixteen_bit.png"))
    photo(seed + 51).convert("P").save(os.path.join(folder, "palette.png"))
    photo(seed + 52).save(os.path.join(folder, "truncated.png"))
    photo(seed + 53).save(os.path.join(folder, "truncated.jpg"))
    for name in ("truncated.png", "truncated.jpg"):
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    open(os.path.join(folder, "empty.png"), "wb").close()
    open(os.path.join(folder, "not_an_image.png"), "wb").write(b"plain text, not pixels\n" * 20)
    return ["truncated.png", "truncated.jpg", "empty.png", "not_an_image.png"]


def run_args(images, vae, output_dir, *extra):
    return ["--train_dir", os.path.join(images, "train"), "--validation_dir", os.path.join(images, "validation"),
            "--vae_name_or_path", vae, "--model_preset", "lmd-tiny", "--output_dir", str(output_dir),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
            "--save_strategy", "no", "--dataloader_pin_memory", "false", "--disable_tqdm", "true",
            "--log_level", "warning", "--report_to", "none", "--seed", "0", "--num_reconstructions", "2", *extra]


# --- bad images --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_unreadable_images_in_both_splits_are_skipped_and_everything_is_written(
        train_lmd, vae_folder, tmp_path, caplog, cached):
    images = str(tmp_path / "images")
    unreadable = write_folder(images, "train", 4, bad=True) + write_folder(images, "validation", 2, bad=True, seed=9)
    extra = ["--cache_latents", "--latent_cache_dir", str(tmp_path / "cache")] if cached else []
    with caplog.at_level("WARNING"):
        metrics = train_lmd.main(run_args(images, vae_folder, tmp_path / "run", *extra))
    for split, readable in (("train", 7), ("validation", 5)):  # good + CMYK + 16-bit + palette
        assert f"4 of {readable + 4} {split} images cannot be read" in caplog.text
    for name in set(unreadable):
        assert name in caplog.text
    assert metrics["global_step"] == 2 and metrics["eval_samples"] == 5 and np.isfinite(metrics["eval_masked_psnr"])
    for name in ("model.safetensors", "metrics.json", "README.md", "reconstructions.png"):
        assert (tmp_path / "run" / name).is_file()


def test_a_damaged_file_past_the_full_decode_limit_does_not_sink_a_cached_run(train_lmd, vae_folder, tmp_path,
                                                                             caplog):
    """Above FULL_DECODE_LIMIT images the scan reads only headers, so a truncated JPEG gets through it; the latent
    cache then takes the next readable image in its place, as training does, and the run finishes and saves."""
    from modeling_lmd.data import FULL_DECODE_LIMIT

    train = tmp_path / "images" / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(FULL_DECODE_LIMIT):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(train / f"{i:05d}.png")
    photo(1).save(train / "truncated.jpg")
    data = (train / "truncated.jpg").read_bytes()
    (train / "truncated.jpg").write_bytes(data[: len(data) // 2])
    write_folder(str(tmp_path / "images"), "validation", 2, bad=False, seed=30)
    with caplog.at_level("WARNING"):
        metrics = train_lmd.main(run_args(str(tmp_path / "images"), vae_folder, tmp_path / "run", "--cache_latents",
                                          "--latent_cache_dir", str(tmp_path / "cache"), "--max_steps", "1"))
    assert "Skipping an unreadable image" in caplog.text and "truncated.jpg" in caplog.text
    assert metrics["global_step"] == 1 and (tmp_path / "run" / "model.safetensors").is_file()


def test_strict_images_makes_unreadable_images_an_error(train_lmd, vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 3, bad=True)
    write_folder(images, "validation", 2, bad=False)
    with pytest.raises(ValueError, match=r"4 of 10 train images cannot be read.*--strict_images"):
        train_lmd.main(run_args(images, vae_folder, tmp_path / "run", "--strict_images"))


def test_streaming_reads_images_as_they_arrive_and_skips_unreadable_ones(train_lmd, vae_folder, tmp_path, caplog):
    images = str(tmp_path / "images")
    unreadable = write_folder(images, "train", 4, bad=True)
    write_folder(images, "validation", 3, bad=False, seed=9)
    with caplog.at_level("WARNING"):  # 7 readable training images, batch 2: step 4 reads into the second epoch
        metrics = train_lmd.main(run_args(images, vae_folder, tmp_path / "run", "--streaming", "--max_steps", "4",
                                          "--max_eval_samples", "2"))
    for name in unreadable:
        assert f"Skipping an unreadable streamed image ({os.path.join(images, 'train', name)})" in caplog.text
    assert metrics["global_step"] == 4 and metrics["eval_samples"] == 2 and np.isfinite(metrics["eval_masked_psnr"])
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "a stream of training images" in (tmp_path / "run" / "README.md").read_text()
    with pytest.raises(ValueError, match="--streaming .* cannot be combined with --cache_latents"):
        train_lmd.main(run_args(images, vae_folder, tmp_path / "run2", "--streaming", "--cache_latents"))


def test_a_streamed_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(train_lmd, vae_folder, tmp_path):
    """6 images at batch 2 are 3 steps an epoch: checkpoint-2 is inside the first epoch, checkpoint-8 in the third."""
    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    write_folder(images, "validation", 2, bad=False, seed=30)
    streamed = ["--streaming", "--max_steps", "10", "--save_strategy", "steps", "--save_steps", "2",
                "--save_total_limit", "10", "--eval_strategy", "no", "--num_reconstructions", "0"]
    train_lmd.main(run_args(images, vae_folder, tmp_path / "full", *streamed))
    full = load_file(tmp_path / "full" / "model.safetensors")
    for step in (2, 8):
        os.makedirs(tmp_path / f"resumed-{step}")
        shutil.copytree(tmp_path / "full" / f"checkpoint-{step}", tmp_path / f"resumed-{step}" / f"checkpoint-{step}")
        train_lmd.main(run_args(images, vae_folder, tmp_path / f"resumed-{step}", *streamed,
                                "--resume_from_checkpoint", "last"))
        again = load_file(tmp_path / f"resumed-{step}" / "model.safetensors")
        for name, tensor in full.items():
            assert torch.equal(tensor, again[name]), (step, name)


# --- the latent cache -------------------------------------------------------------------------------------------


def tiny_model(vae_folder) -> LMDForPreTraining:
    torch.manual_seed(0)
    return LMDForPreTraining.from_vae(vae_folder, preset="lmd-tiny")


def test_changed_content_under_the_same_name_and_date_rebuilds_the_cache(vae_folder, tmp_path, monkeypatch):
    images = str(tmp_path / "images")
    write_folder(images, "train", 3, bad=False)
    model, cache = tiny_model(vae_folder), str(tmp_path / "cache")

    def cache_once():
        train = load_image_datasets(train_dir=os.path.join(images, "train"), train_val_split=0)["train"]
        return cache_latents(model, train, "image", RandomResizedCropFlip(32), cache, seed=0)[1]

    first = cache_once()
    assert not first["reused"] and cache_once()["reused"]
    target = os.path.join(images, "train", "good1.png")
    stamp = os.stat(target)
    photo(123).save(target)  # new pixels, same name ...
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # ... and the old modification time
    rebuilt = cache_once()
    assert not rebuilt["reused"] and rebuilt["key"] != first["key"]


def test_a_cache_damaged_on_disk_is_named_with_what_to_do(vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 3, bad=False)
    train = load_image_datasets(train_dir=os.path.join(images, "train"), train_val_split=0)["train"]
    model, cache = tiny_model(vae_folder), str(tmp_path / "cache")
    info = cache_latents(model, train, "image", RandomResizedCropFlip(32), cache, seed=0)[1]
    arrow = next(path for path in (tmp_path / "cache").rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"The latent cache at {info['path']} is damaged .*delete that folder"):
        cache_latents(model, train, "image", RandomResizedCropFlip(32), cache, seed=0)


CACHE_SCRIPT = """
import json, sys, torch
from diffusers import AutoencoderKL
from modeling_lmd import LMDForPreTraining
from modeling_lmd.data import RandomResizedCropFlip, cache_latents, load_image_datasets
images, vae, cache, out = sys.argv[1:5]
calls = {"encode": 0}
encode = AutoencoderKL.encode
def counting(self, *args, **kwargs):
    calls["encode"] += 1
    return encode(self, *args, **kwargs)
AutoencoderKL.encode = counting
torch.manual_seed(0)
model = LMDForPreTraining.from_vae(vae, preset="lmd-tiny")
train = load_image_datasets(train_dir=images, train_val_split=0)["train"]
latents, info = cache_latents(model, train, "image", RandomResizedCropFlip(32), cache, seed=0, batch_size=2,
                              num_views=2)
torch.save(torch.tensor(latents["latents"]), out + ".pt")
json.dump({"reused": info["reused"], "encodes": calls["encode"], "path": info["path"]}, open(out + ".json", "w"))
"""


def test_two_runs_caching_one_key_encode_once_and_share_the_cache(vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 12, bad=False)
    cache = str(tmp_path / "cache")
    script = tmp_path / "cache_script.py"
    script.write_text(CACHE_SCRIPT)
    runs = [subprocess.Popen([sys.executable, str(script), os.path.join(images, "train"), vae_folder, cache,
                              str(tmp_path / f"run{i}")], env=child_env(), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    for run in runs:
        output = run.communicate(timeout=240)[0].decode()
        assert run.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"run{i}.json").read_text()) for i in range(2)]
    assert sorted(r["reused"] for r in results) == [False, True]  # one encoded, the other waited and reused
    assert sorted(r["encodes"] for r in results)[0] == 0
    assert torch.equal(torch.load(tmp_path / "run0.pt"), torch.load(tmp_path / "run1.pt"))
    assert [name for name in os.listdir(cache) if name.endswith(".partial")] == []


def test_sharded_caching_and_evaluation_under_two_processes_match_one_process(tmp_path, tiny_checkpoint):
    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    write_folder(images, "validation", 5, bad=False, seed=20)
    common = ["train_lmd.py", "--train_dir", os.path.join(images, "train"), "--validation_dir",
              os.path.join(images, "validation"), "--model_name_or_path", str(tiny_checkpoint), "--do_eval",
              "--cache_latents", "--latent_cache_views", "2", "--per_device_eval_batch_size", "2", "--use_cpu",
              "true", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning",
              "--num_reconstructions", "0", "--seed", "0"]
    run_python([*common, "--output_dir", str(tmp_path / "one"), "--latent_cache_dir", str(tmp_path / "cache1")],
               cwd=REPO_ROOT)
    run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", *common,
                "--output_dir", str(tmp_path / "two"), "--latent_cache_dir", str(tmp_path / "cache2")],
               cwd=REPO_ROOT, timeout=400)
    from modeling_lmd.data.latent_cache import _load_cache

    for name in os.listdir(tmp_path / "cache1"):
        if name.endswith(".lock"):
            continue
        one, info = _load_cache(str(tmp_path / "cache1" / name))
        two, info_two = _load_cache(str(tmp_path / "cache2" / name))  # the same key: content, not processes
        assert info_two["parts"] == ["part-00000", "part-00001"] and len(info["parts"]) == 1
        np.testing.assert_allclose(np.asarray(one["latents"]), np.asarray(two["latents"]), rtol=0, atol=1e-5)
    first = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    second = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_masked_psnr", "eval_pixel_mean_fill_psnr", "eval_vae_psnr"):
        assert first[key] == pytest.approx(second[key], abs=1e-5), key


# --- resume ------------------------------------------------------------------------------------------------------


def train_process(images, vae, output_dir, *extra) -> subprocess.Popen:
    args = [sys.executable, os.path.join(REPO_ROOT, "train_lmd.py"),
            *run_args(images, vae, output_dir, "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2",
                      "--do_train", *extra)]
    return subprocess.Popen(args, env=child_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_run_resumes_past_a_checkpoint_cut_short_to_the_same_weights(vae_folder, tmp_path, caplog):
    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    write_folder(images, "validation", 2, bad=False, seed=30)
    uninterrupted = train_process(images, vae_folder, tmp_path / "full")
    killed = train_process(images, vae_folder, tmp_path / "killed")
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").exists():
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0][-3000:]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert uninterrupted.wait(timeout=240) == 0, uninterrupted.communicate()[0][-3000:]
    # Make the newest checkpoint look cut short by a kill during its save: truncated weights, no trainer state.
    newest = tmp_path / "killed" / "checkpoint-6"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (newest / "trainer_state.json").unlink()
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(str(tmp_path / "killed")) == str(tmp_path / "killed" / "checkpoint-4")
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    resumed = train_process(images, vae_folder, tmp_path / "killed", "--resume_from_checkpoint", "last")
    assert resumed.wait(timeout=240) == 0, resumed.communicate()[0][-3000:]
    full, again = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert set(full) == set(again)
    for name, tensor in full.items():
        assert torch.equal(tensor, again[name]), name


def test_a_damaged_optimizer_scheduler_rng_or_trainer_state_falls_back_to_the_previous_checkpoint(
    train_lmd, vae_folder, tmp_path, caplog
):
    """Whatever a resume reads is checked before a checkpoint is chosen: each file of checkpoint-6 cut to half in
    turn, the run resumes from checkpoint-4 and ends with the uninterrupted run's weights."""
    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    write_folder(images, "validation", 2, bad=False, seed=30)
    saving = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "10",
              "--eval_strategy", "no", "--num_reconstructions", "0"]
    train_lmd.main(run_args(images, vae_folder, tmp_path / "full", *saving))
    full = load_file(tmp_path / "full" / "model.safetensors")
    for damaged in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        run = tmp_path / f"damaged-{damaged}"
        for step in (4, 6):
            shutil.copytree(tmp_path / "full" / f"checkpoint-{step}", run / f"checkpoint-{step}")
        path = run / "checkpoint-6" / damaged
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with caplog.at_level("WARNING"):
            assert last_complete_checkpoint(str(run)) == str(run / "checkpoint-4"), damaged
        assert f"Skipping incomplete checkpoint {run / 'checkpoint-6'}" in caplog.text
        train_lmd.main(run_args(images, vae_folder, run, *saving, "--resume_from_checkpoint", "last"))
        again = load_file(run / "model.safetensors")
        for name, tensor in full.items():
            assert torch.equal(tensor, again[name]), (damaged, name)


def test_a_named_damaged_checkpoint_is_refused_before_anything_is_built(train_lmd, vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 4, bad=False)
    write_folder(images, "validation", 2, bad=False, seed=30)
    saving = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
              "--num_reconstructions", "0"]
    train_lmd.main(run_args(images, vae_folder, tmp_path / "run", *saving))
    optimizer = tmp_path / "run" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-2 .*--resume_from_checkpoint last picks"):
        train_lmd.main(run_args(images, vae_folder, tmp_path / "run", *saving, "--resume_from_checkpoint",
                                str(tmp_path / "run" / "checkpoint-2")))


# --- inputs at the door, and clear errors ------------------------------------------------------------------------


def test_pixels_outside_minus_one_one_integers_and_nan_are_refused(tiny_model):
    tiny_model.eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]; use LMDImageProcessor.*uint8"):
        tiny_model(pixel_values=(images * 127 + 128).to(torch.uint8))
    # Values at the door (reconstruct, the pipeline, the Trainer's first batches), never in the forward: a host sync.
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]; use LMDImageProcessor.*\[0, 255\]"):
        reconstruct(tiny_model, torch.full((1, 3, 32, 32), 255.0).index_fill_(2, torch.tensor([0]), 0.0))
    poisoned = images.clone()
    poisoned[0, 0, 0, :3] = float("nan")
    with pytest.raises(ValueError, match="holds 3 non-finite value"):
        reconstruct(tiny_model, poisoned)
    reconstruct(tiny_model, images.clamp(-1.04, 1.04))  # within tolerance: accepted


def test_training_checks_its_first_batches(tmp_path):
    import datasets

    from modeling_lmd import LMDConfig
    from modeling_lmd.data import collate_fn
    from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments

    torch.manual_seed(0)
    model = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    pixels = np.random.default_rng(0).random((4, 3, 32, 32)).astype(np.float32) * 255  # forgot to normalise
    dataset = datasets.Dataset.from_dict({"pixel_values": pixels}).with_format("torch")
    args = LMDTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = LMDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_fn)
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]"):
        trainer.train()


def test_clear_errors_for_bad_runs(train_lmd, vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 2, bad=False)
    write_folder(images, "validation", 2, bad=False)
    with pytest.raises(ValueError, match="--max_steps 0 would train nothing"):
        train_lmd.main(run_args(images, vae_folder, tmp_path / "run", "--max_steps", "0"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no files"):
        load_image_datasets(train_dir=str(tmp_path / "empty"))
    single = tmp_path / "single" / "train"
    os.makedirs(single)
    photo(0).save(single / "one.png")
    with pytest.raises(ValueError, match=r"--train_val_split 0.15 of 1 training image"):
        load_image_datasets(train_dir=str(single), train_val_split=0.15)
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match="URLs are not fetched offline"):
        processor("http://example.com/photo.png")


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 10**6, r"`num_hidden_layers` is 1000000; the limit is 1024"),
    ("intermediate_size", 10**9, r"about 1.3e\+11 ViT parameters; the limit is 1e\+10"),
    ("image_size", 2**20, r"gives 17179869184 tokens; the limit is 65536"),
])
def test_an_absurd_config_is_refused_before_anything_is_built(tiny_checkpoint, field, value, message, monkeypatch):
    """A tampered or mistyped config.json gets a clear error from the config's own checks, before any layer or
    position table takes memory."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from modeling_lmd import modeling_lmd as modeling

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tiny_checkpoint / "config.json").write_text(json.dumps({**config, field: value}))
    monkeypatch.setattr(modeling.LMDLayer, "__init__", lambda *a, **k: pytest.fail("a layer was built"))
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        LMDForPreTraining.from_pretrained(tiny_checkpoint)


def test_cached_latents_are_read_a_batch_at_a_time_as_a_pure_function_of_seed_epoch_and_index(vae_folder, tmp_path):
    from modeling_lmd.data import LatentDataset

    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    train = load_image_datasets(train_dir=os.path.join(images, "train"), train_val_split=0)["train"]
    model = tiny_model(vae_folder)
    latents, info = cache_latents(model, train, "image", RandomResizedCropFlip(32), str(tmp_path / "cache"), seed=0,
                                  num_views=3)
    mapped = LatentDataset(latents, seed=5, latent_flip=True)
    in_memory = LatentDataset(latents, seed=5, latent_flip=True, in_memory=True)
    views = torch.as_tensor(latents.with_format("numpy")[:]["latents"])  # (6, 3, C, h, w)
    batch = mapped.__getitems__([4, 0, 2])
    for position, index in enumerate([4, 0, 2]):  # a batch reads what single items read, in any company
        single = mapped[index]["latents"]
        assert torch.equal(batch[position]["latents"], single)
        assert torch.equal(in_memory[index]["latents"], single)
        assert any(torch.equal(single, v) or torch.equal(single, v.flip(-1)) for v in views[index])
    first = [mapped[i]["latents"] for i in range(6)]
    mapped.set_epoch(1)  # another epoch chooses otherwise, somewhere
    assert any(not torch.equal(latents, mapped[i]["latents"]) for i, latents in enumerate(first))
    mapped.set_epoch(0)
    # bfloat16 storage: half the disk, the float32 latents rounded to bfloat16.
    half, half_info = cache_latents(model, train, "image", RandomResizedCropFlip(32), str(tmp_path / "cache"), seed=0,
                                    num_views=3, dtype="bfloat16")
    assert half_info["dtype"] == "bfloat16" and half_info["key"] != info["key"]
    as_bf16 = LatentDataset(half, seed=5, latent_flip=True, storage_dtype="bfloat16")
    assert torch.equal(as_bf16[3]["latents"], mapped[3]["latents"].to(torch.bfloat16).float())
    sizes = [sum(f.stat().st_size for f in (tmp_path / "cache" / i["key"]).rglob("*.arrow")) for i in (info, half_info)]
    assert sizes[1] < 0.6 * sizes[0]
    # In memory too: one bfloat16 tensor, read through Arrow without widening to int64 on the way.
    half_in_memory = LatentDataset(half, seed=5, latent_flip=True, storage_dtype="bfloat16", in_memory=True)
    assert half_in_memory.latents.dtype == torch.bfloat16 and half_in_memory.latents.shape == views.shape
    assert torch.equal(half_in_memory[3]["latents"], as_bf16[3]["latents"])


def test_a_cached_run_with_views_flips_and_bfloat16_resumes_to_the_same_weights(train_lmd, vae_folder, tmp_path):
    images = str(tmp_path / "images")
    write_folder(images, "train", 6, bad=False)
    write_folder(images, "validation", 2, bad=False, seed=30)
    cached = ["--cache_latents", "--latent_cache_dir", str(tmp_path / "cache"), "--latent_cache_views", "2",
              "--latent_flip", "true", "--latent_cache_dtype", "bfloat16", "--latents_in_memory", "true",
              "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "no",
              "--num_reconstructions", "0"]
    train_lmd.main(run_args(images, vae_folder, tmp_path / "full", *cached))
    os.makedirs(tmp_path / "resumed")
    shutil.copytree(tmp_path / "full" / "checkpoint-5", tmp_path / "resumed" / "checkpoint-5")
    train_lmd.main(run_args(images, vae_folder, tmp_path / "resumed", *cached, "--resume_from_checkpoint", "last"))
    full, again = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in full.items():
        assert torch.equal(tensor, again[name]), name

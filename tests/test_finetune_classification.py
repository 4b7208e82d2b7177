"""`examples/finetune_classification.py` (run_image_classification for LMD) and the digits image folder it demos on."""

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from conftest import REPO_ROOT, load_script
from hub_server import HubServer
from subprocess_helpers import hub_env, run_python
from modeling_lmd.pretrained import DEMO_LMD

SCRIPT = os.path.join(REPO_ROOT, "examples", "finetune_classification.py")
CLASSES = ["cat", "dog", "fox"]
#: Flags every run here shares: the CPU, no checkpoints, no progress bars in the test log.
QUIET = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--log_level", "warning"]


@pytest.fixture(scope="module")
def example():
    return load_script("examples/finetune_classification.py")


@pytest.fixture
def image_folder(tmp_path):
    """train/<class>/*.png (6 per class) and validation/<class>/*.png (2 per class), RGB of assorted sizes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 2)):
        for label, name in enumerate(CLASSES):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(36 + 4 * i, 40, 3)) // 3 + 80 * label  # classes differ in mean
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "images" / split / name / f"{i}.png")
    return tmp_path / "images"


def encoder_and_vae(state_dict):
    return {name: tensor for name, tensor in state_dict.items() if name.startswith("lmd.")}


def test_finetunes_a_checkpoint_on_an_image_folder(example, tiny_checkpoint, image_folder, tmp_path):
    output_dir = tmp_path / "run"
    metrics = example.main([
        "--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
        "--validation_dir", str(image_folder / "validation"), "--output_dir", str(output_dir),
        "--do_train", "--do_eval", "--max_steps", "3", "--per_device_train_batch_size", "6",
        "--learning_rate", "1e-2", *QUIET,
    ])
    assert metrics["train_samples"] == 18 and metrics["eval_samples"] == 6
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and np.isfinite(metrics["train_loss"])
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((output_dir / "all_results.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]

    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}  # the class folders, in order
    assert config["architectures"] == ["LMDForImageClassification"]
    # The checkpoint's reconstruction pipeline is not this classifier's: `pipeline(model=...)` must not pick it.
    assert json.loads((tiny_checkpoint / "config.json").read_text())["custom_pipelines"]
    assert "custom_pipelines" not in config
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "LMDImageProcessor" and processor["size"]["height"] == 32
    card = yaml.safe_load((output_dir / "README.md").read_text().split("---")[1])
    assert "image-classification" in card["tags"]

    # The VAE stays frozen; the pre-trained encoder is fine-tuned.
    before = encoder_and_vae(load_file(tiny_checkpoint / "model.safetensors"))
    after = load_file(output_dir / "model.safetensors")
    vae = [name for name in before if name.startswith("lmd.vae.")]
    assert vae and all(torch.equal(after[name], before[name]) for name in vae)
    assert not torch.equal(after["lmd.embeddings.patch_embeddings.weight"],
                           before["lmd.embeddings.patch_embeddings.weight"])

    # The saved folder is a working image-classification pipeline, and it scores the validation images as the
    # final evaluation did (same resize + centre crop, from the saved preprocessor_config.json).
    classify = pipeline("image-classification", model=str(output_dir))
    correct = 0
    for label, name in enumerate(CLASSES):
        for path in sorted((image_folder / "validation" / name).iterdir()):
            top = classify(Image.open(path))[0]["label"]
            assert top in CLASSES
            correct += top == name
    assert correct / 6 == pytest.approx(metrics["eval_accuracy"])


def test_step_zero_is_the_checkpoint_and_a_validation_split_is_carved_off(example, tiny_checkpoint, image_folder,
                                                                           tmp_path):
    # Learning rate 0: the saved model is the one fine-tuning starts from.
    metrics = example.main([
        "--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
        "--train_val_split", "0.25", "--output_dir", str(tmp_path / "run"), "--do_train", "--do_eval",
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "0", "--augment", "false",
        *QUIET,
    ])
    assert metrics["train_samples"] == 13 and metrics["eval_samples"] == 5  # 25 % of 18, rounded up, held out
    saved = load_file(tmp_path / "run" / "model.safetensors")
    checkpoint = encoder_and_vae(load_file(tiny_checkpoint / "model.safetensors"))
    assert encoder_and_vae(saved).keys() == checkpoint.keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in checkpoint.items())  # VAE and encoder loaded
    assert saved["classifier.weight"].shape == (3, 32)  # only the head is new


def test_parses_the_run_image_classification_flags(example, tmp_path):
    flags = {"dataset_name": "beans", "image_column_name": "img", "label_column_name": "labels",
             "output_dir": str(tmp_path / "out"), "push_to_hub": True, "hub_model_id": "someone/lmd-beans",
             "use_cpu": True, "do_train": True, "max_steps": 5, "learning_rate": 1e-3}
    argv = ["--dataset_name", "beans", "--image_column_name", "img", "--label_column_name", "labels",
            "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "someone/lmd-beans",
            "--use_cpu", "--do_train", "--max_steps", "5", "--learning_rate", "1e-3"]
    (tmp_path / "args.json").write_text(json.dumps(flags))
    for parsed in (example.parse_arguments(argv), example.parse_arguments([str(tmp_path / "args.json")])):
        model_args, data_args, training_args = parsed
        assert model_args.model_name_or_path == DEMO_LMD  # the shipped checkpoint by default
        assert (data_args.dataset_name, data_args.image_column_name, data_args.label_column_name,
                data_args.train_val_split) == ("beans", "img", "labels", 0.15)
        assert training_args.push_to_hub and training_args.hub_model_id == "someone/lmd-beans"
        assert training_args.use_cpu and training_args.device.type == "cpu"
        assert training_args.do_train and not training_args.do_eval and training_args.max_steps == 5


def test_push_to_hub_uploads_a_working_classifier(tiny_checkpoint, image_folder, tmp_path):
    repo_id = "tester/lmd-tiny-classifier"
    with HubServer(max_lifetime_s=120) as hub:
        run_python(
            [SCRIPT, "--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
             "--validation_dir", str(image_folder / "validation"), "--output_dir", str(tmp_path / "run"),
             "--do_train", "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "6", *QUIET,
             "--push_to_hub", "--hub_model_id", repo_id],
            env=hub_env(hub.endpoint, str(tmp_path / "hf-home")), cwd=str(tmp_path), timeout=120,
        )
        assert not hub.server.errors and not hub.server.unhandled, (hub.server.errors, hub.server.unhandled)
        files = hub.files(repo_id)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
            "modeling_lmd.py"} <= set(files)
    assert files["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"])["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    card = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert "image-classification" in card["tags"] and "base_model" not in card  # a local checkpoint: no Hub link


def test_digits_image_folder(tmp_path):
    pytest.importorskip("sklearn")
    from modeling_lmd.demo_data import build_digits_folder, digits_dataset

    meta = build_digits_folder(str(tmp_path / "digits"))
    assert meta["counts"] == {"train": 1347, "validation": 450}
    splits = digits_dataset()
    for split, source in (("train", "train"), ("validation", "test")):
        folder = tmp_path / "digits" / split
        assert sorted(os.listdir(folder)) == [str(label) for label in range(10)]
        rows = {int(path.stem): int(path.parent.name) for path in folder.glob("*/*.png")}
        assert sorted(rows) == list(range(meta["counts"][split]))  # file name = row of the split: stable
        assert [rows[row] for row in range(len(rows))] == list(splits[source]["label"])
        for row in (0, 7, len(rows) - 1):  # the pixels as they are: 8x8 grayscale
            image = Image.open(folder / str(rows[row]) / f"{row:04d}.png")
            assert image.mode == "L" and image.size == (8, 8)
            assert np.array_equal(np.asarray(image), np.asarray(splits[source][row]["image"]))

    def contents():
        return {str(path.relative_to(tmp_path)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).digest())
                for path in sorted((tmp_path / "digits").rglob("*.png"))}

    first = contents()
    assert build_digits_folder(str(tmp_path / "digits")) == meta and contents() == first  # nothing rewritten
    (tmp_path / "digits" / "validation" / "3" / sorted(os.listdir(tmp_path / "digits" / "validation" / "3"))[0]).unlink()
    build_digits_folder(str(tmp_path / "digits"))  # incomplete: written again, byte for byte the same
    assert {name: digest for name, (_, digest) in contents().items()} == {
        name: digest for name, (_, digest) in first.items()}


def test_unreadable_images_and_non_utf8_names_are_skipped_and_named(example, tiny_checkpoint, image_folder, tmp_path,
                                                                     caplog):
    truncated = image_folder / "train" / "cat" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    bad_name = os.path.join(os.fsencode(image_folder / "train" / "dog"), b"caf\xe9.png")
    with open(bad_name, "wb") as handle:
        handle.write((image_folder / "train" / "dog" / "1.png").read_bytes())
    with caplog.at_level("WARNING"):
        metrics = example.main([
            "--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
            "--validation_dir", str(image_folder / "validation"), "--output_dir", str(tmp_path / "run"),
            "--do_train", "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "6", *QUIET,
        ])
    assert metrics["train_samples"] == 17  # 18 good images, one cut short; the odd name left out
    assert "0.png" in caplog.text and "caf\\xe9.png" in caplog.text


def test_a_folder_without_class_subfolders_is_refused_with_what_to_do(example, tiny_checkpoint, tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "flat" / split).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / "flat" / split / f"{i}.png")
    with pytest.raises(ValueError, match=r"no class: an image folder needs one subfolder per class"):
        example.main(["--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(tmp_path / "flat" / "train"),
                      "--validation_dir", str(tmp_path / "flat" / "validation"), "--output_dir", str(tmp_path / "run"),
                      "--do_train", "--max_steps", "1", *QUIET])


def test_the_card_of_a_classifier_from_a_local_checkpoint_names_it(example, tiny_checkpoint, image_folder, tmp_path):
    example.main(["--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
                  "--validation_dir", str(image_folder / "validation"), "--output_dir", str(tmp_path / "run"),
                  "--do_train", "--max_steps", "1", *QUIET])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "trained from scratch" not in card and f"local LMD checkpoint `{tiny_checkpoint}`" in card


def test_the_readme_classifier_line_runs_as_written(example, tiny_checkpoint, image_folder, tmp_path):
    example.main(["--model_name_or_path", str(tiny_checkpoint), "--train_dir", str(image_folder / "train"),
                  "--validation_dir", str(image_folder / "validation"), "--output_dir", str(tmp_path / "runs" /
                  "digits-clf"), "--do_train", "--max_steps", "1", *QUIET])
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    line = re.search(r'`(pipeline\("image-classification", model="runs/digits-clf"[^`]*)`', readme).group(1)
    result = run_python(["-c", "from PIL import Image\nfrom transformers import pipeline\n"
                         f"classify = {line}\nprint(classify(Image.new('RGB', (20, 20)))[0]['label'])"], cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] in CLASSES


def test_lora_fine_tunes_the_shipped_checkpoint_and_its_adapter_loads_back(example, image_folder, tmp_path, caplog):
    from peft import PeftModel

    from modeling_lmd import LMDForImageClassification

    output_dir = tmp_path / "lora"
    with caplog.at_level("WARNING"):
        example.main(["--model_name_or_path", DEMO_LMD, "--train_dir", str(image_folder / "train"),
                      "--validation_dir", str(image_folder / "validation"), "--output_dir", str(output_dir),
                      "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "6",
                      "--learning_rate", "1e-2", "--lora_r", "8", *QUIET])
    counts = re.search(r"Trainable parameters: ([\d,]+) of ([\d,]+)", caplog.text)
    trainable, total = (int(group.replace(",", "")) for group in counts.groups())
    assert 0 < trainable < 0.1 * total  # the adapter and the head, not the encoder
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"query", "value"}
    weights = load_file(output_dir / "adapter_model.safetensors")
    assert any(".attention.attention.query.lora_A" in name for name in weights)
    assert not any(".vae." in name for name in weights)

    base = LMDForImageClassification.from_pretrained(DEMO_LMD, num_labels=3)
    loaded = PeftModel.from_pretrained(base, output_dir).eval()
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    logits = loaded(pixel_values=image).logits
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(pixel_values=image).logits, logits, rtol=0, atol=1e-5)
    assert not torch.equal(logits, LMDForImageClassification.from_pretrained(DEMO_LMD, num_labels=3)(
        pixel_values=image).logits)


# --- an output folder belongs to one run, as in train_lmd.py ---------------------------------------------------------


def finetune_args(checkpoint, image_folder, output_dir, *extra):
    return ["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folder / "train"),
            "--validation_dir", str(image_folder / "validation"), "--output_dir", str(output_dir), "--do_train",
            "--max_steps", "1", "--per_device_train_batch_size", "6", *QUIET, *extra]


def test_a_rerun_into_a_used_folder_is_refused_and_overwrite_leaves_no_old_adapter(example, tiny_checkpoint,
                                                                                    image_folder, tmp_path):
    run = tmp_path / "run"
    example.main(finetune_args(tiny_checkpoint, image_folder, run, "--lora_r", "4"))
    adapter = {name: (run / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}
    with pytest.raises(ValueError, match=r"already exists and is not empty .*--overwrite_output_dir"):
        example.main(finetune_args(tiny_checkpoint, image_folder, run))
    assert {name: (run / name).read_bytes() for name in adapter} == adapter and not (run / "model.safetensors").exists()

    example.main(finetune_args(tiny_checkpoint, image_folder, run, "--overwrite_output_dir"))
    assert not (run / "adapter_config.json").exists() and not (run / "adapter_model.safetensors").exists()
    assert json.loads((run / "config.json").read_text())["architectures"] == ["LMDForImageClassification"]
    assert load_file(run / "model.safetensors")["classifier.weight"].shape == (3, 32)


def test_a_second_live_run_on_the_folder_is_refused_before_anything_is_read(example, tiny_checkpoint, image_folder,
                                                                           tmp_path):
    from modeling_lmd.run_folder import claim_output_dir, run_files

    lock = claim_output_dir(str(tmp_path / "run"), resuming=False, overwrite=False)
    try:
        with pytest.raises(RuntimeError, match=rf"Another training run \(pid {os.getpid()} on .*\) is writing to"):
            example.main(finetune_args(tiny_checkpoint, image_folder, tmp_path / "run"))
    finally:
        lock.close()
    assert run_files(str(tmp_path / "run")) == []


def test_resume_last_continues_a_lora_run_from_its_newest_checkpoint(example, tiny_checkpoint, image_folder,
                                                                    tmp_path):
    run, saving = tmp_path / "run", ("--lora_r", "4", "--save_strategy", "steps", "--save_steps", "1")
    example.main(finetune_args(tiny_checkpoint, image_folder, run, *saving, "--max_steps", "2"))
    first_steps = json.loads((run / "trainer_state.json").read_text())["log_history"]
    metrics = example.main(finetune_args(tiny_checkpoint, image_folder, run, *saving, "--max_steps", "3",
                                         "--resume_from_checkpoint", "last"))
    assert metrics["train_samples"] == 18
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # The resumed run went on from step 2: its history starts with the first run's two steps.
    assert [entry for entry in state["log_history"] if entry.get("step", 0) <= 2 and "loss" in entry] == [
        entry for entry in first_steps if "loss" in entry]


def test_a_lora_target_that_names_no_module_is_refused_before_any_step(example, tiny_checkpoint, image_folder,
                                                                       tmp_path):
    from modeling_lmd.run_folder import run_files

    with pytest.raises(ValueError, match=r"--lora_target_modules: 'valu' names no module of the model\. .*the "
                                         r"encoder's linear layers are dense, fc1, fc2, key, query, value\."):
        example.main(finetune_args(tiny_checkpoint, image_folder, tmp_path / "run", "--lora_r", "4",
                                   "--lora_target_modules", "query,valu"))
    assert run_files(str(tmp_path / "run")) == []


def test_bf16_fine_tuning_runs_on_the_cpu(example, tiny_checkpoint, image_folder, tmp_path):
    metrics = example.main(finetune_args(tiny_checkpoint, image_folder, tmp_path / "run", "--bf16", "--do_eval",
                                         "--max_steps", "2"))
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["eval_accuracy"] <= 1

"""Push with `train_lmd.py --push_to_hub` to a local Hub-compatible server, load back with remote code.

No internet: `tests/hub_server.py` serves the Hub API on 127.0.0.1 and the real `huggingface_hub` client talks to
it through `HF_ENDPOINT`. The client reads `HF_ENDPOINT` when it is imported, so the push and the load each run
in a fresh subprocess with that environment (the load also proves the checkpoint works from remote code alone).
"""

import io
import os

import numpy as np
import torch
import yaml
from diffusers import AutoencoderKL
from PIL import Image

from hub_server import HubServer
from conftest import REPO_ROOT
from subprocess_helpers import FLOAT_ATOL, hub_env, run_python
from modeling_lmd import LMDForPreTraining
from modeling_lmd.configuration_lmd import TINY_KL_F4_VAE_CONFIG


REPO_ID = "tester/lmd-tiny-roundtrip"

LOAD_SCRIPT = """
import sys, torch
from transformers import AutoModelForPreTraining
model = AutoModelForPreTraining.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(pixel_values=inputs["pixel_values"], noise=inputs["noise"])
torch.save({"loss": out.loss, "logits": out.logits, "mask": out.mask, "module": type(model).__module__,
            "mask_ratio": model.config.mask_ratio}, sys.argv[3])
"""


def test_push_then_load_with_remote_code(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 2)):
        (tmp_path / "images" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "images" / split / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG).save_pretrained(tmp_path / "vae")
    output_dir = tmp_path / "run"

    with HubServer(max_lifetime_s=240) as hub:
        run_python(
            [os.path.join(REPO_ROOT, "train_lmd.py"),
             "--train_dir", str(tmp_path / "images" / "train"),
             "--validation_dir", str(tmp_path / "images" / "validation"),
             "--vae_name_or_path", str(tmp_path / "vae"),
             "--model_preset", "lmd-tiny", "--mask_schedule", "uniform",
             "--output_dir", str(output_dir), "--max_steps", "3", "--per_device_train_batch_size", "2",
             "--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
             "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "3",
             "--log_level", "warning", "--dataset_tag", "toy-images",
             "--push_to_hub", "--hub_model_id", REPO_ID],
            env=hub_env(hub.endpoint, str(tmp_path / "hf-home-push")), cwd=str(tmp_path), timeout=240,
        )
        assert not hub.server.errors and not hub.server.unhandled, (hub.server.errors, hub.server.unhandled)

        files = hub.files(REPO_ID)
        for name in ("config.json", "model.safetensors", "modeling_lmd.py", "configuration_lmd.py",
                     "mask_schedulers.py", "preprocessor_config.json", "README.md", "reconstructions.png",
                     "training_curves.png", "metrics.json"):
            assert name in files, (name, sorted(files))
        assert not any(name.startswith("checkpoint-") for name in files)
        card = files["README.md"].decode()
        metadata = yaml.safe_load(card.split("---")[1])
        assert metadata["library_name"] == "transformers"
        assert set(metadata["tags"]) >= {"lmd", "masked-image-modeling", "image-to-image", "arxiv:2312.07971"}
        assert "base_model" not in metadata  # the VAE came from a local folder, not a Hub id
        for image in ("reconstructions.png", "training_curves.png"):
            assert f"]({image})" in card and Image.open(io.BytesIO(files[image])).size[0] > 100
        assert metadata["datasets"] == ["toy-images"] and "pipeline_tag" not in metadata
        assert REPO_ID in card and "uniform" in card

        # Fresh process, fresh cache, outside the repository: load from the server with remote code.
        local = LMDForPreTraining.from_pretrained(output_dir).eval()
        generator = torch.Generator().manual_seed(0)
        inputs = {"pixel_values": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
                  "noise": torch.rand(2, local.config.num_patches, generator=generator)}
        torch.save(inputs, tmp_path / "inputs.pt")
        run_python(
            ["-c", LOAD_SCRIPT, REPO_ID, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
            env=hub_env(hub.endpoint, str(tmp_path / "hf-home-load")), cwd=str(tmp_path), timeout=240,
        )
        assert any(path.startswith(f"/{REPO_ID}/resolve/") for _, path in hub.server.requests)

    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = local(pixel_values=inputs["pixel_values"], noise=inputs["noise"])
    assert remote["module"].startswith("transformers_modules")
    assert torch.equal(remote["mask"], expected.mask)
    # Masks are exact; floats from another process may differ in summation order (see subprocess_helpers).
    torch.testing.assert_close(remote["logits"], expected.logits, rtol=0, atol=FLOAT_ATOL)
    torch.testing.assert_close(remote["loss"], expected.loss, rtol=0, atol=FLOAT_ATOL)
    assert remote["mask_ratio"] == local.config.mask_ratio

"""Shared fixtures: tiny configs and checkpoints built locally; nothing is downloaded."""

import os

# Tests never reach the Hub; anything that tries fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image  # noqa: E402

from modeling_lmd import LMDConfig, LMDForPreTraining, LMDReconstructionPipeline  # noqa: E402
from modeling_lmd.configuration_lmd import TINY_KL_F4_VAE_CONFIG  # noqa: E402


#: The repository: train_lmd.py, examples/ and benchmarks/ live there.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path: str):
    """A script of the repository (`examples/x.py`, `app.py`, ...) as a module, to call its `main(argv)` or parser
    in-process. Registered in `sys.modules` (dataclasses look their module up there)."""
    name = "script_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: An 8x (four-level) VAE as small as the tests' 4x one: Stable Diffusion's factor at a few kilobytes.
TINY_KL_F8_VAE_CONFIG = {**TINY_KL_F4_VAE_CONFIG, "block_out_channels": [8, 16, 16, 16],
                         "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}

# Tiny test models are dominated by per-op overhead: one thread is faster, and leaves the other core free.
torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> LMDConfig:
    """32 px images, KL-f4 VAE (8 x 8 latents), patch 2 -> 16 tokens."""
    return LMDConfig.from_preset("lmd-tiny")


@pytest.fixture
def tiny_model(tiny_config) -> LMDForPreTraining:
    """A randomly initialised tiny pre-training model (VAE + encoder + decoder)."""
    torch.manual_seed(0)
    return LMDForPreTraining(tiny_config)


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    """A saved tiny LMD pre-training checkpoint folder, saved through its pipeline as `train_lmd.py` saves one:
    config, safetensors, image processor, the pipeline's `custom_pipelines` entry, and all the remote code."""
    path = tmp_path / "tiny-lmd"
    LMDReconstructionPipeline(model=tiny_model, device="cpu").save_pretrained(path)
    return path


def write_image_folder(root, counts=(("train", 8), ("validation", 3)), seed=0):
    """Random images of mixed modes (RGB, L, RGBA, P) and sizes, one folder per split."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(count):
            image = Image.fromarray((rng.random((36 + 4 * (i % 3), 44, 3)) * 255).astype(np.uint8))
            image = image.convert(("RGB", "L", "RGBA", "P")[i % 4])
            image.save(os.path.join(root, split, f"img{i}.png"))
    return root


def random_images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Pixels in [-1, 1], shape (batch, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def train_lmd():
    """The `train_lmd.py` script as a module (its `main(argv)` runs a whole job in-process)."""
    sys.path.insert(0, REPO_ROOT)
    try:
        yield importlib.import_module("train_lmd")
    finally:
        sys.path.remove(REPO_ROOT)


@pytest.fixture
def vae_folder(tmp_path) -> str:
    """A saved tiny diffusers AutoencoderKL (random weights, seeded): `--vae_name_or_path` for the scripts."""
    torch.manual_seed(0)
    AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG).save_pretrained(tmp_path / "vae")
    return str(tmp_path / "vae")

"""The README and the shipped cards as a user meets them: every Python block runs (pushes go to the local Hub
server), every shell command's script accepts the flags it is shown with, and the one-GPU recipe runs at CPU size."""

import argparse
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import HfArgumentParser

from conftest import REPO_ROOT, TINY_KL_F8_VAE_CONFIG, write_image_folder
from hub_server import HubServer
from subprocess_helpers import PRELUDE, hub_env, run_python

from modeling_lmd.pretrained import DEMO_LMD, DEMO_VAE


README = Path(REPO_ROOT) / "README.md"
DOCUMENTS = [README, Path(DEMO_LMD) / "README.md", Path(DEMO_VAE) / "README.md", Path(REPO_ROOT) / "docs" / "RESULTS.md"]


def fenced_blocks(path: Path | str, language: str) -> list[str]:
    """The fenced blocks of a document (a path, or its text)."""
    text = path.read_text() if isinstance(path, Path) else path
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(path: Path | str) -> list[list[str]]:
    """Every command of the document's bash blocks, as argv lists (continuations joined, comments dropped)."""
    commands = []
    for block in fenced_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [shlex.split(part) for part in line.split("&&") if part.strip()]
    return commands


def script_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """`(script path or "-m module", its arguments)` of a command that runs a Python entry point of this project
    (`python x.py`, `python -m ...`, `accelerate launch ... x.py`, `torchrun ... x.py`); `None` for anything else."""
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and argv[2].startswith("modeling_lmd"):
        return f"-m {argv[2]}", argv[3:]
    if argv[0] in ("python", "python3", "accelerate", "torchrun"):
        for index, word in enumerate(argv):
            if word.endswith(".py"):
                return word, argv[index + 1:]
    return None


class Parsed(Exception):
    """Raised right after a script's command line parsed: nothing of the script runs past its parser."""


def parse_only(target: str, args: list[str], monkeypatch) -> None:
    """Run the entry point up to its argument parser (argparse or transformers' HfArgumentParser), which must accept
    `args`; an unknown flag or a bad value fails the parse (SystemExit or ValueError)."""
    def stop_after(method):
        def parse(self, *a, **k):
            method(self, *a, **k)
            raise Parsed
        return parse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after(argparse.ArgumentParser.parse_args))
    monkeypatch.setattr(HfArgumentParser, "parse_args_into_dataclasses",
                        stop_after(HfArgumentParser.parse_args_into_dataclasses))
    monkeypatch.setattr(sys, "argv", [target, *args])
    with pytest.raises(Parsed):
        if target.startswith("-m "):
            runpy.run_module(target[3:], run_name="__main__")
        else:
            script = Path(REPO_ROOT) / target
            monkeypatch.syspath_prepend(str(script.parent))  # benchmarks import their sibling `common`
            runpy.run_path(str(script), run_name="__main__")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_shell_command_accepts_its_flags(document, monkeypatch):
    commands = [found for argv in shell_commands(document) if (found := script_of(argv))]
    assert commands
    for target, args in commands:
        if "--bf16" in args and not torch.cuda.is_available():
            args = [*args, "--use_cpu", "true"]  # TrainingArguments refuses bf16 without a GPU unless told the CPU
        with monkeypatch.context() as patch:
            parse_only(target, args, patch)


def test_every_python_block_runs(tmp_path):
    """Each block in a fresh process and folder, as a user pastes it; the Hub is the local test server."""
    blocks = [(path, code) for path in DOCUMENTS[:3] for code in fenced_blocks(path, "python")]
    assert len(blocks) >= 4
    with HubServer(max_lifetime_s=900) as hub:
        env = hub_env(hub.endpoint, str(tmp_path / "hf-home"))
        for number, (path, code) in enumerate(blocks):
            folder = tmp_path / f"block-{number}"
            folder.mkdir()
            run_python(["-c", code], cwd=folder, env=env, timeout=300)
        assert (tmp_path / "block-0" / "inpainted.png").is_file()  # the quickstart's output

        # What "Share on the Hub" pushed: everything remote code needs, private where asked.
        files = hub.files("your-name/lmd-demo")
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "pipeline_lmd.py",
                "reconstruction_lmd.py", "modeling_lmd.py", "vae_lmd.py"} <= set(files)
        assert "lmd-reconstruction" in json.loads(files["config.json"])["custom_pipelines"]
        assert hub.is_private("your-name/lmd-demo") and "modeling_lmd.py" in hub.files("your-name/lmd-demo-model")
        # ... and anyone loads it without this package.
        run_python(["-c", PRELUDE + (
            "from transformers import pipeline\n"
            "pipe = pipeline('lmd-reconstruction', model='your-name/lmd-demo', trust_remote_code=True)\n"
            "assert type(pipe).__module__.startswith('transformers_modules')\n"
            f"assert pipe({str(Path(DEMO_LMD).parent / 'cat.jpg')!r}, seed=0)['reconstruction'].size == (451, 300)\n"
        )], cwd=tmp_path, env=env, timeout=300)


def test_the_one_gpu_recipe_runs_at_cpu_size(train_lmd, tmp_path):
    """The README's one-GPU command with a tiny 8x VAE, lmd-tiny and a few steps on the CPU: every other flag as
    shown."""
    command = next(argv for argv in shell_commands(README) if "--train_dir" in argv and "lmd-base" in argv)
    _, args = script_of(command)
    torch.manual_seed(0)
    AutoencoderKL.from_config(TINY_KL_F8_VAE_CONFIG).save_pretrained(tmp_path / "vae-f8")
    images = write_image_folder(str(tmp_path / "images"))
    cpu_sized = {"--train_dir": f"{images}/train", "--validation_dir": f"{images}/validation",
                 "--vae_name_or_path": str(tmp_path / "vae-f8"), "--model_preset": "lmd-tiny", "--image_size": "64",
                 "--per_device_train_batch_size": "2", "--max_steps": "2", "--eval_steps": "2", "--save_steps": "2",
                 "--dataloader_num_workers": "0", "--output_dir": str(tmp_path / "run")}
    assert set(cpu_sized) <= set(args)
    args = [cpu_sized.get(previous, word) for previous, word in zip([None, *args], args)]
    args.remove("--bf16")  # bf16 is for GPUs
    train_lmd.main([*args, "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
                    "--latent_cache_dir", str(tmp_path / "cache")])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["vae_config"]["block_out_channels"] == TINY_KL_F8_VAE_CONFIG["block_out_channels"]
    assert (saved["image_size"], saved["patch_size"]) == (64, 2)  # 8 x 8 latents, 16 tokens
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["cache_latents"] and "eval_masked_psnr" in metrics
    assert (tmp_path / "run" / "pipeline_lmd.py").is_file() and (tmp_path / "run" / "checkpoint-2").is_dir()


def test_the_readme_cpu_demo_is_what_the_main_job_runs():
    """The README's "CPU demo" train command is `examples/run_demo.sh`'s, with the script's defaults filled in."""
    script = (Path(REPO_ROOT) / "examples" / "run_demo.sh").read_text()
    defaults = dict(re.findall(r'^(\w+)="\$\{\w+:-([^}]*)\}"', script, flags=re.M))
    invocation = re.search(r"^python train_lmd\.py.*?\"\$@\"", script, flags=re.M | re.S).group(0)
    invocation = re.sub(r"\$(\w+)", lambda match: defaults.get(match.group(1), match.group(0)), invocation)
    expected = shlex.split(invocation.replace("\\\n", " ").replace('"$@"', ""))
    demo = README.read_text().split("**CPU demo**", 1)[1].split("```\n\n", 1)[0] + "```\n"
    shown = next(command for command in shell_commands(demo) if command[:2] == ["python", "train_lmd.py"])
    assert shown == [arg for arg in expected if arg]

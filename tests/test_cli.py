"""The command lines users meet: example defaults that never write into the installed package, and `--device`."""

import os

import pytest
from conftest import load_script

import modeling_lmd

PACKAGE = os.path.dirname(os.path.abspath(modeling_lmd.__file__))


@pytest.mark.parametrize("script", ["examples/train_vae.py", "examples/eval_vae.py"])
def test_default_outputs_are_under_runs_never_in_the_package(script):
    args = load_script(script).parse_args([])
    output = os.path.abspath(args.output_dir)
    assert args.output_dir.startswith("runs/") and not output.startswith(PACKAGE)


@pytest.mark.parametrize("script", ["examples/reconstruct.py", "examples/inpaint.py", "examples/features.py",
                                    "examples/evaluate_reconstruction.py", "examples/eval_vae.py",
                                    "examples/train_vae.py", "app.py"])
def test_every_inference_example_takes_device(script):
    required = {"examples/reconstruct.py": ["--images", "a.png"], "examples/inpaint.py": ["--image", "a.png", "--box",
                "0", "0", "1", "1"], "examples/features.py": ["--images", "a.png"],
                "examples/evaluate_reconstruction.py": ["--data_dir", "d"]}.get(script, [])
    args = load_script(script).parse_args([*required, "--device", "cpu"])
    assert args.device == "cpu"

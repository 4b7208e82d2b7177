"""The shipped checkpoint (modeling_lmd/pretrained/demo-lmd) as a Hub download would be: its code files are real
files, equal to the package's modules, and a plain copy of the folder loads with `trust_remote_code=True` alone."""

import json
import shutil
import textwrap
from pathlib import Path

import torch
from subprocess_helpers import FLOAT_ATOL, PRELUDE, child_env, run_python

import modeling_lmd
from modeling_lmd import LMDForPreTraining
from modeling_lmd.pretrained import DEMO_LMD

SHIPPED = Path(DEMO_LMD)
PACKAGE = Path(modeling_lmd.__file__).parent
#: Rewrites the shipped code files from the package, as save_pretrained writes them (the script's `ship` step).
REFRESH = "bash examples/train_shipped_checkpoint.sh ship"


def test_the_shipped_code_files_are_the_package_modules(tiny_checkpoint):
    """So that a change to the package cannot ship with stale checkpoint code: the same files as save_pretrained
    writes next to a checkpoint (`tiny_checkpoint` is saved as train_lmd.py saves one), each a regular file (a link
    breaks in a copy of the folder) with the package module's bytes."""
    expected = sorted(path.name for path in Path(tiny_checkpoint).glob("*.py"))
    shipped = sorted(path.name for path in SHIPPED.glob("*.py"))
    assert shipped == expected, (f"{SHIPPED} has the code files {shipped}, save_pretrained writes {expected}: "
                                 f"run `{REFRESH}`")
    links = [name for name in shipped if (SHIPPED / name).is_symlink()]
    assert not links, f"{links} in {SHIPPED} are links, not files: run `{REFRESH}`"
    stale = [name for name in shipped if (SHIPPED / name).read_bytes() != (PACKAGE / name).read_bytes()]
    assert not stale, f"{stale} in {SHIPPED} differ from the package's modules: run `{REFRESH}`"


def test_a_copy_of_the_folder_loads_alone_and_gives_the_package_logits(tmp_path):
    """`cp -r` of the folder (links copied as links, as cp does) to somewhere else, loaded by the Auto class that
    config.json's auto_map names, in a process where the package cannot be imported and with its own modules cache
    (nothing cached by another test is reused): the same logits as the package's class, for a fixed input and noise."""
    copy = tmp_path / "elsewhere" / "demo-lmd"
    shutil.copytree(SHIPPED, copy, symlinks=True)
    auto_map = json.loads((copy / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForPreTraining"] == "modeling_lmd.LMDForPreTraining"

    model = LMDForPreTraining.from_pretrained(SHIPPED)
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    inputs = {"pixel_values": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
              "noise": torch.rand(2, model.config.num_patches, generator=generator)}
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs)

    modules = tmp_path / "modules"
    script = f"""
    import sys
    from pathlib import Path
    import torch
    from transformers import AutoModelForPreTraining
    model = AutoModelForPreTraining.from_pretrained({str(copy)!r}, trust_remote_code=True)
    source = Path(sys.modules[type(model).__module__].__file__).resolve()
    assert source.is_relative_to(Path({str(modules)!r}).resolve()), source  # the copy's code, in this test's cache
    with torch.no_grad():
        out = model(**torch.load("inputs.pt"))
    torch.save({{"logits": out.logits, "mask": out.mask}}, "outputs.pt")
    """
    run_python(["-c", PRELUDE + textwrap.dedent(script)], cwd=tmp_path, env=child_env(HF_MODULES_CACHE=str(modules)))
    outputs = torch.load(tmp_path / "outputs.pt")
    assert torch.equal(outputs["mask"], expected.mask)
    torch.testing.assert_close(outputs["logits"], expected.logits, atol=FLOAT_ATOL, rtol=0)

"""Training runs that never overwrite work, resume only what they trained, and save checkpoints that load anywhere
(train_lmd.py in-process on tiny images; one fresh-process load of a checkpoint-N pipeline)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT, write_image_folder
from diffusers import AutoencoderKL
from subprocess_helpers import run_python, run_without_package

from modeling_lmd import LMDConfig, LMDForPreTraining
from modeling_lmd.configuration_lmd import TINY_KL_F4_VAE_CONFIG
from modeling_lmd.run_folder import LOCK_FILE, claim_output_dir, run_files


@pytest.fixture
def images(tmp_path):
    return write_image_folder(str(tmp_path / "images"))


def args_for(images, vae, output_dir, *extra, steps=4):
    return ["--train_dir", os.path.join(images, "train"), "--validation_dir", os.path.join(images, "validation"),
            "--vae_name_or_path", vae, "--model_preset", "lmd-tiny", "--output_dir", str(output_dir),
            "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
            "--save_steps", "2", "--dataloader_pin_memory", "false", "--disable_tqdm", "true",
            "--log_level", "warning", "--report_to", "none", "--seed", "0", "--num_reconstructions", "2", *extra]


def other_vae(tmp_path, name="other-vae", **config):
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config({**TINY_KL_F4_VAE_CONFIG, **config})
    vae.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


# --- an output folder belongs to one run --------------------------------------------------------------------


def test_a_rerun_into_a_used_folder_is_refused_and_keeps_the_first_runs_files(train_lmd, images, vae_folder,
                                                                               tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run))
    before = {name: (run / name).read_bytes() for name in ("model.safetensors", "metrics.json")}
    checkpoint_state = (run / "checkpoint-2" / "trainer_state.json").read_bytes()
    with pytest.raises(ValueError, match=r"already exists and is not empty .*--overwrite_output_dir"):
        train_lmd.main(args_for(images, vae_folder, run, "--learning_rate", "1e-2"))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert (run / "checkpoint-2" / "trainer_state.json").read_bytes() == checkpoint_state


def test_overwrite_output_dir_starts_anew_without_the_old_checkpoints(train_lmd, images, vae_folder, tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run, steps=6))
    assert (run / "checkpoint-6").is_dir()
    train_lmd.main(args_for(images, vae_folder, run, "--overwrite_output_dir", steps=4))
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4


def test_resume_last_in_a_folder_with_files_but_no_checkpoint_is_refused(train_lmd, images, vae_folder, tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run, "--save_strategy", "no"))
    with pytest.raises(ValueError, match="holds files but no complete checkpoint"):
        train_lmd.main(args_for(images, vae_folder, run, "--save_strategy", "no", "--resume_from_checkpoint", "last"))


def test_a_second_live_run_on_a_folder_is_refused_and_a_dead_runs_lock_is_taken_over(train_lmd, images, vae_folder,
                                                                                     tmp_path):
    run = tmp_path / "run"
    # Another process holds the folder: a child that takes the lock and waits.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from modeling_lmd.run_folder import claim_output_dir; "
         f"lock = claim_output_dir({str(run)!r}, resuming=False, overwrite=False); print('held', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"Another training run \(pid {holder.pid} on .*\) is writing to"):
            train_lmd.main(args_for(images, vae_folder, run))
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock file stays behind, and the next run takes it over.
    assert (run / LOCK_FILE).is_file()
    train_lmd.main(args_for(images, vae_folder, run))
    assert (run / "model.safetensors").is_file()


def test_claim_is_refused_in_process_while_held_and_free_once_released(tmp_path):
    lock = claim_output_dir(str(tmp_path / "run"), resuming=False, overwrite=False)
    with pytest.raises(RuntimeError, match="Another training run"):
        claim_output_dir(str(tmp_path / "run"), resuming=False, overwrite=False)
    lock.close()
    claim_output_dir(str(tmp_path / "run"), resuming=False, overwrite=False).close()


def test_overwrite_is_ignored_when_resuming_so_a_resume_keeps_every_file(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (run / "metrics.json").write_text("{}")
    with caplog.at_level("WARNING"):
        claim_output_dir(str(run), resuming=True, overwrite=True).close()
    assert run_files(str(run)) == ["checkpoint-2", "metrics.json"]
    assert (run / "checkpoint-2" / "trainer_state.json").read_text() == '{"global_step": 2}'
    assert f"--overwrite_output_dir is ignored: this run resumes, and a resume keeps what {run} holds" in caplog.text
    claim_output_dir(str(run), resuming=False, overwrite=True).close()  # not resuming: it starts anew
    assert run_files(str(run)) == []


# --- resume only what was trained -------------------------------------------------------------------------------


@pytest.mark.parametrize("change, expected", [
    (("--image_size", "64"), r"image_size: checkpoint 32, this run 64"),
    (("--config_overrides", "hidden_size=64"), r"architecture.hidden_size: checkpoint 32, this run 64"),
    (("--model_preset", "lmd-small", "--image_size", "32"), r"model_preset: checkpoint 'lmd-tiny', this run 'lmd-small'"),
    (("--cache_latents", "--latent_cache_dtype", "bfloat16"), r"latent_cache_dtype: checkpoint None, this run 'bfloat16'"),
])
def test_resuming_with_other_settings_is_refused_naming_each_difference(train_lmd, images, vae_folder, tmp_path,
                                                                        change, expected):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run))
    with pytest.raises(ValueError, match=r"Cannot resume .*checkpoint-4 with other settings(.|\n)*" + expected):
        train_lmd.main(args_for(images, vae_folder, run, "--resume_from_checkpoint", "last", *change,
                                "--latent_cache_dir", str(tmp_path / "cache")))


def test_resuming_with_another_vae_is_refused_before_any_latent_is_cached(train_lmd, images, vae_folder, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    train_lmd.main(args_for(images, vae_folder, run, "--cache_latents", "--latent_cache_dir", str(cache)))
    cached = sorted(os.listdir(cache))
    with pytest.raises(ValueError, match=r"vae_sha256: checkpoint '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        train_lmd.main(args_for(images, other_vae(tmp_path), run, "--cache_latents", "--latent_cache_dir",
                                str(cache), "--resume_from_checkpoint", "last"))
    assert sorted(os.listdir(cache)) == cached


# --- VAE by reference, pinned ------------------------------------------------------------------------------------


@pytest.fixture
def lean_checkpoint(tmp_path):
    """A checkpoint without its VAE, naming a local folder (as train_lmd --vae_in_checkpoint false records it)."""
    vae = other_vae(tmp_path, "referenced-vae")
    model = LMDForPreTraining.from_vae(vae, preset="lmd-tiny", vae_name_or_path=vae, vae_in_checkpoint=False)
    model.save_pretrained(tmp_path / "lean")
    return tmp_path / "lean", vae, model


def test_a_referenced_vae_whose_weights_changed_is_refused(lean_checkpoint, tmp_path):
    folder, vae_path, _ = lean_checkpoint
    torch.manual_seed(11)
    AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG).save_pretrained(vae_path)  # same config, other weights
    with pytest.raises(ValueError, match=r"has other weights than the one this checkpoint was trained with "
                                         r"\(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\).*vae_name_or_path="):
        LMDForPreTraining.from_pretrained(folder)


def test_a_referenced_vae_with_other_channels_is_refused_by_config_before_its_weights(lean_checkpoint):
    folder, vae_path, _ = lean_checkpoint
    AutoencoderKL.from_config({**TINY_KL_F4_VAE_CONFIG, "latent_channels": 8}).save_pretrained(vae_path)
    with pytest.raises(ValueError, match=r"is not the one this checkpoint was trained with \(latent_channels: "
                                         r"expected 4, found 8\)"):
        LMDForPreTraining.from_pretrained(folder)


def test_a_missing_referenced_vae_says_what_is_missing_and_how_to_fix_it(lean_checkpoint, tmp_path):
    folder, vae_path, model = lean_checkpoint
    os.rename(vae_path, tmp_path / "moved")
    with pytest.raises(OSError, match=r"(?s)saved without its VAE, which it loads from `.*referenced-vae`; that could not "
                                      r"be read .*Pass `vae_name_or_path=`"):
        LMDForPreTraining.from_pretrained(folder)
    # The fix the message names: the same VAE from where it is now.
    moved = LMDForPreTraining.from_pretrained(folder, vae_name_or_path=str(tmp_path / "moved"))
    assert torch.equal(moved.lmd.vae.decoder.conv_out.weight, model.lmd.vae.decoder.conv_out.weight)


def test_train_lmd_with_a_vae_folder_by_reference_pins_it(train_lmd, images, vae_folder, tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run, "--vae_in_checkpoint", "false", "--save_strategy", "no"))
    config = json.loads((run / "config.json").read_text())
    assert config["vae_name_or_path"] == os.path.abspath(vae_folder) and len(config["vae_sha256"]) == 64
    reloaded = LMDForPreTraining.from_pretrained(run)
    assert torch.equal(reloaded.lmd.vae.encoder.conv_in.weight,
                       AutoencoderKL.from_pretrained(vae_folder).encoder.conv_in.weight)


# --- every checkpoint stands alone --------------------------------------------------------------------------------


def test_a_checkpoint_loads_as_a_pipeline_in_a_fresh_process_without_the_package(train_lmd, images, vae_folder,
                                                                                  tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run))
    checkpoint = run / "checkpoint-2"
    assert json.loads((checkpoint / "config.json").read_text())["custom_pipelines"]["lmd-reconstruction"]
    run_without_package(f"""
        import numpy as np
        from transformers import pipeline
        pipe = pipeline("lmd-reconstruction", model={str(checkpoint)!r}, trust_remote_code=True)
        out = pipe(np.zeros((40, 30, 3), dtype=np.uint8), mask_ratio=0.5, seed=0)
        assert out["reconstruction"].size == (30, 40), out["reconstruction"].size
        print("ok")
        """, cwd=tmp_path)


def test_the_card_has_valid_metadata_and_a_usage_snippet_that_runs(train_lmd, images, vae_folder, tmp_path):
    run = tmp_path / "run"
    train_lmd.main(args_for(images, vae_folder, run, "--save_strategy", "no"))
    card = (run / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert "pipeline_tag" not in metadata and metadata["library_name"] == "transformers"
    assert "Results\" section" not in card and "README" not in card.split("## How LMD compares")[1].split("##")[0]
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", card, re.S).group(1)
    assert f'model="{run}"' in snippet
    write_image_folder(str(tmp_path / "photo"), counts=(("x", 1),))
    os.rename(tmp_path / "photo" / "x" / "img0.png", tmp_path / "photo.jpg")
    run_python(["-c", snippet], cwd=tmp_path)
    assert (tmp_path / "reconstruction.png").is_file()


# --- sensible defaults ------------------------------------------------------------------------------------------


def test_without_logging_steps_a_run_logs_about_fifty_points_and_draws_its_curves(train_lmd, images, vae_folder,
                                                                                   tmp_path):
    run = tmp_path / "run"
    args = [a for a in args_for(images, vae_folder, run, "--save_strategy", "no", steps=100)]
    train_lmd.main(args)
    state = json.loads((run / "trainer_state.json").read_text())
    assert len([entry for entry in state["log_history"] if "loss" in entry]) == 50
    assert (run / "training_curves.png").is_file()


def test_without_a_learning_rate_mae_base_rate_applies(train_lmd, images, vae_folder, tmp_path):
    _, _, training_args = train_lmd.parse_arguments(args_for(images, vae_folder, tmp_path / "run"))
    assert training_args.base_learning_rate == 1.5e-4
    _, _, given = train_lmd.parse_arguments(args_for(images, vae_folder, tmp_path / "run", "--learning_rate", "1e-3"))
    assert given.base_learning_rate is None and given.learning_rate == 1e-3


def test_zero_epochs_is_refused(train_lmd, images, vae_folder, tmp_path):
    args = args_for(images, vae_folder, tmp_path / "run")
    args[args.index("--max_steps") + 1] = "-1"
    with pytest.raises(ValueError, match="--num_train_epochs 0 would train nothing"):
        train_lmd.main([*args, "--num_train_epochs", "0"])
    assert not (tmp_path / "run").exists()


def test_a_model_built_around_a_random_vae_warns(monkeypatch):
    import modeling_lmd.modeling_lmd as modeling

    warnings = []
    # warning_once itself keeps each message to one per process (transformers' logger).
    monkeypatch.setattr(modeling.logger, "warning_once", warnings.append)
    model = LMDForPreTraining(LMDConfig.from_preset("lmd-tiny"))
    model(pixel_values=torch.zeros(1, 3, 32, 32))
    assert len(warnings) == 1 and "random weights" in warnings[0]
    pretrained = LMDForPreTraining.from_vae(AutoencoderKL.from_config(TINY_KL_F4_VAE_CONFIG), preset="lmd-tiny")
    pretrained(pixel_values=torch.zeros(1, 3, 32, 32))
    LMDForPreTraining.from_pretrained(_saved(pretrained, monkeypatch))(pixel_values=torch.zeros(1, 3, 32, 32))
    assert len(warnings) == 1


def _saved(model, monkeypatch) -> str:
    import tempfile

    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    return folder

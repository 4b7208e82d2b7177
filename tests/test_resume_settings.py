"""A resume keeps every setting that changes what the run learns (`modeling_lmd.run_folder.check_resume_matches`):
properties of the check over random settings, without training, and two train_lmd.py resumes end to end."""

import copy
import json
import logging
import os
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modeling_lmd import LMDConfig, mask_ratio_at
from modeling_lmd.configuration_lmd import PRESETS, TINY_KL_F4_VAE_CONFIG
from modeling_lmd.run_folder import (
    ARCHITECTURE_FIELDS,
    CHANGEABLE_ON_RESUME,
    RECORDED_CONFIG_FIELDS,
    RUN_SETTINGS_FILE,
    check_resume_matches,
    run_settings,
)
from modeling_lmd.trainer import LMDTrainingArguments, training_settings

from conftest import write_image_folder
from test_run_folder import args_for

#: A valid other value for every recorded LMDConfig field (on top of lmd-tiny). A field LMDConfig gains must be
#: either given one here (and so be refused on resume) or named in UNRECORDED_CONFIG_FIELDS: a deliberate choice.
OTHER_CONFIG_VALUES = {
    "vae_type": "AutoencoderTiny", "vae_config": {**TINY_KL_F4_VAE_CONFIG, "scaling_factor": 0.5},
    "vae_sha256": "0" * 64, "image_size": 64, "patch_size": 4, "hidden_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 8, "intermediate_size": 128, "decoder_hidden_size": 64, "decoder_num_hidden_layers": 2,
    "decoder_num_attention_heads": 8, "decoder_intermediate_size": 128, "hidden_act": "relu", "layer_norm_eps": 1e-5,
    "qkv_bias": False, "initializer_range": 0.01, "norm_latent_loss": True, "visible_loss_weight": 0.5,
    "leak_free_training": True, "harmonic_fill": True, "mask_ratio": 0.5, "mask_schedule": "uniform",
    "mask_ratio_start": 0.3, "mask_ratio_end": 0.6,
}

#: Top-level settings an older checkpoint's `lmd_run.json` may lack (its config.json still names the model).
LATER_RECORDED = ("training", "data", "model_preset", "latent_cache_dtype")


def recorded_name(field: str) -> str:
    """The dotted name in `lmd_run.json` under which a change of `OTHER_CONFIG_VALUES[field]` shows."""
    if field in ARCHITECTURE_FIELDS:
        return f"architecture.{field}"
    return "vae_config.scaling_factor" if field == "vae_config" else field


def tiny_config(**changes) -> LMDConfig:
    return LMDConfig(**{**copy.deepcopy(PRESETS["lmd-tiny"]), **changes})


@pytest.fixture(scope="module")
def base(train_lmd, tmp_path_factory):
    """A checkpoint folder (config.json and lmd_run.json of lmd-tiny at batch 2, MAE's base lr, an image folder)
    and the settings it records."""
    folder = tmp_path_factory.mktemp("checkpoint")
    config = tiny_config()
    config.save_pretrained(folder)
    training = training_settings(LMDTrainingArguments(output_dir=str(folder), per_device_train_batch_size=2,
                                                      base_learning_rate=1.5e-4, max_steps=4, seed=0))
    data = train_lmd.data_settings(train_lmd.DataArguments(train_dir=str(folder), validation_dir=str(folder)))
    recorded = run_settings(config, training, data, model_preset="lmd-tiny", latent_cache_dtype=None)
    return str(folder), json.loads(json.dumps(recorded))


def record(folder: str, settings: dict) -> None:
    with open(os.path.join(folder, RUN_SETTINGS_FILE), "w", encoding="utf-8") as handle:
        json.dump(settings, handle)


def leaf_names(settings: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in settings.items():
        names += leaf_names(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return names


def other_value(value):
    """A value that differs from `value` however it is compared (0 and 0.0, or 1 and True, are the same setting)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "other"]
    return "other" if value is None else f"{value}-other"


def changed(settings: dict, name: str) -> dict:
    settings = copy.deepcopy(settings)
    *groups, key = name.split(".")
    inner = settings
    for group in groups:
        inner = inner[group]
    inner[key] = other_value(inner[key])
    return settings


def value_at(settings: dict, name: str):
    for key in name.split("."):
        settings = settings[key]
    return settings


class Warnings(logging.Handler):
    """The warnings `modeling_lmd.run_folder` logs inside a `with` block (caplog is per test, not per example),
    whatever level an earlier run set on the `modeling_lmd` loggers."""

    logger = logging.getLogger("modeling_lmd.run_folder")

    def __enter__(self):
        self.messages, self.level = [], self.logger.level
        self.logger.setLevel(logging.WARNING)
        self.logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc_info):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)

    def emit(self, record):
        self.messages.append(record.getMessage())


def refused_lines(error: pytest.ExceptionInfo) -> list[str]:
    return re.findall(r"^  - (.*)$", str(error.value), re.M)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_resume_is_refused_on_exactly_the_changed_settings_and_logs_the_changeable_ones(base, data):
    folder, recorded = base
    names = leaf_names(recorded)
    changes = data.draw(st.sets(st.sampled_from(names), max_size=5), label="changed")
    unrecorded = data.draw(st.sets(st.sampled_from(LATER_RECORDED)), label="not recorded by the checkpoint")
    requested = recorded
    for name in changes:
        requested = changed(requested, name)
    record(folder, {key: value for key, value in recorded.items() if key not in unrecorded})
    compared = {name for name in changes if name.split(".")[0] not in unrecorded}
    expected = sorted(f"{name}: checkpoint {value_at(recorded, name)!r}, this run {value_at(requested, name)!r}"
                      for name in compared - set(CHANGEABLE_ON_RESUME))

    with Warnings() as warnings:
        if expected:
            with pytest.raises(ValueError, match="Cannot resume .* with other settings") as error:
                check_resume_matches(folder, requested)
            assert sorted(refused_lines(error)) == expected
            return
        check_resume_matches(folder, requested)
    logged = [f"with {name} changed from {value_at(recorded, name)!r} to {value_at(requested, name)!r}: "
              f"{CHANGEABLE_ON_RESUME[name]}." for name in compared & set(CHANGEABLE_ON_RESUME)]
    assert len(warnings) == len(logged) + bool(unrecorded)
    assert all(any(line in warning for warning in warnings) for line in logged)
    if unrecorded:
        assert warnings[-1].endswith(f"does not record {', '.join(sorted(unrecorded))} (it was saved by an earlier "
                                     "version): this resume cannot check that they are the ones it was trained with.")


def test_every_recorded_config_field_is_exercised_below():
    assert set(OTHER_CONFIG_VALUES) == set(RECORDED_CONFIG_FIELDS)


@settings(max_examples=40, deadline=None)
@given(fields=st.sets(st.sampled_from(sorted(OTHER_CONFIG_VALUES)), min_size=1, max_size=6))
def test_every_model_loss_and_masking_field_that_changes_is_refused_by_name(base, fields):
    assume(not {"harmonic_fill", "norm_latent_loss"} <= fields)  # LMDConfig refuses the pair
    folder, recorded = base
    record(folder, recorded)
    config = tiny_config(**{name: OTHER_CONFIG_VALUES[name] for name in fields})
    requested = run_settings(config, recorded["training"], recorded["data"], "lmd-tiny", None)
    refused = fields - set(CHANGEABLE_ON_RESUME)
    with Warnings() as warnings:
        if not refused:
            check_resume_matches(folder, requested)
            assert warnings == [f"Resuming {folder} with mask_ratio changed from 0.75 to 0.5: "
                                f"{CHANGEABLE_ON_RESUME['mask_ratio']}."]
            return
        with pytest.raises(ValueError) as error:
            check_resume_matches(folder, requested)
    lines = refused_lines(error)
    assert sorted(line.split(":")[0] for line in lines) == sorted(recorded_name(name) for name in refused)


def test_an_older_checkpoint_resumes_and_its_config_json_still_answers_for_the_model(base):
    folder, recorded = base
    # What lmd_run.json held before it recorded the training, the data and every config field.
    record(folder, {key: recorded[key] for key in ("vae_type", "vae_config", "vae_sha256", "image_size", "patch_size",
                                                    "architecture", "model_preset", "latent_cache_dtype")})
    requested = changed(changed(recorded, "training.seed"), "data.train_dir")
    with Warnings() as warnings:
        check_resume_matches(folder, requested)
    assert warnings == [f"{folder} does not record data, training (it was saved by an earlier version): this resume "
                        "cannot check that they are the ones it was trained with."]
    with pytest.raises(ValueError) as error:
        check_resume_matches(folder, changed(requested, "qkv_bias"))
    assert refused_lines(error) == ["qkv_bias: checkpoint True, this run False"]


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture
def trained(train_lmd, tmp_path, vae_folder):
    """A 4-step run with checkpoints at steps 2 and 4; the images and the VAE it trained on."""
    images = write_image_folder(str(tmp_path / "images"))
    train_lmd.main(args_for(images, vae_folder, tmp_path / "run", "--logging_steps", "1"))
    return images, vae_folder, tmp_path / "run"


def contents(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
            and path.name != "_lmd_run.lock"}


def test_a_resume_with_other_learning_settings_is_refused_naming_each_and_touches_nothing(train_lmd, trained):
    images, vae, run = trained
    before = contents(run)
    with pytest.raises(ValueError, match=r"Cannot resume .*checkpoint-4 with other settings") as error:
        train_lmd.main(args_for(images, vae, run, "--resume_from_checkpoint", "last", "--config_overrides",
                                "qkv_bias=false,hidden_act=relu,harmonic_fill=true,leak_free_training=true",
                                "--visible_loss_weight", "0.5", "--mask_schedule", "uniform", "--seed", "1",
                                "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
                                "--max_train_samples", "6"))
    assert refused_lines(error) == [
        "data.max_train_samples: checkpoint None, this run 6",
        "harmonic_fill: checkpoint False, this run True",
        "hidden_act: checkpoint 'gelu', this run 'relu'",
        "leak_free_training: checkpoint False, this run True",
        "mask_schedule: checkpoint 'cosine', this run 'uniform'",
        "qkv_bias: checkpoint True, this run False",
        # MAE's base rate at batch 2: 1.5e-4 x 2 / 256.
        "training.learning_rate: checkpoint 1.171875e-06, this run 0.01",
        "training.seed: checkpoint 0, this run 1",
        "training.total_train_batch_size: checkpoint 2, this run 4",
        "visible_loss_weight: checkpoint 0.0, this run 0.5",
    ]
    assert contents(run) == before


def test_a_resume_may_extend_the_run_ignores_overwrite_output_dir_and_keeps_what_it_resumes(train_lmd, trained,
                                                                                             caplog):
    images, vae, run = trained
    before = contents(run)
    with caplog.at_level("WARNING"):
        metrics = train_lmd.main(args_for(images, vae, run, "--logging_steps", "1", "--resume_from_checkpoint",
                                          "last", "--overwrite_output_dir", steps=12))
    assert "--overwrite_output_dir is ignored: this run resumes" in caplog.text
    assert f"with training.max_steps changed from 4 to 12: {CHANGEABLE_ON_RESUME['training.max_steps']}" in caplog.text
    assert metrics["global_step"] == 12
    after = contents(run)
    resumed = [name for name in before if name.startswith(("checkpoint-2/", "checkpoint-4/"))]
    assert resumed and all(after.get(name) == before[name] for name in resumed)
    # Steps 5 to 12 follow the cosine mask schedule of 12 steps (under the 4-step one, every step from 3 on hides
    # 75 %); steps 1 to 4 keep what the first run logged.
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    logged = {entry["step"]: entry["mask_ratio"] for entry in history if "loss" in entry}
    assert logged == {**{k: pytest.approx(mask_ratio_at("cosine", k - 1, 4)) for k in range(1, 5)},
                      **{k: pytest.approx(mask_ratio_at("cosine", k - 1, 12)) for k in range(5, 13)}}
    assert logged[5] < 0.7

"""An output folder belongs to one training run.

- `claim_output_dir`: a folder that already holds files is refused unless the run resumes from it or the user says
  `--overwrite_output_dir` (then its old files go first), and a lock refuses a second live run on it. The lock is an
  OS file lock (`fcntl.flock`), which the kernel releases when its process dies: a killed run's leftover lock file is
  simply taken over. A resume never deletes what it resumes: with `--resume_from_checkpoint`,
  `--overwrite_output_dir` is ignored with a warning, as transformers' `run_mae.py` ignores it once a checkpoint is
  given.
- `check_resume_matches`: a run resumes only what it trained. Every checkpoint holds `lmd_run.json`, the settings a
  resume must keep, and a resume with other ones is refused with each difference named:
  - the model: every field `LMDConfig` declares (architecture, VAE, image and patch size, loss, masking, leak-free
    training, harmonic fill) but `UNRECORDED_CONFIG_FIELDS`, and the preset;
  - the data: which images train and in which views (`train_lmd.data_settings`), the latent cache's dtype;
  - the training (`modeling_lmd.trainer.training_settings`): the seeds, the total batch and the optimizer's settings.
    A changed learning rate, weight decay or Adam setting would not even apply: the optimizer and scheduler states a
    resume loads carry the checkpoint's. A changed total batch changes every step and which images a resumed epoch
    skips.
  Only `CHANGEABLE_ON_RESUME` may change, each change logged: the run's length (`max_steps`, `num_train_epochs`:
  extending a run is common; the learning-rate and mask-ratio schedules follow the new length from the resumed step
  on) and the evaluation mask ratio. A checkpoint saved before a setting was recorded resumes with that setting
  unchecked (logged); its `config.json` still answers for the model.

Not shipped as remote code (a training helper).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import IO

from transformers import PreTrainedConfig, TrainingArguments

from .configuration_lmd import LMDConfig

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still refused on non-empty folders
    fcntl = None


logger = logging.getLogger(__name__)

#: Starts with "_", which the Trainer leaves out when it pushes the folder to the Hub.
LOCK_FILE = "_lmd_run.lock"
RUN_SETTINGS_FILE = "lmd_run.json"

#: The config fields that make up the architecture a checkpoint's weights fit, recorded together as `architecture`.
ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                       "decoder_intermediate_size")

#: `LMDConfig` fields that do not change what pre-training learns: where the VAE is loaded from (its config and
#: weights' sha256 say which VAE it is), whether checkpoints store it, and the classification head's pooling.
UNRECORDED_CONFIG_FIELDS = ("vae_name_or_path", "vae_subfolder", "vae_revision", "vae_in_checkpoint",
                            "classifier_pooling")

#: The fields `LMDConfig` declares itself; `PreTrainedConfig`'s own (output flags, dtype, label maps, versions) are
#: runtime and bookkeeping, and a new transformers version adding one must not refuse every resume.
RECORDED_CONFIG_FIELDS = tuple(
    name for name in (config_field.name for config_field in dataclasses.fields(LMDConfig))
    if name not in {base_field.name for base_field in dataclasses.fields(PreTrainedConfig)}
    and name not in UNRECORDED_CONFIG_FIELDS
)

#: The settings (dotted names in `lmd_run.json`) a resume may change, and why; every change is logged.
CHANGEABLE_ON_RESUME = {
    "training.max_steps": "how long the run trains; the learning-rate and mask-ratio schedules follow the new length "
                          "from the resumed step on",
    "training.num_train_epochs": "how long the run trains; the learning-rate and mask-ratio schedules follow the new "
                                 "length from the resumed step on",
    "mask_ratio": "the evaluation and inference ratio: what is measured, not what is learned",
}


@dataclass
class OutputDirTrainingArguments(TrainingArguments):
    """`TrainingArguments` with `overwrite_output_dir` (transformers 5 dropped it), for `claim_output_dir`."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start anew in an --output_dir that already holds files, deleting them first (without it "
                  "such a folder is refused, unless resuming). Ignored when the run resumes "
                  "(--resume_from_checkpoint): a resume never deletes what it resumes."},
    )


def run_files(output_dir: str) -> list[str]:
    """What the folder holds besides the lock, sorted; nothing for a folder that does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if name != LOCK_FILE)


def _lock(output_dir: str) -> IO[str]:
    """Hold the folder's lock for as long as the returned file stays open."""
    os.makedirs(output_dir, exist_ok=True)
    handle = open(os.path.join(output_dir, LOCK_FILE), "a+", encoding="utf-8")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RuntimeError(f"Another training run ({holder}) is writing to {output_dir}; wait for it to finish or "
                           "choose another --output_dir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def claim_output_dir(output_dir: str, resuming: bool, overwrite: bool, main_process: bool = True) -> IO[str] | None:
    """Make `output_dir` this run's, before anything is written; returns the lock (main process) to keep open.

    Refused: a folder with files when the run neither resumes (`resuming`) nor overwrites, and a folder another live
    run holds. With `overwrite`, the main process deletes the folder's files first, unless the run resumes: then
    `overwrite` is ignored, with a warning.
    """
    lock = _lock(output_dir) if main_process else None
    files = run_files(output_dir)
    if files and resuming:
        if overwrite and main_process:
            logger.warning(f"--overwrite_output_dir is ignored: this run resumes, and a resume keeps what "
                           f"{output_dir} holds. To start anew there, drop --resume_from_checkpoint.")
    elif files and overwrite:
        if main_process:
            for name in files:
                path = os.path.join(output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    elif files:
        if lock is not None:
            lock.close()
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise ValueError(f"Output directory ({output_dir}) already exists and is not empty ({shown}). Use "
                         "--resume_from_checkpoint last to continue its run, --overwrite_output_dir to start anew "
                         "there (deleting what it holds), or another --output_dir.")
    return lock


def model_settings(config: dict) -> dict:
    """The recorded fields (`RECORDED_CONFIG_FIELDS`) of an LMD config, given as its `to_dict()` or a checkpoint's
    `config.json`, the architecture's widths and depths grouped as `architecture`. Fields an older config does not
    hold are left out."""
    settings = {name: config[name] for name in RECORDED_CONFIG_FIELDS
                if name in config and name not in ARCHITECTURE_FIELDS}
    return {**settings, "architecture": {name: config[name] for name in ARCHITECTURE_FIELDS if name in config}}


def run_settings(config: LMDConfig, training: dict, data: dict, model_preset: str | None,
                 latent_cache_dtype: str | None) -> dict:
    """What a resumed run must share with the checkpoint it resumes, or may change (see the module docstring):
    the model's `config`, the `training` settings (`modeling_lmd.trainer.training_settings`) and the `data` ones."""
    return {**model_settings(config.to_dict()), "model_preset": model_preset, "latent_cache_dtype": latent_cache_dtype,
            "training": training, "data": data}


def saved_settings(checkpoint: str) -> dict:
    """What `checkpoint` was trained with: its `lmd_run.json`, over what its `config.json` says of the model (so that
    a checkpoint saved before `lmd_run.json` recorded every model field, or without one, still has them compared)."""
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        settings = model_settings(json.load(handle))
    path = os.path.join(checkpoint, RUN_SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            settings.update(json.load(handle))
    return settings


def _as_json(value):
    """`value` as `lmd_run.json` holds it (tuples become lists), for a comparison where 0 and 0.0 are equal."""
    return json.loads(json.dumps(value))


def _compare_settings(saved: dict, requested: dict, prefix: str = "") -> tuple[list[tuple], list[str]]:
    """`(name, checkpoint value, this run's value)` for each setting that differs, by dotted name
    (`architecture.hidden_size`), and the names of this run's settings that the checkpoint does not record."""
    differences, unrecorded = [], []
    for key in sorted(set(saved) | set(requested)):
        name = f"{prefix}{key}"
        if key not in saved:
            unrecorded.append(name)
        elif isinstance(saved[key], dict) and isinstance(requested.get(key), dict):
            nested_differences, nested_unrecorded = _compare_settings(saved[key], requested[key], f"{name}.")
            differences += nested_differences
            unrecorded += nested_unrecorded
        elif _as_json(saved[key]) != _as_json(requested.get(key)):
            differences.append((name, _as_json(saved[key]), _as_json(requested.get(key))))
    return differences, unrecorded


def check_resume_matches(checkpoint: str, requested: dict) -> None:
    """Refuse to resume `checkpoint` under other settings than it was trained with, naming every difference; log
    each change of a `CHANGEABLE_ON_RESUME` setting, and the settings the checkpoint does not record (an older one),
    which are not compared."""
    differences, unrecorded = _compare_settings(saved_settings(checkpoint), requested)
    refused = [f"{name}: checkpoint {old!r}, this run {new!r}" for name, old, new in differences
               if name not in CHANGEABLE_ON_RESUME]
    if refused:
        raise ValueError(f"Cannot resume {checkpoint} with other settings than it was trained with:\n  - "
                         + "\n  - ".join(refused)
                         + "\nResume with the arguments of the run that wrote it, or start a new run in another "
                         f"--output_dir. A resume may change only {', '.join(CHANGEABLE_ON_RESUME)}.")
    for name, old, new in differences:  # all of them changeable, past the refusal
        logger.warning(f"Resuming {checkpoint} with {name} changed from {old!r} to {new!r}: "
                       f"{CHANGEABLE_ON_RESUME[name]}.")
    if unrecorded:
        logger.warning(f"{checkpoint} does not record {', '.join(unrecorded)} (it was saved by an earlier version): "
                       "this resume cannot check that they are the ones it was trained with.")


__all__ = ["ARCHITECTURE_FIELDS", "CHANGEABLE_ON_RESUME", "LOCK_FILE", "OutputDirTrainingArguments",
           "RECORDED_CONFIG_FIELDS", "RUN_SETTINGS_FILE", "UNRECORDED_CONFIG_FIELDS", "check_resume_matches",
           "claim_output_dir", "model_settings", "run_files", "run_settings", "saved_settings"]

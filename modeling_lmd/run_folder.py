"""An output folder belongs to one training run.

- `claim_output_dir`: a folder that already holds files is refused unless the run resumes from it or the user says
  `--overwrite_output_dir` (then its old files go first), and a lock refuses a second live run on it. The lock is an
  OS file lock (`fcntl.flock`), which the kernel releases when its process dies: a killed run's leftover lock file is
  simply taken over.
- `check_resume_matches`: a run resumes only what it trained. Every checkpoint holds `lmd_run.json`, the settings a
  resume must keep (the VAE's class, config and weights, image size, patch size, architecture, preset, latent cache
  dtype); a resume with other settings is refused with each difference named.

Not shipped as remote code (a training helper).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still refused on non-empty folders
    fcntl = None


#: Starts with "_", which the Trainer leaves out when it pushes the folder to the Hub.
LOCK_FILE = "_lmd_run.lock"
RUN_SETTINGS_FILE = "lmd_run.json"

#: The config fields that make up the architecture a checkpoint's weights fit.
ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                       "decoder_intermediate_size")


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
    run holds. With `overwrite`, the main process deletes the folder's files first.
    """
    lock = _lock(output_dir) if main_process else None
    files = run_files(output_dir)
    if files and overwrite and main_process:
        for name in files:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    elif files and not overwrite and not resuming:
        if lock is not None:
            lock.close()
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise ValueError(f"Output directory ({output_dir}) already exists and is not empty ({shown}). Use "
                         "--resume_from_checkpoint last to continue its run, --overwrite_output_dir to start anew "
                         "there (deleting what it holds), or another --output_dir.")
    return lock


def run_settings(config, model_preset: str | None, latent_cache_dtype: str | None) -> dict:
    """What a resumed run must share with the checkpoint it resumes (see the module docstring)."""
    return {
        "vae_type": config.vae_type,
        "vae_config": config.vae_config,
        "vae_sha256": config.vae_sha256,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "architecture": {name: getattr(config, name) for name in ARCHITECTURE_FIELDS},
        "model_preset": model_preset,
        "latent_cache_dtype": latent_cache_dtype,
    }


def saved_settings(checkpoint: str) -> dict:
    """A checkpoint's `lmd_run.json`; for one saved without it, what its `config.json` says."""
    path = os.path.join(checkpoint, RUN_SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    settings = {key: config[key] for key in ("vae_type", "vae_config", "vae_sha256", "image_size", "patch_size")
                if config.get(key) is not None}
    return {**settings, "architecture": {name: config.get(name) for name in ARCHITECTURE_FIELDS}}


def _differences(saved, requested, name: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(requested, dict):
        return [line for key in sorted(set(saved) | set(requested))
                for line in _differences(saved.get(key), requested.get(key), f"{name}.{key}")]
    if json.dumps(saved) == json.dumps(requested):
        return []
    return [f"{name}: checkpoint {saved!r}, this run {requested!r}"]


def check_resume_matches(checkpoint: str, requested: dict) -> None:
    """Refuse to resume `checkpoint` under other settings than it was trained with, naming every difference. Settings
    the checkpoint does not record (an older one) are not compared."""
    saved = saved_settings(checkpoint)
    differences = [line for key in requested if key in saved
                   for line in _differences(saved[key], requested[key], key)]
    if differences:
        raise ValueError(f"Cannot resume {checkpoint} with other settings than it was trained with:\n  - "
                         + "\n  - ".join(differences)
                         + "\nResume with the arguments of the run that wrote it, or start a new run in another "
                         "--output_dir.")


__all__ = ["LOCK_FILE", "RUN_SETTINGS_FILE", "check_resume_matches", "claim_output_dir", "run_files", "run_settings",
           "saved_settings"]

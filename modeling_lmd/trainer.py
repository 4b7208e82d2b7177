"""`LMDTrainer`: the Hugging Face `Trainer` with LMD's progressive mask-ratio schedule.

- **Mask ratio.** Every optimizer step `t` trains at `mask_ratio_at(config.mask_schedule, t, max_steps,
  config.mask_ratio_start, config.mask_ratio_end)`; all micro-batches of one step (gradient accumulation) share
  it, since `state.global_step` only moves after the optimizer step. The ratio is passed to `forward`, so the
  saved `config.mask_ratio` (the evaluation/inference ratio) is never touched. It is logged as `mask_ratio`
  next to `loss`: the entry of step `k` carries the ratio step `k` trained with, `mask_ratio_at(k - 1)`
  (`global_step` is `k` once the step is taken).
- **Masks.** Which patches a training step hides is drawn from a generator seeded by
  `(seed, global_step, micro-batch, process)`, not from the global RNG. Together with the schedule being a pure
  function of `global_step` and `modeling_lmd.data`'s seeded augmentation, `resume_from_checkpoint` continues
  exactly on the uninterrupted run's path.
- **Evaluation** runs through the Trainer's own loop (`prediction_step` + `compute_metrics`, so callbacks, logging
  and gathering across processes behave as in any Trainer) at `config.mask_ratio`, with each image's mask drawn
  from its own `mask_seed` (see `modeling_lmd.data`): the figures do not depend on batch size or process count.
  It reports `eval_loss` and the pixel-space PSNRs of `modeling_lmd.metrics.reconstruction_metrics`: the model
  leak-free and in the paper's setting, next to the mean-colour fill, the mean-latent fill and the VAE alone.
- **Optimizer.** Only trainable parameters get one (the VAE is frozen and gets no optimizer state); no weight
  decay on biases, norms, the cls token or the mask token. `LMDTrainingArguments` defaults follow MAE / LMD:
  AdamW betas (0.9, 0.95), weight decay 0.05, cosine schedule, and `base_learning_rate` scaled by
  total batch / 256.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import sort_checkpoints

from .data import derive_seed
from .mask_schedulers import mask_ratio_at
from .metrics import METRIC_NAMES, reconstruction_metrics, summarize_reconstruction_metrics
from .modeling_lmd import check_input_values, num_visible_patches, random_patch_mask
from .pipeline_lmd import LMDReconstructionPipeline
from .run_folder import RUN_SETTINGS_FILE, OutputDirTrainingArguments, claim_output_dir, run_files


logger = logging.getLogger(__name__)

#: Parameter-name endings that never get weight decay (besides biases and norms).
NO_DECAY_NAMES = ("cls_token", "mask_token")

#: Graphs torch.compile builds for a whole mask schedule: the first visible count compiles static, the next change
#: makes dynamo mark the count dynamic (it reaches the model as an int, never as the float ratio).
COMPILED_GRAPHS_BOUND = 2

#: Training checks the values of its first batches (range, finiteness: a host sync), not every step.
CHECKED_TRAINING_BATCHES = 3


@dataclass
class LMDTrainingArguments(OutputDirTrainingArguments):
    """`TrainingArguments` with MAE / LMD defaults, `base_learning_rate` and `overwrite_output_dir`."""

    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Base learning rate: the actual one is base_learning_rate * total_batch_size / 256 (MAE's "
            "rule; total = per-device batch x gradient accumulation x processes). Overrides --learning_rate. train_lmd.py uses MAE's 1.5e-4 when neither is given."
        },
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on biases, norms, tokens)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE / LMD: 0.95)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after the warm-up."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the `pixel_values` / `latents` columns (they are not forward args)."}
    )
    eval_seed: int = field(
        default=0, metadata={"help": "Seed of the evaluation masks and of reconstructions.png (fixed: comparable runs)."}
    )
    # The filter tests every step's loss for NaN / inf on the host, a device sync per step; LMD's inputs are checked
    # at the door instead (values of the first batches), so it is off unless asked for.
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Drop NaN / inf losses from the logged average (a host sync every step)."}
    )

    def __post_init__(self):
        # Batches from pinned memory copy to the GPU without stopping the host; unpinned ones would gain nothing
        # (and Accelerate warns). A given --accelerator_config is the user's word.
        if self.accelerator_config is None:
            self.accelerator_config = {"non_blocking": self.dataloader_pin_memory}
        super().__post_init__()


def training_step_flops(config, batch: int, num_visible: int) -> int:
    """Matrix-product FLOPs of one LMD training step at `config.image_size`: the encoder on the cls token and
    `num_visible` patches, the decoder on all of them, forward (2 FLOPs a multiply-add) and backward (twice that,
    but the patch embedding, whose input needs no gradient). The frozen VAE is not counted."""
    patch = config.patch_size**2 * config.latent_channels
    tokens, length = num_visible + 1, config.num_patches + 1

    def layers(depth: int, width: int, mlp: int, sequence: int) -> int:
        return depth * (2 * sequence * (4 * width**2 + 2 * width * mlp) + 4 * sequence**2 * width)

    embedding = 2 * config.num_patches * patch * config.hidden_size
    rest = (layers(config.num_hidden_layers, config.hidden_size, config.intermediate_size, tokens)
            + 2 * tokens * config.hidden_size * config.decoder_hidden_size
            + layers(config.decoder_num_hidden_layers, config.decoder_hidden_size, config.decoder_intermediate_size,
                     length)
            + 2 * config.num_patches * config.decoder_hidden_size * patch)  # the output head skips the cls token
    # With harmonic_fill the decoder also embeds the fill, an input that needs no gradient (like the patch embedding).
    fill = 2 * config.num_patches * patch * config.decoder_hidden_size if config.harmonic_fill else 0
    return batch * (2 * embedding + 2 * fill + 3 * rest)


def is_vae_parameter(name: str) -> bool:
    """Whether a parameter name (`lmd.vae.*` in the heads, `vae.*` in `LMDModel`) belongs to the frozen VAE."""
    return name.startswith("vae.") or ".vae." in name


def total_train_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * max(1, args.n_gpu) * args.gradient_accumulation_steps * args.world_size


def effective_learning_rate(args: TrainingArguments) -> float:
    """The learning rate a run trains with: `base_learning_rate` x total batch / 256 when given (MAE's rule), else
    `learning_rate`."""
    base_lr = getattr(args, "base_learning_rate", None)
    return args.learning_rate if base_lr is None else base_lr * total_train_batch_size(args) / 256


def training_settings(args: TrainingArguments) -> dict:
    """What of a run's arguments shapes what it learns, for `lmd_run.json` (`modeling_lmd.run_folder`: a resume must
    keep all of it but the length, `max_steps` and `num_train_epochs`): the seeds (masks, initialisation,
    augmentation), the total batch, and the optimizer and its schedule."""
    return {
        "seed": args.seed,
        "data_seed": args.data_seed,
        "total_train_batch_size": total_train_batch_size(args),
        "learning_rate": effective_learning_rate(args),
        "lr_scheduler_type": args.lr_scheduler_type,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "adam_beta1": args.adam_beta1,
        "adam_beta2": args.adam_beta2,
        "adam_epsilon": args.adam_epsilon,
        "max_grad_norm": args.max_grad_norm,
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs,
    }


class _SetEpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts, so its seeded augmentation follows the epoch."""

    def __init__(self, trainer: "LMDTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(math.floor((state.epoch or 0) + 1e-6)))


class LMDTrainer(Trainer):
    """`Trainer` for `LMDForPreTraining`; see the module docstring.

    Extra keyword argument:
        model_card_text (`str`, *optional*): README.md written by `create_model_card` (hence by `push_to_hub`)
            instead of the Trainer's generic card (see `modeling_lmd.model_card.render_model_card`).

    Without a `compute_metrics`, evaluation reports `summarize_reconstruction_metrics`.
    """

    # LMDForPreTraining returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, model_card_text: str | None = None, run_settings: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card_text = model_card_text
        self.run_settings = run_settings
        if self.compute_metrics is None:
            self.compute_metrics = self.summarize_evaluation
        self._last_train_mask_ratio: float | None = None
        self._checked_batches = 0
        self._noise_step = -1
        self._noise_micro_batch = 0
        self._eval_batches_seen = 0  # numbers the batches of one evaluation whose dataset has no per-image seeds
        base_lr = getattr(self.args, "base_learning_rate", None)
        if base_lr is not None:
            self.args.learning_rate = effective_learning_rate(self.args)
            logger.info(f"learning_rate = base_learning_rate {base_lr} x total batch "
                        f"{total_train_batch_size(self.args)} / 256 = {self.args.learning_rate:g}")
        self.add_callback(_SetEpochCallback(self))

    # --- the schedule ----------------------------------------------------------------------------

    @property
    def lmd_model(self):
        return self.accelerator.unwrap_model(self.model)

    def scheduled_mask_ratio(self, step: int | None = None) -> float:
        """The ratio optimizer step `step` (default: the current `global_step`) trains with."""
        config = self.lmd_model.config
        step = self.state.global_step if step is None else step
        total = self.state.max_steps if self.state.max_steps and self.state.max_steps > 0 else max(step + 1, 1)
        return mask_ratio_at(config.mask_schedule, step, total, config.mask_ratio_start, config.mask_ratio_end)

    def _training_noise(self, batch_size: int, device) -> torch.Tensor:
        """Masking noise of the current micro-batch, seeded by (seed, step, micro-batch, process) and drawn on the
        training device: nothing waits for a copy from the host."""
        step = self.state.global_step
        if step != self._noise_step:
            self._noise_step, self._noise_micro_batch = step, 0
        seed = derive_seed("mask", self.args.seed, step, self._noise_micro_batch, self.args.process_index)
        self._noise_micro_batch += 1
        generator = torch.Generator(device).manual_seed(seed)
        return torch.rand(batch_size, self.lmd_model.config.num_patches, generator=generator, device=device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The training loss at the scheduled ratio. The trainer makes the step's mask on the training device
        (`bool_masked_pos`, from `_training_noise`'s seeded noise) and gives the model the number of visible patches
        as an int (never the ratio, a float that torch.compile would specialise on, one graph per value), so the
        model needs no host sync; evaluation goes through `prediction_step`."""
        inputs = dict(inputs)
        if "latents" in inputs:
            inputs.pop("pixel_values", None)  # cached latents win; pixels only serve evaluation metrics
        if self._checked_batches < CHECKED_TRAINING_BATCHES:
            self._checked_batches += 1
            for name in ("pixel_values", "latents"):
                if name in inputs:
                    check_input_values(name, inputs[name], pixel_range=name == "pixel_values")
        self._last_train_mask_ratio = self.scheduled_mask_ratio()
        reference = inputs.get("latents", inputs.get("pixel_values"))
        num_visible = num_visible_patches(self._last_train_mask_ratio, self.lmd_model.config.num_patches)
        inputs["bool_masked_pos"] = random_patch_mask(self._training_noise(reference.shape[0], reference.device),
                                                      num_visible)
        inputs["num_visible"] = num_visible
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs: dict) -> int:
        """FLOPs of this training step (forward and backward of the ViT at the scheduled ratio; the frozen VAE is not
        counted), so that `trainer_state.json`'s `total_flos` gives the model FLOP utilisation of a run."""
        config = self.lmd_model.config
        batch = inputs.get("latents", inputs.get("pixel_values")).shape[0]
        return training_step_flops(config, batch, num_visible_patches(self.scheduled_mask_ratio(), config.num_patches))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._last_train_mask_ratio is not None:
            # Step k was trained with the ratio of global_step k - 1.
            logs["mask_ratio"] = self._last_train_mask_ratio
        super().log(logs, start_time)

    # --- optimizer -------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model) -> list[str]:
        names = super().get_decay_parameter_names(model)
        return [n for n in names if not n.endswith(NO_DECAY_NAMES) and not is_vae_parameter(n)]

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        frozen = {id(p) for n, p in self.lmd_model.named_parameters() if is_vae_parameter(n) or not p.requires_grad}
        for group in optimizer.param_groups:
            if any(id(p) in frozen for p in group["params"]):
                raise RuntimeError("The optimizer received frozen (VAE) parameters; they must stay untouched.")
        return optimizer

    # --- evaluation ------------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """One evaluation batch -> `(None, per-image metrics (B, len(METRIC_NAMES)), mask seeds (B,))`.

        The metrics are the columns of `METRIC_NAMES`, averaged by `summarize_reconstruction_metrics` (its `loss`
        becomes `eval_loss`). The "labels" are the seeds each image's mask was drawn from (the Trainer calls
        `compute_metrics` only when there are labels).
        """
        inputs = self._prepare_inputs(inputs)
        batch = inputs.get("latents", inputs.get("pixel_values"))
        mask_seeds = inputs.get("mask_seed")
        if mask_seeds is None:  # a dataset without per-image seeds: fixed, but tied to the batch order
            self._eval_batches_seen += 1
            mask_seeds = torch.tensor([derive_seed("eval", self.args.eval_seed, self._eval_batches_seen,
                                                   self.args.process_index, i) for i in range(batch.shape[0])])
        metrics = reconstruction_metrics(self.lmd_model, inputs.get("pixel_values"), mask_seeds,
                                         latents=inputs.get("latents"))
        return None, torch.stack([metrics[name].float() for name in METRIC_NAMES], dim=1), mask_seeds.to(batch.device)

    def summarize_evaluation(self, eval_prediction) -> dict[str, float]:
        """The default `compute_metrics`: the image means of every metric, and the mask ratio they were taken at."""
        self._eval_batches_seen = 0
        return {**summarize_reconstruction_metrics(eval_prediction),
                "mask_ratio": float(self.lmd_model.config.mask_ratio)}

    # --- saving --------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Every folder the Trainer saves, each `checkpoint-N` as well as the final one, is a whole pipeline (model,
        image processor, config.json's `custom_pipelines` and the code: it loads with `pipeline(...,
        trust_remote_code=True)` in a fresh process, without this package) and holds the run's settings
        (`lmd_run.json`, which a resume must match). A state dict handed over (DeepSpeed, FSDP) takes the
        Trainer's own save."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is not None or self.processing_class is None:
            super()._save(output_dir, state_dict)
        elif self.args.should_save:
            LMDReconstructionPipeline(model=self.lmd_model, image_processor=self.processing_class,
                                      device=self.lmd_model.device).save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))  # as the Trainer's own save does
        if self.args.should_save and self.run_settings is not None:
            with open(os.path.join(output_dir, RUN_SETTINGS_FILE), "w", encoding="utf-8") as handle:
                json.dump(self.run_settings, handle, indent=1, sort_keys=True)

    # --- model card ------------------------------------------------------------------------------

    def create_model_card(self, *args, **kwargs) -> None:
        if self.model_card_text is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
                handle.write(self.model_card_text)


#: What a resume cannot do without, and the weights: one file, shards with an index, or a PEFT adapter.
CHECKPOINT_REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def check_readable(path: str) -> None:
    """Raise unless the file reads to its end, by the kind a resume reads it as: JSON parses, every safetensors
    tensor loads, and a torch file (optimizer, scheduler, RNG states: zip archives) has every record intact by its
    CRC, checked without unpickling anything."""
    import zipfile

    from safetensors import safe_open

    if path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
    elif path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                handle.get_tensor(name)
    elif path.endswith((".pt", ".pth", ".bin")):
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
        if broken is not None:
            raise ValueError(f"record {broken} is damaged")


def check_checkpoint(folder: str) -> None:
    """Raise unless a run can resume from `folder` exactly: the trainer state, the optimizer and scheduler states
    and the weights are there, and every file in it reads to its end (`check_readable`)."""
    names = set(os.listdir(folder))
    missing = [name for name in CHECKPOINT_REQUIRED if name not in names]
    if not set(CHECKPOINT_WEIGHTS) & names:
        missing.append(" or ".join(CHECKPOINT_WEIGHTS))
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)}")
    for name in sorted(names):
        check_readable(os.path.join(folder, name))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder (as transformers' `sort_checkpoints` orders them) that passes
    `check_checkpoint`, skipping (with a warning) any that a kill or a damaged disk cut short. The Trainer writes a
    checkpoint's weights, optimizer, scheduler and RNG states first and `trainer_state.json` last, and deletes older
    checkpoints only after that, so a kill leaves the previous checkpoint complete."""
    for folder in reversed(sort_checkpoints(output_dir)):
        try:
            check_checkpoint(folder)
        except Exception as error:  # noqa: BLE001 - any unreadable part makes the checkpoint unusable
            logger.warning(f"Skipping incomplete checkpoint {folder} ({type(error).__name__}: {error}).")
            continue
        return folder
    return None


def resume_checkpoint(args: OutputDirTrainingArguments) -> str | None:
    """The checkpoint `args.resume_from_checkpoint` names, settled before anything is built: `last` takes the newest
    one a kill did not cut short (none in a new folder; a folder with files but no such checkpoint is refused, as it
    would be started over, unless `overwrite_output_dir`), and a named one is checked the same way."""
    checkpoint, output_dir = args.resume_from_checkpoint, args.output_dir
    if checkpoint in ("last", "latest", "auto"):
        checkpoint = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None and run_files(output_dir) and not args.overwrite_output_dir:
            raise ValueError(f"Output directory ({output_dir}) holds files but no complete checkpoint to resume "
                             "from; use --overwrite_output_dir to start anew there (deleting them), or another "
                             "--output_dir.")
        logger.info(f"Resuming from {checkpoint}." if checkpoint else "No checkpoint yet: starting anew.")
    elif checkpoint is not None:
        try:
            check_checkpoint(checkpoint)
        except Exception as error:  # noqa: BLE001 - re-raised with what to do
            raise ValueError(f"Cannot resume from {checkpoint} ({type(error).__name__}: {error}); "
                             "--resume_from_checkpoint last picks the newest complete checkpoint.") from error
    return checkpoint


@contextlib.contextmanager
def claimed_output_dir(args: OutputDirTrainingArguments) -> Iterator[str | None]:
    """Hold `args.output_dir` for this run (`modeling_lmd.run_folder.claim_output_dir`), claimed before anything is
    written and locked until the block ends; yields the checkpoint to resume from (`resume_checkpoint`), or `None`."""
    checkpoint = resume_checkpoint(args)
    lock = claim_output_dir(args.output_dir, resuming=checkpoint is not None, overwrite=args.overwrite_output_dir,
                            main_process=args.process_index == 0)
    with lock or contextlib.nullcontext():
        yield checkpoint


__all__ = ["COMPILED_GRAPHS_BOUND", "LMDTrainer", "LMDTrainingArguments", "check_checkpoint", "check_readable",
           "claimed_output_dir", "effective_learning_rate", "is_vae_parameter", "last_complete_checkpoint",
           "resume_checkpoint", "total_train_batch_size", "training_settings", "training_step_flops"]

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
- **Evaluation** always uses `config.mask_ratio` and masks drawn from a fixed seed (`eval_seed`), so `eval_loss`
  is comparable from one evaluation to the next. It also reports `eval_masked_psnr`: the pixel-space PSNR of
  the decoded reconstruction inside the hidden region (and, with `eval_baseline=True`,
  `eval_baseline_mean_latent_psnr` for the mean-latent fill of the same masks).
- **Optimizer.** Only trainable parameters get one (the VAE is frozen and gets no optimizer state); no weight
  decay on biases, norms, the cls token or the mask token. `LMDTrainingArguments` defaults follow MAE / LMD:
  AdamW betas (0.9, 0.95), weight decay 0.05, cosine schedule, and `base_learning_rate` scaled by
  total batch / 256.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .data import derive_seed
from .mask_schedulers import mask_ratio_at
from .metrics import masked_psnr, mean_latent_fill, per_sample_masked_mse


logger = logging.getLogger(__name__)

#: Parameter-name endings that never get weight decay (besides biases and norms).
NO_DECAY_NAMES = ("cls_token", "mask_token")


@dataclass
class LMDTrainingArguments(TrainingArguments):
    """`TrainingArguments` with MAE / LMD defaults and `base_learning_rate`."""

    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Base learning rate: the actual one is base_learning_rate * total_batch_size / 256 (MAE's "
            "rule; total = per-device batch x gradient accumulation x processes). Overrides --learning_rate."
        },
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on biases, norms, tokens)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE / LMD: 0.95)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after the warm-up."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the `pixel_values` / `latents` columns (they are not forward args)."}
    )
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation masks (fixed: comparable eval_loss)."})


def total_train_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * max(1, args.n_gpu) * args.gradient_accumulation_steps * args.world_size


class _SetEpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts, so its seeded augmentation follows the epoch."""

    def __init__(self, trainer: "LMDTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(math.floor((state.epoch or 0) + 1e-6)))


class LMDTrainer(Trainer):
    """`Trainer` for `LMDModel` pre-training; see the module docstring.

    Extra keyword arguments:
        compute_psnr (`bool`, defaults to `True`): decode reconstructions during evaluation and report
            `eval_masked_psnr`.
        eval_baseline (`bool`, defaults to `False`): also report the mean-latent-fill baseline PSNR.
        model_card_text (`str`, *optional*): README.md written by `create_model_card` (hence by `push_to_hub`)
            instead of the Trainer's generic card.
    """

    # LMDModel returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, compute_psnr: bool = True, eval_baseline: bool = False,
                 model_card_text: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_psnr = compute_psnr
        self.eval_baseline = eval_baseline
        self.model_card_text = model_card_text
        self._last_train_mask_ratio: float | None = None
        self._noise_step = -1
        self._noise_micro_batch = 0
        base_lr = getattr(self.args, "base_learning_rate", None)
        if base_lr is not None:
            total = total_train_batch_size(self.args)
            self.args.learning_rate = base_lr * total / 256
            logger.info(f"learning_rate = base_learning_rate {base_lr} x total batch {total} / 256 = {self.args.learning_rate:g}")
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
        """Masking noise of the current micro-batch, seeded by (seed, step, micro-batch, process)."""
        step = self.state.global_step
        if step != self._noise_step:
            self._noise_step, self._noise_micro_batch = step, 0
        seed = derive_seed("mask", self.args.seed, step, self._noise_micro_batch, self.args.process_index)
        self._noise_micro_batch += 1
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, self.lmd_model.config.num_patches, generator=generator).to(device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "latents" in inputs:
            inputs.pop("pixel_values", None)  # cached latents win; pixels only serve evaluation metrics
        if model.training:
            ratio = self.scheduled_mask_ratio()
            self._last_train_mask_ratio = ratio
            reference = inputs.get("latents", inputs.get("pixel_values"))
            inputs.setdefault("noise", self._training_noise(reference.shape[0], reference.device))
        else:
            ratio = self.lmd_model.config.mask_ratio
        inputs["mask_ratio"] = ratio
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._last_train_mask_ratio is not None:
            # Step k was trained with the ratio of global_step k - 1.
            logs["mask_ratio"] = self._last_train_mask_ratio
        super().log(logs, start_time)

    # --- optimizer -------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model) -> list[str]:
        names = super().get_decay_parameter_names(model)
        return [n for n in names if not n.endswith(NO_DECAY_NAMES) and not n.split(".")[0] == "vae"]

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        frozen = {id(p) for n, p in self.lmd_model.named_parameters() if n.startswith("vae.") or not p.requires_grad}
        for group in optimizer.param_groups:
            if any(id(p) in frozen for p in group["params"]):
                raise RuntimeError("The optimizer received frozen (VAE) parameters; they must stay untouched.")
        return optimizer

    # --- evaluation ------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Masked-latent loss at `config.mask_ratio` with fixed-seed masks, plus the masked-region PSNR."""
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(eval_dataset, dict):
            metrics = {}
            for name, dataset in eval_dataset.items():
                metrics.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.lmd_model
        was_training = model.training
        model.eval()
        ratio = model.config.mask_ratio
        generator = torch.Generator().manual_seed(
            int(getattr(self.args, "eval_seed", self.args.seed)) + 1_000_003 * self.args.process_index
        )
        totals: dict[str, list[torch.Tensor]] = {"loss": [], "masked_psnr": [], "baseline_mean_latent_psnr": []}
        with torch.no_grad():
            for batch in dataloader:
                pixels = batch.get("pixel_values")
                latents = batch.get("latents")
                if latents is None:
                    latents = model.encode_images(pixels)
                latents = latents.to(device=model.device, dtype=model.encoder.patch_embed.weight.dtype)
                noise = torch.rand(latents.shape[0], model.config.num_patches, generator=generator).to(latents.device)
                outputs = model(latents=latents, mask_ratio=ratio, noise=noise)
                totals["loss"].append(per_sample_masked_mse(model, latents, outputs.logits, outputs.mask))
                if self.compute_psnr and pixels is not None:
                    pixel_mask = model.pixel_mask(outputs.mask)
                    composite = model.composite_latents(latents, outputs.logits, outputs.mask)
                    reconstruction = model.decode_latents(composite).clamp(-1, 1)
                    totals["masked_psnr"].append(masked_psnr(reconstruction, pixels, pixel_mask))
                    if self.eval_baseline:
                        baseline = model.decode_latents(mean_latent_fill(model, latents, outputs.mask)).clamp(-1, 1)
                        totals["baseline_mean_latent_psnr"].append(masked_psnr(baseline, pixels, pixel_mask))
        model.train(was_training)
        metrics = {}
        for name, values in totals.items():
            if values:
                gathered = self.accelerator.gather_for_metrics(torch.cat(values).float().to(self.args.device))
                metrics[f"{metric_key_prefix}_{name}"] = float(gathered.nanmean())
        metrics[f"{metric_key_prefix}_mask_ratio"] = float(ratio)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # --- model card ------------------------------------------------------------------------------

    def create_model_card(self, *args, **kwargs) -> None:
        if self.model_card_text is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
                handle.write(self.model_card_text)


__all__ = ["LMDTrainer", "LMDTrainingArguments", "total_train_batch_size"]

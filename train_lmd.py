#!/usr/bin/env python
"""Pre-train LMD (Latent Masking Diffusion) on an image dataset with the Hugging Face Trainer.

Runs on one CPU, one GPU, or many (`accelerate launch train_lmd.py ...` / `torchrun --nproc_per_node N ...`).
Arguments: model arguments, data arguments and `LMDTrainingArguments` (every `TrainingArguments` option), on the
command line or all together in one JSON file (`python train_lmd.py args.json`).

Example (CPU, the shipped demo VAE, an image folder)::

    python train_lmd.py --train_dir data/demo/train --validation_dir data/demo/validation \
        --model_preset lmd-small --mask_schedule cosine --cache_latents \
        --output_dir runs/lmd-small --max_steps 300 \
        --per_device_train_batch_size 32 --base_learning_rate 1.5e-4 --warmup_steps 0.05 \
        --logging_steps 10 --eval_strategy steps --eval_steps 100 --save_steps 100

An output folder belongs to one run (`modeling_lmd.run_folder`): a folder that holds files is refused unless the run
resumes (`--resume_from_checkpoint last`, which ignores `--overwrite_output_dir`: a resume never deletes what it
resumes) or `--overwrite_output_dir` starts anew there. A resume keeps every model, loss, masking, data, seed, batch
and optimizer setting of the checkpoint (a change is refused, naming each one); only `--max_steps` /
`--num_train_epochs` (extending a run) and the evaluation `mask_ratio` may change, each change logged.

At the end the output folder holds the model (weights, config and remote code), its image processor,
`reconstructions.png` (original | masked | reconstruction | reconstruction + visible, validation images),
`metrics.json` and a model card (`README.md`); `--push_to_hub --hub_model_id user/name` publishes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers import HfArgumentParser, set_seed

from modeling_lmd import (
    MASK_SCHEDULES,
    PRESETS,
    LMDConfig,
    LMDForPreTraining,
    LMDImageProcessor,
)
from modeling_lmd.data import (
    STREAMED_EVAL_SAMPLES,
    ImageDataset,
    LatentDataset,
    ProcessorTransform,
    RandomResizedCropFlip,
    StreamingImageDataset,
    cache_latents,
    collate_fn,
    default_latent_cache_dir,
    drop_unreadable_images,
    find_image_column,
    first_rows,
    load_image_datasets,
)
from modeling_lmd.metrics import save_reconstruction_grid
from modeling_lmd.model_card import render_model_card
from modeling_lmd.pretrained import DEMO_VAE
from modeling_lmd.run_folder import check_resume_matches, run_settings
from modeling_lmd.trainer import (
    LMDTrainer,
    LMDTrainingArguments,
    claimed_output_dir,
    total_train_batch_size,
    training_settings,
)
from modeling_lmd.vae_lmd import read_vae_config, vae_reference


logger = logging.getLogger("train_lmd")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An LMD checkpoint (folder or Hub id) to continue pre-training from."}
    )
    model_preset: str = field(
        default="lmd-small", metadata={"help": f"Architecture preset for a new model: {', '.join(PRESETS)}."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "LMDConfig fields to override, 'k=v,k=v' (PreTrainedConfig.update_from_string), e.g. "
                  "'hidden_size=256,num_hidden_layers=8'."},
    )
    vae_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A diffusers VAE (folder or Hub id, e.g. stabilityai/sd-vae-ft-mse) for a new model. Default: "
            "the shipped demo VAE (modeling_lmd/pretrained/demo-vae)."
        },
    )
    vae_subfolder: str | None = field(
        default=None, metadata={"help": "Subfolder of the VAE in its repo (e.g. 'vae' for CompVis/stable-diffusion-v1-4)."}
    )
    vae_in_checkpoint: bool | None = field(
        default=None,
        metadata={"help": "Store the frozen VAE's weights in every checkpoint (the default for a new model: "
                  "self-contained, works offline). False: checkpoints hold only the ViT and load the VAE from "
                  "--vae_name_or_path (a Hub id, pinned to its commit, or a folder on this machine), refusing a VAE "
                  "whose config or weights differ from the one trained with."},
    )
    mask_schedule: str | None = field(
        default=None, metadata={"help": f"Mask-ratio schedule: {', '.join(MASK_SCHEDULES)} (default: the config's)."}
    )
    mask_ratio: float | None = field(
        default=None, metadata={"help": "Evaluation / inference mask ratio, config.mask_ratio (default 0.75)."}
    )
    norm_latent_loss: bool | None = field(
        default=None, metadata={"help": "Normalise each target latent patch (MAE's norm_pix_loss)."}
    )
    visible_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the loss on the visible patches (0: hidden patches only, as MAE)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset, or a local folder `datasets` can load (image folder)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images."})
    image_column_name: str | None = field(
        default=None, metadata={"help": "The image column (default: the first Image column)."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Image side in pixels (default: the config's)."})
    train_val_split: float | None = field(
        default=0.15, metadata={"help": "Fraction of train held out for validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation images."})
    cache_latents: bool = field(
        default=False,
        metadata={"help": "Encode the images once with the frozen VAE, store the latents on disk and train on them."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the training images as a `datasets` stream and encode them on the fly, for sets "
                  "that do not fit on disk twice (needs --max_steps; not with --cache_latents). The validation "
                  f"split is cut to --max_eval_samples (default {STREAMED_EVAL_SAMPLES}) images."},
    )
    latent_cache_dir: str | None = field(
        default=None, metadata={"help": "Where latent caches live (default: <HF datasets cache>/modeling_lmd_latents)."}
    )
    latent_cache_views: int = field(
        default=1, metadata={"help": "Augmented views (random crop + flip) cached per training image."}
    )
    latent_flip: bool = field(
        default=False, metadata={"help": "With cached latents, also flip latents horizontally (approximate)."}
    )
    latent_cache_dtype: str = field(
        default="float32", metadata={"help": "How the training latents are stored: float32, or bfloat16 (half the "
                                     "disk and memory; its quality effect is in docs/RESULTS.md)."}
    )
    latents_in_memory: bool = field(
        default=False, metadata={"help": "Hold the cached training latents as one tensor in memory (pinned when a GPU "
                                 "is present) instead of reading them from the memory-mapped cache."}
    )
    encode_batch_size: int = field(default=32, metadata={"help": "Batch size of the VAE while caching latents."})
    validate_images: str = field(
        default="auto",
        metadata={"help": "Open every image before training: 'header', 'full' (decode), or 'auto' (full up to 5000 "
                  "images). Unreadable ones are skipped with one warning."},
    )
    strict_images: bool = field(default=False, metadata={"help": "Stop on unreadable images instead of skipping."})
    num_reconstructions: int = field(default=8, metadata={"help": "Validation images in reconstructions.png."})
    dataset_tag: str | None = field(
        default=None, metadata={"help": "Dataset id for the model card metadata (default: --dataset_name if a Hub id)."}
    )
    model_card_template: str | None = field(default=None, metadata={"help": "Jinja template of the model card."})


#: MAE's base learning rate, the one a run gets when it gives neither --learning_rate nor --base_learning_rate.
MAE_BASE_LEARNING_RATE = 1.5e-4

#: Without --logging_steps / --eval_steps, a run logs 50 times and evaluates 10 times, whatever its length
#: (`TrainingArguments` reads a float below 1 as that share of the training steps).
DEFAULT_LOGGING_SHARE, DEFAULT_EVAL_SHARE = 0.02, 0.1


def parse_arguments(args: list[str] | str | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, LMDTrainingArguments))
    args = sys.argv[1:] if args is None else [str(args)] if isinstance(args, (str, os.PathLike)) else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        with open(args[0], encoding="utf-8") as handle:
            given = set(json.load(handle))
        parsed = parser.parse_json_file(json_file=os.path.abspath(args[0]))
    else:
        given = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
        parsed = parser.parse_args_into_dataclasses(args=args)
    training_args = parsed[2]
    # Neither --do_train nor --do_eval given: do both (TrainingArguments turns do_eval on by itself whenever an
    # eval_strategy is set, which must not silently switch training off).
    if not {"do_train", "do_eval"} & given:
        training_args.do_train = training_args.do_eval = True
    if training_args.max_steps == 0:  # the Trainer would read 0 as "no limit" and train by epochs
        raise ValueError("--max_steps 0 would train nothing; give a positive number, or -1 to train by epochs "
                         "(--num_train_epochs), or --do_eval without --do_train.")
    if training_args.do_train and training_args.max_steps < 0 and training_args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {training_args.num_train_epochs:g} would train nothing; give a positive "
                         "number of epochs or --max_steps, or --do_eval without --do_train.")
    if not {"learning_rate", "base_learning_rate"} & given:
        training_args.base_learning_rate = MAE_BASE_LEARNING_RATE
    if "logging_steps" not in given:
        training_args.logging_steps = DEFAULT_LOGGING_SHARE
    if "eval_steps" not in given:
        training_args.eval_steps = DEFAULT_EVAL_SHARE
    return parsed


def build_model(model_args: ModelArguments, data_args: DataArguments) -> tuple[LMDForPreTraining, str]:
    """The model to train, and a description of its VAE for the model card. The configuration is settled (and a
    preset that does not fit the VAE refused) from the VAE's config alone, before any weight is read."""
    vae = model_args.vae_name_or_path or DEMO_VAE
    image_size = {} if data_args.image_size is None else {"image_size": data_args.image_size}
    if model_args.model_name_or_path is not None:
        config = LMDConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                           **image_size)
    else:
        vae_type, vae_config = read_vae_config(vae, subfolder=model_args.vae_subfolder)
        config = LMDConfig.from_preset(model_args.model_preset, vae_type=vae_type, vae_config=vae_config,
                                       **vae_reference(vae, model_args.vae_subfolder,
                                                       local=model_args.vae_in_checkpoint is False), **image_size)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    for name in ("mask_schedule", "mask_ratio", "norm_latent_loss", "visible_loss_weight", "vae_in_checkpoint"):
        if getattr(model_args, name) is not None:
            setattr(config, name, getattr(model_args, name))
    config.validate()

    if model_args.model_name_or_path is not None:
        model = LMDForPreTraining.from_pretrained(model_args.model_name_or_path, config=config,
                                                  cache_dir=model_args.cache_dir)
        return model, f"the VAE of `{model_args.model_name_or_path}` ({config.vae_type})"
    model = LMDForPreTraining.from_vae(vae, subfolder=model_args.vae_subfolder, config=config)
    if vae == DEMO_VAE:
        return model, f"the shipped demo VAE (`modeling_lmd/pretrained/demo-vae`), {model.config.vae_type}"
    subfolder = f" (subfolder `{model_args.vae_subfolder}`)" if model_args.vae_subfolder else ""
    return model, f"`{vae}`{subfolder}, {model.config.vae_type}"


def limit_samples(train_split, validation, data_args: DataArguments, seed: int):
    """The splits cut to --max_train_samples (a seeded sample; a stream's first rows) and --max_eval_samples (the
    first rows). A streamed validation split becomes a fixed `Dataset` of its first rows: every evaluation scores
    the same images. An empty validation split is `None`."""
    if data_args.max_train_samples is not None and data_args.streaming:
        train_split = train_split.take(data_args.max_train_samples)
    elif data_args.max_train_samples is not None:
        train_split = train_split.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train_split))))
    if validation is not None and data_args.streaming:
        validation = first_rows(validation, data_args.max_eval_samples or STREAMED_EVAL_SAMPLES)
    elif validation is not None and data_args.max_eval_samples is not None:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    return train_split, validation if validation is not None and len(validation) > 0 else None


def build_datasets(data_args: DataArguments, training_args: LMDTrainingArguments, model: LMDForPreTraining):
    """Training and evaluation datasets (images, or cached latents with their evaluation images), and card facts."""
    if data_args.streaming and (data_args.cache_latents or training_args.max_steps <= 0):
        raise ValueError("--streaming encodes the images on the fly as they arrive: it needs --max_steps (a stream has "
                         "no length to count epochs by) and cannot be combined with --cache_latents.")
    splits = load_image_datasets(
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.train_dir, validation_dir=data_args.validation_dir,
        train_val_split=data_args.train_val_split, seed=training_args.seed, streaming=data_args.streaming,
    )
    train_split, validation = limit_samples(splits["train"], splits.get("validation"), data_args, training_args.seed)
    column = find_image_column(train_split, data_args.image_column_name)
    # Unreadable images are dropped before any step, so neither training nor the final evaluation can fail on one.
    if not data_args.streaming:
        train_split, train_content = drop_unreadable_images(train_split, column, "train", data_args.validate_images,
                                                            data_args.strict_images)
    if validation is not None:
        validation, validation_content = drop_unreadable_images(validation, column, "validation",
                                                                data_args.validate_images, data_args.strict_images)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_transform = RandomResizedCropFlip(model.config.image_size)
    eval_transform = ProcessorTransform(LMDImageProcessor.from_model_config(model.config))
    eval_images = (ImageDataset(validation, column, eval_transform, training_args.eval_seed, evaluation=True)
                   if validation else None)
    augmentation = "RandomResizedCrop (scale 0.2-1, bicubic) + horizontal flip"
    if data_args.streaming:
        train = StreamingImageDataset(train_split, column, train_transform, seed)
        return train, eval_images, f"{augmentation}, streamed and encoded on the fly"
    if not data_args.cache_latents:
        train = ImageDataset(train_split, column, train_transform, seed)
        return train, eval_images, f"{augmentation}, encoded on the fly"

    if model.config.leak_free_training:
        raise ValueError("leak_free_training encodes the masked images at every step, so it cannot train on cached "
                         "latents; drop --cache_latents (or the leak_free_training override).")
    cache_dir = data_args.latent_cache_dir or default_latent_cache_dir()
    model.to(training_args.device)
    # Every process takes part: each encodes its share of the images (see modeling_lmd.data.cache_latents).
    train_latents, train_info = cache_latents(model, train_split, column, train_transform, cache_dir,
                                              num_views=data_args.latent_cache_views, seed=seed,
                                              batch_size=data_args.encode_batch_size, description="train",
                                              content_fingerprint=train_content, dtype=data_args.latent_cache_dtype)
    evaluation = None
    if validation is not None:
        eval_latents, _ = cache_latents(model, validation, column, eval_transform, cache_dir, seed=seed,
                                        batch_size=data_args.encode_batch_size, description="validation",
                                        content_fingerprint=validation_content)
        evaluation = LatentDataset(eval_latents, seed=training_args.eval_seed, pixels=eval_images)
    train = LatentDataset(train_latents, seed=seed, latent_flip=data_args.latent_flip,
                          storage_dtype=train_info["dtype"], in_memory=data_args.latents_in_memory)
    views = f"{data_args.latent_cache_views} cached {data_args.latent_cache_dtype} view(s) per image" + (
        " + latent-space flips" if data_args.latent_flip else "")
    return train, evaluation, f"{augmentation}, {views}"


def final_evaluation(trainer: LMDTrainer) -> dict[str, float]:
    """The evaluation after training, or the Trainer's own when it has just evaluated the final step."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


def save_curves(log_history: list[dict], path: str) -> bool:
    """`training_curves.png` (loss, mask ratio, learning rate, held-out PSNR) when matplotlib is installed."""
    try:
        from modeling_lmd.plots import save_training_curves
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'modeling-lmd[demo]'): no training_curves.png.")
        return False
    return save_training_curves(log_history, path)


def card_facts(model_args, data_args, training_args, trainer, vae_description, augmentation, has_grid,
               has_curves) -> dict:
    tag = data_args.dataset_tag
    if tag is None and data_args.dataset_name and not os.path.exists(data_args.dataset_name):
        tag = data_args.dataset_name
    dataset = f"`{data_args.dataset_name}`" if data_args.dataset_name else "a local image folder"
    return {
        "repo_id": training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir)),
        # What the card's usage snippet loads: the Hub id once pushed, else the folder itself.
        "model_id": training_args.hub_model_id or training_args.output_dir,
        "vae_description": vae_description,
        "dataset_description": dataset + (f" (`{tag}`)" if tag and not data_args.dataset_name else ""),
        "dataset_tag": tag,
        "augmentation": augmentation,
        "train_samples": "a stream of" if data_args.streaming else len(trainer.train_dataset or []),
        "global_step": trainer.state.global_step,
        "total_batch_size": total_train_batch_size(training_args),
        "has_reconstructions": has_grid,
        "has_curves": has_curves,
        # The card's base_model: the VAE when it is a Hub id (a local folder has no Hub page to link).
        "base_model": model_args.vae_name_or_path if model_args.vae_name_or_path and not os.path.exists(
            model_args.vae_name_or_path) else None,
    }


def set_up_logging(training_args: LMDTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    if training_args.should_log:  # "passive" log level: INFO on the main process, as run_mae does
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in ("train_lmd", "modeling_lmd"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def train_and_evaluate(trainer: LMDTrainer, training_args, eval_dataset, checkpoint: str | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval and eval_dataset is not None:
        eval_metrics = final_evaluation(trainer)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


def write_outputs(trainer: LMDTrainer, data_args, eval_dataset, metrics: dict[str, Any]) -> tuple[bool, bool]:
    """reconstructions.png, training_curves.png and metrics.json (main process); whether the two images exist."""
    output_dir = trainer.args.output_dir
    has_grid = eval_dataset is not None and data_args.num_reconstructions > 0
    if not trainer.is_world_process_zero():
        return has_grid, False
    if has_grid:
        batch = collate_fn([eval_dataset[i] for i in range(min(data_args.num_reconstructions, len(eval_dataset)))])
        save_reconstruction_grid(os.path.join(output_dir, "reconstructions.png"), trainer.lmd_model,
                                 batch["pixel_values"], batch["mask_seed"])
    has_curves = save_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png"))
    config = trainer.lmd_model.config
    metrics.update(global_step=trainer.state.global_step, mask_schedule=config.mask_schedule,
                   eval_samples=len(eval_dataset) if eval_dataset is not None else 0,
                   cache_latents=data_args.cache_latents)
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    return has_grid, has_curves


def main(args: list[str] | str | None = None) -> dict[str, Any]:
    """Train / evaluate / save / push; returns the metrics written to `metrics.json`."""
    model_args, data_args, training_args = parse_arguments(args)
    set_up_logging(training_args)
    with claimed_output_dir(training_args) as checkpoint:
        return train_in_claimed_folder(model_args, data_args, training_args, checkpoint)


def data_settings(data_args: DataArguments) -> dict:
    """Which images a run trains on, and in which views: what a resume must keep (`modeling_lmd.run_folder`). A
    folder is named by its absolute path, the same from any working directory."""

    def location(path: str | None) -> str | None:
        return os.path.abspath(path) if path is not None and os.path.exists(path) else path

    cached = data_args.cache_latents
    return {
        "dataset_name": location(data_args.dataset_name),
        "dataset_config_name": data_args.dataset_config_name,
        "train_dir": location(data_args.train_dir),
        # Without a validation split, train_val_split carves it off the training images.
        "validation_dir": location(data_args.validation_dir),
        "train_val_split": data_args.train_val_split,
        "image_column_name": data_args.image_column_name,
        "max_train_samples": data_args.max_train_samples,
        "streaming": data_args.streaming,
        "cache_latents": cached,
        "latent_cache_views": data_args.latent_cache_views if cached else None,
        "latent_flip": data_args.latent_flip if cached else None,
    }


def train_in_claimed_folder(model_args, data_args, training_args, checkpoint: str | None) -> dict[str, Any]:
    set_seed(training_args.seed)  # a new model's initialisation is reproducible
    model, vae_description = build_model(model_args, data_args)
    settings = run_settings(model.config, training_settings(training_args), data_settings(data_args),
                            model_preset=None if model_args.model_name_or_path else model_args.model_preset,
                            latent_cache_dtype=data_args.latent_cache_dtype if data_args.cache_latents else None)
    if checkpoint is not None:  # before the latents are cached with this run's VAE
        check_resume_matches(checkpoint, settings)
    train_dataset, eval_dataset, augmentation = build_datasets(data_args, training_args, model)
    trainer = LMDTrainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset, data_collator=collate_fn,
        processing_class=LMDImageProcessor.from_model_config(model.config), run_settings=settings,
    )
    metrics = train_and_evaluate(trainer, training_args, eval_dataset, checkpoint)
    has_grid, has_curves = write_outputs(trainer, data_args, eval_dataset, metrics)
    facts = card_facts(model_args, data_args, training_args, trainer, vae_description, augmentation, has_grid,
                       has_curves)
    trainer.model_card_text = render_model_card(trainer.lmd_model, training_args, metrics, facts,
                                                data_args.model_card_template)
    # The model, its image processor, the pipeline's code and config.json's `custom_pipelines` (LMDTrainer._save):
    # `pipeline(model=..., trust_remote_code=True)` works without this package.
    trainer.save_model()
    if training_args.push_to_hub:  # saves the model and processor again, writes README.md, uploads the output folder
        trainer.push_to_hub(commit_message=f"LMD pre-training: {trainer.state.global_step} steps")
    else:
        trainer.create_model_card()
    return metrics


if __name__ == "__main__":
    main()

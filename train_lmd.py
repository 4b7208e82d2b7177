#!/usr/bin/env python
"""Pre-train LMD (Latent Masking Diffusion) on an image dataset with the Hugging Face Trainer.

Runs on one CPU, one GPU, or many (`accelerate launch train_lmd.py ...` / `torchrun --nproc_per_node N ...`).
Arguments: model arguments, data arguments and `LMDTrainingArguments` (every `TrainingArguments` option), on the
command line or all together in one JSON file (`python train_lmd.py args.json`).

Example (CPU, the shipped demo VAE, an image folder)::

    python train_lmd.py --train_dir data/demo/train --validation_dir data/demo/validation \
        --model_preset lmd-small --mask_schedule cosine --cache_latents \
        --output_dir runs/lmd-small --do_train --do_eval --max_steps 300 \
        --per_device_train_batch_size 32 --base_learning_rate 1.5e-4 --warmup_steps 0.05 \
        --logging_steps 10 --eval_strategy steps --eval_steps 100 --save_steps 100

At the end the output folder holds the model (weights, config and remote code), its image processor,
`reconstructions.png` (original | masked | reconstruction of validation images), `metrics.json` and a model
card (`README.md`, rendered from `model_card.md`); `--push_to_hub --hub_model_id user/name` publishes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

import modeling_lmd
from modeling_lmd import MASK_SCHEDULES, PRESETS, LMDConfig, LMDModel
from modeling_lmd.data import (
    ImageDataset,
    LatentDataset,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    cache_latents,
    collate_fn,
    default_latent_cache_dir,
    derive_seed,
    find_image_column,
    load_image_datasets,
)
from modeling_lmd.metrics import masked_reconstruction, save_reconstruction_grid
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments, total_train_batch_size


logger = logging.getLogger("train_lmd")

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_DEMO_VAE = os.path.join(os.path.dirname(os.path.abspath(modeling_lmd.__file__)), "pretrained", "demo-vae")
MODEL_CARD_TEMPLATE = os.path.join(HERE, "model_card.md")
CARD_TAGS = ["lmd", "masked-image-modeling", "image-to-image"]


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
        metadata={"help": "LMDConfig fields to override, 'k=v,k=v' (e.g. 'hidden_size=256,num_hidden_layers=8')."},
    )
    vae_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A diffusers VAE (folder or Hub id, e.g. stabilityai/sd-vae-ft-mse) for a new model. Default: "
            "the shipped demo VAE (modeling_lmd/pretrained/demo-vae) if present, else random weights (smoke tests)."
        },
    )
    vae_subfolder: str | None = field(
        default=None, metadata={"help": "Subfolder of the VAE in its repo (e.g. 'vae' for CompVis/stable-diffusion-v1-4)."}
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
    latent_cache_dir: str | None = field(
        default=None, metadata={"help": "Where latent caches live (default: <HF datasets cache>/modeling_lmd_latents)."}
    )
    latent_cache_views: int = field(
        default=1, metadata={"help": "Augmented views (random crop + flip) cached per training image."}
    )
    latent_flip: bool = field(
        default=False, metadata={"help": "With cached latents, also flip latents horizontally (approximate)."}
    )
    encode_batch_size: int = field(default=32, metadata={"help": "Batch size of the VAE while caching latents."})
    num_reconstructions: int = field(default=8, metadata={"help": "Validation images in reconstructions.png."})
    dataset_tag: str | None = field(
        default=None, metadata={"help": "Dataset id for the model card metadata (default: --dataset_name if a Hub id)."}
    )
    model_card_template: str | None = field(default=None, metadata={"help": "Jinja template of the model card."})


# --- helpers ---------------------------------------------------------------------------------------------


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """'k=v,k=v' -> typed LMDConfig kwargs (the type of each field's default)."""
    overrides: dict[str, Any] = {}
    if not text:
        return overrides
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"--config_overrides expects 'key=value' items, got {item!r}.")
        key, value = (s.strip() for s in item.split("=", 1))
        if not hasattr(LMDConfig, key) or key in ("vae_config",):
            raise ValueError(f"--config_overrides: {key!r} is not an overridable LMDConfig field.")
        default = getattr(LMDConfig, key)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--config_overrides: {key} expects a boolean, got {value!r}.")
            overrides[key] = value.lower() in ("true", "1", "yes")
        elif isinstance(default, int):
            overrides[key] = int(value)
        elif isinstance(default, float):
            overrides[key] = float(value)
        else:
            overrides[key] = value
    return overrides


def parse_arguments(args: list[str] | str | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, LMDTrainingArguments))
    if args is None:
        args = sys.argv[1:]
    if isinstance(args, (str, os.PathLike)):
        args = [str(args)]
    if len(args) == 1 and args[0].endswith(".json"):
        with open(args[0], encoding="utf-8") as handle:
            given = set(json.load(handle))
        parsed = parser.parse_json_file(json_file=os.path.abspath(args[0]))
    else:
        given = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
        parsed = parser.parse_args_into_dataclasses(args=list(args))
    # Neither --do_train nor --do_eval given: do both (TrainingArguments turns do_eval on by itself whenever an
    # eval_strategy is set, which must not silently switch training off).
    training_args = parsed[2]
    if not {"do_train", "do_eval"} & given:
        training_args.do_train = training_args.do_eval = True
    return parsed


def resolve_vae(model_args: ModelArguments) -> str | None:
    if model_args.vae_name_or_path is not None:
        return model_args.vae_name_or_path
    if os.path.isfile(os.path.join(SHIPPED_DEMO_VAE, "config.json")):
        logger.info(f"Using the shipped demo VAE at {SHIPPED_DEMO_VAE}")
        return SHIPPED_DEMO_VAE
    return None


def build_model(model_args: ModelArguments, data_args: DataArguments) -> tuple[LMDModel, str]:
    """The model to train, and a description of its VAE for the model card."""
    overrides = parse_config_overrides(model_args.config_overrides)
    for name in ("mask_schedule", "mask_ratio", "norm_latent_loss"):
        value = getattr(model_args, name)
        if value is not None:
            overrides[name] = value
    if data_args.image_size is not None:
        overrides["image_size"] = data_args.image_size

    if model_args.model_name_or_path is not None:
        config = LMDConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
        for key, value in overrides.items():
            setattr(config, key, value)
        config.validate_lmd()
        model = LMDModel.from_pretrained(model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir)
        return model, f"the VAE of `{model_args.model_name_or_path}` ({config.vae_type})"

    vae = resolve_vae(model_args)
    if vae is not None:
        model = LMDModel.from_vae(vae, subfolder=model_args.vae_subfolder, preset=model_args.model_preset, **overrides)
        if os.path.abspath(vae) == SHIPPED_DEMO_VAE:
            label = "the shipped demo VAE (`modeling_lmd/pretrained/demo-vae`)"
        else:
            label = f"`{vae}`" + (f" (subfolder `{model_args.vae_subfolder}`)" if model_args.vae_subfolder else "")
        return model, f"{label}, {model.config.vae_type}"

    logger.warning(
        "!!! No VAE given and no shipped demo VAE found: the VAE of preset %r gets RANDOM weights. Latents of a "
        "random VAE mean nothing; this is only good for smoke tests. Pass --vae_name_or_path (for example "
        "stabilityai/sd-vae-ft-mse, or CompVis/stable-diffusion-v1-4 with --vae_subfolder vae). !!!",
        model_args.model_preset,
    )
    model = LMDModel(LMDConfig.from_preset(model_args.model_preset, **overrides))
    return model, f"randomly initialised {model.config.vae_type} (preset `{model_args.model_preset}`; smoke test only)"


def make_image_processor(image_size: int):
    try:
        from modeling_lmd.image_processing_lmd import LMDImageProcessor
    except ImportError:
        return None
    return LMDImageProcessor(size={"height": image_size, "width": image_size})


@torch.no_grad()
def save_reconstructions(model: LMDModel, dataset, path: str, count: int, seed: int) -> None:
    """`original | masked | reconstruction` for the first `count` items of `dataset` (never runs the encoder
    when the items carry cached latents)."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return
    batch = collate_fn(items)
    pixels = batch["pixel_values"].to(model.device)
    latents = batch["latents"] if "latents" in batch else model.encode_images(pixels)
    model.eval()
    noise = torch.rand(len(items), model.config.num_patches, generator=torch.Generator().manual_seed(seed))
    result = masked_reconstruction(model, latents, noise=noise)
    masked = pixels * (1 - result["pixel_mask"].to(pixels))
    save_reconstruction_grid(path, pixels, masked, result["reconstruction"])


def format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(
    template_path: str,
    model: LMDModel,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: LMDTrainingArguments,
    vae_description: str,
    metrics: dict[str, Any],
    global_step: int,
    train_samples: int,
    has_reconstructions: bool,
) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    config = model.config
    dataset_tag = data_args.dataset_tag
    if dataset_tag is None and data_args.dataset_name and not os.path.exists(data_args.dataset_name):
        dataset_tag = data_args.dataset_name
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-to-image",
        tags=list(CARD_TAGS),
        datasets=[dataset_tag] if dataset_tag else None,
    )
    if data_args.dataset_name:
        dataset_description = f"`{data_args.dataset_name}`" + (
            f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else ""
        )
    else:
        dataset_description = "a local image folder"
        if dataset_tag:
            dataset_description += f" (`{dataset_tag}`)"
    if data_args.cache_latents:
        augmentation = (
            f"RandomResizedCrop (scale 0.2-1, bicubic) + horizontal flip, {data_args.latent_cache_views} cached "
            "view(s) per image" + (" + latent-space flips" if data_args.latent_flip else "")
        )
    else:
        augmentation = "RandomResizedCrop (scale 0.2-1, bicubic) + horizontal flip, encoded on the fly"
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vae."))
    frozen = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vae."))
    repo_id = training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir))
    names = {
        "eval_loss": "Masked latent MSE (eval_loss)",
        "eval_masked_psnr": "Masked-region PSNR, LMD (dB)",
        "baseline_mean_latent_psnr": "Masked-region PSNR, mean-latent fill baseline (dB)",
        "train_loss": "Training loss (mean over the run)",
    }
    metrics_table = [(label, format_metric(metrics[key])) for key, label in names.items() if key in metrics]
    if not metrics_table:
        metrics_table = [("(no evaluation run)", "-")]
    card = ModelCard.from_template(
        card_data,
        template_path=template_path,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        vae_description=vae_description,
        image_size=config.image_size,
        latent_channels=config.latent_channels,
        latent_size=config.latent_size,
        patch_size=config.patch_size,
        num_patches=config.num_patches,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        loss_target="per-patch normalised latents" if config.norm_latent_loss else "latents (unit-scaled)",
        trainable_parameters=f"{trainable:,}",
        vae_parameters=f"{frozen:,}",
        dataset_description=dataset_description,
        train_samples=train_samples,
        augmentation=augmentation,
        mask_schedule=config.mask_schedule,
        mask_ratio_start=config.mask_ratio_start,
        mask_ratio_end=config.mask_ratio_end,
        eval_mask_ratio=config.mask_ratio,
        global_step=global_step,
        total_batch_size=total_train_batch_size(training_args),
        learning_rate=f"{training_args.learning_rate:g}",
        adam_beta1=training_args.adam_beta1,
        adam_beta2=training_args.adam_beta2,
        weight_decay=training_args.weight_decay,
        lr_scheduler_type=getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
        seed=training_args.seed,
        metrics_table=metrics_table,
        has_reconstructions=has_reconstructions,
    )
    return str(card)


# --- main ------------------------------------------------------------------------------------------------


def main(args: list[str] | str | None = None) -> dict[str, Any]:
    """Train / evaluate / save / push; returns the metrics written to `metrics.json`."""
    model_args, data_args, training_args = parse_arguments(args)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # log_level defaults to "passive": show INFO on the main process unless asked otherwise (as run_mae does).
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("modeling_lmd").setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(
        f"Process rank {training_args.process_index}, device {training_args.device}, n_gpu {training_args.n_gpu}, "
        f"distributed {training_args.parallel_mode.value == 'distributed'}"
    )

    do_train, do_eval = training_args.do_train, training_args.do_eval
    if not do_train:
        logger.warning("Not training: --do_eval was given without --do_train.")

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint in ("last", "latest", "auto"):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is None:
            logger.info(f"No checkpoint in {training_args.output_dir}: starting from scratch.")
        else:
            logger.info(f"Resuming from {checkpoint}.")

    # Data.
    datasets_dict = load_image_datasets(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.train_dir,
        validation_dir=data_args.validation_dir,
        train_val_split=data_args.train_val_split,
        cache_dir=model_args.cache_dir,
        seed=training_args.seed,
    )
    if data_args.max_train_samples is not None:
        datasets_dict["train"] = (
            datasets_dict["train"].shuffle(seed=training_args.seed).select(range(min(data_args.max_train_samples, len(datasets_dict["train"]))))
        )
    has_validation = "validation" in datasets_dict and len(datasets_dict["validation"]) > 0
    if has_validation and data_args.max_eval_samples is not None:
        datasets_dict["validation"] = datasets_dict["validation"].select(
            range(min(data_args.max_eval_samples, len(datasets_dict["validation"])))
        )
    image_column = find_image_column(datasets_dict["train"], data_args.image_column_name)

    # Model (seeded so that a new model's initialisation is reproducible).
    set_seed(training_args.seed)
    model, vae_description = build_model(model_args, data_args)
    image_size = model.config.image_size
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_transform = RandomResizedCropFlip(image_size)
    eval_transform = ResizeCenterCrop(image_size)
    eval_images = (
        ImageDataset(datasets_dict["validation"], image_column, eval_transform, seed) if has_validation else None
    )

    if data_args.cache_latents:
        cache_dir = data_args.latent_cache_dir or default_latent_cache_dir()
        model.to(training_args.device)
        with training_args.main_process_first(desc="caching latents"):
            train_latents, train_info = cache_latents(
                model, datasets_dict["train"], image_column, train_transform, cache_dir,
                num_views=data_args.latent_cache_views, seed=seed, batch_size=data_args.encode_batch_size,
                description="train",
            )
            eval_latents = None
            if has_validation:
                eval_latents, _ = cache_latents(
                    model, datasets_dict["validation"], image_column, eval_transform, cache_dir,
                    num_views=1, seed=seed, batch_size=data_args.encode_batch_size, description="validation",
                )
        logger.info(f"Training on cached latents ({'reused' if train_info['reused'] else 'new'}): {train_info['path']}")
        train_dataset = LatentDataset(train_latents, seed=seed, latent_flip=data_args.latent_flip)
        eval_dataset = LatentDataset(eval_latents, seed=seed, pixels=eval_images) if has_validation else None
    else:
        train_dataset = ImageDataset(datasets_dict["train"], image_column, train_transform, seed)
        eval_dataset = eval_images

    image_processor = make_image_processor(image_size)
    trainer = LMDTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if do_train else None,
        eval_dataset=eval_dataset,
        data_collator=collate_fn,
        processing_class=image_processor,
    )

    metrics: dict[str, Any] = {}
    if do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics.update(train_result.metrics)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if do_eval and eval_dataset is not None:
        trainer.eval_baseline = True
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
        if "eval_baseline_mean_latent_psnr" in eval_metrics:
            metrics["baseline_mean_latent_psnr"] = eval_metrics["eval_baseline_mean_latent_psnr"]

    output_dir = training_args.output_dir
    has_reconstructions = False
    if trainer.is_world_process_zero():
        os.makedirs(output_dir, exist_ok=True)
        if eval_dataset is not None:
            save_reconstructions(
                trainer.lmd_model, eval_dataset, os.path.join(output_dir, "reconstructions.png"),
                data_args.num_reconstructions, derive_seed("reconstructions", training_args.eval_seed),
            )
            has_reconstructions = True
        metrics.update(
            {
                "global_step": trainer.state.global_step,
                "max_steps": trainer.state.max_steps,
                "mask_schedule": trainer.lmd_model.config.mask_schedule,
                "eval_mask_ratio": trainer.lmd_model.config.mask_ratio,
                "train_samples": len(train_dataset),
                "eval_samples": len(eval_dataset) if eval_dataset is not None else 0,
                "cache_latents": data_args.cache_latents,
            }
        )
        with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2, sort_keys=True)

    card = render_model_card(
        data_args.model_card_template or MODEL_CARD_TEMPLATE, trainer.lmd_model, model_args, data_args,
        training_args, vae_description, metrics, trainer.state.global_step, len(train_dataset), has_reconstructions,
    )
    trainer.model_card_text = card
    if training_args.push_to_hub:
        # Saves the model and processor, writes README.md from `card`, uploads the output folder.
        trainer.push_to_hub(commit_message=f"LMD pre-training: {trainer.state.global_step} steps")
    else:
        trainer.save_model()
        trainer.create_model_card()
    return metrics


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Fine-tune a pre-trained LMD encoder for image classification with the Hugging Face `Trainer`.

`LMDForImageClassification.from_pretrained(checkpoint)` keeps the checkpoint's frozen VAE and pre-trained encoder
and adds a new head (pooled tokens -> LayerNorm -> Linear); encoder and head are fine-tuned together. The script
is transformers' `examples/pytorch/image-classification/run_image_classification.py` for LMD: the same arguments
(model and data arguments and every `TrainingArguments` flag, on the command line or in one JSON file), a Hub
dataset (`--dataset_name`) or image folders with one subfolder per class (`--train_dir` / `--validation_dir`),
labels from the dataset's `ClassLabel`, RandomResizedCrop + horizontal flip for training, resize + centre crop
(the model's `LMDImageProcessor`) for evaluation, and accuracy. The device is the Trainer's choice: a GPU when
there is one (`--use_cpu` forces the CPU), or several with `torchrun` / `accelerate launch`.

Offline demo: scikit-learn's handwritten digits (8x8 scans, 10 classes) written as an image folder, fine-tuned
from the shipped demo checkpoint (`modeling_lmd/pretrained/demo-lmd`, the default `--model_name_or_path`):

    python -m modeling_lmd.demo_data --digits --output_dir data/digits
    python examples/finetune_classification.py --train_dir data/digits/train --validation_dir data/digits/validation \
        --output_dir runs/digits-clf --do_train --do_eval --max_steps 150 --per_device_train_batch_size 64 \
        --learning_rate 1e-3

With `--lora_r 8`, PEFT's LoRA adapts the attention's `query` and `value` projections (ViT's names, PEFT's defaults)
and trains the new head whole; the output folder holds the adapter, which loads back with
`PeftModel.from_pretrained(LMDForImageClassification.from_pretrained(checkpoint, num_labels=...), output_dir)`.

On a GPU, a Hub dataset and a Hub LMD checkpoint, published on the Hub at the end:

    python examples/finetune_classification.py --dataset_name beans --label_column_name labels \
        --model_name_or_path your-name/lmd-base --output_dir runs/lmd-base-beans --do_train --do_eval \
        --num_train_epochs 5 --per_device_train_batch_size 64 --learning_rate 1e-3 --bf16 \
        --eval_strategy epoch --logging_steps 10 --push_to_hub --hub_model_id your-name/lmd-base-beans

An output folder belongs to one run, as in `train_lmd.py` (`modeling_lmd.run_folder`): a folder that already holds
files is refused unless the run resumes from it (`--resume_from_checkpoint last`) or `--overwrite_output_dir` starts
anew there (deleting them first; ignored when resuming), and a second live run on it is refused, so a LoRA adapter
and a full model never end up side by side. Every `--lora_target_modules` name must match a module.

The output folder (model, image processor, metrics, model card) loads with
`pipeline("image-classification", model=output_dir, trust_remote_code=True)`, with or without the package installed
(its config names the code it ships). Images are read as pre-training reads them: every file is opened before the
first step and an unreadable one is named and skipped, as is a file whose name is not valid UTF-8. `benchmarks/downstream.py` pre-trains a small LMD on the digits
itself and compares this fine-tuning against the same encoder trained from scratch.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import transformers
from transformers import EvalPrediction, HfArgumentParser, Trainer, set_seed

from modeling_lmd import LMDForImageClassification, LMDImageProcessor
from modeling_lmd.data import RandomResizedCropFlip, drop_unreadable_images, load_image_datasets
from modeling_lmd.pretrained import DEMO_LMD
from modeling_lmd.run_folder import OutputDirTrainingArguments
from modeling_lmd.trainer import claimed_output_dir, is_vae_parameter


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEMO_LMD,
        metadata={"help": "An LMD checkpoint (folder or Hub id) whose VAE and encoder are fine-tuned under a new "
                  "head. Default: the shipped demo checkpoint (modeling_lmd/pretrained/demo-lmd)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Start a new head when the checkpoint already has one for another number of labels."},
    )
    lora_r: int = field(
        default=0, metadata={"help": "Fine-tune with PEFT's LoRA of this rank instead of every encoder weight (0: off). "
                             "The output folder then holds the adapter (and the new head)."},
    )
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling (alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(
        default="query,value",
        metadata={"help": "Comma-separated module names LoRA adapts (ViT's attention names); a run where one of them "
                  "names no module is refused."},
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset, or a local folder `datasets` can load (e.g. an image folder)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Training images, one subfolder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation images, one subfolder per class."})
    image_column_name: str = field(default="image", metadata={"help": "The column that holds the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column that holds the labels."})
    train_val_split: float | None = field(
        default=0.15, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation images."})
    augment: bool = field(
        default=True,
        metadata={"help": "Train on RandomResizedCrop + horizontal flip, as run_image_classification does; false for "
                  "sets where a crop or a flip can change the class (digits, text): then as evaluation sees them."},
    )


#: The classification head, new to every fine-tuning: LoRA trains it whole.
HEAD_MODULES = ["fc_norm", "classifier"]


def parse_arguments(args: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, OutputDirTrainingArguments))
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(args[0]))
    return parser.parse_args_into_dataclasses(args=args)


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}


def set_up_logging(training_args: OutputDirTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    if training_args.should_log:  # "passive" log level: INFO on the main process, as the transformers examples do
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(f"Process rank {training_args.process_index}, device {training_args.device}, "
                   f"{training_args.n_gpu} GPU(s), bf16 {training_args.bf16}, fp16 {training_args.fp16}")


def load_labelled_images(model_args, data_args, training_args) -> tuple[datasets.DatasetDict, list[str]]:
    """The splits, checked (columns, class labels on every image) and cleared of unreadable images, and the class
    names."""
    dataset = load_image_datasets(
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.train_dir, validation_dir=data_args.validation_dir,
        train_val_split=data_args.train_val_split, cache_dir=model_args.cache_dir, seed=training_args.seed,
    )
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    for flag, column in (("image_column_name", image_column), ("label_column_name", label_column)):
        if column not in dataset["train"].column_names:
            raise ValueError(f"--{flag} {column!r} not found; the dataset has columns {dataset['train'].column_names}.")
    labels = dataset["train"].features[label_column]
    if not isinstance(labels, datasets.ClassLabel):
        raise ValueError(f"The label column {label_column!r} is a {labels}, not a ClassLabel with the class names; "
                         "encode it first (datasets' `class_encode_column`).")
    for split in dataset:
        if None in dataset[split].unique(label_column):  # an image folder with images directly inside it
            raise ValueError(f"Some {split} images have no class: an image folder needs one subfolder per class "
                             "(<folder>/<class name>/<image>), with no image directly in <folder>.")
        # Unreadable images are named and dropped before any step, as pre-training does.
        dataset[split], _ = drop_unreadable_images(dataset[split], image_column, split)
    if training_args.do_eval and "validation" not in dataset:
        raise ValueError("--do_eval needs a validation split: --validation_dir, or a --train_val_split above 0.")
    return dataset, labels.names


def check_lora_targets(model: LMDForImageClassification, targets: list[str]) -> None:
    """Refuse LoRA targets that name no module. PEFT adapts every module whose name is a target or ends with
    "." + a target, and goes on silently when only some of the targets match."""
    names = [name for name, _ in model.named_modules()]
    unmatched = [target for target in targets if not any(name == target or name.endswith(f".{target}")
                                                         for name in names)]
    if unmatched:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.lmd.named_modules()
                         if isinstance(module, torch.nn.Linear) and not is_vae_parameter(name)})
        raise ValueError(f"--lora_target_modules: {', '.join(map(repr, unmatched))} names no module of the model. "
                         f"Give module names, or dotted ends of them; the encoder's linear layers are "
                         f"{', '.join(linear)}.")


def build_model(model_args, class_names: list[str]) -> LMDForImageClassification:
    id2label = dict(enumerate(class_names))
    model = LMDForImageClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=len(id2label), id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, cache_dir=model_args.cache_dir,
    )
    # A pre-training checkpoint's config declares its reconstruction pipeline; this classifier is not one.
    if getattr(model.config, "custom_pipelines", None):
        del model.config.custom_pipelines
    if model_args.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
        check_lora_targets(model, targets)
        lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                          target_modules=targets, modules_to_save=HEAD_MODULES)
        model = get_peft_model(model, lora)
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                        sum(p.numel() for p in model.parameters()))
    logger.warning(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f} %)")
    return model


def transformed_splits(dataset, data_args, training_args, image_processor, image_size: int):
    """The training and evaluation splits (each `None` unless asked for), cut to --max_*_samples, with their
    transforms: RandomResizedCrop + flip (or as evaluation with --augment false), and resize + centre crop."""
    image_column = data_args.image_column_name
    random_crop_flip = RandomResizedCropFlip(image_size)

    def val_transforms(examples):
        examples["pixel_values"] = list(image_processor(examples[image_column], return_tensors="pt")["pixel_values"])
        return examples

    def train_transforms(examples):
        if not data_args.augment:
            return val_transforms(examples)
        # Crops and flips draw from torch's global generator, which the Trainer seeds with --seed (DataLoader workers
        # get their seeds from it): the same command trains on the same augmented images.
        examples["pixel_values"] = [random_crop_flip(image, torch.default_generator) for image in examples[image_column]]
        return examples

    def limited(split, count, transform):
        if count is not None:  # shuffled: an image folder lists its images class by class
            split = split.shuffle(seed=training_args.seed).select(range(min(count, len(split))))
        return split.with_transform(transform)

    train = limited(dataset["train"], data_args.max_train_samples, train_transforms) if training_args.do_train else None
    evaluation = (limited(dataset["validation"], data_args.max_eval_samples, val_transforms)
                  if training_args.do_eval else None)
    return train, evaluation


def main(args: list[str] | None = None) -> dict:
    """Train and/or evaluate, save and publish; returns the train and eval metrics."""
    model_args, data_args, training_args = parse_arguments(args)
    # The transforms read the image column, which the Trainer would otherwise drop as no argument of forward().
    training_args.remove_unused_columns = False
    set_up_logging(training_args)
    # The output folder is this run's, as in train_lmd.py (modeling_lmd.run_folder): no two runs mix their files.
    with claimed_output_dir(training_args) as checkpoint:
        return fine_tune_in_claimed_folder(model_args, data_args, training_args, checkpoint)


def fine_tune_in_claimed_folder(model_args, data_args, training_args, checkpoint: str | None) -> dict:
    dataset, class_names = load_labelled_images(model_args, data_args, training_args)
    set_seed(training_args.seed)  # the new head's initialisation
    model = build_model(model_args, class_names)
    image_processor = LMDImageProcessor.from_model_config(model.config)
    train_dataset, eval_dataset = transformed_splits(dataset, data_args, training_args, image_processor,
                                                     model.config.image_size)
    label_column = data_args.label_column_name

    def collate_fn(examples):
        return {"pixel_values": torch.stack([example["pixel_values"] for example in examples]),
                "labels": torch.tensor([example[label_column] for example in examples])}

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=collate_fn, compute_metrics=compute_metrics,
        processing_class=image_processor,  # saved (and pushed) with the model: preprocessor_config.json
    )
    metrics = train_and_evaluate(trainer, training_args, train_dataset, eval_dataset, checkpoint)
    save_card(trainer, model_args, data_args, training_args)
    return metrics


def train_and_evaluate(trainer: Trainer, training_args, train_dataset, eval_dataset, checkpoint: str | None) -> dict:
    metrics = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        train_metrics = {**result.metrics, "train_samples": len(train_dataset)}
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = {**trainer.evaluate(), "eval_samples": len(eval_dataset)}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


def save_card(trainer: Trainer, model_args, data_args, training_args) -> None:
    """README.md (and the upload with --push_to_hub). The card's base_model is filled in by the Trainer from the
    checkpoint when that is a Hub id; a dataset is named only when it is a Hub id too (a local folder has no page to
    link to)."""
    card = {"tasks": "image-classification", "tags": ["image-classification", "vision", "lmd"],
            "dataset": data_args.dataset_name if data_args.dataset_name and not os.path.exists(data_args.dataset_name)
            else None}
    if training_args.push_to_hub:  # saves the model and image processor, writes README.md, uploads the folder
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
        if os.path.isdir(model_args.model_name_or_path):
            name_local_parent(os.path.join(training_args.output_dir, "README.md"), model_args.model_name_or_path)


def name_local_parent(card_path: str, parent: str) -> None:
    """transformers' card says "trained from scratch" when the checkpoint it started from is a folder (it has no Hub
    page to link to); say which folder instead."""
    with open(card_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("This model was trained from scratch on",
                        f"This model is a fine-tuned version of the local LMD checkpoint `{parent}` on")
    with open(card_path, "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()

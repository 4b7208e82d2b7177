"""Fine-tune an LMD encoder for image classification with `Trainer`, against the same model trained from scratch.

Works on any `datasets` image-classification set (`--dataset NAME_OR_PATH`, columns `--image_column` /
`--label_column`). The offline demo (`--dataset digits`, the default) uses scikit-learn's handwritten digits
(1797 real 8x8 grayscale scans, 10 classes; shipped inside scikit-learn), upscaled to the model's image size,
split 75/25 (stratified, fixed seed).

Both models share the same frozen VAE and the same budget (steps, batch, learning rate, seed); only the encoder's
initialisation differs: pre-trained LMD weights vs random. The frozen VAE never changes and there is no data
augmentation, so the latents are computed once and reused by both runs.

Without a pre-trained checkpoint, `--pretrain_steps N` pre-trains a small LMD on the training images first
(no labels; the progressive cosine mask schedule), so the comparison is self-contained and offline:

    python examples/finetune_classification.py --pretrain_steps 1500 --max_steps 300 --output_dir runs/digits
    python examples/finetune_classification.py --model_name_or_path path/to/lmd-checkpoint --max_steps 300
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, load_dataset
from transformers import Trainer, TrainingArguments

from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDImageProcessor
from modeling_lmd.data import collate_fn
from modeling_lmd.demo_data import digits_dataset
from modeling_lmd.pretrained import DEMO_VAE
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="pre-trained LMD checkpoint (folder or Hub id)")
    parser.add_argument("--dataset", default="digits", help="'digits' (offline demo) or a datasets name / path")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test", help="split off 25%% of train when the dataset lacks it")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--output_dir", default="runs/finetune_classification")
    parser.add_argument("--max_steps", type=int, default=300, help="fine-tuning steps, the same for both models")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_scratch", action="store_true", help="skip the from-scratch baseline")
    pre = parser.add_argument_group("self-contained pre-training (when no --model_name_or_path)")
    pre.add_argument("--pretrain_steps", type=int, default=0)
    pre.add_argument("--pretrain_batch_size", type=int, default=128)
    pre.add_argument("--pretrain_learning_rate", type=float, default=1.5e-3)
    pre.add_argument("--vae", default=None, help="diffusers VAE folder; 'none' for the preset's random VAE (default: the shipped demo VAE)")
    pre.add_argument("--preset", default="lmd-small")
    pre.add_argument("--image_size", type=int, default=32)
    pre.add_argument("--patch_size", type=int, default=2)
    pre.add_argument("--hidden_size", type=int, default=128, help="encoder width of the demo model")
    pre.add_argument("--num_hidden_layers", type=int, default=4)
    pre.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    args = parser.parse_args(argv)
    if args.model_name_or_path is None and args.pretrain_steps <= 0:
        parser.error("give --model_name_or_path (a pre-trained LMD checkpoint) or --pretrain_steps N")
    return args


def load_splits(args) -> tuple[Dataset, Dataset, list[str]]:
    if args.dataset == "digits":
        data = digits_dataset(seed=args.seed)
    else:
        data = load_dataset(args.dataset, args.dataset_config)
    train = data[args.train_split]
    if args.eval_split in data:
        evaluation = data[args.eval_split]
    else:
        parts = train.train_test_split(test_size=0.25, seed=args.seed)
        train, evaluation = parts["train"], parts["test"]
    if args.max_train_samples:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    feature = train.features[args.label_column]
    names = feature.names if isinstance(feature, ClassLabel) else [str(v) for v in sorted(set(train[args.label_column]))]
    return train, evaluation, names


@torch.no_grad()
def compute_latents(model, processor, dataset, args, batch_size: int = 64) -> Dataset:
    """Images -> frozen-VAE latents once, with integer labels."""
    lmd = model.base_model.eval()
    chunks = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        pixel_values = processor(batch[args.image_column], return_tensors="pt")["pixel_values"]
        chunks.append(lmd.encode_images(pixel_values).float())
    latents = torch.cat(chunks)
    labels = dataset[args.label_column] if args.label_column in dataset.column_names else [0] * len(latents)
    if args.label_column in dataset.column_names and not isinstance(dataset.features[args.label_column], ClassLabel):
        index = {str(v): i for i, v in enumerate(sorted(set(labels)))}
        labels = [index[str(v)] for v in labels]
    return Dataset.from_dict({"latents": latents.numpy(), "labels": np.asarray(labels)}).with_format("torch")


def pretrain(args, train_images: Dataset) -> str:
    """A quick LMD pre-training with `LMDTrainer` on the training images (labels unused); returns the folder."""
    overrides = {
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_hidden_layers,
        "num_attention_heads": args.num_attention_heads,
        "intermediate_size": 4 * args.hidden_size,
    }
    torch.manual_seed(args.seed)
    if args.vae == "none":
        print("--vae none: the demo uses the preset's randomly initialised (frozen) VAE")
        model = LMDForPreTraining(LMDConfig.from_preset(args.preset, **overrides))
    else:
        model = LMDForPreTraining.from_vae(args.vae or DEMO_VAE, preset=args.preset, **overrides)
    processor = LMDImageProcessor.from_model_config(model.config)
    latents = compute_latents(model, processor, train_images, args).remove_columns("labels")
    folder = os.path.join(args.output_dir, "pretrained-lmd")
    training_args = LMDTrainingArguments(
        output_dir=folder, max_steps=args.pretrain_steps, per_device_train_batch_size=args.pretrain_batch_size,
        learning_rate=args.pretrain_learning_rate, warmup_steps=0.05, logging_steps=max(1, args.pretrain_steps // 10),
        save_strategy="no", report_to="none", seed=args.seed, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_drop_last=True,
    )
    started = time.time()
    LMDTrainer(model=model, args=training_args, train_dataset=latents, data_collator=collate_fn).train()
    print(f"pre-training took {time.time() - started:.0f} s")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def finetune(model, name, train, evaluation, args) -> float:
    training_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, name),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=max(1, args.max_steps // 10),
        lr_scheduler_type="cosine",
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=max(1, args.max_steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    def accuracy(eval_prediction):
        logits, labels = eval_prediction
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, compute_metrics=accuracy)
    started = time.time()
    trainer.train()
    result = trainer.evaluate()["eval_accuracy"]
    print(f"{name}: accuracy {result:.4f} on {len(evaluation)} held-out images ({time.time() - started:.0f} s)")
    return result, trainer


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_images, eval_images, names = load_splits(args)
    checkpoint = args.model_name_or_path or pretrain(args, train_images)

    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    pretrained = LMDForImageClassification.from_pretrained(
        checkpoint, num_labels=len(names), id2label=id2label, label2id=label2id
    )
    processor = LMDImageProcessor.from_model_config(pretrained.config)
    train = compute_latents(pretrained, processor, train_images, args)
    evaluation = compute_latents(pretrained, processor, eval_images, args)

    results = {"dataset": args.dataset, "train_size": len(train), "eval_size": len(evaluation), "checkpoint": checkpoint}
    results["lmd_init_accuracy"], trainer = finetune(pretrained, "lmd-init", train, evaluation, args)
    trainer.model.save_pretrained(os.path.join(args.output_dir, "lmd-init"))
    processor.save_pretrained(os.path.join(args.output_dir, "lmd-init"))

    if not args.no_scratch:
        torch.manual_seed(args.seed)
        scratch = LMDForImageClassification(pretrained.config)  # random encoder and head ...
        scratch.lmd.vae.load_state_dict(pretrained.lmd.vae.state_dict())  # ... on the same frozen VAE
        results["scratch_accuracy"], _ = finetune(scratch, "scratch", train, evaluation, args)

    results["args"] = vars(args)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    summary = f"LMD-initialised: {results['lmd_init_accuracy']:.4f}"
    if "scratch_accuracy" in results:
        summary += f"   from scratch: {results['scratch_accuracy']:.4f}"
    print(summary)
    return results


if __name__ == "__main__":
    main()

"""The paper's "faster inference" downstream: LMDForImageClassification against transformers'
ViTForImageClassification at the same width, depth and patch grid, and digits accuracy after equal fine-tuning.

Inference images/s (batch forward, no grad, median of interleaved repetitions) in two settings: `paper` (ViT-B at
224 px: LMD on SD-sized KL-f8 latents with patch 4, 49 tokens, against a pixel ViT-B with patch 32, the same 7 x 7
grid) and `demo` (64 px, lmd-small widths: LMD latent patch 2 on f4 latents against pixel patch 8, 64 tokens
each). LMD is timed with the VAE encode included and from cached latents.

Accuracy on scikit-learn's digits (1347 training and 450 held-out 8x8 scans, upscaled to 32 px): a small LMD is
pre-trained here on the training digits (`LMDTrainer`, no labels, the preset's progressive mask schedule, on the
shipped demo VAE), then `examples/finetune_classification.py` fine-tunes it on the digits image folder; the same
fine-tuning from the model as it was before pre-training (a random encoder on the same frozen VAE) is the
from-scratch arm, and a pixel ViT of the same widths from scratch is the third. All three train for the same steps
on the same images, unaugmented (a flip or a small crop can turn one digit into another: the example's
`--augment false`), with the same budget (batch 64, learning rate 1e-3, cosine, 10 % warm-up, weight decay 0.05,
seed 0).

    python benchmarks/downstream.py --output_dir runs/benchmarks
    python benchmarks/downstream.py --quick --output_dir runs/benchmarks
"""

import importlib.util
import os

import numpy as np
import torch
from datasets import Dataset
from diffusers import AutoencoderKL
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from common import interleaved_medians, parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDImageProcessor
from modeling_lmd.data import collate_fn
from modeling_lmd.demo_data import build_digits_folder, digits_dataset
from modeling_lmd.pretrained import DEMO_VAE
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vit_like(lmd: LMDConfig, num_labels: int) -> ViTConfig:
    grid = lmd.latent_size // lmd.patch_size
    return ViTConfig(image_size=lmd.image_size, patch_size=lmd.image_size // grid, hidden_size=lmd.hidden_size,
                     num_hidden_layers=lmd.num_hidden_layers, num_attention_heads=lmd.num_attention_heads,
                     intermediate_size=lmd.intermediate_size, num_labels=num_labels)


@torch.no_grad()
def inference_rates(args) -> list[list]:
    settings = {"demo": (LMDConfig.from_preset("lmd-small", vae_config=AutoencoderKL.load_config(DEMO_VAE)), 64)}
    if not args.quick:
        settings["paper"] = (LMDConfig.from_preset("lmd-base"), 16)
    rows = []
    for name, (config, batch) in settings.items():
        config.num_labels = 10
        lmd = LMDForImageClassification(config).to(args.device).eval()
        vit = ViTForImageClassification(vit_like(config, 10)).to(args.device).eval()
        pixels = torch.rand(batch, 3, config.image_size, config.image_size, device=args.device) * 2 - 1
        latents = lmd.lmd.encode_images(pixels)
        seconds = interleaved_medians({"lmd_pixels": lambda: lmd(pixel_values=pixels),
                                       "lmd_latents": lambda: lmd(latents=latents),
                                       "vit": lambda: vit(pixel_values=pixels)},
                                      repeats=1 if args.quick else 5, warmup=1, device=args.device)
        rows.append([name, batch, config.num_patches, vit.vit.embeddings.patch_embeddings.num_patches,
                     batch / seconds["lmd_pixels"], batch / seconds["lmd_latents"], batch / seconds["vit"]])
    return rows


#: The digits model: lmd-small's layout at 32 px with narrower, shallower encoder (the pixel ViT copies it).
DIGITS_MODEL = {"image_size": 32, "patch_size": 2, "hidden_size": 128, "num_hidden_layers": 4,
                "num_attention_heads": 4, "intermediate_size": 512}


def pretrain_on_digits(args, folder: str, steps: int) -> tuple[str, str]:
    """Pre-train a small LMD on the training digits (labels unused); returns the folders of the pre-trained model
    and of the same model before pre-training (the from-scratch arm's start: same VAE, random encoder)."""
    torch.manual_seed(0)
    model = LMDForPreTraining.from_vae(DEMO_VAE, preset="lmd-small", **DIGITS_MODEL)
    model.save_pretrained(os.path.join(folder, "lmd-scratch"))
    images = digits_dataset()["train"]
    if args.quick:
        images = images.select(range(24))
    # The VAE is frozen and pre-training sees every image as it is: encode them once.
    pixels = LMDImageProcessor.from_model_config(model.config)(list(images["image"]), return_tensors="pt")
    latents = torch.cat([model.base_model.eval().encode_images(chunk) for chunk in pixels["pixel_values"].split(256)])
    training_args = LMDTrainingArguments(
        output_dir=os.path.join(folder, "lmd-pretrained"), max_steps=steps,
        per_device_train_batch_size=8 if args.quick else 128, learning_rate=1.5e-3, warmup_steps=0.05,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", seed=0,
        use_cpu=args.device == "cpu", disable_tqdm=True, dataloader_drop_last=True,
    )
    trainer = LMDTrainer(model=model, args=training_args, data_collator=collate_fn,
                         train_dataset=Dataset.from_dict({"latents": latents.numpy()}).with_format("torch"))
    trainer.train()
    trainer.save_model()  # the model and its image processor
    return training_args.output_dir, os.path.join(folder, "lmd-scratch")


def finetune(args, checkpoint: str, images: str, output_dir: str, steps: int) -> dict:
    """`examples/finetune_classification.py` on the digits image folder; its metrics."""
    spec = importlib.util.spec_from_file_location("finetune_classification",
                                                  os.path.join(REPO, "examples", "finetune_classification.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.main([
        "--model_name_or_path", checkpoint, "--train_dir", os.path.join(images, "train"),
        "--validation_dir", os.path.join(images, "validation"), "--output_dir", output_dir,
        "--do_train", "--do_eval", "--max_steps", str(steps), "--per_device_train_batch_size", "8" if args.quick else "64",
        "--per_device_eval_batch_size", "256", "--learning_rate", "1e-3", "--weight_decay", "0.05",
        "--lr_scheduler_type", "cosine", "--warmup_steps", "0.1", "--seed", "0", "--logging_steps", str(max(1, steps // 5)),
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning",
        "--augment", "false",
        *(["--use_cpu"] if args.device == "cpu" else []),
        *(["--max_train_samples", "24", "--max_eval_samples", "16"] if args.quick else []),
    ])


def pixel_vit_accuracy(args, steps: int) -> float:
    """A pixel ViT with the digits model's widths, from scratch, on the digits, for `steps` steps, trained and scored
    on the images the example gives LMD (resized, unaugmented): only the model differs."""
    config = LMDConfig.from_preset("lmd-small", **DIGITS_MODEL)
    torch.manual_seed(0)
    model = ViTForImageClassification(vit_like(config, 10))
    processor = LMDImageProcessor.from_model_config(config)
    data = digits_dataset()
    if args.quick:
        data["train"], data["test"] = data["train"].select(range(24)), data["test"].select(range(16))
    train = data["train"].with_transform(lambda batch: {
        "pixel_values": list(processor(batch["image"], return_tensors="pt")["pixel_values"]), "labels": batch["label"]})
    training_args = TrainingArguments(output_dir=os.path.join(args.output_dir, "vit"), max_steps=steps,
                                      per_device_train_batch_size=8 if args.quick else 64, learning_rate=1e-3,
                                      weight_decay=0.05, warmup_steps=max(1, steps // 10), lr_scheduler_type="cosine",
                                      save_strategy="no", report_to="none", use_cpu=args.device == "cpu",
                                      disable_tqdm=True, seed=0, remove_unused_columns=False)
    Trainer(model=model, args=training_args, train_dataset=train).train()
    with torch.no_grad():
        pixels = processor(list(data["test"]["image"]), return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels.to(model.device)).logits.cpu()
    return float((logits.argmax(-1) == torch.tensor(data["test"]["label"])).float().mean())


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--pretrain_steps", type=int, default=1500)
    cli.add_argument("--finetune_steps", type=int, default=300)
    args = cli.parse_args(argv)
    setup(args)
    rates = inference_rates(args)
    folder = os.path.join(args.output_dir, "digits")
    images = os.path.join(folder, "images")
    build_digits_folder(images)
    steps = 2 if args.quick else args.finetune_steps
    pretrained, scratch = pretrain_on_digits(args, folder, 2 if args.quick else args.pretrain_steps)
    lmd_init = finetune(args, pretrained, images, os.path.join(folder, "lmd-init"), steps)
    from_scratch = finetune(args, scratch, images, os.path.join(folder, "scratch"), steps)
    accuracy = {"dataset": "digits", "train_size": lmd_init["train_samples"], "eval_size": lmd_init["eval_samples"],
                "checkpoint": pretrained, "lmd_init_accuracy": lmd_init["eval_accuracy"],
                "scratch_accuracy": from_scratch["eval_accuracy"]}
    accuracy["pixel_vit_scratch_accuracy"] = pixel_vit_accuracy(args, steps)
    markdown = table(["setting", "batch", "LMD tokens", "ViT tokens", "LMD img/s (VAE encode incl.)",
                      "LMD img/s (cached latents)", "pixel ViT img/s"], rates)
    markdown += table(["classifier on digits (same fine-tuning steps)", "held-out accuracy"],
                      [["LMD pre-trained encoder", accuracy["lmd_init_accuracy"]],
                       ["LMD encoder from scratch (same frozen VAE)", accuracy["scratch_accuracy"]],
                       ["pixel ViT from scratch", accuracy["pixel_vit_scratch_accuracy"]]])
    results = {"inference": rates, "accuracy": accuracy,
               "mean_pixel_speedup": float(np.mean([r[4] / r[6] for r in rates]))}
    write_results(args, "downstream", results, markdown)
    return results


if __name__ == "__main__":
    main()

"""The paper's "faster inference" downstream: LMDForImageClassification against transformers'
ViTForImageClassification at the same width, depth and patch grid, and digits accuracy after equal fine-tuning.

Inference images/s (batch forward, no grad, median of interleaved repetitions) in two settings: `paper` (ViT-B at
224 px: LMD on SD-sized KL-f8 latents with patch 4, 49 tokens, against a pixel ViT-B with patch 32, the same 7 x 7
grid) and `demo` (64 px, lmd-small widths: LMD latent patch 2 on f4 latents against pixel patch 8, 64 tokens
each). LMD is timed with the VAE encode included and from cached latents. Accuracy: scikit-learn's digits (450
held-out scans), `examples/finetune_classification.py` fine-tuning an LMD-pre-trained encoder and the same from
scratch, beside a pixel ViT of the same widths from scratch, all for the same steps.

    python benchmarks/downstream.py --output_dir runs/benchmarks
    python benchmarks/downstream.py --quick --output_dir runs/benchmarks
"""

import importlib.util
import os

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from common import interleaved_medians, parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForImageClassification, LMDImageProcessor
from modeling_lmd.demo_data import digits_dataset
from modeling_lmd.pretrained import DEMO_VAE


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


def pixel_vit_accuracy(args, steps: int) -> float:
    """A pixel ViT with the fine-tuning example's widths, from scratch, on the digits, for `steps` steps."""
    config = LMDConfig.from_preset("lmd-small", image_size=32, hidden_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, intermediate_size=512)
    torch.manual_seed(0)
    model = ViTForImageClassification(vit_like(config, 10))
    processor = LMDImageProcessor(size={"height": 32, "width": 32})
    data = digits_dataset()
    if args.quick:
        data["train"], data["test"] = data["train"].select(range(24)), data["test"].select(range(16))

    def encode(split):
        pixels = processor(list(split["image"]), return_tensors="pt")["pixel_values"]
        return [{"pixel_values": p, "labels": int(label)} for p, label in zip(pixels, split["label"])]

    train, test = encode(data["train"]), encode(data["test"])
    training_args = TrainingArguments(output_dir=os.path.join(args.output_dir, "vit"), max_steps=steps,
                                      per_device_train_batch_size=8 if args.quick else 64, learning_rate=1e-3,
                                      weight_decay=0.05, warmup_steps=max(1, steps // 10), lr_scheduler_type="cosine",
                                      save_strategy="no", report_to="none", use_cpu=args.device == "cpu",
                                      disable_tqdm=True, seed=0)
    Trainer(model=model, args=training_args, train_dataset=train).train()
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([t["pixel_values"] for t in test])).logits
    return float((logits.argmax(-1) == torch.tensor([t["labels"] for t in test])).float().mean())


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--pretrain_steps", type=int, default=1500)
    cli.add_argument("--finetune_steps", type=int, default=300)
    args = cli.parse_args(argv)
    setup(args)
    rates = inference_rates(args)
    spec = importlib.util.spec_from_file_location("finetune_classification",
                                                  os.path.join(REPO, "examples", "finetune_classification.py"))
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    steps = 2 if args.quick else args.finetune_steps
    quick = ["--max_train_samples", "24", "--max_eval_samples", "16", "--pretrain_batch_size", "8",
             "--batch_size", "8"] if args.quick else []
    accuracy = finetune.main(["--pretrain_steps", "2" if args.quick else str(args.pretrain_steps),
                              "--max_steps", str(steps), "--output_dir", os.path.join(args.output_dir, "digits"),
                              *quick])
    accuracy["pixel_vit_scratch_accuracy"] = pixel_vit_accuracy(args, steps)
    markdown = table(["setting", "batch", "LMD tokens", "ViT tokens", "LMD img/s (VAE encode incl.)",
                      "LMD img/s (cached latents)", "pixel ViT img/s"], rates)
    markdown += table(["classifier on digits (same fine-tuning steps)", "held-out accuracy"],
                      [["LMD pre-trained encoder", accuracy["lmd_init_accuracy"]],
                       ["LMD encoder from scratch (same frozen VAE)", accuracy.get("scratch_accuracy", float("nan"))],
                       ["pixel ViT from scratch", accuracy["pixel_vit_scratch_accuracy"]]])
    results = {"inference": rates, "accuracy": {k: v for k, v in accuracy.items() if k != "args"},
               "mean_pixel_speedup": float(np.mean([r[4] / r[6] for r in rates]))}
    write_results(args, "downstream", results, markdown)
    return results


if __name__ == "__main__":
    main()

"""Pixel-space MAE baseline: transformers' ViTMAEForPreTraining trained like the main job, scored like LMD.

`pixel_mae_config` matches a latent LMD setting token for token (64 px, pixel patch 8 gives the same 8 x 8 patch
grid as lmd-small's f4 latents with patch 2) with the same widths; `train_pixel_mae` trains it with the
Hugging Face Trainer on the demo photographs (same augmentation, mask ratio per step from `mask_ratio_at`, the
same optimizer settings as `LMDTrainingArguments`); `pixel_mae_psnr` scores the hidden region in pixel space on
exactly the masks `examples/evaluate_reconstruction.py` gives LMD (one seeded mask per image), with the same
colour correction from the visible pixels. Pixel MAE never sees hidden pixels, so it is leak-free by construction.

    python benchmarks/pixel_mae.py --max_steps 600 --seeds 0 1 2 --output_dir runs/quality   # the main job's budget
"""

import os
import time

import numpy as np
import torch
from transformers import TrainerCallback, ViTMAEConfig, ViTMAEForPreTraining
from transformers import Trainer

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig, mask_ratio_at
from modeling_lmd.data import ImageDataset, RandomResizedCropFlip, collate_fn, derive_seed, load_image_datasets
from modeling_lmd.metrics import mask_noise, psnr
from modeling_lmd.trainer import LMDTrainingArguments


def pixel_mae_config(lmd: LMDConfig) -> ViTMAEConfig:
    """A ViTMAE with the LMD config's widths and depths and its patch grid, on pixels."""
    grid = lmd.grid_size
    return ViTMAEConfig(
        image_size=lmd.image_size, patch_size=lmd.image_size // grid, hidden_size=lmd.hidden_size,
        num_hidden_layers=lmd.num_hidden_layers, num_attention_heads=lmd.num_attention_heads,
        intermediate_size=lmd.intermediate_size, decoder_hidden_size=lmd.decoder_hidden_size,
        decoder_num_hidden_layers=lmd.decoder_num_hidden_layers,
        decoder_num_attention_heads=lmd.decoder_num_attention_heads,
        decoder_intermediate_size=lmd.decoder_intermediate_size, layer_norm_eps=lmd.layer_norm_eps,
        mask_ratio=lmd.mask_ratio_end,
    )


class MaskScheduleCallback(TrainerCallback):
    """ViTMAE reads its ratio from `config.mask_ratio`: set it before every optimizer step."""

    def __init__(self, schedule: str):
        self.schedule = schedule

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.config.mask_ratio = mask_ratio_at(self.schedule, state.global_step, state.max_steps)


def train_pixel_mae(train_dir: str, output_dir: str, max_steps: int, schedule: str = "cosine", seed: int = 0,
                    batch_size: int = 64, base_learning_rate: float = 6e-3, lmd_preset: str = "lmd-small",
                    max_train_samples: int | None = None, **training_kwargs) -> tuple[ViTMAEForPreTraining, float]:
    """Train a pixel MAE like the main job trains LMD; returns the model and the training seconds."""
    config = pixel_mae_config(LMDConfig.from_preset(lmd_preset))
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(config)
    train = load_image_datasets(train_dir=train_dir, train_val_split=0, seed=seed)["train"]
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    args = LMDTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=base_learning_rate * batch_size / 256, warmup_steps=0.05, save_strategy="no",
        report_to="none", seed=seed, disable_tqdm=True, logging_steps=max(1, max_steps // 10),
        dataloader_pin_memory=False, **training_kwargs,
    )
    trainer = Trainer(model=model, args=args, data_collator=collate_fn, callbacks=[MaskScheduleCallback(schedule)],
                      train_dataset=ImageDataset(train, "image", RandomResizedCropFlip(config.image_size), seed))
    started = time.time()
    trainer.train()
    return model.eval(), time.time() - started


@torch.no_grad()
def pixel_mae_psnr(model: ViTMAEForPreTraining, pixels: torch.Tensor, ratio: float, seed: int,
                   batch_size: int = 64) -> float:
    """Mean hidden-region PSNR (dB) with LMD's evaluation masks (image i: `derive_seed("eval", seed, i)`)."""
    config = model.config
    grid = config.image_size // config.patch_size
    model.config.mask_ratio = ratio
    values = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(model.device)
        seeds = [derive_seed("eval", seed, start + i) for i in range(len(batch))]
        out = model(pixel_values=batch, noise=mask_noise(seeds, grid * grid, model.device))
        hidden = out.mask.reshape(-1, 1, grid, grid).repeat_interleave(config.patch_size, 2)
        hidden = hidden.repeat_interleave(config.patch_size, 3)
        predicted = model.unpatchify(out.logits, (config.image_size, config.image_size))
        # The colour correction LMD's reconstruct applies, on pixel MAE's own prediction of the visible pixels.
        visible = 1.0 - hidden
        offset = ((batch - predicted) * visible).sum(dim=(2, 3), keepdim=True) / visible.sum(dim=(2, 3), keepdim=True)
        values.append(psnr((predicted + offset).clamp(-1, 1), batch, hidden).cpu())
    return float(torch.cat(values).mean())


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--max_steps", type=int, default=400)
    cli.add_argument("--schedule", default="cosine")
    cli.add_argument("--base_learning_rate", type=float, default=6e-3, help="the main job's (lr = base x 64 / 256)")
    cli.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = cli.parse_args(argv)
    setup(args)
    from modeling_lmd import LMDImageProcessor
    from modeling_lmd.demo_data import build_demo_dataset

    build_demo_dataset(args.data_dir, resolution=64)
    folder = os.path.join(args.data_dir, "validation")
    names = sorted(os.listdir(folder))[: 16 if args.quick else None]
    processor = LMDImageProcessor(size={"height": 64, "width": 64})
    pixels = processor([os.path.join(folder, n) for n in names], return_tensors="pt")["pixel_values"]
    rows = []
    for seed in args.seeds:
        model, seconds = train_pixel_mae(os.path.join(args.data_dir, "train"), os.path.join(args.output_dir, "pixel-mae"),
                                         4 if args.quick else args.max_steps, args.schedule, seed,
                                         base_learning_rate=args.base_learning_rate,
                                         max_train_samples=32 if args.quick else None, use_cpu=args.device == "cpu")
        rows.append([seed, seconds] + [pixel_mae_psnr(model, pixels, r, 0) for r in (0.25, 0.5, 0.75)])
    markdown = table(["seed", "train s", "PSNR 0.25", "PSNR 0.5", "PSNR 0.75"], rows)
    results = {"rows": rows, "mean": np.mean([r[2:] for r in rows], axis=0).tolist()}
    write_results(args, "pixel_mae", results, markdown)
    return results


if __name__ == "__main__":
    main()

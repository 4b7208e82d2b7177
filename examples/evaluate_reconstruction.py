"""How well an LMD checkpoint fills hidden regions, next to classical inpainting, the mean-colour fill and the VAE alone.

For every folder of images, mask ratio and seed, each image gets its own seeded random patch mask, and
`modeling_lmd.metrics.reconstruction_metrics` scores the hidden region in pixel space: the model leak-free (as
the pipeline runs it: hidden pixels painted over before the VAE sees the image) and in the paper's setting
(whole image encoded, latents masked), beside classical inpainting (OpenCV's Telea and Navier-Stokes, scikit-image's
biharmonic: the `eval` extra), the pixel mean-colour fill, the mean-latent fill and the VAE's own reconstruction, in
PSNR and SSIM. Options given as lists (`--num_inference_steps 1 4 8 --reveal_order random nearest`) are
evaluated in every combination.

    python -m modeling_lmd.demo_data --output_dir data/demo                 # validation tiles
    python -m modeling_lmd.demo_data --unseen --output_dir data/unseen      # photos the project never saw
    python examples/evaluate_reconstruction.py --model outputs/lmd-demo \
        --data_dir data/demo/validation data/unseen --mask_ratios 0.25 0.5 0.75 --seeds 0 1 2 \
        --output_dir runs/eval

Writes `results.json` (mean and standard deviation over seeds of every metric) and `results.md` (one table per
folder and sampler setting); with `--grid_images N`, `grid-<folder>-<ratio>.png`: original | masked |
reconstruction | reconstruction with the visible pixels pasted back, for N images spread over the folder.
"""

import argparse
import itertools
import json
import os
import time

import numpy as np
import torch

from modeling_lmd import LMDForPreTraining, LMDImageProcessor
from modeling_lmd.data import derive_seed
from modeling_lmd.metrics import METRIC_NAMES, reconstruction_metrics, save_reconstruction_grid
from modeling_lmd.pretrained import DEMO_LMD

#: The columns of results.md: (metric, header).
TABLE = (
    ("masked_psnr", "LMD leak-free"),
    ("masked_psnr_latent_masking", "LMD latent masking"),
    ("biharmonic_psnr", "biharmonic"),
    ("telea_psnr", "Telea"),
    ("navier_stokes_psnr", "Navier-Stokes"),
    ("pixel_mean_fill_psnr", "mean-colour fill"),
    ("latent_mean_fill_psnr", "mean-latent fill"),
    ("vae_psnr", "VAE alone"),
    ("visible_psnr", "visible: LMD output"),
    ("masked_ssim", "SSIM: LMD"),
    ("biharmonic_ssim", "SSIM: biharmonic"),
    ("telea_ssim", "SSIM: Telea"),
    ("pixel_mean_fill_ssim", "SSIM: mean-colour fill"),
    ("vae_ssim", "SSIM: VAE alone"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD,
                        help="LMD pre-training checkpoint, folder or Hub id (default: the shipped one)")
    parser.add_argument("--data_dir", nargs="+", required=True, help="folders of images (PNG / JPEG)")
    parser.add_argument("--mask_ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_inference_steps", type=int, nargs="+", default=[1])
    parser.add_argument("--reveal_order", nargs="+", default=["random"], choices=("random", "nearest"))
    parser.add_argument("--mask_dilation", type=int, nargs="+", default=[0])
    parser.add_argument("--blend_radius", type=int, nargs="+", default=[None])
    parser.add_argument("--colour_correction", type=int, nargs="+", default=[1], choices=(0, 1))
    parser.add_argument("--max_images", type=int, default=None, help="first N images of each folder")
    parser.add_argument("--grid_images", type=int, default=0,
                        help="also draw MAE's four panels for N images of each folder at each ratio (grid-*.png)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output_dir", default="runs/evaluate_reconstruction")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when present)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="what the model is loaded in (from_pretrained's dtype); the metrics are float32")
    return parser.parse_args(argv)


def load_folder(folder: str, processor, max_images: int | None) -> torch.Tensor:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".png", ".jpg", ".jpeg")))[:max_images]
    if not names:
        raise ValueError(f"No PNG or JPEG images in {folder}.")
    return processor([os.path.join(folder, n) for n in names], return_tensors="pt")["pixel_values"]


def evaluate(model, pixels: torch.Tensor, ratio: float, seed: int, batch_size: int, **kwargs) -> dict[str, float]:
    """Mean over images of every metric; image `i` is masked from `derive_seed("eval", seed, i)`."""
    totals = {name: [] for name in METRIC_NAMES}
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        seeds = [derive_seed("eval", seed, start + i) for i in range(len(batch))]
        for name, values in reconstruction_metrics(model, batch, seeds, mask_ratio=ratio, **kwargs).items():
            totals[name].append(values.float().cpu())
    return {name: float(torch.cat(values).nanmean()) for name, values in totals.items()}


def markdown(results: list[dict]) -> str:
    lines = []
    key = lambda r: (r["data_dir"], r["num_inference_steps"], r["reveal_order"], r["mask_dilation"],  # noqa: E731
                     r["blend_radius"], r["colour_correction"])
    for group, rows in itertools.groupby(results, key=key):
        folder, steps, order, dilation, radius, correction = group
        rows = list(rows)
        lines += [f"\n**{folder}** ({rows[0]['num_images']} images, seeds {rows[0]['seeds']}; "
                  f"num_inference_steps={steps}, reveal_order={order}, mask_dilation={dilation}, "
                  f"blend_radius={radius}, colour_correction={correction}); PSNR in dB, hidden region unless "
                  "marked visible, mean ± std over seeds\n",
                  "| mask ratio | " + " | ".join(header for _, header in TABLE) + " |",
                  "| ---: |" + " ---: |" * len(TABLE)]
        for row in rows:
            cells = [f"{row['mean'][name]:.{3 if 'ssim' in name else 2}f} ± {row['std'][name]:.{3 if 'ssim' in name else 2}f}"
                     for name, _ in TABLE]
            lines.append(f"| {row['mask_ratio']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    model = LMDForPreTraining.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    processor = LMDImageProcessor.from_model_config(model.config)
    results = []
    started = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    for folder in args.data_dir:
        pixels = load_folder(folder, processor, args.max_images)
        for steps, order, dilation, radius, correction, ratio in itertools.product(
            args.num_inference_steps, args.reveal_order, args.mask_dilation, args.blend_radius,
            args.colour_correction, args.mask_ratios
        ):
            if steps == 1 and order != args.reveal_order[0]:
                continue  # one step reveals everything at once: the order does not matter
            options = {"num_inference_steps": steps, "reveal_order": order, "mask_dilation": dilation,
                       "blend_radius": radius, "colour_correction": bool(correction)}
            per_seed = [evaluate(model, pixels, ratio, seed, args.batch_size, **options) for seed in args.seeds]
            stacked = {name: np.array([r[name] for r in per_seed]) for name in METRIC_NAMES}
            results.append({"data_dir": folder, "num_images": len(pixels), "mask_ratio": ratio, "seeds": args.seeds,
                            **options, "mean": {k: float(v.mean()) for k, v in stacked.items()},
                            "std": {k: float(v.std()) for k, v in stacked.items()}})
            if args.grid_images and steps == args.num_inference_steps[0] and order == args.reveal_order[0]:
                picks = torch.linspace(0, len(pixels) - 1, args.grid_images).long()
                name = f"grid-{os.path.basename(folder.rstrip('/'))}-{ratio:g}.png"
                save_reconstruction_grid(os.path.join(args.output_dir, name), model, pixels[picks],
                                         [derive_seed("eval", args.seeds[0], int(i)) for i in picks],
                                         mask_ratio=ratio, mask_dilation=dilation, blend_radius=radius,
                                         colour_correction=bool(correction))
            print(f"{folder} ratio {ratio:.2f} {options}: LMD {results[-1]['mean']['masked_psnr']:.2f} dB, "
                  f"biharmonic {results[-1]['mean']['biharmonic_psnr']:.2f} dB, "
                  f"Telea {results[-1]['mean']['telea_psnr']:.2f} dB, "
                  f"mean-colour fill {results[-1]['mean']['pixel_mean_fill_psnr']:.2f} dB, "
                  f"VAE {results[-1]['mean']['vae_psnr']:.2f} dB")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({"model": args.model, "dtype": args.dtype, "seconds": round(time.time() - started, 1),
                   "results": results}, handle, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()

"""Open question 3: which latent projector? A KL VAE, a VQModel and an AutoencoderTiny of the same widths, each
trained with `examples/train_vae.py` on the demo photographs for the same wall-clock budget, then LMD on each.

Per projector: the VAE's own held-out PSNR, the encode cost (images/s), and LMD's held-out leak-free PSNR in the
hidden region at mask ratio 0.75 after the same LMD budget. The shipped demo VAE (a KL VAE trained much longer,
see its card) is listed as a reference row.

    python benchmarks/projector.py --vae_minutes 6 --lmd_budget_s 150 --output_dir runs/benchmarks
    python benchmarks/projector.py --quick --output_dir runs/benchmarks
"""

import importlib.util
import os
import time

import torch

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForPreTraining
from modeling_lmd.metrics import psnr
from modeling_lmd.pretrained import DEMO_VAE
from runs import RATIO, demo_splits, lmd_run, references


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECTORS = ("AutoencoderKL", "VQModel", "AutoencoderTiny")
_spec = importlib.util.spec_from_file_location("train_vae", os.path.join(REPO, "examples", "train_vae.py"))
train_vae = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_vae)


@torch.no_grad()
def vae_quality(vae_path: str, pixels: torch.Tensor) -> tuple[float, float]:
    """The VAE's own PSNR on the validation tiles (through LMD's latents) and its encode rate in images/s."""
    lmd = LMDForPreTraining.from_vae(vae_path, preset="lmd-small").lmd.eval()
    started = time.perf_counter()
    latents = lmd.encode_images(pixels)
    rate = len(pixels) / (time.perf_counter() - started)
    return float(psnr(lmd.decode_latents(latents), pixels).mean()), rate


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--vae_minutes", type=float, default=6.0)
    cli.add_argument("--lmd_budget_s", type=float, default=150.0)
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args(argv)
    setup(args)
    train_split, pixels = demo_splits(args.data_dir, args.quick)
    rows, runs = [], []
    for name in ("shipped demo VAE (KL)", *PROJECTORS):
        path = DEMO_VAE
        if name in PROJECTORS:
            path = os.path.join(args.output_dir, "vae", name)
            vae_args = ["--vae_class", name, "--data_dir", args.data_dir, "--output_dir", path, "--seed", str(args.seed),
                        "--max_minutes", str(args.vae_minutes)]
            if args.quick:  # the smoke setting: an untrained VAE of the class, saved as the script saves it
                vae = train_vae.build_vae(train_vae.parse_args(vae_args))
                vae.register_to_config(scaling_factor=1.0)
                vae.save_pretrained(path)
            else:
                train_vae.main(vae_args)
        vae_psnr, encode_rate = vae_quality(path, pixels)
        config = LMDConfig.from_preset("lmd-small")
        result = lmd_run(config, train_split, pixels, args, args.seed, budget_s=6.0 if args.quick else args.lmd_budget_s,
                         scores=1, vae=path)
        lmd_psnr = result["curve"][-1][2]
        refs = references(pixels, vae=path)
        runs.append({"projector": name, "vae_psnr": vae_psnr, "encode_images_per_s": encode_rate,
                     "lmd_psnr": lmd_psnr, "lmd_steps": result["max_steps"], "references": refs})
        rows.append([name, f"{vae_psnr:.2f}", f"{encode_rate:.0f}", f"{lmd_psnr:.2f}",
                     f"{refs['pixel_mean_fill_psnr']:.2f}", result["max_steps"]])
    markdown = table(["projector", "VAE PSNR (dB)", "encode img/s", f"LMD PSNR at {RATIO} (dB)",
                      "mean-colour fill (dB)", "LMD steps in budget"], rows)
    markdown += (f"\nEach VAE trained {args.vae_minutes:g} min on the demo photographs (the shipped one longer); LMD "
                 f"budget {args.lmd_budget_s:g} s each, seed {args.seed}.\n")
    results = {"runs": runs}
    write_results(args, "projector", results, markdown)
    return results


if __name__ == "__main__":
    main()

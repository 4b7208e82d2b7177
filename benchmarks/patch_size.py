"""Open question 2: which latent patch size? Patch 1 / 2 / 4 on 64 px f4 latents (256 / 64 / 16 tokens).

Step time (median of timed steps) and held-out leak-free PSNR at mask ratio 0.75 after the same wall-clock budget,
LMD in the main job's setting otherwise (lmd-small widths, cached latents, cosine schedule).

    python benchmarks/patch_size.py --budget_s 150 --seeds 0 --output_dir runs/benchmarks
    python benchmarks/patch_size.py --quick --output_dir runs/benchmarks
"""

import numpy as np

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig
from runs import RATIO, demo_splits, lmd_run, references


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--budget_s", type=float, default=150.0)
    cli.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = cli.parse_args(argv)
    setup(args)
    train_split, pixels = demo_splits(args.data_dir, args.quick)
    budget, seeds = (6.0, args.seeds[:1]) if args.quick else (args.budget_s, args.seeds)
    rows, runs = [], []
    for patch in (1, 2, 4):
        config = LMDConfig.from_preset("lmd-small", patch_size=patch)
        results = [lmd_run(config, train_split, pixels, args, seed, budget_s=budget, scores=2) for seed in seeds]
        final = [r["curve"][-1] for r in results]
        seconds_per_step = np.mean([(s - r["caching_s"]) / step for (s, step, _), r in zip(final, results)])
        values = [value for _, _, value in final]
        runs.append({"patch_size": patch, "tokens": config.num_patches, "seconds_per_step": seconds_per_step,
                     "steps": [step for _, step, _ in final], "psnr": values})
        rows.append([patch, config.num_patches, f"{seconds_per_step:.3f}", int(np.mean(runs[-1]["steps"])),
                     f"{np.mean(values):.2f} ± {np.std(values):.2f}"])
    refs = references(pixels)
    markdown = table(["latent patch", "tokens", "s/step (incl. data)", "steps in budget",
                      f"held-out PSNR at {RATIO} (dB)"], rows)
    markdown += (f"\nBudget {budget:.0f} s per run (latent caching charged), seeds {seeds}; mean-colour fill "
                 f"{refs['pixel_mean_fill_psnr']:.2f} dB, VAE alone {refs['vae_psnr']:.2f} dB.\n")
    results = {"runs": runs, "budget_s": budget, "references": refs}
    write_results(args, "patch_size", results, markdown)
    return results


if __name__ == "__main__":
    main()

"""Open question 1: which mask-ratio schedule is best at equal compute?

LMD in the main job's setting (lmd-small on the demo photographs, cached latents, batch 64) trained for the same
number of steps with each schedule (uniform, piecewise, cosine, and constant 0.75 as MAE does), several seeds;
held-out leak-free PSNR in the hidden region at mask ratio 0.75 after each third of training and at the end, as
mean ± std over seeds, with a plot of the curves.

    python benchmarks/schedules.py --steps 300 --seeds 0 1 2 --output_dir runs/benchmarks
    python benchmarks/schedules.py --quick --output_dir runs/benchmarks
"""

import os

import numpy as np

from common import parser, setup, table, write_results
from modeling_lmd import MASK_SCHEDULES, LMDConfig
from runs import RATIO, demo_splits, lmd_run, references


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--steps", type=int, default=300)
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = cli.parse_args(argv)
    setup(args)
    train_split, pixels = demo_splits(args.data_dir, args.quick)
    steps, seeds = (3, args.seeds[:1]) if args.quick else (args.steps, args.seeds)
    runs = []
    for schedule in MASK_SCHEDULES:
        for seed in seeds:
            result = lmd_run(LMDConfig.from_preset("lmd-small", mask_schedule=schedule), train_split, pixels, args,
                             seed, steps=steps, scores=3)
            runs.append({"schedule": schedule, "seed": seed, "curve": result["curve"]})
    rows = []
    for schedule in MASK_SCHEDULES:
        curves = np.array([[value for _, _, value in r["curve"]] for r in runs if r["schedule"] == schedule])
        rows.append([schedule] + [f"{curves[:, i].mean():.2f} ± {curves[:, i].std():.2f}" for i in range(3)])
    refs = references(pixels)
    markdown = table(["schedule", f"PSNR after T/3 ({RATIO})", "after 2T/3", "at the end (T)"], rows)
    markdown += (f"\n{steps} steps, seeds {seeds}; references on the same masks: mean-colour fill "
                 f"{refs['pixel_mean_fill_psnr']:.2f} dB, VAE alone {refs['vae_psnr']:.2f} dB.\n")
    plot(runs, refs, os.path.join(args.output_dir, "schedules.png"))
    results = {"runs": runs, "steps": steps, "references": refs}
    write_results(args, "schedules", results, markdown)
    return results


def plot(runs, refs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for colour, schedule in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), MASK_SCHEDULES):
        curves = np.array([[value for _, _, value in r["curve"]] for r in runs if r["schedule"] == schedule])
        steps = [step for _, step, _ in next(r for r in runs if r["schedule"] == schedule)["curve"]]
        axis.errorbar(steps, curves.mean(0), yerr=curves.std(0), color=colour, marker="o", capsize=3, label=schedule)
    axis.axhline(refs["pixel_mean_fill_psnr"], color="gray", linestyle="--", label="mean-colour fill")
    axis.set(xlabel="optimizer step", ylabel=f"held-out PSNR, hidden region, ratio {RATIO} (dB)",
             title="Mask schedules at equal steps")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

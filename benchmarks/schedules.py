"""Open question 1: which mask-ratio schedule is best at equal compute?

LMD in the main job's setting (lmd-small on the demo photographs, cached latents, batch 64, the main job's
learning rate) trained with each schedule (uniform, piecewise, cosine, and constant 0.75 as MAE does), several
seeds, for the same number of steps; and, with `--budget_s`, once more for the same wall-clock (seed 0; a schedule
whose steps are cheaper, such as the constant 0.75, then takes more of them). Held out: leak-free PSNR in the
hidden region at mask ratio 0.75 and averaged over 0.25 / 0.5 / 0.75, on the validation tiles and on the
photographs the project never saw, after each third of training; mean ± std over seeds, with a plot.

    python benchmarks/schedules.py --steps 300 --seeds 0 1 2 --output_dir runs/benchmarks
    python benchmarks/schedules.py --steps 0 --budget_s 200 --output_dir runs/benchmarks-wall-clock
    python benchmarks/schedules.py --quick --budget_s 20 --output_dir runs/benchmarks
"""

import os

import numpy as np

from common import parser, setup, table, write_results
from modeling_lmd import MASK_SCHEDULES, LMDConfig
from runs import RATIO, demo_splits, lmd_psnr, lmd_run, references, unseen_pixels


#: The ratios a score averages over (the Quality tables' columns).
RATIOS = (0.25, 0.5, RATIO)
#: The score's entries: (photo set, what), in table order.
COLUMNS = (("validation", "at 0.75"), ("validation", "mean over ratios"), ("unseen", "at 0.75"),
           ("unseen", "mean over ratios"))


def scorer(sets: dict):
    """`score(model)` -> {"validation at 0.75": dB, "validation mean over ratios": dB, ...} for `sets` of pixels."""
    def score(model) -> dict:
        values = {}
        for name, pixels in sets.items():
            by_ratio = {ratio: lmd_psnr(model, pixels, ratio) for ratio in RATIOS}
            values[f"{name} at 0.75"] = by_ratio[RATIO]
            values[f"{name} mean over ratios"] = float(np.mean(list(by_ratio.values())))
        return values
    return score


def summary(runs: list[dict], schedule: str, column: str) -> list[str]:
    """`mean ± std` over the seeds of `schedule` at each scoring point."""
    curves = np.array([[values[column] for _, _, values in r["curve"]] for r in runs if r["schedule"] == schedule])
    return [f"{curves[:, i].mean():.2f} ± {curves[:, i].std():.2f}" for i in range(curves.shape[1])]


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--steps", type=int, default=300, help="steps of the equal-steps runs (0: none)")
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cli.add_argument("--budget_s", type=float, default=None,
                     help="also train every schedule (seed 0) for this wall-clock, latent caching charged")
    cli.add_argument("--unseen_dir", default="data/unseen", help="the unseen photographs (built there if missing)")
    args = cli.parse_args(argv)
    setup(args)
    train_split, pixels = demo_splits(args.data_dir, args.quick)
    # The smoke setting downloads nothing: validation tiles stand in for the unseen photographs.
    sets = {"validation": pixels, "unseen": pixels if args.quick else unseen_pixels(args.unseen_dir, args.quick)}
    score = scorer(sets)
    steps, seeds = (3, args.seeds[:1]) if args.quick else (args.steps, args.seeds)
    runs, timed = [], []
    for schedule in MASK_SCHEDULES:
        config = LMDConfig.from_preset("lmd-small", mask_schedule=schedule)
        for seed in seeds if steps else []:
            result = lmd_run(config, train_split, pixels, args, seed, steps=steps, scores=3, score=score)
            runs.append({"schedule": schedule, "seed": seed, "curve": result["curve"]})
        if args.budget_s:
            result = lmd_run(config, train_split, pixels, args, seeds[0], budget_s=args.budget_s, scores=3, score=score)
            timed.append({"schedule": schedule, "seed": seeds[0], "planned_steps": result["max_steps"],
                          "curve": result["curve"]})
    refs = {name: references(set_pixels) for name, set_pixels in sets.items()}
    markdown = table(["photos", "held-out PSNR (dB)", "schedule", "after T/3", "after 2T/3", "at the end (T)"],
                     [[photos, what, schedule, *summary(runs, schedule, f"{photos} {what}")]
                      for photos, what in COLUMNS for schedule in MASK_SCHEDULES]) if runs else ""
    if runs:
        markdown += f"\n{steps} steps, seeds {seeds}; mean ± std over seeds.\n"
    if timed:
        markdown += "\n" + table(["schedule", "steps", "seconds", *[f"{p} {w}" for p, w in COLUMNS]],
                          [[r["schedule"], r["curve"][-1][1], f"{r['curve'][-1][0]:.0f}",
                            *[f"{r['curve'][-1][2][f'{p} {w}']:.2f}" for p, w in COLUMNS]] for r in timed])
        markdown += (f"\nEqual wall-clock: {args.budget_s:g} s each (seconds: training and latent caching, scoring not "
                     f"charged); seed {seeds[0]}.\n")
    markdown += ("\nReferences on the same masks at 0.75: " + "; ".join(
        f"{name}: mean-colour fill {ref['pixel_mean_fill_psnr']:.2f} dB, VAE alone {ref['vae_psnr']:.2f} dB"
        for name, ref in refs.items()) + ".\n")
    if runs:
        plot(runs, refs, os.path.join(args.output_dir, "schedules.png"))
    results = {"runs": runs, "equal_wall_clock": timed, "steps": steps, "references": refs}
    write_results(args, "schedules", results, markdown)
    return results


def plot(runs, refs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for axis, photos in zip(axes, ("validation", "unseen")):
        column = f"{photos} at 0.75"
        for colour, schedule in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), MASK_SCHEDULES):
            curves = np.array([[values[column] for _, _, values in r["curve"]] for r in runs
                               if r["schedule"] == schedule])
            steps = [step for _, step, _ in next(r for r in runs if r["schedule"] == schedule)["curve"]]
            axis.errorbar(steps, curves.mean(0), yerr=curves.std(0), color=colour, marker="o", capsize=3,
                          label=schedule)
        axis.axhline(refs[photos]["pixel_mean_fill_psnr"], color="gray", linestyle="--", label="mean-colour fill")
        axis.set(xlabel="optimizer step", ylabel=f"held-out PSNR, hidden region, ratio {RATIO} (dB)",
                 title=f"Mask schedules at equal steps: {photos} photographs")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

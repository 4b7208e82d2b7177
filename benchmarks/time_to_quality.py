"""The paper's headline on the demo data: held-out quality against training wall-clock, LMD against pixel MAE.

Runs, each for the same wall-clock budget and seed:

- `lmd`: LMD, cosine mask schedule, on cached latents (the caching time is charged to LMD's clock);
- `mae`: transformers' ViTMAEForPreTraining on pixels, constant ratio 0.75 (MAE's recipe);
- `mae_cosine`: the same pixel MAE with LMD's cosine schedule (separates the latent space from the schedule).

Two token settings at 64 px, same widths (lmd-small's): `equal` (LMD latent patch 2: 64 tokens, pixel patch 8:
64 tokens) and `paper` (LMD latent patch 4: 16 tokens against pixel MAE's 64, the paper's 4x token reduction, 49
vs 196 at 224 px). Each run first times a few steps to size `max_steps` to the budget (the lr and mask schedules
need it), then scores masked-region PSNR at mask ratio 0.75 on the validation tiles (LMD leak-free, the same
masks for all) at ten points; evaluation time is not charged. The plot draws the mean-colour fill and the VAE
alone as lines; the figure is LMD's wall-clock to reach pixel MAE's best PSNR, as a ratio.

    python benchmarks/time_to_quality.py --budget_s 150 --seeds 0 1 2 --output_dir runs/benchmarks
    python benchmarks/time_to_quality.py --quick --output_dir runs/benchmarks
"""

import os

import numpy as np
import torch
from transformers import Trainer, ViTMAEForPreTraining

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig
from modeling_lmd.data import ImageDataset, RandomResizedCropFlip, collate_fn
from pixel_mae import MaskScheduleCallback, pixel_mae_config, pixel_mae_psnr
from runs import RATIO, Stopwatch, budgeted_steps, demo_splits, lmd_run, references, training_arguments


def lmd_config(setting: str) -> LMDConfig:
    return LMDConfig.from_preset("lmd-small", patch_size=4 if setting == "paper" else 2)


def run(method, setting, seed, train_split, pixels, args) -> dict:
    """One run of `args.budget_s` wall-clock seconds, scored ten times."""
    budget = 6.0 if args.quick else args.budget_s
    if method == "lmd":
        result = lmd_run(lmd_config(setting), train_split, pixels, args, seed, budget_s=budget)
        return {"method": method, "setting": setting, "seed": seed, "max_steps": result["max_steps"],
                "caching_s": result["caching_s"], "curve": result["curve"]}
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(pixel_mae_config(LMDConfig.from_preset("lmd-small"))).to(args.device)
    dataset = ImageDataset(train_split, "image", RandomResizedCropFlip(64), seed)
    schedule = MaskScheduleCallback("constant" if method == "mae" else "cosine")

    def trainer_for(steps, callbacks):
        return Trainer(model=model, args=training_arguments(args, seed, steps), train_dataset=dataset,
                       data_collator=collate_fn, callbacks=[schedule, *callbacks])

    def score(m):
        value = pixel_mae_psnr(m, pixels, RATIO, 0)
        m.train()
        return value

    steps = budgeted_steps(model, trainer_for, budget, args.quick)
    watch = Stopwatch(score, every=max(1, steps // 10))
    trainer_for(steps, [watch]).train()
    return {"method": method, "setting": setting, "seed": seed, "max_steps": steps, "caching_s": 0.0,
            "curve": watch.curve}


def plot(runs, references, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["setting"] for r in runs})
    figure, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    colours = {"lmd": "tab:blue", "mae": "tab:red", "mae_cosine": "tab:orange"}
    labels = {"lmd": "LMD (latents, cosine)", "mae": "pixel MAE (0.75)", "mae_cosine": "pixel MAE (cosine)"}
    for axis, setting in zip(axes[0], settings):
        for method in ("lmd", "mae", "mae_cosine"):
            for i, r in enumerate(x for x in runs if x["setting"] == setting and x["method"] == method):
                seconds, _, values = zip(*r["curve"])
                axis.plot(seconds, values, color=colours[method], alpha=0.8, label=labels[method] if i == 0 else None)
        axis.axhline(references["pixel_mean_fill_psnr"], color="gray", linestyle="--", label="mean-colour fill")
        axis.axhline(references["vae_psnr"], color="black", linestyle=":", label="VAE alone (ceiling)")
        axis.set(title=f"{setting} tokens", xlabel="training seconds (caching charged to LMD)",
                 ylabel=f"held-out PSNR, hidden region, ratio {RATIO} (dB)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def time_to_reach(curve, target):
    """First wall-clock second at which a curve reaches `target` (linear between points), or None."""
    previous = (0.0, -np.inf)
    for seconds, _, value in curve:
        if value >= target:
            if previous[1] == -np.inf:
                return seconds
            return previous[0] + (target - previous[1]) / (value - previous[1]) * (seconds - previous[0])
        previous = (seconds, value)
    return None


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--budget_s", type=float, default=150.0)
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cli.add_argument("--settings", nargs="+", default=["equal", "paper"])
    args = cli.parse_args(argv)
    setup(args)
    train_split, pixels = demo_splits(args.data_dir, args.quick)
    refs = references(pixels)
    runs = [run(method, setting, seed, train_split, pixels, args)
            for setting in (["equal"] if args.quick else args.settings)
            for seed in (args.seeds[:1] if args.quick else args.seeds)
            for method in ("lmd", "mae", "mae_cosine")]
    rows, figures = [], {}
    for setting in sorted({r["setting"] for r in runs}):
        best = {m: [max(v for _, _, v in r["curve"]) for r in runs if r["setting"] == setting and r["method"] == m]
                for m in ("lmd", "mae", "mae_cosine")}
        mae_best = float(np.mean(best["mae"]))
        reach = [time_to_reach(r["curve"], mae_best) for r in runs if r["setting"] == setting and r["method"] == "lmd"]
        mae_time = float(np.mean([r["curve"][-1][0] for r in runs if r["setting"] == setting and r["method"] == "mae"]))
        reached = [t for t in reach if t is not None]
        figures[setting] = {"mae_best_psnr": mae_best, "lmd_seconds_to_mae_best": reached,
                            "lmd_time_fraction": (float(np.mean(reached)) / mae_time) if len(reached) == len(reach)
                            else None}
        for method, values in best.items():
            rows.append([setting, method, f"{np.mean(values):.2f} ± {np.std(values):.2f}", len(values)])
    plot(runs, refs, os.path.join(args.output_dir, "time_to_quality.png"))
    markdown = table(["tokens", "run", "best held-out PSNR at 0.75 (dB)", "seeds"], rows)
    markdown += (f"\nReferences on the same masks: mean-colour fill {refs['pixel_mean_fill_psnr']:.2f} dB, "
                 f"VAE alone {refs['vae_psnr']:.2f} dB.\n")
    for setting, figure in figures.items():
        fraction = figure["lmd_time_fraction"]
        markdown += (f"\n{setting} tokens: LMD reaches pixel MAE's best ({figure['mae_best_psnr']:.2f} dB) in "
                     + (f"{fraction:.2f} of pixel MAE's wall-clock" if fraction is not None else
                        f"only {len(figure['lmd_seconds_to_mae_best'])} of its seeds within the budget") + ".\n")
    results = {"runs": runs, "references": refs, "figures": figures}
    write_results(args, "time_to_quality", results, markdown)
    return results


if __name__ == "__main__":
    main()

"""What each lever does to the main job: `examples/run_demo.sh` with one change at a time, scored leak-free.

Every variant runs the README's first command (`LMD_NO_VENV=1 bash examples/run_demo.sh`) with extra
`train_lmd.py` arguments appended (the last occurrence of an argument wins), then
`examples/evaluate_reconstruction.py` on the validation tiles and, if built, the unseen photographs, at mask ratios
0.25 / 0.5 / 0.75. Variants run `--parallel` at a time (on one GPU several fit; on 2 CPU cores use 1).

    python -m modeling_lmd.demo_data --unseen --output_dir data/unseen       # optional: the unseen photographs
    python benchmarks/main_job_sweep.py --output_dir runs/sweep --seeds 0 1 2
    python benchmarks/main_job_sweep.py --quick --output_dir runs/sweep       # smoke setting
    python benchmarks/main_job_sweep.py --variants "main job" --vae runs/vae  # the main job on another VAE
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import parser, setup, table, write_results
from modeling_lmd.demo_data import build_demo_dataset


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> extra train_lmd.py arguments on top of the main job's.
VARIANTS = {
    "main job": [],
    "leak-free training": ["--cache_latents", "false", "--config_overrides", "leak_free_training=true"],
    "lr / 2": ["--base_learning_rate", "3e-3"],
    "lr x 2": ["--base_learning_rate", "1.2e-2"],
    "decoder depth 4": ["--config_overrides", "decoder_num_hidden_layers=4"],
    "norm_latent_loss": ["--norm_latent_loss", "true"],
    "loss on hidden patches only": ["--visible_loss_weight", "0"],
    "batch 128, half the steps": ["--per_device_train_batch_size", "128", "--max_steps", "300"],
    "twice the steps": ["--max_steps", "1200"],
    "constant 0.75 (no schedule)": ["--mask_schedule", "constant"],
}
RATIOS = ["0.25", "0.5", "0.75"]


def run_variant(name: str, extra: list[str], seed: int, args) -> dict:
    folder = os.path.join(args.output_dir, "runs", f"{name.replace(' ', '_').replace(',', '')}-seed{seed}")
    env = {**os.environ, "LMD_NO_VENV": "1", "OUTPUT_DIR": os.path.join(folder, "model"), "DATA_DIR": args.data_dir}
    quick = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--max_train_samples", "16",
             "--max_eval_samples", "4", "--latent_cache_views", "1"] if args.quick else []
    # Runs in parallel each keep their own latent cache (two writers of one cache folder would collide).
    cache = ["--latent_cache_dir", os.path.join(folder, "latent-cache")] if args.parallel > 1 else []
    vae = ["--vae_name_or_path", args.vae] if args.vae else []
    started = time.time()
    with open(os.path.join(folder + ".log"), "w") as log:
        subprocess.run(["bash", os.path.join(REPO, "examples", "run_demo.sh"), *quick, *cache, *vae, *extra,
                        "--seed", str(seed)],
                       cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.time() - started
    folders = [os.path.join(args.data_dir, "validation")] + ([args.unseen_dir] if os.path.isdir(args.unseen_dir) else [])
    subprocess.run([sys.executable, os.path.join(REPO, "examples", "evaluate_reconstruction.py"),
                    "--model", os.path.join(folder, "model"), "--data_dir", *folders, "--mask_ratios", *RATIOS,
                    "--seeds", "0", "--output_dir", os.path.join(folder, "eval"),
                    *(["--max_images", "8"] if args.quick else [])],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(folder, "eval", "results.json"), encoding="utf-8") as handle:
        evaluation = json.load(handle)["results"]
    return {"variant": name, "seed": seed, "seconds": seconds, "args": extra, "results": evaluation}


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--variants", nargs="+", default=list(VARIANTS), help="which variants (default: all)")
    cli.add_argument("--seeds", type=int, nargs="+", default=[0])
    cli.add_argument("--parallel", type=int, default=1)
    cli.add_argument("--unseen_dir", default=os.path.join(REPO, "data", "unseen"))
    cli.add_argument("--vae", default=None,
                     help="train every variant on this VAE, a folder or a Hub id (default: the shipped demo VAE)")
    args = cli.parse_args(argv)
    args.data_dir = os.path.abspath(args.data_dir)
    if args.vae and os.path.exists(args.vae):  # run_demo.sh runs in the repository; a Hub id stays as it is
        args.vae = os.path.abspath(args.vae)
    setup(args)
    os.makedirs(os.path.join(args.output_dir, "runs"), exist_ok=True)
    variants = ["main job", "leak-free training"] if args.quick else args.variants
    build_demo_dataset(args.data_dir, resolution=64)  # once, before the runs (each run_demo.sh finds it complete)
    jobs = [(name, VARIANTS[name], seed) for name in variants for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs = list(pool.map(lambda job: run_variant(*job, args), jobs))

    rows = []
    for name in variants:
        mine = [run for run in runs if run["variant"] == name]
        for folder in sorted({r["data_dir"] for r in mine[0]["results"]}):
            def mean(metric, ratio):
                values = [r["mean"][metric] for run in mine for r in run["results"]
                          if r["data_dir"] == folder and abs(r["mask_ratio"] - float(ratio)) < 1e-9]
                return sum(values) / len(values)
            rows.append([name, os.path.basename(folder.rstrip("/")), len(mine),
                         *[f"{mean('masked_psnr', r):.2f} ({mean('masked_psnr', r) - mean('pixel_mean_fill_psnr', r):+.2f})"
                           for r in RATIOS],
                         f"{sum(run['seconds'] for run in mine) / len(mine):.0f}"])
    markdown = ("LMD leak-free PSNR in the hidden region (dB), and in brackets its margin over the mean-colour "
                "fill, mean over seeds\n\n" + table(
                    ["variant", "images", "seeds", *[f"ratio {r}" for r in RATIOS], "main job s"], rows))
    results = {"runs": runs}
    write_results(args, "main_job_sweep", results, markdown)
    return results


if __name__ == "__main__":
    main()

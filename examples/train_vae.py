#!/usr/bin/env python
"""Train the small demo VAE (diffusers ``AutoencoderKL``; ``--vae_class VQModel`` or ``AutoencoderTiny`` for the
projector benchmark) on the offline demo dataset, on CPU (or ``--device cuda``).

The result is saved in diffusers format (``save_pretrained``) and is what ships in
``modeling_lmd/pretrained/demo-vae``. Its config carries ``scaling_factor`` = 1 / std and ``shift_factor`` =
mean of the training latents (posterior mode), so that ``(z - shift_factor) * scaling_factor`` is about
unit scale.

Example (the command used for the shipped VAE is in ``modeling_lmd/pretrained/demo-vae/README.md``)::

    python -m modeling_lmd.demo_data --output_dir data/demo --resolution 64
    python examples/train_vae.py --data_dir data/demo --output_dir runs/vae/demo-vae

Everything runs offline: the data are the demo photographs, the VAE is initialised from scratch (or, with
``--init_from``, from a saved VAE whose training goes on under a fresh schedule).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, VQModel
from tqdm.auto import tqdm

from modeling_lmd.demo_data import build_demo_dataset, load_tiles
from modeling_lmd.metrics import psnr


logger = logging.getLogger("train_vae")
VAE_CLASSES = {vae_class.__name__: vae_class for vae_class in (AutoencoderKL, VQModel, AutoencoderTiny)}
RESUME_FILE = "resume_state.pt"
#: Arguments a resumed run may change: where its data and evaluations live, and how often it saves or evaluates.
RESUME_FREE_ARGS = ("resume", "save_every", "eval_every", "eval_dirs", "num_threads", "device", "data_dir")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a small AutoencoderKL on the LMD demo data (CPU friendly).")
    p.add_argument("--data_dir", default="data/demo", help="demo dataset folder (built if missing)")
    p.add_argument("--output_dir", default="runs/vae/demo-vae",
                   help="where the VAE is saved (never the shipped one unless named here)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--vae_class", default="AutoencoderKL", choices=tuple(VAE_CLASSES))
    p.add_argument("--num_vq_embeddings", type=int, default=1024, help="VQModel codebook size")
    p.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 128],
                   help="one entry per resolution level; downsampling factor = 2 ** (len - 1)")
    p.add_argument("--layers_per_block", type=int, default=1)
    p.add_argument("--norm_num_groups", type=int, default=16)
    p.add_argument("--latent_channels", type=int, default=4)
    p.add_argument("--no_mid_attention", action="store_true", help="drop the attention layer of the mid blocks")
    p.add_argument("--init_from", default=None,
                   help="continue training this saved VAE (a folder or Hub id of --vae_class) instead of a fresh one; "
                        "the architecture arguments above are then ignored")
    p.add_argument("--max_steps", type=int, default=None, help="number of optimisation steps (defines the lr schedule)")
    p.add_argument("--max_minutes", type=float, default=None,
                   help="wall-clock budget; without --max_steps the cosine schedule follows elapsed time")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--min_lr_ratio", type=float, default=0.02, help="final lr = learning_rate * min_lr_ratio")
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--l1_weight", type=float, default=1.0)
    p.add_argument("--mse_weight", type=float, default=0.0)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--crop_size", type=int, default=32,
                   help="train on random crops of this size (fully convolutional, ~4x cheaper than full tiles)")
    p.add_argument("--full_res_fraction", type=float, default=0.15,
                   help="last fraction of the training run uses full-resolution tiles (no crop)")
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--eval_every", type=int, default=0, help="evaluate validation PSNR every N steps (0: only at the end)")
    p.add_argument("--eval_dirs", nargs="*", default=[],
                   help="more folders of PNG tiles (e.g. photos never trained on) whose PSNR is recorded at the end")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the VAE trains; batches are drawn and augmented on the CPU either way")
    p.add_argument("--save_every", type=int, default=0,
                   help="write OUTPUT_DIR/resume_state.pt every N steps (0: never), for --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/resume_state.pt (same arguments): the run goes on as if uninterrupted")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tile_tensor(folder: str) -> torch.Tensor:
    """All PNG tiles of a folder as a uint8 tensor (N, 3, H, W), in sorted file order."""
    return torch.from_numpy(load_tiles(folder)[1]).permute(0, 3, 1, 2).contiguous()


def to_model_range(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(127.5).sub_(1.0)


def augment(x: torch.Tensor, gen: torch.Generator, crop: int) -> torch.Tensor:
    """Random crop of side ``crop`` plus random horizontal / vertical flips, per sample (x: B,C,H,W)."""
    b, _, h, w = x.shape
    if crop < h or crop < w:
        ys = torch.randint(0, h - crop + 1, (b,), generator=gen).tolist()
        xs = torch.randint(0, w - crop + 1, (b,), generator=gen).tolist()
        x = torch.stack([x[i, :, y : y + crop, xx : xx + crop] for i, (y, xx) in enumerate(zip(ys, xs))])
    hflip = torch.rand(b, generator=gen) < 0.5
    vflip = torch.rand(b, generator=gen) < 0.25
    x = x.clone()
    x[hflip] = x[hflip].flip(-1)
    x[vflip] = x[vflip].flip(-2)
    return x


def build_vae(args):
    """A fresh VAE of `args.vae_class` with the given block widths (f = 2 ** (levels - 1))."""
    levels = len(args.block_out_channels)
    if args.vae_class == "AutoencoderTiny":  # its blocks keep one width: the middle one serves every level
        widths = (args.block_out_channels[levels // 2],) * levels
        return AutoencoderTiny(encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                               num_encoder_blocks=(args.layers_per_block,) * levels,
                               num_decoder_blocks=(args.layers_per_block,) * levels,
                               latent_channels=args.latent_channels, scaling_factor=1.0)
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                  up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(args.block_out_channels),
                  layers_per_block=args.layers_per_block, latent_channels=args.latent_channels,
                  norm_num_groups=args.norm_num_groups, sample_size=args.resolution, scaling_factor=1.0)
    if args.vae_class == "VQModel":
        return VQModel(num_vq_embeddings=args.num_vq_embeddings, **common)
    return AutoencoderKL(mid_block_add_attention=not args.no_mid_attention, shift_factor=0.0, force_upcast=False,
                         **common)


def latents_of(vae, x: torch.Tensor) -> torch.Tensor:
    """The latents LMD uses: KL posterior mode, VQ quantized latents, Tiny latents (before scaling)."""
    if isinstance(vae, AutoencoderKL):
        return vae.encode(x).latent_dist.mode()
    if isinstance(vae, VQModel):
        return vae.quantize(vae.encode(x).latents)[0]
    return vae.encode(x).latents


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    if isinstance(vae, VQModel):
        return vae.decode(latents, force_not_quantize=True).sample
    return vae.decode(latents).sample


def training_loss(vae, x: torch.Tensor, gen: torch.Generator, args):
    """Reconstruction loss (L1 and MSE weights) plus the class's own term: KL (KL), commitment (VQ), none (Tiny).
    Returns the loss, the MSE and that term."""
    if isinstance(vae, AutoencoderKL):
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(x.device)
        rec, extra = vae.decode(z).sample, posterior.kl().mean() / x[0].numel()  # KL per pixel-channel
        extra_weight = args.kl_weight
    elif isinstance(vae, VQModel):
        out = vae(x)
        rec, extra, extra_weight = out.sample, out.commit_loss.mean(), 1.0
    else:
        rec, extra, extra_weight = vae.decode(vae.encode(x).latents).sample, torch.zeros(()), 0.0
    mse = ((rec - x) ** 2).mean()
    return args.l1_weight * (rec - x).abs().mean() + args.mse_weight * mse + extra_weight * extra, mse, extra


@torch.no_grad()
def evaluate_psnr(vae, images_uint8: torch.Tensor, batch_size: int = 64) -> float:
    """Mean PSNR (dB, pixels in [0, 1]) of reconstructions from LMD's latents."""
    vae.eval()
    psnrs = []
    for i in range(0, len(images_uint8), batch_size):
        x = to_model_range(images_uint8[i : i + batch_size]).to(vae.device)
        psnrs.append(psnr(decode(vae, latents_of(vae, x)), x).cpu())
    vae.train()
    return float(torch.cat(psnrs).mean())


@torch.no_grad()
def latent_stats(vae, images_uint8: torch.Tensor, batch_size: int = 64):
    """Mean and std of the posterior-mode latents over all elements."""
    vae.eval()
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, len(images_uint8), batch_size):
        z = latents_of(vae, to_model_range(images_uint8[i : i + batch_size]).to(vae.device)).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 1e-12))
    return mean, std


def lr_at(args, progress: float, step: int) -> float:
    """Linear warm-up, then cosine from `learning_rate` down to `learning_rate * min_lr_ratio`."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.learning_rate * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cos)


def save_state(path: str, state: dict, vae, opt) -> None:
    """Everything a resumed run needs to continue as if uninterrupted, written atomically."""
    torch.save({**state, "vae": vae.state_dict(), "opt": opt.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_or_start(args, vae, opt, gen, n_train: int) -> dict:
    """The loop's state from `resume_state.pt` when resuming (weights, optimiser, generator, data order, clock),
    else a fresh one."""
    path = os.path.join(args.output_dir, RESUME_FILE)
    if args.resume and os.path.isfile(path):
        state = torch.load(path, weights_only=False)
        if state["args"] != {k: v for k, v in vars(args).items() if k not in RESUME_FREE_ARGS}:
            raise SystemExit(f"{path} was written with other arguments; resume with the same ones")
        vae.load_state_dict(state.pop("vae"))
        opt.load_state_dict(state.pop("opt"))
        gen.set_state(state["gen"])
        logger.info("resumed at step %d (%.1f min trained)", state["step"], state["elapsed"] / 60)
        return state
    return {"args": {k: v for k, v in vars(args).items() if k not in RESUME_FREE_ARGS}, "step": 0, "elapsed": 0.0,
            "perm": torch.randperm(n_train, generator=gen), "pos": 0, "ema": None, "history": [],
            "gen": gen.get_state()}


def train_loop(args, vae, opt, gen, train: torch.Tensor, val: torch.Tensor) -> dict:
    """Optimise until `max_steps` (or `max_minutes` of training), saving the resume state every `save_every` steps."""
    state = load_or_start(args, vae, opt, gen, len(train))
    budget_s = args.max_minutes * 60 if args.max_minutes is not None else float("inf")
    total = args.max_steps
    if total is None:
        logger.info("no --max_steps: lr schedule and crop switch follow elapsed time (not step-deterministic)")
    pbar = tqdm(total=total, initial=state["step"], desc="train vae", dynamic_ncols=True, mininterval=5)
    started = time.time() - state["elapsed"]
    vae.train()
    while not ((total is not None and state["step"] >= total) or time.time() - started >= budget_s):
        progress = state["step"] / total if total is not None else (time.time() - started) / budget_s
        lr = lr_at(args, progress, state["step"])
        for group in opt.param_groups:
            group["lr"] = lr
        if state["pos"] + args.batch_size > len(state["perm"]):
            state["perm"], state["pos"] = torch.randperm(len(train), generator=gen), 0
        idx = state["perm"][state["pos"] : state["pos"] + args.batch_size]
        state["pos"] += args.batch_size
        crop = args.resolution if progress >= 1.0 - args.full_res_fraction else args.crop_size
        x = to_model_range(augment(train[idx], gen, crop)).to(args.device, memory_format=torch.channels_last)

        loss, mse, extra = training_loss(vae, x, gen, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        state["step"] += 1

        # PSNR of the batch in [0, 1] pixel units: MSE in [-1, 1] units is 4x larger.
        batch_psnr = float(-10 * torch.log10(mse.detach() / 4))
        state["ema"] = batch_psnr if state["ema"] is None else 0.98 * state["ema"] + 0.02 * batch_psnr
        pbar.update(1)
        if state["step"] % 20 == 0:
            pbar.set_postfix(psnr=f"{state['ema']:.2f}", extra=f"{float(extra.detach()):.3g}", lr=f"{lr:.2e}")
        if args.eval_every and state["step"] % args.eval_every == 0:
            state["history"].append({"step": state["step"], "minutes": (time.time() - started) / 60,
                                     "val_psnr": evaluate_psnr(vae, val)})
            logger.info("step %d (%.1f min): train psnr(ema) %.2f, val psnr %.2f", state["step"],
                        state["history"][-1]["minutes"], state["ema"], state["history"][-1]["val_psnr"])
        if args.save_every and state["step"] % args.save_every == 0:
            state["elapsed"], state["gen"] = time.time() - started, gen.get_state()
            save_state(os.path.join(args.output_dir, RESUME_FILE), state, vae, opt)
    pbar.close()
    state["elapsed"] = time.time() - started
    return state


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.num_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.max_steps is None and args.max_minutes is None:
        raise SystemExit("give --max_steps and/or --max_minutes")

    if not os.path.isdir(os.path.join(args.data_dir, "train")):  # a corpus or any tile folder is used as it is
        build_demo_dataset(args.data_dir, resolution=args.resolution)
    train = tile_tensor(os.path.join(args.data_dir, "train"))
    val = tile_tensor(os.path.join(args.data_dir, "validation"))
    logger.info("train tiles: %d, validation tiles: %d, %d px", len(train), len(val), args.resolution)

    init_val_psnr = None
    if args.init_from is None:
        vae = build_vae(args)
    else:  # its starting validation PSNR is recorded, so what the extra training gained is in training_info.json
        vae = VAE_CLASSES[args.vae_class].from_pretrained(args.init_from)
        init_val_psnr = evaluate_psnr(vae, val)
        logger.info("continuing from %s (val PSNR %.2f dB)", args.init_from, init_val_psnr)
    vae = vae.to(args.device, memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in vae.parameters())
    logger.info("%s: %.2f M parameters, downsampling factor %d", args.vae_class, n_params / 1e6,
                2 ** (len(args.block_out_channels) - 1))

    opt = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    state = train_loop(args, vae, opt, gen, train, val)
    return save_vae(args, vae, state, train, val, n_params, init_val_psnr, argv)


def save_vae(args, vae, state: dict, train, val, n_params: int, init_val_psnr, argv) -> dict:
    """Set the latent scale from the training tiles, save the VAE and its `training_info.json`."""
    vae.eval()
    # 4,096 evenly spread tiles pin the latents' mean and std to about 1 %; all 35,000 of the corpus take minutes.
    mean, std = latent_stats(vae, train[:: max(1, len(train) // 4096)])
    if isinstance(vae, AutoencoderKL):  # the other classes have no shift_factor; their latents are near zero-mean
        vae.register_to_config(scaling_factor=float(1.0 / std), shift_factor=float(mean))
    else:
        vae.register_to_config(scaling_factor=float(1.0 / std))
    val_psnr = evaluate_psnr(vae, val)
    eval_psnr = {folder: round(evaluate_psnr(vae, tile_tensor(folder)), 3) for folder in args.eval_dirs}
    train_minutes = state["elapsed"] / 60
    logger.info("done: %d steps in %.1f min; val PSNR %.2f dB; latent mean %.4f std %.4f", state["step"],
                train_minutes, val_psnr, mean, std)
    vae.save_pretrained(args.output_dir, safe_serialization=True)
    info = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv))),
        "steps": state["step"],
        "train_minutes": round(train_minutes, 2),
        "num_threads": args.num_threads,
        "parameters": n_params,
        "val_psnr": round(val_psnr, 3),
        "init_val_psnr": None if init_val_psnr is None else round(init_val_psnr, 3),
        "eval_psnr": eval_psnr,
        "latent_mean": mean,
        "latent_std": std,
        "train_tiles": len(train),
        "val_tiles": len(val),
        "args": vars(args),
        "history": state["history"],
    }
    with open(os.path.join(args.output_dir, "training_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    summary = ("steps", "train_minutes", "val_psnr", "eval_psnr", "latent_mean", "latent_std")
    print(json.dumps({k: info[k] for k in summary}))
    return info


if __name__ == "__main__":
    main()

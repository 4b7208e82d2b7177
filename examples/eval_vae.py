#!/usr/bin/env python
"""Held-out reconstruction quality of a diffusers AutoencoderKL on the demo validation photographs.

Encodes each validation tile, decodes the posterior mode and reports the mean PSNR (dB, pixels in [0, 1])
and mean SSIM (``skimage.metrics.structural_similarity``, ``channel_axis=-1``, ``data_range=1``). Also
reports the statistics of the scaled latents ``(z - shift_factor) * scaling_factor``, which should be about
zero mean / unit std for the shipped VAE.

    python examples/eval_vae.py                       # the shipped demo VAE -> runs/eval_vae/eval_results.json
    python examples/eval_vae.py --vae path/to/vae --output_dir runs/eval_vae/my-vae --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import torch
from diffusers import AutoencoderKL

from modeling_lmd.demo_data import build_demo_dataset, load_tiles
from modeling_lmd.metrics import psnr
from modeling_lmd.pretrained import DEMO_VAE


REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", default=DEMO_VAE, help="diffusers AutoencoderKL folder (default: the shipped demo VAE)")
    p.add_argument("--data_dir", default="data/demo",
                   help="a folder holding --split as a folder of tiles (the demo set is built if missing)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--split", default="validation")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--output_dir", default="runs/eval_vae", help="where eval_results.json is written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the VAE runs (default: cuda when present)")
    return p.parse_args(argv)


@torch.no_grad()
def reconstruct(vae, images_uint8: np.ndarray, batch_size: int = 64):
    """Posterior-mode reconstructions in [0, 1] (N, H, W, 3) float64, and the raw latents (on the CPU)."""
    recs, latents = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = torch.from_numpy(images_uint8[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        z = vae.encode(x.to(vae.device)).latent_dist.mode()
        rec = vae.decode(z).sample
        recs.append(((rec + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).double().cpu().numpy())
        latents.append(z.cpu())
    return np.concatenate(recs), torch.cat(latents)


def psnr_ssim(images_uint8: np.ndarray, recs: np.ndarray):
    from skimage.metrics import structural_similarity

    ref = images_uint8.astype(np.float64) / 255.0
    as_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731  (N, H, W, 3) [0, 1] -> [-1, 1]
    psnr_db = psnr(as_tensor(recs), as_tensor(ref)).numpy()
    ssim = np.array(
        [structural_similarity(a, b, channel_axis=-1, data_range=1.0) for a, b in zip(ref, recs)]
    )
    return psnr_db, ssim


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.num_threads)
    # The demo set is built when missing; any other folder of tiles (the corpus, the unseen photographs) as it is.
    split_dir = os.path.join(args.data_dir, args.split)
    meta = {} if os.path.isdir(split_dir) else build_demo_dataset(args.data_dir, resolution=args.resolution)
    names, images = load_tiles(os.path.join(args.data_dir, args.split))

    vae = AutoencoderKL.from_pretrained(args.vae).to(args.device).eval()
    start = time.time()
    recs, latents = reconstruct(vae, images, args.batch_size)
    seconds = time.time() - start
    psnr_db, ssim = psnr_ssim(images, recs)

    shift = vae.config.shift_factor or 0.0
    scaled = (latents - shift) * vae.config.scaling_factor
    per_photo = {}
    for name, p, s in zip(names, psnr_db, ssim):
        photo = name.rsplit("_s", 1)[0]
        per_photo.setdefault(photo, []).append((p, s))
    results = {
        "vae": os.path.relpath(os.path.abspath(args.vae), REPO_ROOT) if os.path.abspath(args.vae).startswith(REPO_ROOT) else args.vae,
        "split": args.split,
        "resolution": args.resolution,
        "num_tiles": int(len(images)),
        "photos": sorted(per_photo),
        "psnr_db": round(float(psnr_db.mean()), 3),
        "ssim": round(float(ssim.mean()), 4),
        "per_photo": {
            k: {"tiles": len(v), "psnr_db": round(float(np.mean([a for a, _ in v])), 3), "ssim": round(float(np.mean([b for _, b in v])), 4)}
            for k, v in sorted(per_photo.items())
        },
        "latent_shape": list(latents.shape[1:]),
        "scaled_latent_mean": round(float(scaled.mean()), 4),
        "scaled_latent_std": round(float(scaled.std()), 4),
        "encode_decode_seconds": round(seconds, 2),
        "demo_data_version": meta.get("version"),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join(args.output_dir, "eval_results.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"{args.split}: {len(images)} tiles from {', '.join(sorted(per_photo))} at {args.resolution} px")
    print(f"PSNR {results['psnr_db']:.2f} dB   SSIM {results['ssim']:.4f}   latents {results['latent_shape']}")
    for k, v in results["per_photo"].items():
        print(f"  {k:<12} {v['tiles']:>4} tiles  PSNR {v['psnr_db']:.2f} dB  SSIM {v['ssim']:.4f}")
    print(f"scaled latents: mean {results['scaled_latent_mean']:+.3f} std {results['scaled_latent_std']:.3f}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()

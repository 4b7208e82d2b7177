"""Masked reconstruction with an LMD checkpoint: image paths in, a PNG grid out.

Each row of the grid is one image, in MAE's four panels at the model's resolution: the square of the photo the model
saw, what it was shown (hidden patches grey), the raw reconstruction, and the reconstruction with the visible pixels
pasted back. (The pipeline's `reconstruction` is the same fill pasted into the photo at its own size.)

    python examples/reconstruct.py --model path/to/lmd-checkpoint --images a.png b.jpg \
        --mask_ratio 0.5 --seed 0 --num_inference_steps 4 --output reconstruction_grid.png --device cuda
"""

import argparse
import os

import torch
import PIL.Image
from diffusers.utils import make_image_grid
from transformers import pipeline

from modeling_lmd import LMDReconstructionPipeline
from modeling_lmd.image_processing_lmd import to_rgb_image
from modeling_lmd.pretrained import DEMO_LMD


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD, help="LMD checkpoint folder or Hub id (default: the shipped one)")
    parser.add_argument("--images", nargs="+", required=True, help="image files")
    parser.add_argument("--output", default="reconstruction_grid.png", help="PNG grid to write")
    parser.add_argument("--mask_ratio", type=float, default=None, help="default: the model's config.mask_ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="progressive un-masking steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when present)")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    reconstruct = pipeline("lmd-reconstruction", model=args.model, pipeline_class=LMDReconstructionPipeline,
                           device=args.device)
    outputs = reconstruct(args.images, mask_ratio=args.mask_ratio, seed=args.seed,
                          num_inference_steps=args.num_inference_steps)
    cells = []
    for path, out in zip(args.images, outputs):
        seen = to_rgb_image(path).crop(out["crop_box"]).resize(out["model_decoded"].size, PIL.Image.BICUBIC)
        cells += [seen, out["model_masked_image"], out["model_decoded"], out["model_reconstruction"]]
        print(f"{path}: hid {int(out['patch_mask'].sum())} of {out['patch_mask'].size} latent patches")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    make_image_grid(cells, rows=len(args.images), cols=4).save(args.output)
    print(f"wrote {args.output} (columns: input, masked, reconstruction, reconstruction + visible)")
    return args.output


if __name__ == "__main__":
    main()

"""Inpainting with an LMD checkpoint: fill in a region of a photo and get the photo back at its own size.

The mask is over the photo's pixels: a PNG (non-zero = fill in) or a box `--box LEFT TOP RIGHT BOTTOM`. The model
sees a square around the region (`--padding_mask_crop` pixels of context, default half the region's extent); its
fill is pasted back inside the region, and outside it the photo keeps its own pixels, bit for bit. A missing or
unreadable file, or a mask of another size than the photo, stops it with a one-line error.

    python examples/inpaint.py --model path/to/lmd-checkpoint --image photo.png --box 10 10 40 30 \
        --output inpainted.png --grid inpaint_grid.png
"""

import argparse

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid
from transformers import pipeline

from modeling_lmd import LMDReconstructionPipeline
from modeling_lmd.image_processing_lmd import load_image_file, to_rgb_image
from modeling_lmd.pretrained import DEMO_LMD


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD, help="LMD checkpoint folder or Hub id (default: the shipped one)")
    parser.add_argument("--image", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", help="mask image, same size as the image; non-zero pixels are filled in")
    group.add_argument("--box", type=int, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    parser.add_argument("--output", default="inpainted.png", help="the inpainted image")
    parser.add_argument("--grid", default=None, help="optional PNG: input, hidden region, inpainted")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="progressive un-masking steps")
    parser.add_argument("--padding_mask_crop", type=int, default=None,
                        help="pixels of context around the region in the square the model sees (default: half the "
                             "region's extent)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when present)")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        return inpaint(args)
    except (FileNotFoundError, ValueError) as error:  # a missing or unreadable file, a mask of the wrong size
        raise SystemExit(f"error: {error}") from None


def inpaint(args) -> str:
    """Fill in the region and write the result (and the grid); returns the output path."""
    image = to_rgb_image(args.image)
    if args.mask:
        mask = load_image_file(args.mask)  # read before the model loads; the pipeline turns it upright as the photo
    else:
        left, top, right, bottom = args.box
        mask = np.zeros((image.height, image.width), dtype=bool)
        mask[max(top, 0) : bottom, max(left, 0) : right] = True
    pipe = pipeline("lmd-reconstruction", model=args.model, pipeline_class=LMDReconstructionPipeline,
                    device=args.device)
    out = pipe(image, mask=mask, num_inference_steps=args.num_inference_steps,
                  padding_mask_crop=args.padding_mask_crop)
    out["reconstruction"].save(args.output)
    hidden = int(out["patch_mask"].sum())
    print(f"filled {out['mask'].sum()} pixels ({hidden} of {out['patch_mask'].size} latent patches of the square "
          f"{out['crop_box']} the model saw); wrote {args.output} at {image.width}x{image.height}")
    if args.grid:
        grey = PIL.Image.fromarray(np.where(out["mask"][..., None], np.uint8(128), np.asarray(image)))
        make_image_grid([image, grey, out["reconstruction"]], rows=1, cols=3).save(args.grid)
        print(f"wrote {args.grid} (columns: photo, region to fill in, inpainted)")
    return args.output


if __name__ == "__main__":
    main()

"""Masked reconstruction with an LMD checkpoint: image paths in, a PNG grid out.

Each row of the grid is one image: the processed input, what the encoder saw (hidden patches grey) and the
reconstruction (visible patches from the image, hidden ones predicted by the model).

    python examples/reconstruct.py --model path/to/lmd-checkpoint --images a.png b.jpg \
        --mask_ratio 0.5 --seed 0 --output reconstruction_grid.png
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only unless the user says otherwise

from transformers import pipeline  # noqa: E402

import modeling_lmd  # noqa: E402,F401  (registers the "lmd-reconstruction" task)
from modeling_lmd.image_processing_lmd import image_grid  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="LMD checkpoint folder or Hub id")
    parser.add_argument("--images", nargs="+", required=True, help="image files")
    parser.add_argument("--output", default="reconstruction_grid.png", help="PNG grid to write")
    parser.add_argument("--mask_ratio", type=float, default=None, help="default: the model's config.mask_ratio")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    reconstruct = pipeline("lmd-reconstruction", model=args.model)
    processor = reconstruct.image_processor
    rows = []
    for path in args.images:
        out = reconstruct(path, mask_ratio=args.mask_ratio, seed=args.seed)
        original = processor.postprocess(processor(path, return_tensors="pt")["pixel_values"])[0]
        rows.append([original, out["masked_image"], out["reconstruction"]])
        print(f"{path}: hid {int(out['patch_mask'].sum())} of {out['patch_mask'].size} latent patches")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    image_grid(rows).save(args.output)
    print(f"wrote {args.output} (columns: input, masked, reconstruction)")
    return args.output


if __name__ == "__main__":
    main()

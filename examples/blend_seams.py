#!/usr/bin/env python
"""Pasting hard against blending: does the fill show a seam at the mask's border, and what does `blend_width` cost?

    python -m modeling_lmd.demo_data --unseen --output_dir data/unseen      # the photos the project never saw
    python examples/blend_seams.py --output_dir docs/results/quality --grid docs/blend_seams.png

For every photo (the shipped one and the unseen photographs, at their own size) and every mask (boxes and brush
strokes, a few seeds), the `lmd-reconstruction` pipeline fills the mask with each `blend_width`. The pixels under
the mask are painted with the visible mean colour first, so that a blend band brings in no answer: what it mixes
in is what a user who masked something to remove it would get back, here the floor's paint. Measured inside the
mask:

- PSNR against the photo (dB);
- the seam: the mean absolute step between the two pixels of every 4-neighbour pair that straddles the mask's
  border, over the same step in the photo itself (1: the border is as smooth as the photo there; above 1, a seam
  rougher than the photo).

The same masks are filled by Telea and Navier-Stokes inpainting (from the photo's visible pixels), which meet the border
continuously by construction: their seam is what a smooth fill next to a textured photo gives. The grid shows one
close-up of a box's border per photo: the photo, each blend width, then the classical fills.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import pipeline

from modeling_lmd.image_processing_lmd import load_image_file
from modeling_lmd.metrics import labelled_grid
from modeling_lmd.pretrained import DEMO_LMD, EXAMPLE_PHOTO

BLEND_WIDTHS = (0, 2, 4, 8)
MASK_KINDS = ("box", "brush")


def random_mask(height: int, width: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A box of a sixth to a third of each side, or three brush strokes as wide as a fortieth of the photo."""
    canvas = Image.new("1", (width, height))
    pen = ImageDraw.Draw(canvas)
    if kind == "box":
        box_h, box_w = (int(rng.integers(side // 6, side // 3)) for side in (height, width))
        top, left = int(rng.integers(0, height - box_h)), int(rng.integers(0, width - box_w))
        pen.rectangle((left, top, left + box_w - 1, top + box_h - 1), fill=1)
    else:
        for _ in range(3):
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
            pen.line(points, fill=1, width=max(3, min(height, width) // 40), joint="curve")
    return np.array(canvas)


def border_pairs(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Index arrays (inside rows, inside cols, outside rows, outside cols) of every 4-neighbour pair that straddles
    the mask's border."""
    pairs = []
    for axis in (0, 1):
        a, b = np.nonzero(mask[:-1, :] != mask[1:, :]) if axis == 0 else np.nonzero(mask[:, :-1] != mask[:, 1:])
        a2, b2 = (a + 1, b) if axis == 0 else (a, b + 1)
        first_inside = mask[a, b]
        pairs.append((np.where(first_inside, a, a2), np.where(first_inside, b, b2),
                      np.where(first_inside, a2, a), np.where(first_inside, b2, b)))
    return tuple(np.concatenate(parts) for parts in zip(*pairs))


def seam(image: np.ndarray, pairs) -> float:
    inside_r, inside_c, outside_r, outside_c = pairs
    step = image[inside_r, inside_c].astype(np.float64) - image[outside_r, outside_c].astype(np.float64)
    return float(np.abs(step).mean())


def hidden_psnr(fill: np.ndarray, photo: np.ndarray, mask: np.ndarray) -> float:
    error = ((fill.astype(np.float64) - photo.astype(np.float64))[mask] ** 2).mean()
    return float(10 * np.log10(255.0**2 / max(error, 1e-10)))


def close_up(image: np.ndarray, mask: np.ndarray, side: int, zoom: int) -> Image.Image:
    """`side` x `side` pixels centred on the middle of the mask's top border (its bottom border where the top one
    is too near the photo's edge), enlarged `zoom` times (nearest neighbour)."""
    rows, cols = np.nonzero(mask)
    row = rows.min() if rows.min() >= side // 2 else rows.max() + 1
    top = int(np.clip(row - side // 2, 0, max(0, image.shape[0] - side)))
    left = int(np.clip(cols.mean() - side // 2, 0, max(0, image.shape[1] - side)))
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)


def classical(photo: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """What a sceptic tries first, fills that meet the border continuously by construction: OpenCV's Telea and
    Navier-Stokes. (scikit-image's biharmonic, the other reference elsewhere, fails at random on brush masks at
    photo size here: "index exceeds matrix dimension", from one call to the next on the same mask.)"""
    import cv2

    holes = mask.astype(np.uint8) * 255
    return {"Telea": cv2.inpaint(photo, holes, 3, cv2.INPAINT_TELEA),
            "Navier-Stokes": cv2.inpaint(photo, holes, 3, cv2.INPAINT_NS)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD, help="an LMD checkpoint (default: the shipped one)")
    parser.add_argument("--photos", nargs="+", default=None,
                        help="photo files (default: the shipped photo and data/unseen/photos/*.jpg)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="runs/quality")
    parser.add_argument("--grid", default=None, help="where to write the close-ups (PNG)")
    args = parser.parse_args(argv)
    photos = args.photos or [EXAMPLE_PHOTO] + sorted(
        os.path.join("data/unseen/photos", name) for name in os.listdir("data/unseen/photos"))
    pipe = pipeline("lmd-reconstruction", model=args.model, trust_remote_code=True, device="cpu")
    fills = [f"LMD, blend_width={width}" for width in BLEND_WIDTHS] + ["Telea", "Navier-Stokes"]
    scores = {fill: {kind: {"psnr": [], "seam": []} for kind in MASK_KINDS} for fill in fills}
    photo_seams, columns = [], {"photo": [], **{fill.removeprefix("LMD, "): [] for fill in fills}}
    for index, path in enumerate(photos):
        photo = np.array(load_image_file(path).convert("RGB"))  # writable: scikit-image refuses read-only arrays
        for seed in args.seeds:
            for kind in MASK_KINDS:
                mask = random_mask(*photo.shape[:2], kind, np.random.default_rng([index, seed, int(kind == "box")]))
                pairs = border_pairs(mask)
                painted = photo.copy()
                painted[mask] = photo[~mask].mean(axis=0).round().astype(np.uint8)
                photo_seams.append(seam(photo, pairs))
                outputs = {f"LMD, blend_width={width}": np.asarray(pipe(Image.fromarray(painted), mask=mask,
                                                                        blend_width=width, seed=seed)["reconstruction"])
                           for width in BLEND_WIDTHS}
                outputs.update(classical(photo, mask))
                for fill, out in outputs.items():
                    scores[fill][kind]["psnr"].append(hidden_psnr(out, photo, mask))
                    scores[fill][kind]["seam"].append(seam(out, pairs) / photo_seams[-1])
                    if seed == args.seeds[0] and kind == "box":
                        columns[fill.removeprefix("LMD, ")].append(close_up(out, mask, 48, 4))
                if seed == args.seeds[0] and kind == "box":
                    columns["photo"].append(close_up(photo, mask, 48, 4))
        print(f"{path}: done")
    def summarize(values: dict) -> dict:
        return {"hidden_psnr_db": float(np.mean(values["psnr"])), "hidden_psnr_db_std": float(np.std(values["psnr"])),
                "seam_over_photo": float(np.mean(values["seam"])), "seam_over_photo_std": float(np.std(values["seam"]))}

    summary = {fill: {"all": summarize({key: sum((by_kind[kind][key] for kind in MASK_KINDS), [])
                                        for key in ("psnr", "seam")}),
                      **{kind: summarize(by_kind[kind]) for kind in MASK_KINDS}}
               for fill, by_kind in scores.items()}
    result = {"model": args.model, "photos": photos, "seeds": args.seeds, "masks_per_photo_and_seed": list(MASK_KINDS),
              "cases": len(photo_seams), "fills": summary}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "blend-seams.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    lines = ["| fill | PSNR in the mask (dB): all | boxes | brush strokes | seam / the photo's own step: all | boxes "
             "| brush strokes |", "| --- |" + " ---: |" * 6]
    for fill, row in summary.items():
        cells = [f"{row[part]['hidden_psnr_db']:.2f}" for part in ("all", *MASK_KINDS)]
        cells += [f"{row[part]['seam_over_photo']:.2f}" for part in ("all", *MASK_KINDS)]
        lines.append(f"| {fill} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "blend-seams.md"), "w", encoding="utf-8") as handle:
        handle.write(f"{len(photo_seams)} masks (boxes and brush strokes) on {len(photos)} photos, hidden pixels "
                     "painted with the mean colour before the call; the std over masks is in the JSON.\n\n" + table)
    print(table)
    if args.grid:
        labelled_grid(columns).save(args.grid)
    return result


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

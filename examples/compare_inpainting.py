#!/usr/bin/env python
"""Inpainting side by side at each photo's own size: photo, mask, LMD (the `lmd-reconstruction` pipeline) and the
classical fills a sceptic tries first (scikit-image's biharmonic, OpenCV's Telea), one labelled row per photo, with
each fill's PSNR inside the box.

    python -m modeling_lmd.demo_data --unseen --output_dir data/unseen      # the photos the project never saw
    python examples/compare_inpainting.py --output docs/inpainting_side_by_side.png

By default: the README quickstart's box on the shipped photo, and a box on four unseen photographs (a quarter of
their width and height, centred a little off the middle, the same rule for every photo).
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.restoration import inpaint_biharmonic
from transformers import pipeline

from modeling_lmd.image_processing_lmd import load_image_file
from modeling_lmd.pretrained import DEMO_LMD, EXAMPLE_PHOTO

#: (photo, box as top, bottom, left, right fractions of its height and width; None for the quickstart's own box).
DEFAULT_PHOTOS = ((EXAMPLE_PHOTO, None), ("data/unseen/photos/cheetah.jpg", (0.35, 0.6, 0.45, 0.7)),
                  ("data/unseen/photos/quokka.jpg", (0.35, 0.6, 0.45, 0.7)),
                  ("data/unseen/photos/street.jpg", (0.35, 0.6, 0.45, 0.7)),
                  ("data/unseen/photos/tower.jpg", (0.35, 0.6, 0.45, 0.7)))
QUICKSTART_BOX = (110, 190, 240, 330)  # the README's box[110:190, 240:330] on the shipped photo
COLUMNS = ("photo", "mask", "LMD", "biharmonic", "Telea")


def box_mask(photo: Image.Image, fractions) -> np.ndarray:
    top, bottom, left, right = QUICKSTART_BOX if fractions is None else (
        round(fractions[0] * photo.height), round(fractions[1] * photo.height),
        round(fractions[2] * photo.width), round(fractions[3] * photo.width))
    mask = np.zeros((photo.height, photo.width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def classical(photo: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    holes = mask.astype(np.uint8) * 255
    biharmonic = np.clip(inpaint_biharmonic(photo, mask, channel_axis=-1) * 255 + 0.5, 0, 255).astype(np.uint8)
    return {"biharmonic": biharmonic, "Telea": cv2.inpaint(photo, holes, 3, cv2.INPAINT_TELEA)}


def hidden_psnr(fill: np.ndarray, photo: np.ndarray, mask: np.ndarray) -> float:
    error = ((fill.astype(np.float64) - photo.astype(np.float64))[mask] ** 2).mean()
    return float(10 * np.log10(255.0**2 / max(error, 1e-10)))


def row_of(pipe, path: str, fractions, height: int) -> tuple[list[Image.Image], dict[str, float]]:
    photo = load_image_file(path).convert("RGB")
    mask = box_mask(photo, fractions)
    pixels = np.asarray(photo)
    fills = {"LMD": np.asarray(pipe(photo, mask=mask)["reconstruction"]), **classical(pixels, mask)}
    scores = {name: hidden_psnr(fill, pixels, mask) for name, fill in fills.items()}
    outlined = photo.copy()
    ys, xs = np.nonzero(mask)
    ImageDraw.Draw(outlined).rectangle((xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1), outline="red",
                                       width=max(1, photo.width // 200))
    masked = Image.fromarray(np.where(mask[..., None], np.uint8(128), pixels))
    cells = [outlined, masked, *(Image.fromarray(fills[name]) for name in COLUMNS[2:])]
    width = round(photo.width * height / photo.height)
    return [cell.resize((width, height), Image.Resampling.LANCZOS) for cell in cells], scores


def draw(rows: list[tuple[str, list[Image.Image], dict[str, float]]], height: int) -> Image.Image:
    header, caption, gap = 22, 18, 6
    widths = [cells[0].width for _, cells, _ in rows]
    column = max(widths)
    sheet = Image.new("RGB", (len(COLUMNS) * (column + gap), header + len(rows) * (height + caption + gap)), "white")
    pen = ImageDraw.Draw(sheet)
    for i, label in enumerate(COLUMNS):
        pen.text((i * (column + gap) + column // 2, header // 2), label, fill="black", anchor="mm")
    for r, (name, cells, scores) in enumerate(rows):
        top = header + r * (height + caption + gap)
        for i, cell in enumerate(cells):
            left = i * (column + gap) + (column - cell.width) // 2
            sheet.paste(cell, (left, top))
            text = name if i == 0 else f"{scores[COLUMNS[i]]:.1f} dB in the box" if i >= 2 else "hidden"
            pen.text((i * (column + gap) + column // 2, top + height + caption // 2), text, fill="black",
                     anchor="mm")
    return sheet


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD, help="an LMD checkpoint (default: the shipped one)")
    parser.add_argument("--output", default="runs/inpainting_side_by_side.png")
    parser.add_argument("--height", type=int, default=200, help="height of every cell in the sheet, pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    pipe = pipeline("lmd-reconstruction", model=args.model, trust_remote_code=True, device=args.device)
    rows = []
    for path, fractions in DEFAULT_PHOTOS:
        cells, scores = row_of(pipe, path, fractions, args.height)
        rows.append((os.path.splitext(os.path.basename(path))[0], cells, scores))
        print(f"{path}: " + ", ".join(f"{name} {value:.2f} dB" for name, value in scores.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    draw(rows, args.height).save(args.output)
    scores = {name: scores for name, _, scores in rows}
    with open(os.path.splitext(args.output)[0] + ".json", "w", encoding="utf-8") as handle:
        json.dump({"model": args.model, "hidden_psnr_db": scores}, handle, indent=1)
    return scores


if __name__ == "__main__":
    main()

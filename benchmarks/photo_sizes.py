"""Inpainting at phone-photo sizes: one `"lmd-reconstruction"` call end to end, from the JPEG file to the filled photo
at its own size (decoding included), with the shipped checkpoint; its wall-clock and the peak memory it adds.

    python benchmarks/photo_sizes.py --output_dir runs/benchmarks

The cases and their targets: a 12 MP photo (4000 x 3000) with a 300 x 300 box to fill, in 2 s or less; 24 MP
(6000 x 4000) with random patches (`mask_ratio=0.5`), in 10 s or less; and, past the targets, 24 MP with a random
mask of brush blobs. Memory target: the peak resident memory a call adds, at most 4 x the photo's RGB bytes.

Each case runs in a fresh process: after a warm-up call on a small photo, the kernel's peak-RSS counter is reset
(`/proc/self/clear_refs`), and the peak during the first call of the photo, less the memory resident before it, is
what the call adds; time is the median of `--repeats` calls. Each result is also checked: the photo's size and,
outside the mask, its own pixels. The photos are synthesised (the shipped photo enlarged, with film grain, saved
as JPEG at quality 92), so nothing is downloaded. `--quick` runs the same cases at a hundredth of the pixels.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image
from common import parser, setup, table, write_results

#: name -> (width, height, what to fill, seconds the target allows or None).
CASES = {
    "12mp-box": (4000, 3000, "a 300 x 300 box", 2.0),
    "24mp-patches": (6000, 4000, "random patches", 10.0),
    "24mp-brush": (6000, 4000, "a random brush mask", None),
}
MEMORY_TARGET = 4.0  # x the photo's RGB bytes


def write_photo(width: int, height: int, path: str) -> None:
    from modeling_lmd.pretrained import EXAMPLE_PHOTO

    enlarged = np.asarray(PIL.Image.open(EXAMPLE_PHOTO).convert("RGB").resize((width, height), PIL.Image.BICUBIC))
    grain = np.random.default_rng(0).integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    PIL.Image.fromarray(np.clip(enlarged + grain, 0, 255).astype(np.uint8)).save(path, quality=92)


def call_arguments(kind: str, width: int, height: int) -> dict:
    """The pipeline's arguments for what to fill: a box of 300 x 300 (scaled with --quick), random patches, or a few
    dozen random round blobs like brush strokes."""
    if kind == "random patches":
        return {"mask_ratio": 0.5, "seed": 0}
    mask = np.zeros((height, width), dtype=bool)
    if kind == "a 300 x 300 box":
        side = round(300 * width / 4000)
        top, left = height // 2 - side // 2, width // 2 - side // 2
        mask[top : top + side, left : left + side] = True
        return {"mask": mask}
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[:height, :width]
    for _ in range(24):
        row, col, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(width // 80, width // 30)
        mask[max(row - radius, 0) : row + radius, max(col - radius, 0) : col + radius] |= (
            (rows[max(row - radius, 0) : row + radius] - row) ** 2
            + (cols[:, max(col - radius, 0) : col + radius] - col) ** 2 <= radius**2)
    return {"mask": mask}


def resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field))
    return int(line.split()[1]) * 1024


def measure(name: str, args) -> dict:
    """One case, in this process: the first call's added peak memory, then the median time of `repeats` calls."""
    import torch
    from transformers import pipeline

    from modeling_lmd import LMDReconstructionPipeline
    from modeling_lmd.pretrained import DEMO_LMD

    width, height, kind, _ = CASES[name]
    scale = 10 if args.quick else 1
    width, height = width // scale, height // scale
    pipe = pipeline("lmd-reconstruction", model=DEMO_LMD, pipeline_class=LMDReconstructionPipeline,
                    device=args.device)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "photo.jpg")
        write_photo(width, height, path)
        kwargs = call_arguments(kind, width, height)
        pipe(PIL.Image.new("RGB", (320, 240)), **{key: (value[:240, :320] if key == "mask" else value)
                                                   for key, value in kwargs.items()})  # warm-up
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets the peak-RSS counter (VmHWM) to what is resident now
        before = resident_bytes("VmRSS")
        start = time.perf_counter()
        out = pipe(path, **kwargs)
        times = [time.perf_counter() - start]
        added = resident_bytes("VmHWM") - before
        photo = np.asarray(PIL.Image.open(path).convert("RGB"))
        result = np.asarray(out["reconstruction"])
        assert result.shape == photo.shape and np.array_equal(result[~out["mask"]], photo[~out["mask"]])
        del out, photo, result
        for _ in range(args.repeats - 1):
            start = time.perf_counter()
            pipe(path, **kwargs)
            times.append(time.perf_counter() - start)
    return {"case": name, "width": width, "height": height, "megapixels": width * height / 1e6,
            "seconds": statistics.median(times), "seconds_all": times, "added_bytes": added,
            "added_vs_rgb": added / (width * height * 3), "torch_threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    arguments = parser(__doc__)
    arguments.add_argument("--repeats", type=int, default=3, help="calls per case (the median is reported)")
    arguments.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child process of one case
    args = arguments.parse_args(argv)
    setup(args)
    if args.case:
        print(json.dumps(measure(args.case, args)))
        return {}
    rows, results = [], []
    for name in CASES:
        load = os.getloadavg()[0]
        child = [sys.executable, os.path.abspath(__file__), "--case", name, "--repeats", str(args.repeats),
                 "--device", args.device, "--output_dir", args.output_dir] + (["--quick"] if args.quick else [])
        child += ["--threads", str(args.threads)] if args.threads else []
        output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        result = {**json.loads(output.strip().splitlines()[-1]), "load_average_before": load}
        results.append(result)
        target = CASES[name][3]
        label = f"{result['megapixels']:.3g} MP ({result['width']} x {result['height']}), {CASES[name][2]}"
        rows.append([label, result["seconds"], "-" if target is None else f"<= {target:g}",
                     result["added_bytes"] / 1e6, result["added_vs_rgb"], f"<= {MEMORY_TARGET:g}",
                     result["torch_threads"], load])
    markdown = table(["case", "seconds (median)", "target (s)", "added peak memory (MB)", "x the photo's RGB bytes",
                      "target", "torch threads", "load average before"], rows)
    write_results(args, "photo_sizes", {"results": results}, markdown)
    return {"results": results}


if __name__ == "__main__":
    main()

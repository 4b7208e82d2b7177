"""Memory of cached latents held in memory (`--latents_in_memory`): a float32 and a bfloat16 cache of the same
latents, each loaded by `LatentDataset(in_memory=True)` in a fresh process: the peak resident memory the load adds
(Linux: `/proc/self/status`). bfloat16 should take half.

    python benchmarks/latent_memory.py --rows 8000 --output_dir runs/latent_memory
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

SHAPE = (1, 4, 16, 16)  # one view of lmd-small's latents


def write_caches(rows: int, folder: str) -> None:
    import datasets

    values = np.random.default_rng(0).standard_normal((rows, *SHAPE)).astype(np.float32)
    stored = {"float32": values, "bfloat16": torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()}
    for dtype, array in stored.items():
        features = datasets.Features({"latents": datasets.Array4D(shape=SHAPE, dtype=str(array.dtype))})
        datasets.Dataset.from_dict({"latents": list(array)}, features=features).save_to_disk(os.path.join(folder, dtype))


def measure(folder: str, dtype: str) -> dict:
    """In this process: load one cache into memory; its size on disk, as a tensor, and the peak memory it added."""
    import datasets

    from modeling_lmd.data import LatentDataset

    cache = datasets.load_from_disk(os.path.join(folder, dtype))
    disk = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(os.path.join(folder, dtype))
               for name in names if name.endswith(".arrow"))
    with open("/proc/self/clear_refs", "w") as handle:  # Linux: the peak (VmHWM) starts again from here
        handle.write("5")
    before = status_kib("VmRSS")
    latents = LatentDataset(cache, storage_dtype=dtype, in_memory=True).latents
    return {"dtype": dtype, "disk_mib": round(disk / 2**20, 1),
            "tensor_mib": round(latents.numel() * latents.element_size() / 2**20, 1),
            "peak_added_mib": round((status_kib("VmHWM") - before) / 1024, 1)}


def status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--output_dir", default="runs/latent_memory")
    parser.add_argument("--measure", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.output_dir, args.measure)))
        return []
    write_caches(args.rows, args.output_dir)
    results = [json.loads(subprocess.run([sys.executable, __file__, "--output_dir", args.output_dir, "--measure",
                                          dtype], capture_output=True, text=True, check=True).stdout)
               for dtype in ("float32", "bfloat16")]
    with open(os.path.join(args.output_dir, "latent_memory.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    for row in results:
        print(row)
    return results


if __name__ == "__main__":
    main()

"""What every benchmark shares: arguments, same-process timing, and writing `<name>.json` + `<name>.md`."""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--quick", action="store_true", help="smoke setting: tiny sizes, a few steps")
    result.add_argument("--output_dir", default="runs/benchmarks")
    result.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    result.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    result.add_argument("--data_dir", default="data/demo", help="the demo photographs (built there if missing)")
    return result


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)


def machine() -> dict:
    """Where the numbers came from."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device) -> dict[str, float]:
    """Median seconds per call of each step, measured round-robin in one process, so that a change of machine
    load hits every contender alike (ratios stay honest even when absolute times drift)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_results(args, name: str, results: dict, markdown: str) -> str:
    """`<output_dir>/<name>.json` (results, arguments, machine) and `<name>.md`; returns the JSON path."""
    payload = {"benchmark": name, "quick": args.quick, "args": vars(args), "machine": machine(), **results}
    path = os.path.join(args.output_dir, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, default=str)
    with open(os.path.join(args.output_dir, f"{name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    print(markdown)
    return path


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats get 3 significant digits."""
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

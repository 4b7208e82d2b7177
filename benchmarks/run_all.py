"""Every benchmark in one go; `--quick` is the smoke setting CI runs (one `<name>.json` per benchmark).

    python benchmarks/run_all.py --quick --output_dir runs/benchmarks-quick
"""

import sys
import time

import digits_ssl
import downstream
import patch_size
import projector
import schedules
import throughput
import time_to_quality
from common import parser

BENCHMARKS = (throughput, time_to_quality, schedules, patch_size, projector, downstream, digits_ssl)


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    passed = [arg for arg in (argv if argv is not None else sys.argv[1:])]
    for benchmark in BENCHMARKS:
        started = time.time()
        benchmark.main(passed)
        print(f"{benchmark.__name__}: {time.time() - started:.0f} s -> {args.output_dir}/{benchmark.__name__}.json")


if __name__ == "__main__":
    main()

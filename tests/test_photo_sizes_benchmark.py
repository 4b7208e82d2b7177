"""benchmarks/photo_sizes.py in its smoke setting, in this process: one case measured and checked."""

import os
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
photo_sizes = pytest.importorskip("photo_sizes")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak memory is read from Linux's /proc")
def test_one_case_at_a_hundredth_of_the_pixels(tmp_path):
    args = photo_sizes.parser("").parse_args(["--quick", "--output_dir", str(tmp_path)])
    args.repeats = 2
    result = photo_sizes.measure("12mp-box", args)
    assert (result["width"], result["height"]) == (400, 300) and len(result["seconds_all"]) == 2
    # In a process that has run other tests, the call may reuse memory already resident: added_bytes can be 0 here
    # (the benchmark runs each case in a fresh process).
    assert result["seconds"] > 0 and result["added_bytes"] >= 0
    assert photo_sizes.call_arguments("a 300 x 300 box", 4000, 3000)["mask"].sum() == 300 * 300
    assert 0.01 < photo_sizes.call_arguments("a random brush mask", 600, 400)["mask"].mean() < 0.5

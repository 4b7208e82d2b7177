"""`python benchmarks/run_all.py --quick` runs every benchmark in its smoke setting and writes one JSON each."""

import json
import os

from conftest import REPO_ROOT
from subprocess_helpers import run_python


def test_run_all_quick_writes_one_result_per_benchmark(tmp_path):
    run_python([os.path.join(REPO_ROOT, "benchmarks", "run_all.py"), "--quick", "--output_dir", str(tmp_path),
                "--data_dir", os.path.join(str(tmp_path), "demo")], cwd=REPO_ROOT, timeout=600)
    expected = {
        "throughput": "points", "time_to_quality": "figures", "schedules": "runs",
        "patch_size": "runs", "projector": "runs", "downstream": "accuracy",
        "digits_ssl": "per_seed",
    }
    for name, key in expected.items():
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["benchmark"] == name and result["quick"] and result[key], name
        assert (tmp_path / f"{name}.md").read_text().startswith("|"), name
    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert {point["mask_ratio"] for point in throughput["points"]} == {0.15, 0.45, 0.75}
    (best,) = [row for row in throughput["ratios"] if row["comparison"] == "each model's best batch"]
    assert best["cosine_schedule"] > 0 and throughput["matmul_peak_tflops"] > 0
    assert (tmp_path / "time_to_quality.png").is_file() and (tmp_path / "schedules.png").is_file()
    digits = json.loads((tmp_path / "digits_ssl.json").read_text())
    assert [row[0] for row in digits["table"]] == ["LMD pre-trained", "pixel MAE pre-trained", "LMD encoder from scratch"]
    accuracies = [value for key, value in digits["per_seed"][0].items() if "labels" in key]
    assert len(accuracies) == 12 and all(0 <= value <= 1 for value in accuracies)


def test_the_stopwatch_scores_and_stops_training_at_its_deadline(monkeypatch):
    """Equal wall-clock runs end when their budget is spent, with a score at that step, even if planned longer."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "benchmarks"))
    import runs

    clock = iter([0.0, 1.0, 8.0, 8.0])  # the readings: step 1 begins, ends; step 2 ends; the clock restarts
    monkeypatch.setattr(runs, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    watch = runs.Stopwatch(lambda model: 20.0, every=100, offset=3.0, deadline=10.0)
    control = TrainerControl()
    for step in (1, 2):  # step 1 ends at 3 + 1 s charged; step 2 at 3 + 8 s: past the deadline
        state = TrainerState(global_step=step, max_steps=1000)
        watch.on_step_begin(None, state, control)
        watch.on_step_end(None, state, control)
        assert control.should_training_stop == (step == 2)
    assert watch.curve == [(11.0, 2, 20.0)]

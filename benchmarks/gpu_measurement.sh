#!/usr/bin/env bash
# Issue 19's GPU measurement in one command of at most 9 minutes, for a lent GPU machine (the device tool):
#   run(command="bash benchmarks/gpu_measurement.sh", timeout_s=570)
# It checks that a training step never synchronises with the host, then runs the throughput sweep, which writes
# $OUT/throughput.json and .md after every point (a run cut short keeps what it had). Copy them to
# docs/results/gpu/ and rewrite the README's speed table from them. Tested here as `bash ... --quick`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="$(realpath -m "${OUT:-runs/gpu-measurement}")"
mkdir -p "$OUT"
python -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers',
    transformers.__version__, 'diffusers', diffusers.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_trainer.py -k "never_synchronises" 2>&1 | tail -5 \
    | tee "$OUT/sync_test.log"
cd benchmarks
if [ "${1:-}" = "--quick" ]; then
    python throughput.py --quick --output_dir "$OUT"
else
    timeout 400 python throughput.py --budget_s 300 --output_dir "$OUT"
fi

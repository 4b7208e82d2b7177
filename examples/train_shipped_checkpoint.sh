#!/usr/bin/env bash
# How the shipped checkpoint (modeling_lmd/pretrained/demo-lmd) is trained: on the photograph corpus
# (python -m modeling_lmd.corpus) with the shipped demo VAE, on CPU or GPU, in resumable phases.
#
#   bash examples/train_shipped_checkpoint.sh a    # phase A: cached latents, the loss on all patches
#   bash examples/train_shipped_checkpoint.sh b    # phase B: leak-free with the harmonic fill, from phase A
#   bash examples/train_shipped_checkpoint.sh c    # phase C: phase B's recipe 3x longer, from phase B
#   bash examples/train_shipped_checkpoint.sh d    # phase D: the same again, from phase C
#   bash examples/train_shipped_checkpoint.sh e    # phase E: 4,000 more from phase D
#   bash examples/train_shipped_checkpoint.sh f    # phase F: 4,000 more from phase E at half the lr (measured, not shipped)
#   bash examples/train_shipped_checkpoint.sh g    # phase G: phase F again with the converged harmonic fill (shipped)
#   bash examples/train_shipped_checkpoint.sh ship g    # its weights in float16 -> modeling_lmd/pretrained/demo-lmd
#   bash examples/train_shipped_checkpoint.sh ship      # only the code files, after the package's modules changed
#
# Each phase saves a checkpoint every 100-250 steps; run the same command again after a kill and it resumes
# (--resume_from_checkpoint last). RUN_DIR (default runs/shipped) holds the phases; extra arguments go to
# train_lmd.py. Wall-clock on 2 CPU cores: phase A about 15 min to cache the latents (once) and 19 min to train,
# phase B 26 min, phases C and D 83 and 82 min, E 114 min, F 116 min, G 75 min (docs/RESULTS.md, "Shipped
# checkpoint").
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

PHASE="${1:?phase a, b, c, d, e, f or g, or ship (with a phase: its weights and the code; alone: the code)}"; shift
RUN_DIR="${RUN_DIR:-runs/shipped}"
if [ "$PHASE" = ship ]; then
    SHIPPED=modeling_lmd/pretrained/demo-lmd
    if [ $# -gt 0 ]; then
        # The package holds the weights in float16 (half the size); config.json keeps "dtype": "float32", so they load
        # as float32. The shipped config.json stays as it is.
        python - "$RUN_DIR/phase-$1/model.safetensors" "$SHIPPED/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({name: tensor.half() for name, tensor in weights.items()}, sys.argv[2], metadata={"format": "pt"})
PY
    fi
    # The code files are what save_pretrained writes next to a checkpoint (copies of the package's modules that the
    # model, config, image processor and pipeline need), as real files: a copy of the folder or a Hub upload then
    # loads with trust_remote_code=True alone. They are taken from a save of the shipped checkpoint itself, and the
    # old ones removed first (a module the package no longer has goes too). tests/test_shipped_checkpoint.py fails
    # until this has run after a change to the package's modules.
    python - "$SHIPPED" <<'PY'
import glob, os, shutil, sys, tempfile
from transformers import pipeline
import modeling_lmd
shipped = sys.argv[1]
with tempfile.TemporaryDirectory() as saved:
    pipe = pipeline("lmd-reconstruction", model=shipped, pipeline_class=modeling_lmd.LMDReconstructionPipeline)
    pipe.save_pretrained(saved)
    for old in glob.glob(os.path.join(shipped, "*.py")):
        os.remove(old)
    for new in sorted(glob.glob(os.path.join(saved, "*.py"))):
        shutil.copy(new, shipped)
        print("wrote", os.path.join(shipped, os.path.basename(new)))
PY
    exit
fi
CORPUS="${CORPUS:-data/corpus}"
[ -d "$CORPUS/train" ] || python -m modeling_lmd.corpus --output_dir "$CORPUS"

# Phases B to F start from the previous phase's weights. Corpus-validation PSNR was still rising when phase B's
# cosine ended, and again after C, D and E, so C to F each run B's recipe again: a fresh warm-up, a new data order
# and three (C, D) or four (E, F) times B's steps. C to E use twice B's base lr; F goes back to B's, so its warm-up
# undoes less of E's annealing. G is F (same seed, steps and lr) after the harmonic fill's solver became over-relaxed
# red-black sweeps (converged where the earlier Jacobi sweeps were not); phases A to F were trained with the Jacobi fill.
case "$PHASE" in
a) ;;
b) start=phase-a seed=0 steps="${PHASE_B_STEPS:-1000}" lr=1e-3 ;;
c) start=phase-b seed=1 steps="${PHASE_C_STEPS:-3000}" lr=2e-3 ;;
d) start=phase-c seed=2 steps="${PHASE_D_STEPS:-3000}" lr=2e-3 ;;
e) start=phase-d seed=3 steps="${PHASE_E_STEPS:-4000}" lr=2e-3 ;;
f) start=phase-e seed=4 steps="${PHASE_F_STEPS:-4000}" lr=1e-3 ;;
g) start=phase-e seed=4 steps="${PHASE_G_STEPS:-4000}" lr=1e-3 ;;
*) echo "phase a, b, c, d, e, f or g, not '$PHASE'" >&2; exit 2 ;;
esac
out="$RUN_DIR/phase-$PHASE"
resume=()
if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume_from_checkpoint last); fi

common=(--train_dir "$CORPUS/train" --validation_dir "$CORPUS/validation" --max_eval_samples 256
        --per_device_train_batch_size 64 --warmup_steps 0.05 --visible_loss_weight 1 --mask_schedule cosine
        --logging_steps 20 --eval_strategy steps --eval_steps 0.25 --save_strategy steps --save_total_limit 2
        --dataloader_pin_memory false --report_to none --output_dir "$out")

if [ "$PHASE" = a ]; then
    # Cached latents (two augmented views per tile) make a step cheap: the VAE runs once per view, not per step.
    python train_lmd.py "${common[@]}" --seed 0 --model_preset lmd-small \
        --cache_latents --latent_cache_views 2 --latents_in_memory \
        --max_steps "${PHASE_A_STEPS:-2400}" --base_learning_rate 3e-3 --save_steps 250 "${resume[@]}" "$@"
else
    # Leak-free: the hidden pixels are painted with the harmonic fill before the VAE encodes the tile, and the
    # decoder predicts a correction to that fill's latents. Needs the images every step (no latent cache).
    python train_lmd.py "${common[@]}" --seed "$seed" --model_name_or_path "$RUN_DIR/$start" \
        --config_overrides leak_free_training=true,harmonic_fill=true \
        --max_steps "$steps" --base_learning_rate "$lr" --save_steps 100 "${resume[@]}" "$@"
fi

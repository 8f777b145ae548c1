#!/usr/bin/env bash
# Reproduce the bundled ML4H_seg on one GPU machine whose Python holds JAX (or PyTorch) but not TensorFlow.
#
#   scripts/train_bundled_seg_gpu.sh OUT_DIR [BUDGET_SECONDS]
#
# Draws a synthetic training cohort and a separate validation cohort, then runs `trainer.portable fit`
# (Keras on JAX, else PyTorch) until BUDGET_SECONDS after the start minus a minute for validation.
# Wheels in .whl/ (keras, namex, optree, pydicom) are installed first when present. Then, where
# TensorFlow is installed:
#   python -m trainer.portable export --run_dir OUT_DIR --export_dir beam_pipeline/models/ml4h_seg --synthetic
# Sizes and places can be changed with N_TRAIN, N_VALIDATION, CROPS, PYTHON, WORK and INSTALL_WHEELS=0;
# a fine-tuning stage with TRAIN_SEED, FIRST_EID, LEARNING_RATE and INITIAL_WEIGHTS (a previous weights.npz).
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR [BUDGET_SECONDS]}
BUDGET=${2:-540}
START=$(date +%s)
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/lvmass_gpu}
N_TRAIN=${N_TRAIN:-2400}
N_VALIDATION=${N_VALIDATION:-150}
CROPS=${CROPS:-6}
TRAIN_SEED=${TRAIN_SEED:-1001}
FIRST_EID=${FIRST_EID:-5000001}
LEARNING_RATE=${LEARNING_RATE:-1e-3}
INITIAL_WEIGHTS=${INITIAL_WEIGHTS:-}
. "$(dirname "$0")/gpu_env.sh"
echo "backend $KERAS_BACKEND, $CPUS CPUs"
mkdir -p "$OUT" "$WORK"
TRAIN_SYNTH="lvmass synth --participants $N_TRAIN --seed $TRAIN_SEED --manual_fraction 1.0 --first_eid $FIRST_EID"
"$PYTHON" -m lvmass.cli synth --participants "$N_TRAIN" --out "$WORK/train" --seed "$TRAIN_SEED" \
  --manual_fraction 1.0 --first_eid "$FIRST_EID" --workers "$CPUS" --overwrite
"$PYTHON" -m lvmass.cli synth --participants "$N_VALIDATION" --out "$WORK/validation" --seed 2002 \
  --manual_fraction 1.0 --first_eid 5900001 --workers "$CPUS" --overwrite
echo "cohorts drawn after $(( $(date +%s) - START )) s"
"$PYTHON" -m trainer.portable fit --zips "$WORK/train/zips/*.zip" --validation_zips "$WORK/validation/zips/*.zip" \
  --out "$OUT" --preset compact --crop_px 128 --crops_per_participant "$CROPS" --batch_size 16 \
  --learning_rate "$LEARNING_RATE" --lr_decay_steps 1000 --lr_decay_rate 0.75 --steps_per_epoch 250 --epochs 1000 \
  --train_until $(( START + BUDGET - 60 )) --workers "$CPUS" --seed 1 --data_source "$TRAIN_SYNTH" \
  ${INITIAL_WEIGHTS:+--initial_weights "$INITIAL_WEIGHTS"}
echo "done after $(( $(date +%s) - START )) s"

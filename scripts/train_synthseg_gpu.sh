#!/usr/bin/env bash
# Train the synthetic-anatomy ML4H_seg (SynthSeg-style, trainer.synthseg) on one GPU machine whose Python holds
# JAX (or PyTorch) but perhaps not TensorFlow. Nothing to download: the label maps and images are drawn on the
# fly from seeds, on every CPU core but one, while the GPU fits.
#
#   scripts/train_synthseg_gpu.sh OUT_DIR [BUDGET_SECONDS]
#
# Fits until BUDGET_SECONDS after the start (less 90 s for the held-out validation) or STEPS steps, whichever
# comes first; OUT_DIR gets weights.npz, fit.json (history, validation against the synthetic truth, speed) and
# training_log.csv. Then, on any machine with TensorFlow (this repository's .venv):
#
#   python -m trainer.synthseg export --run_dir OUT_DIR --export_dir synthseg_model
#   python benchmarks/evaluate_real.py --model_seg synthseg_model --name synthseg --record
#   python -m trainer.synthseg evaluate --model_seg synthseg_model --samples 200 --record --name synthseg
#   python -m trainer.benchmark --model_dir synthseg_model --batch_sizes 1 \
#       --record benchmarks/results/synthseg_cpu_inference.json
#
# Wheels in .whl/ (keras, namex, optree, ...) are installed first when present (INSTALL_WHEELS=0: never).
# Sizes: PRESET (compact), BATCH (16), CROP (128), MAX_USES (4 crops per drawn sample), STEPS (1000000),
# LEARNING_RATE (1e-3), LR_DECAY_STEPS (3000), N_VALIDATION (32), SEED (1), WORKERS (CPUs - 1),
# INITIAL_WEIGHTS (a previous weights.npz of the same preset: continue training), PYTHON.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR [BUDGET_SECONDS]}
BUDGET=${2:-600}
START=$(date +%s)
PYTHON=${PYTHON:-python3}
. "$(dirname "$0")/gpu_env.sh"
WORKERS=${WORKERS:-$(( CPUS > 1 ? CPUS - 1 : 1 ))}
echo "backend $KERAS_BACKEND, $CPUS CPUs, $WORKERS sample workers"
mkdir -p "$OUT"
"$PYTHON" -m trainer.synthseg fit --out "$OUT" --steps "${STEPS:-1000000}" --preset "${PRESET:-compact}" \
  --batch_size "${BATCH:-16}" --crop_px "${CROP:-128}" --max_uses "${MAX_USES:-4}" --workers "$WORKERS" \
  --learning_rate "${LEARNING_RATE:-1e-3}" --lr_decay_steps "${LR_DECAY_STEPS:-3000}" --lr_decay_rate 0.8 \
  --steps_per_epoch 250 --validation_samples "${N_VALIDATION:-32}" --seed "${SEED:-1}" \
  --train_until $(( START + BUDGET - 90 )) ${INITIAL_WEIGHTS:+--initial_weights "$INITIAL_WEIGHTS"}
echo "done after $(( $(date +%s) - START )) s"

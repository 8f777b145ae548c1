#!/usr/bin/env bash
# A longer run of the default models' recipe (trainer.synthslice: ML4H_seg and ML4H_reg per slice, trained on
# synthetic slices only) on one GPU machine with TensorFlow: the same configuration as the CPU recipe
# (docs/training.md, "The default models"), more steps and larger batches; the slices are drawn on every CPU
# core but two while the GPU fits. Nothing to download: samples come from seeds.
#
#   scripts/train_default_models_gpu.sh RUN_DIR [BUDGET_SECONDS]
#
# Resumable like any run: calling it again on RUN_DIR goes on from its checkpoint.npz (the same batches it
# would have seen). Stops at STEPS (60000) or when BUDGET_SECONDS (540) are spent, whichever comes first;
# RUN_DIR then holds checkpoint.npz and training_log.csv. Then, on any machine with this repository's .venv:
#
#   python -m trainer.synthslice export --run_dir RUN_DIR --task seg --export_dir ml4h_seg_gpu
#   python -m trainer.synthslice export --run_dir RUN_DIR --task reg --export_dir ml4h_reg_gpu
#   python benchmarks/evaluate_real.py --model_seg ml4h_seg_gpu --name ml4h_seg_gpu --record
#   python benchmarks/evaluate_real.py --model_reg ml4h_reg_gpu --name ml4h_reg_gpu --record
#   python benchmarks/evaluate_synthetic.py --model_seg ml4h_seg_gpu --model_reg ml4h_reg_gpu --record
#
# Sizes: STEPS (60000), BATCH (64), WORKERS (CPUs - 2), SEED (1), INIT_FROM (a run or export to start from),
# PYTHON (python3).
set -euo pipefail
RUN=${1:?usage: $0 RUN_DIR [BUDGET_SECONDS]}
BUDGET=${2:-540}
PYTHON=${PYTHON:-python3}
CPUS=$(nproc)
WORKERS=${WORKERS:-$(( CPUS > 3 ? CPUS - 2 : 1 ))}
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
"$PYTHON" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" -m trainer.synthslice fit --run_dir "$RUN" --task both --steps "${STEPS:-60000}" \
  --batch_size "${BATCH:-64}" --workers "$WORKERS" --threads 2 --seed "${SEED:-1}" \
  --max_train_seconds "$(( BUDGET - 60 ))" --checkpoint_every 500 --validate_every 2500 \
  ${INIT_FROM:+--init_from "$INIT_FROM"}

# Sourced by the GPU training scripts: install the wheels in .whl/ when present (INSTALL_WHEELS=0: never),
# put this repository on PYTHONPATH and choose the Keras backend (the caller's KERAS_BACKEND, else JAX
# when it sees a GPU, else PyTorch). Expects PYTHON; sets CPUS.
CPUS=$(nproc)
if [ -d .whl ] && [ "${INSTALL_WHEELS:-1}" = 1 ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
if [ -n "${KERAS_BACKEND:-}" ]; then
  :  # the caller chose
elif "$PYTHON" -c "import jax; assert jax.devices()[0].platform == 'gpu'" 2>/dev/null; then
  export KERAS_BACKEND=jax
else
  export KERAS_BACKEND=torch
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

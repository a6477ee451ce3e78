#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md in one call, on a machine with an NVIDIA GPU, JAX (CUDA) and PyTorch:
# two runs of one seeded model, without and with XLA's deterministic ops, compared; then the overhead
# benchmark on JAX (CNN, MobileNetV2, ResNet50) and on PyTorch (CNN). Python packages missing there
# (Keras, MLflow and what they need) may be given as wheels in .whl/. Writes everything to $OUT (default
# /tmp/gpu-check) as it goes.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi -L | tee "$OUT/device.txt"
store="sqlite:////tmp/gpu-divergence.db"
divergence() {  # name, then XLA flags
    KERAS_BACKEND=jax XLA_FLAGS="${2:-}" python3 benchmarks/gpu_divergence.py train "$store" "$1" 2>>"$OUT/stderr.txt"
}
{
    divergence plain-a && divergence plain-b
    divergence det-a --xla_gpu_deterministic_ops=true && divergence det-b --xla_gpu_deterministic_ops=true
    KERAS_BACKEND=jax python3 benchmarks/gpu_divergence.py compare "$store" plain-a plain-b 2>>"$OUT/stderr.txt"
    KERAS_BACKEND=jax python3 benchmarks/gpu_divergence.py compare "$store" det-a det-b 2>>"$OUT/stderr.txt"
} | tee "$OUT/divergence.txt"
KERAS_BACKEND=jax timeout "${JAX_SECONDS:-360}" python3 benchmarks/callback_overhead.py --device gpu --input numpy \
    --no-reference --rounds 2 --models cnn mobilenetv2 resnet50 2>>"$OUT/stderr.txt" | tee "$OUT/overhead-jax.txt"
KERAS_BACKEND=torch timeout "${TORCH_SECONDS:-100}" python3 benchmarks/callback_overhead.py --device gpu --input numpy \
    --no-reference --rounds 2 --models cnn 2>>"$OUT/stderr.txt" | tee "$OUT/overhead-torch.txt"
tail -c 20000 "$OUT/stderr.txt" > "$OUT/stderr-tail.txt"; rm -f "$OUT/stderr.txt"

#!/bin/bash
# One GPU benchmark run, under 8 minutes, one JSON (issue 11, item 4): segment Mpx/s on a
# folder of 1024 x 1024 images at batch sizes 8-64 in bf16, training crops/s, peak GPU memory.
#
#   bash benchmarks/gpu.sh OUT.json [extra benchmarks/gpu.py arguments]
#
# On the lent GPU machine (its python3 has torch with CUDA but not stardist, cellpose or
# roifile): download their wheels here first (see /work/.library/device/README.md) into
# .whl/ and name .whl in `carry`; this script installs them into /tmp/site when .whl/ exists.
# On the CPU with a tiny model it is tested by tests/test_gpu_benchmark.py.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu.sh OUT.json [gpu.py arguments]}
shift
PYTHON=${PYTHON:-python3}
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 470 "$PYTHON" benchmarks/gpu.py --out "$out" "$@"

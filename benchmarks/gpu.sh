#!/usr/bin/env bash
# The GPU benchmarks in one go, for a bare GPU machine (the figures in the README come from this).
#
#   bash benchmarks/gpu.sh [OUTDIR]
#
# Runs the trainer benchmark (issue 5) and the labelling-stage benchmark (issue 4) with the machine's
# own python3 and torch. Where Ray or segment-anything is not installed, it installs them from wheels
# in .whl/ (benchmarks/gpu_wheels.sh builds them on a machine with internet) into /tmp/site.
set -u -o pipefail
out=${1:-out/gpu}
mkdir -p "$out"
if ! python3 -c "import ray, segment_anything" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: Ray / segment-anything missing and no wheels in .whl/" >&2; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, ray; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)" | tee -a "$out/gpu.txt"
status=0
python3 benchmarks/bench_train.py --device cuda 2>&1 | tee "$out/bench_train.log" || status=1
python3 benchmarks/bench_labels.py --device cuda 2>&1 | tee "$out/bench_labels.log" || status=1
# The reproduction configs' per-GPU batch (8 GPUs x 4 clips): what their GPU-hour estimates use.
[ "${SKIP_B4:-0}" = 1 ] || python3 benchmarks/bench_train.py --device cuda --batch-size 4 2>&1 | tee "$out/bench_train_b4.log" || status=1
exit $status

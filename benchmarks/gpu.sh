#!/usr/bin/env bash
# The GPU-machine benchmarks (the figures in the README come from this).
#
#   bash benchmarks/gpu.sh [OUTDIR]           # trainer (issue 5) + labelling stages (issue 4)
#   bash benchmarks/gpu.sh OUTDIR decode      # decode stage scaling over 1-8 Ray workers (issue 3)
#
# Uses the machine's own python3 and torch. Where Ray or segment-anything is not installed, it
# installs them from wheels in .whl/ (benchmarks/gpu_wheels.sh builds them on a machine with
# internet) into /tmp/site. The decode mode needs PyAV from .whl_av/ and videos in .devclips/ (the
# device tool carries at most 64 MiB a call, so they travel in a second call while the machine is warm).
set -u -o pipefail
out=${1:-out/gpu}
mode=${2:-gpu}
mkdir -p "$out"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
if ! python3 -c "import ray, segment_anything" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: Ray / segment-anything missing and no wheels in .whl/" >&2; exit 1; }
fi
export PYTHONPATH=.:/tmp/site
if [ "$mode" = decode ]; then
  python3 -c "import av" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_av/*.whl
  nproc | tee "$out/cpus.txt"
  python3 benchmarks/bench_decode.py .devclips --workers 1,2,4,8 2>&1 | tee "$out/bench_decode.log"
  exit
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, ray; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)" | tee -a "$out/gpu.txt"
status=0
# The CUDA rendering path against the OpenCV one (its CUDA cases skip on machines without a GPU).
python3 -m pytest -q -p no:cacheprovider tests/test_clips.py 2>&1 | tee "$out/test_clips.log" | tail -3 || status=1
# SKIP_TRAIN=1 / SKIP_LABELS=1 leave out the trainer / labelling benchmarks (to split the work over two
# device calls of at most 10 min each, on the same warm machine)
[ "${SKIP_TRAIN:-0}" = 1 ] || python3 benchmarks/bench_train.py --device cuda 2>&1 | tee "$out/bench_train.log" || status=1
# TRAIN_ARGS="--decode-on device --switch-interval-ms 0.5": a variant of the trainer run beside the default
[ -z "${TRAIN_ARGS:-}" ] || python3 benchmarks/bench_train.py --device cuda $TRAIN_ARGS 2>&1 \
  | tee "$out/bench_train_variant.log" || status=1
# LABEL_ACTORS="1 2": the stage with 1 actor holding the GPU and with 2 sharing it (label_gpus=0.5);
# LABEL_CALLS="2 3": blocks each actor runs at once (resources.label_calls_per_actor)
[ "${SKIP_LABELS:-0}" = 1 ] || for a in ${LABEL_ACTORS:-1}; do
  for c in ${LABEL_CALLS:-2}; do
    python3 benchmarks/bench_labels.py --device cuda --actors "$a" --calls "$c" ${LABEL_ARGS:-} 2>&1 \
      | tee "$out/bench_labels_a${a}_c$c.log" || status=1
  done
done
# The reproduction configs' per-GPU batch (8 GPUs x 4 clips): what their GPU-hour estimates use.
[ "${SKIP_B4:-0}" = 1 ] || python3 benchmarks/bench_train.py --device cuda --batch-size 4 --decode-on device 2>&1 \
  | tee "$out/bench_train_b4.log" || status=1
exit $status

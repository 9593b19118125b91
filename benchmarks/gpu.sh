#!/usr/bin/env bash
# Every GPU check in one run, for a GPU machine lent for minutes: the tests that need CUDA, then the GPU benchmarks,
# each writing its GPU section of docs/benchmarks.md (naming the device).
#
#     bash benchmarks/gpu.sh [OUT]        # logs, nvidia-smi's answer and docs/benchmarks.md are copied to OUT
#
# Each step has its own time limit (seconds: TESTS_S, MODEL_S, TRAIN_S, INFERENCE_S), so one that hangs leaves the
# others their time; docs/benchmarks.md is copied after every step, so what finished comes back. Needs torch with
# CUDA, pandas, pyarrow and open_clip; no Ray: training throughput is the step alone (bench_train.py --no-ray).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/lmft-gpu}}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step() {  # step NAME LIMIT_S COMMAND...: run, keep its log, print its end
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name: $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    grep -v "Warning\|warn(" "$OUT/$name.log" | tail -n "${TAIL:-30}"
    cp docs/benchmarks.md "$OUT/benchmarks.md"
}

step tests "${TESTS_S:-150}" "$PY" -m pytest -q -rs -p no:cacheprovider -k gpu \
    tests/test_model_attention.py tests/test_model_vit.py tests/test_train_step.py
step bench_model "${MODEL_S:-240}" "$PY" benchmarks/bench_model.py --setup gpu
step bench_train "${TRAIN_S:-120}" "$PY" benchmarks/bench_train.py --setup gpu --no-ray --steps 2
step bench_inference "${INFERENCE_S:-70}" "$PY" benchmarks/bench_inference.py --setup gpu

#!/usr/bin/env bash
# One run on a GPU machine, each step bounded in time: the tests that need
# CUDA, then the GPU rows of the benchmarks (docs/performance.rst, "On a
# GPU"). Every step's output goes to $OUT/<step>.txt (default gpu-results/),
# the benchmarks' tables also to $OUT/<step>.json; the last lines of each are
# printed. A step that fails or runs out of time is reported (rc=...) and the
# next one runs.
#
# Usage, in the repository root (skast installed, e.g. `pip install --no-deps
# -e .` where the packages are there already):
#
#     bash benchmarks/gpu_check.sh            # CUDA: 11 minutes at the most
#     SMOKE=1 DEVICE=cpu bash benchmarks/gpu_check.sh   # toy sizes: checks the script
#
# The tests run only where pytest (and the test requirements: soundfile)
# import.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
device=${DEVICE:-cuda}
mkdir -p "$out"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "rc=$rc" >>"$out/$name.txt"
  tail -n 30 "$out/$name.txt"
}

python - <<'EOF' | tee "$out/environment.txt"
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
EOF

if [ -n "${SMOKE:-}" ]; then
  gpu=(--smoke)
  embed=(--clips 2 --batch-size 2 --repeats 1 --num-hidden-layers 1 --no-onnx)
  patchout=(--skip-accuracy --frames 128 --clips 2 --batch-size 2 --repeats 1 --layers 1
            --patchout none 0.4,0.33)
else
  gpu=()
  embed=(--precision bfloat16 --transformers-precision float32 bfloat16
         --clips 256 --batch-size 64 --no-onnx)
  patchout=(--skip-accuracy --precision bfloat16 --clips 96 --batch-size 48
            --repeats 2)
fi

if python -c "import pytest, soundfile" 2>/dev/null; then
  # the files holding the tests that skip without CUDA, and the GPU paths'
  step cuda-tests 180 python -m pytest -q -p no:cacheprovider -rs \
    tests/test_gpu_paths.py tests/test_batches.py tests/test_features.py \
    tests/test_featurizer.py tests/test_classifier.py tests/test_hear.py \
    tests/test_persist.py tests/test_replicas.py
else
  echo "== cuda-tests: skipped (pytest or soundfile is not installed)"
fi
step bench-gpu 240 python benchmarks/bench_gpu.py --device "$device" "${gpu[@]}" \
  --json "$out/bench-gpu.json"
step bench-embed 120 python benchmarks/bench_embed.py --device "$device" \
  "${embed[@]}" --json "$out/bench-embed.json"
step bench-patchout 120 python benchmarks/bench_patchout.py --device "$device" \
  "${patchout[@]}" --json "$out/bench-patchout.json"

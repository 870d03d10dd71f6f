#!/usr/bin/env bash
# One GPU session: build the extension, run every GPU test, run the benchmarks, pack the results.
# Usage: bash scripts/gpu_session.sh [quick|full] [extra pytest args]
# Writes logs and benchmarks/results/*.json; when $OUT is set (the device tool), packs them there.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quick}
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu_logs
mkdir -p "$LOG" benchmarks/results
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tgz" benchmarks/results "$LOG" 2>/dev/null; }
trap pack EXIT

stamp "nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$LOG/nvidia_smi.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee "$LOG/versions.txt"

stamp "build"
MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} SLICEKIT_FORCE_CUDA=1 \
  python3 -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1
echo "build rc=$?"; tail -5 "$LOG/build.log"
python3 -c "import slicekit.ops as o; print('backends', o.available_backends('covariance_accumulate', 'cuda'), o.available_backends('rotate_slice', 'cuda'), o.available_backends('shortcut_linear', 'cuda'))"

stamp "gpu tests"
timeout 300 python3 -m pytest -q -x -ra tests/test_covariance.py tests/test_rotate_slice.py tests/test_shortcut_linear.py \
  tests/test_cuda_ext.py tests/test_gpu_pipeline.py "${@:2}" 2>&1 | tail -25 | tee "$LOG/pytest_gpu.txt"

Q=""; [ "$MODE" = quick ] && Q="--quick"
for b in bench_covariance bench_rotate_slice sliced_gemm slicing_pipeline; do
  [ -f benchmarks/$b.py ] || continue
  stamp "$b $Q"
  timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/$b.py $Q > "$LOG/$b.txt" 2>&1; echo "$b rc=$?"
  tail -30 "$LOG/$b.txt"
done
stamp "done"

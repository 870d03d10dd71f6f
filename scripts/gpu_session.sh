#!/usr/bin/env bash
# One GPU session: build the extension, run the GPU tests, run benchmarks, pack logs and results.
# Usage: bash scripts/gpu_session.sh STAGE...   where STAGE is
#   build                    compile slicekit._C (skipped when already built and sources unchanged)
#   tests                    every GPU-relevant test file
#   NAME[:ARGS]              python benchmarks/NAME.py ARGS (ARGS comma-separated), e.g. sliced_gemm:--quick;
#                            an argument that holds commas (TUNE=3,8,0,256) is split too: run the script directly
#   ext[:ARGS]               python csrc/bench_ext.py ARGS
#   wheel                    pip wheel --no-build-isolation --no-deps . and list what the wheel holds
#   diag                     how a failing TORCH_CHECK in slicekit._C surfaces (scripts/diag_cxx_errors.py)
# Writes logs to $OUT/gpu_logs (or /tmp/gpu_logs) and packs benchmarks/results + logs into $OUT/results.tgz.
# The machine's copy of .git may be stale: pass SLICEKIT_COMMIT=<local HEAD> so results name the code measured.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu_logs
mkdir -p "$LOG" benchmarks/results
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tgz" benchmarks/results "$LOG" 2>/dev/null; true; }
trap pack EXIT
BT=${BENCH_TIMEOUT:-120}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$LOG/nvidia_smi.txt" 2>&1
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$LOG/versions.txt"

# A fresh machine has no slicekit installed: without a build stage, install it as pure Python
# (the Triton kernels map themselves from the checkout), so benchmark stages can import it.
case " $* " in *" build "*) ;; *)
  (cd / && python3 -c "import slicekit" 2>/dev/null) || SLICEKIT_SKIP_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps -e . > "$LOG/install.log" 2>&1
  (cd / && python3 -c "import slicekit; print('slicekit from', slicekit.__file__)") ;;
esac

for stage in "$@"; do
  name=${stage%%:*}; args=""; [ "$name" != "$stage" ] && args=$(echo "${stage#*:}" | tr ',' ' ')
  case "$name" in
    build)
      stamp build
      MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} SLICEKIT_FORCE_CUDA=1 \
        python3 -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1
      rc=$?; echo "build rc=$rc"; grep -iE "error|warning: .*spill" "$LOG/build.log" | head -20
      if [ $rc -ne 0 ]; then  # fall back to an in-place build (the kernels map themselves from the checkout)
        MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} SLICEKIT_FORCE_CUDA=1 \
          python3 setup.py build_ext --inplace > "$LOG/build_inplace.log" 2>&1; echo "inplace build rc=$?"
        tail -5 "$LOG/build_inplace.log"; export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
      fi
      python3 -c "import slicekit.ops as o; print('backends', *(o.available_backends(n, 'cuda') for n in ('covariance_accumulate','rotate_slice','shortcut_linear')))"
      ;;
    tests)
      stamp tests
      timeout ${TEST_TIMEOUT:-240} python3 -m pytest -v -ra -p no:cacheprovider ${TEST_FILES:-tests/test_covariance.py tests/test_rotate_slice.py} \
        ${TEST_FILES2-tests/test_shortcut_linear.py tests/test_cuda_ext.py tests/test_gpu_pipeline.py} $args > "$LOG/pytest_gpu.txt" 2>&1
      echo "tests rc=$?"; grep -E "passed|failed|FAILED|ERROR" "$LOG/pytest_gpu.txt" | head -30
      if grep -q "FAILED.*split_k" "$LOG/pytest_gpu.txt"; then
        export SLICEKIT_SHORTCUT_SPLITK=0; echo "split-K shortcut configs FAILED: disabled for the stages that follow"
      fi
      ;;
    wheel)
      stamp wheel
      rm -rf /tmp/sk_dist; MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} SLICEKIT_FORCE_CUDA=1 \
        timeout 400 python3 -m pip wheel --no-build-isolation --no-deps . -w /tmp/sk_dist > "$LOG/wheel.log" 2>&1
      echo "wheel rc=$?"; ls -la /tmp/sk_dist | tee "$LOG/wheel_files.txt"
      python3 -m zipfile -l /tmp/sk_dist/*.whl | tee -a "$LOG/wheel_files.txt" | grep -E "_C|\.so|kernels/" | head -20
      ;;
    diag)
      stamp diag
      timeout 300 python3 scripts/diag_cxx_errors.py > "$LOG/diag_cxx_errors.jsonl" 2>&1; echo "rc=$?"
      cut -c1-600 "$LOG/diag_cxx_errors.jsonl"
      ;;
    ext)
      stamp "bench_ext $args"
      timeout $BT python3 csrc/bench_ext.py $args > "$LOG/bench_ext.txt" 2>&1; echo "rc=$?"; tail -40 "$LOG/bench_ext.txt"
      ;;
    *)
      stamp "$name $args"
      log="$LOG/$name.txt"; k=2; while [ -e "$log" ]; do log="$LOG/${name}_$k.txt"; k=$((k + 1)); done  # a stage run twice
      timeout $BT python3 benchmarks/$name.py $args > "$log" 2>&1; echo "rc=$?"; tail -${TAIL:-30} "$log"
      ;;
  esac
done
stamp done

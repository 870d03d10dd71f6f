#!/usr/bin/env bash
# Run every GPU benchmark in order, then the plots:
#   bench_covariance.py, bench_rotate_slice.py, sliced_gemm.py, e2e_latency.py,
#   slicing_pipeline.py (each only if present), plot_latency.py.
# Usage: benchmarks/run_all.sh [--quick]     (--quick is passed through to every script)
# A failing benchmark does not stop the others; the exit status is non-zero if any failed.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

for arg in "$@"; do
  case "$arg" in
    --quick) ;;
    *) echo "run_all.sh: unknown argument '$arg' (only --quick is accepted)" >&2; exit 2 ;;
  esac
done

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "run_all.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); these benchmarks measure GPU latency. Nothing was run." >&2
  exit 2
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"run_all.sh: {p.name}, torch {torch.__version__}, cuda {torch.version.cuda}")'

failed=()
run_one() {
  local script="$1"; shift
  if [ ! -f "benchmarks/$script" ]; then
    echo "== $script: not present, skipped"
    return
  fi
  echo "== $script $*"
  local t0=$SECONDS
  if "$PY" "benchmarks/$script" "$@"; then
    echo "== $script: ok ($((SECONDS - t0)) s)"
  else
    echo "== $script: FAILED (exit $?, $((SECONDS - t0)) s)" >&2
    failed+=("$script")
  fi
}

for script in bench_covariance.py bench_rotate_slice.py sliced_gemm.py e2e_latency.py slicing_pipeline.py; do
  run_one "$script" "$@"
done
run_one plot_latency.py "$@"

if [ ${#failed[@]} -gt 0 ]; then
  echo "run_all.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "run_all.sh: all benchmarks finished; JSON and PNG files are in benchmarks/results/"

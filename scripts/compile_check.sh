#!/usr/bin/env bash
# Compile-only check of the CUDA extension (csrc/*.cu, csrc/*.cpp) to object files, no GPU and no
# CUDA build of torch needed: it uses the CUDA headers that ship inside the torch wheel.
#
#   bash scripts/compile_check.sh
#
# Exit status: 0 when every file compiled, or when the check cannot run here (no nvcc; no cuBLAS
# headers and none obtainable), which is printed as a SKIP notice; non-zero on a compile failure.
#
# Environment:
#   NVCC                       compiler (default: nvcc on PATH, then $CUDA_HOME/bin/nvcc)
#   CUDA_HOME / CUDA_PATH      toolkit root (default: /usr/local/cuda)
#   SLICEKIT_CHECK_ARCHS       gencode targets (default: "80 90a")
#   SLICEKIT_CUDA_LIB_HEADERS  folder holding cublas_v2.h, cusparse.h, cusolverDn.h when the toolkit lacks them
#   SLICEKIT_CHECK_OFFLINE=1   never run pip to fetch those headers
#   SLICEKIT_CHECK_STRICT=1    a missing nvcc or missing headers fails instead of skipping
#   SLICEKIT_CHECK_JOBS        parallel compiles (default: nproc)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
STRICT="${SLICEKIT_CHECK_STRICT:-0}"

skip() {
  echo "compile_check: SKIP: $*"
  if [ "$STRICT" = "1" ]; then exit 3; fi
  exit 0
}

# --- compiler -------------------------------------------------------------------------------
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ]; then
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [ -n "$home" ] && [ -x "$home/bin/nvcc" ]; then NVCC="$home/bin/nvcc"; break; fi
  done
fi
[ -n "$NVCC" ] || skip "nvcc not found (set NVCC or CUDA_HOME to run the compile check)"
CUDA_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1.\2/p' | head -n1)"
CUDA_MAJOR="${CUDA_VERSION%%.*}"
[ -n "$CUDA_MAJOR" ] || { echo "compile_check: cannot read the CUDA version from '$NVCC --version'"; exit 2; }

# The toolkit's include folder: the wrapper at /usr/local/bin/nvcc says nothing about it, so look
# at the usual roots for cuda_runtime.h.
CUDA_INC=""
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda; do
  if [ -n "$home" ] && [ -f "$home/include/cuda_runtime.h" ]; then CUDA_INC="$home/include"; break; fi
done
[ -n "$CUDA_INC" ] || skip "no cuda_runtime.h next to $NVCC (set CUDA_HOME)"

# --- torch and Python --------------------------------------------------------------------------
PYINFO="$("$PYTHON" - <<'EOF'
import inspect, sysconfig
import torch
import torch.utils.cpp_extension as ce
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(sysconfig.get_paths()["include"])
# The C++ standard torch's own extension builder passes (c++17 up to some 2.x, c++20 after).
print("c++20" if "-std=c++20" in inspect.getsource(ce) else "c++17")
for p in ce.include_paths():
    print(p)
EOF
)" || { echo "compile_check: torch is not importable by $PYTHON"; exit 2; }
ABI="$(echo "$PYINFO" | sed -n 1p)"
PY_INC="$(echo "$PYINFO" | sed -n 2p)"
CXX_STD="$(echo "$PYINFO" | sed -n 3p)"
TORCH_INCS=()
while IFS= read -r line; do TORCH_INCS+=("-I$line"); done < <(echo "$PYINFO" | sed -n '4,$p')
[ -f "${TORCH_INCS[0]#-I}/ATen/cuda/CUDAContext.h" ] || skip "this torch wheel ships no ATen/cuda headers"

# --- cuBLAS / cuSPARSE / cuSOLVER headers (ATen/cuda/CUDAContext.h includes all three) ---------
have_lib_headers() { [ -f "$1/cublas_v2.h" ] && [ -f "$1/cusparse.h" ] && [ -f "$1/cusolverDn.h" ]; }

LIB_INC=""
if have_lib_headers "$CUDA_INC"; then
  LIB_INC="$CUDA_INC"
fi
if [ -z "$LIB_INC" ] && [ -n "${SLICEKIT_CUDA_LIB_HEADERS:-}" ] && have_lib_headers "$SLICEKIT_CUDA_LIB_HEADERS"; then
  LIB_INC="$SLICEKIT_CUDA_LIB_HEADERS"
fi
if [ -z "$LIB_INC" ]; then
  # pip's nvidia-* wheels (the CUDA builds of torch depend on them): nvidia/cu13/include or nvidia/<lib>/include.
  for dir in $("$PYTHON" -c 'import nvidia, os; [print(os.path.join(p, s, "include")) for p in nvidia.__path__ for s in sorted(os.listdir(p))]' 2>/dev/null); do
    if have_lib_headers "$dir"; then LIB_INC="$dir"; break; fi
  done
fi
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/slicekit/cuda${CUDA_MAJOR}-lib-headers"
if [ -z "$LIB_INC" ] && have_lib_headers "$CACHE_DIR"; then
  LIB_INC="$CACHE_DIR"
fi
if [ -z "$LIB_INC" ] && [ "${SLICEKIT_CHECK_OFFLINE:-0}" != "1" ]; then
  # Fetch the three wheels once with pip (headers only are kept) into a user cache.
  echo "compile_check: the CUDA toolkit at $CUDA_INC has no cuBLAS headers; fetching them with pip into $CACHE_DIR"
  if [ "$CUDA_MAJOR" -ge 13 ]; then
    PINNED=(nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66)
    LOOSE=("nvidia-cublas<14" "nvidia-cusparse<13" "nvidia-cusolver<13")
  else
    PINNED=(nvidia-cublas-cu12 nvidia-cusparse-cu12 nvidia-cusolver-cu12)
    LOOSE=("${PINNED[@]}")
  fi
  TMP_WHEELS="$(mktemp -d)"
  if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$TMP_WHEELS" "${PINNED[@]}" >/dev/null 2>&1 ||
     "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$TMP_WHEELS" "${LOOSE[@]}" >/dev/null 2>&1; then
    mkdir -p "$CACHE_DIR"
    "$PYTHON" - "$TMP_WHEELS" "$CACHE_DIR" <<'EOF'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
for name in os.listdir(src):
    if not name.endswith(".whl"):
        continue
    with zipfile.ZipFile(os.path.join(src, name)) as z:
        for member in z.namelist():
            if "/include/" in member and member.endswith((".h", ".hpp")):
                with z.open(member) as f, open(os.path.join(dst, os.path.basename(member)), "wb") as g:
                    g.write(f.read())
EOF
  fi
  rm -rf "$TMP_WHEELS"
  if have_lib_headers "$CACHE_DIR"; then LIB_INC="$CACHE_DIR"; fi
fi
[ -n "$LIB_INC" ] || skip "no cuBLAS/cuSPARSE/cuSOLVER headers (install nvidia-cublas nvidia-cusparse nvidia-cusolver, or set SLICEKIT_CUDA_LIB_HEADERS)"

# --- compile -----------------------------------------------------------------------------------
OUT_DIR="$(mktemp -d)"
trap 'rm -rf "$OUT_DIR"' EXIT
ARCHS="${SLICEKIT_CHECK_ARCHS:-80 90a}"
GENCODE=()
for a in $ARCHS; do GENCODE+=("-gencode" "arch=compute_${a},code=sm_${a}"); done
DEFS=("-D_GLIBCXX_USE_CXX11_ABI=$ABI" "-DTORCH_EXTENSION_NAME=_C" "-DTORCH_API_INCLUDE_EXTENSION_H")
INCS=("-I$ROOT/csrc" "${TORCH_INCS[@]}" "-I$PY_INC" "-I$CUDA_INC")
[ "$LIB_INC" = "$CUDA_INC" ] || INCS+=("-I$LIB_INC")
# A CPU torch wheel lacks the one header its CUDA build generates (c10/cuda/impl/cuda_cmake_macros.h,
# which only defines C10_CUDA_BUILD_SHARED_LIBS); c10 has a switch to skip it.
if [ ! -f "${TORCH_INCS[0]#-I}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  DEFS+=("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE" "-DC10_CUDA_BUILD_SHARED_LIBS")
fi
# setup.py's nvcc flags, with the C++ standard torch's BuildExtension would add.
NVCC_FLAGS=(-O3 "-std=$CXX_STD" --use_fast_math --expt-relaxed-constexpr -lineinfo
  -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
  -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__
  -Xcompiler -fPIC "${GENCODE[@]}")
CXX="${CXX:-g++}"

echo "compile_check: nvcc $CUDA_VERSION ($NVCC), archs: $ARCHS, cuBLAS headers: $LIB_INC, ABI=$ABI"
JOBS="${SLICEKIT_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}"
pids=()
names=()
start_all=$(date +%s)
for src in "$ROOT"/csrc/*.cu "$ROOT"/csrc/*.cpp; do
  [ -e "$src" ] || continue
  name="$(basename "$src")"
  obj="$OUT_DIR/$name.o"
  log="$OUT_DIR/$name.log"
  (
    t0=$(date +%s)
    if [[ "$src" == *.cu ]]; then
      "$NVCC" -c "$src" -o "$obj" "${NVCC_FLAGS[@]}" "${DEFS[@]}" "${INCS[@]}" >"$log" 2>&1
    else
      "$CXX" -c "$src" -o "$obj" -O2 "-std=$CXX_STD" -fPIC -Wall -Wno-unknown-pragmas "${DEFS[@]}" "${INCS[@]}" >"$log" 2>&1
    fi
    rc=$?
    echo "$rc $(( $(date +%s) - t0 ))" >"$OUT_DIR/$name.rc"
    exit $rc
  ) &
  pids+=($!)
  names+=("$name")
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done

failed=0
for name in "${names[@]}"; do
  read -r rc secs <"$OUT_DIR/$name.rc"
  if [ "$rc" = "0" ]; then
    echo "compile_check: ok   $name (${secs}s)"
    if grep -qi "warning" "$OUT_DIR/$name.log"; then sed 's/^/    /' "$OUT_DIR/$name.log" | head -n 40; fi
  else
    echo "compile_check: FAIL $name (${secs}s)"
    sed 's/^/    /' "$OUT_DIR/$name.log" | head -n 80
    failed=1
  fi
done
echo "compile_check: $([ $failed = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start_all ))s"
exit $failed

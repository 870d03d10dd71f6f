"""Compile the Triton covariance kernel for a GPU target without a GPU (triton.compile, offline).

The CPU tests run the kernel under TRITON_INTERPRET=1, which never reaches Triton's compiler passes;
a specialisation can still crash them on the GPU (Triton 3.6 failed in TritonGPUCoalesce for d = 1
when tile and row range were folded into one grid axis, 6101bd7). This compiles the pointer-load
specialisations the GPU tests hit -- d = 1, 7, 129 (d = 1 and N = 1 are constants to Triton), masks,
the mirrored, streaming and atomic epilogues, fp16/bf16/fp32, 64- and 128-wide tiles, one range or
several -- for one target and reports every failure. To match the GPU machine's Triton:

    pip install --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36 python scripts/triton_compile_check.py --arch 90
    PYTHONPATH=/tmp/t36 python scripts/triton_compile_check.py --arch 80

Exit status 1 when any specialisation fails to compile. Needs ptxas (the Triton wheel ships one).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80, 90)")
    p.add_argument("--quick", action="store_true", help="fp16 only, one tile width")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from slicekit.kernels import covariance as kcov

    fn = kcov._covariance_kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):  # through the autotuner and heuristics
        fn = fn.fn
    dtypes = ("fp16",) if args.quick else ("fp16", "bf16", "fp32")
    widths = (64,) if args.quick else (64, 128)
    epilogues = ((True, False), (False, False), (False, True))  # (MIRROR, ATOMIC)
    failures, count = 0, 0
    for d, n, mask, (mirror, atomic), dt, bm, one_range in itertools.product(
            (1, 7, 129), (1, 1000), (False, True), epilogues, dtypes, widths, (True, False)):
        if one_range and atomic:
            continue
        sig = {"X_ptr": f"*{dt}", "X_desc": f"*{dt}", "Mask_ptr": "*u8" if mask else f"*{dt}", "Out_ptr": "*fp64",
               "N": "i32", "d": "i32", "n_bucket": "i32", "splits": "i32", "stride_x_row": "i32",
               "stride_out_row": "i32"}
        consts = dict(HAS_MASK=mask, USE_TMA=False, MIRROR=mirror, ATOMIC=atomic, IEEE_FP32=dt == "fp32",
                      INTERPRET_BF16=False, CHUNK_ROWS=kcov.CHUNK_ROWS, BLOCK_M=bm, BLOCK_K=64 if bm == 128 else 32, GROUP_M=8,
                      EVEN_N=False, EVEN_D=False)
        for name, value, special in (("N", 1, n == 1), ("d", 1, d == 1), ("splits", 1, one_range)):
            if special:  # Triton specialises integer arguments equal to 1 into constants
                consts[name] = value
        for name in consts:
            sig[name] = "constexpr"
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        count += 1
        try:
            triton.compile(src, target=GPUTarget("cuda", args.arch, 32),
                           options={"num_warps": 8 if bm == 128 else 4, "num_stages": 3})
        except Exception as exc:  # a compiler crash surfaces as RuntimeError; report it and go on
            failures += 1
            print(f"FAILED d={d} N={n} mask={mask} mirror={mirror} atomic={atomic} {dt} BLOCK_M={bm} "
                  f"splits={'1' if one_range else 'n'}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    print(f"triton {triton.__version__}, sm_{args.arch}: {count} specialisations, {failures} failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tuning sweep of the CUDA extension's Hopper covariance kernel (csrc/covariance_sm90.cu).

Times torch.ops.slicekit.covariance_accumulate(X, None, C, symmetric=False) -- the streaming call --
for each setting of its environment knobs, next to torch's fp16->fp32 GEMM in the same process:
  SLICEKIT_COV_SM90_CHUNK  rows between promotions of the MMA accumulator (128 = default; longer is
                           faster and drifts further from float64: the error column shows by how much)
  SLICEKIT_COV_SM90_TUNE   "stages,band,ctas,l2": pipeline stages (<= 6), tile-rows per schedule band,
                           persistent CTAs (0 = one per SM), TMA L2 promotion bytes
X is calibration-like (mean 0.5, a few channels 30x larger), N = 16384 rows. Medians of CUDA-event
timings; the error is the relative Frobenius error of one symmetric call against float64.

    python benchmarks/covariance_sm90_sweep.py            # d 4096 and 8192, fp16
    python benchmarks/covariance_sm90_sweep.py --d 4096 --dtype bf16
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import bench_ms, env_vars, markdown_table, require_cuda, write_results  # noqa: E402
from bench_covariance import activations  # noqa: E402  (the same calibration-like X)

# (SLICEKIT_COV_SM90_TUNE, SLICEKIT_COV_SM90_CHUNK); the first is the default.
SETTINGS = [
    ("6,8,0,256", "128"), ("5,8,0,256", "128"), ("4,8,0,256", "128"), ("6,4,0,256", "128"),
    ("6,16,0,256", "128"), ("6,8,0,0", "128"), ("6,8,0,256", "256"), ("6,8,0,256", "16384"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    args = p.parse_args(argv)
    require_cuda("covariance_sm90_sweep.py")
    from slicekit.ops._dispatch import _cuda_extension

    if _cuda_extension() is None or not hasattr(torch.ops.slicekit, "covariance_path"):
        print("covariance_sm90_sweep.py: the CUDA extension (with covariance_path) is not built", file=sys.stderr)
        return 2
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    op = torch.ops.slicekit.covariance_accumulate
    rows = []
    for d in args.d:
        x = activations(args.n, d, dtype, "cuda")
        path = torch.ops.slicekit.covariance_path(x)
        if path != "sm90_wgmma":
            print(f"covariance_sm90_sweep.py: this GPU runs the {path} path, not the sm90 kernel", file=sys.stderr)
            return 2
        xd = x.double()
        ref = xd.T @ xd
        del xd
        gemm = bench_ms(lambda: torch.mm(x.T, x, out_dtype=torch.float32))[0]  # noqa: B023
        out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
        for tune, chunk in SETTINGS:
            with env_vars(SLICEKIT_COV_SM90_TUNE=tune, SLICEKIT_COV_SM90_CHUNK=chunk):
                out.zero_()
                op(x, None, out, True)
                err = float((out - ref).norm() / ref.norm())
                ms = bench_ms(lambda: op(x, None, out, False))[0]  # noqa: B023
            rows.append(dict(d=d, N=args.n, dtype=args.dtype, tune=tune, chunk_rows=int(chunk), ms=ms,
                             x_gemm=gemm / ms, rel_err=err, gemm_ms=gemm, default=(tune, chunk) == SETTINGS[0]))
            print(rows[-1], file=sys.stderr, flush=True)
        del x, ref, out
        torch.cuda.empty_cache()
    print(markdown_table(rows, ["d", "dtype", "tune", "chunk_rows", "ms", "x_gemm", "rel_err", "default"]))
    print(f"wrote {write_results('covariance_sm90_sweep', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

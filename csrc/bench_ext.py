"""Tuning sweep for the CUDA extension (developer tool; the published numbers come from benchmarks/).

    python csrc/bench_ext.py            # H200-sized shapes
    python csrc/bench_ext.py --quick    # small shapes, a smoke run

Times torch.ops.slicekit.covariance_accumulate under each tiling scheme / block / chunk setting
(SLICEKIT_COV_* environment variables, read per call) next to torch's fp16->fp32 full GEMM and the
float64 GEMM, and rotate_slice next to the float64 full-then-slice reference and the plain fp16
GEMM, each with its error against float64. Prints Markdown tables; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _common import env_vars  # noqa: E402


def _bench_ms(fn) -> float:
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    except Exception:  # no triton: CUDA events, median of 50 after warm-up
        for _ in range(5):
            fn()
        times = []
        for _ in range(50):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def _rel_fro(a, b) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def covariance_sweep(n: int, d: int) -> None:
    x = (torch.randn(n, d, device="cuda") + 0.2).half()
    x64 = x.double()
    ref = x64.T @ x64
    out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
    # torch's full GEMM with fp32 output where this torch has mm(out_dtype=), fp16 output (same speed) otherwise.
    full_fp16 = _bench_ms((lambda: torch.mm(x.T, x, out_dtype=torch.float32)) if _has_out_dtype() else (lambda: torch.mm(x.T, x)))
    fp64 = _bench_ms(lambda: x64.T @ x64)
    rows = []
    # chunk None: the default the device probe picked (8192 rows if the tensor cores round their fp32
    # sums to nearest, 256 if they truncate); the error column shows which one holds up.
    settings = [("blocks", None, None), ("recursive", None, None),
                ("blocks", None, 256), ("blocks", None, 1024), ("blocks", None, 8192), ("recursive", None, 8192),
                ("blocks", 128, 8192), ("blocks", 512, 8192), ("recursive", 384, 8192), ("blocks", None, 16384)]
    for scheme, block, chunk in settings:
        # SLICEKIT_COV_SM90=0: this sweep is of the cuBLAS path (Hopper would otherwise run the wgmma kernel).
        knobs = dict(SLICEKIT_COV_SM90="0", SLICEKIT_COV_SCHEME=scheme, SLICEKIT_COV_BLOCK=block or None,
                     SLICEKIT_COV_CHUNK=chunk or None)
        with env_vars(**knobs):
            out.zero_()
            torch.ops.slicekit.covariance_accumulate(x, None, out)
            err = _rel_fro(out, ref)
            ms = _bench_ms(lambda: torch.ops.slicekit.covariance_accumulate(x, None, out))
        rows.append((scheme, block or "default", chunk or "default", ms, full_fp16 / ms, fp64 / ms, err))
    print(f"\n### covariance_accumulate, fp16 X [{n}, {d}] (full fp16->fp32 GEMM {full_fp16:.3f} ms, float64 GEMM {fp64:.3f} ms)\n")
    print("| scheme | block | chunk | ms | vs fp16 full GEMM | vs float64 | rel. Frobenius error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.2f}x | {r[5]:.1f}x | {r[6]:.2e} |")
    mask = (torch.rand(n, device="cuda") < 0.8).to(torch.uint8)
    ms_mask = _bench_ms(lambda: torch.ops.slicekit.covariance_accumulate(x, mask, out))
    print(f"\nwith a mask (default scheme): {ms_mask:.3f} ms")


def _has_out_dtype() -> bool:
    try:
        a = torch.zeros(8, 8, device="cuda", dtype=torch.float16)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except Exception:
        return False


def rotate_sweep(m: int, d: int, k: int) -> None:
    w = torch.randn(m, d, device="cuda").half()
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, device="cuda"))
    ref = w.double() @ q[:, :k]
    rounded = ref.half()
    q32 = q.float()
    rows = []

    def report(name, fn):
        out = fn()
        ms = _bench_ms(fn)
        fro = float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(rounded.double() - ref))
        mismatch = float((out != rounded).double().mean())
        rows.append((name, ms, fro, mismatch))

    report("float64 full, then slice (reference)", lambda: (w.double() @ q)[:, :k].half())
    report("fp16 GEMM, Q rounded to fp16", lambda: w @ q[:, :k].half())
    report("slicekit rotate_slice (hi/lo split)", lambda: torch.ops.slicekit.rotate_slice(w, q32, k, 1, torch.float16))
    report("slicekit rotate_slice, dim=0 (writer)", lambda: torch.ops.slicekit.rotate_slice(w.T.contiguous(), q32, k, 0, torch.float16).T)
    base = rows[0][1]
    print(f"\n### rotate_slice, fp16 W [{m}, {d}], k = {k}\n")
    print("| method | ms | speed-up vs float64 | Frobenius error / rounding's | outputs not correctly rounded |")
    print("| --- | --- | --- | --- | --- |")
    for name, ms, fro, mismatch in rows:
        print(f"| {name} | {ms:.3f} | {base / ms:.1f}x | {fro:.3f} | {mismatch:.2%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_ext.py: no CUDA GPU", file=sys.stderr)
        return 2
    import slicekit._C  # noqa: F401  (registers torch.ops.slicekit.*)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuda {torch.version.cuda}")
    if args.quick:
        covariance_sweep(2048, 512)
        rotate_sweep(512, 256, 192)
    else:
        covariance_sweep(16384, 4096)
        covariance_sweep(16384, 8192)
        rotate_sweep(11008, 4096, 3072)
    return 0


if __name__ == "__main__":
    sys.exit(main())

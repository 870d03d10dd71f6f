"""Where the Triton covariance kernel loses time: variants of its main loop and epilogue, timed side by side.

Exploration (it led to the shipped kernel in kernels/covariance.py). Each variant switches one thing:

  base        the kernel's earlier structure: pointer loads, three fp32 tiles, float64 read-modify-write
              of the tile AND its mirror
  upper       only the upper-triangle tiles are written (the mirror is formed once at the end)
  upper_tma   + TMA loads through a host-side tensor descriptor (no per-thread address math)
  upper_nohi  + two fp32 tiles instead of three (no Fast2Sum stage; less precise, fewer registers)
  fp32_store  the epilogue only stores the fp32 tile (no float64 RMW): the main loop's own cost

Every variant is checked against the float64 product before it is timed.

    python benchmarks/covariance_variants.py            # d = 4096 and 8192, N = 16384, fp16
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, markdown_table, require_cuda, write_results  # noqa: E402

from slicekit.kernels.covariance import TensorDescriptor, upper_tile  # noqa: E402  (same tile order)
from slicekit.ops import symmetrize_  # noqa: E402


@triton.jit
def _variant_kernel(
    X_ptr, X_desc, Out_ptr, N, d, stride_x_row, stride_out_row,
    USE_TMA: tl.constexpr, HAS_HI: tl.constexpr, MIRROR: tl.constexpr, FP32_STORE: tl.constexpr,
    CHUNK_ROWS: tl.constexpr, MID_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    tile_i, tile_j = upper_tile(pid, d, BLOCK_M, GROUP_M)
    offs_i = tile_i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tile_j * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    a_offs = offs_k[:, None] * stride_x_row + offs_i[None, :]
    b_offs = offs_k[:, None] * stride_x_row + offs_j[None, :]
    x_rows = X_ptr
    FLUSH_ITERS: tl.constexpr = CHUNK_ROWS // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    mid = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    hi = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for it in range(0, tl.cdiv(N, BLOCK_K)):
        if USE_TMA:
            a = X_desc.load([it * BLOCK_K, tile_i * BLOCK_M])
            b = X_desc.load([it * BLOCK_K, tile_j * BLOCK_M])
        else:
            a = tl.load(x_rows + a_offs)
            b = tl.load(x_rows + b_offs)
        acc = tl.dot(tl.trans(a), b, acc)
        if it % FLUSH_ITERS == FLUSH_ITERS - 1:
            mid += acc
            acc = acc * 0.0
            if HAS_HI:
                if it % (FLUSH_ITERS * MID_CHUNKS) == FLUSH_ITERS * MID_CHUNKS - 1:
                    s = hi + mid
                    mid = mid - (s - hi)
                    hi = s
        x_rows += BLOCK_K * stride_x_row
    upper = Out_ptr + offs_i.to(tl.int64)[:, None] * stride_out_row + offs_j[None, :]
    if FP32_STORE:
        tl.store(upper, hi + (mid + acc))
    else:
        tile = hi.to(tl.float64) + (mid.to(tl.float64) + acc.to(tl.float64))
        if tile_i == tile_j:
            tile = 0.5 * (tile + tl.trans(tile))
        prev = tl.load(upper)
        tl.store(upper, prev + tile)
        if MIRROR:
            if tile_i != tile_j:
                lower = Out_ptr + offs_j.to(tl.int64)[:, None] * stride_out_row + offs_i[None, :]
                prev_t = tl.load(lower)
                tl.store(lower, prev_t + tl.trans(tile))


VARIANTS = {
    "base": dict(USE_TMA=False, HAS_HI=True, MIRROR=True, FP32_STORE=False),
    "upper": dict(USE_TMA=False, HAS_HI=True, MIRROR=False, FP32_STORE=False),
    "upper_tma": dict(USE_TMA=True, HAS_HI=True, MIRROR=False, FP32_STORE=False),
    "upper_nohi": dict(USE_TMA=False, HAS_HI=False, MIRROR=False, FP32_STORE=False),
    "upper_tma_nohi": dict(USE_TMA=True, HAS_HI=False, MIRROR=False, FP32_STORE=False),
    "fp32_store": dict(USE_TMA=False, HAS_HI=True, MIRROR=False, FP32_STORE=True),
}
CONFIGS = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 4), (128, 64, 8, 5), (128, 128, 8, 2)]


def launch(x, out, variant, cfg, chunk_rows=256):
    bm, bk, warps, stages = cfg
    n, d = x.shape
    flags = VARIANTS[variant]
    desc = x
    if flags["USE_TMA"]:
        desc = TensorDescriptor.from_tensor(x, block_shape=[bk, bm])
    t = triton.cdiv(d, bm)
    _variant_kernel[(t * (t + 1) // 2,)](
        x, desc, out, n, d, x.stride(0), out.stride(0), **flags, CHUNK_ROWS=chunk_rows, MID_CHUNKS=16,
        BLOCK_M=bm, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return out


def check(x, variant, cfg, ref):
    out = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32 if VARIANTS[variant]["FP32_STORE"] else torch.float64,
                      device=x.device)
    launch(x, out, variant, cfg)
    out = out.double()
    if not VARIANTS[variant]["MIRROR"] or VARIANTS[variant]["FP32_STORE"]:
        symmetrize_(out)
    return float((out - ref).norm() / ref.norm())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args(argv)
    require_cuda("covariance_variants.py")
    rows = []
    for d in args.d:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = (torch.randn(args.n, d, device="cuda", generator=g) * (1 + 4 * torch.rand(d, device="cuda", generator=g))).half()
        ref = x.double().T @ x.double()
        gemm_ms = bench_ms(lambda: torch.mm(x.T, x, out_dtype=torch.float32))[0]
        rows.append(dict(d=d, N=args.n, variant="torch_mm_fp32", config="", ms=round(gemm_ms, 4), rel_err=None,
                         speedup_vs_gemm=1.0))
        for variant in args.variants:
            if VARIANTS[variant]["USE_TMA"] and TensorDescriptor is None:
                continue
            for cfg in CONFIGS:
                try:
                    err = check(x, variant, cfg, ref)
                    out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
                    ms = bench_ms(lambda: launch(x, out, variant, cfg))[0]
                except Exception as exc:  # a config that does not compile or fit: record why
                    rows.append(dict(d=d, N=args.n, variant=variant, config=str(cfg), ms=None,
                                     rel_err=None, speedup_vs_gemm=None, error=f"{type(exc).__name__}: {str(exc)[:160]}"))
                    continue
                rows.append(dict(d=d, N=args.n, variant=variant, config=str(cfg), ms=round(ms, 4),
                                 rel_err=err, speedup_vs_gemm=round(gemm_ms / ms, 3)))
                print(rows[-1], flush=True)
    print(markdown_table(rows, ["d", "variant", "config", "ms", "rel_err", "speedup_vs_gemm"]))
    print("wrote", write_results("covariance_variants", rows))


if __name__ == "__main__":
    main()

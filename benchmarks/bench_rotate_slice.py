"""Rotate-and-slice of one weight, and the fused shortcut residual update: Triton vs PyTorch.

Part 1, rotate_slice (k = 0.75 d, random W ~ N(0, 0.02^2), random orthogonal float64 Q):
  shapes   llama-2-7b gate/up reader W [11008, 4096] (dim=1), llama-2-7b down_proj writer
           W [4096, 11008] (dim=0: its rows live in the residual stream), llama-2-70b gate/up
           reader W [28672, 8192] (dim=1); fp16 and bf16
  triton          slicekit.kernels.rotate_slice.rotate_slice_triton (hi/lo split of Q, flush on);
                  the time includes the split of Q
  triton_dual     the same kernel with flush=False: hi and lo products in two MMA accumulators
                  (MMAs stay in flight across K steps; exposed to the tensor cores'
                  round-toward-zero accumulation over d/16 steps)
  cuda            torch.ops.slicekit.rotate_slice when the extension is built (NaN otherwise)
  torch_fp64      (W.double() @ Q.double())[:, :k].to(dtype): the reference implementation's path
                  (full d x d product, float64, conversions included)
  torch_16        W @ Q[:, :k].to(dtype): fast but Q is rounded to 16 bits first
  torch_16x2      W @ Q_hi and W @ Q_lo as two cuBLAS GEMMs, not combined: the time any two-pass
                  split of Q needs at cuBLAS efficiency (a speed bound; no error columns)
  TFLOP/s count the useful 2 * m * d * k for every provider. Error columns, against the exact
  product rounded once: max_err = max|out - exact| / max|exact|, round_err = the same for
  rn(exact), ratio = max_err / round_err (target <= 1.1), rms_ratio (RMS error over rounding's),
  flipped = % of outputs that are not the correctly rounded value.

Part 2, shortcut_linear (llama-2-7b, k_in = k_out = k = 3072; o_proj h width 4096, down_proj h
width 11008; M tokens in {1, 16, 128, 1024, 8192}; fp16):
  triton       slicekit.kernels.shortcut_linear.shortcut_linear_triton (one kernel)
  cuda         torch.ops.slicekit.shortcut_linear when built (NaN otherwise)
  torch        shortcut_linear_ref: F.linear then addmm (two GEMMs, y written twice)
  torch_dense  the unsliced layer's writer with its residual add, addmm(x, h, W^T) with
               W [4096, n]: what slicing has to beat at decode
  TFLOP/s count 2 M k_out (k_in + n); GB/s count the bytes each provider must move (weights,
  inputs, output once). err = max|y - y64| / max|y64| against float64 from the same inputs.
  For M <= 256 the times come from CUDA-graph replays, so launch overhead does not hide the
  weight-bandwidth-bound kernel.

    python benchmarks/bench_rotate_slice.py            # everything above
    python benchmarks/bench_rotate_slice.py --quick    # rotate: fp16 (+ bf16 for the 7b reader);
                                                       # shortcut: M {1, 128, 8192}
Results: benchmarks/results/rotate_slice.json and benchmarks/results/shortcut_linear.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    MODEL_SHAPES, bench_ms, markdown_table, require_cuda, safe_bench, tflops, write_results,
)

L7, L70 = MODEL_SHAPES["llama-2-7b"], MODEL_SHAPES["llama-2-70b"]
# (name, weight shape, residual dim): readers [out, d] dim=1, writers [d, in] dim=0.
ROTATE_SHAPES = [
    ("llama-2-7b gate/up", (L7["intermediate"], L7["hidden"]), 1),
    ("llama-2-7b down", (L7["hidden"], L7["intermediate"]), 0),
    ("llama-2-70b gate/up", (L70["intermediate"], L70["hidden"]), 1),
]
SHORTCUT_K = 3072  # 25% slicing of llama-2-7b's 4096, rounded to 128
SHORTCUT_WRITERS = [("o_proj", L7["hidden"]), ("down_proj", L7["intermediate"])]
SHORTCUT_TOKENS = (1, 16, 128, 1024, 8192)
QUICK_TOKENS = (1, 128, 8192)
GRAPH_MAX_M = 256


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _cuda_op(name: str):
    try:
        from slicekit.ops._dispatch import _cuda_extension

        _cuda_extension()
        return getattr(torch.ops.slicekit, name) if hasattr(torch.ops.slicekit, name) else None
    except Exception:
        return None


def _config_str(kernel) -> str:
    """The autotuner's pick for the last launch, short: 'BM128 BN128 BK64 G8 w8 s4'."""
    c = getattr(kernel, "best_config", None)
    if c is None:
        return ""
    short = {"BLOCK_M": "BM", "BLOCK_N": "BN", "BLOCK_K": "BK", "GROUP_M": "G"}
    parts = [f"{short.get(k, k)}{v}" for k, v in c.kwargs.items()]
    return " ".join(parts + [f"w{c.num_warps}", f"s{c.num_stages}"])


def _failed(exc: Exception) -> str:
    print(f"  provider failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return f"failed: {type(exc).__name__}"


# ---------------------------------------------------------------------------------------------
# rotate_slice
# ---------------------------------------------------------------------------------------------
def rounding_stats(out: torch.Tensor, exact: torch.Tensor) -> dict:
    """Error of ``out`` against the exact float64 result, beside the error of rounding it once."""
    scale = exact.abs().max()
    rounded = exact.to(out.dtype)
    diff = out.double() - exact
    rdiff = rounded.double() - exact
    max_err = (diff.abs().max() / scale).item()
    round_err = (rdiff.abs().max() / scale).item()
    return dict(
        max_err=max_err,
        round_err=round_err,
        ratio=max_err / round_err if round_err > 0 else math.nan,
        rms_ratio=(diff.square().mean() / rdiff.square().mean()).sqrt().item(),
        flipped_pct=100.0 * (out != rounded).double().mean().item(),
    )


# Any scheme that keeps Q's precision with two 16-bit tensor-core products (hi and lo parts of Q)
# costs at least two cuBLAS GEMMs of the sliced shape: this row times exactly that, nothing fused.
_BOUND_NOTE = "two plain 16-bit GEMMs (Q_hi, Q_lo), outputs not combined: speed bound of a two-pass split"


def measure_rotate(name: str, shape: tuple[int, int], dim: int, dtype: torch.dtype, device: str = "cuda") -> list[dict]:
    from slicekit.kernels.rotate_slice import _rotate_slice_kernel, rotate_slice_triton

    d = shape[dim]
    k = 3 * d // 4
    m = shape[1 - dim]
    g = torch.Generator(device=device).manual_seed(d + m)
    weight = (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * 0.02).to(dtype)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device=device, dtype=torch.float64))
    qk = q[:, :k]
    exact = weight.double() @ qk if dim == 1 else qk.T @ weight.double()
    flops = 2.0 * m * d * k
    slow = m * d * d >= (1 << 37)  # the float64 GEMM takes >~50 ms: fewer repeats
    rows = []

    def add(provider, fn, note="", with_stats=True):
        try:
            out = fn()
            torch.cuda.synchronize()
            stats = rounding_stats(out, exact) if with_stats else {}
            del out
            ms = safe_bench(fn, **(dict(warmup_ms=1, rep_ms=300) if slow and provider == "torch_fp64" else {}))
        except Exception as exc:  # out of memory, missing op
            stats, ms, note = {}, (math.nan,) * 3, _failed(exc)
        if provider.startswith("triton") and not note:
            note = _config_str(_rotate_slice_kernel)
        rows.append(dict(shape=name, m=m, d=d, k=k, dim=dim, dtype=_dt(dtype), provider=provider, ms=ms[0],
                         ms_p20=ms[1], ms_p80=ms[2], tflops=tflops(flops, ms[0]), **stats, note=note))

    add("triton", lambda: rotate_slice_triton(weight, q, k, dim, dtype, flush=True))
    add("triton_dual", lambda: rotate_slice_triton(weight, q, k, dim, dtype, flush=False))
    op = _cuda_op("rotate_slice")
    if op is not None:
        add("cuda", lambda: op(weight, q, k, dim, dtype))
    else:
        rows.append(dict(shape=name, m=m, d=d, k=k, dim=dim, dtype=_dt(dtype), provider="cuda", ms=math.nan,
                         tflops=math.nan, note="extension not built"))
    if dim == 1:
        add("torch_fp64", lambda: (weight.double() @ q.double())[:, :k].to(dtype), "full d x d product")
        add("torch_16", lambda: weight @ qk.to(dtype))
        a16, b16 = qk.to(dtype), (qk - qk.to(dtype).double()).to(dtype)
        add("torch_16x2", lambda: (weight @ a16, weight @ b16), _BOUND_NOTE, with_stats=False)
    else:
        add("torch_fp64", lambda: (q.double().T @ weight.double())[:k].to(dtype), "full d x d product")
        add("torch_16", lambda: qk.T.to(dtype) @ weight)
        a16, b16 = qk.T.to(dtype).contiguous(), (qk.T - qk.T.to(dtype).double()).to(dtype).contiguous()
        add("torch_16x2", lambda: (a16 @ weight, b16 @ weight), _BOUND_NOTE, with_stats=False)
    fp64_ms = next(r["ms"] for r in rows if r["provider"] == "torch_fp64")
    for r in rows:
        r["speedup_vs_fp64"] = fp64_ms / r["ms"] if r["ms"] == r["ms"] else math.nan
    del weight, q, qk, exact
    torch.cuda.empty_cache()
    return rows


ROTATE_COLS = ["shape", "dtype", "provider", "ms", "tflops", "speedup_vs_fp64", "max_err", "round_err", "ratio",
               "rms_ratio", "flipped_pct", "note"]


# ---------------------------------------------------------------------------------------------
# shortcut_linear
# ---------------------------------------------------------------------------------------------
def _time(fn, graph: bool):
    """Median/p20/p80 ms; CUDA-graph replays for small M, where launch overhead would dominate."""
    if graph:
        try:
            from triton.testing import do_bench_cudagraph

            fn()  # compile / autotune before capture
            torch.cuda.synchronize()
            q = do_bench_cudagraph(fn, rep=50, quantiles=[0.5, 0.2, 0.8])
            return float(q[0]), float(q[1]), float(q[2])
        except Exception as exc:
            print(f"  CUDA-graph timing unavailable ({type(exc).__name__}: {exc}); timing eager launches",
                  file=sys.stderr)
    return bench_ms(fn)


def measure_shortcut(writer: str, n: int, M: int, dtype: torch.dtype, device: str = "cuda") -> list[dict]:
    from slicekit.kernels.shortcut_linear import _shortcut_linear_kernel, shortcut_linear_triton
    from slicekit.ops import shortcut_linear_ref

    k = SHORTCUT_K
    d = L7["hidden"]
    g = torch.Generator(device=device).manual_seed(M + n)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    x, s, h, w = rnd(M, k), rnd(k, k, scale=k ** -0.5), rnd(M, n), rnd(k, n, scale=0.02)
    x_dense, w_dense = rnd(M, d), rnd(d, n, scale=0.02)
    y64 = shortcut_linear_ref(x.double(), s.double(), h.double(), w.double(), None)
    scale = y64.abs().max()
    flops = 2.0 * M * k * (k + n)
    elem = torch.finfo(dtype).bits // 8
    sliced_bytes = elem * (k * k + k * n + M * (k + n) + M * k)
    dense_bytes = elem * (d * n + M * (d + n) + M * d)
    graph = M <= GRAPH_MAX_M
    rows = []

    def add(provider, fn, nbytes, with_err=True, note=""):
        err = math.nan
        try:
            out = fn()
            if with_err:
                err = ((out.double() - y64).abs().max() / scale).item()
            del out
            ms = _time(fn, graph)
        except Exception as exc:
            ms, note = (math.nan,) * 3, _failed(exc)
        if provider == "triton" and not note:
            note = _config_str(_shortcut_linear_kernel)
        rows.append(dict(writer=writer, n=n, k=k, M=M, dtype=_dt(dtype), provider=provider, ms=ms[0], ms_p20=ms[1],
                         ms_p80=ms[2], tflops=tflops(flops if provider != "torch_dense" else 2.0 * M * d * n, ms[0]),
                         gbps=nbytes / (ms[0] * 1e-3) / 1e9 if ms[0] == ms[0] else math.nan, err=err,
                         timing="cuda graph" if graph else "eager", note=note))

    add("triton", lambda: shortcut_linear_triton(x, s, h, w, None), sliced_bytes)
    op = _cuda_op("shortcut_linear")
    if op is not None:
        add("cuda", lambda: op(x, s, h, w, None), sliced_bytes)
    else:
        rows.append(dict(writer=writer, n=n, k=k, M=M, dtype=_dt(dtype), provider="cuda", ms=math.nan,
                         tflops=math.nan, gbps=math.nan, err=math.nan, note="extension not built"))
    add("torch", lambda: shortcut_linear_ref(x, s, h, w, None), sliced_bytes)
    add("torch_dense", lambda: torch.addmm(x_dense, h, w_dense.T), dense_bytes, with_err=False,
        note="unsliced writer + residual add")
    torch_ms = next(r["ms"] for r in rows if r["provider"] == "torch")
    dense_ms = next(r["ms"] for r in rows if r["provider"] == "torch_dense")
    for r in rows:
        ok = r["ms"] == r["ms"]
        r["speedup_vs_torch"] = torch_ms / r["ms"] if ok else math.nan
        r["vs_dense"] = dense_ms / r["ms"] if ok else math.nan
    del x, s, h, w, x_dense, w_dense, y64
    torch.cuda.empty_cache()
    return rows


SHORTCUT_COLS = ["writer", "M", "dtype", "provider", "ms", "tflops", "gbps", "speedup_vs_torch", "vs_dense", "err",
                 "timing", "note"]


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer dtypes and token counts")
    parser.add_argument("--only", choices=("rotate", "shortcut"), help="run one part")
    args = parser.parse_args(argv)
    require_cuda("bench_rotate_slice.py")
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}\n")

    if args.only in (None, "rotate"):
        rows = []
        for name, shape, dim in ROTATE_SHAPES:
            dtypes = (torch.float16, torch.bfloat16)
            if args.quick and name != "llama-2-7b gate/up":
                dtypes = (torch.float16,)
            for dtype in dtypes:
                print(f"rotate_slice {name} {shape} dim={dim} {_dt(dtype)} ...", file=sys.stderr, flush=True)
                rows += measure_rotate(name, shape, dim, dtype)
                write_results("rotate_slice", rows, extra=dict(quick=args.quick))  # keep partial results
        print("## rotate_slice, k = 0.75 d (error columns vs the exact product rounded once)\n")
        print(markdown_table(rows, ROTATE_COLS))
        print()

    if args.only in (None, "shortcut"):
        rows = []
        tokens = QUICK_TOKENS if args.quick else SHORTCUT_TOKENS
        for writer, n in SHORTCUT_WRITERS:
            for M in tokens:
                print(f"shortcut_linear {writer} n={n} M={M} ...", file=sys.stderr, flush=True)
                rows += measure_shortcut(writer, n, M, torch.float16)
                write_results("shortcut_linear", rows, extra=dict(quick=args.quick))
        print(f"## shortcut_linear, llama-2-7b, k = {SHORTCUT_K}, fp16\n")
        print(markdown_table(rows, SHORTCUT_COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

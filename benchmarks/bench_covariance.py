"""Streaming covariance C += X^T X (fp16/bf16 X, float64 C): Triton and CUDA kernels vs PyTorch.

Providers, all adding the [d, d] product of one [N, d] activation batch:
  triton       slicekit.kernels.covariance.covariance_triton, streaming form (symmetric=False:
               upper-triangle tiles only, float64 out; what the slicing pipeline calls per batch)
  triton_sym   the same with symmetric=True (each tile's mirror written too, C symmetric per call)
  triton_mask  the streaming form with an all-ones uint8 row mask (N = 16384 only); on Hopper the
               kept rows are gathered first (TMA cannot skip rows): the gather is in the time
  symmetrize   slicekit.ops.symmetrize_ (mirror the upper triangle once per residual position,
               after all batches; not a per-batch cost)
  cuda         torch.ops.slicekit.covariance_accumulate(..., symmetric=False), when the extension is
               built (NaN otherwise); the note names its kernel (sm90_wgmma on Hopper, else cublas)
  cuda_sym     the same with symmetric=True (the mirror written per call)
  torch_gemm   torch.mm(X.T, X, out_dtype=torch.float32): the full fp16-in fp32-out GEMM; where
               that overload is missing, torch.mm(X.T, X) with fp16 output (noted in the row)
  torch_fp64   X.double().T @ X.double(): how the reference SliceGPT accumulates (conversion
               included, it is part of that path)
TFLOP/s are counted as N * d * (d + 1) for every provider -- the useful work of the symmetric
result -- so the full GEMM's figure is half its hardware rate. The error column is the relative
Frobenius error against the float64 product of the same low-precision X.

    python benchmarks/bench_covariance.py            # d {2048, 4096, 5120, 8192} x N {4096, 16384, 65536}
    python benchmarks/bench_covariance.py --quick    # d {4096, 8192}, N 16384
    python benchmarks/bench_covariance.py --chunks   # accuracy/speed of the flush interval (CHUNK_ROWS)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import MODEL_SHAPES, markdown_table, require_cuda, safe_bench, tflops, write_results  # noqa: E402

# Residual widths from named configs; 2048 is the 1B class (Llama-3.2-1B, TinyLlama).
WIDTHS = [("1b-class", 2048)] + [(m, MODEL_SHAPES[m]["hidden"]) for m in ("llama-2-7b", "llama-2-13b", "llama-2-70b")]
ROWS_FULL = (4096, 16384, 65536)  # calibration rows per call: 2, 8, 32 sequences of 2048 tokens
QUICK_WIDTHS = (4096, 8192)
QUICK_ROWS = (16384,)
CHUNK_SWEEP = (128, 192, 256, 512, 1024, 2048)  # rows per MMA accumulator; the default is CHUNK_ROWS


def flops(n: int, d: int) -> float:
    return float(n) * d * (d + 1)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def activations(n: int, d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Calibration-like activations: non-zero mean and a few outlier channels 30x larger."""
    g = torch.Generator(device=device).manual_seed(n * 7 + d)
    x = torch.randn(n, d, device=device, dtype=torch.float32, generator=g) + 0.5
    x[:, : max(1, d // 256)] *= 30.0
    return x.to(dtype)


def fp64_path(x: torch.Tensor) -> torch.Tensor:
    """How the reference SliceGPT accumulates: upcast once, one float64 GEMM."""
    xd = x.double()
    return xd.T @ xd


def torch_gemm_fn(x: torch.Tensor):
    """The closest fp16-in fp32-out GEMM this torch offers, and a note naming it."""
    try:
        torch.mm(x[:64].T, x[:64], out_dtype=torch.float32)
        return (lambda: torch.mm(x.T, x, out_dtype=torch.float32)), "mm out_dtype=fp32"
    except (TypeError, RuntimeError) as exc:
        print(f"  torch.mm(..., out_dtype=torch.float32) unavailable ({type(exc).__name__}); "
              "timing the fp16-output GEMM instead", file=sys.stderr)
        return (lambda: torch.mm(x.T, x)), f"mm {x.dtype} out (no out_dtype overload)"


def cuda_op():
    try:
        from slicekit.ops._dispatch import _cuda_extension

        _cuda_extension()
        if hasattr(torch.ops.slicekit, "covariance_accumulate"):
            return torch.ops.slicekit.covariance_accumulate
        return None
    except Exception:
        return None


def sm90_problem(x: torch.Tensor | None = None) -> str | None:
    """Why the extension's Hopper kernel cannot be timed here (for X, when given), or None: the
    scripts that time its settings need it, not the cuBLAS path the extension falls back to."""
    if cuda_op() is None or not hasattr(torch.ops.slicekit, "covariance_path"):
        return "the CUDA extension (with covariance_path) is not built"
    if x is not None and (path := torch.ops.slicekit.covariance_path(x)) != "sm90_wgmma":
        return f"this GPU runs the {path} path, not the sm90 kernel"
    return None


def measure_shape(model: str, d: int, n: int, dtype: torch.dtype, device: str = "cuda", timer=safe_bench,
                  with_mask: bool = False) -> list[dict]:
    """Time every provider on one [n, d] batch; one row per provider."""
    from slicekit.kernels import covariance as kcov

    x = activations(n, d, dtype, device)
    ref = fp64_path(x)
    ref = 0.5 * (ref + ref.T)
    slow = n * d * d >= (1 << 36)  # the float64 GEMM takes >~0.1 s here: fewer repeats
    rows = []

    def row(provider, ms, err, note=""):
        return dict(model=model, d=d, N=n, dtype=str(dtype).replace("torch.", ""), provider=provider,
                    ms=ms[0], ms_p20=ms[1], ms_p80=ms[2], tflops=tflops(flops(n, d), ms[0]), rel_err=err, note=note)

    # triton: error from one call on a zero accumulator, time with the accumulator reused.
    from slicekit.ops import symmetrize_

    out = torch.zeros(d, d, dtype=torch.float64, device=device)

    def triton_row(provider, mask, symmetric):
        out.zero_()
        fn = lambda: kcov.covariance_triton(x, mask, out, symmetric=symmetric)  # noqa: E731
        try:
            fn()  # the first call autotunes (restore_value keeps out clean)
            err = rel_err(out if symmetric else symmetrize_(out), ref)
            best = str(getattr(kcov._covariance_kernel, "best_config", "") or "")
            rows.append(row(provider, timer(fn), err, best))
        except Exception as exc:
            print(f"  {provider} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rows.append(row(provider, (math.nan,) * 3, math.nan, f"failed: {type(exc).__name__}"))

    # The streaming call: upper triangle only, mirrored once per residual position (row "symmetrize").
    triton_row("triton", None, symmetric=False)
    triton_row("triton_sym", None, symmetric=True)
    if with_mask:
        triton_row("triton_mask", torch.ones(n, dtype=torch.uint8, device=device), symmetric=False)
        rows.append(row("symmetrize", timer(lambda: symmetrize_(out)), math.nan,
                        "once per residual position, not per batch"))
    del out

    op = cuda_op() if device == "cuda" else None
    if op is not None:
        out = torch.zeros(d, d, dtype=torch.float64, device=device)
        path = torch.ops.slicekit.covariance_path(x) if hasattr(torch.ops.slicekit, "covariance_path") else ""
        for provider, symmetric in (("cuda", False), ("cuda_sym", True)):
            try:
                out.zero_()
                op(x, None, out, symmetric)
                err = rel_err(out if symmetric else symmetrize_(out), ref)
                rows.append(row(provider, timer(lambda: op(x, None, out, symmetric)), err, path))  # noqa: B023
            except Exception as exc:
                print(f"  {provider} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                rows.append(row(provider, (math.nan,) * 3, math.nan, f"failed: {type(exc).__name__}"))
        del out
    else:
        rows.append(row("cuda", (math.nan,) * 3, math.nan, "extension not built"))

    gemm, note = torch_gemm_fn(x)
    try:
        err = rel_err(gemm(), ref)
    except Exception as exc:
        err, note = math.nan, f"failed: {type(exc).__name__}"
    rows.append(row("torch_gemm", timer(gemm), err, note))

    fp64 = lambda: fp64_path(x)  # noqa: E731
    rows.append(row("torch_fp64", timer(fp64, **(dict(warmup_ms=1, rep_ms=300) if slow else {})), 0.0, "reference"))

    by = {r["provider"]: r["ms"] for r in rows}
    for r in rows:
        r["speedup_vs_gemm"] = by["torch_gemm"] / r["ms"] if r["ms"] == r["ms"] else math.nan
        r["speedup_vs_fp64"] = by["torch_fp64"] / r["ms"] if r["ms"] == r["ms"] else math.nan
    del ref, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def measure_chunks(d: int, n: int, dtype: torch.dtype, device: str = "cuda", timer=safe_bench,
                   chunks=CHUNK_SWEEP) -> list[dict]:
    """Speed and error of the Triton kernel against the flush interval; N itself = never flush."""
    from slicekit.kernels import covariance as kcov

    x = activations(n, d, dtype, device)
    ref = fp64_path(x)
    ref = 0.5 * (ref + ref.T)
    rows = []
    # One config for every interval (the one autotuning picks for the default), so the sweep
    # measures the flush and not the tile choice, and compiles once per interval.
    out = torch.zeros(d, d, dtype=torch.float64, device=device)
    kcov.covariance_triton(x, None, out)
    cfg = None if kcov._INTERPRET else getattr(kcov._covariance_kernel, "best_config", None)
    for chunk in tuple(chunks) + (max(64, -(-n // 64) * 64),):
        out = torch.zeros(d, d, dtype=torch.float64, device=device)
        kcov.covariance_triton(x, None, out, chunk_rows=chunk, config=cfg)
        err = rel_err(out, ref)
        ms = timer(lambda: kcov.covariance_triton(x, None, out, chunk_rows=chunk, config=cfg))
        rows.append(dict(d=d, N=n, dtype=str(dtype).replace("torch.", ""), chunk_rows=chunk,
                         flush="never" if chunk >= n else f"every {chunk} rows", ms=ms[0],
                         tflops=tflops(flops(n, d), ms[0]), rel_err=err,
                         default=chunk == kcov.CHUNK_ROWS, config=str(cfg)))
    gemm, note = torch_gemm_fn(x)
    rows.append(dict(d=d, N=n, dtype=str(dtype).replace("torch.", ""), chunk_rows=None, flush=f"torch {note}",
                     ms=timer(gemm)[0], tflops=math.nan, rel_err=rel_err(gemm(), ref), default=False))
    rows[-1]["tflops"] = tflops(flops(n, d), rows[-1]["ms"])
    return rows


SUMMARY_COLS = ["model", "d", "N", "dtype", "triton ms", "triton TF/s", "x gemm", "x fp64", "triton err",
                "sym ms", "mask ms", "cuda ms", "cuda x gemm", "cuda x fp64", "cuda err", "gemm ms", "gemm err",
                "fp64 ms"]


def summarize(rows: list[dict]) -> list[dict]:
    """One wide line per shape for the Markdown table (the JSON keeps one row per provider)."""
    out = {}
    for r in rows:
        k = (r["model"], r["d"], r["N"], r["dtype"])
        s = out.setdefault(k, dict(model=k[0], d=k[1], N=k[2], dtype=k[3]))
        p = r["provider"]
        if p == "triton":
            s.update({"triton ms": r["ms"], "triton TF/s": r["tflops"], "x gemm": r["speedup_vs_gemm"],
                      "x fp64": r["speedup_vs_fp64"], "triton err": r["rel_err"]})
        elif p == "triton_sym":
            s["sym ms"] = r["ms"]
        elif p == "triton_mask":
            s["mask ms"] = r["ms"]
        elif p == "cuda":
            s.update({"cuda ms": r["ms"], "cuda x gemm": r["speedup_vs_gemm"], "cuda x fp64": r["speedup_vs_fp64"],
                      "cuda err": r["rel_err"]})
        elif p == "torch_gemm":
            s.update({"gemm ms": r["ms"], "gemm err": r["rel_err"]})
        elif p == "torch_fp64":
            s["fp64 ms"] = r["ms"]
    return list(out.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="d 4096/8192, N 16384 only")
    p.add_argument("--chunks", action="store_true", help="sweep the flush interval instead (d 4096, N 16384/65536)")
    p.add_argument("--name", default=None, help="results file name (default: covariance, covariance_chunks)")
    args = p.parse_args(argv)
    require_cuda("bench_covariance.py")
    t0 = time.time()
    dtypes = (torch.float16, torch.bfloat16)
    import triton

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")

    if args.chunks:
        rows = []
        for n in ((16384,) if args.quick else (16384, 65536)):
            for dtype in dtypes:
                print(f"chunks: d=4096 N={n} {dtype}", file=sys.stderr, flush=True)
                rows += measure_chunks(4096, n, dtype)
        print(markdown_table(rows, ["d", "N", "dtype", "flush", "ms", "tflops", "rel_err", "default"]))
        print(f"\nwrote {write_results(args.name or 'covariance_chunks', rows)} ({time.time() - t0:.0f} s)")
        return 0

    widths = [(m, d) for m, d in WIDTHS if not args.quick or d in QUICK_WIDTHS]
    ns = QUICK_ROWS if args.quick else ROWS_FULL
    rows = []
    for model, d in widths:
        for n in ns:
            for dtype in dtypes:
                print(f"{model}: d={d} N={n} {dtype} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
                rows += measure_shape(model, d, n, dtype, with_mask=n == 16384)
    print(markdown_table(summarize(rows), SUMMARY_COLS))
    print("\nTFLOP/s count N*d*(d+1) (the symmetric result) for every provider; x gemm / x fp64 are the Triton "
          "kernel's speedups over torch_gemm and torch_fp64; err = relative Frobenius error vs float64.")
    path = write_results(args.name or "covariance", rows, extra=dict(flops_rule="N*d*(d+1)", chunk_rows=_chunk_rows()))
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    return 0


def _chunk_rows():
    from slicekit.kernels import covariance as kcov

    return kcov.CHUNK_ROWS


if __name__ == "__main__":
    sys.exit(main())

"""Tuning sweep of the CUDA extension's Hopper covariance kernel (csrc/covariance_sm90.cu).

Times torch.ops.slicekit.covariance_accumulate(X, None, C, symmetric=False) -- the streaming call --
(and with --sym the mirrored form, symmetric=True, as ms_sym) for each setting of its environment
knobs, next to torch's fp16->fp32 GEMM in the same process:
  SLICEKIT_COV_SM90_CHUNK  rows between promotions of the MMA accumulator (128 = default; longer is
                           faster and drifts further from float64: the error column shows by how much)
  SLICEKIT_COV_SM90_TUNE   "stages,band,ctas,l2": pipeline stages (<= 6; <= 5 for 192-wide tiles),
                           row blocks per schedule band, persistent CTAs (0 = one per SM), TMA L2
                           promotion bytes
  SLICEKIT_COV_SM90_TILE   output tile width, 128 or 192
  SLICEKIT_COV_SM90_STAGGER  stages by which the second consumer's chunks lag the first's
  SLICEKIT_COV_SM90_PROBE  1 = no copies, 2 = no MMAs, 3 = no float64 epilogue: timing probes that
                           split the time into feed, tensor-core work and epilogue (their sums are
                           garbage; err is not reported)
  SLICEKIT_COV_SM90_EPI    "narrow": the streaming epilogue's earlier, narrower batches (A/B)
  SLICEKIT_COV_SM90_SPLITS row ranges per tile (split-K; the default splits only launches with fewer
                           tiles than SMs)
  SLICEKIT_COV_SM90_TAIL   row ranges per tile of the last, partly filled wave (1 = whole tiles)
The Triton kernel (the dispatcher's choice off Hopper and for masked input) is timed on the same X.
X is calibration-like (mean 0.5, a few channels 30x larger), N = 16384 rows. Medians of CUDA-event
timings; the error is the relative Frobenius error of one streaming call, mirrored by symmetrize_ as the
pipeline does, against float64.

    python benchmarks/covariance_sm90_sweep.py                 # d 4096 and 8192, fp16, the tile sweep
    python benchmarks/covariance_sm90_sweep.py --d 4096 --dtype bf16 --set tune
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import bench_ms, env_vars, markdown_table, require_cuda, write_results  # noqa: E402
from bench_covariance import activations, fp64_path, rel_err, sm90_problem  # noqa: E402  (the same X, reference, error)

# (tile, SLICEKIT_COV_SM90_TUNE, SLICEKIT_COV_SM90_CHUNK, probe, SLICEKIT_COV_SM90_STAGGER[, knobs]) per
# named set; knobs: more SLICEKIT_COV_SM90_* variables by suffix, e.g. {"EPI": "narrow"}. The epilogue set
# at 05afb3b also timed an L2 prefetch of `out` (SLICEKIT_COV_SM90_PREFETCH, since removed):
# covariance_sm90_epilogue.json.
_T128 = ("128", "6,8,0,256")  # the 128-wide defaults: tile, SLICEKIT_COV_SM90_TUNE
_T192 = ("192", "5,8,0,256")
SETS = {
    "tiles": [
        (*_T128, "128", "0", "0"), (*_T128, "16384", "0", "0"), (*_T128, "128", "1", "0"), (*_T128, "128", "2", "0"),
        (*_T192, "128", "0", "0"), ("192", "4,8,0,256", "128", "0", "0"), ("192", "5,4,0,256", "128", "0", "0"),
        ("192", "5,16,0,256", "128", "0", "0"), (*_T192, "16384", "0", "0"), (*_T192, "128", "1", "0"),
        (*_T192, "128", "2", "0"),
    ],
    "tune": [
        (*_T128, "128", "0", "0"), ("128", "5,8,0,256", "128", "0", "0"), ("128", "4,8,0,256", "128", "0", "0"),
        ("128", "6,4,0,256", "128", "0", "0"), ("128", "6,16,0,256", "128", "0", "0"),
        ("128", "6,8,0,0", "128", "0", "0"), (*_T128, "256", "0", "0"), (*_T128, "16384", "0", "0"),
    ],
    "choose": [(*_T128, "128", "0", "0"), (*_T192, "128", "0", "0"), ("192", "4,8,0,256", "128", "0", "0")],
    "stagger": [
        (*_T128, "128", "0", "0"), (*_T128, "128", "0", "1"), (*_T192, "128", "0", "0"), (*_T192, "128", "0", "1"),
        ("192", "4,8,0,256", "128", "0", "0"), ("192", "4,8,0,256", "128", "0", "1"),
        ("192", "4,16,0,256", "128", "0", "1"), (*_T192, "192", "0", "0"), ("192", "4,8,0,256", "192", "0", "1"),
        ("192", "4,8,0,256", "192", "0", "2"),
    ],
    "default": [("auto", "", "", "0", "0")],
    "epilogue": [
        ("auto", "", "", "0", "0", {"EPI": "narrow"}), ("auto", "", "", "0", "0"), ("auto", "", "", "3", "0"),
        ("auto", "", "", "0", "0", {"EPI": "narrow"}),
    ],
    "splits": [("auto", "", "", "0", "0", {"SPLITS": k}) for k in ("1", "", "2", "3", "4", "8")],
    # Whole tiles (1) and the default, twice in turn (drift), then forced tail ranges.
    "tail": [("auto", "", "", "0", "0", {"TAIL": k}) for k in ("1", "", "1", "", "2", "3", "4", "6", "8")],
    # Promotion interval with the default plan: speed against drift from float64.
    "chunk": [("auto", "", c, "0", "0") for c in ("128", "192", "256", "128")],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--dtype", choices=["fp16", "bf16"], nargs="+", default=["fp16"])
    p.add_argument("--set", choices=sorted(SETS), default="tiles")
    p.add_argument("--sym", action="store_true", help="also time the mirrored form (symmetric=True)")
    p.add_argument("--name", default="covariance_sm90_sweep", help="results file name (benchmarks/results/NAME.json)")
    args = p.parse_args(argv)
    require_cuda("covariance_sm90_sweep.py")
    if problem := sm90_problem():
        print(f"covariance_sm90_sweep.py: {problem}", file=sys.stderr)
        return 2
    from slicekit.kernels import covariance as kcov
    from slicekit.ops import symmetrize_

    op = torch.ops.slicekit.covariance_accumulate
    rows = []
    for d in args.d:
        for dname in args.dtype:
            dtype = torch.float16 if dname == "fp16" else torch.bfloat16
            x = activations(args.n, d, dtype, "cuda")
            if problem := sm90_problem(x):
                print(f"covariance_sm90_sweep.py: {problem}", file=sys.stderr)
                return 2
            ref = fp64_path(x)
            gemm = bench_ms(lambda: torch.mm(x.T, x, out_dtype=torch.float32))[0]  # noqa: B023
            out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
            base = dict(d=d, N=args.n, dtype=dname, gemm_ms=gemm)

            kcov.covariance_triton(x, None, out, symmetric=True)
            err = rel_err(out, ref)
            ms = bench_ms(lambda: kcov.covariance_triton(x, None, out, symmetric=False))[0]  # noqa: B023
            rows.append(dict(base, kernel="triton", tile="128", tune="", chunk_rows=128, probe="0", stagger=0, ms=ms,
                             x_gemm=gemm / ms, rel_err=err))
            print(rows[-1], file=sys.stderr, flush=True)
            for tile, tune, chunk, probe, stagger, *extra in SETS[args.set]:
                more = extra[0] if extra else {}
                knobs = dict(SLICEKIT_COV_SM90_TILE=None if tile == "auto" else tile,
                             **{f"SLICEKIT_COV_SM90_{k}": v or None for k, v in more.items()},
                             SLICEKIT_COV_SM90_STAGGER=None if stagger == "0" else stagger,
                             SLICEKIT_COV_SM90_TUNE=tune or None, SLICEKIT_COV_SM90_CHUNK=chunk or None,
                             SLICEKIT_COV_SM90_PROBE=None if probe == "0" else probe)
                with env_vars(**knobs):
                    err = None
                    if probe == "0":  # the error of the timed (streaming) call, mirrored as the pipeline does
                        out.zero_()
                        op(x, None, out, False)
                        err = rel_err(symmetrize_(out), ref)
                    ms = bench_ms(lambda: op(x, None, out, False))[0]  # noqa: B023
                    ms_sym = bench_ms(lambda: op(x, None, out, True))[0] if args.sym else None  # noqa: B023
                rows.append(dict(base, kernel="cuda", tile=tile, tune=tune, chunk_rows=int(chunk or 128),
                                 probe=probe, stagger=int(stagger), epi=more.get("EPI", ""),
                                 splits=more.get("SPLITS", ""), tail=more.get("TAIL", ""), ms=ms,
                                 x_gemm=gemm / ms, rel_err=err, ms_sym=ms_sym))
                print(rows[-1], file=sys.stderr, flush=True)
            del x, ref, out
            torch.cuda.empty_cache()
    print(markdown_table(rows, ["d", "dtype", "kernel", "tile", "tune", "chunk_rows", "probe", "stagger", "epi",
                                "splits", "tail", "ms", "x_gemm", "rel_err", "ms_sym"]))
    print(f"wrote {write_results(args.name, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Interleaved A/B timing of settings of the Hopper covariance kernel (csrc/covariance_sm90.cu).

One H200 drifts by 5-10% within a process (the same setting timed twice a minute apart in
covariance_sm90_tail_56907fd.json: 0.557 and 0.603 ms), more than the effects being measured: under these
kernels the board sits at its ~700 W power limit and the SM clock moves between 1350 and 1950 MHz.
So every round times every variant once, in a random order drawn afresh each round (a rotating
order keeps each variant's predecessor, and the one after the float64 path, which draws less power,
ran 6% faster than the same setting elsewhere in the order: covariance_sm90_ab_wide_fa4b645_rotating.json),
and the summary takes the median over rounds of each variant's time and of its ratio to the first
variant measured in the same round -- drift then cancels out of the ratios. torch's fp16->fp32 GEMM and the float64 path are
variants like the others ("gemm", "fp64"), so their ratios are paired the same way.

A variant is NAME:KNOBS, KNOBS being environment settings joined with '+', SLICEKIT_COV_SM90_* ones by
suffix (a knob that starts with SLICEKIT_ is taken whole):
    python benchmarks/covariance_sm90_ab.py --d 4096 --variants default: whole:TAIL=1 c256:CHUNK=256
    python benchmarks/covariance_sm90_ab.py --op triton --d 576 --variants default: s1:SLICEKIT_COV_TRITON_SPLITS=1
--op triton times the Triton kernel's streaming call (kernels/covariance.py) instead of the extension's.
The first variant is the baseline. Every timed call is the streaming form (symmetric=False); the error
column is that of one such call, mirrored as the pipeline does, against float64.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import bench_ms, env_vars, markdown_table, require_cuda, write_results  # noqa: E402
from bench_covariance import activations, fp64_path, rel_err, sm90_problem  # noqa: E402


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, knobs = spec.partition(":")
    env = {}
    for item in filter(None, knobs.split("+")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"covariance_sm90_ab.py: variant {spec!r}: expected KNOB=VALUE, got {item!r}")
        env[key if key.startswith("SLICEKIT_") else f"SLICEKIT_COV_SM90_{key.upper()}"] = value
    return name, env


def gpu_state() -> dict:
    """SM clock (MHz) and board power (mW) now, where torch can read them (pynvml)."""
    state = {}
    for key, fn in (("clock_mhz", "clock_rate"), ("power_mw", "power_draw")):
        try:
            state[key] = getattr(torch.cuda, fn)()
        except Exception:  # no pynvml, or a torch without the call
            pass
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, nargs="+", default=[4096])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--dtype", choices=["fp16", "bf16"], nargs="+", default=["fp16"])
    p.add_argument("--variants", nargs="+", default=["default:", "whole:TAIL=1"])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--rep-ms", type=float, default=50.0, help="timing window per variant and round")
    p.add_argument("--no-fp64", action="store_true", help="leave the float64 path out")
    p.add_argument("--op", choices=["cuda", "triton"], default="cuda", help="which kernel the variants run")
    p.add_argument("--name", default="covariance_sm90_ab", help="results file name (benchmarks/results/NAME.json)")
    args = p.parse_args(argv)
    require_cuda("covariance_sm90_ab.py")
    variants = [parse_variant(v) for v in args.variants]
    if len({name for name, _ in variants}) != len(variants) or {"gemm", "fp64"} & {name for name, _ in variants}:
        raise SystemExit("covariance_sm90_ab.py: variant names must be unique and not 'gemm' or 'fp64'")
    from slicekit.ops import symmetrize_

    if args.op == "triton":
        from slicekit.kernels.covariance import covariance_triton

        def op(x, mask, out, symmetric):
            covariance_triton(x, mask, out, symmetric=symmetric)
    elif problem := sm90_problem():
        print(f"covariance_sm90_ab.py: {problem}", file=sys.stderr)
        return 2
    else:
        op = torch.ops.slicekit.covariance_accumulate
    rows, rounds_log = [], []
    for d in args.d:
        for dname in args.dtype:
            dtype = torch.float16 if dname == "fp16" else torch.bfloat16
            x = activations(args.n, d, dtype, "cuda")
            if args.op == "cuda" and (problem := sm90_problem(x)):
                print(f"covariance_sm90_ab.py: {problem}", file=sys.stderr)
                return 2
            ref = fp64_path(x)
            out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
            fns, envs, errors = {}, dict(variants), {}
            for name, env in variants:
                with env_vars(**env):
                    out.zero_()
                    op(x, None, out, False)
                    errors[name] = rel_err(symmetrize_(out), ref)
                fns[name] = lambda: op(x, None, out, False)  # noqa: B023
            fns["gemm"] = lambda: torch.mm(x.T, x, out_dtype=torch.float32)  # noqa: B023
            if not args.no_fp64:
                fns["fp64"] = lambda: fp64_path(x)  # noqa: B023
            names = list(fns)
            times = {name: [] for name in names}
            rng = random.Random(d * 31 + len(dname))
            for r in range(args.rounds):
                order = rng.sample(names, len(names))
                for name in order:
                    with env_vars(**envs.get(name, {})):
                        times[name].append(bench_ms(fns[name], warmup_ms=10, rep_ms=args.rep_ms)[0])
                rounds_log.append(dict(d=d, dtype=dname, round=r, order=order, **{n: times[n][-1] for n in names},
                                       **gpu_state()))
                print(rounds_log[-1], file=sys.stderr, flush=True)
            base = variants[0][0]
            for name in names:
                t = times[name]
                row = dict(d=d, N=args.n, dtype=dname, op=args.op, variant=name, knobs=envs.get(name, {}),
                           ms=statistics.median(t), ms_min=min(t), ms_max=max(t),
                           vs_base=statistics.median(a / b for a, b in zip(t, times[base])),
                           x_gemm=statistics.median(g / a for g, a in zip(times["gemm"], t)),
                           rel_err=errors.get(name))
                if "fp64" in times:
                    row["x_fp64"] = statistics.median(f / a for f, a in zip(times["fp64"], t))
                rows.append(row)
            del x, ref, out
            torch.cuda.empty_cache()
    print(markdown_table(rows, ["d", "dtype", "variant", "ms", "ms_min", "ms_max", "vs_base", "x_gemm", "x_fp64",
                                "rel_err"]))
    print(f"wrote {write_results(args.name, rows, dict(rounds=rounds_log, rounds_per_case=args.rounds))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

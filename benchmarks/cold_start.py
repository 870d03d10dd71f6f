"""What a fresh process pays before its first slicing: Triton compilation and autotuning.

Each case runs in its own Python process and slices a one-layer model of a named shape (fp16, in
CPU RAM, random weights) on the GPU twice; the first slicing carries the one-off costs, the second
is the steady state. Cases, in this order, sharing one new Triton cache directory:

    fresh           empty cache: every kernel compiled, every config timed (winners written to disk)
    compiled_only   kernels from the cache, autotuning re-timed (SLICEKIT_AUTOTUNE_CACHE=0)
    cached          kernels and autotuner winners from the cache (the default from the second run on)

    python benchmarks/cold_start.py                    # LLaMA-2-7B layer, 16 x 2048 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MODEL_SHAPES, markdown_table, require_cuda, write_results  # noqa: E402

CASES = [("fresh", "1"), ("compiled_only", "0"), ("cached", "1")]


def child(args) -> None:
    import slicekit
    from slicing_pipeline import build_model

    model = build_model(1, MODEL_SHAPES[args.model])
    calib = torch.randint(0, MODEL_SHAPES[args.model]["vocab"], (args.calib_seqs, args.seqlen),
                          generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        t = time.perf_counter()
        slicekit.slice_model(model, calib, sparsity=0.25, round_to=128, device="cuda", batch_size=8, progress=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    print("RESULT " + json.dumps(dict(first_s=round(times[0], 2), second_s=round(times[1], 2))), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-7b", choices=sorted(MODEL_SHAPES))
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    require_cuda("cold_start.py")
    if args.child:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slicekit_triton_cache_") as cache:
        for case, autotune_cache in CASES:
            env = dict(os.environ, TRITON_CACHE_DIR=cache, SLICEKIT_AUTOTUNE_CACHE=autotune_cache)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model,
                   "--calib-seqs", str(args.calib_seqs), "--seqlen", str(args.seqlen)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"cold_start.py: case {case} failed (exit {proc.returncode})")
            r = json.loads(line[len("RESULT "):])
            rows.append(dict(case=case, autotune_cache=autotune_cache == "1", **r,
                             one_off_s=round(r["first_s"] - r["second_s"], 2)))
            print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
    print(markdown_table(rows, list(rows[0])))
    path = write_results("cold_start", rows, extra=dict(model=args.model, layers=1, calib_seqs=args.calib_seqs,
                                                        seqlen=args.seqlen))
    print("wrote", path)


if __name__ == "__main__":
    main()

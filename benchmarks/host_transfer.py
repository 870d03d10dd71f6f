"""Copy one decoder layer's weights between CPU RAM and the GPU: pageable vs pinned-staged.

The slicing pipeline moves every layer of a model held in CPU RAM to the GPU and its sliced
replacement back (slicekit/transfer.py). This times both directions for one layer of a named model
shape (fp16), each way with and without pinned staging, median of repeats, and writes GB/s.

    python benchmarks/host_transfer.py                 # LLaMA-2-7B layer
    python benchmarks/host_transfer.py --model llama-2-70b
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MODEL_SHAPES, markdown_table, require_cuda, write_results  # noqa: E402


def layer_tensors(shape: dict) -> list[torch.Tensor]:
    """One LLaMA decoder layer's weights (q, k, v, o, gate, up, down, two norms), fp16, random."""
    d, m = shape["hidden"], shape["intermediate"]
    kv = d * shape["kv_heads"] // shape["heads"]
    shapes = [(d, d), (kv, d), (kv, d), (d, d), (m, d), (m, d), (d, m), (d,), (d,)]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(torch.float16) for s in shapes]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    from slicekit.transfer import to_device, to_host

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-7b", choices=sorted(MODEL_SHAPES))
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    require_cuda("host_transfer.py")
    cpu = layer_tensors(MODEL_SHAPES[args.model])
    gpu = [t.cuda() for t in cpu]
    nbytes = sum(t.numel() * t.element_size() for t in cpu)
    rows = []
    for pinned in (False, True):
        to_device(cpu, torch.device("cuda"), pinned=pinned)  # warm-up: pinned blocks allocated once, then cached
        to_host(gpu, pinned=pinned)
        for direction, fn in (("host_to_gpu", lambda: to_device(cpu, torch.device("cuda"), pinned=pinned)),
                              ("gpu_to_host", lambda: to_host(gpu, pinned=pinned))):
            s = timed(fn, args.repeats)
            rows.append(dict(direction=direction, staging="pinned" if pinned else "pageable", mb=round(nbytes / 1e6, 1),
                             ms=round(s * 1e3, 2), gb_per_s=round(nbytes / s / 1e9, 2)))
    for r in rows:
        base = next(b for b in rows if b["direction"] == r["direction"] and b["staging"] == "pageable")
        r["speedup_vs_pageable"] = round(base["ms"] / r["ms"], 2)
    print(markdown_table(rows, list(rows[0])))
    path = write_results("host_transfer", rows, extra=dict(model=args.model, cpu_threads=torch.get_num_threads(),
                                                          cpu_count=os.cpu_count()))
    print("wrote", path)


if __name__ == "__main__":
    main()

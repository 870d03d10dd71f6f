"""The eigendecomposition step of slicing: float64 vs float32, cuSOLVER vs MAGMA, GPU vs CPU.

Slicing a LLaMA-2-7B-shaped model calls eigh on 65 float64 4096 x 4096 second moments; on the
H200 that is ~7 s of a ~38 s run. This measures what a cheaper eigh would save and what it would
cost in basis quality, on a second moment shaped like real residual streams (a power-law
spectrum over a random basis plus a few outlier channels with 100x the variance):

  ms              median wall time of torch.linalg.eigh (synchronised)
  orth_err        max |Q^T Q - I| of the returned basis (float64 arithmetic)
  kept_energy     share of the float64 second moment kept by the top k = 0.75 d eigenvectors;
                  the float64 eigenvectors are optimal, so (kept_energy(fp64) - kept_energy) is
                  the slicing loss a cheaper solver adds
  subspace_gap    || Q_k Q_k^T - P_k ||_2 against the float64 top-k projector P_k

    python benchmarks/eigh_backends.py              # d = 4096 (and 8192 with --d 4096 8192)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import markdown_table, require_cuda, write_results  # noqa: E402


def second_moment(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device="cuda", dtype=torch.float64))
    spectrum = torch.arange(1, d + 1, device="cuda", dtype=torch.float64) ** -1.2
    c = (basis * spectrum) @ basis.T
    outliers = torch.randperm(d, generator=g, device="cuda")[:6]
    c[outliers, outliers] += 100.0 * spectrum[0]
    return 0.5 * (c + c.T) * 1e4  # sums over many tokens: large absolute values


def timed(fn, repeats: int) -> tuple[float, object]:
    if repeats > 1:  # warm-up (workspace allocation, library load)
        fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2], out


def quality(c: torch.Tensor, q: torch.Tensor, k: int, p_ref: torch.Tensor) -> dict:
    q = q.to(c.device, torch.float64)
    eye = torch.eye(q.shape[0], dtype=torch.float64, device=c.device)
    qk = q[:, :k]
    kept = float(torch.einsum("ij,ik,kj->", qk, c, qk) / torch.trace(c))
    gap = float(torch.linalg.matrix_norm(qk @ qk.T - p_ref, ord=2))
    return dict(orth_err=float((q.T @ q - eye).abs().max()), kept_energy=kept, subspace_gap=gap)


def sorted_eigh(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return v[:, torch.argsort(w, descending=True)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, nargs="+", default=[4096])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    require_cuda("eigh_backends.py")
    rows = []
    for d in args.d:
        k = 3 * d // 4
        c = second_moment(d)
        q64 = sorted_eigh(c)
        p_ref = q64[:, :k] @ q64[:, :k].T
        scale = c.diagonal().mean()
        cases = [("cusolver", "float64", lambda: sorted_eigh(c)),
                 ("cusolver", "float32", lambda: sorted_eigh((c / scale).float())),
                 ("magma", "float64", lambda: sorted_eigh(c)),
                 ("magma", "float32", lambda: sorted_eigh((c / scale).float())),
                 ("cpu", "float64", lambda: sorted_eigh(c.cpu()))]
        for lib, dtype, fn in cases:
            try:
                if lib in ("cusolver", "magma"):
                    torch.backends.cuda.preferred_linalg_library(lib)
                ms, q = timed(fn, args.repeats if lib != "cpu" else 1)
                row = dict(d=d, library=lib, dtype=dtype, ms=round(ms, 2), **quality(c, q, k, p_ref))
            except Exception as exc:  # MAGMA not built into this torch, out of memory
                row = dict(d=d, library=lib, dtype=dtype, ms=None, error=f"{type(exc).__name__}: {str(exc)[:160]}")
            finally:
                torch.backends.cuda.preferred_linalg_library("default")
            rows.append(row)
            print(row, flush=True)
    print(markdown_table(rows, ["d", "library", "dtype", "ms", "orth_err", "kept_energy", "subspace_gap"]))
    print("wrote", write_results("eigh_backends", rows))


if __name__ == "__main__":
    main()

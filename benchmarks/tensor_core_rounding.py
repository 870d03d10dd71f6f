"""How the Hopper kernel's tensor cores round their fp32 sums: toward zero, or toward minus infinity?

The covariance kernel (csrc/covariance_sm90.cu) promotes its MMA accumulator every `chunk` rows
because the tensor cores' fp32 additions do not round to nearest, and which way they err decides
which bias-cancelling trick can lengthen the chunks. Here one launch sums 16384 rows in a single
chunk (SLICEKIT_COV_SM90_CHUNK=16384, whole tiles) for columns u, -u and v (u, v > 0), so that the
entry (u, -u) is the exact negation of (u, u) at every step:
  * truncation toward zero (sign-magnitude) gives |C[u, -u]| == C[u, u] to the last bit;
  * rounding toward minus infinity gives |C[u, -u]| > C[u, u] (negative sums rounded away from 0).
Both are compared with the float64 sum. Writes benchmarks/results/tensor_core_rounding.json.

    python benchmarks/tensor_core_rounding.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import env_vars, require_cuda, write_results  # noqa: E402
from bench_covariance import sm90_problem  # noqa: E402


def main() -> int:
    require_cuda("tensor_core_rounding.py")
    if problem := sm90_problem():
        print(f"tensor_core_rounding.py: {problem}", file=sys.stderr)
        return 2
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(0)
        n = 16384
        u = torch.rand(n, 1, device="cuda", generator=g) + 0.5
        v = torch.rand(n, 1, device="cuda", generator=g) + 0.5
        x = torch.cat([u, -u, v, torch.zeros(n, 5, device="cuda")], 1).to(dtype)  # 8 columns: 16-byte rows
        if problem := sm90_problem(x):
            print(f"tensor_core_rounding.py: {problem}", file=sys.stderr)
            return 2
        ref = x.double().T @ x.double()
        for chunk in ("16384", "128"):
            out = torch.zeros(8, 8, dtype=torch.float64, device="cuda")
            with env_vars(SLICEKIT_COV_SM90_CHUNK=chunk, SLICEKIT_COV_SM90_SPLITS="1", SLICEKIT_COV_SM90_TAIL="1"):
                torch.ops.slicekit.covariance_accumulate(x, None, out, False)
            pos, neg, exact = out[0, 0].item(), -out[0, 1].item(), ref[0, 0].item()
            rows.append(dict(dtype=str(dtype), chunk_rows=int(chunk), c_uu=pos, minus_c_u_minus_u=neg, exact=exact,
                             rel_uu=pos / exact - 1, rel_u_minus_u=neg / exact - 1,
                             rel_uv=out[0, 2].item() / ref[0, 2].item() - 1,
                             verdict="toward zero" if pos == neg else
                             ("toward -inf" if neg > pos else "other (negative sums rounded up)")))
            print(rows[-1])
    print(f"wrote {write_results('tensor_core_rounding', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Diagnose how a failing TORCH_CHECK inside slicekit._C surfaces (GPU machine; used by gpu_session).

Each case runs in its own subprocess, so a crash is reported (exit status, stderr, a gdb backtrace
when gdb exists) instead of killing this script. Prints one JSON line per case.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

PRELUDE = "import faulthandler, torch; faulthandler.enable(); import slicekit._C\n"
CASES = {
    # CPU kernel: throws before any CUDA call
    "cpu_kernel": "torch.ops.slicekit.covariance_accumulate(torch.randn(8, 4), None, torch.zeros(4, 4, dtype=torch.float64))",
    # Meta kernel: shape checks only
    "meta_kernel": "torch.ops.slicekit.covariance_accumulate(torch.empty(8, 4, device='meta').int(), None, "
                   "torch.empty(4, 4, dtype=torch.float64, device='meta'))",
    # CUDA kernel, integer input
    "cuda_kernel": "torch.ops.slicekit.covariance_accumulate(torch.randn(8, 4, device='cuda').int(), None, "
                   "torch.zeros(4, 4, dtype=torch.float64, device='cuda'))",
    "cuda_rotate": "torch.ops.slicekit.rotate_slice(torch.randn(8, 4, device='cuda'), torch.randn(5, 5, device='cuda'), 2, 1, torch.float16)",
    # Control: a TORCH_CHECK inside torch itself
    "torch_own": "torch.mm(torch.randn(2, 3, device='cuda'), torch.randn(4, 5, device='cuda'))",
}
BODY = """
try:
    {call}
    print("NO ERROR RAISED")
except RuntimeError as e:
    print("RAISED RuntimeError:", str(e).splitlines()[0][:200])
"""


def main() -> int:
    gdb = shutil.which("gdb")
    for name, call in CASES.items():
        code = PRELUDE + BODY.format(call=call)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        row = dict(case=name, rc=p.returncode, stdout=p.stdout.strip()[-400:], stderr=p.stderr.strip()[-1500:])
        if p.returncode != 0 and gdb:
            g = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", code],
                               capture_output=True, text=True, timeout=300)
            row["gdb_bt"] = "\n".join(l for l in g.stdout.splitlines() if l.startswith("#"))[-4000:]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

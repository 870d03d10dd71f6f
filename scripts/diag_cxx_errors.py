"""Diagnose how a failing TORCH_CHECK inside slicekit._C surfaces (GPU machine; used by gpu_session).

Each case runs in its own subprocess, so a crash is reported (exit status, stderr, a gdb backtrace
when gdb exists) instead of killing this script. Prints one JSON line per case.
"""
from __future__ import annotations

import json
import os
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
# The same failure from a minimal extension built here with torch's own load_inline (no setup.py
# flags, no CUDA sources): tells an environment problem from one of slicekit's build.
MINIMAL_SRC = r"""
#include <torch/library.h>
#include <ATen/core/Tensor.h>
at::Tensor fail_op(const at::Tensor& x) { TORCH_CHECK(false, "minimal op: expected failure"); return x; }
TORCH_LIBRARY_FRAGMENT(skdiag, m) { m.def("fail(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(skdiag, CPU, m) { m.impl("fail", &fail_op); }
void py_fail() { TORCH_CHECK(false, "minimal pybind: expected failure"); }
at::Tensor fail_multi(const at::Tensor& x) { TORCH_CHECK(false, "minimal multi: x = ", 3, " and ", std::string("y")); return x; }
at::Tensor fail_sizes(const at::Tensor& x) { TORCH_CHECK(false, "minimal sizes: ", x.sizes(), " on ", x.device()); return x; }
at::Tensor fail_std(const at::Tensor& x) { throw std::runtime_error("minimal std::runtime_error"); return x; }
TORCH_LIBRARY_FRAGMENT(skdiag2, m) {
  m.def("multi(Tensor x) -> Tensor"); m.def("sizes(Tensor x) -> Tensor"); m.def("stdexc(Tensor x) -> Tensor");
}
TORCH_LIBRARY_IMPL(skdiag2, CPU, m) {
  m.impl("multi", &fail_multi); m.impl("sizes", &fail_sizes); m.impl("stdexc", &fail_std);
}
"""
MINIMAL_LOAD = ("import os, torch; from torch.utils.cpp_extension import load_inline\n"
                "os.makedirs('/tmp/skdiag', exist_ok=True)\n"
                "mod = load_inline('skdiag_min', cpp_sources=[{src!r}], functions=['py_fail'], "
                "build_directory='/tmp/skdiag', verbose=False)\n")
# Bisection: csrc/slicekit.cpp ALONE (no .cu files, torch's default flags; the CUDA launch symbols are
# left unresolved and bound lazily, never called on these paths).
ALONE_LOAD = ("import os, sys, torch; from torch.utils.cpp_extension import load\n"
              "sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL); os.makedirs('/tmp/skalone', exist_ok=True)\n"
              "mod = load('_C', sources=[{src!r}], extra_include_paths=[{inc!r}], with_cuda=True, "
              "extra_ldflags=['-Wl,--unresolved-symbols=ignore-all'], build_directory='/tmp/skalone', verbose=False)\n")
MINIMAL = {
    "minimal_torch_op": "torch.ops.skdiag.fail(torch.randn(2))",
    "minimal_pybind": "mod.py_fail()",
    "minimal_multi_arg": "torch.ops.skdiag2.multi(torch.randn(2))",
    "minimal_sizes_device": "torch.ops.skdiag2.sizes(torch.randn(2))",
    "minimal_std_exception": "torch.ops.skdiag2.stdexc(torch.randn(2))",
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
    load = MINIMAL_LOAD.format(src=MINIMAL_SRC)
    build = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=600)
    print(json.dumps(dict(case="minimal_build", rc=build.returncode, stderr=build.stderr.strip()[-1500:])), flush=True)
    cases = {n: PRELUDE + BODY.format(call=c) for n, c in CASES.items()}
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    alone = ALONE_LOAD.format(src=os.path.join(csrc, "slicekit.cpp"), inc=csrc)
    build = subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, timeout=600)
    print(json.dumps(dict(case="alone_build", rc=build.returncode, stderr=build.stderr.strip()[-1500:])), flush=True)
    cases["alone_cpu_kernel"] = ("import faulthandler; faulthandler.enable()\n" + alone
                                 + BODY.format(call=CASES["cpu_kernel"]))
    cases.update({n: "import faulthandler; faulthandler.enable()\n" + load + BODY.format(call=c) for n, c in MINIMAL.items()})
    for name, code in cases.items():
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

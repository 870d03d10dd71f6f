"""One dispatcher for every hot op: CUDA extension -> Triton -> PyTorch reference.

Resolution order for ``backend=None``: the explicit argument, then the ``SLICEKIT_BACKEND``
environment variable, then automatic choice by device (an op's input-dependent preference first,
where it has one, then its AUTO_ORDER). An automatic fallback is silent; an
explicitly requested backend that cannot run raises with the reason and the fix, because a user
who asked for a fast path and silently got the slow one would publish the wrong numbers.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Callable

import torch

log = logging.getLogger("slicekit")

BACKENDS = ("cuda", "triton", "torch")
_REINSTALL = (
    "reinstall with a CUDA toolkit and a CUDA build of torch present: "
    "`SLICEKIT_FORCE_CUDA=1 pip install --no-build-isolation -e .`"
)


@functools.lru_cache(maxsize=None)
def _cuda_extension():
    """The compiled extension module, or None (a missing build is a warning, not an error)."""
    try:
        return importlib.import_module("slicekit._C")
    except ImportError as exc:  # pure-Python install, or a build for another torch
        log.debug("slicekit._C not importable: %s", exc)
        return None


@functools.lru_cache(maxsize=None)
def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # triton missing or broken for this torch
        log.debug("triton not importable: %s", exc)
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _backend_problem(op: str, backend: str, device: torch.device | None) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device`` (None when it can)."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not _triton_ok():
            return "triton is not importable (pip install triton)"
        if device is not None and device.type != "cuda" and not triton_interpret():
            return "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 to run them on the CPU)"
        return None
    if backend == "cuda":
        ext = _cuda_extension()
        if ext is None:
            return f"the CUDA extension slicekit._C is not built; {_REINSTALL}"
        if not hasattr(torch.ops.slicekit, op):
            return f"slicekit._C has no op {op!r}; {_REINSTALL}"
        if device is not None and device.type != "cuda":
            return "the CUDA extension needs CUDA tensors"
        return None
    return f"unknown backend {backend!r}; choose one of {BACKENDS}"


def available_backends(op: str, device: torch.device | str | None = None) -> list[str]:
    """Backends that can run ``op`` on ``device`` here, fastest first."""
    dev = torch.device(device) if device is not None else None
    return [b for b in BACKENDS if _backend_problem(op, b, dev) is None]


# Automatic order per op on CUDA, fastest first as measured on the H200 (benchmarks/results,
# README). Covariance: Triton first in general -- the extension falls back to chunked cuBLAS off
# Hopper (1.5 ms at d = 4096, N = 16384) and multiplies masked rows as zeros where Triton gathers
# the kept rows -- but its Hopper wgmma kernel is preferred for unmasked 16-bit input on an sm_90
# GPU, where it is faster than Triton everywhere measured (slicekit.ops.covariance._prefer_wgmma).
AUTO_ORDER = {
    "covariance_accumulate": ("triton", "cuda"),
    "rotate_slice": ("cuda", "triton"),
    "shortcut_linear": ("cuda", "triton"),
}


def resolve_backend(op: str, backend: str | None, device: torch.device,
                    prefer: Callable[[], str | None] | None = None) -> str:
    """Pick the backend for one call (see the module docstring for the order).

    ``prefer``: consulted only for an automatic choice on CUDA; the backend it names (if it can run)
    goes before the op's AUTO_ORDER.
    """
    requested = backend or os.environ.get("SLICEKIT_BACKEND") or None
    if requested is not None:
        requested = requested.lower()
        problem = _backend_problem(op, requested, device)
        if problem is not None:
            raise RuntimeError(f"slicekit: backend {requested!r} cannot run {op} on {device}: {problem}")
        return requested
    if device.type == "cuda":
        first = prefer() if prefer is not None else None
        order = AUTO_ORDER.get(op, ("cuda", "triton"))
        for candidate in ((first,) if first else ()) + order:
            if _backend_problem(op, candidate, device) is None:
                return candidate
    return "torch"


class Op:
    """A public op with one implementation per backend, picked per call.

    ``prefer(*args, **kwargs)``: optional; the backend to try first for these inputs when the choice
    is automatic (None: the AUTO_ORDER alone).
    """

    def __init__(self, name: str, impls: dict[str, Callable], prefer: Callable[..., str | None] | None = None):
        self.name = name
        self.impls = impls
        self.prefer = prefer

    def __call__(self, *args, backend: str | None = None, device: torch.device, **kwargs):
        hint = (lambda: self.prefer(*args, **kwargs)) if self.prefer is not None else None
        chosen = resolve_backend(self.name, backend, device, hint)
        impl = self.impls.get(chosen)
        if impl is None:
            raise RuntimeError(f"slicekit: op {self.name} has no {chosen!r} implementation")
        return impl(*args, **kwargs)

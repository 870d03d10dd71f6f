"""Autotuner options shared by the Triton kernels.

Autotuning times every candidate config once per process and key: on the H200 that is most of the
~15 s a fresh process spends before its first LLaMA-2-7B-sized slicing (README, cold start).
Triton >= 3.3 can keep the winners on disk, in its cache directory (TRITON_CACHE_DIR), keyed by
the kernel source, the configs, the GPU target and the key values, so a later process skips the
timing. Configs must then carry no ``pre_hook`` (Triton cannot serialise one and would re-time).

``SLICEKIT_AUTOTUNE_CACHE=0`` (read at import) times every process afresh.
"""
from __future__ import annotations

import inspect
import os

import triton


def autotune_cache_kwargs() -> dict:
    if os.environ.get("SLICEKIT_AUTOTUNE_CACHE", "1") == "0":
        return {}
    if "cache_results" not in inspect.signature(triton.autotune).parameters:  # older Triton
        return {}
    return {"cache_results": True}

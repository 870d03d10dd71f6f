"""Tensors between CPU RAM and the GPU through pinned (page-locked) staging memory.

A pageable CPU tensor's ``.to("cuda")`` (and a GPU tensor's ``.to("cpu")``) goes through the CUDA
driver's own small staging buffer, chunk by chunk, on one CPU thread: 9-10 s of every LLaMA-2-7B
slicing run on the H200 host went there (README, slicing pipeline). Staged here instead: torch's
multi-threaded CPU copy into pinned memory, then one DMA per tensor from there (and the reverse for
results). The pinned blocks come from torch's caching host allocator, so one layer's worth is
allocated once and reused for every layer; the allocator also keeps a block alive until the
asynchronous copy that reads it has finished.

``SLICEKIT_PINNED=0`` restores plain ``.to()`` copies (``benchmarks/host_transfer.py`` compares the two).
If pinned memory cannot be had (a locked-memory limit, no CUDA driver), we fall back to plain copies
once, with a warning, rather than fail a slicing run over a copy.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

# Below this size a staging round trip costs more than the driver's pageable copy saves.
MIN_STAGED_BYTES = 1 << 20

_pinned_failed = False


def pinned_enabled() -> bool:
    return not _pinned_failed and os.environ.get("SLICEKIT_PINNED", "1") != "0" and torch.cuda.is_available()


def _staged(t: torch.Tensor, pinned: bool | None) -> bool:
    use = pinned_enabled() if pinned is None else (pinned and torch.cuda.is_available())
    return use and t.numel() * t.element_size() >= MIN_STAGED_BYTES and not t.is_pinned()


def _give_up_pinning(err: RuntimeError) -> None:
    global _pinned_failed
    _pinned_failed = True
    warnings.warn(f"slicekit: pinned host memory unavailable ({err}); copying through pageable memory", stacklevel=3)


def to_device(tensors: list[torch.Tensor], device: torch.device, pinned: bool | None = None) -> list[torch.Tensor]:
    """Copies of CPU ``tensors`` on the CUDA ``device`` (asynchronous on the current stream).

    ``pinned``: None follows ``SLICEKIT_PINNED``; True/False force staging on or off.
    """
    device = torch.device(device)
    out = []
    for t in tensors:
        t = t.detach()
        if device.type != "cuda" or t.device.type != "cpu" or not _staged(t, pinned):
            out.append(t.to(device, non_blocking=t.is_pinned()))
            continue
        try:
            staged = t.pin_memory()
        except RuntimeError as err:
            _give_up_pinning(err)
            out.append(t.to(device))
            continue
        out.append(staged.to(device, non_blocking=True))
    return out


def to_host(tensors: list[torch.Tensor], pinned: bool | None = None) -> list[torch.Tensor]:
    """Pageable CPU copies of ``tensors`` (CUDA tensors go through pinned blocks; CPU ones pass as they are)."""
    staged: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    stream_of = {}
    for t in tensors:
        t = t.detach()
        if t.device.type != "cuda" or not _staged(t, pinned):
            staged.append((t.to("cpu"), None))
            continue
        try:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        except RuntimeError as err:
            _give_up_pinning(err)
            staged.append((t.to("cpu"), None))
            continue
        buf.copy_(t, non_blocking=True)
        stream_of[t.device] = torch.cuda.current_stream(t.device)
        staged.append((buf, t))
    for stream in stream_of.values():  # every DMA of this call in flight together, one wait
        stream.synchronize()
    # Pageable results: a model held in page-locked memory would pin gigabytes of the user's RAM.
    return [buf if src is None else torch.empty(buf.shape, dtype=buf.dtype).copy_(buf) for buf, src in staged]


def move(tensors: list[torch.Tensor], device: torch.device | str, pinned: bool | None = None) -> list[torch.Tensor]:
    """Copies of ``tensors`` on ``device``: staged to CPU RAM (``to_host``), staged from it (``to_device``),
    plain ``.to()`` otherwise (GPU to GPU, or a mix of sources)."""
    device = torch.device(device)
    if device.type == "cpu":
        return to_host(tensors, pinned)
    if all(t.device.type == "cpu" for t in tensors):
        return to_device(tensors, device, pinned)
    return [t.detach().to(device) for t in tensors]


def move_module(module: nn.Module, device: torch.device | str, pinned: bool | None = None) -> nn.Module:
    """``module.to(device)`` with CPU<->GPU copies staged; meta tensors stay meta.

    Parameters keep their identity (``.data`` is swapped, as ``Module.to`` does), so ties hold.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    seen: dict[int, torch.Tensor] = {}
    slots = []
    for m in module.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(m, kind).items():
                if t is not None and not t.is_meta and t.device != device:
                    slots.append((m, kind, name, t))
                    seen.setdefault(id(t), t)
    copies = dict(zip(seen, move(list(seen.values()), device, pinned)))
    for m, kind, name, t in slots:
        if kind == "_parameters":
            t.data = copies[id(t)]
        else:
            m._buffers[name] = copies[id(t)]
    return module

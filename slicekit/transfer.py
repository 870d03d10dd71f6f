"""Moving one layer at a time between CPU RAM and the compute device, overlapped with the compute.

Slicing a model that lives in CPU RAM copies every original layer to the GPU and every sliced
layer back. On the H200 host these pageable copies run at ~2.5 GB/s: 9-10 s of a LLaMA-2-7B
slicing run when done in line (benchmarks/results/slicing_pipeline.json). A single worker thread
does them on a side CUDA stream instead -- the next original layer while the current one is being
sliced, the finished sliced layer while the next one starts -- so only the part that the compute
cannot hide is waited for. torch releases the GIL inside tensor copies, so the worker runs
alongside the main thread's kernel launches.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

# id(original tensor) -> (the tensor, its copy on the compute device)
Resident = dict[int, tuple[torch.Tensor, torch.Tensor]]


class LayerMover:
    """Prefetch original layers to ``device`` and offload sliced layers, one step ahead.

    Usage per layer i: ``resident = mover.take()`` (the copies of layer i, requested earlier with
    ``prefetch``), ``mover.prefetch(layer i + 1)``, slice, ``mover.offload(new_layer_i, home)``;
    ``mover.close()`` at the end waits for the last offload. Off CUDA everything runs in line.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slicekit-transfer") if self.cuda else None
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._pending: Future | None = None
        self._offloads: list[Future] = []

    # -- original layers, CPU -> device ---------------------------------------------------------
    def _copy_in(self, layer: nn.Module):
        params = [p for p in layer.parameters() if p.device != self.device]
        if not params:
            return {}, None
        if not self.cuda:
            return {id(p): (p, p.detach().to(self.device)) for p in params}, None
        with torch.cuda.stream(self._stream):
            resident = {id(p): (p, p.detach().to(self.device, non_blocking=True)) for p in params}
            done = torch.cuda.Event()
            done.record(self._stream)
        return resident, done

    def prefetch(self, layer: nn.Module) -> None:
        if self._pending is not None:
            raise RuntimeError("LayerMover.prefetch: the previous prefetch was never taken")
        if self._pool is None:
            self._pending = _done(self._copy_in(layer))
        else:
            self._pending = self._pool.submit(self._copy_in, layer)

    def take(self) -> Resident:
        """The copies requested by the last ``prefetch``, ready for the current stream."""
        if self._pending is None:
            return {}
        resident, done = self._pending.result()
        self._pending = None
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for _, copy in resident.values():
                # Allocated on the side stream, used and freed on this one: keep the allocator honest.
                copy.record_stream(current)
        return resident

    # -- sliced layers, device -> home --------------------------------------------------------------
    def offload(self, module: nn.Module, home: torch.device) -> None:
        """Move ``module`` to ``home`` once the work queued so far on the current stream is done."""
        if self._pool is None or home == self.device:
            module.to(home)
            return
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))

        def move():
            self._stream.wait_event(ready)
            with torch.cuda.stream(self._stream):
                module.to(home)
            self._stream.synchronize()

        self._offloads.append(self._pool.submit(move))

    def close(self) -> None:
        """Wait for every offload (re-raising the first failure) and stop the worker."""
        try:
            for f in self._offloads:
                f.result()
        finally:
            self._offloads = []
            self._pending = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f

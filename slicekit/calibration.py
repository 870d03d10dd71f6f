"""Calibration batches and the inputs of the first decoder layer.

The layer-wise algorithm replays each decoder layer by hand, so it needs exactly what the model
passes to its layers (hidden states, attention mask, rotary cos/sin, position ids). Rather than
re-deriving those per architecture and transformers release, we run the model once per batch and
stop it at the first layer with a pre-hook.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .transfer import to_device


class CalibrationError(ValueError):
    """The calibration data cannot support the requested slicing."""


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor | None  # [B, T] 0/1, None when no padding

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum()) if self.attention_mask is not None else self.input_ids.numel()


def make_batches(calibration, batch_size: int, vocab_size: int) -> list[Batch]:
    """Normalise the accepted calibration formats into batches of at most ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    rows_ids, rows_mask = [], []
    for item in items:
        if isinstance(item, torch.Tensor):
            ids, mask = item, None
        elif isinstance(item, dict) or hasattr(item, "keys"):
            if "input_ids" not in item:
                raise CalibrationError("calibration dicts need an 'input_ids' entry")
            ids, mask = item["input_ids"], item.get("attention_mask")
        else:
            raise CalibrationError(
                f"calibration must be a LongTensor [n, T], a dict with input_ids (and attention_mask), or a list of "
                f"those; got {type(item).__name__}"
            )
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise CalibrationError(f"calibration input_ids must be an integer [n, T] tensor, got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise CalibrationError(f"calibration token ids must lie in [0, {vocab_size}); got range [{int(ids.min())}, {int(ids.max())}]")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.shape != ids.shape:
                raise CalibrationError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
        for r in range(ids.shape[0]):
            rows_ids.append(ids[r].long())
            rows_mask.append(None if mask is None else mask[r].long())
    if not rows_ids:
        raise CalibrationError("calibration data is empty")
    batches = []
    for s in range(0, len(rows_ids), batch_size):
        chunk = rows_ids[s : s + batch_size]
        lengths = {t.numel() for t in chunk}
        if len(lengths) != 1:
            raise CalibrationError("rows of one calibration batch must have equal length (pad them and pass an attention_mask)")
        m = rows_mask[s : s + batch_size]
        mask = None
        if any(x is not None for x in m):
            mask = torch.stack([x if x is not None else torch.ones_like(chunk[0]) for x in m])
            if bool((mask == 1).all()):
                mask = None  # no padding: the kernels skip the mask pass
        batches.append(Batch(torch.stack(chunk), mask))
    return batches


class _StopForward(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_first_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: list[Batch], device: torch.device):
    """(hidden_states, layer kwargs) that ``model`` feeds its first decoder layer, per batch, on ``device``."""
    captured = {}

    def hook(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    model_device = next(model.parameters()).device
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    inputs, kwargs = [], []
    try:
        for b in batches:
            captured.clear()
            try:
                model(
                    input_ids=b.input_ids.to(model_device),
                    attention_mask=None if b.attention_mask is None else b.attention_mask.to(model_device),
                    use_cache=False,
                )
            except _StopForward:
                pass
            if "x" not in captured:
                raise RuntimeError("the model never called its first decoder layer; is it a decoder-only *ForCausalLM?")
            inputs.append(to_device([captured["x"]], device)[0])
            kw = _to(captured["kw"], device)
            kw["use_cache"] = False
            kwargs.append(kw)
    finally:
        handle.remove()
    return inputs, kwargs

"""Save and load sliced models: safetensors weights + a config carrying every sliced width.

Loading needs neither calibration data nor the original checkpoint: the sliced structure is
rebuilt on the meta device from ``config.slicekit`` and the tensors are assigned into it, so the
reloaded model gives bit-identical logits. Saving is atomic: everything is written to a temporary
sibling folder that is renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from torch import nn

MARKER = "slicekit.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def is_sliced(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "slicekit", None))


def is_sliced_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def save_sliced(model: nn.Module, path: str, *, tokenizer=None, report=None, overwrite: bool = True) -> str:
    """Write a sliced model to folder ``path`` atomically; return the path.

    Args:
        model: a model returned by ``slice_model`` (or ``load_sliced``).
        path: destination folder; replaced as a whole when it exists and ``overwrite``.
        tokenizer: optional tokenizer saved alongside (so the folder is self-contained).
        report: optional SliceReport (or dict) stored as report.json.
    """
    from safetensors.torch import save_file

    if not is_sliced(model):
        raise ValueError("save_sliced expects a model produced by slicekit.slice_model (config.slicekit is missing)")
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        tensors = {}
        for name, p in model.named_parameters():
            tensors[name] = p.detach().contiguous().cpu()
        for name, b in model.named_buffers():
            tensors[name] = b.detach().contiguous().cpu()
        save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt", "slicekit": str(FORMAT_VERSION)})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            try:
                model.generation_config.save_pretrained(tmp)
            except Exception:  # an invalid generation config must not block saving the weights
                pass
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format_version": FORMAT_VERSION, "dtype": dtype, **model.config.slicekit}, f, indent=1)
        if report is not None:
            rep = report.to_dict() if hasattr(report, "to_dict") else dict(report)
            with open(os.path.join(tmp, "report.json"), "w") as f:
                json.dump(rep, f, indent=1)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_sliced(path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by ``save_sliced``.

    Args:
        path: the folder.
        device: where the tensors go.
        dtype: optional cast after loading (default: the saved dtype).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from .adapters import get_adapter
    from .structure import meta_tensor_names, set_tensor, sliced_skeleton, tie_head

    if not is_sliced_dir(path):
        raise FileNotFoundError(f"{path} is not a slicekit folder (no {MARKER}); use slicekit.save_sliced to write one")
    with open(os.path.join(path, MARKER)) as f:
        marker = json.load(f)
    if marker.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer slicekit (format {marker['format_version']})")
    cfg = AutoConfig.from_pretrained(path)
    sk = dict(cfg.slicekit)
    saved_dtype = getattr(torch, marker.get("dtype", "float32"))
    plain = _strip_slicekit(cfg)
    with torch.device("meta"):
        template = AutoModelForCausalLM.from_config(plain)
    template.to(saved_dtype)
    adapter = get_adapter(template)
    meta = {k: v for k, v in sk.items() if k not in ("dims", "hidden_size", "layout", "adapter")}
    model = sliced_skeleton(template, adapter, sk["dims"], meta)
    tensors = load_file(os.path.join(path, WEIGHTS), device=str(device))
    expected = set(dict(model.named_parameters()).keys()) | set(dict(model.named_buffers()).keys())
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the sliced structure (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); the folder is corrupt or from an incompatible slicekit"
        )
    for name, t in tensors.items():
        set_tensor(model, name, t)
    # A tied head is stored once, under the embedding's name: point the head at the loaded tensor.
    tie_head(model, adapter)
    left = meta_tensor_names(model)
    if left:
        raise ValueError(f"{path}: tensors missing from the checkpoint: {left[:5]}")
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _strip_slicekit(cfg):
    import copy

    plain = copy.deepcopy(cfg)
    if hasattr(plain, "slicekit"):
        delattr(plain, "slicekit")
    return plain

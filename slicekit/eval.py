"""Perplexity over non-overlapping windows, the way SliceGPT and most compression papers report it.

Each window is scored on its own (no carried context): token t is predicted from tokens < t of the
same window, so the first token of every window is context only, exactly as Hugging Face's loss
with ``labels=input_ids``. The mean is over all predicted tokens of all windows, so the number does
not depend on the batch size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import token_windows, tokenize

__all__ = ["perplexity", "window_nll"]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _as_windows(data, tokenizer, seqlen: int, max_windows: int | None) -> torch.Tensor:
    if isinstance(data, str) or (isinstance(data, torch.Tensor) and data.dim() == 1):
        ids = tokenize(data, tokenizer) if isinstance(data, str) else data
        available = ids.numel() // seqlen
        n = available if max_windows is None else min(max_windows, available)
        return token_windows(ids, seqlen=seqlen, n_windows=max(n, 1))
    if isinstance(data, torch.Tensor) and data.dim() == 2:
        return data if max_windows is None else data[:max_windows]
    raise TypeError(
        "data must be a str, a 1-D LongTensor token stream or a 2-D [n, seqlen] LongTensor, "
        f"got {type(data).__name__}" + (f" of shape {tuple(data.shape)}" if isinstance(data, torch.Tensor) else "")
    )


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, *, batch_size: int = 4, device=None, progress: bool = False):
    """Summed negative log-likelihood (float64) and number of predicted tokens over ``windows``.

    Args:
        windows: LongTensor [n, T] of token ids, T >= 2.
    Returns: (nll_sum: float, n_tokens: int).
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n, T] with T >= 2, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch", leave=False)
    for s in starts:
        batch = windows[s : s + batch_size].to(device=device, dtype=torch.long)
        logits = model(input_ids=batch, use_cache=False).logits
        # Loss in float32 whatever the model dtype (as HF's ForCausalLMLoss); summed, not averaged,
        # so that batches of different sizes combine into one token-weighted mean.
        pred = logits[:, :-1, :].float()
        target = batch[:, 1:]
        loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
        nll += loss.double()
        count += target.numel()
        del logits, pred
    return float(nll), count


def perplexity(
    model,
    data,
    *,
    tokenizer=None,
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int = 4,
    device=None,
    progress: bool = False,
) -> float:
    """exp(mean token cross-entropy) of ``model`` on ``data``.

    Args:
        model: a causal LM whose forward(input_ids=...) returns ``.logits`` [b, T, vocab].
        data: a str (tokenised whole, no special tokens; needs ``tokenizer``), a 1-D LongTensor
            token stream, or a LongTensor [n, T] of windows (``seqlen`` is then ignored).
        seqlen: window length for str / 1-D data.
        max_windows: use at most this many windows (the first ones); None uses all.
        batch_size: windows per forward pass; does not change the result beyond rounding.
        device: where to run; None runs where the model's parameters are. The model is moved
            there if it is elsewhere.
        progress: show a tqdm bar over batches.

    Equivalent to: exp(mean over windows w of HF loss(model(w, labels=w))) when every window has
    the same length.
    """
    windows = _as_windows(data, tokenizer, seqlen, max_windows)
    if device is not None and _model_device(model) != torch.device(device):
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        nll, count = window_nll(model, windows, batch_size=batch_size, device=device, progress=progress)
    finally:
        model.train(was_training)
    return math.exp(nll / count)

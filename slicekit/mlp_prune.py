"""MLP intermediate-width reduction: remove whole neurons, refit the output projection.

A neuron j of an MLP is row j of every reader (gate/up or fc1) and column j of the writer
(down or fc2). With H [N, m] the intermediate activations on the calibration tokens and W [d, m]
the writer, the MLP's contribution to the residual stream is H W^T. Removing a set of neurons and
refitting the writer on the kept set K is a least-squares problem whose only data is the Gram
matrix G = H^T H (float64, m x m):

    min ||H W^T - H_K W_K'^T||^2   =>   W_K' = W G[:, K] (G[K, K] + lambda I)^-1

Which neurons to remove is chosen greedily with the Optimal Brain Surgeon rule for whole columns
(Hassibi & Stork 1993; used for structured pruning of LLMs by ZipLM, Kurtic et al. 2023): removing
column j of W, with every other column re-solved, costs ||w_j||^2 / [G^-1]_jj. After each removal
W and G^-1 get rank-one updates, so the whole order costs O(m^2 (m + d)). The same path gives the
error of every intermediate width, which the width budget (``slicekit.budget``) uses.
"""
from __future__ import annotations

import torch

__all__ = ["obs_order", "select_neurons", "refit_writer", "prune_error"]


def _damped(gram: torch.Tensor, damp: float) -> torch.Tensor:
    if gram.dtype != torch.float64 or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise TypeError(f"the Gram matrix must be a square float64 matrix, got {gram.dtype} {tuple(gram.shape)}")
    shift = damp * float(gram.diagonal().mean()) + 1e-30
    return gram + shift * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


@torch.no_grad()
def obs_order(gram: torch.Tensor, weight: torch.Tensor, n_remove: int, damp: float = 0.01, block: int = 1):
    """Greedy OBS removal order of whole neurons and the squared error after each removal.

    Args:
        gram: [m, m] float64, sum over calibration tokens of h h^T (intermediate activations).
        weight: [d, m] the writer's weight (nn.Linear layout), any float dtype.
        n_remove: how many neurons to remove (0 <= n_remove < m).
        damp: diagonal damping as a fraction of mean(diag(gram)).
        block: neurons removed per step (the ``block`` lowest scores, then one block update);
            1 is exact greedy, larger is faster (32 loses nothing measurable on SmolLM2).

    Returns:
        (order, errors): LongTensor [n_remove] of removed neuron indices in removal order, and
        float64 [n_remove] where errors[i] is the summed squared error ||H W^T - H_K W_K'^T||^2
        (damped Gram) after removing order[: i + 1] with the writer refitted on the rest (within
        a block of simultaneous removals, interpolated linearly).
    """
    m = gram.shape[0]
    if not 0 <= n_remove < m:
        raise ValueError(f"n_remove must be in [0, {m}), got {n_remove}")
    w = weight.detach().to(gram.device, torch.float64).clone()
    hinv = torch.linalg.inv(_damped(gram, damp))
    hinv = 0.5 * (hinv + hinv.T)
    alive = torch.ones(m, dtype=torch.bool, device=gram.device)
    order, errors, total = [], [], 0.0
    while len(order) < n_remove:
        b = min(block, n_remove - len(order))
        diag = hinv.diagonal().clamp_min(1e-300)
        score = w.pow(2).sum(0) / diag
        score[~alive] = float("inf")
        idx = _pick_block(score, hinv, b)
        b = idx.numel()
        if b == 1:
            j = int(idx)
            hj = hinv[j].clone()
            wj = w[:, j].clone()
            step = float(wj.dot(wj) / hj[j])
            # rank-one updates in place: one pass over W and one over G^-1 per removal
            w.addr_(wj, hj, alpha=-1.0 / float(hj[j]))
            hinv.addr_(hj, hj, alpha=-1.0 / float(hj[j]))
        else:
            hbb = hinv[idx][:, idx]
            hbb_inv = torch.linalg.inv(hbb)
            wb = w[:, idx]
            step = float(((wb @ hbb_inv) * wb).sum())
            rows = hinv[idx]  # [b, m]
            w -= (wb @ hbb_inv) @ rows
            hinv -= rows.T @ hbb_inv @ rows
        w[:, idx] = 0
        hinv[idx, :] = 0
        hinv[:, idx] = 0
        alive[idx] = False
        n = idx.numel()
        order.extend(idx.reshape(-1).tolist())
        # within a block the error is spread evenly (the block is removed as one step)
        errors.extend(total + step * (j + 1) / n for j in range(n))
        total += step
    return torch.tensor(order, dtype=torch.long), torch.tensor(errors, dtype=torch.float64)


def _pick_block(score: torch.Tensor, hinv: torch.Tensor, b: int, max_corr: float = 0.5) -> torch.Tensor:
    """The b lowest-score neurons, skipping any strongly coupled (in G^-1) to one already picked.

    Scores are for removing one neuron with all others re-solved; two coupled neurons (in the limit,
    duplicates) each look free alone but not together, so a block takes at most one of them.
    """
    order = torch.argsort(score)
    if b == 1:
        return order[:1]
    picked: list[int] = []
    diag = hinv.diagonal().clamp_min(1e-300).sqrt()
    for j in order[: 4 * b].tolist():
        if not torch.isfinite(score[j]):
            break
        if picked:
            corr = hinv[j, picked].abs() / (diag[j] * diag[picked])
            if bool((corr > max_corr).any()):
                continue
        picked.append(j)
        if len(picked) == b:
            break
    return torch.tensor(picked or order[:1].tolist(), dtype=torch.long, device=score.device)


def select_neurons(gram: torch.Tensor, weight: torch.Tensor, keep: int, *, method: str = "obs", damp: float = 0.01,
                   block: int = 1) -> torch.Tensor:
    """Indices (sorted, LongTensor [keep]) of the neurons to keep.

    method "obs": greedy OBS removal (see ``obs_order``); "energy": the ``keep`` neurons with the
    largest output energy G_jj ||w_j||^2 (no interaction between neurons).
    """
    m = gram.shape[0]
    if not 1 <= keep <= m:
        raise ValueError(f"keep must be in [1, {m}], got {keep}")
    if keep == m:
        return torch.arange(m, device=gram.device)
    if method == "obs":
        removed, _ = obs_order(gram, weight, m - keep, damp=damp, block=block)
        mask = torch.ones(m, dtype=torch.bool)
        mask[removed] = False
        return torch.nonzero(mask).reshape(-1).to(gram.device)
    if method == "energy":
        w = weight.detach().to(gram.device, torch.float64)
        score = gram.diagonal() * w.pow(2).sum(0)
        return torch.sort(torch.topk(score, keep).indices).values
    raise ValueError(f"unknown neuron selection method {method!r} (use 'obs' or 'energy')")


def refit_writer(gram: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Least-squares writer on the kept neurons: W G[:, K] (G[K, K] + lambda I)^-1, float64 [d, |K|].

    With every neuron kept this is W itself (to rounding): the refit is exact at zero pruning.
    """
    w = weight.detach().to(gram.device, torch.float64)
    if keep.numel() == gram.shape[0]:
        return w[:, keep].clone()
    gk = _damped(gram, damp)[keep][:, keep]
    rhs = (gram[keep] @ w.T)  # [|K|, d] = G[K, :] W^T
    return torch.linalg.solve(gk, rhs).T.contiguous()


def prune_error(gram: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, refit: torch.Tensor) -> float:
    """||H W^T - H_K W'^T||^2 from the Gram matrix alone (W' = ``refit`` on the kept columns)."""
    w = weight.detach().to(gram.device, torch.float64)
    delta = w.clone()
    delta[:, keep] -= refit
    return float((delta @ gram * delta).sum())

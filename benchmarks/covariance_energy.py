"""Steady-state clock, power and energy per call of covariance settings, torch's GEMM and the float64 path.

Why: on the H200 these kernels run at the board's ~700 W power limit, so the SM clock -- and with it
every latency -- depends on how much energy a call spends, not only on how many cycles it needs.
Short do_bench windows (covariance_sm90_ab.py) see each variant at whatever clock the one before it
left. Here each variant runs back to back for a window of `--seconds` (after a warm-up window of its
own), while a thread samples the SM clock and board power; the board's energy counter gives the
energy per call. Then:
    cycles per call = ms x mean SM clock   (what a change to the kernel's schedule moves)
    mJ per call = mean power x ms          (what bounds the time once power sits at the limit;
                                            "mj" is the energy counter's reading, coarser)
Rounds repeat the variants in a fresh random order. Variants as in covariance_sm90_ab.py
(NAME:KNOB=V+KNOB=V); "gemm" (torch.mm fp16 -> fp32) and "fp64" are added.

    python benchmarks/covariance_energy.py --d 4096 8192 --variants default: c256:CHUNK=256 noload:PROBE=1
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import env_vars, markdown_table, require_cuda, write_results  # noqa: E402
from bench_covariance import activations, fp64_path, sm90_problem  # noqa: E402
from covariance_sm90_ab import parse_variant  # noqa: E402


class Board:
    """NVML readings of GPU 0: SM clock (MHz), power (W), and the energy counter (J) where the board has one."""

    def __init__(self):
        import pynvml  # torch's clock_rate()/power_draw() use it too

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

    def clock(self) -> float:
        return float(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    def power(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def energy(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0
        except self.nvml.NVMLError:
            return None

    def limit(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1000.0
        except self.nvml.NVMLError:
            return None


def window(fn, seconds: float, board: Board) -> dict:
    """Run fn back to back for about `seconds`; time, clock, power and energy over the window."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    calls = max(3, int(seconds * 1000 / max(start.elapsed_time(end), 1e-3)))
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((board.clock(), board.power()))
            time.sleep(0.004)

    e0 = board.energy()
    thread = threading.Thread(target=sample, daemon=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    thread.start()
    end.synchronize()
    stop.set()
    thread.join()
    e1 = board.energy()
    ms = start.elapsed_time(end) / calls
    clock = statistics.mean(c for c, _ in samples) if samples else float("nan")
    power = statistics.mean(p for _, p in samples) if samples else float("nan")
    row = dict(ms=ms, calls=calls, clock_mhz=clock, power_w=power, samples=len(samples),
               kcycles=ms * clock)  # ms x MHz = thousands of cycles
    # Two estimates per call: the mean sampled power times the time (steady), and the board's energy
    # counter over the window (it also spans launch and sync overhead, and it moves in coarse steps:
    # on the H200 it strayed up to ~15% from power x time over windows of 0.6-1 s).
    row["mj_power"] = power * ms
    row["mj"] = (e1 - e0) * 1000.0 / calls if e0 is not None and e1 is not None else row["mj_power"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, nargs="+", default=[4096])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    p.add_argument("--variants", nargs="+", default=["default:"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="measured window per variant and round")
    p.add_argument("--warmup", type=float, default=0.4, help="unmeasured window before each measured one")
    p.add_argument("--no-fp64", action="store_true")
    p.add_argument("--name", default="covariance_energy")
    args = p.parse_args(argv)
    require_cuda("covariance_energy.py")
    if problem := sm90_problem():
        print(f"covariance_energy.py: {problem}", file=sys.stderr)
        return 2
    try:
        board = Board()
    except Exception as exc:  # noqa: BLE001 - no pynvml / no NVML: nothing to measure here
        print(f"covariance_energy.py: NVML unavailable ({exc})", file=sys.stderr)
        return 2
    variants = [parse_variant(v) for v in args.variants]
    op = torch.ops.slicekit.covariance_accumulate
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    rows, log = [], []
    for d in args.d:
        x = activations(args.n, d, dtype, "cuda")
        if problem := sm90_problem(x):
            print(f"covariance_energy.py: {problem}", file=sys.stderr)
            return 2
        out = torch.zeros(d, d, dtype=torch.float64, device="cuda")
        fns = {name: (lambda: op(x, None, out, False)) for name, _ in variants}  # noqa: B023
        envs = dict(variants)
        fns["gemm"] = lambda: torch.mm(x.T, x, out_dtype=torch.float32)  # noqa: B023
        if not args.no_fp64:
            fns["fp64"] = lambda: fp64_path(x)  # noqa: B023
        got = {name: [] for name in fns}
        rng = random.Random(d)
        for r in range(args.rounds):
            for name in rng.sample(list(fns), len(fns)):
                with env_vars(**envs.get(name, {})):
                    window(fns[name], args.warmup, board)
                    w = window(fns[name], args.seconds, board)
                got[name].append(w)
                log.append(dict(d=d, round=r, variant=name, **w))
                print(log[-1], file=sys.stderr, flush=True)
        for name, ws in got.items():
            med = {k: statistics.median(w[k] for w in ws)
                   for k in ("ms", "clock_mhz", "power_w", "kcycles", "mj", "mj_power")}
            rows.append(dict(d=d, N=args.n, dtype=args.dtype, variant=name, knobs=envs.get(name, {}), **med))
        base = {k: rows[-len(fns)][k] for k in ("ms", "kcycles", "mj")}
        for row in rows[-len(fns):]:
            for k in ("ms", "kcycles", "mj"):
                row[f"{k}_vs_first"] = row[k] / base[k]
        del x, out
        torch.cuda.empty_cache()
    print(markdown_table(rows, ["d", "variant", "ms", "clock_mhz", "power_w", "kcycles", "mj_power", "mj", "ms_vs_first",
                                "kcycles_vs_first", "mj_vs_first"]))
    print(f"wrote {write_results(args.name, rows, dict(windows=log, power_limit_w=board.limit()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

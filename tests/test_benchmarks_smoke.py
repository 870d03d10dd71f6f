"""CPU checks of the latency benchmarks: the analytic cost model, k rounding, the layer sequence
each variant times, the e2e helpers on a tiny model, the plots, and that every GPU script refuses
cleanly (non-zero exit, a message naming the problem) when no GPU is visible.

No timing is asserted anywhere: these tests guard the arithmetic and plumbing the GPU numbers
are read through.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _load(name: str):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sg = _load("sliced_gemm")
SHAPES = sg.MODEL_SHAPES
TINY = dict(hidden=64, intermediate=96, heads=4, kv_heads=2, layers=2, vocab=101)


# ---------------------------------------------------------------------------------------------
# k rounding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden,sparsity,multiple,expected", [
    (4096, 0.25, 128, 3072),
    (4096, 0.30, 8, 2864),     # 0.7 * 4096 = 2867.2 -> 2867 -> 2864
    (4096, 0.30, 128, 2816),
    (4096, 0.10, 128, 3584),   # 3686.4 -> 3686 -> 3584
    (5120, 0.30, 8, 3584),     # (1 - 0.3) * 5120 is 3583.9999... in binary: must not floor to 3576
    (8192, 0.20, 64, 6528),    # 6553.6 -> 6553 -> 6528
    (8192, 0.10, 8, 7368),
    (4096, 0.0, 128, 4096),
    (64, 0.99, 128, 64),       # never wider than the model, never zero
])
def test_round_k(hidden, sparsity, multiple, expected):
    assert sg.round_k(hidden, sparsity, multiple) == expected


def test_round_k_matches_core_rule():
    slicing = pytest.importorskip("slicekit.slicing")
    for d in (4096, 5120, 8192):
        for s in sg.SPARSITIES:
            for r in sg.ROUNDS:
                assert sg.round_k(d, s, r) == slicing.sliced_width(d, s, r)


@pytest.mark.parametrize("bad", [(-0.1, 8), (1.0, 8), (0.25, 0)])
def test_round_k_rejects(bad):
    with pytest.raises(ValueError):
        sg.round_k(4096, *bad)


# ---------------------------------------------------------------------------------------------
# analytic cost model, checked against numbers worked out by hand
# ---------------------------------------------------------------------------------------------
def test_predicted_ratios_llama7b_by_hand():
    # LLaMA-2-7B, d = 4096, I = 11008, 32 heads (no GQA), k = 3072, one token.
    d, i, k = 4096, 11008, 3072
    dense_macs = 4 * d * d + 3 * d * i                          # q, k, v, o + gate, up, down
    sliced_macs = 4 * k * d + 3 * k * i + 2 * k * k             # every linear loses d -> k; + two S
    f_dense, b_dense = sg.layer_cost(SHAPES["llama-2-7b"], None, 1, "dense")
    f_unf, b_unf = sg.layer_cost(SHAPES["llama-2-7b"], k, 1, "unfused")
    assert f_dense == 2 * dense_macs == 404_750_336
    assert f_unf == 2 * sliced_macs == 341_311_488

    # Bytes at T = 1 (fp16): weights + each GEMM's input and output vector; writers also read
    # the residual addend (dense: x of width d; unfused shortcut: the writer output y).
    dense_act = (d + d) * 3 + (d + d + d) + (d + i) * 2 + (i + d + d)
    assert b_dense == 2 * (dense_macs + dense_act) == 404_922_880
    unf_act = ((k + d) + (k + d) + (k + d)          # q, k, v
               + (d + k) + (k + k + k)              # o: h -> y; shortcut: x, addend y -> out
               + (k + i) * 2                        # gate, up
               + (i + k) + (k + k + k))             # down, shortcut
    assert b_unf == 2 * (sliced_macs + unf_act)

    pf, pb = sg.predicted_ratios(SHAPES["llama-2-7b"], k, 1, "unfused")
    assert pf == pytest.approx(341_311_488 / 404_750_336, rel=1e-12)
    assert pf == pytest.approx(0.84327, abs=1e-5)
    assert pb == pytest.approx(b_unf / 404_922_880, rel=1e-12)


def test_predicted_ratios_llama70b_gqa_by_hand():
    # LLaMA-2-70B: 64 query heads, 8 KV heads of 128 -> k/v project to 1024, not 8192.
    d, i, kv, k, t = 8192, 28672, 1024, 6144, 4096
    dense_macs = d * d + 2 * d * kv + d * d + 3 * d * i
    fused_macs = k * d + 2 * k * kv + d * k + 3 * k * i + 2 * k * k
    f_dense, _ = sg.layer_cost(SHAPES["llama-2-70b"], None, t, "dense")
    f_fused, b_fused = sg.layer_cost(SHAPES["llama-2-70b"], k, t, "fused")
    assert f_dense == 2 * t * dense_macs
    assert f_fused == 2 * t * fused_macs
    # The fused op reads x, S, h, W once and writes y once: vs unfused it saves writing y and
    # reading it back (2 x T x k elements per writer, two writers).
    _, b_unf = sg.layer_cost(SHAPES["llama-2-70b"], k, t, "unfused")
    assert b_unf - b_fused == 2 * (2 * 2 * t * k)


@pytest.mark.parametrize("model", sorted(SHAPES))
@pytest.mark.parametrize("tokens", [1, 256, 16384])
def test_ratio_properties(model, tokens):
    shape = SHAPES[model]
    k = sg.round_k(shape["hidden"], 0.25, 128)
    # Without shortcuts every GEMM shrinks by exactly k/d in FLOPs, whatever T is.
    pf, _ = sg.predicted_ratios(shape, k, tokens, "no_shortcut")
    assert pf == pytest.approx(k / shape["hidden"], rel=1e-12)
    # Fused and unfused do the same FLOPs; fused moves strictly fewer bytes.
    f_u, b_u = sg.predicted_ratios(shape, k, tokens, "unfused")
    f_f, b_f = sg.predicted_ratios(shape, k, tokens, "fused")
    assert f_u == pytest.approx(f_f, rel=1e-12)
    assert b_f < b_u
    assert pf < f_u < 1.0
    assert sg.predicted_ratios(shape, shape["hidden"], tokens, "no_shortcut") == (1.0, 1.0)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        sg.layer_cost(SHAPES["llama-2-7b"], 3072, 1, "sparse")


def test_quick_and_full_arguments():
    q = sg.parse_args(["--quick"])
    assert q.models == ["llama-2-7b", "llama-2-70b"] and q.sparsities == [0.25] and q.rounds == [128]
    assert q.tokens == [1, 16, 256, 1024, 4096, 16384]
    f = sg.parse_args([])
    assert f.tokens == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    assert set(f.models) == {"llama-2-7b", "llama-2-13b", "llama-2-70b"} and f.deadline_s > 0


# ---------------------------------------------------------------------------------------------
# the layer sequence each variant runs (CPU, tiny shape): every variant computes its own math
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["dense", "no_shortcut", "unfused", "fused"])
def test_layer_sequence_matches_float64(variant):
    if variant == "fused":
        from slicekit.ops import available_backends

        if "triton" not in available_backends("shortcut_linear", "cpu"):
            pytest.skip("triton backend not runnable here")
        pytest.importorskip("slicekit.kernels.shortcut_linear")
    k = TINY["hidden"] if variant == "dense" else 40  # 40: not a multiple of any tile
    lw = sg.LayerWeights(TINY, k, "cpu", dtype=torch.float32)
    assert sg.rel_err(lw, variant) < 1e-5


def test_check_targets_reads_rows():
    shape = SHAPES["llama-2-7b"]
    rows = []
    for t, ratio in ((1, 0.80), (16, 0.95), (1024, 0.86), (4096, 0.90)):
        pf, pb = sg.predicted_ratios(shape, 3072, t, "fused")
        rows.append(dict(model="llama-2-7b", variant="fused", sparsity=0.25, round_to=128, tokens=t,
                         ratio=ratio, pred_flop_ratio=pf, pred_byte_ratio=pb))
    out = {r["regime"]: r for r in sg.check_targets(rows)}
    assert out["decode T<=16"]["worst_tokens"] == 16 and not out["decode T<=16"]["ok"]
    assert out["prefill T>=1024"]["worst_tokens"] == 4096 and not out["prefill T>=1024"]["ok"]


# ---------------------------------------------------------------------------------------------
# e2e helpers on a tiny Llama (CPU)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e2e():
    pytest.importorskip("transformers")
    mod = _load("e2e_latency")
    mod.MODEL_SHAPES["tiny-test"] = dict(TINY, vocab=101)
    yield mod
    mod.MODEL_SHAPES.pop("tiny-test", None)


def test_e2e_tiny_model_prefill_and_decode(e2e):
    model = e2e.build_dense_llama("tiny-test", None, "cpu", dtype=torch.float32)
    assert model.config.num_hidden_layers == TINY["layers"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    pre = e2e.bench_prefill(model, 2, 16, "cpu", budget_s=0.05, max_reps=3)
    dec = e2e.bench_decode_eager(model, 2, 8, 2, "cpu", warmup=1)
    assert pre["ms"] > 0 and pre["reps"] >= 3 and dec["ms"] > 0 and dec["reps"] == 2
    prof = e2e.profile_decode_step(model, "cpu", prompt_len=8)
    assert 0 < len(prof["top_ops"]) <= 10 and prof["top_ops"][0]["name"]


def test_e2e_static_cache_step_is_the_next_token(e2e):
    """The graph mode's step (StaticCache that advances itself, position ids += 1 per replay)
    must produce the logits a full forward gives for the same tokens."""
    model = e2e.build_dense_llama("tiny-test", None, "cpu", dtype=torch.float32)
    kw = e2e.cache_kwarg(model)
    with torch.inference_mode():
        ids, toks = torch.randint(0, 101, (2, 8)), torch.randint(0, 101, (2, 3))
        full = model(input_ids=torch.cat([ids, toks], 1)).logits[:, -3:]
        cache = e2e._static_cache(model, 8 + 3 + 1)
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
        pos = torch.full((2, 1), 8, dtype=torch.long)
        steps = []
        for j in range(3):
            steps.append(model(input_ids=toks[:, j:j + 1], position_ids=pos, use_cache=True, **{kw: cache}).logits)
            pos.add_(1)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_e2e_speedups_and_targets(e2e):
    rows = [
        dict(kind="decode", variant="dense", mode="graph", batch=1, ms=10.0),
        dict(kind="decode", variant="sliced_triton", mode="graph", batch=1, ms=8.0),
        dict(kind="decode", variant="dense", mode="graph", batch=64, ms=20.0),
        dict(kind="decode", variant="sliced_triton", mode="graph", batch=64, ms=float("nan")),
        dict(kind="prefill", variant="dense", mode="eager", batch=8, seq=2048, ms=100.0),
        dict(kind="prefill", variant="sliced_triton", mode="eager", batch=8, seq=2048, ms=95.0),
    ]
    e2e.add_speedups(rows)
    assert rows[1]["speedup"] == pytest.approx(1.25) and math.isnan(rows[3]["speedup"])
    t = {r["target"]: r for r in e2e.check_targets(rows)}
    assert t["decode b<=16 >= 1.12x"]["ok"] and not t["prefill >= 8x2048 >= 1.12x"]["ok"]
    assert e2e.parse_args(["--prefill", "1x128,8x2048", "--compile-batches", ""]).prefill == [(1, 128), (8, 2048)]


# ---------------------------------------------------------------------------------------------
# plots from synthetic result files (a temporary directory, never benchmarks/results)
# ---------------------------------------------------------------------------------------------
def test_plots_from_result_files(tmp_path):
    pytest.importorskip("matplotlib")
    pl = _load("plot_latency")
    gemm_rows = []
    for model in ("llama-2-7b", "llama-2-70b"):
        shape = SHAPES[model]
        for s in (0.25, 0.3):
            k = sg.round_k(shape["hidden"], s, 128)
            for t in (1, 16, 1024):
                for v in ("dense", "no_shortcut", "unfused", "fused"):
                    pf, pb = (1.0, 1.0) if v == "dense" else sg.predicted_ratios(shape, k, t, v)
                    gemm_rows.append(dict(model=model, hidden=shape["hidden"], sparsity=s, round_to=128, k=k,
                                          tokens=t, variant=v, ratio=pf + 0.02, pred_flop_ratio=pf,
                                          pred_byte_ratio=pb))
    (tmp_path / "sliced_gemm.json").write_text(json.dumps(dict(env={}, config=dict(graph_max_t=256), rows=gemm_rows)))
    e2e_rows = [dict(kind="decode", variant=v, mode=m, batch=b, speedup=1.1)
                for v in ("sliced_torch", "sliced_triton") for m in ("eager", "graph") for b in (1, 16)]
    e2e_rows += [dict(kind="prefill", variant="sliced_triton", mode="eager", batch=8, seq=2048, speedup=None)]
    (tmp_path / "e2e_latency.json").write_text(json.dumps(dict(env={}, config=dict(model="x"), rows=e2e_rows)))
    assert pl.main(["--results-dir", str(tmp_path)]) == 0
    for name in ("sliced_gemm_ratio.png", "sliced_gemm_sparsity.png", "e2e_speedup.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pl.main(["--results-dir", str(empty)]) == 1


# ---------------------------------------------------------------------------------------------
# without a GPU every GPU script refuses, fast, with a clear message
# ---------------------------------------------------------------------------------------------
def _no_gpu_env():
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""  # hides any GPU from torch in the child
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.mark.parametrize("script,args", [("sliced_gemm.py", ["--quick"]), ("e2e_latency.py", ["--quick"]),
                                         ("covariance_variants.py", []), ("eigh_backends.py", []),
                                         ("host_transfer.py", []), ("cold_start.py", []),
                                         ("covariance_sm90_sweep.py", []), ("covariance_sm90_ab.py", []),
                                         ("tensor_core_rounding.py", []), ("covariance_energy.py", [])])
def test_gpu_script_refuses_without_gpu(script, args):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], env=_no_gpu_env(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "no CUDA GPU" in proc.stderr and script in proc.stderr


def test_ab_variant_specs():
    """covariance_sm90_ab.py's variants: NAME:KNOB=V+KNOB=V, knobs by suffix; a malformed one names itself."""
    sys.path.insert(0, BENCH)
    try:
        import covariance_sm90_ab as ab
    finally:
        sys.path.remove(BENCH)
    assert ab.parse_variant("default:") == ("default", {})
    assert ab.parse_variant("c256:chunk=256+TAIL=1") == (
        "c256", {"SLICEKIT_COV_SM90_CHUNK": "256", "SLICEKIT_COV_SM90_TAIL": "1"})
    assert ab.parse_variant("s1:SLICEKIT_COV_TRITON_SPLITS=1") == ("s1", {"SLICEKIT_COV_TRITON_SPLITS": "1"})
    with pytest.raises(SystemExit, match="'c256:CHUNK'"):
        ab.parse_variant("c256:CHUNK")


def test_run_all_refuses_without_gpu():
    proc = subprocess.run(["bash", os.path.join(BENCH, "run_all.sh"), "--quick"], env=_no_gpu_env(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "no CUDA GPU" in proc.stderr and "Nothing was run" in proc.stderr
    assert "==" not in proc.stdout  # no benchmark was started


def test_run_all_rejects_unknown_argument():
    proc = subprocess.run(["bash", os.path.join(BENCH, "run_all.sh"), "--ful"], env=_no_gpu_env(),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr


def test_sliced_gemm_sweep_plumbing(monkeypatch):
    """The sweep driver on the CPU with a stand-in timer: jobs, dedup of equal k, rows, targets."""
    sg.MODEL_SHAPES["tiny-test"] = TINY
    try:
        fake_ms = {}

        def fake_measure(lw, x, h_attn, variant, use_graph, budget_ms, min_reps):
            sg.layer_fn(lw, x, h_attn, variant)()  # the sequence must run for every variant it times
            ms = 1.0 if variant == "dense" else 0.9
            fake_ms[(lw.k, x.shape[0], variant)] = ms
            return dict(ms=ms, ms_p20=ms, ms_p80=ms, reps=1, first_call_s=0.0)

        monkeypatch.setattr(sg, "measure", fake_measure)
        args = sg.parse_args(["--device", "cpu", "--sparsities", "0.25", "0.3", "--rounds", "16", "8",
                              "--tokens", "1", "300", "--variants", "dense", "no_shortcut", "unfused"])
        args.models = ["tiny-test"]
        rows, extra = sg.run(args)
    finally:
        sg.MODEL_SHAPES.pop("tiny-test", None)
    # k: 0.25 -> 48 (both roundings), 0.3 -> 44 -> 32 (r16) / 40 (r8): three distinct widths
    assert sorted({r["k"] for r in rows}) == [32, 40, 48]
    assert len(rows) == 2 * 2 * 2 * 3  # (sparsity, round) x T x variants
    assert {(k, t, v) for k, t, v in fake_ms} == {(k, t, v) for k in (64, 32, 40, 48) for t in (1, 300)
                                                  for v in ("dense", "no_shortcut", "unfused")
                                                  if (k == 64) == (v == "dense")}
    r = next(r for r in rows if r["variant"] == "unfused" and r["tokens"] == 300 and r["k"] == 48)
    assert r["ratio"] == pytest.approx(0.9) and r["graph"] is False and r["err"] < 1e-2
    assert r["pred_flop_ratio"] == pytest.approx(sg.predicted_ratios(TINY, 48, 300, "unfused")[0])
    assert extra["skipped"] == {} and not extra["deadline_hit"]

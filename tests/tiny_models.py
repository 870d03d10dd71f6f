"""Random-initialised tiny models of every supported architecture (no download)."""
from __future__ import annotations

import types

import torch
import transformers as tf

ARCHS = ("llama", "llama_tied", "mistral", "qwen2", "opt", "phi")


def tiny_config(arch: str):
    common = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    if arch in ("llama", "llama_tied"):
        return tf.LlamaConfig(intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=arch == "llama_tied", **common)
    if arch == "mistral":
        return tf.MistralConfig(intermediate_size=96, num_key_value_heads=2, sliding_window=None, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=False, **common)
    if arch == "opt":
        return tf.OPTConfig(ffn_dim=96, word_embed_proj_dim=64, do_layer_norm_before=True, dropout=0.0,
                            attention_dropout=0.0, pad_token_id=1, **common)
    if arch == "phi":
        return tf.PhiConfig(intermediate_size=96, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0,
                            attention_dropout=0.0, **common)
    raise ValueError(arch)


def _f64_rmsnorm(self, x):
    # Hugging Face RMSNorms compute in fp32 even for float64 models; the invariance checks need
    # the reference itself to be float64-exact.
    var = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))


def tiny_model(arch: str, dtype=torch.float64, seed: int = 0, exact_norms: bool = True):
    torch.manual_seed(seed)
    model = getattr(tf, {"llama": "LlamaForCausalLM", "llama_tied": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                         "qwen2": "Qwen2ForCausalLM", "opt": "OPTForCausalLM", "phi": "PhiForCausalLM"}[arch])(tiny_config(arch))
    model.eval()
    with torch.no_grad():
        # Non-trivial norms and biases, larger-than-init weights: invariance must hold for any values.
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) * 0.08)
    model.to(dtype)
    if exact_norms and dtype == torch.float64:
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.forward = types.MethodType(_f64_rmsnorm, mod)
    return model


def calib_ids(n: int = 8, t: int = 32, vocab: int = 101, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # OPT reserves ids 0..2 as special (pad=1); start at 3 so no calibration token is padding.
    return torch.randint(3, vocab, (n, t), generator=g)


def rel(a, b):
    return float((a - b).norm() / b.norm())

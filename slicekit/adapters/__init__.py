"""Architecture adapters: one small description per supported model family."""
from __future__ import annotations

from torch import nn

from .base import Adapter, UnsupportedModelError, norm_params


def _check_opt(model: nn.Module) -> None:
    cfg = model.config
    if not getattr(cfg, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            "OPT with post-layer-norm (do_layer_norm_before=False, e.g. OPT-350m) is not pre-norm: SliceGPT's "
            "rotation invariance does not hold for it"
        )
    if getattr(cfg, "word_embed_proj_dim", cfg.hidden_size) != cfg.hidden_size:
        raise UnsupportedModelError("OPT with project_in/project_out (word_embed_proj_dim != hidden_size) is not supported")
    if getattr(cfg, "_remove_final_layer_norm", False):
        raise UnsupportedModelError("OPT without a final layer norm (_remove_final_layer_norm=True) is not supported")
    if not getattr(cfg, "layer_norm_elementwise_affine", True):
        pass  # LayerNorm without gamma/beta is the plain case: nothing to fold


def _check_uniform_attention(model: nn.Module) -> None:
    types = getattr(model.config, "layer_types", None)
    if types and len(set(types)) > 1:
        raise UnsupportedModelError(
            f"models mixing attention types per layer ({sorted(set(types))}) are not supported yet: "
            "calibration replays one attention mask for every layer"
        )


def _check_llama(model: nn.Module) -> None:
    _check_uniform_attention(model)
    act = getattr(model.config, "hidden_act", "silu")
    if act not in ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu", "gelu_new"):
        raise UnsupportedModelError(f"unexpected MLP activation {act!r}")


def _check_phi(model: nn.Module) -> None:
    _check_uniform_attention(model)


LLAMA = Adapter(
    name="llama", model_types=("llama", "mistral", "qwen2"), layout="sequential", norm="rms",
    base_path="model", embed_names=("embed_tokens",), final_norm_name="norm",
    attn_norm_name="input_layernorm", mlp_norm_name="post_attention_layernorm",
    attn_name="self_attn", attn_readers=("q_proj", "k_proj", "v_proj"), attn_writer="o_proj",
    mlp_name="mlp", mlp_readers=("gate_proj", "up_proj"), mlp_writer="down_proj", mlp_kind="gated",
    extra_checks=(_check_llama,),
)
OPT = Adapter(
    name="opt", model_types=("opt",), layout="sequential", norm="layernorm",
    base_path="model.decoder", embed_names=("embed_tokens", "embed_positions"), final_norm_name="final_layer_norm",
    attn_norm_name="self_attn_layer_norm", mlp_norm_name="final_layer_norm",
    attn_name="self_attn", attn_readers=("q_proj", "k_proj", "v_proj"), attn_writer="out_proj",
    mlp_name=None, mlp_readers=("fc1",), mlp_writer="fc2", mlp_kind="plain",
    extra_checks=(_check_opt,),
)
PHI = Adapter(
    name="phi", model_types=("phi",), layout="parallel", norm="layernorm",
    base_path="model", embed_names=("embed_tokens",), final_norm_name="final_layernorm",
    attn_norm_name="input_layernorm", mlp_norm_name=None,
    attn_name="self_attn", attn_readers=("q_proj", "k_proj", "v_proj"), attn_writer="dense",
    mlp_name="mlp", mlp_readers=("fc1",), mlp_writer="fc2", mlp_kind="plain",
    extra_checks=(_check_phi,),
)

ADAPTERS = (LLAMA, OPT, PHI)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; a clear error naming the model type otherwise."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no Hugging Face config.model_type; slicekit slices transformers "
            f"*ForCausalLM models of types {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            if not hasattr(model, "lm_head"):
                raise UnsupportedModelError(
                    f"{type(model).__name__} has no lm_head: pass the *ForCausalLM model, not the bare decoder"
                )
            adapter.check(model)
            return adapter
    raise UnsupportedModelError(
        f"unsupported architecture: model_type {model_type!r} ({type(model).__name__}); "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = ["Adapter", "UnsupportedModelError", "get_adapter", "norm_params", "ADAPTERS", "SUPPORTED_MODEL_TYPES"]

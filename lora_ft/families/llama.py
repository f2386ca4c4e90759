"""Llama-style decoders (Llama 2/3, SmolLM2, and the layout most current models share): q/k/v/o projections,
a gated MLP, RMSNorm and rotary positions."""

from __future__ import annotations

import math
from typing import Any

from lora_ft.errors import UserError
from lora_ft.families import GgufRules, ModelFamily, ModelShape


def shape(config: dict) -> ModelShape:
    try:
        h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
    except KeyError as exc:
        raise UserError(f"the model's config.json has no {exc.args[0]}; lora-ft plan understands Llama-style and "
                        "GPT-2-style models", fix="use --measure, or plan with a supported model") from exc
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    kv = kv_heads * head_dim
    linear = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (heads * head_dim, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return ModelShape(h, i, layers, heads, kv_heads, config["vocab_size"], config.get("tie_word_embeddings", False),
                      config.get("max_position_embeddings", 4096), linear)


def check_heads(config: dict[str, Any], source: str, shape: tuple[int, ...], kv: bool) -> int:
    """The head count of a q_proj (or k_proj, ``kv``) tensor, checked against its shape."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if kv:
        heads = config.get("num_key_value_heads") or heads
    if shape[0] != heads * head_dim or head_dim % 2:
        key = "num_key_value_heads" if kv else "num_attention_heads"
        raise UserError(
            f"{source} has {shape[0]} rows, but config.json says {key}={heads} heads of {head_dim}",
            fix="the weights and config.json disagree; re-save the merged model and its config with save_pretrained",
        )
    return heads


def gguf_transform(name: str, source: str, shape: tuple, config: dict) -> tuple[str, tuple]:
    """q_proj and k_proj rows go from Hugging Face's rotary layout to llama.cpp's."""
    part = name.split(".")[2] if name.startswith("blk.") else ""
    if part in ("attn_q", "attn_k"):
        return f"permute:{check_heads(config, source, shape, kv=part == 'attn_k')}", shape
    return "", shape


def rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either transformers 5 ("rope_parameters") or 4 ("rope_theta", "rope_scaling") configs."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params = params.get("full_attention", params)
    params["theta"] = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    params["type"] = str(params.get("rope_type") or params.get("type") or "default").lower()
    return params


def llama3_rope_freqs(config: dict[str, Any]) -> list[tuple[str, tuple[float, ...]]]:
    """The rope_freqs tensor llama.cpp needs for Llama 3.1-style ("llama3") rope scaling; none otherwise."""
    params = rope(config)
    if params["type"] != "llama3":
        return []
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * params["theta"] ** (i / dim)
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return [("rope_freqs.weight", tuple(factors))]


def add_gguf_hparams(writer, config: dict[str, Any]) -> None:
    import gguf

    heads = config["num_attention_heads"]
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_rope_dimension_count(head_dim)
    if config.get("head_dim"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    params = rope(config)
    writer.add_rope_freq_base(params["theta"])
    if params["type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif params["type"] not in ("default", "llama3"):
        raise UserError(f"GGUF export does not support {params['type']!r} rope scaling",
                        fix="export with llama.cpp's convert_hf_to_gguf.py, which knows more rope variants")


FAMILY = ModelFamily(
    name="llama",
    architectures=("LlamaForCausalLM",),
    config_keys=("hidden_size", "num_hidden_layers"),
    shape=shape,
    layers=lambda config: config.get("num_hidden_layers"),
    context_length=lambda config: config.get("max_position_embeddings"),
    gguf=GgufRules(arch="llama", tied_by_default=False, transform=gguf_transform, add_hparams=add_gguf_hparams,
                   extra_tensors=llama3_rope_freqs),
)

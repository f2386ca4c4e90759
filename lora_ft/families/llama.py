"""Llama-style decoders (Llama 2/3, SmolLM2, and the layout most current models share): q/k/v/o projections,
a gated MLP, RMSNorm and rotary positions."""

from __future__ import annotations

from lora_ft.errors import UserError
from lora_ft.families import ModelFamily, ModelShape


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
                      config.get("max_position_embeddings", 4096), linear, head_dim)


FAMILY = ModelFamily(
    name="llama",
    architectures=("LlamaForCausalLM",),
    config_keys=("hidden_size", "num_hidden_layers"),
    shape=shape,
    layers=lambda config: config.get("num_hidden_layers"),
    context_length=lambda config: config.get("max_position_embeddings"),
)

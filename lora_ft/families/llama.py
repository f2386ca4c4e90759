"""Llama-style decoders (Llama 2/3, SmolLM2, and the layout most current models share): q/k/v/o projections,
a gated MLP, RMSNorm and rotary positions."""

from __future__ import annotations

from lora_ft.errors import UserError
from lora_ft.families import ModelFamily, ModelShape


def dimensions(config: dict, family: str = "") -> tuple[int, int, int, int, int, int]:
    """hidden, intermediate, layers, heads, kv heads and head size of a Llama-layout config.json (head size:
    config.json's ``head_dim`` where it says one, as Gemma and Qwen3 do, else hidden / heads)."""
    try:
        h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
    except KeyError as exc:
        if family:
            raise UserError(f"the {family} model's config.json has no {exc.args[0]}",
                            fix="use --measure, or re-save the model with save_pretrained") from exc
        raise UserError(f"the model's config.json has no {exc.args[0]}; lora-ft plan understands Llama-style and "
                        "GPT-2-style models", fix="use --measure, or plan with a supported model") from exc
    kv_heads = config.get("num_key_value_heads") or heads
    return h, i, layers, heads, kv_heads, config.get("head_dim") or h // heads


def shape(config: dict) -> ModelShape:
    h, i, layers, heads, kv_heads, head_dim = dimensions(config)
    q, kv = heads * head_dim, kv_heads * head_dim
    linear = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
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

"""Phi-3 and Phi-4 style decoders (``Phi3ForCausalLM``): the Llama layout with the q/k/v projections fused into
one ``qkv_proj`` and the gate and up projections into one ``gate_up_proj``. LoRA on a fused layer has one pair of
matrices for the whole fused width, so ``plan`` counts its parameters on these shapes, not on Llama's."""

from __future__ import annotations

from lora_ft.families import ModelFamily, ModelShape
from lora_ft.families.llama import dimensions


def shape(config: dict) -> ModelShape:
    h, i, layers, heads, kv_heads, head_dim = dimensions(config, "Phi-3")
    q, kv = heads * head_dim, kv_heads * head_dim
    linear = {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
    return ModelShape(h, i, layers, heads, kv_heads, config["vocab_size"], config.get("tie_word_embeddings", False),
                      config.get("max_position_embeddings", 4096), linear, head_dim)


FAMILY = ModelFamily(
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    config_keys=(),  # known by its architecture only: its other keys are Llama's
    shape=shape,
    layers=lambda config: config.get("num_hidden_layers"),
    context_length=lambda config: config.get("max_position_embeddings"),
)

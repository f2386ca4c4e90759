"""Gemma, Gemma 2 and Gemma 3 decoders: the Llama layout (q/k/v/o projections, a gated MLP) with a head size of
its own (``head_dim``, not hidden / heads) and the output head always tied to the embedding, which their
config.json files often leave unsaid (Llama's default is untied: the plan would count a 256k-token head twice).
Gemma 3 checkpoints with a vision tower keep the text model's keys under ``text_config``: those are read."""

from __future__ import annotations

from lora_ft.families import ModelFamily, ModelShape
from lora_ft.families.llama import dimensions


def text_config(config: dict) -> dict:
    return config.get("text_config") or config


def shape(config: dict) -> ModelShape:
    config = text_config(config)
    h, i, layers, heads, kv_heads, head_dim = dimensions(config, "Gemma")
    q, kv = heads * head_dim, kv_heads * head_dim
    linear = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return ModelShape(h, i, layers, heads, kv_heads, config["vocab_size"], config.get("tie_word_embeddings", True),
                      config.get("max_position_embeddings", 8192), linear, head_dim)


FAMILY = ModelFamily(
    name="gemma",
    architectures=("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
    config_keys=(),  # known by its architecture only: its other keys are Llama's
    shape=shape,
    layers=lambda config: text_config(config).get("num_hidden_layers"),
    context_length=lambda config: text_config(config).get("max_position_embeddings"),
)

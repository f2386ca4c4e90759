"""GPT-2-style decoders: one fused attention projection and a plain MLP, stored as Conv1D (weights transposed),
LayerNorm and learned positions."""

from __future__ import annotations

from lora_ft.families import ModelFamily, ModelShape


def shape(config: dict) -> ModelShape:
    h = config["n_embd"]
    i = config.get("n_inner") or 4 * h
    linear = {"c_attn": (h, 3 * h), "attn.c_proj": (h, h), "c_fc": (h, i), "mlp.c_proj": (i, h)}
    return ModelShape(h, i, config["n_layer"], config["n_head"], config["n_head"], config["vocab_size"],
                      config.get("tie_word_embeddings", True), config.get("n_positions", 1024), linear)


FAMILY = ModelFamily(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    config_keys=("n_embd", "n_layer"),
    shape=shape,
    layers=lambda config: config.get("n_layer"),
    context_length=lambda config: config.get("n_positions") or config.get("n_ctx"),
)

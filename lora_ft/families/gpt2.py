"""GPT-2-style decoders: one fused attention projection and a plain MLP, stored as Conv1D (weights transposed),
LayerNorm and learned positions."""

from __future__ import annotations

from typing import Any

from lora_ft.families import GgufRules, ModelFamily, ModelShape

CONV1D_LAYERS = ("c_attn", "c_proj", "c_fc")


def shape(config: dict) -> ModelShape:
    h = config["n_embd"]
    i = config.get("n_inner") or 4 * h
    linear = {"c_attn": (h, 3 * h), "attn.c_proj": (h, h), "c_fc": (h, i), "mlp.c_proj": (i, h)}
    return ModelShape(h, i, config["n_layer"], config["n_head"], config["n_head"], config["vocab_size"],
                      config.get("tie_word_embeddings", True), config.get("n_positions", 1024), linear)


def gguf_transform(name: str, source: str, shape: tuple, config: dict) -> tuple[str, tuple]:
    """Conv1D weights are stored (in, out); llama.cpp wants (out, in)."""
    if len(shape) == 2 and source.split(".")[-2] in CONV1D_LAYERS:
        return "transpose", shape[::-1]
    return "", shape


def add_gguf_hparams(writer, config: dict[str, Any]) -> None:
    n_embd = config["n_embd"]
    writer.add_block_count(config["n_layer"])
    writer.add_context_length(config.get("n_positions") or config.get("n_ctx"))
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(config.get("n_inner") or 4 * n_embd)
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_vocab_size(config["vocab_size"])


FAMILY = ModelFamily(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    config_keys=("n_embd", "n_layer"),
    shape=shape,
    layers=lambda config: config.get("n_layer"),
    context_length=lambda config: config.get("n_positions") or config.get("n_ctx"),
    gguf=GgufRules(arch="gpt2", tied_by_default=True, transform=gguf_transform, add_hparams=add_gguf_hparams),
)

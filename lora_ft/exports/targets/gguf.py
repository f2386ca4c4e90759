"""``--format gguf``: GGUF files for llama.cpp and Ollama (with a Modelfile), loaded in llama.cpp and asked one
question where llama-cpp-python is installed."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from lora_ft import console
from lora_ft.exports.checks import write_check
from lora_ft.exports.targets import ExportTarget
from lora_ft.files import staged_directory, write_text_atomic
from lora_ft.rundir.finished import FinishedRun, locate_base

def export_gguf(run: FinishedRun, out_dir: Path, *, types: tuple[str, ...] = ("f16", "q8_0"),
                base: str | None = None) -> dict:
    from lora_ft.exports import gguf_writer as gguf_export
    from lora_ft.exports import ollama
    from lora_ft.exports.merging import merge_run

    gguf_export.check_types(types)  # bad input is refused before the merge, not after it
    base_config = Path(locate_base(run, base)) / "config.json"
    if base_config.is_file():
        gguf_export.architecture(json.loads(base_config.read_text(encoding="utf-8")), base_config.parent)
    with staged_directory(out_dir) as staging:
        merged_dir = staging / "merged-hf"
        report = merge_run(run, merged_dir, dtype="float32", base=base)
        files = gguf_export.export_gguf(merged_dir, staging, types=types)
        tokenizer_template = (merged_dir / "chat_template.jinja")
        template = tokenizer_template.read_text() if tokenizer_template.is_file() else ""
        system = run.config.data.system_prompt
        smallest = min(files, key=lambda p: p.stat().st_size)
        ollama.write_modelfile(smallest, staging, template, [run.end_of_turn], system)
        write_text_atomic(staging / "parity.json", (merged_dir / "parity.json").read_text())
        shutil.rmtree(merged_dir)
        check = check_gguf(smallest, run, report.answers[0]["prompt"], report.answers[0]["reference"])
        check["files"] = [p.name for p in files]
        write_check(staging, check)
    return check


def check_gguf(path: Path, run: FinishedRun, prompt: str, reference: str) -> dict:
    """Load a GGUF file in llama.cpp (llama-cpp-python) and generate; without it, say how to get it."""
    try:
        import llama_cpp
    except ImportError:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        # Readable is not proven: without llama.cpp nothing was generated, and the check says so.
        return {"format": "gguf", "loader": "gguf reader only (llama-cpp-python not installed)", "prompt": prompt,
                "answer": None, "passed": None if len(reader.tensors) > 0 else False,
                "tensors": len(reader.tensors),
                "note": "not loaded in llama.cpp: install the check with pip install 'lora-ft[gguf]' (builds "
                "llama-cpp-python), then export again",
                "checked_at": time.time()}
    console.say(f"loading {path.name} in llama.cpp ...")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0.0)
    answer = out["choices"][0]["message"]["content"].strip()
    return {"format": "gguf", "loader": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "prompt": prompt,
            "answer": answer, "reference_answer": reference, "finish_reason": out["choices"][0]["finish_reason"],
            "passed": bool(answer), "checked_at": time.time()}


def add_gguf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gguf-types", default="f16,q8_0", help="gguf: comma-separated types (default f16,q8_0)")


def _export(run, out: Path, args) -> dict:
    types = tuple(t.strip() for t in args.gguf_types.split(",") if t.strip())
    return export_gguf(run, out, types=types, base=args.base)


TARGET = ExportTarget("gguf", "GGUF files for llama.cpp and Ollama", _export, add_gguf_arguments)

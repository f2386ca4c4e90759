"""``--format gguf``: GGUF files for llama.cpp and Ollama, made by llama.cpp's own converter and quantizer.

The order: the types and tools are checked, the adapter is merged into a float32 copy of its base (with the
parity check every merge makes), llama.cpp's converter writes the f16 file (and any other float type or q8_0
asked for), llama.cpp's quantizer makes the rest from the f16 file, and every file is loaded in llama.cpp, answers
the parity prompts greedily and is compared with the f16 file. The folder then holds the files, a Modelfile,
``parity.json``, a README with the figures, and ``export_check.json``; it appears whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lora_ft import console
from lora_ft.exports.checks import CHECK_PROMPT, write_check
from lora_ft.exports.targets import ExportTarget
from lora_ft.files import staged_directory, write_text_atomic
from lora_ft.rundir.finished import FinishedRun, locate_base

DEFAULT_TYPES = "f16,q8_0,q4_k_m"
ANSWER_TOKENS = 48


def export_gguf(run: FinishedRun, out_dir: Path, *, types: tuple[str, ...] = tuple(DEFAULT_TYPES.split(",")),
                base: str | None = None) -> dict:
    from lora_ft.exports import gguf_card, llama_cpp_tools, ollama
    from lora_ft.exports.merging import PARITY_FILE, PARITY_PROMPTS, merge_run

    plan = llama_cpp_tools.plan_types(types)  # bad input is refused before the merge, not after it
    llama_cpp_tools.check_converter()
    base_config = Path(locate_base(run, base)) / "config.json"
    if base_config.is_file():
        llama_cpp_tools.check_architecture(json.loads(base_config.read_text(encoding="utf-8")), str(base_config))
    llama_cpp_tools.check_llama_cpp(plan)
    with staged_directory(out_dir) as staging:
        merged_dir = staging / "merged-hf"
        merge_report = merge_run(run, merged_dir, dtype="float32", base=base)
        merge_parity = json.loads((merged_dir / PARITY_FILE).read_text())
        prompts, stop_ids, template = _prompts_and_stops(run, merged_dir, [CHECK_PROMPT, *PARITY_PROMPTS])
        paths = {t: llama_cpp_tools.convert(merged_dir, staging / f"model-{t}.gguf", t) for t in plan.converted}
        for path in paths.values():
            llama_cpp_tools.write_end_of_turn(path, run.end_of_turn_id)
        shutil.rmtree(merged_dir)
        paths.update({t: staging / f"model-{t}.gguf" for t in plan.quantized})
        reference = llama_cpp_tools.REFERENCE_TYPE
        order = [reference, *(t for t in plan.types if t != reference)]
        if plan.quantized:
            console.say(f"quantizing to {', '.join(plan.quantized)} with llama.cpp's quantizer ...")
        console.say(f"loading {len(order)} file(s) in llama.cpp: greedy answers compared with f16's ...")
        result = llama_cpp_tools.run_worker({
            "quantize": [{"source": str(paths[reference]), "output": str(paths[t]), "type": t} for t in plan.quantized],
            "models": [{"name": t, "path": str(paths[t])} for t in order],
            "prompts": prompts, "stop_ids": stop_ids, "max_tokens": ANSWER_TOKENS,
            "chat": {"prompt": CHECK_PROMPT, "max_tokens": 40},
        }, staging)
        files = [_file_figures(t, paths[t], result["models"][t], len(prompts), kept=t in plan.types) for t in order]
        if not plan.reference_kept:
            paths.pop(reference).unlink()
        kept = [f for f in files if f.kept]
        smallest = min(kept, key=lambda f: f.bytes)
        ollama.write_modelfile(staging / smallest.file, staging, template, [run.end_of_turn],
                               run.config.data.system_prompt)
        parity = {"merge": merge_parity,
                  "gguf": {"reference": reference, "prompts": len(prompts), "answer_tokens": ANSWER_TOKENS,
                           "llama_cpp": result["llama_cpp_version"], "files": gguf_card.agreement_rows(files)}}
        write_text_atomic(staging / PARITY_FILE, json.dumps(parity, indent=2) + "\n")
        chat = result["models"][smallest.type]["chat"]
        end_of_turn = str(run.end_of_turn_id)
        stops = all(m["end_of_generation"].get(end_of_turn, True) for m in result["models"].values())
        check = {"format": "gguf", "loader": f"llama.cpp (llama-cpp-python {result['llama_cpp_version']})",
                 "prompt": CHECK_PROMPT, "file": smallest.file, "answer": chat["answer"],
                 "finish_reason": chat["finish_reason"], "reference_answer": merge_report.answers[0]["reference"],
                 "files": [f.file for f in kept], "stops_at_end_of_turn": stops,
                 "passed": all(f.answered for f in files) and stops}
        if not stops:
            check["note"] = (f"llama.cpp does not end answers at {run.end_of_turn!r} in these files: it will write the "
                             "next turn itself (the Modelfile's stop parameter covers Ollama)")
        gguf_card.write(staging, gguf_card.readme(
            base_name=run.base_name, run_name=run.run_dir.name, files=files, modelfile_gguf=smallest.file,
            check=check, llama_cpp_version=result["llama_cpp_version"], system_prompt=run.config.data.system_prompt))
        _say_table(files)
        write_check(staging, check)
    return check


def _prompts_and_stops(run: FinishedRun, merged_dir: Path, prompts: list[str]) -> tuple[list[list[int]], list, str]:
    """The prompts as token ids through the run's own tokenizer and chat template, the ids that end an answer,
    and the template (for the Modelfile)."""
    from lora_ft.inference import load_tokenizer, stop_token_ids

    tokenizer = load_tokenizer(run)
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"] for p in prompts]
    template_file = merged_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else (tokenizer.chat_template or "")
    return ids, stop_token_ids(tokenizer, run), template


def _file_figures(type_name: str, path: Path, answered: dict, prompts: int, *, kept: bool):
    from lora_ft.exports import gguf_card, llama_cpp_tools

    figures = gguf_card.GgufFile(type=type_name, file=path.name, bytes=path.stat().st_size,
                                 tensor_types=llama_cpp_tools.tensor_types(path),
                                 answered=answered.get("chat", {}).get("finish_reason") in ("stop", "length"),
                                 prompts=prompts, kept=kept)
    if "top1_same" in answered:
        figures.positions = answered["top1_positions"]
        figures.top1_agreement = answered["top1_same"] / max(1, figures.positions)
        figures.identical_answers = answered["identical_answers"]
    return figures


def _say_table(files) -> None:
    console.say("GGUF files (agreement with f16 over its greedy answers):")
    for f in files:
        agree = "reference" if f.top1_agreement is None else \
            f"next token {f.top1_agreement:6.1%}   identical answers {f.identical_answers}/{f.prompts}"
        console.say(f"  {f.type:<7} {f.size:>9}  {agree}{'' if f.kept else '   (not kept)'}")


def add_gguf_arguments(parser: argparse.ArgumentParser) -> None:
    from lora_ft.exports.llama_cpp_worker import QUANTIZER_TYPES

    parser.add_argument("--gguf-types", default=DEFAULT_TYPES,
                        help=f"gguf: comma-separated types (default {DEFAULT_TYPES}); f32, f16, bf16, q8_0 or "
                        f"{', '.join(t for t in QUANTIZER_TYPES if t != 'q8_0')}")


def _export(run, out: Path, args) -> dict:
    return export_gguf(run, out, types=tuple(args.gguf_types.split(",")), base=args.base)


TARGET = ExportTarget("gguf", "GGUF files for llama.cpp and Ollama (llama.cpp's converter and quantizer)", _export,
                      add_gguf_arguments)

"""What a GGUF export says about itself: each file's agreement with the f16 file (``parity.json``) and the README a
person reads (which file to pick, how close each is to f16, how to run it in llama.cpp and Ollama)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class GgufFile:
    type: str
    file: str
    bytes: int
    tensor_types: dict[str, int]
    answered: bool  # loaded in llama.cpp and answered a chat message to its end (a stop token or the token limit)
    top1_agreement: float | None = None  # next-token choice equal to f16's, over f16's greedy answers
    positions: int = 0
    identical_answers: int | None = None
    prompts: int = 0
    kept: bool = True  # False: the f16 reference, made only to quantize from and compare with

    @property
    def size(self) -> str:
        size = float(self.bytes)
        for unit in ("B", "KB", "MB", "GB"):
            if size < 1000 or unit == "GB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1000
        return ""


def agreement_rows(files: list[GgufFile]) -> list[dict]:
    return [asdict(f) for f in files]


def table(files: list[GgufFile]) -> list[str]:
    lines = ["| type | file | size | next token = f16's | greedy answers = f16's | tensor types |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in files:
        if f.top1_agreement is None:
            agree, same = "reference", "reference"
        else:
            agree = f"{f.top1_agreement:.1%} of {f.positions}"
            same = f"{f.identical_answers} of {f.prompts}"
        name = f.file if f.kept else f"(not kept: {f.file})"
        types = ", ".join(f"{k.lower()} {v}" for k, v in f.tensor_types.items())
        lines.append(f"| {f.type} | {name} | {f.size} | {agree} | {same} | {types} |")
    return lines


def readme(*, base_name: str, run_name: str, files: list[GgufFile], modelfile_gguf: str, check: dict,
           llama_cpp_version: str, system_prompt: str | None) -> str:
    lines = [
        f"# {run_name}: GGUF files for llama.cpp and Ollama",
        "",
        f"The LoRA adapter trained by lora-ft on **{base_name}**, merged into its base and converted with llama.cpp's "
        "own converter; the quantized types were made by llama.cpp's own quantizer from the f16 file.",
        "",
        "## Files and how close each is to f16",
        "",
        *table(files),
        "",
        "Each file was loaded in llama.cpp (llama-cpp-python "
        f"{llama_cpp_version}) and answered the same prompts greedily. *Next token = f16's*: at each position of the "
        "f16 file's answers, how often this file ranks the same token first given the same text before it. "
        "*Greedy answers = f16's*: answers identical token for token. k-quants (q4_k_m and the like) need rows that "
        "are a multiple of 256 values; llama.cpp quantizes other tensors to a fallback type, listed under tensor "
        "types.",
        "",
        "## Run it",
        "",
        "```bash",
        f"llama-cli -m {modelfile_gguf} -cnv   # llama.cpp: chat, with the template and stop tokens in the file",
        f"ollama create {run_name.lower()} -f Modelfile && ollama run {run_name.lower()}   # Ollama ({modelfile_gguf})",
        "```",
        "",
        "The chat template and the stop tokens are written into every file; the Modelfile repeats them for Ollama"
        + (" with the run's system prompt." if system_prompt else "."),
        "",
        "## Check",
        "",
        f"{check['loader']}: {'passed' if check['passed'] else 'FAILED'}. Prompt: {check['prompt']!r}; "
        f"answer: {check.get('answer')!r}.",
        "",
    ]
    return "\n".join(lines)


def write(directory: Path, text: str) -> None:
    from lora_ft.files import write_text_atomic

    write_text_atomic(directory / "README.md", text)

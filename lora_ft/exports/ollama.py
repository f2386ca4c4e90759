"""Ollama's Modelfile for a GGUF export: the chat template in Go template form, stop tokens, system message."""

from __future__ import annotations

import re
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic

def prepare_out_dir(out_dir: Path) -> None:
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror or exc}",
                        fix="choose a directory you can write to, with room for the model files") from exc


def write_modelfile(gguf_path: Path, out_dir: Path, chat_template: str, stop_tokens: list[str],
                    system_prompt: str | None = None) -> Path:
    """Write ``out_dir/Modelfile`` for ``ollama create NAME -f Modelfile``; return its path.

    A ChatML chat template (``<|im_start|>`` / ``<|im_end|>``) becomes the equivalent Ollama Go template, including a
    default system message the template adds when the conversation has none. For any other template no TEMPLATE is
    written and Ollama falls back to the chat template stored in the GGUF file.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    prepare_out_dir(out_dir)
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

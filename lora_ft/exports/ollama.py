"""Ollama's Modelfile for a GGUF export: the chat template in Go template form, stop tokens, system message."""

from __future__ import annotations

import re
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic
from lora_ft.tool_template import is_hermes

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
    if is_hermes(chat_template):
        return _hermes_template(default_system)
    system = "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    if default_system is not None:
        system += f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n"
    return (
        system + "{{ end }}\n"
        "{{- range .Messages }}\n"
        '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n'
        "{{- end }}<|im_start|>assistant\n"
    )




def _hermes_template(default_system: str | None) -> str:
    """The Go template that renders a conversation as the ChatML template wrapped by lora-ft's hermes prelude
    (``data_templates/tools/hermes.jinja``) renders it: the tool list in the system turn (after the system message,
    or alone when there is none), the model's default system message when there is neither, each call as
    ``<tool_call>`` JSON after the assistant's text, consecutive tool results merged into one user turn of
    ``<tool_response>`` blocks, and the generation prompt.

    Ollama returns the calls a model writes as ``tool_calls``: it takes the text that opens the first ``if`` on
    the field ``.ToolCalls`` as the tag to look for (``tools/template.go``: ``parseTag``), and gives up on the tag
    when an action or another ``if`` comes before that text. So that branch starts with ``<tool_call>``: the newline
    between calls follows each call but the last, and the one after the text comes before the branch. (The
    arguments' ``{`` is an action, ``{{ "{" }}``, since a ``{`` just before ``{{`` would open the action.)

    Where it cannot be the same, because Ollama prints JSON with Go's ``encoding/json`` (``template/template.go``:
    ``json`` is ``json.Marshal``):

    - A tool in the list is ``json .Function`` (``{{ .Function }}`` prints a Go struct, not JSON, since Ollama
      0.14): compact (``{"name":"f","description":...}``, not Python's ``{"name": "f", ...}``), with the fields
      Ollama's types know, in their order (``name``, ``description`` even when empty, ``parameters`` with
      ``type``, ``required``, ``properties``; a property's ``type``, ``items``, ``description``, ``enum``...), the
      properties by name in sorted order, other schema keys dropped.
    - A call's arguments are written key by key with Python's ``", "`` and ``": "`` separators, but in sorted key
      order (Ollama keeps them in a Go map) and each value compact (``{"a":1}``), so nested objects and lists
      differ from the training text; arguments whose keys come sorted and whose values are strings, numbers or
      booleans come out the same.
    - Go's JSON escapes ``<``, ``>`` and ``&`` in strings (``\\u003c``...) and writes non-ASCII text as it is;
      Ollama reads every number as a float64 and writes it the shortest way (``2.0`` as ``2``).

    The assistant's reasoning (the wrapper's ``<think>`` block, Ollama's ``.Thinking``) is not written.

    Ollama merges consecutive messages of one role other than ``tool`` into one, and puts every system message in
    ``.System``; the template writes ``.System`` first and skips the system messages where they stand.
    """
    fallback = f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    return (
        "{{- if or .System .Tools }}<|im_start|>system\n"
        "{{ if .System }}{{ .System }}{{ if .Tools }}\n\n{{ end }}{{ end }}"
        "{{ if .Tools }}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        "{{ range .Tools }}\n{{ json .Function }}{{ end }}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within <tool_call>"
        "</tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call>{{ end }}<|im_end|>\n"
        + fallback + "{{ end }}\n"
        '{{- $prev := "" }}\n'
        "{{- range $m := .Messages }}\n"
        '{{- if and (eq $prev "tool") (ne $m.Role "tool") }}<|im_end|>\n{{ end }}\n'
        '{{- if eq $m.Role "tool" }}{{ if eq $prev "tool" }}\n{{ else }}<|im_start|>user\n{{ end }}'
        "<tool_response>\n{{ $m.Content }}\n</tool_response>\n"
        '{{- else if eq $m.Role "assistant" }}<|im_start|>assistant\n{{ $m.Content }}'
        "{{ if and $m.Content $m.ToolCalls }}\n{{ end }}\n"
        "{{- if .ToolCalls }}{{ range $j, $call := .ToolCalls }}<tool_call>\n"
        '{"name": {{ json $call.Function.Name }}, "arguments": {{ "{" }}{{ $sep := "" }}'
        "{{ range $key, $value := $call.Function.Arguments }}"
        '{{ $sep }}{{ json $key }}: {{ json $value }}{{ $sep = ", " }}{{ end }}}}\n</tool_call>'
        "{{ if ne (len (slice $m.ToolCalls $j)) 1 }}\n{{ end }}{{ end }}{{ end }}<|im_end|>\n"
        '{{ else if ne $m.Role "system" }}<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n{{ end }}\n'
        "{{- $prev = $m.Role }}\n"
        "{{- end }}\n"
        '{{- if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
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

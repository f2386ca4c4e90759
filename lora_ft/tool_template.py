"""Whether a chat template really renders tool calls and reasoning, and the run's template when it does not.

A template is asked by rendering: a probe conversation whose assistant calls a function with a distinctive
argument (and, apart, answers with distinctive reasoning) must come out with the function's name and the argument
inside the assistant's turn, the tool list before it and the result after it. Reading a template's source would be
fooled by templates that mention ``tools`` and then drop the calls (the embedded model's ChatML template renders an
assistant turn that only calls as an empty turn, without a word).

A template that fails is wrapped by ``data_templates/tools/hermes.jinja``: the calls, results, tool list and
reasoning become text in the hermes format, and the model's own template renders that text with its own markup.
The wrapped template is the run's template: saved with the adapter and used by every export.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

HERMES_MARK = "{#- lora-ft: tool calls and reasoning in the hermes format"
PROBE_TOOLS = [{"type": "function", "function": {
    "name": "look_up_probe_record", "description": "Look up a record.",
    "parameters": {"type": "object", "properties": {"record": {"type": "string"}}, "required": ["record"]}}}]
_CALL = {"role": "assistant", "content": "", "tool_calls": [{"id": "call_probe01", "type": "function", "function": {
    "name": "look_up_probe_record", "arguments": {"record": "zebra-1739"}}}]}
PROBE_CALL = [{"role": "user", "content": "Find record zebra-1739."}, _CALL,
              {"role": "tool", "tool_call_id": "call_probe01", "name": "look_up_probe_record",
               "content": "okapi-4261"},
              {"role": "assistant", "content": "It is okapi-4261."}]
PROBE_REASONING = [{"role": "user", "content": "Is it late?"},
                   {"role": "assistant", "content": "Yes.", "reasoning_content": "ibis-5582 says it is late."}]

Render = Callable[[list, bool, "list | None"], str]  # (messages, add_generation_prompt, tools) -> text


def _answer(render: Render, messages: list, at: int, tools: list | None) -> tuple[str, str] | None:
    """(the text before the assistant turn at ``at``, the turn's text), or None where the template fails."""
    try:
        before = render(messages[:at], True, tools)
        upto = render(messages[:at + 1], False, tools)
    except Exception:  # noqa: BLE001 - a template that raises on these turns does not render them
        return None
    return (before, upto[len(before):]) if upto.startswith(before) else None


def renders_tools(render: Render) -> bool:
    """The tool list comes before the call, the call's function and argument inside the assistant's turn, and the
    result before the final answer."""
    call = _answer(render, PROBE_CALL, 1, PROBE_TOOLS)
    final = _answer(render, PROBE_CALL, 3, PROBE_TOOLS)
    return (call is not None and final is not None and "look_up_probe_record" in call[0]
            and all(part in call[1] for part in ("look_up_probe_record", "zebra-1739"))
            and "okapi-4261" in final[0][len(call[0]) + len(call[1]):])


def renders_reasoning(render: Render) -> bool:
    """The reasoning inside the assistant's turn."""
    answer = _answer(render, PROBE_REASONING, 1, None)
    return answer is not None and "ibis-5582" in answer[1]


def _takes_system(render: Render) -> bool:
    try:
        return "gnu-3307" in render([{"role": "system", "content": "gnu-3307"}, {"role": "user", "content": "Hi"}],
                                    True, None)
    except Exception:  # noqa: BLE001 - templates that refuse a system turn (Gemma 2's) raise
        return False


def hermes_template(template: str, render_with: Callable[[str], Render]) -> str:
    """``template`` wrapped so that it renders tool calls, results and reasoning in the hermes format."""
    prelude = resources.files("lora_ft.data_templates").joinpath("tools", "hermes.jinja").read_text(encoding="utf-8")
    prelude = prelude.rstrip()
    assert prelude.endswith("-%}"), "the prelude ends with a tag"
    place = "system" if _takes_system(render_with(template)) else "user"
    wrapped = f"{{%- set lora_ft_tools_in = '{place}' -%}}\n{prelude[:-3]}%}}{template}"
    assert own_template(wrapped) == template, "the prelude ends with PRELUDE_END"
    return wrapped


def is_hermes(template: str) -> bool:
    return HERMES_MARK in template


PRELUDE_END = "{%- set tools = none %}"  # the wrapper's last tag, which the model's own template follows


def own_template(template: str) -> str | None:
    """The model's own template inside a hermes-wrapped one (what renders a conversation without tools, calls or
    reasoning, exactly as the wrapped one does); None for a template that is not wrapped."""
    if not is_hermes(template) or PRELUDE_END not in template:
        return None
    return template.split(PRELUDE_END, 1)[1]


def tool_ready(template: str, render_with: Callable[[str], Render]) -> tuple[str, str | None]:
    """The template to train with: ``template`` itself when it renders tool calls and reasoning, else wrapped
    (:func:`hermes_template`); and what was done, in words (None when nothing was)."""
    if is_hermes(template):
        return template, None
    render = render_with(template)
    tools, reasoning = renders_tools(render), renders_reasoning(render)
    if tools and reasoning:
        return template, None
    missing = " and ".join(x for x, ok in (("tool calls", tools), ("reasoning", reasoning)) if not ok)
    return hermes_template(template, render_with), f"{missing} in the hermes format (the template has no place for them)"


VLLM_TOOL_FLAGS = "--enable-auto-tool-choice --tool-call-parser hermes"


def serving_note(hermes: bool) -> str:
    """What a person serving a model trained with the hermes wrapper needs to know about its tool calls
    (Markdown); nothing for another template."""
    if not hermes:
        return ""
    return ("\n## Tool calls\n\nThis model writes tool calls in the hermes format, "
            "`<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>`, and reads the tool list and the tools' "
            "results as the chat template here renders them. Serve it with vLLM's "
            f"`{VLLM_TOOL_FLAGS}` and pass `tools` in the request: the calls come back parsed, as `tool_calls`. "
            "llama.cpp (the GGUF file's template) and Ollama (the Modelfile's) render the calls the same way.\n")

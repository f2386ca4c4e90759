"""Agents' data: tool lists, calls, results and reasoning read from each format, rendered by the run's template
(the model's own where it renders calls, else the hermes wrapper), trained on the assistant's text and calls only,
and every bad row named by file and line."""

from __future__ import annotations

import json

import pytest

from lora_ft.config import load_config
from lora_ft.data import read_dataset
from lora_ft.data.tokenization import IGNORE, ChatRenderer, encode_conversation
from lora_ft.errors import UserError
from lora_ft.formats import normalize_row
from lora_ft.model import load_chat_tokenizer
from lora_ft.tool_template import hermes_template, renders_reasoning, renders_tools, tool_ready

from .conftest import CHATML, write_jsonl

STATUTE = {"type": "function", "function": {
    "name": "get_statute", "description": "The text of a section of a code.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}, "section": {"type": "string"}},
                   "required": ["code", "section"], "additionalProperties": False}}}
DEADLINE = {"type": "function", "function": {
    "name": "compute_deadline", "description": "The due date.",
    "parameters": {"type": "object", "properties": {
        "start_date": {"type": "string"}, "days": {"type": "integer", "minimum": 1},
        "business_days": {"type": "boolean"}}, "required": ["start_date", "days"]}}}
TOOLS = [STATUTE, DEADLINE]
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_statute", "arguments": {"code": "UCC", "section": "2-207"}}}
CALL_TEXT = '<tool_call>\n{"name": "get_statute", "arguments": {"code": "UCC", "section": "2-207"}}\n</tool_call>'


def _openai_row(**assistant_extra) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You are a legal assistant."},
        {"role": "user", "content": "What does UCC 2-207 say?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL], **assistant_extra},
        {"role": "tool", "tool_call_id": "call_1", "content": "Additional terms in an acceptance."},
        {"role": "assistant", "content": "It covers additional terms in an acceptance."}]}


def _sharegpt_row() -> dict:
    return {"system": "You are a legal assistant.",
            "tools": json.dumps([STATUTE["function"], DEADLINE["function"]]),
            "conversations": [
                {"from": "human", "value": "What does UCC 2-207 say?"},
                {"from": "function_call", "value": json.dumps({"name": "get_statute",
                                                               "arguments": {"code": "UCC", "section": "2-207"}})},
                {"from": "observation", "value": "Additional terms in an acceptance."},
                {"from": "gpt", "value": "It covers additional terms in an acceptance."}]}


@pytest.fixture(scope="module")
def hermes(chat_tokenizer) -> ChatRenderer:
    template, added = tool_ready(CHATML, lambda text: ChatRenderer.rendering_with(chat_tokenizer, text))
    assert added == "tool calls and reasoning in the hermes format (the template has no place for them)"
    return ChatRenderer(chat_tokenizer, template)


def _trained(renderer: ChatRenderer, sample) -> tuple[str, list[str]]:
    """The rendered text and each run of trained tokens, decoded."""
    text, ids, labels, _ = encode_conversation(sample.messages, renderer, "answers", sample.tools)
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            run.append(token)
        elif run:
            runs.append(renderer.tokenizer.decode(run))
            run = []
    return text, runs + ([renderer.tokenizer.decode(run)] if run else [])


def test_an_openai_tool_conversation_trains_on_the_call_and_the_answer_only(hermes):
    text, trained = _trained(hermes, normalize_row(_openai_row(), "messages"))
    assert trained == [CALL_TEXT + "<|im_end|>", "It covers additional terms in an acceptance.<|im_end|>"]
    tools_block = text[:text.index("<|im_start|>user")]  # the tool list in the system turn, never trained
    assert tools_block.startswith("<|im_start|>system\nYou are a legal assistant.\n\n# Tools\n")
    assert json.dumps(STATUTE["function"]) in tools_block and json.dumps(DEADLINE["function"]) in tools_block
    assert "<|im_start|>user\n<tool_response>\nAdditional terms in an acceptance.\n</tool_response><|im_end|>" in text


def test_sharegpt_function_call_rows_are_the_openai_conversation(hermes):
    openai, sharegpt = normalize_row(_openai_row(), "messages"), normalize_row(_sharegpt_row(), "sharegpt")
    assert sharegpt.tools == openai.tools
    assert _trained(hermes, sharegpt) == _trained(hermes, openai)  # the same text and trained tokens (ids aside)


def test_arguments_written_as_a_json_string_are_the_object(hermes):
    row = _openai_row()
    row["messages"][2]["tool_calls"] = [{**CALL, "function": {"name": "get_statute",
                                                               "arguments": '{"code": "UCC", "section": "2-207"}'}}]
    assert _trained(hermes, normalize_row(row, "messages")) == _trained(hermes, normalize_row(_openai_row(), "messages"))


@pytest.mark.parametrize("written", ["reasoning_content", "reasoning", "think"])
def test_reasoning_is_trained_before_the_call_or_dropped(chat_tokenizer, hermes, written):
    thought = "The user names a code and a section, so the statute tool answers it."
    row = _openai_row()
    if written == "think":
        row["messages"][2]["content"] = f"<think>{thought}</think>"
    else:
        row["messages"][2][written] = thought
    sample = normalize_row(row, "messages")
    assert sample.messages[2]["reasoning_content"] == thought and sample.messages[2]["content"] == ""
    _, trained = _trained(hermes, sample)
    assert trained[0] == f"<think>\n{thought}\n</think>\n\n{CALL_TEXT}<|im_end|>"
    dropping = ChatRenderer(chat_tokenizer, hermes.template, reasoning="drop")
    text, trained = _trained(dropping, sample)
    assert thought not in text and trained[0] == CALL_TEXT + "<|im_end|>"


def test_the_probe_finds_the_template_that_drops_calls_and_keeps_one_that_renders_them(chat_tokenizer):
    render = lambda text: ChatRenderer.rendering_with(chat_tokenizer, text)  # noqa: E731
    assert not renders_tools(render(CHATML)) and not renders_reasoning(render(CHATML))
    # a template that mentions tools and drops the calls is not fooled into passing
    mentions = "{% if tools %}{{ tools | tojson }}{% endif %}" + CHATML
    assert not renders_tools(render(mentions))
    assert tool_ready(NATIVE, render) == (NATIVE, None)  # renders both: kept as it is
    wrapped = hermes_template(CHATML, render)
    assert renders_tools(render(wrapped)) and renders_reasoning(render(wrapped))
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}]
    for upto, prompt in ((3, False), (4, True), (2, True)):  # conversations without tools: the model's own text
        assert render(wrapped)(plain[:upto], prompt, None) == render(CHATML)(plain[:upto], prompt, None)


def test_a_template_without_a_system_turn_gets_the_tools_in_the_first_user_turn(chat_tokenizer, hermes):
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}" + CHATML)
    render = lambda text: ChatRenderer.rendering_with(chat_tokenizer, text)  # noqa: E731
    renderer = ChatRenderer(chat_tokenizer, hermes_template(no_system, render))
    row = _openai_row()
    del row["messages"][0]
    text, trained = _trained(renderer, normalize_row(row, "messages"))
    assert text.startswith("<|im_start|>user\n# Tools\n") and "What does UCC 2-207 say?" in text
    assert trained[0] == CALL_TEXT + "<|im_end|>"


def test_a_chosen_template_that_drops_calls_is_refused(tmp_path, tiny_llama):
    template = tmp_path / "plain_chatml.jinja"
    template.write_text(CHATML)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model:\n  base: {tiny_llama}\n  chat_template: {template}\ndata:\n  train:\n"
                      f"    - path: {write_jsonl(tmp_path / 'tools.jsonl', [_openai_row()])}\n  max_seq_length: 256\n")
    renderer = load_chat_tokenizer(load_config(config), load_config(config).config.model).renderer
    with pytest.raises(UserError, match="drops tool calls") as caught:
        encode_conversation(normalize_row(_openai_row(), "messages").messages, renderer, "answers", TOOLS)
    assert "model.chat_template: auto" in caught.value.fix


def test_every_bad_tool_row_is_named_by_file_and_line(tmp_path):
    def row(*turns, tools=TOOLS):
        return {"tools": tools, "messages": [{"role": "user", "content": "Q"}, *turns]}

    def calling(name="get_statute", arguments=None, call_id="call_1"):
        return {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": name, "arguments": {"code": "UCC", "section": "1"} if arguments is None else arguments}}]}

    answer, result = {"role": "assistant", "content": "A"}, {"role": "tool", "content": "r"}
    rows = [
        _openai_row(),  # 1: good
        row(calling("get_weather"), result, answer),  # 2
        row(calling(arguments='{"code": "UCC", '), result, answer),  # 3
        row(calling(arguments={"code": "UCC"}), result, answer),  # 4
        row(calling(name="compute_deadline", arguments={"start_date": "2025-01-01", "days": "ten"}), result, answer),  # 5
        row({"role": "tool", "content": "r"}, answer),  # 6
        row(calling(), {"role": "tool", "tool_call_id": "call_9", "content": "r"}, answer),  # 7
        row(calling(), {"role": "tool", "content": "r"}, answer, tools=None),  # 8
        row(answer, tools="[{not json"),  # 9
        {"tools": TOOLS, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]},  # 10
    ]
    (tmp_path / "cfg.yaml").write_text(f"model:\n  base: embedded\ndata:\n  train:\n    - path: "
                                       f"{write_jsonl(tmp_path / 'agents.jsonl', rows)}\n  eval_fraction: 0\n")
    loaded = load_config(tmp_path / "cfg.yaml")
    samples, report = read_dataset(loaded.config.data.train[0], loaded, None)
    assert len(samples) == 1 and report.dropped_count == 9
    where = {locations[0].rsplit(":", 1)[1]: reason for reason, locations in report.dropped.items()}
    assert where == {
        "2": "a call to 'get_weather', which is not in the row's tools (get_statute, compute_deadline)",
        "3": "the arguments of the call to 'get_statute' are not valid JSON",
        "4": "the arguments of the call to 'get_statute' break its schema: 'section' is a required property",
        "5": "the arguments of the call to 'compute_deadline' break its schema: 'ten' is not of type 'integer' "
             "(at 'days')",
        "6": "a tool result with no call before it",
        "7": "a tool result's tool_call_id 'call_9' matches no call before it",
        "8": "the assistant calls 'get_statute' but the row has no 'tools'",
        "9": "'tools' is not valid JSON (Expecting property name enclosed in double quotes at character 2)",
        "10": "empty answer",
    }
    assert all(loc.startswith(str(tmp_path / "agents.jsonl")) or "agents.jsonl" in loc
               for locs in report.dropped.values() for loc in locs)


def test_preference_pairs_on_tool_conversations_keep_the_tools_and_the_calls(hermes):
    from lora_ft.data.preference_tokens import encode_preference

    wrong = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "compute_deadline",
                                          "arguments": {"start_date": "2025-01-01", "days": 3}}}]}
    sample = normalize_row({"prompt": [{"role": "user", "content": "What does UCC 2-207 say?"}],
                            "chosen": [{"role": "assistant", "content": "", "tool_calls": [CALL]}],
                            "rejected": [wrong], "tools": TOOLS}, "preference")
    assert sample.tools == TOOLS
    prompt, chosen, rejected = encode_preference(sample, hermes)
    decode = hermes.tokenizer.decode
    assert "# Tools" in decode(prompt) and decode(chosen) == CALL_TEXT + "<|im_end|>"
    assert '"name": "compute_deadline"' in decode(rejected)


# A template that renders calls, results and reasoning itself (the shape of Qwen3's), kept as it is.
NATIVE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}"
    "</tool_response><|im_end|>\n{% elif m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_data_report_marks_a_tool_conversations_trained_tokens_and_counts_calls(tmp_path, capsys):
    from .conftest import run_cli

    plain = {"messages": [{"role": "user", "content": "What is consideration?"},
                          {"role": "assistant", "content": "Something of value."}]}
    thinking = _openai_row(reasoning_content="The statute tool answers it.")
    rows = [plain, _openai_row(), thinking, plain | {"tools": TOOLS}]
    data = write_jsonl(tmp_path / "agents.jsonl", rows)
    config = tmp_path / "cfg.yaml"
    # the embedded model's tokenizer (no weights are loaded): the tool list fits its context
    config.write_text(f"model:\n  base: embedded\ndata:\n  train:\n    - path: {data}\n  eval_fraction: 0\n")
    code, out, _ = run_cli(capsys, ["data", str(config)])
    assert code == 0, out
    counts = out[out.index("== tools and reasoning (train)"):out.index("== duplicates")]
    assert "tools listed in 3 of 4 conversations; 2 call a tool" in counts
    assert "calls: 2 (0 turns call several at once), results: 2" in counts
    assert "functions called: get_statute 2" in counts and "reasoning: 1 assistant turns" in counts
    # the first sample has no call: the first that has one is shown too, its call and answer marked as trained
    assert "== sample 2: " in out and f"[[{CALL_TEXT}<|im_end|>]]" in out
    assert "[[It covers additional terms in an acceptance.<|im_end|>]]" in out
    assert "[[<tool_response>" not in out and "[[# Tools" not in out


def test_dpo_trains_on_tool_calls_with_the_hermes_template(tmp_path):
    """Pairs of a right and a wrong call train (the chosen call's reward rises above the rejected one's), and the
    adapter carries the hermes template its calls were rendered with."""
    from lora_ft.config import load_config
    from lora_ft.tool_template import is_hermes
    from lora_ft.commands.train import train

    from .conftest import build_llama, build_tokenizer, write_config

    model = tmp_path / "model"
    build_llama(model, len(build_tokenizer(model)), layers=2)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))  # the tool list

    def pair(i: int) -> dict:
        section = f"2-{200 + i}"
        call = lambda name, arguments: [{"role": "assistant", "content": "", "tool_calls": [  # noqa: E731
            {"type": "function", "function": {"name": name, "arguments": arguments}}]}]
        return {"prompt": [{"role": "user", "content": f"What does UCC {section} say?"}], "tools": [STATUTE],
                "chosen": call("get_statute", {"code": "UCC", "section": section}),
                "rejected": [{"role": "assistant", "content": "I cannot look that up."}]}

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [pair(i) for i in range(8)])
    write_jsonl(data / "eval.jsonl", [pair(i) for i in range(50, 54)])
    path = write_config(tmp_path / "dpo.yaml", model, data, output_dir=tmp_path / "run")
    path.write_text("method: dpo\n" + path.read_text().replace("max_seq_length: 128", "max_seq_length: 1024")
                    .replace("max_steps: 3", "max_steps: 6").replace("learning_rate: 1.0e-2", "learning_rate: 1.0e-3"))
    result = train(load_config(path), say=lambda line: None)
    assert result.outcome.rewards_after["accuracy"] > 0.5 and result.outcome.rewards_after["margin"] > 0
    assert is_hermes((result.adapter_dir / "chat_template.jinja").read_text())

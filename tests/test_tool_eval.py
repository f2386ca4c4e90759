"""Tool calls: answers read back, scored against the reference turns, in `lora-ft eval`, `generate` and `chat`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_ft import cli
from lora_ft.evaluation.tool_calls import parse_tool_calls, rates, tool_turns, turn_scores
from lora_ft.samples import Sample
from tests.conftest import build_llama, build_tokenizer, run_cli, write_config, write_jsonl

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER, TIME]


def call(name: str, arguments: dict, number: int = 1) -> dict:
    return {"type": "function", "id": f"call_{number}", "function": {"name": name, "arguments": arguments}}


def block(name: str, arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


# --- reading an answer's calls ------------------------------------------------------------------------------------

def test_hermes_blocks_are_read_after_the_reasoning_with_the_text_apart():
    answer = parse_tool_calls("<think>\nThe user wants Paris.\n</think>\n\nLet me look." + block("get_weather",
                                                                                              {"city": "Paris"}))
    assert answer.reasoning == "The user wants Paris." and answer.text == "Let me look."
    assert [(c.name, c.arguments, c.valid) for c in answer.calls] == [("get_weather", {"city": "Paris"}, True)]
    assert answer.calls[0].shown() == 'get_weather({"city": "Paris"})'


def test_parallel_calls_and_an_unclosed_last_block():
    text = block("get_weather", {"city": "Oslo"}) + "\n" + block("get_time", {"city": "Oslo"})
    assert [c.name for c in parse_tool_calls(text).calls] == ["get_weather", "get_time"]
    cut_short = block("get_weather", {"city": "Oslo"}) + '\n<tool_call>\n{"name": "get_time", "arguments": ' \
        '{"city": "Rome"}}'
    calls = parse_tool_calls(cut_short).calls
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Rome"})]
    assert all(c.valid for c in calls)


def test_a_call_that_is_not_json_or_has_no_name_is_read_as_an_invalid_call():
    calls = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>'
                             '<tool_call>{"arguments": {}}</tool_call>'
                             '<tool_call>{"name": "get_time", "arguments": ["Rome"]}</tool_call>').calls
    assert [c.valid for c in calls] == [False, False, False]
    assert calls[0].problem.startswith("not valid JSON") and calls[1].problem == "no function name"
    assert calls[2].problem == "its arguments are list, not an object"
    assert calls[0].shown().startswith("(not a valid call: not valid JSON")


def test_a_bare_json_answer_is_one_call_and_other_json_is_text():
    llama = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Lima"}}')
    assert [(c.name, c.arguments) for c in llama.calls] == [("get_weather", {"city": "Lima"})] and llama.text == ""
    openai = parse_tool_calls('{"name": "get_weather", "arguments": "{\\"city\\": \\"Lima\\"}"}')
    assert openai.calls[0].arguments == {"city": "Lima"}
    assert parse_tool_calls('{"temperature": 21}').calls == []
    assert parse_tool_calls("It is sunny in Lima.").text == "It is sunny in Lima."


# --- scoring one turn ---------------------------------------------------------------------------------------------

CALLING = {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Oslo", "days": 2}),
                                                              call("get_time", {"city": "Oslo"}, 2)]}


def scores(text: str, reference: dict = CALLING) -> dict:
    return turn_scores(parse_tool_calls(text), reference, TOOLS)


def test_the_same_calls_in_another_order_and_spacing_are_exact():
    text = block("get_time", {"city": "Oslo"}) + block("get_weather", {"days": 2.0, "city": "Oslo"})
    assert scores(text) == {"called": True, "valid_json": True, "known_function": True, "schema_valid": True,
                            "exact": True}


def test_each_metric_needs_the_one_before_it():
    assert scores("It is sunny.") == dict.fromkeys(("called", "valid_json", "known_function", "schema_valid",
                                                    "exact"), False)
    bad_json = block("get_time", {"city": "Oslo"}) + '<tool_call>{"name": "get_weather", </tool_call>'
    assert scores(bad_json) == {"called": True, "valid_json": False, "known_function": False, "schema_valid": False,
                                "exact": False}
    unknown = block("get_time", {"city": "Oslo"}) + block("get_forecast", {"city": "Oslo", "days": 2})
    assert scores(unknown) == {"called": True, "valid_json": True, "known_function": False, "schema_valid": False,
                               "exact": False}
    wrong_type = block("get_time", {"city": "Oslo"}) + block("get_weather", {"city": "Oslo", "days": "2"})
    assert scores(wrong_type) == {"called": True, "valid_json": True, "known_function": True, "schema_valid": False,
                                  "exact": False}
    one_missing = block("get_time", {"city": "Oslo"})
    assert scores(one_missing)["schema_valid"] and not scores(one_missing)["exact"]
    twice = block("get_time", {"city": "Oslo"}) * 2 + block("get_weather", {"city": "Oslo", "days": 2})
    assert not scores(twice)["exact"]
    other_value = block("get_time", {"city": "Oslo"}) + block("get_weather", {"city": "Bergen", "days": 2})
    assert scores(other_value)["schema_valid"] and not scores(other_value)["exact"]


def test_a_text_turn_scores_whether_the_model_called_anyway_and_rates_count_their_turns():
    text_turn = {"role": "assistant", "content": "It is sunny in Oslo."}
    assert scores("Sunny.", text_turn) == {"called_anyway": False}
    assert scores('<tool_call>{"name": </tool_call>', text_turn) == {"called_anyway": True}
    summary = rates([scores(block("get_time", {"city": "Oslo"})), scores("no"), scores("Sunny.", text_turn)])
    assert summary.rates["called"] == 0.5 and summary.rates["exact"] == 0.0 and summary.n["called"] == 2
    assert summary.rates["called_anyway"] == 0.0 and summary.n["called_anyway"] == 1


# --- the turns to answer ------------------------------------------------------------------------------------------

def weather_conversation(city: str, index: int) -> list[dict]:
    """A user asks, the assistant calls, the tool answers, the assistant answers in text."""
    return [{"role": "user", "content": f"Weather in {city} for {index} days?"},
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": city, "days": index})]},
            {"role": "tool", "content": f"sunny {index}", "name": "get_weather", "tool_call_id": "call_1"},
            {"role": "assistant", "content": f"It is sunny in {city}."}]


def test_every_assistant_turn_of_a_conversation_with_tools_is_a_turn_to_answer():
    thinking = weather_conversation("Oslo", 1)
    thinking[1] = {**thinking[1], "reasoning_content": "Oslo, one day."}
    samples = [Sample("eval.jsonl:1", messages=thinking + [{"role": "user", "content": "And the time?"},
                                                           {"role": "assistant", "content": "",
                                                            "tool_calls": [call("get_time", {"city": "Oslo"})]}],
                      tools=TOOLS),
               Sample("eval.jsonl:2", messages=weather_conversation("Rome", 2)),  # no tools: not a tool turn
               Sample("eval.jsonl:3", messages=weather_conversation("Lima", 3), tools=TOOLS)]
    turns, total = tool_turns(samples)
    assert total == 5 and [t.location for t in turns] == ["eval.jsonl:1 turn 1", "eval.jsonl:1 turn 2",
                                                          "eval.jsonl:1 turn 3", "eval.jsonl:3 turn 1",
                                                          "eval.jsonl:3 turn 2"]
    first, second, third = turns[:3]
    assert first.prompt == thinking[:1] and first.reference == thinking[1] and first.tools == TOOLS
    assert second.prompt == thinking[:3] and second.reference["content"] == "It is sunny in Oslo."
    assert len(third.prompt) == 5 and third.reference["tool_calls"][0]["function"]["name"] == "get_time"
    # the earlier turns' reasoning stays in the prompt, unless the run dropped it
    assert second.prompt[1]["reasoning_content"] == "Oslo, one day."
    assert "reasoning_content" not in tool_turns(samples, reasoning="drop")[0][1].prompt[1]
    # at most `limit`, spread over all of them, the same every time
    kept, total = tool_turns(samples, limit=2)
    assert total == 5 and [t.location for t in kept] == ["eval.jsonl:1 turn 1", "eval.jsonl:1 turn 3"]
    assert tool_turns(samples, limit=0)[0] == []


# --- lora-ft eval, generate and chat on a run trained on tool conversations ---------------------------------------

@pytest.fixture(scope="module")
def tool_run(tmp_path_factory) -> Path:
    """A run of a tiny llama trained on a handful of tool conversations (its ChatML template wrapped in the hermes
    format); the model's context holds the tool list the template writes into the system turn."""
    root = tmp_path_factory.mktemp("tool-run")
    model = root / "model"
    tokenizer = build_tokenizer(model)
    build_llama(model, len(tokenizer), layers=2)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    data = root / "data"
    data.mkdir()
    cities = ["Oslo", "Rome", "Lima", "Cairo", "Quito", "Perth", "Kyiv", "Hanoi", "Dakar", "Riga"]
    write_jsonl(data / "train.jsonl", [{"messages": weather_conversation(c, 1 + i % 3), "tools": TOOLS}
                                       for i, c in enumerate(cities[:8])])
    write_jsonl(data / "eval.jsonl", [{"messages": weather_conversation(c, 1 + i % 3), "tools": TOOLS}
                                      for i, c in enumerate(cities[8:])])
    run_config = write_config(root / "run.yaml", model, data, output_dir=root / "run")
    assert cli.main(["train", str(run_config), "--set", "train.max_steps=12", "--set",
                     "data.max_seq_length=1024"]) == 0
    return root / "run"


def test_eval_scores_the_calls_of_base_and_tuned_at_every_assistant_turn(tool_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code, printed, _ = run_cli(capsys, ["eval", str(tool_run), "--no-general", "--max-new-tokens", "24",
                                        "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    tools = report["tool_calls"]
    assert (tools["conversations"], tools["turns"], tools["answered"]) == (2, 4, 4)
    assert tools["n"] == {"called": 2, "valid_json": 2, "known_function": 2, "schema_valid": 2, "exact": 2,
                          "called_anyway": 2}
    for model in ("base", "tuned"):
        assert set(tools[model]) == set(tools["n"]) and all(0 <= rate <= 1 for rate in tools[model].values())
        # each rate counts only the turns that passed the one before it
        chain = [tools[model][m] for m in ("called", "valid_json", "known_function", "schema_valid", "exact")]
        assert chain == sorted(chain, reverse=True)
    # every turn's answers, with their calls read back and their scores, in samples.jsonl
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    turns = [line for line in lines if line["set"] == "tool calls"]
    assert [t["location"].rsplit(" ", 1)[-1] for t in turns] == ["1", "2", "1", "2"]
    for turn in turns:
        assert turn["tuned_calls"] == [c.as_dict() for c in parse_tool_calls(turn["tuned"]).calls]
        assert set(turn["tuned_scores"]) == ({"called_anyway"} if "tool_calls" not in turn["reference"]
                                             else {"called", "valid_json", "known_function", "schema_valid", "exact"})
    assert tools["tuned"]["called"] == sum(t["tuned_scores"].get("called", False) for t in turns) / 2
    # the table on screen and in report.md: rows are metrics, columns base, tuned and n
    for text in (printed, (out / "report.md").read_text()):
        assert "tool calls" in text and "exact calls" in text and "called on text turns" in text
    assert "## Tool calls" in (out / "report.md").read_text()
    assert "tool calls exact" in report["verdict"]


def test_generate_puts_the_tools_in_the_prompt_and_reads_the_calls_back(tool_run, tmp_path, capsys):
    from lora_ft import inference
    from lora_ft.rundir.finished import open_run

    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([WEATHER["function"]]))  # a bare function schema
    tokenizer = inference.load_tokenizer(open_run(tool_run))
    messages = [{"role": "user", "content": "Weather in Oslo for 2 days?"}]
    # the prompt generate builds: the tools in the system turn the run's (hermes) template writes
    prompt = tokenizer.decode(inference.prompt_tokens(tokenizer, messages, inference.tools_file(str(tools_file))))
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert "get_weather" not in tokenizer.decode(inference.prompt_tokens(tokenizer, messages))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "Weather in Oslo for 2 days?"},
        {"prompt": "Time in Oslo?", "tools": [TIME]},  # its own tools
    ])
    code, out, _ = run_cli(capsys, ["generate", str(tool_run), "--prompts", str(prompts), "--tools",
                                    str(tools_file), "--max-new-tokens", "24"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Weather in Oslo for 2 days?", "Time in Oslo?"]
    for row in rows:
        assert row["tool_calls"] == [c.as_dict() for c in parse_tool_calls(row["answer"]).calls]
    # each answer is the one the model gives to that prompt with those tools alone
    run = open_run(tool_run)
    model = inference.load_tuned(run)
    for row, tools in zip(rows, ([WEATHER], [TIME])):
        answer, _ = inference.generate(model, tokenizer, run, [{"role": "user", "content": row["prompt"]}], 24,
                                       tools=tools)
        assert answer == row["answer"]


def test_a_bad_tools_file_is_a_usage_error_naming_the_file(tool_run, tmp_path, capsys):
    not_json = tmp_path / "broken.json"
    not_json.write_text('[{"name": "get_weather",\n')
    no_name = tmp_path / "nameless.json"
    no_name.write_text(json.dumps([{"description": "no name"}]))
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text(json.dumps([{"name": "f", "parameters": {"type": "no-such-type"}}]))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi", "tools": "not json"}])
    for command, argv, message in (
            ("generate", ["--prompt", "hi", "--tools", str(not_json)],
             f"{not_json}:2: the --tools file is not valid JSON"),
            ("generate", ["--prompt", "hi", "--tools", str(no_name)],
             f"{no_name}: the --tools file is not a tool list: 'tools' entry 0 has no function name"),
            ("chat", ["--tools", str(bad_schema)], "the parameters of tool 'f' are not a valid JSON schema"),
            ("chat", ["--tools", str(tmp_path / "missing.json")], "missing.json does not exist"),
            ("generate", ["--prompts", str(prompts)], f"{prompts}:1: line 1: 'tools' is not valid JSON")):
        code, _, err = run_cli(capsys, [command, str(tool_run), *argv])
        assert code == 2 and message in err and "fix:" in err


def test_chat_passes_the_tools_and_keeps_the_calls_in_the_history(tool_run, tmp_path, capsys, monkeypatch):
    import io
    import sys

    from lora_ft import inference
    from lora_ft.commands.chat import _assistant_turn
    from lora_ft.rundir.finished import open_run

    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Weather in Oslo?\n/tool sunny\n/exit\n"))
    code, out, _ = run_cli(capsys, ["chat", str(tool_run), "--tools", str(tools_file), "--temperature", "0",
                                    "--max-new-tokens", "12"])
    assert code == 0 and "/tool RESULT answers the model's call (2 tools)" in out
    run = open_run(tool_run)
    model, tokenizer = inference.load_tuned(run), inference.load_tokenizer(run)
    expected, _ = inference.generate(model, tokenizer, run, [{"role": "user", "content": "Weather in Oslo?"}], 12,
                                     tools=TOOLS)
    assert [line.split("model> ", 1)[1].strip() for line in out.splitlines() if "model> " in line] == [expected]
    assert "(no call waits for a result" in out  # this tiny model called nothing
    # an answer that calls: each call shown, and kept as the turn's tool_calls, which the run's template writes
    # back as the model wrote them
    answer = "Checking.\n" + block("get_weather", {"city": "Oslo"})
    turn = _assistant_turn(answer, TOOLS)
    assert 'call: get_weather({"city": "Oslo"})' in capsys.readouterr().out
    assert turn["content"] == "Checking." and turn["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": {"city": "Oslo"}}
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Oslo?"}, turn], tools=TOOLS,
                                             tokenize=False)
    assert answer in rendered


def test_every_export_carries_the_runs_hermes_template(tool_run, tmp_path, capsys):
    """The template trained with (the hermes wrapper) is the adapter's, the merged model's and the Modelfile's; the
    serving notes name vLLM's hermes parser."""
    from transformers import AutoTokenizer

    from lora_ft.exports.ollama import write_modelfile
    from lora_ft.tool_template import VLLM_TOOL_FLAGS, is_hermes

    template = (tool_run / "adapter" / "chat_template.jinja").read_text()
    assert is_hermes(template)
    assert "## Tool calls" in (tool_run / "adapter" / "README.md").read_text()
    peft, merged = tmp_path / "peft", tmp_path / "merged"
    for form, out in (("peft", peft), ("merged", merged)):
        code, printed, _ = run_cli(capsys, ["export", str(tool_run), "--format", form, "--out", str(out)])
        assert code == 0, printed
    assert VLLM_TOOL_FLAGS in (peft / "README.md").read_text()
    assert (peft / "chat_template.jinja").read_text() == template
    assert AutoTokenizer.from_pretrained(merged).chat_template == template
    gguf = tmp_path / "model-f16.gguf"
    gguf.write_bytes(b"GGUF")
    modelfile = write_modelfile(gguf, tmp_path, template, ["<|im_end|>"]).read_text()
    assert "{{ if .ToolCalls }}{{ range $j, $call := .ToolCalls }}<tool_call>" in modelfile.replace("{{- ", "{{ ")

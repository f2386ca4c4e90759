"""The Modelfile's TEMPLATE renders a conversation as the tokenizer's chat template does, and stops at end of turn."""

import json
import re

import pytest
from transformers import AutoTokenizer

from lora_ft.data.tokenization import ChatRenderer
from lora_ft.exports.ollama import ollama_template, write_modelfile
from lora_ft.tool_template import hermes_template
from tests.conftest import CHATML
from tests.gotemplate import Struct, TemplateError, go_json, render

CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "system", "content": "You answer as a contracts lawyer."},
     {"role": "user", "content": "What is consideration?"},
     {"role": "assistant", "content": "Something of value exchanged by each party."},
     {"role": "user", "content": "And a warranty?"}],
    [{"role": "user", "content": "What is consideration?"},
     {"role": "assistant", "content": "Something of value."},
     {"role": "user", "content": "Give an example."}],
]


def _ollama_render(template: str, messages: list[dict]) -> str:
    """What Ollama passes a chat template: the system message as .System, every message in .Messages."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return render(template, {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]}
                                                            for m in messages]})


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["with-system", "default-system"])
def test_the_modelfile_template_renders_the_prompt_the_chat_template_renders(tiny_llama, tmp_path, messages):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHATML_WITH_DEFAULT_SYSTEM
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    gguf = tmp_path / "model-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    modelfile = write_modelfile(gguf, tmp_path, CHATML_WITH_DEFAULT_SYSTEM, ["<|im_end|>"]).read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    assert template == ollama_template(CHATML_WITH_DEFAULT_SYSTEM)
    assert _ollama_render(template, messages) == expected
    assert re.findall(r"^PARAMETER stop (.*)$", modelfile, re.M) == ['"<|im_end|>"']


def test_the_go_template_renderer_follows_go_semantics():
    template = '{{- if .System }}S:{{ .System }}\n{{ else }}none\n{{ end }}\n{{- range .Messages }}\n' \
               '{{- if ne .Role "system" }}[{{ .Role }}]{{ end }}\n{{- end }}!'
    assert render(template, {"System": "x", "Messages": [{"Role": "user"}, {"Role": "system"}]}) == "S:x\n[user]!"
    assert render(template, {"System": "", "Messages": []}) == "none\n!"


def test_the_modelfile_renders_as_the_runs_chat_template(tiny_llama, legal_data, tmp_path):
    """What the GGUF export writes: the template the run trained with (saved beside its adapter), in Go form."""
    from lora_ft import cli
    from tests.conftest import write_config

    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--set", "train.max_steps=1"]) == 0
    saved = (tmp_path / "run" / "adapter" / "chat_template.jinja").read_text()
    out = tmp_path / "gguf"
    modelfile = write_modelfile(out / "model-f16.gguf", out, saved, ["<|im_end|>"]).read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")  # the template the run trained with
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert _ollama_render(template, messages) == expected
    assert re.findall(r"^PARAMETER stop (.*)$", modelfile, re.M) == ['"<|im_end|>"']
    assert re.search(r"^FROM (.*)$", modelfile, re.M).group(1).endswith("model-f16.gguf")


def test_modelfile_for_a_chatml_model(tmp_path):
    gguf_path = tmp_path / "model-q8_0.gguf"
    path = write_modelfile(gguf_path, tmp_path, CHATML, ["<|im_end|>", "<|endoftext|>"],
                           system_prompt="You are a careful legal assistant.")
    assert path == tmp_path / "Modelfile"
    text = path.read_text()
    lines = text.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert 'SYSTEM """You are a careful legal assistant."""' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama_template(CHATML)
    assert "{{ .System }}" in template and "{{- range .Messages }}" in template
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template
    assert template.endswith("<|im_start|>assistant\n")
    assert template.count("{{") == template.count("}}")
    assert "{{ else }}" not in template, "this template adds no default system message"


def test_modelfile_keeps_a_default_system_message_and_absolute_paths(tmp_path):
    elsewhere = tmp_path / "models" / "model-q8_0.gguf"
    text = write_modelfile(elsewhere, tmp_path / "ollama", CHATML_WITH_DEFAULT_SYSTEM, ["<|im_end|>"]).read_text()
    assert f"FROM {elsewhere.resolve()}" in text.splitlines()
    assert ("{{ else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n{{ end }}") in text
    assert "SYSTEM" not in text


def test_modelfile_for_another_template_leaves_it_to_ollama(tmp_path):
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}"
    text = write_modelfile(tmp_path / "model-q8_0.gguf", tmp_path, llama3, ["<|eot_id|>"]).read_text()
    assert "TEMPLATE" not in text.replace("No TEMPLATE", "")
    assert 'PARAMETER stop "<|eot_id|>"' in text


# --- a hermes-wrapped ChatML template (tools in the hermes format) ------------------------------------------------

WEATHER_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city, e.g. Paris."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]


def _calls(content: str = "") -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Zürich & <Genève>", "unit": "celsius"}}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}}]}


def _tool_conversation(system: bool, content: str = "") -> list[dict]:
    return ([{"role": "system", "content": "You are a travel assistant."}] if system else []) + [
        {"role": "user", "content": "Weather in Zürich and the time in Paris?"},
        _calls(content),
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "name": "get_time", "content": "14:05"},
        {"role": "assistant", "content": "It is 21 °C in Zürich and 14:05 in Paris."},
        {"role": "user", "content": "And tomorrow?"},
    ]


HERMES_CASES = {
    "system-and-tools": (_tool_conversation(system=True), WEATHER_TOOLS),
    "tools-without-system": (_tool_conversation(system=False), WEATHER_TOOLS),
    "text-before-the-calls": (_tool_conversation(system=False, content="Let me look both up."), WEATHER_TOOLS),
    "ends-with-tool-results": (_tool_conversation(system=True)[:5], WEATHER_TOOLS),
    "plain": (CONVERSATIONS[1], None),
    "plain-with-system": (CONVERSATIONS[0], None),
}


def _property(schema: dict) -> Struct:
    """A JSON schema property as Ollama's ``api.ToolProperty`` keeps it (what it does not know is dropped)."""
    kind = schema.get("type")
    return Struct({"AnyOf": [_property(s) for s in schema.get("anyOf", [])],
                   "Type": kind[0] if isinstance(kind, list) and len(kind) == 1 else kind,
                   "Items": schema.get("items"), "Description": schema.get("description", ""),
                   "Enum": schema.get("enum"),
                   "Properties": {k: _property(v) for k, v in schema.get("properties", {}).items()} or None,
                   "Required": schema.get("required")},
                  {"AnyOf": "anyOf,omitempty", "Type": "type,omitempty", "Items": "items,omitempty",
                   "Description": "description,omitempty", "Enum": "enum,omitempty",
                   "Properties": "properties,omitempty", "Required": "required,omitempty"})


def _ollama_view(messages: list[dict], tools: list | None = None) -> dict:
    """What Ollama's ``template.Execute`` hands a template that uses ``.Messages`` (ollama/ollama
    ``template/template.go``: ``collate``, ``convertMessagesForTemplate``, ``convertToolsForTemplate``), built from
    OpenAI messages and tools: ``.System``, the system messages joined by a blank line; ``.Messages``, with
    consecutive messages of one role other than ``tool`` merged, each a struct (Role, Content, ToolCalls: ID and
    Function with Index, Name and Arguments, a map); ``.Tools``, each a struct whose Function is a struct (Name,
    Description, Parameters: Type, Required, Properties, a map of ``api.ToolProperty``)."""
    collated: list[Struct] = []
    for message in messages:
        if collated and collated[-1].fields["Role"] == message["role"] != "tool":
            collated[-1].fields["Content"] += "\n\n" + message["content"]
            continue
        calls = [Struct({"ID": call.get("id", ""), "Function": Struct({
            "Index": i, "Name": call["function"]["name"],
            "Arguments": (json.loads(call["function"]["arguments"]) if isinstance(call["function"]["arguments"], str)
                          else call["function"]["arguments"])})})
                 for i, call in enumerate(message.get("tool_calls") or [])]
        collated.append(Struct({"Role": message["role"], "Content": message.get("content") or "", "Thinking": "",
                                "Images": None, "ToolCalls": calls or None, "ToolName": message.get("name", ""),
                                "ToolCallID": message.get("tool_call_id", "")}))
    view_tools = None
    if tools:
        view_tools = [Struct({"Type": tool["type"], "Items": None, "Function": Struct({
            "Name": tool["function"]["name"], "Description": tool["function"].get("description", ""),
            "Parameters": Struct({
                "Type": tool["function"]["parameters"]["type"], "Defs": None, "Items": None,
                "Required": tool["function"]["parameters"].get("required"),
                "Properties": {k: _property(v) for k, v in tool["function"]["parameters"]["properties"].items()}},
                {"Type": "type", "Defs": "$defs,omitempty", "Items": "items,omitempty",
                 "Required": "required,omitempty", "Properties": "properties"})},
            {"Name": "name", "Description": "description", "Parameters": "parameters"})},
            {"Type": "type", "Items": "items,omitempty", "Function": "function"}) for tool in tools]
    return {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": collated, "Tools": view_tools, "Response": "", "Think": False, "ThinkLevel": "",
            "IsThinkSet": False}


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


def _canonical(prompt: str) -> str:
    """``prompt`` with each JSON object in the tool list and each ``<tool_call>`` written in one form (keys sorted,
    Python's separators, no escapes beyond JSON's); all other text as it is."""
    prompt = re.sub(r"(?<=<tools>\n)(.*?)(?=\n</tools>)",
                    lambda m: "\n".join(_canonical_json(line) for line in m.group(0).split("\n")), prompt, flags=re.S)
    return re.sub(r"(?<=<tool_call>\n)(\{.*\})(?=\n</tool_call>)", lambda m: _canonical_json(m.group(0)), prompt)


@pytest.fixture(scope="module", params=[CHATML, CHATML_WITH_DEFAULT_SYSTEM], ids=["chatml", "default-system"])
def hermes_chatml(request, chat_tokenizer):
    """(the tokenizer, a ChatML template wrapped by the hermes prelude as training wraps it, the base template)."""
    wrapped = hermes_template(request.param, lambda text: ChatRenderer.rendering_with(chat_tokenizer, text))
    return chat_tokenizer, wrapped, request.param


@pytest.mark.parametrize("case", list(HERMES_CASES))
def test_the_modelfile_renders_tool_conversations_as_the_hermes_template(hermes_chatml, tmp_path, case):
    """Ollama's render of a conversation (its TEMPLATE on Ollama's view of the messages) is the prompt the wrapped
    Jinja template renders (``add_generation_prompt=True``), character for character except in the JSON that
    Ollama writes with Go's ``encoding/json``, where exact equality is impossible: each tool in the tool list
    (compact, Go's field order, the properties sorted, where Python writes ``", "``/``": "`` in the tool's own
    order) and a call's arguments (sorted keys, ``<``/``>``/``&`` escaped as ``\\u003c``...). Those spans, and only
    those, are compared as JSON values; the text the Go template writes there is checked apart. A conversation
    without tools renders exactly, as the plain ChatML template renders it."""
    tokenizer, wrapped, base = hermes_chatml
    messages, tools = HERMES_CASES[case]
    expected = tokenizer.apply_chat_template(messages, chat_template=wrapped, tools=tools, tokenize=False,
                                             add_generation_prompt=True)
    modelfile = write_modelfile(tmp_path / "model-q8_0.gguf", tmp_path, wrapped, ["<|im_end|>"]).read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    assert template == ollama_template(wrapped)
    got = render(template, _ollama_view(messages, tools))
    assert _canonical(got) == _canonical(expected)
    if tools is None:
        assert got == expected == tokenizer.apply_chat_template(messages, chat_template=base, tokenize=False,
                                                                add_generation_prompt=True)
        return
    # inside the JSON spans: each tool as Go's JSON, the arguments key by key in Go's order and escaping
    for tool in tools:
        assert "\n" + go_json(_ollama_view([], [tool])["Tools"][0].fields["Function"]) + "\n" in got
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich \\u0026 \\u003cGenève\\u003e", '
            '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n") in got


def test_the_hermes_modelfile_keeps_what_ollama_needs(hermes_chatml):
    """Ollama's tool parser takes the text that opens the first ``{{ if ...ToolCalls }}`` branch, up to a ``{``,
    as the tag to look for (ollama/ollama ``tools/template.go``: ``parseTag``); it must be ``<tool_call>``, with
    no action or ``if`` before it in the branch, or Ollama parses bare JSON instead."""
    _, wrapped, _ = hermes_chatml
    template = ollama_template(wrapped)
    branch = re.search(r"{{-? if \.ToolCalls }}(.*)", template, re.S).group(1)
    opening = re.match(r"(?:{{ range [^}]*}})?([^{]*)", branch).group(1)
    assert opening.startswith("<tool_call>")
    assert len(re.findall(r"\bif [^}]*(?<![\w)])\.ToolCalls", template)) == 1  # a field, not $m.ToolCalls
    assert "{{ .Function }}" not in template, "Ollama >= 0.14 prints a tool's function struct in Go form, not JSON"
    assert "tool_response" in template and ".Tools" in template  # what Ollama reads as a tool round trip


# --- the Go template renderer ------------------------------------------------------------------------------------


def test_the_go_renderer_has_variables_with_go_scoping():
    template = ('{{- $x := "outer" }}{{ range $i, $m := .Items }}{{ $x := $m.Name }}{{ $i }}:{{ $x }};{{ end }}'
                "{{ $x }}|{{ $n := 0 }}{{ range .Items }}{{ $n = .Name }}{{ end }}{{ $n }}|"
                "{{ range $m := .Items }}{{ $m.Name }}{{ $.Sep }}{{ end }}|{{ if true }}{{ $y := 1 }}{{ end }}")
    assert render(template, {"Items": [{"Name": "a"}, {"Name": "b"}], "Sep": ","}) == "0:a;1:b;outer|b|a,b,|"
    with pytest.raises(TemplateError, match="undefined variable"):  # declared in the if, gone after its end
        render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", {})
    with pytest.raises(TemplateError, match="undefined variable"):  # = only updates a declared variable
        render("{{ $z = 1 }}", {})
    with pytest.raises(TemplateError, match="undefined variable"):  # found when parsed, as Go does, run or not
        render("{{ if false }}{{ $nope }}{{ end }}", {})
    # = inside a range updates the variable outside it, which keeps the last value after the range
    assert render('{{ $s := "" }}{{ range .L }}{{ $s }}{{ $s = . }}{{ end }}/{{ $s }}', {"L": ["a", "b"]}) == "a/b"
    assert render("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}) == "a=1 b=2 "
    assert render("{{ range .L }}x{{ else }}none{{ end }}", {"L": []}) == "none"
    assert render("{{ with $n := .L | len }}{{ $n }}{{ . }}{{ end }}{{ with .E }}x{{ else }}empty{{ end }}",
                  {"L": [1, 2], "E": ""}) == "22empty"


def test_the_go_renderer_has_go_truth_and_logic():
    for value, truthy in [(0, False), (1, True), ("", False), ("x", True), ([], False), ([0], True), ({}, False),
                          (None, False), (0.0, False), (False, False), (Struct({"A": ""}), True)]:
        assert render("{{ if .V }}T{{ else }}F{{ end }}", {"V": value}) == ("T" if truthy else "F"), value
    # and/or return an argument (the first that decides, else the last) and stop there, as Go 1.18+ does
    assert render('{{ and .A "y" }}|{{ and 1 .B }}|{{ or .B "z" }}|{{ or .A .C }}|{{ or .B 0 }}',
                  {"A": "a", "B": "", "C": "c"}) == "y||z|a|0"
    assert render("{{ or 1 .Missing.Field }}{{ and 0 .Missing.Field }}", {}) == "10"  # short-circuit
    assert render("{{ not .A }}{{ not .B }}", {"A": [], "B": "x"}) == "truefalse"
    assert render('{{ if and (eq .R "tool") (ne .P "tool") }}open{{ end }}', {"R": "tool", "P": "user"}) == "open"
    assert render('{{ $r := .R }}{{ if eq $r "a" "b" }}ab{{ end }}{{ if ne $r .R }}no{{ end }}', {"R": "b"}) == "ab"
    with pytest.raises(TemplateError, match="incompatible types"):
        render('{{ eq 1 "1" }}', {})


def test_the_go_renderer_chains_else_if_and_reads_fields():
    template = ('{{ range .M }}{{ if eq .Role "a" }}A{{ else if eq .Role "b" }}B{{ else if .Role }}?{{ else }}-'
                "{{ end }}{{ end }}")
    assert render(template, {"M": [{"Role": r} for r in ("a", "b", "c", "")]}) == "AB?-"
    call = Struct({"ID": "", "Function": Struct({"Name": "f", "Arguments": {"b": [1, 2.5], "a": "<x>"}})})
    data = {"Messages": [Struct({"Role": "assistant", "ToolCalls": [call, call]})]}
    template = ("{{ range $i, $m := $.Messages }}{{ range $j, $call := $m.ToolCalls }}{{ $j }}{{ $call.Function.Name }}"
                "{{ (index $m.ToolCalls $j).Function.Name }}{{ len (slice $m.ToolCalls $j) }} {{ end }}{{ end }}")
    assert render(template, data) == "0ff2 1ff1 "
    # a map prints as Go's JSON (Ollama's types print themselves so); a struct in Go's own form, unless json'd
    assert render("{{ .Function.Arguments }}", call) == '{"a":"\\u003cx\\u003e","b":[1,2.5]}'
    assert render("{{ .Function }}", call) == '{f {"a":"\\u003cx\\u003e","b":[1,2.5]}}'
    assert render("{{ json .Function }}", call) == '{"Name":"f","Arguments":{"a":"\\u003cx\\u003e","b":[1,2.5]}}'
    tagged = Struct({"Name": "f", "Description": "", "Enum": None}, {"Name": "name", "Description": "description",
                                                                     "Enum": "enum,omitempty"})
    assert go_json(tagged) == '{"name":"f","description":""}'
    assert go_json([2.0, 1e21, 1e-7, 0.1, "é\u2028"]) == '[2,1e+21,1e-7,0.1,"é\\u2028"]'
    with pytest.raises(TemplateError, match="can't evaluate field"):
        render("{{ .Nope }}", call)
    assert render("{{ .Nope }}", {}) == "<no value>"  # a map's missing key reads as nil (missingkey=zero)

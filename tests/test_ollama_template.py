"""The Modelfile's TEMPLATE renders a conversation as the tokenizer's chat template does, and stops at end of turn."""

import re

import pytest
from transformers import AutoTokenizer

from lora_ft.exports.ollama import ollama_template, write_modelfile
from tests.conftest import CHATML
from tests.gotemplate import render

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

"""The tool-calling run (configs/tool_calling.yaml on the embedded model) served: vLLM's server, started as
docs/serving.md says (`--enable-auto-tool-choice --tool-call-parser hermes`), answers an OpenAI-style request with
tools by a parsed `tool_calls` entry naming the right function with arguments its schema accepts; llama.cpp answers
the same request from the GGUF file, through the chat template stored in it, with a call that parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lora_ft.evaluation.tool_calls import parse_tool_calls
from lora_ft.tool_turns import schema_problem
from tests.engines.conftest import REPO, engine_python, llama_python_env, record
from tests.engines.test_vllm import REQUEST_TIMEOUT, _free_port, served, vllm_command

pytestmark = pytest.mark.engines
TOOLS = json.loads((REPO / "examples" / "tools" / "tools.json").read_text())
# held-out questions (examples/tools/eval.jsonl) whose answer is one call, and the call expected
CASES = 4
MAX_TOKENS = 96


def _cases() -> list[dict]:
    """The first held-out conversations whose first assistant turn makes exactly one call."""
    cases = []
    for line in (REPO / "examples" / "tools" / "eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        turns = row["messages"]
        first = next(i for i, m in enumerate(turns) if m["role"] == "assistant")
        calls = turns[first].get("tool_calls") or []
        if len(calls) == 1 and first <= 2:
            call = calls[0]["function"]
            arguments = call["arguments"] if isinstance(call["arguments"], dict) else json.loads(call["arguments"])
            cases.append({"messages": turns[:first], "name": call["name"], "arguments": arguments})
        if len(cases) == CASES:
            return cases
    return cases


@pytest.fixture(scope="session")
def tool_run(work) -> Path:
    """The whole tool-calling config, trained once per session (LORA_FT_TOOL_RUN: a finished run to reuse).
    Training it takes about an hour on a 2-core CPU, so the tier runs these tests only when asked
    (LORA_FT_TOOL_RUN, or LORA_FT_TRAIN_TOOL_RUN=1 to train it here): a shorter run does not learn the calls."""
    given = os.environ.get("LORA_FT_TOOL_RUN")
    if given:
        return Path(given)
    if os.environ.get("LORA_FT_TRAIN_TOOL_RUN") != "1":
        pytest.skip("the tool-calling run trains for about an hour on a CPU: set LORA_FT_TOOL_RUN=<a finished run> "
                    "or LORA_FT_TRAIN_TOOL_RUN=1 to serve it")
    run = work / "tools"
    if not (run / "adapter").is_dir():
        subprocess.run([sys.executable, "-m", "lora_ft", "train", "configs/tool_calling.yaml", "--set",
                        f"output_dir={run}", "--set", "train.eval_before_training=false"],
                       check=True, cwd=REPO, timeout=3600, env=llama_python_env())
    return run


@pytest.fixture(scope="session")
def tool_exports(tool_run, work) -> dict[str, Path]:
    out = {"merged": work / "tools-merged", "gguf": work / "tools-gguf"}
    if not (out["merged"] / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "lora_ft", "export", str(tool_run), "--format", "merged", "--out",
                        str(out["merged"])], check=True, cwd=REPO, timeout=1800, env=llama_python_env())
    if not list(out["gguf"].glob("*f16.gguf")):
        subprocess.run([sys.executable, "-m", "lora_ft", "export", str(tool_run), "--format", "gguf",
                        "--gguf-types", "f16", "--out", str(out["gguf"])], check=True, cwd=REPO, timeout=1800,
                       env=llama_python_env())
    return out


def _schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def _request(url: str, model: str, messages: list[dict]) -> dict:
    body = {"model": model, "messages": messages, "tools": TOOLS, "tool_choice": "auto", "temperature": 0.0,
            "max_tokens": MAX_TOKENS, "seed": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        return json.loads(response.read())["choices"][0]


def test_vllm_returns_the_tuned_models_calls_parsed_by_the_hermes_parser(tool_exports, work):
    merged = tool_exports["merged"]
    command = vllm_command(str(merged), _free_port(), "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    rows = []
    with served(command, work / "vllm-tools.log") as (url, _):
        for case in _cases():
            choice = _request(url, str(merged), case["messages"])
            calls = choice["message"].get("tool_calls") or []
            parsed = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
            rows.append({"question": case["messages"][-1]["content"], "expected": [case["name"], case["arguments"]],
                         "calls": parsed, "finish_reason": choice["finish_reason"],
                         "content": choice["message"].get("content")})
    right = [r for r in rows if len(r["calls"]) == 1 and r["calls"][0][0] == r["expected"][0]
             and schema_problem(_schema(r["expected"][0]), r["calls"][0][1]) is None]
    figures = {"cases": len(rows), "right_function_valid_arguments": len(right),
               "exact": sum(r["calls"] == [tuple(r["expected"])] for r in rows), "rows": rows}
    record("vllm-tools", figures)
    assert rows and all(r["finish_reason"] == "tool_calls" for r in rows), rows
    assert len(right) == len(rows), rows


def test_llama_cpp_answers_from_the_gguf_with_a_call_that_parses(tool_exports, work):
    gguf = next(tool_exports["gguf"].glob("*f16.gguf"))
    request = work / "tool-requests.json"
    request.write_text(json.dumps({"tools": TOOLS, "conversations": [c["messages"] for c in _cases()],
                                   "max_tokens": MAX_TOKENS}))
    script = Path(__file__).with_name("llama_tool_answers.py")
    result = subprocess.run([str(engine_python("llama")), str(script), str(gguf), str(request)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])["answers"]
    rows = []
    for case, answer in zip(_cases(), answers):
        parsed = parse_tool_calls(answer["text"])
        calls = [(c.name, c.arguments) for c in parsed.calls if c.valid]
        rows.append({"question": case["messages"][-1]["content"], "expected": [case["name"], case["arguments"]],
                     "text": answer["text"], "calls": calls, "finish_reason": answer["finish_reason"]})
    record("llama-cpp-tools", {"cases": len(rows), "rows": rows,
                               "parsed": sum(bool(r["calls"]) for r in rows),
                               "exact": sum(r["calls"] == [tuple(r["expected"])] for r in rows)})
    assert rows and all(r["calls"] and r["finish_reason"] == "stop" for r in rows), rows
    assert all(schema_problem(_schema(r["calls"][0][0]), r["calls"][0][1]) is None for r in rows), rows

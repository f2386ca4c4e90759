"""vLLM (its CPU build, in its own environment) serves the run's adapter and the merged export; greedy answers in
float32 equal transformers' token for token and end where the reference ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engines.conftest import MAX_TOKENS, PROMPTS, engine_python, record

pytestmark = pytest.mark.engines
START_TIMEOUT = 420  # seconds for the server to answer /health (about 40 s measured on 2 cores)
REQUEST_TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command(model: str, port: int, *extra: str) -> list[str]:
    """The command docs/serving.md gives, as this test runs it."""
    return [str(engine_python("vllm")), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
            "--enforce-eager", *extra]


@contextmanager
def served(command: list[str], log: Path):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(log.parent / "vllm-cache"),
           "VLLM_LOGGING_LEVEL": "WARNING"}
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    port = command[command.index("--port") + 1]
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode} before serving:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if time.monotonic() - started > START_TIMEOUT:
                    pytest.fail(f"vLLM did not serve within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield f"http://127.0.0.1:{port}", time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its engine process, by process group
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def chat(url: str, model: str, prompt: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0,
            "max_tokens": MAX_TOKENS, "seed": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        choice = json.loads(response.read())["choices"][0]
    return {"text": choice["message"]["content"], "finish_reason": choice["finish_reason"]}


def _compare(answers: list[dict], reference: list[dict], tokenizer) -> dict:
    def tokens(text: str) -> list[int]:  # both sides tokenized the same way
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    same_tokens = sum(tokens(a["text"]) == tokens(r["text"]) for a, r in zip(answers, reference))
    same_stop = sum((a["finish_reason"] == "stop") == r["stopped"] for a, r in zip(answers, reference))
    return {"prompts": len(reference), "identical_tokens": same_tokens, "same_stop": same_stop,
            "answers": [{"prompt": r["prompt"], "reference": r["text"], "vllm": a["text"],
                         "finish_reason": a["finish_reason"], "reference_stopped": r["stopped"]}
                        for a, r in zip(answers, reference)]}


def test_vllm_serves_the_adapter_like_transformers_and_peft(exports, references, work):
    from transformers import AutoTokenizer

    adapter = exports["peft"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    command = vllm_command(references["base"], _free_port(), "--enable-lora", "--lora-modules", f"legal={adapter}",
                           "--max-lora-rank", "16", "--chat-template", str(adapter / "chat_template.jinja"))
    with served(command, work / "vllm-adapter.log") as (url, start_seconds):
        answers = [chat(url, "legal", p) for p in PROMPTS]
    figures = {**_compare(answers, references["adapter"], tokenizer), "start_seconds": round(start_seconds, 1),
               "command": command}
    record("vllm-adapter", figures)
    assert figures["identical_tokens"] == len(PROMPTS), figures["answers"]
    assert figures["same_stop"] == len(PROMPTS), figures["answers"]


def test_vllm_serves_the_merged_export_like_transformers(exports, references, work):
    from transformers import AutoTokenizer

    merged = exports["merged"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    command = vllm_command(str(merged), _free_port())
    with served(command, work / "vllm-merged.log") as (url, start_seconds):
        answers = [chat(url, str(merged), p) for p in PROMPTS]
    figures = {**_compare(answers, references["merged"], tokenizer), "start_seconds": round(start_seconds, 1),
               "command": command}
    record("vllm-merged", figures)
    assert figures["identical_tokens"] == len(PROMPTS), figures["answers"]
    assert figures["same_stop"] == len(PROMPTS), figures["answers"]

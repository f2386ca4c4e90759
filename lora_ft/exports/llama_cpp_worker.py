"""llama.cpp's own quantizer and runtime, driven through its Python binding (llama-cpp-python) in a process of
their own: ``python llama_cpp_worker.py REQUEST.json`` (this file, run by path); the result is the last line of
stdout.

This file needs only the standard library and ``llama_cpp``, so any Python that has llama-cpp-python can run it
(``LORA_FT_LLAMA_PYTHON``). A separate process keeps llama.cpp's log off the user's screen and a crash inside
llama.cpp from taking lora-ft with it.

The request says what to do, in order:

- ``quantize``: ``[{"source": f16.gguf, "output": q4_k_m.gguf, "type": "q4_k_m"}]``, through
  ``llama_model_quantize``, the same code as llama.cpp's ``llama-quantize`` tool.
- ``models``: ``[{"name": "f16", "path": ...}]``, the first one the reference. Each is loaded and, for every
  prompt (token ids from the run's own tokenizer), answers greedily (token ids, stopped at ``stop_ids``). Every
  model after the first is also scored against the reference's answers: top-1 agreement of its next-token choice
  at each position of the reference answer (teacher-forced), and whether its own greedy answer is identical.
- ``chat``: one user message answered through ``create_chat_completion``, i.e. with the chat template and stop
  tokens the GGUF file carries, as llama.cpp's server and Ollama use them.
"""

from __future__ import annotations

import json
import os
import sys
import time

# lora-ft's type names -> llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*)
QUANTIZER_TYPES = {
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
    "q2_k": "Q2_K", "q2_k_s": "Q2_K_S", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L",
    "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K",
    "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS", "tq1_0": "TQ1_0", "tq2_0": "TQ2_0",
}


def quantize(llama_cpp, source: str, output: str, type_name: str, threads: int) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANTIZER_TYPES[type_name]}")
    params.nthread = threads
    started = time.time()
    code = llama_cpp.llama_model_quantize(source.encode(), output.encode(), params)
    if code != 0 or not os.path.isfile(output):
        raise RuntimeError(f"llama_model_quantize returned {code} for {type_name}")
    return {"type": type_name, "output": output, "seconds": round(time.time() - started, 2)}


def greedy(llm, prompt: list[int], stop_ids: set[int], max_tokens: int) -> list[int]:
    answer: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if token in stop_ids or llm.token_eos() == token:
            break
        answer.append(token)
        if len(answer) >= max_tokens:
            break
    return answer


def top1_agreement(llm, prompt: list[int], reference: list[int]) -> tuple[int, int]:
    """Of the reference answer's tokens, how many this model also ranks first, given the same text before it."""
    if not reference:
        return 0, 0
    tokens = prompt + reference
    llm.reset()
    llm.eval(tokens)
    scores = llm.scores  # one row of logits per evaluated position (logits_all)
    same = 0
    for i, expected in enumerate(reference):
        row = scores[len(prompt) - 1 + i]
        same += int(int(row.argmax()) == expected)
    return same, len(reference)


def run_models(llama_cpp, request: dict) -> dict:
    prompts = request.get("prompts", [])
    stop_ids = set(request.get("stop_ids", []))
    max_tokens = int(request.get("max_tokens", 48))
    results: dict[str, dict] = {}
    reference: list[list[int]] | None = None
    for spec in request.get("models", []):
        llm = llama_cpp.Llama(model_path=spec["path"], n_ctx=int(request.get("n_ctx", 1024)), logits_all=True,
                              verbose=False, seed=0, n_threads=request.get("threads"))
        answers = [greedy(llm, list(p), stop_ids, max_tokens) for p in prompts]
        result: dict = {"answers": answers}
        if reference is None:
            reference = answers
        else:
            agreed = [top1_agreement(llm, list(p), ref) for p, ref in zip(prompts, reference)]
            result["top1_same"] = sum(a for a, _ in agreed)
            result["top1_positions"] = sum(n for _, n in agreed)
            result["identical_answers"] = sum(a == r for a, r in zip(answers, reference))
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        result["end_of_generation"] = {str(i): bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in stop_ids}
        chat = request.get("chat")
        if chat:
            out = llm.create_chat_completion(messages=[{"role": "user", "content": chat["prompt"]}],
                                             max_tokens=int(chat.get("max_tokens", 40)), temperature=0.0, seed=0)
            choice = out["choices"][0]
            result["chat"] = {"answer": (choice["message"]["content"] or "").strip(),
                              "finish_reason": choice["finish_reason"],
                              "completion_tokens": out["usage"]["completion_tokens"]}
        results[spec["name"]] = result
        llm.close()
    return results


_QUIET_LOG = None


def reply(result: dict) -> None:
    """The result, as the last line of stdout: the protocol with lora-ft, not a message to a person."""
    sys.stdout.write(json.dumps(result) + "\n")


def _ignore_log(level, text, user_data) -> None:
    return None


def main(argv: list[str]) -> int:
    request = json.loads(open(argv[1], encoding="utf-8").read())
    try:
        import llama_cpp
    except ImportError as exc:
        reply({"error": "no_llama_cpp", "detail": str(exc)})
        return 3
    global _QUIET_LOG  # llama.cpp keeps the pointer: the callback must outlive every call
    _QUIET_LOG = llama_cpp.llama_log_callback(_ignore_log)
    llama_cpp.llama_log_set(_QUIET_LOG, None)
    threads = int(request.get("threads") or os.cpu_count() or 1)
    quantized = [quantize(llama_cpp, q["source"], q["output"], q["type"], threads) for q in request.get("quantize", [])]
    models = run_models(llama_cpp, request)
    reply({"llama_cpp_version": llama_cpp.__version__, "quantized": quantized, "models": models})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Run inside the llama.cpp environment: load one GGUF file and do what the request asks, in order.
Usage: python llama_probe.py REQUEST.json  -> JSON on stdout (one result per step).

A request: {"model": PATH, "logits_all": bool, "steps": [STEP, ...]}, each step one of
  {"tokenize": TEXT, "special": bool}          -> the token ids (no BOS added)
  {"detokenize": [IDS], "special": bool}       -> the text
  {"logits": [IDS]}                            -> the logits at each position (needs logits_all)
  {"complete": PROMPT, "max_tokens": N, "stop": [..]} -> {"text", "completion_tokens"}
One thread: these models are tiny, and spinning threads slow a busy machine down by orders of magnitude."""

import json
import sys

import llama_cpp

request = json.loads(open(sys.argv[1]).read())
llm = llama_cpp.Llama(model_path=request["model"], n_ctx=256, n_threads=1, n_threads_batch=1, seed=0, verbose=False,
                      logits_all=request.get("logits_all", False))
results = []
for step in request["steps"]:
    if "tokenize" in step:
        results.append(llm.tokenize(step["tokenize"].encode(), add_bos=False, special=step.get("special", False)))
    elif "detokenize" in step:
        results.append(llm.detokenize(step["detokenize"], special=step.get("special", False)).decode())
    elif "logits" in step:
        llm.reset()
        llm.eval(step["logits"])
        results.append([list(map(float, row)) for row in llm.scores[: len(step["logits"])]])
    elif "complete" in step:
        out = llm(step["complete"], max_tokens=step["max_tokens"], temperature=0.0, stop=step.get("stop") or [])
        results.append({"text": out["choices"][0]["text"], "completion_tokens": out["usage"]["completion_tokens"]})
    else:
        raise SystemExit(f"unknown step {step}")
llm.close()
print(json.dumps({"version": llama_cpp.__version__, "results": results}))
